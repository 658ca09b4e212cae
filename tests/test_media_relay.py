"""
Tests for L{spwm.media.relay}: latching, drop counting, the allow policy.

Also home of the fake UDP reactor used by the media tests (no real sockets).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorUDP, IUDPTransport
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from spwm.media.relay import AllowPolicy, MediaRelayEndpoint
from spwm.testing.tunnel import FakeTunnel


class FakeSocket:
    """
    Records C{setsockopt} calls.
    """

    def __init__(self) -> None:
        self.options: dict[tuple[int, int], int] = {}

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options[level, option] = value


@implementer(IUDPTransport)
class FakeUdpPort:
    """
    A bound UDP port that records what is written to it.

    @ivar sent: C{(datagram, address)} in the order written.
    """

    def __init__(self, reactor: FakeUdpReactor, interface: str, port: int, protocol: Any) -> None:
        self.reactor = reactor
        self.interface = interface
        self.port = port
        self.protocol = protocol
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.socket = FakeSocket()
        self.listening = True

    def getHandle(self) -> FakeSocket:
        return self.socket

    def write(self, packet: bytes, addr: Any = None) -> None:
        assert self.listening, "write on a closed port"
        self.sent.append((packet, addr))

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError()

    def getHost(self) -> Any:
        return (self.interface, self.port)

    def stopListening(self) -> None:
        if self.listening:
            self.listening = False
            del self.reactor.udp[self.interface, self.port]
            self.protocol.doStop()

    def setBroadcastAllowed(self, enabled: bool) -> None:
        pass

    def getBroadcastAllowed(self) -> bool:
        return False

    def receive(self, data: bytes, addr: tuple[str, int]) -> None:
        """
        Deliver a datagram to the protocol, as the reactor would.
        """
        self.protocol.datagramReceived(data, addr)


@implementer(IReactorUDP)
class FakeUdpReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that binds fake UDP ports.

    @ivar udp: the bound ports by (interface, port).
    @ivar refuse: ports whose binding fails (in use elsewhere).
    """

    def __init__(self) -> None:
        super().__init__()
        self.udp: dict[tuple[str, int], FakeUdpPort] = {}
        self.refuse: set[int] = set()

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUdpPort:
        if (interface, port) in self.udp or port in self.refuse:
            raise CannotListenError(interface, port, OSError("in use"))
        bound = self.udp[interface, port] = FakeUdpPort(self, interface, port, protocol)
        protocol.makeConnection(bound)
        return bound


class FakeFakesTests(SynchronousTestCase):
    """
    The fakes provide the interfaces they stand in for.
    """

    def test_interfaces(self) -> None:
        """
        L{FakeUdpReactor} provides C{IReactorUDP}, its ports C{IUDPTransport},
        and binding a bound port fails.
        """
        reactor = FakeUdpReactor()
        verifyObject(IReactorUDP, reactor)
        port = reactor.listenUDP(4000, MediaRelayEndpoint(), interface="192.0.2.1")
        verifyObject(IUDPTransport, port)
        self.assertRaises(CannotListenError, reactor.listenUDP, 4000, MediaRelayEndpoint(), interface="192.0.2.1")


def _bound(strict: bool = False, policy: AllowPolicy | None = None, component: int = 0):
    reactor = FakeUdpReactor()
    endpoint = MediaRelayEndpoint(component=component, strict=strict, policy=policy)
    port = reactor.listenUDP(40000, endpoint, interface="198.51.100.1")
    endpoint.port = port
    tunnel = FakeTunnel()
    endpoint.attach(tunnel.send_datagram, 7)
    return endpoint, port, tunnel


