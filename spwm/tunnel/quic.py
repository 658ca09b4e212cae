# -*- test-case-name: tests.test_tunnel_quic -*-
"""
The tunnel over QUIC (RFC 9000) with DATAGRAM frames (RFC 9221).

The tunnel's frame protocol runs unchanged over one bidirectional QUIC
stream (the first one the agent opens), so the existing L{TunnelProtocol}
and its sans-I/O core do the handshake, SIP, control and channels exactly
as over TLS/TCP.  Only the media changes way: each tunnel DATAGRAM frame
(type 0x03, the same encoding) goes in one QUIC DATAGRAM frame instead of
on the stream, and each QUIC DATAGRAM frame received is handed to the core
as the DATAGRAM frame it holds.

The pieces:

  - L{FrameSplitter}: sans-I/O, cuts a byte stream of tunnel frames at
    frame boundaries and picks out the DATAGRAM frames;
  - L{QuicTunnelTransport}: drives one aioquic C{QuicConnection} (its
    timer is one rescheduled C{IDelayedCall}; what it has to send is
    flushed after every input) and is the C{ITransport} of the
    L{TunnelProtocol} above it, which cannot tell it from a TLS transport;
  - L{QuicListener}, L{QuicServerEndpoint}: the contact point's UDP port,
    connections found by connection id, address validation with a
    stateless Retry, admission by the same L{ContactTunnelFactory} (and so
    the same limits) as the TCP listener;
  - L{QuicClientEndpoint}: the agent's side, an C{IStreamClientEndpoint}
    for L{spwm.tunnel.service.AgentTunnelService}.

See C{docs/protocol.md} (the mapping) and C{docs/security.md}.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
from typing import Any, Callable

from aioquic.buffer import Buffer
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from attrs import define
from twisted.internet import base, error, udp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorFDSet,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spwm import leanpoll
from spwm.limits import QuicLimits
from spwm.logthrottle import Every, ThrottledLog
from spwm.session.paths import PathKind
from spwm.tunnel.frames import ALPN, HEADER_SIZE, PREFACE_SIZE, FrameType
from spwm.tunnel.quiccc import algorithm_name

__all__ = [
    "ALPN_TEXT",
    "FrameSplitter",
    "QuicClientEndpoint",
    "QuicClientReport",
    "QuicConnectionClosed",
    "QuicListener",
    "QuicServerEndpoint",
    "QuicStats",
    "QuicTunnelTransport",
    "client_configuration",
    "connect_quic_tunnel",
    "describe_quic_close",
    "server_configuration",
]

# aioquic logs through the standard library; without a handler of our own
# Python would print its warnings on stderr next to our log line.
logging.getLogger("quic").addHandler(logging.NullHandler())

#: the ALPN protocol of the tunnel over QUIC (the same as over TLS/TCP)
ALPN_TEXT = ALPN.decode("ascii")

_DATAGRAM = int(FrameType.DATAGRAM)
#: the largest QUIC DATAGRAM frame a peer may send us (RFC 9221 transport parameter)
_MAX_DATAGRAM_FRAME = 65535
#: what a 1-RTT packet adds around a DATAGRAM frame's data: short header
#: (1 + 8-byte connection id + up to 4 bytes of packet number), the AEAD
#: tag (16), the frame type and its length (1 + 2), with a margin
_PACKET_OVERHEAD = 48
#: media frames queued in one reactor turn before QUIC is asked to send them
#: at once (below it they wait for the end of the turn, to share packets)
_FLUSH_BATCH = 16
#: the length of the connection ids we issue
_CID_LENGTH = 8
#: the smallest datagram that may open a QUIC connection (RFC 9000, 14.1)
_MIN_INITIAL = 1200
#: QUIC's CRYPTO_ERROR range: 0x100 + the TLS alert
_CRYPTO_ERROR = range(0x100, 0x200)


class QuicConnectionClosed(ConnectionError):
    """
    A QUIC connection ended; the message says why in words.
    """


class FrameSplitter:
    """
    Cuts a byte stream of tunnel frames (after the 8-byte preface) at frame
    boundaries.  Sans-I/O: bytes in, pieces out; a partial frame is kept
    for the next call (at most one frame: 8 + 65535 bytes).

    @ivar pick_datagrams: whether DATAGRAM frames come out as pieces of
        their own (the sending side) or stay in the stream (the receiving
        side).
    """

    def __init__(self, pick_datagrams: bool) -> None:
        self.pick_datagrams = pick_datagrams
        self._preface = PREFACE_SIZE
        self._buf = b""

    @property
    def at_boundary(self) -> bool:
        """
        Whether everything fed has come out (no partial frame kept) and the
        preface is behind.
        """
        return not self._buf and not self._preface

    @property
    def preface_done(self) -> bool:
        """
        Whether the preface is behind: from then on only whole frames come
        out, so what they were fed to ends at a frame boundary (a partial
        frame stays here).
        """
        return not self._preface

    def split(self, data: bytes) -> list[tuple[bool, bytes]]:
        """
        @return: C{(is_datagram, piece)} in stream order: runs of whole
            frames (and preface bytes) for the stream, and, with
            L{pick_datagrams}, each DATAGRAM frame alone.
        """
        buf = self._buf + data if self._buf else data
        size = len(buf)
        pos = 0
        if self._preface:
            pos = min(self._preface, size)
            self._preface -= pos
        start = 0
        out: list[tuple[bool, bytes]] = []
        pick = self.pick_datagrams
        while pos + HEADER_SIZE <= size:
            end = pos + HEADER_SIZE + ((buf[pos + 6] << 8) | buf[pos + 7])
            if end > size:
                break
            if pick and buf[pos] == _DATAGRAM:
                if pos > start:
                    out.append((False, buf[start:pos]))
                out.append((True, buf[pos:end]))
                start = end
            pos = end
        if pos > start:
            out.append((False, buf[start:pos]))
        self._buf = buf[pos:]
        return out


def is_datagram_frame(data: bytes) -> bool:
    """
    Whether C{data} is exactly one tunnel DATAGRAM frame.
    """
    return len(data) >= HEADER_SIZE and data[0] == _DATAGRAM and len(data) == HEADER_SIZE + ((data[6] << 8) | data[7])


@define
class QuicStats:
    """
    Counters of the QUIC side of one tunnel (the core keeps the tunnel's).

    @ivar datagrams_sent: tunnel DATAGRAM frames sent as QUIC DATAGRAM frames.
    @ivar datagrams_received: QUIC DATAGRAM frames handed to the core.
    @ivar datagrams_on_stream: DATAGRAM frames too large for one QUIC
        packet, sent on the stream instead.
    @ivar datagrams_dropped_queue: dropped because QUIC's congestion window
        left more than L{QuicLimits.max_pending_datagrams} waiting.
    @ivar datagrams_dropped_malformed: received QUIC DATAGRAM frames that
        are not one tunnel DATAGRAM frame.
    @ivar datagrams_dropped_early: received before the tunnel handshake
        or for a channel not open (yet: the datagram overtook its open on
        the stream, or no more).
    @ivar packets_unsent: QUIC packets the UDP socket refused (its send
        buffer full, the network unreachable): lost as on the network;
        QUIC sends again what needs it, a media datagram in one is gone.
    """

    datagrams_sent: int = 0
    datagrams_received: int = 0
    datagrams_on_stream: int = 0
    datagrams_dropped_queue: int = 0
    datagrams_dropped_malformed: int = 0
    datagrams_dropped_early: int = 0
    packets_unsent: int = 0


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("UDP", host, port)
    return IPv4Address("UDP", host, port)


def _cert_sentence(reason: str, certificate: Any, server_name: str | None) -> str:
    """
    The TLS/TCP tunnel's sentence for a failed certificate check, from
    aioquic's reason and the certificate it checked (C{None} if unknown).
    """
    from OpenSSL import crypto

    from spwm.tunnel.service import _verify_error, cert_names

    try:
        cert = crypto.X509.from_cryptography(certificate) if certificate is not None else None
    except Exception:
        cert = None
    text = reason.lower()
    if cert is None:
        return f"certificate check failed: {reason}"
    if "doesn't match" in text or "does not match" in text:
        return f"certificate for {cert_names(cert)} does not match server name {server_name}"
    if "no longer valid" in text:
        return _verify_error(10, 0, cert)
    if "not valid yet" in text:
        return _verify_error(9, 0, cert)
    if "self-signed" in text or "self signed" in text:
        return _verify_error(18, 0, cert)
    if "issuer" in text:
        return _verify_error(20, 0, cert)
    return f"certificate for {cert_names(cert)}: {reason}"


def describe_quic_close(event: qe.ConnectionTerminated, *, local: bool) -> str:
    """
    One line for the end of a QUIC connection.
    """
    phrase = event.reason_phrase or ""
    if event.error_code in _CRYPTO_ERROR:
        alert = event.error_code - 0x100
        if alert == 120:
            return "the contact point does not speak the SPWM tunnel over QUIC (no ALPN spwm/1)"
        return f"TLS error: {phrase or f'alert {alert}'}"
    if event.error_code == QuicErrorCode.NO_ERROR:
        if phrase.lower().startswith("idle timeout") or (not phrase and local):
            return "QUIC connection idle: the peer stopped answering"
        return f"QUIC connection closed by {'us' if local else 'peer'}" + (f": {phrase}" if phrase else "")
    return f"QUIC connection closed with error 0x{event.error_code:x}" + (f": {phrase}" if phrase else "")


class _AtTurnEnd:
    """
    A flush asked of the reactor's turn end (L{spwm.leanpoll.turn_end}),
    in the place of its timer: nothing to cancel (the flush finds a
    connection that ended and does nothing).
    """

    def active(self) -> bool:
        return False

    def cancel(self) -> None:
        pass


_AT_TURN_END = _AtTurnEnd()


@implementer(ITransport)
class QuicTunnelTransport:
    """
    One QUIC connection carrying one tunnel, and the transport of the
    L{TunnelProtocol} (or any stream protocol of tunnel frames) above it.

    Stream bytes written go on the tunnel's QUIC stream; DATAGRAM frames
    written go as QUIC DATAGRAM frames (on the stream if one does not fit
    in a packet).  Stream bytes received reach the protocol cut at frame
    boundaries, so a QUIC DATAGRAM frame received can be given to the
    protocol between two of them.

    @ivar quic: the aioquic connection.
    @ivar protocol: the protocol above, once L{attach}ed.
    @ivar stats: L{QuicStats}.
    @ivar close_reason: why the QUIC connection ended, in words, once it has.
    """

    log = Logger()
    disconnecting = False
    #: what a session's scheduler knows this path as (L{spwm.session.carrier.path_kind})
    path_kind = PathKind.QUIC
    #: aioquic asks the agent for no certificate: a contact point with
    #: mutual TLS (C{--client-ca}) takes a QUIC connection only to join a
    #: session opened over TCP with one (L{spwm.tunnel.protocol}: the
    #: attach proof, a key sent inside that session, stands for it)
    client_certificates = False
    #: B{Test hook, for tests only}: while true, every UDP datagram this
    #: connection sends or receives is discarded, as a firewall dropping
    #: UDP would (the loopback tests of C{--udp-path auto} cut UDP this way,
    #: without network namespaces); nothing in SPWM sets it.
    blackhole = False

    def __init__(
        self,
        quic: QuicConnection,
        clock: IReactorTime,
        send: Callable[[bytes, Any], bool | None],
        peer: tuple[str, int],
        host: Any,
        *,
        limits: QuicLimits | None = None,
        on_terminated: Callable[[QuicTunnelTransport], None] | None = None,
        on_cid: Callable[[QuicTunnelTransport, bytes, bool], None] | None = None,
        on_tls_error: Callable[[str], None] | None = None,
        server_name: str | None = None,
    ) -> None:
        """
        @param send: C{send(data, addr)} writes one UDP datagram; it
            returns C{False} when the socket refused it (counted).
        @param peer: the peer's C{(host, port)}.
        @param host: our address (C{getHost}).
        @param on_terminated: told once, when the QUIC connection has ended.
        @param on_cid: C{on_cid(transport, cid, issued)} when a connection
            id of ours is issued (C{True}) or retired (C{False}).
        @param on_tls_error: told the sentence of a failed certificate check.
        @param server_name: the name the peer's certificate was checked against.
        """
        self.quic = quic
        self.protocol: Any = None
        self.stats = QuicStats()
        self.close_reason: str | None = None
        self._clock = clock
        self._send = send
        self._peer_addr = peer
        self._peer = _address(peer[0], peer[1])
        self._host = host
        self._limits = limits or QuicLimits()
        self._max_datagram = self._limits.packet_size - _PACKET_OVERHEAD
        self._on_terminated = on_terminated
        self._on_cid = on_cid
        self._on_tls_error = on_tls_error
        self._server_name = server_name
        self._is_client = quic.configuration.is_client
        self._stream_id: int | None = None
        self._early: list[bytes] = []
        self._out = FrameSplitter(pick_datagrams=True)
        self._in = FrameSplitter(pick_datagrams=False)
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        self._busy = False
        self._told_lost = False
        self._terminated = False
        self._producer: IPushProducer | None = None
        self._producer_paused = False
        self._pending = getattr(quic, "_datagrams_pending", None)
        self._tunnel_protocol: Any = None
        self._handshake_done = False
        #: the media's flush asked for the turn's end: a timer, or
        #: L{_AT_TURN_END} where the reactor says when its turn ends
        self._flush_call: IDelayedCall | _AtTurnEnd | None = None
        self._turn_end = leanpoll.turn_end(clock)

    # -- driving the QUIC connection ----------------------------------------

    def attach(self, protocol: Any) -> None:
        """
        Connect C{protocol} to this transport (C{makeConnection}).
        """
        self.protocol = protocol
        protocol.makeConnection(self)
        self._service()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """
        A UDP datagram for this connection.
        """
        if self._terminated or self.blackhole:
            return
        self.quic.receive_datagram(data, addr, self._clock.seconds())
        self._service()

    def _write_udp(self, data: bytes, addr: Any) -> None:
        if not self.blackhole and self._send(data, addr) is False:
            self.stats.packets_unsent += 1

    def _service(self) -> None:
        # Events (they may write), then what QUIC has to send (which may end
        # the connection: one more round of events), then the timer.
        if self._busy:
            return
        self._busy = True
        quic = self.quic
        try:
            event = quic.next_event()
            for _ in range(8):
                while event is not None:
                    self._event(event)
                    event = quic.next_event()
                if self._terminated:
                    break
                send = self._write_udp
                for data, addr in quic.datagrams_to_send(self._clock.seconds()):
                    send(data, addr)
                # sending may have ended the connection: one more round
                event = quic.next_event()
                if event is None:
                    break
            while event is not None:
                # (only after eight rounds in a row; sent at the next timer)
                self._event(event)
                event = quic.next_event()
        except Exception:
            self.log.failure("unexpected error on QUIC connection with {peer}", peer=self._peer_text())
            self._busy = False
            self._close_now(QuicErrorCode.INTERNAL_ERROR, "internal error")
            return
        finally:
            self._busy = False
        self._maybe_close()
        if self._terminated:
            return
        self._check_backlog()
        self._rearm()

    def _rearm(self) -> None:
        at = None if self._terminated else self.quic.get_timer()
        timer = self._timer
        if at is None:
            if timer is not None and timer.active():
                timer.cancel()
            self._timer = None
            self._timer_at = None
            return
        if at == self._timer_at and timer is not None and timer.active():
            return
        self._timer_at = at
        delay = max(0.0, at - self._clock.seconds())
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            self._timer = self._clock.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._terminated:
            return
        self.quic.handle_timer(self._clock.seconds())
        self._service()

    def _event(self, event: qe.QuicEvent) -> None:
        kind = type(event)
        if kind is qe.StreamDataReceived:
            self._on_stream_data(event)  # type: ignore[arg-type]
        elif kind is qe.DatagramFrameReceived:
            self._on_datagram(event.data)  # type: ignore[attr-defined]
        elif kind is qe.HandshakeCompleted:
            self._on_handshake(event)  # type: ignore[arg-type]
        elif kind is qe.ConnectionTerminated:
            self._on_terminated_event(event)  # type: ignore[arg-type]
        elif kind is qe.ConnectionIdIssued:
            if self._on_cid is not None:
                self._on_cid(self, event.connection_id, True)  # type: ignore[attr-defined]
        elif kind is qe.ConnectionIdRetired:
            if self._on_cid is not None:
                self._on_cid(self, event.connection_id, False)  # type: ignore[attr-defined]

    def _on_handshake(self, event: qe.HandshakeCompleted) -> None:
        if event.alpn_protocol != ALPN_TEXT:
            self.quic.close(error_code=0x100 + 120, reason_phrase="no ALPN spwm/1")
            return
        self._handshake_done = True
        if self._is_client:
            # The agent opens the tunnel's stream: the first bidirectional one.
            self._stream_id = self.quic.get_next_available_stream_id()
            self._send_early()

    def _send_early(self) -> None:
        early, self._early = self._early, []
        sid = self._stream_id
        assert sid is not None
        for piece in early:
            self.quic.send_stream_data(sid, piece)

    def _on_stream_data(self, event: qe.StreamDataReceived) -> None:
        sid = event.stream_id
        if self._stream_id is None and not self._is_client and sid % 4 == 0:
            self._stream_id = sid
            self._send_early()
        if sid != self._stream_id:
            # One stream per tunnel: anything else is not an SPWM peer.
            self.quic.close(error_code=QuicErrorCode.PROTOCOL_VIOLATION, reason_phrase=f"unexpected stream {sid}")
            return
        if event.data and self.protocol is not None and not self._told_lost:
            pieces = self._in.split(event.data)
            for _, piece in pieces:
                self.protocol.dataReceived(piece)
        if event.end_stream:
            self.loseConnection()

    def _tunnel(self) -> Any:
        # The tunnel protocol under the wrappers of a reconnecting service.
        tunnel = self._tunnel_protocol
        if tunnel is None:
            candidate = self.protocol
            for _ in range(4):
                if candidate is None or hasattr(candidate, "is_open"):
                    break
                candidate = getattr(candidate, "proxy", None) or getattr(candidate, "_protocol", None)
            tunnel = self._tunnel_protocol = candidate
        return tunnel

    def _on_datagram(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is None or self._told_lost:
            return
        if not is_datagram_frame(data):
            self.stats.datagrams_dropped_malformed += 1
            return
        tunnel = self._tunnel()
        connection = getattr(tunnel, "connection", None)
        if (
            not self._in.preface_done
            or connection is None
            or not tunnel.is_open
            or not connection.is_open_channel((data[2] << 24) | (data[3] << 16) | (data[4] << 8) | data[5])
        ):
            # Before the tunnel handshake, or before the channel's open (a
            # QUIC datagram may overtake the stream), the core would take
            # it for a protocol error: a datagram is just dropped instead.
            # (A partial frame of the stream waiting in the splitter is no
            # reason: the core has been given whole frames only.)
            self.stats.datagrams_dropped_early += 1
            return
        self.stats.datagrams_received += 1
        protocol.dataReceived(data)

    def _on_terminated_event(self, event: qe.ConnectionTerminated) -> None:
        if self._terminated:
            return
        why = describe_quic_close(event, local=self.disconnecting)
        if event.error_code in _CRYPTO_ERROR and self._is_client:
            certificate = getattr(getattr(self.quic, "tls", None), "_peer_certificate", None)
            phrase = event.reason_phrase or ""
            if "certificate" in phrase.lower() or "hostname" in phrase.lower() or "issuer" in phrase.lower():
                why = _cert_sentence(phrase, certificate, self._server_name)
            if self._on_tls_error is not None:
                self._on_tls_error(why)
        self._end(why)

    def _end(self, why: str) -> None:
        """
        The connection is over for us: no timer, no demultiplexing, and
        the protocol told (once).
        """
        self._terminated = True
        self.close_reason = why
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = None
        if self._on_terminated is not None:
            self._on_terminated(self)
        stats = self.stats
        if stats.datagrams_sent or stats.datagrams_received:
            self.log.info(
                "QUIC connection with {peer} ended: {sent} media datagrams sent, {received} received,"
                " {dropped} dropped waiting for the congestion window, {on_stream} too large (sent on the stream),"
                " {unsent} packets the socket refused; {early} received for a channel not open (yet, or any more),"
                " {malformed} malformed",
                peer=self._peer_text(),
                sent=stats.datagrams_sent,
                received=stats.datagrams_received,
                dropped=stats.datagrams_dropped_queue,
                on_stream=stats.datagrams_on_stream,
                unsent=stats.packets_unsent,
                early=stats.datagrams_dropped_early,
                malformed=stats.datagrams_dropped_malformed,
            )
        # Later, as a TCP transport does: the protocol may be in the middle
        # of closing us.
        self._clock.callLater(0, self._tell_lost, why)

    def _close_now(self, code: int, phrase: str) -> None:
        """
        Send CONNECTION_CLOSE and end at once.  RFC 9000 lets a closing
        endpoint answer late packets with CONNECTION_CLOSE again; we do
        not keep the connection for that (a peer that missed ours stops at
        its tunnel keepalive or QUIC idle timeout), so that nothing
        lingers after the tunnel has closed.
        """
        if self._terminated:
            return
        self.disconnecting = True
        self.quic.close(error_code=code, reason_phrase=phrase)
        for data, addr in self.quic.datagrams_to_send(self._clock.seconds()):
            self._write_udp(data, addr)
        self._end(f"QUIC connection closed by us: {phrase}")

    def _tell_lost(self, why: str) -> None:
        if self._told_lost:
            return
        self._told_lost = True
        if self._producer is not None and self._producer_paused:
            self._producer_paused = False
        if self.protocol is not None:
            self.protocol.connectionLost(Failure(QuicConnectionClosed(why)))

    # -- output towards QUIC -------------------------------------------------

    def _check_backlog(self) -> None:
        producer = self._producer
        if producer is None or self._stream_id is None:
            return
        backlog = self.stream_backlog
        if not self._producer_paused and backlog > self._limits.stream_high_water:
            self._producer_paused = True
            producer.pauseProducing()
        elif self._producer_paused and backlog <= self._limits.stream_high_water // 4:
            self._producer_paused = False
            producer.resumeProducing()

    @property
    def stream_backlog(self) -> int:
        """
        Bytes written on the tunnel's stream that the peer has not acknowledged.
        """
        if self._stream_id is None:
            return sum(len(p) for p in self._early)
        stream = getattr(self.quic, "_streams", {}).get(self._stream_id)
        sender = getattr(stream, "sender", None)
        return len(getattr(sender, "_buffer", b""))

    def _datagram(self, frame: bytes) -> None:
        if len(frame) > self._max_datagram:
            # Too large for one packet: reliable, on the stream, in order.
            self.stats.datagrams_on_stream += 1
            self._stream_write(frame)
            return
        pending = self._pending
        if pending is not None and len(pending) >= self._limits.max_pending_datagrams:
            self.stats.datagrams_dropped_queue += 1
            return
        self.stats.datagrams_sent += 1
        self.quic.send_datagram_frame(frame)

    def _stream_write(self, data: bytes) -> None:
        if self._stream_id is None:
            self._early.append(data)
        else:
            self.quic.send_stream_data(self._stream_id, data)

    def write(self, data: bytes) -> None:
        if self._terminated or self.disconnecting or not data:
            # after loseConnection the stream has ended: nothing more goes
            return
        if self._out.at_boundary and is_datagram_frame(data):
            # The media fast path: one DATAGRAM frame per write.  QUIC
            # sends what this turn of the reactor queued together, several
            # frames to a packet (one encryption, one acknowledgement).
            self._datagram(data)
            if not self._busy:
                pending = self._pending
                if pending is not None and len(pending) >= _FLUSH_BATCH:
                    self._service()
                elif self._flush_call is None:
                    if self._turn_end is not None:
                        # (under twistd: no timer per turn)
                        self._flush_call = _AT_TURN_END
                        self._turn_end(self._flush_later)
                    else:
                        self._flush_call = self._clock.callLater(0, self._flush_later)
            return
        else:
            for is_datagram, piece in self._out.split(data):
                if is_datagram:
                    self._datagram(piece)
                else:
                    self._stream_write(piece)
        if not self._busy:
            self._service()

    def _flush_later(self) -> None:
        self._flush_call = None
        if not self._terminated:
            self._service()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        End the tunnel's stream once what was written on it has been
        acknowledged (the peer then has our ERROR frame), then close the
        QUIC connection; L{TunnelProtocol} aborts if that takes too long.
        """
        if self._terminated or self.disconnecting:
            return
        self.disconnecting = True
        if self._stream_id is not None and self._handshake_done:
            self.quic.send_stream_data(self._stream_id, b"", end_stream=True)
        if not self._busy:
            self._service()

    def _maybe_close(self) -> None:
        if self.disconnecting and not self._terminated and (self._stream_id is None or self.stream_backlog == 0):
            self._close_now(QuicErrorCode.NO_ERROR, "tunnel closed")

    def abortConnection(self) -> None:
        """
        Close the QUIC connection and tell the protocol at once.
        """
        self._close_now(QuicErrorCode.NO_ERROR, "tunnel aborted")

    def getPeer(self) -> IPv4Address | IPv6Address:
        return self._peer

    def getHost(self) -> Any:
        return self._host

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self._producer = producer
        self._producer_paused = False

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused = False

    def _peer_text(self) -> str:
        from spwm.addr import peer as peer_text

        return peer_text(self._peer)

    @property
    def rtt(self) -> tuple[float, float] | None:
        """
        QUIC's smoothed round-trip time and its variation, in seconds, once
        measured (for a path scheduler's RTT samples); C{None} before.
        """
        loss = getattr(self.quic, "_loss", None)
        if loss is None or not getattr(loss, "_rtt_initialized", False):
            return None
        return (float(loss._rtt_smoothed), float(loss._rtt_variance))

    @property
    def terminated(self) -> bool:
        """
        Whether the QUIC connection has ended.
        """
        return self._terminated


# -- configurations ----------------------------------------------------------


def server_configuration(cert_file: str, key_file: str, limits: QuicLimits, idle_timeout: float) -> QuicConfiguration:
    """
    The contact point's QUIC configuration: its TLS certificate and key,
    ALPN C{spwm/1}, DATAGRAM frames.
    """
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN_TEXT],
        max_datagram_frame_size=_MAX_DATAGRAM_FRAME,
        max_datagram_size=limits.packet_size,
        congestion_control_algorithm=algorithm_name(limits.window_floor),
        idle_timeout=idle_timeout,
        connection_id_length=_CID_LENGTH,
    )
    configuration.load_cert_chain(cert_file, key_file)
    return configuration


