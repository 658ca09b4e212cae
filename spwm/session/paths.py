# -*- test-case-name: tests.test_session_paths -*-
"""
The paths of one session, and which of them carries what (sans-I/O).

A session may hold several connections to its peer at once (I{paths}: TLS
over TCP, later QUIC), each with a small C{path_id} unique in the session.
This module decides, from what the session adapter tells it (frames sent
and received, RTT samples, the kernel's C{TCP_INFO}, losses) and the time
it is given:

 - the state of each path (L{PathState}: C{UP}, C{STALLED}, C{DEAD}),
   moved by one explicit table (L{TRANSITIONS});
 - the I{carrier}: the one path that carries SIP, control and channel
   open/close (ordered and reliable); it moves off a stalled or dead path
   at once, and otherwise stays where it is;
 - the paths each media datagram goes on (L{PathScheduler.media_paths}):
   the best path that is up (QUIC preferred, with a hold against flapping),
   or every path that is up while a loss or a stall was seen recently
   (C{spread_copies} of them in turn, and datagrams coalesced for a few
   milliseconds, L{PathScheduler.coalesce_delay}, once the media rate is
   high: copies of a heavy load on every connection add load, not
   capacity), or every path that is not dead when none is up;
 - when the adapter must run L{PathScheduler.tick} next
   (L{PathScheduler.next_deadline}): one timer per session, not per packet.

L{PathCount} decides how many paths the agent keeps (C{--tunnel-connections
auto}) from the media stalls the receiving half sees and from the media
load while it is spread.

L{SeqStamper} and L{Dedup} number media datagrams per channel and
component (u32, wrapping) on the sending half and deliver each at most
once on the receiving half, whichever paths its copies took.

L{SipOrder} numbers a session's SIP messages, sends again on a new
carrier those the peer has not acknowledged, and takes each once, in
order (C{sip-seq}).

L{read_tcp_info} and L{set_notsent_lowat} are the two socket helpers the
TCP adapter calls on its own socket; nothing else here touches I/O.  No
Twisted, no logging: the adapter logs the events.
"""

from __future__ import annotations

import math
import socket
import struct
import sys
from collections import deque
from enum import Enum
from typing import Any, ClassVar, Union

from attrs import define, frozen

from spwm.limits import PathLimits

__all__ = [
    "CarrierChanged",
    "Dedup",
    "PathDead",
    "PathEvent",
    "PathInput",
    "PathCount",
    "PathKind",
    "PathRecovered",
    "PathScheduler",
    "PathStalled",
    "PathState",
    "PingWanted",
    "SEQ_MODULUS",
    "SeqStamper",
    "SipOrder",
    "not_taken",
    "TCP_NOTSENT_LOWAT",
    "TRANSITIONS",
    "TcpInfo",
    "parse_tcp_info",
    "read_tcp_info",
    "set_notsent_lowat",
]

#: Sequence numbers are u32 and wrap.
SEQ_MODULUS = 1 << 32
_SEQ_MASK = SEQ_MODULUS - 1
_HALF = 1 << 31


class PathKind(Enum):
    """
    What a path runs on.
    """

    TCP = "tcp"
    QUIC = "quic"


class PathState(Enum):
    """
    The health of one path.

     - C{UP}: nothing it sent is overdue.
     - C{STALLED}: the oldest unanswered thing it sent is older than its
       stall bound (or the kernel is retransmitting after a timeout); no
       media on it, and it is no carrier while another path is up.
     - C{DEAD}: older than its dead bound; the adapter closes it (a TCP
       path) or keeps probing it (a QUIC path); an answer still brings it
       back.
    """

    UP = "up"
    STALLED = "stalled"
    DEAD = "dead"


class PathInput(Enum):
    """
    What L{PathScheduler.tick} finds of a path, the input of L{TRANSITIONS}.

     - C{ANSWERED}: nothing it sent is overdue.
     - C{OVERDUE}: overdue past the stall bound.
     - C{LOST}: overdue past the dead bound.
    """

    ANSWERED = "answered"
    OVERDUE = "overdue"
    LOST = "lost"


@frozen
class PathStalled:
    """
    The path stalled: media left it; the carrier left it if it was the carrier.
    """

    path_id: int


@frozen
class PathRecovered:
    """
    The stalled or dead path is answered again.
    """

    path_id: int


@frozen
class PathDead:
    """
    The path is overdue past its dead bound: close it and open another.
    """

    path_id: int


@frozen
class CarrierChanged:
    """
    SIP and control go on C{path_id} from now on (C{None}: no path can).
    """

    path_id: int | None


@frozen
class PingWanted:
    """
    Send a ping (tunnel PING, or a QUIC PING) on this path now: it has data
    that nobody answered yet, or it was idle while media flows.  An
    addition to the shared design; an adapter that ignores it still works,
    but a path that only sends then stalls by its bound.
    """

    path_id: int


PathEvent = Union[PathStalled, PathRecovered, PathDead, CarrierChanged, PingWanted]

_UP, _STALLED, _DEAD = PathState.UP, PathState.STALLED, PathState.DEAD

_ANSWERED, _OVERDUE, _LOST = PathInput.ANSWERED, PathInput.OVERDUE, PathInput.LOST

#: The table: C{TRANSITIONS[(state, input)] = (new_state, event type or
#: None)}.  Every pair is in it.
TRANSITIONS: dict[tuple[PathState, PathInput], tuple[PathState, type[PathStalled] | type[PathRecovered] | type[PathDead] | None]] = {
    (_UP, _ANSWERED): (_UP, None),
    (_UP, _OVERDUE): (_STALLED, PathStalled),
    (_UP, _LOST): (_DEAD, PathDead),
    (_STALLED, _ANSWERED): (_UP, PathRecovered),
    (_STALLED, _OVERDUE): (_STALLED, None),
    (_STALLED, _LOST): (_DEAD, PathDead),
    (_DEAD, _ANSWERED): (_UP, PathRecovered),
    (_DEAD, _OVERDUE): (_DEAD, None),
    (_DEAD, _LOST): (_DEAD, None),
}


# --- TCP_INFO ---------------------------------------------------------------

#: Linux C{TCP_INFO} and C{TCP_NOTSENT_LOWAT} option numbers (include/uapi/linux/tcp.h).
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
_LINUX = sys.platform.startswith("linux")
#: Bytes asked of the kernel: up to C{tcpi_min_rtt}.  Kernels before 4.6
#: give only up to C{tcpi_total_retrans} (104 bytes).
_TCP_INFO_LEN = 152
_U32 = struct.Struct("=I")
_CA_LOSS = 4
_CA_RECOVERY = 3


@define
class TcpInfo:
    """
    What the kernel knows of one TCP connection (Linux C{struct tcp_info}).

    @ivar rtt_s: smoothed RTT (C{tcpi_rtt}), seconds.
    @ivar rttvar_s: its variation (C{tcpi_rttvar}), seconds.
    @ivar unacked: segments sent and not acknowledged (C{tcpi_unacked}).
    @ivar retrans: segments being retransmitted now (C{tcpi_retrans}).
    @ivar total_retrans: segments retransmitted in the connection's life.
    @ivar notsent_bytes: bytes in the send buffer not sent yet (kernel 4.6
        and later; else C{None}).
    @ivar ca_state: congestion state (C{tcpi_ca_state}: 0 open, 1 disorder,
        2 CWR, 3 recovery, 4 loss, i.e. after a retransmission timeout).
    @ivar retransmits: retransmission timeouts in a row now (C{tcpi_retransmits}).
    @ivar rto_s: the retransmission timeout (C{tcpi_rto}), seconds.
    """

    rtt_s: float | None = None
    rttvar_s: float | None = None
    unacked: int | None = None
    retrans: int | None = None
    total_retrans: int | None = None
    notsent_bytes: int | None = None
    ca_state: int | None = None
    retransmits: int | None = None
    rto_s: float | None = None


