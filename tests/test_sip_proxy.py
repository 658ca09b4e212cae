"""
Tests for the split proxy cores (L{spwm.sip.agent_proxy}, L{spwm.sip.contact_proxy} and the modules they share) and L{spwm.sip.flows}: the agent and contact
point proxy cores, driven with real SIP messages in both directions, alone
and wired back to back through a fake tunnel.
"""

from __future__ import annotations

import base64
import hmac
import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.flows import (
    KIND_ROUTE,
    KIND_VIA,
    TOKEN_CACHE_SIZE,
    Flow,
    FlowTable,
    FlowToken,
    FlowTokenCodec,
    b32_lower,
)
from spwm.sip.errors import SipParseError
from spwm.sip.message import SipMessage, make_response, parse_message
from spwm.sip.names import ProxyNames
from spwm.sip.actions import (
    CALL_LIMIT,
    BindingChanged,
    Dropped,
    MediaRefusal,
    NO_MEDIA_PORTS,
    OperatorProxy,
    RouteRefused,
    ToApp,
    ToNetwork,
    ToTunnel,
    dialog_key,
)
from spwm.sip.agent_proxy import AgentSipProxy
from spwm.sip.checks import CONGESTED as _CONGESTED
from spwm.sip.checks import (
    OVERLOADED_COUNTER,
    RETRANSMITTED_ANSWERED,
    RETRANSMITTED_BUNCHED,
    RETRANSMITTED_CONGESTED,
    RETRANSMITTED_OVERLOADED,
    RecentInvites,
)
from spwm.sip.contact_proxy import ACK_OF_OUR_REFUSAL, TARGET_UNREACHABLE, UNKNOWN_TOKEN_430, UNKNOWN_TOKEN_REASON, ContactSipProxy
from spwm.sip.transport import AgentSipRunner, SipStreamFactory
from spwm.sip.uri import parse_name_addr
from spwm.testing.tunnel import FakeTunnel

SECRET = b"0123456789abcdef0123456789abcdef"
CONTACT_ADDR = ("203.0.113.5", 5060)
OPERATOR = OperatorProxy("198.51.100.7", 5060, "udp")
AGENT_LAN = ("192.0.2.1", 5060)
PHONE_A = ("192.0.2.10", 5062)
PHONE_B = ("192.0.2.11", 5064)
FLOW_A = Flow("udp", AGENT_LAN, PHONE_A)
FLOW_B = Flow("udp", AGENT_LAN, PHONE_B)
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
)