def client_configuration(
    server_name: str,
    ca_file: str | None,
    limits: QuicLimits,
    idle_timeout: float,
    client_cert: tuple[str, str] | None = None,
) -> QuicConfiguration:
    """
    The agent's QUIC configuration: the contact point's certificate checked
    against C{server_name} with the certificates of C{ca_file}, else the
    system's trust store (the same checks as over TLS/TCP); ALPN
    C{spwm/1}; DATAGRAM frames.
    """
    cafile, capath = ca_file, None
    if ca_file is None:
        paths = ssl.get_default_verify_paths()
        cafile, capath = paths.cafile, paths.capath
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN_TEXT],
        max_datagram_frame_size=_MAX_DATAGRAM_FRAME,
        max_datagram_size=limits.packet_size,
        congestion_control_algorithm=algorithm_name(limits.window_floor),
        idle_timeout=idle_timeout,
        server_name=server_name,
        verify_mode=ssl.CERT_REQUIRED,
        cafile=cafile,
        capath=capath,
    )
    if client_cert is not None:
        configuration.load_cert_chain(client_cert[0], client_cert[1])
    return configuration


# -- the contact point's side -----------------------------------------------


class QuicListener(DatagramProtocol):
    """
    The contact point's QUIC port: finds each packet's connection by its
    destination connection id, validates a new client's address with a
    stateless Retry, and admits a connection through the tunnel factory
    (L{spwm.tunnel.protocol.ContactTunnelFactory.buildProtocol}: the same
    limits per address and in total as the TCP listener) before any state
    is kept for it.

    @ivar connections: connection id -> L{QuicTunnelTransport}.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        factory: Factory,
        clock: IReactorTime,
        configuration: QuicConfiguration,
        *,
        limits: QuicLimits | None = None,
        retry: bool = True,
    ) -> None:
        self.factory = factory
        self.clock = clock
        self.configuration = configuration
        self.limits = limits or QuicLimits()
        self.connections: dict[bytes, QuicTunnelTransport] = {}
        self.transports: set[QuicTunnelTransport] = set()
        self._retry = QuicRetryTokenHandler() if retry else None
        #: datagrams dropped: not QUIC, for no connection, refused
        self.dropped = 0
        self.retries_sent = 0
        self.bad_tokens = 0
        self._throttle = ThrottledLog(self.log, clock, Every(10.0))
        #: whether new connections are taken (no longer once stopping)
        self.accepting = True
        #: called once the last connection has ended (while stopping)
        self.idle: Callable[[], None] | None = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self.configuration.connection_id_length)
        except ValueError:
            self.dropped += 1
            return
        transport = self.connections.get(header.destination_cid)
        if transport is not None:
            transport.datagram_received(data, addr)
            return
        if len(data) < _MIN_INITIAL or not self.accepting:
            # Only a full-size Initial may cost us anything (amplification).
            self.dropped += 1
            return
        if (
            header.version is not None
            and header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version not in self.configuration.supported_versions
        ):
            self._write(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self.configuration.supported_versions,
                ),
                addr,
            )
            return
        if header.packet_type != QuicPacketType.INITIAL or header.version is None:
            self.dropped += 1
            return
        original_cid = header.destination_cid
        retry_cid = None
        if self._retry is not None:
            if not header.token:
                retry_source = os.urandom(_CID_LENGTH)
                token = self._retry.create_token(
                    address=addr,
                    original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=retry_source,
                    now=self.clock.seconds(),
                )
                self.retries_sent += 1
                self._write(
                    encode_quic_retry(
                        version=header.version,
                        source_cid=retry_source,
                        destination_cid=header.source_cid,
                        original_destination_cid=header.destination_cid,
                        retry_token=token,
                    ),
                    addr,
                )
                return
            try:
                original_cid = self._retry.validate_token(
                    address=addr, destination_cid=header.destination_cid, token=header.token, now=self.clock.seconds()
                )
            except ValueError:
                # A token not ours, too old, or for another address: no state, no answer.
                self.bad_tokens += 1
                self.dropped += 1
                return
            retry_cid = header.destination_cid
        peer = _address(addr[0], addr[1])
        protocol = self.factory.buildProtocol(peer)
        if protocol is None:
            # refused by the tunnel limits (the factory logged it)
            self.dropped += 1
            return
        quic = QuicConnection(
            configuration=self.configuration,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
        )
        transport = QuicTunnelTransport(
            quic,
            self.clock,
            self._write,
            (addr[0], addr[1]),
            self.transport.getHost() if self.transport is not None else None,
            limits=self.limits,
            on_terminated=self._forget,
            on_cid=self._cid,
        )
        self.transports.add(transport)
        self.connections[header.destination_cid] = transport
        self.connections[quic.host_cid] = transport
        # The first packet goes in before anything is sent: it gives QUIC
        # the peer's address.
        quic.receive_datagram(data, addr, self.clock.seconds())
        transport.attach(protocol)

    def _write(self, data: bytes, addr: Any) -> bool:
        if self.transport is None:
            return False
        try:
            self.transport.write(data, addr)
        except OSError as e:
            tally = self._throttle.hit("send")
            if tally is not None:
                self.log.warn("cannot send QUIC to {peer}: {error}", peer=addr, error=str(e))
            return False
        return True

    def _cid(self, transport: QuicTunnelTransport, cid: bytes, issued: bool) -> None:
        if issued:
            self.connections[cid] = transport
        elif self.connections.get(cid) is transport:
            del self.connections[cid]

    def _forget(self, transport: QuicTunnelTransport) -> None:
        self.transports.discard(transport)
        for cid in [c for c, t in self.connections.items() if t is transport]:
            del self.connections[cid]
        if not self.transports and self.idle is not None:
            # after the CONNECTION_CLOSE has been written
            self.clock.callLater(0, self.idle)

    def status(self) -> dict[str, Any]:
        """
        For the status page.
        """
        return {
            "connections": len(self.transports),
            "dropped": self.dropped,
            "retries_sent": self.retries_sent,
            "bad_tokens": self.bad_tokens,
        }


class _ListeningQuic:
    """
    What L{QuicServerEndpoint.listen} gives: the UDP port and its listener.

    Unlike a TCP port, the UDP port carries the open connections too: it
    stops taking new connections at once, but closes only when the last
    connection has ended (the listen service drains them: go-away, then
    close at the drain time) or after C{grace} seconds.
    """

    def __init__(self, port: Any, listener: QuicListener, clock: IReactorTime, grace: float = 60.0) -> None:
        self.port = port
        self.listener = listener
        self._clock = clock
        self._grace = grace
        self._stopped: Deferred[None] | None = None

    def getHost(self) -> Any:
        return self.port.getHost()

    def stopListening(self) -> Deferred[None]:
        if self._stopped is not None:
            return self._stopped
        stopped: Deferred[None] = Deferred()
        self._stopped = stopped
        listener = self.listener
        listener.accepting = False

        closing: list[bool] = []

        def close() -> None:
            listener.idle = None
            if timer.active():
                timer.cancel()
            if not closing:
                closing.append(True)
                d = self.port.stopListening()
                if isinstance(d, Deferred):
                    d.addBoth(lambda _: stopped.callback(None))
                else:
                    stopped.callback(None)

        def late() -> None:
            for transport in list(listener.transports):
                transport.abortConnection()
            close()

        timer = self._clock.callLater(self._grace, late)
        if listener.transports:
            listener.idle = close
        else:
            close()
        return stopped


@implementer(IStreamServerEndpoint)
class QuicServerEndpoint:
    """
    Listens for tunnels over QUIC on C{host:port} (UDP), for
    L{spwm.tunnel.service.ContactListenService}.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        configuration: QuicConfiguration,
        *,
        limits: QuicLimits | None = None,
        retry: bool = True,
    ) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._configuration = configuration
        self._limits = limits or QuicLimits()
        self._retry = retry
        self.listener: QuicListener | None = None

    def listen(self, protocolFactory: Any) -> Deferred[Any]:
        listener = QuicListener(
            protocolFactory, self._reactor, self._configuration, limits=self._limits, retry=self._retry
        )
        try:
            port = self._reactor.listenUDP(self._port, listener, interface=self._host)
        except Exception as e:
            return fail(e)
        set_socket_buffers(port, self._limits.socket_buffer)
        self.listener = listener
        return succeed(_ListeningQuic(port, listener, self._reactor))

    def use_configuration(self, configuration: QuicConfiguration) -> None:
        """
        New connections from now on are made with C{configuration} (a
        renewed certificate: L{spwm.security.certwatch}); open ones keep
        theirs.
        """
        self._configuration = configuration
        if self.listener is not None:
            self.listener.configuration = configuration


