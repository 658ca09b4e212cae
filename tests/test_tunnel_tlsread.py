"""
Tests for L{spwm.tunnel.tlsread}: the records of one read delivered together.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connect, makeFakeClient, makeFakeServer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from spwm import leanpoll
from spwm.testing.certs import TestCA
from spwm.tunnel.service import server_tls_options
from spwm.tunnel.tlsread import TunnelTLSClientEndpoint, TunnelTLSFactory, TunnelTLSProtocol


class Recorder(Protocol):
    """
    Keeps every C{dataReceived} call and the reason of the loss.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: Failure | None = None
        self.abort_on: bytes | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if self.abort_on is not None and self.abort_on in data:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


class _Certified(SynchronousTestCase):
    """
    Server and client TLS options from a test CA.
    """

    def setUp(self) -> None:
        ca = TestCA(self.mktemp())
        files = ca.issue(["contact.example.test"], "server")
        self.server_options = server_tls_options(files.cert, files.key)
        with open(ca.ca_file, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        self.client_options = ssl.optionsForClientTLS("contact.example.test", trustRoot=trust)
        self.clock = Clock()


class ReadBatchingTests(_Certified):
    """
    L{TunnelTLSProtocol} against Twisted's own TLS protocol.
    """

    def connect(self, factory_class: Any) -> tuple[Recorder, Recorder, Any, Any]:
        """
        A client (Twisted's TLS) and a server (C{factory_class}) in memory,
        handshake done.

        @return: the two applications, the client's TLS protocol and the pump.
        """
        clock = Clock()
        client_app, server_app = Recorder(), Recorder()
        client_factory = TLSMemoryBIOFactory(
            self.client_options, True, Factory.forProtocol(lambda: client_app), clock=clock
        )
        server_factory = factory_class(self.server_options, False, Factory.forProtocol(lambda: server_app), clock=clock)
        client = client_factory.buildProtocol(None)
        server = server_factory.buildProtocol(None)
        pump = connect(server, makeFakeServer(server), client, makeFakeClient(client), greet=False, clock=clock)
        pump.flush()
        self.clock = clock
        return client_app, server_app, client, pump

    def send_records(self, client: Any, pump: Any, records: list[bytes]) -> None:
        """
        Write each of C{records} as a TLS record of its own, then move them
        all to the server in one read.
        """
        for record in records:
            # past the write aggregation: one SSL_write, one record, each
            client._write(record)
        pump.flush()

    def test_one_delivery_per_read(self) -> None:
        """
        Several records that arrive in one read reach the application in
        one call, in order; Twisted's class delivers one call per record.
        """
        records = [b"frame %d " % i * 10 for i in range(5)]
        _, twisted_app, client, pump = self.connect(TLSMemoryBIOFactory)
        self.send_records(client, pump, records)
        self.assertEqual(twisted_app.received, records)
        _, app, client, pump = self.connect(TunnelTLSFactory)
        self.send_records(client, pump, records)
        self.assertEqual(app.received, [b"".join(records)])

    def test_large_read(self) -> None:
        """
        Records of 16 kB, more than one C{SSL_read} takes at once in
        Twisted's size, arrive whole and in order.
        """
        records = [bytes([i]) * 16384 for i in range(6)]
        _, app, client, pump = self.connect(TunnelTLSFactory)
        self.send_records(client, pump, records)
        self.assertEqual(b"".join(app.received), b"".join(records))

    def test_close_after_data(self) -> None:
        """
        The records read with the peer's close_notify are delivered before
        the connection ends, cleanly.
        """
        client_app, app, client, pump = self.connect(TunnelTLSFactory)
        client._write(b"last words")
        client.loseConnection()
        pump.flush()
        self.assertEqual(app.received, [b"last words"])
        self.assertIsNotNone(app.lost)

    def test_aborted_in_delivery(self) -> None:
        """
        An application that aborts in C{dataReceived} gets nothing more,
        and the connection goes.
        """
        _, app, client, pump = self.connect(TunnelTLSFactory)
        app.abort_on = b"stop"
        self.send_records(client, pump, [b"one", b"stop"])
        self.send_records(client, pump, [b"more"])
        self.assertEqual(app.received, [b"onestop"])
        self.assertIsNotNone(app.lost)


class HandshakeDoneTests(_Certified):
    """
    L{TunnelTLSProtocol.when_handshake_done}: the agent's hello that
    resumes a session waits for the handshake and carries proofs bound to
    the connection's keying material.
    """

    def pair(self, client_app: Any, server_app: Any) -> tuple[Any, Any]:
        """
        C{client_app} in a L{TunnelTLSProtocol} client, C{server_app} in
        a server, joined in memory; nothing moved yet.

        @return: the client's TLS protocol and the pump.
        """
        client_factory = TunnelTLSFactory(self.client_options, True, Factory.forProtocol(lambda: client_app), clock=self.clock)
        server_factory = TunnelTLSFactory(self.server_options, False, Factory.forProtocol(lambda: server_app), clock=self.clock)
        client = client_factory.buildProtocol(None)
        server = server_factory.buildProtocol(None)
        pump = connect(server, makeFakeServer(server), client, makeFakeClient(client), greet=False, clock=self.clock)
        return client, pump

    def test_called_once_before_any_data(self) -> None:
        """
        The callback runs once, when the handshake is done and before the
        application reads anything; asked again after, it is not taken.
        """
        events: list[Any] = []

        class App(Recorder):
            def connectionMade(self) -> None:
                events.append(("taken", self.transport.when_handshake_done(lambda: events.append("done"))))

            def dataReceived(self, data: bytes) -> None:
                events.append(data)

        server_app = Recorder()
        server_app.connectionMade = lambda: server_app.transport.write(b"hi")  # type: ignore[method-assign]
        client, pump = self.pair(App(), server_app)
        pump.flush()
        self.clock.advance(0)
        pump.flush()
        self.assertEqual(events, [("taken", True), "done", b"hi"])
        self.assertFalse(client.when_handshake_done(lambda: events.append("again")))
        self.assertNotIn("again", events)

    def test_bound_proofs_in_the_hello(self) -> None:
        """
        An agent's tunnel protocol with a hello that resumes a session
        holds the hello until the handshake, then sends it with what the
        seal gives: here the client's keying material, which the contact
        point's end of the same connection exports alike.
        """
        from spwm.security.keys import EXPORTER_LABEL, KEY_LENGTH
        from spwm.tunnel.protocol import AgentTunnelFactory, ContactTunnelFactory

        class App:
            def __getattr__(self, name: str) -> Any:
                return lambda *args, **kwargs: None

        told: list[Any] = []

        class Seal:
            def seal_hello(self, path: Any, hello: dict[str, Any]) -> dict[str, Any]:
                binding = path.export_keying_material(EXPORTER_LABEL, KEY_LENGTH).hex()
                return {**hello, "resume": {**hello["resume"], "bound": {"binding": binding}}}

            def sent(self, path: Any) -> None:
                told.append(path)

        agent = AgentTunnelFactory(
            App(), self.clock, "agent-1", hello={"resume": {"session_id": "s1", "users": []}}, seal=Seal()
        ).buildProtocol(None)
        contact = ContactTunnelFactory(App(), self.clock).buildProtocol(None)
        _, pump = self.pair(agent, contact)
        pump.flush()
        self.clock.advance(0)
        pump.flush()
        binding = contact.export_keying_material(EXPORTER_LABEL, KEY_LENGTH)
        self.assertIsNotNone(binding)
        self.assertEqual(contact.peer_hello["resume"], {"session_id": "s1", "users": [], "bound": {"binding": binding.hex()}})
        self.assertEqual(told, [agent])
        self.assertEqual(agent.local_hello["resume"]["bound"], {"binding": binding.hex()})
        self.assertEqual(agent.peer_hello.get("resume_bound"), 1)
        self.assertTrue(agent.is_open)

    def test_hello_as_made_when_the_seal_says_none(self) -> None:
        """
        A seal that changes nothing: the hello goes as it was made, once
        the handshake is done, and nothing is told sent.
        """
        from spwm.tunnel.protocol import AgentTunnelFactory, ContactTunnelFactory

        class App:
            def __getattr__(self, name: str) -> Any:
                return lambda *args, **kwargs: None

        asked: list[Any] = []

        class Seal:
            def seal_hello(self, path: Any, hello: dict[str, Any]) -> None:
                asked.append(dict(hello))

            def sent(self, path: Any) -> None:
                raise AssertionError("told")

        agent = AgentTunnelFactory(App(), self.clock, "agent-1", hello={"paths": 1}, seal=Seal()).buildProtocol(None)
        contact = ContactTunnelFactory(App(), self.clock).buildProtocol(None)
        _, pump = self.pair(agent, contact)
        pump.flush()
        self.clock.advance(0)
        pump.flush()
        self.assertTrue(agent.is_open)
        self.assertFalse(agent.hello_held)
        self.assertEqual([hello.get("paths") for hello in asked], [1])
        self.assertEqual(contact.peer_hello.get("paths"), 1)
        self.assertNotIn("resume", contact.peer_hello)


class ClientEndpointTests(SynchronousTestCase):
    """
    L{TunnelTLSClientEndpoint}, the agent's C{wrapClientTLS}.
    """

    def test_connects_in_tls(self) -> None:
        """
        The endpoint below gets a L{TunnelTLSFactory} for a client around
        the application's factory; the application's protocol comes out.
        """
        app = Protocol()
        app_factory = Factory.forProtocol(lambda: app)
        below = FakeEndpoint()
        endpoint = TunnelTLSClientEndpoint(ssl.optionsForClientTLS("contact.example.test"), below)
        got: list[Any] = []
        endpoint.connect(app_factory).addCallback(got.append)
        factory = below.factories[0]
        self.assertIsInstance(factory, TunnelTLSFactory)
        self.assertIs(factory.wrappedFactory, app_factory)
        tls = factory.buildProtocol(None)
        self.assertIsInstance(tls, TunnelTLSProtocol)
        below.connected.callback(tls)
        self.assertEqual(got, [app])


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    A client endpoint that keeps the factories it is given and answers
    with C{connected}.
    """

    def __init__(self) -> None:
        self.factories: list[Any] = []
        self.connected: Deferred[Any] = Deferred()

    def connect(self, factory: Any) -> Deferred[Any]:
        self.factories.append(factory)
        return self.connected


class _TurnClock(Clock):
    """
    A clock whose reactor says when its turn ends (as
    L{spwm.leanpoll.turn_end} finds it).
    """

    def __init__(self) -> None:
        super().__init__()
        self._spwm_turn_ends: list[Any] = []

    def end_turn(self) -> None:
        leanpoll._end_turn(self._spwm_turn_ends)


class TurnWritesTests(_Certified):
    """
    The application's writes of one reactor turn leave together at the
    turn's end where the reactor says when it ends, without a
    C{callLater(0)}; elsewhere as in Twisted's class.
    """

    def connect(self, clock: Clock) -> tuple[Recorder, Recorder, Any, Any]:
        """
        A client (Twisted's TLS) and a server (L{TunnelTLSFactory} on
        C{clock}) in memory, handshake done.

        @return: the two applications, the server's TLS protocol and the pump.
        """
        client_app, server_app = Recorder(), Recorder()
        client_factory = TLSMemoryBIOFactory(
            self.client_options, True, Factory.forProtocol(lambda: client_app), clock=Clock()
        )
        server_factory = TunnelTLSFactory(self.server_options, False, Factory.forProtocol(lambda: server_app), clock=clock)
        client = client_factory.buildProtocol(None)
        server = server_factory.buildProtocol(None)
        pump = connect(server, makeFakeServer(server), client, makeFakeClient(client), greet=False, clock=clock)
        pump.flush()
        return client_app, server_app, server, pump

    def test_at_the_turn_end(self) -> None:
        """
        Two writes of one turn wait for its end, with no timer, and then
        arrive together.
        """
        clock = _TurnClock()
        client_app, app, server, pump = self.connect(clock)
        app.transport.write(b"INVITE ")  # type: ignore[union-attr]
        app.transport.write(b"sip:bob")  # type: ignore[union-attr]
        self.assertEqual(clock.getDelayedCalls(), [])
        pump.flush()
        self.assertEqual(client_app.received, [])
        clock.end_turn()
        pump.flush()
        self.assertEqual(client_app.received, [b"INVITE sip:bob"])
        clock.end_turn()
        pump.flush()
        self.assertEqual(client_app.received, [b"INVITE sip:bob"])

    def test_other_clocks(self) -> None:
        """
        On a clock without turn ends the writes of a turn leave in the
        next one, through a C{callLater(0)}, as with Twisted's class.
        """
        clock = Clock()
        client_app, app, server, pump = self.connect(clock)
        app.transport.write(b"hello")  # type: ignore[union-attr]
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [clock.seconds()])
        # (the pump advances the clock)
        pump.flush()
        self.assertEqual(client_app.received, [b"hello"])

    def test_large_write_at_once(self) -> None:
        """
        Writes past the aggregation's 64 kB leave at once, before the
        turn's end, whole and in order.
        """
        clock = _TurnClock()
        client_app, app, server, pump = self.connect(clock)
        data = bytes(range(256)) * 300
        app.transport.write(b"head")  # type: ignore[union-attr]
        app.transport.write(data)  # type: ignore[union-attr]
        pump.flush()
        self.assertEqual(b"".join(client_app.received), b"head" + data)
        clock.end_turn()
        pump.flush()
        self.assertEqual(b"".join(client_app.received), b"head" + data)

    def test_close_sends_what_waits(self) -> None:
        """
        A connection closed in the turn it was written to sends what it
        wrote before its close; the turn's end then writes nothing.
        """
        clock = _TurnClock()
        client_app, app, server, pump = self.connect(clock)
        app.transport.write(b"BYE")  # type: ignore[union-attr]
        app.transport.loseConnection()  # type: ignore[union-attr]
        pump.flush()
        clock.end_turn()
        pump.flush()
        self.assertEqual(client_app.received, [b"BYE"])
        self.assertIsNotNone(client_app.lost)
        self.assertIsNotNone(app.lost)