def request(
    method: str,
    ruri: str,
    *,
    via: str = "SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKapp1;rport",
    from_: str = "<sip:alice@example.org>;tag=fa",
    to: str = "<sip:bob@example.org>",
    call_id: str = "call-1@192.0.2.10",
    cseq: int = 1,
    cseq_method: str | None = None,
    max_forwards: int | None = 70,
    extra: tuple[str, ...] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> bytes:
    """
    Build a request's bytes.
    """
    lines = [f"{method} {ruri} SIP/2.0", f"Via: {via}"]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += [
        f"From: {from_}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
    ]
    lines += list(extra)
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def register(
    user: str = "alice",
    contact: str = "sip:alice@192.0.2.10:5062",
    *,
    via_host: str = "192.0.2.10:5062",
    branch: str = "z9hG4bKreg1",
    expires: int = 600,
    contact_params: str = "",
) -> bytes:
    """
    Build a REGISTER's bytes.
    """
    return request(
        "REGISTER",
        "sip:example.org",
        via=f"SIP/2.0/UDP {via_host};branch={branch};rport",
        from_=f"<sip:{user}@example.org>;tag=r{user}",
        to=f"<sip:{user}@example.org>",
        call_id=f"reg-{user}@x",
        extra=(f"Contact: <{contact}>{contact_params};expires={expires}",),
    )


def answer(
    data: bytes,
    status: int,
    reason: str = "OK",
    *,
    to_tag: str | None = "tt",
    extra: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> bytes:
    """
    Answer a request (given as bytes) like a UA would: copy Via, From, To,
    Call-ID, CSeq and the Record-Route.
    """
    req = parse_message(data)
    rr = tuple(("Record-Route", v) for v in req.get_all("Record-Route"))
    resp = make_response(req, status, reason, to_tag=to_tag, extra_headers=rr + extra)
    if body:
        resp.set_body(body, "application/sdp")
    return resp.to_bytes()


def only(actions: list[Any], kind: type) -> Any:
    """
    Assert that C{actions} is one action of C{kind} and return it (drops
    and events for the log aside).
    """
    real = [a for a in actions if not isinstance(a, (Dropped, BindingChanged, RouteRefused))]
    if len(real) != 1 or not isinstance(real[0], kind):
        raise AssertionError(f"expected one {kind.__name__}, got {actions!r}")
    return real[0]


def dropped(actions: list[Any]) -> list[str]:
    """
    @return: the reasons of the L{Dropped} actions, asserting there is
        nothing else.
    """
    others = [a for a in actions if not isinstance(a, Dropped)]
    if others:
        raise AssertionError(f"expected only drops, got {actions!r}")
    return [a.reason for a in actions]


def invite_for_phone() -> bytes:
    """
    An INVITE with SDP from the contact point for the phone at 192.0.2.10.
    """
    return request(
        "INVITE",
        "sip:alice@192.0.2.10:5062",
        via="SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKcp1",
        from_="<sip:bob@example.org>;tag=fb",
        to="<sip:alice@example.org>",
        body=SDP,
        content_type="application/sdp",
    )


class RecordingHook:
    """
    A media hook that records its calls and rewrites SDP recognisably.

    @ivar calls: the SDP and end calls, without tags (as before forking).
    @ivar tags: C{(direction, tag)} of every SDP call.
    @ivar answers: C{(tunnel_key, dialog_key, tag, ours)} of every
        C{dialog_answered}.
    """

    def __init__(self, side: str) -> None:
        self.side = side
        self.calls: list[tuple[Any, ...]] = []
        self.tags: list[tuple[str, str | None]] = []
        self.answers: list[tuple[Any, str, str | None, bool]] = []
        self.challenged: list[str] = []
        self.reasons: list[str] = []
        #: C{("invited" | "heard", dialog_key)} of every call of those
        self.waits: list[tuple[str, str]] = []
        #: what L{media_full} answers
        self.full: MediaRefusal | None = None

    def media_full(self, key: Any = None) -> MediaRefusal | None:
        return self.full

    def sdp_into_tunnel(
        self,
        tunnel_key: Any,
        dialog_key: str,
        content_type: str,
        body: bytes,
        tag: str | None = None,
        offer: tuple[int, str] | None = None,
    ) -> None:
        self.calls.append(("into", tunnel_key, dialog_key, content_type, body))
        self.tags.append(("into", tag))

    def sdp_out_of_tunnel(
        self,
        tunnel_key: Any,
        dialog_key: str,
        content_type: str,
        body: bytes,
        tag: str | None = None,
        offer: tuple[int, str] | None = None,
    ) -> bytes:
        self.calls.append(("out", tunnel_key, dialog_key, content_type, body))
        self.tags.append(("out", tag))
        return body + f"a=relayed-by:{self.side}\r\n".encode()

    def dialog_answered(
        self, tunnel_key: Any, dialog_key: str, tag: str | None, ours: bool = True
    ) -> None:
        self.answers.append((tunnel_key, dialog_key, tag, ours))

    def dialog_invited(self, tunnel_key: Any, dialog_key: str) -> None:
        self.waits.append(("invited", dialog_key))

    def dialog_heard(self, tunnel_key: Any, dialog_key: str) -> None:
        self.waits.append(("heard", dialog_key))

    def dialog_ended(
        self, tunnel_key: Any, dialog_key: str, challenged: bool = False, reason: str = "dialog ended"
    ) -> None:
        self.calls.append(("ended", tunnel_key, dialog_key))
        self.reasons.append(reason)
        if challenged:
            self.challenged.append(dialog_key)


class World:
    """
    A contact point, some agents behind fake tunnels, and the applications
    and operator network around them.  Actions are carried out in order;
    messages for applications and the network are collected.
    """

    def __init__(self, operator: OperatorProxy | None = None, **kw: Any) -> None:
        self.now = 1000.0
        self.contact = ContactSipProxy(CONTACT_ADDR, SECRET, operator=operator, **kw)
        self.agents: dict[FakeTunnel, AgentSipProxy] = {}
        self.to_apps: list[ToApp] = []
        self.to_network: list[ToNetwork] = []
        self.drops: list[str] = []
        self.events: list[Any] = []
        self.tunnel_frames: list[tuple[str, int, bytes]] = []

    def add_agent(
        self, session: str, hook: Any = None
    ) -> tuple[FakeTunnel, AgentSipProxy]:
        key = FakeTunnel(session)
        agent = AgentSipProxy(key, "agent-" + session, media_hook=hook)
        self.agents[key] = agent
        self.contact.tunnel_attached(key, session)
        return key, agent

    def run(self, actions: list[Any], origin: str) -> None:
        queue = [(a, origin) for a in actions]
        steps = 0
        while queue:
            steps += 1
            if steps > 500:
                raise AssertionError("message loop")
            action, where = queue.pop(0)
            if isinstance(action, ToTunnel):
                key = action.tunnel_key
                if where == "agent":
                    self.tunnel_frames.append(("up", action.flow_id, action.data))
                    out = self.contact.from_tunnel(
                        key, key.session_id, action.flow_id, action.data, self.now
                    )
                    queue += [(a, "contact") for a in out]
                else:
                    self.tunnel_frames.append(("down", action.flow_id, action.data))
                    out = self.agents[key].from_tunnel(
                        action.flow_id, action.data, self.now
                    )
                    queue += [(a, "agent") for a in out]
            elif isinstance(action, ToApp):
                self.to_apps.append(action)
            elif isinstance(action, ToNetwork):
                self.to_network.append(action)
            elif isinstance(action, (BindingChanged, RouteRefused)):
                self.events.append(action)
            else:
                self.drops.append(action.reason)

    def app(self, agent: AgentSipProxy, flow: Flow, data: bytes) -> None:
        self.run(agent.from_app(flow, data, self.now), "agent")

    def network(
        self,
        data: bytes,
        src: tuple[str, int] = ("198.51.100.7", 5060),
        transport: str = "udp",
    ) -> None:
        self.run(self.contact.from_network(transport, src, data, self.now), "contact")

    def take_app(self) -> tuple[Flow, SipMessage]:
        if len(self.to_apps) != 1:
            raise AssertionError(
                f"expected one message to an app: {self.to_apps!r} drops {self.drops!r}"
            )
        a = self.to_apps.pop()
        return a.flow, parse_message(a.data)

    def take_apps(self) -> list[tuple[Flow, SipMessage]]:
        out = [(a.flow, parse_message(a.data)) for a in self.to_apps]
        del self.to_apps[:]
        return out

    def take_network(self) -> tuple[ToNetwork, SipMessage]:
        if len(self.to_network) != 1:
            raise AssertionError(
                f"expected one message to the network: {self.to_network!r} drops {self.drops!r}"
            )
        a = self.to_network.pop()
        return a, parse_message(a.data)


class RecentInvitesTests(SynchronousTestCase):
    """
    Tests for L{RecentInvites}'s bounds.
    """

    def test_answered_forgotten_with_the_invite(self) -> None:
        """
        An INVITE forgotten past C{limit} is forgotten as answered too:
        the answered set stays within the bound.
        """
        invites = RecentInvites(limit=3)
        for n in range(10):
            msg = parse_message(request("INVITE", "sip:bob@example.org", call_id=f"c{n}"))
            invites.passing(msg, invites.again(msg), float(n))
            invites.accepted(parse_message(answer(msg.to_bytes(), 200)))
            self.assertEqual(invites.redundant(msg, n + 1.0), RETRANSMITTED_ANSWERED)
        self.assertEqual((len(invites._accepted), len(invites._passed_at)), (3, 3))
        first = parse_message(request("INVITE", "sip:bob@example.org", call_id="c0"))
        self.assertFalse(invites.again(first))
        self.assertIsNone(invites.redundant(first, 20.0))

    def test_bodies_bounded(self) -> None:
        """
        The bodies kept (rewritten ones only) stay within C{max_bytes}:
        past it the oldest INVITEs are forgotten, so their retransmissions
        count as new; the latest are remembered with their bodies.
        """
        hook = RecordingHook("x" * 1000)
        invites = RecentInvites(limit=100, max_bytes=5000)
        sent = []
        for n in range(10):
            msg = parse_message(request("INVITE", "sip:bob@example.org", call_id=f"c{n}", body=SDP, content_type="application/sdp"))
            invite = invites.passing(msg, invites.again(msg))
            invites.media(invite, False, hook, "key", 1, msg, False)
            sent.append((msg.body, request("INVITE", "sip:bob@example.org", call_id=f"c{n}", body=SDP, content_type="application/sdp")))
        self.assertLessEqual(invites._bytes, 5000)
        self.assertGreater(invites._bytes, 3000)
        first = parse_message(sent[0][1])
        self.assertFalse(invites.again(first))
        last = parse_message(sent[-1][1])
        self.assertTrue(invites.again(last))
        invites.media(invites.passing(last, True), True, hook, "key", 1, last, False)
        self.assertEqual(last.body, sent[-1][0])
        # a body going into the tunnel is not kept: it goes on unchanged
        msg = parse_message(request("INVITE", "sip:bob@example.org", call_id="in", body=SDP, content_type="application/sdp"))
        before = invites._bytes
        invites.media(invites.passing(msg, False), False, hook, "key", 1, msg, True)
        self.assertEqual(invites._bytes, before)


class FlowTokenTests(SynchronousTestCase):
    """
    Tests for L{FlowTokenCodec}.
    """

    @given(st.text(max_size=40), st.integers(0, 2**32 - 1), st.binary(max_size=12))
    def test_round_trip(self, session: str, flow_id: int, extra: bytes) -> None:
        """
        A token decodes to what was encoded, and is usable as a URI user part
        and Via branch (lower-case base32).
        """
        codec = FlowTokenCodec(SECRET)
        if len(session.encode("utf-8")) > 64:
            return
        token = codec.encode(KIND_ROUTE, session, flow_id, extra)
        self.assertRegex(token, r"^[a-z2-7]+$")
        tok = codec.decode(token, KIND_ROUTE)
        self.assertEqual(
            (tok.session_id, tok.flow_id, tok.extra), (session, flow_id, extra)
        )
        self.assertEqual(codec.decode(token.upper(), KIND_ROUTE), tok)

    def test_forged_and_other_kind(self) -> None:
        """
        A token under another secret, a changed token or one of another kind
        does not decode.
        """
        token = FlowTokenCodec(SECRET).encode(KIND_ROUTE, "s1", 7)
        self.assertIsNone(FlowTokenCodec(b"x" * 32).decode(token))
        flipped = token[:-3] + ("a" if token[-3] != "a" else "b") + token[-2:]
        self.assertIsNone(FlowTokenCodec(SECRET).decode(flipped))
        self.assertIsNone(FlowTokenCodec(SECRET).decode(token, KIND_VIA))

    def test_remembered(self) -> None:
        """
        A codec remembers the tokens it made and checked: the same token for
        the same fields, and a remembered token still decodes only as its
        own kind, while a changed one is checked and refused.  It remembers
        at most TOKEN_CACHE_SIZE of them.
        """
        codec = FlowTokenCodec(SECRET)
        token = codec.encode(KIND_VIA, "s1", 7, b"x")
        self.assertEqual(codec.encode(KIND_VIA, "s1", 7, b"x"), token)
        self.assertEqual(codec.decode(token), FlowToken(KIND_VIA, "s1", 7, b"x"))
        self.assertIsNone(codec.decode(token, KIND_ROUTE))
        flipped = token[:-3] + ("a" if token[-3] != "a" else "b") + token[-2:]
        self.assertIsNone(codec.decode(flipped))
        checked = FlowTokenCodec(SECRET).encode(KIND_ROUTE, "s2", 9)
        self.assertEqual(codec.decode(checked, KIND_ROUTE), FlowToken(KIND_ROUTE, "s2", 9))
        self.assertEqual(codec.encode(KIND_ROUTE, "s2", 9), checked)
        for i in range(TOKEN_CACHE_SIZE + 10):
            codec.encode(KIND_ROUTE, "s3", i)
            self.assertLessEqual(len(codec._decoded), TOKEN_CACHE_SIZE)
            self.assertLessEqual(len(codec._encoded), TOKEN_CACHE_SIZE)
        self.assertEqual(codec.decode(token), FlowToken(KIND_VIA, "s1", 7, b"x"))

    @given(st.binary(max_size=120))
    def test_base32_as_the_standard_library(self, data: bytes) -> None:
        """
        L{b32_lower} is C{base64.b32encode} without padding, in lower case
        (the tokens are on the wire: other workers and the transactions
        in flight must read them the same), for every length.
        """
        self.assertEqual(b32_lower(data), base64.b32encode(data).decode("ascii").rstrip("=").lower())

    def test_token_text_unchanged(self) -> None:
        """
        A token made under a fixed secret reads as the one C{main} made
        with C{base64.b32encode} before L{b32_lower} (C{2a8dfb7}).
        """
        token = FlowTokenCodec(SECRET).encode(KIND_VIA, "s1", 7, b"0123456789")
        self.assertEqual(token, "kyaaaaahajztcmbrgiztinjwg44dthh7ocbkguyyxe")

    @given(st.binary(min_size=16, max_size=100), st.binary(max_size=120))
    def test_mac_is_hmac_sha256(self, secret: bytes, payload: bytes) -> None:
        """
        A token's MAC, made from the codec's copied key state, is the
        first bytes of C{hmac.digest(secret, payload, "sha256")}, for keys
        shorter and longer than SHA-256's block, and again for the same
        codec.
        """
        codec = FlowTokenCodec(secret)
        for _ in range(2):
            self.assertEqual(codec._mac(payload), hmac.digest(secret, payload, "sha256")[:8])

    @given(st.text(max_size=300))
    def test_garbage_never_raises(self, text: str) -> None:
        """
        Any text decodes to C{None} or a token, never an exception.
        """
        FlowTokenCodec(SECRET).decode(text)

    def test_short_secret(self) -> None:
        """
        A secret under 16 bytes is refused.
        """
        self.assertRaises(ValueError, FlowTokenCodec, b"short")


class FlowTableTests(SynchronousTestCase):
    """
    Tests for L{FlowTable}.
    """

    def test_udp_idle_expiry(self) -> None:
        """
        A UDP flow keeps its id while used and is forgotten C{idle_lifetime}
        after its last use.
        """
        table = FlowTable(idle_lifetime=100.0)
        fid = table.use(FLOW_A, 0.0)
        self.assertEqual(table.use(FLOW_A, 50.0), fid)
        # the first use's deadline comes first, and finds the flow used
        self.assertEqual(table.next_deadline(), 100.0)
        table.expire(100.0)
        self.assertEqual(table.next_deadline(), 150.0)
        self.assertEqual(table.lookup(fid, 149.0), FLOW_A)
        table.expire(150.0)
        self.assertIsNone(table.lookup(fid, 150.0))
        self.assertIsNone(table.next_deadline())
        self.assertNotEqual(table.use(FLOW_A, 151.0), fid)

    def test_one_deadline_per_flow(self) -> None:
        """
        A flow used again and again keeps one deadline in the table's heap,
        not one per use; its lifetime still runs from its last use.
        """
        table = FlowTable(idle_lifetime=100.0)
        fid = table.use(FLOW_A, 0.0)
        for i in range(1, 1001):
            table.use(FLOW_A, i / 10)
        self.assertEqual(len(table._heap), 1)
        for now in (100.0, 199.0):
            table.expire(now)
            self.assertEqual(table.lookup(fid, now), FLOW_A)
        self.assertEqual(table.next_deadline(), 200.0)
        table.expire(200.0)
        self.assertIsNone(table.lookup(fid, 200.0))

    def test_extend(self) -> None:
        """
        A registration extends a UDP flow's lifetime.
        """
        table = FlowTable(idle_lifetime=100.0)
        fid = table.use(FLOW_A, 0.0)
        table.extend(fid, 3660.0, 0.0)
        table.expire(200.0)
        self.assertEqual(table.lookup(fid, 200.0), FLOW_A)
        self.assertEqual(table.next_deadline(), 3660.0)

    def test_stream_flows_until_closed(self) -> None:
        """
        A TCP flow lives until its connection closes.
        """
        table = FlowTable(idle_lifetime=10.0)
        flow = Flow("tcp", AGENT_LAN, PHONE_A, 3)
        fid = table.use(flow, 0.0)
        table.expire(10**6)
        self.assertEqual(table.lookup(fid, 10**6), flow)
        self.assertEqual(table.closed_connection(3), [flow])
        self.assertIsNone(table.lookup(fid, 10**6))

    def test_limit(self) -> None:
        """
        Beyond C{max_flows} the flow that expires soonest is forgotten.
        """
        table = FlowTable(idle_lifetime=10.0, max_flows=2)
        f1 = table.use(FLOW_A, 0.0)
        f2 = table.use(FLOW_B, 5.0)
        table.use(Flow("udp", AGENT_LAN, ("192.0.2.12", 5060)), 6.0)
        self.assertEqual(len(table), 2)
        self.assertIsNone(table.lookup(f1, 6.0))
        self.assertEqual(table.lookup(f2, 6.0), FLOW_B)


class AgentTests(SynchronousTestCase):
    """
    Tests for L{AgentSipProxy} alone.
    """

    def setUp(self) -> None:
        self.key = object()
        self.hook = RecordingHook("agent")
        self.agent = AgentSipProxy(self.key, "agent-1", media_hook=self.hook)

    def test_register_adds_instance_and_rport(self) -> None:
        """
        A REGISTER goes into the tunnel with C{received}/C{rport} filled in,
        Max-Forwards decremented and a stable C{+sip.instance} added.
        """
        act = only(self.agent.from_app(FLOW_A, register(), 0.0), ToTunnel)
        self.assertIs(act.tunnel_key, self.key)
        msg = parse_message(act.data)
        via = msg.top_via
        self.assertEqual((via.received, via.rport), ("192.0.2.10", "5062"))
        self.assertEqual(msg.max_forwards, 69)
        contact = parse_name_addr(msg.get("Contact"))
        inst = contact.param("+sip.instance")
        self.assertEqual(inst, self.agent.instance_for("sip:alice@192.0.2.10:5062"))
        self.assertEqual(contact.param("expires"), "600")
        again = AgentSipProxy(object(), "agent-1").instance_for(
            "sip:alice@192.0.2.10:5062"
        )
        self.assertEqual(again, inst)
        self.assertNotEqual(self.agent.instance_for("sip:bob@192.0.2.11:5064"), inst)
        self.assertNotEqual(
            AgentSipProxy(object(), "agent-2").instance_for(
                "sip:alice@192.0.2.10:5062"
            ),
            inst,
        )

    def test_congested_tunnel_refuses_new_requests(self) -> None:
        """
        While the tunnel's signalling backlog is over its high-water mark,
        an INVITE or REGISTER from the application is answered C{503} with
        C{Retry-After} and nothing goes into the tunnel; ACK, CANCEL and
        requests inside a dialog (BYE) still go in.
        """

        agent = AgentSipProxy(FakeTunnel("s"), "agent-1")
        for data in (request("INVITE", "sip:bob@example.org"), register()):
            resp = parse_message(only(agent.from_app(FLOW_A, data, 0.0, congested=True), ToApp).data)
            self.assertEqual((resp.status, resp.get("Retry-After")), (503, "5"))
        self.assertEqual(agent.counters[_CONGESTED.split(":")[0]], 2)
        for data in (
            request("CANCEL", "sip:bob@example.org"),
            request("ACK", "sip:bob@example.org", to="<sip:bob@example.org>;tag=b"),
            request("BYE", "sip:bob@example.org", to="<sip:bob@example.org>;tag=b", cseq=2),
        ):
            only(agent.from_app(FLOW_A, data, 0.0, congested=True), ToTunnel)
        only(agent.from_app(FLOW_A, request("INVITE", "sip:bob@example.org"), 0.0), ToTunnel)

    def test_overloaded_refuses_new_requests(self) -> None:
        """
        While the agent's SIP input is overloaded, a new request either
        way (an INVITE or REGISTER from the phone, an INVITE for the phone)
        is answered C{503 Service Unavailable (overloaded)} with
        C{Retry-After} where it came from, counted as C{overloaded}, and
        nothing goes on; ACK, CANCEL and requests inside a dialog go on.
        """
        fid = self.agent.flows.use(FLOW_A, 0.0)
        for data in (request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp"), register()):
            resp = parse_message(only(self.agent.from_app(FLOW_A, data, 0.0, overloaded=True), ToApp).data)
            self.assertEqual(
                (resp.status, resp.reason, resp.get("Retry-After")), (503, "Service Unavailable (overloaded)", "5")
            )
        act = only(self.agent.from_tunnel(fid, invite_for_phone(), 1.0, overloaded=True), ToTunnel)
        resp = parse_message(act.data)
        self.assertEqual((act.flow_id, resp.status, resp.reason), (fid, 503, "Service Unavailable (overloaded)"))
        self.assertEqual((self.agent.counters[OVERLOADED_COUNTER], self.hook.calls), (3, []))
        for data in (
            request("CANCEL", "sip:bob@example.org"),
            request("ACK", "sip:bob@example.org", to="<sip:bob@example.org>;tag=b"),
            request("BYE", "sip:bob@example.org", to="<sip:bob@example.org>;tag=b", cseq=2),
        ):
            only(self.agent.from_app(FLOW_A, data, 0.0, overloaded=True), ToTunnel)
        only(self.agent.from_app(FLOW_A, request("INVITE", "sip:bob@example.org", call_id="c3"), 0.0), ToTunnel)

    def test_overload_retransmissions(self) -> None:
        """
        A retransmission of an INVITE passed on before the overload is
        dropped, not answered 503 (its original is on its way); a copy of
        an INVITE refused as overloaded is refused again after the
        overload, rather than starting a call its caller gave up.
        """
        sent = request("INVITE", "sip:bob@example.org")
        only(self.agent.from_app(FLOW_A, sent, 0.0), ToTunnel)
        self.assertEqual(dropped(self.agent.from_app(FLOW_A, sent, 0.6, overloaded=True)), [RETRANSMITTED_OVERLOADED])
        refused = request("INVITE", "sip:bob@example.org", call_id="c2")
        resp = parse_message(only(self.agent.from_app(FLOW_A, refused, 1.0, overloaded=True), ToApp).data)
        self.assertEqual(resp.status, 503)
        resp = parse_message(only(self.agent.from_app(FLOW_A, refused, 1.5), ToApp).data)
        self.assertEqual((resp.status, resp.reason), (503, "Service Unavailable (overloaded)"))
        self.assertEqual(self.agent.counters[OVERLOADED_COUNTER], 2)
        # a new INVITE of the same call (another branch) after the overload goes on
        only(self.agent.from_app(FLOW_A, refused.replace(b"z9hG4bK", b"z9hG4bKnew"), 2.0), ToTunnel)

    def test_media_full_refuses_new_invites(self) -> None:
        """
        While the agent's media port range is full, a new INVITE either way
        is answered C{503} with C{Retry-After} where it came from and its
        SDP is not shown to the media hook; a REGISTER, a re-INVITE and a
        BYE still pass, and so do new INVITEs once pairs are free again.
        """
        self.hook.full = NO_MEDIA_PORTS
        fid = self.agent.flows.use(FLOW_A, 0.0)
        out = request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp")
        resp = parse_message(only(self.agent.from_app(FLOW_A, out, 0.0), ToApp).data)
        self.assertEqual(
            (resp.status, resp.reason, resp.get("Retry-After")),
            (503, "Service Unavailable (no free media ports)", "5"),
        )
        inv = invite_for_phone()
        act = only(self.agent.from_tunnel(fid, inv, 1.0), ToTunnel)
        resp = parse_message(act.data)
        self.assertEqual((act.flow_id, resp.status, resp.top_via.branch), (fid, 503, "z9hG4bKcp1"))
        self.assertEqual(self.hook.calls, [])
        self.assertEqual(self.agent.counters[NO_MEDIA_PORTS.counter], 2)
        in_dialog = {"to": "<sip:bob@example.org>;tag=b", "cseq": 2}
        for data in (
            register(),
            request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp", **in_dialog),
            request("BYE", "sip:bob@example.org", **in_dialog),
        ):
            only(self.agent.from_app(FLOW_A, data, 0.0), ToTunnel)
        self.hook.full = None
        only(self.agent.from_app(FLOW_A, out, 0.0), ToTunnel)
        only(self.agent.from_tunnel(fid, inv, 1.0), ToApp)

    def test_retransmitted_invite_not_refused(self) -> None:
        """
        A retransmission of an INVITE already passed into the tunnel is not
        answered 503 when the tunnel has become congested (dropped: the
        original is on its way) or the media range full (passed on again);
        an INVITE refused with 503 is refused again when retransmitted.
        """
        agent = AgentSipProxy(FakeTunnel("s"), "agent-1", media_hook=self.hook)
        sent = request("INVITE", "sip:bob@example.org")
        only(agent.from_app(FLOW_A, sent, 0.0), ToTunnel)
        self.assertEqual(dropped(agent.from_app(FLOW_A, sent, 0.5, congested=True)), [RETRANSMITTED_CONGESTED])
        self.hook.full = NO_MEDIA_PORTS
        only(agent.from_app(FLOW_A, sent, 1.5), ToTunnel)
        refused = request("INVITE", "sip:bob@example.org", call_id="c2")
        for _ in range(2):
            resp = parse_message(only(agent.from_app(FLOW_A, refused, 2.0), ToApp).data)
            self.assertEqual(resp.status, 503)
        self.hook.full = None
        for _ in range(2):
            resp = parse_message(only(agent.from_app(FLOW_A, refused, 2.0, congested=True), ToApp).data)
            self.assertEqual(resp.status, 503)
        self.assertEqual(agent.counters[RETRANSMITTED_CONGESTED], 1)
        # an INVITE for the phone, repeated by the contact point once the
        # agent's range is full, goes to the phone again
        fid = agent.flows.use(FLOW_B, 0.0)
        self.hook.full = None
        only(agent.from_tunnel(fid, invite_for_phone(), 3.0), ToApp)
        self.hook.full = NO_MEDIA_PORTS
        only(agent.from_tunnel(fid, invite_for_phone(), 3.5), ToApp)

    def test_retransmitted_invite_after_2xx_dropped(self) -> None:
        """
        A retransmission of an INVITE that comes after a 2xx to it has
        passed back (it crossed the 2xx) is dropped, either way: passed on
        after the caller's ACK, it reaches a UAS whose dialog is confirmed
        (SIPp's UAS then abandons the call).  Before the 2xx, after a
        provisional or after a non-2xx final answer, it goes on.
        """
        agent = AgentSipProxy(FakeTunnel("s"), "agent-1", media_hook=self.hook)
        sent = request("INVITE", "sip:bob@example.org")
        up = only(agent.from_app(FLOW_A, sent, 0.0), ToTunnel)
        only(agent.from_tunnel(up.flow_id, answer(up.data, 180, "Ringing"), 0.1), ToApp)
        self.assertEqual(only(agent.from_app(FLOW_A, sent, 0.5), ToTunnel).data, up.data)
        only(agent.from_tunnel(up.flow_id, answer(up.data, 200), 0.6), ToApp)
        self.assertEqual(dropped(agent.from_app(FLOW_A, sent, 1.5)), [RETRANSMITTED_ANSWERED])
        self.assertEqual(agent.counters[RETRANSMITTED_ANSWERED], 1)
        # another INVITE of the same call (a new branch) goes on
        other = sent.replace(b"branch=z9hG4bK", b"branch=z9hG4bKnew")
        self.assertNotEqual(other, sent)
        only(agent.from_app(FLOW_A, other, 1.6), ToTunnel)
        # refused: its retransmission goes on, to be refused again
        refused = request("INVITE", "sip:bob@example.org", call_id="c2")
        up2 = only(agent.from_app(FLOW_A, refused, 2.0), ToTunnel)
        only(agent.from_tunnel(up2.flow_id, answer(up2.data, 486, "Busy Here"), 2.1), ToApp)
        only(agent.from_app(FLOW_A, refused, 2.5), ToTunnel)
        # an INVITE for the phone: the phone's 2xx passes back into the
        # tunnel, and the INVITE repeated by the contact point stops here
        fid = agent.flows.use(FLOW_B, 0.0)
        down = only(agent.from_tunnel(fid, invite_for_phone(), 3.0), ToApp)
        only(agent.from_tunnel(fid, invite_for_phone(), 3.5), ToApp)
        only(agent.from_app(FLOW_B, answer(down.data, 200), 3.6), ToTunnel)
        self.assertEqual(dropped(agent.from_tunnel(fid, invite_for_phone(), 4.5)), [RETRANSMITTED_ANSWERED])
        self.assertEqual(agent.counters[RETRANSMITTED_ANSWERED], 2)

    def test_bunched_retransmission_dropped(self) -> None:
        """
        A retransmission that comes within 0.25 s of the last copy passed
        on (bunched on the way: a phone retransmits 0.5 s apart at the
        least) is dropped; one spaced as a phone spaces them goes on.
        """
        sent = request("INVITE", "sip:bob@example.org")
        verdicts = []
        for now in (0.0, 0.1, 0.5, 0.6, 0.74, 1.5):
            actions = self.agent.from_app(FLOW_A, sent, now)
            verdicts.append("on" if any(isinstance(a, ToTunnel) for a in actions) else dropped(actions)[0])
        b = RETRANSMITTED_BUNCHED
        self.assertEqual(verdicts, ["on", b, "on", b, b, "on"])

    def test_retransmitted_invite_goes_as_the_original(self) -> None:
        """
        A retransmission of an INVITE goes on as its original did (into
        the tunnel unchanged; to the phone with the body the original
        went with) and is not shown to the media hook again.
        """
        sent = request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp")
        for now in (0.0, 0.5):
            only(self.agent.from_app(FLOW_A, sent, now), ToTunnel)
        self.assertEqual([c[0] for c in self.hook.calls], ["into"])
        fid = self.agent.flows.use(FLOW_B, 0.0)
        first = parse_message(only(self.agent.from_tunnel(fid, invite_for_phone(), 1.0), ToApp).data)
        self.hook.side = "changed"
        again = parse_message(only(self.agent.from_tunnel(fid, invite_for_phone(), 1.5), ToApp).data)
        self.assertTrue(first.body.endswith(b"a=relayed-by:agent\r\n"), first.body)
        self.assertEqual(again.body, first.body)
        self.assertEqual([c[0] for c in self.hook.calls], ["into", "out"])

    def test_register_keeps_own_instance(self) -> None:
        """
        An application's own C{+sip.instance} is kept as it is.
        """
        data = register(
            contact_params=';+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>"'
        )
        act = only(self.agent.from_app(FLOW_A, data, 0.0), ToTunnel)
        self.assertIn(
            b'+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>"', act.data
        )
        self.assertEqual(act.data.count(b"+sip.instance"), 1)

    def test_response_back_to_flow(self) -> None:
        """
        A response from the tunnel goes to the application's flow; a 2xx to
        REGISTER keeps the UDP flow for the registration's lifetime.
        """
        up = only(self.agent.from_app(FLOW_A, register(expires=3600), 0.0), ToTunnel)
        act = only(
            self.agent.from_tunnel(
                up.flow_id,
                answer(
                    up.data,
                    200,
                    extra=(("Contact", "<sip:alice@192.0.2.10:5062>;expires=3600"),),
                ),
                1.0,
            ),
            ToApp,
        )
        self.assertEqual(act.flow, FLOW_A)
        self.agent.handle_timer(1000.0)
        self.assertEqual(self.agent.flows.lookup(up.flow_id, 1000.0), FLOW_A)
        self.assertEqual(self.agent.flows.next_deadline(), 1.0 + 3600 + 60)
        # the timer runs first when the binding expires (to report it)
        self.assertEqual(self.agent.next_deadline(), 1.0 + 3600)

    def test_malformed_request_400(self) -> None:
        """
        A request the parser refuses is answered 400 with a reason phrase
        saying what is wrong, on the same flow.
        """
        data = request("INVITE", "sip:bob@example.org").replace(
            b"CSeq: 1 INVITE", b"CSeq: x INVITE"
        )
        acts = self.agent.from_app(FLOW_A, data, 0.0)
        act = only(acts, ToApp)
        self.assertTrue(
            act.data.startswith(b"SIP/2.0 400 Bad Request: malformed CSeq\r\n")
        )
        self.assertIn(b"\r\nCall-ID: call-1@192.0.2.10\r\n", act.data)
        self.assertTrue(act.data.endswith(b"\r\nContent-Length: 0\r\n\r\n"))
        self.assertEqual(act.flow, FLOW_A)

    def test_cseq_mismatch_400(self) -> None:
        """
        A request whose CSeq method differs from its method gets 400.
        """
        data = request("INVITE", "sip:bob@example.org", cseq_method="BYE")
        resp = parse_message(only(self.agent.from_app(FLOW_A, data, 0.0), ToApp).data)
        self.assertEqual(resp.status, 400)
        self.assertIn("CSeq method", resp.reason)

    def test_malformed_response_dropped(self) -> None:
        """
        A malformed response from an application is dropped.
        """
        self.assertTrue(
            dropped(
                self.agent.from_app(FLOW_A, b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", 0.0)
            )
        )

    def test_max_forwards_483(self) -> None:
        """
        A request with Max-Forwards 0 is answered 483 (but an OPTIONS,
        which the agent answers itself: L{AgentOptionsTests}).
        """
        data = request("MESSAGE", "sip:bob@example.org", max_forwards=0)
        resp = parse_message(only(self.agent.from_app(FLOW_A, data, 0.0), ToApp).data)
        self.assertEqual(resp.status, 483)

    def test_keepalive_ignored(self) -> None:
        """
        A datagram of only CRLF is ignored.
        """
        self.assertEqual(self.agent.from_app(FLOW_A, b"\r\n\r\n", 0.0), [])

    def test_request_from_tunnel(self) -> None:
        """
        A request for a known flow gets the agent's Via and Record-Route and
        goes to the flow; the application's response loses that Via and goes
        into the tunnel.
        """
        fid = self.agent.flows.use(FLOW_A, 0.0)
        inv = invite_for_phone()
        act = only(self.agent.from_tunnel(fid, inv, 1.0), ToApp)
        self.assertEqual(act.flow, FLOW_A)
        msg = parse_message(act.data)
        via = msg.top_via
        self.assertEqual(
            (via.host, via.port, via.transport), ("192.0.2.1", 5060, "UDP")
        )
        rr = parse_name_addr(msg.get("Record-Route"))
        self.assertEqual(
            (rr.uri.host, rr.uri.port, rr.uri.param("lr")), ("192.0.2.1", 5060, "")
        )
        self.assertTrue(msg.body.endswith(b"a=relayed-by:agent\r\n"))
        self.assertEqual(msg.get("Content-Length"), str(len(msg.body)))
        self.assertEqual(
            self.hook.calls[-1][:4],
            ("out", self.key, dialog_key(1, "call-1@192.0.2.10"), "application/sdp"),
        )
        resp = answer(act.data, 200, body=SDP)
        up = only(self.agent.from_app(FLOW_A, resp, 2.0), ToTunnel)
        out = parse_message(up.data)
        self.assertEqual(out.top_via.host, "203.0.113.5")
        self.assertEqual(out.count("Via"), 1)
        self.assertEqual(
            self.hook.calls[-1],
            ("into", self.key, dialog_key(1, "call-1@192.0.2.10"), "application/sdp", SDP),
        )

    def test_response_not_ours_dropped(self) -> None:
        """
        A response from an application whose top Via is not the agent's is
        dropped.
        """
        resp = answer(request("OPTIONS", "sip:x@example.org"), 200)
        self.assertTrue(dropped(self.agent.from_app(FLOW_A, resp, 0.0)))

    def test_unknown_flow_430(self) -> None:
        """
        A request from the tunnel for a flow the agent no longer has is
        answered 430 into the tunnel; an ACK is dropped.
        """
        inv = request(
            "INVITE",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKcp1",
        )
        act = only(self.agent.from_tunnel(42, inv, 0.0), ToTunnel)
        self.assertEqual((act.flow_id, parse_message(act.data).status), (42, 430))
        ack = request(
            "ACK",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKcp1",
        )
        self.assertTrue(dropped(self.agent.from_tunnel(42, ack, 0.0)))

    def test_tcp_flow_closed(self) -> None:
        """
        After C{flow_closed} a TCP flow is unknown.
        """
        flow = Flow("tcp", AGENT_LAN, PHONE_A, 9)
        up = only(self.agent.from_app(flow, register(), 0.0), ToTunnel)
        self.agent.flow_closed(flow)
        self.assertTrue(
            dropped(self.agent.from_tunnel(up.flow_id, answer(up.data, 200), 1.0))
        )

    def test_bye_and_rejected_invite_end_dialog(self) -> None:
        """
        The media hook hears C{dialog_ended} on BYE and on a final non-2xx
        answer to an initial INVITE, not on a rejected re-INVITE.
        """
        up = only(
            self.agent.from_app(FLOW_A, request("INVITE", "sip:bob@example.org"), 0.0),
            ToTunnel,
        )
        self.agent.from_tunnel(up.flow_id, answer(up.data, 486, "Busy Here"), 1.0)
        self.assertEqual(self.hook.calls[-1], ("ended", self.key, dialog_key(1, "call-1@192.0.2.10")))
        del self.hook.calls[:]
        inv2 = request("INVITE", "sip:bob@example.org", call_id="c2")
        up = only(self.agent.from_app(FLOW_A, inv2, 2.0), ToTunnel)
        self.agent.from_tunnel(up.flow_id, answer(up.data, 200), 3.0)
        reinv = request(
            "INVITE",
            "sip:bob@example.org",
            call_id="c2",
            cseq=2,
            to="<sip:bob@example.org>;tag=tt",
        )
        up = only(self.agent.from_app(FLOW_A, reinv, 4.0), ToTunnel)
        self.agent.from_tunnel(
            up.flow_id, answer(up.data, 488, "Not Acceptable Here"), 5.0
        )
        self.assertEqual(self.hook.calls, [])
        bye = request(
            "BYE",
            "sip:bob@example.org",
            call_id="c2",
            cseq=3,
            to="<sip:bob@example.org>;tag=tt",
        )
        self.agent.from_app(FLOW_A, bye, 6.0)
        self.assertEqual(self.hook.calls, [("ended", self.key, dialog_key(1, "c2"))])


    def test_unacknowledged_answer_ends_leg(self) -> None:
        """
        A 2xx that no ACK confirms within 64 x T1 (32 s) ends its leg's
        media as a BYE would, and is counted; the deadline is the core's
        next one, a retransmitted 2xx does not move it, and an ACK (from
        the phone, also on another flow than its INVITE, or from the
        tunnel for a call to the phone) keeps the call.
        """
        hook_calls = self.hook.calls
        ups = []
        for n in (1, 2, 3):
            ups.append(only(self.agent.from_app(FLOW_A, request("INVITE", "sip:bob@example.org", call_id=f"c{n}"), 0.0), ToTunnel))
            self.agent.from_tunnel(ups[-1].flow_id, answer(ups[-1].data, 200), 1.0)
        self.agent.from_tunnel(ups[0].flow_id, answer(ups[0].data, 200), 3.0)  # retransmitted
        fid = self.agent.flows.use(FLOW_B, 0.0)
        self.agent.from_tunnel(fid, invite_for_phone(), 1.0)
        self.agent.from_app(FLOW_B, answer(invite_for_phone(), 200, to_tag="ph"), 2.0)
        self.assertEqual(self.agent.next_deadline(), 33.0)
        ack = request("ACK", "sip:bob@example.org", call_id="c2", to="<sip:bob@example.org>;tag=tt")
        only(self.agent.from_app(FLOW_A, ack, 5.0), ToTunnel)
        # the phone's ACK of c3 comes from another flow (a new connection)
        ack = request("ACK", "sip:bob@example.org", call_id="c3", to="<sip:bob@example.org>;tag=tt")
        only(self.agent.from_app(FLOW_B, ack, 5.0), ToTunnel)
        ack_in = request(
            "ACK",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKcp2",
            from_="<sip:bob@example.org>;tag=fb",
            to="<sip:alice@example.org>;tag=ph",
        )
        only(self.agent.from_tunnel(fid, ack_in, 5.0), ToApp)
        del hook_calls[:]
        self.agent.handle_timer(32.9)
        self.assertEqual(hook_calls, [])
        self.agent.handle_timer(33.0)
        self.assertEqual(hook_calls, [("ended", self.key, dialog_key(1, "c1"))])
        # the call record says why
        self.assertEqual(self.hook.reasons[-1], "answer never acknowledged")
        self.assertEqual(self.agent.counters["answer never acknowledged"], 1)
        self.agent.handle_timer(100.0)
        self.assertEqual(len(hook_calls), 1)

    def test_challenge_ends_leg_as_challenged(self) -> None:
        """
        A 407 to the INVITE ends the leg's media and says it was a
        challenge (the retried INVITE is the call); a 486 ends it as a call
        of its own.
        """
        for status, challenged in ((407, True), (486, False)):
            del self.hook.calls[:], self.hook.challenged[:]
            invite = request("INVITE", "sip:bob@example.org", call_id=f"c{status}")
            up = only(self.agent.from_app(FLOW_A, invite, 0.0), ToTunnel)
            self.agent.from_tunnel(up.flow_id, answer(up.data, status, "No"), 1.0)
            key = dialog_key(1, f"c{status}")
            self.assertEqual(self.hook.calls, [("ended", self.key, key)])
            self.assertEqual(self.hook.challenged, [key] if challenged else [])

    def test_bye_to_losing_branch_keeps_media(self) -> None:
        """
        A forked INVITE answered 200 by two branches: the BYE that ends the
        losing branch's dialog leaves the leg's media alone; the BYE of the
        last dialog ends it.
        """
        up = only(self.agent.from_app(FLOW_A, request("INVITE", "sip:bob@example.org"), 0.0), ToTunnel)
        for tag in ("win", "lose"):
            self.agent.from_tunnel(up.flow_id, answer(up.data, 200, to_tag=tag), 1.0)
        del self.hook.calls[:]
        for cseq, tag in ((2, "lose"), (3, "win")):
            bye = request("BYE", "sip:bob@example.org", cseq=cseq, to=f"<sip:bob@example.org>;tag={tag}")
            self.agent.from_app(FLOW_A, bye, 2.0)
            if tag == "lose":
                self.assertEqual(self.hook.calls, [])
        self.assertEqual(self.hook.calls, [("ended", self.key, dialog_key(1, "call-1@192.0.2.10"))])

    def test_media_hook_tags(self) -> None:
        """
        The agent passes the tag of the endpoint that wrote the SDP: the
        From-tag of the phone's INVITE going into the tunnel, the To-tag of
        each branch's 183 coming out; a 2xx to the INVITE coming out of the
        tunnel without SDP is reported as answered by its To-tag (not ours),
        and the phone's own 2xx to an incoming INVITE as answered by ours.
        """
        inv = request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp")
        up = only(self.agent.from_app(FLOW_A, inv, 0.0), ToTunnel)
        for tag in ("ba", "bb"):
            self.agent.from_tunnel(up.flow_id, answer(up.data, 183, "Session Progress", to_tag=tag, body=SDP), 1.0)
        self.assertEqual(self.hook.answers, [])
        self.agent.from_tunnel(up.flow_id, answer(up.data, 200, to_tag="bb"), 2.0)
        self.assertEqual(self.hook.tags, [("into", "fa"), ("out", "ba"), ("out", "bb")])
        leg = dialog_key(1, "call-1@192.0.2.10")
        self.assertEqual(self.hook.answers, [(self.key, leg, "bb", False)])
        del self.hook.tags[:], self.hook.answers[:]
        inv = request(
            "INVITE",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKcp1",
            from_="<sip:bob@example.org>;tag=fb",
            call_id="in-1",
            body=SDP,
            content_type="application/sdp",
        )
        down = only(self.agent.from_tunnel(up.flow_id, inv, 3.0), ToApp)
        self.agent.from_app(FLOW_A, answer(down.data, 180, "Ringing", to_tag="ph"), 4.0)
        self.agent.from_app(FLOW_A, answer(down.data, 200, to_tag="ph", body=SDP), 5.0)
        self.assertEqual(self.hook.tags, [("out", "fb"), ("into", "ph")])
        self.assertEqual(self.hook.answers, [(self.key, dialog_key(1, "in-1"), "ph", True)])

    def test_options_answer_with_sdp_sets_up_no_media(self) -> None:
        """
        A phone's 200 to an OPTIONS from the operator side (a keepalive)
        with its SDP (RFC 3261 11.2: its capabilities) is passed on
        untouched and shown to no media hook: no relay ports, no call. An
        OPTIONS or MESSAGE from the phone with an SDP body likewise.
        """
        fid = self.agent.flows.use(FLOW_A, 0.0)
        options = request(
            "OPTIONS",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKop1",
            from_="<sip:proxy@example.org>;tag=fp",
            call_id="ping-1",
        )
        down = only(self.agent.from_tunnel(fid, options, 1.0), ToApp)
        up = only(self.agent.from_app(FLOW_A, answer(down.data, 200, to_tag="ph", body=SDP), 2.0), ToTunnel)
        self.assertEqual(parse_message(up.data).body, SDP)
        for method in ("OPTIONS", "MESSAGE"):
            out = request(method, "sip:bob@example.org", call_id=f"{method}-1", body=SDP, content_type="application/sdp")
            self.assertEqual(parse_message(only(self.agent.from_app(FLOW_A, out, 3.0), ToTunnel).data).body, SDP)
        self.assertEqual((self.hook.calls, self.hook.answers, self.hook.waits), ([], [], []))


class ContactTests(SynchronousTestCase):
    """
    Tests for L{ContactSipProxy} with an operator proxy, driven from a fake
    tunnel and a scripted operator network.
    """

    def setUp(self) -> None:
        self.hook = RecordingHook("contact")
        self.cp = ContactSipProxy(
            CONTACT_ADDR, SECRET, operator=OPERATOR, media_hook=self.hook
        )
        self.key = FakeTunnel("sess-1")
        self.cp.tunnel_attached(self.key, "sess-1")
        self.codec = FlowTokenCodec(SECRET)

    def up(
        self, data: bytes, flow_id: int = 5, now: float = 0.0
    ) -> tuple[ToNetwork, SipMessage]:
        act = only(
            self.cp.from_tunnel(self.key, "sess-1", flow_id, data, now), ToNetwork
        )
        return act, parse_message(act.data)

    def down(
        self,
        data: bytes,
        now: float = 1.0,
        src: tuple[str, int] = ("198.51.100.7", 5060),
    ) -> list[Any]:
        return self.cp.from_network(
            "udp", src, data, now, congested=lambda key: getattr(key, "congested", False)
        )

    def test_asserted_identity_removed(self) -> None:
        """
        A P-Asserted-Identity or Remote-Party-ID from the tunnel does not
        reach the operator (RFC 3325 5: only its own network asserts
        identities, and a proxy that trusts the contact point would believe
        it); a P-Preferred-Identity does, and the removals are counted.
        """
        act, msg = self.up(
            request(
                "INVITE",
                "sip:bob@example.org",
                extra=(
                    "P-Asserted-Identity: <sip:boss@example.org>",
                    "P-Preferred-Identity: <sip:alice@example.org>",
                    "Remote-Party-ID: <sip:boss@example.org>;party=calling;screen=yes",
                    "remote-party-id: <sip:boss@example.org>;party=calling;screen=yes",
                ),
            )
        )
        self.assertEqual((msg.get_all("P-Asserted-Identity"), msg.get("P-Preferred-Identity")), ([], "<sip:alice@example.org>"))
        self.assertEqual(msg.get_all("Remote-Party-ID"), [])
        self.assertEqual(self.cp.counters["P-Asserted-Identity from tunnel removed"], 1)
        self.assertEqual(self.cp.counters["Remote-Party-ID from tunnel removed"], 1)

    def test_register_path(self) -> None:
        """
        A REGISTER goes to the operator proxy with our Via (token in the
        branch), a Path with a flow token and C{Supported: path}; the 200
        comes back to the same tunnel and flow with our Via popped, and the
        registration is recorded.
        """
        act, msg = self.up(register())
        self.assertEqual((act.transport, act.addr), ("udp", ("198.51.100.7", 5060)))
        via = msg.top_via
        self.assertEqual((via.host, via.port), CONTACT_ADDR)
        tok = self.codec.decode(via.branch[len("z9hG4bK") :], KIND_VIA)
        self.assertEqual((tok.session_id, tok.flow_id), ("sess-1", 5))
        path = parse_name_addr(msg.get("Path"))
        ptok = self.codec.decode(path.uri.user, KIND_ROUTE)
        self.assertEqual((ptok.session_id, ptok.flow_id), ("sess-1", 5))
        self.assertEqual(
            (path.uri.host, path.uri.port, path.uri.param("lr")),
            ("203.0.113.5", 5060, ""),
        )
        self.assertIn("path", msg.get_all("Supported"))
        self.assertEqual(msg.max_forwards, 70)
        ok = answer(
            act.data,
            200,
            extra=(
                ("Contact", "<sip:alice@192.0.2.10:5062>;expires=300"),
                ("Contact", "<sip:other@192.0.2.99>;expires=300"),
            ),
        )
        back = only(self.down(ok, now=10.0), ToTunnel)
        self.assertEqual((back.tunnel_key, back.flow_id), (self.key, 5))
        resp = parse_message(back.data)
        self.assertEqual(resp.count("Via"), 1)
        self.assertEqual(resp.top_via.branch, "z9hG4bKreg1")
        [reg] = self.cp.registrations("sess-1")
        self.assertEqual(
            (reg.aor, reg.contact, reg.flow_id, reg.expires),
            ("sip:alice@example.org", "sip:alice@192.0.2.10:5062", 5, 310.0),
        )
        self.cp.handle_timer(311.0)
        self.assertEqual(self.cp.registrations("sess-1"), [])

    def test_invite_dialog(self) -> None:
        """
        An INVITE gets Record-Route and Via; its 200 makes a dialog; ACK and
        BYE with our route go to the operator proxy with that route popped;
        the BYE's 200 ends the dialog.
        """
        inv = request(
            "INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp"
        )
        act, msg = self.up(inv)
        rr = parse_name_addr(msg.get("Record-Route"))
        self.assertEqual(self.codec.decode(rr.uri.user, KIND_ROUTE).flow_id, 5)
        self.assertTrue(msg.body.endswith(b"a=relayed-by:contact\r\n"))
        self.assertEqual(self.hook.calls[0][:3], ("out", self.key, dialog_key(5, "call-1@192.0.2.10")))
        ok = answer(act.data, 200, body=SDP)
        back = only(self.down(ok), ToTunnel)
        self.assertEqual(
            parse_message(back.data).get("Record-Route"), msg.get("Record-Route")
        )
        self.assertEqual(
            self.hook.calls[-1],
            ("into", self.key, dialog_key(5, "call-1@192.0.2.10"), "application/sdp", SDP),
        )
        [d] = self.cp.dialogs("sess-1")
        self.assertEqual(
            (d.call_id, d.from_tag, d.to_tag, d.flow_id),
            ("call-1@192.0.2.10", "fa", "tt", 5),
        )
        route = msg.get("Record-Route")
        ack = request(
            "ACK",
            "sip:bob@198.51.100.30",
            to="<sip:bob@example.org>;tag=tt",
            via="SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKack",
            extra=(f"Route: {route}",),
        )
        act, amsg = self.up(ack)
        self.assertEqual((act.addr, amsg.count("Route")), (("198.51.100.7", 5060), 0))
        bye = request(
            "BYE",
            "sip:bob@198.51.100.30",
            to="<sip:bob@example.org>;tag=tt",
            cseq=2,
            via="SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKbye",
            extra=(f"Route: {route}", "Route: <sip:198.51.100.7;lr>"),
        )
        act, bmsg = self.up(bye)
        self.assertEqual(bmsg.get_all("Route"), ["<sip:198.51.100.7;lr>"])
        self.assertEqual(self.hook.calls[-1], ("ended", self.key, dialog_key(5, "call-1@192.0.2.10")))
        only(self.down(answer(act.data, 200)), ToTunnel)
        self.assertEqual(self.cp.dialogs("sess-1"), [])

    def test_unacknowledged_answer_ends_leg(self) -> None:
        """
        A 2xx to an INVITE from the tunnel that no ACK confirms within
        32 s ends the leg's media and the dialog; the same call ACKed
        keeps both; the sweep runs at that deadline.
        """
        for call_id, acked in (("c1", False), ("c2", True)):
            inv = request("INVITE", "sip:bob@example.org", call_id=call_id, body=SDP, content_type="application/sdp")
            act, msg = self.up(inv)
            only(self.down(answer(act.data, 200, body=SDP), now=1.0), ToTunnel)
            if acked:
                ack = request(
                    "ACK",
                    "sip:bob@198.51.100.30",
                    call_id=call_id,
                    to="<sip:bob@example.org>;tag=tt",
                    extra=(f"Route: {msg.get('Record-Route')}",),
                )
                self.up(ack, now=2.0)
        del self.hook.calls[:]
        self.cp.handle_timer(30.0)  # the regular sweep comes first
        self.assertEqual((self.hook.calls, self.cp.next_deadline()), ([], 33.0))
        self.cp.handle_timer(33.0)
        self.assertEqual(self.hook.calls, [("ended", self.key, dialog_key(5, "c1"))])
        self.assertEqual(self.hook.reasons[-1], "answer never acknowledged")
        self.assertEqual([d.call_id for d in self.cp.dialogs("sess-1")], ["c2"])
        self.assertEqual(self.cp.counters["answer never acknowledged"], 1)

    def test_unanswered_bye_ends_dialog(self) -> None:
        """
        A dialog whose BYE nothing answers (the UAS is gone, or ignores
        it) ends 32 s after the BYE, when the BYE's transaction times out
        (RFC 3261 15.1.1), at the next sweep, either way the BYE went; a
        dialog without a BYE lives on.
        """
        for call_id in ("c1", "c2", "c3"):
            inv = request("INVITE", "sip:bob@example.org", call_id=call_id, body=SDP, content_type="application/sdp")
            act, msg = self.up(inv)
            only(self.down(answer(act.data, 200, body=SDP), now=1.0), ToTunnel)
            ack = request(
                "ACK", "sip:bob@198.51.100.30", call_id=call_id, to="<sip:bob@example.org>;tag=tt",
                extra=(f"Route: {msg.get('Record-Route')}",),
            )
            self.up(ack, now=2.0)
        route = msg.get("Record-Route")
        bye = request(
            "BYE", "sip:bob@198.51.100.30", call_id="c1", to="<sip:bob@example.org>;tag=tt", cseq=2,
            extra=(f"Route: {route}",),
        )
        self.up(bye, now=10.0)
        # the far end's BYE for c2 (From and To as it sees them)
        token = self.codec.encode(KIND_ROUTE, "sess-1", 5)
        far_bye = request(
            "BYE", "sip:alice@192.0.2.10:5062", call_id="c2", from_="<sip:bob@example.org>;tag=tt",
            to="<sip:alice@example.org>;tag=fa", via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKfarbye",
            cseq=2, extra=(f"Route: <sip:{token}@203.0.113.5:5060;lr>",),
        )
        only(self.down(far_bye, now=10.0), ToTunnel)
        self.cp.handle_timer(40.0)
        self.assertEqual(sorted(d.call_id for d in self.cp.dialogs("sess-1")), ["c1", "c2", "c3"])
        self.cp.handle_timer(42.5)
        self.assertEqual([d.call_id for d in self.cp.dialogs("sess-1")], ["c3"])

    def test_session_dialog_bound(self) -> None:
        """
        A session keeps at most C{max_session_dialogs} calls' dialogs: past
        it its oldest is forgotten and counted, and another session's
        dialogs stay.
        """
        cp = ContactSipProxy(
            CONTACT_ADDR, SECRET, operator=OPERATOR, media_hook=self.hook, max_session_dialogs=3
        )
        other = FakeTunnel("sess-2")
        cp.tunnel_attached(self.key, "sess-1")
        cp.tunnel_attached(other, "sess-2")

        def call(key: FakeTunnel, session: str, call_id: str) -> None:
            inv = request("INVITE", "sip:bob@example.org", call_id=call_id, body=SDP, content_type="application/sdp")
            act = only(cp.from_tunnel(key, session, 5, inv, 0.0), ToNetwork)
            only(cp.from_network("udp", ("198.51.100.7", 5060), answer(act.data, 200), 1.0), ToTunnel)

        call(other, "sess-2", "o1")
        for n in range(5):
            call(self.key, "sess-1", f"c{n}")
        self.assertEqual([d.call_id for d in cp.dialogs("sess-1")], ["c2", "c3", "c4"])
        self.assertEqual([d.call_id for d in cp.dialogs("sess-2")], ["o1"])
        self.assertEqual(cp.counters["dialogs over the session's limit"], 2)

    def test_unacknowledged_answers_in_batches(self) -> None:
        """
        Answers that fall due together are ended at most 64 per timer run;
        the deadline stays due until all are.
        """
        for n in range(100):
            act, _ = self.up(request("INVITE", "sip:bob@example.org", call_id=f"c{n}"))
            only(self.down(answer(act.data, 200), now=1.0), ToTunnel)
        del self.hook.calls[:]
        self.cp.handle_timer(40.0)
        self.assertEqual((len(self.hook.calls), self.cp.next_deadline()), (64, 33.0))
        self.cp.handle_timer(40.0)
        self.assertEqual(len(self.hook.calls), 100)
        self.assertIsNone(self.cp.next_deadline())

    def incoming_invite(self, route: str | None = None, **kw: Any) -> bytes:
        if route is None:
            token = self.codec.encode(KIND_ROUTE, "sess-1", 5)
            route = f"<sip:{token}@203.0.113.5:5060;lr>"
        return request(
            "INVITE",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop1",
            from_="<sip:carol@example.org>;tag=fc",
            to="<sip:alice@example.org>",
            call_id="in-1",
            extra=(f"Route: {route}",),
            **kw,
        )

    def test_incoming_invite(self) -> None:
        """
        An INVITE routed by our Path token goes into that tunnel and flow with
        the Route popped, our Via and Record-Route added and Max-Forwards
        decremented; the application's answer goes back to the previous
        hop's Via address.
        """
        acts = self.down(self.incoming_invite(body=SDP, content_type="application/sdp"))
        act = only(acts, ToTunnel)
        self.assertEqual((act.tunnel_key, act.flow_id), (self.key, 5))
        msg = parse_message(act.data)
        self.assertEqual(msg.count("Route"), 0)
        self.assertEqual(msg.max_forwards, 69)
        self.assertEqual((msg.top_via.host, msg.top_via.port), CONTACT_ADDR)
        self.assertEqual(
            self.codec.decode(
                parse_name_addr(msg.get("Record-Route")).uri.user, KIND_ROUTE
            ).flow_id,
            5,
        )
        self.assertEqual(self.hook.calls[-1][0], "into")
        ringing = answer(act.data, 180, "Ringing")
        out = only(self.cp.from_tunnel(self.key, "sess-1", 5, ringing, 2.0), ToNetwork)
        self.assertEqual((out.transport, out.addr), ("udp", ("198.51.100.7", 5060)))
        self.assertEqual(parse_message(out.data).top_via.branch, "z9hG4bKop1")

    def test_asserted_identity_removed_from_answers(self) -> None:
        """
        The answering phone's P-Asserted-Identity or Remote-Party-ID (a
        connected party's identity) does not reach the operator either.
        """
        act = only(self.down(self.incoming_invite()), ToTunnel)
        ok = answer(
            act.data,
            200,
            extra=(("P-Asserted-Identity", "<sip:boss@example.org>"), ("Remote-Party-ID", "<sip:boss@example.org>;party=called")),
        )
        out = parse_message(only(self.cp.from_tunnel(self.key, "sess-1", 5, ok, 2.0), ToNetwork).data)
        self.assertEqual((out.status, out.get_all("P-Asserted-Identity"), out.get_all("Remote-Party-ID")), (200, [], []))
        self.assertEqual(self.cp.counters["P-Asserted-Identity from tunnel removed"], 1)

    def test_congested_tunnel_refuses_new_requests(self) -> None:
        """
        While the tunnel's signalling backlog is over its high-water mark a
        new request for it is answered C{503} with C{Retry-After} towards
        the previous hop, and nothing is queued; a request inside a dialog
        still goes through; once the backlog drains, new requests pass.
        """
        self.key.congested = True
        out = only(self.down(self.incoming_invite()), ToNetwork)
        resp = parse_message(out.data)
        self.assertEqual((resp.status, resp.get("Retry-After")), (503, "5"))
        self.assertEqual(out.addr, ("198.51.100.7", 5060))
        self.assertEqual(self.cp.counters[_CONGESTED.split(":")[0]], 1)
        bye = self.incoming_invite().replace(b"INVITE sip:", b"BYE sip:").replace(
            b"CSeq: 1 INVITE", b"CSeq: 2 BYE"
        ).replace(b"To: <sip:alice@example.org>", b"To: <sip:alice@example.org>;tag=x")
        only(self.down(bye), ToTunnel)
        self.key.congested = False
        only(self.down(self.incoming_invite()), ToTunnel)

    def test_overloaded_refuses_new_requests(self) -> None:
        """
        While the contact point's SIP input is overloaded, a new INVITE
        from the network is answered C{503 Service Unavailable
        (overloaded)} towards the previous hop and one from the tunnel back
        into the tunnel, both with C{Retry-After}; a request inside a
        dialog still goes through.
        """
        out = only(
            self.cp.from_network("udp", ("198.51.100.7", 5060), self.incoming_invite(), 1.0, overloaded=True), ToNetwork
        )
        resp = parse_message(out.data)
        self.assertEqual(
            (resp.status, resp.reason, resp.get("Retry-After")), (503, "Service Unavailable (overloaded)", "5")
        )
        self.assertEqual(out.addr, ("198.51.100.7", 5060))
        data = request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp")
        back = only(self.cp.from_tunnel(self.key, "sess-1", 5, data, 0.0, overloaded=True), ToTunnel)
        self.assertEqual((back.flow_id, parse_message(back.data).status), (5, 503))
        self.assertEqual((self.cp.counters[OVERLOADED_COUNTER], self.hook.calls), (2, []))
        bye = self.incoming_invite().replace(b"INVITE sip:", b"BYE sip:").replace(
            b"CSeq: 1 INVITE", b"CSeq: 2 BYE"
        ).replace(b"To: <sip:alice@example.org>", b"To: <sip:alice@example.org>;tag=x")
        only(self.cp.from_network("udp", ("198.51.100.7", 5060), bye, 1.0, overloaded=True), ToTunnel)
        # the refused INVITE's copy is refused again after the overload
        again = only(self.cp.from_tunnel(self.key, "sess-1", 5, data, 1.0), ToTunnel)
        self.assertEqual(parse_message(again.data).status, 503)
        self.up(request("INVITE", "sip:bob@example.org", call_id="c9", body=SDP, content_type="application/sdp"))

    def test_media_full_refuses_new_invites(self) -> None:
        """
        While the contact point's media port range is full, a new INVITE
        from the network is answered C{503} towards the previous hop and a
        new INVITE from the tunnel back into the tunnel, both with
        C{Retry-After}; nothing goes on and the media hook sees no SDP.
        """
        self.hook.full = NO_MEDIA_PORTS
        out = only(self.down(self.incoming_invite(body=SDP, content_type="application/sdp")), ToNetwork)
        resp = parse_message(out.data)
        self.assertEqual((resp.status, resp.get("Retry-After")), (503, "5"))
        self.assertEqual(out.addr, ("198.51.100.7", 5060))
        data = request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp")
        back = only(self.cp.from_tunnel(self.key, "sess-1", 5, data, 0.0), ToTunnel)
        self.assertEqual((back.flow_id, parse_message(back.data).status), (5, 503))
        self.assertEqual(self.hook.calls, [])
        self.assertEqual(self.cp.counters[NO_MEDIA_PORTS.counter], 2)
        self.hook.full = None
        only(self.down(self.incoming_invite(body=SDP, content_type="application/sdp")), ToTunnel)
        self.up(data)

    def test_call_limit_refuses_new_invites(self) -> None:
        """
        At the contact point's C{--max-calls}, new INVITEs either way get
        C{503 Service Unavailable (call limit reached)} with C{Retry-After},
        counted as C{call limit reached}; a request within a dialog goes on.
        """
        self.hook.full = CALL_LIMIT
        out = only(self.down(self.incoming_invite(body=SDP, content_type="application/sdp")), ToNetwork)
        resp = parse_message(out.data)
        self.assertEqual((resp.status, resp.reason, resp.get("Retry-After")), (503, "Service Unavailable (call limit reached)", "5"))
        data = request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp")
        back = parse_message(only(self.cp.from_tunnel(self.key, "sess-1", 5, data, 0.0), ToTunnel).data)
        self.assertEqual((back.status, back.reason), (503, "Service Unavailable (call limit reached)"))
        self.assertEqual((self.cp.counters["call limit reached"], self.cp.counters.get("no free media ports")), (2, None))
        reinvite = self.incoming_invite(body=SDP, content_type="application/sdp").replace(
            b"To: <sip:alice@example.org>", b"To: <sip:alice@example.org>;tag=x"
        )
        only(self.down(reinvite), ToTunnel)

    def test_retransmitted_invite_not_refused(self) -> None:
        """
        A retransmission of an INVITE from the network already passed into
        the tunnel is dropped, not answered 503, once the tunnel is
        congested, and passed on again once the media range is full; one
        from the tunnel is passed on again too.
        """
        invite = self.incoming_invite()
        only(self.down(invite, now=1.0), ToTunnel)
        self.key.congested = True
        self.assertEqual(dropped(self.down(invite, now=1.5)), [RETRANSMITTED_CONGESTED])
        self.key.congested = False
        self.hook.full = NO_MEDIA_PORTS
        only(self.down(invite, now=2.5), ToTunnel)
        self.hook.full = None
        out = request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp")
        self.up(out)
        self.hook.full = NO_MEDIA_PORTS
        self.up(out, now=0.5)

    def test_retransmitted_invite_after_2xx_dropped(self) -> None:
        """
        A retransmission of an INVITE that comes after a 2xx to it has
        passed back is dropped, from the tunnel and from the network;
        before the 2xx it goes on.
        """
        out = request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp")
        act, _ = self.up(out)
        self.up(out, now=0.5)
        only(self.down(answer(act.data, 200), now=0.6), ToTunnel)
        self.assertEqual(dropped(self.cp.from_tunnel(self.key, "sess-1", 5, out, 1.0)), [RETRANSMITTED_ANSWERED])
        invite = self.incoming_invite()
        into = only(self.down(invite, now=2.0), ToTunnel)
        only(self.down(invite, now=2.5), ToTunnel)
        self.cp.from_tunnel(self.key, "sess-1", 5, answer(into.data, 200), 2.6)
        self.assertEqual(dropped(self.down(invite, now=3.0)), [RETRANSMITTED_ANSWERED])
        self.assertEqual(self.cp.counters[RETRANSMITTED_ANSWERED], 2)

    def test_bunched_retransmission_dropped(self) -> None:
        """
        An INVITE and its retransmission delivered back to back by the
        tunnel (a stalled connection's queue): the retransmission is
        dropped, so that it cannot reach the UAS after its 2xx; the next,
        0.5 s later, goes on.
        """
        out = request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp")
        self.up(out, now=3.0)
        self.assertEqual(dropped(self.cp.from_tunnel(self.key, "sess-1", 5, out, 3.001)), [RETRANSMITTED_BUNCHED])
        self.up(out, now=3.5)

    def test_retransmitted_invite_goes_as_the_original(self) -> None:
        """
        A retransmission of an INVITE from the tunnel goes to the operator
        with the body its original went with, and is not shown to the
        media hook again: shown after the agent had closed the stream's
        channel (a backlog delayed it past the call's end), it made the
        stream anew, with ports and a channel the agent did not explain.
        The same for one from the network, and for a new INVITE with
        another branch, which is shown.
        """
        out = request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp")
        _, first = self.up(out)
        self.assertTrue(first.body.endswith(b"a=relayed-by:contact\r\n"), first.body)
        self.hook.side = "changed"
        _, again = self.up(out, now=1.0)
        self.assertEqual(again.body, first.body)
        self.assertEqual([c[0] for c in self.hook.calls], ["out"])
        invite = self.incoming_invite(body=SDP, content_type="application/sdp")
        for now in (2.0, 2.5):
            only(self.down(invite, now=now), ToTunnel)
        self.assertEqual([c[0] for c in self.hook.calls], ["out", "into"])
        other = out.replace(b"branch=z9hG4bK", b"branch=z9hG4bKnew")
        self.assertNotEqual(other, out)
        _, shown = self.up(other, now=3.0)
        self.assertTrue(shown.body.endswith(b"a=relayed-by:changed\r\n"), shown.body)
        self.assertEqual([c[0] for c in self.hook.calls], ["out", "into", "out"])

    def test_response_honours_received_rport(self) -> None:
        """
        A response is sent to the next Via's received/rport address.
        """
        data = self.incoming_invite().replace(
            b"branch=z9hG4bKop1", b"branch=z9hG4bKop1;rport"
        )
        act = only(
            self.cp.from_network("udp", ("198.51.100.8", 40000), data, 0.0), ToTunnel
        )
        out = only(
            self.cp.from_tunnel(
                self.key, "sess-1", 5, answer(act.data, 100, "Trying"), 1.0
            ),
            ToNetwork,
        )
        self.assertEqual(out.addr, ("198.51.100.8", 40000))

    def test_response_ignores_senders_own_received(self) -> None:
        """
        A C{received} (or C{rport} value) the sender wrote in its own Via
        is replaced by the request's source: the contact point's own answer
        (an OPTIONS, a 404) and the application's answer relayed back go to
        where the request came from, never to the host the Via names
        (RFC 3261 18.2.1: a reflector for any operator-side host).
        """
        src = ("198.51.100.8", 40000)
        forged = "SIP/2.0/UDP 198.51.100.8:40000;received=192.0.2.99;branch=z9hG4bKop1"
        for ruri in ("sip:203.0.113.5", "sip:bob@203.0.113.5"):
            data = request("OPTIONS", ruri, via=forged)
            act = only(self.cp.from_network("udp", src, data, 0.0), ToNetwork)
            self.assertEqual(act.addr, src, ruri)
        for n, via in enumerate((forged, forged + ";rport=5999", forged.replace("40000;", "5060;") + ";rport=5999")):
            data = self.incoming_invite().replace(b"SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop1", via.encode())
            act = only(self.cp.from_network("udp", src, data, float(n)), ToTunnel)
            out = only(self.cp.from_tunnel(self.key, "sess-1", 5, answer(act.data, 100, "Trying"), 1.0), ToNetwork)
            self.assertEqual(out.addr, src, via)

    def test_session_gone_430(self) -> None:
        """
        After the tunnel is gone, a request for its flow is answered 430
        Flow Failed and its state is dropped.
        """
        act, _ = self.up(register())
        self.down(
            answer(
                act.data,
                200,
                extra=(("Contact", "<sip:alice@192.0.2.10:5062>;expires=300"),),
            )
        )
        self.assertEqual(len(self.cp.registrations("sess-1")), 1)
        self.cp.tunnel_detached(self.key)
        self.assertEqual(self.cp.registrations("sess-1"), [])
        out = only(self.down(self.incoming_invite()), ToNetwork)
        self.assertEqual(parse_message(out.data).status, 430)
        self.assertEqual(out.addr, ("198.51.100.7", 5060))

    def test_ack_of_our_430_absorbed(self) -> None:
        """
        The ACK of our own C{430} (its To without a tag, as our answer's)
        is taken in silence and counted; an ACK with a To tag (of a 2xx,
        for a flow gone since) is still dropped with a reason to log.
        """
        self.cp.tunnel_detached(self.key)
        out = only(self.down(self.incoming_invite()), ToNetwork)
        answer_ = parse_message(out.data)
        self.assertEqual((answer_.status, answer_.to_tag), (430, None))
        ack = self.incoming_invite().replace(b"INVITE sip:", b"ACK sip:").replace(b"1 INVITE", b"1 ACK")
        self.assertEqual(self.down(ack), [])
        self.assertEqual(self.cp.counters.get(ACK_OF_OUR_REFUSAL), 1)
        tagged = ack.replace(b"<sip:alice@example.org>", b"<sip:alice@example.org>;tag=ta")
        self.assertEqual(self.down(tagged), [Dropped("ACK dropped: 430 Flow Failed", "ACK dropped")])

    def test_outbound_register_path_ob(self) -> None:
        """
        RFC 5626: a REGISTER with C{Supported: outbound} and a contact with
        C{reg-id} and C{+sip.instance} gets a Path with C{;ob}, its contact
        as it was; a request routed by that Path goes to the flow, and
        gets C{430 Flow Failed} once the tunnel is gone.
        """
        data = register(contact_params=';+sip.instance="<urn:uuid:1>";reg-id=2').replace(
            b"Content-Length", b"Supported: outbound\r\nContent-Length"
        )
        act, msg = self.up(data)
        path = parse_name_addr(msg.get("Path"))
        self.assertEqual((path.uri.param("lr"), path.uri.param("ob")), ("", ""))
        self.assertEqual(self.codec.decode(path.uri.user, KIND_ROUTE).flow_id, 5)
        self.assertIn("reg-id=2", msg.get("Contact"))
        self.assertIn("+sip.instance", msg.get("Contact"))
        route = str(path)
        only(self.down(self.incoming_invite(route=route)), ToTunnel)
        self.cp.tunnel_detached(self.key, keep_registrations=True)
        out = only(self.down(self.incoming_invite(route=route)), ToNetwork)
        self.assertEqual(parse_message(out.data).status, 430)

    def test_outbound_binding_of_this_flow_only(self) -> None:
        """
        The registrar's 2xx to an RFC 5626 REGISTER lists the phone's
        contact once per flow (C{reg-id} 1 through the other contact point,
        2 through this one): one binding is recorded and one
        L{BindingChanged} made, with the expiry of the entry whose C{reg-id}
        is this REGISTER's; a registrar that leaves C{reg-id} out of its
        answer still gives one, with the first entry's expiry.
        """
        contact = "sip:alice@192.0.2.10:5062"
        data = register(contact_params=';+sip.instance="<urn:uuid:1>";reg-id=2').replace(
            b"Content-Length", b"Supported: outbound\r\nContent-Length"
        )
        for n, (first, second, expires) in enumerate(
            [
                (";reg-id=1;expires=300", ";reg-id=2;expires=200", 200),
                (";expires=300", ";expires=200", 300),
            ]
        ):
            cp = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR)
            cp.tunnel_attached(self.key, "sess-1")
            act = only(cp.from_tunnel(self.key, "sess-1", 5, data, 0.0), ToNetwork)
            inst = ';+sip.instance="<urn:uuid:1>"'
            ok = answer(act.data, 200, extra=(("Contact", f"<{contact}>{inst}{first}"), ("Contact", f"<{contact}>{inst}{second}")))
            out = cp.from_network("udp", ("198.51.100.7", 5060), ok, 1.0)
            events = [a for a in out if isinstance(a, BindingChanged)]
            self.assertEqual(
                events,
                [BindingChanged("registered", "sip:alice@example.org", contact, expires, "sess-1", 5)],
                n,
            )
            self.assertEqual([(r.contact, r.expires) for r in cp.registrations("sess-1")], [(contact, 1.0 + expires)])

    def test_plain_register_path_without_ob(self) -> None:
        """
        A REGISTER without RFC 5626 gets a Path without C{;ob}.
        """
        for data in [
            register(),
            register(contact_params=';reg-id=1;+sip.instance="<urn:uuid:1>"'),
        ]:
            _, msg = self.up(data)
            self.assertIsNone(parse_name_addr(msg.get("Path")).uri.param("ob"))

    def test_dormant_session_keeps_registrations(self) -> None:
        """
        A tunnel detached with its registrations kept (a dormant session):
        the registration stays, a request for its flow gets 430 meanwhile;
        the session attached again on a new tunnel gets the request; a
        forgotten session has no registration left.
        """
        act, _ = self.up(register())
        self.down(
            answer(
                act.data,
                200,
                extra=(("Contact", "<sip:alice@192.0.2.10:5062>;expires=300"),),
            )
        )
        self.cp.tunnel_detached(self.key, keep_registrations=True)
        self.assertEqual(len(self.cp.registrations("sess-1")), 1)
        out = only(self.down(self.incoming_invite()), ToNetwork)
        self.assertEqual(parse_message(out.data).status, 430)
        new_key = object()
        self.cp.tunnel_attached(new_key, "sess-1")
        act = only(self.down(self.incoming_invite()), ToTunnel)
        self.assertIs(act.tunnel_key, new_key)
        self.cp.forget_session("sess-1")
        self.assertEqual(len(self.cp.registrations("sess-1")), 1)  # attached: kept
        self.cp.tunnel_detached(new_key, keep_registrations=True)
        self.cp.forget_session("sess-1")
        self.assertEqual(self.cp.registrations("sess-1"), [])

    def test_forged_token(self) -> None:
        """
        A request with a forged route token (one this process cannot
        authenticate) is answered C{430 Flow Failed}, counted, and never
        reaches a tunnel, although the session it names is attached; a
        response with a forged Via is dropped.
        """
        forged = FlowTokenCodec(b"y" * 32).encode(KIND_ROUTE, "sess-1", 5)
        out = only(
            self.down(
                self.incoming_invite(route=f"<sip:{forged}@203.0.113.5:5060;lr>")
            ),
            ToNetwork,
        )
        resp = parse_message(out.data)
        self.assertEqual((resp.status, resp.reason, out.addr), (430, UNKNOWN_TOKEN_REASON, ("198.51.100.7", 5060)))
        self.assertEqual(self.cp.counters[UNKNOWN_TOKEN_430], 1)
        for garbage in ["x", "abc", forged[:-2], forged.upper() + "a"]:
            out = only(self.down(self.incoming_invite(route=f"<sip:{garbage}@203.0.113.5:5060;lr>")), ToNetwork)
            self.assertEqual(parse_message(out.data).status, 430)
        fake_branch = "z9hG4bK" + FlowTokenCodec(b"y" * 32).encode(
            KIND_VIA, "sess-1", 5
        )
        resp = answer(
            request(
                "INVITE",
                "sip:x@example.org",
                via=f"SIP/2.0/UDP 203.0.113.5:5060;branch={fake_branch}, SIP/2.0/UDP 192.0.2.10",
            ),
            200,
        )
        self.assertTrue(dropped(self.down(resp)))

    def test_restarted_without_state_file(self) -> None:
        """
        The Path token a process made, presented to a process with another
        key (the same contact point restarted without C{--state-file}), is
        answered C{430 Flow Failed} with a reason that names the cause, so
        an RFC 5626 registrar tries the phone's other flow (RFC 5626 5.3);
        the request goes into no tunnel, though the agent's session is
        back under the same name.
        """
        act, msg = self.up(register())
        route = msg.get("Path")
        only(self.down(self.incoming_invite(route=route)), ToTunnel)
        restarted = ContactSipProxy(CONTACT_ADDR, b"r" * 32, operator=OPERATOR, media_hook=self.hook)
        restarted.tunnel_attached(self.key, "sess-1")
        out = only(restarted.from_network("udp", ("198.51.100.7", 5060), self.incoming_invite(route=route), 2.0), ToNetwork)
        resp = parse_message(out.data)
        self.assertEqual((resp.status, resp.reason), (430, UNKNOWN_TOKEN_REASON))
        self.assertIn("--state-file", resp.reason)
        self.assertEqual(restarted.counters[UNKNOWN_TOKEN_430], 1)
        ack = self.incoming_invite(route=route).replace(b"INVITE", b"ACK")
        # its ACK is taken in silence (the ACK of our own answer)
        self.assertEqual(restarted.from_network("udp", ("198.51.100.7", 5060), ack, 2.0), [])
        self.assertEqual(restarted.counters[ACK_OF_OUR_REFUSAL], 1)

    def test_no_open_relay(self) -> None:
        """
        A request from the network routed to another host is refused; a
        request from the tunnel for any target goes only to the operator
        proxy.
        """
        out = only(
            self.down(self.incoming_invite(route="<sip:198.51.100.99;lr>")), ToNetwork
        )
        self.assertEqual(parse_message(out.data).status, 403)
        out = only(
            self.down(
                request(
                    "OPTIONS",
                    "sip:someone@198.51.100.99",
                    via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKo",
                )
            ),
            ToNetwork,
        )
        self.assertEqual(parse_message(out.data).status, 404)
        act, _ = self.up(
            request(
                "MESSAGE",
                "sip:x@198.51.100.99:5070",
                extra=("Route: <sip:198.51.100.99:5070;lr>",),
            )
        )
        self.assertEqual(act.addr, ("198.51.100.7", 5060))

    def test_max_forwards_483(self) -> None:
        """
        A request from the network with Max-Forwards 0 is answered 483.
        """
        out = only(self.down(self.incoming_invite(max_forwards=0)), ToNetwork)
        self.assertEqual(parse_message(out.data).status, 483)

    def test_loop_482(self) -> None:
        """
        A request that comes back with our own Via for the same flow and
        Request-URI is answered 482.
        """
        act = only(self.down(self.incoming_invite()), ToTunnel)
        looped = parse_message(act.data)
        token = self.codec.encode(KIND_ROUTE, "sess-1", 5)
        looped.prepend_header("Route", f"<sip:{token}@203.0.113.5:5060;lr>")
        looped.prepend_header("Via", "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop2")
        out = only(self.down(looped.to_bytes()), ToNetwork)
        self.assertEqual(parse_message(out.data).status, 482)

    def test_cancel_same_branch(self) -> None:
        """
        A CANCEL takes the same branch as its INVITE, both from the tunnel
        and from the network, and the media hook hears the dialog end.
        """
        _, inv = self.up(request("INVITE", "sip:bob@example.org"))
        _, can = self.up(request("CANCEL", "sip:bob@example.org"))
        self.assertEqual(can.top_via.branch, inv.top_via.branch)
        self.assertEqual(self.hook.calls[-1], ("ended", self.key, dialog_key(5, "call-1@192.0.2.10")))
        i = parse_message(only(self.down(self.incoming_invite()), ToTunnel).data)
        cancel = request(
            "CANCEL",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop1",
            from_="<sip:carol@example.org>;tag=fc",
            to="<sip:alice@example.org>",
            call_id="in-1",
            extra=(
                f"Route: <sip:{self.codec.encode(KIND_ROUTE, 'sess-1', 5)}@203.0.113.5:5060;lr>",
            ),
        )
        c = parse_message(only(self.down(cancel), ToTunnel).data)
        self.assertEqual(c.top_via.branch, i.top_via.branch)

    def test_forking(self) -> None:
        """
        Two 180s and two 200s with different to-tags all reach the tunnel;
        each 200 makes a dialog.
        """
        act, _ = self.up(request("INVITE", "sip:bob@example.org"))
        for status, tag in [(180, "x1"), (180, "x2"), (200, "x1"), (200, "x2")]:
            back = only(self.down(answer(act.data, status, "R", to_tag=tag)), ToTunnel)
            self.assertEqual(parse_message(back.data).to_tag, tag)
        self.assertEqual(
            sorted(d.to_tag for d in self.cp.dialogs("sess-1")), ["x1", "x2"]
        )
        # The app hangs up the losing branch: the winner's media stays.
        del self.hook.calls[:]
        bye = request("BYE", "sip:bob@example.org", cseq=2, to="<sip:bob@example.org>;tag=x2")
        act, _ = self.up(bye)
        self.down(answer(act.data, 200, to_tag="x2"))
        self.assertNotIn("ended", [c[0] for c in self.hook.calls])
        bye = request("BYE", "sip:bob@example.org", cseq=3, to="<sip:bob@example.org>;tag=x1")
        self.up(bye)
        self.assertEqual(self.hook.calls[-1][0], "ended")

    def test_large_request_tcp(self) -> None:
        """
        A request larger than 1300 bytes for a UDP operator proxy goes by TCP
        with a TCP Via (RFC 3261 18.1.1).
        """
        body = SDP + b"a=x:" + b"y" * 1400 + b"\r\n"
        act, msg = self.up(
            request(
                "INVITE",
                "sip:bob@example.org",
                body=body,
                content_type="application/sdp",
            )
        )
        self.assertEqual(act.transport, "tcp")
        self.assertEqual(msg.top_via.transport, "TCP")

    def test_malformed_from_network(self) -> None:
        """
        A malformed request from the network gets 400 with a reason; a
        malformed response is dropped; garbage never raises.
        """
        bad = self.incoming_invite().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE")
        out = only(self.down(bad), ToNetwork)
        self.assertTrue(
            out.data.startswith(b"SIP/2.0 400 Bad Request: malformed CSeq\r\n")
        )
        self.assertEqual(out.addr, ("198.51.100.7", 5060))
        self.assertTrue(dropped(self.down(b"SIP/2.0 200 OK\r\n\r\n")))

    @given(st.binary(max_size=400))
    def test_garbage(self, data: bytes) -> None:
        """
        Arbitrary bytes from the network or the tunnel never raise.
        """
        self.cp.from_network("udp", ("198.51.100.7", 5060), data, 0.0)
        self.cp.from_tunnel(self.key, "sess-1", 1, data, 0.0)

    def test_media_hook_tags_forked(self) -> None:
        """
        Two branches of a forked INVITE answer 183 with SDP: the hook sees
        each with its own To-tag; the 200 from the second branch without
        SDP is reported as answered from our side with its tag; a request
        from the operator side carries its From-tag.
        """
        inv = request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp")
        act, _ = self.up(inv)
        for tag in ("ba", "bb"):
            only(self.down(answer(act.data, 183, "Session Progress", to_tag=tag, body=SDP)), ToTunnel)
        self.assertEqual(self.hook.answers, [])
        only(self.down(answer(act.data, 200, to_tag="bb")), ToTunnel)
        leg = dialog_key(5, "call-1@192.0.2.10")
        self.assertEqual(self.hook.tags, [("out", "fa"), ("into", "ba"), ("into", "bb")])
        self.assertEqual(self.hook.answers, [(self.key, leg, "bb", True)])
        only(self.down(self.incoming_invite(body=SDP, content_type="application/sdp")), ToTunnel)
        self.assertEqual(self.hook.tags[-1], ("into", "fc"))


class ContactRewriteTests(SynchronousTestCase):
    """
    Tests for the C{contact_rewrite} mode of L{ContactSipProxy}.
    """

    def test_round_trip(self) -> None:
        """
        The Contact of a REGISTER is rewritten to our address with a token
        (no Path); the 200 shows the original again; a request to the
        rewritten contact reaches the flow with the original Request-URI.
        """
        cp = ContactSipProxy(
            CONTACT_ADDR, SECRET, operator=OPERATOR, contact_rewrite=True
        )
        key = FakeTunnel("s")
        cp.tunnel_attached(key, "s")
        act = only(
            cp.from_tunnel(
                key,
                "s",
                3,
                register(contact_params=';+sip.instance="<urn:uuid:1>"'),
                0.0,
            ),
            ToNetwork,
        )
        msg = parse_message(act.data)
        self.assertEqual(msg.count("Path"), 0)
        c = parse_name_addr(msg.get("Contact"))
        self.assertEqual((c.uri.host, c.uri.port), CONTACT_ADDR)
        self.assertEqual(c.param("+sip.instance"), '"<urn:uuid:1>"')
        ok = answer(act.data, 200, extra=(("Contact", f"<{c.uri}>;expires=120"),))
        back = only(cp.from_network("udp", ("198.51.100.7", 5060), ok, 1.0), ToTunnel)
        self.assertEqual(
            str(parse_name_addr(parse_message(back.data).get("Contact")).uri),
            "sip:alice@192.0.2.10:5062",
        )
        [reg] = cp.registrations("s")
        self.assertEqual((reg.contact, reg.flow_id), ("sip:alice@192.0.2.10:5062", 3))
        inv = request(
            "INVITE",
            str(c.uri),
            via="SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKq",
            call_id="in",
        )
        down = only(cp.from_network("udp", ("198.51.100.7", 5060), inv, 2.0), ToTunnel)
        self.assertEqual((down.tunnel_key, down.flow_id), (key, 3))
        self.assertEqual(parse_message(down.data).uri, "sip:alice@192.0.2.10:5062")


class PairTests(SynchronousTestCase):
    """
    Agent and contact point cores back to back through a fake tunnel.
    """

    def test_two_phones_two_agents_embedded(self) -> None:
        """
        Two phones behind two agents register with the embedded registrar
        and call each other: INVITE, 180, 200, ACK and BYE each reach the
        right phone over its own flow; media hooks on both sides see SDP.
        """
        hook_a, hook_b = RecordingHook("A"), RecordingHook("B")
        w = World()
        ka, a = w.add_agent("sa", hook_a)
        kb, b = w.add_agent("sb", hook_b)
        fa = Flow("udp", ("192.0.2.1", 5060), ("192.0.2.10", 5062))
        fb = Flow("tcp", ("198.51.100.1", 5060), ("198.51.100.20", 40001), 7)
        w.app(a, fa, register("alice", "sip:alice@192.0.2.10:5062"))
        flow, ok = w.take_app()
        self.assertEqual((flow, ok.status), (fa, 200))
        # the registrar saw the agent's instance; the phone sees its contact
        [binding] = w.contact.registrar.bindings("sip:alice@example.org")
        self.assertEqual(binding.key, a.instance_for("sip:alice@192.0.2.10:5062"))
        self.assertEqual(ok.get("Contact"), "<sip:alice@192.0.2.10:5062>;expires=600")
        w.app(
            b,
            fb,
            register(
                "bob",
                "sip:bob@198.51.100.20:5062;transport=tcp",
                via_host="198.51.100.20:5062",
            ),
        )
        flow, ok = w.take_app()
        self.assertEqual((flow, ok.status), (fb, 200))
        self.assertEqual(len(w.contact.registrar.bindings("sip:bob@example.org")), 1)

        w.app(
            a,
            fa,
            request(
                "INVITE",
                "sip:bob@example.org",
                body=SDP,
                content_type="application/sdp",
                extra=("Contact: <sip:alice@192.0.2.10:5062>",),
            ),
        )
        flow, inv = w.take_app()
        self.assertEqual(flow, fb)
        self.assertEqual(inv.uri, "sip:bob@198.51.100.20:5062;transport=tcp")
        self.assertTrue(inv.body.endswith(b"a=relayed-by:B\r\n"))
        self.assertEqual([c[0] for c in hook_a.calls], ["into"])
        self.assertEqual([c[0] for c in hook_b.calls], ["out"])
        self.assertEqual(hook_b.calls[0][1], kb)

        w.app(b, fb, answer(inv.to_bytes(), 180, "Ringing", to_tag="tb"))
        flow, ring = w.take_app()
        self.assertEqual((flow, ring.status), (fa, 180))
        w.app(
            b,
            fb,
            answer(
                inv.to_bytes(),
                200,
                to_tag="tb",
                body=SDP,
                extra=(("Contact", "<sip:bob@198.51.100.20:5062;transport=tcp>"),),
            ),
        )
        flow, ok = w.take_app()
        self.assertEqual((flow, ok.status), (fa, 200))
        self.assertTrue(ok.body.endswith(b"a=relayed-by:A\r\n"))
        self.assertEqual(ok.count("Via"), 1)
        self.assertEqual(len(w.contact.dialogs("sa")), 1)
        self.assertEqual(len(w.contact.dialogs("sb")), 1)

        # the caller's route set is the reversed Record-Route of the 200
        routes = list(reversed(ok.get_all("Record-Route")))
        first = parse_name_addr(routes[0]).uri
        self.assertEqual((first.host, first.port), fa.local)
        route_lines = tuple(f"Route: {r}" for r in routes)
        w.app(
            a,
            fa,
            request(
                "ACK",
                "sip:bob@198.51.100.20:5062;transport=tcp",
                to="<sip:bob@example.org>;tag=tb",
                via="SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKack1;rport",
                extra=route_lines,
            ),
        )
        flow, ack = w.take_app()
        self.assertEqual((flow, ack.method, ack.count("Route")), (fb, "ACK", 0))

        # the callee hangs up along its route set (Record-Route in order)
        callee_routes = tuple(f"Route: {r}" for r in inv.get_all("Record-Route"))
        bye = request(
            "BYE",
            "sip:alice@192.0.2.10:5062",
            from_="<sip:bob@example.org>;tag=tb",
            to="<sip:alice@example.org>;tag=fa",
            via="SIP/2.0/TCP 198.51.100.20:5062;branch=z9hG4bKbye1",
            cseq=1,
            extra=callee_routes,
        )
        w.app(b, fb, bye)
        flow, bye_in = w.take_app()
        self.assertEqual((flow, bye_in.method, bye_in.count("Route")), (fa, "BYE", 0))
        w.app(a, fa, answer(bye_in.to_bytes(), 200, to_tag=None))
        flow, ok = w.take_app()
        self.assertEqual((flow, ok.status, ok.cseq[1]), (fb, 200, "BYE"))
        self.assertEqual(w.contact.dialogs("sa"), [])
        self.assertEqual(w.contact.dialogs("sb"), [])
        self.assertIn(("ended", ka, dialog_key(1, "call-1@192.0.2.10")), hook_a.calls)
        self.assertIn(("ended", kb, dialog_key(1, "call-1@192.0.2.10")), hook_b.calls)
        self.assertEqual(w.drops, [])

    def test_embedded_registrar_dead_flow_480(self) -> None:
        """
        With the embedded registrar, a call to a phone whose agent's tunnel
        is gone (its registration kept, the session dormant) gets 480
        Temporarily Unavailable: the registrar is the proxy with no other
        flow to try, and 430 is meant for such a proxy, not for a phone.
        """
        w = World()
        _, a = w.add_agent("sa")
        kb, b = w.add_agent("sb")
        fa = Flow("udp", ("192.0.2.1", 5060), ("192.0.2.10", 5062))
        fb = Flow("udp", ("198.51.100.1", 5060), ("198.51.100.20", 5062))
        w.app(a, fa, register("alice", "sip:alice@192.0.2.10:5062"))
        w.take_app()
        w.app(b, fb, register("bob", "sip:bob@198.51.100.20:5062", via_host="198.51.100.20:5062"))
        w.take_app()
        w.contact.tunnel_detached(kb, keep_registrations=True)
        w.app(a, fa, request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp"))
        flow, resp = w.take_app()
        self.assertEqual((flow, resp.status, resp.reason), (fa, 480, "Temporarily Unavailable"))

    def test_reinvite_over_another_transport(self) -> None:
        """
        A phone that sends a re-INVITE over TCP (over 1,300 bytes, RFC 3261
        18.1.1: a new connection, a new flow) in a call it set up over UDP:
        its SDP and the answer's count for the call's leg on both halves
        (the flow the dialog was set up on), the answer goes back over the
        TCP connection, and the BYE over UDP ends the leg on both halves:
        no second leg is made, none is left behind.
        """
        contact_hook, hook_a, hook_b = RecordingHook("C"), RecordingHook("A"), RecordingHook("B")
        w = World(media_hook=contact_hook)
        ka, a = w.add_agent("sa", hook_a)
        kb, b = w.add_agent("sb", hook_b)
        fa = Flow("udp", ("192.0.2.1", 5060), ("192.0.2.10", 5062))
        fa_tcp = Flow("tcp", ("192.0.2.1", 5060), ("192.0.2.10", 40123), 9)
        fb = Flow("udp", ("198.51.100.1", 5060), ("198.51.100.20", 5062))
        w.app(a, fa, register("alice", "sip:alice@192.0.2.10:5062"))
        w.take_app()
        w.app(b, fb, register("bob", "sip:bob@198.51.100.20:5062", via_host="198.51.100.20:5062"))
        w.take_app()
        w.app(a, fa, request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp",
                             extra=("Contact: <sip:alice@192.0.2.10:5062>",)))
        _, inv = w.take_app()
        w.app(b, fb, answer(inv.to_bytes(), 200, to_tag="tb", body=SDP,
                            extra=(("Contact", "<sip:bob@198.51.100.20:5062>"),)))
        _, ok = w.take_app()
        route_lines = tuple(f"Route: {r}" for r in reversed(ok.get_all("Record-Route")))
        w.app(a, fa, request("ACK", "sip:bob@198.51.100.20:5062", to="<sip:bob@example.org>;tag=tb",
                             via="SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKack1;rport", extra=route_lines))
        w.take_app()
        keys_before = {c[2] for hook in (hook_a, contact_hook) for c in hook.calls}

        # the re-INVITE (hold) over TCP
        held = SDP.replace(b"m=audio 4000 RTP/AVP 0\r\n", b"m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n")
        w.app(a, fa_tcp, request("INVITE", "sip:bob@198.51.100.20:5062", to="<sip:bob@example.org>;tag=tb", cseq=2,
                                 via="SIP/2.0/TCP 192.0.2.10:40123;branch=z9hG4bKre1", body=held,
                                 content_type="application/sdp", extra=route_lines))
        flow, reinvite = w.take_app()
        self.assertEqual((flow, reinvite.method), (fb, "INVITE"))
        w.app(b, fb, answer(reinvite.to_bytes(), 200, to_tag="tb", body=SDP))
        flow, reok = w.take_app()
        self.assertEqual((flow, reok.status), (fa_tcp, 200))
        w.app(a, fa_tcp, request("ACK", "sip:bob@198.51.100.20:5062", to="<sip:bob@example.org>;tag=tb", cseq=2,
                                 via="SIP/2.0/TCP 192.0.2.10:40123;branch=z9hG4bKack2", extra=route_lines))
        w.take_app()
        for hook in (hook_a, contact_hook):
            self.assertEqual({c[2] for c in hook.calls}, keys_before, hook.side)
            offers = [c for c in hook.calls if c[1] is ka and c[0] == ("into" if hook is hook_a else "out")]
            self.assertEqual(len(offers), 2, hook.side)

        # the BYE over UDP ends the call's one leg on both halves
        w.app(a, fa, request("BYE", "sip:bob@198.51.100.20:5062", to="<sip:bob@example.org>;tag=tb", cseq=3,
                             via="SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKbye3;rport", extra=route_lines))
        _, bye = w.take_app()
        w.app(b, fb, answer(bye.to_bytes(), 200, to_tag=None))
        w.take_app()
        [leg] = keys_before & {c[2] for c in hook_a.calls if c[0] == "ended"}
        self.assertIn(("ended", ka, leg), hook_a.calls)
        self.assertEqual([c for c in contact_hook.calls if c[0] == "ended" and c[1] is ka], [("ended", ka, leg)])
        self.assertEqual((w.contact.dialogs("sa"), w.drops), ([], []))

    def test_two_phones_one_agent(self) -> None:
        """
        Two phones behind one agent, told apart by their flows and the
        instances the agent gives them, call each other.
        """
        w = World()
        _, a = w.add_agent("s1")
        w.app(a, FLOW_A, register("alice", "sip:alice@192.0.2.10:5062"))
        w.take_app()
        w.app(
            a,
            FLOW_B,
            register("bob", "sip:bob@192.0.2.11:5064", via_host="192.0.2.11:5064"),
        )
        w.take_app()
        w.app(a, FLOW_A, request("INVITE", "sip:bob@example.org"))
        flow, inv = w.take_app()
        self.assertEqual((flow, inv.method), (FLOW_B, "INVITE"))
        w.app(a, FLOW_B, answer(inv.to_bytes(), 486, "Busy Here"))
        flow, busy = w.take_app()
        self.assertEqual((flow, busy.status), (FLOW_A, 486))

    def _alice_and_bob(self) -> tuple[World, AgentSipProxy, RecordingHook, RecordingHook]:
        """
        Two phones registered behind one agent (alice on L{FLOW_A}, bob on
        L{FLOW_B}), both halves with a L{RecordingHook}.
        """
        contact_hook, agent_hook = RecordingHook("contact"), RecordingHook("agent")
        w = World(media_hook=contact_hook)
        _, a = w.add_agent("s1", agent_hook)
        w.app(a, FLOW_A, register("alice", "sip:alice@192.0.2.10:5062"))
        w.take_app()
        w.app(a, FLOW_B, register("bob", "sip:bob@192.0.2.11:5064", via_host="192.0.2.11:5064"))
        w.take_app()
        return w, a, contact_hook, agent_hook

    def test_ack_through_both_halves_keeps_call(self) -> None:
        """
        Two phones behind one agent: a call whose caller ACKs the 200 along
        its route set keeps its media on both halves past the 32 s ACK
        wait; a call whose 200 nobody ACKs ends on both, each leg once.
        """
        w, a, contact_hook, agent_hook = self._alice_and_bob()
        for call_id, ack in (("c1", True), ("c2", False)):
            w.app(a, FLOW_A, request("INVITE", "sip:bob@example.org", call_id=call_id, body=SDP, content_type="application/sdp"))
            flow, inv = w.take_app()
            w.app(a, FLOW_B, answer(inv.to_bytes(), 200, body=SDP))
            flow, ok = w.take_app()
            self.assertEqual((flow, ok.status), (FLOW_A, 200))
            if ack:
                routes = tuple(f"Route: {r}" for r in reversed(ok.get_all("Record-Route")))
                w.app(a, FLOW_A, request("ACK", "sip:bob@192.0.2.11:5064", call_id=call_id, to=ok.get("To"), extra=routes))
                flow, acked = w.take_app()
                self.assertEqual((flow, acked.method), (FLOW_B, "ACK"))
        for hook in (contact_hook, agent_hook):
            del hook.calls[:]
        w.now += 40
        w.run(a.handle_timer(w.now), "agent")
        w.run(w.contact.handle_timer(w.now), "contact")
        ended = sorted(c[2] for c in agent_hook.calls + contact_hook.calls if c[0] == "ended")
        # the agent's two legs (one per phone's flow), the contact point's
        # two (one per flow of the session): all of c2, none of c1
        self.assertEqual(len(ended), 4)
        self.assertTrue(all(key.endswith("/c2") for key in ended), ended)
        self.assertEqual(len(set(ended)), 2)

    def test_invite_waits_for_a_response(self) -> None:
        """
        Both halves tell their media hook that a new call's INVITE with SDP
        crossed (once: not its retransmission, not a re-INVITE) and that a
        provisional response to it did, so the media manager can end a leg
        whose INVITE nothing answered (Timer B); the 2xx is an answer, not
        "heard".
        """
        w, a, contact_hook, agent_hook = self._alice_and_bob()
        invite = request("INVITE", "sip:bob@example.org", call_id="c1", body=SDP, content_type="application/sdp")
        w.app(a, FLOW_A, invite)
        flow, inv = w.take_app()
        self.assertEqual((flow, inv.method), (FLOW_B, "INVITE"))
        # the caller's leg and the callee's, on each half
        legs = {key for _, key in agent_hook.waits}
        self.assertEqual(len(legs), 2)
        for hook in (agent_hook, contact_hook):
            self.assertEqual(sorted(kind for kind, _ in hook.waits), ["invited", "invited"])
            del hook.waits[:]
        w.now += 0.5  # the phone's first retransmission
        w.app(a, FLOW_A, invite)
        w.take_app()
        self.assertEqual((agent_hook.waits, contact_hook.waits), ([], []))
        w.app(a, FLOW_B, answer(inv.to_bytes(), 180, "Ringing"))
        flow, ringing = w.take_app()
        self.assertEqual((flow, ringing.status), (FLOW_A, 180))
        for hook in (agent_hook, contact_hook):
            self.assertEqual(sorted(kind for kind, _ in hook.waits), ["heard", "heard"])
            del hook.waits[:]
        w.app(a, FLOW_B, answer(inv.to_bytes(), 200, body=SDP))
        flow, ok = w.take_app()
        self.assertEqual((flow, ok.status), (FLOW_A, 200))
        self.assertEqual((agent_hook.waits, contact_hook.waits), ([], []))
        self.assertEqual(len(agent_hook.answers), 2)
        # a re-INVITE (To-tag) does not wait
        routes = tuple(f"Route: {r}" for r in reversed(ok.get_all("Record-Route")))
        reinvite = request(
            "INVITE", "sip:bob@192.0.2.11:5064", call_id="c1", to=ok.get("To"), cseq=2,
            body=SDP, content_type="application/sdp", extra=routes,
        )  # fmt: skip
        w.app(a, FLOW_A, reinvite)
        flow, again = w.take_app()
        self.assertEqual((flow, again.method), (FLOW_B, "INVITE"))
        self.assertEqual((agent_hook.waits, contact_hook.waits), ([], []))

    def test_unknown_and_unavailable(self) -> None:
        """
        The embedded registrar answers 404 for unknown users and 480 for
        users whose bindings expired.
        """
        w = World()
        _, a = w.add_agent("s1")
        w.app(
            a,
            FLOW_B,
            register(
                "bob", "sip:bob@192.0.2.11:5064", via_host="192.0.2.11:5064", expires=60
            ),
        )
        w.take_app()
        w.app(a, FLOW_A, request("INVITE", "sip:nobody@example.org"))
        self.assertEqual(w.take_app()[1].status, 404)
        w.now += 61
        w.app(a, FLOW_A, request("INVITE", "sip:bob@example.org", call_id="c2"))
        self.assertEqual(w.take_app()[1].status, 480)

    def test_operator_scripted(self) -> None:
        """
        Through a scripted operator proxy: the phone's REGISTER reaches the
        operator with Path and instance, the operator's INVITE by Path
        reaches the phone, and the phone's answer reaches the operator.
        """
        w = World(operator=OPERATOR)
        ka, a = w.add_agent("s1")
        w.app(a, FLOW_A, register())
        act, reg = w.take_network()
        self.assertEqual(act.addr, ("198.51.100.7", 5060))
        path = reg.get("Path")
        contact = parse_name_addr(reg.get("Contact"))
        self.assertIsNotNone(contact.param("+sip.instance"))
        w.network(answer(act.data, 200, extra=(("Contact", f"{reg.get('Contact')}"),)))
        flow, ok = w.take_app()
        self.assertEqual((flow, ok.status), (FLOW_A, 200))
        inv = request(
            "INVITE",
            str(contact.uri),
            via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop9",
            from_="<sip:carol@example.org>;tag=fc",
            to="<sip:alice@example.org>",
            call_id="op-call",
            extra=(f"Route: {path}", "Record-Route: <sip:198.51.100.7;lr>"),
        )
        w.network(inv)
        flow, got = w.take_app()
        self.assertEqual((flow, got.uri), (FLOW_A, "sip:alice@192.0.2.10:5062"))
        w.app(a, FLOW_A, answer(got.to_bytes(), 200, to_tag="ta"))
        act, resp = w.take_network()
        self.assertEqual(
            (act.addr, resp.status, resp.top_via.branch),
            (("198.51.100.7", 5060), 200, "z9hG4bKop9"),
        )
        self.assertEqual(len(resp.get_all("Record-Route")), 3)


_VALUES = st.sampled_from(
    [
        "<sip:x@203.0.113.5:5060;lr>",
        "<sip:203.0.113.5;lr>",
        "<tel:+123>",
        "sip:[2001:db8::1]:5060",
        "*",
        '"A, B" <sip:a@b>;expires=0',
        '<sip:a@b>;+sip.instance="<urn:uuid:1>";expires=99999999999999',
        "<sips:a@203.0.113.5:5060;transport=tls>",
        "<sip:a@b>, <sip:c@d>;expires=-1",
    ]
)


class StructuredFuzzTests(SynchronousTestCase):
    """
    Well-formed messages with odd but parseable values never make a core
    raise; every action is one of the four kinds.
    """

    @given(
        st.sampled_from(
            [
                "INVITE",
                "REGISTER",
                "BYE",
                "ACK",
                "CANCEL",
                "OPTIONS",
                "SUBSCRIBE",
                "PRACK",
            ]
        ),
        st.sampled_from(
            [
                "sip:bob@example.org",
                "sip:x@203.0.113.5:5060",
                "tel:+1234",
                "sip:[2001:db8::2]",
            ]
        ),
        st.lists(
            st.tuples(
                st.sampled_from(
                    ["Route", "Contact", "Record-Route", "Path", "Expires", "Supported"]
                ),
                _VALUES,
            ),
            max_size=4,
        ),
        st.sampled_from(
            ["", ";rport", ";received=192.0.2.99", ";rport=1", ";maddr=192.0.2.1"]
        ),
        st.integers(0, 3),
        st.booleans(),
    )
    def test_cores_never_raise(
        self, method, ruri, headers, via_params, mf, response
    ) -> None:
        """
        Requests and responses built from odd values, fed to both cores in
        every direction, give only known actions.
        """
        extra = tuple(f"{n}: {v}" for n, v in headers)
        data = request(
            method,
            ruri,
            via=f"SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKx{via_params}, SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKy",
            max_forwards=mf,
            extra=extra,
        )
        try:
            parse_message(data)
        except Exception:
            return
        if response:
            data = answer(
                data, 200, extra=tuple((n, v) for n, v in headers if n == "Contact")
            )
        w = World()
        key, agent = w.add_agent("s")
        kinds = (ToTunnel, ToApp, ToNetwork, Dropped, BindingChanged, RouteRefused)
        for acts in (
            agent.from_app(FLOW_A, data, 0.0),
            agent.from_tunnel(1, data, 0.0),
            w.contact.from_tunnel(key, "s", 1, data, 0.0),
            w.contact.from_network("udp", ("198.51.100.7", 5060), data, 0.0),
            w.contact.from_network("tcp", ("198.51.100.7", 5060), data, 0.0),
        ):
            for a in acts:
                self.assertIsInstance(a, kinds)


def from_carol(method: str, ruri: str, branch: str = "z9hG4bKext1", **kw: Any) -> bytes:
    """
    A request of an operator-side UA, carol at 198.51.100.40 (From-tag
    C{fc}), to alice (see L{request}).
    """
    kw.setdefault("via", f"SIP/2.0/UDP 198.51.100.40:5060;branch={branch}")
    kw.setdefault("to", "<sip:alice@example.org>")
    kw.setdefault("call_id", "ext-1")
    return request(method, ruri, from_="<sip:carol@example.org>;tag=fc", **kw)


class EmbeddedFromNetworkTests(SynchronousTestCase):
    """
    With the embedded registrar, an operator-side UA may call a registered
    application by its address-of-record.
    """

    def test_call_by_aor(self) -> None:
        """
        An INVITE from the network for a registered AOR reaches the phone's
        flow; its answer goes back to the caller's Via address; an unknown
        AOR gets 404.
        """
        w = World()
        _, a = w.add_agent("s1")
        w.app(a, FLOW_A, register())
        w.take_app()
        inv = from_carol("INVITE", "sip:alice@example.org")
        w.network(inv, src=("198.51.100.40", 5060))
        flow, got = w.take_app()
        self.assertEqual((flow, got.uri), (FLOW_A, "sip:alice@192.0.2.10:5062"))
        self.assertEqual(
            got.get_all("Via")[-1], "SIP/2.0/UDP 198.51.100.40:5060;branch=z9hG4bKext1"
        )
        w.app(a, FLOW_A, answer(got.to_bytes(), 180, "Ringing"))
        act, ring = w.take_network()
        self.assertEqual((act.addr, ring.status), (("198.51.100.40", 5060), 180))
        w.network(
            inv.replace(b"sip:alice@example.org SIP", b"sip:nobody@example.org SIP"),
            src=("198.51.100.40", 5060),
        )
        act, nf = w.take_network()
        self.assertEqual((act.addr, nf.status), (("198.51.100.40", 5060), 404))

    def test_register_from_network_refused(self) -> None:
        """
        A REGISTER straight from the operator network is not taken by the
        embedded registrar (404): bindings come only through tunnels.
        """
        w = World()
        w.network(register(via_host="198.51.100.40:5060"), src=("198.51.100.40", 5060))
        act, nf = w.take_network()
        self.assertEqual(nf.status, 404)


class EmbeddedDialogTests(SynchronousTestCase):
    """
    With the embedded registrar, a phone's requests inside a dialog that an
    operator-side UA set up by calling its address-of-record go to that
    UA's remote target (its C{Contact}), and only there.
    """

    CALLER = ("198.51.100.40", 5060)
    TARGET = "sip:carol@198.51.100.40:5060"

    def setUp(self) -> None:
        self.w = World()
        self.key, self.agent = self.w.add_agent("s1")
        self.w.app(self.agent, FLOW_A, register())
        self.w.take_app()

    def call(self, contact: str = TARGET, call_id: str = "ext-1") -> list[str]:
        """
        The operator-side UA at L{CALLER} calls alice with C{contact}; alice
        answers 200 and the UA ACKs.

        @return: the phone's route set (the INVITE's Record-Routes).
        """
        w = self.w
        inv = from_carol(
            "INVITE", "sip:alice@example.org", call_id=call_id, extra=(f"Contact: <{contact}>",)
        )
        w.network(inv, src=self.CALLER)
        _, got = w.take_app()
        w.app(
            self.agent,
            FLOW_A,
            answer(got.to_bytes(), 200, extra=(("Contact", "<sip:alice@192.0.2.10:5062>"),)),
        )
        act, ok = w.take_network()
        self.assertEqual((act.addr, ok.status), (self.CALLER, 200))
        routes = ok.get_all("Record-Route")
        ack = from_carol(
            "ACK",
            "sip:alice@192.0.2.10:5062",
            "z9hG4bKext2",
            to="<sip:alice@example.org>;tag=tt",
            call_id=call_id,
            extra=tuple(f"Route: {r}" for r in reversed(routes)),
        )
        w.network(ack, src=self.CALLER)
        _, got_ack = w.take_app()
        self.assertEqual(got_ack.method, "ACK")
        return got.get_all("Record-Route")

    def phone(
        self,
        method: str,
        routes: list[str],
        ruri: str = TARGET,
        call_id: str = "ext-1",
        to_tag: str = "fc",
        cseq: int = 1,
        branch: str = "z9hG4bKph1",
        agent: AgentSipProxy | None = None,
    ) -> None:
        """
        Alice's phone sends C{method} inside the call, along C{routes}.
        """
        data = request(
            method,
            ruri,
            via=f"SIP/2.0/UDP 192.0.2.10:5062;branch={branch};rport",
            from_="<sip:alice@example.org>;tag=tt",
            to=f"<sip:carol@example.org>;tag={to_tag}",
            call_id=call_id,
            cseq=cseq,
            extra=tuple(f"Route: {r}" for r in routes),
        )
        self.w.app(agent or self.agent, FLOW_A, data)

    def test_bye_reaches_the_caller(self) -> None:
        """
        The phone's BYE goes to the caller's Contact over UDP with the
        contact point's Via on top; the caller's 200 comes back to the
        phone and ends the dialog.
        """
        w = self.w
        routes = self.call()
        self.phone("BYE", routes, cseq=2)
        act, bye = w.take_network()
        self.assertEqual((act.transport, act.addr), ("udp", self.CALLER))
        self.assertEqual((bye.method, bye.uri, bye.count("Route")), ("BYE", self.TARGET, 0))
        self.assertTrue(bye.get_all("Via")[0].startswith("SIP/2.0/UDP 203.0.113.5:5060;branch="))
        w.network(answer(bye.to_bytes(), 200, to_tag=None), src=self.CALLER)
        flow, ok = w.take_app()
        self.assertEqual((flow, ok.status, ok.cseq[1]), (FLOW_A, 200, "BYE"))
        self.assertEqual(w.contact.dialogs("s1"), [])
        self.assertEqual(w.drops, [])

    def test_reinvite_and_ack(self) -> None:
        """
        The phone's re-INVITE (hold) reaches the caller and its 200 comes
        back; the ACK for that 200 goes to the caller too.  The caller's
        2xx with a new Contact (on its own host) moves the target: the
        next request goes there (over TCP, by its C{transport}
        parameter), and not to the old one.
        """
        w = self.w
        routes = self.call()
        self.phone("INVITE", routes, cseq=2)
        act, reinv = w.take_network()
        self.assertEqual((act.addr, reinv.method), (self.CALLER, "INVITE"))
        moved = "sip:carol@198.51.100.40:5070;transport=tcp"
        w.network(
            answer(reinv.to_bytes(), 200, to_tag=None, extra=(("Contact", f"<{moved}>"),)),
            src=self.CALLER,
        )
        _, ok = w.take_app()
        self.assertEqual((ok.status, ok.cseq[1]), (200, "INVITE"))
        self.phone("ACK", routes, ruri=moved, cseq=2, branch="z9hG4bKph2")
        act, ack = w.take_network()
        self.assertEqual((act.transport, act.addr, ack.method), ("tcp", ("198.51.100.40", 5070), "ACK"))
        self.phone("BYE", routes, cseq=3, branch="z9hG4bKph3")
        _, nf = w.take_app()
        self.assertEqual(nf.status, 404)
        self.assertEqual(w.to_network, [])

    def test_refresh_from_the_caller(self) -> None:
        """
        The caller's own re-INVITE still reaches the phone, and its new
        Contact is the target the phone's BYE then goes to.
        """
        w = self.w
        routes = self.call()
        moved = "sip:carol@198.51.100.42:5080"
        reinv = from_carol(
            "INVITE",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 198.51.100.42:5080;branch=z9hG4bKext3",
            to="<sip:alice@example.org>;tag=tt",
            cseq=2,
            extra=(f"Contact: <{moved}>",) + tuple(f"Route: {r}" for r in reversed(routes)),
        )
        w.network(reinv, src=("198.51.100.42", 5080))
        _, got = w.take_app()
        self.assertEqual((got.method, got.cseq[0]), ("INVITE", 2))
        w.app(self.agent, FLOW_A, answer(got.to_bytes(), 200))
        act, ok = w.take_network()
        self.assertEqual((act.addr, ok.status), (("198.51.100.42", 5080), 200))
        self.phone("BYE", routes, ruri=moved, cseq=2)
        act, bye = w.take_network()
        self.assertEqual((act.addr, bye.method), (("198.51.100.42", 5080), "BYE"))

    def test_forged_requests_refused(self) -> None:
        """
        Nothing goes to the network for an in-dialog request whose dialog
        the contact point did not record (another Call-ID or tag), whose
        Request-URI is not the dialog's remote target, or that comes from
        another tunnel: 404 in the tunnel, as before.
        """
        w = self.w
        routes = self.call()
        _, other = w.add_agent("s2")
        other.flows.use(FLOW_A, w.now)
        cases: list[dict[str, Any]] = [
            {"call_id": "invented"},
            {"to_tag": "invented"},
            {"ruri": "sip:carol@198.51.100.99:5060"},
            {"ruri": "sip:carol@198.51.100.40:5061"},
            # the other agent's phone, with the contact point's Route only
            # (the first agent's Record-Route means nothing to it)
            {"agent": other, "routes": [r for r in routes if "203.0.113.5" in r]},
        ]
        for kw in cases:
            self.phone("BYE", **{"routes": routes, **kw})
            _, nf = w.take_app()
            self.assertEqual((nf.status, nf.reason), (404, "Not Found"), kw)
            self.assertEqual(w.to_network, [], kw)

    def test_target_by_name_refused(self) -> None:
        """
        A remote target with a host name (or TLS) is not sent to: the
        phone's request gets 404 naming why, and nothing is sent.
        """
        w = self.w
        target = "sip:carol@ua.example.org:5060"
        routes = self.call(target)
        self.phone("BYE", routes, ruri=target)
        _, nf = w.take_app()
        self.assertEqual(
            (nf.status, nf.reason), (404, f"Not Found: remote target {target} is not an IP address")
        )
        self.assertEqual(w.to_network, [])
        self.assertEqual(w.contact.counters[TARGET_UNREACHABLE], 1)

    def test_target_elsewhere_refused(self) -> None:
        """
        A remote target whose host is not the address the message that
        set it came from (the INVITE's, a refresh's, the 2xx to the
        phone's re-INVITE) is not sent to, over UDP or TCP: the phone's
        ACK is dropped with a line, its BYE gets 404 naming why, and
        nothing goes to the network (else any host on the operator side
        could have the contact point send SIP, or open TCP, anywhere,
        loopback included).
        """
        w = self.w
        reason = "remote target {} is not the caller's address 198.51.100.40 (its message came from there)"
        for n, target in enumerate(("sip:v@127.0.0.77:31999", "sip:v@192.0.2.77:31998;transport=tcp")):
            call_id = f"ext-{n}"
            routes = self.call(target, call_id=call_id)
            self.phone("ACK", routes, ruri=target, call_id=call_id)
            self.assertEqual(w.to_network, [])
            self.assertEqual(w.drops, [f"ACK to {target}: " + reason.format(target)])
            self.phone("BYE", routes, ruri=target, call_id=call_id, cseq=2, branch="z9hG4bKph2")
            _, nf = w.take_app()
            self.assertEqual((nf.status, nf.reason), (404, "Not Found: " + reason.format(target)))
            self.assertEqual(w.to_network, [])
            w.drops.clear()
        # the caller's 2xx to the phone's re-INVITE, moving the target to
        # another host, moves it nowhere it is sent to
        routes = self.call(call_id="ext-3")
        self.phone("INVITE", routes, call_id="ext-3", cseq=2)
        _, reinv = w.take_network()
        moved = "sip:v@198.51.100.41:5060"
        w.network(answer(reinv.to_bytes(), 200, to_tag=None, extra=(("Contact", f"<{moved}>"),)), src=self.CALLER)
        w.take_app()
        self.phone("BYE", routes, ruri=moved, call_id="ext-3", cseq=3, branch="z9hG4bKph3")
        _, nf = w.take_app()
        self.assertEqual((nf.status, nf.reason), (404, "Not Found: " + reason.format(moved)))
        self.assertEqual(w.to_network, [])

    def test_not_with_an_operator_proxy(self) -> None:
        """
        With an operator proxy, in-dialog requests go to it as before,
        whatever their Request-URI.
        """
        w = World(operator=OPERATOR)
        key, agent = w.add_agent("s1")
        token = FlowTokenCodec(SECRET).encode(KIND_ROUTE, "s1", 1)
        data = request(
            "BYE",
            self.TARGET,
            to="<sip:carol@example.org>;tag=fc",
            extra=(f"Route: <sip:{token}@203.0.113.5:5060;lr>",),
        )
        out = only(w.contact.from_tunnel(key, "s1", 1, data, w.now), ToNetwork)
        self.assertEqual(out.addr, ("198.51.100.7", 5060))


class PassThroughTests(SynchronousTestCase):
    """
    In-dialog and other requests pass through the contact point both ways.
    """

    def test_methods(self) -> None:
        """
        PRACK, UPDATE, re-INVITE, OPTIONS, MESSAGE, SUBSCRIBE, NOTIFY, REFER
        and INFO from the tunnel go to the operator proxy, and with our
        route token from the network go to the flow.
        """
        cp = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR)
        key = FakeTunnel("s")
        cp.tunnel_attached(key, "s")
        token = FlowTokenCodec(SECRET).encode(KIND_ROUTE, "s", 2)
        route = f"Route: <sip:{token}@203.0.113.5:5060;lr>"
        for method in [
            "PRACK",
            "UPDATE",
            "INVITE",
            "OPTIONS",
            "MESSAGE",
            "SUBSCRIBE",
            "NOTIFY",
            "REFER",
            "INFO",
        ]:
            up = request(method, "sip:bob@198.51.100.30", to="<sip:b@x>;tag=t")
            out = only(cp.from_tunnel(key, "s", 2, up, 0.0), ToNetwork)
            self.assertEqual(out.addr, ("198.51.100.7", 5060))
            self.assertEqual(parse_message(out.data).method, method)
            down = request(
                method,
                "sip:alice@192.0.2.10:5062",
                via="SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK" + method,
                to="<sip:a@x>;tag=t",
                extra=(route,),
            )
            act = only(
                cp.from_network("udp", ("198.51.100.7", 5060), down, 0.0), ToTunnel
            )
            self.assertEqual((act.flow_id, parse_message(act.data).method), (2, method))

    def test_offers_in_prack_and_update(self) -> None:
        """
        SDP in PRACK and UPDATE (and in their 2xx) reaches the media hook
        like SDP in INVITE, both ways, with the tag of the endpoint that
        wrote it, and the rewritten body goes out.
        """
        hook = RecordingHook("contact")
        cp = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR, media_hook=hook)
        key = FakeTunnel("s")
        cp.tunnel_attached(key, "s")
        token = FlowTokenCodec(SECRET).encode(KIND_ROUTE, "s", 2)
        route = f"Route: <sip:{token}@203.0.113.5:5060;lr>"
        for method in ("PRACK", "UPDATE"):
            del hook.calls[:]
            up = request(
                method, "sip:bob@198.51.100.30", from_="<sip:a@x>;tag=phone", to="<sip:b@x>;tag=far",
                body=SDP, content_type="application/sdp",
            )
            out = only(cp.from_tunnel(key, "s", 2, up, 0.0), ToNetwork)
            self.assertTrue(parse_message(out.data).body.endswith(b"a=relayed-by:contact\r\n"))
            ok = answer(out.data, 200, to_tag=None, body=SDP)
            only(cp.from_network("udp", ("198.51.100.7", 5060), ok, 0.0), ToTunnel)
            down = request(
                method,
                "sip:alice@192.0.2.10:5062",
                via="SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKd" + method,
                from_="<sip:b@x>;tag=far",
                to="<sip:a@x>;tag=phone",
                extra=(route,),
                body=SDP,
                content_type="application/sdp",
            )
            only(cp.from_network("udp", ("198.51.100.7", 5060), down, 0.0), ToTunnel)
            leg = dialog_key(2, "call-1@192.0.2.10")
            self.assertEqual(
                [(c[0], c[2]) for c in hook.calls], [("out", leg), ("into", leg), ("into", leg)]
            )
            self.assertEqual(hook.tags[-3:], [("out", "phone"), ("into", "far"), ("into", "far")])

    def test_max_forwards_from_tunnel(self) -> None:
        """
        A request from the tunnel with Max-Forwards 0 is answered 483 into
        the tunnel.
        """
        cp = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR)
        key = FakeTunnel("s")
        data = request("OPTIONS", "sip:bob@example.org", max_forwards=0)
        act = only(cp.from_tunnel(key, "s", 2, data, 0.0), ToTunnel)
        self.assertEqual(parse_message(act.data).status, 483)


