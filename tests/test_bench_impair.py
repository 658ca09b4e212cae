"""
Tests for the impairment bench's report (C{bench/impair.py}): the
emulator's counters per phase and the table.  The bench itself needs root
and the bed; its figures come from L{spwm.testing.impair}, tested in
C{tests/test_testing_impair.py}.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr

from twisted.trial.unittest import SynchronousTestCase

from bench.impair import cut_gap, cut_lines, diff, gap_run, main, table
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
        One row per phase (SPWM per number of connections, C{auto} after
        the numbers, then plain UDP) and direction, with the WAN bytes
        over plain UDP's, the cut's and the rebind's gap where there was
        one (and the same call's longest gap before it, in brackets, where
        known) and the connections held; a direction that received nothing
        shows dashes for its delays instead of failing.
        """
        sent = {(1, i): i * 0.02 for i in range(4)}
        some = direction_stats(sent, [(1, 0, 0.05), (1, 1, 0.3)])
        none = direction_stats(sent, [])
        wan = {"up": {"bytes_in": 1000}, "down": {"bytes_in": 2000}}
        result = {"profile": "bad",
                  "spwm": {2: {"up": some, "down": none, "wan": {"up": {"bytes_in": 2500}, "down": {"bytes_in": 4000}},
                               "cut": {"up": 0.04, "down": 0.0}},
                           "auto": {"up": some, "down": some, "wan": {"up": {}, "down": {}},
                                    "rebind": {"up": 0.06, "down": 0.1, "up_before": 0.14, "down_before": 0.02},
                                    "paths": (4, 3)},
                           1: {"up": some, "down": some, "wan": {"up": {}, "down": {}}}},
                  "udp": {"up": some, "down": some, "wan": wan}}
        lines = table([result])
        self.assertEqual(len(lines), 2 + 8)
        self.assertIn("| bad: 80 ms ± 20 ms, 5 % loss | SPWM strict, 1 conn. | up | 4 | 2 | 1 (25.0 %) | 75.0 % | 50 / 280 / 280 / 280 |", lines[2])
        self.assertTrue(lines[2].endswith("| 0.00 | - | - | - |"), lines[2])
        self.assertIn("| SPWM strict, 2 conn. | up |", lines[4])
        self.assertTrue(lines[4].endswith("| 2.50 | 40 | - | - |"), lines[4])
        self.assertIn("| - / - / - / - |", lines[5])
        self.assertTrue(lines[5].endswith("| 2.00 | 0 | - | - |"), lines[5])
        self.assertIn("| SPWM strict, auto conn. | up |", lines[6])
        self.assertTrue(lines[6].endswith("| 0.00 | - | 60 (140) | 4 / 3 |"), lines[6])
        self.assertTrue(lines[7].endswith("| 0.00 | - | 100 (20) | 4 / 3 |"), lines[7])
        self.assertIn("| plain UDP | down |", lines[9])
        self.assertTrue(lines[9].endswith("| 1.00 | - | - | - |"), lines[9])

    def test_cut_gap(self) -> None:
        """
        The cut's gap: the longest run of packets lost or late among those
        sent from 1 s before the cut to 4 s after it, in 20 ms packets;
        runs outside that window do not count.
        """
        sent = {(7, i): i * 0.02 for i in range(500)}  # 10 s
        received = [(7, i, i * 0.02 + 0.01) for i in range(500)
                    if not 250 <= i < 256 and not 10 <= i < 30 and i != 300]
        received.append((7, 300, 300 * 0.02 + 0.2))  # late
        self.assertAlmostEqual(cut_gap(sent, received, cut=5.0), 0.12)
        self.assertAlmostEqual(cut_gap(sent, received, cut=0.5), 0.40)
        self.assertEqual(cut_gap(sent, [(7, i, i * 0.02) for i in range(500)], cut=5.0), 0.0)

    def test_cut_gap_before(self) -> None:
        """
        What the link costs without a cut: the longest run among the
        packets the call sent before the cut's window (more than 1 s
        before the cut), to compare with the cut's gap.
        """
        sent = {(7, i): i * 0.02 for i in range(500)}
        received = [(7, i, i * 0.02 + 0.01) for i in range(500) if not 10 <= i < 17 and not 250 <= i < 252]
        self.assertAlmostEqual(cut_gap(sent, received, cut=5.0, before=True), 0.14)
        self.assertAlmostEqual(cut_gap(sent, received, cut=5.0), 0.04)
        # packets in the cut's window (here from 0 s) do not count before it
        self.assertAlmostEqual(cut_gap(sent, received, cut=1.0, before=True), 0.0)

    def test_gap_run_start(self) -> None:
        """
        With the gap, when its run started: the send time of its first
        packet less the cut's; C{None} without a gap.
        """
        sent = {(7, i): i * 0.02 for i in range(500)}
        received = [(7, i, i * 0.02 + 0.01) for i in range(500) if not 260 <= i < 264 and i != 240]
        gap, start = gap_run(sent, received, cut=5.0)
        self.assertAlmostEqual(gap, 0.08)
        assert start is not None
        self.assertAlmostEqual(start, 0.2)
        self.assertEqual(gap_run(sent, [(7, i, i * 0.02) for i in range(500)], cut=5.0), (0.0, None))

    def test_cut_lines(self) -> None:
        """
        A line per cut: its time on the logs' clock and where each
        direction's longest gap started relative to it.
        """
        result = {"profile": "bad",
                  "spwm": {"auto": {"cut": {"port": 40000, "wall": 0.25, "up": 0.08, "down": 0.0,
                                            "up_from": 0.614, "down_from": None}},
                           2: {"cut": {"up": 0.04, "down": 0.0}}}}
        self.assertEqual(cut_lines([result]), [
            "  bad     spwmauto: cut at 00:00:00.250000 UTC (port 40000); longest gap up 80 ms from +0.61 s, down 0 ms",
        ])

    def test_cut_lines_several(self) -> None:
        """
        With C{--cuts K}, a line per cut in order (the table shows the
        worst one).
        """
        first = {"port": 40000, "wall": 0.25, "up": 0.06, "down": 0.0, "up_from": 0.01, "down_from": None}
        second = {"port": 40002, "wall": 5.25, "up": 0.92, "down": 0.0, "up_from": 0.01, "down_from": None}
        result = {"profile": "clean", "spwm": {1: {"cut": second, "cuts": [first, second]}}}
        self.assertEqual(cut_lines([result]), [
            "  clean   spwm1: cut at 00:00:00.250000 UTC (port 40000); longest gap up 60 ms from +0.01 s, down 0 ms",
            "  clean   spwm1: cut at 00:00:05.250000 UTC (port 40002); longest gap up 920 ms from +0.01 s, down 0 ms",
        ])

    def test_cuts_option(self) -> None:
        """
        C{--cuts} is 1 to 10 and goes with C{--cut}: anything else is one
        usage line and exit status 2, before any bed is built.
        """
        for argv in (["--cuts", "3"], ["--cut", "--cuts", "0"], ["--cut", "--cuts", "11"]):
            with self.assertRaises(SystemExit) as raised:
                with redirect_stderr(io.StringIO()):
                    main(argv)
            self.assertEqual(raised.exception.code, 2, argv)
