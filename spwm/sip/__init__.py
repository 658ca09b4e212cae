# -*- test-case-name: tests.test_sip_message -*-
"""
SIP for SPWM: the message layer (parse, inspect, change, serialize), URIs
and header values, and stream framing.  Everything here is sans-I/O.
"""

from spwm.sip.errors import SipParseError
from spwm.sip.framing import KeepAlive, SipStreamFramer
from spwm.sip.message import (
    COMPACT_FORMS,
    Header,
    SipMessage,
    canonical_name,
    make_response,
    parse_message,
)
from spwm.sip.uri import (
    NameAddr,
    SipUri,
    Via,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_header_values,
    unescape,
)

__all__ = [
    "COMPACT_FORMS",
    "Header",
    "KeepAlive",
    "NameAddr",
    "SipMessage",
    "SipParseError",
    "SipStreamFramer",
    "SipUri",
    "Via",
    "canonical_name",
    "make_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_header_values",
    "unescape",
]
