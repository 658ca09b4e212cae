"""
Tests for TCP media (RFC 4145, MSRP): L{spwm.media.tcp}, the TCP parts of
L{spwm.media.manager} and L{spwm.sdp.rewrite_tcp_media}.

No real sockets: a fake TCP reactor whose listeners accept and whose
connectors complete when the test says so, transports that record what is
written, and a fake tunnel with stream channels whose queue the test can
hold back.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from spwm.limits import TunnelLimits
from spwm.media.manager import MediaManager
from spwm.media.relay import AllowPolicy
from spwm.media.tcp import TcpMediaEndpoint, _SideProtocol
from spwm.sdp import SdpError, TcpRewrite, parse_sdp, rewrite_tcp_media
from spwm.tunnel.frames import ChannelKind, ErrorCode
from spwm.testing.tunnel import FakeTunnel as BaseFakeTunnel
from spwm.tunnel.api import Router
from spwm.tunnel.protocol import AgentTunnelFactory, ContactTunnelFactory

from .test_media_relay import FakeUdpReactor

AGENT_ADDR = "192.0.2.1"
CONTACT_ADDR = "198.51.100.1"
PHONE = "192.0.2.10"
OPERATOR = "203.0.113.20"
OPERATOR_B = "203.0.113.21"
DIALOG = "call-1;from-tag=a;to-tag=b"


# fakes


class FakeTcpTransport(StringTransport):
    """
    A TCP transport that records writes, half-closes and closes, and tells
    its reactor (and protocol) when it is closed.

    @ivar write_closed: C{loseWriteConnection} was called.
    """

    def __init__(self, reactor: FakeTcpReactor, host: tuple[str, int], peer: tuple[str, int]) -> None:
        super().__init__(IPv4Address("TCP", *host), IPv4Address("TCP", *peer))
        self.reactor = reactor
        self.protocol: Any = None
        self.write_closed = False
        self.closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def loseConnection(self) -> None:
        super().loseConnection()
        self._gone()

    def abortConnection(self) -> None:
        super().abortConnection()
        self._gone()

    def peer_closes(self) -> None:
        """
        The remote end closes the connection.
        """
        self._gone()

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.reactor.connections.discard(self)
        self.protocol.connectionLost(Failure(ConnectionRefusedError()))


class FakeListener:
    """
    A listening TCP port.
    """

    def __init__(self, reactor: FakeTcpReactor, interface: str, port: int, factory: Any) -> None:
        self.reactor = reactor
        self.interface = interface
        self.port = port
        self.factory = factory

    def accept(self, host: str, port: int) -> FakeTcpTransport | None:
        """
        A connection from C{host}:C{port} arrives.

        @return: its transport, or C{None} if the factory refused it.
        """
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, port))
        if protocol is None:
            return None
        transport = FakeTcpTransport(self.reactor, (self.interface, self.port), (host, port))
        return self.reactor.connect_protocol(protocol, transport)

    def stopListening(self) -> None:
        self.reactor.tcp.pop((self.interface, self.port), None)


class FakeConnector:
    """
    An outgoing TCP connection attempt.
    """

    def __init__(self, reactor: FakeTcpReactor, host: str, port: int, factory: Any, bind: Any) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.factory = factory
        self.bind = bind
        self.state = "connecting"

    def complete(self) -> FakeTcpTransport:
        """
        The connection succeeds.
        """
        self.state = "connected"
        self.reactor.connectors.remove(self)
        protocol = self.factory.buildProtocol(IPv4Address("TCP", self.host, self.port))
        transport = FakeTcpTransport(self.reactor, (self.bind[0], 40000), (self.host, self.port))
        return self.reactor.connect_protocol(protocol, transport)

    def fail(self) -> None:
        """
        The connection is refused.
        """
        self.state = "disconnected"
        self.reactor.connectors.remove(self)
        self.factory.clientConnectionFailed(self, Failure(ConnectionRefusedError()))

    def stopConnecting(self) -> None:
        self.state = "disconnected"
        self.reactor.connectors.remove(self)


class FakeTcpReactor(FakeUdpReactor):
    """
    A fake reactor with UDP (L{FakeUdpReactor}) and TCP.

    @ivar tcp: listening ports by (interface, port).
    @ivar connectors: connection attempts in progress.
    @ivar connections: open TCP connections.
    @ivar refuse_tcp: ports whose listening fails.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tcp: dict[tuple[str, int], FakeListener] = {}
        self.connectors: list[FakeConnector] = []
        self.connections: set[FakeTcpTransport] = set()
        self.refuse_tcp: set[int] = set()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> FakeListener:
        if (interface, port) in self.tcp or port in self.refuse_tcp:
            raise CannotListenError(interface, port, OSError("in use"))
        listener = self.tcp[interface, port] = FakeListener(self, interface, port, factory)
        return listener

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None) -> FakeConnector:
        connector = FakeConnector(self, host, port, factory, bindAddress)
        self.connectors.append(connector)
        return connector

    def connect_protocol(self, protocol: Any, transport: FakeTcpTransport) -> FakeTcpTransport:
        transport.protocol = protocol
        self.connections.add(transport)
        protocol.makeConnection(transport)
        return transport

    @property
    def open_tcp(self) -> int:
        """
        Listeners, attempts and connections still open.
        """
        return len(self.tcp) + len(self.connectors) + len(self.connections)


class FakeLimits:
    max_stream_queue = 100


class FakeCore:
    """
    Stands in for the tunnel core: the stream queue and its limit.
    """

    limits = FakeLimits()

    def __init__(self) -> None:
        self.stream_queue_bytes = 0


