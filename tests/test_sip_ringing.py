"""
Tests for L{spwm.sip.ringing} (what a half sends of its own for a call
lost while it rings: a final response to the caller, a CANCEL to the
callee and the ACK of its 487), the table of INVITEs not finally answered,
and both cores' use of them (C{leg_lost}).
"""

from __future__ import annotations

from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.actions import ToApp, ToNetwork, ToTunnel
from spwm.sip.agent_proxy import AgentSipProxy
from spwm.sip.byes import BYE_ANSWERED, BYE_DROPPED, BYE_SENT, T1, T2
from spwm.sip.contact_proxy import ContactSipProxy
from spwm.sip.flows import KIND_ROUTE, FlowTable, FlowTokenCodec
from spwm.sip.message import SipMessage, make_response, parse_message
from spwm.sip.ringing import (
    ANSWER,
    CANCEL,
    CANCEL_ANSWERED,
    CANCEL_SENT,
    FINAL_SENT,
    MAX_KEPT_BYTES,
    TIMER_C,
    Ringing,
    build_ack,
    build_cancel,
    build_final,
    told_text,
)
from spwm.testing.tunnel import FakeTunnel
from tests.test_sip_byes import answered_above
from tests.test_sip_proxy import (
    CONTACT_ADDR,
    FLOW_A,
    OPERATOR,
    SDP,
    SECRET,
    RecordingHook,
    World,
    answer,
    from_carol,
    invite_for_phone,
    only,
    register,
    request,
)

REASON = 'SIP;cause=503;text="tunnel lost"'

