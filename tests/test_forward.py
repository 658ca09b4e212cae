"""
Tests for L{spwm.forward}: the agent's UDP forwards and their limits, and
the forwards' flows across a lost connection on both halves.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from spwm.forward import AgentForwarder, ContactForwarder
from spwm.testing.tunnel import FakeTunnel
from spwm.tunnel.api import Refusal
from spwm.tunnel.connection import ChannelLimitError, TunnelNotOpenError
from spwm.tunnel.frames import ChannelKind, ErrorCode

from .test_media_relay import FakeUdpPort, FakeUdpReactor

TARGET = "198.51.100.7:7000"


class _ConnectedPort(FakeUdpPort):
    """
    A fake port that can be connected (the contact point's target sockets).
    """

    peer: tuple[str, int] | None = None

    def connect(self, host: str, port: int) -> None:
        self.peer = (host, port)


class _EphemeralUdpReactor(FakeUdpReactor):
    """
    A fake reactor whose port 0 binds the next free port from 50000.
    """

    def __init__(self) -> None:
        super().__init__()
        self._next = 50000

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUdpPort:
        if port == 0:
            port, self._next = self._next, self._next + 1
        bound = self.udp[interface, port] = _ConnectedPort(self, interface, port, protocol)
        protocol.makeConnection(bound)
        return bound


class SenderLimitTests(SynchronousTestCase):
    """
    One forward gives a channel to at most C{max_senders} senders.
    """

    def setUp(self) -> None:
        self.reactor = FakeUdpReactor()
        self.forwarder = AgentForwarder(
            self.reactor, [("127.0.0.1", 6000, "192.0.2.9", 7000)], max_senders=2
        )
        self.forwarder.start()
        self.tunnel = FakeTunnel(first_channel=3)
        self.forwarder.tunnel_established(self.tunnel)
        self.port = self.reactor.udp["127.0.0.1", 6000]

    def test_senders_beyond_the_limit_dropped_and_counted(self) -> None:
        """
        The first C{max_senders} senders get a channel each and their
        datagrams go through; a further sender's are dropped, counted as
        "no channel" (not "no tunnel"), and logged once, not per datagram.
        """
        with capturedLogs() as events:
            for sender in (("192.0.2.1", 1), ("192.0.2.1", 2), ("192.0.2.1", 3)):
                self.port.receive(b"x", sender)
            self.port.receive(b"y", ("192.0.2.1", 3))
            self.port.receive(b"z", ("192.0.2.1", 1))
        self.assertEqual(len(self.tunnel.opened), 2)
        self.assertEqual([(c, d) for c, d, _ in self.tunnel.datagrams], [(3, b"x"), (5, b"x"), (3, b"z")])
        self.assertEqual((self.forwarder.dropped_no_channel, self.forwarder.dropped_no_tunnel), (2, 0))
        warnings = [e for e in events if "no channel for sender" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 2)  # the 1st and 2nd; then the 4th, 8th...

    def test_tunnel_refuses_channel(self) -> None:
        """
        A tunnel at its channel limit, or closing, refuses the channel: the
        datagram is dropped and counted, nothing raises.
        """
        for error in (ChannelLimitError("limit"), TunnelNotOpenError("closed")):
            self.tunnel.open_error = error
            self.port.receive(b"x", ("192.0.2.1", 9))
        self.assertEqual(([(c, d) for c, d, _ in self.tunnel.datagrams], self.forwarder.dropped_no_channel), ([], 2))


class AgentFlowTests(SynchronousTestCase):
    """
    The agent names each sender's flow in its channel, and opens it again,
    at once, on the next tunnel.
    """

    def setUp(self) -> None:
        self.reactor = FakeUdpReactor()
        self.forwarder = AgentForwarder(self.reactor, [("127.0.0.1", 6000, "198.51.100.7", 7000)])
        self.forwarder.start()
        self.first = FakeTunnel(first_channel=3)
        self.forwarder.tunnel_established(self.first)
        self.port = self.reactor.udp["127.0.0.1", 6000]

    def flows(self, tunnel: FakeTunnel) -> list[tuple[int, Any]]:
        return [(cid, meta.get("flow")) for cid, _, meta in tunnel.opened]

    def test_each_sender_its_flow(self) -> None:
        """
        Each sender's channel names the target and a flow number of its
        own.
        """
        self.port.receive(b"a", ("192.0.2.1", 1))
        self.port.receive(b"b", ("192.0.2.1", 2))
        self.port.receive(b"c", ("192.0.2.1", 1))
        self.assertEqual(self.flows(self.first), [(3, 1), (5, 2)])
        self.assertEqual({meta["target"] for _, _, meta in self.first.opened}, {TARGET})

    def test_flows_opened_again_on_the_next_tunnel(self) -> None:
        """
        After the tunnel is lost, the next one gets a channel for each
        sender that had one, with the same flow number, before the sender
        sends again; what comes on it reaches the sender.
        """
        self.port.receive(b"a", ("192.0.2.1", 1))
        self.port.receive(b"b", ("192.0.2.1", 2))
        self.forwarder.tunnel_lost(self.first, "gone")
        second = FakeTunnel(first_channel=11)
        self.forwarder.tunnel_established(second)
        self.assertEqual(self.flows(second), [(11, 1), (13, 2)])
        self.forwarder.datagram_received(second, 13, b"answer", 0)
        self.assertEqual(self.port.sent, [(b"answer", ("192.0.2.1", 2))])
        self.port.receive(b"c", ("192.0.2.1", 1))
        self.assertEqual(second.datagrams[-1][:2], (11, b"c"))
        self.assertEqual(len(second.opened), 2)

    def test_closed_channel_forgets_its_flow(self) -> None:
        """
        A sender whose channel the contact point closed (idle) is not
        opened on the next tunnel, and gets a new flow when it sends again.
        """
        self.port.receive(b"a", ("192.0.2.1", 1))
        self.forwarder.channel_closed(self.first, 3, 0, "idle")
        self.forwarder.tunnel_lost(self.first, "gone")
        second = FakeTunnel(first_channel=11)
        self.forwarder.tunnel_established(second)
        self.assertEqual(second.opened, [])
        self.port.receive(b"b", ("192.0.2.1", 1))
        self.assertEqual(self.flows(second), [(11, 2)])

    def test_reopening_refused_counts_nothing(self) -> None:
        """
        A next tunnel that cannot open the channels now drops no datagram:
        nothing is counted, and the sender's next datagram tries again.
        """
        self.port.receive(b"a", ("192.0.2.1", 1))
        self.forwarder.tunnel_lost(self.first, "gone")
        second = FakeTunnel(first_channel=11)
        second.open_error = ChannelLimitError("limit")
        self.forwarder.tunnel_established(second)
        self.assertEqual((second.opened, self.forwarder.dropped_no_channel), ([], 0))
        second.open_error = None
        self.port.receive(b"b", ("192.0.2.1", 1))
        self.assertEqual(self.flows(second), [(11, 1)])


class AgentReopenedFlowTests(SynchronousTestCase):
    """
    On a resumed session whose contact point says C{"reopen-forwards"},
    the agent opens no flow itself: it takes the contact point's channel
    for each, by flow number.
    """

    def setUp(self) -> None:
        self.reactor = FakeUdpReactor()
        self.forwarder = AgentForwarder(
            self.reactor, [("127.0.0.1", 6000, "198.51.100.7", 7000)], max_senders=3
        )
        self.forwarder.start()
        self.first = FakeTunnel(first_channel=3)
        self.forwarder.tunnel_established(self.first)
        self.port = self.reactor.udp["127.0.0.1", 6000]
        self.port.receive(b"a", ("192.0.2.1", 1))
        self.port.receive(b"b", ("192.0.2.1", 2))
        self.forwarder.tunnel_lost(self.first, "gone")

    def resuming(self, reopens: bool = True) -> FakeTunnel:
        tunnel = FakeTunnel(first_channel=11)
        tunnel.local_hello = {"resume": {"session_id": "s1"}, "reopen-forwards": 1}  # type: ignore[attr-defined]
        tunnel.peer_hello = {"reopen-forwards": 1} if reopens else {}  # type: ignore[attr-defined]
        return tunnel

    def offer(self, tunnel: FakeTunnel, channel_id: int, flow: Any, target: str = TARGET) -> Any:
        meta = {"use": "forward-udp", "target": target, "flow": flow}
        return self.forwarder.accept(tunnel, channel_id, ChannelKind.DATAGRAM, meta)

    def test_contact_points_channel_taken(self) -> None:
        """
        Nothing is opened at the welcome; the contact point's channel for
        a flow carries what its target sends to the flow's sender, and the
        sender's next datagram goes on it.
        """
        second = self.resuming()
        self.forwarder.tunnel_established(second)
        self.assertEqual(second.opened, [])
        self.assertIs(self.offer(second, 2, 2), self.forwarder)
        self.forwarder.datagram_received(second, 2, b"answer", 0)
        self.assertEqual(self.port.sent, [(b"answer", ("192.0.2.1", 2))])
        self.port.receive(b"c", ("192.0.2.1", 2))
        self.assertEqual((second.opened, second.datagrams[-1][:2]), ([], (2, b"c")))
        self.assertEqual(self.forwarder.reopened, 1)

    def test_own_channel_given_up(self) -> None:
        """
        A sender that sends before the contact point's channel comes gets
        a channel of ours; the contact point's replaces it, and the
        contact point's refusal of ours then changes nothing.
        """
        second = self.resuming()
        self.forwarder.tunnel_established(second)
        self.port.receive(b"early", ("192.0.2.1", 1))
        self.assertEqual([(cid, meta["flow"]) for cid, _, meta in second.opened], [(11, 1)])
        self.assertIs(self.offer(second, 2, 1), self.forwarder)
        self.forwarder.channel_closed(second, 11, ErrorCode.REFUSED, "the flow has the contact point's channel")
        self.port.receive(b"later", ("192.0.2.1", 1))
        self.assertEqual([d[:2] for d in second.datagrams], [(11, b"early"), (2, b"later")])
        self.forwarder.datagram_received(second, 2, b"answer", 0)
        self.assertEqual(self.port.sent, [(b"answer", ("192.0.2.1", 1))])

    def test_unknown_flow_refused(self) -> None:
        """
        A flow the agent does not have, a target of no forward, and a
        forward on any tunnel but the current one are refused.
        """
        second = self.resuming()
        self.forwarder.tunnel_established(second)
        self.assertIsInstance(self.offer(second, 2, 9), Refusal)
        self.assertIsInstance(self.offer(second, 4, 1, target="198.51.100.8:7000"), Refusal)
        self.assertIsInstance(self.offer(self.first, 6, 1), Refusal)
        self.assertIsInstance(self.offer(second, 8, True), Refusal)
        self.assertEqual(self.forwarder.reopened, 0)

    def test_older_contact_point(self) -> None:
        """
        A contact point that does not say C{"reopen-forwards"}: the agent
        opens every flow again at once, as before.
        """
        second = self.resuming(reopens=False)
        self.forwarder.tunnel_established(second)
        self.assertEqual([meta["flow"] for _, _, meta in second.opened], [1, 2])

    def test_waiting_flows_kept_when_lost_again(self) -> None:
        """
        The resuming connection lost before the contact point's channels
        came: the flows are kept for the next one (at most C{max_senders}
        of a forward, the oldest waiting ones dropped first).
        """
        second = self.resuming()
        self.forwarder.tunnel_established(second)
        self.port.receive(b"c", ("192.0.2.1", 3))
        self.port.receive(b"d", ("192.0.2.1", 4))
        self.forwarder.tunnel_lost(second, "gone")
        third = self.resuming(reopens=False)
        self.forwarder.tunnel_established(third)
        self.assertEqual([meta["flow"] for _, _, meta in third.opened], [2, 3, 4])


class ContactFlowTests(SynchronousTestCase):
    """
    The contact point keeps a flow's socket while its session may be
    resumed, and gives it to the flow's channel on the resumed session.
    """

    def setUp(self) -> None:
        self.reactor = _EphemeralUdpReactor()
        self.forwarder = ContactForwarder(self.reactor, [("198.51.100.7", 7000)], idle_timeout=120.0)
        self.first = FakeTunnel(session_id="s1")

    def accept(self, tunnel: FakeTunnel, channel_id: int, flow: Any = None) -> Any:
        meta: dict[str, Any] = {"use": "forward-udp", "target": TARGET}
        if flow is not None:
            meta["flow"] = flow
        return self.forwarder.accept(tunnel, channel_id, ChannelKind.DATAGRAM, meta)

    def only_port(self) -> Any:
        (port,) = self.reactor.udp.values()
        return port

    def test_flow_socket_waits_for_the_resumed_session(self) -> None:
        """
        A lost connection of a session that may be resumed leaves the
        flow's socket open, dropping what the target sends meanwhile; the
        flow's channel on the resumed session gets the same socket (the
        target sees the same source), both ways.
        """
        self.assertIs(self.accept(self.first, 2, flow=1), self.forwarder)
        port = self.only_port()
        self.assertEqual(port.peer, ("198.51.100.7", 7000))
        self.forwarder.tunnel_lost(self.first, "gone", resumable=True)
        self.assertTrue(port.listening)
        self.assertEqual(self.forwarder.open_count, 1)
        port.receive(b"meanwhile", ("198.51.100.7", 7000))
        self.assertEqual(self.first.datagrams, [])
        second = FakeTunnel(session_id="s1")
        self.assertIs(self.accept(second, 4, flow=1), self.forwarder)
        self.assertEqual(list(self.reactor.udp.values()), [port])
        port.receive(b"answer", ("198.51.100.7", 7000))
        self.assertEqual(second.datagrams, [(4, b"answer", 0)])
        self.forwarder.datagram_received(second, 4, b"up", 0)
        self.assertEqual(port.sent, [(b"up", None)])
        self.assertEqual(self.forwarder.open_count, 1)

    def test_closed_when_not_resumable(self) -> None:
        """
        A lost connection whose session ends closes its flows' sockets.
        """
        self.accept(self.first, 2, flow=1)
        port = self.only_port()
        self.forwarder.tunnel_lost(self.first, "gone", resumable=False)
        self.assertEqual((port.listening, self.forwarder.open_count), (False, 0))

    def test_closed_when_the_session_ends(self) -> None:
        """
        The session ending (its window over) closes the sockets that
        waited for it.
        """
        self.accept(self.first, 2, flow=1)
        self.accept(self.first, 4, flow=2)
        self.forwarder.tunnel_lost(self.first, "gone", resumable=True)
        self.forwarder.session_ended("s1")
        self.assertEqual((self.reactor.udp, self.forwarder.open_count), ({}, 0))

    def test_closed_when_idle_without_a_channel(self) -> None:
        """
        A socket that waits for a resumption that does not come closes
        after the idle timeout, like one with a channel.
        """
        self.accept(self.first, 2, flow=1)
        self.forwarder.tunnel_lost(self.first, "gone", resumable=True)
        self.reactor.advance(121)
        self.assertEqual((self.reactor.udp, self.forwarder.open_count), ({}, 0))

    def test_no_flow_goes_with_its_connection(self) -> None:
        """
        An agent that names no flow (one from before flows): its sockets
        close with the connection, resumable or not.
        """
        self.accept(self.first, 2)
        self.forwarder.tunnel_lost(self.first, "gone", resumable=True)
        self.assertEqual(self.reactor.udp, {})

    def test_flows_are_the_sessions_own(self) -> None:
        """
        The same flow number in another session is another socket.
        """
        self.accept(self.first, 2, flow=1)
        self.accept(FakeTunnel(session_id="s2"), 2, flow=1)
        self.assertEqual(len(self.reactor.udp), 2)

    def test_taken_over(self) -> None:
        """
        The flow opened on the connection that took the session over while
        its old one is still up: the socket goes on on the new channel;
        the old connection's channel and loss no longer touch it.
        """
        self.accept(self.first, 2, flow=1)
        port = self.only_port()
        second = FakeTunnel(session_id="s1")
        self.accept(second, 6, flow=1)
        self.forwarder.datagram_received(self.first, 2, b"stale", 0)
        self.forwarder.channel_closed(self.first, 2, 0, "going away")
        self.forwarder.tunnel_lost(self.first, "going away", resumable=True)
        self.assertTrue(port.listening)
        port.receive(b"answer", ("198.51.100.7", 7000))
        self.assertEqual((self.first.datagrams, second.datagrams), ([], [(6, b"answer", 0)]))
        self.assertEqual(port.sent, [])

    def test_idle_close_names_the_channel(self) -> None:
        """
        An idle flow with a channel closes the channel too, so that the
        agent forgets the flow.
        """
        self.accept(self.first, 2, flow=1)
        self.reactor.advance(121)
        self.assertEqual(self.first.closed, [(2, 0, "idle")])
        self.assertEqual(self.reactor.udp, {})

    def test_flows_per_session_bounded(self) -> None:
        """
        At C{max_session_flows}, a new flow takes the place of the oldest
        one waiting without a channel; with none waiting it is refused.
        """
        self.forwarder.max_session_flows = 2
        self.accept(self.first, 2, flow=1)
        self.accept(self.first, 4, flow=2)
        refused = self.accept(self.first, 6, flow=3)
        self.assertIsInstance(refused, Refusal)
        self.assertEqual((len(self.reactor.udp), self.forwarder.refused), (2, 1))
        self.forwarder.tunnel_lost(self.first, "gone", resumable=True)
        second = FakeTunnel(session_id="s1")
        self.accept(second, 2, flow=2)
        self.assertIs(self.accept(second, 4, flow=3), self.forwarder)
        self.assertEqual(sorted(p.port for p in self.reactor.udp.values()), [50001, 50002])

    def test_flows_opened_again_by_the_contact_point(self) -> None:
        """
        The session resumed for an agent that said C{"reopen-forwards"}:
        each flow's channel is opened again on the new connection with the
        flow's number and target, and what the target sends goes down it
        before the agent sends anything.
        """
        self.accept(self.first, 3, flow=1)
        self.accept(self.first, 5, flow=2)
        ports = list(self.reactor.udp.values())
        self.forwarder.tunnel_lost(self.first, "gone", resumable=True)
        second = FakeTunnel(session_id="s1", first_channel=2)
        self.forwarder.session_resumed("s1", second)
        self.assertEqual(
            [(cid, meta) for cid, _, meta in second.opened],
            [(2, {"use": "forward-udp", "target": TARGET, "flow": 1}), (4, {"use": "forward-udp", "target": TARGET, "flow": 2})],
        )
        self.assertEqual(second.handlers, {2: self.forwarder, 4: self.forwarder})
        ports[1].receive(b"answer", ("198.51.100.7", 7000))
        self.assertEqual(second.datagrams, [(4, b"answer", 0)])
        self.forwarder.datagram_received(second, 2, b"up", 0)
        self.assertEqual(ports[0].sent, [(b"up", None)])
        self.assertEqual((self.forwarder.reopened, self.forwarder.open_count), (2, 2))

    def test_agents_crossing_open_refused(self) -> None:
        """
        The agent's own open of a flow whose channel this side opened
        again (sent before it read ours) is refused, and ours goes on; the
        agent's open of a flow on another connection of the session (a
        later resumption) takes the socket as before.
        """
        self.accept(self.first, 3, flow=1)
        port = self.only_port()
        self.forwarder.tunnel_lost(self.first, "gone", resumable=True)
        second = FakeTunnel(session_id="s1", first_channel=2)
        self.forwarder.session_resumed("s1", second)
        self.assertIsInstance(self.accept(second, 7, flow=1), Refusal)
        self.assertEqual((self.forwarder.crossed, self.forwarder.refused), (1, 0))
        port.receive(b"answer", ("198.51.100.7", 7000))
        self.assertEqual(second.datagrams, [(2, b"answer", 0)])
        self.forwarder.tunnel_lost(second, "gone", resumable=True)
        third = FakeTunnel(session_id="s1")
        self.assertIs(self.accept(third, 9, flow=1), self.forwarder)
        port.receive(b"again", ("198.51.100.7", 7000))
        self.assertEqual(third.datagrams, [(9, b"again", 0)])
        self.assertEqual(list(self.reactor.udp.values()), [port])

    def test_reopened_flow_refused_by_the_agent(self) -> None:
        """
        A flow the agent refuses (it forgot it) closes its socket; one
        whose channel cannot be opened now waits for the agent's open.
        """
        self.accept(self.first, 3, flow=1)
        self.accept(self.first, 5, flow=2)
        self.forwarder.tunnel_lost(self.first, "gone", resumable=True)
        second = FakeTunnel(session_id="s1", first_channel=2)
        self.forwarder.session_resumed("s1", second)
        self.forwarder.channel_closed(second, 2, ErrorCode.REFUSED, "no such forward flow")
        self.assertEqual(self.forwarder.open_count, 1)
        self.forwarder.tunnel_lost(second, "gone", resumable=True)
        third = FakeTunnel(session_id="s1")
        third.open_error = ChannelLimitError("limit")
        self.forwarder.session_resumed("s1", third)
        self.assertEqual((third.opened, self.forwarder.open_count), ([], 1))
        self.assertIs(self.accept(third, 5, flow=2), self.forwarder)

    def test_taken_over_flow_reopened(self) -> None:
        """
        A session taken over from a connection still up: its flow's channel
        moves to the new connection; the old connection's loss no longer
        touches the socket.
        """
        self.accept(self.first, 3, flow=1)
        port = self.only_port()
        second = FakeTunnel(session_id="s1", first_channel=2)
        self.forwarder.session_resumed("s1", second)
        self.forwarder.tunnel_lost(self.first, "taken over", resumable=True)
        port.receive(b"answer", ("198.51.100.7", 7000))
        self.assertEqual((self.first.datagrams, second.datagrams), ([], [(2, b"answer", 0)]))

    def test_malformed_flow_is_no_flow(self) -> None:
        """
        A flow that is not a positive 32-bit number is treated as none.
        """
        for number, channel in ((True, 2), (0, 4), ("1", 6), (2**32, 8)):
            self.accept(self.first, channel, flow=number)
        self.forwarder.tunnel_lost(self.first, "gone", resumable=True)
        self.assertEqual(self.reactor.udp, {})