def parse_tcp_info(raw: bytes) -> TcpInfo | None:
    """
    Parse a Linux C{struct tcp_info} as C{getsockopt} returned it.

    @return: the fields present in C{raw}; C{None} when it is shorter than
        the 104 bytes every kernel since 2.6 gives.
    """
    if len(raw) < 104:
        return None
    u32 = _U32.unpack_from
    return TcpInfo(
        rtt_s=u32(raw, 68)[0] / 1e6,
        rttvar_s=u32(raw, 72)[0] / 1e6,
        unacked=u32(raw, 24)[0],
        retrans=u32(raw, 36)[0],
        total_retrans=u32(raw, 100)[0],
        notsent_bytes=u32(raw, 144)[0] if len(raw) >= 148 else None,
        ca_state=raw[1],
        retransmits=raw[2],
        rto_s=u32(raw, 8)[0] / 1e6,
    )


def read_tcp_info(sock: socket.socket) -> TcpInfo | None:
    """
    Read C{TCP_INFO} of a connected TCP socket.

    @return: L{TcpInfo}; C{None} where the platform does not give it (not
        Linux, not a TCP socket, a closed socket).
    """
    if not _LINUX:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError, TypeError):
        return None
    if not isinstance(raw, (bytes, bytearray)):
        # a socket-like object that is not a kernel socket (an emulated one)
        return None
    return parse_tcp_info(raw)


def set_notsent_lowat(sock: socket.socket, nbytes: int) -> bool:
    """
    Keep at most C{nbytes} not yet sent in the kernel's send buffer of a TCP
    socket (C{TCP_NOTSENT_LOWAT}): the socket reports writable only below
    it, so data waits in our queues, where the scheduler can still steer or
    drop it, and not behind a stall in the kernel.

    @return: whether the option was set.
    """
    if not _LINUX and not hasattr(socket, "TCP_NOTSENT_LOWAT"):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, nbytes)
    except (OSError, AttributeError, TypeError):
        return False
    return True


# --- the scheduler ----------------------------------------------------------


class _Path:
    """
    One path's state inside L{PathScheduler} (mutable, private).
    """

    __slots__ = (
        "path_id",
        "kind",
        "state",
        "added",
        "up_since",
        "srtt",
        "rttvar",
        "stall_bound",
        "dead_bound",
        "ping_after",
        "unanswered_since",
        "pinged",
        "kernel_stuck_since",
        "last_total_retrans",
        "recovering",
        "last_sent",
        "last_received",
        "heard_since",
        "last_probe",
        "recover_pending",
        "stall_times",
        "stalls",
        "deaths",
        "recoveries",
        "pings",
        "losses",
        "bytes_sent",
    )

    def __init__(self, path_id: int, kind: PathKind, now: float) -> None:
        self.path_id = path_id
        self.kind = kind
        self.state = _UP
        self.added = now
        self.up_since = now
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.stall_bound = 0.0
        self.dead_bound = 0.0
        self.ping_after = 0.0
        self.unanswered_since: float | None = None
        self.pinged = False
        self.kernel_stuck_since: float | None = None
        self.last_total_retrans: int | None = None
        self.recovering = False
        self.last_sent = now
        self.last_received = now
        #: since when the peer is heard on it without a pause of
        #: C{stall_floor} / 2 or more
        self.heard_since = now
        self.last_probe = now
        self.recover_pending = False
        self.stall_times: deque[float] = deque(maxlen=16)
        self.stalls = 0
        self.deaths = 0
        self.recoveries = 0
        self.pings = 0
        self.losses = 0
        self.bytes_sent = 0

    def overdue_since(self) -> float | None:
        a, b = self.unanswered_since, self.kernel_stuck_since
        if a is None:
            return b
        if b is None or a <= b:
            return a
        return b