def set_socket_buffers(port: Any, size: int) -> None:
    """
    Ask for C{size} bytes of receive and send buffer on a QUIC UDP port
    (L{QuicLimits.socket_buffer}); the kernel grants what its maxima allow.
    """
    try:
        handle = port.getHandle()
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except (OSError, AttributeError):
        pass


# -- the agent's side --------------------------------------------------------


class QuicClientReport:
    """
    Why the latest QUIC attempt's certificate check failed, in the TLS/TCP
    tunnel's words (L{spwm.tunnel.service.AgentTunnelService} reads
    C{last_error} as it does L{spwm.tunnel.service.ReportingClientTLS}'s).
    """

    def __init__(self) -> None:
        self.last_error: str | None = None
        #: the latest attempt's UDP port at the contact point
        self.port: int | None = None
        #: UDP datagrams the latest attempt got back
        self.datagrams_in = 0

    def explain(self, why: str) -> str:
        """
        C{why} the latest attempt failed, with a hint when nothing came
        back at all (no QUIC listener there, or UDP blocked on the way).
        """
        if self.datagrams_in or self.port is None:
            return why
        return (
            f"{why}; nothing came back from UDP port {self.port}: does the contact point"
            " listen for QUIC (--quic-listen) and does the network let UDP through?"
        )


