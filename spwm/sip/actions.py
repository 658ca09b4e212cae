# -*- test-case-name: tests.test_sip_proxy -*-
"""
What the two SIP proxy cores return, and what they call.

The cores (L{spwm.sip.agent_proxy.AgentSipProxy},
L{spwm.sip.contact_proxy.ContactSipProxy}) do no I/O and no logging: every
method returns a list of L{Action}s for the runner (L{spwm.sip.transport})
to carry out.  L{Dropped} and L{RouteRefused} are for the log, and
L{BindingChanged} announces a registration that appeared or went.

A message carrying SDP is shown to an optional I{media hook}
(L{MediaHook}); L{show_media} and L{leg_ended} are how both cores call it.
"""

from __future__ import annotations

from typing import Hashable, Protocol, Union

from dataclasses import dataclass, field

from spwm.sip.flows import Flow
from spwm.sip.message import SipMessage

__all__ = [
    "Action",
    "BindingChanged",
    "Counters",
    "Dropped",
    "MediaHook",
    "OperatorProxy",
    "ProxyChanged",
    "RouteRefused",
    "ToApp",
    "ToNetwork",
    "ToTunnel",
    "dialog_key",
    "leg_ended",
    "media_full",
    "MediaRefusal",
    "NO_MEDIA_PORTS",
    "TUNNEL_MEDIA_LIMIT",
    "CALL_LIMIT",
    "show_media",
]

#: What the integration layer gave a core for a tunnel: opaque to the
#: cores (they hand it back in L{ToTunnel} and to the media hook).
TunnelKey = Hashable

_SDP_TYPES = frozenset({"application/sdp", "multipart/mixed"})

#: The requests whose SDP offer is settled by their final response
#: (RFC 3261 section 14, RFC 3311).
_OFFER_METHODS = frozenset({"INVITE", "UPDATE"})
#: the methods whose requests and responses carry a session's offers and
#: answers (RFC 3261 13, RFC 3262, RFC 3311); an SDP anywhere else (the
#: 200 to an OPTIONS, RFC 3261 11.2: capabilities, not a session) is left
#: alone and sets up no media
_SESSION_METHODS = frozenset({"INVITE", "ACK", "PRACK", "UPDATE"})


@dataclass(frozen=True, slots=True)
class ToTunnel:
    """
    Send one SIP message into a tunnel.

    @ivar tunnel_key: the opaque tunnel object the integration layer gave us.
    @ivar flow_id: the application flow (the frame's channel field).
    """

    tunnel_key: TunnelKey
    flow_id: int
    data: bytes

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, tunnel_key: TunnelKey, flow_id: int, data: bytes) -> None:
        object.__setattr__(self, "tunnel_key", tunnel_key)
        object.__setattr__(self, "flow_id", flow_id)
        object.__setattr__(self, "data", data)


@dataclass(frozen=True, slots=True)
class ToApp:
    """
    Send one SIP message to a LAN application over its own flow.
    """

    flow: Flow
    data: bytes

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, flow: Flow, data: bytes) -> None:
        object.__setattr__(self, "flow", flow)
        object.__setattr__(self, "data", data)


@dataclass(frozen=True, slots=True)
class ToNetwork:
    """
    Send one SIP message on the operator network.

    @ivar transport: C{"udp"} or C{"tcp"}.
    @ivar addr: C{(host, port)}.
    """

    transport: str
    addr: tuple[str, int]
    data: bytes

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, transport: str, addr: tuple[str, int], data: bytes) -> None:
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "addr", addr)
        object.__setattr__(self, "data", data)


@dataclass(frozen=True, slots=True)
class Dropped:
    """
    A message was dropped, or a request refused with an error answer;
    the adapter logs C{reason}.

    @ivar reason: what happened, for the log (may name the message's
        problem; for a refusal, the status it was answered with).
    @ivar counter: the name the drop is counted under in the core's
        C{counters} (and on C{/status} and C{/metrics}): fixed for each
        kind of drop, whatever C{reason} says.
    @ivar answered: the request was answered (C{reason} says with what),
        so the log line does not call it dropped.
    """

    reason: str
    counter: str
    answered: bool = False


