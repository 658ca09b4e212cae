# -*- test-case-name: tests.test_sip_proxy -*-
"""
The LAN half of SPWM's split SIP proxy, as a sans-I/O core.

L{AgentSipProxy} numbers application flows, fixes the application's
C{Via} (RFC 3581), checks C{Max-Forwards}, gives registering applications
a stable C{+sip.instance}, and moves messages between the applications and
the tunnel.  Its other half is L{spwm.sip.contact_proxy.ContactSipProxy}.

It is a stateless proxy in the RFC 3261 sense (16.11): a transaction's
state lives in the C{Via} branch, computed from the incoming branch, so
retransmissions, CANCEL and ACK for non-2xx go exactly where the INVITE
went.  It does no I/O or logging: each method returns a list of actions
(L{spwm.sip.actions}) for the runner (L{spwm.sip.transport.AgentSipRunner}).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Hashable, cast

from spwm.sip.actions import (
    Action,
    Counters,
    MediaHook,
    ToApp,
    ToTunnel,
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
from spwm.sip.dialogs import UNACKNOWLEDGED, DialogTable, MovedLegs, Parties
from spwm.sip.ringing import (
    ANSWER,
    CANCEL,
    CANCEL_ANSWERED,
    CANCEL_SENT,
    FINAL_SENT,
    Pending,
    Ringing,
    absorb,
    build_cancel,
    build_final,
    ending,
    far_key,
)
from spwm.sip.errors import SipParseError
from spwm.sip.flows import Flow, FlowTable
from spwm.sip.message import SipMessage, make_response, parse_message
from spwm.sip.names import ProxyNames
from spwm.sip.registrations import AppBindings
from spwm.sip.rewrite import (
    AGENT_BRANCH_MARK,
    DIALOG_CREATING,
    MAGIC,
    add_instance,
    branch_source,
    contacts,
    decrement_max_forwards,
    expires_of,
    hostport,
    param,
    register_domain_uri,
    short_hash,
    stamp_via,
    strict_route,
    strip_instance,
    top_route,
)
from spwm.sip.uri import SipUri, parse_name_addr, parse_uri, parse_via

__all__ = ["AgentSipProxy", "BYE_SENT", "OPTIONS_REFUSED", "TUNNEL_BYE"]

#: The destination kind of a BYE of our own into the tunnel (to a far
#: party), beside the phones' flows: C{(TUNNEL_BYE, flow_id)}.
TUNNEL_BYE = "tunnel"


def _spirals(route: list[str]) -> bool:
    """
    Whether a route set toward a far party comes back into the contact
    point it starts at: its first hop (the contact point's own
    C{Record-Route}) appears again further on, the same host and port (a
    party behind another tunnel of the same process; another worker has
    a port of its own).
    """
    hops = []
    for value in route:
        try:
            uri = parse_name_addr(value).uri
        except SipParseError:
            return False
        hops.append((uri.host.lower(), uri.port))
    return bool(hops) and hops[0] in hops[1:]

#: The counter of the C{OPTIONS} to the agent answered C{503} for want of
#: a tunnel (those answered C{200}: L{OPTIONS_ANSWERED})
OPTIONS_REFUSED = "OPTIONS answered here: 503, no tunnel"

#: (for a message without Via, which the parser refuses: a branch of none)
_NO_VIA = parse_via("SIP/2.0/UDP invalid")


class AgentSipProxy:
    """
    The LAN half of the split proxy.

    @ivar tunnel_key: the object the integration layer gave for the tunnel.
    @ivar flows: the L{FlowTable} of application flows.
    @ivar counters: named counts of dropped and refused messages.
    """

    def __init__(
        self,
        tunnel_key: Hashable,
        agent_id: str,
        *,
        media_hook: MediaHook | None = None,
        flows: FlowTable | None = None,
        registration_margin: float = 60.0,
        dialog_lifetime: float = 12 * 3600.0,
        max_message_size: int = 65535,
        names: ProxyNames | None = None,
        bye_on_loss: bool = True,
    ) -> None:
        """
        @param bye_on_loss: send a BYE of our own to the phone of a call
            whose media is lost (L{leg_lost}).
        @param agent_id: the agent's identity; seeds the C{+sip.instance}
            given to applications and the user part of our C{Record-Route}.
        @param registration_margin: seconds a UDP flow outlives the longest
            registration expiry seen through it.
        @param names: the agent's listening addresses and C{--sip-name}s: a
            top C{Route} (or a Request-URI) naming one of them names the
            agent (RFC 3261 16.4).  Without it only our own
            C{Record-Route} values are recognised.
        """
        self.tunnel_key = tunnel_key
        self.names = names
        self.agent_id = agent_id
        self.media_hook = media_hook
        self.flows = flows if flows is not None else FlowTable()
        self.registration_margin = registration_margin
        self.max_message_size = max_message_size
        self.counters = Counters()
        self._rr_user = (
            "spwm-" + hashlib.sha256(agent_id.encode("utf-8")).hexdigest()[:12]
        )
        self._instance_ns = uuid.uuid5(uuid.NAMESPACE_URL, "spwm-agent:" + agent_id)
        # scoped by application flow: a scope and Call-ID is one call leg
        self._dialogs = DialogTable(dialog_lifetime, limit=65536)
        # the Via of a BYE of our own into the tunnel (its answer comes
        # back through the tunnel, whatever it names)
        self._tunnel_via = f"SIP/2.0/TCP {self._rr_user}.invalid"
        self.bye_on_loss = bye_on_loss
        self._byes = ByeSender()
        self._moved = MovedLegs()
        self._bindings = AppBindings()
        # the new INVITEs passed on lately, either way (their
        # retransmissions pass on too, whatever the tunnel's state)
        self._invites = RecentInvites()
        # those of them not finally answered yet (what a call lost while
        # it rings needs: L{_end_ringing})
        self._ringing = Ringing()
        # flow id -> when the registration made through it expires
        self._registered_until: dict[int, float] = {}

    # -- public API ---------------------------------------------------------

    def busy(self, now: float) -> bool:
        """
        Whether an application still needs the tunnel: a registration made
        through this agent is still valid, or a dialog is established
        (read-only but for forgetting expired registrations).
        """
        until = self._registered_until
        for fid in [fid for fid, t in until.items() if t <= now]:
            del until[fid]
        return bool(until) or len(self._dialogs) > 0

    def export_state(self, now: float) -> dict[str, Any]:
        """
        What a restarted agent needs to reach its phones on UDP again
        through the same flow ids (the ids the contact point's tokens
        name), JSON-ready, lifetimes relative to C{now}: the UDP flows
        with a live registration, their bindings, and when each
        registration expires.  Phones on TCP and TLS lose their
        connections with the process and register again at once.
        """
        live = {fid for fid, until in self._registered_until.items() if until > now}
        flows = self.flows.export_udp(now, live)
        kept = {entry["flow_id"] for entry in flows}
        return {
            "flows": flows,
            "bindings": self._bindings.export(now, kept),
            "registered": [[fid, until - now] for fid, until in self._registered_until.items() if fid in kept],
        }

    def import_state(self, data: Any, now: float) -> int:
        """
        Take back what L{export_state} gave in another process (at the
        start, before any flow is made); what does not fit is skipped.

        @return: the number of flows restored.
        """
        if not isinstance(data, dict):
            return 0
        count = self.flows.restore_udp(data.get("flows"), now)
        self._bindings.restore(data.get("bindings"), lambda fid: self.flows.lookup(fid, now), now)
        registered = data.get("registered")
        for item in registered if isinstance(registered, list) else ():
            if (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], int)
                and isinstance(item[1], (int, float))
                and 0 < item[1] < 2**31
                and self.flows.lookup(item[0], now) is not None
            ):
                self._registered_until[item[0]] = now + item[1]
        return count

    def instance_for(self, contact_uri: str) -> str:
        """
        @return: the C{+sip.instance} value this agent gives an application
            whose contact URI is C{contact_uri} (stable across restarts).
        """
        return '"<urn:uuid:%s>"' % uuid.uuid5(self._instance_ns, contact_uri)

    def from_app(
        self, flow: Flow, data: bytes, now: float, *, congested: bool = False, overloaded: bool = False
    ) -> list[Action]:
        """
        A message from a LAN application on C{flow}.

        @param congested: whether the tunnel's signalling backlog is over
            its high-water mark: new requests are then refused with C{503}.
        @param overloaded: whether this half's SIP input is overloaded:
            new requests are then refused with C{503} (L{shed}).
        """
        if not data.strip(b"\r\n\t "):
            return []  # keepalive noise on a datagram flow
        try:
            msg = parse_message(data, max_size=self.max_message_size)
        except SipParseError as e:
            drop = self.counters.drop(
                "malformed message from app: " + e.reason, "malformed message from app"
            )
            return answer_malformed(data, e.status, e.reason, drop, lambda resp: ToApp(flow, resp))
        if msg.is_request:
            return self._app_request(flow, msg, now, congested, overloaded)
        return self._app_response(flow, msg, now)

    def from_tunnel(
        self, flow_id: int, data: bytes, now: float, *, overloaded: bool = False
    ) -> list[Action]:
        """
        A message from the contact point for application flow C{flow_id}.

        @param overloaded: whether this half's SIP input is overloaded:
            new requests are then refused with C{503} (L{shed}).
        """
        try:
            msg = parse_message(data, max_size=self.max_message_size)
        except SipParseError as e:
            return [
                self.counters.drop(
                    "malformed message from tunnel: " + e.reason,
                    "malformed message from tunnel",
                )
            ]
        flow = self.flows.lookup(flow_id, now)
        if msg.is_request:
            return self._tunnel_request(flow_id, flow, msg, now, overloaded)
        return self._tunnel_response(flow, msg, now)

    def flow_closed(self, flow: Flow) -> None:
        """
        The connection of a stream flow closed: forget the flow.
        """
        self.flows.closed(flow)

    def next_deadline(self) -> float | None:
        """
        @return: when L{handle_timer} should next run, or C{None}.
        """
        times = [
            t
            for t in (
                self.flows.next_deadline(),
                self._bindings.next_expiry,
                self._dialogs.next_ack_deadline,
                self._byes.next_deadline(),
            )
            if t is not None
        ]
        return min(times) if times else None

    def status(self) -> dict[str, Any]:
        """
        For the status page: application flows now, drops so far by reason.
        """
        return {"flows": len(self.flows), "events": dict(self.counters)}

    def registration_list(self) -> list[dict[str, Any]]:
        """
        @return: the applications' bindings as plain dicts (the status
            listing).
        """
        return self._bindings.listing()

    def registered(self, aor: str) -> bool:
        """
        Whether an application registered C{aor} (C{str} of its URI)
        through this tunnel and the binding lasts.
        """
        return self._bindings.has_aor(aor)

    def handle_timer(self, now: float) -> list[Action]:
        """
        Expire flows, dialog records and the applications' bindings.

        @return: a L{BindingChanged} C{"expired"} for each binding of an
            application that was not refreshed in time.
        """
        self.flows.expire(now)
        for fid, d in self._dialogs.unacknowledged(now):
            # its UAS has given up on it: over, as if a BYE had ended it
            self.counters.count(UNACKNOWLEDGED)
            if self._dialogs.remove(fid, d.call_id, d.from_tag, d.to_tag):
                leg_ended(self.media_hook, self.tunnel_key, d.flow_id, d.call_id, reason=UNACKNOWLEDGED)
        self._dialogs.expire(now)
        return [*self._bindings.expire(now), *self._send_byes(now)]

    def leg_lost(
        self,
        session_id: str,
        flow_id: int,
        call_id: str,
        reason: str,
        now: float,
        tunnels: bool = True,
        *,
        far: bool = False,
    ) -> tuple[list[Action], list[str]]:
        """
        The media of the call leg of C{flow_id} and C{call_id} is lost (the
        call record's C{reason}: C{tunnel lost}, C{media inactivity}): end
        its dialogs that no BYE is ending yet for the phone, with a BYE of
        our own in the far party's name over the phone's flow (bounded,
        L{ByeSender}); the dialogs are forgotten, so none gets a second.

        @param session_id: the session the leg was in (for the contact
            point's core; the agent's dialogs are by flow).
        @param tunnels: for the contact point's core.
        @param far: also end them for the far party, with a BYE in the
            phone's name into the tunnel: the session was just resumed at
            a contact point whose process before died with the calls
            (L{spwm.security.resume.AgentResumption.far_party_reachable}),
            so nobody told the far party.  Not for a far party whose
            route comes back into the same contact point process (behind
            one of its other tunnels: that one's agent ends the call for
            its phone, as this one for ours).  A call of the phone's that
            still rings at the far party gets a CANCEL into the tunnel, a
            far party's call that rings at the phone a 480 into the
            tunnel (L{_end_ringing}).
        @return: the actions (the first BYEs), and whom a BYE went to
            (C{"phone"}, C{"far party"} per dialog), for the call record.
        """
        dialogs = self._dialogs.take(flow_id, call_id, flow_id)
        flow = self.flows.lookup(flow_id, now)
        told = self._end_ringing(flow, flow_id, call_id, reason, now, far)
        if not self.bye_on_loss:
            return self._send_byes(now), told
        for d in dialogs:
            parties = d.parties
            if parties is None:
                continue
            if flow is not None:
                # the phone is the party on our own side
                via = f"SIP/2.0/{flow.transport.upper()} {hostport(*flow.local)}"
                self._queue_bye(flow, call_id, parties, parties.caller_inside, via, reason, told, "phone")
            if far:
                self._queue_bye(
                    (TUNNEL_BYE, flow_id), call_id, parties, not parties.caller_inside, self._tunnel_via, reason, told,
                    "far party",
                )
        return self._send_byes(now), told

    def _queue_bye(
        self,
        dest: Flow | tuple[str, int],
        call_id: str,
        parties: Parties,
        to_caller: bool,
        via: str,
        reason: str,
        told: list[str],
        whom: str,
    ) -> None:
        """
        Queue the BYE to one party of a dialog (C{dest}: the phone's flow,
        or C{(TUNNEL_BYE, flow_id)}: into the tunnel), noting C{whom} in
        C{told} if it went.
        """
        route = route_toward(parties.record_route, self._ours_value, to_caller)
        if isinstance(dest, tuple) and _spirals(route):
            return
        branch = ByeSender.branch()
        data = build_bye(call_id, parties, to_caller, route, via, branch, reason)
        if data is None:
            return
        reliable = isinstance(dest, tuple) or dest.transport != "udp"
        if self._byes.add(dest, data, branch, reliable=reliable):
            self.counters.count(BYE_SENT)
            told.append(whom)
        else:
            self.counters.count(BYE_DROPPED)

    def ringing_lost(
        self, session_id: str, now: float, tunnels: bool = True, *, far: bool = False
    ) -> list[Action]:
        """
        The session is lost for good: the calls that still ring and that
        L{leg_lost} was not told of (no media stream: an INVITE without
        SDP) end as theirs do (L{_end_ringing}).

        @param session_id: the session (the agent's core has one).
        @param tunnels: for the contact point's core.
        @param far: as for L{leg_lost}: a call of the phone's that rings
            at the far party gets a CANCEL into the tunnel too, a far
            party's call that rings at the phone a 480 into the tunnel.
        @return: the actions (the first of what is sent).
        """
        if not self.bye_on_loss:
            return []
        for leg in self._ringing.legs_of():
            flow_id, call_id = cast("tuple[int, str]", leg)
            self._end_ringing(self.flows.lookup(flow_id, now), flow_id, call_id, "tunnel lost", now, far)
        return self._send_byes(now)

    def _end_ringing(
        self, flow: Flow | None, flow_id: int, call_id: str, reason: str, now: float, far: bool = False
    ) -> list[str]:
        """
        A call leg lost with its tunnel while it rings (its INVITE passed
        on, no final response yet): the phone that calls gets a final
        response of ours (L{build_final}), the phone that rings a CANCEL
        (L{build_cancel}), over its flow, sent and retransmitted as the
        BYEs are (L{ByeSender}, keyed by the INVITE's branch: the ACK of
        the response, the CANCEL's 200 and the INVITE's 487 stop it).

        With C{far} (the session resumed at a contact point whose process
        died with the calls, L{leg_lost}), the far party that a phone's
        call rings at also gets a CANCEL, into the tunnel (L{_cancel_far}),
        and the far party whose call rings at the phone our 480, into the
        tunnel too (L{_answer_far}).

        @return: whom, for the call record: C{"phone (480)"} or
            C{"phone (CANCEL)"}, and C{"far party (CANCEL)"} or
            C{"far party (480)"}.
        """
        entry = self._ringing.take((flow_id, call_id), now)
        if entry is None or not self.bye_on_loss or reason != "tunnel lost":
            return []
        told: list[str] = []
        if flow is not None:
            response, data, counter, what = ending(entry, reason)
            if self._byes.add(flow, data, entry.key[1], flow.transport != "udp"):
                # (the phone's branch for a response to it, ours for the CANCEL)
                self._ringing.sent(entry, entry.key[1], now)
                self.counters.count(counter)
                told.append(f"phone ({what})")
            else:
                self.counters.count(BYE_DROPPED)
        if far and entry.kind == ANSWER:
            told += self._cancel_far(entry, reason, now)
        elif far:
            told += self._answer_far(entry, reason, now)
        return told

    def _cancel_far(self, entry: Pending, reason: str, now: float) -> list[str]:
        """
        The CANCEL of a phone's INVITE still ringing at the far party when
        the contact point's process died (RFC 3261 9.1: L{build_cancel},
        from the INVITE as it went into the tunnel: the phone's C{Via} and
        branch on top, our agent adds none), into the tunnel on the
        phone's flow, sent as the far party's BYEs are (L{ByeSender}, once:
        the tunnel is reliable; under L{far_key}, beside the phone's 480).
        The restarted contact point gives it the branch it gave the
        INVITE (its C{Via} branch is an HMAC of the session, the flow and
        the phone's branch, under the token key its state file kept), so
        the operator's proxy takes it for the CANCEL of that INVITE.  Its
        200 and the INVITE's 487 come back through the tunnel to us
        (L{_tunnel_response}).

        A route that comes back into the same contact point (a callee
        behind another of its tunnels) is not told apart as for a BYE:
        an INVITE not answered has no C{Record-Route} to see it in, and
        the CANCEL is the next hop's (the operator's proxy ends its own
        transaction with it, which the callee's agent, CANCELling its
        phone, does not).

        @return: C{["far party (CANCEL)"]}, or nothing when too many wait.
        """
        if not self._byes.add((TUNNEL_BYE, cast(int, entry.dest)), build_cancel(entry, reason), far_key(entry), True):
            self.counters.count(BYE_DROPPED)
            return []
        self._ringing.cancelling(entry, now)
        self.counters.count(CANCEL_SENT)
        return ["far party (CANCEL)"]

    def _answer_far(self, entry: Pending, reason: str, now: float) -> list[str]:
        """
        The final response to the far party whose INVITE (from the tunnel)
        still rings at our phone when the contact point's process died:
        the phone gets our CANCEL, and the far caller, whose INVITE
        transaction the dead process cannot end any more, our 480 with the
        Reason (L{build_final}: the INVITE's C{Via} lines as they came
        from the tunnel, the contact point's on top; To with the phone's
        tag from its provisional response, or one of ours), as a proxy
        answers upstream for a branch it gives up on (RFC 3261 16.7, 16.9;
        as on Timer C).  Into the tunnel on the phone's flow, sent as the
        far party's BYEs are (L{ByeSender}, once: the tunnel is reliable;
        keyed by the branch on top).  The restarted contact point knows
        its own C{Via} (its branch is a token under the key its state file
        kept), pops it and sends the 480 on by the next one, as any
        response from a tunnel.

        From then on the phone's responses to that INVITE are ours alone
        (L{Ringing.cancelling}: a 200 that crosses the CANCEL is ACKed and
        ended with a BYE, never passed on after our 480), and so is the
        ACK of our 480 that comes back through the tunnel (hop by hop,
        with the contact point's branch on top: L{Ringing.answering},
        L{_acked}).

        @return: C{["far party (480)"]}, or nothing when too many wait.
        """
        response = build_final(entry, reason)
        top = response.top_via
        assert top is not None  # (the contact point's: the INVITE came through it)
        branch = top.branch or ""
        if not self._byes.add((TUNNEL_BYE, cast(int, entry.dest)), response.to_bytes(), branch, True):
            self.counters.count(BYE_DROPPED)
            return []
        self._ringing.cancelling(entry, now)
        self._ringing.answering(entry, branch, now)
        self.counters.count(FINAL_SENT)
        return ["far party (480)"]

    def _cancelled_response(self, flow: Flow | None, entry: Pending, msg: SipMessage, now: float) -> list[Action]:
        """
        A response to an INVITE we CANCELled, or to our CANCEL: ours alone
        (L{absorb}); the ACK of a 487, or of a 2xx that crossed the CANCEL
        (and its BYE), go where the INVITE went: to the phone on C{flow},
        or into the tunnel (C{None}: the far party's, L{_cancel_far}).
        """
        if flow is None:
            fid = cast(int, entry.dest)
            ack, answered, bye = absorb(
                entry, msg, self._byes, self._ours_value, self._tunnel_via, (TUNNEL_BYE, fid), True, far_key(entry)
            )
            out: list[Action] = [] if ack is None else [ToTunnel(self.tunnel_key, fid, ack)]
        else:
            via = f"SIP/2.0/{flow.transport.upper()} {hostport(*flow.local)}"
            ack, answered, bye = absorb(entry, msg, self._byes, self._ours_value, via, flow, flow.transport != "udp")
            out = [] if ack is None else [ToApp(flow, ack)]
        if answered:
            self.counters.count(CANCEL_ANSWERED)
        if bye:
            self.counters.count(BYE_SENT)
        return out + self._send_byes(now)

    def byes_unsent(self) -> int:
        """
        @return: the BYEs of our own still waiting to be sent a first time
            (a stopping agent keeps its SIP sockets open for them).
        """
        return self._byes.unsent()

    def _send_byes(self, now: float) -> list[Action]:
        # (the sender's destinations are the phones' flows, and flows of
        # the tunnel, (TUNNEL_BYE, flow id), for far parties)
        out: list[Action] = []
        for dest, data in self._byes.due(now):
            if isinstance(dest, tuple):
                out.append(ToTunnel(self.tunnel_key, dest[1], data))
            else:
                out.append(ToApp(cast(Flow, dest), data))
        return out

    def _bye_answered(self, branch: str, msg: SipMessage) -> list[Action]:
        """
        A response to a BYE of our own (its C{branch}): absorbed, a final
        one counted.
        """
        status = msg.status or 0
        if self._byes.answered(branch, status) and status >= 200:
            self.counters.count(BYE_ANSWERED)
        return []

    def _ours_value(self, value: str) -> bool:
        try:
            return self._ours(parse_name_addr(value).uri)
        except SipParseError:
            return False

    # -- from the applications ----------------------------------------------

    def _answer(
        self, flow: Flow, msg: SipMessage, status: int, reason: str
    ) -> list[Action]:
        if msg.method == "ACK":
            return [self.counters.drop(f"ACK refused: {status} {reason}", "ACK refused")]
        return [ToApp(flow, make_response(msg, status, reason).to_bytes())]

    def _app_request(
        self, flow: Flow, msg: SipMessage, now: float, congested: bool, overloaded: bool = False
    ) -> list[Action]:
        # (parse_message checked the headers a proxy relies on)
        if msg.method == "OPTIONS" and self._options_for_us(msg):
            return self._answer_options(flow, msg)
        if self._ringing.answered and msg.method == "ACK" and self._acked(msg, now):
            return []
        again = self._invites.again(msg)
        if again:
            redundant = self._invites.redundant(msg, now)
            if redundant is not None:
                return [self.counters.drop(redundant, redundant)]
        refused = shed(msg, overloaded, self._invites, self.counters)
        if refused is not None:
            answer, counted = refused
            return [counted] if answer is None else [ToApp(flow, answer), counted]
        if congested and starts_work(msg):
            if again:
                reason = RETRANSMITTED_CONGESTED
                return [self.counters.drop(reason, reason)]
            return [
                ToApp(flow, congested_response(msg)),
                self.counters.refuse(CONGESTED, CONGESTED_COUNTER),
            ]
        full = None if again else media_full(self.media_hook, msg)
        if full is not None:
            return [
                ToApp(flow, media_full_response(msg, full)),
                self.counters.refuse(full.reason, full.counter),
            ]
        invite = self._invites.passing(msg, again, now)
        mf = msg.max_forwards
        if mf is not None and mf <= 0:
            return self._answer(flow, msg, 483, "Too Many Hops")
        decrement_max_forwards(msg, mf)
        stamp_via(msg, flow.remote)
        self._own_routing(msg)
        method = msg.method
        if method in DIALOG_CREATING and msg.to_tag is None:
            msg.prepend_header("Record-Route", self._record_route(flow))
        if method == "REGISTER":
            add_instance(msg, self.instance_for)
        fid = self.flows.use(flow, now)
        if method == "REGISTER":
            self._bindings.request(fid, msg)
        # inside a dialog, the flow it was set up on (a phone may send on
        # another transport now); the message itself goes on its own
        leg = self._moved.request(self._dialogs, msg, fid, fid)
        remember_dialog_request(self._dialogs, leg, msg, True)
        self._invites.media(invite, again, self.media_hook, self.tunnel_key, leg, msg, True)
        self._maybe_ended(leg, msg)
        if invite is not None:
            if not again:
                self._ringing.passed(invite, ANSWER, (leg, invite[0]), msg, fid, False, now)
        elif method == "CANCEL":
            self._ringing.finished((msg.call_id, (msg.top_via or _NO_VIA).branch or ""))
        return [ToTunnel(self.tunnel_key, fid, msg.to_bytes())]

    def _acked(self, msg: SipMessage, now: float) -> bool:
        """
        Whether C{msg}, an ACK from a phone, or from the tunnel (a far
        caller's, L{_answer_far}), is that of our own final response
        (L{_end_ringing}): it ends that response's retransmissions, and
        goes no further.
        """
        branch = (msg.top_via or _NO_VIA).branch or ""
        if not self._ringing.acked((msg.call_id, branch), now):
            return False
        self._byes.answered(branch, 200)
        return True

    def _app_response(self, flow: Flow, msg: SipMessage, now: float) -> list[Action]:
        # (parse_message checked the headers a proxy relies on)
        via = msg.top_via
        assert via is not None
        present, branch = param(via.params, "branch")
        if is_bye_branch(branch):
            # the answer to a BYE of our own: for us alone
            return self._bye_answered(branch or "", msg)
        if self._ringing.cancelled:
            entry = self._ringing.cancelled_invite((msg.call_id, branch or ""), now)
            if entry is not None and entry.kind == CANCEL:
                return self._cancelled_response(flow, entry, msg, now)
        if not (branch or "").startswith(MAGIC + AGENT_BRANCH_MARK):
            reason = "response from app not for us"
            return [self.counters.drop(reason, reason)]
        msg.pop_first_value("Via")
        if not msg.has("Via"):
            reason = "response from app with only our Via"
            return [self.counters.drop(reason, reason)]
        fid = self.flows.use(flow, now)
        self._track_response(msg, None, fid, now)
        if msg.cseq[1] == "INVITE":
            # (a provisional one's To tag: our 480 to the far caller's)
            self._ringing.response((msg.call_id, branch or ""), msg.status or 0, msg, now)
        show_media(self.media_hook, self.tunnel_key, fid, msg, True)
        return [ToTunnel(self.tunnel_key, fid, msg.to_bytes())]

    def _options_for_us(self, msg: SipMessage) -> bool:
        """
        Whether an C{OPTIONS} from an application is the agent's to answer
        (RFC 3261 11, 16.3): its C{Max-Forwards} is 0, or its Request-URI
        names the agent (L{ProxyNames}: an address or name with the port
        the agent listens on, 5060 or 5061 when none is given) with no user
        part and no C{Route} is left once the agent's own are removed.  A
        phone's keepalive to its outbound proxy is either.  Our own
        C{Route}s are removed from C{msg} on the way.
        """
        if not options_for_hop(msg, self._ours):
            return False
        mf = msg.max_forwards
        if mf is not None and mf <= 0:
            return True
        self._pop_own_routes(msg)
        return not msg.has("Route")

    def _answer_options(self, flow: Flow, msg: SipMessage) -> list[Action]:
        """
        The agent's own answer to an C{OPTIONS} for it: C{200} with
        C{Allow} (the methods it relays) and C{Accept: application/sdp}; but
        C{503} with C{Retry-After} while no tunnel could carry a request
        (C{tunnel_key.unavailable_for()}), as every other request gets then:
        a phone that pings its outbound proxy to find out whether it works
        learns that it does not.
        """
        unavailable_for = getattr(self.tunnel_key, "unavailable_for", None)
        retry = unavailable_for() if unavailable_for is not None else None
        self.counters.count(OPTIONS_ANSWERED if retry is None else OPTIONS_REFUSED)
        return [ToApp(flow, options_answer(msg, retry))]

    # -- from the tunnel ----------------------------------------------------

    def _tunnel_request(
        self, flow_id: int, flow: Flow | None, msg: SipMessage, now: float, overloaded: bool = False
    ) -> list[Action]:
        # (parse_message checked the headers a proxy relies on)
        if self._ringing.answered and msg.method == "ACK" and self._acked(msg, now):
            # the ACK of our 480 to a far caller (L{_answer_far})
            return []
        if (
            self._ringing.answered
            and msg.method == "CANCEL"
            and self._ringing.acked((msg.call_id, (msg.top_via or _NO_VIA).branch or ""), now)
        ):
            # the far caller CANCELs the INVITE we answered ourselves (our
            # 480, L{_answer_far}; the phone had our CANCEL): its
            # transaction is over, and a CANCEL of it is answered 200 all
            # the same (RFC 3261 9.2), here; not passed to the phone
            return [ToTunnel(self.tunnel_key, flow_id, make_response(msg, 200, "OK").to_bytes())]
        if flow is None:
            if msg.method == "ACK":
                reason = "ACK for an unknown flow"
                return [self.counters.drop(reason, reason)]
            resp = make_response(msg, 430, "Flow Failed")
            return [ToTunnel(self.tunnel_key, flow_id, resp.to_bytes())]
        again = self._invites.again(msg)
        if again:
            redundant = self._invites.redundant(msg, now)
            if redundant is not None:
                return [self.counters.drop(redundant, redundant)]
        refused = shed(msg, overloaded, self._invites, self.counters)
        if refused is not None:
            answer, counted = refused
            return [counted] if answer is None else [ToTunnel(self.tunnel_key, flow_id, answer), counted]
        full = None if again else media_full(self.media_hook, msg)
        if full is not None:
            return [
                ToTunnel(self.tunnel_key, flow_id, media_full_response(msg, full)),
                self.counters.refuse(full.reason, full.counter),
            ]
        invite = self._invites.passing(msg, again, now)
        self._pop_own_routes(msg)
        branch = MAGIC + AGENT_BRANCH_MARK + short_hash(branch_source(msg)).hex()
        msg.prepend_header(
            "Via",
            f"SIP/2.0/{flow.transport.upper()} {hostport(*flow.local)};branch={branch}",
        )
        method = msg.method
        if method in DIALOG_CREATING and msg.to_tag is None:
            msg.prepend_header("Record-Route", self._record_route(flow))
        remember_dialog_request(self._dialogs, flow_id, msg, False)
        self._invites.media(invite, again, self.media_hook, self.tunnel_key, flow_id, msg, False)
        self._maybe_ended(flow_id, msg)
        if invite is not None:
            if not again:
                call_id = invite[0]
                self._ringing.passed((call_id, branch), CANCEL, (flow_id, call_id), msg, flow_id, True, now)
        elif method == "CANCEL":
            self._ringing.finished((msg.call_id, branch))
        return [ToApp(flow, msg.to_bytes())]

    def _tunnel_response(
        self, flow: Flow | None, msg: SipMessage, now: float
    ) -> list[Action]:
        if self._byes and msg.cseq[1] == "BYE":
            via = msg.top_via
            branch = None if via is None else param(via.params, "branch")[1]
            if is_bye_branch(branch):
                # the answer to a BYE of our own to a far party: for us
                return self._bye_answered(branch or "", msg)
        if self._ringing.cancelled:
            # (the phone's Via on top: the INVITE's key)
            entry = self._ringing.cancelled_invite((msg.call_id, (msg.top_via or _NO_VIA).branch or ""), now)
            if entry is not None and entry.kind == ANSWER:
                # the far party's answer to our CANCEL, or its INVITE's
                return self._cancelled_response(None, entry, msg, now)
        if flow is None:
            reason = "response for an unknown flow"
            return [self.counters.drop(reason, reason)]
        # (parse_message checked the headers a proxy relies on)
        fid = self.flows.use(flow, now)
        call_id = msg.call_id or ""
        number, method = msg.cseq
        status = msg.status or 0
        leg = self._moved.leg(call_id, number, fid, fid, status >= 200)
        self._track_response(msg, flow, leg, now)
        if method == "INVITE":
            # (the phone's INVITE: its own Via on top)
            self._ringing.response((call_id, (msg.top_via or _NO_VIA).branch or ""), status, msg, now)
        events: list[Action] = []
        if method == "REGISTER":
            strip_instance(msg, self.instance_for)
            if 200 <= status < 300:
                events = self._bindings.answered(flow, fid, msg, now)
        show_media(self.media_hook, self.tunnel_key, leg, msg, False)
        return [ToApp(flow, msg.to_bytes()), *events]

    # -- dialogs and registrations -------------------------------------------

    def _track_response(self, msg: SipMessage, flow: Flow | None, fid: int, now: float) -> None:
        status = msg.status or 0
        method = msg.cseq[1]
        call_id = msg.call_id
        if method == "INVITE":
            if 200 <= status < 300:
                self._invites.accepted(msg)
                remember_answer(self._dialogs, fid, fid, msg, now)
                # the leg's other dialogs live as long as the newest
                self._dialogs.touch(fid, call_id, now)
            elif status >= 300 and not self._dialogs.has(fid, call_id):
                leg_ended(self.media_hook, self.tunnel_key, fid, call_id, status)
        elif method == "REGISTER" and 200 <= status < 300 and flow is not None:
            longest = 0
            for na in contacts(msg):
                longest = max(longest, expires_of(msg, na.params, 0))
            if longest:
                fid = self.flows.use(flow, now)
                self.flows.extend(fid, longest + self.registration_margin, now)
                self._registered_until[fid] = now + longest
            else:
                self._registered_until.pop(fid, None)

    def _maybe_ended(self, fid: int, msg: SipMessage) -> None:
        """
        A BYE ends the leg's media only when it ends the leg's last dialog
        (a forked INVITE answered by two branches has two; the BYE to the
        loser must not take the winner's media); a CANCEL only before any
        answer.
        """
        method = msg.method
        call_id = msg.call_id
        if method == "BYE":
            if self._dialogs.remove(fid, call_id, msg.from_tag, msg.to_tag):
                leg_ended(self.media_hook, self.tunnel_key, fid, call_id)
        elif method == "ACK":
            self._dialogs.acked(fid, call_id, msg.from_tag, msg.to_tag)
        elif method == "CANCEL" and not self._dialogs.has(fid, call_id):
            leg_ended(self.media_hook, self.tunnel_key, fid, call_id)

    # -- routing ---------------------------------------------------------------

    def _ours(self, uri: SipUri) -> bool:
        """
        Whether C{uri} names this agent: one of our C{Record-Route} values
        (by its user part) or any of our addresses and names.
        """
        if uri.user == self._rr_user:
            return True
        return self.names is not None and self.names.names_us(uri)

    def _own_routing(self, msg: SipMessage) -> None:
        """
        RFC 3261 16.4 for a request from an application: a Request-URI
        naming us is the registrar's domain for a REGISTER (10.2) or, with
        a C{Route} left, strict routing; then every top C{Route} naming us
        goes (a phone may pre-load the agent more than once).
        """
        try:
            ruri = parse_uri(msg.uri or "")
        except SipParseError:
            ruri = None
        if ruri is not None and self._ours(ruri):
            if msg.method == "REGISTER":
                register_domain_uri(msg)
            elif msg.has("Route"):
                strict_route(msg)
        self._pop_own_routes(msg)

    def _pop_own_routes(self, msg: SipMessage) -> None:
        while True:
            top = top_route(msg)
            if top is None or not self._ours(top.uri):
                return
            msg.pop_first_value("Route")

    def _record_route(self, flow: Flow) -> str:
        return f"<sip:{self._rr_user}@{hostport(*flow.local)};transport={flow.transport};lr>"