class PairCancelTests(SynchronousTestCase):
    """
    CANCEL and ACK for a non-2xx across the whole pair, statelessly.
    """

    def test_cancel_ringing_call(self) -> None:
        """
        A CANCEL reaches the callee with the same top Via branch as its
        INVITE; the 200 to CANCEL and the 487 reach the caller; the ACK for
        the 487 reaches the callee with the INVITE's branch again.
        """
        w = World()
        _, a = w.add_agent("sa")
        _, b = w.add_agent("sb")
        fb = Flow("tcp", ("198.51.100.1", 5060), ("198.51.100.20", 40001), 3)
        w.app(a, FLOW_A, register())
        w.take_app()
        w.app(b, fb, register("bob", "sip:bob@198.51.100.20:5062;transport=tcp"))
        w.take_app()
        w.app(a, FLOW_A, request("INVITE", "sip:bob@example.org"))
        _, inv = w.take_app()
        w.app(b, fb, answer(inv.to_bytes(), 180, "Ringing", to_tag="tb"))
        w.take_app()
        w.app(a, FLOW_A, request("CANCEL", "sip:bob@example.org"))
        flow, can = w.take_app()
        self.assertEqual((flow, can.method), (fb, "CANCEL"))
        self.assertEqual(can.get_all("Via"), inv.get_all("Via"))
        w.app(b, fb, answer(can.to_bytes(), 200, to_tag="tb"))
        flow, ok = w.take_app()
        self.assertEqual((flow, ok.status, ok.cseq[1]), (FLOW_A, 200, "CANCEL"))
        w.app(b, fb, answer(inv.to_bytes(), 487, "Request Terminated", to_tag="tb"))
        flow, term = w.take_app()
        self.assertEqual((flow, term.status), (FLOW_A, 487))
        ack = request("ACK", "sip:bob@example.org", to="<sip:bob@example.org>;tag=tb")
        w.app(a, FLOW_A, ack)
        flow, got = w.take_app()
        self.assertEqual((flow, got.method), (fb, "ACK"))
        self.assertEqual(got.top_via.branch, inv.top_via.branch)
        self.assertEqual(w.drops, [])
        self.assertEqual(w.contact.dialogs("sa"), [])