class _ClientPort(DatagramProtocol):
    noisy = False

    def __init__(self, report: QuicClientReport) -> None:
        self.quic: QuicTunnelTransport | None = None
        self._report = report

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self._report.datagrams_in += 1
        if self.quic is not None:
            self.quic.datagram_received(data, addr)


class _QuietUDPPort(udp.Port):
    """
    C{listenUDP}'s port without its two lines at info level per socket
    (C{_ClientPort starting on N}, C{(UDP Port N Closed)}): the agent opens
    one per QUIC attempt, and a network that drops UDP would log them at
    every probe.  The rest is Twisted's.
    """

    def _bindSocket(self) -> None:
        try:
            skt = self.createInternetSocket()
            skt.bind((self.interface, self.port))
        except OSError as le:
            raise error.CannotListenError(self.interface, self.port, le)
        self._realPortNumber = skt.getsockname()[1]
        self.connected = 1
        self.socket = skt
        self.fileno = skt.fileno  # type: ignore[method-assign]

    def connectionLost(self, reason: Any = None) -> None:
        self._realPortNumber = None
        self.maxThroughput = -1
        base.BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d


def _listen_quietly(reactor: Any, protocol: DatagramProtocol, interface: str) -> Any:
    """
    A UDP socket on a free port for C{protocol}: a L{_QuietUDPPort} on a
    reactor of file descriptors, else the reactor's C{listenUDP} (a fake
    network's).
    """
    if not IReactorFDSet.providedBy(reactor):
        return reactor.listenUDP(0, protocol, interface=interface)
    port = _QuietUDPPort(0, protocol, interface=interface, reactor=reactor)
    port.startListening()
    return port


