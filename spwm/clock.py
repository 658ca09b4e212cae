# -*- test-case-name: tests.test_clock -*-
"""
The time a half goes by: the wall clock without its steps.

Twisted's reactor tells time with C{time.time()}, so every timer, timeout
and age in the process follows the system clock when it is set: NTP
stepping a router's clock at boot, an administrator's C{date -s}, a
virtual machine restored from a snapshot.  Set back by ten minutes, every
timer that was pending waits ten minutes more (a tunnel's reconnection,
SIP retransmissions, a connection's stall detection); set forward, every
one fires at once and every age looks that much older (connections taken
for dead, registrations for expired).

L{install} gives the reactor a clock that reads as the wall clock did when
the process started plus the time elapsed since, counted by
C{CLOCK_BOOTTIME} (C{CLOCK_MONOTONIC} where there is none): it never
steps, and it counts a suspended machine's sleep as the wall clock does
(a laptop that wakes finds its timers due, as after any wait).  Times
that people or other programs read as dates (the call records) are
turned into the wall clock's reading when they are written (L{wall}).
L{StepWatch} logs one line when the system clock is set, so that an
operator knows why the two differ.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from spwm._mypyc import mypyc_attr

__all__ = ["STEP", "SteadyTime", "StepWatch", "install", "installed", "wall"]

#: a change (s) of the wall clock against the steady one counted as a step
#: (NTP slews smaller differences; a step is a setting of the clock)
STEP = 1.0


def _elapsed_clock() -> Callable[[], float]:
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        try:
            time.clock_gettime(boottime)
        except OSError:
            return time.monotonic
        # a partial of the C function, not a lambda: the reactor reads its
        # clock some 50 times per SIP call, a Python call each saved
        return functools.partial(time.clock_gettime, boottime)
    return time.monotonic


class SteadyTime:
    """
    Seconds since the epoch as the wall clock read them at the start, plus
    the time elapsed since: a clock that never steps.

    @ivar seconds: the clock (a function of no arguments, for the reactor).
    @ivar set_by: how far (s) the wall clock has been set since the start,
        as L{StepWatch} last saw it (positive: forward); 0 until it sees a
        step (NTP's slewing moves both clocks alike).
    """

    def __init__(self, wall: Callable[[], float] = time.time, elapsed: Callable[[], float] | None = None) -> None:
        if elapsed is None:
            elapsed = _elapsed_clock()
        self._wall = wall
        offset = wall() - elapsed()
        self.set_by = 0.0

        def seconds() -> float:
            return elapsed() + offset

        self.seconds: Callable[[], float] = seconds

    def drift(self) -> float:
        """
        How far the wall clock reads from this clock now (s; positive:
        ahead of it).
        """
        return self._wall() - self.seconds()

    def wall(self, when: float) -> float:
        """
        C{when}, a time of this clock, as the wall clock reads it since its
        last setting.
        """
        return when + self.set_by


#: the clock L{install} gave the reactor, if any
_installed: SteadyTime | None = None


def installed() -> SteadyTime | None:
    """
    The steady clock of this process's reactor, or C{None} (embedded:
    the reactor keeps C{time.time()}).
    """
    return _installed


def wall(when: float) -> float:
    """
    C{when}, a time of the reactor's clock, as the wall clock reads it
    now: the same where L{install} was not called.
    """
    return when if _installed is None else _installed.wall(when)


def install(reactor: Any, steady: SteadyTime | None = None) -> SteadyTime:
    """
    Give C{reactor} the steady clock, before the process schedules its
    work (timers scheduled already are moved to it, keeping their delays).
    Once per process; a second call returns the clock installed.
    """
    global _installed
    if _installed is not None:
        return _installed
    steady = steady or SteadyTime()
    old = reactor.seconds
    shift = steady.seconds() - old()
    for call in reactor.getDelayedCalls():
        call.time += shift
        call.seconds = steady.seconds
    reactor.seconds = steady.seconds
    _installed = steady
    return steady


@mypyc_attr(native_class=False)
class StepWatch(Service):
    """
    Logs one line each time the system clock is set (moved by L{STEP} or
    more against the steady clock between two looks), while it runs.

    @ivar steps: how many such settings were seen.
    """

    log = Logger()

    def __init__(self, steady: SteadyTime, clock: Any, interval: float = 10.0) -> None:
        self.steady = steady
        self.steps = 0
        self._last = steady.drift()
        self._loop = LoopingCall(self.look)
        self._loop.clock = clock
        self._interval = interval

    def startService(self) -> None:
        Service.startService(self)
        self._last = self.steady.drift()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop.running:
            self._loop.stop()

    def look(self) -> None:
        drift = self.steady.drift()
        moved = drift - self._last
        self._last = drift
        if abs(moved) >= STEP:
            self.steps += 1
            self.steady.set_by = drift
            self.log.info(
                "the system clock was set {way} by {seconds:.1f} s; timers and ages go on by"
                " the time elapsed, call records are dated by the clock as it reads now",
                way="forward" if moved > 0 else "back",
                seconds=abs(moved),
            )