class FakeTunnel(BaseFakeTunnel):
    """
    One end of a fake tunnel with datagram and stream channels. Channel
    control and data go to the other end's application at once, unless
    C{hold} is set: then stream data waits in the queue (which counts
    against the limit) until L{drain}.
    """

    def __init__(self, first_id: int, peer_name: str) -> None:
        super().__init__(peer=peer_name, first_channel=first_id)
        self.other: FakeTunnel | None = None
        self.app: Any = None
        self.connection = FakeCore()
        self.hold = False
        self.queue: list[tuple[int, bytes | None]] = []
        self.open: dict[int, Any] = {}
        self.sent: dict[int, bytes] = {}
        self.paused = False

    def open_channel(self, kind: Any, meta: dict, handler: Any = None) -> int:
        channel_id = super().open_channel(kind, meta, handler)
        self.open[channel_id] = kind
        self.other.open[channel_id] = kind
        Router(None, {"media": self.other.app}, None).channel_requested(self.other, channel_id, kind, dict(meta))
        return channel_id

    def close_channel(self, channel_id: int, code: int = 0, reason: str = "") -> None:
        if channel_id not in self.open:
            return
        self.drain()
        del self.open[channel_id]
        self.other.open.pop(channel_id, None)
        self.closed.append((channel_id, code, reason))
        self.other.app.channel_closed(self.other, channel_id, code, reason)

    def send_datagram(self, channel_id: int, data: bytes, component: int = 0) -> None:
        self.other.app.datagram_received(self.other, channel_id, data, component)

    def send_stream_data(self, channel_id: int, data: bytes) -> bool:
        if self.open.get(channel_id) is not ChannelKind.STREAM:
            raise ValueError(f"channel {channel_id} is not an open stream channel")
        self.sent[channel_id] = self.sent.get(channel_id, b"") + data
        self.queue.append((channel_id, data))
        self.connection.stream_queue_bytes += len(data)
        if not self.hold:
            self.drain()
        more = self.connection.stream_queue_bytes <= self.connection.limits.max_stream_queue
        if not more and not self.paused:
            # As the real tunnel: every stream producer waits for the drain.
            self.paused = True
            for producer in list(self.producers):
                producer.pauseProducing()
        return more

    def end_stream(self, channel_id: int) -> None:
        if self.open.get(channel_id) is not ChannelKind.STREAM:
            raise ValueError(f"channel {channel_id} is not an open stream channel")
        self.ended.append(channel_id)
        self.queue.append((channel_id, None))
        if not self.hold:
            self.drain()

    def drain(self) -> None:
        """
        Deliver everything queued.
        """
        queue, self.queue = self.queue, []
        self.connection.stream_queue_bytes = 0
        for channel_id, data in queue:
            if channel_id not in self.other.open:
                continue
            if data is None:
                self.other.app.stream_ended(self.other, channel_id)
            else:
                self.other.app.stream_data_received(self.other, channel_id, data)
        if self.paused:
            self.paused = False
            for producer in list(self.producers):
                producer.resumeProducing()


def _pair(**options: Any) -> tuple[FakeTcpReactor, MediaManager, FakeTunnel, MediaManager, FakeTunnel]:
    reactor = FakeTcpReactor()
    agent = MediaManager(reactor, "agent", AGENT_ADDR, (20000, 20099), **options)
    contact = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30099), **options)
    agent_end = FakeTunnel(1, "contact")
    contact_end = FakeTunnel(2, "agent")
    agent_end.other, contact_end.other = contact_end, agent_end
    agent_end.app, contact_end.app = agent, contact
    return reactor, agent, agent_end, contact, contact_end


def _msrp(host: str, port: int, setup: str | None, session: str, version: int = 1, connection: str = "new") -> bytes:
    lines = [
        b"v=0",
        b"o=- 42 %d IN IP4 %s" % (version, host.encode()),
        b"s=-",
        b"c=IN IP4 " + host.encode(),
        b"t=0 0",
        b"m=message %d TCP/MSRP *" % port,
        b"a=accept-types:text/plain",
        b"a=path:msrp://%s:%d/%s;tcp" % (host.encode(), port, session.encode()),
    ]
    if setup is not None:
        lines.append(b"a=setup:" + setup.encode())
    if connection:
        lines.append(b"a=connection:" + connection.encode())
    return b"\r\n".join(lines) + b"\r\n"


# the endpoint alone


class OneTunnel:
    """
    A tunnel end that records stream data and can say its queue is full:
    then, like the real tunnel, it pauses its stream producers until
    L{drain}.
    """

    def __init__(self) -> None:
        self.connection = FakeCore()
        self.data: list[bytes] = []
        self.ended = 0
        self.full = False
        self.gone = False
        self.producers: list[Any] = []

    def register_stream_producer(self, producer: Any) -> None:
        self.producers.append(producer)

    def unregister_stream_producer(self, producer: Any) -> None:
        self.producers = [p for p in self.producers if p is not producer]

    def send_stream_data(self, channel_id: int, data: bytes) -> bool:
        if self.gone:
            raise ValueError("closed")
        self.data.append(data)
        if self.full:
            self.connection.stream_queue_bytes = 1000
            for producer in list(self.producers):
                producer.pauseProducing()
        return not self.full

    def drain(self) -> None:
        """
        The queue is written out: resume the producers.
        """
        self.full = False
        self.connection.stream_queue_bytes = 0
        for producer in list(self.producers):
            producer.resumeProducing()

    def end_stream(self, channel_id: int) -> None:
        self.ended += 1


def _endpoint(**options: Any) -> tuple[FakeTcpReactor, TcpMediaEndpoint, OneTunnel, list[str]]:
    reactor = FakeTcpReactor()
    finished: list[str] = []
    endpoint = TcpMediaEndpoint(
        reactor, AGENT_ADDR, on_finished=lambda e, reason: finished.append(reason), **options
    )
    tunnel = OneTunnel()
    endpoint.attach(tunnel, 3)
    return reactor, endpoint, tunnel, finished


