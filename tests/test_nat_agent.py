# -*- test-case-name: tests.test_nat_agent -*-
"""
The agent needs no inbound connectivity: a real contact point and a real
agent (built by L{build_contact} and L{build_agent}, as C{makeService} builds them) on the in-memory network, the agent
behind a strict NAT that lets only TCP to port 443 out.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol
from twisted.trial.unittest import SynchronousTestCase

from spwm.tap import agent, contact
from spwm.tap.assembly import build_agent, build_contact
from spwm.testing.network import STRICT, FakeNetwork

LAN_CLIENT = "192.0.2.20"
AGENT = "192.0.2.10"
ROUTER_PUBLIC = "198.51.100.2"
CONTACT = "203.0.113.10"
ECHO = "203.0.113.40"
FORWARD_PORT = 5000


class Echo(DatagramProtocol):
    """
    Answers every datagram with C{b"echo:"} and the datagram.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append((data, addr))
        self.transport.write(b"echo:" + data, addr)


class Collect(DatagramProtocol):
    """
    Records every datagram.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append((data, addr))


class Attempt(ClientFactory):
    """
    Records how a connection attempt ends.
    """

    protocol = Protocol

    def __init__(self) -> None:
        self.connected = False
        self.failure: Any = None

    def buildProtocol(self, addr: Any) -> Protocol:
        self.connected = True
        return super().buildProtocol(addr)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.failure = reason


class AgentBehindStrictNATTests(SynchronousTestCase):
    """
    A contact point on the public side, an echo service on an operator host,
    an agent and a LAN client behind a strict NAT.
    """

    def setUp(self) -> None:
        self.network = network = FakeNetwork()
        lan = network.add_segment("lan")
        self.nat = network.add_nat("router", lan, ROUTER_PUBLIC, policy=STRICT)
        self.contact_host = network.add_host("contact", CONTACT)
        self.echo_host = network.add_host("operator", ECHO)
        self.agent_host = network.add_host("agent", AGENT, lan)
        self.client_host = network.add_host("phone", LAN_CLIENT, lan)

        self.echo = Echo()
        self.echo_host.reactor.listenUDP(7, self.echo)

        options = contact.Options()
        options.parseOptions(
            [
                "--listen",
                f"tcp:443:interface={CONTACT}",
                "--plaintext",
                "--allow-forward",
                f"{ECHO}:7",
            ]
        )
        self.contact = build_contact(options.config, reactor=self.contact_host.reactor)
        options = agent.Options()
        options.parseOptions(
            [
                "--contact",
                f"{CONTACT}:443",
                "--plaintext",
                "--agent-id",
                "agent-behind-nat",
                "--forward-udp",
                f"{AGENT}:{FORWARD_PORT}={ECHO}:7",
                # the NAT's mappings of one connection
                "--tunnel-connections",
                "1",
            ]
        )
        self.agent = build_agent(options.config, reactor=self.agent_host.reactor)
        self.tunnel_service = self.agent.tunnel_service
        self.contact.service.startService()
        self.agent.service.startService()
        self.addCleanup(self._stop)
        network.flush()

    def _stop(self) -> None:
        self.agent.service.stopService()
        self.network.flush()
        self.contact.service.stopService()
        self.network.advance(10)

    def test_tunnel_comes_up_through_the_nat(self) -> None:
        """
        The agent connects out through the NAT: the contact point sees one
        tunnel from the NAT's public address, and the NAT holds the only
        mapping, for the agent's TCP connection.
        """
        self.assertIsNotNone(self.tunnel_service.tunnel)
        self.assertTrue(self.tunnel_service.tunnel.is_open)
        [tunnel] = self.contact.factory.tunnels
        self.assertEqual(tunnel.agent_id, "agent-behind-nat")
        self.assertTrue(tunnel.peer.startswith(ROUTER_PUBLIC + ":"), tunnel.peer)
        mappings = self.nat.mappings("tcp")
        self.assertEqual(len(mappings), 1)
        [(inside, public)] = mappings.items()
        self.assertEqual(inside[0], AGENT)
        self.assertEqual(tunnel.peer, f"{public[0]}:{public[1]}")

    def test_forwarded_datagram_reaches_echo_and_returns(self) -> None:
        """
        A datagram from a LAN client to the agent's forward port reaches the
        echo service from the contact point's address, and the answer comes
        back to the client from the forward port; no UDP crossed the NAT.
        """
        client = Collect()
        port = self.client_host.reactor.listenUDP(0, client)
        port.write(b"hello", (AGENT, FORWARD_PORT))
        self.network.flush()

        [(data, source)] = self.echo.seen
        self.assertEqual(data, b"hello")
        self.assertEqual(source[0], CONTACT)
        self.assertEqual(client.seen, [(b"echo:hello", (AGENT, FORWARD_PORT))])
        self.assertEqual(self.nat.mappings("udp"), {})
        self.assertEqual(self.nat.counters["dropped_egress_udp"], 0)

    def test_tunnel_survives_idle_time(self) -> None:
        """
        Keepalives over the outbound connection keep the tunnel (and the NAT
        mapping) alive for longer than the NAT's UDP timeout; a forward still
        works afterwards.
        """
        self.network.advance(300)
        self.assertTrue(self.tunnel_service.tunnel.is_open)
        client = Collect()
        self.client_host.reactor.listenUDP(0, client).write(
            b"later", (AGENT, FORWARD_PORT)
        )
        self.network.flush()
        self.assertEqual(client.seen, [(b"echo:later", (AGENT, FORWARD_PORT))])

    def test_contact_cannot_connect_towards_agent(self) -> None:
        """
        Every connection the contact point's host tries towards the agent
        fails: to the NAT's public address (on the forward port, on the
        port of the tunnel's own mapping, on 443) the NAT drops the attempt,
        and the agent's private address has no route from the public side.
        """
        [public] = self.nat.mappings("tcp").values()
        ports = [FORWARD_PORT, public[1], 443]
        attempts = []
        for port in ports:
            attempt = Attempt()
            self.contact_host.reactor.connectTCP(
                ROUTER_PUBLIC, port, attempt, timeout=5
            )
            attempts.append(attempt)
        direct = Attempt()
        self.contact_host.reactor.connectTCP(AGENT, FORWARD_PORT, direct, timeout=5)
        self.network.advance(6)

        for attempt in attempts + [direct]:
            self.assertFalse(attempt.connected)
            attempt.failure.trap(error.TimeoutError)
        self.assertEqual(self.nat.counters["dropped_unsolicited_tcp"], 3)
        self.assertEqual(
            [(d.reason, d.proto, d.dst) for d in self.nat.drops],
            [("unsolicited", "tcp", (ROUTER_PUBLIC, port)) for port in ports],
        )
        self.assertEqual(self.network.counters["tcp_unroutable"], 1)
        # The tunnel itself is untouched.
        self.assertTrue(self.tunnel_service.tunnel.is_open)

    def test_contact_cannot_send_udp_towards_agent(self) -> None:
        """
        Datagrams from the contact point's host to the NAT's public address
        are dropped as unsolicited, even on the forward port.
        """
        sender = self.contact_host.reactor.listenUDP(0, Collect())
        sender.write(b"in?", (ROUTER_PUBLIC, FORWARD_PORT))
        self.network.flush()
        self.assertEqual(self.nat.counters["dropped_unsolicited_udp"], 1)
        self.assertEqual(self.network.counters["udp_delivered"], 0)

    def test_direct_udp_is_dropped_by_strict_nat(self) -> None:
        """
        Baseline: without the tunnel, a LAN client's datagram to the echo
        service is dropped by the strict NAT's egress policy.
        """
        client = Collect()
        self.client_host.reactor.listenUDP(0, client).write(b"direct", (ECHO, 7))
        self.network.flush()
        self.assertEqual(self.echo.seen, [])
        self.assertEqual(client.seen, [])
        self.assertEqual(self.nat.counters["dropped_egress_udp"], 1)

    def test_agent_reconnects_out_after_nat_forgets(self) -> None:
        """
        When the NAT loses the tunnel's mapping (a reboot of the router), the
        tunnel hangs, keepalive declares it dead, and the agent connects out
        again with a new mapping.
        """
        old = self.tunnel_service.tunnel
        self.nat.release("tcp", next(iter(self.nat.mappings("tcp"))))
        self.network.advance(300)
        new = self.tunnel_service.tunnel
        self.assertIsNotNone(new)
        self.assertIsNot(new, old)
        self.assertTrue(new.is_open)
        self.assertEqual(len(self.nat.mappings("tcp")), 1)
