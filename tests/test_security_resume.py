"""
The resumption logic of both halves with fake tunnels, a fake SIP runner
and a fake media manager: the window, dormant sessions past it and their
bounds.  (Resumption end to end: tests/integration/test_resumption.py and
tests/e2e/test_resumption.py.)
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from spwm.security.keys import derive_session_key, resumption_proof
from spwm.security.resume import AgentResumption
from spwm.session.manager import SessionManager
from spwm.session.state import SessionState
from spwm.sip.agent_proxy import AgentSipProxy
from spwm.sip.registrations import Registration
from spwm.testing.tunnel import FakeTunnel as BaseFakeTunnel
from spwm.tunnel.events import PeerWentAway

USER = "alice@example.test"
KEY = bytes(range(32))
CHALLENGE = b"\x07" * 16


class RingingRecorded:
    """
    The agent's core with its C{ringing_lost} calls handed to C{record}
    (session id, C{far}) and answered with no action; the rest is a real
    core's (a compiled core is no base class for a test's).
    """

    def __init__(self, record: Callable[[str, bool], object]) -> None:
        self.real = AgentSipProxy(object(), "agent-1")
        self.record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def ringing_lost(self, session_id: str, now: float, tunnels: bool = True, *, far: bool = False) -> list[Any]:
        self.record(session_id, far)
        return []


class FakeTunnel(BaseFakeTunnel):
    """
    The shared fake tunnel, with the hello messages the resumption reads
    and the closes it asks for.
    """

    def __init__(self, session_id: str, peer_hello: dict[str, Any] | None = None) -> None:
        super().__init__(session_id)
        self.local_hello = {"challenge": CHALLENGE.hex()}
        self.peer_hello = peer_hello or {}
        self.closes: list[Any] = []

    def close(self, code: Any, reason: str) -> None:
        self.closes.append((code, reason))


class FakeMedia:
    """
    The media manager as the session logic drives it: by session id.

    @ivar calls: C{("suspended", session_id)}, C{("lost", session_id)},
        C{("resumed", session_id, connection)}.
    @ivar absorbed: C{(fresh, into)} for each session absorbed.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, ...]] = []
        self.absorbed: list[tuple[str, str]] = []

    def session_suspended(self, session_id: str) -> None:
        self.calls.append(("suspended", session_id))

    def session_ended(self, session_id: str, reason: str = "") -> None:
        self.calls.append(("lost", session_id))

    def session_resumed(self, session_id: str, tunnel: Any, reopen: bool) -> None:
        self.calls.append(("resumed", session_id, tunnel))

    def session_absorbed(self, fresh: str, into: str) -> None:
        self.absorbed.append((fresh, into))


class FakeSip:
    """
    The contact point's SIP runner: registrations per session.
    """

    def __init__(self) -> None:
        self.regs: dict[str, list[Registration]] = {}
        self.calls: list[tuple[str, Any]] = []
        #: the connections SIP was attached to, in order
        self.attached: list[Any] = []

    def registrations(self, session_id: str) -> list[Registration]:
        return list(self.regs.get(session_id, []))

    def tunnel_established(self, tunnel: Any) -> None:
        self.calls.append(("established", tunnel.session_id))
        self.attached.append(tunnel)

    def tunnel_lost(self, tunnel: Any, reason: str = "") -> None:
        self.calls.append(("lost", tunnel.session_id))
        self.regs.pop(tunnel.session_id, None)

    def tunnel_dormant(self, tunnel: Any) -> None:
        self.calls.append(("dormant", tunnel.session_id))

    def forget_session(self, session_id: str) -> None:
        self.calls.append(("forget", session_id))
        self.regs.pop(session_id, None)


def _contact(window: float = 60.0) -> tuple[Clock, SessionManager, FakeMedia, FakeSip]:
    clock = Clock()
    media, sip = FakeMedia(), FakeSip()
    return clock, SessionManager(clock, window, media, sip), media, sip


def _registered(resumption: SessionManager, sip: FakeSip, session: str, expires: float) -> FakeTunnel:
    """
    A live tunnel of C{session} with alice's key and a registration that
    runs until C{expires}.
    """
    tunnel = FakeTunnel(session)
    resumption.tunnel_established(tunnel)
    resumption.sessions[session].keys[USER] = KEY
    resumption.sessions[session].flows[USER] = 3
    sip.regs[session] = [Registration("sip:alice@example.test", "sip:a@192.0.2.9", 3, expires)]
    return tunnel


def _resume(resumption: SessionManager, session: str, key: bytes = KEY, **extra: Any) -> FakeTunnel:
    new = FakeTunnel("fresh-" + session)
    resumption.tunnel_established(new)
    proof = resumption_proof(key, CHALLENGE, session)
    resumption.control_received(new, {"op": "resume", "session_id": session, "proofs": {USER: proof}, **extra})
    return new


def _reconnected(agent: AgentResumption) -> FakeTunnel:
    """
    The agent's session s1 (alice's key, flow 3) lost its connection; a
    new one is up and has offered the resumption.

    @return: the new connection.
    """
    agent.keys[USER] = KEY
    agent.flows[USER] = 3
    agent.session_id = "s1"
    agent.tunnel_lost(FakeTunnel("s1"), "cut")
    new = FakeTunnel("s9", peer_hello={"challenge": CHALLENGE.hex()})
    agent.handle.current = new
    agent.tunnel_established(new)
    return new