class EndpointTests(SynchronousTestCase):
    """
    L{TcpMediaEndpoint} bridges one TCP connection and one stream channel.
    """

    def test_interfaces(self) -> None:
        """
        The endpoint is a push producer (for its TCP transport) and its
        protocol is half-closeable.
        """
        _, endpoint, _, _ = _endpoint()
        verifyObject(IPushProducer, endpoint)
        self.assertTrue(IHalfCloseableProtocol.providedBy(_SideProtocol(endpoint)))

    def test_listen_accepts_one_from_expected_host(self) -> None:
        """
        Listening accepts only the negotiated host, only one connection,
        and stops listening once connected.
        """
        reactor, endpoint, tunnel, _ = _endpoint()
        endpoint.expect(PHONE)
        endpoint.listen(20000)
        listener = reactor.tcp[AGENT_ADDR, 20000]
        self.assertIsNone(listener.accept("192.0.2.99", 5000))
        transport = listener.accept(PHONE, 5000)
        self.assertIsNotNone(transport)
        self.assertTrue(endpoint.connected)
        self.assertEqual(reactor.tcp, {})
        self.assertIsNone(listener.accept(PHONE, 5001))
        self.assertEqual(endpoint.refused_connections, 2)
        self.assertEqual(endpoint.sockets, 1)
        self.assertIs(transport.producer, endpoint)

    def test_bytes_both_ways(self) -> None:
        """
        Bytes from our side go into the channel; bytes from the tunnel are
        written to our side.
        """
        reactor, endpoint, tunnel, _ = _endpoint()
        endpoint.listen(20000)
        transport = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 5000)
        transport.protocol.dataReceived(b"MSRP a SEND\r\n")
        endpoint.write(b"MSRP a 200 OK\r\n")
        self.assertEqual(tunnel.data, [b"MSRP a SEND\r\n"])
        self.assertEqual(transport.value(), b"MSRP a 200 OK\r\n")
        self.assertEqual((endpoint.bytes_in, endpoint.bytes_out), (13, 15))

    def test_buffered_until_connected(self) -> None:
        """
        Bytes from the tunnel before our side connects are kept and written
        on connect, followed by the half-close if the stream ended.
        """
        reactor, endpoint, tunnel, _ = _endpoint()
        endpoint.listen(20000)
        endpoint.write(b"one ")
        endpoint.write(b"two")
        endpoint.end_from_tunnel()
        transport = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 5000)
        self.assertEqual(transport.value(), b"one two")
        self.assertTrue(transport.write_closed)

    def test_buffer_bounded(self) -> None:
        """
        More than C{max_buffer} bytes before our side connects give the
        stream up, with a reason, and free the listener.
        """
        reactor, endpoint, tunnel, finished = _endpoint(max_buffer=10)
        endpoint.listen(20000)
        endpoint.write(b"12345678")
        endpoint.write(b"9ab")
        self.assertEqual(finished, ["too much data before the TCP media connection"])
        self.assertEqual(reactor.open_tcp, 0)
        endpoint.write(b"late")
        self.assertEqual(finished, ["too much data before the TCP media connection"])

    def test_pause_until_tunnel_drains(self) -> None:
        """
        When the tunnel's stream queue is full, the tunnel pauses the
        endpoint and the TCP transport is paused; it stays paused (no
        timer) until the tunnel has drained and resumes it.  (When the
        tunnel resumes its producers: L{tests.test_tunnel_protocol}.)
        """
        reactor, endpoint, tunnel, _ = _endpoint()
        endpoint.listen(20000)
        transport = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 5000)
        tunnel.full = True
        transport.protocol.dataReceived(b"x" * 200)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(endpoint.pauses, 1)
        self.assertEqual(reactor.getDelayedCalls(), [])
        reactor.advance(1)
        self.assertEqual(transport.producerState, "paused")
        tunnel.drain()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_registered_with_the_tunnel(self) -> None:
        """
        Attaching registers the endpoint with the tunnel as a stream
        producer; a pause before our side connects applies once it does;
        closing unregisters it.
        """
        reactor, endpoint, tunnel, _ = _endpoint()
        [producer] = tunnel.producers
        producer.pauseProducing()
        endpoint.listen(20000)
        transport = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 5000)
        self.assertEqual(transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        endpoint.close()
        self.assertEqual(tunnel.producers, [])

    def test_slow_receiver(self) -> None:
        """
        While our TCP side's transport has paused us (its buffer is full),
        at most C{max_buffer} more bytes are written; beyond that the
        stream is given up and the connection closed.
        """
        reactor, endpoint, tunnel, finished = _endpoint(max_buffer=10)
        endpoint.listen(20000)
        transport = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 5000)
        endpoint.pauseProducing()
        endpoint.write(b"12345")
        endpoint.resumeProducing()
        endpoint.write(b"12345678")
        endpoint.pauseProducing()
        endpoint.write(b"12345678")
        self.assertEqual(finished, [])
        endpoint.write(b"9ab")
        self.assertEqual(finished, ["TCP media receiver too slow"])
        self.assertTrue(transport.closed)
        self.assertEqual(reactor.open_tcp, 0)

    def test_half_close_both_ways(self) -> None:
        """
        Our side's FIN ends our direction of the stream; the end of the
        peer's direction half-closes towards our side; the connection
        closing finishes the endpoint once.
        """
        reactor, endpoint, tunnel, finished = _endpoint()
        endpoint.listen(20000)
        transport = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 5000)
        transport.protocol.readConnectionLost()
        self.assertEqual(tunnel.ended, 1)
        endpoint.end_from_tunnel()
        self.assertTrue(transport.write_closed)
        transport.peer_closes()
        self.assertEqual(finished, ["TCP media connection closed"])
        self.assertEqual(reactor.open_tcp, 0)

    def test_early_bytes_wait_for_channel(self) -> None:
        """
        Bytes our side sends before the channel is attached are sent when
        it is.
        """
        reactor = FakeTcpReactor()
        endpoint = TcpMediaEndpoint(reactor, AGENT_ADDR)
        endpoint.listen(20000)
        transport = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 5000)
        transport.protocol.dataReceived(b"early")
        tunnel = OneTunnel()
        endpoint.attach(tunnel, 5)
        self.assertEqual(tunnel.data, [b"early"])

    def test_channel_gone(self) -> None:
        """
        A channel that the tunnel no longer has finishes the endpoint.
        """
        reactor, endpoint, tunnel, finished = _endpoint()
        endpoint.listen(20000)
        transport = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 5000)
        tunnel.gone = True
        transport.protocol.dataReceived(b"x")
        self.assertEqual(finished, ["tunnel channel gone"])
        self.assertTrue(transport.closed)

    def test_connect(self) -> None:
        """
        Connecting binds to our media address; the policy may refuse the
        host; a failed attempt finishes the endpoint.
        """
        reactor, endpoint, tunnel, finished = _endpoint(policy=AllowPolicy(block_special=True))
        self.assertFalse(endpoint.connect("127.0.0.1", 5000))
        self.assertFalse(endpoint.connect("phone.example", 5000))
        self.assertTrue(endpoint.connect(PHONE, 5000))
        connector = reactor.connectors[0]
        self.assertEqual((connector.host, connector.port, connector.bind), (PHONE, 5000, (AGENT_ADDR, 0)))
        self.assertEqual(endpoint.role, "active")
        connector.fail()
        self.assertEqual(finished, ["TCP media connection failed"])
        self.assertEqual(reactor.open_tcp, 0)

    def test_close_without_callback(self) -> None:
        """
        L{TcpMediaEndpoint.close} frees an attempt, a listener and a
        connection without calling back.
        """
        reactor, endpoint, tunnel, finished = _endpoint()
        endpoint.connect(PHONE, 5000)
        endpoint.close()
        self.assertEqual(reactor.open_tcp, 0)
        reactor, endpoint, tunnel, finished = _endpoint()
        endpoint.listen(20000)
        reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 5000)
        endpoint.close()
        self.assertEqual((reactor.open_tcp, finished, endpoint.sockets), (0, [], 0))