_DATA = os.path.join(os.path.dirname(__file__), "data")


def _torture_files() -> list[str]:
    out = []
    for folder in ("rfc4475", "rfc5118"):
        path = os.path.join(_DATA, folder)
        if os.path.isdir(path):
            out += [os.path.join(path, f) for f in sorted(os.listdir(path))]
    return [f for f in out if f.endswith(".dat")]


class TortureTests(SynchronousTestCase):
    """
    Every RFC 4475 and RFC 5118 message through the agent (as a datagram and
    on a TCP stream) and the contact point (from the network and from the
    tunnel): nothing raises, valid requests are routed or answered, invalid
    ones answered with an error or dropped.
    """

    def test_all(self) -> None:
        """
        Each torture message gives only known actions; a request that parses
        is forwarded or answered; one that does not is answered with an error
        status or dropped, never forwarded.
        """
        files = _torture_files()
        self.assertTrue(files)
        kinds = (ToTunnel, ToApp, ToNetwork, Dropped, BindingChanged, RouteRefused)
        for path in files:
            with open(path, "rb") as f:
                data = f.read()
            try:
                msg = parse_message(data)
            except SipParseError:
                msg = None
            w = World()
            key, agent = w.add_agent("s")
            acts = agent.from_app(FLOW_A, data, 0.0)
            for a in acts:
                self.assertTrue(isinstance(a, kinds), path)
            if msg is None:
                for a in acts:
                    self.assertFalse(isinstance(a, ToTunnel), path)
                    if isinstance(a, ToApp):
                        self.assertRegex(a.data, rb"^SIP/2\.0 [45]\d\d ", path)
            elif msg.is_request and msg.method != "ACK":
                self.assertTrue(
                    any(isinstance(a, (ToTunnel, ToApp)) for a in acts), path
                )
            for a in w.contact.from_network("udp", ("198.51.100.7", 5060), data, 0.0):
                self.assertTrue(isinstance(a, kinds), path)
            for a in w.contact.from_tunnel(key, "s", 1, data, 0.0):
                self.assertTrue(isinstance(a, kinds), path)
            if msg is not None and data.count(b"Content-Length") + data.count(b"\nl:"):
                # on a stream too, through the glue
                sent: list[tuple[int, bytes]] = []
                runner = AgentSipRunner(
                    agent, Clock(), send_to_tunnel=lambda k, f, d: sent.append((f, d))
                )
                proto = SipStreamFactory(runner).buildProtocol(None)
                tr = StringTransport(
                    hostAddress=IPv4Address("TCP", "192.0.2.1", 5060),
                    peerAddress=IPv4Address("TCP", "192.0.2.10", 40000),
                )
                proto.makeConnection(tr)
                for i in range(0, len(data), 7):
                    proto.dataReceived(data[i : i + 7])
                runner.stop()
        self.assertEqual(self.flushLoggedErrors(), [])


