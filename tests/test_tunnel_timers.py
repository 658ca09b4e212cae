"""
Tests for L{spwm.tunnel.timers}: one reactor timer for the deadlines of
all tunnels.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from spwm.tunnel.timers import SharedTimers, shared_timers


class SharedTimersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.timers = SharedTimers(self.clock)
        self.log: list[tuple[str, float]] = []

    def note(self, name: str):
        return lambda: self.log.append((name, self.clock.seconds()))

    def test_fires_in_order_at_exact_times(self) -> None:
        """
        Each deadline fires at its own time, earliest first, with one
        reactor timer pending at any time.
        """
        for name, delay in (("c", 3.25), ("a", 1.0), ("b", 2.5), ("a2", 1.0)):
            self.timers.call_later(delay, self.note(name))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.timers), 4)
        for _ in range(40):
            self.clock.advance(0.125)
        self.assertEqual(self.log, [("a", 1.0), ("a2", 1.0), ("b", 2.5), ("c", 3.25)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.timers.fired, 4)
        self.assertEqual(self.timers.wakeups, 3)

    def test_not_early(self) -> None:
        self.timers.call_later(10.0, self.note("x"))
        self.clock.advance(9.999)
        self.assertEqual(self.log, [])
        self.clock.advance(0.001)
        self.assertEqual(self.log, [("x", 10.0)])

    def test_earlier_deadline_moves_the_timer(self) -> None:
        self.timers.call_later(10.0, self.note("late"))
        self.timers.call_later(1.0, self.note("early"))
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [1.0])
        self.clock.advance(1.0)
        self.assertEqual(self.log, [("early", 1.0)])
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [10.0])

    def test_cancel(self) -> None:
        """
        A cancelled timer does not fire and is no longer active; when no
        timer is pending, no reactor timer is either.
        """
        t = self.timers.call_later(1.0, self.note("x"))
        self.assertTrue(t.active())
        t.cancel()
        t.cancel()
        self.assertFalse(t.active())
        self.assertEqual(len(self.timers), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(2)
        self.assertEqual(self.log, [])

    def test_called_is_inactive(self) -> None:
        t = self.timers.call_later(1.0, self.note("x"))
        self.clock.advance(1)
        self.assertFalse(t.active())
        t.cancel()
        self.assertEqual(self.timers.fired, 1)

    def test_rescheduled_from_callback(self) -> None:
        """
        A callback that sets a timer at once (delay 0) gets it at the next
        wake-up, not in the same run (so a callback cannot loop for ever
        inside one).
        """
        count = []

        def again() -> None:
            count.append(self.clock.seconds())
            if len(count) < 3:
                self.timers.call_later(0, again)

        self.timers.call_later(1.0, again)
        self.clock.advance(1.0)
        self.assertEqual(count, [1.0, 1.0, 1.0])
        self.assertEqual(self.timers.wakeups, 3)

    def test_error_logged_others_fire(self) -> None:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def boom() -> None:
            raise ValueError("boom")

        self.timers.call_later(1.0, boom)
        self.timers.call_later(1.0, self.note("after"))
        self.clock.advance(1.0)
        self.assertEqual(self.log, [("after", 1.0)])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 0)

    def test_cancelled_bounded(self) -> None:
        """
        Cancelled timers are dropped from the heap once they are more than
        half of it: re-arming one deadline again and again keeps the heap
        small.
        """
        keep = [self.timers.call_later(100.0, self.note("k")) for _ in range(10)]
        for i in range(10_000):
            self.timers.call_later(50.0 + i / 1000, self.note("x")).cancel()
        self.assertLess(len(self.timers._heap), 200)
        self.assertEqual(len(self.timers), 10)
        self.clock.advance(100)
        self.assertEqual(len(self.log), 10)
        self.assertFalse(any(t.active() for t in keep))

    def test_shared_per_clock(self) -> None:
        clock = Clock()
        self.assertIs(shared_timers(clock), shared_timers(clock))
        self.assertIsNot(shared_timers(clock), shared_timers(Clock()))

    @settings(max_examples=80)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["add", "cancel", "advance"]),
                st.floats(min_value=0, max_value=5, allow_nan=False),
                st.integers(0, 30),
            ),
            max_size=60,
        )
    )
    def test_same_as_call_later(self, ops) -> None:
        """
        Any sequence of timers set, cancelled and clock advances fires the
        same callbacks at the same times as the clock's own C{callLater}.
        """
        clock = Clock()
        ours = SharedTimers(clock)
        got: list[tuple[int, float]] = []
        want: list[tuple[int, float]] = []
        pairs = []
        for op, value, index in ops:
            if op == "add":
                n = len(pairs)
                a = ours.call_later(value, lambda n=n: got.append((n, clock.seconds())))
                b = clock.callLater(value, lambda n=n: want.append((n, clock.seconds())))
                pairs.append((a, b))
            elif op == "cancel" and pairs:
                a, b = pairs[index % len(pairs)]
                if b.active():
                    b.cancel()
                    a.cancel()
            else:
                clock.advance(value)
            self.assertEqual(sorted(got), sorted(want))
            for a, b in pairs:
                self.assertEqual(a.active(), b.active())
        clock.advance(10)
        self.assertEqual(sorted(got), sorted(want))
        self.assertEqual(len(ours), 0)
