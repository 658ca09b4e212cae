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
