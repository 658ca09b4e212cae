"""
Tests for L{spwm.session.state}: the session table, pair by pair, and the
agent's session logic driven by it through random lives (hypothesis).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from spwm.security.resume import AgentResumption
from spwm.session.state import (
    AGENT_IMPOSSIBLE,
    AGENT_TRANSITIONS,
    CONTACT_IMPOSSIBLE,
    CONTACT_TRANSITIONS,
    BadTransition,
    Effect,
    AGENT_ONLY,
    CONTACT_ONLY,
    Input,
    SessionState,
    transition,
)
from tests.test_security_resume import CHALLENGE, KEY, USER, FakeHandle, FakeMedia, FakeTunnel, _contact, _registered, _resume

S, I, E = SessionState, Input, Effect


class TableTests(SynchronousTestCase):
    """
    Every (state, input) pair, one by one.
    """

    def test_every_pair_is_decided(self) -> None:
        """
        In each table each pair is in the table or is impossible (and then
        raises), never both, never neither.
        """
        for table, impossible in ((AGENT_TRANSITIONS, AGENT_IMPOSSIBLE), (CONTACT_TRANSITIONS, CONTACT_IMPOSSIBLE)):
            for state in SessionState:
                for event in Input:
                    pair = (state, event)
                    self.assertNotEqual(pair in table, pair in impossible, pair)
                    if pair in impossible:
                        self.assertRaises(BadTransition, transition, table, state, event)
                    else:
                        self.assertEqual(transition(table, state, event), table[pair])

    @given(st.sampled_from(SessionState), st.sampled_from(sorted(set(Input) - CONTACT_ONLY, key=str)))
    def test_agent_rules(self, state: SessionState, event: Input) -> None:
        """
        The rules the agent's table stands for: stopping or going away
        always ends the session; a refusal ends it; media is resumed only
        from C{SUSPENDED}; the window moves only C{SUSPENDED}; a proof is
        sent only while waiting; what ends in C{ENDED} released or ended it
        (or nothing was there).
        """
        effect, after = transition(AGENT_TRANSITIONS, state, event)
        if event in (I.STOP, I.GONE_AWAY, I.RESUME_REFUSED):
            self.assertEqual((effect, after), (E.RELEASE, S.ENDED))
        if effect is E.RESUME:
            self.assertEqual((state, after), (S.SUSPENDED, S.LIVE))
        if event is I.WINDOW_OVER:
            self.assertEqual(after, S.DORMANT if state is S.SUSPENDED else state)
        if effect is E.OFFER:
            self.assertIn(state, (S.SUSPENDED, S.DORMANT))
            self.assertEqual(after, state)
        if after is S.ENDED and state is not S.ENDED:
            self.assertIn(effect, (E.RELEASE, E.END))
        if effect is E.SUSPEND:
            self.assertEqual(after, S.SUSPENDED)

    @given(st.sampled_from(SessionState), st.sampled_from(sorted(set(Input) - AGENT_ONLY, key=str)))
    def test_contact_rules(self, state: SessionState, event: Input) -> None:
        """
        The rules the contact point's table stands for: a stop leaves
        nothing suspended or dormant; media moves only from C{SUSPENDED}
        (or a live session taken over); only C{SUSPENDED} goes dormant;
        a connection's end never drops a suspended or dormant session.
        """
        if (state, event) in CONTACT_IMPOSSIBLE:
            return
        effect, after = transition(CONTACT_TRANSITIONS, state, event)
        if event is I.STOP:
            self.assertNotIn(after, (S.SUSPENDED, S.DORMANT))
        if effect is E.RESUME:
            self.assertEqual(state, S.SUSPENDED)
        if effect is E.TAKE_OVER:
            self.assertEqual(state, S.LIVE)
        if after is S.DORMANT and state is not S.DORMANT:
            self.assertEqual((state, effect), (S.SUSPENDED, E.GO_DORMANT))
        if event in (I.TUNNEL_ENDED, I.GONE_AWAY) and state in (S.SUSPENDED, S.DORMANT):
            self.assertEqual(after, state)


def _open_suspensions(calls: list[tuple[Any, ...]]) -> set[str]:
    """
    The sessions whose media is suspended after C{calls} (of
    L{FakeMedia}), checking on the way that a session is suspended only
    while it is not: each suspension ends (released or resumed) once.
    """
    suspended: set[str] = set()
    for call in calls:
        if call[0] == "suspended":
            assert call[1] not in suspended, calls
            suspended.add(call[1])
        elif call[0] == "resumed":
            # (a live session moved to another of its connections is
            # resumed without a suspension)
            suspended.discard(call[1])
        elif call[0] == "lost":
            suspended.discard(call[1])
    return suspended


class AgentLives(RuleBasedStateMachine):
    """
    An agent session with a key, through losses, reconnections, proofs,
    refusals, waits and a stop, checked against what the table promises.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.media = FakeMedia()
        self.resumption = AgentResumption(self.clock, 60.0, self.media, FakeHandle())
        self.resumption.keys[USER] = KEY
        self.resumption.flows[USER] = 3
        self.resumption.session_id = "s1"
        self.tunnel: Any = FakeTunnel("s1")
        self.up = True
        self.count = 0
        self.stopped = False

    @precondition(lambda self: self.up)
    @rule()
    def lose(self) -> None:
        self.up = False
        self.resumption.tunnel_lost(self.tunnel, "cut")

    @precondition(lambda self: not self.up)
    @rule(challenge=st.booleans(), session_key=st.booleans())
    def reconnect(self, challenge: bool, session_key: bool) -> None:
        self.count += 1
        hello: dict[str, Any] = {"challenge": CHALLENGE.hex()} if challenge else {}
        if session_key:
            # a contact point that makes session keys
            hello["session_key"] = 1
        self.tunnel = FakeTunnel(f"n{self.count}", peer_hello=hello)
        self.tunnel.exported = KEY  # TLS keying material
        self.up = True
        self.resumption.handle.current = self.tunnel
        self.resumption.tunnel_established(self.tunnel)

    @precondition(lambda self: self.up)
    @rule(media=st.booleans())
    def prove(self, media: bool) -> None:
        message: dict[str, Any] = {"op": "resumed", "session_id": self.resumption.session_id}
        if not media:
            message["media"] = False
        self.resumption.control_received(self.tunnel, message)

    @precondition(lambda self: self.up)
    @rule()
    def refuse(self) -> None:
        self.resumption.control_received(self.tunnel, {"op": "resume-failed", "reason": "no"})

    @rule(seconds=st.sampled_from([1.0, 59.0, 60.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def stop(self) -> None:
        self.stopped = True
        self.resumption.stop()

    @invariant()
    def consistent(self) -> None:
        r = self.resumption
        state = r.state
        timer = bool(self.clock.getDelayedCalls())
        assert timer == (state is S.SUSPENDED), (state, timer)
        assert (r.session.suspended is not None) == (state is S.SUSPENDED)
        assert ("resume" in r.hello()) == (state in (S.SUSPENDED, S.DORMANT)), (state, r.hello())
        assert r.hello()["session_key"] == 1
        if state is S.ENDED and (self.stopped or r.session_id is None):
            assert r.keys == {}
        if state is S.ENDED:
            # a session key is made with the session, and forgotten with it
            assert r.session.session_key is None
        if self.stopped and state is S.ENDED:
            assert "resume" not in r.hello()
        # media: each suspension is released or resumed once
        assert not _open_suspensions(self.media.calls) or state is S.SUSPENDED, self.media.calls


class AgentLivesTests(SynchronousTestCase):
    """
    Random lives of an agent session.
    """

    def test_lives(self) -> None:
        """
        Through any order of losses, reconnections, proofs, refusals,
        waits and a stop, the session keeps its invariants.
        """
        run_state_machine_as_test(
            AgentLives, settings=settings(max_examples=150, stateful_step_count=25, deadline=None)
        )


class ContactLives(RuleBasedStateMachine):
    """
    One contact-point session through losses, resumptions (after a loss,
    and over a connection that is still thought live), waits and a stop:
    the calls' media of every connection is released or resumed once, and
    the counts and timers agree.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock, self.resumption, self.media, self.sip = _contact()
        self.tunnel: Any = _registered(self.resumption, self.sip, "s1", expires=3000.0)
        # the session's other connections, beside the primary
        self.extra: list[Any] = []
        self.up = True
        self.taken_over: list[Any] = []
        self.stopped = False

    @precondition(lambda self: self.up and not self.stopped)
    @rule()
    def lose(self) -> None:
        self.up = False
        for other in self.extra:
            self.resumption.tunnel_lost(other, "cut")
        self.extra = []
        self.resumption.tunnel_lost(self.tunnel, "cut")

    @precondition(lambda self: self.up and not self.stopped)
    @rule()
    def add_path(self) -> None:
        """
        Another connection of the session is attached (as the redundant
        paths will be).
        """
        extra = FakeTunnel("s1")
        self.resumption.sessions["s1"].use_tunnel(extra)
        self.extra.append(extra)

    @precondition(lambda self: self.up and bool(self.extra))
    @rule(primary=st.booleans())
    def lose_one(self, primary: bool) -> None:
        """
        One of several connections is lost: the session goes on on the
        others.
        """
        if primary:
            lost, self.tunnel = self.tunnel, self.extra.pop(0)
        else:
            lost = self.extra.pop()
        told = len(self.media.calls)
        self.resumption.tunnel_lost(lost, "one path cut")
        # the media goes on on the new primary (its channels reopened), or
        # is not touched
        expected = [("resumed", "s1", self.tunnel)] if primary else []
        assert self.media.calls[told:] == expected, self.media.calls[told:]

    @precondition(lambda self: not self.stopped)
    @rule(media=st.booleans())
    def resume(self, media: bool) -> None:
        previous = [self.tunnel, *self.extra] if self.up else []
        extra = {} if media else {"media": False}
        new = _resume(self.resumption, "s1", **extra)
        if new.controls[-1]["op"] == "resumed":
            self.taken_over += previous
            self.tunnel, self.up, self.extra = new, True, []
        else:
            self.resumption.tunnel_lost(new, "refused, closed")

    @precondition(lambda self: bool(self.taken_over))
    @rule()
    def old_dies(self) -> None:
        self.resumption.tunnel_lost(self.taken_over.pop(0), "taken over")

    @rule(seconds=st.sampled_from([1.0, 59.0, 60.0, 3600.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def stop(self) -> None:
        self.stopped = True
        self.resumption.stop()

    @invariant()
    def consistent(self) -> None:
        status = self.resumption.status()
        assert status["suspended"] + status["dormant"] <= 1, status
        assert len(self.clock.getDelayedCalls()) == status["suspended"] + status["dormant"], status
        if status["suspended"] or status["dormant"]:
            assert self.resumption.keys.get("s1"), status
        if self.stopped:
            assert (status["suspended"], status["dormant"]) == (0, 0), status
        assert not _open_suspensions(self.media.calls) or status["suspended"], self.media.calls
        # the record: a live session holds exactly its connections, the
        # primary first; a suspended or dormant one none
        session = self.resumption.sessions.get("s1")
        state = self.resumption.state_of("s1")
        if self.up:
            assert state is S.LIVE and session is not None, state
            assert [id(c) for c in session.connections] == [id(c) for c in [self.tunnel, *self.extra]]
            assert self.sip.attached[-1] is self.tunnel, self.sip.attached
        elif session is not None:
            assert not session.connections, session
        assert status["live"] == int(self.up), status


class ContactLivesTests(SynchronousTestCase):
    """
    Random lives of a contact-point session.
    """

    def test_lives(self) -> None:
        """
        The contact point's session keeps its invariants through any order
        of events.
        """
        run_state_machine_as_test(
            ContactLives, settings=settings(max_examples=150, stateful_step_count=25, deadline=None)
        )
