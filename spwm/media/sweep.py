# -*- test-case-name: tests.test_media_manager -*-
"""
The media manager's one timer: media inactivity and channels that wait
for their SDP are checked by one periodic sweep, not per packet.

The timer exists only while there is something to watch (L{Sweep.ensure}
when a stream or a waiting channel appears, L{Sweep.settle} when one
goes). What a sweep checks and releases is the manager's
(C{MediaManager._sweep}): it owns the streams.
"""

from __future__ import annotations

from typing import Any, Callable



def sweep_interval(inactivity_timeout: float) -> float:
    """
    Seconds between sweeps: a quarter of the inactivity timeout, at least
    1 and at most 10.
    """
    return max(1.0, min(10.0, inactivity_timeout / 4))


class Sweep:
    """
    One C{IDelayedCall}, armed while C{busy()}.

    @ivar clock: provides C{IReactorTime}.
    """

    def __init__(
        self,
        clock: Any,
        interval: Callable[[], float],
        check: Callable[[float], None],
        busy: Callable[[], bool],
    ) -> None:
        """
        @param interval: the seconds to the next sweep (asked each time it
            is armed).
        @param check: called with the time of each sweep.
        @param busy: whether there is anything left to watch; the timer is
            armed again after a sweep only then.  Asked at every
            L{settle}, i.e. at every stream release: it must answer in
            constant time (the manager counts its streams), not walk the
            calls in progress.
        """
        self.clock = clock
        self._interval = interval
        self._check = check
        self._busy = busy
        # an IDelayedCall (typed Any: mypy cannot call a zope interface's
        # methods on an instance)
        self._call: Any = None

    @property
    def armed(self) -> bool:
        """
        A sweep is scheduled.
        """
        return self._call is not None and self._call.active()

    def ensure(self) -> None:
        """
        Something to watch appeared: make sure a sweep is scheduled.
        """
        if not self.armed:
            self._call = self.clock.callLater(self._interval(), self._fire)

    def settle(self) -> None:
        """
        Something watched went: stop the timer if nothing is left.
        """
        if self._call is not None and not self._busy():
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _fire(self) -> None:
        self._call = None
        self._check(self.clock.seconds())
        if self._busy():
            self.ensure()
