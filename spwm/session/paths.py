# -*- test-case-name: tests.test_session_paths -*-
"""
A STAND-IN for helper sched's module of the same name (written by helper
paths so that the session layer could be built and tested before sched's
work was merged; the signatures are those of the shared design,
C{paths-design.md}).  Take sched's version in its place: nothing outside
this module depends on more than the names below.

Pure: no Twisted, no logging; time is passed in.
"""

from __future__ import annotations

import socket
import struct
from enum import Enum
from typing import Any

from attrs import define, field, frozen

__all__ = [
    "CarrierChanged",
    "Dedup",
    "PathDead",
    "PathKind",
    "PathLimits",
    "PathRecovered",
    "PathScheduler",
    "PathStalled",
    "PathState",
    "SeqStamper",
    "TcpInfo",
    "read_tcp_info",
    "set_notsent_lowat",
]


class PathKind(Enum):
    TCP = "tcp"
    QUIC = "quic"


class PathState(Enum):
    UP = "up"
    STALLED = "stalled"
    DEAD = "dead"


#: (state, what happened) -> new state
TRANSITIONS = {
    (PathState.UP, "stall"): PathState.STALLED,
    (PathState.UP, "dead"): PathState.DEAD,
    (PathState.STALLED, "received"): PathState.UP,
    (PathState.STALLED, "dead"): PathState.DEAD,
}


@frozen
class PathLimits:
    """
    @ivar stall_floor: a path is never stalled sooner than this (s).
    @ivar stall_rtt_factor: stalled when the oldest unanswered data is
        older than C{max(stall_floor, factor * srtt + 4 * rttvar)}.
    @ivar dead_floor: dead after at least this long unanswered (s).
    @ivar dead_factor: dead after C{dead_factor} times the stall bound.
    @ivar duplicate_window: media goes on every path for this long after
        a stall or a loss was seen (s).
    """

    stall_floor: float = 0.040
    stall_rtt_factor: float = 3.0
    dead_floor: float = 1.0
    dead_factor: float = 8.0
    duplicate_window: float = 10.0


@frozen
class PathStalled:
    path_id: int


@frozen
class PathRecovered:
    path_id: int


@frozen
class PathDead:
    path_id: int


@frozen
class CarrierChanged:
    path_id: int | None


@define
class TcpInfo:
    rtt_s: float = 0.0
    rttvar_s: float = 0.0
    unacked: int = 0
    retrans: int = 0
    total_retrans: int = 0
    notsent_bytes: int = 0


