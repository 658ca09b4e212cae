# -*- test-case-name: tests.test_examples -*-
"""
A small SIP/RTP user agent for the demo and for trying SPWM by hand.

It speaks just enough SIP over UDP (RFC 3261) to register, place a call with
a G.711 audio offer, answer a call, and hang up with BYE, always through one
outbound proxy (an SPWM agent). Once a call is up it sends audio-sized RTP
(12-byte header + 160 bytes of payload = 172 bytes, 50 packets per second)
and counts what arrives: packets, duplicates, loss and one-way latency (the
payload carries the send time; both phones share a clock when they run on one
machine). Latency comes only from packets in this phone's own format (see
L{rtp_packet}): the RTP of another kind of phone carries no send time, and
for it no latency is given.

It does not use SPWM's own SIP parser on purpose: the phone is the other
side of the wire, so a bug shared by both ends could not hide.  This module
imports nothing from C{spwm} (C{tests/test_examples.py} checks); it lives in
C{spwm.testing} only so that the demo, the tests and the benchmarks import
it like any other module.

Run alone (two phones in two shells, behind one agent or two)::

    python examples/phone.py --name bob --proxy 127.0.0.1:5060 --answer
    python examples/phone.py --name alice --proxy 127.0.0.1:5060 --call bob --seconds 5

(C{examples/phone.py} runs L{main}; so does C{python -m spwm.testing.phone}.)
"""

from __future__ import annotations

import argparse
import math
import re
import secrets
import struct
import sys
import time
from typing import Any, Callable, Sequence

from twisted.internet import defer, task
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

#: Bytes of one RTP packet (12 header + 160 G.711 samples of 20 ms).
RTP_PACKET_SIZE = 172

#: Packets per second of one G.711 stream with 20 ms packets.
RTP_RATE = 50

#: How long a request is retransmitted before it fails (RFC 3261 64*T1 is 32 s;
#: loopback needs far less).
TRANSACTION_TIMEOUT = 8.0

_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length", "c": "content-type"}
_RTP_HEADER = struct.Struct("!BBHII")
_SEND_TIME = struct.Struct("!d")
#: What follows the send time in our payload (PCMU silence).
_FILLER = b"\xff" * (RTP_PACKET_SIZE - _RTP_HEADER.size - _SEND_TIME.size)


class SipParseError(ValueError):
    """
    A datagram that is not a SIP message this phone understands.
    """