@dataclass(frozen=True, slots=True)
class RouteRefused:
    """
    A request was refused (C{403}) because its top C{Route} names neither
    this proxy nor one of its flows (no open relay); the adapter logs it,
    with the advice to add the host as C{--sip-name} if it is ours.

    @ivar route: the refused C{Route} value.
    @ivar host: its host (IPv6 without brackets).
    @ivar port: its port, or C{None} when it gives none.
    @ivar method: the request's method.
    """

    route: str
    host: str
    port: int | None
    method: str


@dataclass(frozen=True, slots=True)
class BindingChanged:
    """
    A registration binding through a tunnel appeared, went or expired; the
    adapter logs it.  Refreshes that change nothing make no event.  The
    contact point makes them for every tunnel, the agent for its own
    applications (with C{app} and an empty C{session_id}).

    @ivar change: C{"registered"}, C{"unregistered"} or C{"expired"}.
    @ivar aor: the address-of-record (the To URI of the REGISTER).
    @ivar contact: the application's contact URI.
    @ivar expires: seconds the binding was granted (0 when it went).
    @ivar session_id: the tunnel session the binding goes through.
    @ivar flow_id: the agent's application flow.
    """

    change: str
    aor: str
    contact: str
    expires: int
    session_id: str
    flow_id: int
    app: Flow | None = None


@dataclass(frozen=True, slots=True)
class ProxyChanged:
    """
    One of the operator's proxies went out of use or came back
    (L{spwm.sip.nexthop.ProxyPool}); the adapter logs it.

    @ivar proxy: the proxy.
    @ivar up: whether it answers now.
    @ivar why: what made the change (for the log).
    @ivar using: the proxy requests go to from now on.
    @ivar answering: whether C{using} answers (else none does: new
        requests are answered C{503}, those inside dialogs go to the
        first all the same).
    """

    proxy: OperatorProxy
    up: bool
    why: str
    using: OperatorProxy
    answering: bool = True


Action = Union[ToTunnel, ToApp, ToNetwork, Dropped, RouteRefused, BindingChanged, ProxyChanged]


class Counters(dict[str, int]):
    """
    A core's named counts of dropped and refused messages (a plain
    C{dict} to its readers).
    """

    def count(self, name: str) -> None:
        """
        Count one more C{name}.
        """
        self[name] = self.get(name, 0) + 1

    def drop(self, reason: str, counter: str) -> Dropped:
        """
        Count a drop under C{counter}.

        @return: the L{Dropped} action for it.
        """
        self[counter] = self.get(counter, 0) + 1
        return Dropped(reason, counter)

    def refuse(self, reason: str, counter: str) -> Dropped:
        """
        Count a request refused with an error answer (which the caller
        sends) under C{counter}.

        @return: the L{Dropped} action for it, marked C{answered}.
        """
        self[counter] = self.get(counter, 0) + 1
        return Dropped(reason, counter, answered=True)


@dataclass(frozen=True, slots=True)
class OperatorProxy:
    """
    Where the contact point sends every request.

    @ivar srv: as configured, a name given without a port: its DNS SRV
        records (C{_sip._udp.NAME}, C{_sip._tcp.NAME}) say where its
        proxies are, RFC 3263 4.2 (not part of the proxy's identity).
    @ivar any_transport: as configured, a name given without a port and
        without C{;transport=}: its NAPTR records, else which of its SRV
        records exist, choose the transport (RFC 3263 4.1); C{transport}
        is UDP until they do.
    """

    host: str
    port: int = 5060
    transport: str = "udp"
    srv: bool = field(default=False, compare=False, repr=False)
    any_transport: bool = field(default=False, compare=False, repr=False)


