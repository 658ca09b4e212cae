"""
Tests for the soak benchmark's choice of SIPp's media ports, its media
verdict and its reading of the agent's log (C{bench/soak.py}).
"""

from __future__ import annotations

import json
import os
import socket

from twisted.trial.unittest import SynchronousTestCase

from bench.soak import ECHO_PORTS, MEDIA_BASE, UAC_MEDIA_SWEEP, count_changes, media_verdict
from spwm.testing.ports import HIGH, LOW, free_udp_block


class SippMediaPortTests(SynchronousTestCase):
    def test_free_udp_block_skips_a_held_port(self) -> None:
        """
        The block found can be bound whole; a block with a port held by
        another socket is passed over.
        """
        first = free_udp_block(*ECHO_PORTS, 4)
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", first + 2))
        second = free_udp_block(*ECHO_PORTS, 4)
        self.assertGreaterEqual(second, first + 4)
        self.assertTrue(ECHO_PORTS[0] <= first and second + 4 <= ECHO_PORTS[1])
        self.assertRaises(RuntimeError, free_udp_block, first + 2, first + 3, 1)

    def test_layout(self) -> None:
        """
        The halves' ranges, SIPp's sweep of SDP ports, the UAS's echo
        ports and the ports L{free_port} hands out do not overlap.
        """
        size = 4000
        halves = (MEDIA_BASE, MEDIA_BASE + 2 * size)
        sweep = (halves[1], halves[1] + UAC_MEDIA_SWEEP)
        spans = sorted([halves, sweep, ECHO_PORTS, (LOW, HIGH + 1)])
        for (_, end), (start, _) in zip(spans, spans[1:]):
            self.assertLessEqual(end, start, spans)
        self.assertLessEqual(sweep[1], 65536)


class MediaVerdictTests(SynchronousTestCase):
    def test_silent_and_looping_calls(self) -> None:
        """
        From a half's call detail records: answered calls whose tunnel leg
        carried less than half the median are silent, more than twice
        looped; unanswered calls and lines that are not JSON are passed
        over.
        """

        def record(call_id: str, packets: int | None, answered: float | None = 9.0) -> str:
            legs = None if packets is None else {"lan": {"packets": 999}, "tunnel": {"packets": packets}}
            return json.dumps({"call_id": call_id, "answered_s": answered, "streams": [{"index": 0, "legs": legs}]})

        path = os.path.join(self.mktemp())
        lines = [record(f"c{n}", 246) for n in range(7)]
        lines += [record("dead", None), record("quiet", 3), record("loop", 59036), record("early", 0, None), "{torn"]
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        verdict = media_verdict(path, "agent")
        self.assertEqual(
            verdict,
            {"answered": 10, "median": 246, "silent": 2, "looped": 1, "examples": ["dead 0", "quiet 3", "loop 59036"]},
        )


class CountChangesTests(SynchronousTestCase):
    def test_the_counts_lines(self) -> None:
        """
        The lines of C{--tunnel-connections auto} opening or dropping
        connections (as an agent logged them), in order, without the
        logger's name; other lines, and a log that is not there, give
        nothing.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "2026-12-05T03:49:17+0000 [spwm.session.carrier.PathSessions#info] session a9f3: connection 1 attached (127.0.0.1:14977); 2 paths\n"
                "2026-12-05T03:51:42+0000 [spwm.session.carrier.PathKeeper#info] session d779: 1681 media datagrams/s on a lossy link; spreading them over 16 connections\n"
                "2026-12-05T04:23:07+0000 [spwm.session.carrier.PathKeeper#info] session 788c: the kernel retransmits on a connection whose round trip leaves no time for it; opening another (4 wanted)\n"
                "2026-12-05T04:24:43+0000 [spwm.session.carrier.PathKeeper#info] session d779: the media load that wanted them is gone; dropping 14 connections (2 wanted)\n"
                "2026-12-05T04:25:00+0000 [spwm.session.carrier.PathKeeper#info] another connection to the contact point failed: refused\n"
            )
        self.assertEqual(
            count_changes(path),
            [
                "2026-12-05T03:51:42+0000 session d779: 1681 media datagrams/s on a lossy link; spreading them over 16 connections",
                "2026-12-05T04:23:07+0000 session 788c: the kernel retransmits on a connection whose round trip leaves no time for it;"
                " opening another (4 wanted)",
                "2026-12-05T04:24:43+0000 session d779: the media load that wanted them is gone; dropping 14 connections (2 wanted)",
            ],
        )
        self.assertEqual(count_changes(path + ".gone"), [])
