# -*- test-case-name: tests.test_tunnel_connection -*-
"""
The sans-I/O tunnel core: handshake, channels, keepalive and the send scheduler.

A L{TunnelConnection} takes bytes and the current time and returns events; its
API methods only queue frames, and L{TunnelConnection.data_to_send} runs the
scheduler: control and SIP first, then media (datagrams older than the media
deadline dropped and counted), then stream data.  It never touches a socket, a
reactor or a logger.
"""

from __future__ import annotations

import enum
import json
import struct
from collections import deque
from typing import Any

from attrs import define

from spwm.errors import ChannelLimitError, TunnelNotOpenError, TunnelProtocolError
from spwm.limits import TunnelLimits
from spwm.tunnel import events as ev
from spwm.tunnel.decoder import FrameDecoder
from spwm.tunnel.frames import (
    FLAG_SEALED,
    FLAG_SEQ,
    FLAG_FIN,
    HEADER,
    MAGIC,
    MAX_VERSION,
    MIN_VERSION,
    PREFACE,
    PREFACE_SIZE,
    ChannelKind,
    ErrorCode,
    FrameType,
    decode_error,
    encode_control,
    encode_error,
    encode_frame,
    encode_preface,
)

_PACK = HEADER.pack
_DATAGRAM = int(FrameType.DATAGRAM)
_DATAGRAM_CHANNEL = ChannelKind.DATAGRAM
_NEVER_STALE = float("inf")
_CORE_OPS = frozenset({"hello", "welcome", "open", "close"})
_TIMED_PING = struct.Struct("!d")


def _json_loads(payload: bytes) -> Any:
    """
    C{json.loads(payload)}: a frame that starts as ours do (C{"{"} and no
    NUL after it) is decoded as UTF-8 at once, which is what C{json.loads}
    finds for it after guessing the encoding of bytes in Python (a BOM,
    UTF-16 or UTF-32 are still read as it reads them).
    """
    if payload[:1] == b"{" and payload[1:2] != b"\x00":
        return json.loads(payload.decode("utf-8", "surrogatepass"))
    return json.loads(payload)


class Role(enum.Enum):
    """
    Which end of the tunnel a connection is.
    """

    AGENT = "agent"
    CONTACT = "contact"


class State(enum.Enum):
    """
    The life of a tunnel connection.
    """

    AWAIT_PREFACE = "await-preface"
    AWAIT_HELLO = "await-hello"
    OPEN = "open"
    CLOSED = "closed"


@define
class TunnelStats:
    """
    Counters of one tunnel, kept by the core and read by adapters and tests.
    """

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0
    media_dropped_stale: int = 0
    media_dropped_overflow: int = 0
    datagrams_unknown_channel: int = 0
    late_frames: int = 0
    datagrams_before_open: int = 0
    pings_sent: int = 0
    unknown_control: int = 0


@define
class _Channel:
    kind: ChannelKind
    meta: dict[str, Any]
    local_fin: bool = False
    remote_fin: bool = False
    #: datagrams of this channel dropped in the media queue (stale or
    #: overflow: the per-channel share of the two stats counters)
    media_dropped: int = 0


