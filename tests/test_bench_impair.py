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

from bench.impair import attached_after, cut_cost, cut_gap, cut_lines, diff, gap_run, main, table
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

    def test_cut_cost(self) -> None:
        """
        What a cut cost beyond the link: the packets missed (lost or late)
        in its window less as many as the call missed at its own rate
        outside it, per stream, x 20 ms; never below 0.
        """
        sent = {(7, i): i * 0.02 for i in range(500)}  # 10 s; the window (cut 5.0): 4.0-9.0 s, 251 packets
        # outside the window 1 in 50 missed (lost or late), inside 10 missed
        received = [(7, i, i * 0.02 + 0.01) for i in range(500)
                    if not (i < 200 or i > 450) or i % 50 != 0]
        received = [(s, q, at + (0.2 if q in (300, 301) else 0.0)) for s, q, at in received  # late
                    if not 260 <= q < 268]  # lost
        missed, expected, cost = cut_cost(sent, received, cut=5.0)
        self.assertEqual(missed, 10)
        outside = 500 - 251
        self.assertAlmostEqual(expected, len([i for i in range(500) if not 200 <= i <= 450 and i % 50 == 0])
                               / outside * 251)
        self.assertAlmostEqual(cost, (10 - expected) * 0.02)
        # two streams: the same misses cost each stream half as much
        both = {**sent, **{(8, i): at for (_, i), at in sent.items()}}
        two = received + [(8, i, i * 0.02 + 0.01) for i in range(500)]
        self.assertAlmostEqual(cut_cost(both, two, cut=5.0)[2], (10 - expected) / 2 * 0.02)
        # a window better than the rest of the call costs nothing (not less)
        self.assertEqual(cut_cost(sent, [(7, i, i * 0.02) for i in range(500) if i % 10 or 200 <= i <= 450],
                                  cut=5.0), (0, 24 / 249 * 251, 0.0))

    def test_attached_after(self) -> None:
        """
        The replacement's attach after a cut: the first "connection N
        attached" line of the agent's log at or after the cut (the logs'
        clock, UTC); C{None} without one.
        """
        import datetime

        log = (
            "2026-12-05T21:28:39.500000 [spwm.session.carrier.PathSessions#info] session s: connection 3 attached"
            " (198.51.100.10:443); 4 paths\n"
            "2026-12-05T21:28:39.807034 [spwm.session.carrier.PathSessions#info] session s: a connection is gone\n"
            "2026-12-05T21:28:40.492759 [spwm.session.carrier.PathSessions#info] session s: connection 4 attached"
            " (198.51.100.10:443); 4 paths\n"
        )
        cut = datetime.datetime(2026, 12, 5, 21, 28, 39, 747181, tzinfo=datetime.timezone.utc).timestamp()
        after = attached_after(log, cut)
        assert after is not None
        self.assertAlmostEqual(after, 0.745578, places=5)
        self.assertIsNone(attached_after(log, cut + 1.0))

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

    def test_cut_lines_cost(self) -> None:
        """
        With the cut's cost, the line says it for each direction.
        """
        cut = {"port": 40000, "wall": 0.25, "up": 0.08, "down": 0.0, "up_from": 0.614, "down_from": None,
               "up_cost": (6, 2.5, 0.07), "down_cost": (0, 0.4, 0.0), "attached_after": 0.7456}
        self.assertEqual(cut_lines([{"profile": "bad", "spwm": {"auto": {"cut": cut}}}]), [
            "  bad     spwmauto: cut at 00:00:00.250000 UTC (port 40000); longest gap up 80 ms from +0.61 s, down 0 ms;"
            " audio the cut cost beyond the link's own rate: up 70 ms (6 missed in the window, 2.5 expected),"
            " down 0 ms (0 missed in the window, 0.4 expected); replacement attached after 0.75 s",
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