class LatchingTests(SynchronousTestCase):
    """
    Symmetric RTP restricted to the negotiated host.
    """

    def test_sets_receive_buffer(self) -> None:
        """
        Binding sets SO_RCVBUF to the configured size (4 MiB by default).
        """
        _, port, _ = _bound()
        self.assertEqual(port.socket.options[socket.SOL_SOCKET, socket.SO_RCVBUF], 4 * 1024 * 1024)

    def test_negotiated_host_latches(self) -> None:
        """
        Before any packet, media from the tunnel goes to the negotiated
        address; the first packet from the negotiated host (any port) latches
        and goes into the tunnel with the channel id and component; replies
        then go to the latched address.
        """
        endpoint, port, tunnel = _bound(component=1)
        endpoint.expect("192.0.2.10", 4000)
        endpoint.send(b"early")
        self.assertEqual(port.sent, [(b"early", ("192.0.2.10", 4000))])
        port.receive(b"rtp1", ("192.0.2.10", 5555))
        self.assertEqual(tunnel.datagrams, [(7, b"rtp1", 1)])
        self.assertEqual(endpoint.peer, ("192.0.2.10", 5555))
        endpoint.send(b"reply")
        self.assertEqual(port.sent[-1], (b"reply", ("192.0.2.10", 5555)))
        port.receive(b"rtp2", ("192.0.2.10", 5555))
        self.assertEqual(
            (endpoint.packets_in, endpoint.bytes_in, endpoint.packets_out, endpoint.bytes_out, endpoint.latches),
            (2, 8, 2, 10, 1),
        )

    def test_other_hosts_dropped_and_counted(self) -> None:
        """
        Packets from any other host are dropped and counted, before and
        after latching, and never change the latched address (RTP bleed and
        injection).
        """
        endpoint, port, tunnel = _bound()
        endpoint.expect("192.0.2.10", 4000)
        port.receive(b"inject", ("203.0.113.66", 4000))
        port.receive(b"ok", ("192.0.2.10", 4000))
        port.receive(b"inject", ("203.0.113.66", 4000))
        self.assertEqual(tunnel.datagrams, [(7, b"ok", 0)])
        self.assertEqual(endpoint.dropped_source, 2)
        self.assertEqual(endpoint.peer, ("192.0.2.10", 4000))
        self.assertEqual(endpoint.counters()["dropped_source"], 2)

    def test_relatch_same_host(self) -> None:
        """
        Outside strict mode, a new port of the negotiated host re-latches
        (NAT rebinding).
        """
        endpoint, port, tunnel = _bound()
        endpoint.expect("192.0.2.10", 4000)
        port.receive(b"a", ("192.0.2.10", 4000))
        port.receive(b"b", ("192.0.2.10", 4002))
        self.assertEqual(endpoint.peer, ("192.0.2.10", 4002))
        self.assertEqual(endpoint.latches, 2)

    def test_strict_requires_port(self) -> None:
        """
        In strict mode only the negotiated host I{and} port latch.
        """
        endpoint, port, tunnel = _bound(strict=True)
        endpoint.expect("192.0.2.10", 4000)
        port.receive(b"a", ("192.0.2.10", 4002))
        self.assertEqual((tunnel.datagrams, endpoint.dropped_source), ([], 1))
        port.receive(b"b", ("192.0.2.10", 4000))
        self.assertEqual(tunnel.datagrams, [(7, b"b", 0)])

    def test_unknown_host_name(self) -> None:
        """
        A host name in the SDP (not an IP literal) latches on the first
        sender outside strict mode; in strict mode nothing latches and
        nothing is sent.
        """
        endpoint, port, tunnel = _bound()
        endpoint.expect("host.example.com", 4000)
        endpoint.send(b"x")
        self.assertEqual((port.sent, endpoint.dropped_no_target), ([], 1))
        port.receive(b"a", ("192.0.2.99", 1234))
        self.assertEqual(endpoint.peer, ("192.0.2.99", 1234))
        endpoint, port, tunnel = _bound(strict=True)
        endpoint.expect("host.example.com", 4000)
        port.receive(b"a", ("192.0.2.99", 4000))
        self.assertEqual((endpoint.peer, endpoint.dropped_source), (None, 1))

    def test_no_expectation(self) -> None:
        """
        Before the SDP is known nothing latches and nothing is sent.
        """
        endpoint, port, tunnel = _bound()
        port.receive(b"a", ("192.0.2.10", 4000))
        endpoint.send(b"b")
        self.assertEqual((endpoint.dropped_source, endpoint.dropped_no_target), (1, 1))
        self.assertEqual((tunnel.datagrams, port.sent), ([], []))

    def test_no_channel(self) -> None:
        """
        Packets accepted before a channel is attached (or after detach) are
        dropped and counted.
        """
        endpoint, port, tunnel = _bound()
        endpoint.detach()
        endpoint.expect("192.0.2.10", 4000)
        port.receive(b"a", ("192.0.2.10", 4000))
        self.assertEqual((tunnel.datagrams, endpoint.dropped_no_channel), ([], 1))

    def test_hold_stops_sending(self) -> None:
        """
        A hold address stops media towards the endpoint (and keeps the
        negotiated host for latching); an address again resumes it.
        """
        endpoint, port, tunnel = _bound()
        endpoint.expect("192.0.2.10", 4000)
        port.receive(b"a", ("192.0.2.10", 4000))
        endpoint.expect(None, 4000, held=True)
        endpoint.send(b"x")
        self.assertEqual((port.sent, endpoint.dropped_no_target), ([], 1))
        port.receive(b"b", ("192.0.2.10", 4000))
        self.assertEqual(len(tunnel.datagrams), 2)
        endpoint.expect("192.0.2.10", 4000)
        endpoint.send(b"y")
        self.assertEqual(port.sent, [(b"y", ("192.0.2.10", 4000))])

    def test_new_host_resets_latch(self) -> None:
        """
        A re-offer naming another host drops the old latch: the old host can
        no longer send or receive.
        """
        endpoint, port, tunnel = _bound()
        endpoint.expect("192.0.2.10", 4000)
        port.receive(b"a", ("192.0.2.10", 4000))
        endpoint.expect("192.0.2.20", 6000)
        endpoint.send(b"x")
        self.assertEqual(port.sent, [(b"x", ("192.0.2.20", 6000))])
        port.receive(b"b", ("192.0.2.10", 4000))
        self.assertEqual(endpoint.dropped_source, 1)


