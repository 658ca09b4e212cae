# -*- test-case-name: tests.test_media_negotiation -*-
"""
Media negotiation of one call leg: offer/answer and forking, pure.

A L{LegMedia} is told what happens to the SDP of one call leg (dialog key
C{FLOW/CALL-ID}) on one half:

  - L{LegMedia.described}: side S (ours: the message goes into the tunnel;
    theirs: it comes out) described the session on branch T (the tag of
    the endpoint that wrote the SDP, or C{None}: no branch information);
  - L{LegMedia.answered}: a 2xx to an INVITE of branch T crossed the
    tunnel (from side S);
  - L{LegMedia.settled}: the final response to a re-offer (an INVITE or
    UPDATE with SDP in an answered leg, held pending until then) crossed
    the tunnel: a 2xx applies it, any other final response drops it;
  - L{LegMedia.ended}: the leg is over;
  - L{LegMedia.release}: the executor gave a stream up on its own (no
    ports, no channel, inactivity, the peer closed the channel, ...).

It answers with plain action values (L{Create}, L{Release}, L{Expect},
L{Bind}, L{OpenChannel}, the TCP actions, notes for the log) and, for a
description towards our side, one rewrite entry per C{m=} line. It knows
nothing of sockets, channels, ports, clocks or logging: the
L{spwm.media.manager.MediaManager} carries the actions out and turns the
rewrite entries into ports for L{spwm.sdp.rewrite_sdp}. See
C{docs/media.md} ("Forking and early media") and C{docs/architecture.md}
("Media").

Per stream (C{m=} line) the state is a L{StreamState}; the moves allowed
are in L{TRANSITIONS}. Hold is not a state: a stream is on hold or not
whatever its state (L{StreamPlan.held}).
"""

from __future__ import annotations

import enum
from typing import Collection, Union

from dataclasses import dataclass

from spwm.sdp import MediaDescription, SessionDescription

#: Default number of media streams per dialog; further m= lines are rejected.
DEFAULT_MAX_STREAMS_PER_DIALOG = 16

#: Default number of branches (early dialogs of a forked call) whose
#: descriptions one stream keeps; the oldest is forgotten beyond it.
DEFAULT_MAX_BRANCHES_PER_STREAM = 8


class StreamState(enum.Enum):
    """
    Where one stream of a leg is in the offer/answer exchange.
    """

    #: The leg has no answer yet: every branch's description is kept, a
    #: branch's refusal (port 0) waits for the answer.
    EARLY = "early"
    #: The leg was answered: the stream is the winning branch's; a
    #: refusal by the winner releases it, a loser's changes nothing.
    ANSWERED = "answered"
    #: The stream is gone (refused, removed, not in the answer, the leg
    #: ended, or the executor gave it up). Terminal.
    RELEASED = "released"

    # by identity, as members compare: Enum's own hash is a Python call,
    # two per move (TRANSITIONS, several moves per call)
    __hash__ = object.__hash__


class Input(enum.Enum):
    """
    What can happen to one stream (the inputs of L{TRANSITIONS}).
    """

    #: a side described the stream (any branch)
    DESCRIBED = "described"
    #: a branch refused the stream while the refusal defers (early, or a
    #: branch that lost)
    REFUSED_DEFERRED = "refused deferred"
    #: the stream is released: refused for good, removed, transport
    #: changed, over a limit, the leg ended, the executor gave it up
    RELEASED = "released"
    #: the leg's first answer wants the stream
    ANSWER_KEEPS = "answer keeps"
    #: the leg's first answer does not want the stream
    ANSWER_DROPS = "answer drops"

    # by identity, as members compare (see StreamState)
    __hash__ = object.__hash__


