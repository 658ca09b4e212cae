"""
The tunnel over QUIC on loopback: agents with C{--udp-path only} and a
contact point with C{--quic-listen}, a REGISTER and a call with RTP both
ways, media in QUIC DATAGRAM frames; a wrong certificate name gives the
TLS/TCP tunnel's one line.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from spwm.tap import agent, contact
from spwm.tap.assembly import build_agent, build_contact
from spwm.testing.certs import TestCA
from spwm.testing.phone import Phone
from spwm.tunnel.quic import QuicTunnelTransport
from tests.integration.test_sip_loopback import free_port
from tests.integration.test_tunnel_loopback import wait_until


class QuicLoopbackTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.ca = TestCA(self.mktemp())
        cert = self.ca.issue(["contact.spwm.test"], "contact")
        self.tcp_port = free_port()
        self.quic_port = free_port()
        self.log_events: list[dict] = []
        globalLogPublisher.addObserver(self.log_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log_events.append)
        options = contact.Options()
        options.parseOptions(
            ["--listen", f"tcp:{self.tcp_port}:interface=127.0.0.1", "--quic-listen", f"127.0.0.1:{self.quic_port}",
             "--cert", cert.cert, "--key", cert.key, "--sip-address", f"127.0.0.1:{free_port()}",
             "--media-ports", "43000-43099", "--media-allow", "127.0.0.0/8", "--drain-time", "0.2"]
        )
        self.contact = build_contact(options.config, reactor)
        self.contact.service.startService()
        self.addCleanup(self.contact.service.stopService)
        yield self.contact.listener.listening
        assert self.contact.quic_listener is not None
        yield self.contact.quic_listener.listening

    def start_agent(self, name: str, media: str, *extra: str) -> Any:
        options = agent.Options()
        options.parseOptions(
            ["--contact", f"127.0.0.1:{self.tcp_port}", "--udp-path", "only", "--quic-port", str(self.quic_port),
             "--server-name", "contact.spwm.test", "--ca", self.ca.ca_file, "--agent-id", name,
             "--sip-listen", f"127.0.0.1:{free_port()}", "--media-ports", media, "--reconnect-max", "0.5", *extra]
        )
        built = build_agent(options.config, reactor)
        built.service.startService()
        self.addCleanup(built.service.stopService)
        return built

    @defer.inlineCallbacks
    def test_register_and_call(self) -> Any:
        """
        Two agents whose tunnels run over QUIC only: both phones register,
        alice calls bob, RTP flows both ways; every tunnel the contact
        point holds is a QUIC one, and the media crossed in QUIC DATAGRAM
        frames, not on the stream.
        """
        agents = [self.start_agent("a1", "43100-43199"), self.start_agent("a2", "43200-43299")]
        yield wait_until(lambda: all(a.tunnel_service.tunnel is not None for a in agents))
        answered: defer.Deferred[Any] = defer.Deferred()
        alice = Phone(reactor, "alice", "example.test", agents[0].config.sip_listen[0])
        bob = Phone(reactor, "bob", "example.test", agents[1].config.sip_listen[0])
        bob.on_incoming = lambda c: answered.called or answered.callback(c)
        for phone in (alice, bob):
            phone.start()
            self.addCleanup(phone.stop)
        response = yield alice.register()
        self.assertEqual(response.status, 200)
        response = yield bob.register()
        self.assertEqual(response.status, 200)
        a_call = yield alice.call("bob")
        b_call = yield answered
        yield b_call.established
        a_call.start_media()
        b_call.start_media()
        yield wait_until(lambda: a_call.rx.unique >= 25 and b_call.rx.unique >= 25)
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)

        tunnels = list(self.contact.factory.tunnels)
        self.assertEqual(len(tunnels), 2)
        for tunnel in tunnels:
            self.assertIsInstance(tunnel.transport, QuicTunnelTransport)
        for built in agents:
            transport = built.tunnel_service.tunnel.transport
            self.assertIsInstance(transport, QuicTunnelTransport)
            self.assertGreaterEqual(transport.stats.datagrams_sent, 25)
            self.assertGreaterEqual(transport.stats.datagrams_received, 25)
            self.assertEqual(transport.stats.datagrams_on_stream, 0)
        quic = self.contact.status.document()["quic"]
        self.assertEqual(quic["connections"], 2)
        self.assertGreaterEqual(quic["retries_sent"], 2)
        failures = [e for e in self.log_events if e.get("log_failure") is not None]
        self.assertEqual(failures, [])

    @defer.inlineCallbacks
    def test_connect_quic_tunnel(self) -> Any:
        """
        The function a session uses to open a QUIC path: it fires with the
        tunnel once its handshake has completed, with the hello extras the
        factory gave; a wrong name fails with the certificate sentence.
        """
        from spwm.limits import QuicLimits
        from spwm.tunnel.api import Router
        from spwm.tunnel.protocol import AgentTunnelFactory
        from spwm.tunnel.quic import QuicConnectionClosed, client_configuration, connect_quic_tunnel

        def configuration(name: str) -> Any:
            return lambda: client_configuration(name, self.ca.ca_file, QuicLimits(), 45.0)

        factory = AgentTunnelFactory(Router(None, {}, None), reactor, "probe", hello={"paths": 1})
        tunnel = yield connect_quic_tunnel(reactor, "127.0.0.1", self.quic_port, configuration("contact.spwm.test"), factory)
        self.assertTrue(tunnel.is_open)
        self.assertIsInstance(tunnel.transport, QuicTunnelTransport)
        (contact_side,) = list(self.contact.factory.tunnels)
        self.assertEqual(contact_side.peer_hello.get("paths"), 1)
        self.assertIsNotNone(tunnel.transport.rtt)
        tunnel.close(0, "probe done")
        yield tunnel.when_closed()
        with self.assertRaises(QuicConnectionClosed) as caught:
            yield connect_quic_tunnel(reactor, "127.0.0.1", self.quic_port, configuration("wrong.spwm.test"), factory)
        self.assertEqual(
            str(caught.exception), "certificate for contact.spwm.test does not match server name wrong.spwm.test"
        )

    @defer.inlineCallbacks
    def test_probe_nobody_answers(self) -> Any:
        """
        A QUIC attempt to a UDP port where nothing answers fails with one
        reason that says what to check, and logs nothing itself: no
        warning of the handshake timeout, none of Twisted's lines for its
        UDP socket (C{... starting on N}, C{(UDP Port N Closed)}).
        """
        import socket

        from twisted.internet.task import deferLater

        from spwm.limits import QuicLimits, TunnelLimits
        from spwm.tunnel.api import Router
        from spwm.tunnel.protocol import AgentTunnelFactory
        from spwm.tunnel.quic import QuicConnectionClosed, client_configuration, connect_quic_tunnel

        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        factory = AgentTunnelFactory(Router(None, {}, None), reactor, "probe", TunnelLimits(handshake_timeout=0.5))
        configuration = lambda: client_configuration("contact.spwm.test", self.ca.ca_file, QuicLimits(), 45.0)
        del self.log_events[:]
        with self.assertRaises(QuicConnectionClosed) as caught:
            yield connect_quic_tunnel(reactor, "127.0.0.1", port, configuration, factory)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(
            str(caught.exception),
            f"no handshake within 0.5 s; nothing came back from UDP port {port}: does the contact point"
            " listen for QUIC (--quic-listen) and does the network let UDP through?",
        )
        lines = [e for e in self.log_events if e.get("log_level") is None or e["log_level"].name != "debug"]
        self.assertEqual([e.get("log_format") or e.get("message") for e in lines], [])

    def test_socket_buffers(self) -> None:
        """
        The listener's UDP socket, which takes every session's media, has
        the receive and send buffers of C{QuicLimits.socket_buffer} (4 MiB,
        as far as the kernel's maxima allow; Linux reports twice what it
        grants), not the system's default.
        """
        import socket

        from spwm.limits import QuicLimits

        wanted = QuicLimits().socket_buffer
        handle = self.contact.quic_listener._port.port.getHandle()
        for option, maximum in ((socket.SO_RCVBUF, "rmem_max"), (socket.SO_SNDBUF, "wmem_max")):
            with open(f"/proc/sys/net/core/{maximum}") as f:
                granted = min(wanted, int(f.read()))
            self.assertGreaterEqual(handle.getsockopt(socket.SOL_SOCKET, option), 2 * granted)

    @defer.inlineCallbacks
    def test_wrong_name(self) -> Any:
        """
        A certificate that does not name --server-name: the attempt fails
        with the TLS/TCP tunnel's sentence in one line, no traceback.
        """
        self.start_agent("a3", "43300-43399", "--server-name", "wrong.spwm.test")
        expected = "certificate for contact.spwm.test does not match server name wrong.spwm.test"

        def lines() -> list[dict]:
            return [e for e in self.log_events if e.get("reason") == expected]

        yield wait_until(lambda: len(lines()) >= 1, timeout=15)
        self.assertIn("failed", lines()[0]["log_format"])
        self.assertEqual([e for e in self.log_events if e.get("log_failure") is not None], [])
        # the agent retries; no attempt gets a tunnel up at the contact point
        self.assertEqual([t for t in self.contact.factory.tunnels if t.is_open], [])
        self.assertEqual([e for e in self.log_events if "tunnel up" in e.get("log_format", "")], [])
