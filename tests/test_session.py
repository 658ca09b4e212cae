"""
A contact-point session with more than one connection attached
(L{spwm.session.session.Session}, L{spwm.session.manager.SessionManager}):
losing one keeps its SIP and its calls' media going on the other.  Real
media managers on both halves, fake tunnels between them, fake sockets.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from spwm.session.manager import SessionManager
from spwm.session.session import Session
from spwm.session.state import SessionState
from spwm.tunnel.frames import ChannelKind

from .test_media_manager import AGENT_ADDR, CONTACT_ADDR, DIALOG, OPERATOR, PHONE, FakeTunnel, _pair, _sdp
from .test_security_resume import KEY, USER, FakeSip


class SessionRecordTests(SynchronousTestCase):
    """
    The record's connections: the primary first.
    """

    def test_use_and_stop_using(self) -> None:
        """
        The first connection attached is the primary; attaching one twice
        changes nothing; detaching the primary makes the next one primary
        (and says so), detaching another does not.
        """
        first, second, third = FakeTunnel(2, "agent"), FakeTunnel(4, "agent"), FakeTunnel(6, "agent")
        session = Session("s1")
        self.assertIsNone(session.primary)
        for tunnel in (first, second, first, third):
            session.use_tunnel(tunnel)
        self.assertEqual(session.connections, [first, second, third])
        self.assertFalse(session.stop_using_tunnel(third))
        self.assertTrue(session.stop_using_tunnel(first))
        self.assertIs(session.primary, second)
        self.assertFalse(session.stop_using_tunnel(first))


class TwoConnectionsTests(SynchronousTestCase):
    """
    A session with two connections keeps working when one is lost.
    """

    def test_primary_lost(self) -> None:
        """
        A call's media runs on the primary connection.  When the primary
        is lost, SIP is attached to the other connection and the contact
        point opens the stream's channel again on it; RTP flows both ways
        through it, nothing more through the lost one.  Losing the last
        connection suspends the session as with one.
        """
        reactor, agent, a1, contact, c1 = _pair()
        a2, c2 = FakeTunnel(1, "contact"), FakeTunnel(2, "agent")
        a2.other, c2.other = c2, a2
        a2.app, c2.app = agent, contact
        sip = FakeSip()
        sessions = SessionManager(Clock(), 60.0, contact, sip)
        sessions.tunnel_established(c1)
        session = sessions.sessions["s1"]
        session.keys[USER] = KEY
        session.flows[USER] = 3
        session.use_tunnel(c2)

        offer, answer = _sdp(PHONE, ("audio", 4000, "")), _sdp(OPERATOR, ("audio", 6000, ""))
        agent.sdp_into_tunnel(a1, DIALOG, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c1, DIALOG, "application/sdp", offer)
        contact.sdp_into_tunnel(c1, DIALOG, "application/sdp", answer)
        agent.sdp_out_of_tunnel(a1, DIALOG, "application/sdp", answer)
        phone_rtp, op_rtp = reactor.udp[AGENT_ADDR, 20000], reactor.udp[CONTACT_ADDR, 30000]
        phone_rtp.receive(b"up0", (PHONE, 4000))
        self.assertEqual(op_rtp.sent, [(b"up0", (OPERATOR, 6000))])
        self.assertEqual((len(a1.datagrams), a2.datagrams), (1, []))

        # The agent's side notices first and waits for the channel on its
        # other connection; then the contact point's.
        agent.session_resumed("s1", a2, reopen=False)
        sessions.tunnel_lost(c1, "cut")
        self.assertEqual(sessions.state_of("s1"), SessionState.LIVE)
        self.assertEqual(session.connections, [c2])
        self.assertIs(sip.attached[-1], c2)
        self.assertEqual(sessions.status()["live"], 1)
        self.assertEqual(
            c2.opened, [(2, ChannelKind.DATAGRAM, {"use": "media", "dialog": DIALOG, "stream": 0, "mux": False})]
        )
        self.assertEqual((agent.open_channels, contact.open_channels), (1, 1))

        phone_rtp.receive(b"up1", (PHONE, 4000))
        op_rtp.receive(b"down", (OPERATOR, 6000))
        self.assertEqual(op_rtp.sent[-1], (b"up1", (OPERATOR, 6000)))
        self.assertEqual(phone_rtp.sent, [(b"down", (PHONE, 4000))])
        self.assertEqual((len(a1.datagrams), len(c1.datagrams)), (1, 0))
        self.assertEqual(([d[1] for d in a2.datagrams], [d[1] for d in c2.datagrams]), ([b"up1"], [b"down"]))

        sessions.tunnel_lost(c2, "cut")
        self.assertEqual(sessions.state_of("s1"), SessionState.SUSPENDED)
        self.assertEqual(sessions.status()["suspended"], 1)
        self.assertEqual(contact.streams, 1)
        self.assertEqual(contact.open_channels, 0)

    def test_other_lost(self) -> None:
        """
        Losing a connection that is not the primary changes nothing for
        SIP or media.
        """
        reactor, agent, a1, contact, c1 = _pair()
        c2 = FakeTunnel(2, "agent")
        sip = FakeSip()
        sessions = SessionManager(Clock(), 60.0, contact, sip)
        sessions.tunnel_established(c1)
        sessions.sessions["s1"].use_tunnel(c2)
        offer = _sdp(PHONE, ("audio", 4000, ""))
        agent.sdp_into_tunnel(a1, DIALOG, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c1, DIALOG, "application/sdp", offer)
        sessions.tunnel_lost(c2, "cut")
        self.assertEqual(sessions.sessions["s1"].connections, [c1])
        self.assertEqual(sip.attached, [c1])
        self.assertEqual((c2.opened, contact.open_channels, contact.streams), ([], 1, 1))


class AbsorbTests(SynchronousTestCase):
    """
    L{MediaManager.session_absorbed}: the calls of a resuming connection's
    own fresh session go on under the resumed session's name.
    """

    def test_fresh_calls_go_on(self) -> None:
        """
        A call set up while the connection still had its fresh name is
        found under the resumed name afterwards (its end releases it); a
        dialog the resumed session has already ends on the fresh side.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        offer = _sdp(PHONE, ("audio", 4000, ""))
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        c_end.adopt_session("fresh")
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c_end, "other", "application/sdp", offer)
        self.assertEqual((contact.streams, contact.ports_in_use), (3, 3))
        c_end.adopt_session("s1")
        contact.session_absorbed("fresh", "s1")
        self.assertEqual(sorted(contact.dialog_keys("s1")), sorted([DIALOG, "other"]))
        self.assertEqual((contact.dialog_keys("fresh"), contact.streams, contact.ports_in_use), ([], 2, 2))
        contact.dialog_ended(c_end, "other")
        contact.dialog_ended(c_end, DIALOG)
        self.assertEqual((contact.streams, contact.open_sockets, contact.ports_in_use), (0, 0, 0))
