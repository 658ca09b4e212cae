"""
Several TLS connections per session on loopback (issue 12): agents with
C{--tunnel-connections 2} (the default) and the contact point as
C{build_agent} and C{build_contact} assemble them; a call's RTP both ways;
one connection cut mid-call (a reset, C{abortConnection}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from spwm.session.carrier import PathFront
from spwm.session.state import SessionState
from tests import skip_if_compiled
from tests.integration import test_resumption
from tests.integration.test_resumption import WAIT, _LoopbackPair
from tests.integration.test_tunnel_loopback import wait_until


class TwoConnectionsTests(_LoopbackPair):
    """
    Each agent keeps two connections attached to its session.
    """

    agent_extra: list[str] = []

    @defer.inlineCallbacks
    def two_paths(self) -> Any:
        """
        The call of L{_LoopbackPair.call}, once alice's session has its two
        paths on both halves.

        @return: alice, bob, both calls, alice's front on the agent and on
            the contact point.
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        assert agent1.paths is not None
        yield wait_until(lambda: agent1.paths.front is not None and len(agent1.paths.front.paths) == 2, timeout=WAIT)
        front = agent1.paths.front
        assert front is not None
        contact_front = next(f for f in self.contact.paths.fronts if f.session_id == front.session_id)
        yield wait_until(lambda: len(contact_front.paths) == 2, timeout=WAIT)
        self.assertIsInstance(agent1.resumption.handle.current, PathFront)
        return alice, bob, a_call, b_call, front, contact_front

    def attached(self) -> Any:
        """
        The call, once alice's session has all its paths on both halves
        (L{two_paths} here).
        """
        return self.two_paths()

    @defer.inlineCallbacks
    def test_connection_cut_mid_call(self) -> Any:
        """
        While RTP flows both ways, the connection that carries alice's
        session is reset: RTP keeps flowing on the other one, each packet
        delivered at most once; no SIP crosses the phones (no re-REGISTER,
        no re-INVITE), neither half suspends or resumes the session; a
        replacement connection is attached in the background, with the
        same session id; the call then hangs up cleanly.
        """
        alice, bob, a_call, b_call, front, contact_front = yield self.two_paths()
        agent1 = self.agents[0]
        session_id = front.session_id
        yield self.flowing(a_call, b_call)
        sip_before = dict(alice.sent), dict(bob.received), dict(alice.received), dict(bob.sent)
        carrier = front.carrier
        assert carrier is not None
        # the contact point's end of it: the one whose peer port is its port
        port = carrier.transport.getHost().port
        (far,) = [p for p in contact_front.paths if p.transport.getPeer().port == port]
        carrier.transport.abortConnection()
        # (not "one path left": the agent reconnects at once, and its new
        # connection may attach before a poll sees one)
        yield wait_until(lambda: carrier not in front.paths and far not in contact_front.paths, timeout=WAIT)
        self.assertIsNot(front.carrier, carrier)
        cut_at = a_call.rx.unique, b_call.rx.unique
        # media goes on on the survivor
        yield self.flowing(a_call, b_call, since=cut_at)
        self.assertEqual((a_call.rx.duplicates, b_call.rx.duplicates), (0, 0))
        self.assertEqual((dict(alice.sent), dict(bob.received), dict(alice.received), dict(bob.sent)), sip_before)
        # the session went on: nothing suspended or resumed, same name
        self.assertIs(agent1.resumption.state, SessionState.LIVE)
        self.assertIs(self.contact.resumption.state_of(session_id), SessionState.LIVE)
        self.assertEqual((agent1.resumption.resumed, self.contact.resumption.resumed), (0, 0))
        self.assertGreaterEqual(front.switches, 1)
        # a replacement is attached in the background
        yield wait_until(lambda: len(front.paths) == 2 and len(contact_front.paths) == 2, timeout=WAIT)
        self.assertEqual(front.session_id, session_id)
        self.assertEqual({p.session_id for p in front.paths}, {session_id})
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        yield wait_until(lambda: self.contact.media.open_sockets == 0 and agent1.media.open_sockets == 0)

    @defer.inlineCallbacks
    def test_sip_lost_with_the_carrier(self) -> Any:
        """
        alice's BYE reaches the contact point's kernel on the connection
        that carries her session, and that connection is reset before the
        contact point reads it (its reading paused): the BYE is lost with
        it, and the agent sends it again on the other connection (the
        contact point had not acknowledged it).  bob gets it once, and
        alice her 200 without retransmitting (she sends it once here): a
        phone over TCP, which does not retransmit, gets it too.
        """
        alice, bob, a_call, b_call, front, contact_front = yield self.two_paths()
        a_call.stop_media()
        b_call.stop_media()
        # the call's SIP acknowledged: what the agent keeps next is the BYE
        yield wait_until(lambda: front.sip_order.kept == 0, WAIT)
        carrier = front.carrier
        assert carrier is not None
        local = carrier.transport.getHost().port
        [far] = [p for p in contact_front.paths if p.transport.getPeer().port == local]
        far.transport.pauseProducing()
        alice._retransmit = lambda key, interval: None
        hung_up = alice.hang_up(a_call)
        # the agent has sent it on the carrier (kept until acknowledged)
        yield wait_until(lambda: front.sip_order.kept >= 1, WAIT)
        self.assertEqual(bob.received.get("BYE", 0), 0)
        far.transport.abortConnection()
        response = yield hung_up.addTimeout(WAIT, reactor)
        self.assertEqual(response.status, 200)
        self.assertEqual((alice.sent["BYE"], bob.received["BYE"]), (1, 1))
        self.assertGreaterEqual(front.sip_order.resent, 1)

    @defer.inlineCallbacks
    def bye_lost_with_every_connection(self, to_agent: bool) -> Any:
        """
        A BYE reaches the kernel of the half that is to read it on the
        carrier (that half's reading paused), and every connection of
        alice's session is reset before it reads it: the session is
        suspended and resumed on a new connection, and the sender, which
        had the BYE unacknowledged, sends it again there.  The callee
        gets it once, the caller its 200 without retransmitting (it sends
        it once here).

        @param to_agent: bob's BYE to alice (the contact point sends it
            again) rather than alice's to bob (the agent does).
        """
        alice, bob, a_call, b_call, front, contact_front = yield self.attached()
        a_call.stop_media()
        b_call.stop_media()
        reader, sender = (front, contact_front) if to_agent else (contact_front, front)
        caller, callee, call = (bob, alice, b_call) if to_agent else (alice, bob, a_call)
        # the call's SIP acknowledged: what the sender keeps next is the BYE
        yield wait_until(lambda: sender.sip_order.kept == 0, WAIT)
        for path in reader.paths:
            path.transport.pauseProducing()
        caller._retransmit = lambda key, interval: None
        hung_up = caller.hang_up(call)
        # the sending half has it on the carrier (kept until acknowledged)
        yield wait_until(lambda: sender.sip_order.kept >= 1, WAIT)
        self.assertEqual(callee.received.get("BYE", 0), 0)
        for path in list(reader.paths):
            path.transport.abortConnection()
        response = yield hung_up.addTimeout(WAIT, reactor)
        self.assertEqual(response.status, 200)
        self.assertEqual((caller.sent["BYE"], callee.received["BYE"]), (1, 1))
        self.assertEqual(self.agents[0].resumption.resumed, 1)

    @defer.inlineCallbacks
    def test_sip_lost_with_every_connection(self) -> Any:
        """
        alice's BYE, lost with every connection before the contact point
        read it, goes again from the agent on the resumed session.
        """
        yield self.bye_lost_with_every_connection(to_agent=False)
        self.assertEqual(self.agents[0].handle.counters["held_carried"], 1)

    @defer.inlineCallbacks
    def test_sip_to_the_agent_lost_with_every_connection(self) -> Any:
        """
        The other way: bob's BYE for alice, lost with every connection
        before her agent read it, goes again from the contact point.
        """
        yield self.bye_lost_with_every_connection(to_agent=True)
        self.assertGreaterEqual(self.contact.runner.held_status()["resume_carried"], 1)

    @defer.inlineCallbacks
    def test_sip_taken_not_carried(self) -> Any:
        """
        bob's BYE reaches alice through her agent, which does not get to
        acknowledge it (its acknowledgements held back) before every
        connection of her session is reset: the contact point keeps it as
        in flight, and the agent's resumption offer says it took it
        (C{sip_next}), so it is not sent again: alice gets one BYE.
        """
        from spwm.session import paths

        skip_if_compiled(paths, "holds the agent's acknowledgements back by replacing a method of its SIP order")
        alice, bob, a_call, b_call, front, contact_front = yield self.two_paths()
        agent1 = self.agents[0]
        a_call.stop_media()
        b_call.stop_media()
        front.sip_order.ack_due = lambda: None
        response = yield bob.hang_up(b_call)
        self.assertEqual(response.status, 200)
        self.assertEqual(alice.received["BYE"], 1)
        self.assertGreaterEqual(contact_front.sip_order.kept, 1)
        for path in list(front.paths):
            path.transport.abortConnection()
        yield wait_until(lambda: agent1.resumption.resumed == 1, timeout=WAIT)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(alice.received["BYE"], 1)
        self.assertGreaterEqual(self.contact.runner.held_status()["resume_carried_taken"], 1)

    @defer.inlineCallbacks
    def test_all_connections_cut(self) -> Any:
        """
        When every connection of the session is reset, the session is
        suspended and resumed as with one connection: the agent reconnects,
        proves its keys, RTP flows again, and the new session gets its
        second connection again.
        """
        alice, bob, a_call, b_call, front, contact_front = yield self.two_paths()
        agent1 = self.agents[0]
        session_id = front.session_id
        yield task.deferLater(reactor, 0.3, lambda: None)
        for path in front.paths:
            path.transport.abortConnection()
        yield wait_until(lambda: agent1.resumption.resumed == 1, timeout=WAIT)
        self.assertEqual(self.contact.resumption.resumed, 1)
        new = agent1.paths.front if agent1.paths is not None else None
        assert new is not None
        self.assertIsNot(new, front)
        self.assertEqual(new.session_id, session_id)
        resumed_at = a_call.rx.unique, b_call.rx.unique
        yield self.flowing(a_call, b_call, since=resumed_at)
        yield wait_until(lambda: len(new.paths) == 2, timeout=WAIT)
        # in TLS the resumption's proofs and each attach proof (before the
        # cut and after) came in the hello
        self.assertEqual(agent1.resumption.bound_taken, 1)
        self.assertGreaterEqual(agent1.paths.attach_bound, 2)
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)