class TunnelConnection:
    """
    One end of one tunnel.

    @ivar role: L{Role.AGENT} or L{Role.CONTACT}.
    @ivar state: the current L{State}.
    @ivar stats: a L{TunnelStats}.
    @ivar session_id: the session identity (set by the contact point; known to
        the agent once the handshake has completed).
    @ivar agent_id: the agent's identity (known to the contact point once the
        handshake has completed).
    @ivar version: the negotiated version, or C{None} before.
    @ivar close_code: why the tunnel closed, once L{State.CLOSED}.
    @ivar going_away: C{True} once either side has sent or received GOAWAY.
    @ivar paths: both hellos said C{"paths"} (known once open): this
        connection is one of several of a session, whose channels are
        registered on it by L{register_channel}; a datagram for a channel
        it does not know yet is dropped and counted, not an error.
    @ivar sip_seq: both hellos said C{"paths"} and C{"sip-seq"} (known once
        open): SIP frames may carry C{FLAG_SEQ} (the session numbers its
        messages: L{spwm.session.paths.SipOrder}); without, such a frame
        is a protocol error.
    @ivar attaching: a C{paths} connection whose hello said C{attach}, until
        the contact point's C{attached}: SIP, stream data or a channel
        opened by the peer meanwhile is a protocol error.
    @ivar tcp_keepalive: both hellos said C{"tcp_keepalive"} (known once
        open): the kernel keeps this connection alive and finds a dead
        peer (the adapter set its socket up for that), so this end sends no
        keepalive PING and declares no keepalive timeout; it still answers
        every PING, and timed PINGs (round trips) go on as asked.
    @ivar final_stop: both hellos said C{"final-stop": 1} (known once
        open): an agent that stops for good says so in its go-away
        (C{"final": true}), and the contact point does not wait for it to
        resume the session.
    """

    # Slots: an idle contact point holds thousands of these (issue 15's
    # memory per idle tunnel); attributes set from outside still go into
    # a __dict__, made only when one is.
    __slots__ = ("_channels", "_decoder", "_drain_deadline", "_hello_extra", "_highest_peer_channel", "_last_ping", "_last_received", "_last_sent", "_media", "_media_bytes", "_next_channel", "_preface_buf", "_priority", "_priority_bytes", "_started", "_stream", "_stream_bytes", "_versions", "agent_id", "attaching", "close_code", "close_reason", "final_stop", "going_away", "limits", "paths", "role", "session_id", "sip_seq", "state", "stats", "tcp_keepalive", "version", "__dict__")

    def __init__(
        self,
        role: Role,
        now: float,
        *,
        limits: TunnelLimits | None = None,
        agent_id: str = "",
        session_id: str = "",
        hello: dict[str, Any] | None = None,
        versions: tuple[int, int] = (MIN_VERSION, MAX_VERSION),
    ) -> None:
        """
        @param role: which end this is.
        @param now: the current time.
        @param limits: the bounds of this tunnel.
        @param agent_id: the agent's identity (agent side).
        @param session_id: the session identity to hand out (contact side).
        @param hello: extra fields for our hello (agent) or welcome (contact):
            capabilities, resumption and authentication data.
        @param versions: the range of versions we speak.
        """
        self.role = role
        self.limits = limits or TunnelLimits()
        self.state = State.AWAIT_PREFACE
        self.stats = TunnelStats()
        self.agent_id = agent_id
        self.session_id = session_id
        self.version: int | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.going_away = False
        self.final_stop = False
        self.paths = False
        self.sip_seq = False
        self.tcp_keepalive = False
        self.attaching = False
        self._versions = versions
        self._hello_extra = dict(hello or {})
        self._decoder = FrameDecoder(self.limits.max_frame_payload)
        self._preface_buf = b""
        self._channels: dict[int, _Channel] = {}
        self._next_channel = 1 if role is Role.AGENT else 2
        self._highest_peer_channel = 0
        self._priority: list[bytes] = []
        self._priority_bytes = 0
        # The media and stream queues are made on first use: an idle
        # tunnel (most of a contact point's) then carries no deque (each
        # preallocates a block of about 0.75 kB).
        self._media: deque[tuple[float, bytes]] | None = None
        self._media_bytes = 0
        self._stream: deque[bytes] | None = None
        self._stream_bytes = 0
        self._started = now
        # Keepalive works from these timestamps alone (one deadline, no
        # timer moved per frame): see next_deadline.
        self._last_received = now
        self._last_sent = now
        self._last_ping = now
        self._drain_deadline: float | None = None
        if role is Role.AGENT:
            self._queue(encode_preface(*versions))
            if versions[0] == versions[1]:
                # One version: the only one the contact point can choose,
                # so the hello goes with the preface, a round trip sooner
                # (every connection, every resumption); a contact point
                # reads the two in one go or in two.
                self._queue(encode_control(self._hello(versions[0])))

    # -- input -------------------------------------------------------------

    def receive_data(self, data: bytes, now: float, datagram_sink: Any = None) -> list[Any]:
        """
        Feed bytes from the peer.

        @param datagram_sink: optional C{sink(channel_id, data, component)}
            called at once for each datagram that no other event precedes
            (the media fast path: no event object per packet); datagrams
            behind another event are returned as events, so order holds.

        @return: the events they cause, in order.  A protocol error by the peer
            queues an ERROR frame and ends with a L{ev.TunnelClosed} event; the
            connection then refuses more input (returns no events).
        """
        if self.state is State.CLOSED or not data:
            return []
        self._last_received = now
        self.stats.bytes_in += len(data)
        out: list[Any] = []
        try:
            if self.state is State.AWAIT_PREFACE:
                data = self._take_preface(data, out)
                if not data or self.state is State.CLOSED:
                    return out
            frames = self._decoder.feed(data)
            stats = self.stats
            stats.frames_in += len(frames)
            channels = self._channels
            handlers = _FRAME_HANDLERS
            opened = self.state is State.OPEN
            for ftype, flags, channel, payload in frames:
                if ftype == _DATAGRAM and opened:
                    # The media fast path.
                    ch = channels.get(channel)
                    if ch is not None and ch.kind is _DATAGRAM_CHANNEL:
                        stats.datagrams_in += 1
                        if datagram_sink is not None and not out:
                            datagram_sink(channel, payload, flags)
                        else:
                            out.append(ev.DatagramReceived(channel, payload, flags))
                    else:
                        self._unknown_channel(channel, "datagram")
                    continue
                if not opened and ftype not in (
                    FrameType.CONTROL,
                    FrameType.ERROR,
                    FrameType.PING,
                    FrameType.PONG,
                ):
                    raise TunnelProtocolError(
                        ErrorCode.PROTOCOL_ERROR,
                        f"{FrameType(ftype).name} frame before the handshake",
                    )
                if ftype == _DATAGRAM:  # pragma: no cover - covered by the branch above
                    continue
                handlers[ftype](self, flags, channel, payload, now, out)
                if self.state is State.CLOSED:
                    break
                opened = self.state is State.OPEN
        except TunnelProtocolError as e:
            out.append(self._fail(e.code, e.reason))
        return out

    def _take_preface(self, data: bytes, out: list[Any]) -> bytes:
        need = PREFACE_SIZE - len(self._preface_buf)
        self._preface_buf += data[:need]
        rest = data[need:]
        if len(self._preface_buf) < PREFACE_SIZE:
            return b""
        magic, low, high, _reserved = PREFACE.unpack(self._preface_buf)
        if magic != MAGIC:
            raise TunnelProtocolError(ErrorCode.PROTOCOL_ERROR, "peer is not an SPWM tunnel (bad magic)")
        mine_low, mine_high = self._versions
        if self.role is Role.CONTACT:
            chosen = min(high, mine_high)
            if chosen < max(low, mine_low):
                self._queue(encode_preface(0, 0))
                raise TunnelProtocolError(
                    ErrorCode.VERSION_MISMATCH,
                    f"agent speaks versions {low}-{high}, we speak {mine_low}-{mine_high}",
                )
            self.version = chosen
            self._queue(encode_preface(chosen, chosen))
        else:
            if low != high or not mine_low <= low <= mine_high:
                raise TunnelProtocolError(
                    ErrorCode.VERSION_MISMATCH,
                    f"contact point chose version {low}, we speak {mine_low}-{mine_high}",
                )
            self.version = low
            if mine_low != mine_high:
                self._queue(encode_control(self._hello(low)))
        self.state = State.AWAIT_HELLO
        return rest

    def _hello(self, version: int) -> dict[str, Any]:
        hello = dict(self._hello_extra)
        hello.update(op="hello", agent_id=self.agent_id, version=version)
        return hello

    # -- frame handlers ----------------------------------------------------

    def _on_control(self, flags: int, channel: int, payload: bytes, now: float, out: list[Any]) -> None:
        try:
            message = _json_loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise TunnelProtocolError(ErrorCode.BAD_CONTROL, "control frame is not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise TunnelProtocolError(ErrorCode.BAD_CONTROL, "control frame without an op")
        op = message["op"]
        if self.state is State.AWAIT_HELLO:
            expected = "hello" if self.role is Role.CONTACT else "welcome"
            if op != expected:
                raise TunnelProtocolError(ErrorCode.PROTOCOL_ERROR, f"expected {expected}, got {op!r}")
            if self.role is Role.CONTACT:
                agent_id = message.get("agent_id")
                if not isinstance(agent_id, str) or len(agent_id) > 256:
                    raise TunnelProtocolError(ErrorCode.BAD_CONTROL, "hello without a valid agent_id")
                self.agent_id = agent_id
                welcome = dict(self._hello_extra)
                welcome.update(
                    op="welcome",
                    session_id=self.session_id,
                    version=self.version,
                    keepalive=self.limits.keepalive_interval,
                )
                self._queue(encode_control(welcome))
            else:
                session_id = message.get("session_id")
                if not isinstance(session_id, str):
                    raise TunnelProtocolError(ErrorCode.BAD_CONTROL, "welcome without a session_id")
                self.session_id = session_id
            self.paths = bool(self._hello_extra.get("paths")) and bool(message.get("paths"))
            self.sip_seq = self.paths and self._hello_extra.get("sip-seq") == 1 and message.get("sip-seq") == 1
            self.tcp_keepalive = bool(self._hello_extra.get("tcp_keepalive")) and bool(message.get("tcp_keepalive"))
            self.final_stop = self._hello_extra.get("final-stop") == 1 and message.get("final-stop") == 1
            # A connection that joins a live session carries nothing but
            # the attach exchange until the contact point said "attached".
            attach = (message if self.role is Role.CONTACT else self._hello_extra).get("attach")
            self.attaching = self.paths and attach is not None
            self.state = State.OPEN
            self._last_ping = now
            out.append(ev.HandshakeCompleted(self.version or 0, self.session_id, self.agent_id, message))
            return
        if op == "open":
            if self.attaching:
                raise TunnelProtocolError(ErrorCode.PROTOCOL_ERROR, "channel opened before the connection was attached")
            self._on_open(message, out)
        elif op == "close":
            self._on_close(message, out)
        else:
            # Operations the core does not handle go to the application,
            # which ignores those it does not know either (so that a later
            # version can add some).
            self.stats.unknown_control += 1
            if op == "attached" and self.role is Role.AGENT:
                self.attaching = False
            out.append(ev.ControlReceived(message))

    def _on_open(self, message: dict[str, Any], out: list[Any]) -> None:
        cid = message.get("channel")
        kind = message.get("kind")
        meta = message.get("meta", {})
        if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(meta, dict):
            raise TunnelProtocolError(ErrorCode.BAD_CONTROL, "malformed open")
        try:
            kind = ChannelKind(kind)
        except ValueError:
            raise TunnelProtocolError(ErrorCode.BAD_CONTROL, f"unknown channel kind {kind!r}") from None
        peer_parity = 0 if self.role is Role.AGENT else 1
        if self.paths and cid % 2 == peer_parity and 0 < cid <= self._highest_peer_channel:
            # the copy of an open the session had on another connection
            # (or that came late, after the channel's close): nothing new
            self.stats.late_frames += 1
            return
        if cid <= 0 or cid % 2 != peer_parity or cid <= self._highest_peer_channel or cid > 0xFFFFFFFF:
            raise TunnelProtocolError(ErrorCode.PROTOCOL_ERROR, f"peer opened invalid channel {cid}")
        self._highest_peer_channel = cid
        if len(self._channels) >= self.limits.max_channels:
            self._queue(
                encode_control(
                    {
                        "op": "close",
                        "channel": cid,
                        "code": int(ErrorCode.CHANNEL_LIMIT),
                        "reason": f"more than {self.limits.max_channels} channels",
                    }
                )
            )
            return
        self._channels[cid] = _Channel(kind, meta)
        out.append(ev.ChannelOpened(cid, kind, meta))

    def _on_close(self, message: dict[str, Any], out: list[Any]) -> None:
        cid = message.get("channel")
        code = message.get("code", 0)
        reason = message.get("reason", "")
        if not isinstance(cid, int) or not isinstance(code, int) or not isinstance(reason, str):
            raise TunnelProtocolError(ErrorCode.BAD_CONTROL, "malformed close")
        if self._channels.pop(cid, None) is None:
            self._unknown_channel(cid, "close")
            return
        out.append(ev.ChannelClosed(cid, code, reason))

    def _on_sip(self, flags: int, channel: int, payload: bytes, now: float, out: list[Any]) -> None:
        if self.attaching:
            raise TunnelProtocolError(ErrorCode.PROTOCOL_ERROR, "SIP before the connection was attached")
        numbered = bool(flags & FLAG_SEQ)
        if numbered and not self.sip_seq:
            raise TunnelProtocolError(ErrorCode.PROTOCOL_ERROR, "a numbered SIP frame without sip-seq")
        out.append(ev.SipReceived(channel, payload, bool(flags & FLAG_SEALED), numbered))

    def _on_stream_data(self, flags: int, channel: int, payload: bytes, now: float, out: list[Any]) -> None:
        ch = self._channels.get(channel)
        if ch is None or ch.kind is not ChannelKind.STREAM:
            self._unknown_channel(channel, "stream data")
            return
        if ch.remote_fin:
            raise TunnelProtocolError(ErrorCode.PROTOCOL_ERROR, f"data after end of stream on channel {channel}")
        if payload:
            out.append(ev.StreamDataReceived(channel, payload))
        if flags & FLAG_FIN:
            ch.remote_fin = True
            out.append(ev.StreamEnded(channel))

    def _on_ping(self, flags: int, channel: int, payload: bytes, now: float, out: list[Any]) -> None:
        self._queue(encode_frame(FrameType.PONG, 0, 0, payload))

    def _on_pong(self, flags: int, channel: int, payload: bytes, now: float, out: list[Any]) -> None:
        if len(payload) == _TIMED_PING.size:
            (sent,) = _TIMED_PING.unpack(payload)
            if sent <= now:
                out.append(ev.RttSampled(now - sent))

    def _on_goaway(self, flags: int, channel: int, payload: bytes, now: float, out: list[Any]) -> None:
        try:
            message = _json_loads(payload)
            code = int(message.get("code", 0))
            reason = str(message.get("reason", ""))
            drain = float(message.get("drain", 0.0))
            final = message.get("final") is True
        except (ValueError, TypeError, AttributeError, RecursionError):
            raise TunnelProtocolError(ErrorCode.BAD_CONTROL, "malformed go-away") from None
        self.going_away = True
        out.append(ev.PeerWentAway(code, reason, max(0.0, drain), final))

    def _on_error(self, flags: int, channel: int, payload: bytes, now: float, out: list[Any]) -> None:
        try:
            code, reason = decode_error(payload)
        except ValueError:
            code, reason = int(ErrorCode.PROTOCOL_ERROR), "malformed error frame"
        self._clear_queues()
        self.state = State.CLOSED
        self.close_code, self.close_reason = code, reason
        out.append(ev.TunnelClosed(code, reason, True))

    def _unknown_channel(self, cid: int, what: str) -> None:
        own_parity = 1 if self.role is Role.AGENT else 0
        if cid % 2 == own_parity:
            known = 0 < cid < self._next_channel
        else:
            known = 0 < cid <= self._highest_peer_channel
        if not known:
            if self.paths and what == "datagram":
                # Another connection of the session carries the channel's
                # open, which may not have been read yet.
                self.stats.datagrams_before_open += 1
                return
            if self.paths and what == "close":
                # The copy of a close of a channel whose open went on
                # another connection only (its copy here held back, or
                # this connection attached after it): nothing to undo.
                self.stats.late_frames += 1
                return
            raise TunnelProtocolError(ErrorCode.UNKNOWN_CHANNEL, f"{what} on unknown channel {cid}")
        self.stats.late_frames += 1

    # -- output API --------------------------------------------------------

    def amend_hello(self, extra: dict[str, Any]) -> bool:
        """
        Agent: send C{extra} as the hello's extra fields instead of those
        given when the connection was made, if the hello has not left yet
        (it waits behind the preface, first in the queue: the agent
        holds it until its TLS handshake is done).

        @return: whether the hello now says C{extra}.
        """
        if self.role is not Role.AGENT or self.state is State.CLOSED or len(self._priority) < 2:
            return False
        version = self._versions[0]
        if self._priority[1] != encode_control(self._hello(version)):
            return False  # gone, or not the hello
        self._hello_extra = dict(extra)
        frame = encode_control(self._hello(version))
        self._priority_bytes += len(frame) - len(self._priority[1])
        self._priority[1] = frame
        return True

    def _queue(self, frame: bytes) -> None:
        self._priority.append(frame)
        self._priority_bytes += len(frame)

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise TunnelNotOpenError(f"tunnel is {self.state.value}, not open")

    def send_sip(self, flow_id: int, data: bytes, flags: int = 0) -> None:
        """
        Queue one SIP message for application flow C{flow_id}.  SIP is never
        dropped; if the peer does not read and the priority queue overflows,
        the tunnel is closed (see L{data_to_send}).

        @raise ValueError: if the message does not fit in one frame.
        @raise TunnelNotOpenError: if the tunnel is not open.
        """
        self._require_open()
        if len(data) > self.limits.max_frame_payload:
            raise ValueError(f"SIP message of {len(data)} bytes does not fit in a frame")
        self._queue(encode_frame(FrameType.SIP, flags, flow_id, data))

    def send_control(self, message: dict[str, Any]) -> None:
        """
        Queue an application control message (resumption and the like).

        @raise ValueError: for an op the core itself owns.
        @raise TunnelNotOpenError: if the tunnel is not open.
        """
        self._require_open()
        if message.get("op") in _CORE_OPS:
            raise ValueError(f"op {message.get('op')!r} belongs to the tunnel core")
        if message.get("op") == "attached" and self.role is Role.CONTACT:
            self.attaching = False
        self._queue(encode_control(message))

    def open_channel(self, kind: ChannelKind, meta: dict[str, Any]) -> int:
        """
        Open a channel and return its id.  The open message is queued ahead of
        any SIP frame queued after this call, so the peer knows the channel
        before it reads a message that refers to it.

        @raise ChannelLimitError: if the tunnel has L{TunnelLimits.max_channels} open.
        @raise TunnelNotOpenError: if the tunnel is not open.
        """
        self._require_open()
        if len(self._channels) >= self.limits.max_channels:
            raise ChannelLimitError(f"{len(self._channels)} channels open, limit {self.limits.max_channels}")
        cid = self._next_channel
        self._next_channel += 2
        self._channels[cid] = _Channel(kind, meta)
        self._queue(encode_control({"op": "open", "channel": cid, "kind": kind.value, "meta": meta}))
        return cid

    def close_channel(self, channel_id: int, code: int = 0, reason: str = "") -> None:
        """
        Close a channel (ours or the peer's).  Closing one that is not open does nothing.
        """
        if self.state is State.CLOSED:
            return
        channel = self._channels.pop(channel_id, None)
        if channel is None:
            return
        frame = encode_control({"op": "close", "channel": channel_id, "code": int(code), "reason": reason})
        # The close must not overtake data of the channel that is still queued.
        if channel.kind is ChannelKind.STREAM and self._stream:
            self._stream.append(frame)
            self._stream_bytes += len(frame)
        elif channel.kind is ChannelKind.DATAGRAM and self._media:
            self._media.append((_NEVER_STALE, frame))
            self._media_bytes += len(frame)
        else:
            self._queue(frame)

    def adopt_session(self, session_id: str) -> None:
        """
        From now on this connection carries the session C{session_id}
        (resumption: the session logic moved an earlier session onto it).
        Nothing is sent: both ends adopt it on the resume exchange.
        """
        self.session_id = session_id

    def register_channel(self, channel_id: int, kind: ChannelKind, meta: dict[str, Any]) -> None:
        """
        A channel of the session, opened on another of its connections:
        this one accepts its frames too.  Nothing is sent; the numbering of
        the channels opened later on this connection (either end) goes on
        after it.
        """
        if self.state is State.CLOSED or channel_id in self._channels:
            return
        self._channels[channel_id] = _Channel(kind, meta)
        own_parity = 1 if self.role is Role.AGENT else 0
        if channel_id % 2 == own_parity:
            self._next_channel = max(self._next_channel, channel_id + 2)
        else:
            self._highest_peer_channel = max(self._highest_peer_channel, channel_id)

    def announce_channel(self, channel_id: int) -> None:
        """
        Queue the C{open} of a channel of ours registered on this
        connection (L{register_channel}), so that the peer learns of it on
        this connection too, should the one that carried the first C{open}
        break before delivering it.
        """
        channel = self._channels.get(channel_id)
        if self.state is not State.OPEN or channel is None:
            return
        self._queue(encode_control({"op": "open", "channel": channel_id, "kind": channel.kind.value, "meta": channel.meta}))

    def forget_channel(self, channel_id: int) -> None:
        """
        A channel of the session was closed on another of its connections:
        drop it here too, sending nothing.
        """
        self._channels.pop(channel_id, None)

    def open_channels(self) -> list[tuple[int, ChannelKind, dict[str, Any]]]:
        """
        The open channels: C{(channel_id, kind, meta)} each.
        """
        return [(cid, ch.kind, ch.meta) for cid, ch in self._channels.items()]

    def ping(self, now: float) -> None:
        """
        Queue a timed PING: the peer's PONG gives an L{ev.RttSampled}
        (any peer echoes the payload).
        """
        if self.state is not State.OPEN:
            return
        self._queue(encode_frame(FrameType.PING, 0, 0, _TIMED_PING.pack(now)))
        self.stats.pings_sent += 1

    def is_open_channel(self, channel_id: int) -> bool:
        """
        Whether C{channel_id} is an open channel.
        """
        return channel_id in self._channels

    @property
    def channel_count(self) -> int:
        """
        The number of open channels.
        """
        return len(self._channels)

    def send_datagram(self, channel_id: int, data: bytes, now: float, component: int = 0) -> None:
        """
        Queue a datagram.  It is dropped and counted if the channel is not open,
        if the media queue is full, or, later, if it waited longer than the
        media deadline.  This is the media hot path.
        """
        if self.state is not State.OPEN or channel_id not in self._channels:
            self.stats.datagrams_unknown_channel += 1
            return
        media = self._media
        if media is None:
            media = self._media = deque()
        elif media:
            # Purge what is already stale, so a paused tunnel holds no more
            # than one deadline's worth of media.
            limit = now - self.limits.media_deadline
            while media and media[0][0] < limit:
                self._stale(media.popleft()[1])
            if self._media_bytes > self.limits.max_media_queue:
                self.stats.media_dropped_overflow += 1
                self._channels[channel_id].media_dropped += 1
                return
        frame = _PACK(_DATAGRAM, component, channel_id, len(data)) + data
        media.append((now, frame))
        self._media_bytes += len(frame)
        self.stats.datagrams_out += 1

    def _stale(self, frame: bytes) -> None:
        """
        Count a queued datagram frame dropped for the media deadline, in
        the totals and on its channel (if still open); drops are rare, so
        the channel id is read back from the frame's header here rather
        than kept with every queued frame.
        """
        self._media_bytes -= len(frame)
        self.stats.media_dropped_stale += 1
        channel = self._channels.get(int.from_bytes(frame[2:6], "big"))
        if channel is not None:
            channel.media_dropped += 1

    def media_dropped(self, channel_id: int) -> int | None:
        """
        The datagrams of an open channel dropped in the media queue so far
        (older than the media deadline, or the queue full), or C{None} for
        a channel that is not open.
        """
        channel = self._channels.get(channel_id)
        return None if channel is None else channel.media_dropped

    def datagram_frame(self, channel_id: int, data: bytes, now: float, component: int = 0) -> bytes | None:
        """
        The media fast path for a transport that is not paused: return the
        encoded frame when nothing is queued ahead of it, for the caller to
        write at once; otherwise queue it like L{send_datagram} and return
        C{None} (the caller then runs L{data_to_send}).
        """
        if self._priority or self._media or self.state is not State.OPEN or channel_id not in self._channels:
            self.send_datagram(channel_id, data, now, component)
            return None
        size = len(data)
        stats = self.stats
        stats.datagrams_out += 1
        stats.frames_out += 1
        stats.bytes_out += size + 8
        self._last_sent = now
        return _PACK(_DATAGRAM, component, channel_id, size) + data

    def send_stream_data(self, channel_id: int, data: bytes, fin: bool = False) -> bool:
        """
        Queue bytes on a stream channel, split into frames.

        @return: C{False} if the stream queue is now over its limit and the
            caller should pause its source until L{stream_queue_bytes} drops.
        @raise ValueError: if the channel is not an open stream channel, or
            the stream has already been ended.
        """
        self._require_open()
        ch = self._channels.get(channel_id)
        if ch is None or ch.kind is not ChannelKind.STREAM:
            raise ValueError(f"channel {channel_id} is not an open stream channel")
        if ch.local_fin:
            raise ValueError(f"stream on channel {channel_id} already ended")
        step = self.limits.max_frame_payload
        for i in range(0, max(len(data), 1), step):
            chunk = data[i : i + step]
            last = i + step >= len(data)
            flags = FLAG_FIN if (fin and last) else 0
            if not chunk and not flags:
                continue
            frame = encode_frame(FrameType.STREAM_DATA, flags, channel_id, chunk)
            if self._stream is None:
                self._stream = deque()
            self._stream.append(frame)
            self._stream_bytes += len(frame)
        if fin:
            ch.local_fin = True
        return self._stream_bytes <= self.limits.max_stream_queue

    @property
    def stream_queue_bytes(self) -> int:
        """
        Bytes of stream data waiting to be sent.
        """
        return self._stream_bytes

    def go_away(self, now: float, reason: str = "shutting down", drain: float | None = None, final: bool = False) -> None:
        """
        Tell the peer that we are draining: it should move elsewhere.  The
        tunnel closes by itself after the drain time.

        @param final: say that we stop for good (an agent that will not
            resume its session); only to a peer that said C{"final-stop"}
            (L{final_stop}).
        """
        if self.state is State.CLOSED or self.going_away:
            return
        drain = self.limits.drain_time if drain is None else drain
        self.going_away = True
        self._drain_deadline = now + drain
        message: dict[str, Any] = {"code": int(ErrorCode.GOING_AWAY), "reason": reason, "drain": drain}
        if final:
            message["final"] = True
        payload = json.dumps(message).encode()
        self._queue(encode_frame(FrameType.GOAWAY, 0, 0, payload))

    def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "closed") -> ev.TunnelClosed | None:
        """
        End the tunnel: queue an ERROR frame (code 0 for a normal close) and
        refuse everything after it.

        @return: the L{ev.TunnelClosed} event, or C{None} if already closed.
        """
        if self.state is State.CLOSED:
            return None
        return self._fail(code, reason, by_peer=False)

    def _fail(self, code: int, reason: str, by_peer: bool = False) -> ev.TunnelClosed:
        self._clear_queues(keep_priority=True)
        self._queue(encode_error(code, reason))
        self.state = State.CLOSED
        self.close_code, self.close_reason = int(code), reason
        return ev.TunnelClosed(int(code), reason, by_peer)

    def _clear_queues(self, keep_priority: bool = False) -> None:
        if not keep_priority:
            self._priority.clear()
            self._priority_bytes = 0
        self._media = None
        self._media_bytes = 0
        self._stream = None
        self._stream_bytes = 0
        self._channels.clear()

    # -- the scheduler -----------------------------------------------------

    def data_to_send(self, now: float, max_bytes: int | None = None) -> bytes:
        """
        Run the scheduler and return the bytes to write now.

        Control and SIP frames always go first and in full; then media
        datagrams (those older than the media deadline are dropped and
        counted); then stream data, as far as C{max_bytes} allows.
        """
        parts = self._priority
        size = self._priority_bytes
        if parts:
            self._priority = []
            self._priority_bytes = 0
        else:
            parts = []
        media = self._media
        if media:
            limit = now - self.limits.media_deadline
            while media:
                queued, frame = media[0]
                if queued < limit:
                    media.popleft()
                    self._stale(frame)
                    continue
                if max_bytes is not None and size + len(frame) > max_bytes:
                    break
                media.popleft()
                self._media_bytes -= len(frame)
                parts.append(frame)
                size += len(frame)
        stream = self._stream
        while stream and (max_bytes is None or size < max_bytes):
            frame = stream.popleft()
            self._stream_bytes -= len(frame)
            parts.append(frame)
            size += len(frame)
        if not parts:
            return b""
        self._last_sent = now
        self.stats.frames_out += len(parts)
        self.stats.bytes_out += size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @property
    def priority_queue_bytes(self) -> int:
        """
        Bytes of control and SIP frames waiting to be sent.
        """
        return self._priority_bytes

    @property
    def congested(self) -> bool:
        """
        Whether the signalling backlog is over the high-water mark (a
        quarter of L{TunnelLimits.max_priority_queue}): the SIP proxies then refuse
        new requests with C{503} instead of queueing them towards the close
        at the limit.
        """
        return self._priority_bytes > self.limits.max_priority_queue // 4

    def check_queues(self) -> ev.TunnelClosed | None:
        """
        Close the tunnel if its priority queue is over the limit (the peer has
        stopped reading while we must not drop SIP).  Adapters call this
        while paused.
        """
        if self.state is not State.CLOSED and self._priority_bytes > self.limits.max_priority_queue:
            return self._fail(
                ErrorCode.QUEUE_OVERFLOW,
                f"{self._priority_bytes} bytes of signalling queued, limit {self.limits.max_priority_queue}",
            )
        return None

    # -- time --------------------------------------------------------------

    def _ping_due(self) -> float:
        """
        When the next PING is due: once nothing has been sent I{or} nothing
        has been received for L{TunnelLimits.keepalive_interval}, and at most one
        PING per interval.  So no direction of the tunnel stays silent for
        longer than the interval (a NAT that forgets idle mappings sees
        traffic both ways), and a peer that only receives (one-way media)
        still hears from us and answers with a PONG, which keeps our
        dead-peer check fed.
        """
        last_sent = self._last_sent
        last_received = self._last_received
        quiet_since = last_sent if last_sent < last_received else last_received
        if quiet_since < self._last_ping:
            quiet_since = self._last_ping
        return quiet_since + self.limits.keepalive_interval

    def next_deadline(self) -> float | None:
        """
        The time at which L{handle_timer} must be called, or C{None}.

        It is computed from the times of the last frame sent and received,
        so frames move no timer: an adapter may keep a timer set for an
        earlier deadline, call L{handle_timer} then (which does nothing
        when nothing is due) and ask again.
        """
        if self.state is State.CLOSED:
            return None
        if self.state is not State.OPEN:
            return self._started + self.limits.handshake_timeout
        if self.tcp_keepalive:
            # the kernel keeps the connection alive and finds a dead peer
            return self._drain_deadline
        deadline = self._last_received + self.limits.keepalive_timeout
        ping = self._ping_due()
        if ping < deadline:
            deadline = ping
        if self._drain_deadline is not None and self._drain_deadline < deadline:
            deadline = self._drain_deadline
        return deadline

    def handle_timer(self, now: float) -> list[Any]:
        """
        Act on timeouts: handshake, keepalive, drain.
        """
        if self.state is State.CLOSED:
            return []
        limits = self.limits
        if self.state is not State.OPEN:
            if now >= self._started + limits.handshake_timeout:
                return [self._fail(ErrorCode.HANDSHAKE_TIMEOUT, f"no handshake within {limits.handshake_timeout:g} s")]
            return []
        if not self.tcp_keepalive and now >= self._last_received + limits.keepalive_timeout:
            return [self._fail(ErrorCode.KEEPALIVE_TIMEOUT, f"peer silent for {limits.keepalive_timeout:g} s")]
        if self._drain_deadline is not None and now >= self._drain_deadline:
            return [self._fail(ErrorCode.GOING_AWAY, "drain time over")]
        if not self.tcp_keepalive and now >= self._ping_due():
            self._queue(encode_frame(FrameType.PING, 0, 0, b""))
            self.stats.pings_sent += 1
            self._last_ping = now
        return []


#: the handler of each frame type (but DATAGRAM, the fast path), called as
#: C{handler(connection, flags, channel, payload, now, out)}: one table for
#: every connection rather than a dict of bound methods each
_FRAME_HANDLERS: dict[int, Any] = {
    int(FrameType.CONTROL): TunnelConnection._on_control,
    int(FrameType.SIP): TunnelConnection._on_sip,
    int(FrameType.STREAM_DATA): TunnelConnection._on_stream_data,
    int(FrameType.PING): TunnelConnection._on_ping,
    int(FrameType.PONG): TunnelConnection._on_pong,
    int(FrameType.GOAWAY): TunnelConnection._on_goaway,
    int(FrameType.ERROR): TunnelConnection._on_error,
}
