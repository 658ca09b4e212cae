# -*- test-case-name: tests.test_sip_proxy -*-
"""
The established dialogs both SIP proxy cores track, to tell when a call
leg's media ends: a BYE ends it only when it ends the leg's last dialog (a
forked INVITE answered by two branches has two; the BYE to the loser must
not take the winner's media), a CANCEL or a final non-2xx answer only
before any dialog was established.

One L{DialogTable} serves both halves.  Its entries are grouped by a
I{scope}: the contact point uses the tunnel session (so a session's
dialogs go with it), the agent its application flow.

A dialog whose 2xx no ACK confirms within L{ACK_WAIT} ends as if a BYE
had ended it (L{DialogTable.unacknowledged}): its UAS has given up on it,
and a caller that vanished (an overload, a crashed phone) must not hold
relay ports until the media timeout.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterator

from dataclasses import dataclass, replace

__all__ = [
    "ACK_WAIT",
    "BYE_WAIT",
    "UNACKNOWLEDGED",
    "Dialog",
    "DialogTable",
    "MovedLegs",
    "Parties",
    "Party",
    "RemoteTarget",
]

#: Seconds a 2xx to an INVITE waits for its ACK: 64 x T1, after which a
#: UAS gives up retransmitting it and ends the dialog (RFC 3261 13.3.1.4).
ACK_WAIT = 64 * 0.5

#: Seconds a dialog outlives a BYE that nothing answers: 64 x T1, when the
#: BYE's client transaction times out, and a UAC takes the dialog as ended
#: without a response as with one (RFC 3261 15.1.1).
BYE_WAIT = 64 * 0.5

#: The counter of dialogs that ended so (both cores' C{events}).
UNACKNOWLEDGED = "answer never acknowledged"

_Call = tuple[str, frozenset[str | None]]


@dataclass(frozen=True, slots=True)
class RemoteTarget:
    """
    The remote target of a party on the network side, and where the
    message that set it came from.

    @ivar uri: the URI of the message's C{Contact} (RFC 3261 12.1).
    @ivar source: the IP address the message came from (the address a
        core sends to only when the URI names it).
    """

    uri: str
    source: str


@dataclass(frozen=True, slots=True)
class Party:
    """
    One party of an established dialog, as the messages passing through
    this half show it: what a BYE to it, or in its name, needs (RFC 3261
    12.1, 12.2.1.1).

    @ivar header: its C{From} (the caller) or C{To} (the callee) value as
        it sent it, with its tag: the C{To} of a BYE to it, the C{From} of
        one in its name.
    @ivar tag: the tag of C{header}.
    @ivar target: its remote target (the URI of its latest C{Contact}:
        its INVITE or 2xx, or a target refresh), or C{None} when it gave
        none.
    @ivar cseq: the highest CSeq number it used in the dialog, or C{None}
        when it sent no request in it (the callee, until it does).
    """

    header: str
    tag: str | None
    target: str | None
    cseq: int | None = None

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, header: str, tag: str | None, target: str | None, cseq: int | None = None) -> None:
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "cseq", cseq)


@dataclass(frozen=True, slots=True)
class Parties:
    """
    The two parties of an established dialog and its route, as this half
    saw them pass (L{DialogTable.invited}, L{DialogTable.answered}).

    @ivar caller: the party that sent the INVITE (its C{From}).
    @ivar callee: the party that answered it (the 2xx's C{To}).
    @ivar record_route: the 2xx's C{Record-Route} values, top first (the
        entry nearest the callee first), this half's own among them;
        L{spwm.sip.byes.route_toward} takes each party's route set out.
    @ivar caller_inside: whether the caller is on this half's own side
        (the agent: a phone; the contact point: the tunnel), not on the
        far side (the agent: the tunnel; the contact point: the network).
    """

    caller: Party
    callee: Party
    record_route: tuple[str, ...]
    caller_inside: bool

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(
        self,
        caller: Party,
        callee: Party,
        record_route: tuple[str, ...],
        caller_inside: bool,
    ) -> None:
        object.__setattr__(self, "caller", caller)
        object.__setattr__(self, "callee", callee)
        object.__setattr__(self, "record_route", record_route)
        object.__setattr__(self, "caller_inside", caller_inside)

    def sender(self, from_tag: str | None) -> str | None:
        """
        @return: C{"caller"} or C{"callee"}, the party whose tag is
            C{from_tag} (the sender of a request), or C{None}.
        """
        if from_tag == self.caller.tag:
            return "caller"
        if from_tag == self.callee.tag:
            return "callee"
        return None


@dataclass(frozen=True, slots=True)
class Dialog:
    """
    An INVITE dialog established through a tunnel (one per to-tag when forked).

    @ivar target: the remote target of the party on the network side (RFC
        3261 12.2.1.1: the URI of its C{Contact}, from its INVITE, its 2xx
        or its target refreshes), when the core records it (the contact
        point with the embedded registrar), else C{None}.
    @ivar parties: both parties, when the core records them (what a BYE of
        its own needs, L{spwm.sip.byes}), else C{None}.
    @ivar ending: a BYE of the dialog passed (L{DialogTable.ending}).
    """

    call_id: str
    from_tag: str | None
    to_tag: str | None
    flow_id: int
    expires: float
    target: RemoteTarget | None = None
    parties: Parties | None = None
    ending: bool = False

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(
        self,
        call_id: str,
        from_tag: str | None,
        to_tag: str | None,
        flow_id: int,
        expires: float,
        target: RemoteTarget | None = None,
        parties: Parties | None = None,
        ending: bool = False,
    ) -> None:
        object.__setattr__(self, "call_id", call_id)
        object.__setattr__(self, "from_tag", from_tag)
        object.__setattr__(self, "to_tag", to_tag)
        object.__setattr__(self, "flow_id", flow_id)
        object.__setattr__(self, "expires", expires)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "parties", parties)
        object.__setattr__(self, "ending", ending)

    def lasting(self, expires: float, ending: bool) -> Dialog:
        """
        @return: this dialog until C{expires}, and C{ending} or not: what
            C{dataclasses.replace} gives, made directly (two requests of
            every call change it; C{replace} reads the class's fields each
            time).
        """
        return Dialog(
            self.call_id, self.from_tag, self.to_tag, self.flow_id, expires, self.target, self.parties, ending
        )


def _same(dialog: Dialog, tags: set[str | None]) -> bool:
    return {dialog.from_tag, dialog.to_tag} == tags


class DialogTable:
    """
    Established dialogs by scope and Call-ID, with expiry, optionally
    bounded.

    A dialog is named by its tags as a set (From and To tags, either way
    round, so both directions of the dialog name it alike).

    @ivar lifetime: seconds a dialog lives after it was answered (or
        L{touch}ed) without being ended.
    @ivar limit: at most this many calls (scope and Call-ID) are kept; past
        it the call answered longest ago goes.  C{None}: no limit.
    @ivar scope_limit: at most this many calls are kept in one scope; past
        it the scope's call first answered longest ago goes (a scope that
        piles up dialogs whose BYE never came loses its own oldest, not
        another scope's).  C{None}: no limit.
    @ivar dropped: calls dropped so far by either bound.
    @ivar offer_limit: at most this many remote targets of INVITEs not yet
        answered are kept (L{offered}); past it the oldest goes.
    """

    def __init__(
        self,
        lifetime: float,
        limit: int | None = None,
        scope_limit: int | None = None,
        offer_limit: int = 4096,
    ) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self.scope_limit = scope_limit
        self.offer_limit = offer_limit
        self.dropped = 0
        # (scope, call id) -> the From-tag and remote target of the new
        # INVITE that came from the network side (L{offered}), oldest first
        self._offered: dict[tuple[Hashable, str], tuple[str | None, RemoteTarget]] = {}
        # (scope, call id) -> the caller of the new INVITE that passed
        # (L{invited}) and whether it is inside, oldest first
        self._invited: dict[tuple[Hashable, str], tuple[Party, bool]] = {}
        # (scope, call id) -> its dialogs; ordered by last answer (the
        # bound's eviction order)
        self._calls: dict[tuple[Hashable, str], list[Dialog]] = {}
        # scope -> its call ids, in the order they were first answered
        self._scopes: dict[Hashable, dict[str, None]] = {}
        # call id -> the scopes that hold a dialog of it (L{flow_of})
        self._call_scopes: dict[str, set[Hashable]] = {}
        self._count = 0
        # (call id, tags) of dialogs whose first 2xx has not been ACKed ->
        # when it was answered and the scopes that hold it; oldest first.
        # Not by scope: the ACK may come on another flow than the 2xx went
        # (a phone that answers over TCP), and two phones behind one agent
        # calling each other are two legs of one dialog that one ACK confirms.
        self._unacked: dict[_Call, tuple[float, set[Hashable]]] = {}

    def __len__(self) -> int:
        """
        @return: the number of dialogs.
        """
        return self._count

    def __iter__(self) -> Iterator[Dialog]:
        for dialogs in self._calls.values():
            yield from dialogs

    def answered(
        self,
        scope: Hashable,
        call_id: str,
        flow_id: int,
        from_tag: str | None,
        to_tag: str | None,
        now: float,
        callee: Party | None = None,
        record_route: tuple[str, ...] = (),
    ) -> bool:
        """
        A 2xx answered an INVITE: the dialog of these tags is established
        (again) on C{flow_id} and lives for L{lifetime} from C{now}.  Its
        remote target on the network side stays what it was, or is the
        one L{offered} for the INVITE of this call and From-tag.

        @param callee: the answering party (the 2xx's C{To} and
            C{Contact}), with C{record_route}, the 2xx's C{Record-Route}
            values: with the caller L{invited} for this call and From-tag,
            the dialog's L{Parties} (a first answer's stay).
        @return: whether the dialog of these tags had its parties already
            (a re-INVITE's 2xx or a retransmission: the answering party's
            target may be new, L{refreshed}).
        """
        key = (scope, call_id)
        tags = {from_tag, to_tag}
        old = self._calls.pop(key, [])
        target = next((d.target for d in old if _same(d, tags)), None)
        if target is None:
            offer = self._offered.get(key)
            if offer is not None and offer[0] == from_tag:
                target = offer[1]
        parties = next((d.parties for d in old if _same(d, tags) and d.parties is not None), None)
        again = parties is not None
        if parties is None and callee is not None:
            invite = self._invited.get(key)
            if invite is not None and invite[0].tag == from_tag:
                parties = Parties(invite[0], callee, record_route, invite[1])
        # one per tags and flow: two phones behind one agent calling each
        # other are two legs of one dialog in one session
        dialogs = [d for d in old if not (_same(d, tags) and d.flow_id == flow_id)]
        if len(dialogs) == len(old):
            # new: its ACK is awaited (a 2xx retransmission or a
            # re-INVITE's 2xx leaves the first answer's state)
            self._unacked.setdefault((call_id, frozenset(tags)), (now, set()))[1].add(scope)
        dialogs.append(Dialog(call_id, from_tag, to_tag, flow_id, now + self.lifetime, target, parties))
        self._count += len(dialogs) - len(old)
        self._calls[key] = dialogs
        calls = self._scopes.setdefault(scope, {})
        calls[call_id] = None
        self._call_scopes.setdefault(call_id, set()).add(scope)
        if self.scope_limit is not None and len(calls) > self.scope_limit:
            self.dropped += 1
            self._drop((scope, next(iter(calls))))
        if self.limit is not None and len(self._calls) > self.limit:
            self.dropped += 1
            self._drop(next(iter(self._calls)))
        return again

    def remove(
        self, scope: Hashable, call_id: str, from_tag: str | None, to_tag: str | None
    ) -> bool:
        """
        The dialog of these tags ended.

        @return: whether no dialog of the call is left in C{scope}.
        """
        key = (scope, call_id)
        dialogs = self._calls.get(key)
        if dialogs is None:
            return True
        tags = {from_tag, to_tag}
        left = [d for d in dialogs if not _same(d, tags)]
        if left:
            self._count -= len(dialogs) - len(left)
            self._calls[key] = left
            self._forget_unacked(scope, call_id, tags)
            return False
        self._drop(key)
        return True

    def acked(self, scope: Hashable, call_id: str, from_tag: str | None, to_tag: str | None) -> None:
        """
        An ACK of the dialog of these tags passed: its answer is confirmed.
        """
        if self._unacked:
            self._unacked.pop((call_id, frozenset((from_tag, to_tag))), None)

    @property
    def next_ack_deadline(self) -> float | None:
        """
        When the oldest answer still without its ACK has waited
        L{ACK_WAIT}, or C{None}.
        """
        for answered, _ in self._unacked.values():
            return answered + ACK_WAIT
        return None

    def unacknowledged(self, now: float, limit: int = 64) -> list[tuple[Hashable, Dialog]]:
        """
        Take out the dialogs whose answer has waited L{ACK_WAIT} for an ACK
        by C{now}, at most C{limit} of them (thousands fall due together
        after an overload: the rest wait for the next call, and
        L{next_ack_deadline} is already due); they stay established until
        L{remove}d.

        @return: those dialogs, each with its scope, oldest first.
        """
        out: list[tuple[Hashable, Dialog]] = []
        unacked = self._unacked
        while unacked and len(out) < limit:
            key, (answered, scopes) = next(iter(unacked.items()))
            if answered + ACK_WAIT > now:
                break
            del unacked[key]
            call_id, tags = key
            for scope in scopes:
                for d in self._calls.get((scope, call_id), ()):
                    if _same(d, set(tags)):
                        out.append((scope, d))
        return out

    def has(self, scope: Hashable, call_id: str, flow_id: int | None = None) -> bool:
        """
        @return: whether a dialog of the call (on C{flow_id}, if given) is
            established in C{scope}.
        """
        dialogs = self._calls.get((scope, call_id))
        if not dialogs:
            return False
        return flow_id is None or any(d.flow_id == flow_id for d in dialogs)

    def flow_of(
        self,
        call_id: str,
        from_tag: str | None,
        to_tag: str | None,
        flow_id: int,
        scope: Hashable | None = None,
    ) -> int:
        """
        The flow of the established dialog of these tags that a message on
        C{flow_id} belongs to: a phone may send inside its dialog over
        another transport than it set the dialog up with (a re-INVITE over
        1,300 bytes goes by TCP, RFC 3261 18.1.1, on a new connection: a
        new flow), and the dialog's media and its end are the first
        flow's.

        @param scope: look in this scope only (the contact point's
            session); C{None}: in every scope (the agent's flows).
        @return: C{flow_id} when a dialog of these tags is on it, or none
            is anywhere; else the one other flow that has one; C{flow_id}
            again when several do (two phones behind one agent calling each
            other: not to be guessed).
        """
        tags = {from_tag, to_tag}
        found: set[int] = set()
        for s in (scope,) if scope is not None else self._call_scopes.get(call_id, ()):
            for d in self._calls.get((s, call_id), ()):
                if _same(d, tags):
                    if d.flow_id == flow_id:
                        return flow_id
                    found.add(d.flow_id)
        return found.pop() if len(found) == 1 else flow_id

    def others(
        self,
        scope: Hashable,
        call_id: str,
        flow_id: int,
        from_tag: str | None,
        to_tag: str | None,
    ) -> bool:
        """
        @return: whether the call has an established dialog on C{flow_id}
            other than the one of these tags.
        """
        tags = {from_tag, to_tag}
        return any(
            d.flow_id == flow_id and not _same(d, tags)
            for d in self._calls.get((scope, call_id), ())
        )

    def touch(
        self, scope: Hashable, call_id: str, now: float, flow_id: int | None = None
    ) -> None:
        """
        A request inside the call: its dialogs (on C{flow_id}, if given)
        live for L{lifetime} from C{now}.
        """
        key = (scope, call_id)
        dialogs = self._calls.get(key)
        if dialogs:
            expires = now + self.lifetime
            self._calls[key] = [
                d.lasting(expires, d.ending) if flow_id is None or d.flow_id == flow_id else d
                for d in dialogs
            ]

    def offered(self, scope: Hashable, call_id: str, from_tag: str | None, target: RemoteTarget) -> None:
        """
        A new INVITE from the network side went into C{scope}: the dialogs
        its 2xx establishes (L{answered}) have C{target} as their remote
        target on that side.
        """
        offered = self._offered
        key = (scope, call_id)
        offered.pop(key, None)
        offered[key] = (from_tag, target)
        if len(offered) > self.offer_limit:
            del offered[next(iter(offered))]

    def invited(self, scope: Hashable, call_id: str, caller: Party, inside: bool) -> None:
        """
        A new INVITE (no To-tag) passed in C{scope}, from C{caller} (on
        this half's own side when C{inside}): the dialogs its 2xx
        establishes (L{answered}) have it as their caller.  At most
        C{offer_limit} INVITEs not answered yet are remembered (the oldest
        goes).
        """
        invited = self._invited
        key = (scope, call_id)
        invited.pop(key, None)
        invited[key] = (caller, inside)
        if len(invited) > self.offer_limit:
            del invited[next(iter(invited))]

    def passed(
        self,
        scope: Hashable,
        call_id: str,
        from_tag: str | None,
        to_tag: str | None,
        cseq: int,
        target: str | None = None,
    ) -> None:
        """
        A request inside the established dialog of these tags passed: its
        sender (the party of C{from_tag}) has used CSeq C{cseq}, and
        C{target}, when given, is its new remote target (a target refresh:
        re-INVITE or UPDATE with a C{Contact}).
        """
        self._update(scope, call_id, from_tag, to_tag, from_tag, cseq, target)

    def refreshed(
        self, scope: Hashable, call_id: str, from_tag: str | None, to_tag: str | None, target: str
    ) -> None:
        """
        A 2xx to a target refresh inside the dialog of these tags passed:
        its sender (the party of C{to_tag}) has C{target} as its remote
        target now.
        """
        self._update(scope, call_id, from_tag, to_tag, to_tag, None, target)

    def _update(
        self,
        scope: Hashable,
        call_id: str,
        from_tag: str | None,
        to_tag: str | None,
        tag: str | None,
        cseq: int | None,
        target: str | None,
    ) -> None:
        key = (scope, call_id)
        dialogs = self._calls.get(key)
        if not dialogs:
            return
        tags = {from_tag, to_tag}
        changed = False
        out: list[Dialog] = []
        for d in dialogs:
            parties = d.parties
            which = None if parties is None or not _same(d, tags) else parties.sender(tag)
            if parties is not None and which is not None:
                party: Party = getattr(parties, which)
                new = party
                if cseq is not None and (party.cseq is None or cseq > party.cseq):
                    new = replace(new, cseq=cseq)
                if target is not None and target != party.target:
                    new = replace(new, target=target)
                if new is not party:
                    if which == "caller":
                        d = replace(d, parties=replace(parties, caller=new))
                    else:
                        d = replace(d, parties=replace(parties, callee=new))
                    changed = True
            out.append(d)
        if changed:
            self._calls[key] = out

    def take(self, scope: Hashable, call_id: str, flow_id: int | None = None) -> list[Dialog]:
        """
        Take the call's dialogs in C{scope} (on C{flow_id}, if given: one
        leg of a call between two phones behind one agent) out of the
        table (its media is lost, and this half ends them itself).

        @return: those of them no BYE is ending already.
        """
        key = (scope, call_id)
        dialogs = self._calls.get(key)
        if not dialogs:
            return []
        taken = [d for d in dialogs if flow_id is None or d.flow_id == flow_id]
        left = [d for d in dialogs if not (flow_id is None or d.flow_id == flow_id)]
        if left:
            self._count -= len(taken)
            self._calls[key] = left
            for d in taken:
                self._forget_unacked(scope, call_id, {d.from_tag, d.to_tag})
        else:
            self._drop(key)
        return [d for d in taken if not d.ending]

    def retarget(
        self, scope: Hashable, call_id: str, from_tag: str | None, to_tag: str | None, target: RemoteTarget
    ) -> None:
        """
        A target refresh (a re-INVITE or UPDATE from the network side, or
        the network side's 2xx to one) changed the remote target of the
        established dialog of these tags, if there is one, to C{target}.
        """
        key = (scope, call_id)
        dialogs = self._calls.get(key)
        if dialogs:
            tags = {from_tag, to_tag}
            self._calls[key] = [replace(d, target=target) if _same(d, tags) else d for d in dialogs]

    def target(
        self, scope: Hashable, call_id: str, from_tag: str | None, to_tag: str | None
    ) -> RemoteTarget | None:
        """
        @return: the remote target on the network side of the established
            dialog of these tags in C{scope}, or C{None}.
        """
        tags = {from_tag, to_tag}
        for d in self._calls.get((scope, call_id), ()):
            if _same(d, tags) and d.target is not None:
                return d.target
        return None

    def ending(
        self, scope: Hashable, call_id: str, from_tag: str | None, to_tag: str | None, now: float
    ) -> None:
        """
        A BYE of the dialog of these tags passed: the dialog lives at most
        L{BYE_WAIT} more, ended by its answer before then (L{remove}), or
        by L{expire} after, when nothing answered it.
        """
        key = (scope, call_id)
        dialogs = self._calls.get(key)
        if not dialogs:
            return
        tags = {from_tag, to_tag}
        until = now + BYE_WAIT
        self._calls[key] = [
            d.lasting(min(d.expires, until), True) if _same(d, tags) else d for d in dialogs
        ]

    def expire(self, now: float) -> None:
        """
        Forget the dialogs whose lifetime ended.
        """
        for key, dialogs in list(self._calls.items()):
            left = [d for d in dialogs if d.expires > now]
            if not left:
                self._drop(key)
            elif len(left) != len(dialogs):
                self._count -= len(dialogs) - len(left)
                self._calls[key] = left
                for d in dialogs:
                    if d.expires <= now:
                        self._forget_unacked(key[0], key[1], {d.from_tag, d.to_tag})

    def call(self, scope: Hashable, call_id: str) -> list[Dialog]:
        """
        @return: the dialogs of the call in C{scope} (constant time).
        """
        return list(self._calls.get((scope, call_id), ()))

    def of(self, scope: Hashable) -> list[Dialog]:
        """
        @return: the dialogs of C{scope}.
        """
        out: list[Dialog] = []
        for call_id in self._scopes.get(scope, ()):
            out.extend(self._calls[scope, call_id])
        return out

    def forget(self, scope: Hashable) -> None:
        """
        Forget every dialog of C{scope}.
        """
        for call_id in list(self._scopes.get(scope, ())):
            self._drop((scope, call_id))

    def _drop(self, key: tuple[Hashable, str]) -> None:
        dialogs = self._calls.pop(key)
        self._offered.pop(key, None)
        self._invited.pop(key, None)
        self._count -= len(dialogs)
        scope, call_id = key
        if self._unacked:
            for d in dialogs:
                self._forget_unacked(scope, call_id, {d.from_tag, d.to_tag})
        calls = self._scopes[scope]
        del calls[call_id]
        if not calls:
            del self._scopes[scope]
        scopes = self._call_scopes[call_id]
        scopes.discard(scope)
        if not scopes:
            del self._call_scopes[call_id]

    def _forget_unacked(self, scope: Hashable, call_id: str, tags: set[str | None]) -> None:
        key = (call_id, frozenset(tags))
        entry = self._unacked.get(key)
        if entry is not None:
            entry[1].discard(scope)
            if not entry[1]:
                del self._unacked[key]


class MovedLegs:
    """
    The requests inside a dialog that came on another flow than the
    dialog's (L{DialogTable.flow_of}), so that their responses, which come
    back for the flow the request came on, count for the dialog's leg too.
    A response is matched by Call-ID, CSeq number and flow; the initial
    INVITE of a dialog is never here (its answer makes the dialog on its
    own flow).

    @ivar limit: at most this many requests are remembered (the oldest
        goes: one whose response never came).
    """

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._legs: dict[tuple[str, int, Hashable], int] = {}

    def __len__(self) -> int:
        return len(self._legs)

    def moved(self, call_id: str, cseq: int, flow: Hashable, leg: int) -> None:
        """
        A request on C{flow} (a flow id, or what names it uniquely: the
        contact point's session and flow id) belongs to the leg of flow
        C{leg}.
        """
        legs = self._legs
        legs[call_id, cseq, flow] = leg
        if len(legs) > self.limit:
            del legs[next(iter(legs))]

    def request(self, dialogs: DialogTable, msg: Any, flow_id: int, flow: Hashable, scope: Hashable | None = None) -> int:
        """
        The leg of a request C{msg} on flow C{flow_id} (named C{flow} here):
        inside a dialog, the flow the dialog was set up on
        (L{DialogTable.flow_of}, looking in C{scope}); a request moved so
        is remembered for its responses (an ACK has none).
        """
        if msg.to_tag is None:
            return flow_id
        call_id = msg.call_id or ""
        leg = dialogs.flow_of(call_id, msg.from_tag, msg.to_tag, flow_id, scope)
        if leg != flow_id and msg.method != "ACK":
            self.moved(call_id, msg.cseq[0], flow, leg)
        return leg

    def leg(self, call_id: str, cseq: int, flow: Hashable, flow_id: int, final: bool) -> int:
        """
        @return: the leg of a response on C{flow} (whose flow id is
            C{flow_id}, returned unless its request was L{moved}); a
            C{final} one forgets it.
        """
        legs = self._legs
        if not legs:
            return flow_id
        key = (call_id, cseq, flow)
        return legs.pop(key, flow_id) if final else legs.get(key, flow_id)