AGENT_NAMES = ProxyNames(
    [("192.0.2.1", 5060), ("192.0.2.1", 5061), ("2001:db8::1", 5060)],
    [("agent.example.net", None)],
)


class AgentRouteTests(SynchronousTestCase):
    """
    RFC 3261 16.4 on the agent: a top Route or a Request-URI naming the
    agent by any of its addresses or names.
    """

    def setUp(self) -> None:
        self.agent = AgentSipProxy(object(), "agent-1", names=AGENT_NAMES)
        self.now = 0.0

    def up(self, data: bytes, flow: Flow = FLOW_A) -> SipMessage:
        # a second apart: the same INVITE again is a retransmission
        self.now += 1.0
        return parse_message(only(self.agent.from_app(flow, data, self.now), ToTunnel).data)

    def routes_after(self, *routes: str, method: str = "REGISTER") -> list[str]:
        extra = tuple(f"Route: {r}" for r in routes)
        if method == "REGISTER":
            data = register().replace(b"Content-Length:", "".join(e + "\r\n" for e in extra).encode() + b"Content-Length:")
        else:
            data = request(method, "sip:bob@example.org", extra=extra)
        return self.up(data).get_all("Route")

    def test_own_routes_removed(self) -> None:
        """
        A pre-loaded Route naming the agent goes, whatever form it takes:
        the default port, an explicit one, any transport parameter, the TLS
        port (5061 for C{sips} or C{;transport=tls}), an IPv6 literal in any
        spelling, a configured name in any case or with a trailing dot.
        """
        for route in (
            "<sip:192.0.2.1;lr>",
            "<sip:192.0.2.1:5060;lr>",
            "<sip:192.0.2.1:5060;transport=tcp;lr>",
            "<sip:192.0.2.1;transport=TCP;lr>",
            "<sip:192.0.2.1;transport=tls;lr>",
            "<sips:192.0.2.1;lr>",
            "<sip:192.0.2.1:5061;transport=tls;lr>",
            "<sip:[2001:db8::1];lr>",
            "<sip:[2001:DB8:0:0::1]:5060;transport=udp;lr>",
            "<sip:agent.example.net;lr>",
            "<sip:Agent.Example.NET:5061;transport=tls;lr>",
            "<sip:agent.example.net.;lr>",
            "sip:192.0.2.1;lr",
            "<sip:proxy@192.0.2.1;lr>",
        ):
            self.assertEqual(self.routes_after(route), [], route)
            self.assertEqual(self.routes_after(route, method="INVITE"), [], route)

    def test_repeated_own_routes_removed(self) -> None:
        """
        A phone that pre-loads the agent twice (two forms, one header or
        two) loses both; a Route after them to another host stays.
        """
        self.assertEqual(self.routes_after("<sip:192.0.2.1;lr>, <sip:agent.example.net:5060;lr>"), [])
        self.assertEqual(self.routes_after("<sip:192.0.2.1;lr>", "<sip:[2001:db8::1];lr>"), [])
        self.assertEqual(
            self.routes_after("<sip:192.0.2.1;lr>", "<sip:sbc.example.org;lr>"),
            ["<sip:sbc.example.org;lr>"],
        )

    def test_foreign_routes_stay(self) -> None:
        """
        A Route naming another host, another port of our host, or another
        name stays, and the request still goes only into the tunnel (the
        agent never follows a Route); a Route of ours below a foreign one
        is not touched either (only the top Route is ours to remove).
        """
        for route in (
            "<sip:198.51.100.9;lr>",
            "<sip:192.0.2.1:5070;lr>",
            "<sip:[2001:db8::2];lr>",
            "<sip:[2001:db8::1]:5061;lr>",
            "<sip:agent.example.org;lr>",
            "<sip:sub.agent.example.net;lr>",
            "<sip:192.0.2.10;lr>",
        ):
            self.assertEqual(self.routes_after(route), [route], route)
        self.assertEqual(
            self.routes_after("<sip:198.51.100.9;lr>", "<sip:192.0.2.1;lr>"),
            ["<sip:198.51.100.9;lr>", "<sip:192.0.2.1;lr>"],
        )

    def test_without_names_only_record_route(self) -> None:
        """
        An agent given no names removes only its own Record-Route values.
        """
        agent = AgentSipProxy(object(), "agent-1")
        rr = agent._record_route(FLOW_A)
        data = request("BYE", "sip:bob@192.0.2.11", extra=(f"Route: {rr}", "Route: <sip:192.0.2.1;lr>"))
        msg = parse_message(only(agent.from_app(FLOW_A, data, 0.0), ToTunnel).data)
        self.assertEqual(msg.get_all("Route"), ["<sip:192.0.2.1;lr>"])

    def test_register_uri_naming_agent(self) -> None:
        """
        A REGISTER sent to the agent as the registrar address (Request-URI
        naming the agent) gets the domain of its To URI as Request-URI (RFC
        3261 10.2); a REGISTER for the domain is left alone.
        """
        for ruri in ("sip:192.0.2.1", "sip:192.0.2.1:5060;transport=udp", "sip:agent.example.net", "sip:[2001:db8::1]"):
            data = register().replace(b"REGISTER sip:example.org", b"REGISTER " + ruri.encode())
            self.assertEqual(self.up(data).uri, "sip:example.org", ruri)
        data = register().replace(b"@example.org", b"@example.org:5070")
        self.assertEqual(self.up(data.replace(b"REGISTER sip:example.org", b"REGISTER sip:192.0.2.1")).uri, "sip:example.org:5070")
        self.assertEqual(self.up(register()).uri, "sip:example.org")

    def test_strict_routing(self) -> None:
        """
        A Request-URI naming the agent (our Record-Route value, from a
        strict router; or the agent's address) is replaced by the last
        Route, which is removed (RFC 3261 16.4); without a Route an
        out-of-dialog request to the agent's address is left alone.
        """
        rr = self.agent._record_route(FLOW_A)
        ruri = parse_name_addr(rr).uri
        data = request(
            "BYE",
            str(ruri),
            extra=("Route: <sip:tok@203.0.113.5;lr>", "Route: <sip:bob@192.0.2.11:5064>"),
        )
        msg = self.up(data)
        self.assertEqual((msg.uri, msg.get_all("Route")), ("sip:bob@192.0.2.11:5064", ["<sip:tok@203.0.113.5;lr>"]))
        msg = self.up(request("INVITE", "sip:192.0.2.1", extra=("Route: <sip:bob@example.org>",)))
        self.assertEqual((msg.uri, msg.get_all("Route")), ("sip:bob@example.org", []))
        msg = self.up(request("MESSAGE", "sip:192.0.2.1"))
        self.assertEqual(msg.uri, "sip:192.0.2.1")

    def test_route_to_app_removed(self) -> None:
        """
        A request from the tunnel loses a top Route naming the agent.
        """
        flow_id = self.agent.flows.use(FLOW_A, 0.0)
        data = request("BYE", "sip:alice@192.0.2.10:5062", extra=("Route: <sip:agent.example.net;lr>",))
        [act] = self.agent.from_tunnel(flow_id, data, 0.0)
        self.assertEqual(parse_message(act.data).get_all("Route"), [])

    def test_wildcard_listener(self) -> None:
        """
        Listening on C{0.0.0.0}, every IPv4 literal with our port names the
        agent (not IPv6, not names, not other ports); on C{::} every IP
        literal does.
        """
        agent = AgentSipProxy(object(), "agent-1", names=ProxyNames([("0.0.0.0", 5060)]))
        for route, gone in (
            ("<sip:10.1.2.3;lr>", True),
            ("<sip:127.0.0.1:5060;lr>", True),
            ("<sip:10.1.2.3:5070;lr>", False),
            ("<sip:[2001:db8::7];lr>", False),
            ("<sip:host.example;lr>", False),
        ):
            data = request("MESSAGE", "sip:bob@example.org", extra=(f"Route: {route}",))
            msg = parse_message(only(agent.from_app(FLOW_A, data, 0.0), ToTunnel).data)
            self.assertEqual(msg.get_all("Route"), [] if gone else [route], route)
        names6 = ProxyNames([("::", 5060)])
        self.assertTrue(names6.matches("[2001:db8::7]", 5060))
        self.assertTrue(names6.matches("10.1.2.3", 5060))
        self.assertFalse(names6.matches("host.example", 5060))


