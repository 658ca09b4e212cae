"""
Integration tests on loopback with real sockets and TLS: UDP forwarding
through an agent and a contact point, refused certificates, reconnection
after the contact point restarts.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from spwm.tap import agent, contact
from spwm.tap.assembly import build_agent, build_contact
from spwm.testing.certs import TestCA
from spwm.testing.ports import free_port
from spwm.tunnel.info import describe_tunnel


class Echo(DatagramProtocol):
    """
    Answers each datagram with C{echo:} and it; keeps where each came from.
    """

    noisy = False

    def __init__(self) -> None:
        self.sources: list[tuple[str, int]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.append(addr)
        self.transport.write(b"echo:" + data, addr)


class Client(DatagramProtocol):
    noisy = False

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.waiter: defer.Deferred[bytes] | None = None

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)
        if self.waiter is not None:
            w, self.waiter = self.waiter, None
            w.callback(data)


def wait_until(predicate: Any, timeout: float = 30.0, step: float = 0.05) -> defer.Deferred[None]:
    """
    Poll C{predicate} on the real reactor; fail after C{timeout} seconds.
    """
    d: defer.Deferred[None] = defer.Deferred()
    deadline = reactor.seconds() + timeout

    def check() -> None:
        if predicate():
            d.callback(None)
        elif reactor.seconds() > deadline:
            d.errback(AssertionError(f"condition not met within {timeout} s"))
        else:
            reactor.callLater(step, check)

    check()
    return d


@defer.inlineCallbacks
def settle(predicate: Any, timeout: float = 30.0, step: float = 0.05) -> Any:
    """
    Poll C{predicate} on the real reactor until it holds or C{timeout}
    seconds have passed, without failing: the caller asserts afterwards,
    with its own message (for a condition that is reached by waiting,
    such as the last packets of a stream arriving, on a busy host).

    @return: whether it held.
    """
    try:
        yield wait_until(predicate, timeout, step)
    except AssertionError:
        return False
    return True


class LoopbackBase(TestCase):
    """
    Agent and contact point as L{build_agent} and L{build_contact} assemble them
    for their twistd plugins, on loopback.
    """

    timeout = 60

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        self.cert = self.ca.issue(["contact.spwm.test", "127.0.0.1"], "contact")
        self.echo_server = Echo()
        self.echo_port = reactor.listenUDP(0, self.echo_server, interface="127.0.0.1")
        self.addCleanup(self.echo_port.stopListening)
        self.echo = self.echo_port.getHost().port
        self.log_events: list[dict] = []
        globalLogPublisher.addObserver(self.log_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.log_events.append)

    def start(self, service: Any) -> Any:
        service.service.startService()
        self.addCleanup(service.service.stopService)
        return service

    @defer.inlineCallbacks
    def start_contact(self, port: int = 0, extra: list[str] = ()) -> Any:
        options = contact.Options()
        options.parseOptions(
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--cert", self.cert.cert, "--key", self.cert.key,
             "--allow-forward", f"127.0.0.1:{self.echo}", "--drain-time", "0.5",
             "--sip-address", f"127.0.0.1:{self.free_udp_port()}", *extra]
        )
        service = build_contact(options.config, reactor)
        service.service.startService()
        listening = yield service.listener.listening
        return service, listening.getHost().port

    def start_agent(self, contact_port: int, server_name: str = "contact.spwm.test", extra: list[str] = ()) -> Any:
        options = agent.Options()
        local = self.free_udp_port()
        options.parseOptions(
            ["--contact", f"127.0.0.1:{contact_port}", "--server-name", server_name, "--ca", self.ca.ca_file,
             "--forward-udp", f"{local}=127.0.0.1:{self.echo}", "--reconnect-max", "0.5",
             "--sip-listen", f"127.0.0.1:{self.free_udp_port()}", *extra]
        )
        service = self.start(build_agent(options.config, reactor))
        return service, local

    def free_udp_port(self) -> int:
        """
        A port free for both UDP and TCP on loopback now.
        """
        return free_port()

    @defer.inlineCallbacks
    def exchange(self, local: int, payload: bytes, tries: int = 120) -> Any:
        """
        Send C{payload} to the agent's forward port C{local} and wait for
        the echo, sending again every 0.25 s up to C{tries} times (30 s by
        default: the tunnel's forward may take seconds on a busy host).

        @return: the first answer, or C{None} if none came.
        """
        client = Client()
        port = reactor.listenUDP(0, client, interface="127.0.0.1")
        try:
            for _ in range(tries):
                client.waiter = defer.Deferred()
                port.write(payload, ("127.0.0.1", local))
                timeout = reactor.callLater(0.25, lambda w=client.waiter: w.called or w.callback(None))
                got = yield client.waiter
                if timeout.active():
                    timeout.cancel()
                if got is not None:
                    return got
            return None
        finally:
            yield port.stopListening()



class LoopbackTests(LoopbackBase):
    """
    Forwarding, certificate checks, reconnection and socket options.
    """

    @defer.inlineCallbacks
    def test_udp_forward_over_tls(self) -> None:
        """
        A datagram to the agent's forward port reaches the target through the
        TLS tunnel and the answer comes back to the sender.
        """
        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        agent_service, local = self.start_agent(port)
        yield wait_until(lambda: agent_service.tunnel_service.tunnel is not None)
        got = yield self.exchange(local, b"ping")
        self.assertEqual(got, b"echo:ping")
        self.assertEqual(agent_service.tunnel_service.tunnel.transport.negotiatedProtocol, b"spwm/1")

    @defer.inlineCallbacks
    def test_udp_forward_kept_across_a_resumption(self) -> None:
        """
        Every connection of the agent's session is reset: the session is
        resumed, and the forward goes on from the same source address at
        the contact point; what the target sends to it reaches the sender
        before the sender sends again (the contact point opens the flow's
        channel again as it resumes the session, and the agent takes it).
        """
        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        agent_service, local = self.start_agent(port)
        yield wait_until(lambda: agent_service.tunnel_service.tunnel is not None)
        client = Client()
        client_port = reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(client_port.stopListening)

        @defer.inlineCallbacks
        def exchange(payload: bytes) -> Any:
            for _ in range(120):
                client_port.write(payload, ("127.0.0.1", local))
                if (yield settle(lambda: b"echo:" + payload in client.received, timeout=0.25)):
                    return
            self.fail(f"no echo of {payload!r}")

        yield exchange(b"one")
        source = self.echo_server.sources[-1]
        front = agent_service.paths.front if agent_service.paths is not None else None
        connections = list(front.paths) if front is not None else [agent_service.tunnel_service.tunnel]
        for connection in connections:
            connection.transport.abortConnection()
        yield wait_until(lambda: agent_service.resumption.resumed == 1)
        pushed = yield settle(lambda: (self.echo_port.write(b"push", source), b"push" in client.received)[1], step=0.1)
        self.assertTrue(pushed, "what the target sent after the resumption did not reach the sender")
        yield exchange(b"two")
        self.assertEqual(self.echo_server.sources[-1], source)
        self.assertEqual(service.forwarder.open_count, 1)
        # the contact point opened the flow, the agent took it and opened
        # none of its own (none crossed)
        self.assertEqual(
            (service.forwarder.reopened, agent_service.forwarder.reopened, service.forwarder.crossed), (1, 1, 0)
        )

    @defer.inlineCallbacks
    def test_certificate_mismatch_refused(self) -> None:
        """
        A contact point whose certificate does not match the expected name is
        refused, and the log says why.
        """
        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        agent_service, local = self.start_agent(port, server_name="other.spwm.test")
        yield wait_until(
            lambda: any("does not match server name" in str(e.get("reason", "")) for e in self.log_events)
        )
        self.assertIsNone(agent_service.tunnel_service.tunnel)
        self.assertEqual(len(service.factory.tunnels), 0)

    @defer.inlineCallbacks
    def test_reconnect_after_restart(self) -> None:
        """
        When the contact point stops and starts again on the same port, the
        agent reconnects and forwarding works again.
        """
        service, port = yield self.start_contact()
        agent_service, local = self.start_agent(port)
        yield wait_until(lambda: agent_service.tunnel_service.tunnel is not None)
        first = agent_service.tunnel_service.tunnel
        yield service.service.stopService()
        yield wait_until(lambda: agent_service.tunnel_service.tunnel is None)
        service, _ = yield self.start_contact(port)
        self.addCleanup(service.service.stopService)
        yield wait_until(lambda: agent_service.tunnel_service.tunnel is not None and agent_service.tunnel_service.tunnel is not first)
        got = yield self.exchange(local, b"again")
        self.assertEqual(got, b"echo:again")

    @defer.inlineCallbacks
    def test_forward_not_allowed(self) -> None:
        """
        A forward to a target the contact point does not allow is refused with
        a log line on both sides and nothing is sent.
        """
        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        options = agent.Options()
        local = self.free_udp_port()
        options.parseOptions(
            ["--contact", f"127.0.0.1:{port}", "--server-name", "contact.spwm.test", "--ca", self.ca.ca_file,
             "--forward-udp", f"{local}=127.0.0.1:9", "--sip-listen", f"127.0.0.1:{self.free_udp_port()}"]
        )
        agent_service = self.start(build_agent(options.config, reactor))
        yield wait_until(lambda: agent_service.tunnel_service.tunnel is not None)
        got = yield self.exchange(local, b"x", tries=2)
        self.assertIsNone(got)
        self.assertEqual(service.forwarder.refused, 2)
        self.assertTrue(any("refused" in e.get("log_format", "") for e in self.log_events))

    @defer.inlineCallbacks
    def test_socket_options_under_tls(self) -> None:
        """
        Under TLS both ends set TCP_NODELAY on the real socket (the TLS
        transport's own handle is the OpenSSL connection, not the socket).
        """
        from spwm.tunnel.protocol import find_socket

        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        agent_service, local = self.start_agent(port, extra=["--tunnel-connections", "1"])
        yield wait_until(lambda: agent_service.tunnel_service.tunnel is not None and len(service.factory.tunnels) == 1)
        for tunnel in [agent_service.tunnel_service.tunnel, *service.factory.tunnels]:
            sock = find_socket(tunnel.transport)
            self.assertIsInstance(sock, socket.socket)
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

    @defer.inlineCallbacks
    def test_idle_tunnel_kept_alive_by_the_kernel(self) -> None:
        """
        Both ends offer C{tcp_keepalive}: the sockets are set up for the
        kernel's keepalive from the keepalive options (idle 1 s, dead 4 s),
        and over three intervals of silence neither end sends a PING, and
        the tunnel stays up and carries data afterwards.
        """
        from spwm.tunnel.protocol import find_socket

        timing = ["--keepalive-interval", "1", "--keepalive-timeout", "4"]
        service, port = yield self.start_contact(extra=timing)
        self.addCleanup(service.service.stopService)
        agent_service, local = self.start_agent(port, extra=["--tunnel-connections", "1", *timing])
        yield wait_until(lambda: agent_service.tunnel_service.tunnel is not None and len(service.factory.tunnels) == 1)
        ends = [agent_service.tunnel_service.tunnel, *service.factory.tunnels]
        for tunnel in ends:
            self.assertTrue(tunnel.connection.tcp_keepalive)
            sock = find_socket(tunnel.transport)
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 1)
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 4000)
        self.assertEqual([describe_tunnel(t, 0.0)["keepalive"] for t in ends], ["tcp", "tcp"])
        yield deferLater(reactor, 3.5, lambda: None)
        self.assertEqual([t.connection.stats.pings_sent for t in ends], [0, 0])
        self.assertIs(agent_service.tunnel_service.tunnel, ends[0])
        got = yield self.exchange(local, b"still")
        self.assertEqual(got, b"echo:still")

    @defer.inlineCallbacks
    def test_ping_keepalive(self) -> None:
        """
        With C{--ping-keepalive} at the contact point the welcome does not
        offer C{tcp_keepalive}: both ends keep the PING keepalive.
        """
        timing = ["--keepalive-interval", "0.5", "--keepalive-timeout", "4"]
        service, port = yield self.start_contact(extra=[*timing, "--ping-keepalive"])
        self.addCleanup(service.service.stopService)
        agent_service, local = self.start_agent(port, extra=["--tunnel-connections", "1", *timing])
        yield wait_until(lambda: agent_service.tunnel_service.tunnel is not None and len(service.factory.tunnels) == 1)
        ends = [agent_service.tunnel_service.tunnel, *service.factory.tunnels]
        self.assertEqual([t.connection.tcp_keepalive for t in ends], [False, False])
        self.assertEqual([describe_tunnel(t, 0.0)["keepalive"] for t in ends], ["ping", "ping"])
        yield deferLater(reactor, 1.6, lambda: None)
        self.assertGreater(sum(t.connection.stats.pings_sent for t in ends), 0)


class MutualTLSTests(LoopbackBase):
    """
    Mutual TLS: the contact point takes only agents whose certificate comes
    from its client CA and names their agent id.
    """

    def start_contact(self, port: int = 0, extra: list[str] = ()) -> Any:
        return LoopbackBase.start_contact(self, port, ["--client-ca", self.ca.ca_file, *extra])

    def client(self, name: str) -> list[str]:
        files = self.ca.issue([name], "client-" + name, client=True)
        return ["--client-cert", files.cert, "--client-key", files.key]

    @defer.inlineCallbacks
    def test_udp_forward_over_tls(self) -> None:
        """
        An agent with a good client certificate gets its tunnel.
        """
        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        agent_service, local = self.start_agent(port, extra=["--agent-id", "agent-1", *self.client("agent-1")])
        yield wait_until(lambda: agent_service.tunnel_service.tunnel is not None)
        got = yield self.exchange(local, b"mtls")
        self.assertEqual(got, b"echo:mtls")

    @defer.inlineCallbacks
    def test_no_client_certificate(self) -> None:
        """
        An agent without a certificate never gets a tunnel.
        """
        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        agent_service, local = self.start_agent(port, extra=["--agent-id", "agent-1"])
        yield wait_until(lambda: agent_service.tunnel_service.attempts >= 2)
        self.assertIsNone(agent_service.tunnel_service.tunnel)
        # the agent's next attempt may be mid-handshake here: none is open
        self.assertEqual([t for t in service.factory.tunnels if t.is_open], [])
        # its status says what to do, in words
        self.assertIn(
            "TLS error: the contact point asks for a client certificate (mutual TLS: give --client-cert and "
            "--client-key) (",
            agent_service.tunnel_service.status()["last_failure"],
        )
        # and so does `spwm status`, under its header
        from spwm.__main__ import render

        line = render(agent_service.status.document()).splitlines()[1]
        self.assertTrue(line.startswith(f"Tunnel to 127.0.0.1:{port}: DOWN after "), line)
        self.assertIn(" failed attempt", line)
        self.assertIn(": TLS error: the contact point asks for a client certificate", line)

    @defer.inlineCallbacks
    def test_expired_client_certificate(self) -> None:
        """
        An agent whose client certificate has expired is refused in the
        handshake; it says that the contact point refused its certificate.
        """
        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        files = self.ca.issue(["agent-1"], "client-expired", client=True, expired=True)
        agent_service, local = self.start_agent(
            port, extra=["--agent-id", "agent-1", "--client-cert", files.cert, "--client-key", files.key]
        )
        yield wait_until(lambda: agent_service.tunnel_service.attempts >= 2)
        self.assertIsNone(agent_service.tunnel_service.tunnel)
        failure = agent_service.tunnel_service.status()["last_failure"]
        self.assertIn("TLS error: the contact point refused this agent's client certificate (", failure)
        self.assertIn("certificate expired; its log says why)", failure)

    @defer.inlineCallbacks
    def test_certificate_for_another_agent(self) -> None:
        """
        A certificate that names another agent id is refused after the
        handshake, with a log line that says so.
        """
        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        agent_service, local = self.start_agent(port, extra=["--agent-id", "agent-1", *self.client("agent-2")])
        tunnels = agent_service.tunnel_service
        # the contact point's line comes first; the agent has its answer
        # once it has closed that connection and says why
        yield wait_until(lambda: "does not match agent id" in (tunnels.status()["last_failure"] or ""), timeout=30)
        self.assertIn(
            "client certificate for agent-2 does not match agent id 'agent-1'", tunnels.status()["last_failure"]
        )
        # no tunnel is open (the agent's next attempt may be mid-way: it
        # reads the contact point's welcome and refusal together)
        self.assertFalse(tunnels.tunnel is not None and tunnels.tunnel.is_open)
        self.assertEqual([t for t in service.factory.tunnels if t.is_open], [])
        # in words, without the representation of an exception
        reasons = {str(e["reason"]) for e in self.log_events if "does not match agent id" in str(e.get("reason", ""))}
        self.assertEqual(reasons, {"client certificate for agent-2 does not match agent id 'agent-1'"})


def sip_register(port: int, expires: int, branch: str) -> bytes:
    return (
        f"REGISTER sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{branch};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.test>;tag=1\r\n"
        f"To: <sip:alice@example.test>\r\n"
        f"Call-ID: reg-{branch}@127.0.0.1\r\n"
        f"CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:alice@127.0.0.1:{port}>\r\n"
        f"Expires: {expires}\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


class Phone(DatagramProtocol):
    """
    A SIP phone on UDP that records what it receives.
    """

    noisy = False

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)


class NoTunnelTests(LoopbackBase):
    """
    The agent without a tunnel answers 503 at once; with --tunnel
    on-demand it connects for a phone and closes when none needs it.
    """

    def phone(self) -> tuple[Phone, int]:
        phone = Phone()
        port = reactor.listenUDP(0, phone, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return phone, port

    @defer.inlineCallbacks
    def test_register_gets_503_without_contact_point(self) -> None:
        """
        With no contact point listening, a REGISTER gets 503 with a
        Retry-After of at least 1 s at once, not silence.
        """
        nobody = self.free_udp_port()
        options = agent.Options()
        sip = self.free_udp_port()
        options.parseOptions(
            ["--contact", f"127.0.0.1:{nobody}", "--server-name", "contact.spwm.test", "--ca", self.ca.ca_file,
             "--sip-listen", f"127.0.0.1:{sip}", "--reconnect-max", "5"]
        )
        self.start(build_agent(options.config, reactor))
        phone, port = self.phone()
        port.write(sip_register(port.getHost().port, 300, "a"), ("127.0.0.1", sip))
        yield wait_until(lambda: phone.received, timeout=5)
        [answer] = phone.received
        self.assertTrue(answer.startswith(b"SIP/2.0 503 "), answer)
        retry = [line for line in answer.split(b"\r\n") if line.lower().startswith(b"retry-after:")]
        self.assertEqual(len(retry), 1)
        self.assertTrue(1 <= int(retry[0].split(b":")[1]) <= 30)

    @defer.inlineCallbacks
    def test_on_demand(self) -> None:
        """
        With --tunnel on-demand the agent has no tunnel at start; a REGISTER
        brings it up and is answered by the contact point's registrar; after
        the registration expired plus --tunnel-idle the tunnel closes with
        go-away and the contact point keeps no session; the next REGISTER
        connects again.
        """
        service, contact_port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        sip = self.free_udp_port()
        options = agent.Options()
        options.parseOptions(
            ["--contact", f"127.0.0.1:{contact_port}", "--server-name", "contact.spwm.test", "--ca", self.ca.ca_file,
             "--sip-listen", f"127.0.0.1:{sip}", "--tunnel", "on-demand", "--tunnel-idle", "0.5"]
        )
        agent_service = self.start(build_agent(options.config, reactor))
        tunnel = agent_service.tunnel_service
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.5, d.callback, None)
        yield d
        self.assertIsNone(tunnel.tunnel)
        self.assertFalse(tunnel.running)
        phone, port = self.phone()
        port.write(sip_register(port.getHost().port, 2, "b"), ("127.0.0.1", sip))
        yield wait_until(lambda: phone.received, timeout=10)
        self.assertTrue(phone.received[0].startswith(b"SIP/2.0 200 "), phone.received[0])
        self.assertIsNotNone(tunnel.tunnel)
        yield wait_until(lambda: agent_service.on_demand.closes == 1, timeout=15)
        yield wait_until(lambda: not service.factory.tunnels, timeout=5)
        self.assertTrue(any("going away" in e.get("log_format", "") for e in self.log_events))
        self.assertEqual(service.resumption.status()["suspended"], 0)
        port.write(sip_register(port.getHost().port, 60, "c"), ("127.0.0.1", sip))
        yield wait_until(lambda: len(phone.received) == 2, timeout=10)
        self.assertTrue(phone.received[1].startswith(b"SIP/2.0 200 "), phone.received[1])

    @defer.inlineCallbacks
    def test_plaintext_contact_point(self) -> None:
        """
        A TLS agent reaching a contact point started with --plaintext logs
        that the contact point answered in plaintext.
        """
        options = contact.Options()
        options.parseOptions(
            ["--listen", "tcp:0:interface=127.0.0.1", "--plaintext",
             "--sip-address", f"127.0.0.1:{self.free_udp_port()}"]
        )
        service = build_contact(options.config, reactor)
        service.service.startService()
        self.addCleanup(service.service.stopService)
        listening = yield service.listener.listening
        self.start_agent(listening.getHost().port)
        yield wait_until(
            lambda: any(
                "answered in plaintext (is it started with --plaintext?)" in str(e.get("reason", ""))
                for e in self.log_events
            )
        )

    @defer.inlineCallbacks
    def test_plaintext_agent_at_tls_contact_point(self) -> None:
        """
        An agent started with --plaintext at a contact point that uses TLS
        logs that the contact point closed without a word and what to do.
        """
        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        self.start_agent(port, extra=["--plaintext"])
        yield wait_until(
            lambda: any(
                "(if it uses TLS, start the agent without --plaintext)" in str(e.get("reason", ""))
                for e in self.log_events
            )
        )
