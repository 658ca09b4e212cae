"""
Tests for L{spwm.testing.ports}.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from spwm.testing.ports import free_port


class FreePortTests(SynchronousTestCase):
    """
    L{free_port} finds ports that can be bound.
    """

    def test_udp_tcp_and_following(self) -> None:
        """
        The port is free for UDP and TCP, and the next one for TCP.
        """
        port = free_port(following=1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t, socket.socket() as t2:
            u.bind(("127.0.0.1", port))
            t.bind(("127.0.0.1", port))
            t2.bind(("127.0.0.1", port + 1))

    def test_below_the_ephemeral_range(self) -> None:
        """
        The ports come from under the kernel's ephemeral range, where no
        outgoing connection takes them as its local port between the test
        picking one and its listener binding it.
        """
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
        ports = {free_port(following=1) for _ in range(50)}
        self.assertTrue(all(p + 1 < low for p in ports), sorted(ports))
        self.assertGreater(len(ports), 1)

    def test_away_from(self) -> None:
        """
        With C{away_from}, neither the port nor the C{following} ones after
        it are among those ports (which another part of the test takes):
        draws that would meet them (here forced: the first three draws are
        next to them) are drawn again.
        """
        from spwm.testing import ports

        taken = free_port(following=2)
        real = ports._draw.randint
        forced = [taken - 2, taken, taken + 2]

        def draw(low: int, high: int) -> int:
            return forced.pop(0) if forced else real(low, high)

        self.patch(ports._draw, "randint", draw)
        port = free_port(following=3, away_from=range(taken, taken + 3))
        self.assertEqual(forced, [])
        self.assertTrue(set(range(port, port + 4)).isdisjoint(range(taken, taken + 3)), (port, taken))