class PathScheduler:
    """
    Which path of one session carries what, and when each is stalled or dead.

    Call pattern of the adapter (one per session):

     - L{add} / L{remove} a path as it is attached / lost, then L{tick};
     - per frame: L{sent} and L{received}; when either returns C{True},
       run L{tick} now or re-arm the timer at L{next_deadline} at once;
     - per media datagram: L{media_now} (or L{coalesce_delay} and
       L{media_paths}; then L{sent} per path used);
     - L{rtt_sample} per PONG (or QUIC sample), L{tcp_info} now and then
       (e.g. on each tick), L{loss_seen} when the de-duplication saw a gap
       or the peer reported loss; re-arm after them;
     - the timer: L{tick}, act on its events (log them, move SIP to the new
       carrier, send the pings, close a dead TCP path), then arm the one
       timer at L{next_deadline} (C{None}: no timer).

    @ivar limits: the bounds (L{PathLimits}).
    @ivar carrier_changes: times the carrier moved.
    @ivar media_switches: times the best media path moved.
    """

    def __init__(self, limits: PathLimits | None = None) -> None:
        self.limits = limits or PathLimits()
        self._paths: dict[int, _Path] = {}
        self._carrier: _Path | None = None
        self._best: _Path | None = None
        self._media_one: tuple[int, ...] = ()
        self._media_all: tuple[int, ...] = ()
        #: the paths that are up, C{spread_copies} at a time, in turn
        self._media_spread: tuple[tuple[int, ...], ...] = ()
        #: the paths that are up one at a time (above C{spread_max_rate})
        self._media_turn: tuple[tuple[int, ...], ...] = ()
        #: the paths that are up, C{max_copies} at a time, in turn (below
        #: C{spread_rate}; empty while no more than that are up)
        self._media_copies: tuple[tuple[int, ...], ...] = ()
        self._copies_next = 0
        # the media's path is a QUIC path (L{media_on_quic}, kept for the hot path)
        self._quic_best = False
        self._spread_next = 0
        self._rate = 0.0
        self._rate_n = 0
        self._rate_since = float("-inf")
        #: when the window that started at C{_rate_since} is full
        self._rate_next = float("-inf")
        self._dup_until = float("-inf")
        self._dup_from = float("-inf")
        self._last_loss = float("-inf")
        self._kernel_loss = float("-inf")
        self._last_media = float("-inf")
        self._now = float("-inf")
        self._armed: float | None = None
        self._pending: list[PathEvent] = []
        #: the paths that are up and overdue past their stall bound but
        #: not stalled (L{tick}), and the earliest time a tick found they
        #: may be (L{_stall_at}; inf: not yet)
        self._held: dict[int, float] = {}
        self._quiet_gap = self.limits.stall_floor / 2
        self.carrier_changes = 0
        self.media_switches = 0
        #: losses that came within C{loss_memory} of the one before
        #: (each started or extended the C{lossy_window})
        self.lossy_losses = 0
        #: reads on the contact point that brought a copy of the agent's
        #: (each opened or extended the duplication window: L{peer_copies})
        self.peer_copy_signs = 0
        #: times media that started after a pause was copied at once on a
        #: slow link (C{start_copies})
        self.starts_copied = 0
        #: paths found stalled (L{PathStalled})
        self.stalls = 0
        #: times a path overdue past its stall bound was held up, not
        #: stalled, because no other path was heard from since: the peer
        #: (a busy process) or the whole network went quiet, not the path
        self.stalls_held = 0

    # -- the paths

    def add(self, path_id: int, kind: PathKind, now: float) -> None:
        """
        A path was attached; it starts C{UP} with the initial RTT.  If there
        was no carrier, it becomes the carrier (L{CarrierChanged} at the
        next L{tick}).

        @raise ValueError: C{path_id} is already there, or the session
            holds C{max_paths} paths.
        """
        if path_id in self._paths:
            raise ValueError(f"path {path_id} is already attached")
        if len(self._paths) >= self.limits.max_paths:
            raise ValueError(f"a session holds at most {self.limits.max_paths} paths")
        self._now = max(self._now, now)
        path = _Path(path_id, kind, now)
        self._bounds(path)
        self._paths[path_id] = path
        self._recompute(now)

    def remove(self, path_id: int) -> None:
        """
        A path went (closed, lost).  If it was the carrier, the carrier
        moves (L{CarrierChanged} at the next L{tick}).  Unknown ids are ignored.
        """
        path = self._paths.pop(path_id, None)
        if path is None:
            return
        self._held.pop(path_id, None)
        self._recompute(self._now)

    def __contains__(self, path_id: int) -> bool:
        return path_id in self._paths

    def __len__(self) -> int:
        return len(self._paths)

    def state(self, path_id: int) -> PathState:
        """
        @return: the path's state.
        @raise KeyError: no such path.
        """
        return self._paths[path_id].state

    # -- what the adapter reports

    def rtt_sample(self, path_id: int, rtt: float, now: float) -> None:
        """
        One RTT measured on the path (RFC 6298 smoothing); the path's stall
        and dead bounds follow.  An answer, too: what was unanswered is no
        longer.
        """
        path = self._paths.get(path_id)
        if path is None or rtt < 0:
            return
        if path.srtt is None or path.rttvar is None:
            path.srtt, path.rttvar = rtt, rtt / 2
        else:
            path.rttvar = 0.75 * path.rttvar + 0.25 * abs(path.srtt - rtt)
            path.srtt = 0.875 * path.srtt + 0.125 * rtt
        self._bounds(path)
        self.received(path_id, now)

    def received(self, path_id: int, now: float) -> bool:
        """
        A frame of the peer arrived on the path: what it sent before is
        answered.  Per packet: O(1).

        @return: whether L{tick} should run now (the path was stalled or
            dead and may come back).
        """
        path = self._paths.get(path_id)
        if path is None:
            return False
        path.unanswered_since = None
        if now - path.last_received > self._quiet_gap:
            path.heard_since = now
        path.last_received = now
        if path.state is not _UP and not path.recover_pending:
            path.recover_pending = True
            return True
        held = self._held
        if held:
            # the peer is heard on this path: one held up elsewhere may
            # stall (L{next_deadline} says when); this one is answered
            held.pop(path_id, None)
            return bool(held)
        return False

    def sent(self, path_id: int, nbytes: int, now: float) -> bool:
        """
        A frame of C{nbytes} went on the path; it is unanswered until the
        peer sends something.  Per packet: O(1).

        @return: whether the timer must be re-armed at L{next_deadline}
            now (this starts a wait that ends before the deadline last
            handed out).
        """
        path = self._paths.get(path_id)
        if path is None:
            return False
        path.last_sent = now
        path.bytes_sent += nbytes
        if path.unanswered_since is None:
            path.unanswered_since = now
            path.pinged = False
            armed = self._armed
            return armed is None or now + path.ping_after < armed
        return False

    def expect(self, path_id: int, every: float, now: float) -> None:
        """
        The peer sends on the path at least every C{every} seconds (it
        pings every path while it has channels): a path not heard from is
        unanswered from C{every} after the last frame it brought, not from
        C{now}.  For the half that does not ping (the contact point), so
        that a path the peer only pings is not found stalled between two
        pings.  Already unanswered: unchanged.  Per call: O(1).

        @param now: the time now (the scheduler's clock moves on).
        """
        self._now = max(self._now, now)
        path = self._paths.get(path_id)
        if path is None or path.unanswered_since is not None:
            return
        path.unanswered_since = path.last_received + every
        path.pinged = False

    def tcp_info(self, path_id: int, info: TcpInfo, now: float) -> None:
        """
        What the kernel says of a TCP path: its RTT replaces the estimate
        (the kernel measures every acknowledgement); retransmissions
        (more of them, or the start of a fast recovery: one loss however
        often it is read during the recovery) count as a loss (media is
        then duplicated); a retransmission timeout (C{ca_state} loss or
        C{retransmits}) means the oldest unacknowledged data is at least
        one RTO old, i.e. half the current RTO, which the timeout doubled:
        the path is overdue since then.
        """
        path = self._paths.get(path_id)
        if path is None:
            return
        if info.rtt_s is not None and info.rtt_s > 0:
            path.srtt = info.rtt_s
            path.rttvar = info.rttvar_s if info.rttvar_s is not None else info.rtt_s / 2
            self._bounds(path)
        lost = False
        total = info.total_retrans
        if total is not None:
            if path.last_total_retrans is not None and total > path.last_total_retrans:
                lost = True
            path.last_total_retrans = total
        recovering = bool(info.retrans) or info.ca_state == _CA_RECOVERY
        if recovering and not path.recovering:
            lost = True
        path.recovering = recovering
        if info.retransmits or info.ca_state == _CA_LOSS:
            if path.kernel_stuck_since is None:
                path.kernel_stuck_since = now - (info.rto_s / 2 if info.rto_s else path.stall_bound)
        else:
            path.kernel_stuck_since = None
        if lost:
            if now > self._kernel_loss:
                self._kernel_loss = now
            self.loss_seen(path_id, now)

    def loss_seen(self, path_id: int, now: float) -> None:
        """
        A loss was seen (the de-duplication saw a gap, the peer reported
        one, TCP retransmitted): media goes on every path that is up for
        C{duplicate_window} from now, or for C{lossy_window} when the loss
        before this one was at most C{loss_memory} ago (the losses keep
        coming).
        """
        path = self._paths.get(path_id)
        if path is not None:
            path.losses += 1
        limits = self.limits
        window = limits.duplicate_window
        if limits.loss_memory and abs(now - self._last_loss) <= limits.loss_memory:
            window = max(window, limits.lossy_window)
            self.lossy_losses += 1
        if now > self._last_loss:
            self._last_loss = now
        self._duplicate(now, window)

    def peer_copies(self, now: float) -> None:
        """
        The peer copies its media on several paths (a copy of a datagram
        came after the datagram): this half copies what it sends too, for
        C{duplicate_window} from now.  Not a loss: the count of losses and
        the lossy window are left alone.
        """
        self.peer_copy_signs += 1
        self._duplicate(now)

    # -- per media datagram

    def carrier(self) -> int | None:
        """
        @return: the path for SIP, control and channel open/close now.
        """
        carrier = self._carrier
        return None if carrier is None else carrier.path_id

    def media_paths(self, now: float, count: int = 1) -> tuple[int, ...]:
        """
        The paths to send C{count} media datagrams on (one, or a batch
        written together): the best path that is up; or, within the
        duplication window, every path that is up (C{max_copies} of them
        in turn when more are up: the spares take their turn), or
        C{spread_copies} of them in turn once the rate is C{spread_rate} or
        more (the load is
        shared, not copied on every connection), one path that is up in
        turn above C{spread_max_rate} (a CPU's load: no copies, however
        many paths there are); or every path that is not
        dead when none is up.  Per packet: O(1), the tuples are made in
        advance.
        """
        if now - self._last_media >= self.limits.start_pause:
            self._media_start(now, count)
        self._last_media = now
        self._rate_n += count
        if now >= self._rate_next:
            self._measure(now)
        if now < self._dup_until:
            limits = self.limits
            if limits.spread_rate and self._rate >= limits.spread_rate:
                if self._rate > limits.spread_max_rate:
                    if self._quic_best:
                        # a CPU's load, not a link's: on the QUIC path
                        # alone, not in turn over TCP connections that the
                        # media would then wait on (and arrive late from)
                        return self._media_one
                    spread = self._media_turn
                else:
                    spread = self._media_spread
                if spread:
                    i = self._spread_next
                    self._spread_next = i + 1 if i + 1 < len(spread) else 0
                    return spread[i]
            copies = self._media_copies
            if copies:
                # more paths are up than a datagram needs copies: the
                # spares take their turn
                i = self._copies_next
                self._copies_next = i + 1 if i + 1 < len(copies) else 0
                return copies[i]
            return self._media_all
        return self._media_one

    def media_now(self, now: float) -> tuple[int, ...] | None:
        """
        Per media datagram, in one call: the paths to send one datagram on
        at once, as L{media_paths}C{(now)} gives them; or C{None} when it
        is to be held to be coalesced with the next ones (L{coalesce_delay}
        says for how long; L{media_paths} is then asked when they go).
        """
        if now - self._last_media >= self.limits.start_pause:
            # media starts after a pause: its rate measured anew, copied
            # from its first datagram on a slow link (media_paths below
            # must not count it again)
            self._media_start(now, 1)
            self._last_media = now
        if now < self._dup_until:
            if self.coalesce_delay(now) > 0.0:
                return None
            return self.media_paths(now)
        # media_paths() outside the duplication window, inlined: this is
        # the usual case, once per datagram sent
        self._last_media = now
        self._rate_n += 1
        if now >= self._rate_next:
            self._measure(now)
        return self._media_one

    def _measure(self, now: float) -> None:
        """
        The measuring window of the media rate is full: the rate over it,
        and a new window from C{now}.
        """
        self._rate = self._rate_n / (now - self._rate_since)
        self._rate_n = 0
        self._rate_since = now
        self._rate_next = now + self.limits.rate_window

    def media_rate(self, now: float | None = None) -> float:
        """
        @param now: the time now: a rate not measured for two windows
            (the media stopped or slowed) is what came since.
        @return: the media datagrams per second L{media_paths} was asked
            for over its last measuring window (C{rate_window}); 0 before
            the first full window.
        """
        if now is not None:
            elapsed = now - self._rate_since
            if elapsed >= 2 * self.limits.rate_window:
                return self._rate_n / elapsed
        return self._rate

    def network_lossy(self, now: float) -> bool:
        """
        @return: whether the kernel retransmitted on a path within
            C{lossy_window} of C{now} (L{tcp_info}): the network loses
            packets, not only a busy peer or process (a stall, a
            datagram dropped for the media deadline), which copy the
            media too.
        """
        return now - self._kernel_loss <= self.limits.lossy_window

    def coalesce_delay(self, now: float) -> float:
        """
        @return: how long the adapter may hold the media datagrams it is
            given now to write them together while the media is copied at
            C{coalesce_rate} or more: C{coalesce_pair} intervals between
            two datagrams at the rate now (at least two go together), at
            least C{coalesce_delay}, at most C{coalesce_hold_max}; or 0:
            send each at once (also while QUIC carries the media).
        """
        if now >= self._dup_until:
            return 0.0
        best = self._best
        if best is not None and best.kind is PathKind.QUIC:
            # its datagrams have no head-of-line blocking to be saved
            # from: the hold would be delay only
            return 0.0
        limits = self.limits
        rate = self._rate
        if limits.coalesce_rate and rate >= limits.coalesce_rate:
            return min(limits.coalesce_hold_max, max(limits.coalesce_delay, limits.coalesce_pair / rate))
        return 0.0

    def quic_paths(self) -> int:
        """
        @return: how many of the paths are QUIC paths.
        """
        return sum(1 for p in self._paths.values() if p.kind is PathKind.QUIC)

    def media_on_quic(self) -> bool:
        """
        @return: whether the media's path (the one it goes on when not
            copied) is a QUIC path.
        """
        return self._quic_best

    def copies_since(self, now: float) -> float | None:
        """
        @return: since when media has gone on every path that is up
            without a break (the duplication window still open at C{now}),
            or C{None}: it is not now.
        """
        return self._dup_from if now < self._dup_until else None

    # -- time

    def tick(self, now: float) -> list[PathEvent]:
        """
        Move the paths through L{TRANSITIONS} by what is overdue at C{now},
        ask for pings, move the carrier and the media off stalled paths.

        @return: the events, in order: those queued by L{add}/L{remove},
            then per path its transition and ping, then L{CarrierChanged}.
        """
        self._now = max(self._now, now)
        events = self._pending
        self._pending = []
        limits = self.limits
        media_active = self._last_media + limits.probe_interval > now
        before = self._held
        held: dict[int, float] = {}
        for path in self._paths.values():
            path.recover_pending = False
            since = path.overdue_since()
            if since is None:
                event_input = _ANSWERED
            else:
                # the same sums as next_deadline's, so a tick at the
                # deadline always finds it due
                if now >= since + path.dead_bound:
                    event_input = _LOST
                elif now >= since + path.stall_bound:
                    event_input = _OVERDUE
                    if path.state is _UP and path.kernel_stuck_since is None:
                        at = self._stall_at(path, since)
                        earlier = before.get(path.path_id)
                        if earlier is not None and earlier < at:
                            at = earlier
                        if now < at:
                            # the peer is quiet on every path (L{_stall_at}):
                            # held up, not stalled; it dies by its dead
                            # bound as before
                            event_input = _ANSWERED
                            held[path.path_id] = at
                            if earlier is None:
                                self.stalls_held += 1
                else:
                    event_input = _ANSWERED
            self._move(path, event_input, now, events)
            if path.state is _DEAD:
                continue
            unanswered = path.unanswered_since
            if unanswered is not None:
                if not path.pinged and now >= unanswered + path.ping_after:
                    path.pinged = True
                    path.last_probe = now
                    path.pings += 1
                    events.append(PingWanted(path.path_id))
                    # and the others not heard from since, with nothing
                    # unanswered of their own: their answers tell a path
                    # that stalls from a peer that is busy (above)
                    for other in self._paths.values():
                        if (
                            other is not path
                            and other.state is not _DEAD
                            and other.unanswered_since is None
                            and other.last_received <= unanswered
                            and other.last_probe < now
                        ):
                            other.last_probe = now
                            other.pings += 1
                            events.append(PingWanted(other.path_id))
            elif media_active and now >= max(path.last_sent, path.last_probe) + limits.probe_interval:
                path.last_probe = now
                path.pings += 1
                events.append(PingWanted(path.path_id))
        for path_id in list(held):
            # held above while a path it waited on was still there: when
            # that one died in this tick (a lone path now), it stalls now
            path = self._paths[path_id]
            since = path.overdue_since()
            if since is not None and now >= self._stall_at(path, since):
                del held[path_id]
                self._move(path, _OVERDUE, now, events)
        self._held = held
        self._recompute(now)
        events.extend(self._pending)
        self._pending = []
        return events

    def next_deadline(self) -> float | None:
        """
        When L{tick} must run next (C{None}: only after an input says so).
        Also remembers it as the armed time that L{sent} compares with.
        """
        limits = self.limits
        deadline: float | None = self._now if self._pending else None
        media_active = self._last_media + limits.probe_interval > self._now
        for path in self._paths.values():
            if path.recover_pending:
                when = path.last_received
                deadline = when if deadline is None or when < deadline else deadline
            state = path.state
            if state is _DEAD:
                continue
            since = path.overdue_since()
            if since is not None:
                if state is _UP and path.path_id in self._held:
                    # held up (tick): until the peer is heard elsewhere,
                    # else its dead bound
                    at = min(self._held[path.path_id], self._stall_at(path, since))
                    when = min(max(at, since + path.stall_bound), since + path.dead_bound)
                else:
                    when = since + (path.stall_bound if state is _UP else path.dead_bound)
                if state is _STALLED and path is self._carrier:
                    held = self._carrier_until(path)
                    if self._now < held < when:
                        when = held
                if not path.pinged and path.unanswered_since is not None:
                    when = min(when, path.unanswered_since + path.ping_after)
                deadline = when if deadline is None or when < deadline else deadline
            elif media_active:
                when = max(path.last_sent, path.last_probe) + limits.probe_interval
                deadline = when if deadline is None or when < deadline else deadline
            if state is _UP and path.kind is PathKind.QUIC and path is not self._best:
                when = path.up_since + self._hold(path, self._now)
                if when > self._now:
                    deadline = when if deadline is None or when < deadline else deadline
        self._armed = deadline
        return deadline

    # -- status

    def media_srtt(self) -> tuple[tuple[int, ...], float | None]:
        """
        The paths that carry the media now and the shortest smoothed round
        trip (seconds) among them (C{None}: no sample yet): what
        L{snapshot} would say, without making it (read once per call's
        end, for its quality figures).
        """
        media = self._media_one
        known = [p.srtt for i in media if (p := self._paths.get(i)) is not None and p.srtt is not None]
        return media, (min(known) if known else None)

    def snapshot(self) -> dict[str, Any]:
        """
        @return: the carrier, the media path(s) and each path's state,
            RTT, bounds and counters (for status and metrics).
        """
        now = self._now
        limits = self.limits
        spread = self._media_turn if self._rate > limits.spread_max_rate else self._media_spread
        spreading = bool(now < self._dup_until and spread and limits.spread_rate and self._rate >= limits.spread_rate)
        return {
            "carrier": self.carrier(),
            "carrier_held": self._carrier is not None
            and self._carrier.state is _STALLED
            and self._carrier_until(self._carrier) > now,
            "media": list(self._media_one),
            "duplicating": now < self._dup_until,
            "media_rate": round(self._rate, 1),
            # as media_paths chooses: copies shared in turn, or above the
            # max rate one path in turn (however few paths there are)
            "spreading": spreading,
            # otherwise, copies on max_copies of the paths in turn (spares among them)
            "copies_in_turn": bool(now < self._dup_until and self._media_copies) and not spreading,
            "lossy_losses": self.lossy_losses,
            "peer_copy_signs": self.peer_copy_signs,
            "starts_copied": self.starts_copied,
            "stalls_held": self.stalls_held,
            "carrier_changes": self.carrier_changes,
            "media_switches": self.media_switches,
            "paths": [
                {
                    "path_id": p.path_id,
                    "kind": p.kind.value,
                    "state": p.state.value,
                    "srtt": p.srtt,
                    "rttvar": p.rttvar,
                    "stall_bound": p.stall_bound,
                    "dead_bound": p.dead_bound,
                    "stalls": p.stalls,
                    "deaths": p.deaths,
                    "recoveries": p.recoveries,
                    "pings": p.pings,
                    "losses": p.losses,
                    "bytes_sent": p.bytes_sent,
                }
                for p in self._paths.values()
            ],
        }

    # -- inside

    def _bounds(self, path: _Path) -> None:
        limits = self.limits
        srtt = path.srtt if path.srtt is not None else limits.initial_rtt
        rttvar = path.rttvar if path.rttvar is not None else limits.initial_rtt / 2
        stall = max(limits.stall_floor, limits.stall_rtt_factor * srtt + limits.stall_rttvar_factor * rttvar)
        stall = min(stall, limits.stall_ceiling)
        path.stall_bound = stall
        path.dead_bound = max(limits.dead_floor, limits.dead_factor * stall)
        path.ping_after = limits.ping_fraction * stall

    def _media_start(self, now: float, count: int) -> None:
        """
        Media starts after C{start_pause} without any: its rate is
        measured anew, first over C{rate_first}; and it is copied for
        C{start_copies} when the path it would go on is a TCP path whose
        known round trip is at least C{count_late_rtt} (L{PathLimits}).
        """
        limits = self.limits
        # the rate before the pause is forgotten; the first window is short
        # and, as every window, does not count the C{count} datagrams at
        # its start (the caller adds them next)
        self._rate = 0.0
        self._rate_n = -count
        self._rate_since = now
        self._rate_next = now + limits.rate_first
        best = self._best
        if (
            limits.start_copies
            and best is not None
            and best.kind is PathKind.TCP
            and best.srtt is not None
            and best.srtt >= limits.count_late_rtt
            and len(self._media_all) > 1
        ):
            self.starts_copied += 1
            self._duplicate(now, limits.start_copies)

    def _duplicate(self, now: float, window: float | None = None) -> None:
        until = now + (self.limits.duplicate_window if window is None else window)
        if until > self._dup_until:
            if now >= self._dup_until:
                self._dup_from = now
            self._dup_until = until

    def _hold(self, path: _Path, now: float) -> float:
        limits = self.limits
        memory = now - limits.flap_memory
        times = path.stall_times
        while times and times[0] < memory:
            times.popleft()
        return float(min(limits.max_switch_hold, limits.switch_hold * (2 ** len(times))))

    def _carrier_until(self, path: _Path) -> float:
        """
        Until when the stalled carrier C{path} keeps SIP and control
        (C{carrier_floor}); -inf when its kernel retransmits after a
        timeout or it is answered.
        """
        since = path.overdue_since()
        if since is None or path.kernel_stuck_since is not None:
            return float("-inf")
        return since + max(path.stall_bound, self.limits.carrier_floor)

    def _move(self, path: _Path, event_input: PathInput, now: float, events: list[PathEvent]) -> None:
        """
        Move C{path} through L{TRANSITIONS} by C{event_input} at C{now},
        its event into C{events}.
        """
        old = path.state
        new, event = TRANSITIONS[(old, event_input)]
        if new is not old:
            path.state = new
            if new is _UP:
                path.up_since = now
                path.recoveries += 1
            else:
                if old is _UP:
                    path.stall_times.append(now)
                if new is _STALLED:
                    path.stalls += 1
                    self.stalls += 1
                else:
                    path.deaths += 1
                if path is self._best or now < self._dup_until:
                    # the media's path stalled (or the media is
                    # copied on it): copy it on every path for a while.
                    # A stall of a path without media (a TCP path beside
                    # the QUIC path, a busy process's late ping) leaves
                    # the media where it is, on one path.
                    self._duplicate(now)
        if event is not None:
            events.append(event(path.path_id))

    def held(self) -> bool:
        """
        @return: whether a path is held up (L{tick}): the half that runs
            no timer of its own (the contact point) asks L{next_deadline}
            for one while it is.
        """
        return bool(self._held)

    def _stall_at(self, path: _Path, since: float) -> float:
        """
        From when C{path}, overdue since C{since} past its stall bound, may
        be found stalled: only once the peer was heard on another path
        (not dead) after C{since}, and C{stall_evidence_grace} after the
        later of C{since} and the end of that path's last pause.  When
        nothing came on any other path, the peer's process is busy (a long
        turn, a garbage collection) or the whole network is quiet: moving
        the media or copying it gains nothing (+inf).  A peer back from
        such a pause answers every path in one turn, a few ms apart (the
        grace).  A lone path stalls by its bound alone (-inf: nothing to
        move to; its state tells the operator).
        """
        grace = self.limits.stall_evidence_grace
        at = float("inf")
        others = False
        for other in self._paths.values():
            if other is not path and other.state is not _DEAD:
                others = True
                if other.last_received > since:
                    when = max(other.heard_since, since) + grace
                    if when < at:
                        at = when
        return at if others else float("-inf")

    @staticmethod
    def _rank(path: _Path) -> tuple[float, int]:
        return (path.srtt if path.srtt is not None else float("inf"), path.path_id)

    def _recompute(self, now: float) -> None:
        paths = list(self._paths.values())
        up = [p for p in paths if p.state is _UP]
        # the carrier: sticky while up; else the best path that is up; else
        # it stays (stalled) or goes to a stalled path; never a dead one
        carrier = self._carrier
        if carrier is None or carrier.state is not _UP or self._paths.get(carrier.path_id) is not carrier:
            if (
                carrier is not None
                and self._paths.get(carrier.path_id) is carrier
                and carrier.state is _STALLED
                and (not up or self._carrier_until(carrier) > now)
            ):
                # held: SIP stays in order on a path that may just be late
                pass
            elif up:
                carrier = min(up, key=self._rank)
            else:
                stalled = [p for p in paths if p.state is _STALLED]
                carrier = min(stalled, key=self._rank) if stalled else None
        if carrier is not self._carrier:
            self._carrier = carrier
            self.carrier_changes += 1
            self._pending.append(CarrierChanged(None if carrier is None else carrier.path_id))
        # the media: QUIC once it held up long enough, else the best path
        # that is up, sticky while up
        best = self._best
        settled = [p for p in up if p.kind is PathKind.QUIC and now >= p.up_since + self._hold(p, now)]
        if best is None or best.state is not _UP or self._paths.get(best.path_id) is not best:
            if settled:
                best = min(settled, key=self._rank)
            else:
                tcp = [p for p in up if p.kind is PathKind.TCP]
                best = min(tcp or up, key=self._rank) if up else None
        elif best.kind is not PathKind.QUIC and settled:
            best = min(settled, key=self._rank)
        if best is not self._best:
            if self._best is not None and best is not None:
                self.media_switches += 1
            self._best = best
        self._quic_best = best is not None and best.kind is PathKind.QUIC
        spread: tuple[tuple[int, ...], ...] = ()
        turn: tuple[tuple[int, ...], ...] = ()
        copies: tuple[tuple[int, ...], ...] = ()
        if best is not None:
            self._media_one = (best.path_id,)
            ids = self._media_all = tuple(sorted(p.path_id for p in up))
            spread = _in_turn(ids, self.limits.spread_copies)
            turn = tuple((i,) for i in ids)
            copies = _in_turn(ids, self.limits.max_copies)
        else:
            alive = [p.path_id for p in paths if p.state is not _DEAD] or [p.path_id for p in paths]
            self._media_one = self._media_all = tuple(sorted(alive))
        if spread != self._media_spread or turn != self._media_turn:
            self._media_spread = spread
            self._media_turn = turn
            self._spread_next = 0
        if copies != self._media_copies:
            self._media_copies = copies
            self._copies_next = 0


