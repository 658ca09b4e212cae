# -*- test-case-name: tests.test_sip_proxy -*-
"""
How both SIP proxy cores refuse a message: the crude error answer to one
that did not parse (RFC 3261 8.2.6), the C{503} of a congested tunnel,
and the C{503} of an overloaded half (L{shed}).  What a message that
parsed needs (RFC 3261 8.1.1 headers, every Via well-formed, CSeq
matching the method) L{spwm.sip.message.parse_message} checked already.
"""

from __future__ import annotations

from typing import Callable

from spwm.sip.actions import Action, Counters, Dropped, MediaHook, MediaRefusal, TunnelKey, show_media
from spwm.sip.errors import SipParseError
from spwm.sip.message import SipMessage, make_response, stable_tag
from spwm.sip.uri import SipUri, parse_uri

__all__ = [
    "CONGESTED",
    "CONGESTED_COUNTER",
    "CONGESTED_RETRY_AFTER",
    "RETRANSMITTED_ANSWERED",
    "RETRANSMITTED_BUNCHED",
    "RETRANSMITTED_CONGESTED",
    "RecentInvites",
    "answer_malformed",
    "congested_response",
    "crude_error",
    "media_full_response",
    "OPTIONS_ANSWERED",
    "options_answer",
    "options_for_hop",
    "starts_work",
    "NO_TUNNEL",
    "OVERLOADED",
    "OVERLOADED_COUNTER",
    "RETRANSMITTED_OVERLOADED",
    "shed",
    "unavailable",
]

#: The log reason of a request refused because its tunnel is congested.
CONGESTED = "tunnel congested: new request refused with 503"
#: ... and the counter it is counted under.
CONGESTED_COUNTER = "tunnel congested"

#: Seconds a refused client is asked to wait (C{Retry-After}).
CONGESTED_RETRY_AFTER = 5

#: The log reason (and counter) of a retransmitted INVITE dropped while
#: its tunnel is congested (L{RecentInvites}).
RETRANSMITTED_CONGESTED = "INVITE retransmission dropped: tunnel congested"

#: The log reason of a new request refused because it waited too long
#: for its turn in this half (L{shed}; L{spwm.sip.transport.OVERLOAD_AFTER}).
OVERLOADED = "overloaded: new request refused with 503"
#: ... and the counter it is counted under.
OVERLOADED_COUNTER = "overloaded"

#: The log reason (and counter) of a retransmitted INVITE dropped while
#: the half is overloaded: its original was passed on before (L{shed}).
RETRANSMITTED_OVERLOADED = "INVITE retransmission dropped: overloaded"

#: The log reason (and counter) of a retransmitted INVITE dropped because
#: a 2xx to it has passed back already (L{RecentInvites.accepted}).
RETRANSMITTED_ANSWERED = "INVITE retransmission dropped: already answered 2xx"

#: Seconds within which a retransmitted INVITE that follows the last copy
#: passed on is dropped (L{RecentInvites.redundant}): a phone retransmits
#: T1 = 0.5 s apart at the least, so copies closer than this were bunched
#: on the way (a stalled connection's queue, a busy half).
BUNCHED = 0.25

#: The log reason (and counter) of such a retransmission.
RETRANSMITTED_BUNCHED = "INVITE retransmission dropped: its last copy passed on under 0.25 s ago"


_CRUDE = {
    b"via": b"Via",
    b"v": b"Via",
    b"from": b"From",
    b"f": b"From",
    b"to": b"To",
    b"t": b"To",
    b"call-id": b"Call-ID",
    b"i": b"Call-ID",
    b"cseq": b"CSeq",
}


def answer_malformed(
    data: bytes,
    status: int,
    reason: str,
    drop: Dropped,
    send: Callable[[bytes], Action],
) -> list[Action]:
    """
    The actions for a message that did not parse: the crude error response
    (sent with C{send(bytes)}) when one can be made, and the drop.
    """
    resp = crude_error(data, status, reason)
    return [drop] if resp is None else [send(resp), drop]


