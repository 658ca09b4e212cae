"""
Tests for the agent without a tunnel: C{503} with C{Retry-After} at once
(L{spwm.tap.parts.AgentTunnelHandle}), and C{--tunnel on-demand}
(L{spwm.tunnel.service.OnDemandTunnel}) with a fake clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.flows import Flow
from spwm.sip.message import parse_message
from spwm.sip.actions import ToApp, ToTunnel
from spwm.sip.agent_proxy import AgentSipProxy
from spwm.tap.parts import AgentTunnelHandle
from spwm.tunnel.protocol import AgentTunnelFactory, ContactTunnelFactory
from spwm.tunnel.service import AgentTunnelService, OnDemandTunnel, backoff
from tests.test_agent_state import registered_agent
from tests.test_sip_proxy import answer, register, request
from tests.test_tunnel_protocol import RecordingApp
from tests.test_tunnel_service import FakeEndpoint

PHONE = Flow("udp", ("127.0.0.1", 5060), ("192.0.2.10", 5062), None)


class _Agent:
    """
    The agent's SIP core, its tunnel handle and the tunnel application in
    one, as C{spwm.tap.agent.makeService} joins them.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.handle = AgentTunnelHandle(clock, hold_time=10.0)
        self.core = AgentSipProxy(self.handle, "agent-1")
        self.to_app: list[bytes] = []
        self.handle.answer = lambda fid, data: self.run(self.core.from_tunnel(fid, data, clock.seconds()))
        self.on_demand: OnDemandTunnel | None = None

    def run(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, ToApp):
                self.to_app.append(action.data)
            elif isinstance(action, ToTunnel):
                action.tunnel_key.send_sip(action.flow_id, action.data)

    def from_phone(self, data: bytes) -> None:
        self.run(self.core.from_app(PHONE, data, self.clock.seconds()))

    # the tunnel application
    def tunnel_established(self, tunnel: Any) -> None:
        self.handle.tunnel_established(tunnel)

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        self.handle.tunnel_lost(tunnel, reason)

    def datagram_received(self, tunnel: Any, channel_id: int, data: bytes, component: int) -> None:
        pass

    def sip_received(self, tunnel: Any, flow_id: int, data: bytes) -> None:
        if self.on_demand is not None:
            self.on_demand.touch()
        self.run(self.core.from_tunnel(flow_id, data, self.clock.seconds()))


