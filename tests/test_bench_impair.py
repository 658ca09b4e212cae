"""
Tests for the impairment bench's report (C{bench/impair.py}): the
emulator's counters per phase and the table.  The bench itself needs root
and the bed; its figures come from L{spwm.testing.impair}, tested in
C{tests/test_testing_impair.py}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench.impair import diff, table
from spwm.testing.impair import direction_stats


class ReportTests(SynchronousTestCase):
    """
    What the bench prints.
    """

    def test_diff(self) -> None:
        """
        Counters are taken between two readings (a key missing before
        counts from 0); the queue's size and the lateness maximum are
        levels, not counts, and are kept as read.
        """
        before = {"up": {"in": 10, "lost": 1, "queued": 3, "slip_max_ms": 2.0},
                  "down": {}}
        after = {"up": {"in": 25, "lost": 1, "udp_in": 4, "queued": 0, "slip_max_ms": 2.5},
                 "down": {"in": 7}}
        self.assertEqual(
            diff(after, before),
            {"up": {"in": 15, "lost": 0, "udp_in": 4, "queued": 0, "slip_max_ms": 2.5},
             "down": {"in": 7}},
        )

    def test_table(self) -> None:
        """
        One row per path and direction; a direction that received nothing
        shows dashes for its delays instead of failing.
        """
        sent = {(1, i): i * 0.02 for i in range(4)}
        some = direction_stats(sent, [(1, 0, 0.05), (1, 1, 0.3)])
        none = direction_stats(sent, [])
        result = {"profile": "bad",
                  "spwm": {"up": some, "down": none},
                  "udp": {"up": some, "down": some}}
        lines = table([result])
        self.assertEqual(len(lines), 2 + 4)
        self.assertIn("| bad: 80 ms ± 20 ms, 5 % loss | SPWM strict | up | 4 | 2 | 1 (25.0 %) | 75.0 % | 50 / 280 / 280 / 280 |", lines[2])
        self.assertIn("| - / - / - / - |", lines[3])