#: an INVITE as a half sent it on: its own Via on top, a Route
SENT = (
    b"INVITE sip:bob@198.51.100.20:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKours1\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.40:5060;branch=z9hG4bKext1;received=198.51.100.41;rport=5099\r\n"
    b"Max-Forwards: 69\r\n"
    b"Route: <sip:p1.example.net;lr>\r\n"
    b"Route: <sip:p2.example.net;lr>\r\n"
    b'From: "Carol" <sip:carol@example.org>;tag=fc\r\n'
    b"To: <sip:bob@example.org>\r\n"
    b"Call-ID: ring-1\r\n"
    b"CSeq: 41 INVITE\r\n"
    b"Record-Route: <sip:x@203.0.113.5;lr>\r\n"
    b"Contact: <sip:carol@198.51.100.40>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)
KEY = ("ring-1", "z9hG4bKours1")


def kept(kind: str = CANCEL, ours_on_top: bool = True, data: bytes = SENT, now: float = 0.0) -> Ringing:
    table = Ringing()
    table.passed(KEY, kind, "leg", parse_message(data), "dest", ours_on_top, now)
    return table


def ended_once(
    test: SynchronousTestCase, send: Callable[[bytes, float], list], ok: bytes, bye: SipMessage, cseq: int
) -> None:
    """
    After a 2xx that crossed our CANCEL was ACKed and ended with C{bye}:
    the 2xx again (C{send}: into the core from where it came) is ACKed
    again (CSeq C{cseq}), with no second BYE; the BYE's 200 stays in the
    core.
    """
    again = [parse_message(a.data) for a in send(ok, 2.3)]
    test.assertEqual([(m.method, m.cseq) for m in again], [("ACK", (cseq, "ACK"))])
    test.assertEqual(send(make_response(bye, 200, "OK").to_bytes(), 2.7), [])


class BuildTests(SynchronousTestCase):
    """
    L{build_cancel}, L{build_ack} and L{build_final} from what
    L{Ringing} kept of an INVITE.
    """

    def test_cancel(self) -> None:
        """
        The CANCEL has the INVITE's Request-URI, top Via alone (its
        branch), Routes, From, To, Call-ID and CSeq number, with
        Max-Forwards 70 and the Reason; no body.
        """
        entry = kept().take("leg", 1.0)
        assert entry is not None
        cancel = parse_message(build_cancel(entry, "tunnel lost"))
        self.assertEqual((cancel.method, cancel.uri), ("CANCEL", "sip:bob@198.51.100.20:5070"))
        self.assertEqual(cancel.get_all("Via"), ["SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKours1"])
        self.assertEqual(cancel.get_all("Route"), ["<sip:p1.example.net;lr>", "<sip:p2.example.net;lr>"])
        self.assertEqual(cancel.get("From"), '"Carol" <sip:carol@example.org>;tag=fc')
        self.assertEqual((cancel.to_tag, cancel.get("To")), (None, "<sip:bob@example.org>"))
        self.assertEqual((cancel.call_id, cancel.cseq, cancel.max_forwards), ("ring-1", (41, "CANCEL"), 70))
        self.assertEqual(cancel.get("Reason"), REASON)
        self.assertEqual(cancel.body, b"")
        self.assertFalse(cancel.has("Contact") or cancel.has("Record-Route"))

    def test_ack_of_487(self) -> None:
        """
        The ACK of the 487 has the INVITE's Request-URI, top Via, Routes,
        From, Call-ID and CSeq number with ACK, and the 487's To (its tag).
        """
        entry = kept().take("leg", 1.0)
        assert entry is not None
        resp = make_response(parse_message(SENT), 487, "Request Terminated", to_tag="tb")
        ack = parse_message(build_ack(entry, resp))
        self.assertEqual((ack.method, ack.uri), ("ACK", "sip:bob@198.51.100.20:5070"))
        self.assertEqual(ack.get_all("Via"), ["SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKours1"])
        self.assertEqual(len(ack.get_all("Route")), 2)
        self.assertEqual((ack.from_tag, ack.to_tag, ack.cseq), ("fc", "tb", (41, "ACK")))
        self.assertFalse(ack.has("Reason"))

    def test_final_response(self) -> None:
        """
        The 480 goes to the caller: the Via lines below ours, as they came
        in, From, To with a fresh tag, Call-ID, CSeq and the Reason.
        """
        entry = kept(ANSWER).take("leg", 1.0)
        assert entry is not None
        resp = parse_message(build_final(entry, "tunnel lost").to_bytes())
        self.assertEqual((resp.status, resp.reason), (480, "Temporarily Unavailable"))
        self.assertEqual(
            resp.get_all("Via"),
            ["SIP/2.0/UDP 198.51.100.40:5060;branch=z9hG4bKext1;received=198.51.100.41;rport=5099"],
        )
        self.assertEqual((resp.from_tag, resp.call_id, resp.cseq), ("fc", "ring-1", (41, "INVITE")))
        self.assertTrue(resp.to_tag)
        self.assertEqual(resp.get("Reason"), REASON)
        self.assertFalse(resp.has("Route"))

    def test_final_response_early_tag(self) -> None:
        """
        After a provisional response with a To tag, the final response has
        that tag (the early dialog's); all Via lines when none is ours.
        """
        table = kept(ANSWER, ours_on_top=False)
        table.response(KEY, 180, parse_message(answer(SENT, 180, to_tag="early1")), 1.0)
        table.response(KEY, 183, parse_message(answer(SENT, 183, to_tag="other")), 2.0)
        entry = table.take("leg", 3.0)
        assert entry is not None
        resp = build_final(entry, "tunnel lost")
        self.assertEqual((resp.to_tag, len(resp.get_all("Via"))), ("early1", 2))

    def test_told_text(self) -> None:
        """
        The call record's C{bye_sent} in words: as before for BYEs, and
        what went to whom for a ringing call.
        """
        self.assertEqual(told_text(["phone"]), "BYE sent to the phone")
        self.assertEqual(told_text(["phone", "far party"]), "BYE sent to the far party and the phone")
        self.assertEqual(told_text(["phone (CANCEL)"]), "CANCEL sent to the phone")
        self.assertEqual(told_text(["far party (480)"]), "480 sent to the far party")
        self.assertEqual(told_text([]), "")


class RingingTableTests(SynchronousTestCase):
    """
    L{Ringing}: bounded, forgotten on the final response, the caller's
    CANCEL or Timer C.
    """

    def invite(self, n: int) -> SipMessage:
        return parse_message(SENT.replace(b"ring-1", b"ring-%d" % n))

    def test_finished(self) -> None:
        """
        An INVITE finally answered (or CANCELled by its caller) is gone.
        """
        table = kept()
        table.response(KEY, 487, parse_message(answer(SENT, 487)), 1.0)
        self.assertEqual((len(table), table.take("leg", 1.0)), (0, None))

    def test_same_key_again(self) -> None:
        """
        An INVITE kept again under the same key for another leg replaces
        the first: the first leg finds nothing, the bytes are counted once.
        """
        table = kept()
        size = table._bytes
        table.passed(KEY, CANCEL, "other", parse_message(SENT), "dest", True, 1.0)
        self.assertEqual((len(table), table._bytes), (1, size))
        self.assertIsNone(table.take("leg", 2.0))
        self.assertIsNotNone(table.take("other", 2.0))
        self.assertEqual((len(table), table._bytes), (0, 0))

    def test_timer_c(self) -> None:
        """
        Past Timer C without a response, an INVITE is not taken; a
        provisional response starts Timer C again.
        """
        self.assertIsNone(kept().take("leg", TIMER_C))
        self.assertIsNotNone(kept().take("leg", TIMER_C - 1))
        table = kept()
        table.response(KEY, 180, parse_message(answer(SENT, 180, to_tag=None)), 100.0)
        self.assertIsNotNone(table.take("leg", TIMER_C + 50))
        # (not a 100: hop by hop)
        table = kept()
        table.response(KEY, 100, parse_message(answer(SENT, 100, to_tag=None)), 100.0)
        self.assertIsNone(table.take("leg", TIMER_C + 50))

    def test_expired_forgotten_on_add(self) -> None:
        """
        Those past Timer C leave the table as new ones come.
        """
        table = Ringing()
        table.passed(("a", "1"), CANCEL, "a", self.invite(1), None, True, 0.0)
        table.passed(("b", "1"), CANCEL, "b", self.invite(2), None, True, 10.0)
        table.passed(("c", "1"), CANCEL, "c", self.invite(3), None, True, TIMER_C + 5)
        self.assertEqual(len(table), 2)

    def test_limit(self) -> None:
        """
        At most C{limit} INVITEs: the oldest goes.
        """
        table = Ringing(limit=3)
        for n in range(5):
            table.passed((str(n), "b"), CANCEL, n, self.invite(n), None, True, float(n))
        self.assertEqual(len(table), 3)
        self.assertIsNone(table.take(0, 5.0))
        self.assertIsNone(table.take(1, 5.0))
        self.assertIsNotNone(table.take(4, 5.0))

    def test_bytes(self) -> None:
        """
        At most C{max_bytes} of header values (the oldest go); an INVITE
        whose kept lines are over L{MAX_KEPT_BYTES} is not kept at all.
        """
        size = sum(len(h.value) for h in parse_message(SENT).headers if h.name in ("via", "from", "to", "call-id", "cseq", "route"))
        table = Ringing(max_bytes=2 * size)
        for n in range(4):
            table.passed((str(n), "b"), CANCEL, n, self.invite(n), None, True, 0.0)
        self.assertEqual(len(table), 2)
        big = SENT.replace(b"Route: <sip:p2.example.net;lr>", b"Route: <sip:" + b"p" * MAX_KEPT_BYTES + b".example.net;lr>")
        table = Ringing()
        table.passed(KEY, CANCEL, "leg", parse_message(big), None, True, 0.0)
        self.assertEqual(len(table), 0)

    def test_cancelled_and_answered_bounded(self) -> None:
        """
        The INVITEs the core CANCELled or answered are kept 32 s, at most
        C{limit} of each.
        """
        table = Ringing(limit=2)
        for n in range(3):
            table.passed((str(n), "b"), CANCEL, n, self.invite(n), None, True, 0.0)
        entries = [table.take(n, 0.0) for n in (1, 2)]
        for entry in entries:
            assert entry is not None
            table.cancelling(entry, 0.0)
            table.answering(entry, "z9hG4bKc", 0.0)
        self.assertIsNotNone(table.cancelled_invite(("1", "b"), 31.0))
        self.assertIsNone(table.cancelled_invite(("1", "b"), 32.0))
        self.assertTrue(table.acked(("2", "z9hG4bKc"), 31.0))
        self.assertFalse(table.acked(("2", "z9hG4bKc"), 32.0))
        extra = parse_message(SENT)
        table.passed(KEY, CANCEL, "x", extra, None, True, 1.0)
        entry = table.take("x", 1.0)
        assert entry is not None
        table.cancelling(entry, 1.0)
        self.assertEqual(len(table.cancelled), 2)
        self.assertIsNone(table.cancelled_invite(("1", "b"), 1.0))


class RingingScopeTests(SynchronousTestCase):
    """
    L{Ringing.legs_of}: the legs with an INVITE waiting, by session.
    """

    def test_by_session(self) -> None:
        """
        With a scope function, each session's legs; a leg leaves its
        session's set when its INVITE is taken, finished or replaced.
        """
        table = Ringing(scope=lambda leg: leg[0])
        for n, leg in enumerate((("s1", 1, "a"), ("s1", 2, "b"), ("s2", 1, "c"))):
            invite = parse_message(SENT.replace(b"ring-1", b"ring-%d" % n))
            table.passed((f"k{n}", "z9hG4bK"), CANCEL, leg, invite, "dest", True, 0.0)
        self.assertEqual(sorted(table.legs_of("s1")), [("s1", 1, "a"), ("s1", 2, "b")])
        self.assertIsNotNone(table.take(("s1", 1, "a"), 1.0))
        table.finished(("k1", "z9hG4bK"))
        self.assertEqual((table.legs_of("s1"), table.legs_of("s2")), ([], [("s2", 1, "c")]))
        table.passed(("k2", "z9hG4bK"), CANCEL, ("s3", 1, "c"), parse_message(SENT), "dest", True, 2.0)
        self.assertEqual((table.legs_of("s2"), table._scopes), ([], {"s3": {("s3", 1, "c")}}))
        # without a scope function: every leg
        self.assertEqual(kept().legs_of(), ["leg"])


class AgentRingingTests(SynchronousTestCase):
    """
    L{AgentSipProxy.leg_lost} for a call lost with its tunnel while it
    rings.
    """

    def setUp(self) -> None:
        self.key = object()
        self.agent = AgentSipProxy(self.key, "agent-1", media_hook=RecordingHook("agent"))

    def ring_phone(self) -> tuple[int, SipMessage]:
        """
        An INVITE from the tunnel rings alice's phone (FLOW_A), which
        answers 180.
        """
        fid = self.agent.flows.use(FLOW_A, 0.0)
        down = only(self.agent.from_tunnel(fid, invite_for_phone(), 0.0), ToApp)
        only(self.agent.from_app(FLOW_A, answer(down.data, 180, "Ringing", to_tag="ph"), 0.5), ToTunnel)
        return fid, parse_message(down.data)

    def lost(self, fid: int, reason: str = "tunnel lost", at: float = 2.0) -> tuple[list, list[str]]:
        return self.agent.leg_lost("s", fid, "call-1@192.0.2.10", reason, at)

    def test_cancel_to_the_ringing_phone(self) -> None:
        """
        The phone that rings gets a CANCEL of the INVITE it got (its
        Request-URI, the agent's Via and branch, From, To without tag,
        CSeq), with the Reason; the record says C{"phone (CANCEL)"}; the
        CANCEL's 200 and the INVITE's 487 stay here and the 487 is ACKed
        with the 487's To tag.
        """
        fid, got = self.ring_phone()
        actions, told = self.lost(fid)
        self.assertEqual(told, ["phone (CANCEL)"])
        act = only(actions, ToApp)
        self.assertEqual(act.flow, FLOW_A)
        cancel = parse_message(act.data)
        self.assertEqual((cancel.method, cancel.uri, cancel.cseq), ("CANCEL", got.uri, (1, "CANCEL")))
        self.assertEqual(cancel.get_all("Via"), got.get_all("Via")[:1])
        self.assertEqual((cancel.get("From"), cancel.get("To")), (got.get("From"), got.get("To")))
        self.assertEqual(cancel.get("Reason"), REASON)
        self.assertEqual(self.agent.counters[CANCEL_SENT], 1)
        self.assertEqual(self.agent.from_app(FLOW_A, answer(act.data, 200, to_tag="ph"), 2.1), [])
        self.assertEqual(self.agent.counters[CANCEL_ANSWERED], 1)
        terminated = answer(got.to_bytes(), 487, "Request Terminated", to_tag="ph")
        for _ in range(2):  # and its retransmission
            ack = parse_message(only(self.agent.from_app(FLOW_A, terminated, 2.2), ToApp).data)
            self.assertEqual((ack.method, ack.uri, ack.cseq, ack.to_tag), ("ACK", got.uri, (1, "ACK"), "ph"))
            self.assertEqual(ack.get_all("Via"), got.get_all("Via")[:1])
        # no CANCEL again
        self.assertEqual([a for a in self.agent.handle_timer(2.0 + T1) if isinstance(a, ToApp)], [])

    def test_provisional_restarts_timer_c(self) -> None:
        """
        The phone's provisional response starts Timer C again for the
        INVITE that rings it (RFC 3261 16.6 step 11, 16.7 step 2): a call
        that rang 180 s in all, its 180 later than the INVITE, still gets
        the CANCEL; past Timer C from the 180 it gets nothing.
        """
        for lost_at, methods in ((TIMER_C + 10.0, ["CANCEL"]), (TIMER_C + 30.0, [])):
            self.setUp()
            fid = self.agent.flows.use(FLOW_A, 0.0)
            down = only(self.agent.from_tunnel(fid, invite_for_phone(), 0.0), ToApp)
            only(self.agent.from_app(FLOW_A, answer(down.data, 180, "Ringing", to_tag="ph"), 20.0), ToTunnel)
            actions, _ = self.lost(fid, at=lost_at)
            self.assertEqual([parse_message(a.data).method for a in actions], methods)

    def test_answer_crossing_the_cancel(self) -> None:
        """
        The phone answered 200 before our CANCEL reached it: the 2xx stays
        here, is ACKed (its Contact, the INVITE's CSeq, its To tag) and
        ended at once with a BYE in the caller's name (CSeq one past, the
        Reason), once: a retransmitted 2xx is ACKed again, no second BYE;
        the BYE's 200 stays here.
        """
        fid, got = self.ring_phone()
        only(self.lost(fid)[0], ToApp)
        ok = answer(got.to_bytes(), 200, to_tag="ph", extra=(("Contact", "<sip:alice@192.0.2.10:5062>"),))
        sent = self.agent.from_app(FLOW_A, ok, 2.1)
        self.assertEqual({a.flow for a in sent}, {FLOW_A})
        ack, bye = (parse_message(a.data) for a in sent)
        self.assertEqual((ack.method, ack.uri, ack.cseq), ("ACK", "sip:alice@192.0.2.10:5062", (1, "ACK")))
        self.assertEqual((ack.from_tag, ack.to_tag, ack.has("Route"), ack.has("Reason")), ("fb", "ph", False, False))
        self.assertEqual((bye.method, bye.uri, bye.cseq), ("BYE", "sip:alice@192.0.2.10:5062", (2, "BYE")))
        self.assertEqual((bye.from_tag, bye.to_tag, bye.get("Reason")), ("fb", "ph", REASON))
        self.assertNotEqual(ack.get("Via"), bye.get("Via"))
        self.assertEqual(self.agent.counters[BYE_SENT], 1)
        ended_once(self, lambda data, now: self.agent.from_app(FLOW_A, data, now), ok, bye, 1)
        self.assertEqual(self.agent.counters[BYE_ANSWERED], 1)

    def test_without_sdp_when_the_session_goes(self) -> None:
        """
        An INVITE without SDP rings the phone (no media stream: no
        leg_lost for it): when the session is lost for good
        (C{ringing_lost}) the phone gets the CANCEL.
        """
        fid = self.agent.flows.use(FLOW_A, 0.0)
        invite = parse_message(invite_for_phone())
        invite.set_body(b"", None)
        down = only(self.agent.from_tunnel(fid, invite.to_bytes(), 0.0), ToApp)
        only(self.agent.from_app(FLOW_A, answer(down.data, 180, "Ringing", to_tag="ph"), 0.5), ToTunnel)
        cancel = parse_message(only(self.agent.ringing_lost("s", 2.0), ToApp).data)
        self.assertEqual((cancel.method, cancel.get("Reason")), ("CANCEL", REASON))
        self.assertEqual(self.agent.ringing_lost("s", 2.1), [])

    def test_cancel_retransmitted(self) -> None:
        """
        Over UDP, the CANCEL goes again after T1 until a response; the
        INVITE's 487 alone ends it too.
        """
        fid, got = self.ring_phone()
        first = only(self.lost(fid)[0], ToApp)
        again = [a for a in self.agent.handle_timer(2.0 + T1) if isinstance(a, ToApp)]
        self.assertEqual(again, [first])
        only(self.agent.from_app(FLOW_A, answer(got.to_bytes(), 487, "Request Terminated", to_tag="ph"), 3.0), ToApp)
        self.assertEqual([a for a in self.agent.handle_timer(2.0 + 3 * T1 + T2) if isinstance(a, ToApp)], [])

    def test_final_response_to_the_calling_phone(self) -> None:
        """
        The phone that calls out, ringing at the far end (180 with a tag),
        gets a 480 of the agent's own with that tag and the Reason, over
        its flow; again until its ACK, which stays here.
        """
        invite = request("INVITE", "sip:bob@example.org", extra=("Contact: <sip:alice@192.0.2.10:5062>",))
        up = only(self.agent.from_app(FLOW_A, invite, 0.0), ToTunnel)
        ringing = answer(up.data, 180, "Ringing", to_tag="tb")
        only(self.agent.from_tunnel(up.flow_id, ringing, 0.5), ToApp)
        actions, told = self.lost(up.flow_id)
        self.assertEqual(told, ["phone (480)"])
        act = only(actions, ToApp)
        resp = parse_message(act.data)
        self.assertEqual((act.flow, resp.status, resp.to_tag, resp.cseq), (FLOW_A, 480, "tb", (1, "INVITE")))
        self.assertEqual(resp.get_all("Via"), ["SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKapp1;rport=5062;received=192.0.2.10"])
        self.assertEqual(resp.get("Reason"), REASON)
        self.assertEqual(self.agent.counters[FINAL_SENT], 1)
        self.assertEqual([a for a in self.agent.handle_timer(2.0 + T1) if isinstance(a, ToApp)], [act])
        ack = request("ACK", "sip:bob@example.org", to="<sip:bob@example.org>;tag=tb")
        self.assertEqual(self.agent.from_app(FLOW_A, ack, 2.6), [])
        self.assertEqual([a for a in self.agent.handle_timer(2.0 + 3 * T1) if isinstance(a, ToApp)], [])

    def test_not_after_the_answer(self) -> None:
        """
        A call answered (its INVITE's final response passed) gets none of
        this (its dialog gets a BYE instead).
        """
        fid, got = self.ring_phone()
        only(self.agent.from_app(FLOW_A, answer(got.to_bytes(), 486, "Busy Here", to_tag="ph"), 1.0), ToTunnel)
        self.assertEqual(self.lost(fid), ([], []))

    def test_not_after_the_callers_cancel(self) -> None:
        """
        A call its caller CANCELled gets no CANCEL of ours.
        """
        fid, got = self.ring_phone()
        cancel = request(
            "CANCEL",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKcp1",
            from_="<sip:bob@example.org>;tag=fb",
            to="<sip:alice@example.org>",
        )
        only(self.agent.from_tunnel(fid, cancel, 1.0), ToApp)
        self.assertEqual(self.lost(fid), ([], []))

    def test_only_for_tunnel_lost(self) -> None:
        """
        Nothing for another reason (media inactivity: the ringing call's
        own timer), nor with C{bye_on_loss} off; and the INVITE is
        forgotten all the same.
        """
        fid, _ = self.ring_phone()
        self.assertEqual(self.lost(fid, "media inactivity"), ([], []))
        self.assertEqual(self.lost(fid), ([], []))
        self.setUp()
        self.agent.bye_on_loss = False
        fid, _ = self.ring_phone()
        self.assertEqual(self.lost(fid), ([], []))


class AgentFarRingingTests(SynchronousTestCase):
    """
    C{leg_lost(..., far=True)} and C{ringing_lost(..., far=True)} for a
    phone's call that rings at the far party when the contact point's
    process died: the far party gets a CANCEL into the tunnel, its
    answers stay here.
    """

    def setUp(self) -> None:
        self.key = object()
        self.agent = AgentSipProxy(self.key, "agent-1", media_hook=RecordingHook("agent"))

    def call_out(self, sdp: bool = True) -> tuple[int, SipMessage]:
        """
        Alice's phone calls bob through a Route beyond the agent; bob
        rings (180 with a tag, back through the tunnel).

        @return: the flow id and the INVITE as it went into the tunnel.
        """
        invite = request(
            "INVITE",
            "sip:bob@example.org",
            cseq=7,
            extra=("Route: <sip:proxy.example.net;lr>", "Contact: <sip:alice@192.0.2.10:5062>"),
            body=SDP if sdp else b"",
            content_type="application/sdp" if sdp else None,
        )
        up = only(self.agent.from_app(FLOW_A, invite, 0.0), ToTunnel)
        only(self.agent.from_tunnel(up.flow_id, answer(up.data, 180, "Ringing", to_tag="tb"), 0.5), ToApp)
        return up.flow_id, parse_message(up.data)

    def lost(self, fid: int, far: bool = True) -> tuple[list, list[str]]:
        return self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=far)

    def far_cancel(self, actions: list, fid: int) -> SipMessage:
        (act,) = [a for a in actions if isinstance(a, ToTunnel)]
        self.assertEqual((act.tunnel_key, act.flow_id), (self.key, fid))
        return parse_message(act.data)

    def test_cancel_into_the_tunnel(self) -> None:
        """
        The far party gets a CANCEL of the INVITE as it went into the
        tunnel (RFC 3261 9.1): its Request-URI, its top Via (the phone's,
        with its branch: the agent adds none), Route, From, To without
        tag, Call-ID and CSeq number, Max-Forwards 70, the Reason, no
        body; the phone still gets its 480; both are in the record.
        """
        fid, sent = self.call_out()
        actions, told = self.lost(fid)
        self.assertEqual(told, ["phone (480)", "far party (CANCEL)"])
        self.assertEqual(parse_message(only([a for a in actions if isinstance(a, ToApp)], ToApp).data).status, 480)
        cancel = self.far_cancel(actions, fid)
        self.assertEqual((cancel.method, cancel.uri, cancel.cseq), ("CANCEL", sent.uri, (7, "CANCEL")))
        self.assertEqual(cancel.get_all("Via"), sent.get_all("Via")[:1])
        self.assertEqual(cancel.get_all("Route"), ["<sip:proxy.example.net;lr>"])
        self.assertEqual(
            (cancel.get("From"), cancel.get("To"), cancel.call_id, cancel.to_tag),
            (sent.get("From"), sent.get("To"), sent.call_id, None),
        )
        self.assertEqual((cancel.max_forwards, cancel.get("Reason"), cancel.body), (70, REASON, b""))
        self.assertEqual(self.agent.counters[CANCEL_SENT], 1)
        self.assertEqual(self.agent.counters[FINAL_SENT], 1)
        # over the tunnel: not sent again
        self.assertEqual([a for a in self.agent.handle_timer(2.0 + T1) if isinstance(a, ToTunnel)], [])

    def test_answers_absorbed(self) -> None:
        """
        The CANCEL's 200 and the INVITE's 487, back through the tunnel,
        stay here (the phone has had its 480): the 487 is ACKed into the
        tunnel with the INVITE's top Via (its branch, RFC 3261 17.1.1.3),
        Request-URI, Route and CSeq number and the 487's To tag, again
        for a retransmission; a late 180 stays here too.  The phone's
        480 is still sent again until its ACK.
        """
        fid, sent = self.call_out()
        actions, _ = self.lost(fid)
        to_phone = only([a for a in actions if isinstance(a, ToApp)], ToApp)
        cancel = self.far_cancel(actions, fid)
        self.assertEqual(self.agent.from_tunnel(fid, answer(cancel.to_bytes(), 200, to_tag="tb"), 2.1), [])
        self.assertEqual(self.agent.counters[CANCEL_ANSWERED], 1)
        self.assertEqual(self.agent.from_tunnel(fid, answer(sent.to_bytes(), 180, "Ringing", to_tag="tb"), 2.1), [])
        terminated = answer(sent.to_bytes(), 487, "Request Terminated", to_tag="tb")
        for _ in range(2):  # and its retransmission
            act = only(self.agent.from_tunnel(fid, terminated, 2.2), ToTunnel)
            self.assertEqual((act.tunnel_key, act.flow_id), (self.key, fid))
            ack = parse_message(act.data)
            self.assertEqual((ack.method, ack.uri, ack.cseq, ack.to_tag), ("ACK", sent.uri, (7, "ACK"), "tb"))
            self.assertEqual(ack.get_all("Via"), sent.get_all("Via")[:1])
            self.assertEqual(ack.get_all("Route"), ["<sip:proxy.example.net;lr>"])
        self.assertEqual([a for a in self.agent.handle_timer(2.0 + T1) if isinstance(a, ToApp)], [to_phone])

    def test_answer_crossing_the_cancel(self) -> None:
        """
        Bob answered 200 before our CANCEL reached him: the 2xx stays
        here, and is ACKed and ended with a BYE in alice's name, both into
        the tunnel to its Contact with the route set beyond the agent's
        own Record-Route (the contact point's first); once: a
        retransmitted 2xx is ACKed again, no second BYE; the BYE's 200
        stays here.
        """
        fid, sent = self.call_out()
        self.lost(fid)
        cp = "<sip:tok1@203.0.113.5:5060;lr>"
        ok = make_response(
            sent, 200, "OK", to_tag="tb",
            extra_headers=(
                ("Record-Route", "<sip:proxy.example.net;lr>"),
                ("Record-Route", cp),
                *(("Record-Route", v) for v in sent.get_all("Record-Route")),
                ("Contact", "<sip:bob@198.51.100.20>"),
            ),
        ).to_bytes()  # fmt: skip
        out = self.agent.from_tunnel(fid, ok, 2.1)
        self.assertEqual({(type(a), a.flow_id) for a in out}, {(ToTunnel, fid)})
        ack, bye = (parse_message(a.data) for a in out)
        for msg, cseq in ((ack, (7, "ACK")), (bye, (8, "BYE"))):
            self.assertEqual((msg.uri, msg.cseq, msg.from_tag, msg.to_tag), ("sip:bob@198.51.100.20", cseq, "fa", "tb"))
            self.assertEqual(msg.get_all("Route"), [cp, "<sip:proxy.example.net;lr>"])
        self.assertEqual(bye.get("Reason"), REASON)
        self.assertEqual(self.agent.counters[BYE_SENT], 1)
        ended_once(self, lambda data, now: self.agent.from_tunnel(fid, data, now), ok, bye, 7)
        self.assertEqual(self.agent.counters[BYE_ANSWERED], 1)

    def test_not_without_far(self) -> None:
        """
        Without C{far} (the contact point stopped and ended the call
        itself, or the tunnel is gone for good) only the phone is told,
        and the far party's answers go to the phone as before.
        """
        fid, sent = self.call_out()
        actions, told = self.lost(fid, far=False)
        self.assertEqual((told, [a for a in actions if isinstance(a, ToTunnel)]), (["phone (480)"], []))
        self.assertNotIn(CANCEL_SENT, self.agent.counters)
        terminated = answer(sent.to_bytes(), 487, "Request Terminated", to_tag="tb")
        only(self.agent.from_tunnel(fid, terminated, 2.2), ToApp)

    def ring_phone(self, tag: str | None = "ph", sdp: bool = True) -> tuple[int, SipMessage, SipMessage]:
        """
        Carol's INVITE from the tunnel (the contact point's Via on top,
        the operator's proxy's and carol's below) rings alice's phone,
        which answers 180 (with the To tag C{tag}, or 100 without one for
        C{None}).

        @return: the flow id, the INVITE as it came from the tunnel and as
            it went to the phone.
        """
        fid = self.agent.flows.use(FLOW_A, 0.0)
        came = parse_message(
            request(
                "INVITE",
                "sip:alice@192.0.2.10:5062",
                via="SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKcp1",
                from_="<sip:bob@example.org>;tag=fb",
                to="<sip:alice@example.org>",
                extra=(
                    "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKprx1;received=198.51.100.7",
                    "Via: SIP/2.0/UDP 198.51.100.40:5060;branch=z9hG4bKext1",
                ),
                body=SDP if sdp else b"",
                content_type="application/sdp" if sdp else None,
            )
        )
        down = only(self.agent.from_tunnel(fid, came.to_bytes(), 0.0), ToApp)
        status, phrase = (100, "Trying") if tag is None else (180, "Ringing")
        provisional = self.agent.from_app(FLOW_A, answer(down.data, status, phrase, to_tag=tag), 0.5)
        only(provisional, ToTunnel)
        return fid, came, parse_message(down.data)

    def far_ack(self, came: SipMessage, tag: str) -> bytes:
        """
        The ACK of a non-2xx final response to C{came} as the restarted
        contact point passes it on (hop by hop: its Via with the INVITE's
        branch on top, RFC 3261 17.1.1.3, 16.11).
        """
        return request(
            "ACK",
            came.uri or "",
            via="SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKcp1",
            from_="<sip:bob@example.org>;tag=fb",
            to=f"<sip:alice@example.org>;tag={tag}",
        )

    def test_480_to_the_far_caller(self) -> None:
        """
        A call from the far party ringing at our phone: the phone gets its
        CANCEL, the far caller a 480 into the tunnel on the phone's flow
        (RFC 3261 16.7: the agent gives up on the phone's branch): the
        INVITE's Via lines as they came from the tunnel (the contact
        point's on top, the agent's own gone), To with the phone's tag,
        From, Call-ID and CSeq the INVITE's, the Reason; once (the tunnel
        is reliable); the record says C{"far party (480)"}.
        """
        fid, came, _ = self.ring_phone()
        actions, told = self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
        self.assertEqual(told, ["phone (CANCEL)", "far party (480)"])
        self.assertEqual(parse_message(only([a for a in actions if isinstance(a, ToApp)], ToApp).data).method, "CANCEL")
        resp = self.far_cancel(actions, fid)
        self.assertEqual((resp.status, resp.reason), (480, "Temporarily Unavailable"))
        self.assertEqual(resp.get_all("Via"), came.get_all("Via"))
        self.assertEqual(resp.get_all("Via")[0], "SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKcp1")
        self.assertEqual((resp.to_tag, resp.from_tag, resp.call_id, resp.cseq), ("ph", "fb", came.call_id, came.cseq))
        self.assertEqual(resp.get("From"), came.get("From"))
        self.assertEqual((resp.get("Reason"), resp.body), (REASON, b""))
        self.assertEqual((self.agent.counters[FINAL_SENT], self.agent.counters[CANCEL_SENT]), (1, 1))
        self.assertEqual([a for a in self.agent.handle_timer(2.0 + T1) if isinstance(a, ToTunnel)], [])

    def test_480_tag_of_ours(self) -> None:
        """
        The phone sent no provisional response with a tag (100 only): the
        480 has a To tag of the agent's own, the INVITE's To otherwise.
        """
        fid, came, _ = self.ring_phone(tag=None)
        actions, told = self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
        resp = self.far_cancel(actions, fid)
        self.assertEqual(resp.status, 480)
        self.assertTrue(resp.to_tag)
        self.assertEqual((resp.get("To") or "").split(";tag=")[0], came.get("To"))

    def test_ack_of_the_480_absorbed(self) -> None:
        """
        The ACK of the 480, back through the tunnel with the contact
        point's branch on top, stays here (not passed to the phone, no
        drop); the 480 waits no more for it.  Without our 480 the same
        ACK goes to the phone as before.
        """
        fid, came, _ = self.ring_phone()
        self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
        waiting, counted = len(self.agent._byes), dict(self.agent.counters)
        self.assertEqual(self.agent.from_tunnel(fid, self.far_ack(came, "ph"), 2.3), [])
        self.assertEqual((len(self.agent._byes), dict(self.agent.counters)), (waiting - 1, counted))
        self.setUp()
        fid, came, _ = self.ring_phone()
        self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=False)
        only(self.agent.from_tunnel(fid, self.far_ack(came, "ph"), 2.3), ToApp)

    def test_far_cancel_after_the_480_answered_here(self) -> None:
        """
        The far caller hangs up at once after our 480 (its CANCEL crossed
        it, with the contact point's branch of the INVITE on top): the
        CANCEL is answered 200 here, into the tunnel (RFC 3261 9.2: the
        INVITE's transaction is over), and not passed to the phone, which
        had our CANCEL.  Without our 480 the same CANCEL goes to the
        phone as before.
        """
        fid, came, _ = self.ring_phone()
        self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
        cancel = request(
            "CANCEL",
            came.uri or "",
            via="SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bKcp1",
            from_="<sip:bob@example.org>;tag=fb",
            to="<sip:alice@example.org>",
        )
        ok = parse_message(only(self.agent.from_tunnel(fid, cancel, 2.2), ToTunnel).data)
        self.assertEqual((ok.status, ok.cseq[1], ok.get_all("Via")), (200, "CANCEL", parse_message(cancel).get_all("Via")))
        self.setUp()
        fid, came, _ = self.ring_phone()
        self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=False)
        self.assertEqual(parse_message(only(self.agent.from_tunnel(fid, cancel, 2.2), ToApp).data).method, "CANCEL")

    def test_ack_absorbed_phone_gone(self) -> None:
        """
        The phone's flow gone: the far caller still gets the 480 (no
        CANCEL to the phone), and its ACK stays here (not dropped as for
        an unknown flow).
        """
        fid, came, _ = self.ring_phone()
        self.agent.flows = FlowTable()
        actions, told = self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
        self.assertEqual(told, ["far party (480)"])
        self.assertEqual(self.far_cancel(actions, fid).status, 480)
        counted = dict(self.agent.counters)
        self.assertEqual(self.agent.from_tunnel(fid, self.far_ack(came, "ph"), 2.3), [])
        self.assertEqual(dict(self.agent.counters), counted)

    def test_crossing_answer_not_passed_on(self) -> None:
        """
        The phone answered 200 before our CANCEL reached it: after our 480
        the 2xx does not go into the tunnel; the phone gets the ACK and a
        BYE.  So too when the phone's flow was gone (no CANCEL went) and
        its 200 comes on a new one.
        """
        contact = (("Contact", "<sip:alice@192.0.2.10:5062>"),)
        for gone in (False, True):
            self.setUp()
            fid, _, got = self.ring_phone()
            if gone:
                self.agent.flows = FlowTable()
            self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
            out = self.agent.from_app(FLOW_A, answer(got.to_bytes(), 200, to_tag="ph", extra=contact), 2.1)
            self.assertEqual([a for a in out if isinstance(a, ToTunnel)], [])
            self.assertEqual([parse_message(a.data).method for a in out], ["ACK", "BYE"])

    def test_480_not_without_far(self) -> None:
        """
        Without C{far} (the contact point stopped and answered the caller
        itself) the phone gets its CANCEL, nothing goes into the tunnel.
        """
        fid, _, _ = self.ring_phone()
        actions, told = self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=False)
        self.assertEqual(told, ["phone (CANCEL)"])
        self.assertEqual(parse_message(only(actions, ToApp).data).method, "CANCEL")
        self.assertNotIn(FINAL_SENT, self.agent.counters)

    def test_480_without_sdp_when_the_session_goes(self) -> None:
        """
        A call from the far party without SDP ringing at the phone when the
        session is lost for good: C{ringing_lost} with C{far} sends the 480
        into the tunnel too.
        """
        fid, _, _ = self.ring_phone(sdp=False)
        actions = self.agent.ringing_lost("s", 2.0, far=True)
        self.assertEqual([parse_message(a.data).status for a in actions if isinstance(a, ToTunnel)], [480])

    def test_480_bounded(self) -> None:
        """
        The 480 waits with the BYEs (L{ByeSender}, its limit): with no
        room left after the phone's CANCEL it is not sent, counted, not
        in the record.
        """
        fid, _, _ = self.ring_phone()
        self.agent._byes.limit = 1
        actions, told = self.agent.leg_lost("s", fid, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
        self.assertEqual((told, [a for a in actions if isinstance(a, ToTunnel)]), (["phone (CANCEL)"], []))
        self.assertEqual((self.agent.counters[BYE_DROPPED], self.agent.counters.get(FINAL_SENT)), (1, None))

    def test_phone_gone(self) -> None:
        """
        The far party gets its CANCEL also when the phone's flow is gone
        (no 480 then).
        """
        fid, sent = self.call_out()
        self.agent.flows = FlowTable()
        actions, told = self.lost(fid)
        self.assertEqual(told, ["far party (CANCEL)"])
        self.assertEqual(self.far_cancel(actions, fid).method, "CANCEL")

    def test_without_sdp_when_the_session_goes(self) -> None:
        """
        A call out without SDP (no media stream, no leg_lost) ringing when
        the session is lost for good: C{ringing_lost} with C{far} sends
        the CANCEL into the tunnel too; without C{far} it does not.
        """
        for far, expected in ((True, ["CANCEL"]), (False, [])):
            self.setUp()
            fid, sent = self.call_out(sdp=False)
            actions = self.agent.ringing_lost("s", 2.0, far=far)
            self.assertEqual([parse_message(a.data).method for a in actions if isinstance(a, ToTunnel)], expected)
            self.assertEqual(parse_message(only([a for a in actions if isinstance(a, ToApp)], ToApp).data).status, 480)

    def test_bounded(self) -> None:
        """
        The CANCEL waits with the BYEs (L{ByeSender}, its limit): with no
        room left it is not sent, counted, not in the record.
        """
        fid, _ = self.call_out()
        self.agent._byes.limit = 1
        actions, told = self.lost(fid)
        self.assertEqual((told, [a for a in actions if isinstance(a, ToTunnel)]), (["phone (480)"], []))
        self.assertEqual((self.agent.counters[BYE_DROPPED], self.agent.counters.get(CANCEL_SENT)), (1, None))


class FarCancelAfterRestartTests(SynchronousTestCase):
    """
    The agent's CANCEL of a call ringing at the far party, through a
    contact point restarted after a crash (a new core with the same token
    key): it gets the branch the dead process gave the INVITE, so the
    operator's proxy matches it to that INVITE (RFC 3261 9.1, 16.11); the
    487 comes back to the agent and its ACK goes out with that branch too.
    The new process does not know which transport the INVITE's size chose
    (RFC 3261 18.1.1): the CANCEL goes both ways.
    """

    def cancel_after_restart(self, pad: int) -> tuple[SipMessage, dict[str, ToNetwork]]:
        """
        Alice's INVITE (with C{pad} header lines of 60 bytes) rings at the
        far party through a contact point that dies; the agent's CANCEL
        through the next one.

        @return: the INVITE as the dead contact point sent it, the
            CANCELs the next one sends by transport (each to the proxy).
        """
        via = "SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKapp1;rport"
        self.agent = AgentSipProxy(object(), "agent-1", media_hook=RecordingHook("agent"))
        self.proxy = (OPERATOR.host, OPERATOR.port)
        padding = tuple(f"X-Pad-{n}: {'x' * 50}" for n in range(pad))
        invite = request("INVITE", "sip:bob@example.org", via=via, extra=("Contact: <sip:alice@192.0.2.10:5062>", *padding))
        up = only(self.agent.from_app(FLOW_A, invite, 0.0), ToTunnel)
        dead = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR, media_hook=RecordingHook("contact"))
        key = FakeTunnel("sess-1")
        dead.tunnel_attached(key, "sess-1")
        self.out = only(dead.from_tunnel(key, "sess-1", up.flow_id, up.data, 0.0), ToNetwork)
        ringing = only(dead.from_network("udp", self.proxy, answer(self.out.data, 180, "Ringing", to_tag="tb"), 0.5), ToTunnel)
        only(self.agent.from_tunnel(up.flow_id, ringing.data, 0.5), ToApp)
        # the contact point's process dies; the next one has its token key
        self.cp = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR, media_hook=RecordingHook("contact"))
        self.key = FakeTunnel("sess-1")
        self.cp.tunnel_attached(self.key, "sess-1")
        actions, _ = self.agent.leg_lost("sess-1", up.flow_id, "call-1@192.0.2.10", "tunnel lost", 2.0, far=True)
        (into,) = [a for a in actions if isinstance(a, ToTunnel)]
        out = self.cp.from_tunnel(self.key, "sess-1", into.flow_id, into.data, 2.0)
        self.assertEqual({a.addr for a in out}, {self.proxy})
        return parse_message(self.out.data), {a.transport: a for a in out}

    def test_same_branch(self) -> None:
        """
        The CANCEL leaves the restarted contact point with the INVITE's
        Via (the contact point's with the same branch, the phone's) over
        the INVITE's transport (UDP), and over TCP with a TCP Via, the
        same branch; the 487's ACK with the INVITE's Via.
        """
        sent, cancels = self.cancel_after_restart(0)
        self.assertEqual((self.out.transport, sorted(cancels)), ("udp", ["tcp", "udp"]))
        cancel = parse_message(cancels["udp"].data)
        self.assertEqual((cancel.method, cancel.uri, cancel.cseq), ("CANCEL", sent.uri, (1, "CANCEL")))
        self.assertEqual(cancel.get_all("Via"), sent.get_all("Via")[:2])
        other = parse_message(cancels["tcp"].data)
        self.assertEqual(other.get_all("Via")[0], sent.get_all("Via")[0].replace("/UDP ", "/TCP "))
        # its 200 stays at the agent; the 487 is ACKed with the INVITE's branch
        back = only(self.cp.from_network("udp", self.proxy, answer(cancels["udp"].data, 200, to_tag="tb"), 2.1), ToTunnel)
        self.assertEqual(self.agent.from_tunnel(back.flow_id, back.data, 2.1), [])
        terminated = answer(self.out.data, 487, "Request Terminated", to_tag="tb")
        back = only(self.cp.from_network("udp", self.proxy, terminated, 2.2), ToTunnel)
        into = only(self.agent.from_tunnel(back.flow_id, back.data, 2.2), ToTunnel)
        ack = parse_message(only(self.cp.from_tunnel(self.key, "sess-1", into.flow_id, into.data, 2.2), ToNetwork).data)
        self.assertEqual((ack.method, ack.cseq, ack.to_tag), ("ACK", (1, "ACK"), "tb"))
        self.assertEqual(ack.get_all("Via"), sent.get_all("Via")[:2])

    def test_invite_over_tcp(self) -> None:
        """
        An INVITE over 1,300 bytes went to the proxy over TCP (RFC 3261
        18.1.1): the CANCEL's copy over TCP has its Via exactly.
        """
        sent, cancels = self.cancel_after_restart(20)
        self.assertEqual((self.out.transport, sorted(cancels)), ("tcp", ["tcp", "udp"]))
        self.assertEqual(parse_message(cancels["tcp"].data).get_all("Via"), sent.get_all("Via")[:2])


