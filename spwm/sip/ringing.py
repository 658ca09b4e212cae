# -*- test-case-name: tests.test_sip_ringing -*-
"""
What a half sends of its own when a call it passed on is lost I{while it
rings} (its INVITE passed on, no final response yet) with the tunnel of
one of its parties: the caller still there is answered with a final
response (L{build_final}), the callee still ringing gets a CANCEL
(L{build_cancel}) and the ACK of the 487 that ends its INVITE
(L{build_ack}) or, when it answered first, the ACK of its 2xx and a BYE
(L{end_answer}).  The BYE of L{spwm.sip.byes} does the same for an
established dialog.

L{Ringing} keeps, per INVITE passed on and not finally answered, the few
header lines these need (as L{Header} objects the message already had: no
copy, no body), bounded in count and bytes and forgotten on the final
response, on the caller's CANCEL or after Timer C.  No I/O: the cores
turn what it gives into actions.

Why C{480 Temporarily Unavailable} and not C{503}: a proxy upstream that
gets a C{503} does not pass it on as is (RFC 3261 16.7 step 6: it may try
another target, and answers C{500} when it forwards one), and a UAC takes
a C{503} as this hop being out of service (21.5.4), not the callee; the
callee, beyond a tunnel that is gone, cannot be reached now, which is what
C{480} says (21.4.18; RFC 5626 5.3 has an edge proxy whose flow to a UA
is gone answer it too).  The C{Reason} (RFC 3326) says why:
C{SIP;cause=503;text="tunnel lost"}.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Hashable, Iterable

from dataclasses import dataclass

from spwm.sip.byes import ByeSender, build_bye, party_of, reason_header, route_toward
from spwm.sip.dialogs import Parties, Party
from spwm.sip.message import Header, SipMessage, make_response, parse_message
from spwm.sip.rewrite import MAGIC

__all__ = [
    "CANCEL_ANSWERED",
    "CANCEL_SENT",
    "FINAL_SENT",
    "FINAL_STATUS",
    "Pending",
    "Ringing",
    "TIMER_C",
    "build_ack",
    "build_cancel",
    "build_final",
    "absorb",
    "far_key",
    "end_answer",
    "ending",
    "told_text",
]

#: The counters (both cores' C{events}) of a ringing call's end: the
#: CANCELs sent toward a callee, the final responses to a caller, and the
#: responses absorbed (the CANCEL's own and the INVITE's final one, ACKed)
CANCEL_SENT = "CANCEL sent: ringing call media lost"
FINAL_SENT = "480 sent: ringing call media lost"
CANCEL_ANSWERED = "CANCEL sent: answered"

#: The final response to the caller of a ringing call whose callee is
#: beyond a lost tunnel (see the module's docstring)
FINAL_STATUS = (480, "Temporarily Unavailable")

#: Seconds an INVITE is kept without a response (RFC 3261 16.6 step 11,
#: Timer C: more than 3 minutes; a provisional response starts it again)
TIMER_C = 180.0

#: Seconds an INVITE we CANCELled is kept (its responses absorbed, the
#: non-2xx final one ACKed): 64 x T1, as long as its UAS retransmits
#: them (Timer H)
CANCEL_KEPT = 32.0

#: kinds: the callee is beyond this half (the INVITE went on toward the
#: tunnel; its caller gets a final response) or the caller is (the
#: INVITE went on from the tunnel; its callee gets a CANCEL)
ANSWER = "answer"
CANCEL = "cancel"

#: The header lines kept: all three builders' (L{build_final} copies the
#: Via lines, L{build_cancel} and L{build_ack} take the top one and the
#: Routes)
_KEPT = frozenset({"via", "from", "to", "call-id", "cseq", "route"})

#: At most this many bytes of kept header values per INVITE: one past it
#: is not kept (no CANCEL, no final response of ours for it)
MAX_KEPT_BYTES = 4096


@dataclass(slots=True)
class Pending:
    """
    One INVITE passed on and not finally answered.

    @ivar kind: L{ANSWER} or L{CANCEL}.
    @ivar key: its C{(Call-ID, branch)} in L{Ringing}.
    @ivar leg: the call leg (the core's scope, flow and Call-ID) that
        L{Ringing.take} finds it by.
    @ivar uri: its Request-URI as it went on.
    @ivar headers: its L{_KEPT} lines as it went on, in order.
    @ivar dest: where it went (the core's own notation), for the CANCEL
        and the ACK; for L{ANSWER}, where the caller is.
    @ivar ours_on_top: its top C{Via} is this half's own (dropped from a
        response).
    @ivar tag: the To tag of the first provisional response with one.
    @ivar ended: a 2xx that crossed our CANCEL has had our BYE
        (L{absorb}).
    """

    kind: str
    key: tuple[str, str]
    leg: Hashable
    uri: str
    headers: list[Header]
    dest: Hashable
    ours_on_top: bool
    size: int
    last: float
    tag: str | None = None
    ended: bool = False

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(
        self,
        kind: str,
        key: tuple[str, str],
        leg: Hashable,
        uri: str,
        headers: list[Header],
        dest: Hashable,
        ours_on_top: bool,
        size: int,
        last: float,
        tag: str | None = None,
        ended: bool = False,
    ) -> None:
        self.kind = kind
        self.key = key
        self.leg = leg
        self.uri = uri
        self.headers = headers
        self.dest = dest
        self.ours_on_top = ours_on_top
        self.size = size
        self.last = last
        self.tag = tag
        self.ended = ended


class Ringing:
    """
    The INVITEs a core passed on and that have no final response yet, by
    C{(Call-ID, branch)} of their top C{Via} as they went on (what a
    response to them has on top), at most C{limit} of them and
    C{max_bytes} of header values (the oldest forgotten first), each also
    forgotten after L{TIMER_C} without a response; and those the core
    CANCELled itself, whose responses it absorbs (L{CANCEL_KEPT}).
    """

    def __init__(
        self, limit: int = 4096, max_bytes: int = 2 << 20, scope: Callable[[Any], Hashable] | None = None
    ) -> None:
        """
        @param scope: C{scope(leg)}: the session a call leg is in, for
            L{legs_of} (the contact point's legs are C{(session, flow,
            Call-ID)}); C{None}: one scope (the agent's one session).
        """
        self.limit = limit
        self.max_bytes = max_bytes
        self._bytes = 0
        self._pending: dict[tuple[str, str], Pending] = {}
        # call leg -> the key of its newest INVITE waiting
        self._legs: dict[Hashable, tuple[str, str]] = {}
        self._scope = scope
        # scope -> its legs in _legs (with a scope function)
        self._scopes: dict[Hashable, set[Hashable]] = {}
        #: key -> (an INVITE the core CANCELled, until when it is kept):
        #: the responses with its key are the core's own (L{cancelled});
        #: empty, no response needs a look
        self.cancelled: dict[tuple[str, str], tuple[Pending, float]] = {}
        #: key -> until when: an INVITE the core answered itself (its
        #: caller's ACK is absorbed, L{acked}); empty, no ACK needs a look
        self.answered: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def passed(
        self,
        key: tuple[str, str],
        kind: str,
        leg: Hashable,
        msg: SipMessage,
        dest: Hashable,
        ours_on_top: bool,
        now: float,
    ) -> None:
        """
        A new INVITE goes on as C{msg} (take it after the last change):
        keep what L{build_final} or L{build_cancel} need.
        """
        headers = [h for h in msg.headers if h.name in _KEPT]
        size = len(b"".join([h.value for h in headers]))
        if size > MAX_KEPT_BYTES:
            return
        old = self._pending.pop(key, None)
        if old is not None:
            self._forget(key, old)
        self._pending[key] = Pending(kind, key, leg, msg.uri or "", headers, dest, ours_on_top, size, now)
        self._legs[leg] = key
        if self._scope is not None:
            self._scopes.setdefault(self._scope(leg), set()).add(leg)
        self._bytes += size
        self._trim(now)

    def _trim(self, now: float) -> None:
        """
        Forget the oldest past C{limit} or C{max_bytes}, and those past
        Timer C (the table is in the order of C{last}: L{response}
        moves an INVITE to the back).
        """
        pending = self._pending
        while pending:
            key = next(iter(pending))
            entry = pending[key]
            if len(pending) <= self.limit and self._bytes <= self.max_bytes and now - entry.last < TIMER_C:
                return
            del pending[key]
            self._forget(key, entry)

    def _forget(self, key: tuple[str, str], entry: Pending) -> None:
        self._bytes -= entry.size
        if self._legs.get(entry.leg) == key:
            del self._legs[entry.leg]
            self._unscope(entry.leg)

    def _unscope(self, leg: Hashable) -> None:
        if self._scope is None:
            return
        scope = self._scope(leg)
        legs = self._scopes.get(scope)
        if legs is not None:
            legs.discard(leg)
            if not legs:
                del self._scopes[scope]

    def legs_of(self, scope: Hashable = None) -> list[Hashable]:
        """
        @return: the call legs of C{scope} with an INVITE waiting (every
            leg, without a scope function): when their session is lost
            for good, those that L{take} has not found yet (a call that
            rings with no media stream: an INVITE without SDP).
        """
        if self._scope is None:
            return list(self._legs)
        return list(self._scopes.get(scope, ()))

    def response(self, key: tuple[str, str], status: int, msg: SipMessage, now: float) -> None:
        """
        A response C{msg} with C{status} to the INVITE C{key} passes: a
        final one forgets the INVITE (L{finished}); a provisional one
        (not C{100}: hop by hop, and it does not restart Timer C, RFC 3261
        16.7 step 2) keeps its To tag (the early dialog's, the first one)
        and starts Timer C again (the INVITE goes to the back of the
        table).
        """
        if status >= 200:
            self.finished(key)
            return
        if status == 100:
            return
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        if entry.tag is None:
            entry.tag = msg.to_tag
        entry.last = now
        self._pending[key] = entry

    def dest_of(self, key: tuple[str, str]) -> Hashable | None:
        """
        @return: where the INVITE C{key} went (L{Pending.dest}), while it
            waits for its final response; else C{None}.
        """
        entry = self._pending.get(key)
        return None if entry is None else entry.dest

    def finished(self, key: tuple[str, str]) -> None:
        """
        The INVITE C{key} has its final response, or its caller's CANCEL
        passes (the callee answers it 487): forget it.
        """
        entry = self._pending.pop(key, None)
        if entry is not None:
            self._forget(key, entry)

    def take(self, leg: Hashable, now: float) -> Pending | None:
        """
        @return: the newest INVITE of C{leg} still waiting for its final
            response (within Timer C), forgotten here.
        """
        key = self._legs.pop(leg, None)
        if key is None:
            return None
        self._unscope(leg)
        entry = self._pending.pop(key, None)
        if entry is None:
            return None
        self._forget(key, entry)
        if now - entry.last >= TIMER_C:
            return None
        return entry

    def cancelling(self, entry: Pending, now: float) -> None:
        """
        The core CANCELs the INVITE of C{entry} itself: its responses are
        its own from now on (L{cancelled_invite}), for L{CANCEL_KEPT}.
        """
        _bounded(self.cancelled, self.limit, now, lambda item: item[1])
        self.cancelled[entry.key] = (entry, now + CANCEL_KEPT)

    def cancelled_invite(self, key: tuple[str, str], now: float) -> Pending | None:
        """
        @return: the INVITE C{key} if the core CANCELled it (a response
            with that branch is the core's own: to absorb).
        """
        found = self.cancelled.get(key)
        if found is None or found[1] <= now:
            return None
        return found[0]

    def answering(self, entry: Pending, branch: str, now: float) -> None:
        """
        The core answers the INVITE of C{entry} itself, its response with
        C{branch} in its top C{Via} (the caller's): its caller's ACK (with
        that branch, RFC 3261 17.1.1.3) is the core's own (L{acked}), for
        L{CANCEL_KEPT} (its retransmissions of the answer stop by then,
        Timer H).
        """
        _bounded(self.answered, self.limit, now, lambda until: until)
        self.answered[(entry.key[0], branch)] = now + CANCEL_KEPT

    def sent(self, entry: Pending, branch: str, now: float) -> None:
        """
        The core sent what L{ending} gave for C{entry} (with C{branch} on
        top: the response's, the CANCEL's): its answers are its own.
        """
        if entry.kind == CANCEL:
            self.cancelling(entry, now)
        else:
            self.answering(entry, branch, now)

    def acked(self, key: tuple[str, str], now: float) -> bool:
        """
        An ACK with C{key}: whether it is that of a final response of the
        core's own (absorbed; the ACK goes nowhere else).
        """
        until = self.answered.get(key)
        return until is not None and now < until


def _bounded(table: dict[Any, Any], limit: int, now: float, until: Callable[[Any], float]) -> None:
    """
    Make room for one more in C{table}, whose entries are in the order of
    their C{until} (each added for the same time from its C{now}): drop
    the oldest while it is over (its C{until} past C{now}) or the table
    holds C{limit}.
    """
    while table:
        first = next(iter(table))
        if len(table) < limit and until(table[first]) > now:
            return
        del table[first]


def _lines(headers: Iterable[Header]) -> bytes:
    return b"".join([h.to_bytes() for h in headers])


def _top_via(entry: Pending) -> bytes:
    """
    @return: the C{Via} line of the INVITE as it went on (its first value).
    """
    for h in entry.headers:
        if h.name == "via":
            value = h.text.split(",")[0].strip()
            return b"Via: " + value.encode("utf-8", "surrogateescape") + b"\r\n"
    raise ValueError("an INVITE without Via")


def _get(entry: Pending, name: str) -> bytes:
    for h in entry.headers:
        if h.name == name:
            return h.value
    raise ValueError(f"an INVITE without {name}")


def _cseq_number(entry: Pending) -> int:
    return int(_get(entry, "cseq").split()[0])


def _request(method: str, entry: Pending, to: bytes, reason: str | None) -> bytes:
    """
    A CANCEL or ACK for the INVITE of C{entry} (RFC 3261 9.1, 17.1.1.3):
    its Request-URI, top C{Via}, C{Route}s, From, Call-ID and CSeq number,
    C{To} as given, C{Max-Forwards: 70}.
    """
    head = f"{method} {entry.uri} SIP/2.0\r\n".encode("utf-8", "surrogateescape")
    routes = _lines([h for h in entry.headers if h.name == "route"])
    parts = [
        head,
        _top_via(entry),
        b"Max-Forwards: 70\r\n",
        routes,
        b"From: " + _get(entry, "from") + b"\r\n",
        b"To: " + to + b"\r\n",
        b"Call-ID: " + _get(entry, "call-id") + b"\r\n",
        b"CSeq: %d %s\r\n" % (_cseq_number(entry), method.encode()),
    ]
    if reason is not None:
        parts.append(b"Reason: " + reason_header(reason).encode("utf-8") + b"\r\n")
    parts.append(b"Content-Length: 0\r\n\r\n")
    return b"".join(parts)


def build_cancel(entry: Pending, reason: str) -> bytes:
    """
    The CANCEL of the INVITE of C{entry} as this half sent it on (RFC 3261
    9.1): the same Request-URI, top C{Via} (its branch), C{Route}s, From,
    To (no tag: the INVITE's), Call-ID and CSeq number, with
    C{Max-Forwards: 70} and a C{Reason} (RFC 3326) for the call record
    reason C{reason}.
    """
    return _request("CANCEL", entry, _get(entry, "to"), reason)


def build_ack(entry: Pending, response: SipMessage) -> bytes:
    """
    The ACK of a non-2xx final C{response} (a 487 after our CANCEL) to the
    INVITE of C{entry} (RFC 3261 17.1.1.3): the INVITE's Request-URI, top
    C{Via}, C{Route}s, From, Call-ID and CSeq number, the response's C{To}
    (with its tag).
    """
    to = (response.get("To") or "").encode("utf-8", "surrogateescape")
    return _request("ACK", entry, to, None)


def new_tag() -> str:
    """
    @return: a fresh To tag for a final response of ours.
    """
    return secrets.token_hex(5)


def build_final(entry: Pending, reason: str) -> SipMessage:
    """
    The final response of ours to the caller of the INVITE of C{entry}
    (L{FINAL_STATUS}) as a UAS would make it (RFC 3261 8.2.6): its C{Via}
    lines as it came in (without ours), From, To with the early dialog's
    tag (the first provisional's) or a fresh one, Call-ID and CSeq; a
    C{Reason} (RFC 3326) for the call record reason C{reason}.
    """
    headers = list(entry.headers)
    if entry.ours_on_top:
        headers.remove(next(h for h in headers if h.name == "via"))
    skeleton = SipMessage(is_request=True, method="INVITE", uri=entry.uri, headers=headers)
    status, phrase = FINAL_STATUS
    return make_response(
        skeleton,
        status,
        phrase,
        to_tag=entry.tag or new_tag(),
        extra_headers=(("Reason", reason_header(reason)),),
    )


def ending(entry: Pending, reason: str) -> tuple[SipMessage | None, bytes, str, str]:
    """
    What a core sends for the INVITE of C{entry}, lost with its tunnel
    while it rings, for the call record reason C{reason}.

    @return: the final response to its caller (C{None} for a CANCEL), its
        bytes (or the CANCEL's), the counter, and what the call record
        says went (C{"480"}, C{"CANCEL"}: L{told_text}).
    """
    if entry.kind == CANCEL:
        return None, build_cancel(entry, reason), CANCEL_SENT, "CANCEL"
    response = build_final(entry, reason)
    return response, response.to_bytes(), FINAL_SENT, str(FINAL_STATUS[0])


def end_answer(
    entry: Pending, response: SipMessage, ours: Callable[[str], bool], via: str
) -> tuple[bytes, bytes, str] | None:
    """
    A 2xx that crossed our CANCEL (the callee answered before the CANCEL
    reached it): the ACK that confirms it (RFC 3261 13.2.2.4) and a BYE
    that ends it at once in the caller's name (15.1.1, as
    L{spwm.sip.byes.build_bye} for a call whose media is lost), rather than
    leave the callee in a call nobody is in until it gives up waiting for
    the ACK (32 s, 13.3.1.4).  Both go to the 2xx's C{Contact} with the
    route set toward the callee (L{route_toward}), From the INVITE's, To
    the 2xx's; the ACK with the INVITE's CSeq number, the BYE one past it.

    @param ours: whether a C{Record-Route} value is this half's own.
    @param via: this half's C{Via} without its branch.
    @return: the ACK, the BYE and the BYE's branch (L{ByeSender.branch});
        C{None} when the 2xx gives no C{Contact}.
    """
    callee = party_of(response, "To", response.to_tag, None)
    if callee is None or callee.target is None:
        return None
    cseq = _cseq_number(entry)
    caller = Party(_get(entry, "from").decode("utf-8", "surrogateescape"), response.from_tag, None, cseq)
    record_route = tuple(response.get_all("Record-Route"))
    route = route_toward(record_route, ours, False)
    branch = ByeSender.branch()
    bye = build_bye(response.call_id, Parties(caller, callee, record_route, False), False, route, via, branch, "tunnel lost")
    if bye is None:
        return None
    ack = parse_message(bye)
    ack.method = "ACK"
    ack.set_header("CSeq", f"{cseq} ACK")
    ack.remove_header("Reason")
    ack.replace_first_value("Via", f"{via};branch={MAGIC}-spwm-ack-{secrets.token_hex(8)}")
    return ack.to_bytes(), bye, branch


def absorb(
    entry: Pending,
    response: SipMessage,
    byes: ByeSender,
    ours: Callable[[str], bool],
    via: str,
    dest: Hashable,
    reliable: bool,
    sent_as: str | None = None,
) -> tuple[bytes | None, bool, bool]:
    """
    A response to an INVITE a core CANCELled (L{Ringing.cancelled_invite}),
    or to its CANCEL: the core's alone (the tunnel it would go to is
    gone).  A provisional one slows the CANCEL's retransmissions; a final
    one ends them; the INVITE's non-2xx final response (the 487) is ACKed
    (RFC 3261 17.1.1.3); a 2xx (the callee answered before our CANCEL
    came) is ACKed and, the first time, ended with a BYE queued in
    C{byes} for C{dest} (L{end_answer}).

    @param ours: whether a C{Record-Route} value is this half's own.
    @param via: this half's C{Via} without its branch, for the 2xx's ACK
        and BYE.
    @param sent_as: the CANCEL's key in C{byes} when not the INVITE's
        branch (L{far_key}).
    @return: the ACK to send where the INVITE went, or C{None}; whether
        this first answered the CANCEL (count L{CANCEL_ANSWERED}); whether
        a BYE was queued (count C{BYE_SENT}).
    """
    status = response.status or 0
    answered = byes.answered(sent_as or entry.key[1], status) and status >= 200
    if status < 200 or response.cseq[1] != "INVITE":
        return None, answered, False
    if status >= 300:
        return build_ack(entry, response), answered, False
    ended = end_answer(entry, response, ours, via)
    if ended is None:
        return None, answered, False
    ack, bye, branch = ended
    queued = not entry.ended and byes.add(dest, bye, branch, reliable)
    entry.ended = entry.ended or queued
    return ack, answered, queued


def far_key(entry: Pending) -> str:
    """
    @return: the key in a L{ByeSender} of a CANCEL of the INVITE of
        C{entry} that goes the way the INVITE went while the final
        response to its caller waits there under the INVITE's branch (the
        agent's CANCEL to the far party after a contact point died): the
        branch and a word (a branch is a token: no space in it).
    """
    return entry.key[1] + " far"


def told_text(told: Iterable[str]) -> str:
    """
    The call record's C{bye_sent} in words: C{"phone"} or C{"far party"}
    (a BYE to it), C{"phone (CANCEL)"} or C{"far party (480)"} (what went
    to it for a ringing call).

    @return: e.g. C{"BYE sent to the far party and the phone"},
        C{"CANCEL sent to the phone"}; C{""} for nobody.
    """
    by: dict[str, set[str]] = {}
    for item in told:
        whom, _, what = str(item).partition(" (")
        by.setdefault(what.rstrip(")") or "BYE", set()).add(whom)
    return "; ".join(f"{what} sent to the " + " and the ".join(sorted(whoms)) for what, whoms in sorted(by.items()))