class NoTunnelTests(SynchronousTestCase):
    """
    While the agent has no tunnel, a new request gets 503 at once.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.agent = _Agent(self.clock)
        self.agent.handle.retry_after = lambda: 7

    def test_request_gets_503_with_retry_after(self) -> None:
        """
        A REGISTER gets C{503} with C{Retry-After} from the agent's answer,
        a To tag and the phone's Via; one log line says why.
        """
        with capturedLogs() as events:
            self.agent.from_phone(register())
            self.agent.from_phone(register(branch="z9hG4bKreg2"))
        self.assertEqual(len(self.agent.to_app), 2)
        resp = parse_message(self.agent.to_app[0])
        self.assertEqual(resp.status, 503)
        self.assertEqual(resp.get("retry-after"), "7")
        self.assertIn("z9hG4bKreg1", resp.get("via"))
        self.assertIn("tag=", resp.get("to"))
        self.assertEqual(self.agent.handle.counters["refused_no_tunnel"], 2)
        lines = [e for e in events if "answered 503" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)

    def test_options_to_the_agent(self) -> None:
        """
        A phone's OPTIONS keepalive to the agent is answered 503 with the
        Retry-After while no tunnel is up (not 200: that would hide the
        outage), 200 once one is, and 200 with an on-demand tunnel down
        (its idle state), without starting it.
        """
        from spwm.sip.names import ProxyNames
        from spwm.testing.tunnel import FakeTunnel

        self.agent.core.names = ProxyNames([("127.0.0.1", 5060)])
        ping = request("OPTIONS", "sip:127.0.0.1:5060", to="<sip:127.0.0.1:5060>")
        self.agent.from_phone(ping)
        resp = parse_message(self.agent.to_app.pop())
        self.assertEqual((resp.status, resp.get("retry-after")), (503, "7"))
        tunnel = FakeTunnel()
        self.agent.handle.current = tunnel
        self.agent.from_phone(ping)
        self.assertEqual(parse_message(self.agent.to_app.pop()).status, 200)
        self.agent.handle.current = None

        class Idle:
            wanted = 0

            def want(self) -> bool:
                self.wanted += 1
                return True

        self.agent.handle.on_demand = idle = Idle()  # type: ignore[assignment]
        self.agent.from_phone(ping)
        self.assertEqual(parse_message(self.agent.to_app.pop()).status, 200)
        self.assertEqual((idle.wanted, tunnel.sip_sent), (0, []))

    def test_ack_and_responses_dropped_and_counted(self) -> None:
        """
        An ACK is never answered and a response from a phone is dropped;
        both are counted.
        """
        ack = request(
            "ACK",
            "sip:bob@example.org",
            via="SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKack",
            from_="<sip:alice@example.org>;tag=a",
            to="<sip:bob@example.org>;tag=b",
            call_id="c1@x",
            cseq=1,
        )
        self.agent.from_phone(ack)
        self.agent.handle.send_sip(1, answer(register(), 200))
        self.assertEqual(self.agent.to_app, [])
        self.assertEqual(self.agent.handle.counters["acks_dropped"], 1)
        self.assertEqual(self.agent.handle.counters["responses_dropped"], 1)
        self.assertEqual(self.agent.handle.dropped, 2)

    def test_held_while_resuming(self) -> None:
        """
        While the lost session is being resumed, requests and responses
        from phones wait (at most C{resume_hold} seconds) instead of
        getting 503 or being dropped, and go on the new connection in
        their order; past the hold, a request gets 503.
        """
        from spwm.testing.tunnel import FakeTunnel

        resuming = [True]
        self.agent.handle.resuming = lambda: resuming[0]
        self.agent.handle.resume_hold = 2.0
        bye = request(
            "BYE",
            "sip:bob@example.org",
            via="SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKbye",
            from_="<sip:alice@example.org>;tag=a",
            to="<sip:bob@example.org>;tag=b",
            call_id="c1@x",
            cseq=2,
        )
        self.agent.handle.send_sip(1, bye)
        self.agent.handle.send_sip(1, answer(register(), 200))
        # the phone retransmits its BYE: the copy does not wait twice
        self.agent.handle.send_sip(1, bye)
        self.assertEqual(self.agent.handle.counters["held_duplicates"], 1)
        self.clock.advance(1.9)
        self.assertEqual((self.agent.to_app, self.agent.handle.dropped), ([], 0))
        self.assertEqual(self.agent.handle.status()["held_now"], 2)
        tunnel = FakeTunnel("s1")
        self.agent.handle.tunnel_established(tunnel)
        self.assertEqual([d for _, d in tunnel.sip_sent], [bye, answer(register(), 200)])
        self.assertEqual(self.agent.handle.counters["held_resuming"], 3)
        # lost again; this time the resumption takes too long
        self.agent.handle.tunnel_lost(tunnel, "cut")
        self.agent.from_phone(register())
        self.clock.advance(2.1)
        [resp] = [parse_message(d) for d in self.agent.to_app]
        self.assertEqual(resp.status, 503)
        # not resuming (no session to resume): 503 at once, as before
        resuming[0] = False
        self.agent.from_phone(register(branch="z9hG4bKreg2"))
        self.assertEqual(len(self.agent.to_app), 2)
        # the resumption's own bound on messages, above the on-demand one
        resuming[0] = True
        self.agent.handle.max_held, self.agent.handle.resume_max_held = 2, 5
        for n in range(7):
            self.agent.from_phone(register(branch=f"z9hG4bKr{n}"))
        self.assertEqual((len(self.agent.to_app), self.agent.handle.counters["held_overflow"]), (4, 2))

    def _carrying(self) -> Any:
        from spwm.testing.tunnel import FakeTunnel

        self.agent.handle.resuming = lambda: True
        self.agent.handle.carry([(7, 1, b"INVITE in flight"), (8, 2, b"SIP/2.0 200 OK in flight")], 5)
        # a second loss before the answer (a connection that carried a
        # fresh session's numbers) changes nothing
        self.agent.handle.carry([(0, 1, b"OPTIONS fresh")], 0)
        self.agent.handle.send_sip(1, b"BYE before the connection")
        tunnel = FakeTunnel("s1")
        self.agent.handle.tunnel_established(tunnel)
        self.agent.handle.send_sip(1, b"ACK before the answer")
        return tunnel

    def test_carried_after_a_resumption_with_the_calls(self) -> None:
        """
        SIP the session's last connection took with it (sent, not
        acknowledged) is kept while the session is resumed, with the
        number the agent expected next from the contact point there (for
        the offer); on the new connection everything waits for the
        resumption's answer, and when the contact point kept the calls
        the carried SIP goes first, then what the phones sent meanwhile,
        in order, and then SIP goes straight on.  Without the contact
        point's C{sip_next} (an older one) all of it goes.
        """
        tunnel = self._carrying()
        self.assertEqual((tunnel.sip_sent, self.agent.handle.carried_next), ([], 5))
        self.assertEqual(
            (self.agent.handle.status()["carried_now"], self.agent.handle.counters["held_carried"]), (2, 2)
        )
        self.agent.handle.resume_settled(True, None)
        self.assertEqual(
            [d for _, d in tunnel.sip_sent],
            [b"INVITE in flight", b"SIP/2.0 200 OK in flight", b"BYE before the connection", b"ACK before the answer"],
        )
        self.agent.handle.send_sip(1, b"BYE after")
        self.assertEqual(tunnel.sip_sent[-1], (1, b"BYE after"))
        self.assertEqual((self.agent.handle.status()["carried_now"], self.agent.to_app), (0, []))
        self.assertIsNone(self.agent.handle.carried_next)

    def test_carried_but_what_the_contact_point_took(self) -> None:
        """
        The contact point's answer says what it took of the lost
        connection's SIP (C{sip_next}: it had read message 7 and not yet
        acknowledged it): only message 8 goes again, so the far end gets
        no copy.
        """
        tunnel = self._carrying()
        self.agent.handle.resume_settled(True, 8)
        self.assertEqual(
            [d for _, d in tunnel.sip_sent],
            [b"SIP/2.0 200 OK in flight", b"BYE before the connection", b"ACK before the answer"],
        )
        self.assertEqual(self.agent.handle.counters["carried_taken"], 1)

    def test_carried_dropped_without_the_calls(self) -> None:
        """
        A contact point that resumed only the registrations (it restarted,
        or the window was over there) has no calls for the carried SIP:
        it is dropped, and what the phones sent meanwhile goes.  With no
        resumption under way nothing is carried.
        """
        tunnel = self._carrying()
        self.agent.handle.resume_settled(False, 9)
        self.assertEqual([d for _, d in tunnel.sip_sent], [b"BYE before the connection", b"ACK before the answer"])
        self.assertEqual(self.agent.handle.counters["carried_dropped"], 2)
        self.agent.handle.tunnel_lost(tunnel, "cut")
        self.agent.handle.resuming = lambda: False
        self.agent.handle.carry([(9, 1, b"INVITE lost")], 3)
        self.assertEqual((self.agent.handle.status()["carried_now"], self.agent.handle.carried_next), (0, None))

    def test_carried_unanswered(self) -> None:
        """
        A resumption that is not answered within C{resume_hold}: the SIP
        held meanwhile is answered 503 as any held SIP, the carried is
        dropped, and new SIP goes on the connection.
        """
        self.agent.handle.resume_hold = 2.0
        tunnel = self._carrying()
        self.clock.advance(2.1)
        self.assertEqual((self.agent.handle.counters["carried_dropped"], self.agent.handle.carried_next), (2, None))
        self.assertEqual(self.agent.handle.status()["held_now"], 0)
        self.agent.handle.send_sip(1, b"BYE after")
        self.assertEqual(tunnel.sip_sent, [(1, b"BYE after")])

    def test_carried_through_a_second_cut(self) -> None:
        """
        The new connection breaks before the answer: the carried and the
        held SIP wait on for the next one.
        """
        from spwm.testing.tunnel import FakeTunnel

        tunnel = self._carrying()
        self.agent.handle.tunnel_lost(tunnel, "cut")
        again = FakeTunnel("s2")
        self.agent.handle.tunnel_established(again)
        self.assertEqual((tunnel.sip_sent, again.sip_sent), ([], []))
        self.agent.handle.resume_settled(True, 7)
        self.assertEqual(len(again.sip_sent), 4)

    def test_nothing_carried_waits_through_a_second_cut(self) -> None:
        """
        The last connection broke with nothing in flight; the new one
        breaks before the resumption's answer: what the phones sent once
        it was up waited for the answer and goes, once, on the next
        connection (sent on the broken one, it would have been lost with
        it: a phone over TCP does not send it again).
        """
        from spwm.testing.tunnel import FakeTunnel

        self.agent.handle.resuming = lambda: True
        self.agent.handle.carry([], 4)
        first = FakeTunnel("s1")
        self.agent.handle.tunnel_established(first)
        self.agent.handle.send_sip(1, b"BYE before the answer")
        self.agent.handle.tunnel_lost(first, "cut")
        self.agent.handle.carry([], 0)
        again = FakeTunnel("s2")
        self.agent.handle.tunnel_established(again)
        self.agent.handle.send_sip(1, b"ACK before the answer")
        self.assertEqual((first.sip_sent, again.sip_sent), ([], []))
        self.agent.handle.resume_settled(True, 4)
        self.assertEqual(
            (first.sip_sent, again.sip_sent),
            ([], [(1, b"BYE before the answer"), (1, b"ACK before the answer")]),
        )
        self.agent.handle.send_sip(1, b"BYE after")
        self.assertEqual(again.sip_sent[-1], (1, b"BYE after"))
        self.assertEqual((self.agent.handle.dropped, self.agent.to_app), (0, []))

    def test_retry_after_from_the_reconnect_schedule(self) -> None:
        """
        The service's C{retry_after} is the time to the next attempt, at
        least 1 and at most the cap.
        """
        endpoint = FakeEndpoint()
        service = AgentTunnelService(
            endpoint,
            AgentTunnelFactory(RecordingApp(), self.clock, "agent-1"),
            self.clock,
            description="contact.example.test:443",
            policy=backoff(initial=4, factor=2, cap=120, rng=lambda: 1.0),
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(service.retry_after(), 1)  # attempt under way
        endpoint.attempts[-1][1].errback(ConnectionRefusedError("nobody home"))
        self.assertEqual(service.retry_after(), 4)
        self.clock.advance(2.5)
        self.assertEqual(service.retry_after(), 2)
        self.clock.advance(1.5)
        for _ in range(5):
            endpoint.attempts[-1][1].errback(ConnectionRefusedError("nobody home"))
            self.clock.advance(service.next_attempt_at - self.clock.seconds())
        endpoint.attempts[-1][1].errback(ConnectionRefusedError("nobody home"))
        self.assertEqual(service.retry_after(), 30)


class OnDemandTests(SynchronousTestCase):
    """
    C{--tunnel on-demand}: up while an application needs it.
    """

    idle = 30.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.agent = _Agent(self.clock)
        self.endpoint = FakeEndpoint()
        self.service = AgentTunnelService(
            self.endpoint,
            AgentTunnelFactory(self.agent, self.clock, "agent-1"),
            self.clock,
            description="contact.example.test:443",
            policy=backoff(initial=1, factor=2, cap=8, rng=lambda: 1.0),
            attempt_failed=self.agent.handle.release_held,
        )
        self.ended: list[int] = []
        self.on_demand = OnDemandTunnel(
            self.service, self.clock, self.agent.core.busy, self.idle, before_close=lambda: self.ended.append(1)
        )
        self.agent.on_demand = self.on_demand
        self.agent.handle.on_demand = self.on_demand
        self.agent.handle.retry_after = self.service.retry_after
        self.on_demand.startService()
        self.pump: Any = None

    def tearDown(self) -> None:
        self.on_demand.stopService()
        if self.pump is not None:
            self.pump.flush()

    def connect(self) -> RecordingApp:
        """
        Complete the pending attempt with a contact point in memory.
        """
        factory, d = self.endpoint.attempts[-1]
        contact_app = RecordingApp()
        server = ContactTunnelFactory(contact_app, self.clock).buildProtocol(None)
        client = factory.buildProtocol(None)
        self.pump = iosim.connect(
            server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False),
            greet=False, clock=self.clock,
        )
        d.callback(client)
        self.pump.flush()
        return contact_app

    def advance(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            if self.pump is not None:
                self.pump.flush()

    def test_lifecycle(self) -> None:
        """
        No tunnel at start; the first REGISTER connects and waits for the
        tunnel, then goes through; a valid registration keeps the tunnel
        up; after it expired plus the idle time the tunnel closes with
        go-away (the session is forgotten, not kept for resumption); the
        next message connects again.
        """
        self.advance(100)
        self.assertEqual(self.endpoint.attempts, [])
        self.agent.from_phone(register(expires=120))
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertEqual(self.agent.to_app, [])
        contact = self.connect()
        [(_, flow_id, data)] = [c for c in contact.calls if c[0] == "sip"]
        self.assertTrue(data.startswith(b"REGISTER "))
        contact.tunnel.send_sip(
            flow_id, answer(data, 200, extra=(("Contact", "<sip:alice@192.0.2.10:5062>;expires=120"),))
        )
        self.pump.flush()
        self.assertEqual(parse_message(self.agent.to_app[-1]).status, 200)
        self.assertTrue(self.agent.core.busy(self.clock.seconds()))
        self.advance(119)
        self.assertTrue(self.service.tunnel.is_open)
        self.advance(self.idle - 2)
        self.assertTrue(self.service.tunnel.is_open)
        self.assertEqual(self.on_demand.closes, 0)
        self.advance(4)
        self.assertEqual(self.on_demand.closes, 1)
        self.assertIsNone(self.service.tunnel)
        self.assertFalse(self.service.running)
        self.assertEqual(self.ended, [1])
        self.assertIsNotNone(contact.tunnel.go_away_info)
        self.assertEqual(contact.calls[-1][0], "lost")
        # Quiet now: no attempt while nothing needs the tunnel.
        self.advance(60)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.agent.from_phone(register(branch="z9hG4bKreg2"))
        self.assertEqual(len(self.endpoint.attempts), 2)
        contact = self.connect()
        self.assertEqual([c[0] for c in contact.calls], ["established", "sip"])

    def test_restored_registration_starts_it(self) -> None:
        """
        A registration taken back from the agent's state file (valid at
        the start) needs the tunnel at once: started, it connects.
        """
        self.on_demand.stopService()
        self.assertEqual(self.endpoint.attempts, [])
        core, _ = registered_agent(self.clock.seconds())
        self.assertEqual(self.agent.core.import_state(core.export_state(self.clock.seconds()), self.clock.seconds()), 1)
        self.on_demand.startService()
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_failed_connection_answers_503(self) -> None:
        """
        When the connection the first request started fails, that request
        gets 503 with Retry-After (the time to the next attempt); while the
        agent waits to retry, new requests get 503 at once.
        """
        self.agent.from_phone(register())
        self.assertEqual(self.agent.to_app, [])
        self.endpoint.attempts[-1][1].errback(ConnectionRefusedError("nobody home"))
        [resp] = [parse_message(d) for d in self.agent.to_app]
        self.assertEqual(resp.status, 503)
        self.assertEqual(resp.get("retry-after"), "1")
        self.agent.from_phone(register(branch="z9hG4bKreg2"))
        self.assertEqual(len(self.agent.to_app), 2)

    def test_hold_is_bounded_in_time(self) -> None:
        """
        A request waits for the tunnel at most the hold time, then gets 503.
        """
        self.agent.from_phone(register())
        self.clock.advance(9.9)
        self.assertEqual(self.agent.to_app, [])
        self.clock.advance(0.2)
        [resp] = [parse_message(d) for d in self.agent.to_app]
        self.assertEqual(resp.status, 503)

    def test_hold_is_bounded_in_size(self) -> None:
        """
        Past C{max_held} waiting messages, more get 503 at once.
        """
        self.agent.handle.max_held = 3
        for n in range(5):
            self.agent.from_phone(register(branch=f"z9hG4bKr{n}"))
        self.assertEqual(len(self.agent.to_app), 2)
        self.assertEqual(self.agent.handle.counters["held_overflow"], 2)
        contact = self.connect()
        self.assertEqual(len([c for c in contact.calls if c[0] == "sip"]), 3)

    def test_dialog_keeps_the_tunnel(self) -> None:
        """
        An established dialog keeps the tunnel up past the idle time even
        without SIP; its BYE lets it close after the idle time.
        """
        invite = request(
            "INVITE",
            "sip:bob@example.org",
            via="SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKinv;rport",
            from_="<sip:alice@example.org>;tag=a",
            to="<sip:bob@example.org>",
            call_id="call-1@x",
            extra=("Contact: <sip:alice@192.0.2.10:5062>",),
        )
        self.agent.from_phone(invite)
        contact = self.connect()
        [(_, flow_id, data)] = [c for c in contact.calls if c[0] == "sip"]
        contact.tunnel.send_sip(flow_id, answer(data, 200, to_tag="b"))
        self.pump.flush()
        self.advance(3 * self.idle)
        self.assertTrue(self.service.tunnel.is_open)
        bye = request(
            "BYE",
            "sip:bob@192.0.2.20",
            via="SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKbye;rport",
            from_="<sip:alice@example.org>;tag=a",
            to="<sip:bob@example.org>;tag=b",
            call_id="call-1@x",
            cseq=2,
        )
        self.agent.from_phone(bye)
        self.pump.flush()
        self.advance(self.idle + 2)
        self.assertEqual(self.on_demand.closes, 1)


class BusyTests(SynchronousTestCase):
    """
    L{AgentSipProxy.busy}: what keeps an on-demand tunnel up.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.agent = _Agent(self.clock)
        self.sent: list[tuple[int, bytes]] = []
        self.agent.handle.current = self

    def send_sip(self, flow_id: int, data: bytes) -> bool:
        self.sent.append((flow_id, data))
        return True

    congested = False

    def registered(self, expires: int) -> None:
        self.agent.from_phone(register(expires=expires, branch=f"z9hG4bK{len(self.sent)}"))
        flow_id, data = self.sent[-1]
        contact = () if expires == 0 else (("Contact", f"<sip:alice@192.0.2.10:5062>;expires={expires}"),)
        self.agent.run(self.agent.core.from_tunnel(flow_id, answer(data, 200, extra=contact), self.clock.seconds()))

    def test_registration_until_expiry(self) -> None:
        """
        Not busy at first; busy while a registration through the agent is
        valid; not busy once it expired.
        """
        core = self.agent.core
        self.assertFalse(core.busy(self.clock.seconds()))
        self.registered(60)
        self.assertTrue(core.busy(self.clock.seconds()))
        self.clock.advance(59.9)
        self.assertTrue(core.busy(self.clock.seconds()))
        self.clock.advance(0.2)
        self.assertFalse(core.busy(self.clock.seconds()))

    def test_unregistered(self) -> None:
        """
        A registration removed (C{Expires: 0} answered 200 without the
        contact) stops keeping the tunnel at once.
        """
        self.registered(60)
        self.registered(0)
        self.assertFalse(self.agent.core.busy(self.clock.seconds()))

    def test_refused_registration(self) -> None:
        """
        A REGISTER answered 401 does not make the agent busy.
        """
        self.agent.from_phone(register(expires=60))
        flow_id, data = self.sent[-1]
        self.agent.run(self.agent.core.from_tunnel(flow_id, answer(data, 401, "Unauthorized"), self.clock.seconds()))
        self.assertFalse(self.agent.core.busy(self.clock.seconds()))