#: a rate this close to the one before (relatively) is not lower: the
#: same rate measured over windows of slightly different float lengths
_NOT_LOWER = 1.0 - 1e-9


def _in_turn(ids: tuple[int, ...], k: int) -> tuple[tuple[int, ...], ...]:
    """
    The paths C{ids}, C{k} at a time, each taking as many turns: empty
    when there are no more than C{k} (or C{k} is 0: all of them each time).
    """
    n = len(ids)
    if not k or n <= k:
        return ()
    return tuple(tuple(ids[(i + j) % n] for j in range(k)) for i in range(n))


# --- how many paths ---------------------------------------------------------


class PathCount:
    """
    How many connections the agent keeps attached to its session
    (C{--tunnel-connections auto}), between a floor and a ceiling.

    The copies of a media datagram go on every connection that is up while
    losses keep coming (L{PathScheduler}); a datagram is late only when
    every copy is held back at once (a retransmission on each connection).
    That is what this counts, on the receiving half, from the first copies
    (what the de-duplication accepts): a I{media stall} is a pause of at
    least C{count_stall_gap} (and at most C{count_stall_max}: longer is
    silence) ended by a burst, C{count_burst} datagrams within
    C{count_burst_window} (the held-back datagrams released together; the
    next talk spurt after a silence comes one at a time).

     - I{grow}: C{count_grow_stalls} media stalls while the media is
       copied on every connection (for C{count_covered_after} at least)
       within
       C{count_grow_window}, and C{count_grow_hold} since the last change:
       C{count_grow_step} connections more, at most the ceiling (the
       stalls then count anew);
     - I{grow early}: the same, at once, after one I{late loss} within
       C{count_grow_window}: a retransmission on a connection whose round
       trip is at least C{count_late_rtt} (L{late_loss}), where every
       loss is a late copy: a fresh session on such a link grows before
       (or as soon as) its first media, not after the stalls have cost
       the call seconds of late packets;
     - I{shrink}: no media stall and no change for the quiet spell
       (C{count_quiet}): one connection less;
     - I{hysteresis}: a grow within C{count_flap_memory} of a shrink
       doubles the quiet spell (up to C{count_quiet_max}); a grow later
       than that sets it back.  A link that needs more connections now and
       then keeps them; changes down are at most one per quiet spell.
     - I{spares}: while the stall rules want the ceiling (the link needs
       every copy they give), C{count_spare} connections more: the
       copies go on C{max_copies} of them in turn (L{PathScheduler}), so a
       connection cut or stalled leaves as many copies, and its
       replacement is there before the break (not opened after it, half a
       second of handshakes on such a link); they go with the ceiling;
     - I{load}: while the media is copied (losses keep coming) at
       C{spread_rate} datagrams a second or more, the scheduler spreads
       it, C{spread_copies} of the connections per datagram; then at
       least C{rate * spread_copies / count_load_rate} connections (up
       to C{count_load_ceiling}) are wanted, whatever the stalls, so
       that each carries a share it can (L{load}): while the rate is not
       lower than C{count_load_trend} before (a falling load, calls
       ending, needs no more connections than it has: a rate passing
       through on its way down from a CPU's load asks for none), and
       for C{count_load_linger} after it last asked (the next calls
       find them); then the count goes back at once to what the stalls
       ask for.  The stall rules above count apart from the load.

    Pure: the adapter feeds L{arrivals} and asks L{decide} now and then
    (every half second is plenty: the decisions are seconds apart).

    @ivar wanted: the connections wanted now (the floor to start with).
    @ivar media_stalls: media stalls seen.
    @ivar late_losses: late losses seen (L{late_loss}).
    @ivar grows: changes up.
    @ivar shrinks: changes down.
    """

    def __init__(self, floor: int, ceiling: int, limits: PathLimits | None = None) -> None:
        """
        @raise ValueError: not C{1 <= floor <= ceiling}.
        """
        if not 1 <= floor <= ceiling:
            raise ValueError(f"1 <= floor {floor} <= ceiling {ceiling} does not hold")
        self.limits = limits or PathLimits()
        self.floor = floor
        self.ceiling = ceiling
        self.wanted = floor
        self.quiet = self.limits.count_quiet
        self.media_stalls = 0
        self.late_losses = 0
        #: why it last changed (for the log and the status; "": never)
        self.why = ""
        self.grows = 0
        self.shrinks = 0
        self._stalls: deque[float] = deque(maxlen=self.limits.count_grow_stalls)
        self._last_stall = float("-inf")
        self._late_loss = float("-inf")
        self._changed = float("-inf")
        self._shrunk = float("-inf")
        self._last_arrival: float | None = None
        self._pause_end: float | None = None
        self._burst = 0
        #: the connections the media load asks for now (0: none), held
        #: and lingering (L{decide})
        self.for_load = 0
        self.load_grows = 0
        #: what the stall rules alone want
        self._by_stalls = floor
        #: the spares kept beside what the stall rules want (L{decide})
        self.spare = 0
        #: what the load asked for at the last L{load} call, and its rate
        self._load_ask = 0
        self._load_rate = 0.0
        #: (time, rate) at each L{decide} within C{count_load_trend}, and
        #: one before it (the rate at the window's start)
        self._load_rates: deque[tuple[float, float]] = deque()
        #: (time, held ask) at each L{decide} within C{count_load_linger}
        self._load_held: deque[tuple[float, int]] = deque()

    def arrivals(self, now: float, count: int = 1, covered: bool = True) -> None:
        """
        C{count} media datagrams (first copies) arrived at C{now}.

        @param covered: whether the media is copied on every connection now
            (a stall counts towards a grow only then: a stall of media on
            one connection asks for copies, which the scheduler starts,
            not for more connections).
        """
        if count <= 0:
            return
        limits = self.limits
        last = self._last_arrival
        if last is not None and now < last:
            now = last
        self._last_arrival = now
        end = self._pause_end
        if end is not None:
            if now - end <= limits.count_burst_window:
                self._burst += count
                if self._burst >= limits.count_burst:
                    self._pause_end = None
                    self.stall(end, covered)
                return
            self._pause_end = None
        if last is not None and limits.count_stall_gap <= now - last <= limits.count_stall_max:
            self._pause_end = now
            self._burst = count
            if count >= limits.count_burst:
                self._pause_end = None
                self.stall(now, covered)

    def stall(self, now: float, covered: bool = True) -> None:
        """
        One media stall at C{now} (L{arrivals} calls it).

        @param covered: see L{arrivals}; an uncovered stall is counted in
            C{media_stalls} and keeps the count from shrinking, but does
            not make it grow.
        """
        self.media_stalls += 1
        if covered:
            self._stalls.append(now)
        if now > self._last_stall:
            self._last_stall = now

    def load(self, rate: float, copied: bool) -> None:
        """
        The media load now: C{rate} datagrams a second (what the session
        sends), C{copied} while losses the network made (the kernel
        retransmits) keep the media copied.  L{decide} applies it.  From
        C{spread_rate} up to C{spread_max_rate}: more than that is a
        CPU's load, not a link's, to copy.
        """
        limits = self.limits
        self._load_rate = rate
        if copied and limits.spread_rate and limits.spread_rate <= rate <= limits.spread_max_rate:
            wanted = math.ceil(rate * limits.spread_copies / limits.count_load_rate)
            self._load_ask = max(self.floor, min(limits.count_load_ceiling, limits.max_paths, wanted))
        else:
            self._load_ask = 0

    def _for_load(self, now: float) -> int:
        """
        @return: the connections the load asks for at C{now}: what it asks
            for now unless its rate is lower than C{count_load_trend}
            before (it falls: calls end), the most of that over the last
            C{count_load_linger}.
        """
        limits = self.limits
        rates = self._load_rates
        if rates and rates[-1][0] >= now:
            rates.pop()
        rate = self._load_rate
        rates.append((now, rate))
        start = now - limits.count_load_trend
        while len(rates) > 1 and rates[1][0] <= start:
            rates.popleft()
        held = self._load_ask
        if len(rates) > 1 and rate < rates[0][1] * _NOT_LOWER:
            # lower than C{count_load_trend} before (or than the first
            # rate told, when that is more recent), not by a rounding of
            # two windows' lengths
            held = 0
        lingering = self._load_held
        if lingering and lingering[-1][0] >= now:
            held = max(held, lingering.pop()[1])
        if held:
            lingering.append((now, held))
        while lingering and lingering[0][0] < now - limits.count_load_linger:
            lingering.popleft()
        return max((h for _, h in lingering), default=0)

    def late_loss(self, now: float) -> None:
        """
        A I{late loss} at C{now}: the kernel retransmitted on a connection
        whose smoothed round trip is at least C{count_late_rtt} (the
        caller checks both).  It does not keep the count from shrinking:
        only media stalls do.
        """
        self.late_losses += 1
        if now > self._late_loss:
            self._late_loss = now

    def decide(self, now: float, grow: bool = True) -> int:
        """
        Apply the rules at C{now}.

        @param grow: whether the count may grow now (not while the media
            goes on a QUIC path: more TCP connections would carry none of
            it); it may shrink all the same.
        @return: L{wanted}: the more of what the stall rules want (up by
            at most C{count_grow_step} or down by one) and what the load
            asks for.
        """
        limits = self.limits
        stalls = self._stalls
        window = now - limits.count_grow_window
        if not grow:
            stalls.clear()
        self.for_load = self._for_load(now)
        quiet = False
        if (
            grow
            and self._by_stalls < self.ceiling
            and (len(stalls) == stalls.maxlen and stalls[0] >= window or self._late_loss >= window)
            and now - self._changed >= limits.count_grow_hold
        ):
            self.why = (
                "the media keeps stalling on every connection at once"
                if len(stalls) == stalls.maxlen and stalls[0] >= window
                else "the kernel retransmits on a connection whose round trip leaves no time for it"
            )
            self._by_stalls = min(self.ceiling, self._by_stalls + limits.count_grow_step)
            if now - self._shrunk <= limits.count_flap_memory:
                self.quiet = min(limits.count_quiet_max, 2 * self.quiet)
            else:
                self.quiet = limits.count_quiet
            self._changed = now
            stalls.clear()
            self._late_loss = float("-inf")
        elif (
            self._by_stalls > self.floor
            and now - self._last_stall >= self.quiet
            and now - self._changed >= self.quiet
        ):
            self._by_stalls -= 1
            quiet = True
            self._changed = self._shrunk = now
        # make before break: the link needs every copy the stall rules can
        # give it, so spares are kept beside them (the copies take them in
        # turn: PathScheduler.media_paths)
        spares_before = self.spare
        self.spare = limits.count_spare if grow and self._by_stalls >= self.ceiling else 0
        by_stalls = min(self._by_stalls + self.spare, limits.max_paths)
        wanted = max(by_stalls, self.for_load if grow else min(self.for_load, self.wanted))
        if wanted > self.wanted:
            if self.for_load == wanted:
                self.load_grows += 1
                self.why = "the media load on a lossy link needs more connections"
                self._changed = now
                stalls.clear()
            self.grows += 1
        elif wanted < self.wanted:
            if quiet:
                self.why = f"no media stall for {self.quiet:.0f} s"
            elif not grow and spares_before and not self.for_load:
                self.why = "the media goes on a QUIC path: no spares"
            else:
                self.why = "the media load that wanted them is gone"
            self.shrinks += 1
        self.wanted = wanted
        return self.wanted

    def snapshot(self) -> dict[str, Any]:
        """
        @return: the figures for status and metrics.
        """
        return {
            "connections_wanted": self.wanted,
            "connections_why": self.why,
            "connections_floor": self.floor,
            "connections_ceiling": self.ceiling,
            "connections_grown": self.grows,
            "connections_shrunk": self.shrinks,
            "connections_for_load": self.for_load,
            "connections_spare": self.spare,
            "connections_load_grown": self.load_grows,
            "media_stalls": self.media_stalls,
            "late_losses": self.late_losses,
        }