class AgentOptionsTests(SynchronousTestCase):
    """
    An C{OPTIONS} for the agent itself (RFC 3261 11, 16.3): a phone's
    keepalive to its outbound proxy is answered by the agent.
    """

    def setUp(self) -> None:
        self.key = FakeTunnel()
        self.agent = AgentSipProxy(self.key, "agent-1", names=AGENT_NAMES)

    def options(self, ruri: str, **kw: Any) -> list[Any]:
        return self.agent.from_app(FLOW_A, request("OPTIONS", ruri, to=f"<{ruri}>", **kw), 1.0)

    def test_answered_200(self) -> None:
        """
        An OPTIONS whose Request-URI names the agent without a user part
        (any of its addresses or names, the default port when none is
        given), or whose Max-Forwards is 0 whatever it names, is answered
        200 with Allow and Accept and a To tag; nothing goes into the
        tunnel.
        """
        for ruri, mf in [
            ("sip:192.0.2.1:5060", 70),
            ("sip:192.0.2.1", 70),
            ("sip:[2001:db8::1]:5060;transport=udp", 70),
            ("sip:agent.example.net", 70),
            ("sips:192.0.2.1", 70),
            ("sip:192.0.2.1:5060", 0),
            ("sip:bob@example.org", 0),
        ]:
            [action] = self.options(ruri, max_forwards=mf)
            resp = parse_message(only([action], ToApp).data)
            self.assertEqual(resp.status, 200, ruri)
            self.assertIn(b"\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER,", action.data)
            self.assertEqual(resp.get("accept"), "application/sdp")
            self.assertIsNotNone(resp.to_tag)
            self.assertIn("z9hG4bKapp1", resp.get("via"))
        self.assertEqual(self.key.sip_sent, [])
        self.assertEqual(self.agent.counters["OPTIONS answered here"], 7)

    def test_own_route_then_answered(self) -> None:
        """
        The agent pre-loaded as Route does not change that; another Route
        left means the request goes on.
        """
        [action] = self.options("sip:192.0.2.1", extra=("Route: <sip:192.0.2.1;lr>",))
        self.assertEqual(parse_message(only([action], ToApp).data).status, 200)
        actions = self.options("sip:192.0.2.1", extra=("Route: <sip:192.0.2.1;lr>, <sip:sbc.example.org;lr>",))
        only(actions, ToTunnel)

    def test_others_forwarded(self) -> None:
        """
        An OPTIONS to someone else, to a user at the agent's address, or to
        another port of the agent's host goes into the tunnel as before.
        """
        for ruri in ["sip:bob@example.org", "sip:bob@192.0.2.1:5060", "sip:192.0.2.1:5070", "sip:example.org"]:
            self.assertEqual(parse_message(only(self.options(ruri), ToTunnel).data).uri, ruri)

    def test_no_tunnel_503(self) -> None:
        """
        While no tunnel could carry a request (the tunnel key's
        C{unavailable_for()} gives a Retry-After), the answer is 503 with
        that Retry-After, as other requests get then.
        """
        self.key.unavailable_for = lambda: 9  # type: ignore[attr-defined]
        [action] = self.options("sip:192.0.2.1:5060")
        resp = parse_message(only([action], ToApp).data)
        self.assertEqual((resp.status, resp.get("retry-after")), (503, "9"))
        self.assertEqual(self.agent.counters["OPTIONS answered here: 503, no tunnel"], 1)
        self.key.unavailable_for = lambda: None  # type: ignore[attr-defined]
        [action] = self.options("sip:192.0.2.1:5060")
        self.assertEqual(parse_message(only([action], ToApp).data).status, 200)


