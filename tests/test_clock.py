"""
Tests for L{spwm.clock}: the reactor's clock without the system clock's steps.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from spwm import clock
from spwm.clock import SteadyTime, StepWatch


class World:
    """
    A wall clock that can be set and a time elapsed that only goes on.
    """

    def __init__(self, wall: float = 1_700_000_000.0) -> None:
        self.wall_at = wall
        self.elapsed_at = 500.0

    def wall(self) -> float:
        return self.wall_at

    def elapsed(self) -> float:
        return self.elapsed_at

    def wait(self, seconds: float) -> None:
        self.wall_at += seconds
        self.elapsed_at += seconds

    def set_wall(self, by: float) -> None:
        self.wall_at += by


class SteadyTimeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.steady = SteadyTime(self.world.wall, self.world.elapsed)

    def test_reads_the_wall_clock_at_start_then_elapsed_time(self) -> None:
        self.assertEqual(self.steady.seconds(), 1_700_000_000.0)
        self.world.wait(2.5)
        self.assertEqual(self.steady.seconds(), 1_700_000_002.5)

    def test_setting_the_wall_clock_moves_nothing(self) -> None:
        """
        The system clock set back ten minutes, then forward an hour: the
        steady clock goes on by the time elapsed; the drift says how far
        the wall clock is from it.
        """
        self.world.wait(1.0)
        self.world.set_wall(-600.0)
        self.world.wait(1.0)
        self.assertEqual(self.steady.seconds(), 1_700_000_002.0)
        self.assertEqual(self.steady.drift(), -600.0)
        self.world.set_wall(3600.0)
        self.assertEqual(self.steady.seconds(), 1_700_000_002.0)
        self.assertEqual(self.steady.drift(), 3000.0)

    def test_wall_dates_only_after_a_step_is_seen(self) -> None:
        """
        L{SteadyTime.wall} gives a time of this clock as a date: unchanged
        until a step is seen (no rounding noise in records), then moved by
        the step.
        """
        self.assertEqual(self.steady.wall(1_700_000_000.25), 1_700_000_000.25)
        self.steady.set_by = -600.0
        self.assertEqual(self.steady.wall(1_700_000_000.25), 1_699_999_400.25)


class InstallTests(SynchronousTestCase):
    """
    L{clock.install} on a reactor (L{Clock} stands in: its timers are run by
    what its C{seconds} says, as a reactor's are).
    """

    def setUp(self) -> None:
        self.world = World()
        self.steady = SteadyTime(self.world.wall, self.world.elapsed)
        self.reactor = Clock()
        self.reactor.advance(self.world.wall())
        self.addCleanup(setattr, clock, "_installed", None)
        clock._installed = None

    def run_due(self) -> None:
        # Clock runs the calls whose time is not after its seconds()
        self.reactor.advance(0)

    def test_timers_keep_their_delays_through_a_step_back(self) -> None:
        """
        A timer scheduled before the install and one after: both fire after
        their delays although the system clock was set back ten minutes in
        between.
        """
        fired: list[str] = []
        self.reactor.callLater(2.0, fired.append, "before")
        self.assertIs(clock.install(self.reactor, self.steady), self.steady)
        self.reactor.callLater(3.0, fired.append, "after")
        self.world.wait(1.0)
        self.world.set_wall(-600.0)
        self.world.wait(1.0)
        self.run_due()
        self.assertEqual(fired, ["before"])
        self.world.wait(1.0)
        self.run_due()
        self.assertEqual(fired, ["before", "after"])

    def test_a_step_forward_fires_nothing_early(self) -> None:
        fired: list[str] = []
        clock.install(self.reactor, self.steady)
        self.reactor.callLater(30.0, fired.append, "keepalive")
        self.world.set_wall(3600.0)
        self.run_due()
        self.assertEqual(fired, [])
        self.world.wait(30.0)
        self.run_due()
        self.assertEqual(fired, ["keepalive"])

    def test_once_per_process(self) -> None:
        clock.install(self.reactor, self.steady)
        other = SteadyTime(self.world.wall, self.world.elapsed)
        self.assertIs(clock.install(Clock(), other), self.steady)
        self.assertIs(clock.installed(), self.steady)

    def test_wall_without_install(self) -> None:
        """
        Embedded (no install): L{clock.wall} gives its argument back.
        """
        self.assertIsNone(clock.installed())
        self.assertEqual(clock.wall(12.5), 12.5)


class StepWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.steady = SteadyTime(self.world.wall, self.world.elapsed)
        self.timer = Clock()
        self.watch = StepWatch(self.steady, self.timer, interval=10.0)
        self.watch.startService()
        self.addCleanup(self.watch.stopService)

    def look(self) -> list[str]:
        with capturedLogs() as events:
            self.world.wait(10.0)
            self.timer.advance(10.0)
        return [formatEvent(e) for e in events]

    def test_one_line_per_setting(self) -> None:
        self.assertEqual(self.look(), [])
        self.world.set_wall(-600.0)
        [line] = self.look()
        self.assertIn("the system clock was set back by 600.0 s", line)
        self.assertEqual(self.look(), [])
        self.assertEqual((self.watch.steps, self.steady.set_by), (1, -600.0))
        self.world.set_wall(3600.0)
        [line] = self.look()
        self.assertIn("set forward by 3600.0 s", line)
        self.assertEqual((self.watch.steps, self.steady.set_by), (2, 3000.0))

    def test_slewing_is_no_step(self) -> None:
        """
        Less than a second between two looks (NTP slews such differences)
        is not logged and does not move the dates.
        """
        self.world.set_wall(0.4)
        self.assertEqual(self.look(), [])
        self.assertEqual((self.watch.steps, self.steady.set_by), (0, 0.0))

    def test_stops(self) -> None:
        self.watch.stopService()
        self.assertEqual(self.timer.getDelayedCalls(), [])
