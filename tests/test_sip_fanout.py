"""
Tests for L{spwm.sip.fanout}: an agent with two contact points sends each
REGISTER through both (RFC 5626 flows) and answers the phone once.
"""

from __future__ import annotations


from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.actions import BindingChanged, Dropped, ToApp, ToTunnel
from spwm.sip.agent_proxy import AgentSipProxy
from spwm.sip.fanout import FanoutCore, side_call_id
from spwm.sip.flows import FlowTable
from spwm.sip.message import parse_message
from spwm.sip.rewrite import param
from tests.test_sip_proxy import FLOW_A, answer, register, request


def registrar_ok(data: bytes, expires: int = 600) -> bytes:
    """
    What an outbound registrar answers to a REGISTER (as the agent sent
    it): 200 with the binding, C{reg-id} and instance included, and
    C{Require: outbound}.
    """
    req = parse_message(data)
    contacts = [f"{v};expires={expires}" if "expires" not in v else v for v in req.get_all("Contact")]
    return answer(data, 200, extra=(("Contact", ", ".join(contacts)), ("Require", "outbound")))


class FanoutTests(SynchronousTestCase):
    """
    Two L{AgentSipProxy} sides on one flow table, behind a L{FanoutCore},
    with fake tunnels that are up or down and a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        flows = FlowTable()
        self.sides = [AgentSipProxy(f"tunnel-{k + 1}", "agent-1", flows=flows) for k in range(2)]
        self.up = {0: True, 1: True}
        self.core = FanoutCore(self.sides, lambda k: self.up[k], answer_wait=4.0)

    def now(self) -> float:
        return self.clock.seconds()

    def send(self, data: bytes) -> dict[str, bytes]:
        """
        A message from phone A.

        @return: what went into each tunnel, by tunnel key.
        """
        actions = self.core.from_app(FLOW_A, data, self.now())
        sent = {a.tunnel_key: a.data for a in actions if isinstance(a, ToTunnel)}
        self.assertEqual(len(sent), len([a for a in actions if isinstance(a, ToTunnel)]))
        self.flow_id = next(a.flow_id for a in actions if isinstance(a, ToTunnel)) if sent else None
        return sent

    def back(self, side: int, data: bytes) -> list[bytes]:
        """
        A message from side C{side}'s tunnel.

        @return: what phone A got.
        """
        assert self.flow_id is not None
        actions = self.core.from_side(side, self.flow_id, data, self.now())
        return [a.data for a in actions if isinstance(a, ToApp)]

    def test_register_through_both(self) -> None:
        """
        A REGISTER goes through both tunnels with the same C{+sip.instance},
        C{reg-id} 1 and 2, C{Supported: outbound}; the second copy has its
        own Call-ID and branch.
        """
        sent = self.send(register())
        self.assertEqual(sorted(sent), ["tunnel-1", "tunnel-2"])
        one, two = parse_message(sent["tunnel-1"]), parse_message(sent["tunnel-2"])
        [c1], [c2] = one.contact_addresses(), two.contact_addresses()
        self.assertEqual(param(c1.params, "reg-id"), (True, "1"))
        self.assertEqual(param(c2.params, "reg-id"), (True, "2"))
        inst = param(c1.params, "+sip.instance")
        self.assertTrue(inst[0])
        self.assertEqual(param(c2.params, "+sip.instance"), inst)
        self.assertEqual(inst[1], self.sides[0].instance_for("sip:alice@192.0.2.10:5062"))
        for msg in (one, two):
            self.assertIn("outbound", msg.get("Supported") or "")
        self.assertEqual(one.call_id, "reg-alice@x")
        self.assertEqual(two.call_id, side_call_id("reg-alice@x", 1))
        self.assertNotEqual(one.call_id, two.call_id)
        self.assertNotEqual(one.top_via, two.top_via)

    def test_both_200(self) -> None:
        """
        Both flows registered: the phone gets one 200, with its own
        Call-ID and Via, its contact once, without reg-id, instance or
        C{Require: outbound}.
        """
        sent = self.send(register())
        got = self.back(1, registrar_ok(sent["tunnel-2"]))
        self.assertEqual(len(got), 1)
        resp = parse_message(got[0])
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.call_id, "reg-alice@x")
        self.assertEqual(resp.get("Via"), "SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKreg1;rport=5062;received=192.0.2.10")
        self.assertEqual(resp.get_all("Contact"), ["<sip:alice@192.0.2.10:5062>;expires=600"])
        self.assertIsNone(resp.get("Require"))
        self.assertEqual(self.back(0, registrar_ok(sent["tunnel-1"])), [])

    def test_second_two_hundred_no_second_binding_line(self) -> None:
        """
        The 200 the phone does not get makes no second "registered" event.
        """
        sent = self.send(register())
        first = self.core.from_side(0, self.flow_id, registrar_ok(sent["tunnel-1"]), self.now())
        second = self.core.from_side(1, self.flow_id, registrar_ok(sent["tunnel-2"]), self.now())
        self.assertEqual([a.change for a in first if isinstance(a, BindingChanged)], ["registered"])
        self.assertEqual([a for a in second if isinstance(a, (BindingChanged, ToApp))], [])

    def test_one_200_other_silent(self) -> None:
        """
        One 200 and nothing from the other contact point: the 200 goes at
        once, and the transaction is forgotten later.
        """
        sent = self.send(register())
        got = self.back(0, registrar_ok(sent["tunnel-1"]))
        self.assertEqual([parse_message(g).status for g in got], [200])
        self.assertEqual(self.core.handle_timer(self.now()), [])
        self.clock.advance(40)
        actions = self.core.handle_timer(self.now())
        self.assertEqual([a for a in actions if isinstance(a, ToApp)], [])
        # one line says that the second flow is missing
        self.assertEqual(
            [a.reason for a in actions if isinstance(a, Dropped)],
            ["REGISTER through contact point 2 failed (no answer); registered through another only"],
        )
        self.assertEqual(len(self.core._registers), 0)

    def test_one_failure_then_200(self) -> None:
        """
        A failure from one contact point waits for the other, whose 200 wins.
        """
        sent = self.send(register())
        self.assertEqual(self.back(0, answer(sent["tunnel-1"], 503, "Service Unavailable")), [])
        actions = self.core.from_side(1, self.flow_id, registrar_ok(sent["tunnel-2"]), self.now())
        self.assertEqual([parse_message(a.data).status for a in actions if isinstance(a, ToApp)], [200])
        self.assertEqual(
            [a.reason for a in actions if isinstance(a, Dropped)],
            ["REGISTER through contact point 1 failed (503); registered through another only"],
        )
        self.assertEqual(self.core.counters["register failed through one contact point"], 1)

    def test_failure_after_200_logged(self) -> None:
        """
        A failure through one contact point after the other's 200: the
        phone hears nothing more, one line says which contact point.
        """
        sent = self.send(register())
        self.back(1, registrar_ok(sent["tunnel-2"]))
        actions = self.core.from_side(0, self.flow_id, answer(sent["tunnel-1"], 403, "Forbidden"), self.now())
        self.assertEqual([a for a in actions if isinstance(a, ToApp)], [])
        self.assertEqual(
            [a.reason for a in actions if isinstance(a, Dropped)],
            ["REGISTER through contact point 1 failed (403 Forbidden); registered through another only"],
        )

    def test_one_failure_other_silent(self) -> None:
        """
        A failure from one and silence from the other: the failure goes
        to the phone after C{answer_wait}.
        """
        sent = self.send(register())
        self.assertEqual(self.back(0, answer(sent["tunnel-1"], 503, "Service Unavailable")), [])
        self.assertEqual(self.core.next_deadline(), self.now() + 4.0)
        self.clock.advance(3.9)
        self.assertEqual(self.core.handle_timer(self.now()), [])
        self.clock.advance(0.2)
        got = [a.data for a in self.core.handle_timer(self.now()) if isinstance(a, ToApp)]
        self.assertEqual([parse_message(g).status for g in got], [503])
        # a late 200 is not given to the phone a second time
        self.assertEqual(self.back(1, registrar_ok(sent["tunnel-2"])), [])

    def test_both_fail_best(self) -> None:
        """
        Both fail: the phone gets the best failure (a 6xx over a 4xx, a
        4xx over a 5xx), once, with its own Call-ID.
        """
        sent = self.send(register())
        self.assertEqual(self.back(0, answer(sent["tunnel-1"], 500, "Server Error")), [])
        got = self.back(1, answer(sent["tunnel-2"], 403, "Forbidden"))
        resp = parse_message(got[0])
        self.assertEqual((len(got), resp.status, resp.call_id), (1, 403, "reg-alice@x"))
        sent = self.send(register().replace(b"CSeq: 1", b"CSeq: 2"))
        self.assertEqual(self.back(1, answer(sent["tunnel-2"], 403, "Forbidden")), [])
        got = self.back(0, answer(sent["tunnel-1"], 603, "Decline"))
        self.assertEqual([parse_message(g).status for g in got], [603])

    def test_challenge(self) -> None:
        """
        Both flows challenged: the phone gets one 401; its REGISTER with
        credentials goes through both.
        """
        sent = self.send(register())
        chal = ("WWW-Authenticate", 'Digest realm="example.org", nonce="n1"')
        self.assertEqual(self.back(1, answer(sent["tunnel-2"], 401, "Unauthorized", extra=(chal,))), [])
        got = self.back(0, answer(sent["tunnel-1"], 401, "Unauthorized", extra=(chal,)))
        self.assertEqual([parse_message(g).status for g in got], [401])
        self.assertIn("n1", parse_message(got[0]).get("WWW-Authenticate") or "")
        auth = register().replace(b"CSeq: 1", b"CSeq: 2").replace(
            b"Content-Length", b'Authorization: Digest username="alice", realm="example.org", nonce="n1", '
            b'uri="sip:example.org", response="00"\r\nContent-Length'
        )
        sent = self.send(auth)
        self.assertEqual(sorted(sent), ["tunnel-1", "tunnel-2"])
        for data in sent.values():
            self.assertIn(b'nonce="n1"', data)
        got = self.back(0, registrar_ok(sent["tunnel-1"]))
        self.assertEqual([parse_message(g).status for g in got], [200])

    def test_challenge_one_other_200(self) -> None:
        """
        A challenge from one and a 200 from the other: the 200 wins.
        """
        sent = self.send(register())
        chal = ("WWW-Authenticate", 'Digest realm="example.org", nonce="n1"')
        self.assertEqual(self.back(0, answer(sent["tunnel-1"], 401, "Unauthorized", extra=(chal,))), [])
        got = self.back(1, registrar_ok(sent["tunnel-2"]))
        self.assertEqual([parse_message(g).status for g in got], [200])

    def test_refresh_through_both(self) -> None:
        """
        A refresh (same Call-ID, next CSeq) goes through both again with
        the same reg-ids and Call-IDs as the first registration.
        """
        first = self.send(register())
        self.back(0, registrar_ok(first["tunnel-1"]))
        self.back(1, registrar_ok(first["tunnel-2"]))
        self.clock.advance(300)
        again = self.send(register().replace(b"CSeq: 1", b"CSeq: 2"))
        self.assertEqual(sorted(again), ["tunnel-1", "tunnel-2"])
        for key in again:
            a, b = parse_message(first[key]), parse_message(again[key])
            self.assertEqual(a.call_id, b.call_id)
            self.assertEqual(a.get_all("Contact"), b.get_all("Contact"))
            self.assertEqual(b.cseq, (2, "REGISTER"))
        got = self.back(1, registrar_ok(again["tunnel-2"]))
        self.assertEqual([parse_message(g).status for g in got], [200])
        self.assertEqual(self.back(0, registrar_ok(again["tunnel-1"])), [])

    def test_retransmitted_register(self) -> None:
        """
        The phone retransmits its REGISTER (UDP): it goes through both
        again; the answers that come then go to the phone from the side
        that answered first only.
        """
        sent = self.send(register())
        self.back(0, registrar_ok(sent["tunnel-1"]))
        again = self.send(register())
        self.assertEqual(sorted(again), ["tunnel-1", "tunnel-2"])
        self.assertEqual(len(self.back(0, registrar_ok(again["tunnel-1"]))), 1)
        self.assertEqual(self.back(1, registrar_ok(again["tunnel-2"])), [])

    def test_provisional_dropped(self) -> None:
        """
        A 100 Trying to a REGISTER does not reach the phone.
        """
        sent = self.send(register())
        self.assertEqual(self.back(1, answer(sent["tunnel-2"], 100, "Trying", to_tag=None)), [])

    def test_one_tunnel_down(self) -> None:
        """
        A tunnel down at REGISTER time: the REGISTER goes through the
        other only, with that contact point's reg-id, and its failure is
        answered at once.
        """
        self.up[0] = False
        sent = self.send(register())
        self.assertEqual(list(sent), ["tunnel-2"])
        [c] = parse_message(sent["tunnel-2"]).contact_addresses()
        self.assertEqual(param(c.params, "reg-id"), (True, "2"))
        got = self.back(1, answer(sent["tunnel-2"], 500, "Server Error"))
        self.assertEqual([parse_message(g).status for g in got], [500])

    def test_phone_with_own_reg_id(self) -> None:
        """
        A phone that registers with RFC 5626 itself is left alone: one
        tunnel, its REGISTER untouched by us.
        """
        sent = self.send(register(contact_params=';reg-id=1;+sip.instance="<urn:uuid:1>"'))
        self.assertEqual(list(sent), ["tunnel-1"])
        self.assertNotIn(b"outbound", sent["tunnel-1"])

    def test_new_requests_first_live(self) -> None:
        """
        New requests go through the first live contact point, the second
        when the first is down; the rest of a call follows its side.
        """
        invite = request("INVITE", "sip:bob@example.org", call_id="c1", extra=("Contact: <sip:alice@192.0.2.10:5062>",))
        self.assertEqual(list(self.send(invite)), ["tunnel-1"])
        self.up[0] = False
        invite2 = request("INVITE", "sip:bob@example.org", call_id="c2", extra=("Contact: <sip:alice@192.0.2.10:5062>",))
        self.assertEqual(list(self.send(invite2)), ["tunnel-2"])
        self.up[0] = True
        bye = request("BYE", "sip:bob@192.0.2.99", call_id="c2", to="<sip:bob@example.org>;tag=b", cseq=2)
        self.assertEqual(list(self.send(bye)), ["tunnel-2"])

    def test_new_request_where_registered(self) -> None:
        """
        A phone whose REGISTER only the second contact point took (the
        first answered 503: its registrar was out of reach) calls through
        the second, though the first is up; a phone registered through
        neither goes through the first.
        """
        sent = self.send(register())
        self.back(0, answer(sent["tunnel-1"], 503, "Service Unavailable"))
        self.back(1, registrar_ok(sent["tunnel-2"]))
        self.assertTrue(self.sides[1].registered("sip:alice@example.org"))
        self.assertFalse(self.sides[0].registered("sip:alice@example.org"))
        invite = request("INVITE", "sip:bob@example.org", call_id="c1", extra=("Contact: <sip:alice@192.0.2.10:5062>",))
        self.assertEqual(list(self.send(invite)), ["tunnel-2"])
        other = request(
            "INVITE",
            "sip:bob@example.org",
            from_="<sip:carol@example.org>;tag=fc",
            call_id="c2",
            extra=("Contact: <sip:carol@192.0.2.10:5062>",),
        )
        self.assertEqual(list(self.send(other)), ["tunnel-1"])
        # the binding gone (unregistered): the first live side again
        sent = self.send(register(expires=0))
        self.back(1, registrar_ok(sent["tunnel-2"], expires=0))
        self.assertFalse(self.sides[1].registered("sip:alice@example.org"))
        invite3 = request("INVITE", "sip:bob@example.org", call_id="c3", extra=("Contact: <sip:alice@192.0.2.10:5062>",))
        self.assertEqual(list(self.send(invite3)), ["tunnel-1"])

    def test_incoming_answer_follows_side(self) -> None:
        """
        A request from a tunnel is answered by the phone through the same
        tunnel.
        """
        self.send(register())
        invite = request(
            "INVITE",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/TCP 203.0.113.6:5060;branch=z9hG4bKop1",
            call_id="in-1",
            extra=("Contact: <sip:bob@198.51.100.9>",),
        )
        got = self.back(1, invite)
        self.assertEqual(len(got), 1)
        sent = self.send(answer(got[0], 200))
        self.assertEqual(list(sent), ["tunnel-2"])



    def test_expiry_reported_once(self) -> None:
        """
        A binding the phone does not refresh expires in both sides' views:
        one "expired" event.
        """
        sent = self.send(register())
        self.back(0, registrar_ok(sent["tunnel-1"]))
        self.back(1, registrar_ok(sent["tunnel-2"]))
        self.clock.advance(601)
        events = [a for a in self.core.handle_timer(self.now()) if isinstance(a, BindingChanged)]
        self.assertEqual([(e.change, e.contact) for e in events], [("expired", "sip:alice@192.0.2.10:5062")])
