# -*- test-case-name: tests.test_sip_proxy -*-
"""
The two halves of SPWM's split SIP proxy, as sans-I/O cores.

L{AgentSipProxy} sits on the LAN side: it numbers application flows, fixes
the application's C{Via} (RFC 3581), checks C{Max-Forwards}, gives
registering applications a stable C{+sip.instance}, and moves messages
between the applications and the tunnel.

L{ContactSipProxy} sits on the operator side: it adds its C{Via},
C{Record-Route} and C{Path} (or rewrites C{Contact}) with authenticated flow
tokens, sends requests only to the configured operator proxy (or the
embedded registrar), and routes everything coming back from the operator
network to the right tunnel and application flow.

Both are stateless proxies in the RFC 3261 sense (16.11): a transaction's
state lives in the C{Via} branch, which is computed from the incoming branch,
so retransmissions, CANCEL and ACK for non-2xx go exactly where the INVITE
went.  Neither core does I/O or logging: each method takes its inputs and
C{now} and returns a list of actions (L{ToTunnel}, L{ToApp}, L{ToNetwork},
L{Dropped}) for the adapter to carry out.

Media: a message carrying SDP is shown to an optional I{media hook}; see
L{MediaHook}.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from typing import Any, Hashable, Iterable, Protocol, Union

import attrs
from attrs import frozen

from spwm.sip.flows import (
    KIND_CONTACT,
    KIND_ROUTE,
    KIND_VIA,
    Flow,
    FlowTable,
    FlowToken,
    FlowTokenCodec,
)
from spwm.sip.errors import SipParseError
from spwm.sip.message import SipMessage, make_response, parse_message
from spwm.sip.names import ProxyNames

from spwm.sip.uri import parse_name_addr, parse_uri, parse_via

__all__ = [
    "AgentSipProxy",
    "BindingChanged",
    "ContactSipProxy",
    "Dialog",
    "Dropped",
    "Flow",
    "MediaHook",
    "OperatorProxy",
    "Registration",
    "RouteRefused",
    "ToApp",
    "ToNetwork",
    "ToTunnel",
]

MAGIC = "z9hG4bK"
#: Our agent's Via branches start with this (after the magic cookie).
AGENT_BRANCH_MARK = "spwa"
#: RFC 3261 18.1.1: a request within 200 bytes of a 1500-byte MTU goes by TCP.
UDP_SIZE_LIMIT = 1300
DEFAULT_MAX_FORWARDS = 70

_DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
_SDP_TYPES = frozenset({"application/sdp", "multipart/mixed"})
_DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "sctp": 5060}


# ---------------------------------------------------------------------------
# actions


@frozen
class ToTunnel:
    """
    Send one SIP message into a tunnel.

    @ivar tunnel_key: the opaque tunnel object the integration layer gave us.
    @ivar flow_id: the application flow (the frame's channel field).
    """

    tunnel_key: Any
    flow_id: int
    data: bytes


@frozen
class ToApp:
    """
    Send one SIP message to a LAN application over its own flow.
    """

    flow: Flow
    data: bytes


@frozen
class ToNetwork:
    """
    Send one SIP message on the operator network.

    @ivar transport: C{"udp"} or C{"tcp"}.
    @ivar addr: C{(host, port)}.
    """

    transport: str
    addr: tuple[str, int]
    data: bytes


@frozen
class Dropped:
    """
    A message was dropped; the adapter logs C{reason}.
    """

    reason: str


@frozen
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


@frozen
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


Action = Union[ToTunnel, ToApp, ToNetwork, Dropped, RouteRefused, BindingChanged]


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
        tunnel_key: Any,
        dialog_key: str,
        content_type: str,
        body: bytes,
        tag: str | None = None,
    ) -> None:
        """
        A message with SDP goes from this side into the tunnel.
        """

    def sdp_out_of_tunnel(
        self,
        tunnel_key: Any,
        dialog_key: str,
        content_type: str,
        body: bytes,
        tag: str | None = None,
    ) -> bytes:
        """
        A message with SDP comes out of the tunnel to this side; return the
        body to send instead.
        """

    def dialog_answered(
        self, tunnel_key: Any, dialog_key: str, tag: str | None, ours: bool = True
    ) -> None:
        """
        A 2xx to an INVITE crossed the tunnel (with or without SDP; called
        after the SDP hook for the same message). C{tag} is its To-tag;
        C{ours} is C{True} when it came from this side into the tunnel,
        C{False} when it came out of the tunnel.
        """

    def dialog_ended(self, tunnel_key: Any, dialog_key: str) -> None:
        """
        BYE, CANCEL, or a final non-2xx answer to an initial INVITE.
        """


@frozen
class OperatorProxy:
    """
    Where the contact point sends every request.
    """

    host: str
    port: int = 5060
    transport: str = "udp"


@frozen
class Registration:
    """
    A binding the operator's registrar accepted through a tunnel.
    """

    aor: str
    contact: str
    flow_id: int
    expires: float


@frozen
class Dialog:
    """
    An INVITE dialog established through a tunnel (one per to-tag when forked).
    """

    call_id: str
    from_tag: str | None
    to_tag: str | None
    flow_id: int
    expires: float


# ---------------------------------------------------------------------------
# helpers shared by both cores


def _hostport(host: str, port: int | None) -> str:
    h = f"[{host}]" if ":" in host else host
    return h if port is None else f"{h}:{port}"


def _param(
    params: Iterable[tuple[str, str | None]], name: str
) -> tuple[bool, str | None]:
    for k, v in params:
        if k.lower() == name:
            return True, v
    return False, None


def _h(text: str, n: int = 8) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:n]


def _branch_source(msg: SipMessage) -> str:
    """
    What identifies the transaction of C{msg} (RFC 3261 16.11): the top
    branch when it is RFC 3261 compliant, else the fields that stay equal
    for a CANCEL and an ACK of the same INVITE.
    """
    via = msg.top_via
    if via is not None:
        present, branch = _param(via.params, "branch")
        if branch and branch.startswith(MAGIC):
            return branch
    return "|".join(
        [
            msg.call_id or "",
            msg.from_tag or "",
            str(msg.cseq[0]),
            msg.get("Via") or "",
            msg.uri or "",
        ]
    )


def _has_sdp(msg: SipMessage) -> bool:
    return bool(msg.body) and msg.content_type in _SDP_TYPES


def _request_problem(msg: SipMessage) -> str | None:
    """
    @return: what is wrong with a request that parsed, or C{None}.
    """
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if msg.count(name) == 0:
            return f"missing {name}"
    try:
        num, method = msg.cseq
    except (SipParseError, ValueError, TypeError):
        return "malformed CSeq"
    if method.upper() != (msg.method or "").upper():
        return "CSeq method does not match the request"
    try:
        if msg.top_via is None:
            return "malformed Via"
        msg.max_forwards
    except (SipParseError, ValueError):
        return "malformed Via or Max-Forwards"
    return None


def _response_problem(msg: SipMessage) -> str | None:
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if msg.count(name) == 0:
            return f"missing {name}"
    try:
        msg.cseq
        if msg.top_via is None:
            return "malformed Via"
    except (SipParseError, ValueError, TypeError):
        return "malformed CSeq or Via"
    return None


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


def _answer_malformed(
    data: bytes, status: int, reason: str, drop: Dropped, send: Any
) -> list[Action]:
    """
    The actions for a message that did not parse: the crude error response
    (sent with C{send(bytes)}) when one can be made, and the drop.
    """
    resp = _crude_error(data, status, reason)
    return [drop] if resp is None else [send(resp), drop]


def _crude_error(data: bytes, status: int, reason: str) -> bytes | None:
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


def _expires_of(
    msg: SipMessage, params: Iterable[tuple[str, str | None]], default: int
) -> int:
    present, value = _param(params, "expires")
    if not present or value is None:
        value = msg.get("Expires")
    try:
        return max(0, int(value)) if value is not None else default
    except ValueError:
        return default


def _contacts(msg: SipMessage) -> list[Any]:
    """
    @return: the parsed contacts of C{msg}, C{"*"} entries and unparseable
        values left out.
    """
    out = []
    for value in msg.get_all("Contact"):
        if value.strip() == "*":
            continue
        try:
            out.append(parse_name_addr(value))
        except SipParseError:
            continue
    return out


def _top_route(msg: SipMessage) -> Any | None:
    routes = msg.get_all("Route")
    if not routes:
        return None
    try:
        return parse_name_addr(routes[0])
    except SipParseError:
        return None


def _pop_last_route(msg: SipMessage) -> None:
    routes = msg.get_all("Route")
    msg.remove_header("Route")
    for value in routes[:-1]:
        msg.append_header("Route", value)


def _strict_route(msg: SipMessage) -> bool:
    """
    RFC 3261 16.4: the Request-URI names us (a strict router before us
    put our C{Record-Route} value there): replace it with the last
    C{Route} value, which is removed.

    @return: whether it was replaced (not when the last C{Route} is
        unreadable or absent).
    """
    routes = msg.get_all("Route")
    if not routes:
        return False
    try:
        last = parse_name_addr(routes[-1])
    except SipParseError:
        return False
    _pop_last_route(msg)
    msg.uri = str(last.uri)
    return True


def _register_domain_uri(msg: SipMessage) -> None:
    """
    RFC 3261 10.2: the Request-URI of a REGISTER names the registrar's
    domain; a phone that has the agent as its registrar address names the
    agent instead.  Put the domain of the To URI there.
    """
    try:
        to = parse_name_addr(msg.get("To") or "").uri
    except SipParseError:
        return
    if to.scheme in ("sip", "sips") and to.host:
        msg.uri = f"{to.scheme}:{to.host_port}"


class _AppBindings:
    """
    The agent's view of its applications' registrations, for the log: the
    contacts of each REGISTER until its answer, then the bindings the 2xx
    confirmed, per flow and address-of-record.  Bounded: beyond C{limit}
    entries in either table the oldest go (and are no longer reported).
    """

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._pending: dict[tuple[int, str, int], tuple[str, frozenset[str] | None]] = {}
        self._bound: dict[tuple[int, str], dict[str, tuple[float, int]]] = {}
        self._flows: dict[int, Flow] = {}
        self.next_expiry: float | None = None

    def request(self, fid: int, msg: SipMessage) -> None:
        """
        A REGISTER from an application goes into the tunnel.
        """
        try:
            aor = str(parse_name_addr(msg.get("To") or "").uri)
        except SipParseError:
            return
        if any(v.strip() == "*" for v in msg.get_all("Contact")):
            contacts = None  # all of this flow's bindings of the AOR
        else:
            contacts = frozenset(str(na.uri) for na in _contacts(msg))
        self._pending[(fid, msg.call_id, msg.cseq[0])] = (aor, contacts)
        while len(self._pending) > self._limit:
            del self._pending[next(iter(self._pending))]

    def answered(self, flow: Flow, fid: int, msg: SipMessage, now: float) -> list[Action]:
        """
        A 2xx to a REGISTER comes back for C{fid}.

        @return: a L{BindingChanged} for each binding of the REGISTER's
            contacts that appeared or went.
        """
        pending = self._pending.pop((fid, msg.call_id, msg.cseq[0]), None)
        if pending is None:
            return []
        aor, asked = pending
        listed: dict[str, int] = {}
        for na in _contacts(msg):
            uri = str(na.uri)
            if asked is None or uri in asked:
                listed[uri] = _expires_of(msg, na.params, 3600)
        before = self._bound.pop((fid, aor), {})
        now_bound = {
            uri: (now + expires, expires) for uri, expires in listed.items() if expires > 0
        }
        if asked is not None:
            # contacts this REGISTER did not name keep their bindings
            now_bound.update({u: b for u, b in before.items() if u not in asked})
        events: list[Action] = []
        for uri, (_, expires) in now_bound.items():
            if uri not in before:
                events.append(BindingChanged("registered", aor, uri, expires, "", fid, flow))
        for uri in before:
            if uri not in now_bound:
                events.append(BindingChanged("unregistered", aor, uri, 0, "", fid, flow))
        if now_bound:
            self._bound[(fid, aor)] = now_bound
            self._flows[fid] = flow
            soonest = min(t for t, _ in now_bound.values())
            if self.next_expiry is None or soonest < self.next_expiry:
                self.next_expiry = soonest
            while len(self._bound) > self._limit:
                del self._bound[next(iter(self._bound))]
        return events

    def expire(self, now: float) -> list[Action]:
        """
        @return: a L{BindingChanged} C{"expired"} for each binding whose
            expiry passed (its application did not refresh it).
        """
        if self.next_expiry is None or self.next_expiry > now:
            return []
        events: list[Action] = []
        soonest: float | None = None
        for (fid, aor), bound in list(self._bound.items()):
            for uri, (t, _) in list(bound.items()):
                if t <= now:
                    del bound[uri]
                    events.append(BindingChanged("expired", aor, uri, 0, "", fid, self._flows.get(fid)))
                elif soonest is None or t < soonest:
                    soonest = t
            if not bound:
                del self._bound[(fid, aor)]
        live = {fid for fid, _ in self._bound}
        for fid in [f for f in self._flows if f not in live]:
            del self._flows[fid]
        self.next_expiry = soonest
        return events


class _CallIds:
    """
    The established dialogs of each call leg (several when a forked INVITE
    was answered by more than one branch), bounded, with expiry.
    """

    def __init__(self, lifetime: float, limit: int = 65536) -> None:
        self._lifetime = lifetime
        self._limit = limit
        self._ids: dict[Any, tuple[float, set[frozenset[Any]]]] = {}

    def add(self, leg: Any, now: float, tags: frozenset[Any] = frozenset()) -> None:
        _, dialogs = self._ids.pop(leg, (0.0, set()))
        dialogs.add(tags)
        self._ids[leg] = (now + self._lifetime, dialogs)
        if len(self._ids) > self._limit:
            del self._ids[next(iter(self._ids))]

    def discard(self, leg: Any, tags: frozenset[Any] | None = None) -> bool:
        """
        Forget one dialog of a leg (all of them without C{tags}).

        @return: whether no established dialog of the leg is left.
        """
        entry = self._ids.get(leg)
        if entry is None:
            return True
        if tags is not None:
            entry[1].discard(tags)
            if entry[1]:
                return False
        del self._ids[leg]
        return True

    def __contains__(self, leg: Any) -> bool:
        return leg in self._ids

    def expire(self, now: float) -> None:
        for k in [k for k, (t, _) in self._ids.items() if t <= now]:
            del self._ids[k]


def _parse(data: bytes, max_size: int) -> SipMessage:
    return parse_message(data, max_size=max_size)


# ---------------------------------------------------------------------------
# the agent


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
    ) -> None:
        """
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
        self.counters: dict[str, int] = {}
        self._rr_user = (
            "spwm-" + hashlib.sha256(agent_id.encode("utf-8")).hexdigest()[:12]
        )
        self._instance_ns = uuid.uuid5(uuid.NAMESPACE_URL, "spwm-agent:" + agent_id)
        self._established = _CallIds(dialog_lifetime)
        self._bindings = _AppBindings()

    # -- public API ---------------------------------------------------------

    def instance_for(self, contact_uri: str) -> str:
        """
        @return: the C{+sip.instance} value this agent gives an application
            whose contact URI is C{contact_uri} (stable across restarts).
        """
        return '"<urn:uuid:%s>"' % uuid.uuid5(self._instance_ns, contact_uri)

    def from_app(self, flow: Flow, data: bytes, now: float) -> list[Action]:
        """
        A message from a LAN application on C{flow}.
        """
        if not data.strip(b"\r\n\t "):
            return []  # keepalive noise on a datagram flow
        try:
            msg = _parse(data, self.max_message_size)
        except SipParseError as e:
            return self._refuse_app(flow, data, e.status, e.reason)
        if msg.is_request:
            return self._app_request(flow, msg, now)
        return self._app_response(flow, msg, now)

    def from_tunnel(self, flow_id: int, data: bytes, now: float) -> list[Action]:
        """
        A message from the contact point for application flow C{flow_id}.
        """
        try:
            msg = _parse(data, self.max_message_size)
        except SipParseError as e:
            return [self._drop("malformed message from tunnel: " + e.reason)]
        flow = self.flows.lookup(flow_id, now)
        if msg.is_request:
            return self._tunnel_request(flow_id, flow, msg, now)
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
        flows = self.flows.next_deadline()
        bindings = self._bindings.next_expiry
        if flows is None or (bindings is not None and bindings < flows):
            return bindings
        return flows

    def status(self) -> dict[str, Any]:
        """
        For the status page: application flows now, drops so far by reason.
        """
        return {"flows": len(self.flows), "events": dict(self.counters)}

    def handle_timer(self, now: float) -> list[Action]:
        """
        Expire flows, dialog records and the applications' bindings.

        @return: a L{BindingChanged} C{"expired"} for each binding of an
            application that was not refreshed in time.
        """
        self.flows.expire(now)
        self._established.expire(now)
        return self._bindings.expire(now)

    # -- internals ----------------------------------------------------------

    def _drop(self, reason: str) -> Dropped:
        key = reason.split(":", 1)[0]
        self.counters[key] = self.counters.get(key, 0) + 1
        return Dropped(reason)

    def _refuse_app(
        self, flow: Flow, data: bytes, status: int, reason: str
    ) -> list[Action]:
        drop = self._drop("malformed message from app: " + reason)
        return _answer_malformed(data, status, reason, drop, lambda resp: ToApp(flow, resp))

    def _answer(
        self, flow: Flow, msg: SipMessage, status: int, reason: str
    ) -> list[Action]:
        if msg.method == "ACK":
            return [self._drop(f"ACK refused: {status} {reason}")]
        return [ToApp(flow, make_response(msg, status, reason).to_bytes())]

    def _app_request(self, flow: Flow, msg: SipMessage, now: float) -> list[Action]:
        problem = _request_problem(msg)
        if problem is not None:
            if msg.count("Via") == 0 or problem.startswith("malformed Via"):
                return [self._drop("request from app without usable Via")]
            return self._answer(flow, msg, 400, "Bad Request: " + problem)
        if _starts_work(msg) and getattr(self.tunnel_key, "congested", False):
            return [ToApp(flow, _congested_response(msg)), self._drop(_CONGESTED)]
        mf = msg.max_forwards
        if mf is not None and mf <= 0:
            return self._answer(flow, msg, 483, "Too Many Hops")
        msg.set_header(
            "Max-Forwards", str(mf - 1 if mf is not None else DEFAULT_MAX_FORWARDS)
        )
        self._stamp_via(msg, flow)
        self._own_routing(msg)
        method = msg.method
        if method in _DIALOG_CREATING and msg.to_tag is None:
            msg.prepend_header("Record-Route", self._record_route(flow))
        if method == "REGISTER":
            self._add_instance(msg)
        fid = self.flows.use(flow, now)
        if method == "REGISTER":
            self._bindings.request(fid, msg)
        self._hook_into(fid, msg)
        self._maybe_ended(fid, msg)
        return [ToTunnel(self.tunnel_key, fid, msg.to_bytes())]

    def _app_response(self, flow: Flow, msg: SipMessage, now: float) -> list[Action]:
        if _response_problem(msg) is not None:
            return [self._drop("malformed response from app")]
        present, branch = _param(msg.top_via.params, "branch")
        if not (branch or "").startswith(MAGIC + AGENT_BRANCH_MARK):
            return [self._drop("response from app not for us")]
        msg.pop_first_value("Via")
        if msg.count("Via") == 0:
            return [self._drop("response from app with only our Via")]
        fid = self.flows.use(flow, now)
        self._track_response(msg, None, fid, now)
        self._hook_into(fid, msg)
        return [ToTunnel(self.tunnel_key, fid, msg.to_bytes())]

    def _tunnel_request(
        self, flow_id: int, flow: Flow | None, msg: SipMessage, now: float
    ) -> list[Action]:
        if _request_problem(msg) is not None:
            return [self._drop("malformed request from tunnel")]
        if flow is None:
            if msg.method == "ACK":
                return [self._drop("ACK for an unknown flow")]
            resp = make_response(msg, 430, "Flow Failed")
            return [ToTunnel(self.tunnel_key, flow_id, resp.to_bytes())]
        self._pop_own_routes(msg)
        branch = MAGIC + AGENT_BRANCH_MARK + _h(_branch_source(msg)).hex()
        msg.prepend_header(
            "Via",
            f"SIP/2.0/{flow.transport.upper()} {_hostport(*flow.local)};branch={branch}",
        )
        method = msg.method
        if method in _DIALOG_CREATING and msg.to_tag is None:
            msg.prepend_header("Record-Route", self._record_route(flow))
        self._hook_out(flow_id, msg)
        self._maybe_ended(flow_id, msg)
        return [ToApp(flow, msg.to_bytes())]

    def _tunnel_response(
        self, flow: Flow | None, msg: SipMessage, now: float
    ) -> list[Action]:
        if flow is None:
            return [self._drop("response for an unknown flow")]
        if _response_problem(msg) is not None:
            return [self._drop("malformed response from tunnel")]
        fid = self.flows.use(flow, now)
        self._track_response(msg, flow, fid, now)
        events: list[Action] = []
        if msg.cseq[1] == "REGISTER":
            self._strip_instance(msg)
            if 200 <= (msg.status or 0) < 300:
                events = self._bindings.answered(flow, fid, msg, now)
        self._hook_out(fid, msg)
        return [ToApp(flow, msg.to_bytes()), *events]

    def _track_response(self, msg: SipMessage, flow: Flow | None, fid: int, now: float) -> None:
        status = msg.status or 0
        method = msg.cseq[1]
        call_id = msg.call_id
        if method == "INVITE":
            if 200 <= status < 300:
                self._established.add((fid, call_id), now, frozenset((msg.from_tag, msg.to_tag)))
            elif status >= 300 and (fid, call_id) not in self._established:
                self._ended(fid, call_id)
        elif method == "REGISTER" and 200 <= status < 300 and flow is not None:
            longest = 0
            for na in _contacts(msg):
                longest = max(longest, _expires_of(msg, na.params, 0))
            if longest:
                fid = self.flows.use(flow, now)
                self.flows.extend(fid, longest + self.registration_margin, now)

    def _ours(self, uri: Any) -> bool:
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
                _register_domain_uri(msg)
            elif msg.count("Route"):
                _strict_route(msg)
        self._pop_own_routes(msg)

    def _pop_own_routes(self, msg: SipMessage) -> None:
        while True:
            top = _top_route(msg)
            if top is None or not self._ours(top.uri):
                return
            msg.pop_first_value("Route")

    def _record_route(self, flow: Flow) -> str:
        return f"<sip:{self._rr_user}@{_hostport(*flow.local)};transport={flow.transport};lr>"

    def _stamp_via(self, msg: SipMessage, flow: Flow) -> None:
        """
        RFC 3261 18.2.1 and RFC 3581: record where the request came from.
        """
        via = msg.top_via
        host, port = flow.remote
        new = via
        has_rport, rport = _param(via.params, "rport")
        if has_rport:
            new = new.with_param("received", host).with_param("rport", str(port))
        elif via.host != host:
            new = new.with_param("received", host)
        if new != via:
            msg.replace_first_value("Via", str(new))

    def _add_instance(self, msg: SipMessage) -> None:
        values = msg.get_all("Contact")
        if not values or any(v.strip() == "*" for v in values):
            return
        changed = False
        out = []
        for value in values:
            try:
                na = parse_name_addr(value)
            except SipParseError:
                return  # leave what we cannot read to the registrar
            present, _ = _param(na.params, "+sip.instance")
            if not present:
                inst = self.instance_for(str(na.uri))
                na = attrs.evolve(
                    na, params=na.params + (("+sip.instance", inst),), angle=True
                )
                changed = True
            out.append(str(na))
        if changed:
            msg.set_header("Contact", ", ".join(out))

    def _strip_instance(self, msg: SipMessage) -> None:
        """
        Take the C{+sip.instance} we gave an application out of the
        Contacts of the answer to its REGISTER, so it sees its own.
        """
        values = msg.get_all("Contact")
        out = []
        changed = False
        for value in values:
            try:
                na = parse_name_addr(value)
            except SipParseError:
                return
            present, inst = _param(na.params, "+sip.instance")
            if present and inst == self.instance_for(str(na.uri)):
                na = na.without_param("+sip.instance")
                changed = True
            out.append(str(na))
        if changed:
            msg.set_header("Contact", ", ".join(out))

    def _maybe_ended(self, fid: int, msg: SipMessage) -> None:
        """
        A BYE ends the leg's media only when it ends the leg's last dialog
        (a forked INVITE answered by two branches has two; the BYE to the
        loser must not take the winner's media); a CANCEL only before any
        answer.
        """
        method = msg.method
        leg = (fid, msg.call_id)
        if method == "BYE":
            if self._established.discard(leg, frozenset((msg.from_tag, msg.to_tag))):
                self._ended(fid, msg.call_id)
        elif method == "CANCEL" and leg not in self._established:
            self._ended(fid, msg.call_id)

    def _hook_into(self, fid: int, msg: SipMessage) -> None:
        _hook_into(self.media_hook, self.tunnel_key, fid, msg)

    def _hook_out(self, fid: int, msg: SipMessage) -> None:
        _hook_out(self.media_hook, self.tunnel_key, fid, msg)

    def _ended(self, fid: int, call_id: str) -> None:
        if self.media_hook is not None:
            self.media_hook.dialog_ended(self.tunnel_key, dialog_key(fid, call_id))


# ---------------------------------------------------------------------------
# the contact point


@attrs.define
class _Pending:
    session_id: str
    flow_id: int
    contacts: list[str]
    expires: float


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
        contact_rewrite: bool = False,
        media_hook: MediaHook | None = None,
        registrar: Any = None,
        dialog_lifetime: float = 12 * 3600.0,
        sweep_interval: float = 30.0,
        max_message_size: int = 65535,
        max_pending: int = 4096,
        names: ProxyNames | None = None,
    ) -> None:
        """
        @param secret: the per-process flow token key (16 bytes or more).
        @param registrar: the embedded registrar to use when C{operator} is
            C{None}; a fresh L{spwm.sip.registrar.EmbeddedRegistrar} by
            default.
        @param names: the URIs that name this contact point (RFC 3261
            16.4): C{address} and the C{--sip-name}s; C{address} alone by
            default.
        """
        self.address = address
        self.names = names if names is not None else ProxyNames([address])
        self.operator = operator
        self.contact_rewrite = contact_rewrite
        self.media_hook = media_hook
        if operator is None and registrar is None:
            from spwm.sip.registrar import EmbeddedRegistrar

            registrar = EmbeddedRegistrar()
        self.registrar = registrar
        self.dialog_lifetime = dialog_lifetime
        self.sweep_interval = sweep_interval
        self.max_message_size = max_message_size
        self.max_pending = max_pending
        self.counters: dict[str, int] = {}
        self._codec = FlowTokenCodec(secret)
        self._hp = _hostport(*address)
        self._tunnels: dict[str, Any] = {}
        self._sessions: dict[Any, str] = {}
        self._regs: dict[str, dict[tuple[str, str], Registration]] = {}
        self._dialogs: dict[str, dict[str, list[Dialog]]] = {}
        self._pending: dict[str, _Pending] = {}
        self._rewritten: dict[tuple[str, int, bytes], str] = {}
        self._next_sweep: float | None = None

    # -- tunnels ------------------------------------------------------------

    def tunnel_attached(self, tunnel_key: Any, session_id: str) -> None:
        """
        A tunnel with C{session_id} is up (or resumed on a new connection).
        """
        old = self._tunnels.get(session_id)
        if old is not None and old != tunnel_key:
            self._sessions.pop(old, None)
        self._tunnels[session_id] = tunnel_key
        self._sessions[tunnel_key] = session_id

    def tunnel_detached(self, tunnel_key: Any, keep_registrations: bool = False) -> None:
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
        self._dialogs.pop(session, None)
        for k in [k for k, p in self._pending.items() if p.session_id == session]:
            del self._pending[k]
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
        return {
            "registrations": [
                {"aor": r.aor, "contact": r.contact, "flow_id": r.flow_id, "ttl": r.expires - now}
                for r in self._regs.get(session_id, {}).values()
                if r.expires > now
            ],
            "rewritten": [
                [fid, extra.hex(), uri] for (s, fid, extra), uri in self._rewritten.items() if s == session_id
            ],
        }

    def import_registrations(self, session_id: str, data: Any, now: float) -> int:
        """
        Restore what L{export_registrations} gave, for a session without a
        tunnel (it stays dormant until resumed).

        @return: the number of registrations restored.
        @raise ValueError: C{data} is not what L{export_registrations} makes.
        """
        try:
            regs = {}
            for r in data["registrations"]:
                ttl = float(r["ttl"])
                flow_id = int(r["flow_id"])
                if math.isfinite(ttl) and ttl > 0 and 0 <= flow_id < 2**32:
                    reg = Registration(str(r["aor"]), str(r["contact"]), flow_id, now + ttl)
                    regs[reg.aor, reg.contact] = reg
            rewritten = {
                (session_id, int(fid), bytes.fromhex(extra)): str(uri) for fid, extra, uri in data["rewritten"]
            }
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"malformed registrations of session {session_id}: {e!r}") from None
        if regs:
            self._regs[session_id] = regs
            self._rewritten.update(rewritten)
            self._arm(now)
        return len(regs)

    def forget_session(self, session_id: str) -> None:
        """
        Forget what a session without a tunnel kept: its registrations and
        rewritten contacts.
        """
        if session_id in self._tunnels:
            return
        self._regs.pop(session_id, None)
        for k in [k for k in self._rewritten if k[0] == session_id]:
            del self._rewritten[k]

    def status(self) -> dict[str, Any]:
        """
        For the status page: sessions attached, bindings and dialogs now,
        and the drops and refusals so far (by reason or status code).
        """
        return {
            "sessions": len(self._tunnels),
            "registered_sessions": sum(1 for regs in self._regs.values() if regs),
            "registrations": sum(len(regs) for regs in self._regs.values()),
            "dialogs": sum(len(ds) for per in self._dialogs.values() for ds in per.values()),
            "events": dict(self.counters),
        }

    def registrations(self, session_id: str) -> list[Registration]:
        """
        @return: the live bindings registered through C{session_id}.
        """
        return sorted(
            self._regs.get(session_id, {}).values(), key=lambda r: (r.aor, r.contact)
        )

    def dialogs(self, session_id: str) -> list[Dialog]:
        """
        @return: the established dialogs of C{session_id}.
        """
        out: list[Dialog] = []
        for ds in self._dialogs.get(session_id, {}).values():
            out.extend(ds)
        return out

    def next_deadline(self) -> float | None:
        """
        @return: when L{handle_timer} should next run, or C{None}.
        """
        return self._next_sweep

    def handle_timer(self, now: float) -> list[Action]:
        """
        Expire registrations, dialogs, pending REGISTERs and the embedded
        registrar's bindings.

        @return: a L{BindingChanged} C{"expired"} for each registration
            that expired.
        """
        events: list[Action] = []
        for session, regs in self._regs.items():
            for k in [k for k, r in regs.items() if r.expires <= now]:
                r = regs.pop(k)
                events.append(BindingChanged("expired", r.aor, r.contact, 0, session, r.flow_id))
        for per in self._dialogs.values():
            for cid in list(per):
                per[cid] = [d for d in per[cid] if d.expires > now]
                if not per[cid]:
                    del per[cid]
        for k in [k for k, p in self._pending.items() if p.expires <= now]:
            del self._pending[k]
        if self.registrar is not None:
            self.registrar.expire(now)
        busy = any(self._regs.values()) or any(self._dialogs.values()) or self._pending
        self._next_sweep = now + self.sweep_interval if busy else None
        return events

    # -- messages from the tunnel ------------------------------------------

    def from_tunnel(
        self, tunnel_key: Any, session_id: str, flow_id: int, data: bytes, now: float
    ) -> list[Action]:
        """
        A SIP message from the agent behind C{tunnel_key}, for its flow
        C{flow_id}.
        """
        if (
            not 0 <= flow_id < 2**32
            or len(session_id.encode("utf-8", "surrogateescape")) > 64
        ):
            return [self._drop("flow id or session id out of range")]
        if self._tunnels.get(session_id) != tunnel_key:
            self.tunnel_attached(tunnel_key, session_id)
        try:
            msg = _parse(data, self.max_message_size)
        except SipParseError as e:
            drop = self._drop("malformed message from tunnel: " + e.reason)
            return _answer_malformed(
                data, e.status, e.reason, drop, lambda resp: ToTunnel(tunnel_key, flow_id, resp)
            )
        if msg.is_request:
            return self._tunnel_request(tunnel_key, session_id, flow_id, msg, now)
        return self._tunnel_response(tunnel_key, session_id, msg, now)

    def _tunnel_request(
        self, key: Any, session: str, fid: int, msg: SipMessage, now: float
    ) -> list[Action]:
        bad = self._bad_request(msg, "tunnel")
        if isinstance(bad, Dropped):
            return [bad]
        if bad is not None:
            return [ToTunnel(key, fid, bad.to_bytes())]
        mf = msg.max_forwards
        if mf is not None and mf <= 0:
            # the agent decrements; this only guards against a broken one
            if msg.method == "ACK":
                return [self._drop("ACK from tunnel with Max-Forwards 0")]
            resp = make_response(msg, 483, "Too Many Hops")
            return [ToTunnel(key, fid, resp.to_bytes())]
        if self._route_token(msg.uri) is not None:
            _strict_route(msg)
        self._pop_own_routes(msg, token=True)
        method = msg.method
        call_id = msg.call_id
        extra = _h(_branch_source(msg)) + _h(msg.uri or "", 2)
        branch = MAGIC + self._codec.encode(KIND_VIA, session, fid, extra)
        if method in _DIALOG_CREATING and msg.to_tag is None:
            msg.prepend_header("Record-Route", self._route_uri(session, fid))
        if method == "REGISTER":
            self._outgoing_register(msg, session, fid, branch, now)
        self._hook_out(key, fid, msg)
        self._maybe_ended(key, session, fid, msg)
        self._touch_dialog(session, call_id, now)
        if self.operator is None:
            transport = "udp"
            dest = self.address
        else:
            transport = self.operator.transport.lower()
            dest = (self.operator.host, self.operator.port)
        msg.prepend_header("Via", self._via(transport, branch))
        data = msg.to_bytes()
        if transport == "udp" and len(data) > UDP_SIZE_LIMIT:
            transport = "tcp"
            msg.replace_first_value("Via", self._via(transport, branch))
            data = msg.to_bytes()
        self._arm(now)
        if self.operator is None:
            return self._to_registrar(msg, now)
        return [ToNetwork(transport, dest, data)]

    def _tunnel_response(
        self, key: Any, session: str, msg: SipMessage, now: float
    ) -> list[Action]:
        if _response_problem(msg) is not None:
            return [self._drop("malformed response from tunnel")]
        tok = self._via_token(msg.top_via)
        if tok is None or tok.session_id != session:
            return [self._drop("response from tunnel without our Via")]
        msg.pop_first_value("Via")
        nxt = msg.top_via
        if nxt is None:
            return [self._drop("response from tunnel with only our Via")]
        transport, dest = _via_destination(nxt)
        self._track_response(key, session, tok.flow_id, msg, now)
        self._hook_out(key, tok.flow_id, msg)
        return self._send_response(transport, dest, msg.to_bytes(), now)

    # -- messages from the operator network --------------------------------

    def from_network(
        self, transport: str, src: tuple[str, int], data: bytes, now: float
    ) -> list[Action]:
        """
        A SIP message from the operator network, received on C{transport}
        from C{src}.
        """
        if not data.strip(b"\r\n\t "):
            return []
        try:
            msg = _parse(data, self.max_message_size)
        except SipParseError as e:
            drop = self._drop("malformed message from network: " + e.reason)
            return _answer_malformed(
                data, e.status, e.reason, drop, lambda resp: ToNetwork(transport, src, resp)
            )
        if msg.is_request:
            return self._network_request(transport, src, msg, now)
        return self._network_response(msg, now)

    def _network_response(self, msg: SipMessage, now: float) -> list[Action]:
        if _response_problem(msg) is not None:
            return [self._drop("malformed response from network")]
        top = msg.top_via
        tok = self._via_token(top)
        if tok is None:
            return [self._drop("response from network with unknown or forged Via")]
        key = self._tunnels.get(tok.session_id)
        if key is None:
            return [self._drop("response for a gone session")]
        present, branch = _param(top.params, "branch")
        msg.pop_first_value("Via")
        if msg.count("Via") == 0:
            return [self._drop("response from network with only our Via")]
        method = msg.cseq[1]
        status = msg.status or 0
        events: list[Action] = []
        if method == "REGISTER" and 200 <= status < 300:
            events = self._register_answered(msg, tok, branch or "", now)
        self._track_response(key, tok.session_id, tok.flow_id, msg, now)
        self._hook_into(key, tok.flow_id, msg)
        return [ToTunnel(key, tok.flow_id, msg.to_bytes()), *events]

    def _network_request(
        self, transport: str, src: tuple[str, int], msg: SipMessage, now: float
    ) -> list[Action]:
        bad = self._bad_request(msg, "network")
        if isinstance(bad, Dropped):
            return [bad]
        if bad is not None:
            return self._send_response(transport, src, bad.to_bytes(), now)
        self._stamp_via(msg, transport, src)
        mf = msg.max_forwards
        if mf is not None and mf <= 0:
            return self._refuse(msg, 483, "Too Many Hops", now)
        msg.set_header(
            "Max-Forwards", str(mf - 1 if mf is not None else DEFAULT_MAX_FORWARDS)
        )
        return self._route_in(transport, src, msg, now, True)

    def _route_in(
        self,
        transport: str,
        src: tuple[str, int],
        msg: SipMessage,
        now: float,
        lookup: bool,
    ) -> list[Action]:
        """
        Route a checked request from the network to the tunnel and flow its
        token names (top Route, or Request-URI with C{contact_rewrite}).

        @param lookup: whether a request without a token may be looked up
            in the embedded registrar.
        """
        tok = self._route_token(msg.uri)
        if tok is not None and _strict_route(msg):
            pass  # strict routing: the flow is the one in the Request-URI
        elif (top := self._pop_own_routes(msg, token=False)) is not None:
            if not self._is_us(top.uri):
                where = f" to {top.uri.host_port}" if top.uri.host else ""
                out = self._refuse(msg, 403, "Forbidden: not relaying" + where, now)
                if top.uri.host:
                    route = msg.get_all("Route")[0].strip()
                    out.append(RouteRefused(route, top.uri.host, top.uri.port, msg.method or ""))
                return out
            tok = self._codec.decode(top.uri.user, KIND_ROUTE)
            if tok is None:
                return self._refuse(msg, 403, "Forbidden: invalid flow token", now)
            msg.pop_first_value("Route")
        else:
            tok = None
            try:
                ruri = parse_uri(msg.uri or "")
            except SipParseError:
                return self._refuse(msg, 400, "Bad Request: malformed Request-URI", now)
            if self._is_us(ruri) and ruri.user:
                tok = self._codec.decode(ruri.user, KIND_CONTACT) or self._codec.decode(
                    ruri.user, KIND_ROUTE
                )
            if tok is None:
                if lookup:
                    return self._not_ours(transport, src, msg, now)
                return self._refuse(msg, 404, "Not Found", now)
            if tok.kind == KIND_CONTACT:
                original = self._rewritten.get((tok.session_id, tok.flow_id, tok.extra))
                if original is not None:
                    msg.uri = original
        key = self._tunnels.get(tok.session_id)
        if key is None:
            return self._refuse(msg, 430, "Flow Failed", now)
        if _starts_work(msg) and getattr(key, "congested", False):
            transport, dest = _via_destination(msg.top_via)
            resp = _congested_response(msg)
            return self._send_response(transport, dest, resp, now) + [self._drop(_CONGESTED)]
        ruri_hash = _h(msg.uri or "", 2)
        if self._looped(msg, tok.session_id, tok.flow_id, ruri_hash):
            return self._refuse(msg, 482, "Loop Detected", now)
        method = msg.method
        call_id = msg.call_id
        extra = _h(_branch_source(msg)) + ruri_hash
        branch = MAGIC + self._codec.encode(
            KIND_VIA, tok.session_id, tok.flow_id, extra
        )
        if method in _DIALOG_CREATING and msg.to_tag is None:
            msg.prepend_header(
                "Record-Route", self._route_uri(tok.session_id, tok.flow_id)
            )
        msg.prepend_header("Via", self._via("udp", branch))
        self._hook_into(key, tok.flow_id, msg)
        self._maybe_ended(key, tok.session_id, tok.flow_id, msg)
        self._touch_dialog(tok.session_id, call_id, now)
        return [ToTunnel(key, tok.flow_id, msg.to_bytes())]

    # -- internals ----------------------------------------------------------

    def _drop(self, reason: str) -> Dropped:
        key = reason.split(":", 1)[0]
        self.counters[key] = self.counters.get(key, 0) + 1
        return Dropped(reason)

    def _arm(self, now: float) -> None:
        if self._next_sweep is None:
            self._next_sweep = now + self.sweep_interval

    def _is_us(self, uri: Any) -> bool:
        return self.names.names_us(uri)

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

    def _pop_own_routes(self, msg: SipMessage, token: bool) -> Any | None:
        """
        Remove the top C{Route}s that name us without a flow token (a
        pre-loaded route to the contact point), and with C{token} also the
        first that carries a valid one (our C{Record-Route} on this leg;
        the next one, if ours, is the other leg's and routes back in).

        @return: the top C{Route} left (parsed), or C{None}.
        """
        while True:
            top = _top_route(msg)
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

    def _via_token(self, via: Any) -> FlowToken | None:
        if via is None:
            return None
        port = via.port if via.port is not None else 5060
        if via.host.lower() != self.address[0].lower() or port != self.address[1]:
            return None
        present, branch = _param(via.params, "branch")
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

    def _stamp_via(self, msg: SipMessage, transport: str, src: tuple[str, int]) -> None:
        via = msg.top_via
        host, port = src
        new = via
        has_rport, _ = _param(via.params, "rport")
        if has_rport or transport != "udp":
            new = new.with_param("received", host).with_param("rport", str(port))
        elif via.host != host:
            new = new.with_param("received", host)
        if new != via:
            msg.replace_first_value("Via", str(new))

    def _refuse(
        self, msg: SipMessage, status: int, reason: str, now: float
    ) -> list[Action]:
        """
        Answer a request from the network with an error, statelessly; an
        ACK is never answered.
        """
        if msg.method == "ACK":
            return [self._drop(f"ACK dropped: {status} {reason}")]
        self.counters[str(status)] = self.counters.get(str(status), 0) + 1
        resp = make_response(msg, status, reason)
        transport, dest = _via_destination(resp.top_via)
        return self._send_response(transport, dest, resp.to_bytes(), now)

    def _send_response(
        self, transport: str, dest: tuple[str, int], data: bytes, now: float
    ) -> list[Action]:
        if self._is_our_addr(dest):
            # the next Via is ours again (spiral, embedded registrar)
            return self.from_network(transport, self.address, data, now)
        return [ToNetwork(transport, dest, data)]

    def _is_our_addr(self, addr: tuple[str, int]) -> bool:
        return addr[0].lower() == self.address[0].lower() and addr[1] == self.address[1]

    def _to_registrar(self, msg: SipMessage, now: float) -> list[Action]:
        out: list[Action] = []
        for reply in self.registrar.handle_request(msg, now):
            out.extend(self.from_network("udp", self.address, reply.to_bytes(), now))
        return out

    def _not_ours(
        self, transport: str, src: tuple[str, int], msg: SipMessage, now: float
    ) -> list[Action]:
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
            return self._refuse(msg, 404, "Not Found", now)
        out: list[Action] = []
        for reply in self.registrar.handle_request(msg, now):
            if reply.is_request:
                if reply.count("Route") == 0:
                    out.extend(self._refuse(msg, 404, "Not Found", now))
                else:
                    out.extend(self._route_in(transport, src, reply, now, False))
            else:
                via_transport, dest = _via_destination(reply.top_via)
                out.extend(
                    self._send_response(via_transport, dest, reply.to_bytes(), now)
                )
        return out

    def _outgoing_register(
        self, msg: SipMessage, session: str, fid: int, branch: str, now: float
    ) -> None:
        contacts = _contacts(msg)
        originals = [str(na.uri) for na in contacts]
        if self.contact_rewrite and contacts:
            out = []
            for na in contacts:
                uhash = _h(str(na.uri), 4)
                self._rewritten[(session, fid, uhash)] = str(na.uri)
                token = self._codec.encode(KIND_CONTACT, session, fid, uhash)
                uri = parse_uri(f"sip:{token}@{self._hp}")
                out.append(str(attrs.evolve(na, uri=uri, angle=True)))
            msg.set_header("Contact", ", ".join(out))
        elif not self.contact_rewrite:
            if msg.count("Path"):
                msg.prepend_header("Path", self._route_uri(session, fid))
            else:
                msg.append_header("Path", self._route_uri(session, fid))
            supported = [s.strip().lower() for s in msg.get_all("Supported")]
            if "path" not in supported:
                msg.append_header("Supported", "path")
        self._pending[branch] = _Pending(session, fid, originals, now + 64.0)
        while len(self._pending) > self.max_pending:
            del self._pending[next(iter(self._pending))]

    def _register_answered(
        self, msg: SipMessage, tok: FlowToken, branch: str, now: float
    ) -> list[Action]:
        """
        A 2xx to a REGISTER sent through a tunnel: restore rewritten
        contacts and update the session's bindings.

        @return: a L{BindingChanged} for each binding of this REGISTER's
            flow and address-of-record that appeared, moved to this flow or
            went; a refresh that changes none of them makes none.
        """
        pending = self._pending.pop(branch, None)
        values = msg.get_all("Contact")
        restored = []
        mine: list[tuple[str, int]] = []
        changed = False
        for value in values:
            try:
                na = parse_name_addr(value)
            except SipParseError:
                restored.append(value)
                continue
            expires = _expires_of(msg, na.params, 3600)
            uri_text = str(na.uri)
            ctok = None
            if self._is_us(na.uri):
                ctok = self._codec.decode(na.uri.user, KIND_CONTACT)
            if (
                ctok is not None
                and ctok.session_id == tok.session_id
                and ctok.flow_id == tok.flow_id
            ):
                original = self._rewritten.get(
                    (ctok.session_id, ctok.flow_id, ctok.extra)
                )
                if original is not None:
                    uri_text = original
                    na = attrs.evolve(na, uri=parse_uri(original), angle=True)
                    changed = True
            restored.append(str(na))
            if pending is not None and uri_text in pending.contacts:
                mine.append((uri_text, expires))
        if changed:
            msg.set_header("Contact", ", ".join(restored))
        if pending is None:
            return []
        try:
            aor = str(parse_name_addr(msg.get("To") or "").uri)
        except SipParseError:
            return []
        session, fid = tok.session_id, tok.flow_id
        regs = self._regs.setdefault(session, {})
        before = {k: r for k, r in regs.items() if r.aor == aor and r.flow_id == fid}
        for k in before:
            del regs[k]
        events: list[Action] = []
        for uri_text, expires in mine:
            if expires > 0:
                key = (aor, uri_text)
                if key not in before:
                    events.append(BindingChanged("registered", aor, uri_text, expires, session, fid))
                regs[key] = Registration(aor, uri_text, fid, now + expires)
        for key, reg in before.items():
            if key not in regs:
                events.append(BindingChanged("unregistered", aor, reg.contact, 0, session, fid))
        self._arm(now)
        return events

    def _track_response(
        self, key: Any, session: str, fid: int, msg: SipMessage, now: float
    ) -> None:
        status = msg.status or 0
        num, method = msg.cseq
        call_id = msg.call_id
        per = self._dialogs.setdefault(session, {})
        if method == "INVITE":
            if 200 <= status < 300:
                ftag, ttag = msg.from_tag, msg.to_tag
                ds = [
                    d
                    for d in per.get(call_id, [])
                    if {d.from_tag, d.to_tag} != {ftag, ttag}
                ]
                ds.append(Dialog(call_id, ftag, ttag, fid, now + self.dialog_lifetime))
                per[call_id] = ds
                self._arm(now)
            elif status >= 300 and call_id not in per:
                self._ended(key, fid, call_id)
        elif (
            method == "BYE"
            and 200 <= status < 300
            or (method == "BYE" and status in (404, 481))
        ):
            tags = {msg.from_tag, msg.to_tag}
            ds = [d for d in per.get(call_id, []) if {d.from_tag, d.to_tag} != tags]
            if ds:
                per[call_id] = ds
            else:
                per.pop(call_id, None)
        if not per:
            self._dialogs.pop(session, None)

    def _touch_dialog(self, session: str, call_id: str, now: float) -> None:
        ds = self._dialogs.get(session, {}).get(call_id)
        if ds:
            expires = now + self.dialog_lifetime
            self._dialogs[session][call_id] = [
                attrs.evolve(d, expires=expires) for d in ds
            ]

    def _bad_request(self, msg: SipMessage, origin: str) -> SipMessage | Dropped | None:
        """
        C{None} for a well-formed request; else the 400 that says what is
        wrong, or a drop when no answer can be routed (or it is an ACK).
        """
        problem = _request_problem(msg)
        if problem is None:
            return None
        if msg.method == "ACK" or msg.count("Via") == 0 or problem.startswith("malformed Via"):
            return self._drop(f"malformed request from {origin}: {problem}")
        return make_response(msg, 400, "Bad Request: " + problem)

    def _maybe_ended(self, key: Any, session: str, fid: int, msg: SipMessage) -> None:
        """
        A BYE ends the leg's media only when no other established dialog of
        the leg is left (forking: the BYE to a losing branch keeps the
        winner's media); a CANCEL only before any answer.
        """
        method = msg.method
        if method not in ("BYE", "CANCEL"):
            return
        ds = [d for d in self._dialogs.get(session, {}).get(msg.call_id, []) if d.flow_id == fid]
        if method == "BYE":
            tags = {msg.from_tag, msg.to_tag}
            if any({d.from_tag, d.to_tag} != tags for d in ds):
                return
        elif ds:
            return
        self._ended(key, fid, msg.call_id)

    def _hook_into(self, key: Any, fid: int, msg: SipMessage) -> None:
        _hook_into(self.media_hook, key, fid, msg)

    def _hook_out(self, key: Any, fid: int, msg: SipMessage) -> None:
        _hook_out(self.media_hook, key, fid, msg)

    def _ended(self, key: Any, fid: int, call_id: str) -> None:
        if self.media_hook is not None:
            self.media_hook.dialog_ended(key, dialog_key(fid, call_id))


