"""
Tests for L{spwm.sip.transport}: the Twisted glue around the SIP proxy
cores, with fake UDP transports, L{StringTransport} and a L{Clock}; no
sockets, no reactor.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address
from twisted.internet.error import InvalidAddressError
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.flows import Flow
from spwm.sip.message import parse_message
from spwm.sip.actions import OperatorProxy
from spwm.sip.agent_proxy import AgentSipProxy
from spwm.sip.contact_proxy import ContactSipProxy
from spwm.testing.tunnel import FakeTunnel
from spwm.sip.transport import (
    OVERLOAD_AFTER,
    OVERLOAD_HOLD,
    AgentSipRunner,
    ContactSipRunner,
    SipStreamFactory,
    SipTrace,
    SipUdpProtocol,
)
from tests.test_sip_proxy import SECRET, answer, register, request


class FakeUdpTransport:
    """
    Records datagrams written to it.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = IPv4Address("UDP", host, port)
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def getHost(self) -> IPv4Address:
        return self.host

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))


class RecordingSocket(socket.socket):
    """
    A UDP socket (never bound) whose C{sendto} records instead of sending.
    """

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_DGRAM)
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.error: OSError | None = None

    def sendto(self, data: Any, addr: Any) -> int:  # type: ignore[override]
        if self.error is not None:
            raise self.error
        self.sent.append((data, addr))
        return len(data)


