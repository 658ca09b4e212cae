"""
Tests for L{spwm.media.negotiation}: the offer/answer and forking rules of
one call leg, without sockets, channels or a reactor.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from spwm.media.negotiation import (
    TRANSITIONS,
    Answered,
    AnsweredWithoutSdp,
    Bind,
    Create,
    Expect,
    IgnoredBranch,
    Input,
    Keep,
    LegMedia,
    OpenChannel,
    Outcome,
    Refuse,
    Relay,
    Release,
    SameAs,
    StreamPlan,
    StreamState,
    TcpConnect,
    TcpExpect,
    TcpListen,
    TcpRelay,
)
from spwm.sdp import SessionDescription, parse_sdp


def sdp(streams: list[tuple[str, int, str]], version: int = 1, address: str = "192.0.2.10") -> SessionDescription:
    """
    A description with one m= line per (transport, port, direction):
    transport C{"udp"} (audio RTP) or C{"tcp"} (MSRP, passive).
    """
    lines = [
        "v=0",
        f"o=- 1 {version} IN IP4 {address}",
        "s=-",
        f"c=IN IP4 {address}",
        "t=0 0",
    ]
    for transport, port, direction in streams:
        if transport == "tcp":
            lines += [f"m=message {port} TCP/MSRP *", "a=setup:passive"]
        else:
            lines += [f"m=audio {port} RTP/AVP 0", f"a={direction}"]
    return parse_sdp(("\r\n".join(lines) + "\r\n").encode("ascii"))


class LegMediaTests(SynchronousTestCase):
    """
    Examples of the forking rules (the manager's tests check them with
    sockets; these check the plan alone).
    """

    def test_early_refusal_defers(self) -> None:
        """
        While the leg is early, a branch's port 0 only forgets that
        branch's description; the answer by the other branch keeps the
        stream, with only the winner expected.
        """
        leg = LegMedia()
        leg.described(False, None, sdp([("udp", 4000, "sendrecv")]))
        leg.described(True, "a", sdp([("udp", 5000, "sendrecv")]))
        out = leg.described(True, "b", sdp([("udp", 0, "sendrecv")]))
        self.assertNotIn(Release(0, "stream removed"), out.actions)
        self.assertEqual(leg.streams[0].state, StreamState.EARLY)
        out = leg.answered_by("a", True)
        self.assertEqual(leg.streams[0].state, StreamState.ANSWERED)
        [expect] = [a for a in out.actions if isinstance(a, Expect)]
        self.assertEqual([tag for tag, _ in expect.branches], ["a"])

    def test_answer_by_refusing_branch_releases(self) -> None:
        """
        The answer by the branch whose last word was port 0 releases the
        stream.
        """
        leg = LegMedia()
        leg.described(False, None, sdp([("udp", 4000, "sendrecv")]))
        leg.described(True, "a", sdp([("udp", 5000, "sendrecv")]))
        leg.described(True, "b", sdp([("udp", 0, "sendrecv")]))
        out = leg.answered_by("b", True)
        self.assertIn(Release(0, "not in the answer", refused=True), out.actions)
        self.assertEqual(leg.streams, {})

    def test_refusal_without_branches(self) -> None:
        """
        Without branch information an answer's port 0 releases the stream
        at once, as refused (it never had a description from both sides);
        a later removal of an accepted stream is no refusal.
        """
        leg = LegMedia()
        leg.described(True, None, sdp([("udp", 5000, "sendrecv"), ("udp", 5002, "sendrecv")]))
        out = leg.described(False, None, sdp([("udp", 4000, "sendrecv"), ("udp", 0, "sendrecv")]))
        self.assertIn(Release(1, "stream removed", refused=True), out.actions)
        leg.answered_by(None, False)
        out = leg.described(True, None, sdp([("udp", 0, "sendrecv")], version=2))
        self.assertIn(Release(0, "stream removed", refused=False), out.actions)

    def test_loser_ignored(self) -> None:
        """
        After the answer, SDP from our side's losing branch is ignored.
        """
        leg = LegMedia()
        leg.described(True, "a", sdp([("udp", 5000, "sendrecv")]))
        leg.answered_by("a", True)
        out = leg.described(True, "b", sdp([("udp", 0, "sendrecv")]))
        self.assertEqual(out.actions, [IgnoredBranch("b")])
        self.assertIn(0, leg.streams)

    def test_offer_towards_our_side(self) -> None:
        """
        An offer coming out of the tunnel makes the stream, its sockets and
        its channel; the rewrite names our relay ports; a bundled line
        shares its primary's entry.
        """
        leg = LegMedia()
        out = leg.described(False, None, sdp([("udp", 4000, "sendrecv"), ("udp", 4000, "sendrecv")]))
        self.assertEqual(
            out.actions,
            [Create(0, False), Bind(0, True), OpenChannel(0, False, False)],
        )
        self.assertEqual(out.rewrite, [Relay(0), SameAs(0)])

    def test_tcp_offer_and_answer(self) -> None:
        """
        A TCP offer towards our side: we listen and offer actpass; our
        side's passive answer makes us connect.
        """
        leg = LegMedia()
        out = leg.described(False, None, sdp([("tcp", 7000, "")]))
        self.assertEqual(out.rewrite, [TcpRelay(0, "actpass")])
        self.assertIn(TcpListen(0), out.actions)
        answer = sdp([("tcp", 8000, "")])
        out = leg.described(True, None, answer)
        self.assertEqual(
            out.actions,
            [TcpExpect(0, "192.0.2.10"), TcpConnect(0, answer.media[0]), OpenChannel(0, True, False)],
        )

    def test_transport_change_releases(self) -> None:
        """
        A m= line that changes from UDP to TCP (or back) is a new stream:
        the old one is released first.
        """
        leg = LegMedia()
        leg.described(False, None, sdp([("udp", 4000, "sendrecv")]))
        out = leg.described(True, None, sdp([("tcp", 8000, "")]))
        self.assertEqual(out.actions[:2], [Release(0, "transport changed"), Create(0, True)])
        out = leg.described(False, None, sdp([("udp", 4000, "sendrecv")]))
        self.assertEqual(out.actions[:2], [Release(0, "transport changed"), Create(0, False)])

    def test_limit(self) -> None:
        """
        A m= line beyond the per-leg limit is refused towards our side and
        ignored from it.
        """
        leg = LegMedia(max_streams=1)
        out = leg.described(False, None, sdp([("udp", 4000, "sendrecv"), ("udp", 4002, "sendrecv")]))
        self.assertEqual(out.rewrite, [Relay(0), Refuse()])
        out = leg.described(True, None, sdp([("udp", 5000, "sendrecv"), ("udp", 0, "sendrecv")]))
        self.assertEqual(list(leg.streams), [0])

    def test_transition_table(self) -> None:
        """
        RELEASED is terminal; every other state has a move for every input
        that can reach it, and ANSWER_* only leave EARLY.
        """
        for event in Input:
            self.assertNotIn((StreamState.RELEASED, event), TRANSITIONS)
        for (state, event), following in TRANSITIONS.items():
            if event in (Input.ANSWER_KEEPS, Input.ANSWER_DROPS):
                self.assertEqual(state, StreamState.EARLY)
            if event is Input.RELEASED:
                self.assertEqual(following, StreamState.RELEASED)


class UpdateHeldTests(SynchronousTestCase):
    """
    L{StreamPlan.update_held}: a side is held when every branch's live
    description from it is held.
    """

    def test_every_live_branch(self) -> None:
        """
        Over tables of up to three branches, each gone (C{None}), held or
        not: held exactly when there is a live one and all live ones are.
        """
        held, talking = sdp([("udp", 4000, "sendonly")]).media[0], sdp([("udp", 4000, "sendrecv")]).media[0]
        choices = [None, held, talking]
        tables = [{}] + [
            {f"t{i}": m for i, m in enumerate(combo)}
            for n in (1, 2, 3)
            for combo in itertools.product(choices, repeat=n)
        ]
        for ours in tables:
            for theirs in (tables[0], tables[-1], {"a": held}):
                stream = StreamPlan(0, False, StreamState.ANSWERED)
                stream.ours, stream.theirs = dict(ours), dict(theirs)
                stream.update_held()
                for table, value in ((ours, stream.held_ours), (theirs, stream.held_theirs)):
                    live = [m for m in table.values() if m is not None]
                    self.assertIs(value, bool(live) and all(m is held for m in live), table)


class ReofferTests(SynchronousTestCase):
    """
    A re-offer in an answered leg waits for its final response.
    """

    def _answered(self) -> LegMedia:
        leg = LegMedia()
        leg.described(True, "a", sdp([("udp", 5000, "sendrecv"), ("udp", 5002, "sendrecv")]))
        leg.described(False, "b", sdp([("udp", 4000, "sendrecv"), ("udp", 4002, "sendrecv")]))
        leg.answered_by("b", False)
        return leg

    def test_pending_then_refused(self) -> None:
        """
        Our side's re-offer moves stream 0 and removes stream 1: nothing
        changes until the response; a refusal leaves the leg as it was.
        """
        leg = self._answered()
        old = {index: stream.expected() for index, stream in leg.streams.items()}
        offer = sdp([("udp", 5008, "sendrecv"), ("udp", 0, "sendrecv")], version=2)
        out = leg.described(True, "a", offer, offer=(2, "INVITE"))
        self.assertEqual(out.actions, [])
        self.assertEqual(leg.settled(True, (3, "INVITE"), False).actions, [])
        self.assertEqual(leg.settled(False, (2, "INVITE"), False).actions, [])
        self.assertEqual(leg.settled(True, (2, "INVITE"), False).actions, [])
        self.assertEqual({index: stream.expected() for index, stream in leg.streams.items()}, old)
        self.assertEqual(leg.pending, {})

    def test_pending_then_accepted(self) -> None:
        """
        The 2xx applies the offer: the relay expects the new port, the
        removed stream is released.
        """
        leg = self._answered()
        offer = sdp([("udp", 5008, "sendrecv"), ("udp", 0, "sendrecv")], version=2)
        leg.described(True, "a", offer, offer=(2, "UPDATE"))
        out = leg.settled(True, (2, "UPDATE"), True)
        self.assertEqual(
            out.actions,
            [Expect(0, (("a", offer.media[0]),)), Release(1, "stream removed")],
        )

    def test_their_offer_adds_a_stream(self) -> None:
        """
        A re-offer towards our side that adds a stream makes it at once (its
        relay ports go into the SDP); a refusal releases it.
        """
        leg = self._answered()
        offer = sdp([("udp", 4000, "sendrecv"), ("udp", 4002, "sendrecv"), ("udp", 4004, "sendrecv")], version=2)
        out = leg.described(False, "b", offer, offer=(9, "INVITE"))
        self.assertEqual(out.rewrite, [Relay(0), Relay(1), Relay(2)])
        self.assertIn(Create(2, False), out.actions)
        out = leg.settled(False, (9, "INVITE"), False)
        self.assertEqual(out.actions, [Release(2, "offer refused", refused=True)])

    def test_before_the_answer_at_once(self) -> None:
        """
        Before the leg is answered (an UPDATE or PRACK offer while early)
        an offer applies at once, as before.
        """
        leg = LegMedia()
        leg.described(True, "a", sdp([("udp", 5000, "sendrecv")]))
        offer = sdp([("udp", 5008, "sendrecv")], version=2)
        out = leg.described(True, "a", offer, offer=(2, "UPDATE"))
        self.assertIn(Expect(0, (("a", offer.media[0]),)), out.actions)
        self.assertEqual(leg.pending, {})


class ReofferMachine(RuleBasedStateMachine):
    """
    An answered leg with random re-offers from either side, each accepted
    (2xx and answer) or refused (any other final response), now and then
    both sides at once (glare, both refused): the relay always expects the
    last accepted description of our side, and the live streams are those
    of the last accepted descriptions plus those a pending offer adds.
    """

    def __init__(self) -> None:
        super().__init__()
        self.leg = LegMedia(max_streams=3)
        self.expect: dict[int, tuple[Any, ...]] = {}
        # the model: per side, the last accepted port of each stream
        self.accepted: dict[bool, dict[int, int]] = {True: {0: 5000}, False: {0: 4000}}
        self.pending: tuple[bool, tuple[int, str], list[int]] | None = None
        self.cseq = 1
        self.version = 1
        self.run(self.leg.described(True, "a", self.description(True, [5000])))
        self.run(self.leg.described(False, "b", self.description(False, [4000])))
        self.run(self.leg.answered_by("b", False))

    def description(self, ours: bool, ports: list[int]) -> SessionDescription:
        self.version += 1
        return sdp(
            [("udp", port, "sendrecv") for port in ports],
            self.version,
            "192.0.2.10" if ours else "198.51.100.20",
        )

    def run(self, outcome: Outcome) -> None:
        for action in outcome.actions:
            if isinstance(action, Create):
                self.expect[action.index] = ()
            elif isinstance(action, Release):
                del self.expect[action.index]
            elif isinstance(action, Expect):
                self.expect[action.index] = action.branches

    def offer(self, ours: bool, ports: list[int]) -> tuple[int, str]:
        self.cseq += 1
        key = (self.cseq, "INVITE" if self.cseq % 2 else "UPDATE")
        tag = "a" if ours else "b"
        self.run(self.leg.described(ours, tag, self.description(ours, ports), offer=key))
        return key

    @precondition(lambda self: self.pending is None)
    @rule(ours=st.booleans(), ports=st.lists(st.sampled_from([0, 1, 1, 2]), min_size=3, max_size=3))
    def reoffer(self, ours: bool, ports: list[int]) -> None:
        # three m= lines each time: an offer keeps every line (RFC 3264
        # section 8), port 0 for a stream it does not want
        real = [0 if p == 0 else (5000 if ours else 4000) + 10 * p + 2 * i for i, p in enumerate(ports)]
        self.pending = (ours, self.offer(ours, real), real)

    @precondition(lambda self: self.pending is not None)
    @rule(accepted=st.booleans())
    def settle(self, accepted: bool) -> None:
        assert self.pending is not None
        ours, key, ports = self.pending
        self.pending = None
        self.run(self.leg.settled(ours, key, accepted))
        if not accepted:
            return
        # the answer: the other side keeps what it had where it can, a
        # port of its own for a new stream, port 0 where the offer has it
        theirs = self.accepted[not ours]
        base = 5000 if not ours else 4000
        answer = [
            0 if port == 0 else theirs.get(i) or base + 100 + 2 * i for i, port in enumerate(ports)
        ]
        self.run(self.leg.described(not ours, "a" if not ours else "b", self.description(not ours, answer)))
        for side, side_ports in ((ours, ports), (not ours, answer)):
            self.accepted[side] = {i: p for i, p in enumerate(side_ports) if p}

    @precondition(lambda self: self.pending is None)
    @rule()
    def glare(self) -> None:
        mine = self.offer(True, [5090, 0, 5094])
        theirs = self.offer(False, [4090, 4092, 0])
        self.run(self.leg.settled(False, theirs, False))
        self.run(self.leg.settled(True, mine, False))

    @invariant()
    def relay_holds_last_accepted(self) -> None:
        live = set(self.accepted[True]) & set(self.accepted[False])
        if self.pending is not None:
            ours, _, ports = self.pending
            live |= {i for i, p in enumerate(ports) if p}
        assert set(self.leg.streams) == live, (self.leg.streams, live)
        assert set(self.expect) == live
        for index, port in self.accepted[True].items():
            if index in self.expect:
                ((tag, media),) = self.expect[index]
                assert (tag, media.port) == ("a", port), (index, self.expect[index], port)


# the stateful test

TAGS = ("a", "b", "c")

#: one m= line: live (else port 0), hold
media_lines = st.lists(
    st.tuples(st.sampled_from([True, True, True, False]), st.booleans()),
    min_size=1,
    max_size=3,
)

#: a branch: mostly the first two (so that both often describe a stream
#: before the answer), now and then a third (over the branch limit of 2)
branches = st.sampled_from([0, 1, 0, 1, 2])


class LegMediaMachine(RuleBasedStateMachine):
    """
    Random offers/answers from either side on 1–3 forked branches (or
    none), early answers, port-0 refusals, re-offers with hold, added and
    removed streams, an answer, the executor giving streams up, the end.
    A model executor carries the actions out and checks them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.leg = LegMedia(max_streams=3, max_branches=2)
        # the model executor: live streams (index -> tcp), channels opened
        # per stream life, the relay's expectations per UDP stream
        self.live: dict[int, bool] = {}
        self.channels: dict[int, int] = {}
        self.expect: dict[int, tuple[Any, ...]] = {}
        self.version = 0
        self.over = False
        self.keep: set[str | None] = set()

    @initialize(
        tagged=st.sampled_from([True, True, True, False]),
        transports=st.tuples(*[st.sampled_from(["udp", "udp", "tcp"])] * 3),
    )
    def mode(self, tagged: bool, transports: tuple[str, str, str]) -> None:
        # tagged: forked branches; else no branch information at all. The
        # transport of each m= line stays (a change releases the stream:
        # test_transport_change_releases).
        self.tags: tuple[str | None, ...] = TAGS if tagged else (None,)
        self.transports = transports

    def run(self, outcome: Outcome) -> None:
        """
        Carry the actions out like the manager, checking each.
        """
        for action in outcome.actions:
            if isinstance(action, Create):
                assert action.index not in self.live, action
                self.live[action.index] = action.tcp
                self.channels[action.index] = 0
                self.expect[action.index] = ()
            elif isinstance(action, Release):
                assert action.index in self.live, action
                del self.live[action.index]
                del self.channels[action.index]
                del self.expect[action.index]
            elif isinstance(action, OpenChannel):
                assert action.index in self.live, action
                assert action.tcp == self.live[action.index]
                # "make sure": opened the first time only
                if self.channels[action.index] == 0:
                    self.channels[action.index] = 1
            elif isinstance(action, (Bind, Expect)):
                assert not self.live[action.index], action
                if isinstance(action, Expect):
                    self.expect[action.index] = action.branches
            elif isinstance(action, (TcpExpect, TcpListen, TcpConnect)):
                assert self.live[action.index], action
            elif isinstance(action, AnsweredWithoutSdp):
                self.keep.add(action.latest)
        for entry in outcome.rewrite:
            if isinstance(entry, (Relay, TcpRelay)):
                assert entry.index in self.live, entry

    @precondition(lambda self: not self.over)
    @rule(
        ours=st.booleans(),
        branch=branches,
        lines=media_lines,
        new_version=st.booleans(),
    )
    def describe(self, ours: bool, branch: int, lines: list[tuple[bool, bool]], new_version: bool) -> None:
        tag = self.tags[branch % len(self.tags)]
        if new_version:
            self.version += 1
        streams = [
            (self.transports[i], (4000 + 2 * i) if live else 0, "sendonly" if hold else "sendrecv")
            for i, (live, hold) in enumerate(lines)
        ]
        description = sdp(streams, self.version, "192.0.2.%d" % (10 + (tag is not None and TAGS.index(tag) or 0)))
        loser = self.leg.loser(tag, ours)
        outcome = self.leg.described(ours, tag, description)
        self.run(outcome)
        if ours and loser:
            assert outcome.actions == [IgnoredBranch(tag)], outcome
        if loser:
            # a branch that lost releases nothing
            assert not any(isinstance(a, Release) for a in outcome.actions), outcome
        if not ours:
            assert len(outcome.rewrite) == len(lines)
            for (live, _), entry in zip(lines, outcome.rewrite):
                if not live:
                    assert isinstance(entry, Keep), entry
        # after the answer, the winner's (or an untagged) refusal releases
        if self.leg.answered and not loser and (tag is None or ours == self.leg.winner_ours):
            for index, (live, _) in enumerate(lines):
                if not live and (tag is None or tag == self.leg.winner):
                    assert index not in self.leg.streams, (index, tag)

    def branch_of(self, data: st.DataObject, ours: bool) -> int:
        """
        Mostly a branch that described a stream on that side (so that
        refusals and answers meet the branches they concern), else any.
        """
        known = sorted(
            {
                TAGS.index(tag)
                for stream in self.leg.streams.values()
                for tag in [*(stream.ours if ours else stream.theirs), *(t for o, t in stream.refused if o == ours)]
                if tag is not None
            }
        )
        if known and data.draw(st.booleans()):
            return data.draw(st.sampled_from(known))
        return data.draw(branches)

    @precondition(lambda self: not self.over and bool(self.live))
    @rule(ours=st.booleans(), data=st.data())
    def refuse(self, ours: bool, data: st.DataObject) -> None:
        """
        A re-offer or answer that refuses one stream (port 0) and keeps
        the others.
        """
        index = data.draw(st.sampled_from(sorted(self.live)))
        lines = [(i != index, False) for i in range(max(self.live) + 1)]
        self.describe(ours, self.branch_of(data, ours), lines, False)

    @precondition(lambda self: not self.over)
    @rule(ours=st.booleans(), data=st.data(), chance=st.integers(0, 2))
    def answer(self, ours: bool, data: st.DataObject, chance: int) -> None:
        """
        A 2xx crosses; now and then, so that branches pile up first.
        """
        if chance:
            return
        # often a branch whose last word on some stream was a refusal
        refusers = sorted(
            {
                TAGS.index(tag)
                for stream in self.leg.streams.values()
                for tag in [
                    *(t for t, m in (stream.ours if ours else stream.theirs).items() if m is None),
                    *(t for o, t in stream.refused if o == ours),
                ]
                if tag is not None
            }
        )
        if refusers and data.draw(st.booleans()):
            branch = data.draw(st.sampled_from(refusers))
        else:
            branch = self.branch_of(data, ours)
        tag = self.tags[branch % len(self.tags)]
        first = not self.leg.answered
        # the winner's word on each stream before the answer
        before = {
            index: (s.tcp, (s.ours if ours else s.theirs).get(tag, "none"), set(s.refused))
            for index, s in self.leg.streams.items()
        }
        described_by_tag = any(word != "none" for _, word, _ in before.values())
        outcome = self.leg.answered_by(tag, ours)
        self.run(outcome)
        if not first:
            assert not any(isinstance(a, Answered) for a in outcome.actions)
            return
        assert outcome.actions[-1] == Answered(tag, ours)
        self.keep.add(tag)
        if described_by_tag or tag is None:
            for index, (tcp, word, refused) in before.items():
                if tcp and (ours, tag) in refused:
                    assert index not in self.leg.streams, index
                if not tcp and word is None:
                    # the winning branch refused the stream: released
                    assert index not in self.leg.streams, index

    @precondition(lambda self: not self.over and bool(self.live))
    @rule(data=st.data(), chance=st.integers(0, 3))
    def give_up(self, data: st.DataObject, chance: int) -> None:
        """
        The executor gives a stream up (no ports, no channel, idle, the
        peer closed its channel); now and then, so that streams live.
        """
        if chance:
            return
        index = data.draw(st.sampled_from(sorted(self.live)))
        self.leg.release(index)
        del self.live[index]
        del self.channels[index]
        del self.expect[index]

    @precondition(lambda self: not self.over)
    @rule(chance=st.integers(0, 7))
    def end(self, chance: int) -> None:
        """
        The leg ends; now and then, so that exchanges get long.
        """
        if chance:
            return
        self.run(self.leg.ended())
        self.over = True
        assert self.leg.streams == {}
        assert self.live == {}

    @precondition(lambda self: self.over)
    @rule(index=st.integers(0, 3))
    def after_end(self, index: int) -> None:
        """
        Nothing is left after the end; a late give-up changes nothing.
        """
        self.leg.release(index)
        assert self.leg.streams == {}
        assert self.live == {}

    @invariant()
    def executor_agrees(self) -> None:
        assert set(self.live) == set(self.leg.streams), (self.live, self.leg.streams)
        for index, stream in self.leg.streams.items():
            assert stream.tcp == self.live[index]
            assert stream.state is not StreamState.RELEASED
            assert stream.state == (StreamState.ANSWERED if self.leg.answered else StreamState.EARLY)
            assert self.channels[index] <= 1
            if not stream.tcp:
                # the relay expects exactly what the plan holds
                assert self.expect[index] == stream.expected(), index
            assert len(stream.ours) <= self.leg.max_branches
            assert len(stream.theirs) <= self.leg.max_branches

    @invariant()
    def one_winner(self) -> None:
        """
        After the answer, at most the winning branch's expectations (or,
        when its tag never described a stream, the latest branch's)
        survive on the winner's side.
        """
        if not self.leg.answered:
            return
        winners = set(self.keep) | {self.leg.winner}
        for stream in self.leg.streams.values():
            table = stream.ours if self.leg.winner_ours else stream.theirs
            live = {tag for tag, m in table.items() if m is not None}
            assert live <= winners, (live, winners)


class LegMediaStatefulTests(SynchronousTestCase):
    """
    The forking rules over random exchanges (L{LegMediaMachine}).
    """

    def test_random_exchanges(self) -> None:
        run_state_machine_as_test(
            LegMediaMachine,
            settings=settings(max_examples=400, stateful_step_count=25, deadline=None, database=None),
        )

    def test_random_reoffers(self) -> None:
        """
        Re-offers accepted and refused at random (L{ReofferMachine}).
        """
        run_state_machine_as_test(
            ReofferMachine,
            settings=settings(max_examples=300, stateful_step_count=20, deadline=None, database=None),
        )