# --- sequence numbers -------------------------------------------------------


class SeqStamper:
    """
    The sending half's sequence numbers: per channel and component a u32
    counter, from C{start}, wrapping after 2**32 - 1.  A channel's counter
    never goes back while the session lives; L{forget} it when the channel
    closes (channel ids are not reused in a session).
    """

    def __init__(self, start: int = 0) -> None:
        self._start = start & _SEQ_MASK
        self._channels: dict[int, list[int]] = {}

    def next(self, channel_id: int, component: int) -> int:
        """
        @return: the next sequence number of the channel's component (0 or
            1; other bits are ignored).
        """
        component &= 1
        counters = self._channels.get(channel_id)
        if counters is None:
            counters = self._channels[channel_id] = [self._start, self._start]
        seq = counters[component]
        counters[component] = (seq + 1) & _SEQ_MASK
        return seq

    def forget(self, channel_id: int) -> None:
        """
        The channel closed.
        """
        self._channels.pop(channel_id, None)

    def __len__(self) -> int:
        return len(self._channels)


class _Window:
    """
    The sequence numbers seen of one channel's component: the highest and
    a bitmap of the C{size} below it (a ring indexed by C{seq % size}).
    """

    __slots__ = ("high", "bits")

    def __init__(self, seq: int, size: int) -> None:
        self.high = seq
        self.bits = bytearray(size >> 3)
        self.bits[(seq & (size - 1)) >> 3] |= 1 << (seq & 7)