#: (state, input) -> next state. A pair not in the table is a bug.
TRANSITIONS: dict[tuple[StreamState, Input], StreamState] = {
    (StreamState.EARLY, Input.DESCRIBED): StreamState.EARLY,
    (StreamState.EARLY, Input.REFUSED_DEFERRED): StreamState.EARLY,
    (StreamState.EARLY, Input.RELEASED): StreamState.RELEASED,
    (StreamState.EARLY, Input.ANSWER_KEEPS): StreamState.ANSWERED,
    (StreamState.EARLY, Input.ANSWER_DROPS): StreamState.RELEASED,
    (StreamState.ANSWERED, Input.DESCRIBED): StreamState.ANSWERED,
    (StreamState.ANSWERED, Input.REFUSED_DEFERRED): StreamState.ANSWERED,
    (StreamState.ANSWERED, Input.RELEASED): StreamState.RELEASED,
}


# the actions


@dataclass(frozen=True, slots=True)
class Create:
    """
    A new stream: make its record (a TCP stream with its endpoint, no
    socket yet). Comes before any other action for that stream.
    """

    index: int
    tcp: bool

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, index: int, tcp: bool) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "tcp", tcp)


@dataclass(frozen=True, slots=True)
class Release:
    """
    The stream is gone (the plan has forgotten it): close its channel,
    unbind its sockets, free its ports. C{refused}: its offer was
    refused (a re-offer that added it failed, or an answer did not take
    it), so it never was part of the session.
    """

    index: int
    reason: str
    refused: bool = False

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, index: int, reason: str, refused: bool = False) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "refused", refused)


@dataclass(frozen=True, slots=True)
class Rejected:
    """
    A stream was not relayed (over the per-leg limit): count it.
    """

    index: int


@dataclass(frozen=True, slots=True)
class Expect:
    """
    The relay of a UDP stream sends to, and accepts from, exactly these
    branches of our side (tag, description), in this order; the others
    are forgotten. (One value with the whole set, not one per branch: the
    executor applies it as it is, and the set is what the invariants are
    about.)
    """

    index: int
    branches: tuple[tuple[str | None, MediaDescription], ...]

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, index: int, branches: tuple[tuple[str | None, MediaDescription], ...]) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "branches", branches)


@dataclass(frozen=True, slots=True)
class Bind:
    """
    Make sure a UDP stream has its relay sockets (RTP, and RTCP unless
    C{rtcp} is false); if none can be bound the stream is given up.
    """

    index: int
    rtcp: bool

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, index: int, rtcp: bool) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "rtcp", rtcp)


@dataclass(frozen=True, slots=True)
class OpenChannel:
    """
    Make sure the stream has a tunnel channel: attach the one the peer
    opened for it, or open one (a datagram channel, or a stream channel
    for TCP); if none can be opened the stream is given up.
    """

    index: int
    tcp: bool
    mux: bool

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, index: int, tcp: bool, mux: bool) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "tcp", tcp)
        object.__setattr__(self, "mux", mux)


@dataclass(frozen=True, slots=True)
class TcpExpect:
    """
    Our side's endpoint of a TCP stream is at C{host} (a listener accepts
    only from there).
    """

    index: int
    host: str | None


@dataclass(frozen=True, slots=True)
class TcpListen:
    """
    Listen for our side's TCP connection on a port of the range.
    """

    index: int


@dataclass(frozen=True, slots=True)
class TcpConnect:
    """
    Connect to our side's TCP endpoint as C{media} names it (closing a
    listener first).
    """

    index: int
    media: MediaDescription


@dataclass(frozen=True, slots=True)
class IgnoredBranch:
    """
    Note: a description from our side's branch C{tag}, which lost, was
    ignored.
    """

    tag: str | None


@dataclass(frozen=True, slots=True)
class Crowded:
    """
    Note: stream C{index} has more than C{limit} branches; the oldest was
    forgotten (once per stream).
    """

    index: int
    limit: int


@dataclass(frozen=True, slots=True)
class Answered:
    """
    Note: the leg's first answer, from our side or not.
    """

    tag: str | None
    ours: bool

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, tag: str | None, ours: bool) -> None:
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "ours", ours)


@dataclass(frozen=True, slots=True)
class AnsweredToo:
    """
    Note: another branch answered after C{winner}; media stays.
    """

    tag: str | None
    winner: str | None


