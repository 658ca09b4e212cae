"""
Tests for the soak benchmark's choice of SIPp's media ports
(C{bench/soak.py}).
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from bench.soak import ECHO_PORTS, MEDIA_BASE, UAC_MEDIA_SWEEP
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