class SipMessage:
    """
    A parsed SIP message: the first line, headers in order, the body.

    @ivar method: the request method, or C{None} for a response.
    @ivar uri: the Request-URI of a request.
    @ivar status: the status code of a response, or C{None}.
    @ivar reason: the reason phrase of a response.
    @ivar headers: C{(lower-case full name, value)} in order; comma-separated
        values of Via, Route, Record-Route and Contact are split.
    """

    def __init__(self, first: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.first = first
        self.headers = headers
        self.body = body
        self.method: str | None = None
        self.uri = ""
        self.status: int | None = None
        self.reason = ""
        parts = first.split(" ", 2)
        if len(parts) != 3:
            raise SipParseError(f"bad first line {first!r}")
        if parts[0] == "SIP/2.0":
            if not (parts[1].isdigit() and len(parts[1]) == 3):
                raise SipParseError(f"bad status {parts[1]!r}")
            self.status, self.reason = int(parts[1]), parts[2]
        elif parts[2] == "SIP/2.0" and re.fullmatch(r"[A-Za-z]+", parts[0]):
            self.method, self.uri = parts[0].upper(), parts[1]
        else:
            raise SipParseError(f"bad first line {first!r}")

    @property
    def summary(self) -> str:
        """
        C{INVITE} for a request, C{200} for a response.
        """
        return self.method if self.method is not None else str(self.status)

    def get(self, name: str) -> str | None:
        """
        The first value of header C{name} (any case), or C{None}.
        """
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """
        Every value of header C{name}, in order.
        """
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    @property
    def cseq(self) -> tuple[int, str]:
        """
        @raise SipParseError: no valid CSeq.
        """
        value = self.get("cseq") or ""
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SipParseError(f"bad CSeq {value!r}")
        return int(parts[0]), parts[1].upper()


def split_commas(value: str) -> list[str]:
    """
    Split a header value at commas outside quotes and angle brackets.
    """
    out, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif not quoted and depth == 0 and ch == ",":
            out.append(value[start:i].strip())
            start = i + 1
    out.append(value[start:].strip())
    return [v for v in out if v]


def parse_sip(data: bytes) -> SipMessage:
    """
    Parse one SIP message from a datagram.

    @raise SipParseError: anything malformed (and nothing else).
    """
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise SipParseError("no end of headers")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8") from None
    lines = text.split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise SipParseError(f"bad header line {line!r}")
        headers.append((_COMPACT.get(name, name), value.strip()))
    split: list[tuple[str, str]] = []
    for name, value in headers:
        if name in ("via", "route", "record-route", "contact"):
            split.extend((name, v) for v in split_commas(value))
        else:
            split.append((name, value))
    message = SipMessage(lines[0], split, body)
    length = message.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > len(body):
            raise SipParseError(f"bad Content-Length {length!r}")
        message.body = body[: int(length)]
    return message


def build_sip(first: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """
    Serialise a SIP message; Content-Length is added here.
    """
    lines = [first] + [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def uri_of(value: str) -> str:
    """
    The URI inside a name-addr (C{"Bob" <sip:bob@x>;tag=1} gives C{sip:bob@x}).
    """
    if "<" in value:
        return value[value.index("<") + 1 : value.index(">", value.index("<"))]
    return value.split(";", 1)[0].strip()


def tag_of(value: str) -> str | None:
    """
    The C{tag} parameter of a From or To value.
    """
    after = value[value.rindex(">") + 1 :] if ">" in value else value
    match = re.search(r";\s*tag=([^;\s]+)", after)
    return match.group(1) if match else None


def make_sdp(name: str, address: str, port: int, session: int, version: int = 1) -> bytes:
    """
    An SDP offer or answer with one G.711 audio stream (PCMU and PCMA).
    """
    lines = [
        "v=0",
        f"o={name} {session} {version} IN IP4 {address}",
        "s=spwm demo",
        f"c=IN IP4 {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0 8",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def sdp_audio_target(body: bytes) -> tuple[str, int] | None:
    """
    Where the first audio stream of an SDP body wants RTP: (address, port),
    or C{None} if there is none (or it is rejected with port 0).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    session_c, media_c, port, in_audio = None, None, None, False
    for line in re.split(r"\r\n|\n|\r", text):
        if line.startswith("m="):
            if port is not None:
                break
            fields = line[2:].split()
            in_audio = len(fields) >= 2 and fields[0] == "audio"
            if in_audio:
                number = fields[1].split("/")[0]
                port = int(number) if number.isdigit() else None
        elif line.startswith("c="):
            fields = line[2:].split()
            address = fields[2].split("/")[0] if len(fields) >= 3 else None
            if port is None and not in_audio:
                session_c = address
            elif in_audio:
                media_c = address
    address = media_c or session_c
    if port is None or port == 0 or address is None:
        return None
    return address, port


def rtp_packet(seq: int, timestamp: int, ssrc: int, send_time: float, marker: bool = False) -> bytes:
    """
    One 172-byte PCMU packet: a 12-byte header (no CSRC, no extension),
    then the send time as a big-endian double, then 152 bytes of PCMU
    silence (0xff). That payload is how L{parse_rtp} tells our packets
    from another phone's.
    """
    header = _RTP_HEADER.pack(0x80, (0x80 if marker else 0) | 0, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
    return header + _SEND_TIME.pack(send_time) + _FILLER


def parse_rtp(data: bytes) -> tuple[int, int, float | None] | None:
    """
    C{(sequence number, SSRC, send time)} of an RTP packet, or C{None} for
    a datagram that is not RTP (version 2, at least 20 bytes).

    The send time is C{None} unless the packet is in L{rtp_packet}'s
    format (172 bytes, a plain 12-byte header, a finite send time, the
    silence filler): a real phone's audio carries no send time, and reading
    its first payload bytes as one gives nonsense.
    """
    if len(data) < 20 or data[0] >> 6 != 2:
        return None
    first, _, seq, _, ssrc = _RTP_HEADER.unpack_from(data)
    sent: float | None = None
    if len(data) == RTP_PACKET_SIZE and first == 0x80 and data.endswith(_FILLER):
        (sent,) = _SEND_TIME.unpack_from(data, _RTP_HEADER.size)
        if not math.isfinite(sent):
            sent = None
    return seq, ssrc, sent


class RtpStats:
    """
    What one phone received on one call.

    @ivar received: RTP packets from the peer, duplicates included.
    @ivar unique: distinct sequence numbers received.
    @ivar latencies: one-way delays in seconds, one per unique packet that
        carries our send time (L{parse_rtp}).
    @ivar unstamped: unique packets without our send time (a peer that is
        not this phone): counted, but no latency.
    @ivar foreign: datagrams that are not RTP.
    @ivar echoed: packets carrying our own SSRC (our own audio came back:
        a relay that mixed up the two legs of a call); not counted above.
    """

    def __init__(self, own_ssrc: int | None = None) -> None:
        self.own_ssrc = own_ssrc
        self.echoed = 0
        self.received = 0
        self.bytes = 0
        self.duplicates = 0
        self.foreign = 0
        self.unstamped = 0
        self.latencies: list[float] = []
        self._seen: set[int] = set()
        self._cycles = 0
        self._last: int | None = None

    @property
    def unique(self) -> int:
        return len(self._seen)

    def packet(self, data: bytes, now: float) -> None:
        parsed = parse_rtp(data)
        if parsed is None:
            self.foreign += 1
            return
        seq, ssrc, sent = parsed
        if ssrc == self.own_ssrc:
            self.echoed += 1
            return
        self.received += 1
        self.bytes += len(data)
        # extend the 16-bit sequence number (RFC 3550 A.1, simplified)
        if self._last is not None and seq < 0x1000 and self._last > 0xF000:
            self._cycles += 0x10000
        self._last = seq
        extended = self._cycles + seq
        if extended in self._seen:
            self.duplicates += 1
            return
        self._seen.add(extended)
        if sent is None:
            self.unstamped += 1
        else:
            self.latencies.append(now - sent)

    def percentile(self, fraction: float) -> float | None:
        """
        The latency below which C{fraction} of the packets arrived, or
        C{None} when no packet carried our send time.
        """
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class _Rtp(DatagramProtocol):
    noisy = False

    def __init__(self, call: "Call") -> None:
        self.call = call

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.call.rx.packet(data, time.time())


class Call:
    """
    One call of a phone: dialog state, its RTP socket and counters.

    @ivar established: fires when the call is up (ACK sent or received).
    @ivar ended: fires with the final status of the BYE (ours or theirs).
    @ivar sent: RTP packets sent.
    @ivar rx: an L{RtpStats} of what arrived.
    """

    def __init__(self, phone: "Phone", call_id: str, local_tag: str, outgoing: bool) -> None:
        self.phone = phone
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag: str | None = None
        self.outgoing = outgoing
        self.local_uri = ""
        self.remote_uri = ""
        self.remote_target = ""
        self.route_set: list[str] = []
        self.cseq = 1
        self.remote_media: tuple[str, int] | None = None
        self.port: Any = None
        self._ssrc = secrets.randbits(32)
        self.rx = RtpStats(self._ssrc)
        self.sent = 0
        self.sent_bytes = 0
        self.established: defer.Deferred[Call] = defer.Deferred()
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._loop: LoopingCall | None = None
        self._seq = secrets.randbits(15)
        self._ts = secrets.randbits(31)
        self.invite: SipMessage | None = None
        self.answer: bytes | None = None
        #: an incoming call CANCELled before its answer (answered 487)
        self.cancelled = False
        #: ACKs received for the non-2xx final response (the 487)
        self.final_acks = 0
        #: an incoming call's ring before its answer (L{Phone.ring_seconds})
        self.ringing: defer.Deferred[Any] | None = None

    @property
    def local_port(self) -> int:
        return self.port.getHost().port

    def start_media(self, rate: int = RTP_RATE) -> None:
        """
        Send RTP to the negotiated address at C{rate} packets per second.
        """
        if self._loop is not None or self.remote_media is None:
            return
        self._loop = LoopingCall(self._send_one)
        self._loop.clock = self.phone.reactor
        self._loop.start(1.0 / rate, now=True)

    def stop_media(self) -> None:
        """
        Stop sending RTP (receiving goes on until the socket closes).
        """
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    @property
    def sending(self) -> bool:
        return self._loop is not None

    def _send_one(self) -> None:
        if self.port is None or self.remote_media is None:
            return
        packet = rtp_packet(self._seq, self._ts, self._ssrc, time.time(), marker=self.sent == 0)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts += 160
        self.port.write(packet, self.remote_media)
        self.sent += 1
        self.sent_bytes += len(packet)

    def close(self) -> Any:
        """
        Stop media and close the RTP socket.
        """
        self.stop_media()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


class _ClientTransaction:
    def __init__(self, data: bytes, deferred: defer.Deferred, invite: bool) -> None:
        self.data = data
        self.deferred = deferred
        self.invite = invite
        self.provisional = False
        self.timer: Any = None
        self.started = 0.0


class Phone(DatagramProtocol):
    """
    A SIP user agent over UDP that sends everything to one outbound proxy.

    @ivar name: user part of the AOR (C{name@domain}).
    @ivar sent: counts of SIP messages sent, by method or status code.
    @ivar received: counts of SIP messages received, likewise.
    @ivar byes: every BYE received, in order.
    @ivar cancels: every CANCEL received, in order.
    @ivar calls: every call, in order.
    @ivar incoming: called with each new incoming L{Call} once it is answered.
    @ivar ring_seconds: how long an incoming call rings (180, no early
        media) before it is answered; 0: at once.
    @ivar rings_without_offer: an incoming INVITE without SDP (a late
        offer) rings as one with SDP does (it cannot be answered: the
        phone makes no offer; it is for calls that end while they ring);
        else it is answered 488.
    """

    noisy = False
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        name: str,
        domain: str,
        proxy: tuple[str, int],
        address: str = "127.0.0.1",
        auto_answer: bool = True,
        on_incoming: Callable[[Call], None] | None = None,
        ring_seconds: float = 0.0,
        rings_without_offer: bool = False,
    ) -> None:
        self.reactor = reactor
        self.ring_seconds = ring_seconds
        self.rings_without_offer = rings_without_offer
        self.name = name
        self.domain = domain
        self.proxy = proxy
        self.address = address
        self.auto_answer = auto_answer
        self.on_incoming = on_incoming
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.byes: list[SipMessage] = []
        self.cancels: list[SipMessage] = []
        # Call-ID -> the INVITE of ours a non-2xx final response ended
        # (its retransmissions are ACKed again)
        self._failed_invites: dict[str, bytes] = {}
        self.errors: list[str] = []
        self.calls: list[Call] = []
        self._by_call_id: dict[str, Call] = {}
        self._transactions: dict[tuple[str, int, str], _ClientTransaction] = {}
        self._ok_retransmits: dict[str, Any] = {}
        self._sip_port: Any = None
        self._register_call_id = self._new_id()
        self._register_cseq = 0

    # life cycle

    def start(self) -> None:
        """
        Bind the SIP socket on our address (a free port).
        """
        self._sip_port = self.reactor.listenUDP(0, self, interface=self.address)

    @property
    def sip_port(self) -> int:
        return self._sip_port.getHost().port

    @property
    def aor(self) -> str:
        return f"sip:{self.name}@{self.domain}"

    @property
    def contact(self) -> str:
        return f"<sip:{self.name}@{self.address}:{self.sip_port}>"

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """
        Close every call's socket, cancel timers, close the SIP socket.
        """
        for transaction in self._transactions.values():
            if transaction.timer is not None and transaction.timer.active():
                transaction.timer.cancel()
        self._transactions.clear()
        for call_id in list(self._ok_retransmits):
            self._stop_ok(call_id)
        for call in self.calls:
            if call.ringing is not None:
                call.ringing.cancel()
            yield call.close()
        port, self._sip_port = self._sip_port, None
        if port is not None:
            yield port.stopListening()

    # public actions

    def register(self, expires: int = 300, authorization: str | None = None) -> defer.Deferred[SipMessage]:
        """
        REGISTER our AOR with our contact; fires with the final response.

        @param authorization: an C{Authorization} header value to send along
            (the embedded registrar does not challenge; SPWM derives its
            per-user key from digest credentials that a 2xx accepts).
        """
        self._register_cseq += 1
        headers = [
            ("Via", self._via()),
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={self._new_id(8)}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", self._register_call_id),
            ("CSeq", f"{self._register_cseq} REGISTER"),
            ("Contact", self.contact),
            ("Expires", str(expires)),
            ("User-Agent", "spwm-demo-phone"),
        ]
        if authorization is not None:
            headers.append(("Authorization", authorization))
        return self._request(f"REGISTER sip:{self.domain} SIP/2.0", headers, self._register_call_id, self._register_cseq, "REGISTER")

    @defer.inlineCallbacks
    def call(self, user: str, offer: bool = True) -> Any:
        """
        Call C{user@domain}; fires with the L{Call} once the 2xx is ACKed.

        @param offer: with an SDP offer; else an INVITE without a body (a
            late offer, for calls that end while they ring: an answer
            with an offer is not answered in the ACK).
        @raise CallFailed: a final response other than 2xx, or no SDP answer.
        """
        call = self._new_call(self._new_id(), self._new_id(8), outgoing=True)
        call.local_uri = self.aor
        call.remote_uri = f"sip:{user}@{self.domain}"
        yield self._bind_media(call)
        body = make_sdp(self.name, self.address, call.local_port, secrets.randbits(31)) if offer else b""
        headers = [
            ("Via", self._via()),
            ("Max-Forwards", "70"),
            ("From", f"<{call.local_uri}>;tag={call.local_tag}"),
            ("To", f"<{call.remote_uri}>"),
            ("Call-ID", call.call_id),
            ("CSeq", f"{call.cseq} INVITE"),
            ("Contact", self.contact),
            ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS"),
        ]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        response = yield self._request(f"INVITE {call.remote_uri} SIP/2.0", headers, call.call_id, call.cseq, "INVITE", body)
        if response.status is None or not 200 <= response.status < 300:
            yield call.close()
            raise CallFailed(f"INVITE answered {response.status} {response.reason}")
        call.remote_tag = tag_of(response.get("to") or "")
        contact = response.get("contact")
        call.remote_target = uri_of(contact) if contact else call.remote_uri
        call.route_set = list(reversed([v for v in response.get_all("record-route")]))
        call.remote_media = sdp_audio_target(response.body)
        self._send_ack(call, response)
        if call.remote_media is None:
            raise CallFailed("the 2xx to INVITE carries no usable SDP answer")
        call.established.callback(call)
        return call

    def hang_up(self, call: Call) -> defer.Deferred[SipMessage]:
        """
        Send BYE in the dialog; fires with the final response.
        """
        call.stop_media()
        call.cseq += 1
        headers = self._dialog_headers(call, "BYE")
        d = self._request(f"BYE {call.remote_target} SIP/2.0", headers, call.call_id, call.cseq, "BYE")

        def done(response: SipMessage) -> SipMessage:
            if not call.ended.called:
                call.ended.callback(response.status or 0)
            return response

        return d.addCallback(done)

    # receiving

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip():
            return
        try:
            message = parse_sip(data)
        except SipParseError as e:
            self.errors.append(f"unparseable SIP from {addr}: {e}")
            return
        self.received[message.summary] = self.received.get(message.summary, 0) + 1
        try:
            if message.method is None:
                self._response(message)
            else:
                self._request_received(message, addr)
        except SipParseError as e:
            self.errors.append(f"bad SIP from {addr}: {e}")

    def _response(self, message: SipMessage) -> None:
        number, method = message.cseq
        key = (message.get("call-id") or "", number, method)
        transaction = self._transactions.get(key)
        if transaction is None:
            if method == "INVITE" and message.status is not None and 200 <= message.status < 300:
                # a retransmitted 2xx: ACK it again
                call = self._by_call_id.get(key[0])
                if call is not None and call.remote_tag is not None:
                    self._send_ack(call, message)
            elif method == "INVITE" and key[0] in self._failed_invites:
                self._ack_failure(self._failed_invites[key[0]], message)
            return
        assert message.status is not None
        if message.status < 200:
            transaction.provisional = True
            return
        del self._transactions[key]
        if method == "INVITE" and message.status >= 300:
            self._failed_invites[key[0]] = transaction.data
            self._ack_failure(transaction.data, message)
        if transaction.timer is not None and transaction.timer.active():
            transaction.timer.cancel()
        transaction.deferred.callback(message)

    def _request_received(self, message: SipMessage, addr: tuple[str, int]) -> None:
        method = message.method
        call_id = message.get("call-id") or ""
        call = self._by_call_id.get(call_id)
        if method == "INVITE":
            if call is not None:
                # retransmission (or a re-INVITE we do not support)
                if call.answer is not None and tag_of(message.get("to") or "") is None:
                    self._send(call.answer, addr)
                else:
                    self._reply(message, addr, 488, "Not Acceptable Here")
                return
            self._incoming(message, addr)
        elif method == "ACK":
            if call is not None and call.cancelled:
                call.final_acks += 1
            elif call is not None:
                self._stop_ok(call_id)
                if not call.established.called:
                    call.established.callback(call)
        elif method == "BYE":
            self.byes.append(message)
            if call is None or tag_of(message.get("to") or "") != call.local_tag:
                self._reply(message, addr, 481, "Call/Transaction Does Not Exist")
                return
            call.stop_media()
            self._stop_ok(call_id)
            self._reply(message, addr, 200, "OK")
            if not call.ended.called:
                call.ended.callback(200)
        elif method == "CANCEL":
            self.cancels.append(message)
            self._reply(message, addr, 481 if call is None else 200, "OK" if call else "Call/Transaction Does Not Exist")
            if call is not None and not call.outgoing and call.answer is None and call.invite is not None:
                # ringing still: the INVITE ends with 487 (RFC 3261 9.2)
                call.cancelled = True
                if call.ringing is not None:
                    call.ringing.cancel()
                self._reply(call.invite, addr, 487, "Request Terminated", to_tag=call.local_tag)
                if not call.ended.called:
                    call.ended.callback(487)
        elif method == "OPTIONS":
            self._reply(message, addr, 200, "OK")
        else:
            self._reply(message, addr, 405, "Method Not Allowed")

    def _incoming(self, invite: SipMessage, addr: tuple[str, int]) -> None:
        call = self._new_call(invite.get("call-id") or "", self._new_id(8), outgoing=False)
        call.invite = invite
        call.remote_tag = tag_of(invite.get("from") or "")
        call.remote_uri = uri_of(invite.get("from") or "")
        call.local_uri = uri_of(invite.get("to") or "")
        contact = invite.get("contact")
        call.remote_target = uri_of(contact) if contact else call.remote_uri
        call.route_set = list(invite.get_all("record-route"))
        call.cseq = 0
        call.remote_media = sdp_audio_target(invite.body)
        self._reply(invite, addr, 100, "Trying")
        if call.remote_media is None and not (self.rings_without_offer and not invite.body):
            self._reply(invite, addr, 488, "Not Acceptable Here", to_tag=call.local_tag)
            return
        if not self.auto_answer:
            self._reply(invite, addr, 486, "Busy Here", to_tag=call.local_tag)
            return
        self._reply(invite, addr, 180, "Ringing", to_tag=call.local_tag)
        d = self._bind_media(call)

        def answer(_: object) -> None:
            if call.cancelled:
                return
            if call.remote_media is None:
                # a late offer: rung long enough, nothing to answer with
                self._reply(invite, addr, 480, "Temporarily Unavailable", to_tag=call.local_tag)
                return
            body = make_sdp(self.name, self.address, call.local_port, secrets.randbits(31))
            call.answer = self._reply(
                invite,
                addr,
                200,
                "OK",
                to_tag=call.local_tag,
                extra=[("Contact", self.contact), ("Content-Type", "application/sdp")],
                body=body,
                record_route=True,
            )
            self._retransmit_ok(call.call_id, call.answer, addr, 0.5)
            if self.on_incoming is not None:
                self.on_incoming(call)

        def ring(port: Any) -> Any:
            call.ringing = task.deferLater(self.reactor, self.ring_seconds, lambda: port)
            return call.ringing

        if self.ring_seconds:
            # ring first (180, no early media), then answer
            d.addCallback(ring)
        d.addCallback(answer)
        def failed(f: Any) -> None:
            if not f.check(defer.CancelledError):  # (a CANCEL, or the stop)
                self.errors.append(f"answering failed: {f.getErrorMessage()}")

        d.addErrback(failed)

    # sending

    def _request(
        self, first: str, headers: list[tuple[str, str]], call_id: str, cseq: int, method: str, body: bytes = b""
    ) -> defer.Deferred[SipMessage]:
        data = build_sip(first, headers, body)
        d: defer.Deferred[SipMessage] = defer.Deferred()
        transaction = _ClientTransaction(data, d, method == "INVITE")
        transaction.started = self.reactor.seconds()
        self._transactions[call_id, cseq, method] = transaction
        self._count_sent(method)
        self._send(data, self.proxy, count=False)
        transaction.timer = self.reactor.callLater(0.5, self._retransmit, (call_id, cseq, method), 0.5)
        return d

    def _retransmit(self, key: tuple[str, int, str], interval: float) -> None:
        transaction = self._transactions.get(key)
        if transaction is None:
            return
        if self.reactor.seconds() - transaction.started >= TRANSACTION_TIMEOUT:
            del self._transactions[key]
            transaction.deferred.errback(TransactionTimeout(f"no final response to {key[2]} within {TRANSACTION_TIMEOUT:g} s"))
            return
        if not (transaction.invite and transaction.provisional):
            self._count_sent(key[2])
            self._send(transaction.data, self.proxy, count=False)
        interval = min(interval * 2, 4.0)
        transaction.timer = self.reactor.callLater(interval, self._retransmit, key, interval)

    def _retransmit_ok(self, call_id: str, data: bytes, addr: tuple[str, int], interval: float) -> None:
        def again() -> None:
            self._ok_retransmits.pop(call_id, None)
            if interval >= 4.0:
                self.errors.append(f"no ACK for the 200 of call {call_id}")
                return
            self._count_sent("200")
            self._send(data, addr, count=False)
            self._retransmit_ok(call_id, data, addr, interval * 2)

        self._ok_retransmits[call_id] = self.reactor.callLater(interval, again)

    def _stop_ok(self, call_id: str) -> None:
        timer = self._ok_retransmits.pop(call_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    def cancel(self, call: Call) -> defer.Deferred[SipMessage]:
        """
        CANCEL the INVITE of C{call}, an outgoing call not answered yet
        (RFC 3261 9.1); fires with the CANCEL's final response.
        """
        transaction = self._transactions[call.call_id, call.cseq, "INVITE"]
        invite = parse_sip(transaction.data)
        headers = [("Via", invite.get("via") or ""), ("Max-Forwards", "70")]
        headers += [(name, invite.get(name) or "") for name in ("From", "To", "Call-ID")]
        headers.append(("CSeq", f"{call.cseq} CANCEL"))
        return self._request(f"CANCEL {invite.uri} SIP/2.0", headers, call.call_id, call.cseq, "CANCEL")

    def _ack_failure(self, invite_data: bytes, response: SipMessage) -> None:
        """
        ACK a non-2xx final response to our INVITE (RFC 3261 17.1.1.3):
        the INVITE's Request-URI, Via, From, Call-ID and CSeq number, the
        response's To.
        """
        invite = parse_sip(invite_data)
        headers = [("Via", invite.get("via") or ""), ("Max-Forwards", "70")]
        headers += [("From", invite.get("from") or ""), ("To", response.get("to") or "")]
        headers += [("Call-ID", invite.get("call-id") or ""), ("CSeq", f"{invite.cseq[0]} ACK")]
        self._count_sent("ACK")
        self._send(build_sip(f"ACK {invite.uri} SIP/2.0", headers), self.proxy, count=False)

    def _send_ack(self, call: Call, response: SipMessage) -> None:
        headers = self._dialog_headers(call, "ACK", cseq=call.cseq)
        self._count_sent("ACK")
        self._send(build_sip(f"ACK {call.remote_target} SIP/2.0", headers), self.proxy, count=False)

    def _dialog_headers(self, call: Call, method: str, cseq: int | None = None) -> list[tuple[str, str]]:
        headers = [("Via", self._via()), ("Max-Forwards", "70")]
        headers += [("Route", route) for route in call.route_set]
        headers += [
            ("From", f"<{call.local_uri}>;tag={call.local_tag}"),
            ("To", f"<{call.remote_uri}>" + (f";tag={call.remote_tag}" if call.remote_tag else "")),
            ("Call-ID", call.call_id),
            ("CSeq", f"{call.cseq if cseq is None else cseq} {method}"),
        ]
        return headers

    def _reply(
        self,
        request: SipMessage,
        addr: tuple[str, int],
        status: int,
        reason: str,
        to_tag: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        record_route: bool = False,
    ) -> bytes:
        headers = [("Via", v) for v in request.get_all("via")]
        if record_route:
            headers += [("Record-Route", v) for v in request.get_all("record-route")]
        to = request.get("to") or ""
        if to_tag is not None and tag_of(to) is None:
            to += f";tag={to_tag}"
        headers += [
            ("From", request.get("from") or ""),
            ("To", to),
            ("Call-ID", request.get("call-id") or ""),
            ("CSeq", request.get("cseq") or ""),
            *extra,
        ]
        data = build_sip(f"SIP/2.0 {status} {reason}", headers, body)
        self._count_sent(str(status))
        self._send(data, addr, count=False)
        return data

    def _send(self, data: bytes, addr: tuple[str, int], count: bool = True) -> None:
        if self.transport is not None:
            self.transport.write(data, addr)

    def _count_sent(self, summary: str) -> None:
        self.sent[summary] = self.sent.get(summary, 0) + 1

    # helpers

    def _new_call(self, call_id: str, local_tag: str, outgoing: bool) -> Call:
        call = Call(self, call_id, local_tag, outgoing)
        self.calls.append(call)
        self._by_call_id[call_id] = call
        return call

    def _bind_media(self, call: Call) -> defer.Deferred[None]:
        call.port = self.reactor.listenUDP(0, _Rtp(call), interface=self.address)
        return defer.succeed(None)

    def _via(self) -> str:
        return f"SIP/2.0/UDP {self.address}:{self.sip_port};branch=z9hG4bK{self._new_id(10)};rport"

    @staticmethod
    def _new_id(size: int = 12) -> str:
        return secrets.token_hex(size)


class CallFailed(Exception):
    """
    The call could not be set up.
    """


@defer.inlineCallbacks
def call_with_media(caller: "Phone", callee: "Phone") -> Any:
    """
    C{caller} calls C{callee} (by its name), which answers; once the call
    is established both send RTP.

    @return: a L{Deferred} of the caller's and the callee's L{Call}.
    """
    answered: defer.Deferred[Call] = defer.Deferred()

    def incoming_call(call: Call) -> None:
        if not answered.called:
            answered.callback(call)

    callee.on_incoming = incoming_call
    outgoing = yield caller.call(callee.name)
    incoming = yield answered
    yield incoming.established
    outgoing.start_media()
    incoming.start_media()
    return outgoing, incoming


class TransactionTimeout(Exception):
    """
    A request got no final response in time.
    """


def report_line(name: str, sent: int, rx: RtpStats) -> str:
    """
    The line L{main} prints about a call's RTP.

    @param name: the phone's user name.
    @param sent: RTP packets it sent.
    @param rx: what it received.
    @return: packets sent and received, with the p50 and p99 one-way
        latency when the peer's packets carried our send time (another
        instance of this phone), else C{latency n/a}.
    """
    if not rx.unique:
        return f"{name}: sent {sent} RTP, received none"
    head = f"{name}: sent {sent} RTP, received {rx.unique} (dup {rx.duplicates})"
    p50, p99 = rx.percentile(0.5), rx.percentile(0.99)
    if p50 is None or p99 is None:
        return f"{head}, latency n/a (the peer's packets carry no send time)"
    return f"{head}, p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    """
    Run one phone from the command line: register, then answer or call.
    """
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--name", required=True, help="user name (AOR name@domain)")
    parser.add_argument("--domain", default="demo.spwm.test")
    parser.add_argument("--proxy", default="127.0.0.1:5060", help="the agent's SIP address IP:PORT")
    parser.add_argument("--address", default="127.0.0.1", help="our address for SIP and RTP")
    parser.add_argument("--call", metavar="USER", help="call USER@domain after registering")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the call")
    parser.add_argument("--answer", action="store_true", help="stay registered and answer calls")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    phone = Phone(reactor, args.name, args.domain, _host_port(args.proxy), args.address)
    result = {"code": 1}

    def report(call: Call) -> None:
        print(report_line(args.name, call.sent, call.rx))

    @defer.inlineCallbacks
    def run() -> Any:
        stay = False
        try:
            phone.start()
            response = yield phone.register()
            print(f"{args.name}: REGISTER -> {response.status} {response.reason}")
            if response.status != 200:
                return
            if args.call:
                call = yield phone.call(args.call)
                print(f"{args.name}: call to {args.call} established")
                call.start_media()
                yield _sleep(reactor, args.seconds)
                response = yield phone.hang_up(call)
                print(f"{args.name}: BYE -> {response.status}")
                report(call)
                result["code"] = 0 if response.status == 200 else 1
            else:

                def incoming(call: Call) -> None:
                    print(f"{args.name}: answered a call from {call.remote_uri}")
                    call.established.addCallback(lambda c: c.start_media())
                    call.ended.addCallback(lambda _: report(call))

                phone.on_incoming = incoming
                result["code"] = 0
                stay = True  # until interrupted; the phone stops with the reactor
                reactor.addSystemEventTrigger("before", "shutdown", phone.stop)
        except Exception as e:
            print(f"{args.name}: {e}", file=sys.stderr)
        finally:
            if not stay:
                yield phone.stop()
                if reactor.running:
                    reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    return result["code"]


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


if __name__ == "__main__":
    raise SystemExit(main())