class FarAnswerAfterRestartTests(SynchronousTestCase):
    """
    The agent's 480 to a far caller whose call rings at the phone, through
    a contact point restarted after a crash (a new core with the same
    token key): it knows its own Via on top (the dead process's branch, a
    token under that key), pops it and sends the 480 to the operator's
    proxy by the next Via, as the dead process sent the 180; the proxy's
    ACK of it comes back through the tunnel with that branch and stays at
    the agent.
    """

    def test_480_to_the_proxy(self) -> None:
        """
        The 480 leaves the new contact point for the proxy with the 180's
        Via lines (the proxy's, carol's), the phone's tag and the Reason;
        the proxy's ACK (its Via, the INVITE's Route) goes into the tunnel
        and no further than the agent.
        """
        agent = AgentSipProxy(object(), "agent-1", media_hook=RecordingHook("agent"))
        fid = agent.flows.use(FLOW_A, 0.0)
        proxy = (OPERATOR.host, OPERATOR.port)
        route = "Route: <sip:%s@203.0.113.5;lr>" % FlowTokenCodec(SECRET).encode(KIND_ROUTE, "sess-1", fid)
        ruri = "sip:alice@192.0.2.10:5062"
        invite = from_carol(
            "INVITE",
            ruri,
            via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKprx1",
            extra=("Via: SIP/2.0/UDP 198.51.100.40:5060;branch=z9hG4bKext1", route),
            body=SDP,
            content_type="application/sdp",
        )
        dead = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR, media_hook=RecordingHook("contact"))
        dead.tunnel_attached(FakeTunnel("sess-1"), "sess-1")
        down = only(dead.from_network("udp", proxy, invite, 0.0), ToTunnel)
        to_phone = only(agent.from_tunnel(down.flow_id, down.data, 0.0), ToApp)
        up = only(agent.from_app(FLOW_A, answer(to_phone.data, 180, "Ringing", to_tag="ph"), 0.5), ToTunnel)
        ringing = only(dead.from_tunnel(down.tunnel_key, "sess-1", up.flow_id, up.data, 0.5), ToNetwork)
        # the contact point's process dies; the next one has its token key
        cp = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR, media_hook=RecordingHook("contact"))
        key = FakeTunnel("sess-1")
        cp.tunnel_attached(key, "sess-1")
        actions, told = agent.leg_lost("sess-1", fid, "ext-1", "tunnel lost", 2.0, far=True)
        self.assertEqual(told, ["phone (CANCEL)", "far party (480)"])
        into = only([a for a in actions if isinstance(a, ToTunnel)], ToTunnel)
        out = only(cp.from_tunnel(key, "sess-1", into.flow_id, into.data, 2.0), ToNetwork)
        self.assertEqual((out.transport, out.addr), (ringing.transport, proxy))
        resp = parse_message(out.data)
        self.assertEqual((resp.status, resp.to_tag, resp.cseq, resp.get("Reason")), (480, "ph", (1, "INVITE"), REASON))
        self.assertEqual(resp.get_all("Via"), parse_message(ringing.data).get_all("Via"))
        ack = from_carol(
            "ACK",
            ruri,
            via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKprx1",
            to="<sip:alice@example.org>;tag=ph",
            extra=(route,),
        )
        back = only(cp.from_network("udp", proxy, ack, 2.1), ToTunnel)
        self.assertEqual(parse_message(back.data).get_all("Via")[0], parse_message(down.data).get_all("Via")[0])
        self.assertEqual(agent.from_tunnel(back.flow_id, back.data, 2.1), [])