CONTACT_NAMES = ProxyNames([CONTACT_ADDR], [("contact.example.net", None), ("198.51.100.50", 5080)])


class ContactRouteTests(SynchronousTestCase):
    """
    RFC 3261 16.4 on the contact point.
    """

    def setUp(self) -> None:
        self.cp = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR, names=CONTACT_NAMES)
        self.key = FakeTunnel("sess-1")
        self.cp.tunnel_attached(self.key, "sess-1")
        self.codec = FlowTokenCodec(SECRET)
        self.token = self.codec.encode(KIND_ROUTE, "sess-1", 5)

    def up(self, data: bytes) -> tuple[ToNetwork, SipMessage]:
        act = only(self.cp.from_tunnel(self.key, "sess-1", 5, data, 0.0), ToNetwork)
        return act, parse_message(act.data)

    def test_options_to_the_contact_point(self) -> None:
        """
        An OPTIONS from the network naming the contact point (no user part,
        no Route left but ours), or with Max-Forwards 0, is answered 200 by
        it, as the agent answers its phones; one with a flow token, or to
        a user, is routed as before (an unknown user: 404).
        """
        src = ("198.51.100.7", 5060)
        via = "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop1"
        for ruri, mf, extra in [
            ("sip:203.0.113.5", 70, ()),
            ("sip:contact.example.net:5060", 70, ("Route: <sip:203.0.113.5;lr>",)),
            ("sip:bob@example.org", 0, ()),
        ]:
            data = request("OPTIONS", ruri, via=via, max_forwards=mf, extra=extra)
            act = only(self.cp.from_network("udp", src, data, 0.0), ToNetwork)
            resp = parse_message(act.data)
            self.assertEqual((act.addr, resp.status), (src, 200), ruri)
            self.assertIn(b"\r\nAllow: INVITE, ACK,", act.data)
            self.assertIsNotNone(resp.to_tag)
        self.assertEqual(self.cp.counters["OPTIONS answered here"], 3)
        for ruri in ("sip:bob@203.0.113.5", "sip:203.0.113.5:5070"):
            data = request("OPTIONS", ruri, via=via)
            act = only(self.cp.from_network("udp", src, data, 0.0), ToNetwork)
            self.assertEqual(parse_message(act.data).status, 404, ruri)
        data = request("OPTIONS", "sip:alice@192.0.2.10", via=via, extra=(f"Route: <sip:{self.token}@203.0.113.5;lr>",))
        only(self.cp.from_network("udp", src, data, 0.0), ToTunnel)

    def test_tokenless_own_routes_removed_from_tunnel(self) -> None:
        """
        From the tunnel, top Routes naming the contact point without a flow
        token go (address, name, name with port); one naming another host,
        or our alias on another port, stays and the request still goes to
        the operator proxy only.
        """
        for route in (
            "<sip:203.0.113.5;lr>",
            "<sip:203.0.113.5:5060;transport=tcp;lr>",
            "<sip:CONTACT.example.net;lr>",
            "<sip:198.51.100.50:5080;lr>",
        ):
            act, msg = self.up(request("MESSAGE", "sip:bob@example.org", extra=(f"Route: {route}",)))
            self.assertEqual((act.addr, msg.get_all("Route")), (("198.51.100.7", 5060), []), route)
        for route in ("<sip:198.51.100.50;lr>", "<sip:203.0.113.6;lr>", "<sip:contact.example.net:5070;lr>"):
            act, msg = self.up(request("MESSAGE", "sip:bob@example.org", extra=(f"Route: {route}",)))
            self.assertEqual((act.addr, msg.get_all("Route")), (("198.51.100.7", 5060), [route]), route)

    def test_one_token_route_from_tunnel(self) -> None:
        """
        From the tunnel a tokenless own Route and then our Record-Route with
        a token go; a second token Route (the other leg's) stays.
        """
        other = self.codec.encode(KIND_ROUTE, "sess-2", 7)
        routes = f"<sip:contact.example.net;lr>, <sip:{self.token}@203.0.113.5;lr>, <sip:{other}@203.0.113.5;lr>"
        act, msg = self.up(request("BYE", "sip:bob@192.0.2.30", extra=(f"Route: {routes}",)))
        self.assertEqual(msg.get_all("Route"), [f"<sip:{other}@203.0.113.5;lr>"])

    def test_network_routes(self) -> None:
        """
        From the network, tokenless own Routes go and the token Route below
        them names the flow; a Route to another host is refused with 403
        and an event naming it, never followed.
        """
        inv = request(
            "INVITE",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop1",
            extra=(f"Route: <sip:contact.example.net;lr>, <sip:{self.token}@[::ffff:203.0.113.5];lr>",),
        )
        act = only(self.cp.from_network("udp", ("198.51.100.7", 5060), inv, 0.0), ToTunnel)
        self.assertEqual((act.tunnel_key, act.flow_id), (self.key, 5))
        self.assertEqual(parse_message(act.data).get_all("Route"), [])
        bad = request(
            "INVITE",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop2",
            extra=("Route: <sip:SBC.example.org:5070;lr>",),
        )
        out = self.cp.from_network("udp", ("198.51.100.7", 5060), bad, 0.0)
        sent = only(out, ToNetwork)
        refused = parse_message(sent.data)
        self.assertEqual((sent.addr, refused.status), (("198.51.100.7", 5060), 403))
        self.assertEqual(refused.reason, "Forbidden: not relaying to SBC.example.org:5070")
        [event] = [a for a in out if isinstance(a, RouteRefused)]
        self.assertEqual(event, RouteRefused("<sip:SBC.example.org:5070;lr>", "SBC.example.org", 5070, "INVITE"))

    def test_strict_routing_from_network(self) -> None:
        """
        A Request-URI holding our Record-Route value (a strict router
        before us) names the flow; it is replaced by the last Route, which
        is removed.
        """
        inv = request(
            "BYE",
            f"sip:{self.token}@203.0.113.5:5060;lr",
            via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop1",
            extra=("Route: <sip:alice@192.0.2.10:5062>",),
        )
        act = only(self.cp.from_network("udp", ("198.51.100.7", 5060), inv, 0.0), ToTunnel)
        msg = parse_message(act.data)
        self.assertEqual((act.flow_id, msg.uri, msg.get_all("Route")), (5, "sip:alice@192.0.2.10:5062", []))

    def test_ipv6_address(self) -> None:
        """
        A contact point on an IPv6 address knows itself in any spelling.
        """
        cp = ContactSipProxy(("2001:db8::5", 5060), SECRET, operator=OPERATOR)
        cp.tunnel_attached(self.key, "sess-1")
        data = request("MESSAGE", "sip:bob@example.org", extra=("Route: <sip:[2001:DB8:0::5]:5060;lr>",))
        act = only(cp.from_tunnel(self.key, "sess-1", 5, data, 0.0), ToNetwork)
        self.assertEqual(parse_message(act.data).get_all("Route"), [])

    def test_embedded_registrar_refuses_foreign_route(self) -> None:
        """
        With the embedded registrar, a request from the tunnel with a Route
        to another host is answered 403 in the tunnel, with an event that
        names the Route.
        """
        cp = ContactSipProxy(CONTACT_ADDR, SECRET)
        cp.tunnel_attached(self.key, "sess-1")
        data = register().replace(b"Content-Length:", b"Route: <sip:agent.lan:5060;lr>\r\nContent-Length:")
        out = cp.from_tunnel(self.key, "sess-1", 5, data, 0.0)
        back = only(out, ToTunnel)
        self.assertEqual(parse_message(back.data).status, 403)
        [event] = [a for a in out if isinstance(a, RouteRefused)]
        self.assertEqual((event.host, event.port, event.method), ("agent.lan", 5060, "REGISTER"))