class ContactCarryTests(SynchronousTestCase):
    """
    The contact point's part in the SIP carried into a resumed session.
    """

    def _sip(self) -> tuple[Clock, SessionManager, Any]:
        from spwm.session.paths import SipOrder

        class Sip(FakeSip):
            def __init__(self) -> None:
                super().__init__()
                self.carried: list[tuple[Any, ...]] = []
                self.settled: list[tuple[Any, ...]] = []

            def carry(self, session: str, messages: list[Any], taken: int, *, taken_over: bool = False) -> None:
                self.carried.append((session, messages, taken, taken_over))

            def settle_carried(self, session: str, resumed: bool, peer_next: object) -> int | None:
                self.settled.append((session, resumed, peer_next))
                return 5 if resumed else None

        clock, media, sip = Clock(), FakeMedia(), Sip()
        resumption = SessionManager(clock, 60.0, media, sip)
        tunnel = _registered(resumption, sip, "s1", expires=3000.0)
        order = tunnel.sip_order = SipOrder()
        order.number(3, b"BYE in flight")
        order.arrived(0)
        return clock, resumption, sip

    def test_taken_over(self) -> None:
        """
        A resumption of a session whose connection is thought live still
        (it died silently: the agent's address changed) carries what was
        in flight on it, with the number it expected next; the answer
        says that number, and the agent's C{sip_next} decides what goes.
        """
        clock, resumption, sip = self._sip()
        new = _resume(resumption, "s1", sip_next=0)
        self.assertEqual(sip.carried, [("s1", [(0, 3, b"BYE in flight")], 1, True)])
        self.assertEqual(sip.settled, [("s1", True, 0)])
        self.assertEqual(new.controls[-1]["sip_next"], 5)

    def test_registrations_only(self) -> None:
        """
        Resumed without the calls, the carried SIP is dropped and the
        answer says no C{sip_next}.
        """
        clock, resumption, sip = self._sip()
        old = resumption.sessions["s1"].primary
        resumption.tunnel_lost(old, "cut")
        new = _resume(resumption, "s1", media=False, sip_next=0)
        self.assertEqual(sip.settled, [("s1", False, 0)])
        self.assertNotIn("sip_next", new.controls[-1])


class ContactDormantTests(SynchronousTestCase):
    """
    A session not resumed within the window keeps its registrations.
    """

    def test_dormant_then_resumed(self) -> None:
        """
        At the window's end the session's media is released and its SIP
        becomes dormant (not lost); a resumption with the right proof later
        attaches the registrations to the new connection without touching
        media, and binds the user's flow key.
        """
        clock, resumption, media, sip = _contact()
        old = _registered(resumption, sip, "s1", expires=3600.0)
        resumption.tunnel_lost(old, "cut")
        clock.advance(60)
        self.assertEqual(resumption.dormant, 1)
        self.assertEqual(media.calls, [("suspended", old.session_id), ("lost", old.session_id)])
        self.assertEqual(sip.calls, [("established", "s1"), ("dormant", "s1")])
        clock.advance(600)
        new = _resume(resumption, "s1")
        self.assertEqual(new.controls[-1]["op"], "resumed")
        self.assertEqual(new.session_id, "s1")
        self.assertEqual(new.bound, [(3, KEY)])
        self.assertEqual(resumption.dormant, 0)
        self.assertEqual(sip.calls[-1], ("established", "s1"))
        self.assertEqual(media.calls, [("suspended", old.session_id), ("lost", old.session_id)])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_wrong_proof_leaves_it_dormant(self) -> None:
        """
        A wrong proof for a dormant session is refused; the session stays
        dormant for the right agent.
        """
        clock, resumption, media, sip = _contact()
        old = _registered(resumption, sip, "s1", expires=3600.0)
        resumption.tunnel_lost(old, "cut")
        clock.advance(60)
        forged = _resume(resumption, "s1", key=b"\0" * 32)
        self.assertEqual(forged.controls[-1]["op"], "resume-failed")
        self.assertEqual((resumption.refused, resumption.dormant), (1, 1))
        self.assertEqual(_resume(resumption, "s1").controls[-1]["op"], "resumed")

    def test_without_registrations_released(self) -> None:
        """
        A session whose registrations are gone by the window's end is
        released as before: nothing dormant, nothing to resume.
        """
        clock, resumption, media, sip = _contact()
        old = _registered(resumption, sip, "s1", expires=3600.0)
        del sip.regs["s1"]
        resumption.tunnel_lost(old, "cut")
        clock.advance(60)
        self.assertEqual(resumption.dormant, 0)
        self.assertIn(("lost", "s1"), sip.calls)
        self.assertEqual(resumption.keys, {})
        self.assertEqual(_resume(resumption, "s1").controls[-1]["op"], "resume-failed")

    def test_released_when_registrations_expire(self) -> None:
        """
        A dormant session lives as long as its registrations: then its
        registrations and keys are forgotten and no timer is left.
        """
        clock, resumption, media, sip = _contact()
        old = _registered(resumption, sip, "s1", expires=300.0)
        resumption.tunnel_lost(old, "cut")
        clock.advance(60)
        clock.advance(239)
        self.assertEqual(resumption.dormant, 1)
        clock.advance(2)
        self.assertEqual(resumption.dormant, 0)
        self.assertEqual(sip.calls[-1], ("forget", "s1"))
        self.assertEqual((resumption.keys, resumption.flows), ({}, {}))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bounded(self) -> None:
        """
        Beyond C{max_dormant} the oldest dormant session is released.
        """
        clock, resumption, media, sip = _contact()
        resumption.max_dormant = 2
        for name in ("s1", "s2", "s3"):
            resumption.tunnel_lost(_registered(resumption, sip, name, expires=3600.0), "cut")
            clock.advance(61)
        self.assertEqual(resumption.dormant, 2)
        self.assertIn(("forget", "s1"), sip.calls)
        self.assertNotIn("s1", resumption.keys)
        self.assertEqual(_resume(resumption, "s1").controls[-1]["op"], "resume-failed")

    def test_agent_released_media_while_suspended(self) -> None:
        """
        An agent past its own window (C{"media": false}) resuming a session
        that is still suspended here: the calls' media is released instead
        of reopened, the registrations resume.
        """
        clock, resumption, media, sip = _contact()
        old = _registered(resumption, sip, "s1", expires=3600.0)
        resumption.tunnel_lost(old, "cut")
        new = _resume(resumption, "s1", media=False)
        self.assertEqual(new.controls[-1]["op"], "resumed")
        self.assertEqual(media.calls, [("suspended", old.session_id), ("lost", old.session_id)])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_releases_dormant(self) -> None:
        """
        Stopping the contact point releases dormant sessions and their timers.
        """
        clock, resumption, media, sip = _contact()
        resumption.tunnel_lost(_registered(resumption, sip, "s1", expires=3600.0), "cut")
        clock.advance(60)
        resumption.tunnel_lost(_registered(resumption, sip, "s2", expires=3600.0), "cut")
        clock.advance(60)
        with capturedLogs() as events:
            resumption.stop()
        self.assertEqual((resumption.dormant, clock.getDelayedCalls()), (0, []))
        self.assertEqual(sorted(sip.calls[-2:]), [("forget", "s1"), ("forget", "s2")])
        # one line for all of them (a state file holds them), not one each
        lines = [formatEvent(e) for e in events]
        self.assertEqual(lines, ["2 dormant sessions released: contact point stopping"])


