# -*- test-case-name: tests.test_media_manager -*-
"""
The media manager: one per half (agent or contact point).

It is called by the SIP proxy core for every message with a body that
crosses the tunnel (L{MediaManager.sdp_into_tunnel},
L{MediaManager.sdp_out_of_tunnel}, L{MediaManager.dialog_answered},
L{MediaManager.dialog_ended}) and by the
tunnel for media channels (the channel callbacks of
C{spwm.tunnel.protocol.TunnelApplication}). Per dialog and media stream it
keeps one tunnel channel and one relay socket (pair) on our media address.

What to do with each SDP and answer is decided by the pure negotiation of
the call leg (L{spwm.media.negotiation.LegMedia}); the manager carries its
actions out (L{MediaManager._execute}): ports, relay sockets, channels,
TCP endpoints, log lines. The sweep's timer is L{spwm.media.sweep.Sweep}.

See C{docs/media.md} and C{docs/architecture.md} ("Media").
"""

from __future__ import annotations

import math
import operator
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator, cast

from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LogLevel

from spwm._mypyc import instance_logger
from spwm.addr import hostport
from spwm.clock import wall
from spwm.logthrottle import Every, PowersOfTwo, ThrottledLog
from spwm.media.ports import PortAllocator, PortsExhaustedError
from spwm.media.quality import StreamQuality, merge_snapshots
from spwm.media.reader import TwistedRelaySockets
from spwm.media.relay import (
    DEFAULT_RECEIVE_BUFFER,
    MAX_DATAGRAM,
    AllowPolicy,
    MediaRelayEndpoint,
    is_local_address,
    normalise_host,
)
from spwm.media.negotiation import (
    DEFAULT_MAX_BRANCHES_PER_STREAM,
    DEFAULT_MAX_STREAMS_PER_DIALOG,
    Action,
    Answered,
    AnsweredToo,
    AnsweredWithoutSdp,
    Bind,
    Create,
    Crowded,
    Entry,
    Expect,
    IgnoredBranch,
    Keep,
    LegMedia,
    OpenChannel,
    Refuse,
    Rejected,
    Relay,
    Release,
    SameAs,
    StreamPlan,
    TcpConnect,
    TcpExpect,
    TcpListen,
    TcpRelay,
    latest,
)
from spwm.media.sweep import Sweep, sweep_interval
from spwm.sip.byes import LOSS_CAUSES
from spwm.sip.ringing import told_text
from spwm.media.tcp import DEFAULT_MAX_BUFFER, TcpMediaEndpoint
from spwm.sdp import (
    MediaDescription,
    OriginVersioner,
    SessionDescription,
    TcpRewrite,
    find_sdp,
    parse_sdp,
    replace_sdp,
    rewrite_sdp,
    rewrite_tcp_media,
)
from spwm.tunnel.api import Refusal
from spwm.tunnel.connection import ChannelLimitError, TunnelNotOpenError
from spwm.tunnel.frames import ChannelKind, ErrorCode

#: Default media inactivity timeout in seconds (not applied to held streams).
DEFAULT_INACTIVITY_TIMEOUT = 60.0

#: Seconds without media after which a stream of a call not answered yet
#: is released (or the inactivity timeout, if longer). A phone may ring
#: for minutes without early media; a proxy on the way ends an INVITE
#: that has no final answer after its Timer C, "greater than 3 minutes"
#: (RFC 3261 16.6, 16.8), whose CANCEL or 408 ends the call here: 200 s
#: leaves 20 s for those to come through.
UNANSWERED_TIMEOUT = 200.0

#: Seconds after which a call leg whose INVITE no response of any kind
#: came back to (not even a provisional one) ends: its caller gave up then
#: (RFC 3261 Timer B, 64 x T1), and every retransmission went with it.
#: Without this, a next hop that took no INVITE (the operator's proxy down
#: or unreachable) left each such call's ports held for
#: L{UNANSWERED_TIMEOUT}, and calls refused for a full port range long
#: after the proxy was back.
NO_RESPONSE_TIMEOUT = 64 * 0.5

#: A dialog's C{waiting} once a response to its INVITE crossed: for good.
_HEARD = math.inf

#: Why a call leg's media ends, as its call detail record says (C{reason}):
#: a BYE, CANCEL or final error; its session's tunnel lost past the resume
#: window; its session resumed as another; no media left; no response to
#: its INVITE (L{NO_RESPONSE_TIMEOUT}).
END_REASONS = (
    "dialog ended",
    "answer never acknowledged",
    "tunnel lost",
    "resumed as another session",
    "media inactivity",
    "no response",
)

#: Default number of channels the peer may open before their SDP arrives,
#: per session.  Every call has one such channel for a moment; a busy half
#: keeps them for as long as its SIP backlog (the SIP waits in slices, and
#: the copy of an C{open} on another connection of the session overtakes
#: the SIP on the carrier): at 450 calls/s into one worker that can take
#: 300, 256 were too few, 1,024 enough.
DEFAULT_MAX_PENDING_CHANNELS = 1024

#: At most this many channels wait for their SDP in all sessions together
#: (a bound on memory, a few MB; each session has its own, smaller limit,
#: so one agent that opens channels without SDP cannot refuse another's).
MAX_PENDING_TOTAL = 16384

#: The fewest port pairs L{session_share} gives one session: one call with
#: every stream a call may have (C{--max-streams-per-dialog}'s default).
MIN_SESSION_PAIRS = 16