class AssemblyTests(SynchronousTestCase):
    """
    C{spwm-agent --tunnel on-demand} as L{build_agent} assembles it.
    """

    def test_no_connection_at_start(self) -> None:
        """
        With --tunnel on-demand the tunnel service is not started with the
        agent but by the on-demand part, which does not connect at start;
        the status says the mode.  With --tunnel always the tunnel service
        starts with the agent.
        """
        from twisted.internet.testing import MemoryReactorClock

        from spwm.tap import agent
        from spwm.tap.assembly import build_agent

        for mode in ("on-demand", "always"):
            reactor = MemoryReactorClock()
            options = agent.Options()
            options.parseOptions(
                ["--contact", "192.0.2.1:443", "--plaintext", "--tunnel", mode, "--sip-listen", "127.0.0.1:5999"]
            )
            built = build_agent(options.config, reactor)
            children = list(built.service)
            if mode == "always":
                self.assertIn(built.tunnel_service, children)
                continue
            self.assertNotIn(built.tunnel_service, children)
            self.assertIn(built.on_demand, children)
            built.on_demand.startService()
            reactor.advance(5)
            self.assertFalse(built.tunnel_service.running)
            self.assertEqual(reactor.tcpClients, [])
            self.assertEqual(built.status.document()["tunnel"]["mode"], "on-demand")
            built.on_demand.stopService()

    def test_bad_mode(self) -> None:
        """
        A --tunnel other than always or on-demand is refused in one line.
        """
        from spwm.config import ConfigExit
        from spwm.tap import agent

        with self.assertRaises(ConfigExit) as caught:
            agent.Options().parseOptions(["--tunnel", "sometimes"])
        self.assertIn("--tunnel: must be always or on-demand, not 'sometimes'", str(caught.exception))