class FakeHandle:
    def __init__(self) -> None:
        self.current: Any = None
        self.told: list[str] = []

    def tunnel_established(self, tunnel: Any) -> None:
        self.told.append("established")

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        self.told.append("lost")


class AgentDormantTests(SynchronousTestCase):
    """
    The agent keeps its keys past the window and offers to resume the
    registrations.
    """

    def _agent(self) -> tuple[Clock, AgentResumption, FakeMedia, FakeTunnel]:
        clock, media = Clock(), FakeMedia()
        resumption = AgentResumption(clock, 60.0, media, FakeHandle())
        tunnel = FakeTunnel("s1")
        resumption.keys[USER] = KEY
        resumption.flows[USER] = 3
        resumption.session_id = "s1"
        return clock, resumption, media, tunnel

    def test_offer_after_window(self) -> None:
        """
        Past the window the media is released but the next connection still
        offers the session, says its media is gone, and is resumed.
        """
        clock, resumption, media, old = self._agent()
        resumption.tunnel_lost(old, "cut")
        clock.advance(60)
        self.assertTrue(resumption.dormant)
        self.assertEqual(media.calls, [("suspended", old.session_id), ("lost", old.session_id)])
        self.assertEqual(resumption.hello(), {"session_key": 1, "final-stop": 1, "resume": {"session_id": "s1", "users": [USER]}, "reopen-forwards": 1})
        new = FakeTunnel("s9", peer_hello={"challenge": CHALLENGE.hex()})
        resumption.tunnel_established(new)
        [message] = new.controls
        self.assertEqual(
            message,
            {"op": "resume", "session_id": "s1", "media": False, "proofs": {USER: resumption_proof(KEY, CHALLENGE, "s1")}},
        )
        resumption.control_received(new, {"op": "resumed", "session_id": "s1"})
        self.assertEqual((resumption.dormant, resumption.resumed, new.session_id), (False, 1, "s1"))
        self.assertEqual(new.bound, [(3, KEY)])
        self.assertEqual(len(media.calls), 2)

    def test_refused_forgets(self) -> None:
        """
        A refusal ends the dormant state: keys gone, nothing offered again.
        """
        clock, resumption, media, old = self._agent()
        resumption.tunnel_lost(old, "cut")
        clock.advance(60)
        new = FakeTunnel("s9", peer_hello={"challenge": CHALLENGE.hex()})
        resumption.tunnel_established(new)
        lost: list[list[int]] = []
        resumption.session_lost = lambda flows: lost.append(flows) or 1
        resumption.control_received(new, {"op": "resume-failed", "reason": "no suspended session by that name"})
        self.assertEqual((resumption.dormant, resumption.keys, resumption.hello()), (False, {}, {"session_key": 1, "final-stop": 1}))
        self.assertEqual(lost, [[3]])

    def test_stop_closes_nothing(self) -> None:
        """
        Stopping the agent gives the session up without closing the
        phones' connections for it (the listeners close them anyway).
        """
        clock, resumption, media, old = self._agent()
        lost: list[list[int]] = []
        resumption.session_lost = lambda flows: lost.append(flows) or 0
        resumption.tunnel_lost(old, "cut")
        resumption.stop()
        self.assertEqual((lost, resumption.keys), ([], {}))