_CONGESTED = "tunnel congested: new request refused with 503"

#: Seconds a refused client is asked to wait (C{Retry-After}).
CONGESTED_RETRY_AFTER = 5


def _starts_work(msg: SipMessage) -> bool:
    """
    Whether a request starts something new (an out-of-dialog request that
    is not an ACK or CANCEL): what an overloaded tunnel refuses, while
    requests inside dialogs, ACK and CANCEL (which end work) go on.
    """
    return msg.to_tag is None and msg.method not in ("ACK", "CANCEL")


def _congested_response(msg: SipMessage) -> bytes:
    """
    The 503 for a request refused because its tunnel's signalling backlog
    is over the high-water mark (RFC 3261 21.5.4, with C{Retry-After}).
    """
    return make_response(
        msg,
        503,
        "Service Unavailable (tunnel congested)",
        extra_headers=(("Retry-After", str(CONGESTED_RETRY_AFTER)),),
    ).to_bytes()


def _author_tag(msg: SipMessage) -> str | None:
    """
    The tag of the endpoint that wrote C{msg}: the To-tag of a response,
    the From-tag of a request.
    """
    return msg.from_tag if msg.is_request else msg.to_tag


def _answers_invite(msg: SipMessage) -> bool:
    return (
        not msg.is_request
        and 200 <= (msg.status or 0) < 300
        and msg.cseq_method == "INVITE"
    )