class SignallingHostTests(SynchronousTestCase):
    """
    Outside strict mode (the agent's LAN leg), media from the endpoint's
    signalling host latches like media from its SDP host (symmetric RTP for
    phones that do not send from the address they advertise).
    """

    def _latching(self, strict: bool = False):
        endpoint, port, tunnel = _bound(strict=strict)
        told: list[tuple[Any, Any]] = []
        endpoint.on_latch = lambda address, named: told.append((address, named))
        endpoint.expect("192.0.2.10", 4000, source="192.0.2.20")
        return endpoint, port, tunnel, told

    def test_signalling_host_latches(self) -> None:
        """
        The first packet from the signalling host latches; replies go to
        it, not to the advertised address; C{on_latch} hears of it once,
        with the address the SDP named.
        """
        endpoint, port, tunnel, told = self._latching()
        port.receive(b"rtp1", ("192.0.2.20", 5000))
        endpoint.send(b"reply")
        self.assertEqual(tunnel.datagrams, [(7, b"rtp1", 0)])
        self.assertEqual(port.sent, [(b"reply", ("192.0.2.20", 5000))])
        self.assertEqual(told, [(("192.0.2.20", 5000), ("192.0.2.10", 4000))])
        port.receive(b"rtp2", ("192.0.2.20", 5002))
        self.assertEqual(endpoint.peer, ("192.0.2.20", 5002))
        self.assertEqual(len(told), 1)

    def test_unrelated_host_still_dropped(self) -> None:
        """
        A host that is neither the SDP host nor the signalling host never
        latches, before or after the phone latched (not an open relay).
        """
        endpoint, port, tunnel, told = self._latching()
        port.receive(b"inject", ("192.0.2.66", 4000))
        port.receive(b"ok", ("192.0.2.20", 5000))
        port.receive(b"inject", ("203.0.113.66", 5000))
        self.assertEqual(tunnel.datagrams, [(7, b"ok", 0)])
        self.assertEqual(endpoint.dropped_source, 2)
        self.assertEqual(endpoint.peer, ("192.0.2.20", 5000))

    def test_sdp_address_not_reported(self) -> None:
        """
        Latching onto exactly the address the SDP named is not reported.
        """
        endpoint, port, tunnel, told = self._latching()
        port.receive(b"rtp", ("192.0.2.10", 4000))
        self.assertEqual((endpoint.peer, told), (("192.0.2.10", 4000), []))

    def test_reoffer_keeps_signalling_latch(self) -> None:
        """
        A re-offer from the same phone (same SDP host, new port) keeps the
        latch on its signalling host.
        """
        endpoint, port, tunnel, told = self._latching()
        port.receive(b"rtp", ("192.0.2.20", 5000))
        endpoint.expect("192.0.2.10", 4100)
        endpoint.send(b"x")
        self.assertEqual(port.sent, [(b"x", ("192.0.2.20", 5000))])

    def test_strict_ignores_signalling_host(self) -> None:
        """
        In strict mode (the contact point's public leg) the signalling
        host is ignored.
        """
        endpoint, port, tunnel, told = self._latching(strict=True)
        port.receive(b"rtp", ("192.0.2.20", 4000))
        self.assertEqual((tunnel.datagrams, endpoint.dropped_source, told), ([], 1, []))


