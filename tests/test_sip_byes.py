"""
Tests for L{spwm.sip.byes} (the BYE a half sends of its own for a call
whose media it lost), the dialog table's record of the parties it needs,
and both cores' use of them (C{leg_lost}).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.actions import ToApp, ToNetwork, ToTunnel
from spwm.sip.agent_proxy import BYE_ANSWERED, BYE_SENT, AgentSipProxy
from spwm.sip.contact_proxy import ContactSipProxy
from spwm.sip.byes import (
    BYE_DROPPED,
    MAX_PARTY_TEXT,
    MAX_ROUTE_ENTRIES,
    MAX_ROUTE_TEXT,
    T1,
    T2,
    TIMER_F,
    ByeSender,
    build_bye,
    is_bye_branch,
    reason_header,
    remember_answer,
    remember_dialog_request,
    route_toward,
)
from spwm.sip.dialogs import DialogTable, Parties, Party
from spwm.sip.flows import Flow
from spwm.sip.message import SipMessage, make_response, parse_message
from spwm.sip.transport import AgentSipRunner, SipUdpProtocol
from spwm.testing.tunnel import FakeTunnel
from tests.test_sip_transport import FakeUdpTransport
from tests.test_sip_proxy import (
    CONTACT_ADDR,
    FLOW_A,
    OPERATOR,
    SECRET,
    RecordingHook,
    answer,
    invite_for_phone,
    only,
    request,
)

CALLER = Party('"Alice" <sip:alice@example.org>;tag=fa', "fa", "sip:alice@192.0.2.10:5062", 7)
CALLEE = Party("<sip:bob@example.org>;tag=tb", "tb", "sip:bob@198.51.100.20:5070;transport=udp", None)
OURS = "<sip:spwm-x@192.0.2.1:5060;transport=udp;lr>"
# the 2xx's Record-Route, top first: the entry nearest the callee first
RR = (
    "<sip:p2.example.net;lr>",
    "<sip:p1.example.net;lr>",
    OURS,
    "<sip:lan-proxy.example.org;lr>",
)


#: alice's phone (FLOW_A's remote end)
PHONE = FLOW_A.remote


def ours(value: str) -> bool:
    return value == OURS


def answered_above(data: bytes, proxy: str, contact: str) -> SipMessage:
    """
    The callee's 200 (To-tag C{tt}, C{contact}) to the INVITE C{data} as
    a half sent it on, through a proxy that record-routed C{proxy} above
    the half's own entries.
    """
    sent = parse_message(data)
    return make_response(
        sent,
        200,
        "OK",
        to_tag="tt",
        extra_headers=(
            ("Record-Route", proxy),
            *(("Record-Route", v) for v in sent.get_all("Record-Route")),
            ("Contact", contact),
        ),
    )


class DialogTablePartiesTests(SynchronousTestCase):
    """
    L{DialogTable} keeps what a BYE of our own needs for each party.
    """

    def setUp(self) -> None:
        self.table = DialogTable(3600.0)

    def answered(self, call_id: str = "c1") -> None:
        self.table.invited(1, call_id, CALLER, True)
        self.table.answered(1, call_id, 1, "fa", "tb", 0.0, CALLEE, RR)

    def test_invite_and_answer_make_the_parties(self) -> None:
        """
        The INVITE's caller and the 2xx's callee, with its Record-Route,
        are the established dialog's parties; a 2xx without a remembered
        INVITE of the same From-tag leaves them unknown.
        """
        self.answered()
        (dialog,) = self.table.of(1)
        self.assertEqual(dialog.parties, Parties(CALLER, CALLEE, RR, True))
        self.table.invited(1, "c2", CALLER, False)
        self.table.answered(1, "c2", 1, "other", "tb", 0.0, CALLEE, RR)
        self.assertIsNone([d for d in self.table.of(1) if d.call_id == "c2"][0].parties)

    def test_requests_raise_each_party_cseq(self) -> None:
        """
        Each request inside the dialog raises its sender's highest CSeq
        (never lowers it) and a target refresh changes its remote target;
        the 2xx to a refresh changes its sender's.
        """
        self.answered()
        self.table.passed(1, "c1", "tb", "fa", 3, "sip:bob@198.51.100.21:5070")
        self.table.passed(1, "c1", "fa", "tb", 9)
        self.table.passed(1, "c1", "fa", "tb", 8)
        self.table.refreshed(1, "c1", "fa", "tb", "sip:bob@198.51.100.22")
        parties = self.table.of(1)[0].parties
        assert parties is not None
        self.assertEqual((parties.caller.cseq, parties.caller.target), (9, CALLER.target))
        self.assertEqual((parties.callee.cseq, parties.callee.target), (3, "sip:bob@198.51.100.22"))

    def test_answer_again_refreshes_the_answering_party(self) -> None:
        """
        L{remember_answer}: a first 2xx gives the callee its C{Contact} as
        target (L{DialogTable.answered} says it is new); a re-INVITE's 2xx
        with another C{Contact} (the dialog answered again) is a target
        refresh of the party that answered it; an ACK or a BYE inside the
        dialog changes nothing.
        """
        self.table.invited(1, "c1", CALLER, True)
        first = (
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK1\r\n"
            b"From: <sip:alice@example.org>;tag=fa\r\nTo: <sip:bob@example.org>;tag=tb\r\n"
            b"Call-ID: c1\r\nCSeq: 7 INVITE\r\nContact: <sip:bob@198.51.100.20:5070>\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        remember_answer(self.table, 1, 1, parse_message(first), 0.0)
        parties = self.table.of(1)[0].parties
        assert parties is not None
        self.assertEqual(parties.callee.target, "sip:bob@198.51.100.20:5070")
        again = first.replace(b"CSeq: 7", b"CSeq: 8").replace(b"198.51.100.20", b"198.51.100.23")
        remember_answer(self.table, 1, 1, parse_message(again), 1.0)
        parties = self.table.of(1)[0].parties
        assert parties is not None
        self.assertEqual(parties.callee.target, "sip:bob@198.51.100.23:5070")
        for method in (b"ACK", b"BYE"):
            request = (
                method + b" sip:bob@198.51.100.23:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK2\r\n"
                b"From: <sip:alice@example.org>;tag=fa\r\nTo: <sip:bob@example.org>;tag=tb\r\n"
                b"Call-ID: c1\r\nCSeq: 99 " + method + b"\r\nContact: <sip:alice@192.0.2.99>\r\n"
                b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
            remember_dialog_request(self.table, 1, parse_message(request), True)
        parties = self.table.of(1)[0].parties
        assert parties is not None
        self.assertEqual((parties.caller.cseq, parties.caller.target), (CALLER.cseq, CALLER.target))

    def test_take_leaves_dialogs_a_bye_ends(self) -> None:
        """
        L{DialogTable.take} takes the call's dialogs out of the table, but
        returns only those no BYE is ending already; the call is gone.
        """
        self.answered()
        self.table.answered(1, "c1", 1, "fa", "tc", 0.0, CALLEE, RR)
        self.table.ending(1, "c1", "fa", "tc", 1.0)
        taken = self.table.take(1, "c1")
        self.assertEqual([d.to_tag for d in taken], ["tb"])
        self.assertEqual((len(self.table), self.table.take(1, "c1")), (0, []))

    def test_invites_bounded(self) -> None:
        """
        At most C{offer_limit} INVITEs not answered are remembered: the
        oldest goes.
        """
        table = DialogTable(3600.0, offer_limit=2)
        for n in range(3):
            table.invited(1, f"c{n}", CALLER, True)
        for n in range(3):
            table.answered(1, f"c{n}", 1, "fa", "tb", 0.0, CALLEE, RR)
        self.assertEqual([d.parties is not None for d in table.of(1)], [False, True, True])


class PartyBoundTests(SynchronousTestCase):
    """
    What a message may make a dialog's parties take is bounded.
    """

    def answer(self, extra: tuple[str, ...] = (), contact: str = "sip:bob@198.51.100.20") -> DialogTable:
        table = DialogTable(3600.0)
        invite = parse_message(request("INVITE", "sip:bob@example.org", extra=("Contact: <sip:a@192.0.2.10>",)))
        remember_dialog_request(table, 1, invite, True)
        ok = parse_message(answer(invite.to_bytes(), 200, extra=tuple(("Record-Route", v) for v in extra) + (("Contact", f"<{contact}>"),)))
        remember_answer(table, 1, 1, ok, 0.0)
        return table

    def test_within_bounds(self) -> None:
        """
        A usual answer makes the parties, with its Record-Route.
        """
        parties = self.answer(("<sip:p1;lr>",)).of(1)[0].parties
        assert parties is not None
        self.assertEqual((parties.record_route, parties.callee.target), (("<sip:p1;lr>",), "sip:bob@198.51.100.20"))

    def test_over_bounds(self) -> None:
        """
        Past L{MAX_ROUTE_ENTRIES} route entries, L{MAX_ROUTE_TEXT} route
        characters or L{MAX_PARTY_TEXT} characters of a target the dialog
        has no parties (no BYE of ours for it), but is established.
        """
        long_host = "h" * MAX_PARTY_TEXT
        for table in (
            self.answer(tuple(f"<sip:p{n};lr>" for n in range(MAX_ROUTE_ENTRIES + 1))),
            self.answer((f"<sip:{'p' * MAX_ROUTE_TEXT};lr>",)),
            self.answer(contact=f"sip:bob@{long_host}"),
        ):
            (dialog,) = table.of(1)
            self.assertIsNone(dialog.parties)


class RouteTests(SynchronousTestCase):
    """
    L{route_toward}: each party's route set from this half.
    """

    def test_toward_each_party(self) -> None:
        """
        Toward the caller, the entries below our own in order; toward the
        callee, those above it, nearest first.
        """
        self.assertEqual(route_toward(RR, ours, True), ["<sip:lan-proxy.example.org;lr>"])
        self.assertEqual(route_toward(RR, ours, False), ["<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>"])

    def test_own_entries_twice(self) -> None:
        """
        With two entries of ours (both phones of a call behind one half),
        each party's set is beyond our outermost entry on its side.
        """
        rr = ("<sip:b;lr>", OURS, "<sip:mid;lr>", OURS, "<sip:a;lr>")
        self.assertEqual(route_toward(rr, ours, True), ["<sip:a;lr>"])
        self.assertEqual(route_toward(rr, ours, False), ["<sip:b;lr>"])


class BuildByeTests(SynchronousTestCase):
    """
    L{build_bye}: the BYE to one party in the other's name.
    """

    parties = Parties(CALLER, CALLEE, RR, True)

    def bye(self, to_caller: bool, route: list[str] | None = None, reason: str = "tunnel lost") -> object:
        if route is None:
            route = route_toward(RR, ours, to_caller)
        data = build_bye("c1@x", self.parties, to_caller, route, "SIP/2.0/UDP 192.0.2.1:5060", "z9hG4bK-spwm-bye-1", reason)
        assert data is not None
        return parse_message(data)

    def test_to_the_caller(self) -> None:
        """
        To the caller in the callee's name: its remote target, its route
        set, From the callee's To and To the caller's From (tags kept),
        CSeq 1 (the callee sent no request), the Reason.
        """
        msg = self.bye(True)
        self.assertEqual((msg.method, msg.uri), ("BYE", CALLER.target))
        self.assertEqual(msg.get_all("Route"), ["<sip:lan-proxy.example.org;lr>"])
        self.assertEqual((msg.get("From"), msg.from_tag), (CALLEE.header, "tb"))
        self.assertEqual((msg.get("To"), msg.to_tag), (CALLER.header, "fa"))
        self.assertEqual((msg.call_id, msg.cseq), ("c1@x", (1, "BYE")))
        self.assertEqual(msg.get("Via"), "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-spwm-bye-1")
        self.assertEqual(msg.max_forwards, 70)
        self.assertEqual(msg.get("Reason"), 'SIP;cause=503;text="tunnel lost"')

    def test_to_the_callee(self) -> None:
        """
        To the callee in the caller's name: CSeq one past the caller's
        highest, From and To the other way round.
        """
        msg = self.bye(False, reason="media inactivity")
        self.assertEqual(msg.uri, CALLEE.target)
        self.assertEqual(msg.get_all("Route"), ["<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>"])
        self.assertEqual((msg.from_tag, msg.to_tag, msg.cseq), ("fa", "tb", (8, "BYE")))
        self.assertEqual(msg.get("Reason"), 'SIP;cause=408;text="media inactivity"')

    def test_strict_router(self) -> None:
        """
        With a strict router next (no C{lr}), its URI is the Request-URI
        and the remote target the last Route (RFC 3261 12.2.1.1).
        """
        msg = self.bye(False, route=["<sip:strict.example.net>", "<sip:p2.example.net;lr>"])
        self.assertEqual(msg.uri, "sip:strict.example.net")
        self.assertEqual(msg.get_all("Route"), ["<sip:p2.example.net;lr>", f"<{CALLEE.target}>"])

    def test_no_target(self) -> None:
        """
        A party that gave no Contact gets no BYE.
        """
        parties = Parties(Party("<sip:a@x>;tag=1", "1", None), CALLEE, (), True)
        self.assertIsNone(build_bye("c", parties, True, [], "SIP/2.0/UDP h", "z9hG4bKb", "tunnel lost"))

    def test_reason_quotes(self) -> None:
        """
        The reason text cannot end the quoted string.
        """
        self.assertEqual(reason_header('a"b\\'), 'SIP;cause=503;text="ab"')


class ByeSenderTests(SynchronousTestCase):
    """
    L{ByeSender}: bounded, paced, retransmitted, answered.
    """

    def test_batches(self) -> None:
        """
        Queued BYEs go out C{batch} at a time, C{spacing} apart.
        """
        sender = ByeSender(batch=2, spacing=0.25)
        for n in range(5):
            self.assertTrue(sender.add("d", b"%d" % n, f"b{n}", reliable=True))
        self.assertEqual(sender.due(10.0), [("d", b"0"), ("d", b"1")])
        self.assertEqual(sender.next_deadline(), 10.25)
        self.assertEqual(sender.due(10.125), [])
        self.assertEqual(sender.due(10.25), [("d", b"2"), ("d", b"3")])
        self.assertEqual(sender.due(10.5), [("d", b"4")])
        self.assertEqual(sender.counts["sent"], 5)

    def test_unsent(self) -> None:
        """
        L{ByeSender.unsent} counts the BYEs not sent a first time yet (what
        a stopping contact point waits for), not those awaiting an answer.
        """
        sender = ByeSender(batch=2, spacing=0.25)
        for n in range(3):
            sender.add("d", b"%d" % n, f"b{n}", reliable=False)
        self.assertEqual(sender.unsent(), 3)
        sender.due(0.0)
        self.assertEqual((sender.unsent(), len(sender)), (1, 3))
        sender.due(0.25)
        self.assertEqual((sender.unsent(), len(sender)), (0, 3))

    def test_udp_retransmissions_until_timer_f(self) -> None:
        """
        Over UDP a BYE is sent again after T1, doubling to T2; without a
        response it is given up at Timer F; over a reliable transport it is
        sent once.
        """
        sender = ByeSender()
        sender.add("udp", b"x", "b1", reliable=False)
        sender.add("tcp", b"y", "b2", reliable=True)
        self.assertEqual(len(sender.due(0.0)), 2)
        times = []
        now = 0.0
        while len(sender) and now < 100:
            deadline = sender.next_deadline()
            assert deadline is not None
            now = deadline
            if sender.due(now):
                times.append(now)
        self.assertEqual(times[:5], [T1, 3 * T1, 7 * T1, 7 * T1 + T2, 7 * T1 + 2 * T2])
        self.assertEqual(now, TIMER_F)
        self.assertEqual(sender.counts["timed_out"], 2)

    def test_answered(self) -> None:
        """
        A final response ends the BYE (no more retransmissions); a
        provisional one does not; a late one is not a waiting BYE's.
        """
        sender = ByeSender()
        branch = sender.branch()
        self.assertTrue(is_bye_branch(branch))
        self.assertFalse(is_bye_branch("z9hG4bKspwa1"))
        sender.add("d", b"x", branch, reliable=False)
        sender.due(0.0)
        self.assertTrue(sender.answered(branch, 100))
        self.assertTrue(sender.answered(branch, 481))
        self.assertEqual((len(sender), sender.next_deadline(), sender.counts["answered"]), (0, None, 1))
        self.assertFalse(sender.answered(branch, 200))

    def test_bounded(self) -> None:
        """
        Past C{limit} BYEs waiting, one more is refused and counted.
        """
        sender = ByeSender(limit=2)
        self.assertEqual([sender.add("d", b"x", f"b{n}", True) for n in range(3)], [True, True, False])
        self.assertEqual(sender.counts["dropped"], 1)


class AgentLegLostTests(SynchronousTestCase):
    """
    L{AgentSipProxy.leg_lost}: the phone of a call whose media is lost
    gets a BYE of the agent's own.
    """

    def setUp(self) -> None:
        self.key = object()
        self.agent = AgentSipProxy(self.key, "agent-1", media_hook=RecordingHook("agent"))

    def call_out(self) -> int:
        """
        Alice's phone (FLOW_A) calls bob; the far side answers through
        the tunnel with a Record-Route above the agent's.
        """
        invite = request(
            "INVITE", "sip:bob@example.org", cseq=5, extra=("Contact: <sip:alice@192.0.2.10:5062>",)
        )
        up = only(self.agent.from_app(FLOW_A, invite, 0.0), ToTunnel)
        ok = answered_above(up.data, "<sip:p1.example.net;lr>", "<sip:bob@198.51.100.20>")
        only(self.agent.from_tunnel(up.flow_id, ok.to_bytes(), 1.0), ToApp)
        return up.flow_id

    def test_bye_to_the_calling_phone(self) -> None:
        """
        The phone that called gets a BYE over its flow in the callee's
        name, to its Contact, with no Route (nothing between it and the
        agent), CSeq 1 and the Reason; the agent's Via with a BYE branch.
        Its answer is absorbed, and counted.
        """
        fid = self.call_out()
        actions, told = self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0)
        self.assertEqual(told, ["phone"])
        bye_action = only(actions, ToApp)
        self.assertEqual(bye_action.flow, FLOW_A)
        bye = parse_message(bye_action.data)
        self.assertEqual((bye.method, bye.uri), ("BYE", "sip:alice@192.0.2.10:5062"))
        self.assertEqual((bye.from_tag, bye.to_tag, bye.cseq), ("tt", "fa", (1, "BYE")))
        self.assertEqual(bye.get("Reason"), 'SIP;cause=503;text="tunnel lost"')
        self.assertFalse(bye.has("Route"))
        self.assertTrue((bye.get("Via") or "").startswith("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-spwm-bye-"))
        self.assertEqual(self.agent.counters[BYE_SENT], 1)
        self.assertEqual(self.agent.from_app(FLOW_A, make_response(bye, 200, "OK").to_bytes(), 2.1), [])
        self.assertEqual(self.agent.counters[BYE_ANSWERED], 1)
        # and not sent again
        self.assertEqual([a for a in self.agent.handle_timer(2.0 + T1) if isinstance(a, ToApp)], [])
        # once: the dialog is gone
        self.assertEqual(self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 3.0), ([], []))

    def test_bye_to_the_called_phone(self) -> None:
        """
        The phone that was called gets the BYE in the caller's name: CSeq
        one past the caller's, To its own tag.
        """
        fid = self.agent.flows.use(FLOW_A, 0.0)
        invite = parse_message(invite_for_phone())
        invite.append_header("Contact", "<sip:bob@198.51.100.20>")
        down = only(self.agent.from_tunnel(fid, invite.to_bytes(), 0.0), ToApp)
        ok = answer(down.data, 200, to_tag="ph", extra=(("Contact", "<sip:alice@192.0.2.10:5062>"),))
        only(self.agent.from_app(FLOW_A, ok, 1.0), ToTunnel)
        actions, told = self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "media inactivity", 2.0)
        bye = parse_message(only(actions, ToApp).data)
        self.assertEqual((bye.uri, bye.from_tag, bye.to_tag, bye.cseq), ("sip:alice@192.0.2.10:5062", "fb", "ph", (2, "BYE")))
        self.assertEqual(bye.get("Reason"), 'SIP;cause=408;text="media inactivity"')

    def test_no_bye_after_a_bye(self) -> None:
        """
        A dialog that a BYE ended gets none of ours.
        """
        fid = self.call_out()
        bye = request("BYE", "sip:bob@198.51.100.20", cseq=6, to="<sip:bob@example.org>;tag=tt")
        only(self.agent.from_app(FLOW_A, bye, 2.0), ToTunnel)
        self.assertEqual(self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 3.0), ([], []))

    def test_turned_off(self) -> None:
        """
        With C{bye_on_loss} off, nothing is sent.
        """
        self.agent.bye_on_loss = False
        fid = self.call_out()
        self.assertEqual(self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0), ([], []))

    def test_retransmitted_over_udp(self) -> None:
        """
        Unanswered over UDP, the BYE is sent again by the core's timer.
        """
        fid = self.call_out()
        first = only(self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0)[0], ToApp)
        self.assertEqual(self.agent.next_deadline(), 2.0 + T1)
        again = [a for a in self.agent.handle_timer(2.0 + T1) if isinstance(a, ToApp)]
        self.assertEqual(again, [first])

    def test_queue_full_counted(self) -> None:
        """
        With its sender's queue full, the agent sends no BYE for the lost
        call, says so in the record (nobody told) and counts it.
        """
        fid = self.call_out()
        self.agent._byes.limit = 0
        self.assertEqual(self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0), ([], []))
        self.assertEqual(self.agent.counters[BYE_DROPPED], 1)

    def test_tcp_flow(self) -> None:
        """
        A phone on TCP gets the BYE with a TCP Via.
        """
        flow = Flow("tcp", ("192.0.2.1", 5060), ("192.0.2.10", 40000), conn_id=7)
        invite = request("INVITE", "sip:bob@example.org", extra=("Contact: <sip:alice@192.0.2.10:5062;transport=tcp>",))
        up = only(self.agent.from_app(flow, invite, 0.0), ToTunnel)
        ok = parse_message(answer(up.data, 200, extra=(("Contact", "<sip:bob@198.51.100.20>"),)))
        self.agent.from_tunnel(up.flow_id, ok.to_bytes(), 1.0)
        bye = parse_message(only(self.agent.leg_lost("s", up.flow_id, "call-1@192.0.2.10", "tunnel lost", 2.0)[0], ToApp).data)
        self.assertTrue((bye.get("Via") or "").startswith("SIP/2.0/TCP 192.0.2.1:5060;"))


class AgentFarPartyTests(SynchronousTestCase):
    """
    C{leg_lost(..., far=True)}: after a resumption at a contact point
    whose process before died with the calls, the agent also ends the
    call for the far party, with a BYE in the phone's name into the
    tunnel.
    """

    def setUp(self) -> None:
        self.key = object()
        self.agent = AgentSipProxy(self.key, "agent-1", media_hook=RecordingHook("agent"))

    def call_out(self, above: tuple[str, ...]) -> int:
        """
        Alice's phone calls bob; the 2xx comes with C{above} recorded
        above the agent's own entry (the contact point's first, nearest
        the agent, last).
        """
        invite = request("INVITE", "sip:bob@example.org", cseq=5, extra=("Contact: <sip:alice@192.0.2.10:5062>",))
        up = only(self.agent.from_app(FLOW_A, invite, 0.0), ToTunnel)
        sent = parse_message(up.data)
        ok = make_response(
            sent, 200, "OK", to_tag="tt",
            extra_headers=(
                *(("Record-Route", v) for v in above),
                *(("Record-Route", v) for v in sent.get_all("Record-Route")),
                ("Contact", "<sip:bob@198.51.100.20>"),
            ),
        )  # fmt: skip
        only(self.agent.from_tunnel(up.flow_id, ok.to_bytes(), 1.0), ToApp)
        return up.flow_id

    def test_bye_into_the_tunnel(self) -> None:
        """
        The far party gets a BYE in alice's name (her tag, CSeq one past
        her INVITE's) through the route set above the agent, into the
        tunnel on her flow; the phone gets its own BYE too; both are in
        the record; the far party's answer, back through the tunnel, is
        absorbed and counted.
        """
        cp = "<sip:tok1@203.0.113.5:5060;lr>"
        fid = self.call_out(("<sip:proxy.example.net;lr>", cp))
        actions, told = self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
        self.assertEqual(sorted(told), ["far party", "phone"])
        (up,) = [a for a in actions if isinstance(a, ToTunnel)]
        self.assertEqual((up.tunnel_key, up.flow_id), (self.key, fid))
        bye = parse_message(up.data)
        self.assertEqual((bye.method, bye.uri), ("BYE", "sip:bob@198.51.100.20"))
        self.assertEqual(bye.get_all("Route"), [cp, "<sip:proxy.example.net;lr>"])
        self.assertEqual((bye.from_tag, bye.to_tag, bye.cseq), ("fa", "tt", (6, "BYE")))
        self.assertEqual(bye.get("Reason"), 'SIP;cause=503;text="tunnel lost"')
        self.assertTrue(is_bye_branch(bye.top_via.branch if bye.top_via else None))
        self.assertEqual(len([a for a in actions if isinstance(a, ToApp)]), 1)
        self.assertEqual(self.agent.counters[BYE_SENT], 2)
        self.assertEqual(self.agent.from_tunnel(fid, make_response(bye, 200, "OK").to_bytes(), 2.1), [])
        self.assertEqual(self.agent.counters[BYE_ANSWERED], 1)
        # over the tunnel: not sent again
        self.assertEqual([a for a in self.agent.handle_timer(2.0 + T1) if isinstance(a, ToTunnel)], [])

    def test_not_without_far(self) -> None:
        """
        Without C{far} (the contact point ended the calls itself, or the
        tunnel is gone), nothing goes into the tunnel.
        """
        fid = self.call_out(("<sip:tok1@203.0.113.5:5060;lr>",))
        actions, told = self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0)
        self.assertEqual((told, [a for a in actions if isinstance(a, ToTunnel)]), (["phone"], []))

    def test_not_back_into_the_same_contact_point(self) -> None:
        """
        A far party whose route comes back into the same contact point
        process (same host and port: behind another of its tunnels) gets
        none from this agent: its own agent ends the call for it. One
        behind another worker (another port) gets it.
        """
        cp = "<sip:tok1@203.0.113.5:5060;lr>"
        same = ("<sip:tok2@203.0.113.5:5060;lr>", "<sip:proxy.example.net;lr>", cp)
        fid = self.call_out(same)
        actions, told = self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
        self.assertEqual((told, [a for a in actions if isinstance(a, ToTunnel)]), (["phone"], []))
        other = AgentFarPartyTests("test_not_back_into_the_same_contact_point")
        other.setUp()
        fid = other.call_out(("<sip:tok2@203.0.113.5:5061;lr>", "<sip:proxy.example.net;lr>", cp))
        actions, told = other.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
        self.assertEqual(sorted(told), ["far party", "phone"])

    def test_turned_off(self) -> None:
        """
        C{bye_on_loss} off: none either way.
        """
        self.agent.bye_on_loss = False
        fid = self.call_out(("<sip:tok1@203.0.113.5:5060;lr>",))
        self.assertEqual(self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True), ([], []))

    def test_other_responses_pass(self) -> None:
        """
        While a BYE of ours waits, other responses from the tunnel go to
        the phones as before.
        """
        fid = self.call_out(("<sip:tok1@203.0.113.5:5060;lr>",))
        self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
        invite = request("INVITE", "sip:carol@example.org", cseq=1, call_id="call-2@192.0.2.10")
        up = only(self.agent.from_app(FLOW_A, invite, 3.0), ToTunnel)
        only(self.agent.from_tunnel(up.flow_id, answer(up.data, 180), 3.1), ToApp)


class ContactLegLostTests(SynchronousTestCase):
    """
    L{ContactSipProxy.leg_lost} with an operator proxy: the far party of
    a call whose media is lost gets a BYE of the contact point's own,
    through the operator's proxy.
    """

    def setUp(self) -> None:
        self.cp = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR, media_hook=RecordingHook("contact"))
        self.key = FakeTunnel("sess-1")
        self.cp.tunnel_attached(self.key, "sess-1")

    def call_out(self) -> None:
        """
        The phone behind flow 5 calls bob on the operator side; the
        operator's proxy record-routes above us, bob answers.
        """
        invite = request("INVITE", "sip:bob@example.org", extra=("Contact: <sip:alice@192.0.2.10:5062>",))
        act = only(self.cp.from_tunnel(self.key, "sess-1", 5, invite, 0.0), ToNetwork)
        ok = answered_above(act.data, "<sip:198.51.100.7;lr>", "<sip:bob@198.51.100.30:5080>")
        only(self.cp.from_network("udp", (OPERATOR.host, OPERATOR.port), ok.to_bytes(), 1.0), ToTunnel)

    def test_bye_to_the_far_party(self) -> None:
        """
        The far party gets a BYE in the phone's name through the operator's
        proxy: its Contact, the proxy's Route (ours left out), CSeq one past
        the phone's INVITE, the Reason; its answer stays here, counted.
        """
        self.call_out()
        actions, told = self.cp.leg_lost("sess-1", 5, "call-1@192.0.2.10", "media inactivity", 2.0)
        self.assertEqual(told, ["far party"])
        act = only(actions, ToNetwork)
        self.assertEqual((act.transport, act.addr), ("udp", (OPERATOR.host, OPERATOR.port)))
        bye = parse_message(act.data)
        self.assertEqual((bye.method, bye.uri), ("BYE", "sip:bob@198.51.100.30:5080"))
        self.assertEqual(bye.get_all("Route"), ["<sip:198.51.100.7;lr>"])
        self.assertEqual((bye.from_tag, bye.to_tag, bye.cseq), ("fa", "tt", (2, "BYE")))
        self.assertEqual(bye.get("Reason"), 'SIP;cause=408;text="media inactivity"')
        via = bye.top_via
        assert via is not None
        self.assertEqual((via.transport, via.host, via.port), ("UDP", "203.0.113.5", 5060))
        self.assertEqual([name for name, value in via.params], ["branch"])
        self.assertTrue(is_bye_branch(dict(via.params)["branch"]))
        self.assertEqual(self.cp.counters[BYE_SENT], 1)
        response = make_response(bye, 200, "OK").to_bytes()
        self.assertEqual(self.cp.from_network("udp", (OPERATOR.host, OPERATOR.port), response, 2.1), [])
        self.assertEqual(self.cp.counters[BYE_ANSWERED], 1)
        self.assertEqual(self.cp.dialogs("sess-1"), [])
        self.assertEqual(self.cp.leg_lost("sess-1", 5, "call-1@192.0.2.10", "tunnel lost", 3.0), ([], []))

    def test_retransmitted_until_answered(self) -> None:
        """
        Over UDP the BYE goes again from the core's timer until an answer.
        """
        self.call_out()
        first = only(self.cp.leg_lost("sess-1", 5, "call-1@192.0.2.10", "tunnel lost", 2.0)[0], ToNetwork)
        self.assertEqual(self.cp.next_deadline(), 2.0 + T1)
        again = [a for a in self.cp.handle_timer(2.0 + T1) if isinstance(a, ToNetwork)]
        self.assertEqual(again, [first])
        self.cp.from_network("udp", (OPERATOR.host, OPERATOR.port), make_response(parse_message(first.data), 481, "Gone").to_bytes(), 3.0)
        self.assertEqual([a for a in self.cp.handle_timer(2.0 + 3 * T1) if isinstance(a, ToNetwork)], [])

    def test_turned_off(self) -> None:
        """
        With C{bye_on_loss} off nothing is sent, and the dialogs go.
        """
        self.cp.bye_on_loss = False
        self.call_out()
        self.assertEqual(self.cp.leg_lost("sess-1", 5, "call-1@192.0.2.10", "tunnel lost", 2.0), ([], []))
        self.assertEqual(self.cp.dialogs("sess-1"), [])


class PacedThroughRunnerTests(SynchronousTestCase):
    """
    Many calls lost at once: the runner sends their BYEs over several
    reactor turns (the sender's pace on the runner's timer), not at once.
    """

    def test_many_lost_calls(self) -> None:
        """
        120 calls of one phone lose their media together: 50 BYEs go at
        once, 50 more 50 ms later, the last 20 50 ms after that; each is
        sent again after T1 until the phone answers; once every BYE is
        answered no BYE timer is left (only the flow's).
        """
        clock = Clock()
        clock.advance(100)
        tunnel = FakeTunnel()
        core = AgentSipProxy(tunnel, "agent-1")
        runner = AgentSipRunner(core, clock)
        udp = SipUdpProtocol(runner)
        transport = FakeUdpTransport("192.0.2.1", 5060)
        udp.makeConnection(transport)
        calls = [f"c{n}" for n in range(120)]
        for call_id in calls:
            invite = request("INVITE", "sip:bob@example.org", call_id=call_id, extra=("Contact: <sip:alice@192.0.2.10:5062>",))
            udp.datagramReceived(invite, PHONE)
            fid, data = tunnel.sip_sent[-1]
            runner.sip_received(tunnel, fid, answer(data, 200, extra=(("Contact", "<sip:bob@198.51.100.20>"),)))
        del transport.written[:]
        told = [runner.leg_lost("s", f"{fid}/{call_id}", "tunnel lost") for call_id in calls]
        self.assertEqual(told, [["phone"]] * 120)
        byes = [parse_message(data) for data, addr in transport.written]
        self.assertEqual(len(byes), 50)
        clock.advance(0.05)
        self.assertEqual(len(transport.written), 100)
        clock.advance(0.05)
        self.assertEqual(len(transport.written), 120)
        # retransmitted after T1 (the first 50 are due first)
        clock.advance(T1 - 0.1)
        self.assertEqual(len(transport.written), 170)
        for data, addr in list(transport.written[:120]):
            udp.datagramReceived(make_response(parse_message(data), 200, "OK").to_bytes(), PHONE)
        clock.advance(TIMER_F)
        self.assertEqual(core.counters[BYE_ANSWERED], 120)
        self.assertEqual(len(transport.written), 170)
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [100 + 300])
