# -*- test-case-name: tests.test_sip_stun -*-
"""
The limited STUN server of a SIP UDP port (RFC 5626 8), sans-I/O.

A phone that uses SIP outbound over UDP keeps its flow (and the NAT
bindings on the way) alive with STUN Binding requests to its first hop,
on the port it sends SIP to (RFC 5626 3.5.2, 4.4.2); that hop answers
with a Binding success response carrying C{XOR-MAPPED-ADDRESS}, the
source address it saw (RFC 5626 8, RFC 8489 7.3.1).  A STUN message is
told from SIP by its first two bits (0), its magic cookie
(C{0x2112A442}) at bytes 4-8 and a length (bytes 2-4) that is a multiple
of 4 and the rest of the datagram (RFC 8489 5, 6): a SIP message starts
with a letter or a CR LF, and even a CR LF is not followed by the cookie.

Only what RFC 5626 needs is answered: a Binding request without
attributes, or with comprehension-optional ones only (C{SOFTWARE},
C{FINGERPRINT} ...).  It is answered with C{XOR-MAPPED-ADDRESS}, and with
C{FINGERPRINT} when the request had a correct one (RFC 8489 7.3: the
FINGERPRINT mechanism is for when a usage multiplexes STUN with another
protocol, and a client that uses it checks the response for it; RFC 5626
requires it of neither side).  Anything else that is STUN (indications,
responses, a request with a comprehension-required attribute such as
C{USERNAME} or C{MESSAGE-INTEGRITY}, a wrong FINGERPRINT, a message over
L{MAX_REQUEST} bytes) is not answered: it is L{Ignored} with a reason.

The answer is at most 52 bytes (a header, an IPv6 C{XOR-MAPPED-ADDRESS},
a C{FINGERPRINT}) to a request of at least 20: a spoofed source cannot
make the port a meaningful amplifier.  L{AnswerBudget} bounds the rate of
answers as well.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib

from attrs import frozen

__all__ = [
    "AnswerBudget",
    "Ignored",
    "MAGIC_COOKIE",
    "MAX_REQUEST",
    "binding_answer",
    "is_stun",
]

#: RFC 8489 5: the fixed value in bytes 4-8 of every STUN message
MAGIC_COOKIE = 0x2112A442

#: The largest request answered: RFC 8489 6.1 keeps a STUN message over
#: UDP without a known path MTU under 548 bytes (IPv4: 576 less headers).
MAX_REQUEST = 548

_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101
_XOR_MAPPED_ADDRESS = 0x0020
_FINGERPRINT = 0x8028
_FINGERPRINT_XOR = 0x5354554E
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)


@frozen
class Ignored:
    """
    A STUN message that gets no answer.

    @ivar reason: why, for a log line.
    """

    reason: str


def is_stun(data: bytes) -> bool:
    """
    @return: whether C{data} (one datagram) is a STUN message rather than
        anything else (SIP): the first two bits 0, the magic cookie, and
        a length that is a multiple of 4 and the rest of the datagram.
    """
    if len(data) < 20 or data[0] & 0xC0 or data[4:8] != _COOKIE_BYTES:
        return False
    length = (data[2] << 8) | data[3]
    return length % 4 == 0 and length == len(data) - 20


def binding_answer(data: bytes, source: tuple[str, int]) -> bytes | Ignored:
    """
    The answer to one STUN message (L{is_stun} said so) that came from
    C{source}.

    @param source: the sender's address C{(host, port)} as the socket saw
        it (an IPv4-mapped IPv6 address is answered as IPv4).
    @return: the Binding success response, or L{Ignored} with the reason
        it is not answered.
    """
    if not is_stun(data):
        return Ignored("not a STUN message")
    mtype, length, _, tid = _HEADER.unpack_from(data)
    if mtype != _BINDING_REQUEST:
        return Ignored(f"STUN message type 0x{mtype:04x}, not a Binding request")
    if len(data) > MAX_REQUEST:
        return Ignored(f"STUN Binding request of {len(data)} bytes, over {MAX_REQUEST}")
    fingerprint = False
    pos = 20
    while pos < len(data):
        if fingerprint:
            return Ignored("STUN attribute after FINGERPRINT")
        if pos + 4 > len(data):
            return Ignored("STUN attribute cut short")
        atype, alen = _ATTR.unpack_from(data, pos)
        end = pos + 4 + alen
        if end > len(data):
            return Ignored("STUN attribute cut short")
        if atype < 0x8000:
            return Ignored(f"STUN Binding request with attribute 0x{atype:04x}, not answered here")
        if atype == _FINGERPRINT:
            if alen != 4:
                return Ignored("malformed STUN FINGERPRINT")
            (value,) = struct.unpack_from("!I", data, pos + 4)
            if value != zlib.crc32(data[:pos]) ^ _FINGERPRINT_XOR:
                return Ignored("wrong STUN FINGERPRINT")
            fingerprint = True
        pos = end + (-alen % 4)
    try:
        address = _xor_mapped_address(source, tid)
    except ValueError:
        return Ignored(f"STUN Binding request from {source[0]!r}, not an IP address")
    body = address
    if not fingerprint:
        return _HEADER.pack(_BINDING_SUCCESS, len(body), MAGIC_COOKIE, tid) + body
    head = _HEADER.pack(_BINDING_SUCCESS, len(body) + 8, MAGIC_COOKIE, tid)
    crc = zlib.crc32(head + body) ^ _FINGERPRINT_XOR
    return head + body + _ATTR.pack(_FINGERPRINT, 4) + struct.pack("!I", crc)


def _xor_mapped_address(source: tuple[str, int], tid: bytes) -> bytes:
    """
    @return: the C{XOR-MAPPED-ADDRESS} attribute for C{source} (RFC 8489
        14.2).
    @raise ValueError: the host is not an IP address.
    """
    host, port = source
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    xport = (port & 0xFFFF) ^ (MAGIC_COOKIE >> 16)
    key = _COOKIE_BYTES if addr.version == 4 else _COOKIE_BYTES + tid
    xaddr = bytes(a ^ k for a, k in zip(addr.packed, key))
    family = 0x01 if addr.version == 4 else 0x02
    value = struct.pack("!BBH", 0, family, xport) + xaddr
    return _ATTR.pack(_XOR_MAPPED_ADDRESS, len(value)) + value


class AnswerBudget:
    """
    A token bucket for the answers of one STUN server: at most C{burst}
    at once and C{rate} per second on average, whoever asks (the server
    answers whatever source address a datagram claims).

    @ivar refused: requests not answered for want of a token so far.
    """

    def __init__(self, rate: float = 200.0, burst: int = 200) -> None:
        self.rate = rate
        self.burst = burst
        self.refused = 0
        self._tokens = float(burst)
        self._last: float | None = None

    def take(self, now: float) -> bool:
        """
        @return: whether an answer may be sent at C{now} (one token is then
            spent).
        """
        if self._last is not None:
            self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.refused += 1
        return False