def read_tcp_info(sock: Any) -> TcpInfo | None:
    """
    Linux's C{struct tcp_info} of C{sock}, or C{None} elsewhere.
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
    except (OSError, AttributeError):
        return None
    if len(raw) < 104:
        return None
    # u8 x8, u32 x24...: retransmits at 2 (u8), unacked at 24, rtt at 68, rttvar at 72, total_retrans at 100
    retrans = raw[2]
    unacked, = struct.unpack_from("I", raw, 24)
    rtt, rttvar = struct.unpack_from("II", raw, 68)
    total, = struct.unpack_from("I", raw, 100)
    return TcpInfo(rtt / 1e6, rttvar / 1e6, unacked, retrans, total, 0)


def set_notsent_lowat(sock: Any, nbytes: int = 16384) -> bool:
    """
    Keep at most C{nbytes} unsent in C{sock}'s send queue
    (C{TCP_NOTSENT_LOWAT}); C{False} where it cannot be set.
    """
    option = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, nbytes)
    except (OSError, AttributeError):
        return False
    return True


@define
class _Path:
    kind: PathKind
    added: float
    state: PathState = PathState.UP
    srtt: float | None = None
    rttvar: float = 0.0
    unanswered_since: float | None = None


class PathScheduler:
    """
    Which path carries SIP and control (the carrier) and which paths one
    media datagram goes on, from what each path was seen to do.
    """

    def __init__(self, limits: PathLimits | None = None) -> None:
        self.limits = limits or PathLimits()
        self._paths: dict[int, _Path] = {}
        self._carrier: int | None = None
        self._trouble_at: float | None = None

    def add(self, path_id: int, kind: PathKind, now: float) -> None:
        self._paths[path_id] = _Path(kind, now)
        if self._carrier is None:
            self._carrier = path_id

    def remove(self, path_id: int) -> None:
        self._paths.pop(path_id, None)
        if self._carrier == path_id:
            self._carrier = self._choose()

    def rtt_sample(self, path_id: int, rtt: float, now: float) -> None:
        path = self._paths.get(path_id)
        if path is None:
            return
        if path.srtt is None:
            path.srtt, path.rttvar = rtt, rtt / 2
        else:
            path.rttvar = 0.75 * path.rttvar + 0.25 * abs(path.srtt - rtt)
            path.srtt = 0.875 * path.srtt + 0.125 * rtt
        self.received(path_id, now)

    def received(self, path_id: int, now: float) -> None:
        path = self._paths.get(path_id)
        if path is None:
            return
        path.unanswered_since = None
        if path.state is PathState.STALLED:
            path.state = TRANSITIONS[PathState.STALLED, "received"]

    def sent(self, path_id: int, nbytes: int, now: float) -> None:
        path = self._paths.get(path_id)
        if path is not None and path.unanswered_since is None:
            path.unanswered_since = now

    def tcp_info(self, path_id: int, info: TcpInfo, now: float) -> None:
        if info.rtt_s > 0:
            path = self._paths.get(path_id)
            if path is not None and path.srtt is None:
                path.srtt, path.rttvar = info.rtt_s, info.rttvar_s

    def loss_seen(self, path_id: int, now: float) -> None:
        self._trouble_at = now

    def stall_bound(self, path_id: int) -> float:
        """
        How long data may go unanswered on a path before it is stalled.
        """
        path = self._paths[path_id]
        limits = self.limits
        if path.srtt is None:
            return max(limits.stall_floor, limits.dead_floor / 4)
        return max(limits.stall_floor, limits.stall_rtt_factor * path.srtt + 4 * path.rttvar)

    def _dead_bound(self, path_id: int) -> float:
        return max(self.limits.dead_floor, self.limits.dead_factor * self.stall_bound(path_id))

    def tick(self, now: float) -> list[Any]:
        events: list[Any] = []
        for path_id, path in self._paths.items():
            since = path.unanswered_since
            if since is None or path.state is PathState.DEAD:
                continue
            age = now - since
            if age >= self._dead_bound(path_id):
                path.state = TRANSITIONS[path.state, "dead"]
                self._trouble_at = now
                events.append(PathDead(path_id))
            elif age >= self.stall_bound(path_id) and path.state is PathState.UP:
                path.state = TRANSITIONS[path.state, "stall"]
                self._trouble_at = now
                events.append(PathStalled(path_id))
        carrier = self._carrier
        current = self._paths.get(carrier) if carrier is not None else None
        if current is None or current.state is not PathState.UP:
            chosen = self._choose()
            if chosen != carrier:
                self._carrier = chosen
                events.append(CarrierChanged(chosen))
        return events

    def _choose(self) -> int | None:
        for wanted in (PathState.UP, PathState.STALLED):
            ranked = sorted(
                (p.srtt if p.srtt is not None else float("inf"), i) for i, p in self._paths.items() if p.state is wanted
            )
            if ranked:
                return ranked[0][1]
        return None

    def next_deadline(self) -> float | None:
        deadlines = []
        for path_id, path in self._paths.items():
            if path.unanswered_since is None or path.state is PathState.DEAD:
                continue
            bound = self.stall_bound(path_id) if path.state is PathState.UP else self._dead_bound(path_id)
            deadlines.append(path.unanswered_since + bound)
        return min(deadlines) if deadlines else None

    def carrier(self) -> int | None:
        return self._carrier

    def state(self, path_id: int) -> PathState | None:
        path = self._paths.get(path_id)
        return None if path is None else path.state

    def media_paths(self, now: float) -> tuple[int, ...]:
        up = [i for i, p in self._paths.items() if p.state is PathState.UP]
        if not up:
            return tuple(i for i, p in self._paths.items() if p.state is PathState.STALLED)
        trouble = self._trouble_at is not None and now - self._trouble_at < self.limits.duplicate_window
        if trouble or len(up) == 1:
            return tuple(up)
        carrier = self._carrier
        if carrier in up:
            return (carrier,)
        return (up[0],)

    def snapshot(self) -> dict[str, Any]:
        return {
            "carrier": self._carrier,
            "paths": {
                str(i): {"kind": p.kind.value, "state": p.state.value, "srtt": p.srtt}
                for i, p in self._paths.items()
            },
        }


class SeqStamper:
    """
    The next sequence number per (channel, component), from 0, mod 2**32.
    """

    def __init__(self) -> None:
        self._next: dict[tuple[int, int], int] = {}

    def next(self, channel_id: int, component: int) -> int:
        key = (channel_id, component)
        seq = self._next.get(key, 0)
        self._next[key] = (seq + 1) & 0xFFFFFFFF
        return seq

    def forget(self, channel_id: int) -> None:
        self._next.pop((channel_id, 0), None)
        self._next.pop((channel_id, 1), None)


class Dedup:
    """
    Accepts each (channel, component, seq) at most once, within a window
    of C{window} sequence numbers behind the highest seen; older ones are
    refused.
    """

    def __init__(self, window: int = 1024) -> None:
        self.window = window
        # (channel, component) -> (highest seen, bitmask of the window below it)
        self._seen: dict[tuple[int, int], tuple[int, int]] = {}

    def accept(self, channel_id: int, component: int, seq: int) -> bool:
        key = (channel_id, component)
        entry = self._seen.get(key)
        if entry is None:
            self._seen[key] = (seq, 1)
            return True
        high, mask = entry
        ahead = (seq - high) & 0xFFFFFFFF
        if ahead == 0:
            return False
        if ahead < 0x80000000:
            mask = ((mask << ahead) | 1) & ((1 << self.window) - 1) if ahead < self.window else 1
            self._seen[key] = (seq, mask)
            return True
        behind = (high - seq) & 0xFFFFFFFF
        if behind >= self.window or mask >> behind & 1:
            return False
        self._seen[key] = (high, mask | 1 << behind)
        return True

    def forget(self, channel_id: int) -> None:
        self._seen.pop((channel_id, 0), None)
        self._seen.pop((channel_id, 1), None)