# SDP


class RewriteTcpTests(SynchronousTestCase):
    """
    L{rewrite_tcp_media} sets our C{a=setup} and the authority of a simple
    MSRP C{a=path}.
    """

    def test_setup_and_path(self) -> None:
        """
        An existing C{a=setup} is replaced, the path gets our address and
        port, every other line stays.
        """
        body = _msrp(PHONE, 7394, "actpass", "s1")
        out = rewrite_tcp_media(body, [TcpRewrite("passive", CONTACT_ADDR, 30000)])
        media = parse_sdp(out).media[0]
        self.assertEqual(media.setup, "passive")
        self.assertEqual(media.path, ("msrp://198.51.100.1:30000/s1;tcp",))
        self.assertEqual(media.connection_mode, "new")
        self.assertEqual(out.replace(b"a=setup:passive", b"a=setup:actpass").replace(b"198.51.100.1:30000", b"192.0.2.10:7394"), body)

    def test_setup_added_lf(self) -> None:
        """
        A section without C{a=setup} gets one at its end, with the body's
        line ending; an IPv6 address is bracketed in the path.
        """
        body = _msrp(PHONE, 7394, None, "s1", connection="").replace(b"\r\n", b"\n").rstrip(b"\n")
        out = rewrite_tcp_media(body, [TcpRewrite("actpass", "2001:db8::1", 9)])
        self.assertTrue(out.endswith(b"\na=setup:actpass\n"))
        self.assertNotIn(b"\r", out)
        self.assertEqual(parse_sdp(out).media[0].path, ("msrp://[2001:db8::1]:9/s1;tcp",))

    def test_session_setup_inherited(self) -> None:
        """
        A session level C{a=setup} applies to media that have none.
        """
        body = b"v=0\r\ns=-\r\na=setup:passive\r\nm=message 1 TCP/MSRP *\r\n"
        self.assertEqual(parse_sdp(body).media[0].setup, "passive")

    def test_relay_path_kept(self) -> None:
        """
        A path through MSRP relays (several URIs) or of another form is
        left as it is.
        """
        body = _msrp(PHONE, 7394, "active", "s1").replace(
            b"a=path:", b"a=path:msrps://relay.example:2855/r1;tcp "
        )
        out = rewrite_tcp_media(body, [TcpRewrite("passive", CONTACT_ADDR, 30000)])
        self.assertIn(b"a=path:msrps://relay.example:2855/r1;tcp msrp://192.0.2.10:7394/s1;tcp", out)
        odd = _msrp(PHONE, 7394, "active", "s1").replace(b"msrp://192.0.2.10:7394", b"msrp://u@h:1")
        out = rewrite_tcp_media(odd, [TcpRewrite("passive", CONTACT_ADDR, 30000)])
        self.assertIn(b"a=path:msrp://u@h:1/s1;tcp", out)

    def test_wrong_count(self) -> None:
        """
        One entry per m= line is required.
        """
        self.assertRaises(ValueError, rewrite_tcp_media, _msrp(PHONE, 1, None, "s"), [])

    @given(st.binary(max_size=300))
    def test_garbage(self, body: bytes) -> None:
        """
        Any bytes either rewrite or raise L{SdpError}, nothing else.
        """
        try:
            count = len(parse_sdp(body).media)
        except SdpError:
            return
        try:
            rewrite_tcp_media(body, [TcpRewrite("active", CONTACT_ADDR, 9)] * count)
        except SdpError:
            pass


# two halves


