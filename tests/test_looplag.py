"""
Tests for L{spwm.looplag}: how late the reactor runs its timers.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from spwm.looplag import LoopLag


class _LateClock(Clock):
    """
    A clock whose timers run C{late} seconds after they are due (a busy
    reactor gets round to them that much later).
    """

    late = 0.0

    def run_for(self, seconds: float, step: float = 0.1) -> None:
        """
        Advance in steps; each due timer runs C{late} after its time.
        """
        end = self.seconds() + seconds
        while self.seconds() < end - 1e-9:
            calls = sorted(self.getDelayedCalls(), key=lambda c: c.getTime())
            if not calls:
                self.advance(step)
                continue
            target = calls[0].getTime() + self.late
            self.advance(max(0.0, target - self.seconds()))


def _warnings(events: list) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_level").name == "warn"]


class LoopLagTests(SynchronousTestCase):
    def test_before_the_first_window(self) -> None:
        """
        Before any timer the figures are 0; until the first window is
        over they are those of the timers so far, and nothing is warned of
        however late.
        """
        clock = _LateClock()
        lag = LoopLag(clock)
        self.assertEqual(
            lag.status(),
            {"lag_ms_p50": 0.0, "lag_ms_p90": 0.0, "lag_ms_max": 0.0, "lag_ms_max_1m": 0.0, "late_windows": 0},
        )
        lag.startService()
        clock.late = 0.03
        with capturedLogs() as events:
            clock.run_for(5.0)
        status = lag.status()
        self.assertAlmostEqual(status["lag_ms_p90"], 30.0, places=3)
        self.assertAlmostEqual(status["lag_ms_max_1m"], 30.0, places=3)
        self.assertEqual((status["late_windows"], _warnings(events)), (0, []))
        lag.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_on_time(self) -> None:
        """
        Timers that run when due read 0 ms late; no warning.
        """
        clock = _LateClock()
        lag = LoopLag(clock)
        lag.startService()
        with capturedLogs() as events:
            clock.run_for(25.0)
        status = lag.status()
        self.assertEqual((status["lag_ms_p50"], status["lag_ms_max"], status["late_windows"]), (0.0, 0.0, 0))
        self.assertEqual(_warnings(events), [])
        lag.stopService()

    def test_late_warned_once_a_minute(self) -> None:
        """
        Timers 20 ms late all through a window: the figures say 20 ms and
        one warning names it; the next windows, as late, count but write
        no line until a minute has passed; then one line with the count
        of windows in between.
        """
        clock = _LateClock()
        clock.late = 0.02
        lag = LoopLag(clock)
        lag.startService()
        with capturedLogs() as events:
            clock.run_for(10.5)
        status = lag.status()
        self.assertAlmostEqual(status["lag_ms_p50"], 20.0, places=3)
        self.assertAlmostEqual(status["lag_ms_p90"], 20.0, places=3)
        self.assertEqual(status["late_windows"], 1)
        [line] = _warnings(events)
        self.assertIn("the event loop is running late: a tenth of its timers in the last 10 s ran 20 ms late", line)
        self.assertIn("short of CPU", line)
        with capturedLogs() as events:
            clock.run_for(40.0)
        self.assertEqual(_warnings(events), [])
        self.assertGreaterEqual(lag.status()["late_windows"], 4)
        with capturedLogs() as events:
            clock.run_for(25.0)
        [line] = _warnings(events)
        self.assertIn("such windows since the last line", line)
        lag.stopService()

    def test_one_pause_is_not_warned(self) -> None:
        """
        One long pause in a window (a garbage collection, a state save)
        shows in the maximum, for a minute, but is no warning: the 90th
        percentile stays low.
        """
        clock = _LateClock()
        lag = LoopLag(clock)
        lag.startService()
        clock.run_for(3.0)
        clock.advance(0.3)  # one timer runs 300 ms late
        with capturedLogs() as events:
            clock.run_for(8.0)
        status = lag.status()
        self.assertEqual(status["lag_ms_p90"], 0.0)
        self.assertGreaterEqual(status["lag_ms_max"], 200.0)
        self.assertEqual(_warnings(events), [])
        clock.run_for(30.0)
        self.assertEqual(lag.status()["lag_ms_max"], 0.0)
        self.assertGreaterEqual(lag.status()["lag_ms_max_1m"], 200.0)
        clock.run_for(40.0)
        self.assertEqual(lag.status()["lag_ms_max_1m"], 0.0)
        lag.stopService()

    def test_bad_arguments(self) -> None:
        """
        The interval must be above 0 and the window at least one interval.
        """
        self.assertRaises(ValueError, LoopLag, Clock(), interval=0)
        self.assertRaises(ValueError, LoopLag, Clock(), interval=1.0, window=0.5)


class AssemblyTests(SynchronousTestCase):
    def test_contact_point_only(self) -> None:
        """
        A contact point measures its loop (status section C{loop}, a
        service started and stopped with it); an agent does not (it would
        wake a laptop ten times a second).
        """
        from twisted.internet.testing import MemoryReactorClock

        from spwm.tap.assembly import build_agent, build_contact
        from spwm.tap.options import AgentConfig, ContactConfig

        reactor = MemoryReactorClock()
        built = build_contact(ContactConfig.from_options({"plaintext": True}), reactor)
        self.assertEqual(built.status.document()["loop"]["late_windows"], 0)
        # the SIP runner's slices are in the status too (both halves)
        self.assertEqual(built.status.document()["sip"]["waiting"], 0)
        [loop] = [s for s in built.service if isinstance(s, LoopLag)]
        loop.startService()
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        loop.stopService()
        self.assertEqual(reactor.getDelayedCalls(), [])
        agent = build_agent(AgentConfig.from_options({"contact": "192.0.2.1:443", "plaintext": True}), MemoryReactorClock())
        self.assertNotIn("loop", agent.status.document())
        self.assertEqual(agent.status.document()["sip"]["deferred_turns"], 0)