@dataclass(frozen=True, slots=True)
class AnsweredWithoutSdp:
    """
    Note: the answer's tag never described a stream; the latest branch's
    media (C{latest}) is kept.
    """

    tag: str | None
    latest: str | None


Action = Union[
    Create,
    Release,
    Rejected,
    Expect,
    Bind,
    OpenChannel,
    TcpExpect,
    TcpListen,
    TcpConnect,
    IgnoredBranch,
    Crowded,
    Answered,
    AnsweredToo,
    AnsweredWithoutSdp,
]


# the rewrite entries (one per m= line of a description towards our side)


@dataclass(frozen=True, slots=True)
class Keep:
    """
    Leave the C{m=} line as it is (it has port 0).
    """


@dataclass(frozen=True, slots=True)
class SameAs:
    """
    The C{m=} line shares the transport of line C{primary} (BUNDLE).
    """

    primary: int


@dataclass(frozen=True, slots=True)
class Refuse:
    """
    Port 0: the stream is not relayed.
    """


@dataclass(frozen=True, slots=True)
class Relay:
    """
    Our relay ports of UDP stream C{index} (port 0 if the executor gave
    the stream up).
    """

    index: int

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, index: int) -> None:
        object.__setattr__(self, "index", index)


@dataclass(frozen=True, slots=True)
class TcpRelay:
    """
    Our role C{setup} towards our side for TCP stream C{index}: C{"active"}
    (we connect, port 9), C{"passive"} or C{"actpass"} (our listening
    port); port 0 if the executor gave the stream up.
    """

    index: int
    setup: str


Entry = Union[Keep, SameAs, Refuse, Relay, TcpRelay]


@dataclass(frozen=True, slots=True)
class Outcome:
    """
    What one input asks of the executor: actions, in order (those of one
    stream are carried out in order; once a stream is given up, the rest
    of its actions are skipped), and for a description towards our side
    one rewrite entry per C{m=} line.
    """

    actions: list[Action]
    rewrite: list[Entry]

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, actions: list[Action], rewrite: list[Entry]) -> None:
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "rewrite", rewrite)


class StreamPlan:
    """
    The negotiated state of one stream (C{m=} line) of a leg.

    @ivar state: where it is (L{StreamState}).
    @ivar tcp: TCP media (RFC 4145), carried on a stream channel.
    @ivar ours: UDP, per branch tag (C{None}: no branch information): the
        latest description of this stream from our side's endpoint, or
        C{None} when that branch refused it (port 0) while it deferred.
    @ivar theirs: the same for the other side's endpoints.
    @ivar crowded: a branch was forgotten (over the branch limit).
    @ivar mux: some description asked for C{a=rtcp-mux}.
    @ivar held_ours: every live branch of our side asks for hold.
    @ivar held_theirs: the same for the other side.
    @ivar remote: TCP: the latest description from our side.
    @ivar fresh: TCP: our side sent a description we have not answered.
    @ivar offered: TCP: we offered C{actpass} towards our side and wait
        for its answer.
    @ivar seen_version: TCP: the C{o=} (id, version) of the last
        description from our side.
    @ivar refused: TCP: the (ours, tag) branches that refused the stream
        while it deferred (one description for all branches): released
        if one of them answers.
    @ivar role: TCP: C{"active"} once we chose to connect, C{"passive"}
        once we chose to listen, C{None} before.
    """

    __slots__ = (
        "index",
        "state",
        "tcp",
        "ours",
        "theirs",
        "crowded",
        "mux",
        "held_ours",
        "held_theirs",
        "remote",
        "fresh",
        "offered",
        "seen_version",
        "refused",
        "role",
    )

    def __init__(self, index: int, tcp: bool, state: StreamState) -> None:
        self.index = index
        self.state = state
        self.tcp = tcp
        self.ours: dict[str | None, MediaDescription | None] = {}
        self.theirs: dict[str | None, MediaDescription | None] = {}
        self.crowded = False
        self.mux = False
        self.held_ours = False
        self.held_theirs = False
        self.remote: MediaDescription | None = None
        self.fresh = False
        self.offered = False
        self.seen_version: tuple[str, int] | None = None
        self.refused: set[tuple[bool, str | None]] = set()
        self.role: str | None = None

    @property
    def held(self) -> bool:
        """
        Either side asks for hold (the inactivity timeout does not apply).
        """
        return self.held_ours or self.held_theirs

    def expected(self) -> tuple[tuple[str | None, MediaDescription], ...]:
        """
        The live branches of our side, for the relay (L{Expect}).
        """
        return tuple([(tag, m) for tag, m in self.ours.items() if m is not None])

    def move(self, event: Input) -> None:
        """
        @raise AssertionError: the move is not in L{TRANSITIONS}.
        """
        following = TRANSITIONS.get((self.state, event))
        assert following is not None, (self.state, event)
        self.state = following

    def update_held(self) -> None:
        # A side is on hold when every branch's live description of the
        # stream from that side asks for hold.
        # (a loop, not all() over a generator: called several times per call)
        for ours, table in ((True, self.ours), (False, self.theirs)):
            held = False
            for m in table.values():
                if m is not None:
                    held = m.held
                    if not held:
                        break
            if ours:
                self.held_ours = held
            else:
                self.held_theirs = held