class AllowPolicyTests(SynchronousTestCase):
    """
    The contact point never sends media to special or unlisted ranges.
    """

    def test_special_ranges_refused(self) -> None:
        """
        With the contact point's default policy, loopback, link-local,
        multicast, unspecified, reserved and non-literal hosts are refused;
        other addresses are allowed.
        """
        policy = AllowPolicy()
        for host in ["127.0.0.1", "::1", "169.254.1.1", "fe80::1", "224.0.0.1", "ff02::1", "0.0.0.0", "::", "255.255.255.255", "::ffff:127.0.0.1", "example.com"]:
            self.assertFalse(policy.permits(host), host)
        for host in ["192.0.2.10", "198.51.100.9", "2001:db8::1", "10.1.2.3"]:
            self.assertTrue(policy.permits(host), host)

    def test_allow_list(self) -> None:
        """
        With C{--media-allow} networks, only hosts inside them are allowed;
        an explicit network may cover loopback (test set-ups).
        """
        policy = AllowPolicy(["198.51.100.0/24", "2001:db8::/32"])
        self.assertTrue(policy.permits("198.51.100.9"))
        self.assertTrue(policy.permits("2001:db8::5"))
        self.assertFalse(policy.permits("192.0.2.10"))
        self.assertTrue(AllowPolicy(["127.0.0.0/8"]).permits("127.0.0.1"))
        self.assertRaises(ValueError, AllowPolicy, ["not a network"])

    def test_agent_policy(self) -> None:
        """
        The agent's policy (no special blocking) allows loopback phones.
        """
        self.assertTrue(AllowPolicy(block_special=False).permits("127.0.0.1"))
        self.assertFalse(AllowPolicy(block_special=False).permits("0.0.0.0"))

    def test_refusal_names_option(self) -> None:
        """
        L{AllowPolicy.refusal} says why a host is refused and which
        C{--media-allow} would allow it; C{None} for an allowed host.
        """
        policy = AllowPolicy()
        self.assertIsNone(policy.refusal("192.0.2.10"))
        self.assertIn("need --media-allow 127.0.0.0/8", policy.refusal("127.0.0.1"))
        self.assertIn("--media-allow 127.0.0.0/8", policy.refusal("::ffff:127.0.0.1"))
        self.assertIn("--media-allow ::1/128", policy.refusal("::1"))
        self.assertIn("--media-allow 169.254.1.1/32", policy.refusal("169.254.1.1"))
        self.assertIn("not an IP address", policy.refusal("example.com"))
        self.assertIn("unspecified", policy.refusal("0.0.0.0"))
        listed = AllowPolicy(["198.51.100.0/24"]).refusal("192.0.2.10")
        self.assertIn("outside every --media-allow network (198.51.100.0/24)", listed)
        self.assertIn("add --media-allow 192.0.2.10/32", listed)

    def test_endpoint_refuses(self) -> None:
        """
        An endpoint with the contact policy neither sends to nor latches on
        a refused host, even when the SDP names it.
        """
        for host in ["127.0.0.1", "169.254.0.5", "192.0.2.10"]:
            policy = AllowPolicy(["198.51.100.0/24"] if host == "192.0.2.10" else ())
            endpoint, port, tunnel = _bound(policy=policy)
            endpoint.expect(host, 4000)
            endpoint.send(b"x")
            port.receive(b"a", (host, 4000))
            self.assertEqual((port.sent, tunnel.datagrams), ([], []), host)
            self.assertEqual((endpoint.dropped_no_target, endpoint.dropped_source), (1, 1), host)