def _hook_into(hook: MediaHook | None, key: Any, fid: int, msg: SipMessage) -> None:
    """
    Show a message going into the tunnel to the media hook: its SDP with
    the tag of this side's endpoint, then the answer of a 2xx to INVITE.
    """
    _show_media(hook, key, fid, msg, True)


def _hook_out(hook: MediaHook | None, key: Any, fid: int, msg: SipMessage) -> None:
    """
    Show a message coming out of the tunnel to the media hook (its body
    may be replaced), then the answer of a 2xx to INVITE.
    """
    _show_media(hook, key, fid, msg, False)


def _show_media(hook: MediaHook | None, key: Any, fid: int, msg: SipMessage, into: bool) -> None:
    if hook is None:
        return
    sdp = _has_sdp(msg)
    answer = _answers_invite(msg)
    if not (sdp or answer):
        return
    leg = dialog_key(fid, msg.call_id)
    tag = _author_tag(msg)
    if sdp and into:
        hook.sdp_into_tunnel(key, leg, msg.content_type, msg.body, tag=tag)
    elif sdp:
        body = hook.sdp_out_of_tunnel(key, leg, msg.content_type, msg.body, tag=tag)
        if body != msg.body:
            msg.set_body(body)
    if answer:
        hook.dialog_answered(key, leg, tag, ours=into)


def dialog_key(flow_id: int, call_id: str) -> str:
    """
    The media key of one leg of a call: the agent's application flow and the
    Call-ID.  Both halves know both, so they name the same leg alike; two
    phones behind one agent calling each other are two legs with one
    Call-ID and two flows.
    """
    return f"{flow_id}/{call_id}"


def _via_destination(via: Any) -> tuple[str, tuple[str, int]]:
    """
    Where a response goes for a C{Via} (RFC 3261 18.2.2, RFC 3581 4).
    """
    transport = via.transport.lower()
    present, received = _param(via.params, "received")
    has_rport, rport = _param(via.params, "rport")
    host = received or via.host
    port = via.port if via.port is not None else _DEFAULT_PORTS.get(transport, 5060)
    if rport and rport.isdigit():
        port = int(rport)
    return transport, (host, port)