class PendingOffer:
    """
    A re-offer (an INVITE or UPDATE with SDP in an answered leg) waiting
    for its final response (RFC 3261 section 14, RFC 3264 section 8, RFC
    3311): until a 2xx, the streams it changes keep the session they had,
    and a failure leaves them as they were.

    @ivar ours: the offer came from our side (into the tunnel).
    @ivar key: the CSeq (number, method) of the request that carried it.
    @ivar tag: the offerer's tag.
    @ivar described: the new description of each UDP stream that existed
        before the offer (applied by a 2xx).
    @ivar removed: the streams the offer refuses (port 0) or bundles onto
        another, with the reason (released by a 2xx).
    @ivar created: the streams the offer added (released by a failure).
    """

    __slots__ = ("ours", "key", "tag", "described", "removed", "created")

    def __init__(self, ours: bool, key: tuple[int, str], tag: str | None) -> None:
        self.ours = ours
        self.key = key
        self.tag = tag
        self.described: dict[int, MediaDescription] = {}
        self.removed: dict[int, str] = {}
        self.created: set[int] = set()


def _never_accepted(stream: StreamPlan | None) -> bool:
    """
    Whether a UDP stream that a description removes (port 0) never had a
    live description from both sides: its offer is refused by that one
    (an answer with port 0), it never carried a session.
    """
    if stream is None or stream.tcp:
        return False
    return not any(m is not None for m in stream.ours.values()) or not any(
        m is not None for m in stream.theirs.values()
    )


def primary_indices(description: SessionDescription) -> list[int]:
    """
    For each m= line, the index of the stream whose transport it uses: its
    own, or the first earlier live m= line with the same address and port
    (BUNDLE, RFC 9143). Trickle placeholders (port 9, 0.0.0.0) are never
    merged.
    """
    seen: dict[tuple[str | None, int], int] = {}
    result = []
    for media in description.media:
        key = (media.address, media.port)
        if media.port == 0 or media.placeholder or media.is_tcp:
            result.append(media.index)
        elif key in seen:
            result.append(seen[key])
        else:
            seen[key] = media.index
            result.append(media.index)
    return result


def latest(table: dict[str | None, MediaDescription | None]) -> MediaDescription | None:
    """
    The latest live description in a branch table.
    """
    live = [m for m in table.values() if m is not None]
    return live[-1] if live else None