class BindingEventTests(SynchronousTestCase):
    """
    L{BindingChanged} events from the contact point's registrations.
    """

    def setUp(self) -> None:
        self.w = World()
        _, self.agent = self.w.add_agent("s1")

    def register(
        self, expires: int, flow: Flow = FLOW_A, branch: str = "z9hG4bKreg1", agent: bool = False
    ) -> list[Any]:
        del self.w.events[:]
        self.w.app(self.agent, flow, register(expires=expires, branch=branch))
        self.w.take_app()
        return [e for e in self.w.events if (e.app is not None) == agent]

    def test_changes(self) -> None:
        """
        On the contact point: a new binding is "registered"; a refresh with
        the same contact makes no event; Expires 0 is "unregistered"; a
        binding left to run out is "expired" at the sweep.
        """
        fid = self.agent.flows.use(FLOW_A, self.w.now)
        self.assertEqual(
            self.register(600),
            [BindingChanged("registered", "sip:alice@example.org", "sip:alice@192.0.2.10:5062", 600, "s1", fid)],
        )
        self.assertEqual(self.register(600, branch="z9hG4bKreg2"), [])
        self.assertEqual(self.register(300, branch="z9hG4bKreg3"), [])
        self.assertEqual(
            self.register(0, branch="z9hG4bKreg4"),
            [BindingChanged("unregistered", "sip:alice@example.org", "sip:alice@192.0.2.10:5062", 0, "s1", fid)],
        )
        self.register(60, branch="z9hG4bKreg5")
        events = self.w.contact.handle_timer(self.w.now + 61)
        self.assertEqual(
            events,
            [BindingChanged("expired", "sip:alice@example.org", "sip:alice@192.0.2.10:5062", 0, "s1", fid)],
        )

    def test_agent_changes(self) -> None:
        """
        On the agent, the same changes for its own applications, with the
        application's flow: registered, nothing on a refresh, unregistered,
        and expired when its timer runs after the expiry.
        """
        fid = self.agent.flows.use(FLOW_A, self.w.now)
        aor, contact = "sip:alice@example.org", "sip:alice@192.0.2.10:5062"
        self.assertEqual(
            self.register(600, agent=True), [BindingChanged("registered", aor, contact, 600, "", fid, FLOW_A)]
        )
        self.assertEqual(self.register(600, branch="z9hG4bKreg2", agent=True), [])
        self.assertEqual(
            self.register(0, branch="z9hG4bKreg3", agent=True),
            [BindingChanged("unregistered", aor, contact, 0, "", fid, FLOW_A)],
        )
        self.register(60, branch="z9hG4bKreg4", agent=True)
        self.assertEqual(self.agent.next_deadline(), self.w.now + 60)
        self.assertEqual(self.agent.handle_timer(self.w.now + 59), [])
        self.assertEqual(
            self.agent.handle_timer(self.w.now + 60), [BindingChanged("expired", aor, contact, 0, "", fid, FLOW_A)]
        )
        self.assertEqual(self.agent.handle_timer(self.w.now + 61), [])


class PreloadedRoutePairTests(SynchronousTestCase):
    """
    A phone with the agent as outbound proxy, through both halves.
    """

    def test_operator_sees_no_agent_route(self) -> None:
        """
        A REGISTER and an INVITE with the agent pre-loaded as Route (twice,
        in two forms) reach the operator proxy without it: the operator
        gets only the Routes meant for it.
        """
        w = World(operator=OPERATOR)
        key = FakeTunnel("s1")
        agent = AgentSipProxy(key, "agent-s1", names=AGENT_NAMES)
        w.agents[key] = agent
        w.contact.tunnel_attached(key, "s1")
        preload = "Route: <sip:192.0.2.1;lr>, <sip:agent.example.net:5060;transport=udp;lr>"
        w.app(agent, FLOW_A, register().replace(b"Content-Length:", preload.encode() + b"\r\nContent-Length:"))
        act, msg = w.take_network()
        self.assertEqual((act.addr, msg.method, msg.get_all("Route")), (("198.51.100.7", 5060), "REGISTER", []))
        w.app(agent, FLOW_A, request("INVITE", "sip:bob@example.org", extra=(preload, "Route: <sip:sbc.example.org;lr>")))
        act, msg = w.take_network()
        self.assertEqual((act.addr, msg.get_all("Route")), (("198.51.100.7", 5060), ["<sip:sbc.example.org;lr>"]))


class SpiralTests(SynchronousTestCase):
    """
    The contact point handles messages to its own address (spirals) with a
    loop, not by calling itself.
    """

    def test_spiral_loop_cut(self) -> None:
        """
        A message that would spiral without end (which no message does
        today: each spiral pops one of our Vias or is refused) is cut
        after L{MAX_SPIRALS}, with one counted drop; the steps around it
        keep their places.
        """
        from spwm.sip import contact_proxy
        from spwm.sip.actions import Counters

        seen: list[bytes] = []

        def looping(spiral: Any) -> list[Any]:
            seen.append(spiral.data)
            return [contact_proxy._Spiral("udp", b"x")]

        before, after = ToNetwork("udp", ("198.51.100.7", 5060), b"a"), ToNetwork("udp", ("198.51.100.7", 5060), b"b")
        counters = Counters()
        out = contact_proxy.settle_spirals([before, contact_proxy._Spiral("udp", b"x"), after], looping, counters)
        self.assertEqual([type(a) for a in out], [ToNetwork, Dropped, ToNetwork])
        self.assertEqual((out[0], out[2]), (before, after))
        self.assertEqual(out[1].counter, "message looped through our own address")
        self.assertEqual(counters, {"message looped through our own address": 1})
        self.assertEqual(len(seen), contact_proxy.MAX_SPIRALS)

    def test_embedded_registrar_answers_in_place(self) -> None:
        """
        With the embedded registrar the 2xx to a REGISTER from a tunnel
        comes back from the same call, as a C{ToTunnel}, with the
        binding's event after it.
        """
        cp = ContactSipProxy(CONTACT_ADDR, SECRET)
        key = FakeTunnel("s")
        out = cp.from_tunnel(key, "s", 3, register(), 0.0)
        self.assertEqual([type(a) for a in out], [ToTunnel, BindingChanged])
        self.assertEqual((out[0].flow_id, parse_message(out[0].data).status), (3, 200))
