# -*- test-case-name: tests.test_sip_proxy -*-
"""
Pure reading and rewriting of SIP headers that both proxy cores use: the
C{Via} a request came in on (RFC 3261 18.2.1, RFC 3581), where a response
goes (18.2.2), the transaction's branch source (16.11), C{Route} handling
(16.4), C{Max-Forwards}, the agent's C{+sip.instance} and the contact
point's C{Path}.  Nothing here keeps state.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable

import dataclasses

from spwm.sip.errors import SipParseError
from spwm.sip.message import SipMessage
from spwm.sip.uri import NameAddr, Via, parse_name_addr

__all__ = [
    "AGENT_BRANCH_MARK",
    "DEFAULT_MAX_FORWARDS",
    "DIALOG_CREATING",
    "MAGIC",
    "add_instance",
    "add_path",
    "branch_source",
    "contacts",
    "decrement_max_forwards",
    "expires_of",
    "hostport",
    "param",
    "pop_last_route",
    "register_domain_uri",
    "short_hash",
    "stamp_via",
    "strict_route",
    "strip_instance",
    "top_route",
    "via_destination",
]

MAGIC = "z9hG4bK"
#: Our agent's Via branches start with this (after the magic cookie).
AGENT_BRANCH_MARK = "spwa"
DEFAULT_MAX_FORWARDS = 70
#: Requests that create a dialog (and get our C{Record-Route}).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})

_DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "sctp": 5060}


def hostport(host: str, port: int | None) -> str:
    """
    @return: C{host:port} for a URI or C{Via}, an IPv6 host in brackets.
    """
    h = f"[{host}]" if ":" in host else host
    return h if port is None else f"{h}:{port}"


def param(
    params: Iterable[tuple[str, str | None]], name: str
) -> tuple[bool, str | None]:
    """
    @return: whether parameter C{name} (lower case) is present, and its value.
    """
    for k, v in params:
        if k.lower() == name:
            return True, v
    return False, None


def short_hash(text: str, n: int = 8) -> bytes:
    """
    @return: the first C{n} bytes of the SHA-256 of C{text}.
    """
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:n]


def branch_source(msg: SipMessage) -> str:
    """
    What identifies the transaction of C{msg} (RFC 3261 16.11): the top
    branch when it is RFC 3261 compliant, else the fields that stay equal
    for a CANCEL and an ACK of the same INVITE.
    """
    via = msg.top_via
    if via is not None:
        present, branch = param(via.params, "branch")
        if branch and branch.startswith(MAGIC):
            return branch
    return "|".join(
        [
            msg.call_id or "",
            msg.from_tag or "",
            str(msg.cseq[0]),
            msg.get("Via") or "",
            msg.uri or "",
        ]
    )


def expires_of(
    msg: SipMessage, params: Iterable[tuple[str, str | None]], default: int
) -> int:
    """
    @return: the expiry of a C{Contact} with C{params}: its own
        C{expires}, else the message's C{Expires}, else C{default}.
    """
    present, value = param(params, "expires")
    if not present or value is None:
        value = msg.get("Expires")
    try:
        return max(0, int(value)) if value is not None else default
    except ValueError:
        return default


def contacts(msg: SipMessage) -> list[NameAddr]:
    """
    @return: the parsed contacts of C{msg}, C{"*"} entries and unparseable
        values left out.
    """
    return msg.contact_addresses()


def top_route(msg: SipMessage) -> NameAddr | None:
    """
    @return: the top C{Route}, parsed, or C{None} when absent or unreadable.
    """
    routes = msg.get_all("Route")
    if not routes:
        return None
    try:
        return parse_name_addr(routes[0])
    except SipParseError:
        return None


def pop_last_route(msg: SipMessage) -> None:
    """
    Remove the last C{Route} value.
    """
    routes = msg.get_all("Route")
    msg.remove_header("Route")
    for value in routes[:-1]:
        msg.append_header("Route", value)


def strict_route(msg: SipMessage) -> bool:
    """
    RFC 3261 16.4: the Request-URI names us (a strict router before us
    put our C{Record-Route} value there): replace it with the last
    C{Route} value, which is removed.

    @return: whether it was replaced (not when the last C{Route} is
        unreadable or absent).
    """
    routes = msg.get_all("Route")
    if not routes:
        return False
    try:
        last = parse_name_addr(routes[-1])
    except SipParseError:
        return False
    pop_last_route(msg)
    msg.uri = str(last.uri)
    return True


def register_domain_uri(msg: SipMessage) -> None:
    """
    RFC 3261 10.2: the Request-URI of a REGISTER names the registrar's
    domain; a phone that has the agent as its registrar address names the
    agent instead.  Put the domain of the To URI there.
    """
    try:
        to_addr = msg.to
    except SipParseError:
        return
    if to_addr is None:
        return
    to = to_addr.uri
    if to.scheme in ("sip", "sips") and to.host:
        msg.uri = f"{to.scheme}:{to.host_port}"


def stamp_via(msg: SipMessage, src: tuple[str, int], always_rport: bool = False) -> None:
    """
    RFC 3261 18.2.1 and RFC 3581: record in the top C{Via} where the
    request came from: C{received} when its host differs from C{src} or it
    carries a C{received} already, C{received} and C{rport} when it asks
    for C{rport} (or always, with C{always_rport}: a connection's port is
    the only way back).  A C{received} or C{rport} value the sender wrote
    itself is replaced, never kept: responses go to where the request came
    from, not to an address taken from the message.
    """
    via = msg.top_via
    assert via is not None
    host, port = src
    new = via
    has_rport, _ = param(via.params, "rport")
    has_received, _ = param(via.params, "received")
    if has_rport or always_rport:
        new = new.with_param("received", host).with_param("rport", str(port))
    elif has_received or via.host != host:
        new = new.with_param("received", host)
    if new != via:
        msg.replace_first_value("Via", str(new))


def decrement_max_forwards(msg: SipMessage, max_forwards: int | None) -> None:
    """
    Set C{Max-Forwards} to one less than C{max_forwards} (the request's,
    already checked to be above 0), or to the default when it had none.
    """
    msg.set_header(
        "Max-Forwards",
        str(max_forwards - 1 if max_forwards is not None else DEFAULT_MAX_FORWARDS),
    )


def map_contacts(
    msg: SipMessage, change: Callable[[NameAddr], NameAddr | None], keep_unreadable: bool = False
) -> None:
    """
    Rewrite each C{Contact} of C{msg} to C{change(contact)} (C{None}: as it
    is); the header is written again only when one changed.  A C{Contact}
    that does not parse leaves the message as it is, or with
    C{keep_unreadable} only itself.
    """
    out = []
    changed = False
    for value in msg.get_all("Contact"):
        try:
            na = parse_name_addr(value)
        except SipParseError:
            if not keep_unreadable:
                return
            out.append(value)
            continue
        new = change(na)
        if new is not None:
            na = new
            changed = True
        out.append(str(na))
    if changed:
        msg.set_header("Contact", ", ".join(out))


def add_instance(msg: SipMessage, instance_for: Callable[[str], str]) -> None:
    """
    Give each C{Contact} of a REGISTER without a C{+sip.instance} the one
    C{instance_for(contact URI)} names.  A wildcard or an unreadable
    C{Contact} leaves the message as it is (for the registrar to judge).
    """
    values = msg.get_all("Contact")
    if not values or any(v.strip() == "*" for v in values):
        return

    def change(na: NameAddr) -> NameAddr | None:
        present, _ = param(na.params, "+sip.instance")
        if present:
            return None
        return dataclasses.replace(na, params=na.params + (("+sip.instance", instance_for(str(na.uri))),), angle=True)

    map_contacts(msg, change)


def strip_instance(msg: SipMessage, instance_for: Callable[[str], str]) -> None:
    """
    Take the C{+sip.instance} that L{add_instance} gave out of the
    C{Contact}s of the answer to a REGISTER, so the application sees its
    own.
    """

    def change(na: NameAddr) -> NameAddr | None:
        present, inst = param(na.params, "+sip.instance")
        if present and inst == instance_for(str(na.uri)):
            return na.without_param("+sip.instance")
        return None

    map_contacts(msg, change)


def add_path(msg: SipMessage, route: str) -> None:
    """
    RFC 3327: put C{route} on top of a REGISTER's C{Path} and say that
    this request supports C{path}.
    """
    if msg.has("Path"):
        msg.prepend_header("Path", route)
    else:
        msg.append_header("Path", route)
    supported = [s.strip().lower() for s in msg.get_all("Supported")]
    if "path" not in supported:
        msg.append_header("Supported", "path")


def via_destination(via: Via) -> tuple[str, tuple[str, int]]:
    """
    Where a response goes for a C{Via} (RFC 3261 18.2.2, RFC 3581 4).
    """
    transport = via.transport.lower()
    present, received = param(via.params, "received")
    has_rport, rport = param(via.params, "rport")
    host = received or via.host
    port = via.port if via.port is not None else _DEFAULT_PORTS.get(transport, 5060)
    if rport and rport.isdigit():
        port = int(rport)
    return transport, (host, port)
