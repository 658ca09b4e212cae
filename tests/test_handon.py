"""
Tests for L{spwm.handon}: the decisions (pure), then a worker that hands a
connection on and one that takes it, over in-memory transports and a fake
clock.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from spwm.handon import (
    HandOn,
    HandOnReceiver,
    HandOnTarget,
    _Relay,
    encode_header,
    first_frame,
    handon_target,
    hello_message,
    parse_header,
    socket_path,
)
from spwm.limits import TunnelLimits
from spwm.security.keys import EXPORTER_LABEL, KEY_LENGTH
from spwm.tunnel.connection import Role, State, TunnelConnection
from spwm.tunnel.frames import PREFACE_SIZE, FrameType, encode_control, encode_frame, encode_preface
from spwm.tunnel.info import describe_tunnel
from spwm.tunnel.protocol import ContactTunnelFactory, TunnelProtocol
from spwm.workers import WorkerPorts
from tests.test_tunnel_protocol import RecordingApp

SHARED = 5061
PORTS = WorkerPorts(5062, 0, 2)


class FirstFrameTests(SynchronousTestCase):
    def test_incomplete(self) -> None:
        frame = encode_control({"op": "hello", "agent_id": "a"})
        self.assertIsNone(first_frame(b""))
        self.assertIsNone(first_frame(frame[:5]))
        self.assertIsNone(first_frame(frame[:-1]))

    def test_complete_with_more(self) -> None:
        frame = encode_control({"op": "hello", "agent_id": "a"})
        self.assertEqual(first_frame(frame + b"more"), (frame, b"more"))

    def test_hello(self) -> None:
        self.assertEqual(hello_message(encode_control({"op": "hello", "x": 1})), {"op": "hello", "x": 1})

    def test_not_a_hello(self) -> None:
        self.assertIsNone(hello_message(encode_control({"op": "resume"})))
        # JSON that is not an object (encode_control takes objects only)
        self.assertIsNone(hello_message(encode_frame(FrameType.CONTROL, 0, 0, b"[1]")))
        self.assertIsNone(hello_message(encode_frame(FrameType.CONTROL, 0, 0, b"{not json")))
        self.assertIsNone(hello_message(encode_frame(FrameType.PING, 0, 0, b"12345678")))
        self.assertIsNone(hello_message(encode_frame(FrameType.CONTROL, 0, 3, b'{"op":"hello"}')))


class TargetTests(SynchronousTestCase):
    def test_resume_of_another_worker(self) -> None:
        hello = {"op": "hello", "resume": {"session_id": "ab-w1"}}
        self.assertEqual(handon_target(hello, PORTS, True), HandOnTarget(1, "resume", "ab-w1"))

    def test_attach_of_another_worker(self) -> None:
        hello = {"op": "hello", "paths": 1, "attach": {"session_id": "ab-w1"}}
        self.assertEqual(handon_target(hello, PORTS, True), HandOnTarget(1, "attach", "ab-w1"))

    def test_stays(self) -> None:
        """
        A new session, this worker's, one of no worker of ours, a
        malformed one, or any on the worker's own port (a redirect serves
        it): no hand-on.
        """
        for hello, shared in [
            ({"op": "hello"}, True),
            ({"op": "hello", "resume": {"session_id": "ab-w0"}}, True),
            ({"op": "hello", "resume": {"session_id": "ab-w2"}}, True),
            ({"op": "hello", "resume": {"session_id": "ab"}}, True),
            ({"op": "hello", "resume": {"session_id": 7}}, True),
            ({"op": "hello", "resume": "ab-w1"}, True),
            ({"op": "hello", "resume": {"session_id": "ab-w1"}}, False),
            ({"op": "hello", "attach": {"session_id": "ab-w1"}}, False),
        ]:
            self.assertIsNone(handon_target(hello, PORTS, shared), (hello, shared))
        self.assertIsNone(handon_target(None, PORTS, True))


class HeaderTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        line = encode_header("192.0.2.7", 40000, b"\x01" * 32, ("TLSv1.3", "TLS_AES_256_GCM_SHA384"))
        self.assertEqual(
            parse_header(line + b"rest"),
            (("192.0.2.7", 40000, b"\x01" * 32, ("TLSv1.3", "TLS_AES_256_GCM_SHA384")), b"rest"),
        )
        self.assertEqual(parse_header(encode_header("2001:db8::1", 1, None)), (("2001:db8::1", 1, None, None), b""))
        # a TLS field that is not a version and a cipher is not taken
        self.assertEqual(
            parse_header(b'{"v":1,"host":"h","port":1,"exporter":null,"tls":[5]}\n'), (("h", 1, None, None), b"")
        )

    def test_incomplete(self) -> None:
        self.assertIsNone(parse_header(encode_header("192.0.2.7", 1, None)[:-1]))

    def test_bad(self) -> None:
        for data in [
            b"x" * 2000,
            b"not json\n",
            b'{"v":2,"host":"h","port":1}\n',
            b'{"v":1,"port":1}\n',
            b'{"v":1,"host":"h","port":true}\n',
            b'{"v":1,"host":"h","port":1,"exporter":5}\n',
            b'{"v":1,"host":"h","port":1,"exporter":"zz"}\n',
        ]:
            self.assertRaises(ValueError, parse_header, data)

    def test_socket_path(self) -> None:
        self.assertEqual(socket_path("/run/x", 3), "/run/x/w3.sock")


class FakeHandOn(HandOn):
    """
    A L{HandOn} whose connections to the other workers the test makes.
    """

    def __init__(self, clock: Clock, limit: int = 10) -> None:
        super().__init__(clock, "/nonexistent", PORTS, SHARED, limit)
        self.connecting: list[tuple[int, Any, Deferred[Any]]] = []

    def connect(self, worker: int, front: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.connecting.append((worker, front, d))
        return d


class Agent:
    """
    The agent's tunnel core, fed by hand.
    """

    def __init__(self, hello: dict[str, Any]) -> None:
        self.core = TunnelConnection(Role.AGENT, 0.0, agent_id="agent", hello=hello)

    def send(self) -> bytes:
        return self.core.data_to_send(0.0)

    def receive(self, data: bytes) -> list[Any]:
        return self.core.receive_data(data, 0.0)


def contact(clock: Clock, handon: HandOn, port: int = SHARED) -> tuple[ContactTunnelFactory, TunnelProtocol, StringTransport]:
    factory = ContactTunnelFactory(RecordingApp(), clock, TunnelLimits())
    factory.worker_ports = PORTS
    factory.tunnel_class = handon.tunnel_class
    tunnel = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
    assert tunnel is not None
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", port), peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
    tunnel.makeConnection(transport)
    return factory, tunnel, transport


class HandingOnTests(SynchronousTestCase):
    """
    The worker that gets a connection for another worker's session on
    the shared port.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.handon = FakeHandOn(self.clock)

    def handshake(self, hello: dict[str, Any], port: int = SHARED) -> tuple[Any, ...]:
        """
        The agent's preface, our preface, the agent's hello.
        """
        factory, tunnel, transport = contact(self.clock, self.handon, port)
        agent = Agent(hello)
        sent = agent.send()
        # the agent sends its hello with its preface; here they arrive apart
        preface, hello_bytes = sent[:PREFACE_SIZE], sent[PREFACE_SIZE:]
        tunnel.dataReceived(preface)
        ours = transport.value()
        self.assertEqual(ours, encode_preface(1, 1))
        transport.clear()
        agent.receive(ours)
        self.assertEqual(agent.send(), b"")
        # in two pieces: the decision waits for the whole frame
        tunnel.dataReceived(hello_bytes[:5])
        tunnel.dataReceived(hello_bytes[5:])
        return factory, tunnel, transport, agent, preface + hello_bytes

    def test_own_session_stays(self) -> None:
        """
        A hello for this worker's session (or a new one) is answered here,
        and the connection is a plain tunnel from then on.
        """
        factory, tunnel, transport, agent, _ = self.handshake({"resume": {"session_id": "ab-w0"}})
        self.assertIs(type(tunnel), TunnelProtocol)
        self.assertEqual(self.handon.connecting, [])
        agent.receive(transport.value())
        self.assertIs(agent.core.state, State.OPEN)
        self.assertIn(tunnel, factory.tunnels)

    def test_preface_and_hello_together(self) -> None:
        """
        The agent's preface and hello in one piece (as an agent sends
        them): our preface, then the hand-on for another worker's session,
        everything the agent sent relayed; for this worker's, the welcome.
        """
        for session, handed in (("ab-w1", True), ("ab-w0", False)):
            factory, tunnel, transport = contact(self.clock, self.handon)
            agent = Agent({"resume": {"session_id": session}})
            sent = agent.send()
            tunnel.dataReceived(sent)
            ours = transport.value()
            self.assertTrue(ours.startswith(encode_preface(1, 1)))
            if handed:
                self.assertEqual(ours, encode_preface(1, 1))
                worker, front, d = self.handon.connecting.pop()
                self.assertEqual((worker, front), (1, tunnel))
                relay = _Relay(tunnel)
                local = StringTransport()
                relay.makeConnection(local)
                d.callback(relay)
                header, rest = parse_header(local.value())  # type: ignore[misc]
                self.assertEqual(rest, sent)
            else:
                self.assertEqual(self.handon.connecting, [])
                agent.receive(ours)
                self.assertEqual(agent.core.state, State.OPEN)

    def test_not_a_hello(self) -> None:
        """
        A first frame that is no hello goes to the tunnel core, which
        refuses it as ever.
        """
        factory, tunnel, transport = contact(self.clock, self.handon)
        tunnel.dataReceived(encode_preface(1, 1))
        transport.clear()
        tunnel.dataReceived(encode_frame(FrameType.SIP, 0, 1, b"REGISTER"))
        self.assertIs(type(tunnel), TunnelProtocol)
        self.assertEqual(self.handon.connecting, [])
        self.assertTrue(transport.value().startswith(bytes([FrameType.ERROR])))
        self.assertTrue(transport.disconnecting)

    def test_own_port_stays(self) -> None:
        """
        On the worker's own port another worker's session is answered here
        (with a redirect, by the session layer).
        """
        _, tunnel, transport, agent, _ = self.handshake({"resume": {"session_id": "ab-w1"}}, port=5062)
        self.assertEqual(self.handon.connecting, [])
        agent.receive(transport.value())
        self.assertIs(agent.core.state, State.OPEN)

    def hand_on(self) -> tuple[Any, ...]:
        factory, tunnel, transport, agent, sent = self.handshake({"resume": {"session_id": "ab-w1"}})
        self.assertEqual(transport.value(), b"", "no welcome here")
        self.assertEqual(transport.producerState, "paused")
        worker, front, d = self.handon.connecting.pop()
        self.assertEqual(self.handon.connecting, [])
        self.assertEqual(worker, 1)
        self.assertIs(front, tunnel)
        return factory, tunnel, transport, agent, sent, d

    def test_relays(self) -> None:
        """
        Connected to the other worker: the header and every byte of the
        agent so far go there, then the agent's further bytes; what comes
        back goes to the agent after the other worker's preface; the
        connection is no tunnel of ours any more.
        """
        factory, tunnel, transport, agent, sent, d = self.hand_on()
        waited: list[Failure] = []
        tunnel.when_established().addErrback(waited.append)
        relay = _Relay(tunnel)
        local = StringTransport()
        relay.makeConnection(local)
        d.callback(relay)
        header, rest = parse_header(local.value())  # type: ignore[misc]
        self.assertEqual(header, ("192.0.2.7", 40000, None, None))  # plaintext: no TLS
        self.assertEqual(rest, sent)
        self.assertEqual(transport.producerState, "producing")
        self.assertNotIn(tunnel, factory.tunnels)
        self.assertEqual(len(waited), 1)
        self.assertEqual((self.handon.counts.open, self.handon.counts.resumes), (1, 1))
        local.clear()
        tunnel.dataReceived(b"more")
        self.assertEqual(local.value(), b"more")
        # the other worker's preface is not the agent's business
        relay.dataReceived(encode_preface(1, 1)[:3])
        relay.dataReceived(encode_preface(1, 1)[3:] + b"welcome")
        relay.dataReceived(b"!")
        self.assertEqual(transport.value(), b"welcome!")
        # no handshake timeout here any more
        self.clock.advance(3600)
        self.assertFalse(transport.disconnecting)

    def test_flow_control(self) -> None:
        """
        The agent's side full: the other worker's socket is not read; the
        other worker's socket full: the agent's is not read.
        """
        _, tunnel, transport, _, _, d = self.hand_on()
        relay = _Relay(tunnel)
        local = StringTransport()
        relay.makeConnection(local)
        d.callback(relay)
        tunnel.pauseProducing()
        self.assertEqual(local.producerState, "paused")
        tunnel.resumeProducing()
        self.assertEqual(local.producerState, "producing")
        local.producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        local.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_closes(self) -> None:
        """
        The agent gone: the other worker's side is closed; the other
        worker gone: the agent's is.
        """
        _, tunnel, transport, _, _, d = self.hand_on()
        relay = _Relay(tunnel)
        local = StringTransport()
        relay.makeConnection(local)
        d.callback(relay)
        tunnel.connectionLost(Failure(ConnectionError("gone")))
        self.assertTrue(local.disconnecting)
        self.assertEqual(self.handon.counts.open, 0)

        _, tunnel, transport, _, _, d = self.hand_on()
        relay = _Relay(tunnel)
        relay.makeConnection(StringTransport())
        d.callback(relay)
        relay.connectionLost(Failure(ConnectionError("gone")))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.handon.counts.open, 0)

    def test_version_mismatch(self) -> None:
        """
        The other worker answers another preface: the relay is cut.
        """
        _, tunnel, transport, _, _, d = self.hand_on()
        relay = _Relay(tunnel)
        local = StringTransport()
        relay.makeConnection(local)
        d.callback(relay)
        relay.dataReceived(encode_preface(2, 2) + b"welcome")
        self.assertTrue(local.disconnected)
        self.assertEqual(transport.value(), b"")

    def test_other_worker_not_there(self) -> None:
        """
        The other worker cannot be reached: the connection is answered here
        as before (the session layer then redirects), counted.
        """
        factory, tunnel, transport, agent, _, d = self.hand_on()
        d.errback(Failure(ConnectError("no such file")))
        self.assertEqual(transport.producerState, "producing")
        self.assertIs(type(tunnel), TunnelProtocol)
        agent.receive(transport.value())
        self.assertIs(agent.core.state, State.OPEN)
        self.assertEqual(self.handon.counts.failed, 1)
        self.assertIn(tunnel, factory.tunnels)

    def test_limit(self) -> None:
        """
        With L{HandOn.limit} hand-ons open, the next connection is answered
        here.
        """
        self.handon.limit = 1
        _, tunnel, _, _, _, d = self.hand_on()
        relay = _Relay(tunnel)
        relay.makeConnection(StringTransport())
        d.callback(relay)
        _, second, transport, agent, _ = self.handshake({"attach": {"session_id": "ab-w1"}, "paths": 1})
        self.assertEqual(self.handon.connecting, [])
        agent.receive(transport.value())
        self.assertIs(agent.core.state, State.OPEN)
        self.assertEqual(self.handon.counts.failed, 1)

    def test_agent_gone_while_connecting(self) -> None:
        """
        The agent's connection is lost before the other worker's socket
        answers: the relay is closed at once.
        """
        _, tunnel, transport, _, _, d = self.hand_on()
        tunnel.connectionLost(Failure(ConnectionError("gone")))
        relay = _Relay(tunnel)
        local = StringTransport()
        relay.makeConnection(local)
        d.callback(relay)
        self.assertTrue(local.disconnecting)
        self.assertEqual(self.handon.counts.open, 0)