class Dedup:
    """
    The receiving half's de-duplication: each (channel, component,
    sequence number) is accepted at most once, whichever path each copy
    came on.  Per channel and component a window of C{dedup_window}
    sequence numbers below the highest seen: a number in it not seen yet is
    accepted (late, but first), one below it is refused (it cannot be told
    from a copy).  Comparison is modulo 2**32 (RFC 1982 style); a number
    more than L{MAX_AHEAD} ahead of the highest is refused (C{too_far}):
    a sender numbers each channel from 0 without gaps, so only a million
    datagrams lost in a row (hours of a call) could make such a jump, and
    without the bound a jump of nearly 2**31 makes the numbers below it
    "newer" again and a copy seen before would be accepted twice.

    Memory: C{dedup_window / 8} bytes per channel and component, at most
    C{dedup_max_channels} channels (past it the oldest is forgotten).

    @ivar accepted: datagrams accepted.
    @ivar duplicates: copies refused (seen already).
    @ivar too_old: refused below the window.
    @ivar too_far: refused more than L{MAX_AHEAD} above the highest.
    @ivar gaps: sequence numbers skipped when the highest moved on (lost
        or late; a late one accepted later counts in C{late}).
    @ivar late: accepted below the highest.
    @ivar slow: skipped numbers that were still missing C{dedup_slow}
        after the next one came, or came that late: lost, or held up on
        their path (a stall), rather than reordered among paths.  One
        skipped number at a time is watched (L{watch}), from the time the
        receiving session last gave (L{now}, set before each read: no
        clock per datagram); the next is watched once it is settled.
    @ivar now: the time, as the receiving session last set it.
    """

    #: how far ahead of the highest number seen a number may be (2**20)
    MAX_AHEAD: ClassVar[int] = 0x100000

    def __init__(self, limits: PathLimits | None = None) -> None:
        limits = limits or PathLimits()
        self.window = limits.dedup_window
        self.max_channels = limits.dedup_max_channels
        self._slot_mask = self.window - 1
        # a number this far ahead (mod 2**32) or more is below the window
        self._oldest = SEQ_MODULUS - self.window
        self._channels: dict[int, list[_Window | None]] = {}
        self.accepted = 0
        self.duplicates = 0
        self.too_old = 0
        self.too_far = 0
        self.gaps = 0
        self.late = 0
        self.slow = 0
        self.slow_after = limits.dedup_slow
        self.now = 0.0
        # the skipped number watched: its window, the number, since when
        self._watched: tuple[_Window, int, float] | None = None

    def watch(self, now: float) -> bool:
        """
        The time is C{now} (before a read is processed): if the skipped
        number watched has been missing C{dedup_slow} or more, it counts
        in C{slow} and the watch moves on to the next number skipped.

        @return: whether it did.
        """
        self.now = now
        watched = self._watched
        if watched is not None and now - watched[2] >= self.slow_after:
            self._watched = None
            self.slow += 1
            return True
        return False

    def accept(self, channel_id: int, component: int, seq: int) -> bool:
        """
        @param component: 0 or 1 (other bits are ignored).
        @param seq: the datagram's u32 sequence number.
        @return: whether to deliver it (first copy seen, in the window).
        """
        windows = self._channels.get(channel_id)
        if windows is None:
            if len(self._channels) >= self.max_channels:
                del self._channels[next(iter(self._channels))]
                self._watched = None  # rare: its window may have gone
            windows = self._channels[channel_id] = [None, None]
        component &= 1
        window = windows[component]
        if window is None:
            windows[component] = _Window(seq, self.window)
            self.accepted += 1
            return True
        # literals, not module constants: this runs per media datagram
        ahead = (seq - window.high) & 0xFFFFFFFF
        slot = seq & self._slot_mask
        bit = 1 << (slot & 7)
        slot >>= 3
        if 0 < ahead <= 0x100000:  # MAX_AHEAD
            # newer: clear the slots the window moves over, mark this one
            bits = window.bits
            if ahead > 1:
                self._skip(window, ahead)
            window.high = seq
            bits[slot] |= bit
            self.accepted += 1
            return True
        if ahead == 0:
            self.duplicates += 1
            return False
        if ahead <= self._oldest:
            if ahead < 0x80000000:
                self.too_far += 1
            else:
                self.too_old += 1
            return False
        bits = window.bits
        if bits[slot] & bit:
            self.duplicates += 1
            return False
        bits[slot] |= bit
        self.accepted += 1
        self.late += 1
        watched = self._watched
        if watched is not None and watched[1] == seq and watched[0] is window:
            # reordered (within dedup_slow) or slow
            self._watched = None
            if self.now - watched[2] >= self.slow_after:
                self.slow += 1
        return True

    def _skip(self, window: _Window, ahead: int) -> None:
        """
        The window moves C{ahead} (more than one) past its highest: forget
        the slots of the numbers skipped, which now stand for numbers not
        seen yet.
        """
        self.gaps += ahead - 1
        if self._watched is None:
            self._watched = (window, (window.high + 1) & 0xFFFFFFFF, self.now)
        bits = window.bits
        if ahead >= self.window:
            bits[:] = bytes(len(bits))
            return
        mask = self._slot_mask
        high = window.high
        for skipped in range(high + 1, high + ahead):
            slot = skipped & mask
            bits[slot >> 3] &= ~(1 << (slot & 7)) & 0xFF

    def forget(self, channel_id: int) -> None:
        """
        The channel closed: its windows go (and the watch of a number
        skipped in them).
        """
        windows = self._channels.pop(channel_id, None)
        watched = self._watched
        if windows is not None and watched is not None and any(w is watched[0] for w in windows):
            self._watched = None

    def __len__(self) -> int:
        return len(self._channels)


