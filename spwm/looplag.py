# -*- test-case-name: tests.test_looplag -*-
"""
How late the reactor runs: a process short of CPU.

A half's CPU share says little about whether it keeps up: with CPU to
spare the reactor wakes for each datagram or two, so a contact point reads
90 % of a core at a load it carries with a millisecond to spare, and the
same at a load it cannot carry (C{docs/performance.md}, "One
contact-point worker alone").  What does tell is how late the reactor gets
round to a timer: every event (a datagram, a SIP message, a timer) waits
about as long.

L{LoopLag} asks for a timer every C{interval} and measures how much later
than asked for it runs.  Per C{window} it keeps the median, the 90th
percentile and the maximum; the status section (C{loop}) shows the last
window's and the highest maximum of the last minute.  When the 90th
percentile of a window is C{warn_lag} or more, the reactor was that late
for a tenth of the window or more (not one pause for a garbage collection
or a state save): one warning, at most one a minute.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from spwm.logthrottle import Every, ThrottledLog

#: Seconds between two timers.
INTERVAL = 0.1

#: Seconds of samples per figure.
WINDOW = 10.0

#: A window whose 90th percentile is this late (seconds) or more is warned of.
WARN_LAG = 0.005

#: Windows kept for the last minute's maximum.
MINUTE = 6


class LoopLag(Service):
    """
    The lateness of the reactor's timers, as a service (started and
    stopped with the half).

    @ivar late_windows: windows warned of since the start.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        interval: float = INTERVAL,
        window: float = WINDOW,
        warn_lag: float = WARN_LAG,
    ) -> None:
        if interval <= 0 or window < interval:
            raise ValueError("interval must be above 0 and window at least interval")
        self.clock = clock
        self.interval = interval
        self.window = window
        self.warn_lag = warn_lag
        self.late_windows = 0
        self._samples: list[float] = []
        self._window_end = 0.0
        self._due = 0.0
        self._timer: Any = None
        self._last: tuple[float, float, float] | None = None  # p50, p90, max
        self._maxima: deque[float] = deque(maxlen=MINUTE)
        self._warnings = ThrottledLog(self.log, clock, Every(60.0))

    def startService(self) -> None:
        super().startService()
        now = self.clock.seconds()
        self._window_end = now + self.window
        self._schedule(now)

    def stopService(self) -> None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, now: float) -> None:
        self._due = now + self.interval
        self._timer = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        now = self.clock.seconds()
        # a clock set back reads as on time, not as negative lateness
        self._samples.append(max(0.0, now - self._due))
        if now >= self._window_end:
            self._close_window()
            self._window_end = now + self.window
        self._schedule(now)

    def _close_window(self) -> None:
        figures = _figures(self._samples)
        self._samples = []
        if figures is None:
            return
        p50, p90, top = self._last = figures
        self._maxima.append(top)
        if p90 >= self.warn_lag:
            self.late_windows += 1
            self._warnings.warn(
                "late",
                "the event loop is running late: a tenth of its timers in the last {window:g} s ran"
                " {p90:.0f} ms late or more (median {p50:.1f} ms, at most {top:.0f} ms); this process is"
                " short of CPU, and media and SIP wait about as long (more --workers, or another"
                " machine: docs/operations.md, \"Capacity\"; {suppressed} such windows since the last line)",
                window=self.window,
                p50=1000 * p50,
                p90=1000 * p90,
                top=1000 * top,
            )

    def status(self) -> dict[str, Any]:
        """
        @return: the last window's median, 90th percentile and maximum
            lateness in milliseconds (before the first window is over:
            those of the timers so far; none yet: 0), the highest maximum
            of the last minute, and the windows warned of so far.
        """
        p50, p90, top = self._last or _figures(self._samples) or (0.0, 0.0, 0.0)
        return {
            "lag_ms_p50": round(1000 * p50, 2),
            "lag_ms_p90": round(1000 * p90, 2),
            "lag_ms_max": round(1000 * top, 2),
            "lag_ms_max_1m": round(1000 * max(self._maxima or [top]), 2),
            "late_windows": self.late_windows,
        }


def _figures(samples: list[float]) -> tuple[float, float, float] | None:
    """
    @return: the median, the 90th percentile and the maximum of
        C{samples}, or C{None} for none.
    """
    if not samples:
        return None
    ordered = sorted(samples)
    n = len(ordered)
    return ordered[n // 2], ordered[min(n - 1, (9 * n) // 10)], ordered[-1]