class MediaHook(Protocol):
    """
    What the cores call for SIP messages that carry SDP.

    C{dialog_key} names the call leg (L{dialog_key}: flow and Call-ID).
    C{tunnel_key} is the tunnel the dialog runs through.  C{tag} is the tag
    of the endpoint that wrote the message: the To-tag of a response, the
    From-tag of a request.  Messages into the tunnel come from this side's
    endpoints, so their tag names this side's branch of a forked call (each
    early dialog has its own); C{None} means no branch information.
    """

    def sdp_into_tunnel(
        self,
        tunnel_key: TunnelKey,
        dialog_key: str,
        content_type: str,
        body: bytes,
        tag: str | None = None,
        offer: tuple[int, str] | None = None,
    ) -> None:
        """
        A message with SDP goes from this side into the tunnel.  C{offer}:
        it is an INVITE or UPDATE inside a dialog with this CSeq (number,
        method), whose final response settles its offer
        (C{offer_settled}, optional).
        """

    def sdp_out_of_tunnel(
        self,
        tunnel_key: TunnelKey,
        dialog_key: str,
        content_type: str,
        body: bytes,
        tag: str | None = None,
        offer: tuple[int, str] | None = None,
    ) -> bytes:
        """
        A message with SDP comes out of the tunnel to this side; return the
        body to send instead.  C{offer}: as for C{sdp_into_tunnel}.
        """

    def dialog_answered(
        self, tunnel_key: TunnelKey, dialog_key: str, tag: str | None, ours: bool = True
    ) -> None:
        """
        A 2xx to an INVITE crossed the tunnel (with or without SDP; called
        after the SDP hook for the same message). C{tag} is its To-tag;
        C{ours} is C{True} when it came from this side into the tunnel,
        C{False} when it came out of the tunnel.
        """

    def dialog_ended(
        self, tunnel_key: TunnelKey, dialog_key: str, challenged: bool = False, reason: str = "dialog ended"
    ) -> None:
        """
        BYE, CANCEL, or a final non-2xx answer to an initial INVITE;
        C{challenged}: that answer was 401 or 407, and the caller will
        likely send the INVITE again with credentials (same Call-ID): not a
        call of its own in the call records.  C{reason}: the call record's
        end reason (C{answer never acknowledged}: no ACK for its 2xx).
        """


def dialog_key(flow_id: int, call_id: str) -> str:
    """
    The media key of one leg of a call: the agent's application flow and the
    Call-ID.  Both halves know both, so they name the same leg alike; two
    phones behind one agent calling each other are two legs with one
    Call-ID and two flows.
    """
    return f"{flow_id}/{call_id}"