def crude_error(data: bytes, status: int, reason: str) -> bytes | None:
    """
    Build an error response to a request the parser refused, from the raw
    lines it needs (RFC 3261 8.2.6), or C{None} when that is impossible or
    the message is not a request (or is an ACK, which is never answered).
    """
    head = data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n")
    lines = head.split(b"\n")
    first = lines[0]
    parts = first.split(b" ")
    if len(parts) < 3 or first.startswith(b"SIP/") or parts[0].upper() == b"ACK":
        return None
    unfolded: list[bytes] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and unfolded:
            unfolded[-1] += b" " + line.strip()
        else:
            unfolded.append(line)
    kept: list[bytes] = []
    seen = set()
    for line in unfolded:
        name, sep, value = line.partition(b":")
        canon = _CRUDE.get(name.strip().lower())
        if not sep or canon is None:
            continue
        seen.add(canon)
        kept.append(canon + b": " + value.strip())
    if len(seen) < 5:
        return None
    phrase = "".join(c for c in reason if 32 <= ord(c) < 127) or "Bad Request"
    if not 300 <= status <= 699:
        status = 400
    return (
        b"SIP/2.0 %d %s\r\n" % (status, phrase.encode("ascii"))
        + b"\r\n".join(kept)
        + b"\r\nContent-Length: 0\r\n\r\n"
    )


def starts_work(msg: SipMessage) -> bool:
    """
    Whether a request starts something new (an out-of-dialog request that
    is not an ACK or CANCEL): what an overloaded tunnel refuses, while
    requests inside dialogs, ACK and CANCEL (which end work) go on.
    """
    return msg.to_tag is None and msg.method not in ("ACK", "CANCEL")


def congested_response(msg: SipMessage) -> bytes:
    """
    The 503 for a request refused because its tunnel's signalling backlog
    is over the high-water mark (RFC 3261 21.5.4, with C{Retry-After}).
    """
    return unavailable(msg, "tunnel congested")


def media_full_response(msg: SipMessage, why: MediaRefusal) -> bytes:
    """
    The 503 for a new INVITE that this half could not relay media for: its
    media port range is full, or it relays its C{--max-calls} calls (RFC
    3261 21.5.4, with C{Retry-After}: ports and calls come free as calls
    end).  Better than passing the offer on with its streams at port 0,
    which sets up a call without audio, or than taking a call that the
    half has no CPU for, which spoils the audio of every call.
    """
    return unavailable(msg, why.phrase)


#: Why a half answers 503 while it has no tunnel (L{unavailable})
NO_TUNNEL = "no tunnel to the contact point"


def unavailable(msg: SipMessage, why: str, retry_after: int = CONGESTED_RETRY_AFTER, tagged: bool = False) -> bytes:
    """
    A C{503 Service Unavailable (why)} to C{msg} with C{Retry-After};
    C{tagged}: with a To tag of its own (L{stable_tag}), as the answer of
    the hop that ends the request.
    """
    return make_response(
        msg,
        503,
        f"Service Unavailable ({why})",
        to_tag=stable_tag(msg) if tagged else None,
        extra_headers=(("Retry-After", str(retry_after)),),
    ).to_bytes()


#: The counter of the C{OPTIONS} a half answered itself (L{options_answer})
OPTIONS_ANSWERED = "OPTIONS answered here"

#: The C{Allow} of a half's own answer to C{OPTIONS}: the methods it
#: relays (any, in fact; these are the ones SIP defines)
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, UPDATE, INFO, REFER, SUBSCRIBE, NOTIFY, MESSAGE, PUBLISH"


def options_for_hop(msg: SipMessage, is_us: Callable[[SipUri], bool]) -> bool:
    """
    Whether an C{OPTIONS} may be for this hop itself (RFC 3261 11, 16.3):
    its C{Max-Forwards} is 0 (a proxy may then be the final recipient), or
    its Request-URI has no user part and C{is_us}.  The caller checks the
    C{Route}s left.
    """
    mf = msg.max_forwards
    if mf is not None and mf <= 0:
        return True
    try:
        ruri = parse_uri(msg.uri or "")
    except SipParseError:
        return False
    return not ruri.user and is_us(ruri)


def options_answer(msg: SipMessage, retry_after: int | None = None) -> bytes:
    """
    A half's own answer to an C{OPTIONS} addressed to it (RFC 3261 11):
    C{200} with C{Allow} (L{ALLOW}) and C{Accept: application/sdp}, or,
    with C{retry_after}, C{503} with that C{Retry-After} (the half cannot
    relay now).  The To tag comes from the Call-ID, so a retransmission
    gets the same answer.
    """
    if retry_after is not None:
        return unavailable(msg, NO_TUNNEL, retry_after, tagged=True)
    extra = (("Allow", ALLOW), ("Accept", "application/sdp"))
    return make_response(msg, 200, "OK", to_tag=stable_tag(msg), extra_headers=extra).to_bytes()


