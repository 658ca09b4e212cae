# -*- test-case-name: tests.test_testing_network -*-
"""
Tests for L{spwm.testing.network}: the fake network, its reactors and NATs.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, strategies as st
from twisted.internet import error
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
)
from twisted.internet.interfaces import (
    IConnector,
    IConsumer,
    IHalfCloseableProtocol,
    IHostnameResolver,
    IListeningPort,
    IPushProducer,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    ITCPTransport,
    IUDPTransport,
)
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from spwm.testing.network import OPEN, STRICT, FakeNetwork, Filtering, Link

LAN_A = "192.0.2.10"
LAN_B = "192.0.2.20"
NAT_PUBLIC = "198.51.100.2"
SERVER = "203.0.113.40"
OTHER = "203.0.113.50"


class Collect(DatagramProtocol):
    """
    Records datagrams; answers with C{b"re:"} and the datagram if C{echo}.
    """

    def __init__(self, echo: bool = False) -> None:
        self.seen: list[tuple[bytes, tuple[str, int]]] = []
        self.echo = echo
        self.refused = 0

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append((data, addr))
        if self.echo:
            self.transport.write(b"re:" + data, addr)

    def connectionRefused(self) -> None:
        self.refused += 1


class Recorder(Protocol):
    """
    Records bytes, connection and loss.
    """

    def __init__(self) -> None:
        self.data = b""
        self.made = False
        self.lost: Any = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.lost = reason


class Attempt(ClientFactory):
    """
    A client factory that keeps its protocol and failure.
    """

    def __init__(self) -> None:
        self.proto: Recorder | None = None
        self.failure: Any = None

    def buildProtocol(self, addr: Any) -> Recorder:
        self.proto = Recorder()
        self.proto.factory = self
        return self.proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.failure = reason


class ServerFactory(Factory):
    """
    Keeps every protocol it builds.
    """

    def __init__(self) -> None:
        self.protos: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        proto = Recorder()
        proto.peer_at_build = addr
        self.protos.append(proto)
        return proto


@implementer(IPushProducer)
class Producer:
    """
    A streaming producer that records pause and resume.
    """

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def build(policy: Any = OPEN, **nat_args: Any) -> tuple[FakeNetwork, Any]:
    """
    A LAN with two hosts behind a NAT, and two public hosts.
    """
    network = FakeNetwork(seed=7)
    lan = network.add_segment("lan")
    nat = network.add_nat("router", lan, NAT_PUBLIC, policy=policy, **nat_args)
    network.add_host("a", LAN_A, lan)
    network.add_host("b", LAN_B, lan)
    network.add_host("server", SERVER)
    network.add_host("other", OTHER)
    return network, nat


class InterfaceTests(SynchronousTestCase):
    """
    The fakes provide the Twisted interfaces they stand in for.
    """

    def test_reactor(self) -> None:
        """
        A host's reactor provides time, UDP, TCP and a pluggable resolver.
        """
        network, _ = build()
        reactor = network.hosts["a"].reactor
        for interface in (
            IReactorTime,
            IReactorUDP,
            IReactorTCP,
            IReactorPluggableNameResolver,
        ):
            self.assertTrue(verifyObject(interface, reactor))
        self.assertTrue(verifyObject(IHostnameResolver, reactor.nameResolver))

    def test_transports(self) -> None:
        """
        UDP ports, TCP listening ports, connectors and TCP transports provide
        their interfaces.
        """
        network, _ = build()
        udp = network.hosts["a"].reactor.listenUDP(0, Collect())
        self.assertTrue(verifyObject(IUDPTransport, udp))
        self.assertTrue(verifyObject(IListeningPort, udp))
        servers = ServerFactory()
        listening = network.hosts["server"].reactor.listenTCP(443, servers)
        self.assertTrue(verifyObject(IListeningPort, listening))
        client = Attempt()
        connector = network.hosts["a"].reactor.connectTCP(SERVER, 443, client)
        self.assertTrue(verifyObject(IConnector, connector))
        network.flush()
        for transport in (client.proto.transport, servers.protos[0].transport):
            for interface in (ITCPTransport, IConsumer, IPushProducer):
                self.assertTrue(verifyObject(interface, transport))

    def test_one_clock(self) -> None:
        """
        Every host's reactor tells the network clock's time.
        """
        network, _ = build()
        network.clock.advance(12.5)
        self.assertEqual({h.reactor.seconds() for h in network.hosts.values()}, {12.5})


class UDPTests(SynchronousTestCase):
    """
    UDP binding and delivery without NAT.
    """

    def setUp(self) -> None:
        self.network, _ = build()
        self.server = self.network.hosts["server"].reactor
        self.other = self.network.hosts["other"].reactor

    def test_port_in_use(self) -> None:
        """
        Binding a bound port fails, also across the wildcard and a specific
        address; after C{stopListening} the port is free again.
        """
        port = self.server.listenUDP(7, Collect())
        self.assertRaises(error.CannotListenError, self.server.listenUDP, 7, Collect())
        self.assertRaises(
            error.CannotListenError,
            self.server.listenUDP,
            7,
            Collect(),
            interface=SERVER,
        )
        port.stopListening()
        self.server.listenUDP(7, Collect(), interface=SERVER)
        self.assertRaises(error.CannotListenError, self.server.listenUDP, 7, Collect())

    def test_foreign_interface(self) -> None:
        """
        Binding to an address that is not the host's fails.
        """
        self.assertRaises(
            error.CannotListenError,
            self.server.listenUDP,
            7,
            Collect(),
            interface=OTHER,
        )

    def test_ephemeral(self) -> None:
        """
        Port 0 binds distinct ephemeral ports, reported by C{getHost}.
        """
        first = self.server.listenUDP(0, Collect()).getHost().port
        second = self.server.listenUDP(0, Collect()).getHost().port
        self.assertNotEqual(first, second)
        self.assertTrue(49152 <= first <= 65535)

    def test_write_rules(self) -> None:
        """
        Oversized datagrams, host names and a missing address are refused.
        """
        port = self.server.listenUDP(0, Collect())
        self.assertRaises(
            error.MessageLengthError, port.write, b"x" * 65508, (OTHER, 7)
        )
        self.assertRaises(
            error.InvalidAddressError, port.write, b"x", ("example.com", 7)
        )
        self.assertRaises(TypeError, port.write, b"x")

    def test_delivery_after_flush(self) -> None:
        """
        A datagram arrives, with its sender's address, only when the network
        is flushed.
        """
        receiver = Collect()
        self.other.listenUDP(7, receiver)
        sender = self.server.listenUDP(4000, Collect())
        sender.write(b"one", (OTHER, 7))
        self.assertEqual(receiver.seen, [])
        self.network.flush()
        self.assertEqual(receiver.seen, [(b"one", (SERVER, 4000))])
        self.assertEqual(list(sender.written), [(b"one", (OTHER, 7))])

    def test_connected(self) -> None:
        """
        A connected port writes to its peer and hears only from it; a
        datagram to a closed port calls its C{connectionRefused}.
        """
        listener = Collect()
        self.other.listenUDP(7, listener)
        proto = Collect()
        port = self.server.listenUDP(0, proto)
        port.connect(OTHER, 7)
        port.write(b"hi")
        stranger = self.network.hosts["a"].reactor.listenUDP(0, Collect())
        stranger.write(b"intruder", (SERVER, port.getHost().port))
        self.network.flush()
        self.assertEqual(listener.seen, [(b"hi", (SERVER, port.getHost().port))])
        self.assertEqual(proto.seen, [])
        self.assertRaises(RuntimeError, port.connect, OTHER, 8)

        closed = Collect()
        port2 = self.server.listenUDP(0, closed)
        port2.connect(OTHER, 9)
        port2.write(b"nobody")
        self.network.flush()
        self.assertEqual(closed.refused, 1)

    def test_truncated_to_max_packet_size(self) -> None:
        """
        A receiver gets at most its C{maxPacketSize} bytes of a datagram.
        """
        receiver = Collect()
        self.other.listenUDP(7, receiver, maxPacketSize=4)
        self.server.listenUDP(0, Collect()).write(b"abcdefgh", (OTHER, 7))
        self.network.flush()
        self.assertEqual(receiver.seen[0][0], b"abcd")

    def test_loopback(self) -> None:
        """
        A host reaches its own ports on 127.0.0.1, from 127.0.0.1.
        """
        receiver = Collect()
        self.server.listenUDP(7, receiver, interface="127.0.0.1")
        self.server.listenUDP(4001, Collect()).write(b"me", ("127.0.0.1", 7))
        self.network.flush()
        self.assertEqual(receiver.seen, [(b"me", ("127.0.0.1", 4001))])

    def test_flush_is_bounded(self) -> None:
        """
        Two echoing ports never go quiet: C{flush} fails loudly.
        """
        self.other.listenUDP(7, Collect(echo=True))
        ping = self.server.listenUDP(7, Collect(echo=True))
        ping.write(b"x", (OTHER, 7))
        self.assertRaises(AssertionError, self.network.flush, max_rounds=20)


class NATUDPTests(SynchronousTestCase):
    """
    UDP through the NAT.
    """

    def setUp(self) -> None:
        self.network, self.nat = build(udp_timeout=30.0)
        self.echo = Collect(echo=True)
        self.network.hosts["server"].reactor.listenUDP(7, self.echo)
        self.client = Collect()
        self.port = self.network.hosts["a"].reactor.listenUDP(5060, self.client)

    def test_rewrites_and_translates_back(self) -> None:
        """
        The server sees the NAT's public address and a mapped port; its
        answer reaches the inside host from the server's address.
        """
        self.port.write(b"ping", (SERVER, 7))
        self.network.flush()
        [(_, source)] = self.echo.seen
        self.assertEqual(source[0], NAT_PUBLIC)
        self.assertEqual(self.nat.mappings(), {(LAN_A, 5060): source})
        self.assertEqual(self.client.seen, [(b"re:ping", (SERVER, 7))])

    def test_endpoint_independent_mapping(self) -> None:
        """
        One inside port keeps one public port for every destination.
        """
        other = Collect()
        self.network.hosts["other"].reactor.listenUDP(7, other)
        self.port.write(b"1", (SERVER, 7))
        self.port.write(b"2", (OTHER, 7))
        self.network.flush()
        self.assertEqual(self.echo.seen[0][1], other.seen[0][1])

    def test_symmetric_mapping(self) -> None:
        """
        A symmetric NAT gives each destination its own public port.
        """
        network, _ = build(symmetric=True)
        seen = [Collect(), Collect()]
        network.hosts["server"].reactor.listenUDP(7, seen[0])
        network.hosts["other"].reactor.listenUDP(7, seen[1])
        port = network.hosts["a"].reactor.listenUDP(5060, Collect())
        port.write(b"1", (SERVER, 7))
        port.write(b"2", (OTHER, 7))
        network.flush()
        self.assertNotEqual(seen[0].seen[0][1], seen[1].seen[0][1])

    def test_unsolicited_dropped(self) -> None:
        """
        With a mapping open to the server, a datagram from another host (or
        another port of the server) to that public port is dropped and
        counted.
        """
        self.port.write(b"ping", (SERVER, 7))
        self.network.flush()
        public = self.echo.seen[0][1]
        self.network.hosts["other"].reactor.listenUDP(0, Collect()).write(b"in", public)
        self.network.hosts["server"].reactor.listenUDP(8, Collect()).write(
            b"in", public
        )
        self.network.hosts["server"].reactor.listenUDP(0, Collect()).write(
            b"in", (NAT_PUBLIC, 40000)
        )
        self.network.flush()
        self.assertEqual(self.client.seen, [(b"re:ping", (SERVER, 7))])
        self.assertEqual(self.nat.counters["dropped_unsolicited_udp"], 3)
        self.assertEqual([d.reason for d in self.nat.drops], ["unsolicited"] * 3)

    def test_endpoint_independent_filtering(self) -> None:
        """
        A full-cone NAT lets anyone reach an open mapping.
        """
        network, nat = build(filtering=Filtering.ENDPOINT_INDEPENDENT)
        network.hosts["server"].reactor.listenUDP(7, Collect())
        client = Collect()
        port = network.hosts["a"].reactor.listenUDP(5060, client)
        port.write(b"open", (SERVER, 7))
        network.flush()
        [public] = nat.mappings().values()
        network.hosts["other"].reactor.listenUDP(9, Collect()).write(b"hello", public)
        network.flush()
        self.assertEqual(client.seen, [(b"hello", (OTHER, 9))])

    def test_mapping_expires(self) -> None:
        """
        A mapping idle for longer than the UDP timeout is gone: a late
        answer is dropped and the next datagram gets a new public port.
        """
        self.port.write(b"ping", (SERVER, 7))
        self.network.flush()
        public = self.echo.seen[0][1]
        self.network.advance(31)
        late = self.network.hosts["server"].reactor.listenUDP(0, Collect())
        self.assertEqual(self.nat.mappings(), {})
        self.assertEqual(self.nat.counters["expired"], 1)
        self.port.write(b"again", (SERVER, 7))
        self.network.flush()
        self.assertNotEqual(self.echo.seen[1][1], public)
        late.write(b"late", public)
        self.network.flush()
        self.assertEqual(self.nat.counters["dropped_unsolicited_udp"], 1)

    def test_outbound_refreshes(self) -> None:
        """
        Outbound traffic every 20 s keeps a mapping with a 30 s timeout.
        """
        for _ in range(5):
            self.port.write(b"keep", (SERVER, 7))
            self.network.advance(20)
        self.assertEqual(len({addr for _, addr in self.echo.seen}), 1)
        self.assertEqual(len(self.client.seen), 5)

    def test_strict_policy_drops_udp(self) -> None:
        """
        A strict NAT lets no UDP out, and counts it.
        """
        network, nat = build(policy=STRICT)
        echo = Collect()
        network.hosts["server"].reactor.listenUDP(7, echo)
        network.hosts["a"].reactor.listenUDP(0, Collect()).write(b"x", (SERVER, 7))
        network.flush()
        self.assertEqual(echo.seen, [])
        self.assertEqual(nat.counters["dropped_egress_udp"], 1)
        self.assertEqual(nat.mappings(), {})

    def test_lan_traffic_bypasses_nat(self) -> None:
        """
        Hosts on the same LAN talk directly, even behind a strict NAT.
        """
        network, nat = build(policy=STRICT)
        b = Collect()
        network.hosts["b"].reactor.listenUDP(7, b)
        network.hosts["a"].reactor.listenUDP(6000, Collect()).write(b"x", (LAN_B, 7))
        network.flush()
        self.assertEqual(b.seen, [(b"x", (LAN_A, 6000))])
        self.assertEqual(nat.counters["translated_out"], 0)

    def test_unroutable(self) -> None:
        """
        A private address is not reachable from the public side.
        """
        self.network.hosts["server"].reactor.listenUDP(0, Collect()).write(
            b"x", (LAN_A, 5060)
        )
        self.network.flush()
        self.assertEqual(self.client.seen, [])
        self.assertEqual(self.network.counters["udp_unroutable"], 1)

    def test_static_forward(self) -> None:
        """
        A static port forward lets inbound datagrams in, whatever the policy.
        """
        network, nat = build(policy=STRICT)
        nat.forward_port("udp", 5060, LAN_A, 5060)
        inside = Collect(echo=True)
        network.hosts["a"].reactor.listenUDP(5060, inside)
        outside = Collect()
        network.hosts["server"].reactor.listenUDP(9, outside).write(
            b"call", (NAT_PUBLIC, 5060)
        )
        network.flush()
        self.assertEqual(inside.seen, [(b"call", (SERVER, 9))])
        self.assertEqual(outside.seen, [(b"re:call", (NAT_PUBLIC, 5060))])


class LossAndDelayTests(SynchronousTestCase):
    """
    Links lose and delay datagrams, deterministically.
    """

    def lose(self, seed: int) -> list[bytes]:
        network = FakeNetwork(seed=seed)
        a = network.add_host("a", SERVER)
        b = network.add_host("b", OTHER)
        b.link = Link(loss=0.2)
        receiver = Collect()
        b.reactor.listenUDP(7, receiver)
        port = a.reactor.listenUDP(0, Collect())
        for i in range(1000):
            port.write(b"%d" % i, (OTHER, 7))
        network.flush()
        self.assertEqual(network.counters["udp_lost"] + len(receiver.seen), 1000)
        return [d for d, _ in receiver.seen]

    def test_loss_is_seeded(self) -> None:
        """
        About the link's share of datagrams is lost; the same seed loses the
        same ones, another seed others.
        """
        first = self.lose(1)
        self.assertTrue(700 < len(first) < 900, len(first))
        self.assertEqual(first, self.lose(1))
        self.assertNotEqual(first, self.lose(2))

    def test_delay(self) -> None:
        """
        A datagram crosses two delayed links in the sum of their delays.
        """
        network = FakeNetwork()
        a = network.add_host("a", SERVER)
        b = network.add_host("b", OTHER)
        a.link = Link(delay=0.01)
        b.link = Link(delay=0.02)
        receiver = Collect()
        b.reactor.listenUDP(7, receiver)
        a.reactor.listenUDP(0, Collect()).write(b"x", (OTHER, 7))
        network.advance(0.029)
        self.assertEqual(receiver.seen, [])
        network.advance(0.002)
        self.assertEqual(len(receiver.seen), 1)

    def test_bad_link(self) -> None:
        """
        Loss outside [0, 1] and negative delay are refused.
        """
        self.assertRaises(ValueError, Link, loss=1.5)
        self.assertRaises(ValueError, Link, delay=-1)


class TCPTests(SynchronousTestCase):
    """
    TCP connections on the fake network and through the NAT.
    """

    def setUp(self) -> None:
        self.network, self.nat = build(policy=STRICT)
        self.servers = ServerFactory()
        self.network.hosts["server"].reactor.listenTCP(443, self.servers)

    def connect(
        self, port: int = 443, host: str = SERVER, src: str = "a", timeout: float = 5
    ) -> Attempt:
        attempt = Attempt()
        self.network.hosts[src].reactor.connectTCP(host, port, attempt, timeout=timeout)
        return attempt

    def test_through_nat(self) -> None:
        """
        A connection from the inside reaches the server, which sees the NAT's
        public address; bytes flow both ways.
        """
        client = self.connect()
        self.assertIsNone(client.proto)
        self.network.flush()
        [server] = self.servers.protos
        self.assertTrue(client.proto.made and server.made)
        self.assertEqual(server.transport.getPeer().host, NAT_PUBLIC)
        self.assertEqual(server.peer_at_build.host, NAT_PUBLIC)
        self.assertEqual(client.proto.transport.getPeer().host, SERVER)
        self.assertEqual(client.proto.transport.getHost().host, LAN_A)
        client.proto.transport.write(b"hello")
        server.transport.write(b"world")
        self.network.flush()
        self.assertEqual((server.data, client.proto.data), (b"hello", b"world"))

    def test_close(self) -> None:
        """
        C{loseConnection} delivers what was written, then ends both sides
        cleanly; the NAT forgets the connection.
        """
        client = self.connect()
        self.network.flush()
        [server] = self.servers.protos
        client.proto.transport.write(b"last words")
        client.proto.transport.loseConnection()
        self.network.flush()
        self.assertEqual(server.data, b"last words")
        server.lost.trap(error.ConnectionDone)
        client.proto.lost.trap(error.ConnectionDone)
        self.assertEqual(self.nat.mappings(), {})

    def test_abort(self) -> None:
        """
        C{abortConnection} resets the peer.
        """
        client = self.connect()
        self.network.flush()
        [server] = self.servers.protos
        server.transport.abortConnection()
        self.network.flush()
        server.lost.trap(error.ConnectionAborted)
        client.proto.lost.trap(error.ConnectionLost)

    def test_strict_policy_tcp(self) -> None:
        """
        A strict NAT lets TCP to 443 out but not to other ports: that
        attempt times out.
        """
        self.network.hosts["server"].reactor.listenTCP(80, ServerFactory())
        client = self.connect(80)
        self.network.advance(6)
        client.failure.trap(error.TimeoutError)
        self.assertEqual(self.nat.counters["dropped_egress_tcp"], 1)

    def test_refused(self) -> None:
        """
        A port without a listener refuses the connection.
        """
        network, _ = build()
        attempt = Attempt()
        network.hosts["a"].reactor.connectTCP(SERVER, 8080, attempt)
        network.flush()
        attempt.failure.trap(error.ConnectionRefusedError)

    def test_inbound_connection_dropped(self) -> None:
        """
        A connection attempt from outside to the NAT's public address is
        dropped and times out, also on the port of an existing mapping.
        """
        client = self.connect()
        self.network.flush()
        public = self.servers.protos[0].transport.getPeer().port
        inside = self.network.hosts["a"].reactor
        inside.listenTCP(public, ServerFactory())
        attempts = [self.connect(port, NAT_PUBLIC, "other") for port in (public, 22)]
        self.network.advance(6)
        for attempt in attempts:
            attempt.failure.trap(error.TimeoutError)
        self.assertEqual(self.nat.counters["dropped_unsolicited_tcp"], 2)
        self.assertTrue(client.proto.transport.connected)

    def test_static_forward_tcp(self) -> None:
        """
        A static forward lets a connection in to the inside host.
        """
        self.nat.forward_port("tcp", 443, LAN_B, 8443)
        inside = ServerFactory()
        self.network.hosts["b"].reactor.listenTCP(8443, inside)
        client = self.connect(443, NAT_PUBLIC, "other")
        self.network.flush()
        client.proto.transport.write(b"in")
        self.network.flush()
        self.assertEqual(inside.protos[0].data, b"in")
        self.assertEqual(inside.protos[0].transport.getPeer().host, OTHER)
        self.assertEqual(client.proto.transport.getPeer().host, NAT_PUBLIC)

    def test_listen_rules(self) -> None:
        """
        A TCP port in use cannot be bound again.
        """
        reactor = self.network.hosts["server"].reactor
        self.assertRaises(error.CannotListenError, reactor.listenTCP, 443, Factory())

    def test_expired_mapping_hangs(self) -> None:
        """
        Once the NAT forgot an idle connection, its bytes vanish without an
        error on either side.
        """
        network, nat = build(tcp_timeout=60)
        servers = ServerFactory()
        network.hosts["server"].reactor.listenTCP(443, servers)
        client = Attempt()
        network.hosts["a"].reactor.connectTCP(SERVER, 443, client)
        network.flush()
        network.advance(61)
        client.proto.transport.write(b"anyone?")
        servers.protos[0].transport.write(b"hello?")
        network.flush()
        self.assertEqual((servers.protos[0].data, client.proto.data), (b"", b""))
        self.assertIsNone(client.proto.lost)
        self.assertEqual(client.proto.transport.buffered, 7)
        self.assertEqual(nat.counters["dropped_no_mapping"], 2)

    def test_endpoints(self) -> None:
        """
        Twisted's endpoints work over the fake reactor, HostnameEndpoint
        with a name from the network's table.
        """
        self.network.add_name("server.example", SERVER)
        got: list[Any] = []
        reactor = self.network.hosts["a"].reactor
        HostnameEndpoint(reactor, "server.example", 443).connect(
            Factory.forProtocol(Recorder)
        ).addCallback(got.append)
        TCP4ServerEndpoint(self.network.hosts["other"].reactor, 8000).listen(
            Factory.forProtocol(Recorder)
        )
        TCP4ClientEndpoint(self.network.hosts["server"].reactor, OTHER, 8000).connect(
            Factory.forProtocol(Recorder)
        ).addCallback(got.append)
        self.network.flush()
        self.assertEqual(len(got), 2)
        self.assertEqual(got[0].transport.getPeer().host, SERVER)
        self.network.advance(1)
        self.assertEqual(self.network.clock.getDelayedCalls(), [])

    def test_backpressure_rate(self) -> None:
        """
        On a slow link a large write pauses the sender's producer; it is
        resumed once the link has carried enough.
        """
        self.network.hosts["a"].link = Link(rate=100_000)
        client = self.connect()
        self.network.flush()
        producer = Producer()
        transport = client.proto.transport
        transport.registerProducer(producer, True)
        transport.write(b"x" * 200_000)
        self.assertEqual(producer.events, ["pause"])
        self.network.advance(1)
        self.assertEqual(producer.events, ["pause"])
        self.network.advance(1.5)
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertEqual(len(self.servers.protos[0].data), 200_000)

    def test_backpressure_reader(self) -> None:
        """
        A receiver that stops reading makes the sender's buffer fill and its
        producer pause; reading again delivers everything in order and
        resumes the producer.
        """
        client = self.connect()
        self.network.flush()
        [server] = self.servers.protos
        server.transport.pauseProducing()
        producer = Producer()
        client.proto.transport.registerProducer(producer, True)
        payload = bytes(range(256)) * 400
        client.proto.transport.write(payload)
        self.network.flush()
        self.assertEqual((server.data, producer.events), (b"", ["pause"]))
        server.transport.resumeProducing()
        self.network.flush()
        self.assertEqual(server.data, payload)
        self.assertEqual(producer.events, ["pause", "resume"])

    @given(st.lists(st.binary(min_size=1, max_size=3000), max_size=30))
    def test_stream_intact(self, chunks: list[bytes]) -> None:
        """
        Whatever is written arrives whole and in order through the NAT.
        """
        network, _ = build()
        servers = ServerFactory()
        network.hosts["server"].reactor.listenTCP(443, servers)
        client = Attempt()
        network.hosts["a"].reactor.connectTCP(SERVER, 443, client)
        network.flush()
        for chunk in chunks:
            client.proto.transport.write(chunk)
        network.flush()
        self.assertEqual(servers.protos[0].data, b"".join(chunks))


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    """
    Answers the end of the peer's stream with C{b"bye"} and its own end.
    """

    def readConnectionLost(self) -> None:
        self.transport.write(b"bye")
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class Pull:
    """
    A pull producer that writes C{count} chunks, one per request.
    """

    def __init__(self, transport: Any, count: int) -> None:
        self.transport = transport
        self.left = count

    def resumeProducing(self) -> None:
        if self.left:
            self.left -= 1
            self.transport.write(b"chunk")
        else:
            self.transport.unregisterProducer()

    def stopProducing(self) -> None:
        self.left = 0


class TCPMoreTests(SynchronousTestCase):
    """
    Half-close and pull producers.
    """

    def test_half_close(self) -> None:
        """
        After C{loseWriteConnection} a half-closeable peer reads the end of
        the stream and can still answer.
        """
        network, _ = build()
        network.hosts["server"].reactor.listenTCP(443, Factory.forProtocol(HalfCloser))
        client = Attempt()
        network.hosts["a"].reactor.connectTCP(SERVER, 443, client)
        network.flush()
        client.proto.transport.write(b"question")
        client.proto.transport.loseWriteConnection()
        network.flush()
        self.assertEqual(client.proto.data, b"bye")
        client.proto.lost.trap(error.ConnectionDone)

    def test_pull_producer(self) -> None:
        """
        A pull producer is asked for more each time the buffer drains.
        """
        network, _ = build()
        servers = ServerFactory()
        network.hosts["server"].reactor.listenTCP(443, servers)
        client = Attempt()
        network.hosts["a"].reactor.connectTCP(SERVER, 443, client)
        network.flush()
        transport = client.proto.transport
        transport.registerProducer(Pull(transport, 3), False)
        network.flush()
        self.assertEqual(servers.protos[0].data, b"chunk" * 3)
        self.assertIsNone(transport.producer)