@implementer(IStreamClientEndpoint)
class QuicClientEndpoint:
    """
    Connects a tunnel over QUIC to C{host:port}: a UDP socket of its own
    per connection (closed when the connection ends), the name resolved at
    each attempt.  C{connect} fires with the protocol once the QUIC
    handshake has started, as a TLS endpoint does once TCP is connected:
    the tunnel's handshake timeout bounds the rest.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        configuration: Callable[[], QuicConfiguration],
        *,
        limits: QuicLimits | None = None,
        report: QuicClientReport | None = None,
    ) -> None:
        """
        @param configuration: makes a fresh configuration per attempt.
        """
        self._reactor = reactor
        self._host = host
        self._port = port
        self._configuration = configuration
        self._limits = limits or QuicLimits()
        self.report = report or QuicClientReport()
        #: the latest connection's transport
        self.transport: QuicTunnelTransport | None = None

    def __repr__(self) -> str:
        return f"<QuicClientEndpoint udp:{self._host}:{self._port}>"

    def _resolve(self) -> Deferred[str]:
        try:
            ipaddress.ip_address(self._host)
            return succeed(self._host)
        except ValueError:
            pass
        from twisted.internet.threads import deferToThreadPool

        def lookup() -> str:
            infos = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
            if not infos:
                raise OSError(f"no address for {self._host}")
            return str(infos[0][4][0])

        from spwm.lookups import lookup_pool

        return deferToThreadPool(self._reactor, lookup_pool(), lookup)

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        self.report.last_error = None
        self.report.port = self._port
        self.report.datagrams_in = 0
        return self._resolve().addCallback(self._connect, protocolFactory)

    def _connect(self, ip: str, protocolFactory: Any) -> Any:
        configuration = self._configuration()
        peer = _address(ip, self._port)
        protocol = protocolFactory.buildProtocol(peer)
        if protocol is None:
            raise ConnectionError("the tunnel factory refused the connection")
        udp = _ClientPort(self.report)
        port = _listen_quietly(self._reactor, udp, "::" if ":" in ip else "0.0.0.0")
        set_socket_buffers(port, self._limits.socket_buffer)

        def send(data: bytes, addr: Any) -> bool:
            try:
                port.write(data, addr)
            except OSError:
                # the network is unreachable now, or the socket's buffer
                # is full: QUIC retransmits, the handshake or idle timeout
                # ends it (counted: QuicStats.packets_unsent)
                return False
            return True

        def terminated(_: QuicTunnelTransport) -> None:
            udp.quic = None
            port.stopListening()

        def tls_error(why: str) -> None:
            self.report.last_error = why

        quic = QuicConnection(configuration=configuration)
        transport = QuicTunnelTransport(
            quic,
            self._reactor,
            send,
            (ip, self._port),
            port.getHost(),
            limits=self._limits,
            on_terminated=terminated,
            on_tls_error=tls_error,
            server_name=configuration.server_name,
        )
        udp.quic = transport
        self.transport = transport
        quic.connect((ip, self._port), now=self._reactor.seconds())
        transport.attach(protocol)
        return protocol


def connect_quic_tunnel(
    reactor: Any,
    host: str,
    port: int,
    configuration: Callable[[], QuicConfiguration],
    factory: Factory,
    *,
    limits: QuicLimits | None = None,
) -> Deferred[Any]:
    """
    Open one tunnel over QUIC (outside any reconnecting service: the
    second path of a session, a probe) with the tunnel protocol C{factory}
    builds (an L{spwm.tunnel.protocol.AgentTunnelFactory} with the hello
    extras of the attach).

    @return: fires with the L{spwm.tunnel.protocol.TunnelProtocol} once
        its tunnel handshake has completed, or fails with
        L{QuicConnectionClosed} whose message is the one line to log (the
        TLS/TCP tunnel's sentence for a certificate).
    """
    report = QuicClientReport()
    endpoint = QuicClientEndpoint(reactor, host, port, configuration, limits=limits, report=report)

    def established(protocol: Any) -> Deferred[Any]:
        def failed(reason: Failure) -> Failure:
            why = report.last_error
            if why is None:
                close_info = getattr(protocol, "close_info", None)
                why = report.explain(close_info.reason if close_info is not None else reason.getErrorMessage())
            return Failure(QuicConnectionClosed(why))

        d: Deferred[Any] = protocol.when_established()
        return d.addErrback(failed)

    return endpoint.connect(factory).addCallback(established)