class BranchTests(SynchronousTestCase):
    """
    Several branches (early dialogs of a forked call), each with its own
    expectation and latch, on one endpoint.
    """

    A = ("203.0.113.20", 6000)
    B = ("203.0.113.30", 7000)

    def _two(self, strict: bool = True):
        endpoint, port, tunnel = _bound(strict=strict)
        endpoint.expect(*self.A, tag="a")
        endpoint.expect(*self.B, tag="b")
        return endpoint, port, tunnel

    def test_single_branch_writes_once(self) -> None:
        """
        Without branch information (the L{expect} of a call that did not
        fork) the endpoint has one branch and writes one copy.
        """
        endpoint, port, tunnel = _bound()
        endpoint.expect(*self.A)
        endpoint.send(b"x")
        self.assertEqual(port.sent, [(b"x", self.A)])
        self.assertEqual((endpoint.branches, endpoint.packets_out), ((None,), 1))

    def test_both_branches_latch_and_receive(self) -> None:
        """
        Each branch latches on its own negotiated host and port (strict):
        packets from both go into the tunnel, and every datagram from the
        tunnel is written to both, counted per datagram written.
        """
        endpoint, port, tunnel = self._two()
        endpoint.send(b"early")
        self.assertEqual(port.sent, [(b"early", self.A), (b"early", self.B)])
        port.receive(b"from-a", self.A)
        port.receive(b"from-b", self.B)
        port.receive(b"from-a2", self.A)
        port.receive(b"from-b2", self.B)
        self.assertEqual(
            [d for _, d, _ in tunnel.datagrams], [b"from-a", b"from-b", b"from-a2", b"from-b2"]
        )
        self.assertEqual((endpoint.latches, endpoint.dropped_source), (2, 0))
        endpoint.send(b"x")
        self.assertEqual(port.sent[-2:], [(b"x", self.A), (b"x", self.B)])
        self.assertEqual((endpoint.packets_out, endpoint.bytes_out), (4, 12))

    def test_other_port_of_branch_host_refused(self) -> None:
        """
        Strict source holds per branch: another port of a branch's host
        latches nothing, and a host no branch negotiated neither.
        """
        endpoint, port, tunnel = self._two()
        port.receive(b"x", ("203.0.113.20", 6002))
        port.receive(b"x", ("203.0.113.99", 6000))
        self.assertEqual((tunnel.datagrams, endpoint.dropped_source), ([], 2))

    def test_retain_winner(self) -> None:
        """
        After L{retain} with the winner's tag, the loser's packets are
        dropped and counted and nothing more is sent to it; the winner's
        latch stays.
        """
        endpoint, port, tunnel = self._two()
        port.receive(b"a", self.A)
        port.receive(b"b", self.B)
        endpoint.retain(["b"])
        self.assertEqual(endpoint.branches, ("b",))
        port.receive(b"a-late", self.A)
        port.receive(b"b-more", self.B)
        self.assertEqual([d for _, d, _ in tunnel.datagrams], [b"a", b"b", b"b-more"])
        self.assertEqual(endpoint.dropped_source, 1)
        del port.sent[:]
        endpoint.send(b"y")
        self.assertEqual(port.sent, [(b"y", self.B)])
        self.assertEqual(endpoint.peer, self.B)

    def test_forget_and_hold_per_branch(self) -> None:
        """
        A held branch gets nothing while the other still does; a forgotten
        branch neither sends nor receives; with no branch left nothing is
        sent and the drop is counted.
        """
        endpoint, port, tunnel = self._two()
        endpoint.expect(None, 6000, held=True, tag="a")
        endpoint.send(b"x")
        self.assertEqual(port.sent, [(b"x", self.B)])
        endpoint.forget("b")
        endpoint.send(b"y")
        self.assertEqual((len(port.sent), endpoint.dropped_no_target), (1, 1))
        port.receive(b"b", self.B)
        self.assertEqual(endpoint.dropped_source, 1)
        endpoint.forget("a")
        self.assertEqual(endpoint.branches, ())

    def test_non_strict_relatch_per_branch(self) -> None:
        """
        Outside strict mode a branch re-latches on another port of its own
        host without disturbing the other branch.
        """
        endpoint, port, tunnel = self._two(strict=False)
        port.receive(b"a", self.A)
        port.receive(b"b", self.B)
        port.receive(b"a2", ("203.0.113.20", 6100))
        del port.sent[:]
        endpoint.send(b"x")
        self.assertEqual(port.sent, [(b"x", ("203.0.113.20", 6100)), (b"x", self.B)])
        self.assertEqual(endpoint.latches, 3)