class CheckingUdpTransport(FakeUdpTransport):
    """
    Like Twisted's C{udp.Port}: refuses a host that is not an IP address,
    and hands out its socket.
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.socket = RecordingSocket()

    def getHandle(self) -> socket.socket:
        return self.socket

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if not isIPAddress(addr[0]) and not isIPv6Address(addr[0]):
            raise InvalidAddressError(addr[0], "not an IP address")
        super().write(data, addr)


def stream(
    factory: SipStreamFactory, local: tuple[str, int], peer: tuple[str, int]
) -> tuple[Any, StringTransport]:
    proto = factory.buildProtocol(None)
    tr = StringTransport(
        hostAddress=IPv4Address("TCP", *local), peerAddress=IPv4Address("TCP", *peer)
    )
    proto.makeConnection(tr)
    return proto, tr


class AgentRunnerTests(SynchronousTestCase):
    """
    Tests for L{AgentSipRunner} with L{SipUdpProtocol} and
    L{SipStreamProtocol}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.tunnel = FakeTunnel()
        self.core = AgentSipProxy(self.tunnel, "agent-1")
        self.runner = AgentSipRunner(self.core, self.clock)

    def test_udp_round_trip(self) -> None:
        """
        A REGISTER datagram goes into the tunnel; the answer from the tunnel
        is written back from the same socket to the application's address;
        the flow timer is armed on the clock.
        """
        udp = SipUdpProtocol(self.runner)
        tr = FakeUdpTransport("192.0.2.1", 5060)
        udp.makeConnection(tr)
        udp.datagramReceived(register(), ("192.0.2.10", 5062))
        [(fid, data)] = self.tunnel.sip_sent
        self.runner.sip_received(self.tunnel, fid, answer(data, 200))
        [(out, addr)] = tr.written
        self.assertEqual(addr, ("192.0.2.10", 5062))
        self.assertEqual(parse_message(out).status, 200)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 100 + 300)
        self.clock.advance(301)
        self.assertIsNone(self.core.flows.lookup(fid, self.clock.seconds()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_udp_send_checks_a_host_once(self) -> None:
        """
        The first datagram to a host goes through the transport's C{write}
        (Twisted's address checks); later ones to that host through the
        socket's own C{sendto}. A host name is refused by C{write} every
        time and never reaches C{sendto}. A C{sendto} that fails is left
        to C{write}.
        """
        udp = SipUdpProtocol(self.runner)
        tr = CheckingUdpTransport("192.0.2.1", 5060)
        self.addCleanup(tr.socket.close)
        udp.makeConnection(tr)
        udp.send(b"one", ("192.0.2.10", 5062))
        udp.send(b"two", ("192.0.2.10", 5064))
        udp.send(b"three", ("192.0.2.10", 5062))
        self.assertEqual(tr.written, [(b"one", ("192.0.2.10", 5062))])
        self.assertEqual(
            tr.socket.sent, [(b"two", ("192.0.2.10", 5064)), (b"three", ("192.0.2.10", 5062))]
        )
        for _ in range(2):
            self.assertRaises(InvalidAddressError, udp.send, b"four", ("sip.example.com", 5060))
        self.assertEqual(len(tr.written) + len(tr.socket.sent), 3)
        tr.socket.error = BlockingIOError()
        udp.send(b"five", ("192.0.2.10", 5062))
        self.assertEqual(tr.written[-1], (b"five", ("192.0.2.10", 5062)))

    def test_timer_not_moved_later(self) -> None:
        """
        A message that makes a flow live longer does not move the armed
        timer: it fires at the first deadline, finds nothing due and is
        armed again for the flow's new end, where the flow expires.
        """
        udp = SipUdpProtocol(self.runner)
        udp.makeConnection(FakeUdpTransport("192.0.2.1", 5060))
        udp.datagramReceived(request("OPTIONS", "sip:bob@example.org"), ("192.0.2.10", 5062))
        [(fid, _)] = self.tunnel.sip_sent
        [first] = self.clock.getDelayedCalls()
        self.assertEqual(first.getTime(), 100 + 300)
        self.clock.advance(50)
        udp.datagramReceived(
            request("OPTIONS", "sip:bob@example.org", cseq=2), ("192.0.2.10", 5062)
        )
        self.assertEqual(self.clock.getDelayedCalls(), [first])
        self.clock.advance(250)
        self.assertIsNotNone(self.core.flows.lookup(fid, self.clock.seconds()))
        [second] = self.clock.getDelayedCalls()
        self.assertEqual(second.getTime(), 150 + 300)
        self.clock.advance(50)
        self.assertIsNone(self.core.flows.lookup(fid, self.clock.seconds()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wildcard_socket_names_the_address_reached(self) -> None:
        """
        On a socket bound to every address (C{--sip-listen 0.0.0.0:5060}),
        the C{Record-Route} (and later C{Via}s) the agent adds name the address the
        application reached it on (the kernel's source address towards
        the application), never C{0.0.0.0}; the answer leaves from the
        same wildcard socket.
        """
        udp = SipUdpProtocol(self.runner)
        tr = FakeUdpTransport("0.0.0.0", 5060)
        udp.makeConnection(tr)
        udp.datagramReceived(
            request(
                "INVITE",
                "sip:bob@example.org",
                via="SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKinv1;rport",
            ),
            ("127.0.0.1", 5062),
        )
        [(fid, data)] = self.tunnel.sip_sent
        sent = parse_message(data)
        self.assertNotIn(b"0.0.0.0", data)
        self.assertIn("@127.0.0.1:5060;", sent.get_all("Record-Route")[0])
        self.runner.sip_received(self.tunnel, fid, answer(data, 180, "Ringing"))
        [(out, addr)] = tr.written
        self.assertEqual(addr, ("127.0.0.1", 5062))
        self.assertEqual(parse_message(out).status, 180)

    def test_congested_tunnel(self) -> None:
        """
        The runner tells the core whether the tunnel is congested: while
        it is, a new request from a phone is answered C{503} and does not
        reach the tunnel; the log line says it was refused with 503, not
        that it was dropped.
        """
        udp = SipUdpProtocol(self.runner)
        tr = FakeUdpTransport("192.0.2.1", 5060)
        udp.makeConnection(tr)
        self.tunnel.congested = True
        with capturedLogs() as events:
            udp.datagramReceived(request("INVITE", "sip:bob@example.org"), ("192.0.2.10", 5062))
        self.assertEqual(self.tunnel.sip_sent, [])
        [(out, addr)] = tr.written
        self.assertEqual(parse_message(out).status, 503)
        self.assertEqual(_lines(events), ["tunnel congested: new request refused with 503"])
        self.tunnel.congested = False
        udp.datagramReceived(request("INVITE", "sip:bob@example.org"), ("192.0.2.10", 5062))
        self.assertEqual(len(self.tunnel.sip_sent), 1)

    def test_udp_garbage(self) -> None:
        """
        A garbage datagram neither raises nor reaches the tunnel.
        """
        udp = SipUdpProtocol(self.runner)
        udp.makeConnection(FakeUdpTransport("192.0.2.1", 5060))
        with capturedLogs() as events:
            udp.datagramReceived(b"\x00\xffINVITE", ("192.0.2.10", 5062))
        self.assertEqual(self.tunnel.sip_sent, [])
        self.assertEqual(
            [line.split(":")[0] for line in _lines(events)],
            ["SIP message dropped"],
        )

    def test_udp_stun_binding(self) -> None:
        """
        A STUN Binding request (RFC 5626 8) is answered from the same
        socket with the source address; it is not taken for SIP (no drop
        line, nothing in the trace or the tunnel). Past the answer budget,
        and for other STUN messages, there is no answer but one line.
        """
        from tests.test_sip_stun import attributes, mapped, stun

        self.runner.trace = SipTrace()
        udp = SipUdpProtocol(self.runner)
        tr = FakeUdpTransport("192.0.2.1", 5060)
        udp.makeConnection(tr)
        with capturedLogs() as events:
            udp.datagramReceived(stun(), ("192.0.2.10", 5062))
        self.assertEqual(events, [])
        [(out, addr)] = tr.written
        self.assertEqual(addr, ("192.0.2.10", 5062))
        self.assertEqual(out[:2], b"\x01\x01")
        self.assertEqual(mapped(attributes(out)[0x0020]), ("192.0.2.10", 5062))
        self.assertEqual(self.tunnel.sip_sent, [])
        tr.written.clear()
        with capturedLogs() as events:
            udp.datagramReceived(stun(0x0011), ("192.0.2.10", 5062))
            udp.datagramReceived(stun(0x0011), ("192.0.2.10", 5062))
        self.assertEqual(tr.written, [])
        self.assertEqual(
            _lines(events),
            ["STUN message from 192.0.2.10:5062 not answered: STUN message type 0x0011, not a Binding request"],
        )
        budget = self.runner.stun_budget
        assert budget is not None
        for _ in range(budget.burst):  # the first answer took one already
            udp.datagramReceived(stun(), ("192.0.2.10", 5062))
        self.assertEqual(len(tr.written), budget.burst - 1)
        self.assertEqual(budget.refused, 1)

    def test_tcp_stun_closes(self) -> None:
        """
        STUN bytes on a SIP connection (RFC 5626 keeps a stream flow with
        CRLF CRLF, not STUN) close it at once with a line, rather than
        leaving them buffered for a header end that never comes.
        """
        from tests.test_sip_stun import stun

        proto, tr = stream(
            SipStreamFactory(self.runner), ("192.0.2.1", 5060), ("192.0.2.10", 40000)
        )
        with capturedLogs() as events:
            proto.dataReceived(stun())
        self.assertEqual(tr.value(), b"")
        self.assertTrue(tr.disconnecting)
        self.assertIn("not a SIP message: it starts with the byte 0x00", _lines(events)[0])

    def test_tcp_flow_and_keepalive(self) -> None:
        """
        Messages split across TCP segments are framed and go into the
        tunnel; answers go back over the same connection; an RFC 5626 ping
        is answered with CRLF; after the connection closes its flow is gone.
        """
        factory = SipStreamFactory(self.runner)
        proto, tr = stream(factory, ("192.0.2.1", 5060), ("192.0.2.10", 40000))
        data = register().replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        proto.dataReceived(data[:50])
        proto.dataReceived(data[50:] + b"\r\n\r\n")
        self.assertEqual(tr.value(), b"\r\n")
        tr.clear()
        [(fid, sent)] = self.tunnel.sip_sent
        self.assertEqual(
            self.core.flows.lookup(fid, 100),
            Flow("tcp", ("192.0.2.1", 5060), ("192.0.2.10", 40000), proto.conn_id),
        )
        self.runner.sip_received(self.tunnel, fid, answer(sent, 200))
        self.assertEqual(parse_message(tr.value()).status, 200)
        proto.connectionLost(None)
        self.assertIsNone(self.core.flows.lookup(fid, 100))

    def test_close_stream_flows(self) -> None:
        """
        The connections of the named TCP flows are closed (so the phones
        register again); UDP flows and unknown ids are skipped.
        """
        factory = SipStreamFactory(self.runner)
        proto, tr = stream(factory, ("192.0.2.1", 5060), ("192.0.2.10", 40000))
        proto.dataReceived(register().replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
        udp = SipUdpProtocol(self.runner)
        udp.makeConnection(FakeUdpTransport("192.0.2.1", 5060))
        udp.datagramReceived(register(), ("192.0.2.11", 5062))
        [(tcp_fid, _), (udp_fid, _)] = self.tunnel.sip_sent
        self.assertEqual(self.runner.close_stream_flows([tcp_fid, udp_fid, 999]), 1)
        self.assertTrue(tr.disconnecting)

    def test_tcp_unframeable(self) -> None:
        """
        A stream message without Content-Length closes that connection with
        a logged reason.
        """
        proto, tr = stream(
            SipStreamFactory(self.runner), ("192.0.2.1", 5060), ("192.0.2.10", 40000)
        )
        with capturedLogs() as events:
            proto.dataReceived(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP a\r\n\r\n")
        self.assertTrue(tr.disconnecting)
        [e] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(e["code"], 400)

    def test_core_failure_logged(self) -> None:
        """
        An unexpected exception in the core is logged at the entry point and
        does not escape.
        """

        class Boom:
            # the core, but for a from_tunnel that raises (a compiled
            # core's methods cannot be replaced)
            def __init__(self, core: Any) -> None:
                self.core = core

            def __getattr__(self, name: str) -> Any:
                return getattr(self.core, name)

            def from_tunnel(self, *a: Any, **kw: Any) -> None:
                raise RuntimeError("boom")

        self.runner.core = Boom(self.core)
        self.runner.sip_received(self.tunnel, 1, b"x")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ContactRunnerTests(SynchronousTestCase):
    """
    Tests for L{ContactSipRunner}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.connects: list[tuple[tuple[str, int], Any, Deferred]] = []
        self.tunnel = FakeTunnel("s1")

    def runner(self, transport: str = "udp") -> ContactSipRunner:
        core = ContactSipProxy(
            ("203.0.113.5", 5060),
            SECRET,
            operator=OperatorProxy("198.51.100.7", 5060, transport),
        )

        def connect(addr: tuple[str, int], factory: Any) -> Deferred:
            d: Deferred = Deferred()
            self.connects.append((addr, factory, d))
            return d

        r = ContactSipRunner(core, self.clock, connect=connect)
        r.tunnel_established(self.tunnel)
        return r

    def test_udp(self) -> None:
        """
        A request from the tunnel leaves the operator-side UDP socket for the
        operator proxy; its answer goes back into the tunnel.
        """
        r = self.runner()
        udp = SipUdpProtocol(r)
        tr = FakeUdpTransport("203.0.113.5", 5060)
        udp.makeConnection(tr)
        r.sip_received(self.tunnel, 4, request("OPTIONS", "sip:bob@example.org"))
        [(data, addr)] = tr.written
        self.assertEqual(addr, ("198.51.100.7", 5060))
        udp.datagramReceived(answer(data, 200), ("198.51.100.7", 5060))
        [(fid, back)] = self.tunnel.sip_sent
        self.assertEqual((fid, parse_message(back).status), (4, 200))
        r.stop()

    def test_udp_stun_not_answered(self) -> None:
        """
        The operator side answers no STUN, but does not take it for SIP
        either: one line, no answer.
        """
        from tests.test_sip_stun import stun

        r = self.runner()
        udp = SipUdpProtocol(r)
        tr = FakeUdpTransport("203.0.113.5", 5060)
        udp.makeConnection(tr)
        with capturedLogs() as events:
            udp.datagramReceived(stun(), ("198.51.100.7", 5060))
        self.assertEqual(tr.written, [])
        self.assertEqual(
            _lines(events),
            ["STUN message from 198.51.100.7:5060 not answered: STUN is answered on the agent's SIP ports only"],
        )
        r.stop()

    def test_start_line_names_the_proxy(self) -> None:
        """
        Once its socket is up, the runner says where requests go (a name
        given to --sip-proxy, looked up by SRV or not, shows its address
        here).
        """
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        r = self.runner()
        SipUdpProtocol(r).makeConnection(FakeUdpTransport("203.0.113.5", 5060))
        lines = [formatEvent(e) for e in events if "operator proxy" in str(e.get("log_format", ""))]
        self.assertEqual(lines, ["operator proxy 198.51.100.7:5060;transport=udp: requests go there"])
        r.stop()

    def test_congested_tunnel(self) -> None:
        """
        The runner tells the core which tunnels are congested: a new
        request from the network for a congested tunnel is answered
        C{503} and does not reach it.
        """
        r = self.runner()
        udp = SipUdpProtocol(r)
        tr = FakeUdpTransport("203.0.113.5", 5060)
        udp.makeConnection(tr)
        r.sip_received(self.tunnel, 4, request("INVITE", "sip:bob@example.org"))
        [(data, _)] = tr.written
        rr = parse_message(data).get("Record-Route")
        assert rr is not None
        incoming = request(
            "INVITE",
            "sip:alice@192.0.2.10:5062",
            via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop1",
            call_id="in-1",
            extra=(f"Route: {rr}",),
        )
        self.tunnel.congested = True
        udp.datagramReceived(incoming, ("198.51.100.7", 5060))
        self.assertEqual(self.tunnel.sip_sent, [])
        self.assertEqual(parse_message(tr.written[-1][0]).status, 503)
        self.tunnel.congested = False
        udp.datagramReceived(incoming, ("198.51.100.7", 5060))
        self.assertEqual(len(self.tunnel.sip_sent), 1)
        r.stop()

    def test_tunnel_not_open_answers_430(self) -> None:
        """
        A new request routed to a flow registered with RFC 5626 C{reg-id}
        whose tunnel is not open (its session waits for the agent to
        resume it) is answered C{430 Flow Failed} to the operator with its
        own branch, so the registrar tries the phone's other flow.  An ACK,
        an in-dialog request and a request for a flow registered without
        C{reg-id} are dropped (counted): their senders retransmit.
        """
        r = self.runner()
        udp = SipUdpProtocol(r)
        tr = FakeUdpTransport("203.0.113.5", 5060)
        udp.makeConnection(tr)

        def incoming(fid: int, to: str = "<sip:alice@example.org>", method: str = "INVITE") -> bytes:
            # the Record-Route of an INVITE through flow fid names it
            r.sip_received(self.tunnel, fid, request("INVITE", "sip:bob@example.org", call_id=f"i{fid}"))
            rr = parse_message(tr.written[-1][0]).get("Record-Route")
            assert rr is not None
            return request(
                method,
                "sip:alice@192.0.2.10:5062",
                via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop1",
                # a call of its own per flow (the same INVITE again would
                # be a retransmission)
                call_id=f"in-{fid}",
                to=to,
                extra=(f"Route: {rr}",),
            )

        outbound = register(contact_params=';+sip.instance="<urn:uuid:1>";reg-id=1').replace(
            b"Content-Length", b"Supported: outbound\r\nContent-Length"
        )
        for fid, data in [(4, outbound), (5, register())]:
            r.sip_received(self.tunnel, fid, data)
            sent = tr.written[-1][0]
            contact = parse_message(sent).get("Contact")
            udp.datagramReceived(answer(sent, 200, extra=(("Contact", contact),)), ("198.51.100.7", 5060))
        invite4, invite5 = incoming(4), incoming(5)
        in_dialog = incoming(4, to="<sip:alice@example.org>;tag=x", method="BYE")
        self.tunnel.up = False
        written = len(tr.written)
        udp.datagramReceived(invite4, ("198.51.100.7", 5060))
        answer_data, addr = tr.written[-1]
        resp = parse_message(answer_data)
        self.assertEqual((resp.status, resp.reason, addr), (430, "Flow Failed", ("198.51.100.7", 5060)))
        self.assertEqual(resp.get_all("Via"), ["SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop1"])
        self.assertEqual(len(tr.written), written + 1)
        ack = invite4.replace(b"INVITE sip:", b"ACK sip:").replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK")
        for data in [ack, in_dialog, invite5]:
            udp.datagramReceived(data, ("198.51.100.7", 5060))
        self.assertEqual(len(tr.written), written + 1)
        self.assertEqual(r.core.counters["430 for a tunnel that is not open"], 1)
        self.assertEqual(r.core.counters["message for a tunnel that is not open"], 3)
        r.stop()

    def test_held_while_resuming(self) -> None:
        """
        While the session waits for its agent to resume it, what would be
        dropped (an in-dialog request, a response) waits instead and goes,
        in order, on the connection the session is resumed on; a new
        request for an RFC 5626 flow is still answered 430 (the phone's
        other flow).  Past C{resume_hold} what waits is dropped as before.
        """
        from spwm.testing.tunnel import FakeTunnel

        r = self.runner()
        resuming = {self.tunnel.session_id}
        r.resuming = lambda session: session in resuming
        udp = SipUdpProtocol(r)
        tr = FakeUdpTransport("203.0.113.5", 5060)
        udp.makeConnection(tr)
        outbound = register(contact_params=';+sip.instance="<urn:uuid:1>";reg-id=1').replace(
            b"Content-Length", b"Supported: outbound\r\nContent-Length"
        )
        r.sip_received(self.tunnel, 4, outbound)
        sent = tr.written[-1][0]
        contact = parse_message(sent).get("Contact")
        udp.datagramReceived(answer(sent, 200, extra=(("Contact", contact),)), ("198.51.100.7", 5060))
        r.sip_received(self.tunnel, 4, request("INVITE", "sip:bob@example.org", call_id="out-1"))
        invite_out = tr.written[-1][0]
        rr = parse_message(invite_out).get("Record-Route")
        assert rr is not None

        def incoming(method: str, to: str, call_id: str) -> bytes:
            return request(
                method,
                "sip:alice@192.0.2.10:5062",
                via="SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKop1",
                call_id=call_id,
                to=to,
                extra=(f"Route: {rr}",),
            )

        self.tunnel.up = False
        bye = incoming("BYE", "<sip:alice@example.org>;tag=x", "in-1")
        udp.datagramReceived(bye, ("198.51.100.7", 5060))
        udp.datagramReceived(answer(invite_out, 180), ("198.51.100.7", 5060))
        # the far end retransmits its BYE: the copy does not wait twice
        udp.datagramReceived(bye, ("198.51.100.7", 5060))
        self.assertEqual(r.held_status()["resume_held_duplicates"], 1)
        written = len(tr.written)
        udp.datagramReceived(incoming("INVITE", "<sip:alice@example.org>", "in-2"), ("198.51.100.7", 5060))
        self.assertEqual(parse_message(tr.written[-1][0]).status, 430)
        self.assertEqual(len(tr.written), written + 1)
        self.assertEqual(r.held_status()["resume_held_now"], 2)
        self.clock.advance(3.9)
        resumed = FakeTunnel(self.tunnel.session_id)
        resuming.clear()
        r.tunnel_established(resumed)
        self.assertEqual([parse_message(d).method or parse_message(d).status for _, d in resumed.sip_sent], ["BYE", 180])
        self.assertEqual((r.held_status()["resume_held_sent"], r.held_status()["resume_held_now"]), (2, 0))
        self.assertNotIn("message for a tunnel that is not open", r.core.counters)
        # lost again, and not resumed in time
        resumed.up = False
        resuming.add(self.tunnel.session_id)
        udp.datagramReceived(bye, ("198.51.100.7", 5060))
        self.clock.advance(4.1)
        self.assertEqual(r.held_status()["resume_held_expired"], 1)
        self.assertEqual(r.core.counters["message for a tunnel that is not open"], 1)
        r.stop()

    def test_carried_into_the_resumption(self) -> None:
        """
        What the session's last connection took with it (sent, not
        acknowledged by the agent) goes first on the resumed connection,
        before what waited meanwhile, each once; resumed with the
        registrations only, or not within C{resume_hold}, it is dropped;
        with no resumption under way nothing is kept.
        """
        from spwm.testing.tunnel import FakeTunnel

        session = self.tunnel.session_id
        r = self.runner()
        resuming = {session}
        r.resuming = lambda s: s in resuming
        messages = [(3, 4, b"INVITE taken"), (4, 4, b"BYE in flight"), (5, 4, b"SIP/2.0 200 OK in flight")]
        r.carry(session, messages, 11)
        # only the first loss counts until the resumption
        r.carry(session, [(0, 4, b"OPTIONS fresh")], 0)
        self.assertEqual(r.held_status()["resume_carried_now"], 3)
        # the agent took message 3 (its offer's sip_next): left out; the
        # answer says what the contact point took of the agent's
        self.assertEqual(r.settle_carried(session, True, 4), 11)
        resumed = FakeTunnel(session)
        resuming.clear()
        r.tunnel_established(resumed)
        self.assertEqual(resumed.sip_sent, [(4, b"BYE in flight"), (4, b"SIP/2.0 200 OK in flight")])
        self.assertEqual(
            (r.held_status()["resume_carried"], r.held_status()["resume_carried_taken"], r.held_status()["resume_carried_now"]),
            (3, 1, 0),
        )
        # registrations only
        resuming.add(session)
        r.carry(session, [(6, 4, b"INVITE in flight")], 12)
        self.assertIsNone(r.settle_carried(session, False, None))
        again = FakeTunnel(session)
        r.tunnel_established(again)
        self.assertEqual(again.sip_sent, [])
        # not resumed in time
        r.carry(session, [(7, 4, b"INVITE in flight")], 12)
        self.clock.advance(r.resume_hold + 0.1)
        self.assertEqual((r.held_status()["resume_carried_dropped"], r.held_status()["resume_carried_now"]), (2, 0))
        resuming.clear()
        r.carry(session, [(8, 4, b"INVITE lost")], 12)
        self.assertEqual(r.held_status()["resume_carried_now"], 0)
        # a live session whose connection a resumption takes over
        r.carry(session, [(8, 4, b"INVITE in flight")], 12, taken_over=True)
        self.assertEqual(r.settle_carried(session, True, 8), 12)
        taking = FakeTunnel(session)
        r.tunnel_established(taking)
        self.assertEqual(taking.sip_sent, [(4, b"INVITE in flight")])
        r.stop()

    def test_tcp_pool(self) -> None:
        """
        With a TCP operator proxy, one connection is opened on demand;
        messages wait for it, later ones reuse it, and answers on it reach
        the tunnel.  After it closes, the next message opens a new one.
        """
        r = self.runner("tcp")
        r.sip_received(self.tunnel, 4, request("OPTIONS", "sip:bob@example.org"))
        r.sip_received(
            self.tunnel, 4, request("OPTIONS", "sip:bob@example.org", call_id="c2")
        )
        [(addr, factory, d)] = self.connects
        self.assertEqual(addr, ("198.51.100.7", 5060))
        proto, tr = stream(factory, ("203.0.113.5", 33000), addr)
        d.callback(proto)
        first, second = tr.value().split(b"Content-Length: 0\r\n\r\n")[:2]
        self.assertIn(b"Call-ID: c2", second)
        tr.clear()
        r.sip_received(
            self.tunnel, 4, request("OPTIONS", "sip:bob@example.org", call_id="c3")
        )
        self.assertIn(b"Call-ID: c3", tr.value())
        self.assertEqual(len(self.connects), 1)
        proto.dataReceived(answer(first + b"Content-Length: 0\r\n\r\n", 200))
        self.assertEqual(parse_message(self.tunnel.sip_sent[0][1]).status, 200)
        proto.connectionLost(None)
        r.sip_received(
            self.tunnel, 4, request("OPTIONS", "sip:bob@example.org", call_id="c4")
        )
        self.assertEqual(len(self.connects), 2)
        r.stop()

    def test_stop_closes_connections_to_the_operator(self) -> None:
        """
        Stopping the runner closes the connections it opened to the
        operator's proxy (an embedding program's reactor is left clean).
        """
        r = self.runner("tcp")
        r.sip_received(self.tunnel, 4, request("OPTIONS", "sip:bob@example.org"))
        [(addr, factory, d)] = self.connects
        proto, tr = stream(factory, ("203.0.113.5", 33000), addr)
        d.callback(proto)
        self.assertFalse(tr.disconnecting)
        r.stop()
        self.assertTrue(tr.disconnecting)

    def test_tcp_connect_failure(self) -> None:
        """
        A failed connection drops its queued messages with a log line; a
        proxy that stays down (every request, every ping of a pool tries
        again) gets one such line per minute, which counts the others.
        """
        r = self.runner("tcp")
        with capturedLogs() as events:
            for n in range(4):
                r.sip_received(self.tunnel, 4, request("OPTIONS", "sip:bob@example.org", call_id=f"c{n}"))
                self.connects[-1][2].errback(ConnectionRefusedError("refused"))
                self.clock.advance(20)
        self.assertEqual(len(self.connects), 4)
        lines = [formatEvent(e) for e in events if "TCP connection to" in formatEvent(e)]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("198.51.100.7:5060 failed, 1 messages dropped", lines[0])
        self.assertTrue(lines[0].endswith("refused"), lines[0])
        self.assertIn("(2 more failures since the last such line)", lines[1])
        r.stop()

    def test_incoming_tcp_reused_for_answer(self) -> None:
        """
        A request arriving over an incoming TCP connection gets the
        application's answer over that same connection.
        """
        r = self.runner()
        from spwm.sip.flows import KIND_ROUTE, FlowTokenCodec

        token = FlowTokenCodec(SECRET).encode(KIND_ROUTE, "s1", 4)
        proto, tr = stream(
            SipStreamFactory(r), ("203.0.113.5", 5060), ("198.51.100.7", 41000)
        )
        inv = request(
            "INVITE",
            "sip:alice@192.0.2.10",
            via="SIP/2.0/TCP 198.51.100.7:5060;branch=z9hG4bKt1",
            extra=(f"Route: <sip:{token}@203.0.113.5:5060;lr>",),
        )
        proto.dataReceived(inv)
        [(fid, down)] = self.tunnel.sip_sent
        r.sip_received(self.tunnel, fid, answer(down, 180, "Ringing"))
        self.assertEqual(parse_message(tr.value()).status, 180)
        self.assertEqual(self.connects, [])
        r.tunnel_lost(self.tunnel)
        r.stop()


class StreamListenerLimitTests(SynchronousTestCase):
    """
    A SIP listener's L{SipStreamFactory} bounds its connections: their
    number, and the time to a first SIP message.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.tunnel = FakeTunnel()
        self.core = AgentSipProxy(self.tunnel, "agent-1")
        self.runner = AgentSipRunner(self.core, self.clock)

    def factory(self, max_connections: int = 2, timeout: float = 30.0) -> SipStreamFactory:
        return SipStreamFactory(self.runner, "tcp", 65535, max_connections, timeout, clock=self.clock)

    def test_over_the_limit_closed_at_once(self) -> None:
        """
        A connection beyond C{max_connections} is aborted at once, before
        the runner knows it, with one warning per 10 s naming the count;
        once one closes, a new one is accepted again.
        """
        factory = self.factory(max_connections=2)
        first, _ = stream(factory, ("192.0.2.1", 5060), ("192.0.2.10", 40000))
        stream(factory, ("192.0.2.1", 5060), ("192.0.2.10", 40001))
        with capturedLogs() as events:
            over, tr = stream(factory, ("192.0.2.1", 5060), ("192.0.2.10", 40002))
            stream(factory, ("192.0.2.1", 5060), ("192.0.2.10", 40003))
        self.assertTrue(tr.disconnecting)
        self.assertIsNone(over.conn_id)
        self.assertEqual(factory.refused, 2)
        self.assertEqual(len(self.runner._streams), 2)
        [line] = _lines(events)
        self.assertIn("refused SIP tcp connection from 192.0.2.10:40002: 2 connections open, limit 2", line)
        self.assertIn("--max-sip-connections", line)
        over.connectionLost(None)
        first.connectionLost(None)
        _, tr = stream(factory, ("192.0.2.1", 5060), ("192.0.2.10", 40004))
        self.assertFalse(tr.disconnecting)
        self.assertEqual(len(factory.open), 2)

    def test_no_first_message_closed(self) -> None:
        """
        A connection that brings no complete SIP message within the bound
        (nothing, a partial header, or only keepalives) is closed, with one
        info line per 10 s.
        """
        factory = self.factory(max_connections=10, timeout=30.0)
        idle, idle_tr = stream(factory, ("192.0.2.1", 5060), ("192.0.2.10", 40000))
        partial, partial_tr = stream(factory, ("192.0.2.1", 5060), ("192.0.2.10", 40001))
        partial.dataReceived(b"\r\n\r\nREGISTER sip:example.test SIP/2.0\r\nVia: ")
        self.clock.advance(29.9)
        self.assertFalse(idle_tr.disconnecting or partial_tr.disconnecting)
        with capturedLogs() as events:
            self.clock.advance(0.2)
        self.assertTrue(idle_tr.disconnecting)
        self.assertTrue(partial_tr.disconnecting)
        self.assertEqual(factory.silent, 2)
        [line] = _lines(events)
        self.assertIn("closed SIP tcp connection from 192.0.2.10:40000: no complete SIP message within 30 s", line)
        idle.connectionLost(None)
        partial.connectionLost(None)
        self.assertEqual(factory.open, set())

    def test_connection_that_carried_sip_stays(self) -> None:
        """
        A connection whose first message came in time stays open however
        long it is idle (RFC 5626 flows), and no timer is left behind.
        """
        factory = self.factory(timeout=30.0)
        proto, tr = stream(factory, ("192.0.2.1", 5060), ("192.0.2.10", 40000))
        proto.dataReceived(register().replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
        self.clock.advance(3600)
        proto.dataReceived(b"\r\n\r\n")
        self.clock.advance(3600)
        self.assertFalse(tr.disconnecting)
        self.assertIsNone(proto._first_timer)
        self.assertEqual(factory.silent, 0)
        proto.connectionLost(None)
        self.assertEqual(factory.open, set())

    def test_bounds_need_a_clock(self) -> None:
        """
        A bound without a clock is refused when the factory is made, not
        when the first connection would need it.
        """
        self.assertRaises(ValueError, SipStreamFactory, self.runner, "tcp", 65535, 10)
        self.assertRaises(ValueError, SipStreamFactory, self.runner, "tcp", 65535, None, 30.0)

    def test_outgoing_factory_unbounded(self) -> None:
        """
        A factory without bounds (an outgoing connection's) sets no timer
        and counts nothing.
        """
        factory = SipStreamFactory(self.runner)
        proto, tr = stream(factory, ("192.0.2.1", 5060), ("192.0.2.10", 40000))
        self.clock.advance(3600)
        self.assertFalse(tr.disconnecting)
        self.assertIsNone(proto.listener)
        self.assertEqual(factory.open, set())


def _lines(events: list[dict], namespace: str | None = None) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if namespace is None or e.get("log_namespace") == namespace]


class TraceTests(SynchronousTestCase):
    """
    C{--sip-trace}: L{SipTrace} in both runners.
    """

    def test_agent_trace(self) -> None:
        """
        The agent logs the message it received from an application (IPv6
        peer in brackets) and what it sent into the tunnel, start line and
        headers; a body only as its length unless bodies are asked for.
        """
        tunnel = FakeTunnel()
        runner = AgentSipRunner(AgentSipProxy(tunnel, "agent-1"), Clock(), trace=SipTrace())
        udp = SipUdpProtocol(runner, ("2001:db8::1", 5060))
        udp.makeConnection(FakeUdpTransport("2001:db8::1", 5060))
        data = request("MESSAGE", "sip:bob@example.org", body=b"hello there", content_type="text/plain")
        with capturedLogs() as events:
            udp.datagramReceived(data, ("2001:db8::10", 5062))
        first, second = _lines(events, "spwm.sip.transport.SipTrace")
        self.assertTrue(first.startswith("SIP received from app udp [2001:db8::10]:5062:\nMESSAGE sip:bob@example.org SIP/2.0\n"), first)
        self.assertIn("\nCall-ID: call-1@192.0.2.10\n", first)
        self.assertTrue(first.endswith("\n\n[body: 11 bytes]"), first)
        self.assertNotIn("hello", first)
        self.assertTrue(second.startswith("SIP sent to tunnel s1 flow 1:\nMESSAGE sip:bob@example.org SIP/2.0\n"), second)
        runner.trace = SipTrace(bodies=True)
        with capturedLogs() as events:
            runner.sip_received(tunnel, 1, answer(tunnel.sip_sent[0][1], 200, body=b"v=0\r\n"))
        first, second = _lines(events, "spwm.sip.transport.SipTrace")
        self.assertTrue(first.startswith("SIP received from tunnel s1 flow 1:\nSIP/2.0 200 OK\n"), first)
        self.assertTrue(second.startswith("SIP sent to app udp [2001:db8::10]:5062:\nSIP/2.0 200 OK\n"), second)
        self.assertTrue(second.endswith("\n\nv=0\n"), second)

    def test_contact_trace(self) -> None:
        """
        The contact point logs what came from the tunnel (session and flow)
        and what it sent to the operator proxy, and the answer both ways.
        """
        tunnel = FakeTunnel("sess-9")
        core = ContactSipProxy(("203.0.113.5", 5060), SECRET, operator=OperatorProxy("198.51.100.7", 5060, "udp"))
        runner = ContactSipRunner(core, Clock(), trace=SipTrace())
        runner.tunnel_established(tunnel)
        udp = SipUdpProtocol(runner)
        tr = FakeUdpTransport("203.0.113.5", 5060)
        udp.makeConnection(tr)
        with capturedLogs() as events:
            runner.sip_received(tunnel, 4, request("OPTIONS", "sip:bob@example.org"))
            udp.datagramReceived(answer(tr.written[0][0], 200), ("198.51.100.7", 5060))
        heads = [line.split("\n", 2)[:2] for line in _lines(events, "spwm.sip.transport.SipTrace")]
        self.assertEqual(
            heads,
            [
                ["SIP received from tunnel sess-9 flow 4:", "OPTIONS sip:bob@example.org SIP/2.0"],
                ["SIP sent to operator udp 198.51.100.7:5060:", "OPTIONS sip:bob@example.org SIP/2.0"],
                ["SIP received from operator udp 198.51.100.7:5060:", "SIP/2.0 200 OK"],
                ["SIP sent to tunnel sess-9 flow 4:", "SIP/2.0 200 OK"],
            ],
        )

    def test_hep_tunnel_addresses(self) -> None:
        """
        The HEP copy of a message through the tunnel has the addresses of
        the tunnel connection that carries it (our end and the agent's),
        as TCP; an end without a transport has none (not an error).
        """
        from twisted.internet.address import IPv4Address

        copies: list[tuple[Any, ...]] = []

        class Hep:
            def sip(self, src: Any, dst: Any, data: bytes, transport: str = "udp") -> None:
                copies.append((src, dst, data.split(b"\r\n", 1)[0], transport))

        class Connection:
            def getHost(self) -> IPv4Address:
                return IPv4Address("TCP", "203.0.113.10", 443)

            def getPeer(self) -> IPv4Address:
                return IPv4Address("TCP", "198.51.100.2", 40000)

        tunnel = FakeTunnel("sess-9")
        tunnel.transport = Connection()  # type: ignore[attr-defined]
        core = ContactSipProxy(("203.0.113.5", 5060), SECRET, operator=OperatorProxy("198.51.100.7", 5060, "udp"))
        runner = ContactSipRunner(core, Clock(), trace=SipTrace(lines=False, hep=Hep()))
        runner.tunnel_established(tunnel)
        udp = SipUdpProtocol(runner)
        tr = FakeUdpTransport("203.0.113.5", 5060)
        udp.makeConnection(tr)
        runner.sip_received(tunnel, 4, request("OPTIONS", "sip:bob@example.org"))
        udp.datagramReceived(answer(tr.written[0][0], 200), ("198.51.100.7", 5060))
        ours, agent = ("203.0.113.10", 443), ("198.51.100.2", 40000)
        self.assertEqual(
            [(c[0], c[1], c[3]) for c in copies],
            [
                (agent, ours, "tcp"),
                (("203.0.113.5", 5060), ("198.51.100.7", 5060), "udp"),
                (("198.51.100.7", 5060), ("203.0.113.5", 5060), "udp"),
                (ours, agent, "tcp"),
            ],
        )
        copies.clear()
        bare = FakeTunnel("sess-8")
        runner.tunnel_established(bare)
        runner.sip_received(bare, 5, request("OPTIONS", "sip:bob@example.org"))
        self.assertEqual((copies[0][0], copies[0][1], copies[0][3]), (None, None, "tcp"))

    def test_off_by_default(self) -> None:
        """
        Without a trace nothing is logged for a message that passes.
        """
        tunnel = FakeTunnel()
        runner = AgentSipRunner(AgentSipProxy(tunnel, "agent-1"), Clock())
        udp = SipUdpProtocol(runner, ("192.0.2.1", 5060))
        udp.makeConnection(FakeUdpTransport("192.0.2.1", 5060))
        with capturedLogs() as events:
            udp.datagramReceived(register(), ("192.0.2.10", 5062))
        self.assertEqual(len(tunnel.sip_sent), 1)
        self.assertEqual(_lines(events), [])


class EventLogTests(SynchronousTestCase):
    """
    The contact point runner logs registration changes and refused Routes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.tunnel = FakeTunnel("sess-1")
        self.runner = ContactSipRunner(ContactSipProxy(("203.0.113.5", 5060), SECRET), self.clock)
        self.runner.tunnel_established(self.tunnel)

    def test_registration_lines(self) -> None:
        """
        One info line when a binding appears, none for an unchanged
        refresh, one when it is removed.
        """
        with capturedLogs() as events:
            self.runner.sip_received(self.tunnel, 3, register(expires=120))
            self.runner.sip_received(self.tunnel, 3, register(expires=120, branch="z9hG4bKreg2"))
            self.runner.sip_received(self.tunnel, 3, register(expires=0, branch="z9hG4bKreg3"))
        self.assertEqual(
            _lines(events),
            [
                "registered sip:alice@example.org at sip:alice@192.0.2.10:5062 for 120 s through tunnel sess-1 flow 3",
                "unregistered sip:alice@example.org at sip:alice@192.0.2.10:5062 (tunnel sess-1 flow 3)",
            ],
        )
        self.assertEqual([e["log_level"] for e in events], [LogLevel.info, LogLevel.info])
        self.runner.stop()

    def test_expired_line(self) -> None:
        """
        A binding left to run out is logged as expired at the sweep.
        """
        self.runner.sip_received(self.tunnel, 3, register(expires=60))
        with capturedLogs() as events:
            self.clock.advance(90)
        self.assertEqual(
            _lines(events), ["expired sip:alice@example.org at sip:alice@192.0.2.10:5062 (tunnel sess-1 flow 3)"]
        )
        self.runner.stop()

    def test_refused_route_line(self) -> None:
        """
        A request whose Route names a host that is not ours is refused in
        the tunnel and logged once per minute per Route, naming the Route
        and C{--sip-name}.
        """
        data = register().replace(b"Content-Length:", b"Route: <sip:[2001:db8::1]:5060;lr>\r\nContent-Length:")
        with capturedLogs() as events:
            for i in range(3):
                self.runner.sip_received(self.tunnel, 3, data)
                self.clock.advance(10)
        [line] = _lines(events)
        self.assertIn("REGISTER refused with 403 Forbidden: its Route <sip:[2001:db8::1]:5060;lr>", line)
        self.assertIn("--sip-name [2001:db8::1]:5060", line)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertEqual([parse_message(d).status for _, d in self.tunnel.sip_sent], [403, 403, 403])
        self.clock.advance(60)
        with capturedLogs() as events:
            self.runner.sip_received(self.tunnel, 3, data)
        [line] = _lines(events)
        self.assertIn("(2 more since the last such line)", line)
        self.runner.stop()

    def test_agent_registration_lines(self) -> None:
        """
        The agent logs its applications' registration changes with the
        application's address (IPv6 in brackets) and flow.
        """
        tunnel = FakeTunnel()
        runner = AgentSipRunner(AgentSipProxy(tunnel, "agent-1"), self.clock)
        udp = SipUdpProtocol(runner, ("2001:db8::1", 5060))
        udp.makeConnection(FakeUdpTransport("2001:db8::1", 5060))
        with capturedLogs() as events:
            udp.datagramReceived(register(expires=120), ("2001:db8::10", 5062))
            runner.sip_received(tunnel, 1, answer(tunnel.sip_sent[0][1], 200, extra=(("Contact", "<sip:alice@192.0.2.10:5062>;expires=120"),)))
            self.clock.advance(121)
        self.assertEqual(
            _lines(events),
            [
                "registered sip:alice@example.org at sip:alice@192.0.2.10:5062 for 120 s (app udp [2001:db8::10]:5062, flow 1)",
                "expired sip:alice@example.org at sip:alice@192.0.2.10:5062 (app udp [2001:db8::10]:5062, flow 1)",
            ],
        )
        runner.stop()


class _RecordingCore:
    """
    A contact core that records what it was given, in order, each message
    taking C{cost} seconds of the runner's timer.
    """

    def __init__(self, now: list[float], cost: float) -> None:
        self.now = now
        self.cost = cost
        self.seen: list[Any] = []
        #: each message's C{overloaded} input, by its data
        self.overloaded: dict[bytes, bool] = {}

    def from_tunnel(self, tunnel: Any, session_id: str, flow_id: int, data: bytes, now: float, **kw: Any) -> list[Any]:
        self.now[0] += self.cost
        if data == b"boom":
            raise ValueError("boom")
        self.seen.append(data)
        self.overloaded[data] = kw.get("overloaded", False)
        return []

    def from_network(self, transport: str, addr: Any, data: bytes, now: float, **kw: Any) -> list[Any]:
        self.now[0] += self.cost
        self.seen.append(data)
        self.overloaded[data] = kw.get("overloaded", False)
        return []

    def tunnel_detached(self, tunnel: Any, keep_registrations: bool = False) -> None:
        self.seen.append("lost")

    def tunnel_attached(self, tunnel: Any, session_id: str) -> None:
        self.seen.append("up")

    def next_deadline(self) -> None:
        return None


class _StepClock(Clock):
    """
    A L{Clock} whose L{step} runs one reactor turn: the calls due when it
    starts, not the ones they schedule for now (L{Clock.advance} would
    run those too).
    """

    def step(self) -> None:
        due = [c for c in self.calls if c.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


class SliceTests(SynchronousTestCase):
    """
    A runner with C{slice_seconds} handles a burst of messages a slice of
    time per reactor turn, in order, so other sockets (the media) get the
    turns in between.
    """

    def setUp(self) -> None:
        self.clock = _StepClock()
        self.now = [0.0]
        self.core = _RecordingCore(self.now, cost=0.0004)
        self.runner = ContactSipRunner(
            self.core,  # type: ignore[arg-type]
            self.clock,
            slice_seconds=0.001,
            timer=lambda: self.now[0],
        )
        self.tunnel = FakeTunnel()

    def _burst(self, n: int, prefix: bytes = b"m") -> list[bytes]:
        messages = [prefix + str(i).encode() for i in range(n)]
        for m in messages:
            self.runner.sip_received(self.tunnel, 1, m)
        return messages

    def test_burst_in_slices(self) -> None:
        """
        Ten messages of 0.4 ms each with a 1 ms slice: three now, three
        in each of the next turns, the last one in the fourth; in order.
        """
        messages = self._burst(10)
        self.assertEqual(self.core.seen, messages[:3])
        self.assertEqual(self.runner.slice_status(), {"waiting": 7, "overloaded": 0, "deferred_messages": 7, "deferred_turns": 1})
        self.clock.step()
        self.assertEqual(self.core.seen, messages[:6])
        self.clock.step()
        self.clock.step()
        self.assertEqual(self.core.seen, messages)
        self.assertEqual(self.runner.waiting, 0)
        self.assertEqual((self.runner.deferred_messages, self.clock.getDelayedCalls() != []), (7, True))
        self.clock.step()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # a new turn: a new slice
        later = self._burst(2, b"n")
        self.assertEqual(self.core.seen[-2:], later)

    def test_burst_not_overloaded(self) -> None:
        """
        A burst that the following turns clear is no overload: every
        message is handed to the core as not overloaded.
        """
        messages = self._burst(10)
        for _ in range(4):
            self.clock.step()
        self.assertEqual(self.core.seen, messages)
        self.assertEqual(set(self.core.overloaded.values()), {False})

    def test_overloaded_after_a_long_wait(self) -> None:
        """
        Once the messages have been handled after waits of
        L{spwm.sip.transport.OVERLOAD_AFTER} or longer for
        L{spwm.sip.transport.OVERLOAD_HOLD}, the next such message is
        handed to the core as overloaded (and the status says so while
        such a message waits); one that waited less is not, and the
        overload ends as the half catches up.
        """
        self._burst(20)
        self.clock.step()
        self.assertEqual(self.core.overloaded[b"m3"], False)
        # the half does not keep up: every message waits long; the first
        # ones handled that late begin the lateness
        self.now[0] += OVERLOAD_AFTER + 0.1
        self.clock.step()
        self.assertEqual(self.core.seen[-1], b"m8")
        self.assertEqual({self.core.overloaded[b"m%d" % i] for i in (6, 7, 8)}, {False})
        self.assertEqual(self.runner.slice_status()["overloaded"], 0)
        # it lasts: from now on the late ones are overloaded
        self.now[0] += OVERLOAD_HOLD
        self.runner.sip_received(self.tunnel, 1, b"late")
        self.assertEqual(self.runner.slice_status()["overloaded"], 1)
        while self.runner.waiting:
            self.clock.step()
        self.assertEqual({self.core.overloaded[b"m%d" % i] for i in range(9, 20)}, {True})
        # "late" waited little: handed on; the half caught up
        self.assertEqual((self.core.overloaded[b"late"], self.runner.slice_status()["overloaded"]), (False, 0))
        self.clock.step()
        self.runner.sip_received(self.tunnel, 1, b"after")
        self.assertEqual(self.core.overloaded[b"after"], False)

    def test_stall_not_overloaded(self) -> None:
        """
        A half that stops for longer than
        L{spwm.sip.transport.OVERLOAD_AFTER} (the host took its CPU, a
        long reactor turn) with a few messages waiting hands them on
        unrefused in the turns that follow: they waited long, but the
        half catches up at once; it is no overload.
        """
        messages = self._burst(10)
        self.now[0] += OVERLOAD_AFTER + 0.3
        self.assertEqual(self.runner.slice_status()["overloaded"], 0)
        while self.runner.waiting:
            self.clock.step()
        self.assertEqual(self.core.seen, messages)
        self.assertEqual(set(self.core.overloaded.values()), {False})

    def test_never_overloaded_without_a_limit(self) -> None:
        """
        With C{overload_after=None} a lasting backlog never counts as an
        overload.
        """
        runner = ContactSipRunner(
            self.core,  # type: ignore[arg-type]
            self.clock,
            slice_seconds=0.001,
            timer=lambda: self.now[0],
            overload_after=None,
        )
        for i in range(10):
            runner.sip_received(self.tunnel, 1, b"q%d" % i)
        self.now[0] += 10.0
        while runner.waiting:
            self.clock.step()
        self.assertEqual({self.core.overloaded[b"q%d" % i] for i in range(10)}, {False})

    def test_later_messages_queue_behind(self) -> None:
        """
        While messages wait, a new one waits behind them, whatever the
        time: the order of a flow's messages holds.
        """
        messages = self._burst(5)
        self.now[0] = -10.0  # even with time to spare in this turn
        self.runner.sip_received(self.tunnel, 1, b"late")
        self.assertEqual(self.core.seen, messages[:3])
        self.clock.step()
        self.clock.step()
        self.assertEqual(self.core.seen, messages + [b"late"])

    def test_tunnel_changes_after_what_came_before(self) -> None:
        """
        A tunnel lost (or up) first handles every waiting message: the
        change comes after them, as it did without slicing.
        """
        messages = self._burst(6)
        self.runner.tunnel_lost(self.tunnel)
        self.assertEqual(self.core.seen, messages + ["lost"])
        self.assertEqual(self.runner.waiting, 0)
        more = self._burst(6, b"x")
        self.runner.tunnel_established(self.tunnel)
        self.assertEqual(self.core.seen[-7:], more + ["up"])

    def test_bounded(self) -> None:
        """
        With C{MAX_WAITING} messages waiting, each new one is queued after
        the oldest waiting is handled at once: in order, and the queue
        (its memory, its delay) stays bounded under a flood.
        """
        from spwm.sip import transport

        self.patch(transport, "MAX_WAITING", 4)
        messages = self._burst(7)
        self.assertEqual(self.core.seen, messages[:3])
        self.assertEqual(self.runner.waiting, 4)
        flood = self._burst(5, b"f")
        self.assertEqual(self.core.seen, messages + flood[:1])
        self.assertEqual(self.runner.waiting, 4)
        self.runner.drain()
        self.assertEqual(self.core.seen, messages + flood)

    def test_failure_logged_and_the_rest_handled(self) -> None:
        """
        A waiting message whose handling fails is logged; the ones behind
        it are handled.
        """
        self._burst(3)
        self.runner.sip_received(self.tunnel, 1, b"boom")
        self.runner.sip_received(self.tunnel, 1, b"after")
        with capturedLogs() as events:
            self.clock.step()
        self.assertEqual(self.core.seen[-1], b"after")
        self.assertEqual(len([e for e in events if e.get("log_level") == LogLevel.critical]), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_stop(self) -> None:
        """
        Stopping handles what waits and leaves no timer behind.
        """
        messages = self._burst(8)
        self.runner.stop()
        self.assertEqual(self.core.seen, messages)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_network_and_streams_too(self) -> None:
        """
        Datagrams from the operator's network share the slices (and the
        order) with the tunnel's messages.
        """
        proto = SipUdpProtocol(self.runner, ("203.0.113.5", 5060))
        self._burst(3)
        proto.datagramReceived(b"from the network", ("198.51.100.7", 5060))
        self.assertEqual(self.runner.waiting, 1)
        self.clock.step()
        self.assertEqual(self.core.seen[-1], b"from the network")


class _TurnClock(_StepClock):
    """
    A L{_StepClock} that also says when a turn ends, as a reactor with
    L{spwm.leanpoll} does: L{step} ends the turn whose messages came
    before it, runs the due calls, and ends their part of the turn.
    """

    def __init__(self) -> None:
        super().__init__()
        self._spwm_turn_ends: list[Any] = []

    def end_turn(self) -> None:
        ends = self._spwm_turn_ends
        while ends:
            now = ends[:]
            del ends[:]
            for end in now:
                end()

    def step(self) -> None:
        self.end_turn()
        super().step()
        self.end_turn()


class SliceAtTurnEndTests(SliceTests):
    """
    L{SliceTests} with a reactor that says when its turn ends
    (L{spwm.leanpoll.turn_end}): the same slices, and a turn whose
    messages fit in its slice schedules no call for the next turn.
    """

    def setUp(self) -> None:
        super().setUp()
        self.clock = _TurnClock()
        self.runner = ContactSipRunner(
            self.core,  # type: ignore[arg-type]
            self.clock,
            slice_seconds=0.001,
            timer=lambda: self.now[0],
        )

    def test_no_call_for_a_turn_within_its_slice(self) -> None:
        """
        Messages that fit in the turn's slice are handled at once and
        leave no scheduled call, one end of the turn asked for; after the
        turn ends, the next message starts a new slice (the three of the
        next turn are handled at once again).
        """
        first = self._burst(2)
        self.assertEqual((self.core.seen, self.clock.getDelayedCalls(), len(self.clock._spwm_turn_ends)), (first, [], 1))
        # (0.4 ms each: the slice of 1 ms is not over, a third fits)
        self.runner.sip_received(self.tunnel, 1, b"third")
        self.assertEqual(self.core.seen[-1], b"third")
        self.clock.step()
        self.assertEqual((self.clock.getDelayedCalls(), self.clock._spwm_turn_ends), ([], []))
        more = self._burst(3, b"n")
        self.assertEqual(self.core.seen[-3:], more)
        self.assertEqual((self.runner.waiting, self.runner.deferred_turns), (0, 0))