class MsrpCallTests(SynchronousTestCase):
    """
    An MSRP session (TCP media) offered by the LAN phone and answered on the
    operator side, through an agent and a contact point joined by a fake
    tunnel; each half plays the role the SDP gives it towards its side.
    """

    def _offer(self, phone_setup: str | None = "actpass", **options: Any):
        reactor, agent, a_end, contact, c_end = _pair(**options)
        offer = _msrp(PHONE, 7394, phone_setup, "phone1")
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        to_operator = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        return reactor, agent, a_end, contact, c_end, to_operator

    def _answer(
        self, agent, a_end, contact, c_end, setup: str | None = "active", version: int = 1, connection: str = "new"
    ):
        answer = _msrp(OPERATOR, 8000, setup, "op1", version=version, connection=connection)
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
        return agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer)

    def test_offer_actpass_answer_active(self) -> None:
        """
        The agent opens one stream channel marked C{tcp}; the contact point
        offers actpass on a listening port of its own; the operator answers
        active and connects; the agent answers the phone passive on its own
        port and the phone connects; MSRP flows both ways.
        """
        reactor, agent, a_end, contact, c_end, to_operator = self._offer()
        self.assertEqual(
            a_end.opened,
            [(1, ChannelKind.STREAM, {"use": "media", "dialog": DIALOG, "stream": 0, "tcp": True})],
        )
        offer = parse_sdp(to_operator).media[0]
        self.assertEqual((offer.address, offer.port, offer.setup), (CONTACT_ADDR, 30000, "actpass"))
        self.assertEqual(offer.path, ("msrp://198.51.100.1:30000/phone1;tcp",))
        self.assertIn((CONTACT_ADDR, 30000), reactor.tcp)
        to_phone = self._answer(agent, a_end, contact, c_end, "active")
        answer = parse_sdp(to_phone).media[0]
        self.assertEqual((answer.address, answer.port, answer.setup), (AGENT_ADDR, 20000, "passive"))
        self.assertEqual(answer.path, ("msrp://192.0.2.1:20000/op1;tcp",))
        operator = reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        phone = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        self.assertEqual(reactor.tcp, {})
        phone.protocol.dataReceived(b"MSRP t1 SEND\r\nhello\r\n-------t1$\r\n")
        self.assertEqual(operator.value(), b"MSRP t1 SEND\r\nhello\r\n-------t1$\r\n")
        operator.protocol.dataReceived(b"MSRP t1 200 OK\r\n-------t1$\r\n")
        self.assertEqual(phone.value(), b"MSRP t1 200 OK\r\n-------t1$\r\n")
        self.assertEqual((agent.open_tcp_sockets, contact.open_tcp_sockets), (1, 1))
        self.assertEqual((agent.open_channels, contact.open_channels), (1, 1))

    def test_phone_active_and_passive(self) -> None:
        """
        A phone that offers active (or no a=setup: active by default) gets
        a passive answer and a port; one that offers passive gets an active
        answer with port 9 and the agent connects to it.
        """
        for setup in ("active", None):
            reactor, agent, a_end, contact, c_end, _ = self._offer(setup)
            answer = parse_sdp(self._answer(agent, a_end, contact, c_end)).media[0]
            self.assertEqual((answer.port, answer.setup), (20000, "passive"))
        reactor, agent, a_end, contact, c_end, _ = self._offer("passive")
        answer = parse_sdp(self._answer(agent, a_end, contact, c_end)).media[0]
        self.assertEqual((answer.address, answer.port, answer.setup), (AGENT_ADDR, 9, "active"))
        self.assertEqual(answer.path, ("msrp://192.0.2.1:9/op1;tcp",))
        self.assertNotIn((AGENT_ADDR, 20000), reactor.tcp)
        [connector] = reactor.connectors
        self.assertEqual((connector.host, connector.port, connector.bind), (PHONE, 7394, (AGENT_ADDR, 0)))
        phone = connector.complete()
        operator = reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        operator.protocol.dataReceived(b"down")
        phone.protocol.dataReceived(b"up")
        self.assertEqual((phone.value(), operator.value()), (b"down", b"up"))
        self.assertEqual(agent.ports_in_use, 0)

    def test_incoming_call(self) -> None:
        """
        The operator offers passive: the contact point connects to it and
        answers active; the agent offers actpass to the phone, which
        answers active and connects; bytes flow both ways.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        offer = _msrp(OPERATOR, 8000, "passive", "op1")
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", offer)
        self.assertEqual(c_end.opened[0][1], ChannelKind.STREAM)
        to_phone = parse_sdp(agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", offer)).media[0]
        self.assertEqual((to_phone.port, to_phone.setup), (20000, "actpass"))
        answer = _msrp(PHONE, 7394, "active", "phone1")
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", answer)
        self.assertIn((AGENT_ADDR, 20000), reactor.tcp)
        to_operator = parse_sdp(contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", answer)).media[0]
        self.assertEqual((to_operator.address, to_operator.port, to_operator.setup), (CONTACT_ADDR, 9, "active"))
        [connector] = reactor.connectors
        self.assertEqual((connector.host, connector.port, connector.bind), (OPERATOR, 8000, (CONTACT_ADDR, 0)))
        operator = connector.complete()
        phone = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        operator.protocol.dataReceived(b"MSRP in SEND\r\n")
        phone.protocol.dataReceived(b"MSRP in 200 OK\r\n")
        self.assertEqual((phone.value(), operator.value()), (b"MSRP in SEND\r\n", b"MSRP in 200 OK\r\n"))

    def test_operator_answers_passive(self) -> None:
        """
        An answer of passive (or without a=setup: passive by default) to
        the contact point's actpass makes it close its listener and connect
        to the operator's address and port.
        """
        for setup in ("passive", None):
            reactor, agent, a_end, contact, c_end, _ = self._offer()
            self._answer(agent, a_end, contact, c_end, setup)
            self.assertNotIn((CONTACT_ADDR, 30000), reactor.tcp)
            [connector] = reactor.connectors
            self.assertEqual((connector.host, connector.port), (OPERATOR, 8000))
            self.assertEqual(contact.ports_in_use, 0)
            operator = connector.complete()
            phone = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
            phone.protocol.dataReceived(b"up")
            self.assertEqual(operator.value(), b"up")

    def test_answerer_connects_before_its_answer(self) -> None:
        """
        An answerer that connects before its answer (a=connection:new)
        reaches us keeps that connection.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        operator = reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        operator.protocol.dataReceived(b"first")
        self._answer(agent, a_end, contact, c_end, "active")
        self.assertFalse(operator.closed)
        phone = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        self.assertEqual(phone.value(), b"first")
        self.assertEqual(len(a_end.opened), 1)

    def test_data_before_far_side_connects(self) -> None:
        """
        Bytes that cross the tunnel before the TCP connection on the other
        half exists are kept and written when it connects.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        self._answer(agent, a_end, contact, c_end, "active")
        operator = reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        operator.protocol.dataReceived(b"MSRP early SEND\r\n")
        phone = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        self.assertEqual(phone.value(), b"MSRP early SEND\r\n")

    def test_backpressure_through_tunnel(self) -> None:
        """
        When the tunnel's stream queue is over its limit the sending TCP
        side is paused, and resumed once the queue drained.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        self._answer(agent, a_end, contact, c_end, "active")
        operator = reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        phone = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        a_end.hold = True
        phone.protocol.dataReceived(b"x" * 60)
        self.assertEqual(phone.producerState, "producing")
        phone.protocol.dataReceived(b"y" * 60)
        self.assertEqual(phone.producerState, "paused")
        reactor.advance(1)
        self.assertEqual(phone.producerState, "paused")
        a_end.drain()
        reactor.advance(1)
        self.assertEqual(phone.producerState, "producing")
        self.assertEqual(operator.value(), b"x" * 60 + b"y" * 60)

    def test_end_and_close_both_ways(self) -> None:
        """
        A half-close on one side half-closes the other; the connection
        closing on one side closes the channel and the other side's
        connection; nothing is left open on either half.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        self._answer(agent, a_end, contact, c_end, "active")
        operator = reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        phone = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        phone.protocol.dataReceived(b"bye")
        phone.protocol.readConnectionLost()
        self.assertTrue(operator.write_closed)
        self.assertEqual(operator.value(), b"bye")
        operator.protocol.dataReceived(b"last")
        self.assertEqual(phone.value(), b"last")
        operator.peer_closes()
        self.assertTrue(phone.closed)
        self.assertEqual(c_end.closed, [(1, 0, "TCP media connection closed")])
        self._assert_clean(reactor, agent, contact)

    def test_forked_branch_rejecting_msrp_early(self) -> None:
        """
        The operator proxy forks the phone's MSRP offer: branch B refuses
        the stream (port 0) in an early 183, branch A answers it in its
        200. B's refusal does not release the stream that A then answers,
        and MSRP flows between the phone and A; when a branch refuses it
        after the answer, it is still kept. The winner's own port 0 in a
        re-offer releases it.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        refused = _msrp(OPERATOR_B, 0, "active", "opb")
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", refused, tag="b")
        to_phone = agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", refused, tag="b")
        self.assertEqual(parse_sdp(to_phone).media[0].port, 0)
        self.assertEqual((a_end.closed, c_end.closed), ([], []))
        answer = _msrp(OPERATOR, 8000, "active", "op1")
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer, tag="a")
        to_phone = agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer, tag="a")
        self.assertEqual(parse_sdp(to_phone).media[0].port, 20000)
        contact.dialog_answered(c_end, DIALOG, "a", ours=True)
        agent.dialog_answered(a_end, DIALOG, "a", ours=False)
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", refused, tag="b")
        agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", refused, tag="b")
        self.assertEqual((a_end.closed, c_end.closed), ([], []))
        operator = reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        phone = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        phone.protocol.dataReceived(b"MSRP t1 SEND\r\n")
        operator.protocol.dataReceived(b"MSRP t1 200 OK\r\n")
        self.assertEqual((operator.value(), phone.value()), (b"MSRP t1 SEND\r\n", b"MSRP t1 200 OK\r\n"))
        gone = _msrp(OPERATOR, 0, "active", "op1", version=2)
        self.assertEqual((agent.open_tcp_sockets, contact.open_tcp_sockets), (1, 1))
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", gone, tag="a")
        agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", gone, tag="a")
        self._assert_clean(reactor, agent, contact)

    def test_forked_winner_refused_msrp_early(self) -> None:
        """
        The branch that refused the MSRP stream in its 183 answers the
        call (200 without SDP): the stream is released on both halves;
        a branch that refused it early and then offers it again in its
        answer keeps it.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        refused = _msrp(OPERATOR_B, 0, "active", "opb")
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", refused, tag="b")
        agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", refused, tag="b")
        contact.dialog_answered(c_end, DIALOG, "b", ours=True)
        agent.dialog_answered(a_end, DIALOG, "b", ours=False)
        self.assertEqual(c_end.closed, [(1, 0, "not in the answer")])
        self._assert_clean(reactor, agent, contact)
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", refused, tag="b")
        agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", refused, tag="b")
        answer = _msrp(OPERATOR_B, 8000, "active", "opb", version=2)
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer, tag="b")
        agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer, tag="b")
        contact.dialog_answered(c_end, DIALOG, "b", ours=True)
        agent.dialog_answered(a_end, DIALOG, "b", ours=False)
        self.assertEqual((a_end.closed, c_end.closed), ([], []))
        self.assertEqual((agent.streams, contact.streams), (1, 1))

    def _assert_clean(self, reactor, *managers) -> None:
        for manager in managers:
            self.assertEqual(
                (manager.open_tcp_sockets, manager.open_channels, manager.ports_in_use, manager.streams),
                (0, 0, 0, 0),
            )
        self.assertEqual(reactor.open_tcp, 0)
        # a dialog left without streams (the other half ended it, or an
        # offer removed them) ends after the media timeout; then no timer
        timeout = max(manager.inactivity_timeout for manager in managers)
        for _ in range(10):
            reactor.advance(timeout / 4)
        self.assertEqual([manager.calls for manager in managers], [0] * len(managers))
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_dialog_ended_and_tunnel_lost(self) -> None:
        """
        The end of the dialog, or losing the tunnel, closes the listeners,
        connections and attempts of TCP media on both halves.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        self._answer(agent, a_end, contact, c_end, "active")
        reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        agent.dialog_ended(a_end, DIALOG)
        contact.dialog_ended(c_end, DIALOG)
        self._assert_clean(reactor, agent, contact)
        reactor, agent, a_end, contact, c_end, _ = self._offer("passive")
        self._answer(agent, a_end, contact, c_end, "passive")
        self.assertEqual(len(reactor.connectors), 2)
        agent.session_ended(a_end.session_id, "lost")
        contact.session_ended(c_end.session_id, "lost")
        self._assert_clean(reactor, agent, contact)

    def test_stream_removed(self) -> None:
        """
        A re-offer with port 0 for the TCP stream releases it on both halves.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        self._answer(agent, a_end, contact, c_end, "active")
        reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        removed = _msrp(PHONE, 0, "actpass", "phone1", version=2)
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", removed)
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", removed)
        self._assert_clean(reactor, agent, contact)

    def test_reoffer_existing_keeps_connection(self) -> None:
        """
        A re-offer with a=connection:existing (and a repeated answer) keeps
        the connections, ports, roles and channel.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        self._answer(agent, a_end, contact, c_end, "active")
        operator = reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        phone = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        again = self._answer(agent, a_end, contact, c_end, "active")
        self.assertEqual(parse_sdp(again).media[0].setup, "passive")
        reoffer = _msrp(PHONE, 7394, "passive", "phone1", version=2, connection="existing")
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", reoffer)
        to_operator = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", reoffer)
        media = parse_sdp(to_operator).media[0]
        self.assertEqual((media.port, media.setup, media.connection_mode), (30000, "passive", "existing"))
        answer = self._answer(agent, a_end, contact, c_end, "active", version=2, connection="existing")
        self.assertEqual(parse_sdp(answer).media[0].port, 20000)
        self.assertEqual(len(a_end.opened), 1)
        phone.protocol.dataReceived(b"still")
        self.assertEqual(operator.value(), b"still")
        self.assertFalse(phone.closed or operator.closed)

    def test_reoffer_new_restarts(self) -> None:
        """
        A re-offer with a=connection:new after the connection was made
        closes the old connections and channel and sets up new ones.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        self._answer(agent, a_end, contact, c_end, "active")
        operator = reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        phone = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        reoffer = _msrp(PHONE, 7396, "actpass", "phone2", version=2)
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", reoffer)
        self.assertTrue(phone.closed and operator.closed)
        to_operator = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", reoffer)
        self.assertEqual(parse_sdp(to_operator).media[0].port, 30002)
        self.assertEqual(len(a_end.opened), 2)
        answer = self._answer(agent, a_end, contact, c_end, "active", version=2)
        self.assertEqual(parse_sdp(answer).media[0].port, 20002)
        operator = reactor.tcp[CONTACT_ADDR, 30002].accept(OPERATOR, 50002)
        phone = reactor.tcp[AGENT_ADDR, 20002].accept(PHONE, 50003)
        phone.protocol.dataReceived(b"again")
        self.assertEqual(operator.value(), b"again")

    def test_contact_refuses_loopback(self) -> None:
        """
        The contact point does not connect to a loopback operator address:
        the stream is released on both halves.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer()
        answer = _msrp("127.0.0.1", 8000, "passive", "op1")
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
        self.assertEqual(reactor.connectors, [])
        self.assertEqual(contact.rejected_streams, 1)
        self._assert_clean(reactor, agent, contact)

    def test_no_ports(self) -> None:
        """
        Without a free port to listen on, the TCP stream is answered with
        port 0 and its channel closed.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        reactor.refuse_tcp.update(range(30000, 30100))
        offer = _msrp(PHONE, 7394, "actpass", "phone1")
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        out = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        self.assertEqual(parse_sdp(out).media[0].port, 0)
        self._assert_clean(reactor, agent, contact)

    def test_channel_kind_must_match(self) -> None:
        """
        A stream channel not marked C{tcp}, or a datagram channel marked
        C{tcp}, is refused.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        for kind, meta in (
            (ChannelKind.STREAM, {"use": "media", "dialog": DIALOG, "stream": 0}),
            (ChannelKind.DATAGRAM, {"use": "media", "dialog": DIALOG, "stream": 1, "tcp": True}),
        ):
            a_end.open_channel(kind, meta)
        self.assertEqual(contact.refused_channels, 2)
        self.assertEqual([c[1] for c in c_end.closed], [int(ErrorCode.REFUSED)] * 2)

    def test_inactivity_spares_connected_tcp(self) -> None:
        """
        A silent but connected TCP stream is not released for inactivity
        (MSRP chat may be silent for long); one whose connection is never
        made is, and the other half follows through the closed channel.
        """
        reactor, agent, a_end, contact, c_end, _ = self._offer(inactivity_timeout=4.0)
        self._answer(agent, a_end, contact, c_end, "active")
        reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        for _ in range(10):
            reactor.advance(1.0)
        self.assertEqual((agent.streams, contact.streams), (1, 1))
        agent.dialog_ended(a_end, DIALOG)
        self._assert_clean(reactor, agent, contact)
        reactor, agent, a_end, contact, c_end, _ = self._offer(inactivity_timeout=4.0)
        self._answer(agent, a_end, contact, c_end, "active")
        contact.dialog_answered(c_end, DIALOG, "b", ours=True)
        agent.dialog_answered(a_end, DIALOG, "b", ours=False)
        reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        for _ in range(10):
            reactor.advance(1.0)
        self._assert_clean(reactor, agent, contact)

    def test_unknown_stream_channel(self) -> None:
        """
        Stream data on a channel the manager does not know is counted.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        agent.stream_data_received(a_end, 77, b"x")
        agent.stream_ended(a_end, 77)
        self.assertEqual(agent.dropped_unknown_channel, 1)


class RealTunnelTests(SynchronousTestCase):
    """
    TCP media through two real tunnel adapters (in memory, no TLS) and
    their application muxes: the stream channel API as the tunnel offers
    it, with its real stream queue.
    """

    def _pair(self, limits: TunnelLimits | None = None):
        reactor = FakeTcpReactor()
        agent = MediaManager(reactor, "agent", AGENT_ADDR, (20000, 20099))
        contact = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30099))
        agent_mux = Router(None, {"media": agent}, None)
        contact_mux = Router(None, {"media": contact}, None)
        server = ContactTunnelFactory(contact_mux, reactor, limits).buildProtocol(None)
        client = AgentTunnelFactory(agent_mux, reactor, "agent-x", limits).buildProtocol(None)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False),
            greet=False, clock=reactor,
        )
        pump.flush()
        return reactor, agent, client, contact, server, pump

    def test_msrp_both_ways_with_backpressure(self) -> None:
        """
        Offer and answer cross, both TCP sides connect, bytes flow both
        ways; a burst larger than the tunnel's stream queue pauses the
        sending side until the tunnel has written it out; hanging up
        leaves nothing open.
        """
        reactor, agent, a_end, contact, c_end, pump = self._pair(TunnelLimits(max_stream_queue=4096))
        offer = _msrp(PHONE, 7394, "actpass", "phone1")
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        pump.flush()
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        answer = _msrp(OPERATOR, 8000, "active", "op1")
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
        pump.flush()
        agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer)
        operator = reactor.tcp[CONTACT_ADDR, 30000].accept(OPERATOR, 50000)
        phone = reactor.tcp[AGENT_ADDR, 20000].accept(PHONE, 50001)
        phone.protocol.dataReceived(b"MSRP a SEND\r\n")
        operator.protocol.dataReceived(b"MSRP a 200 OK\r\n")
        pump.flush()
        self.assertEqual(operator.value(), b"MSRP a SEND\r\n")
        self.assertEqual(phone.value(), b"MSRP a 200 OK\r\n")
        a_end.pauseProducing()
        for _ in range(3):
            phone.protocol.dataReceived(b"z" * 2000)
        self.assertEqual(phone.producerState, "paused")
        reactor.advance(0.1)
        self.assertEqual(phone.producerState, "paused")
        a_end.resumeProducing()
        pump.flush()
        reactor.advance(0.1)
        self.assertEqual(phone.producerState, "producing")
        self.assertEqual(operator.value(), b"MSRP a SEND\r\n" + b"z" * 6000)
        phone.peer_closes()
        pump.flush()
        self.assertTrue(operator.closed)
        for manager in (agent, contact):
            self.assertEqual((manager.open_tcp_sockets, manager.open_channels, manager.streams), (0, 0, 0))
        self.assertEqual(reactor.open_tcp, 0)


_SETUPS = st.sampled_from([None, "active", "passive", "actpass", "holdconn", "junk"])


class NoLeakPropertyTests(SynchronousTestCase):
    """
    Whatever the roles, re-offers and connections, ending the dialog leaves
    nothing open.
    """

    @settings(max_examples=60)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["agent", "contact"]),
                _SETUPS,
                st.sampled_from(["new", "existing", ""]),
                st.sampled_from([0, 7394, 7396]),
                st.booleans(),
            ),
            min_size=1,
            max_size=8,
        )
    )
    def test_any_exchange_then_hang_up(self, steps: list) -> None:
        """
        A sequence of SDPs from either side with any a=setup (even
        invalid), a=connection and port, each followed by every waiting
        connection being made (or failing), releases every listener,
        connection, port, channel and timer when the dialog ends; a half
        never holds more than one TCP connection for the stream.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        for version, (side, setup, connection, port, succeed) in enumerate(steps, 1):
            host = PHONE if side == "agent" else OPERATOR
            body = _msrp(host, port, setup, "s%d" % version, version=version, connection=connection)
            if side == "agent":
                agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", body)
                contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", body)
            else:
                contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", body)
                agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", body)
            # each event may release streams on both halves: skip the gone
            for connector in list(reactor.connectors):
                if connector in reactor.connectors:
                    connector.complete() if succeed else connector.fail()
            for key, listener in list(reactor.tcp.items()):
                if reactor.tcp.get(key) is listener:
                    listener.accept(PHONE if key[0] == AGENT_ADDR else OPERATOR, 50000 + version)
            for transport in list(reactor.connections):
                if not transport.closed:
                    transport.protocol.dataReceived(b"x")
            for address in (AGENT_ADDR, CONTACT_ADDR):
                live = [t for t in reactor.connections if t.getHost().host == address]
                self.assertLessEqual(len(live), 1)
        agent.dialog_ended(a_end, DIALOG)
        contact.dialog_ended(c_end, DIALOG)
        for manager in (agent, contact):
            self.assertEqual(
                (manager.open_tcp_sockets, manager.open_channels, manager.ports_in_use, manager.streams),
                (0, 0, 0, 0),
            )
        self.assertEqual(reactor.open_tcp, 0)
        self.assertEqual(reactor.getDelayedCalls(), [])