class CancelTransportTests(SynchronousTestCase):
    """
    A phone's CANCEL through a contact point that knows its INVITE (in
    its ringing table) goes the way the INVITE went: over TCP with a TCP
    Via when its size sent the INVITE over TCP (RFC 3261 9.1, 18.1.1).
    """

    def cancel(self, pad: int) -> tuple[ToNetwork, ToNetwork]:
        cp = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR, media_hook=RecordingHook("contact"))
        key = FakeTunnel("sess-1")
        cp.tunnel_attached(key, "sess-1")
        padding = tuple(f"X-Pad-{n}: {'x' * 50}" for n in range(pad))
        invite = only(cp.from_tunnel(key, "sess-1", 5, request("INVITE", "sip:bob@example.org", extra=padding), 0.0), ToNetwork)
        cancel = only(cp.from_tunnel(key, "sess-1", 5, request("CANCEL", "sip:bob@example.org"), 1.0), ToNetwork)
        return invite, cancel

    def test_large_invite(self) -> None:
        """
        The INVITE went over TCP: its CANCEL too, with the INVITE's Via.
        """
        invite, cancel = self.cancel(20)
        self.assertEqual((invite.transport, cancel.transport), ("tcp", "tcp"))
        self.assertEqual(parse_message(cancel.data).get_all("Via")[0], parse_message(invite.data).get_all("Via")[0])

    def test_small_invite(self) -> None:
        """
        The INVITE went over UDP: its CANCEL too, once.
        """
        invite, cancel = self.cancel(0)
        self.assertEqual((invite.transport, cancel.transport), ("udp", "udp"))
        self.assertEqual(parse_message(cancel.data).get_all("Via")[0], parse_message(invite.data).get_all("Via")[0])