class RecentInvites:
    """
    The new INVITEs a core passed on lately, by Call-ID and top Via branch
    (as they came in), at most C{limit} (the oldest forgotten first), each
    with the body it went on with.

    While a tunnel is congested, new requests are answered 503; but a
    retransmission of an INVITE already passed on is dropped instead: its
    original is on its way, and a 503 to the retransmission ends the call
    at the caller while the original goes on to be answered, a call nobody
    ACKs that holds relay ports (RFC 3261 lets a stateless proxy forward
    or drop a retransmission; it must not answer it differently from the
    original).

    A retransmission that is passed on goes with the body its original
    went on with, and is not shown to the media relay again (L{media}): its
    offer was.  Shown again, a retransmission that a backlog delayed until
    after the peer half had closed the stream's channel (the call ended,
    or was answered and the peer's close came first) made the stream
    anew, with relay ports and a channel the peer then held unexplained
    for 10 s: under an overload, so many that the peer refused the
    channels of new calls, which then had no audio.

    A retransmission that comes after a 2xx to its INVITE has passed back
    is dropped (L{accepted}): it crossed the 2xx, which its sender will get
    (the UAS core repeats a 2xx until the ACK comes, RFC 3261 13.3.1.4, and
    not because the INVITE came again).  This is what the Accepted state
    of an INVITE server transaction does for a transaction-stateful proxy
    (RFC 6026 7.1).  Passed on, a retransmission that a backlog delayed
    until after the caller's ACK reaches a UAS whose dialog is confirmed:
    SIPp's UAS takes it for an unexpected message and abandons the call,
    leaving its BYE unanswered.

    A retransmission that comes within L{BUNCHED} of the last copy passed
    on is dropped too: a phone retransmits T1 (0.5 s) apart at the least,
    so such copies were bunched on the way, by a connection that stalled
    with the INVITE and its retransmissions queued and then delivered them
    back to back (before the resend of the carrier, or by it), or a half
    busy for longer than T1.  Passed on, the retransmission follows its
    original by a millisecond and reaches the UAS after its 2xx, before
    the 2xx has passed back (the same unexpected message to SIPp).  One
    that the downstream hop needs (the original was lost there) is sent
    again by the phone later, spaced as it should be.
    """

    def __init__(self, limit: int = 4096, max_bytes: int = 4 << 20) -> None:
        self.limit = limit
        #: the bodies kept (those the media relay rewrote) in bytes, at most
        self.max_bytes = max_bytes
        self._seen: dict[tuple[str, str], bytes | None] = {}
        self._bytes = 0
        # those of them that a 2xx has answered
        self._accepted: set[tuple[str, str]] = set()
        # when the last copy of each was passed on (when told the time)
        self._passed_at: dict[tuple[str, str], float] = {}
        # the new requests refused as overloaded lately (L{shed}), oldest
        # first, at most C{limit}
        self._shed: dict[tuple[str, str], None] = {}

    @staticmethod
    def _key(msg: SipMessage) -> tuple[str, str] | None:
        via = msg.top_via
        if via is None or not via.branch:
            return None
        return (msg.call_id or "", via.branch)

    def again(self, msg: SipMessage) -> bool:
        """
        Whether C{msg} is a new INVITE (no To-tag) that was passed on lately.
        """
        if msg.method != "INVITE" or msg.to_tag is not None:
            return False
        key = self._key(msg)
        return key is not None and key in self._seen

    def passing(self, msg: SipMessage, again: bool, now: float | None = None) -> tuple[str, str] | None:
        """
        C{msg} passes the checks and goes on: remember it if it is a new
        INVITE seen first (C{again}: what L{again} said of it).  One that
        was refused is not remembered, so its retransmission is refused
        alike.

        @return: the INVITE's name here, for L{media} (C{None}: no new
            INVITE); take it before the message is changed.
        """
        if msg.method != "INVITE" or msg.to_tag is not None:
            return None
        key = self._key(msg)
        if key is None:
            return None
        if now is not None:
            self._passed_at[key] = now
        if again:
            return key
        self._seen[key] = None
        self._trim()
        return key

    def shed(self, msg: SipMessage) -> None:
        """
        C{msg}, a new request, was refused as overloaded (L{shed}): its
        retransmissions are refused alike (L{was_shed}), even once the
        overload is over.
        """
        key = self._key(msg)
        if key is None:
            return
        shed = self._shed
        shed[key] = None
        if len(shed) > self.limit:
            del shed[next(iter(shed))]

    def was_shed(self, msg: SipMessage) -> bool:
        """
        Whether C{msg} is a copy of a new request refused as overloaded.
        """
        if not self._shed:
            return False
        key = self._key(msg)
        return key is not None and key in self._shed

    def _trim(self) -> None:
        """
        Forget the oldest INVITEs past C{limit} of them or C{max_bytes} of
        bodies.
        """
        seen = self._seen
        while len(seen) > self.limit or self._bytes > self.max_bytes:
            key = next(iter(seen))
            body = seen.pop(key)
            self._accepted.discard(key)
            self._passed_at.pop(key, None)
            if body is not None:
                self._bytes -= len(body)

    def accepted(self, response: SipMessage) -> None:
        """
        A 2xx to an INVITE passes back, its top C{Via} (the proxy's own
        taken off) the one its INVITE came in with: retransmissions of that
        INVITE are dropped from now on (L{redundant}).
        """
        key = self._key(response)
        if key is not None and key in self._seen:
            self._accepted.add(key)

    def redundant(self, msg: SipMessage, now: float) -> str | None:
        """
        Whether to drop C{msg}, a retransmission (L{again} said so): the
        reason when a 2xx has answered its INVITE, or when it comes within
        L{BUNCHED} of the last copy passed on; else C{None}.
        """
        key = self._key(msg)
        if key in self._accepted:
            return RETRANSMITTED_ANSWERED
        last = self._passed_at.get(key) if key is not None else None
        if last is not None and 0 <= now - last < BUNCHED:
            return RETRANSMITTED_BUNCHED
        return None

    def media(
        self,
        invite: tuple[str, str] | None,
        again: bool,
        hook: MediaHook | None,
        tunnel_key: TunnelKey,
        fid: int,
        msg: SipMessage,
        into: bool,
    ) -> None:
        """
        Show a request that crosses the tunnel to the media hook
        (L{show_media}) and remember the body a new INVITE goes on with
        when the relay rewrote it; a retransmission (C{again}) is not
        shown, it takes that body.

        @param invite: what L{passing} returned.
        """
        if again:
            body = self._seen.get(invite) if invite is not None else None
            if body is not None and body != msg.body:
                msg.set_body(body)
            return
        if into:
            # the body goes on as it came: a retransmission's is the same
            show_media(hook, tunnel_key, fid, msg, into)
            return
        body = msg.body
        show_media(hook, tunnel_key, fid, msg, into)
        if invite is not None and msg.body is not body and invite in self._seen:
            old = self._seen[invite]
            self._seen[invite] = msg.body
            self._bytes += len(msg.body) - (len(old) if old is not None else 0)
            self._trim()