class OneConnectionTests(_LoopbackPair):
    """
    An agent that keeps one connection and adds no QUIC path
    (C{--tunnel-connections 1 --udp-path off}, as over an HTTP proxy that
    admits one connection) still runs it through the paths layer: its SIP
    is numbered, and what is in flight when that one connection breaks
    goes again in the resumed session, both ways.
    """

    agent_extra: list[str] = ["--tunnel-connections", "1", "--udp-path", "off"]

    @defer.inlineCallbacks
    def attached(self) -> Any:
        """
        The call, once alice's session has its one path on both halves.

        @return: as L{TwoConnectionsTests.two_paths}.
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        self.assertEqual(agent1.config.paths_range, (1, 1))
        self.assertFalse(agent1.config.quic_probe)
        assert agent1.paths is not None
        yield wait_until(lambda: agent1.paths.front is not None and len(agent1.paths.front.paths) == 1, timeout=WAIT)
        front = agent1.paths.front
        assert front is not None
        self.assertTrue(front.sip_order is not None)
        contact_front = next(f for f in self.contact.paths.fronts if f.session_id == front.session_id)
        return alice, bob, a_call, b_call, front, contact_front

    bye_lost_with_every_connection = TwoConnectionsTests.bye_lost_with_every_connection

    @defer.inlineCallbacks
    def test_sip_lost_with_the_connection(self) -> Any:
        """
        alice's BYE, lost with the one connection before the contact point
        read it, goes again from the agent on the resumed session: bob
        gets it once, alice her 200 before her first retransmission.
        """
        yield self.bye_lost_with_every_connection(to_agent=False)
        self.assertEqual(self.agents[0].handle.counters["held_carried"], 1)

    @defer.inlineCallbacks
    def test_sip_to_the_agent_lost_with_the_connection(self) -> Any:
        """
        The other way: bob's BYE for alice, lost with the one connection
        before her agent read it, goes again from the contact point.
        """
        yield self.bye_lost_with_every_connection(to_agent=True)
        self.assertGreaterEqual(self.contact.runner.held_status()["resume_carried"], 1)


class TwoConnectionsRestartTests(test_resumption.RestartTests):
    """
    The contact point restarts (go-away, drain, start again with its state
    file) under agents with two connections each: each session moves as a
    whole and is resumed in the new process, as with one connection.
    """

    agent_extra: list[str] = []