class LegMedia:
    """
    The offer/answer state of one call leg's media on one half.

    @ivar streams: the live streams by index (released ones are removed).
    @ivar answered: a 2xx to an INVITE crossed the tunnel.
    @ivar winner: the tag of the branch that answered first.
    @ivar winner_ours: that branch is on our side (its 2xx went into the
        tunnel).
    @ivar latest: the tag of the latest description from our side (key
        C{True}) and from the other side (key C{False}).
    @ivar pending: the re-offer from our side (key C{True}) and from the
        other side (key C{False}) that waits for its final response (both
        at once in a glare).
    """

    def __init__(
        self,
        max_streams: int = DEFAULT_MAX_STREAMS_PER_DIALOG,
        max_branches: int = DEFAULT_MAX_BRANCHES_PER_STREAM,
    ) -> None:
        self.max_streams = max_streams
        self.max_branches = max_branches
        self.streams: dict[int, StreamPlan] = {}
        self.answered = False
        self.winner: str | None = None
        self.winner_ours = False
        self.latest: dict[bool, str | None] = {}
        self.pending: dict[bool, PendingOffer] = {}
        # ended() was called: no input may follow
        self.over = False

    # queries

    def loser(self, tag: str | None, ours: bool) -> bool:
        """
        @return: whether C{tag} names a branch on the winner's side that
            lost: the leg was answered by another branch.
        """
        return (
            self.answered
            and ours == self.winner_ours
            and tag is not None
            and self.winner is not None
            and tag != self.winner
        )

    def defers(self, stream: StreamPlan | None, tag: str | None, ours: bool) -> bool:
        """
        @return: whether a refusal (port 0) of C{stream} by branch C{tag}
            waits for the answer instead of releasing the stream: the leg
            is early (another branch may still want the stream) or C{tag}
            lost. Only tagged branches defer.
        """
        if tag is None or stream is None:
            return False
        return not self.answered or self.loser(tag, ours)

    # inputs

    def described(
        self,
        ours: bool,
        tag: str | None,
        description: SessionDescription,
        tcp_connected: Collection[int] = (),
        offer: tuple[int, str] | None = None,
    ) -> Outcome:
        """
        Side C{ours} described the session on branch C{tag}.

        Once the leg is answered, an C{offer} is held pending until
        L{settled}: the streams it changes keep their description (the
        relay sends to and accepts from the old address), the streams it
        refuses stay; only the streams it adds are made at once (their
        channels and relay ports must exist before the SDP arrives).

        @param ours: the description goes into the tunnel (from our
            side's endpoint); C{False}: it comes out, towards our side.
        @param tcp_connected: the indices of the TCP streams whose
            connection to our side was ever made (a new description with
            C{a=connection:new} starts them over).
        @param offer: the description is an offer in a request (INVITE or
            UPDATE) whose final response settles it: the request's CSeq
            (number, method); C{None} for any other description (an
            answer, an offer in a response, an initial offer).
        @return: the actions; with C{ours} false, also one rewrite entry
            per C{m=} line.
        """
        assert not self.over
        pending = None
        if offer is not None and self.answered and not self.loser(tag, ours):
            actions: list[Action] = []
            # a new offer from the same side means the previous one is
            # over (RFC 3264 section 4: one offer at a time); its final
            # response never crossed here
            self._drop_pending(ours, actions)
            pending = self.pending[ours] = PendingOffer(ours, offer, tag)
        else:
            actions = []
        if ours:
            return Outcome(actions + self._ours(tag, description, tcp_connected, pending), [])
        outcome = self._theirs(tag, description, pending)
        return Outcome(actions + outcome.actions, outcome.rewrite)

    def settled(self, ours: bool, key: tuple[int, str], accepted: bool) -> Outcome:
        """
        The final response to the request C{key} from side C{ours} crossed
        the tunnel. If that request carried a pending re-offer, a 2xx
        (C{accepted}) applies it: the changed streams take their new
        descriptions, the refused ones are released; any other final
        response (488, 491, 408, 487 after a CANCEL, ...) drops it: the
        streams it added are released, everything else stays as it was
        before the offer (RFC 3261 section 14.1). Other requests change
        nothing.

        @param ours: the request came from our side (the response goes
            out of the tunnel towards it).
        @param key: the request's CSeq (number, method).
        """
        actions: list[Action] = []
        pending = self.pending.get(ours)
        if self.over or pending is None or pending.key != key:
            return Outcome(actions, [])
        if not accepted:
            self._drop_pending(ours, actions)
            return Outcome(actions, [])
        del self.pending[ours]
        for index, media in pending.described.items():
            stream = self.streams.get(index)
            if stream is None or stream.tcp:
                continue
            self._remember(stream, stream.ours if ours else stream.theirs, pending.tag, media, actions)
            stream.mux = stream.mux or media.rtcp_mux
            if ours:
                actions.append(Expect(index, stream.expected()))
        for index, reason in pending.removed.items():
            self._release(index, reason, actions)
        return Outcome(actions, [])

    def answered_by(self, tag: str | None, ours: bool) -> Outcome:
        """
        A 2xx to an INVITE of the leg crossed the tunnel: the first one
        names the winning branch. Every UDP stream keeps only the
        winner's description; a stream the winner did not want (port 0,
        or no description at all from it) is released. Later answers
        change nothing.

        @param tag: the answering endpoint's tag (the To-tag of the 2xx).
        @param ours: the 2xx came from our side into the tunnel.
        """
        assert not self.over
        actions: list[Action] = []
        if self.answered:
            if self.loser(tag, ours):
                actions.append(AnsweredToo(tag, self.winner))
            return Outcome(actions, [])
        self.answered = True
        self.winner = tag
        self.winner_ours = ours
        keep = tag
        if (
            tag is not None
            and self.streams
            and not any(tag in (s.ours if ours else s.theirs) for s in self.streams.values())
        ):
            # The answer comes from a tag that never described any stream
            # (a B2BUA that changed its tag): keep the latest branch's
            # media, as without branch information.
            keep = self.latest.get(ours)
            actions.append(AnsweredWithoutSdp(tag, keep))
        for index, stream in list(self.streams.items()):
            if stream.tcp:
                if (ours, keep) in stream.refused:
                    self._release(index, "not in the answer", actions, Input.ANSWER_DROPS, refused=True)
                else:
                    stream.move(Input.ANSWER_KEEPS)
                continue
            wanted = True
            for table, winners in ((stream.ours, ours), (stream.theirs, not ours)):
                if not table:
                    continue
                if winners and keep is not None:
                    for other in [t for t in table if t is not None and t != keep]:
                        del table[other]
                for media in table.values():
                    if media is not None:
                        break
                else:
                    wanted = False
            if wanted:
                stream.move(Input.ANSWER_KEEPS)
                stream.update_held()
                actions.append(Expect(index, stream.expected()))
            else:
                self._release(index, "not in the answer", actions, Input.ANSWER_DROPS, refused=True)
        actions.append(Answered(tag, ours))
        return Outcome(actions, [])

    def ended(self, reason: str = "dialog ended") -> Outcome:
        """
        The leg is over: every stream is released.
        """
        actions: list[Action] = []
        for index in list(self.streams):
            self._release(index, reason, actions)
        self.pending.clear()
        self.over = True
        return Outcome(actions, [])

    def release(self, index: int) -> None:
        """
        The executor gave stream C{index} up (or it is already gone).
        """
        stream = self.streams.pop(index, None)
        if stream is not None:
            stream.move(Input.RELEASED)

    # internals

    def _drop_pending(self, ours: bool, actions: list[Action]) -> None:
        """
        Forget the pending re-offer from side C{ours}: release the streams
        it added; the others never changed.
        """
        pending = self.pending.pop(ours, None)
        if pending is not None:
            for index in sorted(pending.created):
                self._release(index, "offer refused", actions, refused=True)

    def _ours(
        self,
        tag: str | None,
        description: SessionDescription,
        tcp_connected: Collection[int],
        pending: PendingOffer | None = None,
    ) -> list[Action]:
        actions: list[Action] = []
        if self.loser(tag, True):
            actions.append(IgnoredBranch(tag))
            return actions
        self.latest[True] = tag
        primaries = primary_indices(description)
        version = None if description.origin is None else (
            description.origin[1],
            description.origin[2],
        )
        for media in description.media:
            index = media.index
            if media.port == 0 or primaries[index] != index:
                stream = self.streams.get(index)
                if pending is not None and stream is not None:
                    # released when the offer is accepted
                    pending.removed[index] = "stream removed"
                elif self.defers(stream, tag, True):
                    assert stream is not None and tag is not None
                    self._branch_refused(stream, tag, True, actions)
                else:
                    self._release(index, "stream removed", actions, refused=_never_accepted(stream))
                continue
            if index >= self.max_streams:
                continue
            if media.is_tcp:
                if tag is not None and index in self.streams:
                    self.streams[index].refused.discard((True, tag))
                self._tcp_ours(media, version, tcp_connected, actions)
                continue
            before = self.streams.get(index)
            stream = self._stream(index, False, actions)
            if pending is not None:
                if stream is before:
                    # the relay keeps the old address until the answer
                    pending.described[index] = media
                    continue
                pending.created.add(index)
            self._remember(stream, stream.ours, tag, media, actions)
            stream.mux = stream.mux or media.rtcp_mux
            actions.append(Expect(index, stream.expected()))
            actions.append(OpenChannel(index, False, media.rtcp_mux))
        return actions

    def _theirs(
        self, tag: str | None, description: SessionDescription, pending: PendingOffer | None = None
    ) -> Outcome:
        actions: list[Action] = []
        rewrite: list[Entry] = []
        primaries = primary_indices(description)
        loser = self.loser(tag, False)
        if not loser:
            self.latest[False] = tag
        for media in description.media:
            index = media.index
            stream = self.streams.get(index)
            if media.port == 0 or primaries[index] != index:
                if pending is not None and stream is not None:
                    # released when the offer is accepted
                    pending.removed[index] = "stream removed" if media.port == 0 else "stream bundled"
                elif self.defers(stream, tag, False):
                    assert stream is not None and tag is not None
                    self._branch_refused(stream, tag, False, actions)
                elif media.port == 0:
                    self._release(index, "stream removed", actions, refused=_never_accepted(stream))
                else:
                    self._release(index, "stream bundled", actions)
                rewrite.append(Keep() if media.port == 0 else SameAs(primaries[index]))
                continue
            if loser and (stream is None or stream.tcp):
                # a branch that lost adds nothing
                rewrite.append(Refuse())
                continue
            if index >= self.max_streams:
                self._release(index, "stream not relayed", actions)
                actions.append(Rejected(index))
                rewrite.append(Refuse())
                continue
            if media.is_tcp:
                if tag is not None and stream is not None:
                    stream.refused.discard((False, tag))
                rewrite.append(self._tcp_theirs(index, actions))
                continue
            before = stream
            stream = self._stream(index, False, actions)
            if pending is not None and stream is before:
                # the other side's description changes when the offer is
                # accepted (our relay ports stay as they are)
                pending.described[index] = media
            elif not loser:
                if pending is not None:
                    pending.created.add(index)
                self._remember(stream, stream.theirs, tag, media, actions)
            stream.mux = stream.mux or media.rtcp_mux
            actions.append(Bind(index, not media.rtcp_mux_only))
            actions.append(OpenChannel(index, False, media.rtcp_mux))
            rewrite.append(Relay(index))
        return Outcome(actions, rewrite)

    def _tcp_ours(
        self,
        media: MediaDescription,
        version: tuple[str, int] | None,
        tcp_connected: Collection[int],
        actions: list[Action],
    ) -> None:
        """
        Our side's endpoint described a TCP stream: remember it, settle
        our role if this answers our C{actpass} offer. A new description
        (new o= version, not the answer to our offer) with
        C{a=connection:new} for a stream whose connection was made starts
        over with a new connection and channel.
        """
        index = media.index
        stream = self.streams.get(index)
        if (
            stream is not None
            and stream.tcp
            and index in tcp_connected
            and not stream.offered
            and stream.seen_version is not None
            and media.connection_mode == "new"
            and version != stream.seen_version
        ):
            self._release(index, "new TCP connection", actions)
        stream = self._stream(index, True, actions)
        repeat = version is not None and version == stream.seen_version
        stream.seen_version = version
        stream.remote = media
        stream.move(Input.DESCRIBED)
        actions.append(TcpExpect(index, media.address))
        if stream.offered:
            # our side answers the actpass we offered (RFC 4145 section
            # 4.1; no a=setup in an answer means passive)
            stream.offered = False
            if media.setup in (None, "passive"):
                stream.role = "active"
                actions.append(TcpConnect(index, media))
        elif not repeat:
            stream.fresh = True
        actions.append(OpenChannel(index, True, False))

    def _tcp_theirs(self, index: int, actions: list[Action]) -> Entry:
        """
        A TCP stream described towards our side: choose (or keep) our
        role towards our side's endpoint.
        """
        stream = self._stream(index, True, actions)
        stream.move(Input.DESCRIBED)
        # the channel first, so that giving the stream up closes it too
        actions.append(OpenChannel(index, True, False))
        if stream.role is None:
            remote = stream.remote if stream.fresh else None
            if remote is not None and remote.setup == "passive":
                # our side listens: we connect to it
                stream.role = "active"
                actions.append(TcpConnect(index, remote))
            else:
                # our side connects (active, or no a=setup: the RFC 4145
                # default for an offer), may choose (actpass), or waits
                # (holdconn): we listen; with no description from our
                # side this is an offer and we offer actpass
                stream.role = "passive"
                actions.append(TcpListen(index))
                stream.offered = remote is None
        stream.fresh = False
        if stream.role == "active":
            return TcpRelay(index, "active")
        return TcpRelay(index, "actpass" if stream.offered else "passive")

    def _stream(self, index: int, tcp: bool, actions: list[Action]) -> StreamPlan:
        """
        Stream C{index} with transport C{tcp}, made if new (one of the
        other transport in its place is released).
        """
        stream = self.streams.get(index)
        if stream is not None and stream.tcp != tcp:
            self._release(index, "transport changed", actions)
            stream = None
        if stream is None:
            state = StreamState.ANSWERED if self.answered else StreamState.EARLY
            stream = self.streams[index] = StreamPlan(index, tcp, state)
            actions.append(Create(index, tcp))
        return stream

    def _branch_refused(
        self, stream: StreamPlan, tag: str, ours: bool, actions: list[Action]
    ) -> None:
        """
        Branch C{tag} refused C{stream} (port 0, or bundled it) while the
        refusal defers. A UDP stream drops that branch's description
        (from our side: the relay stops sending to it); a TCP stream has
        one description for all branches and remembers the refusal for
        the answer.
        """
        stream.move(Input.REFUSED_DEFERRED)
        if stream.tcp:
            stream.refused.add((ours, tag))
        elif ours:
            self._remember(stream, stream.ours, tag, None, actions)
            actions.append(Expect(stream.index, stream.expected()))
        else:
            self._remember(stream, stream.theirs, tag, None, actions)

    def _remember(
        self,
        stream: StreamPlan,
        table: dict[str | None, MediaDescription | None],
        tag: str | None,
        media: MediaDescription | None,
        actions: list[Action],
    ) -> None:
        """
        Keep the latest description of C{stream} from branch C{tag} (or
        its refusal, C{None}) in C{table}, forgetting the oldest branch
        beyond C{max_branches}; update the hold state.
        """
        if media is not None:
            stream.move(Input.DESCRIBED)
        if tag not in table and len(table) >= self.max_branches:
            del table[next(iter(table))]
            if not stream.crowded:
                stream.crowded = True
                actions.append(Crowded(stream.index, self.max_branches))
        table[tag] = media
        stream.update_held()

    def _release(
        self,
        index: int,
        reason: str,
        actions: list[Action],
        event: Input = Input.RELEASED,
        refused: bool = False,
    ) -> None:
        stream = self.streams.pop(index, None)
        if stream is None:
            return
        stream.move(event)
        actions.append(Release(index, reason, refused))
