# -*- test-case-name: tests.test_tunnel_timers -*-
"""
One timer structure for all the tunnels of a process.

Every tunnel needs one timer (its next keepalive, dead-peer or handshake
deadline, L{spwm.tunnel.connection.TunnelConnection.next_deadline}).  As a
C{reactor.callLater} each, 10,000 idle tunnels put 10,000 L{DelayedCall}s
in the reactor's heap, whose order is Python's C{DelayedCall.__lt__}:
every timer armed or fired, and every other C{callLater} of the process
(TLS's write aggregation schedules a C{callLater(0)} per write), costs
about C{2 log2(n)} such Python calls, and each object carries a dict and
its arguments (C{docs/performance.md}, "Idle tunnels").

L{SharedTimers} keeps the tunnels' deadlines in its own heap of plain
tuples C{(when, seq, timer)} (compared in C, by float and integer) and
holds one reactor timer, at its earliest deadline.  A deadline fires at
its time exactly, as a C{callLater} would: nothing is rounded, so the
keepalive's "a PING at most the interval after the last frame" is
unchanged.  A cancelled timer stays in the heap until its time comes or
until cancelled ones are more than half of the heap (then the heap is
rebuilt), so a cancel costs nothing.

L{shared_timers} gives the one instance of a clock (the reactor, or a
test's L{Clock}); the tunnel adapter asks it for its timer in place of
C{clock.callLater}, with the same C{active()}/C{cancel()}.
"""

from __future__ import annotations

import heapq
import weakref
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["SharedTimer", "SharedTimers", "shared_timers"]


class SharedTimer:
    """
    One deadline in a L{SharedTimers}: what L{SharedTimers.call_later}
    returns, with the C{active()}, C{cancel()} and C{getTime()} of a
    C{DelayedCall}.
    """

    __slots__ = ("time", "func", "_owner", "_state")

    # _state: 0 pending, 1 called, 2 cancelled

    def __init__(self, owner: SharedTimers, when: float, func: Callable[[], Any]) -> None:
        self._owner = owner
        self.time = when
        self.func = func
        self._state = 0

    def getTime(self) -> float:
        return self.time

    def active(self) -> bool:
        return self._state == 0

    def cancel(self) -> None:
        """
        Cancel it; a cancelled or called timer is left as it is (unlike a
        C{DelayedCall}, no error: the adapter checks C{active()} anyway).
        """
        if self._state == 0:
            self._state = 2
            self.func = _nothing
            self._owner._cancelled_one()


def _nothing() -> None:
    pass


class SharedTimers:
    """
    Deadlines of many owners on one reactor timer.

    @ivar clock: the clock (reactor) whose one timer drives them.
    @ivar fired: deadlines fired so far (a counter for tests and benches).
    @ivar wakeups: times the reactor timer fired.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, SharedTimer]] = []
        self._seq = 0
        self._cancelled = 0
        self._call: IDelayedCall | None = None
        self._call_at: float | None = None
        self._firing = False
        self.fired = 0
        self.wakeups = 0

    def __len__(self) -> int:
        """
        Pending (not cancelled) deadlines.
        """
        return len(self._heap) - self._cancelled

    def call_later(self, delay: float, func: Callable[[], Any]) -> SharedTimer:
        """
        Call C{func()} C{delay} seconds from now (as C{clock.callLater}).
        """
        when = self.clock.seconds() + max(0.0, delay)
        timer = SharedTimer(self, when, func)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, timer))
        if not self._firing and (self._call_at is None or when < self._call_at):
            self._arm()
        return timer

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2]._state == 0]
            heapq.heapify(self._heap)
            self._cancelled = 0
        if len(self._heap) == self._cancelled and self._call is not None and not self._firing:
            # nothing left: no wake-up at all
            if self._call.active():
                self._call.cancel()
            self._call = None
            self._call_at = None

    def _arm(self) -> None:
        """
        Set the one reactor timer to the earliest pending deadline.
        """
        heap = self._heap
        while heap and heap[0][2]._state != 0:
            heapq.heappop(heap)
            self._cancelled -= 1
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._call_at = None
        if heap:
            when = heap[0][0]
            self._call_at = when
            self._call = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._call = None
        self._call_at = None
        self.wakeups += 1
        now = self.clock.seconds()
        heap = self._heap
        pop = heapq.heappop
        # only what was pending before: a call_later(0) made by one of
        # these runs at the next wake-up, as with the reactor's timers
        last = self._seq
        self._firing = True
        try:
            while heap and heap[0][0] <= now and heap[0][1] <= last:
                timer = pop(heap)[2]
                if timer._state != 0:
                    self._cancelled -= 1
                    continue
                timer._state = 1
                func, timer.func = timer.func, _nothing
                self.fired += 1
                try:
                    func()
                except Exception:
                    self.log.failure("unexpected error in a tunnel timer")
        finally:
            self._firing = False
        self._arm()


_SHARED: weakref.WeakKeyDictionary[Any, SharedTimers] = weakref.WeakKeyDictionary()


def shared_timers(clock: IReactorTime) -> SharedTimers:
    """
    The one L{SharedTimers} of C{clock} (made on first use).
    """
    try:
        timers = _SHARED.get(clock)
    except TypeError:
        # not weakly referenceable: a structure of its own
        return SharedTimers(clock)
    if timers is None:
        timers = _SHARED[clock] = SharedTimers(clock)
    return timers
