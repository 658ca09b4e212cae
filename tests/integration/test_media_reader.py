"""
Integration tests for L{spwm.media.reader}: relay sockets read through one
inner epoll, on loopback with the real reactor.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import TestCase

from spwm.media.reader import (
    EpollRelaySockets,
    TwistedRelaySockets,
    relay_sockets_for,
)
from spwm.media.relay import MediaRelayEndpoint
from spwm.testing.ports import free_port
from tests.integration.test_tunnel_loopback import wait_until


class Collector:
    """
    Records the datagrams it is given; optionally fails on one payload.

    @ivar got: C{(data, addr)} in order of arrival.
    """

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.got: list[tuple[bytes, Any]] = []
        self.bound: Any = None
        self.fail_on = fail_on

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if data == self.fail_on:
            raise RuntimeError("deliberate failure")
        self.got.append((data, addr))

    def socket_bound(self, port: Any) -> None:
        self.bound = port


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class EpollRelaySocketsTests(TestCase):
    """
    L{EpollRelaySockets} with the running reactor.
    """

    timeout = 20

    def setUp(self) -> None:
        self.sockets = EpollRelaySockets(reactor)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.addCleanup(self.client.close)
        self.addCleanup(self.sockets.close)

    def _listen(self, collector: Any, host: str = "127.0.0.1") -> tuple[Any, int]:
        port = free_port(host) if host == "127.0.0.1" else 0
        relay = self.sockets.listen(port, collector, host, receive_buffer=65536)
        return relay, relay.getHost().port

    async def test_datagrams_reach_each_socket(self) -> None:
        """
        Datagrams sent to two relay sockets reach their own protocol, in
        order, with the sender's address; the protocol was told its port.
        """
        a, b = Collector(), Collector()
        relay_a, port_a = self._listen(a)
        relay_b, port_b = self._listen(b)
        self.assertIs(a.bound, relay_a)
        self.assertEqual(self.sockets.open_sockets, 2)
        for i in range(20):
            self.client.sendto(b"a%d" % i, ("127.0.0.1", port_a))
            self.client.sendto(b"b%d" % i, ("127.0.0.1", port_b))
        await wait_until(lambda: len(a.got) == 20 and len(b.got) == 20, 5)
        me = self.client.getsockname()
        self.assertEqual(a.got, [(b"a%d" % i, me) for i in range(20)])
        self.assertEqual(b.got, [(b"b%d" % i, me) for i in range(20)])

    async def test_failing_protocol_does_not_stop_others(self) -> None:
        """
        A protocol that raises loses its datagram (counted), and reading
        goes on for it and for every other socket.
        """
        bad, good = Collector(fail_on=b"boom"), Collector()
        _, port_bad = self._listen(bad)
        _, port_good = self._listen(good)
        self.client.sendto(b"boom", ("127.0.0.1", port_bad))
        self.client.sendto(b"after", ("127.0.0.1", port_bad))
        self.client.sendto(b"fine", ("127.0.0.1", port_good))
        await wait_until(lambda: bad.got and good.got, 5)
        self.assertEqual([d for d, _ in bad.got], [b"after"])
        self.assertEqual([d for d, _ in good.got], [b"fine"])
        self.assertEqual(self.sockets.read_errors, 1)
        self.flushLoggedErrors(RuntimeError)

    def test_port_in_use(self) -> None:
        """
        Binding a port that is taken raises L{CannotListenError} and leaves
        nothing open.
        """
        _, port = self._listen(Collector())
        with self.assertRaises(CannotListenError):
            self.sockets.listen(port, Collector(), "127.0.0.1")
        self.assertEqual(self.sockets.open_sockets, 1)

    def test_non_blocking(self) -> None:
        """
        A relay socket is non-blocking (made so at its creation): a read
        with nothing queued raises at once instead of stopping the reactor.
        """
        relay, _ = self._listen(Collector())
        self.assertFalse(relay.socket.getblocking())
        with self.assertRaises(BlockingIOError):
            relay.socket.recvfrom(2048)

    def test_stop_listening_closes_and_unregisters(self) -> None:
        """
        C{stopListening} closes the socket (the port is free again) and,
        for the last socket, takes the reader off the reactor; it is
        idempotent.
        """
        relay, port = self._listen(Collector())
        self.assertIn(self.sockets, reactor.getReaders())
        relay.stopListening()
        relay.stopListening()
        self.assertEqual(self.sockets.open_sockets, 0)
        self.assertNotIn(self.sockets, reactor.getReaders())
        self.assertEqual(relay.socket.fileno(), -1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("127.0.0.1", port))

    async def test_stopped_socket_gets_nothing(self) -> None:
        """
        After C{stopListening} of one socket the other still receives.
        """
        gone, kept = Collector(), Collector()
        relay_gone, port_gone = self._listen(gone)
        _, port_kept = self._listen(kept)
        relay_gone.stopListening()
        self.client.sendto(b"x", ("127.0.0.1", port_gone))
        self.client.sendto(b"y", ("127.0.0.1", port_kept))
        await wait_until(lambda: kept.got, 5)
        self.assertEqual(gone.got, [])

    async def test_relay_endpoint_sends_through_its_socket(self) -> None:
        """
        A L{MediaRelayEndpoint} bound through the reader latches onto the
        negotiated host and writes to it from its own socket.
        """
        endpoint = MediaRelayEndpoint()
        relay, port = self._listen(endpoint)
        sent: list[tuple[int, bytes, int]] = []
        endpoint.attach(lambda c, d, k: sent.append((c, d, k)), 7)
        me = self.client.getsockname()
        endpoint.expect("127.0.0.1", me[1])
        endpoint.send(b"to-phone")
        self.client.settimeout(5)
        data, source = self.client.recvfrom(100)
        self.assertEqual((data, source), (b"to-phone", ("127.0.0.1", port)))
        self.client.sendto(b"from-phone", ("127.0.0.1", port))
        await wait_until(lambda: sent, 5)
        self.assertEqual(sent, [(7, b"from-phone", 0)])
        self.assertEqual(endpoint.peer, me)

    async def test_relay_endpoint_latches_on_signalling_host(self) -> None:
        """
        A phone whose SDP names 127.0.0.2 (where nothing listens) and that
        sends from 127.0.0.1, its signalling host: the endpoint latches
        onto the address it sends from and replies reach it there.
        """
        endpoint = MediaRelayEndpoint()
        relay, port = self._listen(endpoint)
        sent: list[tuple[int, bytes, int]] = []
        told: list[Any] = []
        endpoint.attach(lambda c, d, k: sent.append((c, d, k)), 7)
        endpoint.on_latch = lambda address, named: told.append((address, named))
        me = self.client.getsockname()
        endpoint.expect("127.0.0.2", 4000, source="127.0.0.1")
        self.client.sendto(b"from-phone", ("127.0.0.1", port))
        await wait_until(lambda: sent, 5)
        endpoint.send(b"to-phone")
        self.client.settimeout(5)
        data, source = self.client.recvfrom(100)
        self.assertEqual((data, source), (b"to-phone", ("127.0.0.1", port)))
        self.assertEqual(sent, [(7, b"from-phone", 0)])
        self.assertEqual(told, [(me, ("127.0.0.2", 4000))])

    async def test_ipv6_address_is_host_and_port(self) -> None:
        """
        On IPv6 the protocol gets C{(host, port)}, as from C{listenUDP}.
        """
        if not _ipv6_loopback():
            raise self.skipTest("no IPv6 loopback on this machine")
        got = Collector()
        relay, port = self._listen(got, "::1")
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
            client.bind(("::1", 0))
            client.sendto(b"six", ("::1", port))
            await wait_until(lambda: got.got, 5)
            self.assertEqual(got.got, [(b"six", ("::1", client.getsockname()[1]))])

    def test_connection_lost_closes_all(self) -> None:
        """
        When the reactor drops the reader (shutdown), every socket is
        closed.
        """
        relays = [self._listen(Collector())[0] for _ in range(3)]
        reactor.removeReader(self.sockets)
        self.sockets.connectionLost(None)
        self.assertEqual(self.sockets.open_sockets, 0)
        self.assertEqual([r.socket.fileno() for r in relays], [-1, -1, -1])


class KeptSocketTests(TestCase):
    """
    L{EpollRelaySockets} with C{keep_for}: a released socket stays bound
    and read for the next call on its port.
    """

    timeout = 20

    def setUp(self) -> None:
        self.sockets = EpollRelaySockets(reactor, keep_for=5.0)
        self.addCleanup(self.sockets.close)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.addCleanup(self.client.close)

    def test_released_socket_taken_over(self) -> None:
        """
        A released socket stays bound (the port cannot be bound again) and
        is counted as kept, not open; the next listen on its port with the
        same interface and buffer takes that very socket over.
        """
        port = free_port()
        first = self.sockets.listen(port, Collector(), "127.0.0.1", receive_buffer=65536)
        fd = first.socket.fileno()
        first.stopListening()
        self.assertEqual((self.sockets.open_sockets, self.sockets.kept), (0, 1))
        self.assertIn(self.sockets, reactor.getReaders())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            self.assertRaises(OSError, other.bind, ("127.0.0.1", port))
        second = self.sockets.listen(port, Collector(), "127.0.0.1", receive_buffer=65536)
        self.assertIs(second.socket, first.socket)
        self.assertEqual(second.socket.fileno(), fd)
        self.assertEqual((self.sockets.open_sockets, self.sockets.kept, self.sockets.reused), (1, 0, 1))
        # the first holder's stop is stale: it closes nothing of the new one
        first.stopListening()
        self.assertEqual(self.sockets.open_sockets, 1)

    async def test_kept_socket_drops_then_delivers(self) -> None:
        """
        What reaches a kept socket is read and dropped (no buffer fills,
        no earlier holder gets it); the next holder gets only what comes
        after it took the socket over.
        """
        port = free_port()
        old = Collector()
        first = self.sockets.listen(port, old, "127.0.0.1", receive_buffer=65536)
        first.stopListening()
        self.client.sendto(b"late", ("127.0.0.1", port))
        await wait_until(lambda: self.sockets.kept_dropped == 1, 5)
        new = Collector()
        self.sockets.listen(port, new, "127.0.0.1", receive_buffer=65536)
        self.client.sendto(b"fresh", ("127.0.0.1", port))
        await wait_until(lambda: new.got, 5)
        self.assertEqual([d for d, _ in new.got], [b"fresh"])
        self.assertEqual(old.got, [])

    def test_other_buffer_binds_anew(self) -> None:
        """
        A listen on a kept port with another receive buffer closes the kept
        socket and binds a new one.
        """
        port = free_port()
        first = self.sockets.listen(port, Collector(), "127.0.0.1", receive_buffer=65536)
        first.stopListening()
        second = self.sockets.listen(port, Collector(), "127.0.0.1", receive_buffer=1 << 20)
        self.assertIsNot(second.socket, first.socket)
        self.assertEqual(first.socket.fileno(), -1)
        self.assertEqual((self.sockets.kept, self.sockets.reused), (0, 0))

    def test_any_port_not_kept(self) -> None:
        """
        A socket bound on port 0 (any) is closed at once: no later listen
        asks for its port.
        """
        relay = self.sockets.listen(0, Collector(), "127.0.0.1")
        relay.stopListening()
        self.assertEqual((self.sockets.kept, relay.socket.fileno()), (0, -1))

    async def test_kept_until_expired(self) -> None:
        """
        After C{keep_for} the kept sockets are closed (their ports free),
        and with nothing left the reader leaves the reactor.
        """
        self.sockets.keep_for = 0.2
        ports = [free_port() for _ in range(3)]
        relays = [self.sockets.listen(p, Collector(), "127.0.0.1") for p in ports]
        for relay in relays:
            relay.stopListening()
        self.assertEqual(self.sockets.kept, 3)
        await wait_until(lambda: self.sockets.kept == 0, 5)
        self.assertEqual([r.socket.fileno() for r in relays], [-1, -1, -1])
        self.assertNotIn(self.sockets, reactor.getReaders())
        for port in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
                again.bind(("127.0.0.1", port))

    def test_at_most_max_kept(self) -> None:
        """
        Beyond C{max_kept} kept sockets a released one is closed at once;
        the default budget is a quarter of the descriptor limit.
        """
        self.sockets.max_kept = 1
        first, second = (self.sockets.listen(free_port(), Collector(), "127.0.0.1") for _ in range(2))
        first.stopListening()
        second.stopListening()
        self.assertEqual(self.sockets.kept, 1)
        self.assertNotEqual(first.socket.fileno(), -1)
        self.assertEqual(second.socket.fileno(), -1)
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            self.assertEqual(EpollRelaySockets(reactor).max_kept, soft // 4)

    def test_out_of_descriptors_drops_kept(self) -> None:
        """
        When a new socket cannot be made for want of descriptors, the kept
        ones are closed and the socket made again.
        """
        kept = self.sockets.listen(free_port(), Collector(), "127.0.0.1")
        kept.stopListening()
        bind = self.sockets._bind
        refused: list[int] = []

        def out_of_descriptors(*args: Any) -> Any:
            if not refused:
                refused.append(1)
                raise CannotListenError("127.0.0.1", args[1], OSError(errno.EMFILE, "Too many open files"))
            return bind(*args)

        self.sockets._bind = out_of_descriptors  # type: ignore[method-assign]
        relay = self.sockets.listen(free_port(), Collector(), "127.0.0.1")
        self.assertEqual((self.sockets.kept, kept.socket.fileno(), self.sockets.open_sockets), (0, -1, 1))
        self.assertNotEqual(relay.socket.fileno(), -1)
        # without kept sockets the refusal stands
        refused.clear()
        with self.assertRaises(CannotListenError):
            self.sockets.listen(free_port(), Collector(), "127.0.0.1")

    def test_stop_keeping(self) -> None:
        """
        C{stop_keeping} (the half stops) closes the kept sockets and leaves
        a socket in use alone; released later, it is closed at once.
        """
        kept = self.sockets.listen(free_port(), Collector(), "127.0.0.1")
        used = self.sockets.listen(free_port(), Collector(), "127.0.0.1")
        kept.stopListening()
        self.sockets.stop_keeping()
        self.assertEqual((self.sockets.kept, kept.socket.fileno()), (0, -1))
        self.assertNotEqual(used.socket.fileno(), -1)
        self.assertIn(self.sockets, reactor.getReaders())
        used.stopListening()
        self.assertEqual((self.sockets.kept, used.socket.fileno()), (0, -1))
        self.assertNotIn(self.sockets, reactor.getReaders())


class ChoiceTests(TestCase):
    """
    L{relay_sockets_for} picks the reader by what the reactor can do.
    """

    def test_real_reactor(self) -> None:
        """
        The epoll reactor (or any with file descriptors, on Linux) gets
        L{EpollRelaySockets}.
        """
        self.assertIsInstance(relay_sockets_for(reactor), EpollRelaySockets)

    def test_reactor_without_descriptors(self) -> None:
        """
        A reactor that only does UDP gets L{TwistedRelaySockets}.
        """
        self.assertIsInstance(relay_sockets_for(object()), TwistedRelaySockets)


class BacklogTests(TestCase):
    """
    Several datagrams queued on one socket.
    """

    timeout = 20

    async def test_queued_datagrams_all_delivered(self) -> None:
        """
        Datagrams queued on one socket before the reactor runs (a burst, a
        video frame) are all delivered, in order, none lost.
        """
        sockets = EpollRelaySockets(reactor)
        self.addCleanup(sockets.close)
        got = Collector()
        relay = sockets.listen(free_port(), got, "127.0.0.1", receive_buffer=1 << 20)
        port = relay.getHost().port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for i in range(300):
                client.sendto(b"%d" % i, ("127.0.0.1", port))
            await wait_until(lambda: len(got.got) >= 300, 5)
        self.assertEqual([d for d, _ in got.got], [b"%d" % i for i in range(300)])