class ReceivingTests(SynchronousTestCase):
    """
    The worker that takes a connection handed on.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.handon = FakeHandOn(self.clock)
        self.factory = ContactTunnelFactory(RecordingApp(), self.clock, TunnelLimits(), max_per_host=1)
        self.factory.worker_ports = PORTS

    def receive(self, header: bytes) -> tuple[HandOnReceiver, StringTransport]:
        receiver = HandOnReceiver(self.handon, self.factory)
        transport = StringTransport()
        receiver.makeConnection(transport)
        receiver.dataReceived(header)
        return receiver, transport

    def test_tunnel(self) -> None:
        """
        After the header, a tunnel of this worker with the agent's address
        and the exporter value of its TLS session, answering the preface
        and the hello.
        """
        agent = Agent({"resume": {"session_id": "ab-w0"}})
        exporter = b"\x07" * KEY_LENGTH
        header = encode_header("2001:db8::7", 40000, exporter, ("TLSv1.3", "TLS_AES_128_GCM_SHA256"))
        receiver, transport = self.receive(header[:10])
        self.assertIsNone(receiver.tunnel)
        receiver.dataReceived(header[10:] + agent.send())
        tunnel = receiver.tunnel
        assert tunnel is not None
        self.assertEqual(tunnel.peer, "[2001:db8::7]:40000")
        self.assertEqual(tunnel.transport.getPeer(), IPv6Address("TCP", "2001:db8::7", 40000))
        self.assertEqual(tunnel.export_keying_material(EXPORTER_LABEL, KEY_LENGTH), exporter)
        self.assertIsNone(tunnel.export_keying_material(b"other", KEY_LENGTH))
        self.assertFalse(tunnel.check_client_identity)
        # the status shows the TLS session the other worker terminates,
        # not plaintext
        described = describe_tunnel(tunnel, 0.0)
        self.assertEqual(
            (described["tls"], described["cipher"], described["paths"][0]["transport"]),
            ("TLSv1.3", "TLS_AES_128_GCM_SHA256", "tls"),
        )
        self.assertEqual(transport.value()[:PREFACE_SIZE], encode_preface(1, 1))
        agent.receive(transport.value())
        transport.clear()
        receiver.dataReceived(agent.send())
        agent.receive(transport.value())
        self.assertIs(agent.core.state, State.OPEN)
        self.assertIn(tunnel, self.factory.tunnels)
        self.assertEqual(self.handon.counts.received, 1)
        receiver.connectionLost(Failure(ConnectionError("gone")))
        self.assertNotIn(tunnel, self.factory.tunnels)

    def test_limits(self) -> None:
        """
        The per-address limit counts the agent's address: over it, the
        hand-on connection is closed.
        """
        self.receive(encode_header("192.0.2.7", 1, None))
        receiver, transport = self.receive(encode_header("192.0.2.7", 2, None))
        self.assertIsNone(receiver.tunnel)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.refused, 1)

    def test_bad_header(self) -> None:
        receiver, transport = self.receive(b"GET / HTTP/1.1\n")
        self.assertIsNone(receiver.tunnel)
        self.assertTrue(transport.disconnected)


class StatusTests(SynchronousTestCase):
    def test_status(self) -> None:
        handon = FakeHandOn(Clock())
        self.assertEqual(handon.status(), {"handed_on_open": 0, "handon_failed": 0, "handed_on_in": 0})
        handon.started(HandOnTarget(1, "attach", "x-w1"))
        self.assertEqual((handon.counts.open, handon.counts.attaches, handon.counts.resumes), (1, 1, 0))
        handon.ended()
        self.assertEqual(handon.counts.open, 0)
        json.dumps(handon.status())


class ListenerTests(SynchronousTestCase):
    """
    The worker's hand-on socket.
    """

    def test_replaces_a_stale_socket(self) -> None:
        """
        A socket file left by the worker's previous process is removed; the
        new one is made readable by this user only, with the backlog it was
        given (the tunnel listener's); stopping stops it.
        """
        directory = self.mktemp()
        os.mkdir(directory, 0o700)
        stale = socket_path(directory, 0)
        with open(stale, "w"):
            pass
        listened: list[tuple[str, Any, int, int]] = []

        class Port:
            stopped = False

            def stopListening(self) -> None:
                self.stopped = True

        port = Port()

        class Reactor(Clock):
            def listenUNIX(self, path: str, factory: Any, mode: int, backlog: int) -> Port:
                listened.append((path, factory, mode, backlog))
                return port

        handon = HandOn(Reactor(), directory, PORTS, SHARED, 10, backlog=4096)
        service = handon.service(ContactTunnelFactory(RecordingApp(), Clock(), TunnelLimits()))
        service.startService()
        self.assertFalse(os.path.exists(stale))
        ((path, factory, mode, backlog),) = listened
        self.assertEqual((path, mode, backlog), (stale, 0o600, 4096))
        self.assertIsInstance(factory.buildProtocol(None), HandOnReceiver)
        service.stopService()
        self.assertTrue(port.stopped)
