"""
Integration tests on loopback: SIP applications reach the embedded registrar
through a running agent and contact point over UDP, TCP and TLS, and
malformed requests get a 400 from the running agent.
"""

from __future__ import annotations

import socket
import ssl as stdlib_ssl
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from spwm.sip.message import make_response, parse_message
from spwm.tap import agent, contact
from spwm.tap.assembly import build_agent, build_contact
from spwm.testing.certs import TestCA
from spwm.testing.ports import free_port as _free_port
from tests.integration.test_tunnel_loopback import wait_until


def free_port() -> int:
    """
    A loopback port free for SIP over UDP and TCP, and TLS on the next one.
    """
    return _free_port(following=1)


def register(user: str, port: int, transport: str) -> bytes:
    return (
        f"REGISTER sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bK-{user}-{transport};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:{user}@example.test>;tag=1\r\n"
        f"To: <sip:{user}@example.test>\r\n"
        f"Call-ID: reg-{user}-{transport}@127.0.0.1\r\n"
        f"CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@127.0.0.1:{port};transport={transport.lower()}>\r\n"
        f"Expires: 300\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def read_response(sock: Any, limit: int = 65536) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class RunningHalves(TestCase):
    """
    A running agent and contact point (embedded registrar) on loopback.
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.ca = TestCA(self.mktemp())
        cert = self.ca.issue(["contact.spwm.test"], "contact")
        self.sip_cert = self.ca.issue(["127.0.0.1"], "agent-sip")
        options = contact.Options()
        options.parseOptions(
            ["--listen", "tcp:0:interface=127.0.0.1", "--cert", cert.cert, "--key", cert.key,
             "--sip-address", f"127.0.0.1:{free_port()}", "--drain-time", "0.2"]
        )
        self.contact = build_contact(options.config, reactor)
        self.contact.service.startService()
        self.addCleanup(self.contact.service.stopService)
        listening = yield self.contact.listener.listening
        self.sip_port = free_port()
        options = agent.Options()
        options.parseOptions(
            ["--contact", f"127.0.0.1:{listening.getHost().port}", "--server-name", "contact.spwm.test",
             "--ca", self.ca.ca_file, "--sip-listen", f"127.0.0.1:{self.sip_port}",
             "--sip-tls-cert", self.sip_cert.cert, "--sip-tls-key", self.sip_cert.key,
             "--media-ports", "41000-41099"]
        )
        self.agent = build_agent(options.config, reactor)
        self.agent.service.startService()
        self.addCleanup(self.agent.service.stopService)
        yield wait_until(lambda: self.agent.tunnel_service.tunnel is not None)

    def udp_exchange(self, data: bytes) -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.bind(("127.0.0.1", 0))
            s.sendto(data, ("127.0.0.1", self.sip_port))
            return s.recv(65535)


class SipLoopbackTests(RunningHalves):
    """
    Applications over UDP, TCP and TLS.
    """

    @defer.inlineCallbacks
    def test_register_over_udp(self) -> Any:
        """
        A REGISTER over UDP to the agent is answered 200 by the embedded
        registrar, and the contact point records the registration.
        """
        reply = yield threads.deferToThread(self.udp_exchange, register("alice", 40001, "UDP"))
        self.assertTrue(reply.startswith(b"SIP/2.0 200"), reply[:60])
        # (over the agent's connections: a further one may not be
        # attached to its session yet)
        sessions = {t.session_id for t in self.contact.factory.tunnels}
        regs = [r.aor for session in sorted(sessions) for r in self.contact.sip_core.registrations(session)]
        self.assertEqual(regs, ["sip:alice@example.test"])

    @defer.inlineCallbacks
    def test_register_over_tcp_and_tls(self) -> Any:
        """
        The same over TCP, and over TLS on the port after the SIP port.
        """

        def tcp() -> bytes:
            with socket.create_connection(("127.0.0.1", self.sip_port), timeout=5) as s:
                s.sendall(register("bob", 40003, "TCP"))
                return read_response(s)

        def tls() -> bytes:
            context = stdlib_ssl.create_default_context(cafile=self.ca.ca_file)
            with socket.create_connection(("127.0.0.1", self.sip_port + 1), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(register("carol", 40005, "TLS"))
                    return read_response(s)

        reply = yield threads.deferToThread(tcp)
        self.assertTrue(reply.startswith(b"SIP/2.0 200"), reply[:60])
        reply = yield threads.deferToThread(tls)
        self.assertTrue(reply.startswith(b"SIP/2.0 200"), reply[:60])

    @defer.inlineCallbacks
    def test_malformed_request_gets_400(self) -> Any:
        """
        A request with a broken CSeq gets a 400 that says what is wrong,
        from the running agent.
        """
        bad = register("dave", 40007, "UDP").replace(b"CSeq: 1 REGISTER", b"CSeq: x REGISTER")
        reply = yield threads.deferToThread(self.udp_exchange, bad)
        self.assertTrue(reply.startswith(b"SIP/2.0 400"), reply[:80])
        self.assertIn(b"CSeq", reply.split(b"\r\n")[0])

    @defer.inlineCallbacks
    def test_invite_before_register_forbidden(self) -> Any:
        """
        An INVITE from an application whose tunnel has no registration yet
        gets 403 from the contact point.
        """
        invite = (
            b"INVITE sip:bob@example.test SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:40009;branch=z9hG4bK-inv;rport\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:eve@example.test>;tag=e\r\nTo: <sip:bob@example.test>\r\n"
            b"Call-ID: inv-eve@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:eve@127.0.0.1:40009>\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        reply = yield threads.deferToThread(self.udp_exchange, invite)
        self.assertTrue(reply.startswith(b"SIP/2.0 403"), reply[:80])


def _request(method: str, ruri: str, user: str, to: str, port: int, extra: str = "") -> bytes:
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{method}-{user};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:{user}@example.test>;tag=t-{user}\r\n"
        f"To: <sip:{to}@example.test>\r\n"
        f"Call-ID: {method}-{user}@127.0.0.1\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: <sip:{user}@127.0.0.1:{port}>\r\n"
        f"{extra}"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


class PreloadedRouteTests(RunningHalves):
    """
    Phones set up the way users set them up: with the agent as outbound
    proxy (a pre-loaded Route naming the agent's listening address) or as
    their registrar address.
    """

    def scenario(self) -> tuple[bytes, bytes, bytes, bytes]:
        agent_addr = ("127.0.0.1", self.sip_port)
        route = f"Route: <sip:127.0.0.1:{self.sip_port};lr>\r\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(
            socket.AF_INET, socket.SOCK_DGRAM
        ) as b:
            for s in (a, b):
                s.settimeout(5)
                s.bind(("127.0.0.1", 0))
            pa, pb = a.getsockname()[1], b.getsockname()[1]
            a.sendto(_request("REGISTER", "sip:example.test", "alice", "alice", pa, route), agent_addr)
            reg_a = a.recv(65535)
            b.sendto(_request("REGISTER", f"sip:127.0.0.1:{self.sip_port}", "bob", "bob", pb), agent_addr)
            reg_b = b.recv(65535)
            a.sendto(_request("INVITE", "sip:bob@example.test", "alice", "bob", pa, route), agent_addr)
            invite = b.recv(65535)
            answer = make_response(parse_message(invite), 200, "OK", to_tag="bob")
            b.sendto(answer.to_bytes(), agent_addr)
            ok = a.recv(65535)
        return reg_a, reg_b, invite, ok

    @defer.inlineCallbacks
    def test_outbound_proxy_and_registrar_address(self) -> Any:
        """
        alice registers with the agent's own address pre-loaded as Route,
        bob with the agent as registrar address (Request-URI naming the
        agent): both get 200 from the embedded registrar under their
        address-of-record; alice then calls bob, with the Route again:
        bob receives the INVITE at his contact and his 200 reaches alice.
        """
        reg_a, reg_b, invite, ok = yield threads.deferToThread(self.scenario)
        self.assertTrue(reg_a.startswith(b"SIP/2.0 200"), reg_a[:80])
        self.assertTrue(reg_b.startswith(b"SIP/2.0 200"), reg_b[:80])
        registrar = self.contact.sip_core.registrar
        self.assertEqual(len(registrar.bindings("sip:alice@example.test")), 1)
        self.assertEqual(len(registrar.bindings("sip:bob@example.test")), 1)
        msg = parse_message(invite)
        self.assertEqual(msg.method, "INVITE")
        self.assertTrue(msg.uri.startswith("sip:bob@127.0.0.1:"), msg.uri)
        self.assertTrue(ok.startswith(b"SIP/2.0 200"), ok[:80])