class ContactRingingTests(SynchronousTestCase):
    """
    L{ContactSipProxy.leg_lost} for a call lost with its tunnel while it
    rings, with an operator proxy.
    """

    def setUp(self) -> None:
        self.cp = ContactSipProxy(CONTACT_ADDR, SECRET, operator=OPERATOR, media_hook=RecordingHook("contact"))
        self.key = FakeTunnel("sess-1")
        self.cp.tunnel_attached(self.key, "sess-1")
        self.proxy = (OPERATOR.host, OPERATOR.port)

    def test_cancel_toward_the_far_party(self) -> None:
        """
        A phone's call out ringing at the far end: the CANCEL goes to the
        operator's proxy as the INVITE did (the contact point's Via and
        branch); its 200 and the 487 stay here, the 487 ACKed there.
        """
        invite = request("INVITE", "sip:bob@example.org", extra=("Contact: <sip:alice@192.0.2.10:5062>",))
        sent = only(self.cp.from_tunnel(self.key, "sess-1", 5, invite, 0.0), ToNetwork)
        only(self.cp.from_network("udp", self.proxy, answer(sent.data, 180, "Ringing"), 0.5), ToTunnel)
        actions, told = self.cp.leg_lost("sess-1", 5, "call-1@192.0.2.10", "tunnel lost", 2.0)
        self.assertEqual(told, ["far party (CANCEL)"])
        act = only(actions, ToNetwork)
        self.assertEqual((act.transport, act.addr), ("udp", self.proxy))
        cancel = parse_message(act.data)
        invite_sent = parse_message(sent.data)
        self.assertEqual((cancel.method, cancel.uri, cancel.cseq), ("CANCEL", invite_sent.uri, (1, "CANCEL")))
        self.assertEqual(cancel.get_all("Via"), invite_sent.get_all("Via")[:1])
        self.assertEqual(cancel.get("Reason"), REASON)
        self.assertEqual(self.cp.counters[CANCEL_SENT], 1)
        self.assertEqual(self.cp.from_network("udp", self.proxy, answer(act.data, 200), 2.1), [])
        ack = parse_message(
            only(self.cp.from_network("udp", self.proxy, answer(sent.data, 487, "Request Terminated"), 2.2), ToNetwork).data
        )
        self.assertEqual((ack.method, ack.uri, ack.to_tag, ack.cseq), ("ACK", invite_sent.uri, "tt", (1, "ACK")))
        self.assertEqual(ack.get_all("Via"), invite_sent.get_all("Via")[:1])
        self.assertEqual(self.cp.counters[CANCEL_ANSWERED], 1)

    def test_without_sdp_when_the_session_goes(self) -> None:
        """
        A call that rings without a media stream (its INVITE had no SDP:
        no leg_lost for it) is ended when its session is lost for good
        (C{ringing_lost}), the far party's CANCEL as for a call with
        media; another session's ringing call is left alone, and a
        second call of the method sends nothing more.
        """
        invite = request("INVITE", "sip:bob@example.org")
        sent = only(self.cp.from_tunnel(self.key, "sess-1", 5, invite, 0.0), ToNetwork)
        other = FakeTunnel("sess-2")
        self.cp.tunnel_attached(other, "sess-2")
        only(self.cp.from_tunnel(other, "sess-2", 6, request("INVITE", "sip:carol@example.org", call_id="c2"), 0.0), ToNetwork)
        cancel = parse_message(only(self.cp.ringing_lost("sess-1", 2.0), ToNetwork).data)
        self.assertEqual((cancel.method, cancel.uri, cancel.call_id), ("CANCEL", parse_message(sent.data).uri, "call-1@192.0.2.10"))
        self.assertEqual(cancel.get("Reason"), REASON)
        self.assertEqual(self.cp.ringing_lost("sess-1", 2.1), [])
        self.cp.bye_on_loss = False
        self.assertEqual(self.cp.ringing_lost("sess-2", 3.0), [])

    def test_answer_crossing_the_cancel(self) -> None:
        """
        The far party answered 200 before our CANCEL reached it: the
        contact point ACKs the 2xx and ends it with a BYE, both through
        the operator's proxy with its Route, to the 2xx's Contact.
        """
        invite = request("INVITE", "sip:bob@example.org")
        sent = only(self.cp.from_tunnel(self.key, "sess-1", 5, invite, 0.0), ToNetwork)
        self.cp.leg_lost("sess-1", 5, "call-1@192.0.2.10", "tunnel lost", 2.0)
        ok = answered_above(sent.data, "<sip:198.51.100.7;lr>", "<sip:bob@198.51.100.30:5080>")
        out = self.cp.from_network("udp", self.proxy, ok.to_bytes(), 2.1)
        self.assertEqual({(a.transport, a.addr) for a in out}, {("udp", self.proxy)})
        ack, bye = (parse_message(a.data) for a in out)
        for msg, cseq in ((ack, (1, "ACK")), (bye, (2, "BYE"))):
            self.assertEqual((msg.uri, msg.cseq, msg.from_tag, msg.to_tag), ("sip:bob@198.51.100.30:5080", cseq, "fa", "tt"))
            self.assertEqual(msg.get_all("Route"), ["<sip:198.51.100.7;lr>"])
        self.assertEqual(self.cp.counters[BYE_SENT], 1)

    def test_final_response_to_the_far_caller(self) -> None:
        """
        A call from the network ringing at the phone (180 with a tag): the
        caller gets a 480 with that tag where a response to its INVITE
        goes (its Via below ours, received from the operator's proxy), again until its ACK, which stays here.
        """
        ruri = "sip:alice@192.0.2.10:5062"
        token = FlowTokenCodec(SECRET).encode(KIND_ROUTE, "sess-1", 5)
        invite = from_carol("INVITE", ruri, extra=(f"Route: <sip:{token}@203.0.113.5;lr>",))
        down = only(self.cp.from_network("udp", self.proxy, invite, 0.0), ToTunnel)
        ringing = answer(down.data, 180, "Ringing", to_tag="ph")
        only(self.cp.from_tunnel(self.key, "sess-1", 5, ringing, 0.5), ToNetwork)
        actions, told = self.cp.leg_lost("sess-1", 5, "ext-1", "tunnel lost", 2.0)
        self.assertEqual(told, ["far party (480)"])
        act = only(actions, ToNetwork)
        resp = parse_message(act.data)
        # (its INVITE came from the operator's proxy: Via received)
        self.assertEqual((act.addr, resp.status, resp.to_tag), (self.proxy, 480, "ph"))
        self.assertEqual(len(resp.get_all("Via")), 1)
        self.assertEqual(self.cp.counters[FINAL_SENT], 1)
        self.assertEqual([a for a in self.cp.handle_timer(2.0 + T1) if isinstance(a, ToNetwork)], [act])
        ack = from_carol("ACK", ruri, to="<sip:alice@example.org>;tag=ph", extra=(f"Route: <sip:{token}@203.0.113.5;lr>",))
        self.assertEqual(self.cp.from_network("udp", self.proxy, ack, 2.6), [])
        self.assertEqual([a for a in self.cp.handle_timer(2.0 + 3 * T1) if isinstance(a, ToNetwork)], [])

    def test_final_response_to_the_far_caller_while_stopping(self) -> None:
        """
        The contact point that stops (C{tunnels} false) still sends the far
        caller its 480 through the operator's proxy: so an agent need not
        (its C{far} is false after a stop).
        """
        token = FlowTokenCodec(SECRET).encode(KIND_ROUTE, "sess-1", 5)
        invite = from_carol("INVITE", "sip:alice@192.0.2.10:5062", extra=(f"Route: <sip:{token}@203.0.113.5;lr>",))
        down = only(self.cp.from_network("udp", self.proxy, invite, 0.0), ToTunnel)
        only(self.cp.from_tunnel(self.key, "sess-1", 5, answer(down.data, 180, "Ringing", to_tag="ph"), 0.5), ToNetwork)
        actions, told = self.cp.leg_lost("sess-1", 5, "ext-1", "tunnel lost", 2.0, tunnels=False)
        self.assertEqual(told, ["far party (480)"])
        act = only(actions, ToNetwork)
        self.assertEqual((act.addr, parse_message(act.data).status), (self.proxy, 480))

    def test_not_after_the_answer(self) -> None:
        """
        A call whose INVITE was answered gets none of this.
        """
        invite = request("INVITE", "sip:bob@example.org")
        sent = only(self.cp.from_tunnel(self.key, "sess-1", 5, invite, 0.0), ToNetwork)
        only(self.cp.from_network("udp", self.proxy, answer(sent.data, 603, "Decline"), 0.5), ToTunnel)
        self.assertEqual(self.cp.leg_lost("sess-1", 5, "call-1@192.0.2.10", "tunnel lost", 2.0), ([], []))


