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


class ClaimTests(SynchronousTestCase):
    """
    A port handed out is claimed, in a file every process of the user
    shares, for L{spwm.testing.ports.CLAIM_SECONDS}: no other draw (another
    trial worker's) gets it meanwhile, even though it is still free.
    """

    def setUp(self) -> None:
        from spwm.testing import ports

        self.ports = ports
        path = self.mktemp()
        self.patch(ports, "claims_path", lambda: path)
        self.path = path
        self.forced: list[int] = []
        real = ports._draw.randint

        def draw(low: int, high: int) -> int:
            return self.forced.pop(0) if self.forced else real(low, high)

        self.patch(ports._draw, "randint", draw)

    def test_claimed_not_handed_out_again(self) -> None:
        """
        A second draw that meets a port (or the following ports) handed out
        before draws again, although the port is still free; the file
        names each claimed port.
        """
        first = free_port(following=1)
        self.forced = [first, first - 1, first + 5]
        second = free_port(following=1)
        self.assertEqual((second, self.forced), (first + 5, []))
        with open(self.path) as f:
            claimed = {int(line.split()[0]) for line in f}
        self.assertEqual(claimed, {first, first + 1, first + 5, first + 6})

    def test_claims_expire(self) -> None:
        """
        A claim older than C{CLAIM_SECONDS} no longer counts, and is dropped
        from the file.
        """
        import time

        port = free_port()
        with open(self.path, "w") as f:
            f.write(f"{port} {time.time() - self.ports.CLAIM_SECONDS - 1:.3f}\n")
        self.forced = [port]
        self.assertEqual(free_port(), port)
        with open(self.path) as f:
            self.assertEqual(len(f.read().splitlines()), 1)

    def test_udp_block_claimed(self) -> None:
        """
        L{spwm.testing.ports.free_udp_block} claims its block: the next call
        over the same range gets the next block.
        """
        low = free_port(following=20)
        open(self.path, "w").close()  # those 21 free ports, unclaimed
        first = self.ports.free_udp_block(low, low + 20, 4)
        self.assertEqual(self.ports.free_udp_block(low, low + 20, 4), first + 4)