def show_media(
    hook: MediaHook | None, key: TunnelKey, fid: int, msg: SipMessage, into: bool
) -> None:
    """
    Show a message crossing the tunnel to the media hook: its SDP with the
    tag of the endpoint that wrote it (a body coming out of the tunnel may
    be replaced), then the answer of a 2xx to INVITE.  A final response to
    an INVITE or UPDATE is shown first to the hook's C{offer_settled}, if
    it has one (a re-offer takes effect with a 2xx, a failure drops it).
    A hook that has them is also told the parties of an INVITE's leg (C{call_parties}),
    that a new call's INVITE with SDP crossed (C{dialog_invited}) and that
    any other response to an INVITE did (C{dialog_heard}): a leg whose
    INVITE no response ever reached ends as its caller gives up
    (C{spwm.media.manager.NO_RESPONSE_TIMEOUT}).

    @param into: whether C{msg} goes into the tunnel (else it comes out).
    """
    if hook is None:
        return
    # each header read once (set_body below changes none of them)
    request = msg.is_request
    method = msg.cseq_method
    content_type = msg.content_type if msg.body else None
    sdp = content_type in _SDP_TYPES and method in _SESSION_METHODS
    invite = method == "INVITE"
    status = msg.status or 0
    answer = invite and not request and 200 <= status < 300
    if invite and not request and not answer:
        # any other response to an INVITE: someone took the INVITE (the
        # leg no longer waits for a response, MediaManager.dialog_invited)
        heard = getattr(hook, "dialog_heard", None)
        if heard is not None:
            heard(key, dialog_key(fid, msg.call_id or ""))
    if not request and status >= 200 and method in _OFFER_METHODS:
        # the end of a re-offer's transaction, before the answer in its
        # body: a 2xx applies the offer, anything else drops it
        settled = getattr(hook, "offer_settled", None)
        if settled is not None:
            settled(key, dialog_key(fid, msg.call_id or ""), not into, msg.cseq, status < 300)
    if not (sdp or answer):
        return
    leg = dialog_key(fid, msg.call_id or "")
    to_tag = msg.to_tag
    # the tag of the endpoint that wrote it
    tag = msg.from_tag if request else to_tag
    # an offer inside a dialog that its final response settles
    offer = msg.cseq if request and method in _OFFER_METHODS and to_tag is not None else None
    if sdp and into:
        hook.sdp_into_tunnel(key, leg, content_type or "", msg.body, tag=tag, offer=offer)
    elif sdp:
        body = hook.sdp_out_of_tunnel(key, leg, content_type or "", msg.body, tag=tag, offer=offer)
        if body != msg.body:
            msg.set_body(body)
    parties = getattr(hook, "call_parties", None)
    if parties is not None and invite:
        # for the call detail record (the manager keeps the first naming,
        # and makes the URIs' text only for it)
        from_, to = msg.from_, msg.to
        if from_ is not None and to is not None:
            parties(key, leg, from_.uri, to.uri)
    if answer:
        hook.dialog_answered(key, leg, tag, ours=into)
    elif sdp and request and invite and to_tag is None:
        # a new call's INVITE, its SDP shown: the leg waits for a response
        invited = getattr(hook, "dialog_invited", None)
        if invited is not None:
            invited(key, leg)


def leg_ended(
    hook: MediaHook | None,
    key: TunnelKey,
    fid: int,
    call_id: str,
    status: int | None = None,
    reason: str = "dialog ended",
) -> None:
    """
    Tell the media hook that a call leg ended (C{status}: the final
    answer to its INVITE that ended it, if one did; C{reason}: for the
    call record).
    """
    if hook is not None:
        hook.dialog_ended(key, dialog_key(fid, call_id), challenged=status in (401, 407), reason=reason)


@dataclass(frozen=True, slots=True)
class MediaRefusal:
    """
    Why a half cannot take a new call's media now (L{media_full}).

    @ivar phrase: in the 503's reason phrase, C{Service Unavailable (...)}.
    @ivar reason: the log reason of the refusal.
    @ivar counter: the counter it is counted under (C{sip.events}).
    """

    phrase: str
    reason: str
    counter: str


#: Every media port pair of the half is in use.
NO_MEDIA_PORTS = MediaRefusal(
    "no free media ports", "no free media ports: new call refused with 503", "no free media ports"
)
#: The session of the call holds its share of the media port range
#: (C{--max-media-per-tunnel}).
TUNNEL_MEDIA_LIMIT = MediaRefusal(
    "media port limit of this tunnel reached",
    "media port limit of the tunnel reached (--max-media-per-tunnel): new call refused with 503",
    "media port limit of the tunnel reached",
)
#: The half relays its C{--max-calls} call legs.
CALL_LIMIT = MediaRefusal(
    "call limit reached", "call limit reached (--max-calls): new call refused with 503", "call limit reached"
)


def media_full(hook: MediaHook | None, msg: SipMessage, key: TunnelKey | None = None) -> MediaRefusal | None:
    """
    Why this half cannot relay the media of C{msg}, a new INVITE (no
    To-tag): its media port range is full, it relays its C{--max-calls}
    calls, or the tunnel C{key} the call goes through holds its share of
    the ports; C{None} when it can (or C{msg} is no new INVITE). The hook's
    optional C{media_full(key)} says so.  Both halves refuse such an INVITE
    with 503 whichever way it goes, since each needs a pair for every
    call.
    """
    if hook is None or msg.method != "INVITE" or msg.to_tag is not None:
        return None
    full = getattr(hook, "media_full", None)
    return None if full is None else full(key)