class OnDemandCloseTests(SynchronousTestCase):
    """
    A tunnel closed on purpose (C{--tunnel on-demand}, nothing needs it)
    is not a loss to resume, on either side.
    """

    def test_agent_forgets_the_session(self) -> None:
        """
        After C{end_session}, the loss of the tunnel suspends nothing,
        offers nothing and closes no phone connection.
        """
        clock, media = Clock(), FakeMedia()
        resumption = AgentResumption(clock, 60.0, media, FakeHandle())
        tunnel = FakeTunnel("s1")
        resumption.keys[USER] = KEY
        resumption.flows[USER] = 3
        resumption.session_id = "s1"
        lost: list[list[int]] = []
        resumption.session_lost = lambda flows: lost.append(flows) or 0
        resumption.end_session()
        resumption.tunnel_lost(tunnel, "tunnel no longer needed (on-demand)")
        self.assertEqual(resumption.status()["suspended"], 0)
        self.assertEqual(resumption.hello(), {"session_key": 1, "final-stop": 1})
        self.assertEqual(media.calls, [("lost", tunnel.session_id)])
        self.assertEqual(lost, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_contact_ends_a_session_that_went_away(self) -> None:
        """
        The contact point ends (does not suspend) the session of an agent
        that sent go-away before closing; a plain loss is still suspended.
        """
        clock, resumption, media, sip = _contact()
        parting = _registered(resumption, sip, "s1", 1000.0)
        parting.go_away_info = object()
        resumption.tunnel_lost(parting, "closed")
        self.assertEqual(resumption.status()["suspended"], 0)
        self.assertIn(("lost", "s1"), sip.calls)
        cut = _registered(resumption, sip, "s2", 1000.0)
        resumption.tunnel_lost(cut, "cut")
        self.assertEqual(resumption.status()["suspended"], 1)


class AgentStopTests(SynchronousTestCase):
    """
    An agent that stops for good says so (its go-away's C{final}): the
    contact point releases its session at once, as at the window's end.
    """

    def _stopped(self, sip: FakeSip, resumption: SessionManager, session: str) -> FakeTunnel:
        tunnel = _registered(resumption, sip, session, expires=300.0)
        tunnel.go_away_info = PeerWentAway(12, "agent stopping", 0.0, final=True)
        tunnel.agent_stopped = True
        return tunnel

    def test_dormant_at_once(self) -> None:
        """
        Its calls and media go now and its registrations are kept
        (dormant) until they expire, with one line; no window is waited.
        """
        clock, resumption, media, sip = _contact()
        tunnel = self._stopped(sip, resumption, "s1")
        with capturedLogs() as events:
            resumption.tunnel_lost(tunnel, "agent stopping")
        self.assertEqual((resumption.status()["suspended"], resumption.dormant), (0, 1))
        self.assertEqual(resumption.state_of("s1"), SessionState.DORMANT)
        self.assertEqual(media.calls, [("suspended", "s1"), ("lost", "s1")])
        self.assertEqual(sip.calls, [("established", "s1"), ("dormant", "s1")])
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["session s1 ended: its agent stopped: calls and media released; 1 registrations kept for 300 s more"],
        )
        # only the registration's expiry is watched: no window left
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [301.0])
        clock.advance(302)
        self.assertEqual((resumption.dormant, sip.calls[-1]), (0, ("forget", "s1")))

    def test_without_registrations_ended(self) -> None:
        """
        Without registrations the session ends at once.
        """
        clock, resumption, media, sip = _contact()
        tunnel = self._stopped(sip, resumption, "s1")
        del sip.regs["s1"]
        resumption.tunnel_lost(tunnel, "agent stopping")
        self.assertEqual((resumption.state_of("s1"), resumption.dormant), (SessionState.ENDED, 0))
        self.assertIn(("lost", "s1"), sip.calls)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_plain_close_still_suspended(self) -> None:
        """
        A close without the final go-away (an older agent, a network
        loss, a move after the contact point's own go-away) is kept for
        the window as before.
        """
        clock, resumption, media, sip = _contact()
        tunnel = _registered(resumption, sip, "s1", expires=300.0)
        resumption.tunnel_lost(tunnel, "agent stopping")
        self.assertEqual(resumption.state_of("s1"), SessionState.SUSPENDED)
        self.assertEqual(media.calls, [("suspended", "s1")])