def session_share(capacity: int) -> int:
    """
    The port pairs one session (one tunnel's agent) may hold by default
    (C{--max-media-per-tunnel}) once a quarter of the range or less is
    free (L{MediaManager.session_full}): a quarter of the range (with the
    default 500 pairs, 125: some 60 calls of audio and video, over 100 of
    audio alone), but at least L{MIN_SESSION_PAIRS}. One agent, by mistake
    or not, can then take at most three quarters of the range, and the
    others always find pairs.
    """
    return max(MIN_SESSION_PAIRS, capacity // 4)

#: Seconds a channel the peer opened may wait for its SDP. The SDP travels
#: right behind the open, so a channel still waiting after this belongs to
#: a message that was refused or lost (overload).
PENDING_TIMEOUT = 10.0

#: Pairs of the range one stream tries to bind before it is given up when
#: other programs hold them (each try is a C{bind}; the allocator goes on
#: from the last for the next stream, so a held block is passed in turn).
BIND_TRIES = 16

#: Call detail records kept for the status page (the last ones ended).
RECENT_CALLS = 100

#: The port we advertise when we connect (RFC 4145 section 4.1).
_ACTIVE_PORT = 9


class _Stream:
    """
    The means of one stream (m= line) of one dialog: its channel, relay
    sockets, TCP endpoint and activity. What was negotiated is its
    L{StreamPlan} (C{plan}).
    """

    __slots__ = (
        "tunnel",
        "session",
        "dialog",
        "index",
        "plan",
        "channel_id",
        "channel_ours",
        "rtp",
        "rtcp",
        "base_port",
        "last_count",
        "last_activity",
        "tcp",
        "refused_target",
        "quality",
    )

    def __init__(
        self,
        tunnel: Any,
        session: str,
        dialog: str,
        index: int,
        plan: StreamPlan,
        now: float,
        side: str = "agent",
    ) -> None:
        # the connection its channel is on (the session's primary), and
        # the session's stable id
        self.tunnel = tunnel
        self.session = session
        self.dialog = dialog
        self.index = index
        self.plan = plan
        self.channel_id: int | None = None
        # whether this half opened its channel (else the peer did)
        self.channel_ours = False
        self.rtp: MediaRelayEndpoint | None = None
        self.rtcp: MediaRelayEndpoint | None = None
        self.base_port: int | None = None
        self.last_count = 0
        self.last_activity = now
        # TCP media (RFC 4145): the endpoint on our side
        self.tcp: TcpMediaEndpoint | None = None
        # the last (host, port) of our side that the allow policy refused
        # (logged once per stream and address)
        self.refused_target: tuple[str, int] | None = None
        # the quality figures of its legs (spwm.media.quality; the relay
        # endpoints feed them, docs/media.md "Call quality")
        self.quality = StreamQuality(
            side,
            tunnel_rtt=self.tunnel_rtt,
            late_dropped=self.late_dropped,
        )

    def tunnel_rtt(self) -> float | None:
        """
        The round trip (seconds) the stream's tunnel connection measures,
        if it offers one as C{rtt} (read for a snapshot, never per packet).
        """
        rtt = getattr(self.tunnel, "rtt", None)
        if callable(rtt):
            rtt = rtt()
        return float(rtt) if isinstance(rtt, (int, float)) and rtt >= 0 else None

    def late_dropped(self) -> int | None:
        """
        The datagrams of the stream's channel the tunnel dropped for its
        media deadline, if the tunnel counts them per channel
        (C{late_dropped(channel_id)}); C{None} otherwise (the tunnel's
        own total is in its status).
        """
        count = getattr(self.tunnel, "late_dropped", None)
        if self.channel_id is None or not callable(count):
            return None
        value = count(self.channel_id)
        return value if isinstance(value, int) else None

    def count(self) -> int:
        total = 0
        if self.rtp is not None:
            total += self.rtp.total_packets
        if self.rtcp is not None:
            total += self.rtcp.total_packets
        if self.tcp is not None:
            total += self.tcp.bytes_in + self.tcp.bytes_out
        return total


def _quiet_since(dialog: _Dialog, stream: _Stream, now: float) -> float:
    """
    Since when a dialog whose last stream goes has been without media,
    for its wait without streams (C{MediaManager._sweep}).

    @return: for an answered call, the last activity the sweep saw on the
        stream (its silence counts towards the media timeout already),
        unless packets came since that sweep, it is on hold or its TCP
        connection is up; else C{now}.
    """
    if (
        not dialog.leg.answered
        or stream.plan.held
        or stream.count() != stream.last_count
        or (stream.tcp is not None and stream.tcp.connected)
    ):
        return now
    return stream.last_activity


class _Dialog:
    """
    The media of one call leg: its negotiation (C{leg}) and the streams
    that carry it.

    @ivar leg: the offer/answer state (L{LegMedia}).
    @ivar streams: the streams' means, by index (the same indices as
        C{leg.streams}).
    """

    __slots__ = (
        "leg",
        "streams",
        "versioner",
        "source",
        "started",
        "answered_at",
        "codec",
        "history",
        "quality",
        "parties",
        "agent",
        "session",
        "waiting",
    )

    def __init__(self, leg: LegMedia, now: float = 0.0) -> None:
        self.leg = leg
        self.streams: dict[int, _Stream] = {}
        self.versioner = OriginVersioner()
        # our side's signalling host (agent: where the phone's SIP came from)
        self.source: str | None = None
        # for the call log lines: when the call started and was answered,
        # the first codec of the latest SDP from our side (True) and from
        # the other side (False), the traffic of the streams released so far
        self.started = now
        self.answered_at: float | None = None
        self.codec: dict[bool, str | None] = {}
        self.history: dict[int, dict[str, int]] = {}
        # the quality snapshot of each stream index, taken when it was
        # released, over its incarnations (removed and added again)
        self.quality: dict[int, dict[str, Any]] = {}
        # (From URI, To URI) of the call, when the SIP core told us
        self.parties: tuple[str, str] | None = None
        # for the status listing: the agent and the session
        self.agent = ""
        self.session = ""
        # when its initial INVITE crossed, until a response to it did
        # (NO_RESPONSE_TIMEOUT); None: no INVITE seen; HEARD: answered
        self.waiting: float | None = None


#: Seconds a dialog that ended (an answered call's BYE) is remembered, so
#: that its 2xx retransmitted after the BYE (for up to 64*T1 = 32 s, RFC
#: 3261 13.3.1.4) makes no media state again; and how many are remembered.
ENDED_MEMORY = 64.0
MAX_ENDED_MEMORY = 4096


#: The traffic counters of L{MediaManager.status}: the relay endpoints'
#: counters summed over RTP and RTCP, and the TCP media bytes.
_TRAFFIC = (
    "packets_in",
    "bytes_in",
    "packets_out",
    "bytes_out",
    "dropped_source",
    "dropped_no_channel",
    "dropped_no_target",
    "dropped_send",
    "tcp_bytes_in",
    "tcp_bytes_out",
)


#: An endpoint's counters of L{_TRAFFIC}, read at once.
_endpoint_traffic = operator.attrgetter(*_TRAFFIC[:8])


def _add_traffic(totals: dict[str, int], stream: _Stream) -> None:
    for endpoint in (stream.rtp, stream.rtcp):
        if endpoint is not None:
            for name, value in zip(_TRAFFIC[:8], _endpoint_traffic(endpoint)):
                totals[name] += value
    if stream.tcp is not None:
        totals["tcp_bytes_in"] += stream.tcp.bytes_in
        totals["tcp_bytes_out"] += stream.tcp.bytes_out


#: Static RTP payload types (RFC 3551) that need no C{a=rtpmap}.
_STATIC_PAYLOADS = {
    "0": "PCMU/8000",
    "3": "GSM/8000",
    "4": "G723/8000",
    "5": "DVI4/8000",
    "8": "PCMA/8000",
    "9": "G722/8000",
    "10": "L16/44100/2",
    "13": "CN/8000",
    "15": "G728/8000",
    "18": "G729/8000",
    "26": "JPEG/90000",
    "31": "H261/90000",
    "34": "H263/90000",
}


def first_codec(sdp: bytes, description: SessionDescription) -> str | None:
    """
    The codec of a description for the call log: the C{a=rtpmap} name and
    rate of the first format of the first live stream (a static payload
    type by its RFC 3551 name), the protocol for non-RTP media.

    @return: e.g. C{"PCMU/8000"}, or C{None} when no stream is live.
    """
    live = next((m for m in description.media if m.port and m.formats), None)
    if live is None:
        return None
    return media_codec(sdp, live)


def media_codec(sdp: bytes, live: MediaDescription) -> str | None:
    """
    The codec of one stream of a description: the C{a=rtpmap} name and
    rate of its first format (a static payload type by its RFC 3551
    name), the protocol for non-RTP media, C{None} without formats.
    """
    if not live.formats:
        return None
    if "RTP" not in live.proto:
        return live.proto
    fmt = live.formats[0]
    prefix = b"a=rtpmap:" + fmt.encode("ascii", "replace") + b" "
    size = len(prefix)
    section = -1
    # (slices compared: no method call per line)
    for line in sdp.splitlines():
        if line[:2] == b"m=":
            section += 1
        elif section == live.index and line[:size] == prefix:
            return line[size:].strip().decode("ascii", "replace")
    return _STATIC_PAYLOADS.get(fmt, "payload type " + fmt)


def _codecs(sdp: bytes, description: SessionDescription) -> tuple[str | None, dict[int, str | None]]:
    """
    The codecs of a description, each stream's read once: the first live
    stream's (L{first_codec}) and every stream's with a port, by index
    (L{media_codec}).
    """
    first = None
    found = False
    codecs: dict[int, str | None] = {}
    for media in description.media:
        if not media.port:
            continue
        codec = codecs[media.index] = media_codec(sdp, media)
        if not found and media.formats:
            first, found = codec, True
    return first, codecs


def _learn_codecs(dialog: _Dialog, codecs: dict[int, str | None]) -> None:
    """
    Tell each stream's quality figures the codec of the latest description
    (the answer comes after the offer, so the answer's first codec wins):
    its clock rate is the jitter's unit, its name picks the E-model's
    impairment. Not for a re-offer in an answered call: until its answer
    the streams carry what they carried, and a refusal (a non-2xx, or
    port 0 in the answer) leaves them so.
    """
    for index, codec in codecs.items():
        stream = dialog.streams.get(index)
        if stream is not None:
            stream.quality.set_codec(codec)


def _host_port(host: str | None, port: int | None) -> str:
    if host is None:
        return "?"
    if ":" in host:
        host = "[" + host + "]"
    return "{}:{}".format(host, "?" if port is None else port)


#: The relay endpoint counters a call's end line is made of.
_CALL_COUNTERS = (
    "packets_in",
    "packets_out",
    "dropped_source",
    "dropped_no_channel",
    "dropped_no_target",
    "dropped_send",
)


def _stream_traffic(stream: _Stream, into: dict[str, int] | None = None) -> dict[str, int]:
    """
    The relay counters of a stream (RTP and RTCP summed), added to C{into}.
    """
    totals = into if into is not None else dict.fromkeys(_CALL_COUNTERS, 0)
    for endpoint in (stream.rtp, stream.rtcp):
        if endpoint is not None:
            for name, value in zip(_CALL_COUNTERS, _endpoint_counters(endpoint)):
                totals[name] += value
    return totals


#: An endpoint's counters of L{_CALL_COUNTERS}, read at once.
_endpoint_counters = operator.attrgetter(*_CALL_COUNTERS)


#: Ended calls remembered for the status listing (the newest): one ring,
#: which also holds their call detail records (L{MediaManager.cdrs}).
ENDED_CALLS = RECENT_CALLS


class _EndedCall:
    """
    A call leg that ended, as the ring of ended calls keeps it: its call
    detail record, built once at the end (the log line, the metrics and
    L{MediaManager.cdrs} share it), and the dialog itself, from which
    the status listing's entry is made only when a status request asks
    (L{MediaManager.ended_calls}).  The dialog's streams are released by
    then, so nothing in it changes any more.
    """

    __slots__ = ("cdr", "key", "dialog", "ended", "reason")

    def __init__(self, cdr: dict[str, Any], key: str, dialog: "_Dialog", ended: float, reason: str) -> None:
        self.cdr = cdr
        self.key = key
        self.dialog = dialog
        self.ended = ended
        self.reason = reason


def _quality(stream: Any) -> Any:
    """
    The quality figures of a stream (C{quality.snapshot()}), or C{None}
    where the stream measures none.
    """
    quality = getattr(stream, "quality", None)
    return None if quality is None else quality.snapshot()


def call_detail_record(
    dialog_key: str, dialog: _Dialog, reason: str, now: float, side: str, local_leg: str
) -> dict[str, Any]:
    """
    The call detail record of a call leg that ended: JSON-ready values
    only.

    C{call_id}, C{dialog} (flow/Call-ID), C{side}, C{agent} (the
    agent's id the call went through), C{session}, C{from}, C{to},
    C{reason}, C{started} (Unix time), C{duration_s}, C{answered_s}
    (C{None}: not answered), C{codec}, C{mos} (per direction: the
    worst stream's), and per stream (C{streams}, by index) its C{legs}
    (L{StreamQuality.snapshot}), C{mos} and the relay's own counters
    (C{relay}: C{packets_in} from our side, C{packets_out} to it and
    what this half dropped).
    """
    _, _, call_id = dialog_key.partition("/")
    streams: list[dict[str, Any]] = []
    # the call's MOS per direction: its worst stream's (the first lowest,
    # as min() of the rated ones), in the same pass
    up = down = None
    for index in sorted(set(dialog.history) | set(dialog.quality)):
        snapshot = dialog.quality.get(index)
        mos = {"up": None, "down": None} if snapshot is None else snapshot["mos"]
        streams.append(
            {
                "index": index,
                "codec": None if snapshot is None else snapshot["codec"],
                "legs": None if snapshot is None else snapshot["legs"],
                "mos": mos,
                "relay": dict(dialog.history.get(index, {})),
            }
        )
        value = mos["up"]
        if value is not None and (up is None or value < up):
            up = value
        value = mos["down"]
        if value is not None and (down is None or value < down):
            down = value
    codec = dialog.codec.get(True) or dialog.codec.get(False)
    if streams and streams[0]["codec"]:
        codec = streams[0]["codec"]
    parties = dialog.parties
    return {
        "call_id": call_id or dialog_key,
        "dialog": dialog_key,
        "side": side,
        "local_leg": local_leg,
        "agent": dialog.agent or None,
        "session": dialog.session or None,
        "from": None if parties is None else parties[0],
        "to": None if parties is None else parties[1],
        "reason": reason,
        "started": round(wall(dialog.started), 3),
        "duration_s": round(now - dialog.started, 1),
        "answered_s": None if dialog.answered_at is None else round(now - dialog.answered_at, 1),
        "codec": codec,
        "mos": {"up": up, "down": down},
        "streams": streams,
    }


def _cdr_summary(record: dict[str, Any]) -> str:
    """
    The per-stream part of the call detail line, for people.
    """
    parts = []
    for stream in record["streams"]:
        legs = []
        for name in ("lan", "tunnel", "operator"):
            leg = (stream["legs"] or {}).get(name)
            if leg is None:
                continue
            text = "{} {} pkts lost {} jitter {}ms".format(
                name, leg["packets"], leg["lost"], round(leg["jitter_ms"], 1)
            )
            if leg["reordered"] or leg["duplicates"]:
                text += " reordered {} dup {}".format(leg["reordered"], leg["duplicates"])
            if leg["late_dropped"]:
                text += " late {}".format(leg["late_dropped"])
            legs.append(text)
        mos = stream["mos"]
        relay = stream["relay"]
        dropped = (
            relay.get("dropped_source", 0)
            + relay.get("dropped_no_channel", 0)
            + relay.get("dropped_no_target", 0)
            + relay.get("dropped_send", 0)
        )
        parts.append(
            "stream {}: {}; MOS up {} down {}; relay dropped {}".format(
                stream["index"],
                ", ".join(legs) if legs else "no RTP",
                "?" if mos["up"] is None else mos["up"],
                "?" if mos["down"] is None else mos["down"],
                dropped,
            )
        )
    return "; ".join(parts) if parts else "no media"


class MediaManager:
    """
    Media streams of every dialog on one half, with their channels and
    relay sockets.

    @ivar side: C{"agent"} or C{"contact"}.
    @ivar address: our media address (where our side's endpoints send).
    @ivar inactivity_timeout: seconds without packets after which a stream
        that is not on hold is released.
    @ivar dropped_unknown_channel: datagrams from the tunnel on a channel we
        do not know (late or never opened).
    @ivar refused_channels: channels from the peer that we refused.
    @ivar crossed_channels: contact point: the agent's channels for a
        stream the contact point had opened one for at the same time
        (around a resumption), refused without a warning: the agent
        takes the contact point's.
    @ivar rejected_streams: streams we rejected (limits, no ports, TCP).
    @ivar refused_local_channels: streams released because the tunnel would
        not open their channel (at its channel limit, or closed).
    @ivar policy_refusals: streams whose address from our side the allow
        policy refused (counted once per stream and address, see
        L{_check_policy}).
    @ivar ignored_branch_sdp: descriptions from our side's branches that
        lost, received after another branch answered.
    @ivar ignored_after_end: SDP of a dialog that ended moments ago (a 2xx
        retransmitted after the BYE), which makes no media state again.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        side: str,
        address: str,
        port_range: tuple[int, int],
        allow: Iterable[str] = (),
        clock: Any = None,
        strict: bool | None = None,
        inactivity_timeout: float = DEFAULT_INACTIVITY_TIMEOUT,
        receive_buffer: int = DEFAULT_RECEIVE_BUFFER,
        max_streams_per_dialog: int = DEFAULT_MAX_STREAMS_PER_DIALOG,
        max_pending_channels: int = DEFAULT_MAX_PENDING_CHANNELS,
        tcp_buffer: int = DEFAULT_MAX_BUFFER,
        sockets: Any = None,
        max_branches_per_stream: int = DEFAULT_MAX_BRANCHES_PER_STREAM,
        hep: Any = None,
        call_lines: bool = False,
        pending_timeout: float = PENDING_TIMEOUT,
        max_calls: int | None = None,
        max_pairs_per_session: int | None = None,
    ) -> None:
        """
        @param reactor: provides C{IReactorUDP} (and C{IReactorTime} unless
            C{clock} is given).
        @param side: C{"agent"} or C{"contact"}.
        @param address: the IP address our relay sockets bind to and that
            the SDP towards our side names.
        @param port_range: the (low, high) media ports.
        @param allow: C{--media-allow} networks (CIDR). Only the contact
            point refuses the special ranges by default.
        @param clock: the clock for the inactivity timer; C{reactor} if
            C{None}.
        @param strict: latch only on the negotiated host I{and} port;
            default: on for the contact point, off for the agent.
        @param tcp_buffer: bytes of TCP media kept per stream while our
            side is not connected or does not read (L{TcpMediaEndpoint}).
        @param sockets: what binds and reads the relay sockets
            (L{spwm.media.reader.relay_sockets_for}); C{None}: one
            C{reactor.listenUDP} per socket.
        @param max_branches_per_stream: branches (early dialogs of a
            forked call) remembered per stream and direction; the oldest
            is forgotten beyond it.
        @param hep: the C{--hep} sender (L{spwm.hep.HepSender}): every
            RTCP report relayed is copied to it; or C{None}.
        @param pending_timeout: seconds a channel the peer opened waits
            for the SDP that explains it (L{spwm.limits.MediaLimits}).
        @param max_calls: the call legs with media this half relays at
            once (C{--max-calls}): at that many, L{at_call_limit} is true
            and the SIP cores refuse new calls with 503; C{None}: no limit
            but the port range.
        @param max_pairs_per_session: the port pairs the streams of one
            session (one tunnel's agent) may hold at once
            (C{--max-media-per-tunnel}, L{session_share}) once a quarter
            of the range or less is free: at that many then, a new call
            through it is refused with 503 and a further stream of its
            calls gets port 0; C{None}: no limit but the range.
        @param call_lines: log each call's start and answer (debug level,
            C{--log-level debug}); the call detail record at its end is
            always logged.
        @raise ValueError: a bad side, range or network.
        """
        if side not in ("agent", "contact"):
            raise ValueError(f"side must be 'agent' or 'contact', not {side!r}")
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.side = side
        self.address = address
        self.ports = PortAllocator(*port_range)
        self.policy = AllowPolicy(allow, block_special=(side == "contact"))
        self.strict = (side == "contact") if strict is None else strict
        self.inactivity_timeout = inactivity_timeout
        self.receive_buffer = receive_buffer
        self.max_streams_per_dialog = max_streams_per_dialog
        self.max_pairs_per_session = max_pairs_per_session
        # session id -> the port pairs its streams hold
        self._session_pairs: dict[str, int] = {}
        self.max_pending_channels = max_pending_channels
        self.tcp_buffer = tcp_buffer
        # one Logger for the manager, as the class attribute gives it (which
        # makes a new one at each use, and this half logs a line per call;
        # compiled, the attribute is not bound at all)
        self.log = instance_logger(self)
        self.sockets = sockets if sockets is not None else TwistedRelaySockets(reactor, MAX_DATAGRAM)
        self.max_branches_per_stream = max_branches_per_stream
        self.hep = hep
        self.call_lines = call_lines
        self.pending_timeout = pending_timeout
        self.max_calls = max_calls
        # session id -> dialog key -> the dialog's media: keyed by the
        # session's stable id, never by the connection that carries it, so
        # a resumption moves nothing and a session's end touches its own
        # dialogs only
        self._sessions: dict[str, dict[str, _Dialog]] = {}
        # the dialogs in _sessions, kept as they come and go (the call
        # limit asks at every new INVITE: not a walk over the sessions)
        self._dialog_count = 0
        # A channel belongs to one connection (channel ids are per
        # connection): (connection, channel_id) -> (send for component 0,
        # send for component 1), and -> its stream
        self._routes: dict[tuple[Any, int], tuple[Any, Any]] = {}
        self._channels: dict[tuple[Any, int], _Stream] = {}
        # channels the peer opened whose SDP we have not seen yet:
        # (session id, dialog key, stream) -> (connection, channel id, since)
        self._pending: dict[tuple[str, str, int], tuple[Any, int, float]] = {}
        # session -> its pending channels (the per-session limit)
        self._pending_count: dict[str, int] = {}
        # the pending channels by (session id, dialog key) -> their streams
        # (in the order they came), and by (connection, channel id): a
        # dialog's end and a peer's close find theirs without a walk over
        # every pending channel (up to MAX_PENDING_TOTAL under overload)
        self._pending_dialogs: dict[tuple[str, str], dict[int, None]] = {}
        self._pending_channels: dict[tuple[Any, int], tuple[str, str, int]] = {}
        self._sockets = 0
        # the streams of all dialogs, counted where they are made
        # (_create) and released (_release_stream, the only places that
        # add to or take from a dialog's streams), so that the sweep's
        # "anything left?" at each release is one comparison, not a walk
        # over every dialog
        self._stream_count = 0
        # (session, dialog key) -> when the dialog lost its last stream
        # (stale entries, of dialogs that ended or got a stream again, are
        # dropped by the next sweep): one without streams for the media
        # timeout ends (L{_sweep})
        self._streamless: dict[tuple[str, str], float] = {}
        #: the sessions whose connection broke and that may be resumed: a
        #: stream made meanwhile (a call that SIP waiting for the
        #: resumption starts) waits for its channel instead of being
        #: released for want of one
        self._suspended: set[str] = set()
        self._sweeper = Sweep(
            self.clock,
            lambda: sweep_interval(self.inactivity_timeout),
            self._sweep,
            self._busy,
        )
        self.dropped_unknown_channel = 0
        self.refused_channels = 0
        self.crossed_channels = 0
        self.replaced_channels = 0
        self.rejected_streams = 0
        self.refused_local_channels = 0
        self._warnings = ThrottledLog(self.log, None, PowersOfTwo(), max_keys=64)
        self.ignored_branch_sdp = 0
        # the packet and byte counters of the streams released so far
        self._released: dict[str, int] = dict.fromkeys(_TRAFFIC, 0)
        # the name of our side's leg in the call log lines
        self._local_leg = "lan" if side == "agent" else "operator"
        self.policy_refusals = 0
        self._policy_log = ThrottledLog(self.log, self.clock, Every(60.0) | PowersOfTwo())
        # dialogs that ended within ENDED_MEMORY seconds, oldest first:
        # (session id, dialog key) -> when; at most MAX_ENDED_MEMORY
        self._recently_ended: dict[tuple[str, str], float] = {}
        self.ignored_after_end = 0
        # the last ended calls (their call detail records and the status
        # listing's entries), and who is told of a call's answer and end
        # (C{observer(event, record)})
        self._ended: deque[_EndedCall] = deque(maxlen=ENDED_CALLS)
        self.call_observers: list[Callable[[str, dict[str, Any]], None]] = []
        #: C{leg_lost(session_id, dialog_key, reason)}: told of a call leg
        #: that ends for want of media (L{LOSS_CAUSES}: no BYE ended it),
        #: before its record is made; returns whom the SIP core sent a BYE
        #: to, or for a call that rang a CANCEL or final response
        #: (C{"phone (CANCEL)"}, L{spwm.sip.ringing.told_text}; the
        #: record's C{bye_sent}).  C{None}: nobody is told.
        self.leg_lost: Callable[[str, str, str], list[str]] | None = None
        #: C{session_lost(session_id)}: told once a session's streams are
        #: released for good (L{session_ended}), after its legs'
        #: L{leg_lost}: the SIP core ends the session's calls that still
        #: ring without a media stream (an INVITE without SDP).
        self.session_lost: Callable[[str], Any] | None = None

    # counts for tests and status

    def status(self) -> dict[str, int]:
        """
        What the status page shows of this half's media: what is open now,
        and counters since the start (the released streams' and the live
        ones'). Walks every stream: for status requests, not per packet.
        """
        traffic = dict(self._released)
        for dialog in self._all_dialogs():
            for stream in dialog.streams.values():
                _add_traffic(traffic, stream)
        return {
            "streams": self.streams,
            "relay_sockets": self.open_sockets,
            # released, kept bound a while for the next call on their port;
            # taken over by such a call; datagrams that reached them, dropped
            "relay_sockets_kept": getattr(self.sockets, "kept", 0),
            "relay_sockets_reused": getattr(self.sockets, "reused", 0),
            "dropped_kept": getattr(self.sockets, "kept_dropped", 0),
            "tcp_sockets": self.open_tcp_sockets,
            "channels": self.open_channels,
            "port_pairs_in_use": self.ports_in_use,
            "port_pairs_total": self.ports.capacity,
            "rejected_streams": self.rejected_streams,
            "refused_channels": self.refused_channels,
            "crossed_channels": self.crossed_channels,
            "replaced_channels": self.replaced_channels,
            "refused_local_channels": self.refused_local_channels,
            "dropped_unknown_channel": self.dropped_unknown_channel,
            "ignored_branch_sdp": self.ignored_branch_sdp,
            "policy_refusals": self.policy_refusals,
            **traffic,
        }

    @property
    def open_sockets(self) -> int:
        """
        Relay sockets currently bound.
        """
        return self._sockets

    @property
    def open_channels(self) -> int:
        """
        Media channels known (ours and the peer's, including pending ones).
        """
        return len(self._channels) + len(self._pending)

    @property
    def open_tcp_sockets(self) -> int:
        """
        TCP media sockets currently held: listeners, connections and
        connection attempts.
        """
        return sum(
            s.tcp.sockets
            for d in self._all_dialogs()
            for s in d.streams.values()
            if s.tcp is not None
        )

    def stream_tcp(self, session_id: str, dialog_key: str, index: int) -> TcpMediaEndpoint | None:
        """
        @return: the TCP media endpoint of a stream, or C{None}.
        """
        dialog = self._find(session_id, dialog_key)
        stream = None if dialog is None else dialog.streams.get(index)
        return None if stream is None else stream.tcp

    @property
    def streams(self) -> int:
        """
        Media streams currently tracked.
        """
        return sum(len(d.streams) for d in self._all_dialogs())

    @property
    def ports_in_use(self) -> int:
        """
        Port pairs allocated from the range.
        """
        return self.ports.in_use

    def stream_endpoints(
        self, session_id: str, dialog_key: str, index: int
    ) -> tuple[MediaRelayEndpoint | None, MediaRelayEndpoint | None]:
        """
        @return: the RTP and RTCP endpoints of a stream (C{None} if absent).
        """
        dialog = self._find(session_id, dialog_key)
        stream = None if dialog is None else dialog.streams.get(index)
        if stream is None:
            return None, None
        return stream.rtp, stream.rtcp

    def dialog_keys(self, session_id: str) -> list[str]:
        """
        The keys of the dialogs (call legs) of a session that have media.
        """
        return list(self._sessions.get(session_id, ()))

    # the status listing

    def call_list(self) -> list[dict[str, Any]]:
        """
        The calls in progress (dialogs with media), as plain dicts: see
        L{_call_record}.
        """
        now = self.clock.seconds()
        return [
            self._call_record(session_id, key, dialog, now)
            for session_id, dialogs in self._sessions.items()
            for key, dialog in dialogs.items()
        ]

    @property
    def calls(self) -> int:
        """
        Call legs with media now (the dialogs L{call_list} lists).
        """
        return self._dialog_count

    @property
    def at_call_limit(self) -> bool:
        """
        Whether this half relays C{max_calls} call legs or more (only new
        INVITEs are refused; a leg that comes otherwise, such as the
        dialogs of a session absorbed into another, still counts, and no
        call in progress is ended for the limit).
        """
        return self.max_calls is not None and self._dialog_count >= self.max_calls

    def ended_calls(self) -> list[dict[str, Any]]:
        """
        The last L{ENDED_CALLS} calls that ended, newest first, as
        L{call_list} with C{ended}, C{reason} and C{bye_sent} (whom this
        half sent a BYE of its own, L{leg_lost}) (made here, for the
        status request that asks, not at each call's end).
        """
        out = []
        for ended in reversed(self._ended):
            dialog = ended.dialog
            record = self._call_record(dialog.session, ended.key, dialog, ended.ended)
            record.update(
                ended=wall(ended.ended), reason=ended.reason, state="ended", bye_sent=ended.cdr["bye_sent"]
            )
            out.append(record)
        return out

    @property
    def cdrs(self) -> list[dict[str, Any]]:
        """
        The call detail records (L{call_detail_record}) of the last
        L{RECENT_CALLS} calls ended, oldest first.
        """
        return [ended.cdr for ended in self._ended]

    def _call_record(self, session_id: str, key: str, dialog: _Dialog, now: float) -> dict[str, Any]:
        """
        A call leg for the status listing: C{session}, C{agent}, C{call}
        (the dialog key), C{call_id}, C{from}, C{to}, C{started} and
        C{answered_at} (the clock's seconds, or C{None}), C{duration},
        C{setup_s} (first SDP to the answer), C{codec}, and per stream its
        C{index}, C{media}, relay counters and C{quality} (the stream's
        C{quality.snapshot()}, or C{None}).
        """
        streams = []
        for index in sorted(set(dialog.streams) | set(dialog.history)):
            stream = dialog.streams.get(index)
            plan = stream.plan if stream is not None else None
            described = None if plan is None else (latest(plan.ours) or latest(plan.theirs))
            traffic = dict(dialog.history.get(index) or dict.fromkeys(_CALL_COUNTERS, 0))
            if stream is not None:
                _stream_traffic(stream, traffic)
            streams.append(
                {
                    "index": index,
                    "media": None if described is None else described.media,
                    "quality": _quality(stream) if stream is not None else dialog.quality.get(index),
                    **traffic,
                }
            )
        from_, to = dialog.parties or (None, None)
        answered = dialog.answered_at
        return {
            "session": session_id,
            "agent": dialog.agent,
            "call": key,
            "call_id": key.split("/", 1)[-1],
            "from": from_,
            "to": to,
            "started": wall(dialog.started),
            "answered_at": None if answered is None else wall(answered),
            "duration": round(now - dialog.started, 3),
            "setup_s": None if answered is None else round(answered - dialog.started, 3),
            "codec": dialog.codec.get(True) or dialog.codec.get(False),
            "state": "answered" if answered is not None else "setting up",
            "streams": streams,
        }

    def _tell(self, event: str, record: dict[str, Any]) -> None:
        for observer in self.call_observers:
            observer(event, record)

    def live_calls(self) -> Iterator[dict[str, Any]]:
        """
        The calls up now with their quality, for the status page (walks
        every stream: for status requests, not per packet): per call its
        C{session}, C{dialog}, C{call_id}, C{from}, C{to}, C{started},
        C{answered} (Unix times, C{None}: not yet), C{codec} and per
        stream C{index} and C{quality} (L{StreamQuality.snapshot}; C{None}
        for TCP media).
        """
        for session_id, dialogs in self._sessions.items():
            for dialog_key, dialog in dialogs.items():
                parties = dialog.parties
                first = next(iter(sorted(dialog.streams.items())), None)
                codec = first[1].quality.codec if first is not None else None
                yield {
                    "session": session_id,
                    "dialog": dialog_key,
                    "call_id": dialog_key.partition("/")[2] or dialog_key,
                    "from": None if parties is None else parties[0],
                    "to": None if parties is None else parties[1],
                    "started": wall(dialog.started),
                    "answered": None if dialog.answered_at is None else wall(dialog.answered_at),
                    "codec": codec or dialog.codec.get(True) or dialog.codec.get(False),
                    "streams": [
                        {
                            "index": index,
                            "quality": None if stream.tcp is not None else stream.quality.snapshot(),
                        }
                        for index, stream in sorted(dialog.streams.items())
                    ],
                }

    def _find(self, session_id: str, dialog_key: str) -> _Dialog | None:
        dialogs = self._sessions.get(session_id)
        return None if dialogs is None else dialogs.get(dialog_key)

    def _all_dialogs(self) -> Iterator[_Dialog]:
        for dialogs in self._sessions.values():
            yield from dialogs.values()

    # the SIP proxy core's hooks

    def sdp_into_tunnel(
        self,
        tunnel: Any,
        dialog_key: str,
        content_type: str,
        body: bytes,
        tag: str | None = None,
        source: str | None = None,
        offer: tuple[int, str] | None = None,
    ) -> None:
        """
        A message from our side goes into the tunnel: learn our side's
        endpoint per stream and open a channel per new stream (before the
        SIP frame is sent, so the peer knows it first). Streams with port 0
        are released. The body itself is not changed.

        With a C{tag} (forking, see C{docs/media.md}) the description is
        that branch's: each branch latches on its own; while the dialog is
        early a port 0 only forgets that branch's description, the stream
        stays for the other branches until L{dialog_answered}. Once a
        branch of our side answered, descriptions from the other branches
        are ignored and counted (C{ignored_branch_sdp}).

        @param tag: the tag of our side's endpoint (To-tag of a response,
            From-tag of a request), or C{None}: no branch information.
        @param source: the host our side's endpoint sent the SIP from (its
            signalling host), or C{None}: when not strict, media from it
            latches like media from the host its SDP names (see
            C{docs/media.md}, "Latching").
        @param offer: the SDP is an offer in an INVITE or UPDATE request
            with this CSeq (number, method): in an answered call it takes
            effect when L{offer_settled} accepts it (C{docs/media.md},
            "Re-offers").
        @raise spwm.sdp.SdpError: the body is malformed.
        """
        sdp = find_sdp(content_type, body)
        if sdp is None:
            return
        description = parse_sdp(sdp)
        now = self.clock.seconds()
        if self._just_ended(tunnel.session_id, dialog_key, now):
            return
        dialog = self._dialog(tunnel, dialog_key, now, self._local_leg)
        if source is not None:
            dialog.source = source
        leg = dialog.leg
        loser = leg.loser(tag, True)
        if not loser:
            dialog.codec[True], codecs = _codecs(sdp, description)
        connected = [
            index
            for index, stream in dialog.streams.items()
            if stream.tcp is not None and stream.tcp.ever_connected
        ]
        reoffer = offer is not None and leg.answered
        outcome = leg.described(True, tag, description, connected, offer)
        self._execute(tunnel, dialog_key, dialog, outcome.actions, now)
        if not loser and not reoffer:
            _learn_codecs(dialog, codecs)

    def sdp_out_of_tunnel(
        self,
        tunnel: Any,
        dialog_key: str,
        content_type: str,
        body: bytes,
        tag: str | None = None,
        source: str | None = None,
        offer: tuple[int, str] | None = None,
    ) -> bytes:
        """
        A message from the tunnel goes to our side: make sure every live
        stream has relay sockets on our media address and a channel, and
        return the body with our address and ports (in C{c=} and C{o=}; ICE
        stripped, C{o=} version kept consistent). The caller fixes
        C{Content-Length}.

        Streams with port 0 are released; streams that cannot be relayed
        (TCP media, over the per-dialog limit, no free ports) get port 0.
        With a C{tag}, a port 0 from a branch while the dialog is early
        (or from a branch that lost) does not release the stream: another
        branch may want it (see L{sdp_into_tunnel}).

        @param tag: the tag of the other side's endpoint that wrote the SDP
            (To-tag of a response, From-tag of a request), or C{None}.
        @param source: our side's endpoint's signalling host, as for
            L{sdp_into_tunnel}, or C{None}.
        @param offer: as for L{sdp_into_tunnel}: the request's CSeq when
            the SDP is an offer in an INVITE or UPDATE.
        @return: the new body (C{body} itself when it has no SDP).
        @raise spwm.sdp.SdpError: the body is malformed.
        """
        sdp = find_sdp(content_type, body)
        if sdp is None:
            return body
        description = parse_sdp(sdp)
        now = self.clock.seconds()
        if self._just_ended(tunnel.session_id, dialog_key, now):
            return body
        dialog = self._dialog(tunnel, dialog_key, now, "tunnel")
        if source is not None:
            dialog.source = source
        loser = dialog.leg.loser(tag, False)
        if not loser:
            dialog.codec[False], codecs = _codecs(sdp, description)
        reoffer = offer is not None and dialog.leg.answered
        outcome = dialog.leg.described(False, tag, description, offer=offer)
        failed = self._execute(tunnel, dialog_key, dialog, outcome.actions, now)
        if not loser and not reoffer:
            _learn_codecs(dialog, codecs)
        entries, tcp = self._resolve(dialog, outcome.rewrite, failed)
        if any(t is not None for t in tcp):
            sdp = rewrite_tcp_media(sdp, tcp)
        out = rewrite_sdp(sdp, self.address, entries, dialog.versioner, description)
        return replace_sdp(content_type, body, out)

    def dialog_answered(
        self, tunnel: Any, dialog_key: str, tag: str | None, ours: bool = True
    ) -> None:
        """
        A 2xx to an INVITE of the dialog crossed the tunnel: the first one
        names the winning branch. Every UDP stream keeps only the winner's
        description, so the relay sends to and accepts from the winner
        only; a stream that the branches described but the winner did not
        want (port 0, or no description at all from it) is released. Later
        answers (re-INVITEs, a second branch answering too) change nothing.

        @param tag: the answering endpoint's tag (the To-tag of the 2xx).
        @param ours: the 2xx came from our side into the tunnel; C{False}:
            it came out of the tunnel (the branches are the other half's).
        """
        now = self.clock.seconds()
        if self._just_ended(tunnel.session_id, dialog_key, now):
            return
        dialog = self._dialog(tunnel, dialog_key, now, self._local_leg if ours else "tunnel")
        dialog.waiting = _HEARD
        if not dialog.leg.answered:
            # the answer is activity: the media timeout that applies from
            # now on counts from here, not from the start of the ringing
            # (a sweep between the 2xx and the first packet released it)
            for stream in dialog.streams.values():
                stream.last_activity = now
        outcome = dialog.leg.answered_by(tag, ours)
        self._execute(tunnel, dialog_key, dialog, outcome.actions, now)

    def offer_settled(
        self, tunnel: Any, dialog_key: str, ours: bool, key: tuple[int, str], accepted: bool
    ) -> None:
        """
        The final response to an INVITE or UPDATE of the dialog crossed the
        tunnel (before its SDP, if it has one, is shown). If the request
        carried a re-offer, a 2xx applies it and any other final response
        drops it: the media stays exactly as before the offer
        (L{spwm.media.negotiation.LegMedia.settled}).

        @param ours: the request came from our side (its response comes
            out of the tunnel).
        @param key: the request's CSeq (number, method).
        @param accepted: the response is a 2xx.
        """
        dialog = self._find(tunnel.session_id, dialog_key)
        if dialog is None:
            return
        outcome = dialog.leg.settled(ours, key, accepted)
        if outcome.actions:
            self._execute(tunnel, dialog_key, dialog, outcome.actions, self.clock.seconds())

    def dialog_invited(self, tunnel: Any, dialog_key: str) -> None:
        """
        The initial INVITE of a dialog crossed the tunnel, after its SDP
        made the dialog: the dialog waits for a response to it, and ends
        L{NO_RESPONSE_TIMEOUT} later if none comes (L{dialog_heard}).  A
        dialog made otherwise (an answer, a re-INVITE after its media
        ended) never waits.
        """
        dialog = self._find(tunnel.session_id, dialog_key)
        if dialog is not None and dialog.waiting is None and not dialog.leg.answered:
            dialog.waiting = self.clock.seconds()

    def dialog_heard(self, tunnel: Any, dialog_key: str) -> None:
        """
        A response other than a 2xx to an INVITE of the dialog crossed the
        tunnel (provisional, or a final error that does not end it): its
        INVITE reached someone who answers it, and the dialog waits no
        more, for good (L{dialog_invited}; a 2xx is L{dialog_answered}).
        """
        dialog = self._find(tunnel.session_id, dialog_key)
        if dialog is not None:
            dialog.waiting = _HEARD

    def dialog_ended(self, tunnel: Any, dialog_key: str, challenged: bool = False, reason: str = "dialog ended") -> None:
        """
        The dialog (or early dialog, or transaction) is over: close its
        channels and release its sockets and ports.  C{reason}: the call
        record's (C{dialog ended}, or C{answer never acknowledged}: no ACK
        for its 2xx within 32 s).

        @param challenged: it ended with a 401 or 407 answer, which the
            caller answers with the same INVITE and credentials: released
            like any other, but no call record (no detail line, not in the
            ended calls): the retried INVITE is the call.
        """
        session_id = tunnel.session_id
        dialogs = self._sessions.get(session_id)
        dialog = None if dialogs is None else dialogs.pop(dialog_key, None)
        if dialogs is not None and not dialogs:
            del self._sessions[session_id]
        if dialog is not None:
            self._streamless.pop((session_id, dialog_key), None)
            self._dialog_count -= 1
            now = self.clock.seconds()
            if dialog.leg.answered:
                # only an answered call can see its 2xx again; a failed
                # INVITE (a 407 challenge) is retried with the same Call-ID
                self._remember_ended(session_id, dialog_key, now)
            self._execute(tunnel, dialog_key, dialog, dialog.leg.ended().actions, now)
            if not challenged:
                self._log_end(dialog_key, dialog, reason)
        self._close_pending(session_id, dialog_key, "dialog ended")
        self._sweeper.settle()

    def _close_pending(self, session_id: str, dialog_key: str, reason: str) -> None:
        """
        Close the channels the peer opened for the dialog that still wait
        for their SDP: the dialog is over.
        """
        indices = self._pending_dialogs.get((session_id, dialog_key))
        if indices:
            for index in list(indices):
                connection, channel_id, _ = self._unpend((session_id, dialog_key, index))
                self._close_channel(connection, channel_id, reason)

    def _remember_ended(self, session_id: str, dialog_key: str, now: float) -> None:
        ended = self._recently_ended
        ended.pop((session_id, dialog_key), None)
        ended[session_id, dialog_key] = now
        while len(ended) > MAX_ENDED_MEMORY:
            del ended[next(iter(ended))]

    def _just_ended(self, session_id: str, dialog_key: str, now: float) -> bool:
        """
        Whether the dialog ended within L{ENDED_MEMORY} seconds: its SDP is
        then a late retransmission (a 2xx repeated after the BYE) and makes
        no media state again (counted in C{ignored_after_end}).  Entries
        older than that are forgotten here.
        """
        ended = self._recently_ended
        while ended:
            oldest = next(iter(ended))
            if now - ended[oldest] <= ENDED_MEMORY:
                break
            del ended[oldest]
        if (session_id, dialog_key) in ended:
            self.ignored_after_end += 1
            return True
        return False

    # the executor: what the negotiation asks, carried out

    def _execute(
        self,
        tunnel: Any,
        dialog_key: str,
        dialog: _Dialog,
        actions: list[Action],
        now: float,
        close: bool = True,
    ) -> set[int]:
        """
        Carry out the actions of L{LegMedia} for one dialog, in order. A
        stream that cannot be carried (no ports, no channel, a refused TCP
        address) is given up (and the negotiation told); its further
        actions are skipped.

        @param close: a released stream's channel is closed (C{False}:
            it is gone already, the tunnel is lost).
        @return: the indices of the streams given up.
        """
        failed: set[int] = set()
        for action in actions:
            # class patterns: no isinstance call per action and type
            match action:
                case IgnoredBranch() | Crowded() | Answered() | AnsweredToo() | AnsweredWithoutSdp():
                    self._note(dialog_key, dialog, action, now)
                    continue
            if action.index in failed:
                continue
            match action:
                case Release():
                    self._release_stream(
                        dialog, action.index, action.reason, close=close, tell_leg=False, refused=action.refused
                    )
                    continue
                case Rejected():
                    self.rejected_streams += 1
                    self._warn(
                        "streams per call",
                        "stream {index} of dialog {dialog} not relayed (port 0): over {limit} streams per call",
                        index=action.index,
                        dialog=dialog_key,
                        limit=self.max_streams_per_dialog,
                    )
                    continue
                case Create():
                    self._create(tunnel, dialog_key, dialog, action.index, action.tcp, now)
                    continue
            stream = dialog.streams.get(action.index)
            if stream is None:
                continue
            ok = True
            match action:
                case Expect():
                    self._apply_remote(stream, dialog, action.branches)
                case Bind():
                    if stream.rtp is None and not self._bind(stream, dialog, action.rtcp):
                        self._release_stream(dialog, stream.index, "no media ports")
                        self.rejected_streams += 1
                        ok = False
                case OpenChannel():
                    if stream.channel_id is None:
                        ok = self._take_channel(stream, action.mux)
                case TcpExpect():
                    assert stream.tcp is not None
                    stream.tcp.expect(action.host)
                case TcpListen():
                    if not self._tcp_listen(dialog, stream):
                        self.rejected_streams += 1
                        ok = False
                case TcpConnect():
                    ok = self._tcp_connect(dialog, stream, action.media)
            if not ok:
                failed.add(action.index)
        return failed

    def _note(self, dialog_key: str, dialog: _Dialog, note: Action, now: float) -> None:
        """
        The negotiation's notes: counters and log lines.
        """
        if isinstance(note, IgnoredBranch):
            self.ignored_branch_sdp += 1
            self.log.info(
                "dialog {dialog}: ignoring SDP from branch {tag}, another branch answered",
                dialog=dialog_key,
                tag=note.tag,
            )
        elif isinstance(note, Crowded):
            self.log.warn(
                "media stream {stream} of dialog {dialog}: more than {limit}"
                " branches, forgetting the oldest",
                stream=note.index,
                dialog=dialog_key,
                limit=note.limit,
            )
        elif isinstance(note, AnsweredToo):
            self.log.info(
                "dialog {dialog}: branch {tag} answered too; media stays with {winner}",
                dialog=dialog_key,
                tag=note.tag,
                winner=note.winner,
            )
        elif isinstance(note, AnsweredWithoutSdp):
            self.log.info(
                "dialog {dialog}: answered by {tag} without SDP of its own;"
                " media stays with the latest branch {latest}",
                dialog=dialog_key,
                tag=note.tag,
                latest=note.latest,
            )
        elif isinstance(note, Answered):
            dialog.answered_at = now
            if self.call_observers:
                self._tell("answered", {"setup_s": now - dialog.started, "call": dialog_key})
            codec = dialog.codec.get(note.ours) or dialog.codec.get(not note.ours)
            if self.call_lines:
                self.log.debug(
                    "call {dialog} answered from the {leg} leg: codec {codec}; {media}",
                    dialog=dialog_key,
                    leg=self._local_leg if note.ours else "tunnel",
                    codec=codec or "none (no SDP)",
                    media=self._describe_media(dialog),
                )

    def _resolve(
        self, dialog: _Dialog, rewrite: list[Entry], failed: set[int]
    ) -> tuple[list[tuple[int, int | None] | None], list[TcpRewrite | None]]:
        """
        The negotiation's rewrite entries as ports for L{rewrite_sdp} and
        roles for L{rewrite_tcp_media}.
        """
        entries: list[tuple[int, int | None] | None] = []
        tcp: list[TcpRewrite | None] = [None] * len(rewrite)
        for number, entry in enumerate(rewrite):
            if isinstance(entry, Keep):
                entries.append(None)
            elif isinstance(entry, SameAs):
                entries.append(entries[entry.primary])
            elif isinstance(entry, Refuse):
                entries.append((0, None))
            else:
                stream = dialog.streams.get(entry.index)
                if stream is None or entry.index in failed:
                    entries.append((0, None))
                elif isinstance(entry, TcpRelay):
                    if entry.setup == "active":
                        change = TcpRewrite("active", self.address, _ACTIVE_PORT)
                    else:
                        assert stream.base_port is not None
                        change = TcpRewrite(entry.setup, self.address, stream.base_port)
                    tcp[number] = change
                    entries.append((change.port, None))
                else:
                    assert isinstance(entry, Relay) and stream.base_port is not None
                    rtcp = None if stream.rtcp is None else stream.base_port + 1
                    entries.append((stream.base_port, rtcp))
        return entries, tcp

    # the session's life (told by the session manager, by session id)

    def session_ended(self, session_id: str, reason: str = "") -> None:
        """
        The session is over (its connection lost, not to be resumed, or
        its window over): release every stream of its dialogs (their
        channels are gone with the connection).
        """
        self._suspended.discard(session_id)
        now = self.clock.seconds()
        dialogs = self._sessions.pop(session_id, {})
        self._dialog_count -= len(dialogs)
        self._forget_streamless(session_id)
        for dialog_key, dialog in dialogs.items():
            actions = dialog.leg.ended("tunnel lost").actions
            self._execute(None, dialog_key, dialog, actions, now, close=False)
            self._log_end(dialog_key, dialog, "tunnel lost")
        self._unpend_session(session_id)
        self._sweeper.settle()
        if self.session_lost is not None:
            self.session_lost(session_id)

    def session_suspended(self, session_id: str) -> None:
        """
        The session's connection broke but the session may be resumed:
        its channels are gone, the streams, their relay sockets and ports
        stay (what our side sends meanwhile is dropped and counted) until
        L{session_resumed} or L{session_ended}.  A stream made meanwhile
        waits for its channel too.
        """
        self._suspended.add(session_id)
        for dialog in self._sessions.get(session_id, {}).values():
            for stream in dialog.streams.values():
                self._drop_channel(stream)
        self._unpend_session(session_id)

    def session_resumed(self, session_id: str, tunnel: Any, reopen: bool) -> None:
        """
        The session goes on on C{tunnel} (a resumption, or another of its
        connections taking over from a lost primary): its streams use that
        connection from now on; nothing is re-keyed.  The side that
        accepted the resumption (C{reopen}) opens a channel for every
        stream again; the other side attaches them as they come, by dialog
        and stream.  A stream whose channel is on another connection is
        moved (its channel forgotten); one on C{tunnel} already is left.
        A stream made while the session was suspended has no channel yet:
        it gets one the same way.
        """
        self._suspended.discard(session_id)
        now = self.clock.seconds()
        moved = []
        for dialog in self._sessions.get(session_id, {}).values():
            for stream in dialog.streams.values():
                if stream.tunnel is tunnel and stream.channel_id is not None:
                    continue
                self._drop_channel(stream)
                # the relay endpoints' send function is bound again to the
                # new connection when the channel is attached (_route): the
                # per-packet path stays one direct call
                stream.tunnel = tunnel
                stream.last_activity = now
                moved.append(stream)
        if reopen:
            for stream in moved:
                self._reopen(stream)

    def session_absorbed(self, fresh: str, into: str) -> None:
        """
        The connection of session C{fresh} resumed session C{into}: what
        media C{fresh} had (calls made before the proof) is C{into}'s now.
        A dialog C{into} has already ends on the C{fresh} side.
        """
        if fresh == into:
            return
        dialogs = self._sessions.pop(fresh, None)
        self._forget_streamless(fresh)
        if dialogs:
            target = self._sessions.setdefault(into, {})
            now = self.clock.seconds()
            for dialog_key, dialog in dialogs.items():
                if dialog_key in target:
                    self._dialog_count -= 1
                    self._execute(None, dialog_key, dialog, dialog.leg.ended().actions, now)
                    self._log_end(dialog_key, dialog, "resumed as another session")
                    continue
                target[dialog_key] = dialog
                dialog.session = into
                for stream in dialog.streams.values():
                    if stream.base_port is not None:
                        # its pair counts in the share of the session it is in now
                        self._count_pair(stream.session, -1)
                        self._count_pair(into, 1)
                    stream.session = into
                if not dialog.streams:
                    self._streamless[into, dialog_key] = now
                    self._sweeper.ensure()
        if fresh in self._pending_count:
            for key in [k for k in self._pending if k[0] == fresh]:
                entry = self._unpend(key)
                if (into, key[1], key[2]) not in self._pending:
                    self._pend((into, key[1], key[2]), entry)
        self._sweeper.settle()

    def _drop_channel(self, stream: _Stream) -> None:
        """
        Forget a stream's channel (gone with its connection, or left for
        another connection) and detach its relay sockets from it.
        """
        if stream.channel_id is None:
            return
        self._forget((stream.tunnel, stream.channel_id))
        stream.channel_id = None
        if stream.rtp is not None:
            stream.rtp.detach()
        if stream.rtcp is not None:
            stream.rtcp.detach()

    def _reopen(self, stream: _Stream) -> None:
        meta: dict[str, Any] = {"use": "media", "dialog": stream.dialog, "stream": stream.index}
        if stream.tcp is not None:
            kind = ChannelKind.STREAM
            meta["tcp"] = True
        else:
            kind = ChannelKind.DATAGRAM
            meta["mux"] = stream.plan.mux
        channel_id = stream.tunnel.open_channel(kind, meta, self)
        self._attach(stream, channel_id, ours=True)

    def _pend(self, key: tuple[str, str, int], entry: tuple[Any, int, float]) -> None:
        self._pending[key] = entry
        self._pending_count[key[0]] = self._pending_count.get(key[0], 0) + 1
        self._pending_dialogs.setdefault((key[0], key[1]), {})[key[2]] = None
        self._pending_channels[entry[0], entry[1]] = key

    def _unpend(self, key: tuple[str, str, int]) -> tuple[Any, int, float]:
        entry = self._pending.pop(key)
        left = self._pending_count[key[0]] - 1
        if left:
            self._pending_count[key[0]] = left
        else:
            del self._pending_count[key[0]]
        indices = self._pending_dialogs[key[0], key[1]]
        del indices[key[2]]
        if not indices:
            del self._pending_dialogs[key[0], key[1]]
        if self._pending_channels.get((entry[0], entry[1])) == key:
            del self._pending_channels[entry[0], entry[1]]
        return entry

    def _unpend_session(self, session_id: str) -> None:
        if session_id in self._pending_count:
            for key in [k for k in self._pending if k[0] == session_id]:
                self._unpend(key)

    def accept(
        self, tunnel: Any, channel_id: int, kind: Any, meta: dict[str, Any]
    ) -> MediaManager | Refusal:
        """
        The acceptor of C{media} channels (L{spwm.tunnel.api.ChannelAcceptor}):
        the peer opened a media channel for (dialog, stream): keep it until
        the SDP that needs it comes out of the tunnel. Refuse stream
        channels not marked C{"tcp": true} (and datagram channels so
        marked), malformed metadata, a second channel for a stream, and
        more than C{max_pending_channels} waiting channels of one session
        (L{MAX_PENDING_TOTAL} of all sessions).
        """
        dialog_key = meta.get("dialog")
        index = meta.get("stream")
        problem = None
        if kind != (ChannelKind.STREAM if meta.get("tcp") is True else ChannelKind.DATAGRAM):
            problem = "channel kind does not match the media transport"
        elif not isinstance(dialog_key, str) or not isinstance(index, int):
            problem = "media channel without dialog and stream"
        elif not 0 <= index < self.max_streams_per_dialog:
            problem = "stream index out of range"
        elif self._pending_count.get(tunnel.session_id, 0) >= self.max_pending_channels:
            problem = "too many pending media channels"
        elif len(self._pending) >= MAX_PENDING_TOTAL:
            problem = "too many pending media channels in all sessions"
        else:
            session_id = tunnel.session_id
            dialog = self._find(session_id, dialog_key)
            stream = None if dialog is None else dialog.streams.get(index)
            if stream is not None and stream.channel_id is not None:
                if self.side == "agent" and stream.channel_ours and stream.tcp is None:
                    self._replace_channel(stream, tunnel, channel_id)
                    return self
                if stream.channel_ours and stream.tcp is None:
                    # the agent opened its own at the same time (around a
                    # resumption): it takes ours (_replace_channel there),
                    # so this refusal is the protocol, not a fault
                    self.crossed_channels += 1
                    return Refusal("stream already has a channel")
                problem = "stream already has a channel"
            elif (session_id, dialog_key, index) in self._pending:
                problem = "stream already has a channel"
        if problem is not None:
            self.refused_channels += 1
            self._warn(
                problem,
                "refusing media channel {channel_id} from {peer}: {reason}",
                channel_id=channel_id,
                peer=getattr(tunnel, "peer", "?"),
                reason=problem,
            )
            return Refusal(problem)
        assert isinstance(dialog_key, str) and isinstance(index, int)
        if stream is not None:
            self._attach(stream, channel_id)
        else:
            self._pend((session_id, dialog_key, index), (tunnel, channel_id, self.clock.seconds()))
            self._sweeper.ensure()
        return self

    def _replace_channel(self, stream: _Stream, tunnel: Any, channel_id: int) -> None:
        """
        Agent: the contact point opened a channel for a stream that has one
        the agent opened.  Both halves opened one before each saw the
        other's (around a resumption or a switch of connections); each
        refusing the other's would close both and release the call's media
        on both halves.  The contact point's wins: it refuses the agent's
        (L{accept} there), and the agent takes the contact point's and
        closes its own.
        """
        old_tunnel, old = stream.tunnel, stream.channel_id
        assert old is not None
        self._drop_channel(stream)
        old_tunnel.close_channel(old, 0, "replaced by the contact point's channel for the stream")
        stream.tunnel = tunnel
        self._attach(stream, channel_id)
        self.replaced_channels += 1

    def datagram_received(
        self, tunnel: Any, channel_id: int, data: bytes, component: int
    ) -> None:
        """
        A datagram from the tunnel: write it to our side (the hot path).
        """
        route = self._routes.get((tunnel, channel_id))
        if route is None:
            self.dropped_unknown_channel += 1
            return
        route[component & 1](data)

    def stream_data_received(self, tunnel: Any, channel_id: int, data: bytes) -> None:
        """
        TCP media from the tunnel: write it to our side's TCP connection
        (or keep it, bounded, until that connects).
        """
        stream = self._channels.get((tunnel, channel_id))
        if stream is None or stream.tcp is None:
            self.dropped_unknown_channel += 1
            return
        stream.tcp.write(data)

    def stream_ended(self, tunnel: Any, channel_id: int) -> None:
        """
        The peer's direction of a TCP media stream ended: half-close
        towards our side.
        """
        stream = self._channels.get((tunnel, channel_id))
        if stream is not None and stream.tcp is not None:
            stream.tcp.end_from_tunnel()

    def channel_closed(
        self, tunnel: Any, channel_id: int, code: int, reason: str
    ) -> None:
        """
        The peer closed a media channel: release its stream.
        """
        key = self._pending_channels.get((tunnel, channel_id))
        if key is not None:
            self._unpend(key)
            self._sweeper.settle()
        stream = self._channels.get((tunnel, channel_id))
        if stream is None:
            return
        dialog = self._find(stream.session, stream.dialog)
        self._forget((tunnel, channel_id))
        stream.channel_id = None
        if dialog is not None:
            self._release_stream(dialog, stream.index, "peer closed", close=False)
            # the peer's sweep may have released it for want of media
            # just before ours would: the call ends here as soon as its
            # media has been silent for the timeout on this half too, not
            # a whole timeout after the close
            since = self._streamless.get((stream.session, stream.dialog))
            if since is not None and self.clock.seconds() - since >= self.inactivity_timeout:
                self._end_idle(stream.session, stream.dialog)

    # TCP media (RFC 4145): see docs/media.md, "TCP media"

    def _tcp_listen(self, dialog: _Dialog, stream: _Stream) -> bool:
        endpoint = stream.tcp
        assert endpoint is not None
        for _ in range(min(self.ports.capacity, 16)):
            if self._over_session_share(stream):
                break
            try:
                base = self.ports.allocate()
            except PortsExhaustedError:
                self._warn("no ports", "no free media ports for dialog {dialog}", dialog=stream.dialog)
                break
            try:
                endpoint.listen(base)
            except CannotListenError:
                self.ports.release(base)
                continue
            self._hold_pair(stream, base)
            return True
        self._release_stream(dialog, stream.index, "no media ports")
        return False

    def _tcp_connect(self, dialog: _Dialog, stream: _Stream, media: MediaDescription) -> bool:
        endpoint = stream.tcp
        assert endpoint is not None
        self._free_pair(stream)
        if media.address is None or not endpoint.connect(media.address, media.port):
            self.log.warn(
                "TCP media of dialog {dialog}: refusing to connect to {address}: {reason}",
                dialog=stream.dialog,
                address=hostport(media.address or "?", media.port),
                reason=(media.address and self.policy.refusal(media.address)) or "no usable address",
            )
            self.rejected_streams += 1
            self._release_stream(dialog, stream.index, "TCP media address refused")
            return False
        return True

    def _tcp_finished(self, stream: _Stream, reason: str) -> None:
        """
        The TCP side of a stream is over: release the stream, closing its
        channel after the data already queued.
        """
        dialog = self._find(stream.session, stream.dialog)
        if dialog is not None and dialog.streams.get(stream.index) is stream:
            self.log.info(
                "TCP media stream {stream} of dialog {dialog} ended: {reason}",
                stream=stream.index,
                dialog=stream.dialog,
                reason=reason,
            )
            self._release_stream(dialog, stream.index, reason)

    # internals

    def _create(
        self, tunnel: Any, dialog_key: str, dialog: _Dialog, index: int, tcp: bool, now: float
    ) -> None:
        """
        The means of a new stream: its record, and for TCP its endpoint
        (no socket yet).
        """
        if index not in dialog.streams:
            self._stream_count += 1
        if self._streamless:
            self._streamless.pop((tunnel.session_id, dialog_key), None)
        stream = dialog.streams[index] = _Stream(
            tunnel, tunnel.session_id, dialog_key, index, dialog.leg.streams[index], now, self.side
        )
        # an earlier incarnation of the index was recorded: the stream was
        # removed and is added again
        stream.quality.readded = index in dialog.quality
        stream.quality.set_codec(dialog.codec.get(False) or dialog.codec.get(True))
        if self.hep is not None:
            stream.quality.on_report = lambda leg, packets: self._hep_rtcp(stream, leg, packets)
        if tcp:
            stream.tcp = TcpMediaEndpoint(
                self.reactor,
                self.address,
                policy=self.policy,
                clock=self.clock,
                max_buffer=self.tcp_buffer,
                on_finished=lambda endpoint, reason: self._tcp_finished(stream, reason),
            )
        self._sweeper.ensure()

    def _dialog(self, tunnel: Any, dialog_key: str, now: float, leg: str) -> _Dialog:
        """
        The media state of a dialog, made (and its call start logged, with
        the C{leg} the first message came from) if new.
        """
        dialogs = self._sessions.setdefault(tunnel.session_id, {})
        dialog = dialogs.get(dialog_key)
        if dialog is None:
            media = LegMedia(self.max_streams_per_dialog, self.max_branches_per_stream)
            dialog = dialogs[dialog_key] = _Dialog(media, now)
            self._dialog_count += 1
            # without streams until its SDP makes some (an answer without
            # SDP may be all it ever sees)
            self._streamless[tunnel.session_id, dialog_key] = now
            self._sweeper.ensure()
            dialog.agent = str(getattr(tunnel, "agent_id", "") or "")
            dialog.session = tunnel.session_id
            if self.call_lines:
                self.log.debug(
                    "call {dialog} started from the {leg} leg",
                    dialog=dialog_key,
                    leg=leg,
                )
        return dialog

    # the call log lines

    def _describe_media(self, dialog: _Dialog) -> str:
        """
        The media addresses of a dialog's streams on both legs, for the
        answer line: our side's endpoint (latched address, else what its
        SDP named), our relay socket, the tunnel channel and the far end
        the other side's SDP named.
        """
        parts = []
        for index in sorted(dialog.streams):
            stream = dialog.streams[index]
            plan = stream.plan
            ours = latest(plan.ours)
            theirs = latest(plan.theirs)
            described = ours if ours is not None else theirs
            kind = "?" if described is None else described.media
            if stream.tcp is not None:
                relay = "tcp " + (
                    _host_port(self.address, stream.base_port)
                    if stream.base_port is not None
                    else "active"
                )
                local = _host_port(plan.remote.address, plan.remote.port) if plan.remote else "?"
            else:
                relay = _host_port(self.address, stream.base_port)
                peer = stream.rtp.peer if stream.rtp is not None else None
                if peer is not None:
                    local = _host_port(*peer)
                elif ours is not None:
                    local = _host_port(ours.address, ours.port) + " (SDP)"
                else:
                    local = "?"
            far = _host_port(theirs.address, theirs.port) if theirs is not None else "?"
            parts.append(
                "stream {} {}: {} {} <-> relay {}; tunnel channel {} <-> far end {}".format(
                    index,
                    kind,
                    self._local_leg,
                    local,
                    relay,
                    "?" if stream.channel_id is None else stream.channel_id,
                    far,
                )
            )
        return "; ".join(parts) if parts else "no media"

    def _log_end(self, dialog_key: str, dialog: _Dialog, reason: str) -> None:
        """
        The call detail record, built once: into the ring of ended calls,
        to the observers (the metrics) and one structured event at the end
        of every call (L{call_detail_record} in the event's C{cdr} field,
        for machines; a line for people). Its streams are released by now.
        """
        now = self.clock.seconds()
        record = call_detail_record(dialog_key, dialog, reason, now, self.side, self._local_leg)
        told: list[str] = []
        lost = self.leg_lost
        if lost is not None and reason in LOSS_CAUSES and (dialog.history or reason != "media inactivity"):
            # no BYE ended it: the SIP core ends it for the parties (not
            # for want of media a leg that never had a stream: its SIP
            # may be all there is to it)
            told = lost(dialog.session, dialog_key, reason)
        record["bye_sent"] = told
        self._ended.append(_EndedCall(record, dialog_key, dialog, now, reason))
        self._tell("ended", record)
        if record["answered_s"] is None:
            answered = "not answered"
        else:
            answered = "answered for {}s".format(record["answered_s"])
        line = "call {} ended ({}) after {}s, {}: {} -> {}, codec {}; {}".format(
            record["call_id"],
            reason,
            record["duration_s"],
            answered,
            record["from"] or "?",
            record["to"] or "?",
            record["codec"] or "none",
            _cdr_summary(record),
        )
        if told:
            line += ": " + told_text(told)
        # The line is made here, once, and is the event's format itself
        # (its braces, which a Call-ID may hold, doubled): Twisted's
        # formatting of eight fields cost about twice as much per call,
        # and of one field ("{cdr_line}") still about 20 Python calls
        # more than a format without fields (issue 15).
        if "{" in line or "}" in line:
            line = line.replace("{", "{{").replace("}", "}}")
        # The event Logger.info(line, cdr=record) makes, the same keys in
        # the same order, built here and handed to the logger's observer:
        # Logger.emit checks the level against the sorted list of levels
        # (about 12 Python calls per call; issue 15).
        log = self.log
        # (called as an ILogObserver is, with the event; named with its
        # type for mypy without its zope plugin, as spwm compile runs it)
        emit = cast("Callable[[dict[str, Any]], None]", log.observer)
        emit(
            {
                "cdr": record,
                "log_logger": log,
                "log_level": LogLevel.info,
                "log_namespace": log.namespace,
                "log_source": log.source,
                "log_format": line,
                "log_time": time.time(),
            }
        )

    def call_parties(self, tunnel: Any, dialog_key: str, from_uri: object, to_uri: object) -> None:
        """
        The SIP core names the parties of a call leg (From and To of its
        first message with SDP or answer) for the call detail record.
        Only the first naming is kept, as text (C{str} of the URIs, made
        only then); a leg we hold no media for is ignored.
        """
        dialog = self._find(tunnel.session_id, dialog_key)
        if dialog is not None and dialog.parties is None:
            dialog.parties = (str(from_uri), str(to_uri))

    def _hep_rtcp(self, stream: _Stream, leg: str, packets: list[dict[str, Any]]) -> None:
        """
        Copy one RTCP report to the HEP collector, correlated by Call-ID:
        from our side's endpoint to our relay socket (it arrived on our
        side's leg), or from our relay socket to that endpoint (it came
        out of the tunnel).
        """
        endpoint = stream.rtcp if stream.rtcp is not None else stream.rtp
        if endpoint is None or stream.base_port is None or self.hep is None:
            return
        ours = (self.address, stream.base_port + (1 if stream.rtcp is not None else 0))
        _, _, call_id = stream.dialog.partition("/")
        if leg == "tunnel":
            self.hep.rtcp(ours, endpoint.target, packets, call_id or stream.dialog)
        else:
            self.hep.rtcp(endpoint.peer, ours, packets, call_id or stream.dialog)

    def _latched(
        self,
        stream: _Stream,
        component: str,
        address: tuple[str, int],
        named: tuple[str, int] | None,
    ) -> None:
        """
        A relay endpoint latched onto an address its SDP did not name.
        """
        self.log.info(
            "media stream {stream} of dialog {dialog}: {component} from {address},"
            " not the address its SDP named ({named}): latched, replies go there",
            stream=stream.index,
            dialog=stream.dialog,
            component=component,
            address=_host_port(*address),
            named="none" if named is None else _host_port(*named),
        )

    def _check_policy(self, stream: _Stream, media: MediaDescription) -> None:
        """
        Log (rate-limited) that the allow policy refuses the address our
        side's SDP names for C{stream}, with the option that would allow
        it: the first time per stream and address, and of those the 1st,
        2nd, 4th, 8th... or the first after a minute of quiet.
        """
        host = media.address
        if host is None or (not self.strict and normalise_host(host) is None):
            return
        reason = self.policy.refusal(host)
        if reason is None or stream.refused_target == (host, media.port):
            return
        stream.refused_target = (host, media.port)
        self.policy_refusals += 1
        count = self.policy_refusals
        if self._policy_log.hit(None, count) is not None:
            self.log.warn(
                "media to {address} refused (stream {stream} of dialog {dialog}):"
                " {reason} ({count} refused so far)",
                address=_host_port(host, media.port),
                stream=stream.index,
                dialog=stream.dialog,
                reason=reason,
                count=count,
            )

    def _apply_remote(
        self,
        stream: _Stream,
        dialog: _Dialog,
        live: tuple[tuple[str | None, MediaDescription], ...],
    ) -> None:
        """
        Tell the relay endpoints what every live branch of our side
        negotiated (L{Expect}), and forget the branches that are gone.
        """
        source = dialog.source
        for tag, media in live:
            hold = media.hold_address
            host = None if hold else media.address
            if stream.rtp is not None:
                stream.rtp.expect(host, media.port, held=hold, tag=tag, source=source)
                if host is not None:
                    self._check_policy(stream, media)
            if stream.rtcp is not None:
                rtcp_host = None if hold else media.rtcp_address
                stream.rtcp.expect(rtcp_host, media.rtcp_port, held=hold, tag=tag, source=source)
        tags = [tag for tag, _ in live]
        for endpoint in (stream.rtp, stream.rtcp):
            if endpoint is not None and len(endpoint.branches) != len(tags):
                endpoint.retain(tags)

    def _take_channel(self, stream: _Stream, mux: bool) -> bool:
        """
        Attach the channel the peer opened for the stream, or open one.

        @return: C{False} if no channel can be opened (the tunnel is at its
            channel limit or closed): the stream is released.
        """
        key = (stream.session, stream.dialog, stream.index)
        pending = self._unpend(key) if key in self._pending else None
        if pending is not None:
            # on the connection the peer opened it on
            stream.tunnel = pending[0]
            self._attach(stream, pending[1])
            return True
        tunnel = stream.tunnel
        if stream.tcp is not None:
            kind = ChannelKind.STREAM
            meta: dict[str, Any] = {
                "use": "media",
                "dialog": stream.dialog,
                "stream": stream.index,
                "tcp": True,
            }
        else:
            kind = ChannelKind.DATAGRAM
            meta = {
                "use": "media",
                "dialog": stream.dialog,
                "stream": stream.index,
                "mux": mux,
            }
        try:
            channel_id = tunnel.open_channel(kind, meta, self)
        except TunnelNotOpenError as e:
            if stream.session in self._suspended:
                # the session is being resumed: the channel comes with the
                # resumption (session_resumed)
                return True
            self._refuse_stream(stream, str(e))
            return False
        except ChannelLimitError as e:
            self._refuse_stream(stream, str(e))
            return False
        self._attach(stream, channel_id, ours=True)
        return True

    def _refuse_stream(self, stream: _Stream, reason: str) -> None:
        """
        No channel for C{stream}: counted, logged, and the stream released.
        """
        self.rejected_streams += 1
        self.refused_local_channels += 1
        self._warn(
            "no channel",
            "no media channel for stream {stream} of dialog {dialog}: {reason}",
            stream=stream.index,
            dialog=stream.dialog,
            reason=reason,
        )
        dialog = self._find(stream.session, stream.dialog)
        if dialog is not None and dialog.streams.get(stream.index) is stream:
            self._release_stream(dialog, stream.index, "no media channel", close=False)

    def _attach(self, stream: _Stream, channel_id: int, ours: bool = False) -> None:
        stream.channel_id = channel_id
        stream.channel_ours = ours
        bind = getattr(stream.tunnel, "bind_channel_to_flow", None)
        if bind is not None:
            # Per-user ciphering: the channel takes the key of the flow
            # whose call it carries (the dialog key is FLOW/CALL-ID).
            flow, _, _ = stream.dialog.partition("/")
            if flow.isdigit():
                bind(channel_id, int(flow))
        key = (stream.tunnel, channel_id)
        self._channels[key] = stream
        if stream.tcp is not None:
            stream.tcp.attach(stream.tunnel, channel_id)
            return
        self._route(stream)

    def _route(self, stream: _Stream) -> None:
        if stream.channel_id is None:
            return
        key = (stream.tunnel, stream.channel_id)
        send = stream.tunnel.send_datagram
        direct = getattr(stream.tunnel, "route_datagrams", None)
        if stream.rtp is None:
            self._routes.pop(key, None)
            undirect = getattr(stream.tunnel, "unroute_datagrams", None)
            if undirect is not None:
                undirect(stream.channel_id)
            return
        stream.rtp.attach(send, stream.channel_id)
        rtcp = stream.rtp
        if stream.rtcp is not None:
            stream.rtcp.attach(send, stream.channel_id)
            rtcp = stream.rtcp
        self._routes[key] = (stream.rtp.send, rtcp.send)
        if direct is not None:
            # The tunnel hands this channel's datagrams straight to the
            # relay sockets, past the multiplexer and this manager.
            direct(stream.channel_id, stream.rtp.send, rtcp.send)

    def _bind(self, stream: _Stream, dialog: _Dialog, need_rtcp: bool) -> bool:
        """
        Bind the stream's relay sockets on a free pair of the range,
        skipping pairs that another program holds, at most L{BIND_TRIES}
        of them (the allocator goes on from there for the next stream).

        @return: C{False}: no pair (each failure logged, throttled).
        """
        tries = min(self.ports.capacity, BIND_TRIES)
        # the last refusal's text (not the exception: its traceback would
        # keep this frame, and the stream in it, in a reference cycle)
        taken = ""
        if self._over_session_share(stream):
            return False
        for _ in range(tries):
            try:
                base = self.ports.allocate()
            except PortsExhaustedError:
                self._warn("no ports", "no free media ports for dialog {dialog}", dialog=stream.dialog)
                return False
            rtp = self._endpoint(0)
            try:
                rtp.port = self.sockets.listen(base, rtp, self.address, self.receive_buffer)
                rtp.local_port = base
            except CannotListenError as e:
                rtp.dispose()
                self.ports.release(base)
                taken = str(e.socketError)
                continue
            self._sockets += 1
            rtcp = None
            if need_rtcp:
                rtcp = self._endpoint(1)
                try:
                    rtcp.port = self.sockets.listen(base + 1, rtcp, self.address, self.receive_buffer)
                    rtcp.local_port = base + 1
                except CannotListenError as e:
                    rtcp.dispose()
                    self._unlisten(rtp)
                    self.ports.release(base)
                    taken = str(e.socketError)
                    continue
                self._sockets += 1
            stream.rtp, stream.rtcp = rtp, rtcp
            self._hold_pair(stream, base)
            for endpoint in (rtp, rtcp):
                if endpoint is not None:
                    endpoint.quality_in = stream.quality.local
                    endpoint.quality_out = stream.quality.tunnel
            rtp.on_latch = lambda address, named: self._latched(stream, "RTP", address, named)
            if rtcp is not None:
                rtcp.on_latch = lambda address, named: self._latched(stream, "RTCP", address, named)
            self._apply_remote(stream, dialog, stream.plan.expected())
            self._route(stream)
            return True
        self._warn(
            "ports taken",
            "no media port pair could be bound for dialog {dialog}: the {tries} pairs tried"
            " of {low}-{high} are held by other programs (last: {error})",
            dialog=stream.dialog,
            tries=tries,
            low=self.ports.low,
            high=self.ports.high,
            error=taken,
        )
        return False

    def _endpoint(self, component: int) -> MediaRelayEndpoint:
        endpoint = MediaRelayEndpoint(
            component=component,
            strict=self.strict,
            policy=self.policy,
            receive_buffer=self.receive_buffer,
        )
        endpoint.own = self._own_socket
        return endpoint

    def _own_socket(self, address: tuple[str, int]) -> bool:
        """
        Whether C{address} is one of this half's relay sockets: a port of
        a pair in use, on our media address (any address of this machine
        when we listen on all of them).  A phone whose SDP names one (a
        load generator that sends from ports it does not bind, a phone
        on the agent's own machine) would otherwise make two of our
        sockets latch onto each other and send each other's media round
        and round.
        """
        host, port = address
        if not self.ports.holds(port):
            return False
        ours = normalise_host(self.address)
        if ours is None or ours in ("0.0.0.0", "::"):
            return is_local_address(host)
        return normalise_host(host) == ours

    def _unlisten(self, endpoint: MediaRelayEndpoint | None) -> None:
        """
        Close C{endpoint}'s socket; the endpoint is done (L{MediaRelayEndpoint.dispose}).
        """
        if endpoint is None:
            return
        if endpoint.port is not None:
            endpoint.detach()
            port, endpoint.port = endpoint.port, None
            self._sockets -= 1
            port.stopListening()
        endpoint.dispose()

    def _forget(self, key: tuple[Any, int]) -> None:
        self._routes.pop(key, None)
        undirect = getattr(key[0], "unroute_datagrams", None)
        if undirect is not None:
            undirect(key[1])
        self._channels.pop(key, None)

    def _close_channel(self, tunnel: Any, channel_id: int, reason: str) -> None:
        self._forget((tunnel, channel_id))
        tunnel.close_channel(channel_id, 0, reason)

    def _release_stream(
        self,
        dialog: _Dialog,
        index: int,
        reason: str,
        close: bool = True,
        tell_leg: bool = True,
        refused: bool = False,
    ) -> None:
        """
        Give the means of a stream up: close (or forget) its channel,
        unbind its sockets, close its TCP endpoint, free its ports. Its
        figures go to the call detail record, added to those of its
        index's earlier incarnations (L{merge_snapshots}).

        @param tell_leg: the release is the executor's own (the
            negotiation is told); C{False}: the negotiation asked for it.
        @param refused: its offer was refused: if it carried no datagram
            either, the record does not list it (on either half).
        """
        if tell_leg:
            dialog.leg.release(index)
        stream = dialog.streams.pop(index, None)
        if stream is None:
            return
        self._stream_count -= 1
        if not dialog.streams and self._find(stream.session, stream.dialog) is dialog:
            # (not when the dialog is ending: it is gone from the table)
            self._streamless[stream.session, stream.dialog] = _quiet_since(
                dialog, stream, self.clock.seconds()
            )
        _add_traffic(self._released, stream)
        if stream.rtp is not None:
            traffic = _stream_traffic(stream)
            if not refused or any(traffic.values()):
                dialog.quality[index] = merge_snapshots(dialog.quality.get(index), stream.quality.snapshot())
                history = dialog.history.setdefault(index, dict.fromkeys(_CALL_COUNTERS, 0))
                for name, count in traffic.items():
                    history[name] += count
        if stream.channel_id is not None:
            if close:
                self._close_channel(stream.tunnel, stream.channel_id, reason)
            else:
                self._forget((stream.tunnel, stream.channel_id))
            stream.channel_id = None
        self._unlisten(stream.rtp)
        self._unlisten(stream.rtcp)
        stream.rtp = stream.rtcp = None
        if stream.tcp is not None:
            stream.tcp.close()
            stream.tcp = None
        # its callbacks refer back to the stream: without them reference
        # counting frees it (spwm.gcpolicy)
        stream.quality.close()
        self._free_pair(stream)
        self._sweeper.settle()

    def _hold_pair(self, stream: _Stream, base: int) -> None:
        """
        The stream holds the pair at C{base}, counted in its session's share.
        """
        stream.base_port = base
        self._count_pair(stream.session, 1)

    def _free_pair(self, stream: _Stream) -> None:
        """
        Give the stream's pair back to the range and its session's share.
        """
        if stream.base_port is None:
            return
        self.ports.release(stream.base_port)
        stream.base_port = None
        self._count_pair(stream.session, -1)

    def _count_pair(self, session_id: str, change: int) -> None:
        held = self._session_pairs.get(session_id, 0) + change
        if held > 0:
            self._session_pairs[session_id] = held
        else:
            self._session_pairs.pop(session_id, None)

    def session_pairs(self, session_id: str) -> int:
        """
        The port pairs the streams of one session hold now.
        """
        return self._session_pairs.get(session_id, 0)

    def session_full(self, session_id: str) -> bool:
        """
        Whether the session holds its share of the port range
        (C{max_pairs_per_session}) while the range runs short (a quarter
        of its pairs or fewer free): a new call through it is refused.
        While more is free a busy agent (a PBX behind it) takes what it
        needs; the last quarter stays for the sessions under their share.
        """
        limit = self.max_pairs_per_session
        if limit is None or self.session_pairs(session_id) < limit:
            return False
        ports = self.ports
        return ports.capacity - ports.in_use <= ports.capacity // 4

    def _over_session_share(self, stream: _Stream) -> bool:
        """
        Whether the stream's session holds its share already (then the
        stream gets no pair: port 0 in the SDP, with a warning).
        """
        if not self.session_full(stream.session):
            return False
        self._warn(
            "session share",
            "media port limit of session {session} reached ({limit} port pairs, --max-media-per-tunnel):"
            " stream {index} of dialog {dialog} not relayed",
            session=stream.session,
            limit=self.max_pairs_per_session,
            index=stream.index,
            dialog=stream.dialog,
        )
        return True

    def _warn(self, kind: str, format: str, **fields: Any) -> None:
        """
        Log a warning of one kind the 1st, 2nd, 4th, 8th... time it happens
        (with the count so far): under overload the same refusal comes
        thousands of times a second and must not become a flood of log lines.
        """
        self._warnings.warn(kind, format + " ({count} times so far)", **fields)

    # the inactivity sweep (one timer: spwm.media.sweep)

    def _busy(self) -> bool:
        """
        The sweep has something to watch: streams, or channels waiting
        for their SDP.  Asked at every stream release: constant time,
        whatever the number of dialogs.
        """
        return self._stream_count > 0 or bool(self._pending) or bool(self._streamless)

    def _sweep(self, now: float) -> None:
        """
        Release streams idle for longer than the timeout unless held (a
        call not answered yet: L{UNANSWERED_TIMEOUT}, it may be ringing),
        and channels the peer opened whose SDP never came (L{Sweep}).
        """
        unanswered_timeout = max(self.inactivity_timeout, UNANSWERED_TIMEOUT)
        idle: list[tuple[str, str, str]] = []
        for session_id, dialogs in list(self._sessions.items()):
            for dialog_key, dialog in list(dialogs.items()):
                waiting = dialog.waiting
                if waiting is not None and now - waiting >= NO_RESPONSE_TIMEOUT:
                    idle.append((session_id, dialog_key, "no response"))
                elif self._sweep_dialog(dialog, now, unanswered_timeout):
                    idle.append((session_id, dialog_key, "media inactivity"))
        for session_id, dialog_key, reason in idle:
            self._end_idle(session_id, dialog_key, reason)
        for (session_id, dialog_key), since in list(self._streamless.items()):
            found = self._find(session_id, dialog_key)
            if found is None or found.streams:
                del self._streamless[session_id, dialog_key]
            elif now - since >= self.inactivity_timeout:
                self._end_idle(session_id, dialog_key)
        for key, (connection, channel_id, since) in list(self._pending.items()):
            if now - since >= min(self.inactivity_timeout, self.pending_timeout):
                self._unpend(key)
                self._close_channel(connection, channel_id, "no session description")

    def _forget_streamless(self, session_id: str) -> None:
        """
        The dialogs of C{session_id} went (with it, or into another
        session): they wait no more to end for want of streams.
        """
        if self._streamless:
            for key in [k for k in self._streamless if k[0] == session_id]:
                del self._streamless[key]

    def _end_idle(self, session_id: str, dialog_key: str, reason: str = "media inactivity") -> None:
        """
        The sweep released the last stream of a dialog for want of media,
        or the dialog has been without streams for the media timeout (the
        peer closed them, an offer removed them), or its initial INVITE
        has had no response for L{NO_RESPONSE_TIMEOUT} (C{reason} "no
        response"): the dialog ends here (its call record says
        C{reason}, and it counts no more as a call, also towards
        C{max_calls}).  SIP may never end it: an INVITE that no answer
        ever reached, a call whose both ends vanished without a BYE.  It
        is not remembered as ended: a re-INVITE that brings media back
        makes it anew.
        """
        self._streamless.pop((session_id, dialog_key), None)
        dialogs = self._sessions[session_id]
        dialog = dialogs.pop(dialog_key)
        if not dialogs:
            del self._sessions[session_id]
        self._dialog_count -= 1
        self._execute(None, dialog_key, dialog, dialog.leg.ended().actions, self.clock.seconds())
        self._log_end(dialog_key, dialog, reason)
        self._close_pending(session_id, dialog_key, reason)

    def _sweep_dialog(self, dialog: _Dialog, now: float, unanswered_timeout: float) -> bool:
        """
        One dialog's part of L{_sweep}.

        @return: whether it released the dialog's last stream.
        """
        released = False
        timeout = self.inactivity_timeout if dialog.leg.answered else unanswered_timeout
        for index, stream in list(dialog.streams.items()):
            count = stream.count()
            if count != stream.last_count:
                stream.last_count = count
                stream.last_activity = now
                for endpoint in (stream.rtp, stream.rtcp):
                    if endpoint is not None:
                        endpoint.last_activity = now
            elif stream.plan.held or (stream.tcp is not None and stream.tcp.connected):
                # a TCP connection that is up is alive (MSRP may be
                # silent for long); its closing releases the stream
                stream.last_activity = now
            elif now - stream.last_activity >= timeout:
                self.log.info(
                    "media stream {stream} of dialog {dialog} idle for {idle:.1f} s:"
                    " released",
                    stream=index,
                    dialog=stream.dialog,
                    idle=now - stream.last_activity,
                )
                self._release_stream(dialog, index, "media inactivity")
                released = True
        return released and not dialog.streams