def shed(
    msg: SipMessage, overloaded: bool, invites: RecentInvites, counters: Counters
) -> tuple[bytes | None, Dropped] | None:
    """
    What a half does with a request that came while its SIP input is
    overloaded (C{overloaded}: the request waited for its turn in the
    runner's queue for L{spwm.sip.transport.OVERLOAD_AFTER} or longer,
    the messages before it late for L{spwm.sip.transport.OVERLOAD_HOLD}): a
    new request (L{starts_work}) is answered C{503} with C{Retry-After} at
    once, for some 50 microseconds of work, instead of being passed on to
    cost both halves a call's work each; dialogs, ACKs and CANCELs go on,
    so the calls already set up end well.  Without it, an overload
    snowballs: requests wait past their senders' retransmission timers
    (T1, 0.5 s), every copy adds work, and calls already admitted fail.

    A retransmission of an INVITE passed on before the overload is
    dropped (its original is on its way; RFC 3261 lets a proxy drop it,
    not answer it differently); a copy of a request refused here is
    refused again even after the overload (remembered by
    L{RecentInvites.shed}): passed on later, it would start a call that
    its caller, answered 503, no longer waits for.

    @return: C{None}: handle C{msg} as usual; otherwise the answer to
        send back (C{None}: nothing) and the counting action.
    """
    if not overloaded and not invites.was_shed(msg):
        return None
    if not starts_work(msg):
        return None
    if invites.again(msg):
        return None, counters.drop(RETRANSMITTED_OVERLOADED, RETRANSMITTED_OVERLOADED)
    invites.shed(msg)
    return unavailable(msg, "overloaded"), counters.refuse(OVERLOADED, OVERLOADED_COUNTER)