class SessionKeyTests(SynchronousTestCase):
    """
    A session whose registrations gave no per-user key (no digest
    credentials) is resumable by its own key, made by both halves when
    both say so in their hellos.
    """

    EXPORTED = b"\x42" * 32

    def _fresh(self, resumption: SessionManager, session: str, agent_says: bool = True) -> FakeTunnel:
        tunnel = FakeTunnel(session, peer_hello={"session_key": 1} if agent_says else {})
        tunnel.exported = self.EXPORTED
        resumption.tunnel_established(tunnel)
        return tunnel

    def _resume(self, resumption: SessionManager, session: str, **message: Any) -> FakeTunnel:
        new = FakeTunnel("fresh-" + session, peer_hello={"session_key": 1})
        new.exported = b"\x43" * 32
        resumption.tunnel_established(new)
        resumption.control_received(new, {"op": "resume", "session_id": session, **message})
        return new

    def test_the_same_key_on_both_halves(self) -> None:
        """
        The agent's key for the session its welcome named is the contact
        point's for that session; another session or other keying
        material gives another key.
        """
        clock, contact, media, sip = _contact()
        self._fresh(contact, "s1")
        agent = AgentResumption(Clock(), 60.0, FakeMedia(), FakeHandle())
        welcome = FakeTunnel("s1", peer_hello={"challenge": CHALLENGE.hex(), "session_key": 1})
        welcome.exported = self.EXPORTED
        agent.tunnel_established(welcome)
        key = contact.sessions["s1"].session_key
        self.assertEqual((len(key), agent.session.session_key, agent.state), (32, key, SessionState.LIVE))
        self.assertNotEqual(derive_session_key(self.EXPORTED, "s2"), key)
        self.assertNotEqual(derive_session_key(b"\x43" * 32, "s1"), key)
        self.assertNotEqual(derive_session_key(None, "s1"), key)

    def test_suspended_and_resumed_by_the_session_proof(self) -> None:
        """
        Without a per-user key the session is suspended (not ended) on a
        cut, and a resume with the session's proof alone resumes it with
        its media.
        """
        clock, contact, media, sip = _contact()
        old = self._fresh(contact, "s1")
        key = contact.sessions["s1"].session_key
        contact.tunnel_lost(old, "cut")
        self.assertEqual(media.calls, [("suspended", "s1")])
        new = self._resume(contact, "s1", proofs={}, session_proof=resumption_proof(key, CHALLENGE, "s1"))
        self.assertEqual(new.controls, [{"op": "resumed", "session_id": "s1", "users": []}])
        self.assertEqual((new.session_id, contact.resumed, contact.refused), ("s1", 1, 0))
        self.assertEqual(media.calls[-1], ("resumed", "s1", new))

    def test_proofs_checked(self) -> None:
        """
        A wrong session proof, none, or user proofs without it (the session
        has its own key: the agent that made it proves it) are refused,
        and the session stays suspended.
        """
        clock, contact, media, sip = _contact()
        old = _registered(contact, sip, "s1", 1000.0)
        contact.tunnel_lost(old, "cut")
        user = {USER: resumption_proof(KEY, CHALLENGE, "s1")}
        # (the session made in _registered has no key of its own: give it one)
        contact.sessions["s1"].session_key = own = b"\x05" * 32
        for message, reason in (
            ({"proofs": {}, "session_proof": resumption_proof(b"\x06" * 32, CHALLENGE, "s1")}, "wrong session proof"),
            ({"proofs": user}, "no session proof"),
            ({"proofs": {}}, "no proofs"),
            ({"proofs": {USER: "00"}, "session_proof": resumption_proof(own, CHALLENGE, "s1")}, f"wrong proof for {USER}"),
        ):
            new = self._resume(contact, "s1", **message)
            self.assertEqual(new.controls, [{"op": "resume-failed", "reason": reason}])
        self.assertEqual((contact.state_of("s1"), contact.refused), (SessionState.SUSPENDED, 4))
        new = self._resume(contact, "s1", proofs=user, session_proof=resumption_proof(own, CHALLENGE, "s1"))
        self.assertEqual(new.controls[0]["op"], "resumed")

    def test_none_without_tls(self) -> None:
        """
        Without TLS keying material (a plaintext or a QUIC tunnel) neither
        half makes a session key: the session id alone is in the flow
        tokens of C{Record-Route} and C{Path}, no secret.  Such a session
        without per-user keys ends with its connection, as before.
        """
        clock, contact, media, sip = _contact()
        old = FakeTunnel("s1", peer_hello={"session_key": 1})
        contact.tunnel_established(old)
        agent = AgentResumption(Clock(), 60.0, FakeMedia(), FakeHandle())
        agent.tunnel_established(FakeTunnel("s1", peer_hello={"challenge": CHALLENGE.hex(), "session_key": 1}))
        self.assertEqual((contact.sessions["s1"].session_key, agent.session.session_key), (None, None))
        self.assertEqual(agent.state, SessionState.ENDED)
        contact.tunnel_lost(old, "cut")
        self.assertEqual(media.calls, [("lost", "s1")])

    def test_older_agent(self) -> None:
        """
        An agent that does not say it makes session keys gets none: its
        session without per-user keys ends with its connection, as before.
        """
        clock, contact, media, sip = _contact()
        old = self._fresh(contact, "s1", agent_says=False)
        self.assertIsNone(contact.sessions["s1"].session_key)
        contact.tunnel_lost(old, "cut")
        self.assertEqual(media.calls, [("lost", "s1")])

    def test_agent_offers_and_resumes(self) -> None:
        """
        The agent of such a session suspends it on a cut, offers it on
        the next connection with the session proof, and takes the
        contact point's answer.
        """
        clock, media = Clock(), FakeMedia()
        agent = AgentResumption(clock, 60.0, media, FakeHandle())
        first = FakeTunnel("s1", peer_hello={"challenge": CHALLENGE.hex(), "session_key": 1})
        first.exported = self.EXPORTED
        agent.tunnel_established(first)
        key = agent.session.session_key
        agent.tunnel_lost(first, "cut")
        self.assertEqual((agent.state, agent.hello()), (SessionState.SUSPENDED, {"session_key": 1, "final-stop": 1, "resume": {"session_id": "s1", "users": []}, "reopen-forwards": 1}))
        new = FakeTunnel("s9", peer_hello={"challenge": CHALLENGE.hex(), "session_key": 1})
        agent.handle.current = new
        agent.tunnel_established(new)
        self.assertEqual(
            new.controls,
            [{"op": "resume", "session_id": "s1", "proofs": {}, "session_proof": resumption_proof(key, CHALLENGE, "s1")}],
        )
        agent.control_received(new, {"op": "resumed", "session_id": "s1", "users": []})
        self.assertEqual((agent.state, agent.resumed, new.session_id, agent.session.session_key), (SessionState.LIVE, 1, "s1", key))

    def test_offer_before_the_held_sip(self) -> None:
        """
        On the new connection the resumption offer goes first, then the
        tunnel handle is told (and sends the SIP that waited for it), so
        the contact point resumes the session before it reads that SIP.
        """
        seen: list[int] = []

        class Handle(FakeHandle):
            def tunnel_established(self, tunnel: Any) -> None:
                seen.append(len(tunnel.controls))

        agent = AgentResumption(Clock(), 60.0, FakeMedia(), Handle())
        first = FakeTunnel("s1", peer_hello={"session_key": 1})
        first.exported = self.EXPORTED
        agent.tunnel_established(first)
        agent.tunnel_lost(FakeTunnel("s1"), "cut")
        self.assertTrue(agent.resuming)
        agent.tunnel_established(FakeTunnel("s9", peer_hello={"challenge": CHALLENGE.hex(), "session_key": 1}))
        self.assertEqual(seen, [0, 1])

    def test_carried_sip_settled(self) -> None:
        """
        The tunnel handle hears once how a resumption ends: with the
        calls (the flows' keys bound by then, so the SIP it sends is
        ciphered for its user), with the registrations only, refused, or
        the window over; a session that was never suspended tells it
        nothing.
        """
        settled: list[tuple[bool, list[Any]]] = []

        class Handle(FakeHandle):
            carried_next = 4

            def resume_settled(self, resumed: bool, peer_next: object) -> None:
                settled.append((resumed, list(self.current.bound) if self.current is not None else [], peer_next))

        def suspended() -> tuple[Clock, AgentResumption, FakeTunnel]:
            clock = Clock()
            agent = AgentResumption(clock, 60.0, FakeMedia(), Handle())
            return clock, agent, _reconnected(agent)

        clock, agent, new = suspended()
        self.assertEqual(settled, [])
        # the offer says what the agent took of the contact point's SIP
        self.assertEqual(new.controls[0]["sip_next"], 4)
        agent.control_received(new, {"op": "resumed", "session_id": "s1", "sip_next": 9})
        agent.control_received(new, {"op": "resumed", "session_id": "s1"})
        self.assertEqual(settled, [(True, [(3, KEY)], 9)])
        del settled[:]
        clock, agent, new = suspended()
        agent.control_received(new, {"op": "resumed", "session_id": "s1", "media": False})
        clock, agent, new = suspended()
        agent.control_received(new, {"op": "resume-failed", "reason": "no"})
        clock, agent, new = suspended()
        clock.advance(60)
        self.assertEqual([resumed for resumed, _, _ in settled], [False, False, False])

    def test_far_parties_after_a_process_that_died(self) -> None:
        """
        Resumed with the registrations only and C{calls_ended: false} (the
        contact point's process before died with the calls), the agent's
        calls are released with their far parties reachable through the
        tunnel (the SIP core ends their calls there); without it (a
        contact point that stopped and ended them itself), or resumed
        with the calls, not; and not after the release.
        """
        seen: list[tuple[str, bool]] = []

        def suspended() -> tuple[AgentResumption, FakeTunnel]:
            class Media(FakeMedia):
                def session_ended(self, session_id: str, reason: str = "") -> None:
                    seen.append((session_id, agent.far_party_reachable(session_id)))

            agent = AgentResumption(Clock(), 60.0, Media(), FakeHandle())
            return agent, _reconnected(agent)

        agent, new = suspended()
        agent.control_received(new, {"op": "resumed", "session_id": "s1", "media": False, "calls_ended": False})
        self.assertEqual((seen, agent.far_party_reachable("s1")), ([("s1", True)], False))
        del seen[:]
        agent, new = suspended()
        agent.control_received(new, {"op": "resumed", "session_id": "s1", "media": False})
        self.assertEqual(seen, [("s1", False)])
        agent, new = suspended()
        agent.control_received(new, {"op": "resumed", "session_id": "s1", "calls_ended": False})
        self.assertEqual((seen, agent.resumed), ([("s1", False)], 1))

    def test_ringing_calls_far_after_a_process_that_died(self) -> None:
        """
        The calls that still ring (the SIP core's C{ringing_lost}, which
        the media manager calls as it releases the session) are ended for
        their far parties too after such a resumption (C{far}), as the
        legs are; not when the tunnels are going, nor afterwards.
        """
        far_seen: list[bool] = []


        class Media(FakeMedia):
            def session_ended(self, session_id: str, reason: str = "") -> None:
                wrapped.ringing_lost(session_id, 0.0)
                wrapped.ringing_lost(session_id, 0.0, False)

        agent = AgentResumption(Clock(), 60.0, Media(), FakeHandle())
        wrapped = agent.wrap(RingingRecorded(lambda session_id, far: far_seen.append(far)))
        new = _reconnected(agent)
        agent.control_received(new, {"op": "resumed", "session_id": "s1", "media": False, "calls_ended": False})
        wrapped.ringing_lost("s1", 1.0)
        self.assertEqual(far_seen, [True, False, False])

    def test_restored_calls_not_ended_said(self) -> None:
        """
        A session restored from a file that a process wrote while it ran
        (it died) is resumed with C{calls_ended: false}, once; one from a
        stop's file, without it.
        """
        for calls_ended, said in ((False, {"calls_ended": False}), (True, {})):
            clock, contact, media, sip = _contact()
            sip.regs["s1"] = [Registration("sip:alice@example.test", "sip:a@192.0.2.9", 3, 3600.0)]
            self.assertEqual(contact.import_state({"s1": {"keys": {USER: KEY.hex()}, "flows": {USER: 3}}}, calls_ended), 1)
            new = _resume(contact, "s1")
            self.assertEqual(new.controls[-1], {"op": "resumed", "session_id": "s1", "users": [USER], "media": False, **said})
            self.assertEqual(contact.calls_unended, set())

    def test_agent_after_a_refusal(self) -> None:
        """
        Refused, the agent forgets the old session and makes the key of
        the fresh one its connection came with; a contact point that
        makes no session keys gives it none (and nothing to resume).
        """
        clock, media = Clock(), FakeMedia()
        agent = AgentResumption(clock, 60.0, media, FakeHandle())
        first = FakeTunnel("s1", peer_hello={"session_key": 1})
        first.exported = self.EXPORTED
        agent.tunnel_established(first)
        agent.tunnel_lost(first, "cut")
        new = FakeTunnel("s9", peer_hello={"challenge": CHALLENGE.hex(), "session_key": 1})
        new.exported = self.EXPORTED
        agent.handle.current = new
        agent.tunnel_established(new)
        agent.control_received(new, {"op": "resume-failed", "reason": "no suspended session by that name"})
        self.assertEqual(
            (agent.state, agent.session_id, agent.session.session_key),
            (SessionState.LIVE, "s9", derive_session_key(self.EXPORTED, "s9")),
        )
        older = AgentResumption(clock, 60.0, media, FakeHandle())
        older.tunnel_established(FakeTunnel("s2", peer_hello={"challenge": CHALLENGE.hex()}))
        self.assertEqual((older.state, older.session.session_key), (SessionState.ENDED, None))
        older.tunnel_lost(FakeTunnel("s2"), "cut")
        self.assertEqual((older.state, older.hello()), (SessionState.ENDED, {"session_key": 1, "final-stop": 1}))

    def test_refusal_closes_registered_phones(self) -> None:
        """
        Refused, the agent closes the connections of every phone that had
        registered through the session (those without credentials, whose
        flows only the SIP core knows, too), so that they register again.
        """

        class Core:
            def registration_list(self) -> list[dict[str, Any]]:
                return [{"aor": "sip:bob@example.test", "flow": 7}, {"aor": "sip:carol@example.test", "flow": 9}]

        clock, media = Clock(), FakeMedia()
        agent = AgentResumption(clock, 60.0, media, FakeHandle())
        agent.wrap(Core())
        lost: list[list[int]] = []
        agent.session_lost = lambda flows: lost.append(flows) or len(flows)
        first = FakeTunnel("s1", peer_hello={"session_key": 1})
        first.exported = self.EXPORTED
        agent.tunnel_established(first)
        agent.tunnel_lost(first, "cut")
        new = FakeTunnel("s9", peer_hello={"challenge": CHALLENGE.hex(), "session_key": 1})
        agent.tunnel_established(new)
        agent.control_received(new, {"op": "resume-failed", "reason": "no suspended session by that name"})
        self.assertEqual(lost, [[7, 9]])