class EmbeddedRingingTests(SynchronousTestCase):
    """
    With the embedded registrar, alice (behind agent s1) calls bob
    (behind agent s2); bob's phone rings.
    """

    def setUp(self) -> None:
        self.w = w = World()
        self.t1, self.a1 = w.add_agent("s1")
        self.t2, self.a2 = w.add_agent("s2")
        w.app(self.a1, FLOW_A, register())
        w.take_app()
        w.app(self.a2, FLOW_A, register("bob", "sip:bob@192.0.2.10:5062"))
        w.take_app()
        invite = request("INVITE", "sip:bob@example.org", extra=("Contact: <sip:alice@192.0.2.10:5062>",))
        w.app(self.a1, FLOW_A, invite)
        self.rung = w.take_app()[1]
        w.app(self.a2, FLOW_A, answer(self.rung.to_bytes(), 180, "Ringing", to_tag="ph"))
        self.assertEqual(w.take_app()[1].status, 180)

    def leg(self, session: str) -> tuple[str, int]:
        legs: list[tuple[str, int, str]] = list(self.w.contact._ringing._legs)  # type: ignore[arg-type]
        return next((s, fid) for s, fid, _ in legs if s == session)

    def lose(self, tunnel: FakeTunnel) -> list[str]:
        """
        C{tunnel} is lost past resumption: the contact point's C{leg_lost}
        for its leg of the call, its actions carried out.

        @return: whom it told.
        """
        w = self.w
        session, fid = self.leg(tunnel.session_id)
        w.contact.tunnel_detached(tunnel, keep_registrations=True)
        actions, told = w.contact.leg_lost(session, fid, "call-1@192.0.2.10", "tunnel lost", w.now)
        w.run(actions, "contact")
        return told

    def test_caller_lost(self) -> None:
        """
        Alice's tunnel lost: the contact point CANCELs the INVITE into
        bob's tunnel (through its registrar's routing), and bob's phone
        gets it from its agent; the 487 is ACKed back to bob's phone and
        goes no further.
        """
        w = self.w
        self.assertEqual(self.lose(self.t1), ["far party (CANCEL)"])
        flow, cancel = w.take_app()
        self.assertEqual((cancel.method, cancel.uri, cancel.get("Reason")), ("CANCEL", self.rung.uri, REASON))
        self.assertEqual(cancel.get_all("Via"), self.rung.get_all("Via")[:3])
        w.app(self.a2, FLOW_A, answer(cancel.to_bytes(), 200, to_tag="ph"))
        w.app(self.a2, FLOW_A, answer(self.rung.to_bytes(), 487, "Request Terminated", to_tag="ph"))
        flow, ack = w.take_app()
        self.assertEqual((ack.method, ack.uri, ack.to_tag), ("ACK", self.rung.uri, "ph"))
        self.assertEqual(ack.get_all("Via"), self.rung.get_all("Via")[:3])
        self.assertEqual(w.drops, [])

    def test_caller_lost_answer_crossing(self) -> None:
        """
        Alice's tunnel lost, and bob's phone answered before the contact
        point's CANCEL came: the 2xx is ACKed and ended with a BYE, both
        through bob's tunnel to his phone's Contact.
        """
        w = self.w
        self.lose(self.t1)
        w.take_app()  # the CANCEL
        ok = answer(self.rung.to_bytes(), 200, to_tag="ph", extra=(("Contact", "<sip:bob@192.0.2.10:5062>"),))
        w.app(self.a2, FLOW_A, ok)
        got = w.take_apps()
        self.assertEqual([(m.method, m.uri, m.cseq, m.to_tag) for _, m in got], [
            ("ACK", "sip:bob@192.0.2.10:5062", (1, "ACK"), "ph"),
            ("BYE", "sip:bob@192.0.2.10:5062", (2, "BYE"), "ph"),
        ])
        self.assertEqual(got[1][1].get("Reason"), REASON)

    def test_callee_lost(self) -> None:
        """
        Bob's tunnel lost: alice gets the contact point's 480 through her
        tunnel; not while the contact point stops (C{tunnels} false).
        """
        w = self.w
        session, fid = self.leg("s2")
        self.assertEqual(w.contact.leg_lost(session, fid, "call-1@192.0.2.10", "tunnel lost", w.now, tunnels=False), ([], []))
        self.setUp()
        self.assertEqual(self.lose(self.t2), ["far party (480)"])
        flow, resp = self.w.take_app()
        self.assertEqual((flow, resp.status, resp.to_tag, resp.get("Reason")), (FLOW_A, 480, "ph", REASON))
