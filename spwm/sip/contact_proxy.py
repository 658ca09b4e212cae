# -*- test-case-name: tests.test_sip_proxy -*-
"""
The operator half of SPWM's split SIP proxy, as a sans-I/O core.

L{ContactSipProxy} adds its C{Via}, C{Record-Route} and C{Path} (or
rewrites C{Contact}) with authenticated flow tokens, sends requests only to
the configured operator proxy (or the embedded registrar), and routes
everything coming back from the operator network to the right tunnel and
application flow.  Its other half is L{spwm.sip.agent_proxy.AgentSipProxy}.

It is a stateless proxy in the RFC 3261 sense (16.11): a transaction's
state lives in the C{Via} branch, which carries the session and flow as a
flow token.  It does no I/O or logging: each method returns a list of
actions (L{spwm.sip.actions}) for the runner
(L{spwm.sip.transport.ContactSipRunner}).

With the embedded registrar, the one request from a tunnel that goes
elsewhere is one inside a dialog with a party on the operator network,
addressed to the remote target that party gave (its C{Contact}, recorded in
the dialog table): it goes to that address, and only when it is the address
the party's message came from (L{ContactSipProxy._dialog_hop}).

With the embedded registrar, a message the contact point sends to its own
address (the registrar's answer, a response whose next C{Via} is ours
again) I{spirals}: it is handled as if it came from the network, in the
same call, by a loop over the actions (no re-entrant call).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator, cast

from attrs import frozen

from spwm.sip.actions import (
    Action,
    Counters,
    MediaHook,
    OperatorProxy,
    RouteRefused,
    ToNetwork,
    ToTunnel,
    TunnelKey,
    leg_ended,
    media_full,
    show_media,
)
from spwm.sip.checks import (
    CONGESTED,
    CONGESTED_COUNTER,
    OPTIONS_ANSWERED,
    RETRANSMITTED_CONGESTED,
    RecentInvites,
    answer_malformed,
    congested_response,
    media_full_response,
    options_answer,
    options_for_hop,
    shed,
    starts_work,
    unavailable,
)
from spwm.sip.byes import (
    BYE_ANSWERED,
    BYE_DROPPED,
    BYE_SENT,
    ByeSender,
    build_bye,
    is_bye_branch,
    remember_answer,
    remember_dialog_request,
    route_toward,
)
from spwm.sip.dialogs import UNACKNOWLEDGED, Dialog, DialogTable, MovedLegs, RemoteTarget
from spwm.sip.ringing import ANSWER, CANCEL, CANCEL_ANSWERED, Pending, Ringing, absorb, ending
from spwm.sip.errors import SipParseError
from spwm.sip.flows import KIND_CONTACT, KIND_ROUTE, KIND_VIA, FlowToken, FlowTokenCodec
from spwm.sip.message import SipMessage, make_response, parse_message
from spwm.sip.names import ProxyNames, normalize_host
from spwm.sip.nexthop import ProxyPool, proxy_text
from spwm.sip.registrations import ContactRegistrations, Registration
from spwm.sip.rewrite import (
    DIALOG_CREATING,
    MAGIC,
    branch_source,
    decrement_max_forwards,
    hostport,
    param,
    short_hash,
    stamp_via,
    strict_route,
    top_route,
    via_destination,
)
from spwm.sip.uri import NameAddr, SipUri, Via, parse_name_addr, parse_uri, parse_via

if TYPE_CHECKING:
    from spwm.sip.registrar import EmbeddedRegistrar

__all__ = ["ContactSipProxy", "DIALOG_DROPPED", "NO_PROXY", "UDP_SIZE_LIMIT", "never_congested", "settle_spirals"]

#: Headers that assert an identity, removed from every request from a
#: tunnel (counted in C{sip.events} as "<header> from tunnel removed"):
#: RFC 3325's P-Asserted-Identity, and Remote-Party-ID
#: (draft-ietf-sip-privacy-04, which Asterisk- and Cisco-style proxies
#: believe with C{screen=yes}).  Both belong to the operator's trust
#: domain, and this contact point asserts nothing.  Remote-Party-ID is
#: removed rather than checked like P-Preferred-Identity because its
#: C{screen} and C{party} parameters claim more than an identity (that it
#: was screened, whose it is); a phone that withholds its number has
#: Privacy (RFC 3323) and an anonymous From, which pass.
ASSERTED_IDENTITY_HEADERS = ("P-Asserted-Identity", "Remote-Party-ID")

#: RFC 3261 18.1.1: a request within 200 bytes of a 1500-byte MTU goes by TCP.
UDP_SIZE_LIMIT = 1300

#: The counter of calls whose dialogs went past a session's
#: C{max_session_dialogs} (the session's oldest call's dialogs forgotten).
DIALOG_DROPPED = "dialogs over the session's limit"

#: Why a new request from a tunnel is answered C{503} while every
#: operator proxy is out (L{ProxyPool.none_answers}): in its reason
#: phrase, and the counter of those requests (C{sip.events}).
NO_PROXY = "no operator proxy answers"

#: Its C{Retry-After} (seconds): about when the next ping may tell a proxy
#: is back.
NO_PROXY_RETRY_AFTER = 10

#: At most this many spirals (messages to our own address) per input; more
#: means a routing loop through ourselves.
MAX_SPIRALS = 32

#: The reason phrase of the C{430} for a C{Route} whose flow token this
#: process cannot authenticate (made under another key, as by a process
#: before a restart without C{--state-file}, or forged), and the counter
#: of those requests (C{sip.events}).
UNKNOWN_TOKEN_REASON = "Flow Failed (flow token unknown to this process; restarted without --state-file?)"
UNKNOWN_TOKEN_430 = "430 for a flow token unknown to this process"

#: The counter (C{sip.events}) of ACKs of our own refusals: taken in
#: silence (RFC 3261 17.1.1.3: the ACK of a non-2xx answer goes to the
#: hop that answered), not logged as drops.
ACK_OF_OUR_REFUSAL = "ACK of our refusal"

#: The counter of in-dialog requests from a tunnel, with the embedded
#: registrar, for a dialog's remote target on the network side that the
#: contact point cannot send to (a host name, or a transport other than UDP
#: and TCP): answered C{404} in the tunnel.
TARGET_UNREACHABLE = "remote target not reachable from here"

#: The methods whose C{Contact} sets or refreshes a dialog's remote target
#: (RFC 3261 12.1.1, 12.2: INVITE; RFC 3311 5.1: UPDATE).
_TARGET_METHODS = ("INVITE", "UPDATE")


def _leg_session(leg: Any) -> Hashable:
    """
    The session of a call leg C{(session, flow, Call-ID)} (L{Ringing}'s
    scope).
    """
    return leg[0]


def never_congested(tunnel_key: TunnelKey) -> bool:
    """
    The default C{congested} input: no tunnel is ever congested.
    """
    return False


def _contact_target(msg: SipMessage) -> str | None:
    """
    @return: the URI of the first C{Contact} of C{msg} (a remote target,
        RFC 3261 12.1), or C{None} when there is none or it does not parse.
    """
    value = msg.get("Contact")
    if value is None:
        return None
    try:
        return str(parse_name_addr(value).uri)
    except SipParseError:
        return None


def _uri_key(uri: SipUri) -> tuple[Any, ...]:
    """
    @return: what two URIs that name the same target have alike (RFC 3261
        19.1.4, in short): scheme, user and password as written, host in
        its compared form, port, parameters with names and values
        lower-cased in any order; headers aside.
    """
    params = frozenset((k.lower(), None if v is None else v.lower()) for k, v in uri.params)
    return (uri.scheme, uri.user, uri.password, normalize_host(uri.host), uri.port, params)


def _same_target(target: str, ruri: str) -> bool:
    """
    @return: whether the Request-URI C{ruri} is the remote target C{target}.
    """
    if target == ruri:
        return True
    try:
        return _uri_key(parse_uri(target)) == _uri_key(parse_uri(ruri))
    except SipParseError:
        return False


@frozen
class _Spiral:
    """
    Internal: a message the contact point sent to its own address, to be
    handled as coming from the network (see L{ContactSipProxy._settle}).
    """

    transport: str
    data: bytes


_Step = Action | _Spiral



def settle_spirals(steps: list[_Step], network: Callable[[_Spiral], list[_Step]], counters: Counters) -> list[Action]:
    """
    Handle the spirals among C{steps}, each as a message from the network
    (C{network} gives its steps) in its place, depth first, with a loop
    instead of recursion; past L{MAX_SPIRALS} spirals in one go, each
    further one is dropped and counted in C{counters}.

    @return: the actions, in the order the spirals' own actions take the
        place of each spiral.
    """
    out: list[Action] = []
    pending: list[Iterator[_Step]] = [iter(steps)]
    spirals = 0
    while pending:
        for step in pending[-1]:
            if not isinstance(step, _Spiral):
                out.append(step)
                continue
            spirals += 1
            if spirals > MAX_SPIRALS:
                reason = "message looped through our own address"
                out.append(counters.drop(reason, reason))
                continue
            pending.append(iter(network(step)))
            break
        else:
            pending.pop()
    return out


class ContactSipProxy:
    """
    The operator half of the split proxy.

    @ivar address: our SIP address C{(host, port)} on the operator side.
    @ivar operator: the operator proxy, or C{None} for the embedded registrar.
    @ivar registrar: the embedded registrar when C{operator} is C{None}.
    @ivar counters: named counts of dropped and refused messages.
    """

    def __init__(
        self,
        address: tuple[str, int],
        secret: bytes,
        *,
        operator: OperatorProxy | None = None,
        proxies: ProxyPool | None = None,
        contact_rewrite: bool = False,
        media_hook: MediaHook | None = None,
        registrar: EmbeddedRegistrar | None = None,
        dialog_lifetime: float = 12 * 3600.0,
        sweep_interval: float = 30.0,
        max_message_size: int = 65535,
        max_pending: int = 4096,
        names: ProxyNames | None = None,
        max_session_dialogs: int = 4096,
        bye_on_loss: bool = True,
    ) -> None:
        """
        @param bye_on_loss: send a BYE of our own to the far party of a
            call whose media is lost (L{leg_lost}).
        @param secret: the per-process flow token key (16 bytes or more).
        @param registrar: the embedded registrar to use when C{operator} is
            C{None}; a fresh L{spwm.sip.registrar.EmbeddedRegistrar} by
            default.
        @param names: the URIs that name this contact point (RFC 3261
            16.4): C{address} and the C{--sip-name}s; C{address} alone by
            default.
        @param proxies: the operator's proxies (several C{--sip-proxy}:
            requests go to the first that answers its C{OPTIONS}); a
            C{ProxyPool} of C{operator} alone by default.
        @param max_session_dialogs: at most this many calls' dialogs are
            kept per session; past it the session's oldest goes (counted as
            L{DIALOG_DROPPED}).  Dialogs whose BYE never came live for
            C{dialog_lifetime}: this bounds what one session piles up.
        """
        self.address = address
        self.names = names if names is not None else ProxyNames([address])
        if proxies is None and operator is not None:
            proxies = ProxyPool([operator], address)
        self.proxies = proxies
        self.media_hook = media_hook
        if proxies is None and registrar is None:
            from spwm.sip.registrar import EmbeddedRegistrar

            registrar = EmbeddedRegistrar()
        self.registrar = registrar
        self.sweep_interval = sweep_interval
        self.max_message_size = max_message_size
        self.counters = Counters()
        self._codec = FlowTokenCodec(secret)
        self._hp = hostport(*address)
        self._tunnels: dict[str, TunnelKey] = {}
        self._sessions: dict[TunnelKey, str] = {}
        self._registrations = ContactRegistrations(
            self._codec,
            self._hp,
            self._is_us,
            contact_rewrite=contact_rewrite,
            max_pending=max_pending,
        )
        # scoped by session: its dialogs go with its tunnel
        self._dialogs = DialogTable(dialog_lifetime, scope_limit=max_session_dialogs)
        self.bye_on_loss = bye_on_loss
        self._byes = ByeSender()
        self._moved = MovedLegs()
        # the new INVITEs passed on lately, either way (their
        # retransmissions pass on too, whatever the tunnel's state)
        self._invites = RecentInvites()
        # those of them not finally answered yet (what a call lost while
        # it rings needs: L{_end_ringing})
        # (its legs are (session, flow, Call-ID): by session for ringing_lost)
        self._ringing = Ringing(scope=_leg_session)
        self._next_sweep: float | None = None

    @property
    def operator(self) -> OperatorProxy | None:
        """
        The operator proxy requests go to now (the first of C{proxies}
        that answers), or C{None} for the embedded registrar.
        """
        return None if self.proxies is None else self.proxies.current

    @property
    def contact_rewrite(self) -> bool:
        """
        Whether contacts are rewritten to flow tokens instead of adding
        C{Path}.
        """
        return self._registrations.contact_rewrite

    @property
    def dialog_lifetime(self) -> float:
        """
        Seconds an established dialog is kept without a request in it.
        """
        return self._dialogs.lifetime

    @property
    def max_pending(self) -> int:
        """
        At most this many REGISTERs wait for their answer.
        """
        return self._registrations.max_pending

    # -- tunnels ------------------------------------------------------------

    def tunnel_attached(self, tunnel_key: TunnelKey, session_id: str) -> None:
        """
        A tunnel with C{session_id} is up (or resumed on a new connection).
        """
        old = self._tunnels.get(session_id)
        if old is not None and old != tunnel_key:
            self._sessions.pop(old, None)
        self._tunnels[session_id] = tunnel_key
        self._sessions[tunnel_key] = session_id

    def tunnel_detached(self, tunnel_key: TunnelKey, keep_registrations: bool = False) -> None:
        """
        A tunnel is gone: forget its session, registrations, dialogs and
        rewritten contacts.  Requests for its flows get C{430} from now on.

        @param keep_registrations: keep the session's registrations and
            rewritten contacts (a dormant session that its agent may still
            resume, see L{spwm.security.resume}); they expire on their own
            or go with L{forget_session}.
        """
        session = self._sessions.pop(tunnel_key, None)
        if session is None:
            return
        if self._tunnels.get(session) == tunnel_key:
            del self._tunnels[session]
        self._dialogs.forget(session)
        self._registrations.drop_pending(session)
        if not keep_registrations:
            self.forget_session(session)

    @property
    def secret(self) -> bytes:
        """
        The flow token key.
        """
        return self._codec.secret

    def export_registrations(self, session_id: str, now: float) -> dict[str, Any]:
        """
        A session's live registrations and rewritten contacts as JSON-ready
        data, with lifetimes relative to C{now} (see L{spwm.state}).
        """
        return self._registrations.export(session_id, now)

    def import_registrations(self, session_id: str, data: Any, now: float) -> int:
        """
        Restore what L{export_registrations} gave, for a session without a
        tunnel (it stays dormant until resumed).

        @return: the number of registrations restored.
        @raise ValueError: C{data} is not what L{export_registrations} makes.
        """
        restored = self._registrations.restore(session_id, data, now)
        if restored:
            self._arm(now)
        return restored

    def forget_session(self, session_id: str) -> None:
        """
        Forget what a session without a tunnel kept: its registrations and
        rewritten contacts.
        """
        if session_id in self._tunnels:
            return
        self._registrations.forget(session_id)

    def status(self) -> dict[str, Any]:
        """
        For the status page: sessions attached, bindings and dialogs now,
        and the drops and refusals so far (by reason or status code).
        """
        out: dict[str, Any] = {
            "sessions": len(self._tunnels),
            "registered_sessions": self._registrations.sessions(),
            "registrations": len(self._registrations),
            "dialogs": len(self._dialogs),
            "events": dict(self.counters),
        }
        pool = self.proxies
        if pool is not None and pool.probing:
            out["proxies"] = {proxy_text(p): up for p, up in pool.answering()}
            out["proxy"] = proxy_text(pool.current)
        return out

    def registrations(self, session_id: str) -> list[Registration]:
        """
        @return: the live bindings registered through C{session_id}.
        """
        return self._registrations.of(session_id)

    def registration_list(self) -> list[dict[str, Any]]:
        """
        @return: every live binding as a plain dict (the status listing).
        """
        return self._registrations.listing()

    def dialogs(self, session_id: str) -> list[Dialog]:
        """
        @return: the established dialogs of C{session_id}.
        """
        return self._dialogs.of(session_id)

    def next_deadline(self) -> float | None:
        """
        @return: when L{handle_timer} should next run, or C{None}.
        """
        ack = self._dialogs.next_ack_deadline
        when = self._next_sweep
        if ack is not None and (when is None or ack < when):
            when = ack
        bye = self._byes.next_deadline()
        if bye is not None and (when is None or bye < when):
            when = bye
        pool = self.proxies
        if pool is not None and pool.interval > 0:
            ping = pool.next_deadline()
            if ping is not None and (when is None or ping < when):
                when = ping
        return when

    def handle_timer(self, now: float) -> list[Action]:
        """
        Expire registrations, dialogs, pending REGISTERs and the embedded
        registrar's bindings.

        @return: a L{BindingChanged} C{"expired"} for each registration
            that expired; the operator's proxies' C{OPTIONS} pings when
            due, and their changes (L{ProxyChanged}).
        """
        events: list[Action] = list(self._registrations.expire(now))
        self._unacknowledged(now)
        self._dialogs.expire(now)
        if self.registrar is not None:
            self.registrar.expire(now)
        busy = self._registrations.busy() or bool(self._dialogs)
        self._next_sweep = now + self.sweep_interval if busy else None
        if self.proxies is not None:
            events.extend(self.proxies.due(now))
        events.extend(self._send_byes(now))
        return events

    def leg_lost(
        self, session_id: str, flow_id: int, call_id: str, reason: str, now: float, tunnels: bool = True
    ) -> tuple[list[Action], list[str]]:
        """
        The media of the call leg of C{session_id}, C{flow_id} and
        C{call_id} is lost (the call record's C{reason}: C{tunnel lost},
        C{media inactivity}): end its dialogs that no BYE is ending yet for
        the far party (the operator side), with a BYE of our own in the
        phone's name (bounded, L{ByeSender}): through the operator's proxy
        with its route set; with the embedded registrar as if it came from
        the network (a party behind another tunnel of ours, by its
        C{Record-Route}), or to the party's recorded remote target.  A far
        party behind a tunnel of ours is not sent one for C{media
        inactivity}: its own agent sees the same silence and ends the
        call for it; nor one at all without C{tunnels} (the contact point
        stops: every tunnel goes, and each agent ends its calls for its
        phones).  The dialogs are forgotten, so none gets a second.

        @return: the actions (the first BYEs), and whom a BYE went to
            (C{"far party"} per dialog), for the call record.
        """
        told = self._end_ringing(session_id, flow_id, call_id, reason, now, tunnels)
        if not self.bye_on_loss:
            self._dialogs.take(session_id, call_id, flow_id)
            return [], told
        pool = self.proxies
        operator = None if pool is None else pool.current
        for d in [d for d in self._dialogs.call(session_id, call_id) if d.flow_id == flow_id]:
            parties = d.parties
            if parties is None or d.ending:
                continue
            # the far party is the one not behind this leg's tunnel
            to_caller = not parties.caller_inside
            route = route_toward(
                parties.record_route, lambda v: self._own_leg_value(v, session_id, flow_id), to_caller
            )
            behind_tunnel = any(self._token_value(v) for v in route)
            if behind_tunnel and (reason != "tunnel lost" or not tunnels):
                continue
            branch = ByeSender.branch()
            if operator is not None:
                transport = operator.transport.lower()
                dest: Any = (transport, (operator.host, operator.port))
            else:
                transport, dest = "udp", None
            via = f"SIP/2.0/{transport.upper()} {self._hp}"
            data = build_bye(call_id, parties, to_caller, route, via, branch, reason)
            if data is None:
                continue
            if dest is None:
                msg = parse_message(data)
                hop = self._dialog_hop(session_id, msg)
                if isinstance(hop, tuple):
                    transport, addr = hop
                    msg.replace_first_value("Via", self._via(transport, branch))
                    data, dest = msg.to_bytes(), (transport, addr)
                elif route:
                    dest = "spiral"  # the registrar's own routing, as from the network
                else:
                    continue
            if self._byes.add(dest, data, branch, reliable=dest != "spiral" and dest[0] != "udp"):
                self.counters.count(BYE_SENT)
                told.append("far party")
            else:
                self.counters.count(BYE_DROPPED)
        self._dialogs.take(session_id, call_id, flow_id)
        return self._send_byes(now), told

    def ringing_lost(self, session_id: str, now: float, tunnels: bool = True) -> list[Action]:
        """
        The session is lost for good: the calls of its that still ring and
        that L{leg_lost} was not told of (no media stream: an INVITE
        without SDP) end as theirs do (L{_end_ringing}).

        @return: the actions (the first of what is sent).
        """
        if not self.bye_on_loss:
            return []
        for leg in self._ringing.legs_of(session_id):
            _, flow_id, call_id = cast("tuple[str, int, str]", leg)
            self._end_ringing(session_id, flow_id, call_id, "tunnel lost", now, tunnels)
        return self._send_byes(now)

    def _end_ringing(
        self, session_id: str, flow_id: int, call_id: str, reason: str, now: float, tunnels: bool
    ) -> list[str]:
        """
        A call leg lost with its tunnel while it rings (its INVITE passed
        on, no final response yet): a caller on this side gets a final
        response of ours (L{build_final}) where a response to its INVITE
        goes (its top C{Via} after ours: through the operator's proxy, or
        a spiral into the caller's tunnel with the embedded registrar); a
        callee on this side a CANCEL (L{build_cancel}) where the INVITE
        went (the operator's proxy, or the embedded registrar's routing).
        Sent and retransmitted as the BYEs are (L{ByeSender}, keyed by
        the branch a response to them has on top); without C{tunnels}
        (the contact point stops) none goes into a tunnel.

        @return: whom, for the call record: C{"far party (480)"} or
            C{"far party (CANCEL)"}.
        """
        entry = self._ringing.take((session_id, flow_id, call_id), now)
        if entry is None or not self.bye_on_loss or reason != "tunnel lost":
            return []
        response, data, counter, what = ending(entry, reason)
        if response is None:
            dest: Any = entry.dest
            branch = entry.key[1]
            reliable = dest == "registrar" or dest[0] != "udp"
        else:
            top = response.top_via
            assert top is not None  # (one below ours, or it came in without)
            transport, addr = via_destination(top)
            dest = "spiral" if self._is_our_addr(addr) else (transport, addr)
            branch = top.branch or ""
            reliable = dest == "spiral" or transport != "udp"
        if dest in ("spiral", "registrar") and not tunnels:
            return []
        if not self._byes.add(dest, data, branch, reliable):
            self.counters.count(BYE_DROPPED)
            return []
        self._ringing.sent(entry, branch, now)
        self.counters.count(counter)
        return [f"far party ({what})"]

    def _cancelled_response(self, entry: Pending, msg: SipMessage, now: float) -> list[_Step]:
        """
        A response to an INVITE we CANCELled, or to our CANCEL: ours alone
        (L{absorb}); the ACK of a 487, or of a 2xx that crossed the CANCEL
        (and its BYE), go where the INVITE went.
        """
        dest: Any = entry.dest
        session, fid, _ = cast("tuple[str, int, str]", entry.leg)
        ack, answered, bye = absorb(
            entry,
            msg,
            self._byes,
            lambda v: self._own_leg_value(v, session, fid),
            f"SIP/2.0/{'UDP' if dest == 'registrar' else dest[0].upper()} {self._hp}",
            dest,
            dest == "registrar" or dest[0] != "udp",
        )
        if answered:
            self.counters.count(CANCEL_ANSWERED)
        if bye:
            self.counters.count(BYE_SENT)
        return ([] if ack is None else self._to_dest(dest, ack, now)) + self._bye_steps(now)

    def _to_dest(self, dest: Any, data: bytes, now: float) -> list[_Step]:
        """
        The steps that send C{data}, a message of our own, to C{dest}: a
        C{(transport, addr)}, C{"spiral"} (as from the network) or
        C{"registrar"} (a request the embedded registrar routes, as one
        from a tunnel).
        """
        if dest == "spiral":
            return [_Spiral("udp", data)]
        if dest == "registrar":
            if self.registrar is None:
                return []
            replies = self.registrar.handle_request(parse_message(data), now)
            return [_Spiral("udp", reply.to_bytes()) for reply in replies]
        transport, addr = cast("tuple[str, tuple[str, int]]", dest)
        return [ToNetwork(transport, addr, data)]

    def _acked(self, msg: SipMessage, key: tuple[str, str], now: float) -> bool:
        """
        Whether C{msg}, an ACK, is that of our own final response
        (L{_end_ringing}; C{key}: its Call-ID and the branch its response
        has on top): it ends that response's retransmissions, and goes no
        further.
        """
        if not self._ringing.acked(key, now):
            return False
        self._byes.answered(key[1], 200)
        return True

    def byes_unsent(self) -> int:
        """
        @return: the BYEs of our own still waiting to be sent a first time
            (the contact point's stop keeps its SIP socket open for them,
            L{spwm.tap.parts.until}).
        """
        return self._byes.unsent()

    def _send_byes(self, now: float) -> list[Action]:
        return self._settle(self._bye_steps(now), now, never_congested)

    def _bye_steps(self, now: float) -> list[_Step]:
        steps: list[_Step] = []
        for dest, data in self._byes.due(now):
            steps.extend(self._to_dest(dest, data, now))
        return steps

    def _token_value(self, value: str) -> FlowToken | None:
        """
        @return: the flow token of a C{Record-Route} value of ours, or
            C{None}.
        """
        try:
            uri = parse_name_addr(value).uri
        except SipParseError:
            return None
        if not uri.user or not self._is_us(uri):
            return None
        return self._codec.decode(uri.user, KIND_ROUTE)

    def _own_leg_value(self, value: str, session_id: str, flow_id: int) -> bool:
        """
        Whether a C{Record-Route} value is this leg's own: ours, with the
        leg's flow token or none (a call between two tunnels of ours has
        one of ours for each leg: the other leg's is on the far party's
        route).
        """
        try:
            uri = parse_name_addr(value).uri
        except SipParseError:
            return False
        if not self._is_us(uri):
            return False
        tok = self._token_value(value)
        return tok is None or (tok.session_id == session_id and tok.flow_id == flow_id)

    def _malformed(
        self, data: bytes, e: SipParseError, origin: str, reply: Callable[[bytes], Action]
    ) -> list[Action]:
        """
        A message from C{origin} (C{"tunnel"} or C{"network"}) that does not
        parse: counted, and answered statelessly with C{reply} when it is a
        request that can be answered.
        """
        reason = "malformed message from " + origin
        drop = self.counters.drop(reason + ": " + e.reason, reason)
        return answer_malformed(data, e.status, e.reason, drop, reply)

    # -- messages from the tunnel ------------------------------------------

    def from_tunnel(
        self,
        tunnel_key: TunnelKey,
        session_id: str,
        flow_id: int,
        data: bytes,
        now: float,
        *,
        congested: Callable[[TunnelKey], bool] = never_congested,
        overloaded: bool = False,
        parsed: SipMessage | None = None,
    ) -> list[Action]:
        """
        A SIP message from the agent behind C{tunnel_key}, for its flow
        C{flow_id}.

        @param congested: whether a tunnel's signalling backlog is over
            its high-water mark (a new request for it is then refused
            with C{503}); asked only of the tunnel a request from the
            network goes to (with the embedded registrar, a request from
            one tunnel comes back from the network for another).
        @param overloaded: whether this half's SIP input is overloaded:
            new requests are then refused with C{503} (L{shed}).
        @param parsed: C{data} parsed already, with this core's limits (by
            L{spwm.sip.authz.AuthorizingContactProxy}, whose checks read it).
        """
        if (
            not 0 <= flow_id < 2**32
            or len(session_id.encode("utf-8", "surrogateescape")) > 64
        ):
            reason = "flow id or session id out of range"
            return [self.counters.drop(reason, reason)]
        if self._tunnels.get(session_id) != tunnel_key:
            self.tunnel_attached(tunnel_key, session_id)
        if parsed is not None:
            msg = parsed
        else:
            try:
                msg = parse_message(data, max_size=self.max_message_size)
            except SipParseError as e:
                return self._malformed(
                    data, e, "tunnel", lambda resp: ToTunnel(tunnel_key, flow_id, resp)
                )
        if msg.is_request:
            steps = self._tunnel_request(tunnel_key, session_id, flow_id, msg, now, overloaded)
        else:
            steps = self._tunnel_response(tunnel_key, session_id, msg, now)
        return self._settle(steps, now, congested)

    def _tunnel_request(
        self, key: TunnelKey, session: str, fid: int, msg: SipMessage, now: float, overloaded: bool = False
    ) -> list[_Step]:
        # (parse_message checked the headers a proxy relies on)
        mf = msg.max_forwards
        if mf is not None and mf <= 0:
            # the agent decrements; this only guards against a broken one
            if msg.method == "ACK":
                reason = "ACK from tunnel with Max-Forwards 0"
                return [self.counters.drop(reason, reason)]
            resp = make_response(msg, 483, "Too Many Hops")
            return [ToTunnel(key, fid, resp.to_bytes())]
        pool = self.proxies
        if (
            pool is not None
            and msg.to_tag is None
            and pool.none_answers
            and msg.method not in ("ACK", "CANCEL")
        ):
            # every operator proxy is known to be out: say so now rather
            # than let the phone wait for its transaction's timeout
            return [
                ToTunnel(key, fid, unavailable(msg, NO_PROXY, NO_PROXY_RETRY_AFTER)),
                self.counters.refuse(f"{NO_PROXY}: new request refused with 503", NO_PROXY),
            ]
        again = self._invites.again(msg)
        if again:
            redundant = self._invites.redundant(msg, now)
            if redundant is not None:
                return [self.counters.drop(redundant, redundant)]
        refused = shed(msg, overloaded, self._invites, self.counters)
        if refused is not None:
            answer, counted = refused
            return [counted] if answer is None else [ToTunnel(key, fid, answer), counted]
        full = None if again else media_full(self.media_hook, msg, key)
        if full is not None:
            return [
                ToTunnel(key, fid, media_full_response(msg, full)),
                self.counters.refuse(full.reason, full.counter),
            ]
        invite = self._invites.passing(msg, again, now)
        if self._route_token(msg.uri) is not None:
            strict_route(msg)
        self._pop_own_routes(msg, token=True)
        self._strip_asserted(msg)
        method = msg.method
        call_id = msg.call_id
        extra = short_hash(branch_source(msg)) + short_hash(msg.uri or "", 2)
        branch = MAGIC + self._codec.encode(KIND_VIA, session, fid, extra)
        if self._ringing.answered and method == "ACK" and self._acked(msg, (call_id, branch), now):
            return []
        if method in DIALOG_CREATING and msg.to_tag is None:
            msg.prepend_header("Record-Route", self._route_uri(session, fid))
        if method == "REGISTER":
            self._registrations.outgoing(
                msg, session, fid, branch, self._route_uri(session, fid), now
            )
        # inside a dialog, the leg is the flow it was set up on, also when
        # the phone now sends over another transport (DialogTable.flow_of)
        leg = self._moved.request(self._dialogs, msg, fid, (session, fid), session)
        remember_dialog_request(self._dialogs, session, msg, True)
        self._invites.media(invite, again, self.media_hook, key, leg, msg, False)
        self._maybe_ended(key, session, leg, msg)
        self._dialogs.touch(session, call_id, now)
        if method == "BYE":
            self._dialogs.ending(session, call_id, msg.from_tag, msg.to_tag, now)
        operator = self.operator
        hop = None
        if operator is not None:
            transport = operator.transport.lower()
            dest = (operator.host, operator.port)
        else:
            hop = self._dialog_hop(session, msg)
            if isinstance(hop, str):
                self._arm(now)
                if method == "ACK":
                    return [self.counters.drop(f"ACK to {msg.uri}: {hop}", TARGET_UNREACHABLE)]
                return [
                    ToTunnel(key, fid, make_response(msg, 404, "Not Found: " + hop).to_bytes()),
                    self.counters.refuse(f"{method} to {msg.uri} answered 404: {hop}", TARGET_UNREACHABLE),
                ]
            transport, dest = hop or ("udp", self.address)
        msg.prepend_header("Via", self._via(transport, branch))
        data = msg.to_bytes()
        if transport == "udp" and len(data) > UDP_SIZE_LIMIT:
            transport = "tcp"
            msg.replace_first_value("Via", self._via(transport, branch))
            data = msg.to_bytes()
        steps: list[_Step] = []
        if method == "CANCEL" and operator is not None:
            transport, dest, data, steps = self._cancel_way(msg, (call_id, branch), transport, dest, data)
        self._arm(now)
        if invite is not None:
            if not again:
                where = (transport, dest) if operator is not None else "registrar"
                self._ringing.passed((call_id, branch), CANCEL, (session, leg, call_id), msg, where, True, now)
        elif method == "CANCEL":
            self._ringing.finished((call_id, branch))
        if self.registrar is not None and operator is None and hop is None:
            # the embedded registrar answers at once, as from the network
            return [_Spiral("udp", reply.to_bytes()) for reply in self.registrar.handle_request(msg, now)]
        return [ToNetwork(transport, dest, data), *steps]

    def _cancel_way(
        self, msg: SipMessage, key: tuple[str, str], transport: str, dest: tuple[str, int], data: bytes
    ) -> tuple[str, tuple[str, int], bytes, list[_Step]]:
        """
        A CANCEL from a tunnel to the operator's proxy goes where its
        INVITE went and by the same transport (RFC 3261 9.1), its top
        C{Via} saying so: the proxy matches it to the INVITE by that
        C{Via}, its transport included (Kamailio's C{t_check_trans}; one
        not matched is dropped).  The INVITE's size chose the transport
        (over L{UDP_SIZE_LIMIT}, TCP: 18.1.1), so the CANCEL's own cannot:
        while the INVITE is in the ringing table, its transport and
        proxy; else (it passed a process before this one, which died:
        the agent's CANCEL after a crash; or it is forgotten) both ways,
        over UDP and over TCP: the proxy takes the one that matches and
        drops (or answers 481 to) the other.

        @param transport: C{msg}'s transport as chosen for itself (its
            C{Via} on top says it), C{dest} and C{data} its destination
            and bytes.
        @return: the transport, destination and bytes to send, and a
            further step (the TCP copy).
        """
        went = self._ringing.dest_of(key)
        if isinstance(went, tuple):
            transport_went, dest_went = cast("tuple[str, tuple[str, int]]", went)
            if (transport_went, dest_went) != (transport, dest):
                msg.replace_first_value("Via", self._via(transport_went, key[1]))
                return transport_went, dest_went, msg.to_bytes(), []
            return transport, dest, data, []
        if transport != "udp":
            return transport, dest, data, []
        msg.replace_first_value("Via", self._via("tcp", key[1]))
        return transport, dest, data, [ToNetwork("tcp", dest, msg.to_bytes())]

    def _dialog_hop(self, session: str, msg: SipMessage) -> tuple[str, tuple[str, int]] | str | None:
        """
        Where a request from a tunnel goes, with the embedded registrar,
        when it is inside a dialog of C{session} with a party on the
        network side and its Request-URI is that party's remote target as
        recorded (L{DialogTable.target}), with no C{Route} left: the
        target's IP address and port, over UDP (or TCP by its C{transport}
        parameter).  The registrar would look the Request-URI up as an
        address-of-record.  Only a recorded target is sent to, and only
        when its host is the IP address the message that set it came
        from: neither a tunnel nor a party on the network side can make
        the contact point send requests anywhere else.

        @return: C{(transport, (host, port))}; C{None} when the request is
            not such a request (the registrar takes it); the reason why
            the target cannot be sent to from here.
        """
        if self.registrar is None or msg.to_tag is None or msg.has("Route"):
            return None
        target = self._dialogs.target(session, msg.call_id, msg.from_tag, msg.to_tag)
        if target is None or not _same_target(target.uri, msg.uri or ""):
            return None
        uri = parse_uri(target.uri)
        transport = (uri.param("transport") or "udp").lower()
        if uri.scheme != "sip" or transport not in ("udp", "tcp"):
            return f"remote target {target.uri} needs a transport other than UDP and TCP"
        try:
            host = str(ipaddress.ip_address(uri.host))
        except ValueError:
            return f"remote target {target.uri} is not an IP address"
        dest = (host, uri.port or 5060)
        if self._is_our_addr(dest):
            return None  # ourselves: the registrar's spiral routes it
        if normalize_host(host) != target.source:
            # a party may name only itself: else any host on the network
            # side could have the contact point send SIP (or open TCP) to
            # a third host or to its own loopback services
            return f"remote target {target.uri} is not the caller's address {target.source} (its message came from there)"
        return transport, dest

    def _remember_target(self, session: str, msg: SipMessage, src: tuple[str, int]) -> None:
        """
        Record the remote target that a message from a party on the network
        side (not a spiral) names in its C{Contact}, with C{src}, where the
        message came from: the target of the dialogs its INVITE makes, or
        a target refresh of an established dialog.  Only with the embedded
        registrar (L{_dialog_hop}).
        """
        method = msg.method or msg.cseq[1]
        if self.registrar is None or self.proxies is not None or method not in _TARGET_METHODS:
            return
        uri = _contact_target(msg)
        if uri is None:
            return
        target = RemoteTarget(uri, normalize_host(src[0]))
        if msg.to_tag is None:
            if method == "INVITE":
                self._dialogs.offered(session, msg.call_id, msg.from_tag, target)
        else:
            self._dialogs.retarget(session, msg.call_id, msg.from_tag, msg.to_tag, target)

    def _tunnel_response(
        self, key: TunnelKey, session: str, msg: SipMessage, now: float
    ) -> list[_Step]:
        top = msg.top_via
        tok = self._via_token(top)
        if top is None or tok is None or tok.session_id != session:
            reason = "response from tunnel without our Via"
            return [self.counters.drop(reason, reason)]
        if msg.cseq[1] == "INVITE":
            self._ringing.response((msg.call_id, top.branch or ""), msg.status or 0, msg, now)
        msg.pop_first_value("Via")
        nxt = msg.top_via
        if nxt is None:
            reason = "response from tunnel with only our Via"
            return [self.counters.drop(reason, reason)]
        transport, dest = via_destination(nxt)
        # (an answering phone's, as a connected party's identity, too)
        self._strip_asserted(msg)
        self._track_response(key, tok.session_id, tok.flow_id, msg, now)
        show_media(self.media_hook, key, tok.flow_id, msg, False)
        return self._send_response(transport, dest, msg.to_bytes())

    def _strip_asserted(self, msg: SipMessage) -> None:
        """
        Remove the asserted identities of a message from a tunnel.
        """
        for asserted in ASSERTED_IDENTITY_HEADERS:
            if msg.has(asserted):
                # RFC 3325 5: an identity only the operator's network may
                # assert; a phone's (or anyone's through an agent) would be
                # believed by a proxy that trusts this contact point
                msg.remove_header(asserted)
                self.counters.count(f"{asserted} from tunnel removed")

    # -- messages from the operator network --------------------------------

    def fails_over(self, tunnel_key: TunnelKey, flow_id: int, data: bytes) -> bool:
        """
        Whether L{undeliverable} answers this message C{430 Flow Failed}
        (a new request for a flow registered with RFC 5626 C{reg-id}: the
        registrar has the phone's other flow) rather than dropping it.
        """
        return self._fails_over(tunnel_key, flow_id, data) is not None

    def _fails_over(self, tunnel_key: TunnelKey, flow_id: int, data: bytes) -> SipMessage | None:
        try:
            msg = parse_message(data, max_size=self.max_message_size + 4096)
        except SipParseError:
            return None
        session = self._sessions.get(tunnel_key)
        if (
            not msg.is_request
            or msg.method in ("ACK", "CANCEL")
            or msg.to_tag is not None
            or msg.count("Via") < 2
            or session is None
            or not self._registrations.outbound_flow(session, flow_id)
        ):
            return None
        return msg

    def undeliverable(self, tunnel_key: TunnelKey, flow_id: int, data: bytes, now: float) -> list[Action]:
        """
        A message this core sent into a tunnel (C{ToTunnel}) could not be
        sent: the tunnel is not open (its session waits for the agent to
        resume it).  A request that starts a dialog or stands alone, for a
        flow registered with RFC 5626 C{reg-id}, is answered C{430 Flow
        Failed} to the previous hop (RFC 5626 5.3: the registrar then tries
        the phone's other flow).  Anything else is dropped and counted: the
        sender retransmits, and a retransmission after the resumption gets
        through.
        """
        msg = self._fails_over(tunnel_key, flow_id, data)
        if msg is None:
            reason = "message for a tunnel that is not open"
            return [self.counters.drop(reason, reason)]
        msg.pop_first_value("Via")  # ours
        self.counters.count("430 for a tunnel that is not open")
        return self._settle(self._refuse(msg, 430, "Flow Failed"), now, never_congested)

    def from_network(
        self,
        transport: str,
        src: tuple[str, int],
        data: bytes,
        now: float,
        *,
        congested: Callable[[TunnelKey], bool] = never_congested,
        overloaded: bool = False,
    ) -> list[Action]:
        """
        A SIP message from the operator network, received on C{transport}
        from C{src}.

        @param congested: whether a tunnel's signalling backlog is over
            its high-water mark: a new request for it is then refused with
            C{503}.
        @param overloaded: whether this half's SIP input is overloaded:
            new requests are then refused with C{503} (L{shed}); not the
            spirals of messages already taken in.
        """
        return self._settle(self._network(transport, src, data, now, congested, overloaded), now, congested)

    def _settle(
        self, steps: list[_Step], now: float, congested: Callable[[TunnelKey], bool]
    ) -> list[Action]:
        """
        Handle the spirals among C{steps} as messages from the network
        (L{settle_spirals}).
        """
        for step in steps:
            match step:
                case _Spiral():
                    break
        else:
            return steps  # type: ignore[return-value]  # no spiral: all actions
        return settle_spirals(
            steps,
            lambda spiral: self._network(spiral.transport, self.address, spiral.data, now, congested),
            self.counters,
        )

    def _network(
        self,
        transport: str,
        src: tuple[str, int],
        data: bytes,
        now: float,
        congested: Callable[[TunnelKey], bool],
        overloaded: bool = False,
    ) -> list[_Step]:
        if not data.strip(b"\r\n\t "):
            return []
        try:
            msg = parse_message(data, max_size=self.max_message_size)
        except SipParseError as e:
            return list(
                self._malformed(data, e, "network", lambda resp: ToNetwork(transport, src, resp))
            )
        if msg.is_request:
            return self._network_request(transport, src, msg, now, congested, overloaded)
        return self._network_response(src, msg, now)

    def _network_response(self, src: tuple[str, int], msg: SipMessage, now: float) -> list[_Step]:
        top = msg.top_via
        pool = self.proxies
        if top is not None:
            present, branch = param(top.params, "branch")
        if pool is not None and pool.probing and top is not None:
            if ProxyPool.ours(branch):
                # a response to our OPTIONS ping of a proxy
                return list(pool.answered(msg, branch or ""))
        if top is not None:
            if is_bye_branch(branch):
                # the answer to a BYE of our own: for us alone
                status = msg.status or 0
                if self._byes.answered(branch or "", status) and status >= 200:
                    self.counters.count(BYE_ANSWERED)
                return []
            if self._ringing.cancelled:
                entry = self._ringing.cancelled_invite((msg.call_id, branch or ""), now)
                if entry is not None:
                    return self._cancelled_response(entry, msg, now)
        tok = self._via_token(top)
        if top is None or tok is None:
            reason = "response from network with unknown or forged Via"
            return [self.counters.drop(reason, reason)]
        key = self._tunnels.get(tok.session_id)
        if key is None:
            reason = "response for a gone session"
            return [self.counters.drop(reason, reason)]
        msg.pop_first_value("Via")
        if not msg.has("Via"):
            reason = "response from network with only our Via"
            return [self.counters.drop(reason, reason)]
        method = msg.cseq[1]
        status = msg.status or 0
        events: list[Action] = []
        if method == "REGISTER" and 200 <= status < 300:
            answered = self._registrations.answered(msg, tok, branch or "", now)
            if answered is not None:
                events = answered
                self._arm(now)
        fid = tok.flow_id
        leg = self._moved.leg(msg.call_id, msg.cseq[0], (tok.session_id, fid), fid, status >= 200)
        self._track_response(key, tok.session_id, leg, msg, now)
        if status >= 200 and method == "INVITE":
            self._ringing.finished((msg.call_id, branch or ""))
        if 200 <= status < 300 and msg.to_tag is not None and not self._is_our_addr(src):
            # the network side's 2xx to a target refresh from the tunnel
            self._remember_target(tok.session_id, msg, src)
        show_media(self.media_hook, key, leg, msg, True)
        return [ToTunnel(key, fid, msg.to_bytes()), *events]

    def _network_request(
        self,
        transport: str,
        src: tuple[str, int],
        msg: SipMessage,
        now: float,
        congested: Callable[[TunnelKey], bool],
        overloaded: bool = False,
    ) -> list[_Step]:
        # (parse_message checked the headers a proxy relies on)
        if self._ringing.answered and msg.method == "ACK":
            top = msg.top_via
            if top is not None and self._acked(msg, (msg.call_id, top.branch or ""), now):
                return []
        stamp_via(msg, src, always_rport=transport != "udp")
        mf = msg.max_forwards
        if msg.method == "OPTIONS" and self._options_for_us(msg, mf):
            # an operator's proxy (or phone) asking whether we are there
            self.counters.count(OPTIONS_ANSWERED)
            top_via = msg.top_via
            assert top_via is not None
            via_transport, dest = via_destination(top_via)
            return self._send_response(via_transport, dest, options_answer(msg))
        refused = shed(msg, overloaded, self._invites, self.counters)
        if refused is not None:
            answer, counted = refused
            if answer is None:
                return [counted]
            top_via = msg.top_via
            assert top_via is not None
            via_transport, dest = via_destination(top_via)
            return self._send_response(via_transport, dest, answer) + [counted]
        if mf is not None and mf <= 0:
            return self._refuse(msg, 483, "Too Many Hops")
        decrement_max_forwards(msg, mf)
        return self._route_in(transport, src, msg, now, True, congested)

    def _route_in(
        self,
        transport: str,
        src: tuple[str, int],
        msg: SipMessage,
        now: float,
        lookup: bool,
        congested: Callable[[TunnelKey], bool],
    ) -> list[_Step]:
        """
        Route a checked request from the network to the tunnel and flow its
        token names (top Route, or Request-URI with C{contact_rewrite}).

        @param lookup: whether a request without a token may be looked up
            in the embedded registrar.
        """
        tok = self._route_token(msg.uri)
        if tok is not None and strict_route(msg):
            pass  # strict routing: the flow is the one in the Request-URI
        elif (top := self._pop_own_routes(msg, token=False)) is not None:
            if not self._is_us(top.uri):
                where = f" to {top.uri.host_port}" if top.uri.host else ""
                out = self._refuse(msg, 403, "Forbidden: not relaying" + where)
                if top.uri.host:
                    route = msg.get_all("Route")[0].strip()
                    out.append(RouteRefused(route, top.uri.host, top.uri.port, msg.method or ""))
                return out
            tok = self._codec.decode(top.uri.user, KIND_ROUTE)
            if tok is None:
                # RFC 5626 5.3 has an edge proxy answer 403 for a token
                # that was tampered with and 430 for a flow that no longer
                # exists.  A token made under another key (this process
                # started without --state-file after the one that made
                # it) cannot be told from a forged one, and either way
                # the flow it names does not exist here and nothing is
                # forwarded; 430, unlike 403, makes an outbound
                # registrar try the phone's other flow (through the other
                # contact point), so a restart does not cut the phone off
                self.counters.count(UNKNOWN_TOKEN_430)
                return self._refuse(msg, 430, UNKNOWN_TOKEN_REASON)
            msg.pop_first_value("Route")
        else:
            tok = None
            try:
                ruri = parse_uri(msg.uri or "")
            except SipParseError:
                return self._refuse(msg, 400, "Bad Request: malformed Request-URI")
            if self._is_us(ruri) and ruri.user:
                tok = self._codec.decode(ruri.user, KIND_CONTACT) or self._codec.decode(
                    ruri.user, KIND_ROUTE
                )
            if tok is None:
                if lookup:
                    return self._not_ours(transport, src, msg, now, congested)
                return self._refuse(msg, 404, "Not Found")
            if tok.kind == KIND_CONTACT:
                original = self._registrations.rewritten(tok.session_id, tok.flow_id, tok.extra)
                if original is not None:
                    msg.uri = original
        key = self._tunnels.get(tok.session_id)
        if key is None:
            if self.operator is None and self.registrar is not None and (not lookup or self._is_our_addr(src)):
                # the embedded registrar's own lookup (or its spiral): it
                # is the proxy that has no other flow to try, and the
                # caller gets what RFC 5626 5.3 has such a proxy answer,
                # not the 430 meant for it
                return self._refuse(msg, 480, "Temporarily Unavailable")
            return self._refuse(msg, 430, "Flow Failed")
        again = self._invites.again(msg)
        if again:
            redundant = self._invites.redundant(msg, now)
            if redundant is not None:
                return [self.counters.drop(redundant, redundant)]
        if starts_work(msg) and congested(key):
            if again:
                reason = RETRANSMITTED_CONGESTED
                return [self.counters.drop(reason, reason)]
            top_via = msg.top_via
            assert top_via is not None
            via_transport, dest = via_destination(top_via)
            resp = congested_response(msg)
            return self._send_response(via_transport, dest, resp) + [
                self.counters.refuse(CONGESTED, CONGESTED_COUNTER)
            ]
        full = None if again else media_full(self.media_hook, msg, key)
        if full is not None:
            top_via = msg.top_via
            assert top_via is not None
            via_transport, dest = via_destination(top_via)
            return self._send_response(via_transport, dest, media_full_response(msg, full)) + [
                self.counters.refuse(full.reason, full.counter)
            ]
        invite = self._invites.passing(msg, again, now)
        ruri_hash = short_hash(msg.uri or "", 2)
        if self._looped(msg, tok.session_id, tok.flow_id, ruri_hash):
            return self._refuse(msg, 482, "Loop Detected")
        method = msg.method
        call_id = msg.call_id
        extra = short_hash(branch_source(msg)) + ruri_hash
        branch = MAGIC + self._codec.encode(
            KIND_VIA, tok.session_id, tok.flow_id, extra
        )
        if method in DIALOG_CREATING and msg.to_tag is None:
            msg.prepend_header(
                "Record-Route", self._route_uri(tok.session_id, tok.flow_id)
            )
        msg.prepend_header("Via", self._via("udp", branch))
        remember_dialog_request(self._dialogs, tok.session_id, msg, False)
        self._invites.media(invite, again, self.media_hook, key, tok.flow_id, msg, True)
        if invite is not None:
            if not again:
                leg = (tok.session_id, tok.flow_id, call_id)
                self._ringing.passed((call_id, branch), ANSWER, leg, msg, None, True, now)
        elif method == "CANCEL":
            self._ringing.finished((call_id, branch))
        self._maybe_ended(key, tok.session_id, tok.flow_id, msg)
        self._dialogs.touch(tok.session_id, call_id, now)
        if method == "BYE":
            self._dialogs.ending(tok.session_id, call_id, msg.from_tag, msg.to_tag, now)
            self._arm(now)
        if not self._is_our_addr(src):
            self._remember_target(tok.session_id, msg, src)
        return [ToTunnel(key, tok.flow_id, msg.to_bytes())]

    def _not_ours(
        self,
        transport: str,
        src: tuple[str, int],
        msg: SipMessage,
        now: float,
        congested: Callable[[TunnelKey], bool],
    ) -> list[_Step]:
        """
        A request from the network that names no flow of ours: with the
        embedded registrar, look its Request-URI up (so an operator-side UA
        can call a registered application by its address-of-record);
        otherwise, or when that finds no route through a tunnel, 404.
        """
        if (
            self.operator is not None
            or self.registrar is None
            or msg.method == "REGISTER"
            or self._is_our_addr(src)
        ):
            return self._refuse(msg, 404, "Not Found")
        out: list[_Step] = []
        for reply in self.registrar.handle_request(msg, now):
            if reply.is_request:
                if not reply.has("Route"):
                    out.extend(self._refuse(msg, 404, "Not Found"))
                else:
                    out.extend(self._route_in(transport, src, reply, now, False, congested))
            else:
                top_via = reply.top_via
                assert top_via is not None  # the registrar answers what had one
                via_transport, dest = via_destination(top_via)
                out.extend(self._send_response(via_transport, dest, reply.to_bytes()))
        return out

    # -- answering -----------------------------------------------------------

    def _refuse(self, msg: SipMessage, status: int, reason: str) -> list[_Step]:
        """
        Answer a request from the network with an error, statelessly; an
        ACK is never answered.  An ACK whose To has no tag is the ACK of
        one of these answers (routed as its INVITE was, it meets the same
        refusal): only such a stateless answer leaves To without a tag (a
        UAS tags every final answer to an INVITE, RFC 3261 8.2.6.2), so it
        is expected and taken in silence; any other is dropped and logged.
        """
        if msg.method == "ACK":
            if msg.to_tag is None:
                self.counters.count(ACK_OF_OUR_REFUSAL)
                return []
            return [self.counters.drop(f"ACK dropped: {status} {reason}", "ACK dropped")]
        self.counters.count(str(status))
        resp = make_response(msg, status, reason)
        top_via = resp.top_via
        assert top_via is not None
        transport, dest = via_destination(top_via)
        return self._send_response(transport, dest, resp.to_bytes())

    def _send_response(
        self, transport: str, dest: tuple[str, int], data: bytes
    ) -> list[_Step]:
        if self._is_our_addr(dest):
            # the next Via is ours again (spiral, embedded registrar)
            return [_Spiral(transport, data)]
        return [ToNetwork(transport, dest, data)]

    # -- dialogs -------------------------------------------------------------

    def _track_response(
        self, key: TunnelKey, session: str, fid: int, msg: SipMessage, now: float
    ) -> None:
        status = msg.status or 0
        num, method = msg.cseq
        call_id = msg.call_id
        if method == "INVITE":
            if 200 <= status < 300:
                self._invites.accepted(msg)
                dialogs = self._dialogs
                dropped = dialogs.dropped
                remember_answer(dialogs, session, fid, msg, now)
                if dialogs.dropped != dropped:
                    self.counters.count(DIALOG_DROPPED)
                self._arm(now)
            elif status >= 300 and not self._dialogs.has(session, call_id):
                leg_ended(self.media_hook, key, fid, call_id, status)
        elif method == "BYE" and (200 <= status < 300 or status in (404, 481)):
            self._dialogs.remove(session, call_id, msg.from_tag, msg.to_tag)

    def _maybe_ended(self, key: TunnelKey, session: str, fid: int, msg: SipMessage) -> None:
        """
        A BYE ends the leg's media only when no other established dialog of
        the leg is left (forking: the BYE to a losing branch keeps the
        winner's media); a CANCEL only before any answer.  An ACK confirms
        its dialog's answer (L{_unacknowledged}).
        """
        method = msg.method
        if method == "BYE":
            if self._dialogs.others(session, msg.call_id, fid, msg.from_tag, msg.to_tag):
                return
        elif method == "ACK":
            self._dialogs.acked(session, msg.call_id, msg.from_tag, msg.to_tag)
            return
        elif method != "CANCEL" or self._dialogs.has(session, msg.call_id, fid):
            return
        leg_ended(self.media_hook, key, fid, msg.call_id)

    def _unacknowledged(self, now: float) -> None:
        """
        A dialog whose answer no ACK confirmed within L{spwm.sip.dialogs.ACK_WAIT} is over
        (its UAS has given up on it): it ends like one a BYE ended, so a
        caller that vanished does not hold relay ports until the media
        timeout.
        """
        for session, d in self._dialogs.unacknowledged(now):
            self.counters.count(UNACKNOWLEDGED)
            key = self._tunnels.get(str(session))
            if key is not None and not self._dialogs.others(
                session, d.call_id, d.flow_id, d.from_tag, d.to_tag
            ):
                leg_ended(self.media_hook, key, d.flow_id, d.call_id, reason=UNACKNOWLEDGED)
            self._dialogs.remove(session, d.call_id, d.from_tag, d.to_tag)

    # -- names and tokens ----------------------------------------------------

    def _arm(self, now: float) -> None:
        if self._next_sweep is None:
            self._next_sweep = now + self.sweep_interval

    def _options_for_us(self, msg: SipMessage, mf: int | None) -> bool:
        """
        Whether an C{OPTIONS} from the network is the contact point's to
        answer (RFC 3261 11, 16.3), as the agent does for its phones: its
        C{Max-Forwards} is 0, or its Request-URI names the contact point
        with no user part (no flow token) and no C{Route} is left once our
        pre-loaded ones are removed (from C{msg}).
        """
        if not options_for_hop(msg, self._is_us):
            return False
        if mf is not None and mf <= 0:
            return True
        return self._pop_own_routes(msg, token=False) is None

    def _is_us(self, uri: SipUri) -> bool:
        return self.names.names_us(uri)

    def _is_our_addr(self, addr: tuple[str, int]) -> bool:
        return addr[0].lower() == self.address[0].lower() and addr[1] == self.address[1]

    def _route_token(self, uri_text: str | None) -> FlowToken | None:
        """
        @return: the flow token of a Request-URI that is one of our
            C{Record-Route} values when the request carries a C{Route}
            (strict routing, RFC 3261 16.4), else C{None}.
        """
        if not uri_text or ";lr" not in uri_text.lower():
            return None
        try:
            uri = parse_uri(uri_text)
        except SipParseError:
            return None
        if not uri.user or not self._is_us(uri):
            return None
        return self._codec.decode(uri.user, KIND_ROUTE)

    def _pop_own_routes(self, msg: SipMessage, token: bool) -> NameAddr | None:
        """
        Remove the top C{Route}s that name us without a flow token (a
        pre-loaded route to the contact point), and with C{token} also the
        first that carries a valid one (our C{Record-Route} on this leg;
        the next one, if ours, is the other leg's and routes back in).

        @return: the top C{Route} left (parsed), or C{None}.
        """
        while True:
            top = top_route(msg)
            if top is None or not self._is_us(top.uri):
                return top
            if top.uri.user:
                if not token or self._codec.decode(top.uri.user, KIND_ROUTE) is None:
                    return top
                token = False
            msg.pop_first_value("Route")

    def _via(self, transport: str, branch: str) -> str:
        return f"SIP/2.0/{transport.upper()} {self._hp};branch={branch}"

    def _route_uri(self, session: str, fid: int) -> str:
        token = self._codec.encode(KIND_ROUTE, session, fid)
        return f"<sip:{token}@{self._hp};lr>"

    def _via_token(self, via: Via | None) -> FlowToken | None:
        if via is None:
            return None
        port = via.port if via.port is not None else 5060
        if via.host.lower() != self.address[0].lower() or port != self.address[1]:
            return None
        present, branch = param(via.params, "branch")
        if not branch or not branch.startswith(MAGIC):
            return None
        return self._codec.decode(branch[len(MAGIC) :], KIND_VIA)

    def _looped(
        self, msg: SipMessage, session: str, fid: int, ruri_hash: bytes
    ) -> bool:
        for value in msg.get_all("Via"):
            try:
                via = parse_via(value)
            except SipParseError:
                continue
            tok = self._via_token(via)
            if (
                tok is not None
                and tok.session_id == session
                and tok.flow_id == fid
                and tok.extra[8:10] == ruri_hash
            ):
                return True
        return False
