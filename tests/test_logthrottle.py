"""
Tests for L{spwm.logthrottle}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from spwm.logthrottle import AnyOf, Every, PowersOfTwo, Tally, ThrottledLog, without_none_suppressed


def _capture() -> tuple[Logger, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return Logger(observer=events.append), events


class PolicyTests(SynchronousTestCase):
    def test_every(self) -> None:
        p = Every(10.0)
        self.assertTrue(p.due(1, None, 0.0))
        self.assertFalse(p.due(2, 0.0, 9.99))
        self.assertTrue(p.due(3, 0.0, 10.0))

    def test_powers_of_two(self) -> None:
        p = PowersOfTwo()
        due = [n for n in range(1, 70) if p.due(n, None, 0.0)]
        self.assertEqual(due, [1, 2, 4, 8, 16, 32, 64])
        self.assertFalse(p.due(0, None, 0.0))

    def test_or(self) -> None:
        p = Every(60.0) | PowersOfTwo()
        self.assertIsInstance(p, AnyOf)
        self.assertTrue(p.due(4, 59.0, 60.0))  # power of two
        self.assertFalse(p.due(5, 1.0, 60.0))  # neither
        self.assertTrue(p.due(5, 0.0, 60.0))  # a minute of quiet


class ThrottledLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.log, self.events = _capture()

    def test_every_counts_suppressed(self) -> None:
        t = ThrottledLog(self.log, self.clock, Every(10.0))
        fmt = "dropped: {reason} ({suppressed} more since the last such line)"
        self.assertTrue(t.warn("a", fmt, reason="a"))
        for _ in range(3):
            self.clock.advance(1)
            self.assertFalse(t.warn("a", fmt, reason="a"))
        # another key is not throttled by the first
        self.assertTrue(t.warn("b", fmt, reason="b"))
        self.clock.advance(7)  # 10 s after the first line of "a"
        self.assertTrue(t.warn("a", fmt, reason="a"))
        self.assertEqual(
            [formatEvent(e) for e in self.events],
            [
                "dropped: a",
                "dropped: b",
                "dropped: a (3 more since the last such line)",
            ],
        )
        self.assertEqual([e["log_level"] for e in self.events], [LogLevel.warn] * 3)

    def test_none_suppressed_says_nothing(self) -> None:
        """
        A line that follows none suppressed (the first, or one after a
        quiet while) leaves out its closing clause about them; only that
        clause, and only when it is the closing one.
        """
        t = ThrottledLog(self.log, self.clock, Every(10.0))
        fmt = "refused: {reason} ({suppressed} more such lines suppressed)"
        t.info("k", fmt, reason="x (y)")
        self.clock.advance(10)
        t.info("k", fmt, reason="x (y)")
        t.info("other", "kept ({suppressed} such windows) here", reason="z")
        self.assertEqual(
            [formatEvent(e) for e in self.events],
            ["refused: x (y)", "refused: x (y)", "kept (0 such windows) here"],
        )
        self.assertEqual(without_none_suppressed("a ({suppressed} more)", 2), "a ({suppressed} more)")
        self.assertEqual(without_none_suppressed("a ({suppressed} more)", 0), "a")

    def test_info_level(self) -> None:
        t = ThrottledLog(self.log, self.clock, Every(1.0))
        t.info("k", "x {count}")
        self.assertEqual(self.events[0]["log_level"], LogLevel.info)
        self.assertEqual(formatEvent(self.events[0]), "x 1")

    def test_powers_of_two_count(self) -> None:
        t = ThrottledLog(self.log, self.clock, PowersOfTwo())
        for _ in range(9):
            t.warn("k", "refused ({count} times so far)")
        self.assertEqual(
            [formatEvent(e) for e in self.events],
            [f"refused ({n} times so far)" for n in (1, 2, 4, 8)],
        )

    def test_callers_fields_win(self) -> None:
        t = ThrottledLog(self.log, self.clock, PowersOfTwo())
        t.warn("k", "{count} open", count=17)
        self.assertEqual(formatEvent(self.events[0]), "17 open")

    def test_external_count(self) -> None:
        # the caller's counter (say a metric that also counts unlogged
        # cases) is what the policy judges
        t = ThrottledLog(self.log, self.clock, PowersOfTwo())
        self.assertEqual(t.hit("k", count=3), None)
        self.assertEqual(t.hit("k", count=4), Tally(4, 1))

    def test_combined(self) -> None:
        t = ThrottledLog(self.log, self.clock, Every(60.0) | PowersOfTwo())
        logged = []
        for i in range(1, 8):
            if t.hit("k") is not None:
                logged.append(i)
            self.clock.advance(1)
        self.assertEqual(logged, [1, 2, 4])
        self.clock.advance(60)
        self.assertEqual(t.hit("k"), Tally(8, 3))  # a power of two; 5, 6, 7 suppressed
        self.clock.advance(60)
        self.assertEqual(t.hit("k"), Tally(9, 0))  # a minute of quiet
        self.assertIsNone(t.hit("k"))

    def test_bounded_forgets_oldest_line(self) -> None:
        t = ThrottledLog(self.log, self.clock, Every(10.0), max_keys=3)
        for key in ("a", "b", "c"):
            self.assertIsNotNone(t.hit(key))
            self.clock.advance(1)
        # "a" logs again later: now the newest line, "b" the oldest
        self.clock.advance(10)
        self.assertIsNotNone(t.hit("a"))
        self.assertIsNotNone(t.hit("d"))
        self.assertEqual(len(t), 3)
        # "d" made the table forget "b" (the oldest line), so "b" logs
        # again (and makes it forget "c"); "a" is still throttled
        self.assertIsNotNone(t.hit("b"))
        self.assertIsNone(t.hit("a"))
        self.assertEqual(len(t), 3)
        for i in range(100):
            t.hit(i)
        self.assertEqual(len(t), 3)

    def test_max_keys_positive(self) -> None:
        self.assertRaises(ValueError, ThrottledLog, self.log, self.clock, Every(1.0), max_keys=0)