class _Forwards:
    """
    The contact point's UDP forwards, as the session logic tells them.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def tunnel_lost(self, tunnel: Any, reason: str, resumable: bool = False) -> None:
        self.calls.append(("lost", tunnel.session_id, resumable))

    def session_ended(self, session_id: str) -> None:
        self.calls.append(("ended", session_id))

    def session_resumed(self, session_id: str, tunnel: Any) -> None:
        self.calls.append(("resumed", session_id, tunnel.session_id))


class ContactForwardsTests(SynchronousTestCase):
    """
    The forwards of a session that may be resumed wait for it; they end
    with the session.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.media, self.sip, self.forwards = FakeMedia(), FakeSip(), _Forwards()
        self.sessions = SessionManager(self.clock, 60.0, self.media, self.sip, forwarder=self.forwards)

    def test_kept_while_suspended_and_resumed(self) -> None:
        """
        A lost connection of a session with keys: its forwards are kept
        (resumable); the session resumed, nothing ends them.
        """
        old = _registered(self.sessions, self.sip, "s1", expires=3600.0)
        self.sessions.tunnel_lost(old, "cut")
        self.assertEqual(self.forwards.calls, [("lost", "s1", True)])
        self.assertEqual(_resume(self.sessions, "s1").controls[-1]["op"], "resumed")
        self.clock.advance(600)
        self.assertEqual(self.forwards.calls, [("lost", "s1", True)])

    def test_opened_again_for_an_agent_that_says_so(self) -> None:
        """
        The resumption's hello said C{"reopen-forwards"}: the forwards are
        told the session goes on on the new connection (they open its
        flows again there), after the answer; a hello that did not say so
        gets nothing (the agent opens its flows itself).
        """
        for session, hello, told in (("s1", {"reopen-forwards": 1}, True), ("s2", {}, False)):
            self.forwards.calls.clear()
            old = _registered(self.sessions, self.sip, session, expires=3600.0)
            self.sessions.tunnel_lost(old, "cut")
            new = FakeTunnel("fresh-" + session, peer_hello=hello)
            self.sessions.tunnel_established(new)
            proof = resumption_proof(KEY, CHALLENGE, session)
            self.sessions.control_received(new, {"op": "resume", "session_id": session, "proofs": {USER: proof}})
            self.assertEqual(new.controls[-1]["op"], "resumed")
            expected = [("lost", session, True)] + ([("resumed", session, session)] if told else [])
            self.assertEqual(self.forwards.calls, expected)

    def test_ended_when_the_window_is_over(self) -> None:
        """
        Not resumed within the window: the forwards end with the calls,
        though the registrations stay (dormant).
        """
        old = _registered(self.sessions, self.sip, "s1", expires=3600.0)
        self.sessions.tunnel_lost(old, "cut")
        self.clock.advance(60)
        self.assertEqual(self.sessions.dormant, 1)
        self.assertEqual(self.forwards.calls, [("lost", "s1", True), ("ended", "s1")])

    def test_ended_with_a_session_that_cannot_be_resumed(self) -> None:
        """
        A session without keys ends with its connection, and so do its
        forwards.
        """
        tunnel = FakeTunnel("s2")
        self.sessions.tunnel_established(tunnel)
        self.sessions.tunnel_lost(tunnel, "cut")
        self.assertEqual(self.forwards.calls, [("ended", "s2"), ("lost", "s2", False)])


