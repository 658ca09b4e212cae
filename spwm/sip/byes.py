# -*- test-case-name: tests.test_sip_byes -*-
"""
The BYE a half sends of its own when it ends a call whose media it lost
(its tunnel lost past resumption, no media for the media timeout): a
stateful proxy's end of a dialog it tracks, as Kamailio's dialog module
ends one, so that no party stays in a silent call.

L{route_toward} takes a party's route set out of the dialog's
C{Record-Route}, L{build_bye} makes the BYE to one party in the name of
the other (RFC 3261 15.1.1, 12.2.1.1) with a C{Reason} (RFC 3326), and
L{ByeSender} sends them as a client transaction would (its retransmissions
over UDP, Timer F), at a bounded rate and from a bounded queue, and
absorbs their responses.  No I/O: the cores turn what it gives into
actions.
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import Callable, Hashable

from dataclasses import dataclass

from spwm.sip.dialogs import DialogTable, Parties, Party
from spwm.sip.errors import SipParseError
from spwm.sip.message import SipMessage
from spwm.sip.rewrite import MAGIC
from spwm.sip.uri import parse_name_addr

__all__ = [
    "BYE_ANSWERED",
    "BYE_BRANCH_MARK",
    "BYE_DROPPED",
    "BYE_SENT",
    "ByeSender",
    "LOSS_CAUSES",
    "MAX_PARTY_TEXT",
    "MAX_ROUTE_ENTRIES",
    "MAX_ROUTE_TEXT",
    "build_bye",
    "is_bye_branch",
    "party_of",
    "remember_answer",
    "remember_dialog_request",
    "reason_header",
    "route_toward",
]

#: What follows the magic cookie in the branch of a BYE of our own: no
#: branch a core makes otherwise has it (the agent's start with its own
#: mark, the contact point's flow tokens are base32, lower case).
BYE_BRANCH_MARK = "-spwm-bye-"

#: The status code a BYE's C{Reason} gives for each call record reason
#: a half ends a call for (RFC 3326: the cause of the end, a SIP status):
#: the tunnel or the session gone is the service gone (503), no media for
#: the media timeout is a timeout (408).
LOSS_CAUSES = {
    "tunnel lost": 503,
    "media inactivity": 408,
}

#: The counters (both cores' C{events}) of the BYEs a core sent of its
#: own and of the final answers they had
BYE_SENT = "BYE sent: call media lost"
BYE_ANSWERED = "BYE sent: answered"
#: ... and of those not sent: L{ByeSender.limit} BYEs were waiting
BYE_DROPPED = "BYE not sent: too many waiting"

#: Seconds: RFC 3261's T1 and T2, and Timer F (64 x T1), after which a BYE
#: that nothing answered is given up.
T1 = 0.5
T2 = 4.0
TIMER_F = 64 * T1

#: the requests whose C{Contact} refreshes the remote target (RFC 3261
#: 12.2, RFC 3311)
_TARGET_METHODS = frozenset({"INVITE", "UPDATE"})

#: the requests inside a dialog that tell nothing new of their sender: an
#: ACK has its INVITE's CSeq, a BYE (or CANCEL) ends the dialog (one that
#: is ending gets no BYE of ours), and none refreshes the target; the
#: dialog table is not walked for them (two of every call's three
#: requests)
_NOTHING_NEW = frozenset({"ACK", "BYE", "CANCEL"})

#: The most a dialog's parties may take in the dialog table: characters
#: of a party's From/To value and of its remote target, C{Record-Route}
#: entries and their characters in all.  A dialog past them gets no
#: parties (no BYE of our own): a message of 64 KiB must not make every
#: dialog of a busy half that big (about 4 KiB at most, a few hundred
#: bytes usually).
MAX_PARTY_TEXT = 512
MAX_ROUTE_ENTRIES = 8
MAX_ROUTE_TEXT = 2048


def party_of(msg: SipMessage, header: str, tag: str | None, cseq: int | None) -> Party | None:
    """
    @return: the party that wrote C{msg}'s C{header} (C{From} of a
        request, C{To} of a response) with its C{Contact} as its remote
        target; C{None} when either is over L{MAX_PARTY_TEXT}.
    """
    found = msg.contact_addresses()
    text = msg.get(header) or ""
    target = str(found[0].uri) if found else None
    if len(text) > MAX_PARTY_TEXT or (target is not None and len(target) > MAX_PARTY_TEXT):
        return None
    return Party(text, tag, target, cseq)


def remember_dialog_request(dialogs: DialogTable, scope: Hashable, msg: SipMessage, inside: bool) -> None:
    """
    What a request passing a core tells the dialog table about a party
    (L{spwm.sip.byes}): a new INVITE its caller (C{inside}: from this
    half's own side), one inside a dialog its sender's CSeq and, for a
    target refresh, its remote target.
    """
    method = msg.method
    if msg.to_tag is None:
        caller = party_of(msg, "From", msg.from_tag, msg.cseq[0]) if method == "INVITE" else None
        if caller is not None:
            dialogs.invited(scope, msg.call_id, caller, inside)
        return
    if method in _NOTHING_NEW:
        return
    target = None
    if method in _TARGET_METHODS:
        found = msg.contact_addresses()
        target = str(found[0].uri) if found else None
        if target is not None and len(target) > MAX_PARTY_TEXT:
            target = None
    dialogs.passed(scope, msg.call_id, msg.from_tag, msg.to_tag, msg.cseq[0], target)


def remember_answer(dialogs: DialogTable, scope: Hashable, flow_id: int, msg: SipMessage, now: float) -> None:
    """
    A 2xx to an INVITE passed a core: its dialog is established on
    C{flow_id} (L{DialogTable.answered}) with the answering party and the
    dialog's C{Record-Route}; its C{Contact} is that party's remote target
    (also a re-INVITE's 2xx: a target refresh).
    """
    call_id = msg.call_id
    callee = party_of(msg, "To", msg.to_tag, None)
    record_route = tuple(msg.get_all("Record-Route"))
    if len(record_route) > MAX_ROUTE_ENTRIES or sum(map(len, record_route)) > MAX_ROUTE_TEXT:
        callee, record_route = None, ()
    again = dialogs.answered(scope, call_id, flow_id, msg.from_tag, msg.to_tag, now, callee, record_route)
    if again and callee is not None and callee.target is not None:
        # a re-INVITE's 2xx (or a retransmission): a target refresh; a
        # first answer's party has its target already
        dialogs.refreshed(scope, call_id, msg.from_tag, msg.to_tag, callee.target)


def reason_header(reason: str) -> str:
    """
    @return: the C{Reason} value (RFC 3326) of a BYE sent because of the
        call record reason C{reason}.
    """
    text = reason.replace("\\", "").replace('"', "")
    return f'SIP;cause={LOSS_CAUSES.get(reason, 503)};text="{text}"'


def is_bye_branch(branch: str | None) -> bool:
    """
    @return: whether C{branch} is the branch of a BYE of our own.
    """
    return branch is not None and branch.startswith(MAGIC + BYE_BRANCH_MARK)


def route_toward(record_route: tuple[str, ...], ours: Callable[[str], bool], caller: bool) -> list[str]:
    """
    The route set from this half toward one party of a dialog (RFC 3261
    12.1.1, 12.1.2, seen from a proxy on the way): the C{Record-Route}
    values on that party's side of this half's own, nearest first.

    @param record_route: the 2xx's C{Record-Route} values, top first (the
        entry nearest the callee first).
    @param ours: whether a value is this half's own.
    @param caller: toward the caller (else toward the callee).
    @return: the values, in the order of a C{Route} header; without an
        own entry, the whole set (as the party's peer would use it).
    """
    own = [i for i, value in enumerate(record_route) if ours(value)]
    if caller:
        return list(record_route[own[-1] + 1 :] if own else record_route)
    return list(reversed(record_route[: own[0]] if own else record_route))


def build_bye(
    call_id: str, parties: Parties, to_caller: bool, route: list[str], via: str, branch: str, reason: str
) -> bytes | None:
    """
    The BYE to one party of a dialog in the name of the other (RFC 3261
    15.1.1 with 12.2.1.1): its Request-URI is that party's remote target,
    its C{Route} the route set toward it (with a strict router first, that
    router's URI is the Request-URI and the remote target the last
    C{Route}), From and To are the other party's and its own (tags
    included), its CSeq one past the highest the other party used (1 when
    it used none), with C{Max-Forwards: 70} and a C{Reason} (RFC 3326)
    saying why.

    @param call_id: the dialog's Call-ID.
    @param to_caller: to the caller (in the callee's name), else to the
        callee (in the caller's).
    @param route: L{route_toward} that party.
    @param via: this half's C{Via} without its branch
        (C{SIP/2.0/UDP host:port}).
    @param branch: a fresh branch (L{ByeSender.branch}).
    @param reason: the call record reason (L{reason_header}).
    @return: the BYE, or C{None} when the party gave no remote target.
    """
    party, other = (parties.caller, parties.callee) if to_caller else (parties.callee, parties.caller)
    if party.target is None:
        return None
    uri = party.target
    routes = list(route)
    if routes:
        try:
            first = parse_name_addr(routes[0]).uri
        except SipParseError:
            first = None
        if first is not None and first.param("lr") is None:
            # a strict router next (RFC 3261 12.2.1.1): it takes the
            # Request-URI as its route, the target goes last
            uri = str(first)
            routes = routes[1:] + [f"<{party.target}>"]
    cseq = 1 if other.cseq is None else other.cseq + 1
    lines = [f"BYE {uri} SIP/2.0", f"Via: {via};branch={branch}", "Max-Forwards: 70"]
    lines += [f"Route: {value}" for value in routes]
    lines += [
        f"From: {other.header}",
        f"To: {party.header}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} BYE",
        f"Reason: {reason_header(reason)}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


@dataclass(slots=True)
class _Bye:
    dest: Hashable
    data: bytes
    branch: str
    reliable: bool
    # when it is next sent again (None: not over UDP, or a provisional
    # response stopped the retransmissions' doubling at T2)
    again: float | None = None
    interval: float = T1
    given_up: float = 0.0


class ByeSender:
    """
    The BYEs of our own on their way: a bounded queue sent at a bounded
    rate (a session with thousands of calls going sends them over seconds,
    not in one reactor turn), each retransmitted over UDP as a client
    transaction would (T1, doubling up to T2) until a response or Timer F;
    a final response, or Timer F, ends it; a provisional one, its
    retransmissions go on at T2 (RFC 3261 17.1.2.2).

    @ivar limit: at most this many BYEs wait to be sent or for their
        answer; one more is refused (L{add} says so, C{dropped} counts).
    @ivar batch: at most this many are sent for the first time in any
        C{spacing} seconds (a window starts with the first sent after the
        last one ended).
    @ivar counts: C{sent}, C{answered}, C{timed_out}, C{dropped} so far.
    """

    def __init__(self, limit: int = 8192, batch: int = 50, spacing: float = 0.05) -> None:
        self.limit = limit
        self.batch = batch
        self.spacing = spacing
        self.counts = {"sent": 0, "answered": 0, "timed_out": 0, "dropped": 0}
        self._queue: deque[_Bye] = deque()
        # the current window of C{spacing} seconds ends then, and this
        # many more may go out in it
        self._window_end = 0.0
        self._window_left = 0
        # branch -> a BYE sent and not answered yet
        self._sent: dict[str, _Bye] = {}
        # the soonest time one of them is due, as L{due} last found it (an
        # answer since can only make it later: a timer that finds nothing
        # due costs one call), so that L{next_deadline}, asked after every
        # SIP message, costs no walk through thousands of BYEs
        self._sent_due: float | None = None

    def __len__(self) -> int:
        return len(self._queue) + len(self._sent)

    def unsent(self) -> int:
        """
        @return: how many BYEs wait to be sent a first time (the queue,
            paced by C{batch} per C{spacing}).
        """
        return len(self._queue)

    @staticmethod
    def branch() -> str:
        """
        @return: a fresh branch for a BYE of our own.
        """
        return MAGIC + BYE_BRANCH_MARK + secrets.token_hex(8)

    def add(self, dest: Hashable, data: bytes, branch: str, reliable: bool) -> bool:
        """
        Queue a BYE (its C{branch} as in its C{Via}) for C{dest}, over a
        C{reliable} transport (no retransmissions) or not.

        @return: whether it was queued (not when L{limit} BYEs wait).
        """
        if len(self) >= self.limit:
            self.counts["dropped"] += 1
            return False
        self._queue.append(_Bye(dest, data, branch, reliable))
        return True

    def next_deadline(self) -> float | None:
        """
        @return: when L{due} next has something to do, or C{None}.
        """
        when = None
        if self._queue:
            when = self._window_end if self._window_left <= 0 else self._window_end - self.spacing
        sent = self._sent_due if self._sent else None
        if sent is not None and (when is None or sent < when):
            when = sent
        return when

    def due(self, now: float) -> list[tuple[Hashable, bytes]]:
        """
        The BYEs to send now: the queue's next batch (when its spacing is
        over) and the retransmissions due; those past Timer F are given up.

        @return: C{(dest, data)} pairs, in order.
        """
        out: list[tuple[Hashable, bytes]] = []
        for branch, bye in list(self._sent.items()):
            if now >= bye.given_up:
                del self._sent[branch]
                self.counts["timed_out"] += 1
            elif bye.again is not None and now >= bye.again:
                out.append((bye.dest, bye.data))
                bye.interval = min(bye.interval * 2, T2)
                bye.again = now + bye.interval
        if self._queue and now >= self._window_end:
            self._window_end = now + self.spacing
            self._window_left = self.batch
        while self._queue and self._window_left > 0:
            bye = self._queue.popleft()
            self._window_left -= 1
            bye.given_up = now + TIMER_F
            bye.again = None if bye.reliable else now + T1
            self._sent[bye.branch] = bye
            self.counts["sent"] += 1
            out.append((bye.dest, bye.data))
        soonest = None
        for bye in self._sent.values():
            due = bye.given_up if bye.again is None else min(bye.again, bye.given_up)
            if soonest is None or due < soonest:
                soonest = due
        self._sent_due = soonest
        return out

    def answered(self, branch: str, status: int) -> bool:
        """
        A response with our branch C{branch} and C{status} came: a final
        one ends its BYE (a 2xx, 481 or 408 alike: the dialog is over for
        its party, or cannot be ended any more); a provisional one leaves
        the retransmissions at T2.

        @return: whether it answers a BYE of ours still waiting (the
            response is absorbed either way: a late one is ours too).
        """
        bye = self._sent.get(branch)
        if bye is None:
            return False
        if status >= 200:
            del self._sent[branch]
            self.counts["answered"] += 1
        elif bye.again is not None:
            bye.interval = T2
        return True