# --- SIP across paths ---------------------------------------------------------


class SipOrder:
    """
    One session's SIP across its paths, both directions (C{sip-seq}).

    Sending: each message gets the next number (from 0, one by one; u32 on
    the wire, wrapping) and is kept until the peer acknowledges it
    (L{acked}); when the carrier moves, the adapter sends every kept
    message again on the new carrier (L{unacked}), before anything else
    goes there.  Without that, SIP in flight on a connection that breaks
    is lost: a phone over UDP retransmits it, one over TCP or TLS does
    not (its INVITE transaction times out after 32 s), and SIP still
    queued on a stalled connection arrives after what the new carrier
    carried (an INVITE's retransmission after its ACK, a BYE before it).

    Receiving: L{arrived} takes each number once, in order: one below the
    next expected is a copy, already taken (the sender sent it again on
    the new carrier, or the stalled connection delivered it late).  A
    number above it means messages were given up by the sender (more than
    C{max_kept} unacknowledged): taken, the gap counted.  The receiver
    acknowledges what it took (L{ack_due}) every L{ACK_DELAY} while SIP
    arrives.

    Why no reordering buffer is needed: a connection delivers in order,
    and the messages sent again on a new carrier start at the first one
    not acknowledged, which is at most the receiver's next expected; so
    every connection's stream, read from where the receiver is, has no
    gap.

    @ivar resent: messages sent again after the carrier moved.
    @ivar copies: messages received that had been taken already.
    @ivar given_up: kept messages forgotten unacknowledged (past
        C{max_kept} or C{max_bytes}).
    @ivar skipped: numbers the receiver never got (the sender's given-up
        messages).
    """

    #: how long after the first message taken the receiver acknowledges (s)
    ACK_DELAY: ClassVar[float] = 0.05

    def __init__(self, max_kept: int = 1024, max_bytes: int = 1 << 20) -> None:
        self.max_kept = max_kept
        self.max_bytes = max_bytes
        # sending: the next number; the messages not acknowledged yet
        self._next_out = 0
        self._kept: deque[tuple[int, int, bytes]] = deque()
        self._kept_bytes = 0
        # receiving: the next number expected; the last acknowledged
        self._expected = 0
        self._told = 0
        self.resent = 0
        self.copies = 0
        self.given_up = 0
        self.skipped = 0

    # -- sending ----------------------------------------------------------------

    def number(self, flow_id: int, data: bytes) -> int:
        """
        A message goes out: keep it.

        @return: its number (as the session counts, not wrapped).
        """
        number = self._next_out
        self._next_out = number + 1
        kept = self._kept
        kept.append((number, flow_id, data))
        self._kept_bytes += len(data)
        while len(kept) > self.max_kept or (self._kept_bytes > self.max_bytes and len(kept) > 1):
            _, _, old = kept.popleft()
            self._kept_bytes -= len(old)
            self.given_up += 1
        return number

    def acked(self, next_expected: object) -> None:
        """
        The peer took every message numbered below C{next_expected} (the
        C{next} of its C{sip-ack}; anything but a whole number is ignored).
        """
        if not isinstance(next_expected, int) or isinstance(next_expected, bool):
            return
        kept = self._kept
        while kept and kept[0][0] < next_expected:
            _, _, old = kept.popleft()
            self._kept_bytes -= len(old)

    def unacked(self) -> list[tuple[int, int, bytes]]:
        """
        The kept messages, oldest first (number, flow id, bytes), counted
        as sent again: the carrier moved, they go on the new one.
        """
        self.resent += len(self._kept)
        return list(self._kept)

    @property
    def kept(self) -> int:
        """
        Messages not acknowledged yet.
        """
        return len(self._kept)

    # -- receiving --------------------------------------------------------------

    def arrived(self, wire: int) -> bool:
        """
        A message numbered C{wire} (u32, as on the wire) arrived.

        @return: whether to take it (C{False}: a copy of one taken).
        """
        expected = self._expected
        ahead = (wire - expected) & _SEQ_MASK
        if ahead >= _HALF:
            self.copies += 1
            return False
        self.skipped += ahead
        self._expected = expected + ahead + 1
        return True

    @property
    def expected(self) -> int:
        """
        The next number to take: every message numbered below it was taken.
        """
        return self._expected

    def ack_due(self) -> int | None:
        """
        @return: the C{next} to acknowledge, if it moved since the last
            acknowledgement (then taken as told).
        """
        if self._expected == self._told:
            return None
        self._told = self._expected
        return self._expected

    def snapshot(self) -> dict[str, int]:
        """
        For the status page.
        """
        return {
            "sip_kept": len(self._kept),
            "sip_resent": self.resent,
            "sip_copies": self.copies,
            "sip_given_up": self.given_up,
            "sip_skipped": self.skipped,
        }


def not_taken(carried: list[tuple[int, int, bytes]], peer_next: object) -> list[tuple[int, int, bytes]]:
    """
    Of the SIP a session's lost connection took with it (number, flow id,
    bytes), what the peer had not taken: numbered from C{peer_next} on
    (the C{sip_next} of its resumption message); without a whole number
    there (a peer of an earlier version), all of it.
    """
    if not isinstance(peer_next, int) or isinstance(peer_next, bool):
        return carried
    return [m for m in carried if m[0] >= peer_next]