class BoundResumptionTests(SynchronousTestCase):
    """
    The resumption's proofs in the hello, bound to the new connection's
    TLS keying material: the contact point answers the hello, no
    challenge is answered first.
    """

    BINDING = b"\x55" * 32

    def _pair(self) -> tuple[AgentResumption, SessionManager, FakeMedia]:
        """
        Session s1 with alice's key on both halves, its connection lost
        on both.
        """
        clock, contact, media, sip = _contact()
        old = _registered(contact, sip, "s1", 3600.0)
        contact.tunnel_lost(old, "cut")
        agent = AgentResumption(Clock(), 60.0, FakeMedia(), FakeHandle())
        agent.keys[USER] = KEY
        agent.flows[USER] = 3
        agent.session_id = "s1"
        agent.tunnel_lost(FakeTunnel("s1"), "cut")
        return agent, contact, media

    def _hello(self, agent: AgentResumption, binding: bytes | None) -> tuple[FakeTunnel, dict[str, Any] | None]:
        """
        The agent's new connection with keying material C{binding}, and
        what its hello's C{resume.bound} says.
        """
        new = FakeTunnel("s9")
        new.exported = binding
        return new, agent.proofs(new)

    def _at_contact(self, contact: SessionManager, bound: dict[str, Any], binding: bytes | None) -> FakeTunnel:
        tunnel = FakeTunnel("fresh", peer_hello={"resume": {"session_id": "s1", "users": [USER], "bound": bound}})
        tunnel.exported = binding
        contact.tunnel_established(tunnel)
        return tunnel

    def test_resumed_on_the_hello(self) -> None:
        """
        The contact point resumes the session on the hello; the agent,
        told by the welcome that the contact point takes such proofs,
        sends no C{resume} and takes the answer.
        """
        agent, contact, media = self._pair()
        new, bound = self._hello(agent, self.BINDING)
        assert bound is not None
        self.assertEqual(bound["proofs"], {USER: resumption_proof(KEY, self.BINDING, "s1", bound=True)})
        self.assertNotEqual(bound["proofs"][USER], resumption_proof(KEY, self.BINDING, "s1"))
        at_contact = self._at_contact(contact, bound, self.BINDING)
        [answer] = at_contact.controls
        self.assertEqual(answer, {"op": "resumed", "session_id": "s1", "users": [USER]})
        self.assertEqual((contact.resumed, contact.resumed_bound, at_contact.session_id), (1, 1, "s1"))
        self.assertEqual(media.calls[-1], ("resumed", "s1", at_contact))
        new.local_hello = {"resume": {"session_id": "s1", "users": [USER], "bound": bound}}
        new.peer_hello = {"challenge": CHALLENGE.hex(), "resume_bound": 1}
        agent.sent(new)
        agent.handle.current = new
        agent.tunnel_established(new)
        self.assertEqual(new.controls, [])
        agent.control_received(new, answer)
        self.assertEqual((agent.state, agent.resumed, agent.bound_sent, agent.bound_taken), (SessionState.LIVE, 1, 1, 1))
        self.assertEqual(new.session_id, "s1")

    def test_bound_to_its_connection(self) -> None:
        """
        Proofs bound to another connection's keying material (a replay
        of another hello) are refused, and the session stays suspended;
        so are bound proofs on a connection without keying material.
        """
        agent, contact, media = self._pair()
        _, bound = self._hello(agent, self.BINDING)
        assert bound is not None
        other = self._at_contact(contact, bound, b"\x56" * 32)
        self.assertEqual(other.controls, [{"op": "resume-failed", "reason": f"wrong proof for {USER}"}])
        plain = self._at_contact(contact, bound, None)
        self.assertEqual(plain.controls, [{"op": "resume-failed", "reason": "bound proofs without TLS keying material"}])
        self.assertEqual((contact.resumed, contact.refused, contact.sessions["s1"].state), (0, 2, SessionState.SUSPENDED))
        # a challenge's proof is no bound proof either
        challenge_proofs = {"proofs": {USER: resumption_proof(KEY, self.BINDING, "s1")}}
        third = self._at_contact(contact, challenge_proofs, self.BINDING)
        self.assertEqual(third.controls, [{"op": "resume-failed", "reason": f"wrong proof for {USER}"}])

    def test_older_contact_point(self) -> None:
        """
        A welcome that does not say C{resume_bound} (an older contact
        point ignored the proofs): the agent answers the challenge.
        """
        agent, _, _ = self._pair()
        new, bound = self._hello(agent, self.BINDING)
        new.local_hello = {"resume": {"session_id": "s1", "users": [USER], "bound": bound}}
        new.peer_hello = {"challenge": CHALLENGE.hex()}
        agent.handle.current = new
        agent.tunnel_established(new)
        self.assertEqual(
            new.controls, [{"op": "resume", "session_id": "s1", "proofs": {USER: resumption_proof(KEY, CHALLENGE, "s1")}}]
        )
        self.assertEqual(agent.bound_taken, 0)

    def test_none_without_keying_material_or_session(self) -> None:
        """
        No bound proofs on a plaintext connection, or when there is
        nothing to resume.
        """
        agent, _, _ = self._pair()
        self.assertIsNone(self._hello(agent, None)[1])
        fresh = AgentResumption(Clock(), 60.0, FakeMedia(), FakeHandle())
        tunnel = FakeTunnel("s9")
        tunnel.exported = self.BINDING
        self.assertIsNone(fresh.proofs(tunnel))
