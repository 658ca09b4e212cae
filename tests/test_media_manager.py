"""
Tests for L{spwm.media.manager}: two managers (agent and contact point)
joined by a fake tunnel, fake UDP sockets, a fake clock.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from spwm.media.manager import (
    BIND_TRIES,
    ENDED_CALLS,
    NO_RESPONSE_TIMEOUT,
    PENDING_TIMEOUT,
    UNANSWERED_TIMEOUT,
    MediaManager,
    session_share,
    _cdr_summary,
    _codecs,
    first_codec,
)
from spwm.media.ports import PortAllocator, PortsExhaustedError
from spwm.media.sweep import sweep_interval
from spwm.sdp import parse_sdp
from spwm.sip.actions import CALL_LIMIT, TUNNEL_MEDIA_LIMIT
from spwm.sip.flows import Flow, FlowTable
from spwm.tap.parts import MediaHookAdapter, flow_source
from spwm.tunnel.frames import ChannelKind, ErrorCode
from spwm.testing.tunnel import FakeTunnel as BaseFakeTunnel
from spwm.tunnel.api import Router
from spwm.tunnel.connection import ChannelLimitError, TunnelNotOpenError

from .test_media_relay import FakeUdpReactor

AGENT_ADDR = "192.0.2.1"
CONTACT_ADDR = "198.51.100.1"
PHONE = "192.0.2.10"
OPERATOR = "203.0.113.20"
DIALOG = "call-1;from-tag=a;to-tag=b"


class FakeTunnel(BaseFakeTunnel):
    """
    One end of a fake tunnel: channel control goes to the peer end's
    manager at once (in order, like the real tunnel), datagrams too.
    """

    def __init__(self, first_id: int, peer_name: str) -> None:
        super().__init__(peer=peer_name, first_channel=first_id)
        self.other: FakeTunnel | None = None
        self.app: Any = None

    def open_channel(self, kind: Any, meta: dict, handler: Any = None) -> int:
        channel_id = super().open_channel(kind, meta, handler)
        if self.other is not None:
            Router(None, {"media": self.other.app}, None).channel_requested(self.other, channel_id, kind, dict(meta))
        return channel_id

    def close_channel(self, channel_id: int, code: int = 0, reason: str = "") -> None:
        super().close_channel(channel_id, code, reason)
        if self.other is not None:
            self.other.app.channel_closed(self.other, channel_id, code, reason)

    def send_datagram(self, channel_id: int, data: bytes, component: int = 0) -> None:
        super().send_datagram(channel_id, data, component)
        if self.other is not None:
            self.other.app.datagram_received(self.other, channel_id, data, component)


def _pair(
    call_lines: bool = False,
    **contact_options: Any,
) -> tuple[FakeUdpReactor, MediaManager, FakeTunnel, MediaManager, FakeTunnel]:
    reactor = FakeUdpReactor()
    agent = MediaManager(reactor, "agent", AGENT_ADDR, (20000, 20099), call_lines=call_lines)
    contact = MediaManager(
        reactor, "contact", CONTACT_ADDR, (30000, 30099), call_lines=call_lines, **contact_options
    )
    agent_end = FakeTunnel(1, "contact")
    contact_end = FakeTunnel(2, "agent")
    agent_end.other, contact_end.other = contact_end, agent_end
    agent_end.app, contact_end.app = agent, contact
    return reactor, agent, agent_end, contact, contact_end


def _negotiate(
    agent: MediaManager,
    a_end: Any,
    contact: MediaManager,
    c_end: Any,
    dialog: str,
    offer: bytes,
    answer: bytes,
    source: str | None = None,
) -> None:
    """
    The phone's C{offer} through the agent and the contact point, and the
    operator's C{answer} back (C{source}: the phone's signalling host).
    """
    agent.sdp_into_tunnel(a_end, dialog, "application/sdp", offer, source=source)
    contact.sdp_out_of_tunnel(c_end, dialog, "application/sdp", offer)
    contact.sdp_into_tunnel(c_end, dialog, "application/sdp", answer)
    agent.sdp_out_of_tunnel(a_end, dialog, "application/sdp", answer)


def _sdp(host: str, *streams: tuple[str, int, str], version: int = 1) -> bytes:
    lines = [
        b"v=0",
        b"o=- 42 %d IN IP4 %s" % (version, host.encode()),
        b"s=-",
        b"c=IN IP4 " + host.encode(),
        b"t=0 0",
    ]
    for media, port, extra in streams:
        lines.append(b"m=%s %d RTP/AVP 0" % (media.encode(), port))
        if extra:
            lines.append(extra.encode())
    return b"\r\n".join(lines) + b"\r\n"


def assert_released(test: SynchronousTestCase, *managers: MediaManager) -> None:
    """
    Nothing is left on any of C{managers}: no socket, channel, port or
    stream.
    """
    for manager in managers:
        test.assertEqual(
            (manager.open_sockets, manager.open_channels, manager.ports_in_use, manager.streams),
            (0, 0, 0, 0),
        )
        # the count the sweep asks agrees with the dialogs' streams, and
        # no index of pending channels keeps anything
        test.assertEqual(
            (manager._stream_count, manager._pending_dialogs, manager._pending_channels), (0, {}, {})
        )


def steps(work: Any) -> int:
    """
    The Python work of C{work()}: the calls and lines it runs (loop
    iterations included), counted with C{sys.settrace}; the same for the
    same work on a busy machine.  The garbage collector is off meanwhile:
    a collection that the test's allocations happen to trigger there runs
    Python code of its own (C{gc.callbacks}, finalizers), which would be
    counted (it was, now and then, in a full run).
    """
    count = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        count += 1
        return trace

    before = sys.gettrace()
    collecting = gc.isenabled()
    gc.disable()
    sys.settrace(trace)
    try:
        work()
    finally:
        sys.settrace(before)
        if collecting:
            gc.enable()
    return count


class OfferAnswerTests(SynchronousTestCase):
    """
    An offer from the LAN phone and an answer from the operator side, with
    media flowing both ways through both halves.
    """

    def _call(self, offer: bytes | None = None, answer: bytes | None = None):
        reactor, agent, a_end, contact, c_end = _pair()
        offer = offer or _sdp(PHONE, ("audio", 4000, ""))
        answer = answer or _sdp(OPERATOR, ("audio", 6000, ""))
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        to_operator = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
        to_phone = agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer)
        return reactor, agent, a_end, contact, c_end, to_operator, to_phone

    def test_rewrite_and_channel(self) -> None:
        """
        The agent opens one datagram channel per stream before the SDP
        crosses; the contact point rewrites the offer to its address and a
        port from its range, the agent rewrites the answer to its own.
        """
        reactor, agent, a_end, contact, c_end, to_operator, to_phone = self._call()
        self.assertEqual(
            a_end.opened,
            [(1, ChannelKind.DATAGRAM, {"use": "media", "dialog": DIALOG, "stream": 0, "mux": False})],
        )
        self.assertEqual(c_end.opened, [])
        offer = parse_sdp(to_operator).media[0]
        self.assertEqual((offer.address, offer.port, offer.rtcp_port), (CONTACT_ADDR, 30000, 30001))
        answer = parse_sdp(to_phone).media[0]
        self.assertEqual((answer.address, answer.port), (AGENT_ADDR, 20000))
        self.assertEqual((agent.open_sockets, contact.open_sockets), (2, 2))
        self.assertEqual((agent.open_channels, contact.open_channels), (1, 1))

    def test_origin_is_the_half_address(self) -> None:
        """
        Each half writes its own media address into o= as into c=: an IPv6
        phone's offer reaches the IPv4 operator side as C{IN IP4} with the
        contact point's address in both (a client that takes the family
        from o= accepts it), and the operator's answer reaches the phone
        with the agent's; neither side's address crosses to the other.
        """
        offer = _sdp(PHONE, ("audio", 4000, "")).replace(
            b"IN IP4 " + PHONE.encode(), b"IN IP6 fd00::2"
        )
        reactor, agent, a_end, contact, c_end, to_operator, to_phone = self._call(offer)
        self.assertEqual(parse_sdp(to_operator).origin, ("-", "42", 1, "IN", "IP4", CONTACT_ADDR))
        self.assertEqual(parse_sdp(to_operator).media[0].address, CONTACT_ADDR)
        self.assertNotIn(b"fd00", to_operator)
        self.assertNotIn(b"IP6", to_operator)
        self.assertEqual(parse_sdp(to_phone).origin, ("-", "42", 1, "IN", "IP4", AGENT_ADDR))
        self.assertNotIn(OPERATOR.encode(), to_phone)

    def test_media_both_ways(self) -> None:
        """
        RTP and RTCP from the phone reach the operator's negotiated address
        through both halves, and the operator's reach the phone.
        """
        reactor, agent, a_end, contact, c_end, _, _ = self._call()
        phone_rtp = reactor.udp[AGENT_ADDR, 20000]
        phone_rtcp = reactor.udp[AGENT_ADDR, 20001]
        op_rtp = reactor.udp[CONTACT_ADDR, 30000]
        op_rtcp = reactor.udp[CONTACT_ADDR, 30001]
        for n in range(5):
            phone_rtp.receive(b"up%d" % n, (PHONE, 4000))
        phone_rtcp.receive(b"sr-up", (PHONE, 4001))
        self.assertEqual(op_rtp.sent, [(b"up%d" % n, (OPERATOR, 6000)) for n in range(5)])
        self.assertEqual(op_rtcp.sent, [(b"sr-up", (OPERATOR, 6001))])
        op_rtp.receive(b"down", (OPERATOR, 6000))
        op_rtcp.receive(b"sr-down", (OPERATOR, 6001))
        self.assertEqual(phone_rtp.sent, [(b"down", (PHONE, 4000))])
        self.assertEqual(phone_rtcp.sent, [(b"sr-down", (PHONE, 4001))])
        self.assertEqual(a_end.datagrams[-1], (1, b"sr-up", 1))

    def test_contact_strict_and_allow(self) -> None:
        """
        The contact point drops packets from the right host but another
        port (strict source), and never sends to a loopback address that an
        operator SDP names.
        """
        reactor, agent, a_end, contact, c_end, _, _ = self._call()
        op_rtp = reactor.udp[CONTACT_ADDR, 30000]
        op_rtp.receive(b"x", (OPERATOR, 6002))
        rtp, _ = contact.stream_endpoints(c_end.session_id, DIALOG, 0)
        self.assertEqual(rtp.dropped_source, 1)
        _, agent, a_end, contact, c_end, _, _ = self._call(answer=_sdp("127.0.0.1", ("audio", 6000, "")))
        reactor = contact.reactor
        reactor.udp[AGENT_ADDR, 20000].receive(b"up", (PHONE, 4000))
        self.assertEqual(reactor.udp[CONTACT_ADDR, 30000].sent, [])
        rtp, _ = contact.stream_endpoints(c_end.session_id, DIALOG, 0)
        self.assertEqual(rtp.dropped_no_target, 1)

    def test_dialog_ended_releases_everything(self) -> None:
        """
        When the dialog ends, both halves close their channels, unbind every
        socket and give back every port; no timer stays behind.
        """
        reactor, agent, a_end, contact, c_end, _, _ = self._call()
        agent.dialog_ended(a_end, DIALOG)
        contact.dialog_ended(c_end, DIALOG)
        assert_released(self, agent, contact)
        self.assertEqual(reactor.udp, {})
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(a_end.closed, [(1, 0, "dialog ended")])

    def test_unknown_channel_counted(self) -> None:
        """
        Datagrams on a channel the manager does not know are dropped and
        counted.
        """
        reactor, agent, a_end, contact, c_end, _, _ = self._call()
        agent.datagram_received(a_end, 99, b"x", 0)
        self.assertEqual(agent.dropped_unknown_channel, 1)

    def test_tunnel_lost(self) -> None:
        """
        Losing the tunnel releases every stream that used it.
        """
        reactor, agent, a_end, contact, c_end, _, _ = self._call()
        contact.session_ended(c_end.session_id, "connection lost")
        self.assertEqual((contact.open_sockets, contact.open_channels, contact.ports_in_use), (0, 0, 0))
        self.assertEqual(c_end.closed, [])

    def test_lost_leg_told(self) -> None:
        """
        A leg that ends for want of media (its tunnel lost) is shown to
        the C{leg_lost} hook with its session, key and reason before its
        record is made: the record's C{bye_sent} (also in the ended calls
        listing) and its log line say whom a BYE went to; a leg a BYE
        ended is not shown.
        """
        reactor, agent, a_end, contact, c_end, _, _ = self._call()
        told: list[tuple[str, str, str]] = []

        def lost(session_id: str, dialog_key: str, reason: str) -> list[str]:
            told.append((session_id, dialog_key, reason))
            return ["far party"]

        contact.leg_lost = lost
        with capturedLogs() as events:
            contact.session_ended(c_end.session_id, "connection lost")
        self.assertEqual(told, [(c_end.session_id, DIALOG, "tunnel lost")])
        self.assertEqual(contact.cdrs[-1]["bye_sent"], ["far party"])
        self.assertEqual(contact.ended_calls()[0]["bye_sent"], ["far party"])
        (line,) = [formatEvent(e) for e in events if "cdr" in e]
        self.assertIn("ended (tunnel lost) after", line)
        self.assertTrue(line.endswith(": BYE sent to the far party"), line)
        agent.leg_lost = lost
        agent.dialog_ended(a_end, DIALOG)
        self.assertEqual((len(told), agent.cdrs[-1]["bye_sent"]), (1, []))

    def test_session_lost_told_after_its_legs(self) -> None:
        """
        A session ended for good is shown to the C{session_lost} hook once,
        after its legs' C{leg_lost} (the SIP core ends there the calls of
        its that ring without a media stream); a session suspended is not.
        """
        reactor, agent, a_end, contact, c_end, _, _ = self._call()
        seen: list[Any] = []
        contact.leg_lost = lambda session_id, dialog_key, reason: seen.append(("leg", session_id)) or []
        contact.session_lost = lambda session_id: seen.append(("session", session_id))
        contact.session_suspended(c_end.session_id)
        self.assertEqual(seen, [])
        contact.session_ended(c_end.session_id, "connection lost")
        self.assertEqual(seen, [("leg", c_end.session_id), ("session", c_end.session_id)])

    def test_ringing_leg_told(self) -> None:
        """
        A ringing leg lost: the record's C{bye_sent} is what the SIP core
        sent to whom, and the log line says it in words.
        """
        reactor, agent, a_end, contact, c_end, _, _ = self._call()
        contact.leg_lost = lambda session_id, dialog_key, reason: ["far party (CANCEL)"]
        with capturedLogs() as events:
            contact.session_ended(c_end.session_id, "connection lost")
        self.assertEqual(contact.cdrs[-1]["bye_sent"], ["far party (CANCEL)"])
        (line,) = [formatEvent(e) for e in events if "cdr" in e]
        self.assertTrue(line.endswith(": CANCEL sent to the far party"), line)

    def test_streamless_leg_not_told(self) -> None:
        """
        A leg that never had a stream (only an answer without SDP crossed)
        and ends after the media timeout is not shown to C{leg_lost}: its
        SIP may be all there is to it.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        told: list[str] = []
        contact.leg_lost = lambda session_id, dialog_key, reason: told.append(reason) or []
        contact.dialog_answered(c_end, DIALOG, "b", ours=True)
        reactor.advance(contact.inactivity_timeout + 5)
        self.assertEqual([c["reason"] for c in contact.cdrs], ["media inactivity"])
        self.assertEqual(told, [])

    def test_multipart_and_no_sdp(self) -> None:
        """
        SDP inside multipart/mixed is rewritten in place; a body without SDP
        is returned as it is and opens nothing.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        self.assertEqual(contact.sdp_out_of_tunnel(c_end, DIALOG, "text/plain", b"hi"), b"hi")
        agent.sdp_into_tunnel(a_end, DIALOG, "", b"")
        self.assertEqual(a_end.opened, [])
        sdp = _sdp(PHONE, ("audio", 4000, ""))
        ctype = "multipart/mixed;boundary=b1"
        body = b"--b1\r\nContent-Type: application/sdp\r\n\r\n" + sdp + b"\r\n--b1--\r\n"
        agent.sdp_into_tunnel(a_end, DIALOG, ctype, body)
        out = contact.sdp_out_of_tunnel(c_end, DIALOG, ctype, body)
        self.assertTrue(out.startswith(b"--b1\r\nContent-Type: application/sdp\r\n\r\nv=0"))
        self.assertTrue(out.endswith(b"\r\n--b1--\r\n"))
        self.assertIn(b"c=IN IP4 198.51.100.1\r\n", out)

    def test_bundle_answer_shares_port(self) -> None:
        """
        Bundled m= lines (same address and port) share one relay port and
        one channel.
        """
        answer = _sdp(OPERATOR, ("audio", 6000, ""), ("video", 6000, ""))
        reactor, agent, a_end, contact, c_end = _pair()
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
        out = agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer)
        self.assertEqual([m.port for m in parse_sdp(out).media], [20000, 20000])
        self.assertEqual(len(c_end.opened), 1)
        self.assertEqual(agent.open_sockets, 2)

    def test_o_version_stable(self) -> None:
        """
        The same offer again (a retransmission or a session refresh) gives
        the same body with the same o= version.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        offer = _sdp(PHONE, ("audio", 4000, ""))
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        first = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        again = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", _sdp(PHONE, ("audio", 4000, ""), version=2))
        self.assertEqual(first, again)
        self.assertEqual(contact.open_sockets, 2)


class LifetimeTests(SynchronousTestCase):
    """
    Streams end with the dialog, with a re-offer that removes them, or after
    inactivity unless they are on hold.
    """

    def _established(self, offer: bytes, answer: bytes):
        reactor, agent, a_end, contact, c_end = _pair()
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
        agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer)
        return reactor, agent, a_end, contact, c_end

    @staticmethod
    def _answered(agent: MediaManager, a_end: FakeTunnel, contact: MediaManager, c_end: FakeTunnel) -> None:
        # the 2xx to the INVITE crossed both halves (from the operator side)
        contact.dialog_answered(c_end, DIALOG, "b", ours=True)
        agent.dialog_answered(a_end, DIALOG, "b", ours=False)

    def test_inactivity_releases(self) -> None:
        """
        A stream of an answered call without packets for the timeout (60 s)
        is released and its channel closed, which releases the peer's side
        too; while packets flow it stays.
        """
        reactor, agent, a_end, contact, c_end = self._established(
            _sdp(PHONE, ("audio", 4000, "")), _sdp(OPERATOR, ("audio", 6000, ""))
        )
        self._answered(agent, a_end, contact, c_end)
        phone_rtp = reactor.udp[AGENT_ADDR, 20000]
        for _ in range(12):
            phone_rtp.receive(b"rtp", (PHONE, 4000))
            reactor.advance(10)
        self.assertEqual((agent.streams, contact.streams), (1, 1))
        reactor.advance(61)
        reactor.advance(10)
        self.assertEqual((agent.streams, contact.streams), (0, 0))
        self.assertEqual((agent.open_sockets, contact.open_sockets), (0, 0))
        self.assertEqual((agent.open_channels, contact.open_channels), (0, 0))
        # the agent's call ended with its last stream; the contact point's,
        # whose stream the closed channel released, at once: its media had
        # been silent for the timeout too
        self.assertEqual((agent.calls, contact.calls), (0, 0))
        self.assertEqual([c["reason"] for c in agent.ended_calls()], ["media inactivity"])
        self.assertEqual([c["reason"] for c in contact.ended_calls()], ["media inactivity"])
        reactor.advance(60)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_short_timeout_on_both_halves(self) -> None:
        """
        With a 3 s media timeout on both halves and no packet at all, each
        half ends the call within the timeout and one sweep interval (1 s)
        of the answer, whichever half's sweep releases the stream first
        (the other's stream goes with the closed channel); the released
        stream's idle time is logged rounded, in seconds.
        """
        for late in ("agent", "contact"):
            reactor, agent, a_end, contact, c_end = _pair()
            agent.inactivity_timeout = contact.inactivity_timeout = 3.0
            offer, answer = _sdp(PHONE, ("audio", 4000, "")), _sdp(OPERATOR, ("audio", 6000, ""))
            # one half's sweep runs 0.5 s after the other's
            agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
            if late == "contact":
                reactor.advance(0.5)
            contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
            contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
            if late == "agent":
                reactor.advance(0.5)
            agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer)
            reactor.advance(0.25)
            answered = reactor.seconds()
            self._answered(agent, a_end, contact, c_end)
            ended: dict[str, float] = {}
            with capturedLogs() as events:
                for _ in range(100):
                    reactor.advance(0.05)
                    for name, half in (("agent", agent), ("contact", contact)):
                        if half.calls == 0:
                            ended.setdefault(name, reactor.seconds() - answered)
            self.assertEqual(sorted(ended), ["agent", "contact"], late)
            for name, after in ended.items():
                self.assertTrue(3.0 <= after <= 4.0 + 1e-9, (late, name, after))
            lines = [formatEvent(e) for e in events if "idle for" in e.get("log_format", "")]
            self.assertEqual(len(lines), 1, (late, lines))
            self.assertRegex(lines[0], r"^media stream 0 of dialog .* idle for [34]\.\d s: released$")
            self.assertEqual(reactor.getDelayedCalls(), [])

    def test_release_does_not_walk_the_dialogs(self) -> None:
        """
        Whether the sweep has anything left to watch is asked at every
        stream release; the answer costs the same whatever the number of
        dialogs in progress (here: dialogs whose streams a re-offer
        removed, which the sweep no longer watches). Counted in Python
        calls and lines, not time.
        """

        def calls_to_end_a_call(idle_dialogs: int) -> int:
            reactor = FakeUdpReactor()
            agent = MediaManager(reactor, "agent", AGENT_ADDR, (20000, 29999))
            end = FakeTunnel(1, "contact")
            offer = _sdp(PHONE, ("audio", 4000, ""))
            agent.sdp_into_tunnel(end, DIALOG, "application/sdp", offer)
            for n in range(idle_dialogs):
                key = f"idle-{n};from-tag=a"
                agent.sdp_into_tunnel(end, key, "application/sdp", offer)
                agent.sdp_into_tunnel(end, key, "application/sdp", _sdp(PHONE, ("audio", 0, ""), version=2))
            self.assertEqual(agent.streams, 1)
            self.assertEqual(agent._stream_count, 1)
            self.assertTrue(reactor.getDelayedCalls())
            calls = steps(lambda: agent.dialog_ended(end, DIALOG))
            self.assertEqual((agent.streams, agent._stream_count), (0, 0))
            # the dialogs without streams end after the media timeout, and
            # then nothing is left to watch: the sweep's timer is gone
            self.assertEqual(agent.calls, idle_dialogs)
            for _ in range(10):
                reactor.advance(agent.inactivity_timeout / 4)
            self.assertEqual(agent.calls, 0)
            self.assertEqual(reactor.getDelayedCalls(), [])
            return calls

        # the least of a few runs each, after one to warm up: a first run
        # pays for one-time work (a test run alone counted 827 steps for
        # ten dialogs and 528 for a thousand; CI once 528 against 541)
        calls_to_end_a_call(10)
        few = min(calls_to_end_a_call(10) for _ in range(3))
        many = min(calls_to_end_a_call(1000) for _ in range(2))
        self.assertEqual(many, few)

    def test_answer_repeated_after_bye(self) -> None:
        """
        A 2xx repeated after the BYE of an answered call (its
        retransmission, for up to 32 s) makes no media state on either
        half: no sockets, channels or dialog record come back; it is
        counted.  Past the memory, the dialog key is forgotten.
        """
        offer, answer = _sdp(PHONE, ("audio", 4000, "")), _sdp(OPERATOR, ("audio", 6000, ""))
        reactor, agent, a_end, contact, c_end = self._established(offer, answer)
        contact.dialog_answered(c_end, DIALOG, "tt", ours=True)
        agent.dialog_answered(a_end, DIALOG, "tt", ours=False)
        agent.dialog_ended(a_end, DIALOG)
        contact.dialog_ended(c_end, DIALOG)
        reactor.advance(2)
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
        self.assertEqual(agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer), answer)
        contact.dialog_answered(c_end, DIALOG, "tt", ours=True)
        agent.dialog_answered(a_end, DIALOG, "tt", ours=False)
        assert_released(self, agent, contact)
        self.assertEqual((agent.dialog_keys(a_end.session_id), contact.dialog_keys(c_end.session_id)), ([], []))
        self.assertEqual((agent.ignored_after_end, contact.ignored_after_end), (2, 2))
        reactor.advance(65)
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
        self.assertEqual(contact.dialog_keys(c_end.session_id), [DIALOG])

    def test_failed_invite_retried(self) -> None:
        """
        An INVITE refused before any answer (a 407 challenge) ends the
        leg's media, and the same INVITE retried with credentials (same
        Call-ID) gets media again at once.
        """
        offer = _sdp(PHONE, ("audio", 4000, ""))
        reactor, agent, a_end, contact, c_end = _pair()
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        contact.dialog_ended(c_end, DIALOG)
        agent.dialog_ended(a_end, DIALOG)
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        self.assertEqual((agent.streams, contact.streams), (1, 1))
        self.assertEqual((agent.ignored_after_end, contact.ignored_after_end), (0, 0))

    def test_hold_survives_timeout(self) -> None:
        """
        A call put on hold (a=sendonly from the phone, answered recvonly)
        carries no packets for far longer than the timeout and stays; after
        resuming, silence releases it again.
        """
        reactor, agent, a_end, contact, c_end = self._established(
            _sdp(PHONE, ("audio", 4000, "")), _sdp(OPERATOR, ("audio", 6000, ""))
        )
        self._answered(agent, a_end, contact, c_end)
        hold = _sdp(PHONE, ("audio", 4000, "a=sendonly"), version=2)
        held_answer = _sdp(OPERATOR, ("audio", 6000, "a=recvonly"), version=2)
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", hold)
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", hold)
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", held_answer)
        agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", held_answer)
        for _ in range(60):
            reactor.advance(10)
        self.assertEqual((agent.streams, contact.streams), (1, 1))
        self.assertEqual(len(a_end.opened), 1)
        resume = _sdp(PHONE, ("audio", 4000, ""), version=3)
        answer = _sdp(OPERATOR, ("audio", 6000, ""), version=3)
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", resume)
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", resume)
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
        agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer)
        for _ in range(8):
            reactor.advance(10)
        self.assertEqual((agent.streams, contact.streams), (0, 0))

    def test_ringing_outlasts_the_timeout(self) -> None:
        """
        A call not answered yet may ring for minutes without early media:
        its streams outlast the media timeout, so that an answer after 90 s
        of ringing has its ports and channel on both halves (also through a
        sweep before its first packet: the answer restarts the idle clock)
        and media flows both ways; a call never answered and never ended is
        released after L{UNANSWERED_TIMEOUT} without media.
        """
        offer, answer = _sdp(PHONE, ("audio", 4000, "")), _sdp(OPERATOR, ("audio", 6000, ""))
        reactor, agent, a_end, contact, c_end = _pair()
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        to_operator = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        for _ in range(9):
            reactor.advance(10)
        self.assertEqual((agent.streams, contact.streams, agent.open_channels, contact.open_channels), (1, 1, 1, 1))
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
        to_phone = agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer)
        self._answered(agent, a_end, contact, c_end)
        # a sweep between the answer and the first packet keeps the streams:
        # the answer restarts their idle clock
        reactor.advance(10)
        self.assertEqual((agent.streams, contact.streams), (1, 1))
        relay_port = parse_sdp(to_operator).media[0].port
        agent_port = parse_sdp(to_phone).media[0].port
        reactor.udp[AGENT_ADDR, agent_port].receive(b"from-phone", (PHONE, 4000))
        reactor.udp[CONTACT_ADDR, relay_port].receive(b"from-bob", (OPERATOR, 6000))
        self.assertIn((b"from-phone", (OPERATOR, 6000)), reactor.udp[CONTACT_ADDR, relay_port].sent)
        self.assertIn((b"from-bob", (PHONE, 4000)), reactor.udp[AGENT_ADDR, agent_port].sent)
        # answered: the media timeout applies again
        for _ in range(8):
            reactor.advance(10)
        assert_released(self, agent, contact)
        reactor, agent, a_end, contact, c_end = _pair()
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        reactor.advance(UNANSWERED_TIMEOUT - 11)
        self.assertEqual((agent.streams, contact.streams), (1, 1))
        for _ in range(3):
            reactor.advance(10)
        assert_released(self, agent, contact)

    def test_dialog_without_media_ends(self) -> None:
        """
        A dialog that SIP never ends stops counting as a call once it has
        no media: an INVITE that no answer ever reached, after
        L{UNANSWERED_TIMEOUT} (its C{--max-calls} place comes free), and
        an answered call whose both ends vanished without a BYE, after the
        media timeout; a half whose stream the other half's closed channel
        released follows a media timeout later, as does a leg that only
        ever saw an answer without SDP.  The call records say "media
        inactivity"; a late BYE changes nothing, and a later offer makes
        the dialog anew.
        """
        offer, answer = _sdp(PHONE, ("audio", 4000, "")), _sdp(OPERATOR, ("audio", 6000, ""))
        reactor, agent, a_end, contact, c_end = _pair(max_calls=1)
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        self.assertTrue(contact.at_call_limit)
        for _ in range(int(UNANSWERED_TIMEOUT + 2 * contact.inactivity_timeout) // 10):
            reactor.advance(10)
        self.assertEqual((agent.calls, contact.calls, contact.at_call_limit), (0, 0, False))
        self.assertEqual(reactor.getDelayedCalls(), [])
        reasons = [c["reason"] for m in (agent, contact) for c in m.ended_calls()]
        self.assertEqual(reasons, ["media inactivity", "media inactivity"])
        agent.dialog_ended(a_end, DIALOG)
        contact.dialog_ended(c_end, DIALOG)
        self.assertEqual((len(agent.ended_calls()), len(contact.ended_calls())), (1, 1))
        # answered, then silent for good
        reactor, agent, a_end, contact, c_end = self._established(offer, answer)
        self._answered(agent, a_end, contact, c_end)
        for _ in range(14):
            reactor.advance(10)
        self.assertEqual((agent.calls, contact.calls), (0, 0))
        self.assertEqual(reactor.getDelayedCalls(), [])
        # a later offer makes it anew
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", _sdp(PHONE, ("audio", 4000, ""), version=2))
        self.assertEqual((agent.calls, agent.streams), (1, 1))
        # a leg that only ever saw an answer without SDP
        reactor, agent, a_end, contact, c_end = _pair()
        agent.dialog_answered(a_end, "other", "b", ours=False)
        self.assertEqual(agent.calls, 1)
        for _ in range(8):
            reactor.advance(10)
        self.assertEqual(agent.calls, 0)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_invite_without_response_ends(self) -> None:
        """
        A new call whose INVITE no response of any kind reached (the next
        hop down) ends on both halves once its caller has given up (Timer
        B, L{NO_RESPONSE_TIMEOUT}), within one sweep, with the call record
        reason "no response": its ports and its C{--max-calls} place come
        free, and no timer is left.  A provisional response (a 100 from
        the operator's proxy, a 180) means the INVITE was taken: that call
        rings on, up to L{UNANSWERED_TIMEOUT} without media, and so does
        one whose dialog a response made (no INVITE seen waiting).
        """
        offer = _sdp(PHONE, ("audio", 4000, ""))

        def invited(max_calls: int | None = None) -> Any:
            built = _pair() if max_calls is None else _pair(max_calls=max_calls)
            reactor, agent, a_end, contact, c_end = built
            agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
            agent.dialog_invited(a_end, DIALOG)
            contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
            contact.dialog_invited(c_end, DIALOG)
            return built

        reactor, agent, a_end, contact, c_end = invited(max_calls=1)
        self.assertTrue(contact.at_call_limit)
        reactor.advance(NO_RESPONSE_TIMEOUT - 1)
        self.assertEqual((agent.calls, contact.calls), (1, 1))
        reactor.advance(1 + sweep_interval(contact.inactivity_timeout))
        self.assertEqual((agent.calls, contact.calls, contact.at_call_limit), (0, 0, False))
        for manager in (agent, contact):
            self.assertEqual((manager.open_sockets, manager.open_channels, manager.ports_in_use), (0, 0, 0))
        self.assertEqual(reactor.getDelayedCalls(), [])
        reasons = [c["reason"] for m in (agent, contact) for c in m.ended_calls()]
        self.assertEqual(reasons, ["no response", "no response"])
        # heard: it rings on past Timer B (a 100 Trying at the contact
        # point, a 180 at the agent)
        reactor, agent, a_end, contact, c_end = invited()
        reactor.advance(1)
        contact.dialog_heard(c_end, DIALOG)
        agent.dialog_heard(a_end, DIALOG)
        for _ in range(4):
            reactor.advance(10)
        self.assertEqual((agent.calls, contact.calls), (1, 1))
        # once heard, another INVITE mark changes nothing
        agent.dialog_invited(a_end, DIALOG)
        contact.dialog_invited(c_end, DIALOG)
        while reactor.seconds() < UNANSWERED_TIMEOUT - 10:
            reactor.advance(10)
        self.assertEqual((agent.calls, contact.calls), (1, 1))
        for _ in range(2):
            reactor.advance(10)
        # (the contact point's stream went with the agent's closed
        # channel: its leg follows a media timeout later)
        self.assertEqual(agent.calls, 0)
        for _ in range(7):
            reactor.advance(10)
        self.assertEqual((agent.calls, contact.calls), (0, 0))
        reasons = [c["reason"] for m in (agent, contact) for c in m.ended_calls()]
        self.assertEqual(reasons, ["media inactivity", "media inactivity"])
        # the answer ends the wait too, and a dialog an answer made never
        # waits (a re-INVITE's answer after the media ended)
        reactor, agent, a_end, contact, c_end = invited()
        agent.dialog_answered(a_end, DIALOG, "b", ours=False)
        other = "2/other@example.test"
        agent.sdp_out_of_tunnel(a_end, other, "application/sdp", _sdp(OPERATOR, ("audio", 6000, "")))
        agent.dialog_invited(a_end, other)
        agent.dialog_answered(a_end, other, "b", ours=False)
        reactor.advance(NO_RESPONSE_TIMEOUT + 10)
        self.assertEqual(agent.calls, 2)
        self.assertEqual(agent.ended_calls(), [])

    def test_hold_address_survives_timeout(self) -> None:
        """
        RFC 2543 hold (c=0.0.0.0) counts as hold too, and no media is sent to
        0.0.0.0.
        """
        reactor, agent, a_end, contact, c_end = self._established(
            _sdp(PHONE, ("audio", 4000, "")), _sdp(OPERATOR, ("audio", 6000, ""))
        )
        hold = _sdp("0.0.0.0", ("audio", 4000, ""), version=2)
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", hold)
        out = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", hold)
        self.assertIn(b"c=IN IP4 0.0.0.0\r\n", out)
        reactor.udp[CONTACT_ADDR, 30000].receive(b"x", (OPERATOR, 6000))
        self.assertEqual(reactor.udp[AGENT_ADDR, 20000].sent, [])
        for _ in range(30):
            reactor.advance(10)
        self.assertEqual((agent.streams, contact.streams), (1, 1))

    def test_reoffer_port_zero_closes_stream(self) -> None:
        """
        A re-offer that sets the video port to 0 closes the video channel and
        frees its sockets and ports on both halves; audio stays.
        """
        reactor, agent, a_end, contact, c_end = self._established(
            _sdp(PHONE, ("audio", 4000, ""), ("video", 4002, "")),
            _sdp(OPERATOR, ("audio", 6000, ""), ("video", 6002, "")),
        )
        self.assertEqual((agent.open_sockets, contact.open_sockets), (4, 4))
        self.assertEqual(len(a_end.opened), 2)
        reoffer = _sdp(PHONE, ("audio", 4000, ""), ("video", 0, ""), version=2)
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", reoffer)
        self.assertEqual(a_end.closed, [(3, 0, "stream removed")])
        out = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", reoffer)
        self.assertEqual([m.port for m in parse_sdp(out).media], [30000, 0])
        for manager in (agent, contact):
            self.assertEqual((manager.open_sockets, manager.open_channels, manager.ports_in_use), (2, 1, 1))

    def test_new_stream_in_reoffer_from_operator(self) -> None:
        """
        A re-offer from the operator side that adds video makes the contact
        point open the new stream's channel.
        """
        reactor, agent, a_end, contact, c_end = self._established(
            _sdp(PHONE, ("audio", 4000, "")), _sdp(OPERATOR, ("audio", 6000, ""))
        )
        reoffer = _sdp(OPERATOR, ("audio", 6000, ""), ("video", 6002, ""), version=2)
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", reoffer)
        self.assertEqual(c_end.opened[0][0], 2)
        self.assertEqual(c_end.opened[0][2]["stream"], 1)
        out = agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", reoffer)
        self.assertEqual([m.port for m in parse_sdp(out).media], [20000, 20002])
        self.assertEqual(agent.open_channels, 2)


class ReofferTests(SynchronousTestCase):
    """
    A re-offer (re-INVITE or UPDATE with SDP in an answered call) takes
    effect with its 2xx; until then the old session goes on, and a
    non-2xx final response (488, 491, 487 after a CANCEL) leaves the media
    exactly as before the offer (RFC 3261 section 14, RFC 3264 section 8).
    """

    REINVITE = (2, "INVITE")

    def _call(self, video: bool = False):
        offer = _sdp(PHONE, ("audio", 4000, ""), *([("video", 4002, "")] if video else []))
        answer = _sdp(OPERATOR, ("audio", 6000, ""), *([("video", 6002, "")] if video else []))
        reactor, agent, a_end, contact, c_end = _pair()
        _negotiate(agent, a_end, contact, c_end, DIALOG, offer, answer)
        contact.dialog_answered(c_end, DIALOG, "b", ours=True)
        agent.dialog_answered(a_end, DIALOG, "b", ours=False)
        return reactor, agent, a_end, contact, c_end

    def _operator_offers(self, agent, a_end, contact, c_end, sdp: bytes, key=REINVITE) -> bytes:
        # the operator side's re-INVITE crosses the contact point, then the agent
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", sdp, offer=key)
        return agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", sdp, offer=key)

    def _phone_settles(self, agent, a_end, contact, c_end, accepted: bool, key=REINVITE) -> None:
        # the phone's final response to the operator's re-INVITE
        agent.offer_settled(a_end, DIALOG, False, key, accepted)
        contact.offer_settled(c_end, DIALOG, True, key, accepted)

    def _both_ways(self, reactor, operator_port: int, phone_port: int = 4000, video: bool = False) -> None:
        """
        RTP from the operator's C{operator_port} reaches the phone, and the
        phone's reaches that port.
        """
        base = 2 if video else 0
        op_rtp = reactor.udp[CONTACT_ADDR, 30000 + 2 * base // 2]
        phone_rtp = reactor.udp[AGENT_ADDR, 20000 + 2 * base // 2]
        before = (len(op_rtp.sent), len(phone_rtp.sent))
        op_rtp.receive(b"down", (OPERATOR, operator_port))
        phone_rtp.receive(b"up", (PHONE, phone_port))
        self.assertEqual(phone_rtp.sent[before[1]:], [(b"down", (PHONE, phone_port))])
        self.assertEqual(op_rtp.sent[before[0]:], [(b"up", (OPERATOR, operator_port))])

    def test_refused_port_change_keeps_old_address(self) -> None:
        """
        The operator side moves its audio to another port in a re-INVITE
        and the phone refuses it (488): the contact point goes on relaying
        from and to the old, still valid port (strict source), both ways.
        """
        reactor, agent, a_end, contact, c_end = self._call()
        self._both_ways(reactor, 6000)
        out = self._operator_offers(agent, a_end, contact, c_end, _sdp(OPERATOR, ("audio", 6008, ""), version=2))
        # our relay port towards the phone stays the one it knows
        self.assertEqual(parse_sdp(out).media[0].port, 20000)
        self._phone_settles(agent, a_end, contact, c_end, accepted=False)
        self._both_ways(reactor, 6000)
        self._both_ways(reactor, 6000)
        rtp, _ = contact.stream_endpoints(c_end.session_id, DIALOG, 0)
        self.assertEqual(rtp.dropped_source, 0)

    def test_pending_offer_keeps_old_address_until_answer(self) -> None:
        """
        While the re-INVITE waits for its answer the old port is relayed
        both ways; its 2xx moves the media to the new port (the old one is
        dropped from then on).
        """
        reactor, agent, a_end, contact, c_end = self._call()
        self._operator_offers(agent, a_end, contact, c_end, _sdp(OPERATOR, ("audio", 6008, ""), version=2))
        self._both_ways(reactor, 6000)
        self._phone_settles(agent, a_end, contact, c_end, accepted=True)
        answer = _sdp(PHONE, ("audio", 4000, ""), version=2)
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", answer)
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", answer)
        self._both_ways(reactor, 6008)
        rtp, _ = contact.stream_endpoints(c_end.session_id, DIALOG, 0)
        reactor.udp[CONTACT_ADDR, 30000].receive(b"old", (OPERATOR, 6000))
        self.assertEqual(rtp.dropped_source, 1)

    def test_refused_stream_removal_keeps_stream(self) -> None:
        """
        The phone re-offers without video (port 0) and the operator side
        refuses it: the video stream, its channel and its relay ports stay
        on both halves and go on relaying; an accepted removal releases it.
        """
        reactor, agent, a_end, contact, c_end = self._call(video=True)
        reoffer = _sdp(PHONE, ("audio", 4000, ""), ("video", 0, ""), version=2)
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", reoffer, offer=self.REINVITE)
        out = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", reoffer, offer=self.REINVITE)
        self.assertEqual([m.port for m in parse_sdp(out).media], [30000, 0])
        self.assertEqual(a_end.closed, [])
        # the operator side answers 488: it goes into the tunnel at the contact point
        contact.offer_settled(c_end, DIALOG, False, self.REINVITE, False)
        agent.offer_settled(a_end, DIALOG, True, self.REINVITE, False)
        for manager in (agent, contact):
            self.assertEqual((manager.open_sockets, manager.open_channels, manager.ports_in_use), (4, 2, 2))
        self._both_ways(reactor, 6002, 4002, video=True)
        # the same offer again, accepted this time
        reoffer = _sdp(PHONE, ("audio", 4000, ""), ("video", 0, ""), version=3)
        key = (3, "INVITE")
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", reoffer, offer=key)
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", reoffer, offer=key)
        contact.offer_settled(c_end, DIALOG, False, key, True)
        agent.offer_settled(a_end, DIALOG, True, key, True)
        self.assertEqual([reason for _, _, reason in c_end.closed], ["stream removed"])
        for manager in (agent, contact):
            self.assertEqual((manager.open_sockets, manager.open_channels, manager.ports_in_use), (2, 1, 1))

    def test_refused_new_stream_released(self) -> None:
        """
        A refused re-offer that added video releases the new stream on both
        halves; audio goes on.
        """
        reactor, agent, a_end, contact, c_end = self._call()
        self._operator_offers(
            agent, a_end, contact, c_end, _sdp(OPERATOR, ("audio", 6000, ""), ("video", 6002, ""), version=2)
        )
        self.assertEqual((agent.open_channels, contact.open_channels), (2, 2))
        self._phone_settles(agent, a_end, contact, c_end, accepted=False)
        for manager in (agent, contact):
            self.assertEqual((manager.open_sockets, manager.open_channels, manager.ports_in_use), (2, 1, 1))
        self._both_ways(reactor, 6000)

    def test_glare(self) -> None:
        """
        Both sides re-offer at once (each moving its port) and both get 491:
        the media stays on the old addresses both ways.
        """
        reactor, agent, a_end, contact, c_end = self._call()
        phone_key, operator_key = (2, "INVITE"), (7, "INVITE")
        mine = _sdp(PHONE, ("audio", 4010, ""), version=2)
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", mine, offer=phone_key)
        self._operator_offers(
            agent, a_end, contact, c_end, _sdp(OPERATOR, ("audio", 6008, ""), version=2), key=operator_key
        )
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", mine, offer=phone_key)
        self._both_ways(reactor, 6000)
        # 491 to each
        contact.offer_settled(c_end, DIALOG, False, phone_key, False)
        agent.offer_settled(a_end, DIALOG, True, phone_key, False)
        self._phone_settles(agent, a_end, contact, c_end, accepted=False, key=operator_key)
        self._both_ways(reactor, 6000)

    def test_cancelled_reinvite_through_show_media(self) -> None:
        """
        The SIP wiring: a re-INVITE from the operator side that moves its
        port is CANCELled and answered 487; a response to another request
        (a 491 to CSeq 1) settles nothing. The old port is relayed both
        ways all along.
        """
        from spwm.sip.actions import show_media
        from spwm.sip.message import parse_message

        from .test_sip_proxy import answer, request

        reactor, agent, a_end, contact, c_end = _pair()
        a_hook, c_hook = MediaHookAdapter(agent), MediaHookAdapter(contact)
        key = "1/call-1@192.0.2.10"

        def cross(message: bytes, from_phone: bool) -> None:
            # from one side's hook into the tunnel, out of the other's
            first, second = (a_hook, c_hook) if from_phone else (c_hook, a_hook)
            ends = (a_end, c_end) if from_phone else (c_end, a_end)
            show_media(first, ends[0], 1, parse_message(message), True)
            show_media(second, ends[1], 1, parse_message(message), False)

        invite = request(
            "INVITE", "sip:bob@example.org", body=_sdp(PHONE, ("audio", 4000, "")), content_type=SDP_TYPE
        )
        cross(invite, True)
        cross(answer(invite, 200, body=_sdp(OPERATOR, ("audio", 6000, ""))), False)
        self._both_ways(reactor, 6000)
        def from_operator(cseq: int, **sdp: Any) -> bytes:
            # an INVITE inside the dialog, from the operator side
            return request(
                "INVITE",
                "sip:alice@192.0.2.10",
                from_="<sip:bob@example.org>;tag=tt",
                to="<sip:alice@example.org>;tag=fa",
                cseq=cseq,
                **sdp,
            )

        reinvite = from_operator(5, body=_sdp(OPERATOR, ("audio", 6008, ""), version=2), content_type=SDP_TYPE)
        cross(reinvite, False)
        self._both_ways(reactor, 6000)
        other = from_operator(1)
        cross(answer(other, 491, "Request Pending", to_tag="fa"), True)
        self.assertEqual(sorted(contact._sessions[c_end.session_id][key].leg.pending), [True])
        cross(answer(reinvite, 487, "Request Terminated", to_tag="fa"), True)
        self.assertEqual(contact._sessions[c_end.session_id][key].leg.pending, {})
        self._both_ways(reactor, 6000)
        rtp, _ = contact.stream_endpoints(c_end.session_id, key, 0)
        self.assertEqual(rtp.dropped_source, 0)


class ReaddedStreamRecordTests(SynchronousTestCase):
    """
    The call detail record of a call whose stream was removed (port 0,
    applied by its 2xx) and added again on new relay ports: it shows the
    stream over both incarnations, and an endpoint's report about the
    gap is not taken for loss; a stream added by a refused offer is not
    in it.
    """

    def setUp(self) -> None:
        from spwm.media import relay

        self.reactor, self.agent, self.a_end, self.contact, self.c_end = ReofferTests()._call()
        self.patch(relay, "_monotonic", self.reactor.seconds)
        self.version = 1

    def _reoffer(self, operator_port: int, phone_port: int, cseq: int) -> tuple[int, int]:
        """
        The operator side re-offers audio on C{operator_port}; the phone
        accepts (200) with C{phone_port} (0: removes it).

        @return: the relay ports: the agent's towards the phone, the
            contact point's towards the operator side (0: none).
        """
        key = (cseq, "INVITE")
        self.version += 1
        offer = _sdp(OPERATOR, ("audio", operator_port, ""), version=self.version)
        self.contact.sdp_into_tunnel(self.c_end, DIALOG, "application/sdp", offer, offer=key)
        to_phone = self.agent.sdp_out_of_tunnel(self.a_end, DIALOG, "application/sdp", offer, offer=key)
        self.agent.offer_settled(self.a_end, DIALOG, False, key, True)
        self.contact.offer_settled(self.c_end, DIALOG, True, key, True)
        answer = _sdp(PHONE, ("audio", phone_port, ""), version=self.version)
        self.agent.sdp_into_tunnel(self.a_end, DIALOG, "application/sdp", answer)
        to_operator = self.contact.sdp_out_of_tunnel(self.c_end, DIALOG, "application/sdp", answer)
        return parse_sdp(to_phone).media[0].port, parse_sdp(to_operator).media[0].port

    def _talk(self, ports: tuple[int, int], phone_seqs: range, operator_seqs: range) -> None:
        """
        RTP both ways, 20 ms apart: the phone's from its port 4000, the
        operator side's from its port 6000 (SSRC 9).
        """
        from .test_media_quality import rtp

        phone = self.reactor.udp[AGENT_ADDR, ports[0]]
        far = self.reactor.udp[CONTACT_ADDR, ports[1]]
        for up, down in zip(phone_seqs, operator_seqs):
            phone.receive(rtp(up, up * 160), (PHONE, 4000))
            far.receive(rtp(down, down * 160, ssrc=9), (OPERATOR, 6000))
            self.reactor.advance(0.02)

    def _records(self) -> tuple[dict, dict]:
        self.agent.dialog_ended(self.a_end, DIALOG)
        self.contact.dialog_ended(self.c_end, DIALOG)
        ((a_record,), (c_record,)) = (self.agent.cdrs, self.contact.cdrs)
        return a_record, c_record

    def test_incarnations_summed(self) -> None:
        """
        Audio removed by a 200 with port 0 and added again 5 s later: each
        half's record counts the packets and relay counters of both
        incarnations, on each leg.
        """
        self._talk((20000, 30000), range(1, 51), range(1000, 1050))
        self.assertEqual(self._reoffer(6000, 0, 2)[1], 0)
        self.reactor.advance(5)
        ports = self._reoffer(6000, 4000, 3)
        self.assertNotEqual(ports[1], 0)
        self._talk(ports, range(51, 81), range(1300, 1330))
        a_record, c_record = self._records()
        for record, legs in ((a_record, ("lan", "tunnel")), (c_record, ("tunnel", "operator"))):
            (stream,) = record["streams"]
            self.assertEqual([stream["legs"][leg]["packets"] for leg in legs], [80, 80], record["side"])
            self.assertEqual([stream["legs"][leg]["lost"] for leg in legs], [0, 0], record["side"])
            self.assertEqual((stream["relay"]["packets_in"], stream["relay"]["packets_out"]), (80, 80))
        self.assertTrue(_cdr_summary(a_record).startswith("stream 0: lan 80 pkts lost 0"), _cdr_summary(a_record))

    def test_report_about_the_gap_is_not_loss(self) -> None:
        """
        The operator side goes on numbering its RTP while the audio is
        removed (its packets reach no relay), and the phone's first report
        after the audio is added again covers that gap: half of the
        interval "lost". Neither half rates the down direction by it
        (before: MOS down about 1.5 with no packet lost on any leg).
        """
        from .test_media_quality import report_block, rr

        self._talk((20000, 30000), range(1, 51), range(1000, 1050))
        self._reoffer(6000, 0, 2)
        self.reactor.advance(5)
        ports = self._reoffer(6000, 4000, 3)
        self._talk(ports, range(51, 301), range(1300, 1550))
        phone_rtcp = self.reactor.udp[AGENT_ADDR, ports[0] + 1]
        phone_rtcp.receive(rr(0x1234, [report_block(9, 128, 250, 1549, 8, 0, 0)]), (PHONE, 4001))
        a_record, c_record = self._records()
        for record in (a_record, c_record):
            self.assertGreater(record["mos"]["down"], 4.3, record["side"])
            self.assertEqual(record["streams"][0]["mos"], record["mos"])

    def test_refused_codec_not_taken(self) -> None:
        """
        The operator side re-offers G.729 only: refused by a 488 the
        stream goes on with PCMU, and removed by a 200 with port 0 it was
        PCMU all along; its figures are rated as PCMU (G.729's impairment
        capped MOS at 4.06 before).
        """
        g729 = _sdp(OPERATOR, ("audio", 6008, "a=rtpmap:18 G729/8000"), version=2).replace(b"RTP/AVP 0", b"RTP/AVP 18")
        self._talk((20000, 30000), range(1, 51), range(1000, 1050))
        ReofferTests()._operator_offers(self.agent, self.a_end, self.contact, self.c_end, g729)
        ReofferTests()._phone_settles(self.agent, self.a_end, self.contact, self.c_end, accepted=False)
        for manager, end in ((self.agent, self.a_end), (self.contact, self.c_end)):
            (call,) = manager.live_calls()
            self.assertEqual(call["streams"][0]["quality"]["codec"], "PCMU/8000", manager.side)
        key = (3, "INVITE")
        ReofferTests()._operator_offers(
            self.agent, self.a_end, self.contact, self.c_end, g729.replace(b" 2 IN", b" 3 IN"), key=key
        )
        ReofferTests()._phone_settles(self.agent, self.a_end, self.contact, self.c_end, accepted=True, key=key)
        answer = _sdp(PHONE, ("audio", 0, ""), version=2)
        self.agent.sdp_into_tunnel(self.a_end, DIALOG, "application/sdp", answer)
        self.contact.sdp_out_of_tunnel(self.c_end, DIALOG, "application/sdp", answer)
        for record in self._records():
            self.assertEqual(record["streams"][0]["codec"], "PCMU/8000", record["side"])
            self.assertEqual(record["mos"], {"up": 4.39, "down": 4.39}, record["side"])

    def test_refused_added_stream_not_recorded(self) -> None:
        """
        A re-offer that adds video, refused (488): neither half's record
        lists the video stream, which never carried media.
        """
        ReofferTests()._operator_offers(
            self.agent,
            self.a_end,
            self.contact,
            self.c_end,
            _sdp(OPERATOR, ("audio", 6000, ""), ("video", 6002, ""), version=2),
        )
        ReofferTests()._phone_settles(self.agent, self.a_end, self.contact, self.c_end, accepted=False)
        self._talk((20000, 30000), range(1, 11), range(1000, 1010))
        a_record, c_record = self._records()
        self.assertEqual([s["index"] for s in a_record["streams"]], [0])
        self.assertEqual([s["index"] for s in c_record["streams"]], [0])


    def test_added_stream_refused_in_the_answer_not_recorded(self) -> None:
        """
        A re-offer that adds video, accepted by a 200 whose answer refuses
        the video (port 0): neither half's record lists it.
        """
        key = (2, "INVITE")
        offer = _sdp(OPERATOR, ("audio", 6000, ""), ("video", 6002, ""), version=2)
        ReofferTests()._operator_offers(self.agent, self.a_end, self.contact, self.c_end, offer, key=key)
        ReofferTests()._phone_settles(self.agent, self.a_end, self.contact, self.c_end, accepted=True, key=key)
        answer = _sdp(PHONE, ("audio", 4000, ""), ("video", 0, ""), version=2)
        self.agent.sdp_into_tunnel(self.a_end, DIALOG, "application/sdp", answer)
        self.contact.sdp_out_of_tunnel(self.c_end, DIALOG, "application/sdp", answer)
        self._talk((20000, 30000), range(1, 11), range(1000, 1010))
        a_record, c_record = self._records()
        self.assertEqual([s["index"] for s in a_record["streams"]], [0])
        self.assertEqual([s["index"] for s in c_record["streams"]], [0])

    def test_stream_not_in_the_answer_not_recorded(self) -> None:
        """
        The phone offers audio and video, the answer refuses video (port
        0): neither half's record lists the video stream.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        offer = _sdp(PHONE, ("audio", 4000, ""), ("video", 4002, ""))
        answer = _sdp(OPERATOR, ("audio", 6000, ""), ("video", 0, ""))
        _negotiate(agent, a_end, contact, c_end, DIALOG, offer, answer)
        contact.dialog_answered(c_end, DIALOG, "b", ours=True)
        agent.dialog_answered(a_end, DIALOG, "b", ours=False)
        agent.dialog_ended(a_end, DIALOG)
        contact.dialog_ended(c_end, DIALOG)
        for manager in (agent, contact):
            (record,) = manager.cdrs
            self.assertEqual([s["index"] for s in record["streams"]], [0], manager.side)


class SuspendedSessionTests(SynchronousTestCase):
    """
    A call that SIP waiting for a resumption starts (its session
    suspended, no connection open) keeps its stream until the resumption
    brings the channel.
    """

    OFFER = _sdp(PHONE, ("audio", 4000, ""))

    def test_stream_waits_for_the_resumption(self) -> None:
        """
        The stream made while the session is suspended has no channel and
        is not released; after the resumption the peer's channel for it is
        attached and RTP goes through.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        agent.session_suspended(a_end.session_id)
        a_end.open_error = TunnelNotOpenError("the session has no open connection")
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", self.OFFER)
        self.assertEqual((agent.streams, agent.open_channels, agent.rejected_streams), (1, 0, 0))
        a_end.open_error = None
        agent.session_resumed(a_end.session_id, a_end, reopen=False)
        # the INVITE reaches the contact point on the resumed session: it
        # opens the stream's channel, which the agent attaches
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", self.OFFER)
        self.assertEqual((agent.open_channels, contact.open_channels), (1, 1))
        answer = _sdp(OPERATOR, ("audio", 6000, ""))
        contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
        agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer)
        [(_, port)] = [key for key in reactor.udp if key[0] == AGENT_ADDR and key[1] % 2 == 0]
        reactor.udp[AGENT_ADDR, port].receive(b"rtp", (PHONE, 4000))
        self.assertEqual([d for _, d, _ in a_end.datagrams], [b"rtp"])

    def test_both_halves_open_a_channel_for_a_stream(self) -> None:
        """
        Around a resumption both halves open a channel for the same stream
        before either sees the other's: the agent takes the contact
        point's and closes its own, the contact point refuses the agent's,
        and RTP goes both ways on the contact point's channel; neither half
        releases the stream.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        _negotiate(agent, a_end, contact, c_end, DIALOG, self.OFFER, _sdp(OPERATOR, ("audio", 6000, "")))
        # the new connection, as each half sees it
        a_new, c_new = FakeTunnel(1, "contact"), FakeTunnel(2, "agent")
        a_new.app, c_new.app = agent, contact
        # the agent's open of its channel is still on its way when the
        # contact point opens its own
        agent.session_resumed(a_end.session_id, a_new, reopen=True)
        (agent_channel, kind, meta) = a_new.opened[-1]
        c_new.other = a_new
        contact.session_resumed(c_end.session_id, c_new, reopen=True)
        (contact_channel, _, _) = c_new.opened[-1]
        a_new.other = c_new
        with capturedLogs() as events:
            Router(None, {"media": contact}, None).channel_requested(c_new, agent_channel, kind, dict(meta))
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])
        self.assertEqual((agent.streams, contact.streams), (1, 1))
        self.assertEqual(agent.replaced_channels, 1)
        self.assertEqual([c[0] for c in a_new.closed], [agent_channel])
        self.assertEqual([c[:2] for c in c_new.closed], [(agent_channel, ErrorCode.REFUSED)])
        # on the contact point the refusal is the protocol: counted, no
        # warning, and not among the refusals of faulty channels
        self.assertEqual((contact.crossed_channels, contact.refused_channels), (1, 0))
        reactor.udp[AGENT_ADDR, 20000].receive(b"up", (PHONE, 4000))
        reactor.udp[CONTACT_ADDR, 30000].receive(b"down", (OPERATOR, 6000))
        self.assertEqual(reactor.udp[CONTACT_ADDR, 30000].sent, [(b"up", (OPERATOR, 6000))])
        self.assertEqual(reactor.udp[AGENT_ADDR, 20000].sent, [(b"down", (PHONE, 4000))])
        self.assertEqual([d[0] for d in a_new.datagrams], [contact_channel])

    def test_released_when_not_suspended(self) -> None:
        """
        Without a suspension (a connection that is just not open) the
        stream is released for want of a channel, as before.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        a_end.open_error = TunnelNotOpenError("the session has no open connection")
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", self.OFFER)
        self.assertEqual((agent.streams, agent.rejected_streams), (0, 1))
        agent.session_suspended(a_end.session_id)
        agent.session_ended(a_end.session_id)
        agent.sdp_into_tunnel(a_end, DIALOG + "2", "application/sdp", self.OFFER)
        self.assertEqual((agent.streams, agent.rejected_streams), (0, 2))


class RefusalTests(SynchronousTestCase):
    """
    Channels and streams the manager does not take.
    """

    def test_bad_channels_refused(self) -> None:
        """
        Stream channels, channels without dialog or stream, and a second
        channel for the same stream are refused with C{REFUSED}.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        router = Router(None, {"media": contact}, None)
        router.channel_requested(c_end, 1, ChannelKind.STREAM, {"use": "media", "dialog": "d", "stream": 0})
        router.channel_requested(c_end, 3, ChannelKind.DATAGRAM, {"use": "media"})
        router.channel_requested(c_end, 5, ChannelKind.DATAGRAM, {"use": "media", "dialog": "d", "stream": 0})
        router.channel_requested(c_end, 7, ChannelKind.DATAGRAM, {"use": "media", "dialog": "d", "stream": 0})
        self.assertEqual([c[:2] for c in c_end.closed], [(1, ErrorCode.REFUSED), (3, ErrorCode.REFUSED), (7, ErrorCode.REFUSED)])
        self.assertEqual((contact.refused_channels, contact.open_channels), (3, 1))

    def test_pending_channel_expires(self) -> None:
        """
        A channel the peer opened whose SDP never arrives (its message was
        refused or lost) is closed after L{PENDING_TIMEOUT}, within one
        sweep, not after the (longer) media inactivity timeout.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        Router(None, {"media": contact}, None).channel_requested(
            c_end, 5, ChannelKind.DATAGRAM, {"use": "media", "dialog": "d", "stream": 0}
        )
        reactor.advance(PENDING_TIMEOUT - 1)
        self.assertEqual((c_end.closed, contact.open_channels), ([], 1))
        reactor.advance(10)
        reactor.advance(10)
        self.assertEqual(c_end.closed, [(5, 0, "no session description")])
        self.assertEqual((contact.open_channels, reactor.getDelayedCalls()), (0, []))

    def test_pending_limit_per_session(self) -> None:
        """
        The limit on channels waiting for their SDP is per session: one
        agent that opens channels without SDP is refused past it, another
        agent's channels are still accepted; a pending channel that gets
        its stream, or expires, makes room again.
        """
        reactor = FakeUdpReactor()
        contact = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30099), max_pending_channels=2)
        greedy = BaseFakeTunnel(session_id="greedy", first_channel=2)
        other = BaseFakeTunnel(session_id="other", first_channel=2)
        router = Router(None, {"media": contact}, None)
        for n, stream in enumerate((0, 1, 2)):
            router.channel_requested(greedy, 2 * n + 1, ChannelKind.DATAGRAM, {"use": "media", "dialog": "1/d", "stream": stream})
        self.assertEqual([c[:2] for c in greedy.closed], [(5, ErrorCode.REFUSED)])
        router.channel_requested(other, 1, ChannelKind.DATAGRAM, {"use": "media", "dialog": "1/e", "stream": 0})
        self.assertEqual((other.closed, contact.open_channels, contact.refused_channels), ([], 3, 1))
        contact.sdp_out_of_tunnel(greedy, "1/d", SDP_TYPE, _sdp(PHONE, ("audio", 4000, "")))
        router.channel_requested(greedy, 7, ChannelKind.DATAGRAM, {"use": "media", "dialog": "1/f", "stream": 0})
        self.assertEqual(len(greedy.closed), 1)
        reactor.advance(PENDING_TIMEOUT + 10)
        reactor.advance(10)
        for n in range(2):
            router.channel_requested(greedy, 9 + 2 * n, ChannelKind.DATAGRAM, {"use": "media", "dialog": f"1/g{n}", "stream": 0})
        self.assertNotIn(9, [c[0] for c in greedy.closed])
        self.assertNotIn(11, [c[0] for c in greedy.closed])

    def test_pending_found_without_a_walk(self) -> None:
        """
        The peer closing a channel that waits for its SDP, and the end of
        a dialog with one, find it without a walk over the other pending
        channels (up to 8,192 under overload): the Python calls and lines
        are the same beside 10 and 500 of them, and only those two
        channels go.
        """

        def calls_beside(others: int) -> int:
            reactor = FakeUdpReactor()
            contact = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30099), max_pending_channels=1000)
            agent = BaseFakeTunnel(session_id="s", first_channel=2)
            router = Router(None, {"media": contact}, None)
            for n in range(others):
                router.channel_requested(
                    agent, 101 + 2 * n, ChannelKind.DATAGRAM, {"use": "media", "dialog": f"1/o{n}", "stream": 0}
                )
            for channel_id, dialog in ((1, "1/a"), (3, "1/b")):
                router.channel_requested(
                    agent, channel_id, ChannelKind.DATAGRAM, {"use": "media", "dialog": dialog, "stream": 0}
                )
            self.assertEqual(contact.open_channels, others + 2)
            calls = steps(lambda: contact.channel_closed(agent, 1, 0, ""))
            calls += steps(lambda: contact.dialog_ended(agent, "1/b"))
            self.assertEqual(contact.open_channels, others)
            self.assertEqual([c[0] for c in agent.closed], [3])
            return calls

        self.assertEqual(calls_beside(500), calls_beside(10))

    def test_ports_exhausted(self) -> None:
        """
        When the range has no free pair, the stream gets port 0 and nothing
        leaks.
        """
        reactor = FakeUdpReactor()
        manager = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30001))
        tunnel = FakeTunnel(2, "agent")
        sdp = _sdp(PHONE, ("audio", 4000, ""), ("video", 4002, ""))
        out = manager.sdp_out_of_tunnel(tunnel, DIALOG, "application/sdp", sdp)
        self.assertEqual([m.port for m in parse_sdp(out).media], [30000, 0])
        self.assertEqual((manager.open_sockets, manager.ports_in_use, manager.rejected_streams), (2, 1, 1))
        manager.dialog_ended(tunnel, DIALOG)
        self.assertEqual((manager.open_sockets, manager.ports_in_use, reactor.udp), (0, 0, {}))

    def test_channel_refused_by_tunnel(self) -> None:
        """
        When the tunnel will not open a channel (at its channel limit, or
        closed), the stream is released: port 0 towards our side, nothing
        left bound, counted; the next stream that fits still works.
        """
        for error in (ChannelLimitError("4096 channels open"), TunnelNotOpenError("tunnel is closed")):
            reactor = FakeUdpReactor()
            manager = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30009))
            tunnel = FakeTunnel(2, "agent")
            opened = tunnel.open_channel

            def refuse(kind: Any, meta: dict, handler: Any = None) -> int:
                if meta["stream"] == 1:
                    raise error
                return opened(kind, meta, handler)

            tunnel.open_channel = refuse  # type: ignore[method-assign]
            sdp = _sdp(PHONE, ("audio", 4000, ""), ("video", 4002, ""))
            out = manager.sdp_out_of_tunnel(tunnel, DIALOG, "application/sdp", sdp)
            self.assertEqual([m.port for m in parse_sdp(out).media], [30000, 0])
            self.assertEqual(
                (manager.open_sockets, manager.ports_in_use, manager.refused_local_channels),
                (2, 1, 1),
            )
            manager.sdp_into_tunnel(tunnel, "other", "application/sdp", sdp)
            self.assertEqual(manager.streams, 2)
            self.assertEqual(manager.refused_local_channels, 2)
            manager.dialog_ended(tunnel, DIALOG)
            manager.dialog_ended(tunnel, "other")
            self.assertEqual((manager.open_sockets, manager.ports_in_use, reactor.udp), (0, 0, {}))

    def test_port_in_use_skipped(self) -> None:
        """
        A port that cannot be bound is skipped for the next pair.
        """
        reactor = FakeUdpReactor()
        reactor.refuse.add(30001)
        manager = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30009))
        tunnel = FakeTunnel(2, "agent")
        out = manager.sdp_out_of_tunnel(tunnel, DIALOG, "application/sdp", _sdp(PHONE, ("audio", 4000, "")))
        self.assertEqual(parse_sdp(out).media[0].port, 30002)
        self.assertEqual((manager.open_sockets, manager.ports_in_use), (2, 1))

    def test_ports_held_elsewhere(self) -> None:
        """
        When every pair a stream tries is held by another program, the
        stream gets port 0 and the contact point says why in one line
        (not a silent drop); the next stream goes on past the held block.
        """
        reactor = FakeUdpReactor()
        reactor.refuse.update(range(30000, 30000 + 2 * BIND_TRIES))
        manager = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30099))
        tunnel = FakeTunnel(2, "agent")
        with capturedLogs() as events:
            out = manager.sdp_out_of_tunnel(tunnel, DIALOG, "application/sdp", _sdp(PHONE, ("audio", 4000, "")))
        self.assertEqual(parse_sdp(out).media[0].port, 0)
        self.assertEqual((manager.open_sockets, manager.ports_in_use, manager.rejected_streams), (0, 0, 1))
        [line] = [formatEvent(e) for e in events if e.get("log_level").name == "warn"]
        self.assertIn(f"no media port pair could be bound for dialog {DIALOG}", line)
        self.assertIn(f"the {BIND_TRIES} pairs tried of 30000-30099 are held by other programs", line)
        out = manager.sdp_out_of_tunnel(tunnel, "next", "application/sdp", _sdp(PHONE, ("audio", 4000, "")))
        self.assertEqual(parse_sdp(out).media[0].port, 30000 + 2 * BIND_TRIES)

    def test_mux_only(self) -> None:
        """
        With a=rtcp-mux-only only the RTP socket is bound, and RTCP from the
        tunnel goes out of it.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        sdp = _sdp(PHONE, ("audio", 4000, "a=rtcp-mux-only"))
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", sdp)
        self.assertTrue(a_end.opened[0][2]["mux"])
        out = contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", sdp)
        self.assertEqual(contact.open_sockets, 1)
        self.assertEqual(parse_sdp(out).media[0].port, 30000)

    def test_bad_side(self) -> None:
        """
        The side is C{agent} or C{contact}.
        """
        self.assertRaises(ValueError, MediaManager, FakeUdpReactor(), "middle", AGENT_ADDR, (1000, 2000))


class PortAllocatorTests(SynchronousTestCase):
    """
    L{PortAllocator} hands out even/odd pairs round-robin.
    """

    def test_pairs(self) -> None:
        """
        Pairs start on even ports, are not reused until the others were,
        and running out raises L{PortsExhaustedError}.
        """
        ports = PortAllocator(30001, 30006)
        self.assertEqual(ports.capacity, 2)
        self.assertEqual([ports.allocate(), ports.allocate()], [30002, 30004])
        self.assertRaises(PortsExhaustedError, ports.allocate)
        self.assertTrue(ports.full)
        ports.release(30002)
        self.assertFalse(ports.full)
        self.assertEqual(ports.allocate(), 30002)
        self.assertRaises(ValueError, PortAllocator, 30001, 30001)

    def test_holds(self) -> None:
        """
        L{PortAllocator.holds} is true for both ports of a pair in use.
        """
        ports = PortAllocator(30001, 30006)
        base = ports.allocate()
        self.assertEqual([ports.holds(p) for p in range(30000, 30007)], [False, False, True, True, False, False, False])
        ports.release(base)
        self.assertFalse(ports.holds(base) or ports.holds(base + 1))

    def test_media_full_through_the_adapter(self) -> None:
        """
        The SIP cores' C{media_full} (through L{MediaHookAdapter}) is true
        exactly while every pair of the manager's range holds a stream, and
        a stream that finds the range full gets port 0 without a search of
        the range.
        """
        reactor = FakeUdpReactor()
        contact = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30003))
        end = FakeTunnel(2, "agent")
        end.app = contact
        hook = MediaHookAdapter(contact)
        offer = _sdp(PHONE, ("audio", 4000, ""))
        for n in (1, 2):
            self.assertFalse(hook.media_full())
            body = hook.sdp_out_of_tunnel(end, f"1/call-{n}", SDP_TYPE, offer)
            self.assertNotIn(b"m=audio 0 ", body)
        self.assertTrue(hook.media_full())
        body = hook.sdp_out_of_tunnel(end, "1/call-3", SDP_TYPE, offer)
        self.assertIn(b"m=audio 0 ", body)
        hook.dialog_ended(end, "1/call-1")
        self.assertFalse(hook.media_full())

    def test_parties_through_show_media(self) -> None:
        """
        The SIP core shows the INVITE and its 2xx (through the adapter):
        the record names the parties as the INVITE's From and To URIs, as
        text; the 2xx's naming is not kept.
        """
        from spwm.sip.actions import show_media
        from spwm.sip.message import parse_message

        from .test_sip_proxy import answer, request

        reactor = FakeUdpReactor()
        agent = MediaManager(reactor, "agent", AGENT_ADDR, (20000, 20099))
        end = FakeTunnel(1, "contact")
        hook = MediaHookAdapter(agent)
        invite = request(
            "INVITE",
            "sip:bob@example.org",
            from_="Alice <sip:alice@example.org;user=phone>;tag=fa",
            to="<sip:bob@example.org>",
            body=_sdp(PHONE, ("audio", 4000, "")),
            content_type=SDP_TYPE,
        )
        show_media(hook, end, 1, parse_message(invite), True)
        ok = parse_message(answer(invite, 200, body=_sdp(OPERATOR, ("audio", 6000, ""))))
        ok.set_header("From", "<sip:other@example.org>;tag=fa")
        show_media(hook, end, 1, ok, False)
        agent.dialog_ended(end, "1/call-1@192.0.2.10")
        (record,) = agent.cdrs
        self.assertEqual(
            (record["from"], record["to"]), ("sip:alice@example.org;user=phone", "sip:bob@example.org")
        )


    def test_session_share_through_the_adapter(self) -> None:
        """
        With C{max_pairs_per_session}, a session that holds that many
        pairs takes more while over a quarter of the range is free; once
        a quarter or less is free it gets no more: a further stream gets
        port 0 with a warning, and the adapter names the tunnel's limit for
        a new call through that tunnel only (another session still gets
        the pairs left); the count follows a dialog's end and a session
        absorbed into another.
        """
        reactor = FakeUdpReactor()
        # 8 pairs: a share of 3, and the last 2 kept for sessions under it
        contact = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30015), max_pairs_per_session=3)
        hook = MediaHookAdapter(contact)
        one, two = (BaseFakeTunnel(session_id=name, first_channel=2) for name in ("one", "two"))
        pair = _sdp(PHONE, ("audio", 4000, ""), ("video", 4002, ""))
        for dialog in ("1/a", "1/b"):
            body = hook.sdp_out_of_tunnel(one, dialog, SDP_TYPE, pair)
            self.assertEqual(body.count(b" 0 RTP/AVP"), 0)
        # over its share, but half the range is free: a busy agent
        self.assertEqual((contact.session_pairs("one"), hook.media_full(one)), (4, None))
        body = hook.sdp_out_of_tunnel(one, "1/c", SDP_TYPE, pair)
        self.assertEqual(body.count(b" 0 RTP/AVP"), 0)
        self.assertEqual((contact.session_pairs("one"), hook.media_full(one)), (6, TUNNEL_MEDIA_LIMIT))
        with capturedLogs() as events:
            body = hook.sdp_out_of_tunnel(one, "1/d", SDP_TYPE, pair)
        self.assertIn(b"m=audio 0 ", body)
        self.assertIn(b"m=video 0 ", body)
        self.assertIn(
            "media port limit of session one reached (3 port pairs, --max-media-per-tunnel):"
            " stream 0 of dialog 1/d not relayed",
            [formatEvent(e) for e in events][0],
        )
        self.assertEqual(contact.session_pairs("one"), 6)
        # the last pairs are for the others
        self.assertIsNone(hook.media_full(two))
        body = hook.sdp_out_of_tunnel(two, "1/e", SDP_TYPE, pair)
        self.assertNotIn(b" 0 RTP/AVP", body)
        self.assertEqual(contact.ports_in_use, 8)
        hook.dialog_ended(one, "1/a")
        self.assertEqual((contact.session_pairs("one"), hook.media_full(one)), (4, TUNNEL_MEDIA_LIMIT))
        hook.dialog_ended(one, "1/b")
        self.assertEqual((contact.session_pairs("one"), hook.media_full(one)), (2, None))
        contact.session_absorbed("one", "two")
        self.assertEqual((contact.session_pairs("one"), contact.session_pairs("two")), (0, 4))
        hook.dialog_ended(one, "1/d")
        contact.session_ended("two")
        self.assertEqual((contact.session_pairs("two"), contact.ports_in_use), (0, 0))

    def test_default_session_share(self) -> None:
        """
        By default a session may hold a quarter of the range's pairs, at
        least 16 (one call with every stream it may have).
        """
        self.assertEqual((session_share(500), session_share(50), session_share(8)), (125, 16, 16))

    def test_streams_over_the_call_limit_logged(self) -> None:
        """
        The streams of a call beyond C{max_streams_per_dialog} get port 0
        with a warning (throttled) naming the stream and the limit.
        """
        reactor = FakeUdpReactor()
        contact = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30099), max_streams_per_dialog=1)
        end = BaseFakeTunnel(session_id="one", first_channel=2)
        offer = _sdp(PHONE, ("audio", 4000, ""), ("video", 4002, ""))
        with capturedLogs() as events:
            body = contact.sdp_out_of_tunnel(end, "1/a", SDP_TYPE, offer)
        self.assertIn(b"m=video 0 ", body)
        self.assertEqual(contact.rejected_streams, 1)
        self.assertIn(
            "stream 1 of dialog 1/a not relayed (port 0): over 1 streams per call", formatEvent(events[-1])
        )

    def test_call_limit_through_the_adapter(self) -> None:
        """
        With C{max_calls}, the adapter names the call limit (not the ports)
        while the manager holds that many call legs, and no more once one
        ends; the count follows every way a leg comes and goes (a dialog's
        end, its session's end, a session absorbed into another that has
        one of its dialogs) and equals what the call list shows.
        """
        reactor = FakeUdpReactor()
        contact = MediaManager(reactor, "contact", CONTACT_ADDR, (30000, 30099), max_calls=3)
        hook = MediaHookAdapter(contact)
        offer = _sdp(PHONE, ("audio", 4000, ""))
        one, two, three = (BaseFakeTunnel(session_id=name, first_channel=2) for name in ("one", "two", "three"))

        def calls() -> int:
            self.assertEqual(contact.calls, len(contact.call_list()))
            return contact.calls

        hook.sdp_out_of_tunnel(one, "1/a", SDP_TYPE, offer)
        hook.sdp_out_of_tunnel(one, "1/b", SDP_TYPE, offer)
        # the same dialog's SDP again is no new leg
        hook.sdp_out_of_tunnel(one, "1/b", SDP_TYPE, offer)
        self.assertEqual((calls(), hook.media_full()), (2, None))
        hook.sdp_out_of_tunnel(two, "1/c", SDP_TYPE, offer)
        self.assertEqual((calls(), hook.media_full()), (3, CALL_LIMIT))
        self.assertFalse(contact.ports.full)
        hook.dialog_ended(one, "1/a")
        self.assertEqual((calls(), hook.media_full()), (2, None))
        contact.session_ended("one")
        self.assertEqual(calls(), 1)
        hook.sdp_out_of_tunnel(three, "1/c", SDP_TYPE, offer)
        hook.sdp_out_of_tunnel(three, "1/d", SDP_TYPE, offer)
        self.assertEqual((calls(), hook.media_full()), (3, CALL_LIMIT))
        # "three" resumed "two": its 1/c ends (two has one), 1/d moves
        contact.session_absorbed("three", "two")
        self.assertEqual((calls(), hook.media_full()), (2, None))
        self.assertEqual(sorted(contact.dialog_keys("two")), ["1/c", "1/d"])
        self.assertEqual(MediaManager(reactor, "contact", CONTACT_ADDR, (31000, 31009)).at_call_limit, False)
        # a leg without streams moved so still ends a media timeout later
        hook.dialog_answered(three, "1/e", "t", ours=False)
        contact.session_absorbed("three", "two")
        self.assertEqual(sorted(contact.dialog_keys("two")), ["1/c", "1/d", "1/e"])
        for _ in range(8):
            reactor.advance(10)
        self.assertNotIn("1/e", contact.dialog_keys("two"))


OPERATOR_A = "203.0.113.20"
OPERATOR_B = "203.0.113.30"
SDP_TYPE = "application/sdp"


class ForkingTests(SynchronousTestCase):
    """
    A LAN phone calls out; the operator proxy forks to two remote UAS (A
    and B), each answering 183 with its own SDP (its own To-tag) and early
    media to the contact point's one relay port; then one of them answers.
    """

    def _forked(self, *answers: tuple[str, bytes], **contact_options: Any):
        reactor, agent, a_end, contact, c_end = _pair(**contact_options)
        offer = _sdp(PHONE, ("audio", 4000, ""), ("video", 4002, ""))
        agent.sdp_into_tunnel(a_end, DIALOG, SDP_TYPE, offer, tag="ph")
        contact.sdp_out_of_tunnel(c_end, DIALOG, SDP_TYPE, offer, tag="ph")
        for tag, answer in answers:
            contact.sdp_into_tunnel(c_end, DIALOG, SDP_TYPE, answer, tag=tag)
            agent.sdp_out_of_tunnel(a_end, DIALOG, SDP_TYPE, answer, tag=tag)
        return reactor, agent, a_end, contact, c_end

    def _answered(self, agent, a_end, contact, c_end, tag: str) -> None:
        """
        The 2xx of branch C{tag} goes from the operator side into the
        contact point and out of the agent.
        """
        contact.dialog_answered(c_end, DIALOG, tag, ours=True)
        agent.dialog_answered(a_end, DIALOG, tag, ours=False)

    def _two(self, video_b: int = 7002, **contact_options: Any):
        return self._forked(
            ("a", _sdp(OPERATOR_A, ("audio", 6000, ""), ("video", 6002, ""))),
            ("b", _sdp(OPERATOR_B, ("audio", 7000, ""), ("video", video_b, ""))),
            **contact_options,
        )

    def test_early_media_from_both_branches(self) -> None:
        """
        Early media of both branches reaches the phone, and the phone's
        media goes to both branches.
        """
        reactor, agent, a_end, contact, c_end = self._two()
        op_rtp = reactor.udp[CONTACT_ADDR, 30000]
        phone_rtp = reactor.udp[AGENT_ADDR, 20000]
        op_rtp.receive(b"ring-a", (OPERATOR_A, 6000))
        op_rtp.receive(b"ring-b", (OPERATOR_B, 7000))
        self.assertEqual(
            phone_rtp.sent, [(b"ring-a", (PHONE, 4000)), (b"ring-b", (PHONE, 4000))]
        )
        phone_rtp.receive(b"hello", (PHONE, 4000))
        self.assertEqual(
            op_rtp.sent, [(b"hello", (OPERATOR_A, 6000)), (b"hello", (OPERATOR_B, 7000))]
        )
        rtp, rtcp = contact.stream_endpoints(c_end.session_id, DIALOG, 0)
        self.assertEqual((rtp.branches, rtcp.branches), (("a", "b"), ("a", "b")))
        self.assertEqual((rtp.dropped_source, rtp.latches), (0, 2))

    def test_answer_leaves_only_winner(self) -> None:
        """
        The 200 from B (without SDP: the answer was its 183) leaves only B:
        A's packets are dropped and counted, nothing more goes to A, B's
        media flows both ways; the agent's side is untouched.
        """
        reactor, agent, a_end, contact, c_end = self._two()
        op_rtp = reactor.udp[CONTACT_ADDR, 30000]
        phone_rtp = reactor.udp[AGENT_ADDR, 20000]
        op_rtp.receive(b"ring-a", (OPERATOR_A, 6000))
        op_rtp.receive(b"ring-b", (OPERATOR_B, 7000))
        self._answered(agent, a_end, contact, c_end, "b")
        del op_rtp.sent[:], phone_rtp.sent[:]
        op_rtp.receive(b"late-a", (OPERATOR_A, 6000))
        op_rtp.receive(b"talk-b", (OPERATOR_B, 7000))
        phone_rtp.receive(b"talk-ph", (PHONE, 4000))
        self.assertEqual(phone_rtp.sent, [(b"talk-b", (PHONE, 4000))])
        self.assertEqual(op_rtp.sent, [(b"talk-ph", (OPERATOR_B, 7000))])
        rtp, _ = contact.stream_endpoints(c_end.session_id, DIALOG, 0)
        self.assertEqual((rtp.branches, rtp.dropped_source), (("b",), 1))
        self.assertEqual((agent.streams, contact.streams), (2, 2))
        self.assertEqual((agent.open_sockets, contact.open_sockets), (4, 4))

    def test_branch_rejecting_video_keeps_it_for_other(self) -> None:
        """
        B rejects video (port 0) after A accepted it: while the dialog is
        early the video stream stays on both halves and A's video reaches
        the phone; when A answers, video stays.
        """
        reactor, agent, a_end, contact, c_end = self._two(video_b=0)
        self.assertEqual((a_end.closed, c_end.closed), ([], []))
        self.assertEqual((agent.streams, contact.streams), (2, 2))
        video, _ = contact.stream_endpoints(c_end.session_id, DIALOG, 1)
        self.assertEqual(video.branches, ("a",))
        reactor.udp[CONTACT_ADDR, 30002].receive(b"vid-a", (OPERATOR_A, 6002))
        self.assertEqual(reactor.udp[AGENT_ADDR, 20002].sent, [(b"vid-a", (PHONE, 4002))])
        self._answered(agent, a_end, contact, c_end, "a")
        self.assertEqual((agent.streams, contact.streams), (2, 2))
        self.assertEqual((a_end.closed, c_end.closed), ([], []))

    def test_rejecting_branch_first_then_accepting(self) -> None:
        """
        B rejects video before A accepts it: A's video still gets relay
        sockets on the agent and reaches the phone.
        """
        reactor, agent, a_end, contact, c_end = self._forked(
            ("b", _sdp(OPERATOR_B, ("audio", 7000, ""), ("video", 0, ""))),
            ("a", _sdp(OPERATOR_A, ("audio", 6000, ""), ("video", 6002, ""))),
        )
        reactor.udp[CONTACT_ADDR, 30002].receive(b"vid-a", (OPERATOR_A, 6002))
        self.assertEqual(reactor.udp[AGENT_ADDR, 20002].sent, [(b"vid-a", (PHONE, 4002))])

    def test_winner_without_video_releases_it(self) -> None:
        """
        When the branch that rejected video answers, the video stream is
        released on both halves (channel closed, sockets and ports freed);
        audio stays with the winner.
        """
        reactor, agent, a_end, contact, c_end = self._two(video_b=0)
        self._answered(agent, a_end, contact, c_end, "b")
        for manager in (agent, contact):
            self.assertEqual(
                (manager.streams, manager.open_sockets, manager.open_channels, manager.ports_in_use),
                (1, 2, 1, 1),
            )
        self.assertEqual([reason for _, _, reason in c_end.closed], ["not in the answer"])

    def test_loser_sdp_after_answer_ignored(self) -> None:
        """
        A second 2xx from the losing branch (with video refused) neither
        moves the latch nor releases the winner's video, on either half;
        the contact point counts it.
        """
        reactor, agent, a_end, contact, c_end = self._two()
        self._answered(agent, a_end, contact, c_end, "b")
        late = _sdp(OPERATOR_A, ("audio", 6000, ""), ("video", 0, ""), version=2)
        contact.sdp_into_tunnel(c_end, DIALOG, SDP_TYPE, late, tag="a")
        agent.sdp_out_of_tunnel(a_end, DIALOG, SDP_TYPE, late, tag="a")
        self._answered(agent, a_end, contact, c_end, "a")
        self.assertEqual(contact.ignored_branch_sdp, 1)
        self.assertEqual((agent.streams, contact.streams), (2, 2))
        rtp, _ = contact.stream_endpoints(c_end.session_id, DIALOG, 0)
        self.assertEqual(rtp.branches, ("b",))

    def test_winner_reoffer_port_zero_releases(self) -> None:
        """
        Once answered, a port 0 from the winner releases the stream at
        once, as without forking.
        """
        reactor, agent, a_end, contact, c_end = self._two()
        self._answered(agent, a_end, contact, c_end, "b")
        reoffer = _sdp(OPERATOR_B, ("audio", 7000, ""), ("video", 0, ""), version=2)
        contact.sdp_into_tunnel(c_end, DIALOG, SDP_TYPE, reoffer, tag="b")
        agent.sdp_out_of_tunnel(a_end, DIALOG, SDP_TYPE, reoffer, tag="b")
        self.assertEqual((agent.streams, contact.streams), (1, 1))

    def test_answer_from_unknown_tag_keeps_latest(self) -> None:
        """
        A 2xx whose tag never came with SDP (a B2BUA that changed its tag)
        keeps the latest branch's media, as without branch information.
        """
        reactor, agent, a_end, contact, c_end = self._two()
        self._answered(agent, a_end, contact, c_end, "z")
        rtp, _ = contact.stream_endpoints(c_end.session_id, DIALOG, 0)
        self.assertEqual(rtp.branches, ("b",))
        self.assertEqual((agent.streams, contact.streams), (2, 2))

    def test_cancel_ends_all_branches(self) -> None:
        """
        CANCEL (or a final error) ends the leg: every branch's media goes,
        nothing leaks.
        """
        reactor, agent, a_end, contact, c_end = self._two(video_b=0)
        agent.dialog_ended(a_end, DIALOG)
        contact.dialog_ended(c_end, DIALOG)
        assert_released(self, agent, contact)
        self.assertEqual((reactor.udp, reactor.getDelayedCalls()), ({}, []))

    def test_branch_bound(self) -> None:
        """
        Beyond C{max_branches_per_stream} the oldest branch is forgotten
        (its packets are dropped), with one warning per stream.
        """
        with capturedLogs() as events:
            reactor, agent, a_end, contact, c_end = self._forked(
                *[
                    (tag, _sdp(f"203.0.113.{n}", ("audio", 6000, "")))
                    for n, tag in enumerate("abcd", start=40)
                ],
                max_branches_per_stream=2,
            )
        rtp, _ = contact.stream_endpoints(c_end.session_id, DIALOG, 0)
        self.assertEqual(rtp.branches, ("c", "d"))
        reactor.udp[CONTACT_ADDR, 30000].receive(b"x", ("203.0.113.40", 6000))
        self.assertEqual(rtp.dropped_source, 1)
        warnings = [e for e in events if e.get("limit") == 2]
        self.assertEqual([(e["dialog"], e["stream"]) for e in warnings], [(DIALOG, 0)])


def _texts(events: list[dict]) -> list[str]:
    return [formatEvent(e) for e in events]


class SignallingHostLatchTests(SynchronousTestCase):
    """
    A phone whose SDP names one address (192.0.2.10) while it sends from
    its signalling host (192.0.2.20) has media both ways through the agent.
    """

    SIGNALLING = "192.0.2.20"

    def _call(self, source: str | None = SIGNALLING):
        reactor, agent, a_end, contact, c_end = _pair()
        offer = _sdp(PHONE, ("audio", 4000, ""))
        _negotiate(agent, a_end, contact, c_end, DIALOG, offer, _sdp(OPERATOR, ("audio", 6000, "")), source)
        return reactor, agent

    def test_latched_both_ways_and_logged(self) -> None:
        """
        RTP and RTCP from the signalling host reach the operator; the
        operator's come back to the address they were sent from, not to
        the SDP's; one info line per component says so.
        """
        with capturedLogs() as events:
            reactor, agent = self._call()
            phone_rtp = reactor.udp[AGENT_ADDR, 20000]
            phone_rtcp = reactor.udp[AGENT_ADDR, 20001]
            for n in range(3):
                phone_rtp.receive(b"up%d" % n, (self.SIGNALLING, 7000))
            phone_rtcp.receive(b"sr-up", (self.SIGNALLING, 7001))
            reactor.udp[CONTACT_ADDR, 30000].receive(b"down", (OPERATOR, 6000))
            reactor.udp[CONTACT_ADDR, 30001].receive(b"sr-down", (OPERATOR, 6001))
        self.assertEqual(
            reactor.udp[CONTACT_ADDR, 30000].sent, [(b"up%d" % n, (OPERATOR, 6000)) for n in range(3)]
        )
        self.assertEqual(reactor.udp[CONTACT_ADDR, 30001].sent, [(b"sr-up", (OPERATOR, 6001))])
        self.assertEqual(phone_rtp.sent, [(b"down", (self.SIGNALLING, 7000))])
        self.assertEqual(phone_rtcp.sent, [(b"sr-down", (self.SIGNALLING, 7001))])
        latched = [t for t in _texts(events) if "latched" in t]
        self.assertEqual(
            latched,
            [
                f"media stream 0 of dialog {DIALOG}: RTP from 192.0.2.20:7000, not the address"
                " its SDP named (192.0.2.10:4000): latched, replies go there",
                f"media stream 0 of dialog {DIALOG}: RTCP from 192.0.2.20:7001, not the address"
                " its SDP named (192.0.2.10:4001): latched, replies go there",
            ],
        )

    def test_unrelated_host_dropped(self) -> None:
        """
        Media from a host that is neither the SDP's nor the signalling
        host is dropped and counted.
        """
        reactor, agent = self._call()
        reactor.udp[AGENT_ADDR, 20000].receive(b"inject", ("192.0.2.66", 7000))
        self.assertEqual(reactor.udp[CONTACT_ADDR, 30000].sent, [])
        self.assertEqual(agent.status()["dropped_source"], 1)

    def test_without_source_dropped(self) -> None:
        """
        Without the signalling host (as before), media from an address
        the SDP did not name is dropped.
        """
        reactor, agent = self._call(source=None)
        reactor.udp[AGENT_ADDR, 20000].receive(b"up", (self.SIGNALLING, 7000))
        self.assertEqual(agent.status()["dropped_source"], 1)

    def test_own_socket_latches_only_where_named(self) -> None:
        """
        A phone on the agent's own machine whose SDP names a port of
        another call's relay socket (a load generator that sends from
        ports it does not bind): that socket may latch onto the named
        one (as in a call between two legs of one half), but the other
        way round, where no SDP named it, what it sends is dropped rather
        than latched onto, so the two sockets do not send each other's
        media round and round; the phone's own other port still latches.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        first = "call-0;from-tag=a;to-tag=b"
        # the second call's phone names the first call's relay port
        answer = _sdp(OPERATOR, ("audio", 6000, ""))
        for dialog, offer in ((first, _sdp(PHONE, ("audio", 4000, ""))), (DIALOG, _sdp(AGENT_ADDR, ("audio", 20000, "")))):
            _negotiate(agent, a_end, contact, c_end, dialog, offer, answer, AGENT_ADDR)
        rtp_a, _ = agent.stream_endpoints(a_end.session_id, first, 0)
        rtp_b, _ = agent.stream_endpoints(a_end.session_id, DIALOG, 0)
        socket_a, socket_b = reactor.udp[AGENT_ADDR, 20000], reactor.udp[AGENT_ADDR, 20002]
        socket_a.receive(b"up", (AGENT_ADDR, 7000))
        self.assertEqual((rtp_a.latches, rtp_a.peer), (1, (AGENT_ADDR, 7000)))
        socket_a.receive(b"loop", (AGENT_ADDR, 20002))
        socket_a.receive(b"loop", (AGENT_ADDR, 20003))
        self.assertEqual((rtp_a.dropped_source, rtp_a.latches, rtp_a.peer), (2, 1, (AGENT_ADDR, 7000)))
        socket_b.receive(b"named", (AGENT_ADDR, 20000))
        self.assertEqual((rtp_b.latches, rtp_b.peer), (1, (AGENT_ADDR, 20000)))
        # once the second call's ports are free again, a phone may hold them
        agent.dialog_ended(a_end, DIALOG)
        socket_a.receive(b"phone", (AGENT_ADDR, 20002))
        self.assertEqual((rtp_a.latches, rtp_a.peer), (2, (AGENT_ADDR, 20002)))

    def test_socket_never_latches_onto_itself(self) -> None:
        """
        A phone whose SDP names the very port the agent then takes for the
        stream (a load generator that does not bind it): what the socket
        sends to itself is dropped, not latched onto, so the far end's
        echo does not go round through it.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        offer = _sdp(AGENT_ADDR, ("audio", 20000, ""))
        _negotiate(agent, a_end, contact, c_end, DIALOG, offer, _sdp(OPERATOR, ("audio", 6000, "")), AGENT_ADDR)
        rtp, _ = agent.stream_endpoints(a_end.session_id, DIALOG, 0)
        self.assertEqual(rtp.local_port, 20000)
        reactor.udp[AGENT_ADDR, 20000].receive(b"itself", (AGENT_ADDR, 20000))
        self.assertEqual((rtp.dropped_source, rtp.latches, rtp.peer), (1, 0, None))
        self.assertEqual(reactor.udp[CONTACT_ADDR, 30000].sent, [])

    def test_own_socket_on_all_addresses(self) -> None:
        """
        A half that listens on all addresses takes a pair of its own on
        any address of this machine (loopback here) for its own, and a
        port on another machine's address for a phone's.
        """
        reactor = FakeUdpReactor()
        agent = MediaManager(reactor, "agent", "0.0.0.0", (20000, 20099))
        end = FakeTunnel(1, "contact")
        end.app = agent
        agent.sdp_into_tunnel(end, DIALOG, "application/sdp", _sdp(PHONE, ("audio", 4000, "")))
        agent.sdp_out_of_tunnel(end, DIALOG, "application/sdp", _sdp(OPERATOR, ("audio", 6000, "")))
        rtp, _ = agent.stream_endpoints(end.session_id, DIALOG, 0)
        assert rtp.own is not None
        self.assertEqual(
            [rtp.own(a) for a in (("127.0.0.1", 20000), ("127.0.0.1", 20001), ("127.0.0.1", 20002), ("192.0.2.99", 20000))],
            [True, True, False, False],
        )

    def test_contact_ignores_source(self) -> None:
        """
        The contact point's strict public leg does not latch on a source
        host: only the SDP's host and port.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        offer = _sdp(PHONE, ("audio", 4000, ""))
        agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
        contact.sdp_into_tunnel(
            c_end, DIALOG, "application/sdp", _sdp(OPERATOR, ("audio", 6000, "")), source="203.0.113.99"
        )
        reactor.udp[CONTACT_ADDR, 30000].receive(b"x", ("203.0.113.99", 6000))
        self.assertEqual(contact.status()["dropped_source"], 1)


class _RecordingManager:
    """
    Records the tunnel each hook call reaches a manager with.
    """

    def __init__(self) -> None:
        self.tunnels: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        def record(tunnel: Any, *args: Any, **kwargs: Any) -> None:
            self.tunnels.append((name, tunnel))

        return record


class HookResolveTests(SynchronousTestCase):
    """
    L{MediaHookAdapter} maps the SIP core's key to the tunnel: through its
    resolver, or the key itself without one.
    """

    def _calls(self, hook: MediaHookAdapter, key: Any) -> None:
        hook.sdp_into_tunnel(key, "7/c", "application/sdp", b"")
        hook.sdp_out_of_tunnel(key, "7/c", "application/sdp", b"")
        hook.dialog_answered(key, "7/c", "t")
        hook.offer_settled(key, "7/c", True, (1, "INVITE"), True)
        hook.dialog_invited(key, "7/c")
        hook.dialog_heard(key, "7/c")
        hook.dialog_ended(key, "7/c")
        hook.call_parties(key, "7/c", "sip:a@example.com", "sip:b@example.com")

    def test_key_or_resolved(self) -> None:
        """
        Without a resolver every call reaches the manager with the key;
        with one, with what it returns, and not at all when it returns
        C{None}.
        """
        names = [
            "sdp_into_tunnel",
            "sdp_out_of_tunnel",
            "dialog_answered",
            "offer_settled",
            "dialog_invited",
            "dialog_heard",
            "dialog_ended",
            "call_parties",
        ]
        manager = _RecordingManager()
        self._calls(MediaHookAdapter(manager), "k")
        self.assertEqual(manager.tunnels, [(n, "k") for n in names])
        manager.tunnels.clear()
        self._calls(MediaHookAdapter(manager, {"k": "tunnel"}.get), "k")
        self.assertEqual(manager.tunnels, [(n, "tunnel") for n in names])
        manager.tunnels.clear()
        self._calls(MediaHookAdapter(manager, {"k": "tunnel"}.get), "other")
        self.assertEqual(manager.tunnels, [])


class FlowSourceTests(SynchronousTestCase):
    """
    The agent's hook adapter finds the signalling host of a dialog in the
    proxy's flow table.
    """

    def test_adapter_passes_flow_host(self) -> None:
        """
        L{flow_source} maps C{FLOW/CALL-ID} to the flow's remote host
        (C{None} for an unknown flow or a malformed key), and the adapter
        hands it to the manager, so the phone's media latches.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        flows = FlowTable()
        fid = flows.use(Flow("udp", (AGENT_ADDR, 5060), ("192.0.2.20", 5062)), reactor.seconds())
        source = flow_source(flows, reactor)
        self.assertEqual(source(f"{fid}/call-1"), "192.0.2.20")
        self.assertIsNone(source("999/call-1"))
        self.assertIsNone(source("call-1"))
        hook = MediaHookAdapter(agent, source=source)
        dialog = f"{fid}/call-1"
        offer = _sdp(PHONE, ("audio", 4000, ""))
        hook.sdp_into_tunnel(a_end, dialog, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c_end, dialog, "application/sdp", offer)
        contact.sdp_into_tunnel(c_end, dialog, "application/sdp", _sdp(OPERATOR, ("audio", 6000, "")))
        hook.sdp_out_of_tunnel(a_end, dialog, "application/sdp", _sdp(OPERATOR, ("audio", 6000, "")))
        reactor.udp[AGENT_ADDR, 20000].receive(b"up", ("192.0.2.20", 7000))
        self.assertEqual(reactor.udp[CONTACT_ADDR, 30000].sent, [(b"up", (OPERATOR, 6000))])


    def test_agent_service_wires_flow_source(self) -> None:
        """
        The agent's service gives its media hook the flow source of its
        own proxy's flow table.
        """
        from twisted.internet.testing import MemoryReactorClock

        from spwm.tap import agent
        from spwm.tap.assembly import build_agent

        options = agent.Options()
        options.parseOptions(["--contact", "198.51.100.1:443", "--plaintext"])
        core = build_agent(options.config, MemoryReactorClock()).sip_core
        fid = core.flows.use(Flow("tcp", ("127.0.0.1", 5060), ("192.0.2.20", 40000), 3), 0.0)
        self.assertEqual(core.core.media_hook.source(f"{fid}/call-1"), "192.0.2.20")


class PolicyLogTests(SynchronousTestCase):
    """
    Media refused by the contact point's allow policy is explained in the
    log, with the option that would allow it, without a flood.
    """

    def _offer_answer(self, agent, a_end, contact, c_end, dialog: str, answer: bytes) -> None:
        offer = _sdp(PHONE, ("audio", 4000, ""))
        agent.sdp_into_tunnel(a_end, dialog, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c_end, dialog, "application/sdp", offer)
        contact.sdp_into_tunnel(c_end, dialog, "application/sdp", answer)
        agent.sdp_out_of_tunnel(a_end, dialog, "application/sdp", answer)

    def test_loopback_refused_once_with_option(self) -> None:
        """
        An operator SDP naming 127.0.0.1 gives one warning naming the
        address and C{--media-allow 127.0.0.0/8}; a re-offer with the same
        address and the media that is then dropped add no more lines.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        answer = _sdp("127.0.0.1", ("audio", 6000, ""))
        with capturedLogs() as events:
            self._offer_answer(agent, a_end, contact, c_end, DIALOG, answer)
            contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
            for _ in range(5):
                reactor.udp[AGENT_ADDR, 20000].receive(b"up", (PHONE, 4000))
        refused = [t for t in _texts(events) if "refused" in t]
        self.assertEqual(len(refused), 1, refused)
        self.assertIn("media to 127.0.0.1:6000 refused", refused[0])
        self.assertIn("need --media-allow 127.0.0.0/8", refused[0])
        self.assertEqual(contact.status()["dropped_no_target"], 5)

    def test_rate_limited_across_calls(self) -> None:
        """
        Over many calls the warning comes at the 1st, 2nd, 4th... refusal,
        and again after a minute of quiet.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        answer = _sdp("127.0.0.1", ("audio", 6000, ""))
        with capturedLogs() as events:
            for n in range(9):
                dialog = f"call-{n}"
                self._offer_answer(agent, a_end, contact, c_end, dialog, answer)
                agent.dialog_ended(a_end, dialog)
                contact.dialog_ended(c_end, dialog)
            reactor.advance(61)
            self._offer_answer(agent, a_end, contact, c_end, "call-late", answer)
        counts = [e["count"] for e in events if "media-allow" in str(e.get("reason", ""))]
        self.assertEqual(counts, [1, 2, 4, 8, 10])

    def test_agent_allows_loopback(self) -> None:
        """
        The agent (no special ranges blocked) logs no refusal for a
        loopback phone.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        with capturedLogs() as events:
            agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", _sdp("127.0.0.1", ("audio", 4000, "")))
            agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", _sdp(OPERATOR, ("audio", 6000, "")))
        self.assertEqual([t for t in _texts(events) if "refused" in t], [])


def _unanswered_call_event(key: str) -> tuple[MediaManager, dict[str, Any]]:
    """
    The agent of a pair and the event of a call leg C{key} that offered
    one audio stream and ended unanswered.
    """
    reactor, agent, a_end, contact, c_end = _pair()
    with capturedLogs() as events:
        agent.sdp_into_tunnel(a_end, key, "application/sdp", _sdp(PHONE, ("audio", 4000, "")))
        agent.dialog_ended(a_end, key)
    (event,) = [e for e in events if "cdr" in e]
    return agent, event


class CallLogTests(SynchronousTestCase):
    """
    One info line per call at start, at answer (codec, media addresses on
    both legs) and at end (duration, packets and losses per leg).
    """

    def test_call_lines(self) -> None:
        """
        The agent logs the start (the phone's offer), the answer with the
        codec of the answer and the addresses of the phone, our relay
        socket, the channel and the far end, and the end with the packets
        in and out per leg and those lost (dropped here).
        """
        reactor, agent, a_end, contact, c_end = _pair(call_lines=True)
        offer = _sdp(PHONE, ("audio", 4000, "a=rtpmap:0 PCMU/8000"))
        answer = _sdp(OPERATOR, ("audio", 6000, "")).replace(b"RTP/AVP 0", b"RTP/AVP 8 0")
        with capturedLogs() as events:
            agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
            contact.sdp_out_of_tunnel(c_end, DIALOG, "application/sdp", offer)
            reactor.advance(2)
            contact.sdp_into_tunnel(c_end, DIALOG, "application/sdp", answer)
            contact.dialog_answered(c_end, DIALOG, "b", ours=True)
            agent.sdp_out_of_tunnel(a_end, DIALOG, "application/sdp", answer)
            agent.dialog_answered(a_end, DIALOG, "b", ours=False)
            phone = reactor.udp[AGENT_ADDR, 20000]
            for _ in range(4):
                phone.receive(b"up", (PHONE, 4000))
            phone.receive(b"junk", ("192.0.2.66", 4000))
            for _ in range(3):
                reactor.udp[CONTACT_ADDR, 30000].receive(b"down", (OPERATOR, 6000))
            reactor.advance(30)
            agent.dialog_ended(a_end, DIALOG)
            contact.dialog_ended(c_end, DIALOG)
        calls = [e for e in events if formatEvent(e).startswith("call ") and e["log_namespace"]]
        agent_lines = [formatEvent(e) for e in calls if e["log_source"] is agent]
        self.assertEqual(
            agent_lines,
            [
                f"call {DIALOG} started from the lan leg",
                f"call {DIALOG} answered from the tunnel leg: codec PCMA/8000;"
                f" stream 0 audio: lan 192.0.2.10:4000 (SDP) <-> relay 192.0.2.1:20000;"
                f" tunnel channel 1 <-> far end 203.0.113.20:6000",
                f"call {DIALOG} ended (dialog ended) after 32.0s, answered for 30.0s:"
                f" ? -> ?, codec PCMA/8000; stream 0: lan 0 pkts lost 0 jitter 0.0ms,"
                f" tunnel 0 pkts lost 0 jitter 0.0ms; MOS up ? down ?; relay dropped 1",
            ],
        )
        contact_lines = [formatEvent(e) for e in calls if e["log_source"] is contact]
        self.assertEqual(
            contact_lines[-1],
            f"call {DIALOG} ended (dialog ended) after 32.0s, answered for 30.0s:"
            f" ? -> ?, codec PCMA/8000; stream 0: tunnel 0 pkts lost 0 jitter 0.0ms,"
            f" operator 0 pkts lost 0 jitter 0.0ms; MOS up ? down ?; relay dropped 0",
        )
        # the relay's own counters are in the record for machines
        (record,) = [e["cdr"] for e in calls if e["log_source"] is agent and "cdr" in e]
        self.assertEqual(
            record["streams"][0]["relay"],
            {
                "packets_in": 4,
                "packets_out": 3,
                "dropped_source": 1,
                "dropped_no_channel": 0,
                "dropped_no_target": 0,
                "dropped_send": 0,
            },
        )
        self.assertIn("answered from the operator leg: codec PCMA/8000", contact_lines[1])

    def test_call_without_sdp(self) -> None:
        """
        A call whose INVITE and 2xx carry no SDP still gets its three
        lines (with C{--log-level debug}).
        """
        reactor, agent, a_end, contact, c_end = _pair(call_lines=True)
        with capturedLogs() as events:
            agent.dialog_answered(a_end, DIALOG, "b", ours=False)
            agent.dialog_ended(a_end, DIALOG)
        self.assertEqual(
            _texts(events),
            [
                f"call {DIALOG} started from the tunnel leg",
                f"call {DIALOG} answered from the tunnel leg: codec none (no SDP); no media",
                f"call {DIALOG} ended (dialog ended) after 0.0s, answered for 0.0s:"
                " ? -> ?, codec none; no media",
            ],
        )
        assert_released(self, agent)

    def test_challenged_leg_leaves_no_record(self) -> None:
        """
        A leg ended by a 401/407 challenge is released without a call
        record: no detail line, nothing in the ended calls; the retried
        INVITE's leg is the call and has its record.
        """
        offer = _sdp(PHONE, ("audio", 4000, ""))
        reactor, agent, a_end, contact, c_end = _pair()
        with capturedLogs() as events:
            agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
            agent.dialog_ended(a_end, DIALOG, challenged=True)
        assert_released(self, agent)
        self.assertEqual(_texts(events), [])
        self.assertEqual((list(agent.cdrs), agent.ended_calls()), ([], []))
        with capturedLogs() as events:
            agent.sdp_into_tunnel(a_end, DIALOG, "application/sdp", offer)
            agent.dialog_ended(a_end, DIALOG)
        self.assertEqual(len(_texts(events)), 1)
        self.assertEqual(len(agent.cdrs), 1)

    def test_one_line_per_call_by_default(self) -> None:
        """
        Without C{--log-level debug} a call logs one line, its call detail
        record at the end: the start and answer lines cost CPU at high call
        rates.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        with capturedLogs() as events:
            agent.dialog_answered(a_end, DIALOG, "b", ours=False)
            agent.dialog_ended(a_end, DIALOG)
        self.assertEqual(
            _texts(events),
            [
                f"call {DIALOG} ended (dialog ended) after 0.0s, answered for 0.0s:"
                " ? -> ?, codec none; no media",
            ],
        )

    maxDiff = None

    def test_tunnel_leg_transit_and_late_dropped(self) -> None:
        """
        The tunnel leg's C{transit_ms} is half the round trip the tunnel
        handle gives as C{rtt} and C{late_dropped} the handle's count for
        the stream's channel; the other leg has neither.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        asked: list[int] = []
        a_end.rtt = 0.030  # type: ignore[attr-defined]
        a_end.late_dropped = lambda channel_id: asked.append(channel_id) or 4  # type: ignore[attr-defined]
        key = "7/call-9@lan"
        offer = _sdp(PHONE, ("audio", 4000, ""))
        answer = _sdp(OPERATOR, ("audio", 6000, ""))
        agent.sdp_into_tunnel(a_end, key, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c_end, key, "application/sdp", offer)
        contact.sdp_into_tunnel(c_end, key, "application/sdp", answer)
        agent.sdp_out_of_tunnel(a_end, key, "application/sdp", answer)
        (call,) = agent.call_list()
        (stream,) = call["streams"]
        legs = stream["quality"]["legs"]
        self.assertEqual((legs["tunnel"]["transit_ms"], legs["tunnel"]["late_dropped"]), (15.0, 4))
        self.assertEqual((legs["lan"]["transit_ms"], legs["lan"]["late_dropped"]), (None, None))
        self.assertEqual(len(set(asked)), 1)
        (c_call,) = contact.call_list()
        c_tunnel = c_call["streams"][0]["quality"]["legs"]["tunnel"]
        self.assertEqual((c_tunnel["transit_ms"], c_tunnel["late_dropped"]), (None, None))

    def test_call_detail_record(self) -> None:
        """
        The end of a call with RTP both ways (one packet lost on the LAN
        leg, one reordered out of the tunnel) and named parties: one
        event whose C{cdr} field has the figures per leg and the MOS per
        direction, and a line for people with the same figures.
        """
        from spwm.media import relay
        from spwm.media.quality import emodel

        from .test_media_quality import rtp

        reactor, agent, a_end, contact, c_end = _pair()
        self.patch(relay, "_monotonic", reactor.seconds)
        key = "7/call-9@lan"
        offer = _sdp(PHONE, ("audio", 4000, ""))
        answer = _sdp(OPERATOR, ("audio", 6000, ""))
        with capturedLogs() as events:
            agent.sdp_into_tunnel(a_end, key, "application/sdp", offer)
            agent.call_parties(a_end, key, "sip:alice@example.com", "sip:bob@example.net")
            contact.sdp_out_of_tunnel(c_end, key, "application/sdp", offer)
            contact.sdp_into_tunnel(c_end, key, "application/sdp", answer)
            agent.sdp_out_of_tunnel(a_end, key, "application/sdp", answer)
            agent.dialog_answered(a_end, key, "b", ours=False)
            phone = reactor.udp[AGENT_ADDR, 20000]
            far = reactor.udp[CONTACT_ADDR, 30000]
            for seq in [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]:
                phone.receive(rtp(seq, seq * 160), (PHONE, 4000))
                reactor.advance(0.02)
            for seq in [100, 101, 103, 102, 104]:
                far.receive(rtp(seq, seq * 160, ssrc=9), (OPERATOR, 6000))
                reactor.advance(0.02)
            reactor.advance(10)
            agent.dialog_ended(a_end, key)
        (event,) = [e for e in events if "cdr" in e]
        record = event["cdr"]
        self.assertEqual(
            (record["call_id"], record["dialog"], record["side"], record["from"], record["to"]),
            ("call-9@lan", key, "agent", "sip:alice@example.com", "sip:bob@example.net"),
        )
        self.assertEqual((record["codec"], record["reason"], record["duration_s"]), ("PCMU/8000", "dialog ended", 10.3))
        (stream,) = record["streams"]
        lan, tunnel = stream["legs"]["lan"], stream["legs"]["tunnel"]
        self.assertIsNone(stream["legs"]["operator"])
        self.assertEqual((lan["packets"], lan["lost"], lan["reordered"]), (10, 1, 0))
        self.assertEqual((tunnel["packets"], tunnel["lost"], tunnel["reordered"]), (5, 0, 1))
        # up: 1 of 11 lost, delay 0 + 20 + 20 ms (no transit known; the
        # jitter is below 10 ms); the phone sent 5 when 4 was due: one
        # |D| of 20 ms (160 units), J = 160/16 then decaying
        self.assertAlmostEqual(lan["jitter_ms"], 1.25 * (15 / 16) ** 6, places=2)
        up = emodel("PCMU/8000", 1 / 11, 40.0)
        assert up is not None
        self.assertEqual(stream["mos"]["up"], round(up[1], 2))
        self.assertEqual(record["mos"], stream["mos"])
        self.assertEqual(
            formatEvent(event),
            "call call-9@lan ended (dialog ended) after 10.3s, answered for 10.3s:"
            " sip:alice@example.com -> sip:bob@example.net, codec PCMU/8000;"
            " stream 0: lan 10 pkts lost 1 jitter {}ms,"
            " tunnel 5 pkts lost 0 jitter {}ms reordered 1 dup 0;"
            " MOS up {} down {}; relay dropped 0".format(
                round(lan["jitter_ms"], 1),
                round(tunnel["jitter_ms"], 1),
                stream["mos"]["up"],
                stream["mos"]["down"],
            ),
        )
        import json

        self.assertEqual(json.loads(json.dumps(record)), record)

    def test_call_mos_is_the_worst_streams(self) -> None:
        """
        The call's MOS per direction is the lowest of its streams' rated
        ones (a stream without packets or snapshot has none), and the
        line's relay drops add up the four kinds.
        """
        from spwm.media.manager import _Dialog, call_detail_record
        from spwm.media.negotiation import LegMedia

        dialog = _Dialog(LegMedia())

        def snapshot(up: float | None, down: float | None) -> dict[str, Any]:
            return {"legs": {"lan": None, "tunnel": None, "operator": None}, "mos": {"up": up, "down": down}, "codec": "PCMU/8000"}

        dialog.quality = {0: snapshot(4.1, None), 1: snapshot(3.2, 4.3), 3: snapshot(None, 4.0)}
        dialog.history = {2: {"dropped_source": 1, "dropped_no_channel": 2, "dropped_no_target": 3, "dropped_send": 4}}
        record = call_detail_record("7/c@lan", dialog, "dialog ended", 5.0, "agent", "lan")
        self.assertEqual(record["mos"], {"up": 3.2, "down": 4.0})
        self.assertEqual([s["index"] for s in record["streams"]], [0, 1, 2, 3])
        self.assertIn("stream 2: no RTP; MOS up ? down ?; relay dropped 10", _cdr_summary(record))
        dialog.quality = {}
        self.assertEqual(call_detail_record("7/c@lan", dialog, "dialog ended", 5.0, "agent", "lan")["mos"], {"up": None, "down": None})

    def test_call_detail_line_with_braces(self) -> None:
        """
        The line is the event's format; braces in it (a Call-ID may hold
        them) come out as they are, and the record keeps the Call-ID.
        """
        agent, event = _unanswered_call_event("7/a{b}c{{@lan")
        self.assertEqual(event["cdr"]["call_id"], "a{b}c{{@lan")
        self.assertTrue(
            formatEvent(event).startswith("call a{b}c{{@lan ended (dialog ended) after 0.0s, not answered: ? -> ?"),
            formatEvent(event),
        )

    def test_call_detail_event_as_logger_info(self) -> None:
        """
        The call's event, handed to the observers without C{Logger.info},
        is the event C{Logger.info} makes of its line and record: the same
        keys in the same order and the same values (its time the wall
        clock's, as Twisted's).
        """
        agent, event = _unanswered_call_event("7/call-e@lan")
        with capturedLogs() as made:
            agent.log.info(event["log_format"], cdr=event["cdr"])
        (expected,) = made
        # the keys Logger.info makes (observers, such as the legacy one
        # under trial, add theirs to both after them)
        keys = ["cdr", "log_logger", "log_level", "log_namespace", "log_source", "log_format", "log_time"]
        self.assertEqual(list(expected)[:7], keys)
        self.assertEqual(list(event), list(expected))
        for name in keys[:5]:
            self.assertIs(event[name], expected[name], name)
        self.assertEqual(event["log_format"], expected["log_format"])
        self.assertIs(event["log_source"], agent)
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertIsInstance(event["log_time"], float)
        self.assertLessEqual(event["log_time"], expected["log_time"])

    def test_unacknowledged_answer_reason(self) -> None:
        """
        A call whose answer no ACK confirmed (the SIP core ends it after
        32 s) says so in its line and record, and counts under its own
        reason in the status.
        """
        reactor, agent, a_end, contact, c_end = _pair()
        key = "7/noack@lan"
        with capturedLogs() as events:
            agent.sdp_into_tunnel(a_end, key, "application/sdp", _sdp(PHONE, ("audio", 4000, "")))
            agent.dialog_answered(a_end, key, "b", ours=False)
            reactor.advance(32)
            agent.dialog_ended(a_end, key, reason="answer never acknowledged")
        (event,) = [e for e in events if "cdr" in e]
        self.assertEqual(event["cdr"]["reason"], "answer never acknowledged")
        self.assertIn("ended (answer never acknowledged) after 32.0s", formatEvent(event))

    def test_first_codec(self) -> None:
        """
        The codec is the first format of the first live stream: its
        C{a=rtpmap}, a static payload type's name, or the protocol.
        """
        cases = [
            (b"m=audio 0 RTP/AVP 0\r\nm=audio 4000 RTP/AVP 96 0\r\na=rtpmap:96 opus/48000/2\r\n", "opus/48000/2"),
            (b"m=audio 4000 RTP/AVP 18\r\n", "G729/8000"),
            (b"m=audio 4000 RTP/AVP 101\r\n", "payload type 101"),
            (b"m=message 4000 TCP/MSRP *\r\n", "TCP/MSRP"),
            (b"m=audio 0 RTP/AVP 0\r\n", None),
        ]
        for media, expected in cases:
            sdp = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n" + media
            self.assertEqual(first_codec(sdp, parse_sdp(sdp)), expected, media)
            # what the hooks use: every stream's codec read once, the same first
            first, codecs = _codecs(sdp, parse_sdp(sdp))
            self.assertEqual(first, expected, media)
        sdp = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n" + cases[0][0]
        self.assertEqual(_codecs(sdp, parse_sdp(sdp)), ("opus/48000/2", {1: "opus/48000/2"}))


class QualityTests(SynchronousTestCase):
    """
    Every relayed stream has its quality figures, fed by the relay
    sockets; the RTCP they see goes to the HEP sender.
    """

    def test_stream_quality_and_hep_rtcp(self) -> None:
        """
        RTP up and down through both halves: each half's snapshot shows
        the legs it sees. An SR from the operator side and the phone's RR
        answering it give the agent the LAN round trip; both reports are
        copied to the contact point's HEP sender with the Call-ID.
        """
        from spwm.media import relay

        from .test_hep import FakeHep
        from .test_media_quality import report_block, rr, rtp, sr

        hep = FakeHep()
        reactor, agent, a_end, contact, c_end = _pair(hep=hep)
        self.patch(relay, "_monotonic", reactor.seconds)
        key = "3/q@lan"
        offer = _sdp(PHONE, ("audio", 4000, "a=rtpmap:8 PCMA/8000"))
        answer = _sdp(OPERATOR, ("audio", 6000, "")).replace(b"RTP/AVP 0", b"RTP/AVP 8")
        agent.sdp_into_tunnel(a_end, key, "application/sdp", offer)
        contact.sdp_out_of_tunnel(c_end, key, "application/sdp", offer)
        contact.sdp_into_tunnel(c_end, key, "application/sdp", answer)
        agent.sdp_out_of_tunnel(a_end, key, "application/sdp", answer)
        phone_rtp = reactor.udp[AGENT_ADDR, 20000]
        phone_rtcp = reactor.udp[AGENT_ADDR, 20001]
        far_rtp = reactor.udp[CONTACT_ADDR, 30000]
        far_rtcp = reactor.udp[CONTACT_ADDR, 30001]
        for seq in range(20):
            if seq != 7:
                phone_rtp.receive(rtp(seq, seq * 160, pt=8), (PHONE, 4000))
            far_rtp.receive(rtp(1000 + seq, seq * 160, ssrc=9, pt=8), (OPERATOR, 6000))
            reactor.advance(0.02)
        # the operator's SR passes both halves; the phone answers 30 ms later
        report = sr(9, 0x0000ABCD, 0x12340000)
        far_rtcp.receive(report, (OPERATOR, 6001))
        reactor.advance(0.030)
        lsr = ((0xABCD & 0xFFFF) << 16) | 0x1234
        phone_rtcp.receive(rr(0x1234, [report_block(9, 0, 0, 1019, 8, lsr, 0)]), (PHONE, 4001))
        a_snap = agent._find(a_end.session_id, key).streams[0].quality.snapshot()  # type: ignore[union-attr]
        c_snap = contact._find(c_end.session_id, key).streams[0].quality.snapshot()  # type: ignore[union-attr]
        self.assertEqual(a_snap["codec"], "PCMA/8000")
        self.assertIsNone(a_snap["legs"]["operator"])
        self.assertIsNone(c_snap["legs"]["lan"])
        self.assertEqual((a_snap["legs"]["lan"]["packets"], a_snap["legs"]["lan"]["lost"]), (19, 1))
        self.assertEqual((c_snap["legs"]["tunnel"]["packets"], c_snap["legs"]["tunnel"]["lost"]), (19, 1))
        self.assertEqual((c_snap["legs"]["operator"]["packets"], a_snap["legs"]["tunnel"]["packets"]), (20, 20))
        self.assertAlmostEqual(a_snap["legs"]["lan"]["rtcp"]["rtt_ms"], 30.0, places=3)
        # the fake tunnel is instant: the contact point sees the same round trip
        self.assertAlmostEqual(c_snap["legs"]["tunnel"]["rtcp"]["rtt_ms"], 30.0, places=3)
        self.assertIsNotNone(a_snap["mos"]["up"])
        (live,) = agent.live_calls()
        self.assertEqual((live["dialog"], live["call_id"], live["codec"]), (key, "q@lan", "PCMA/8000"))
        self.assertEqual(live["streams"][0]["quality"]["legs"]["lan"]["lost"], 1)
        agent.dialog_ended(a_end, key)
        self.assertEqual(list(agent.live_calls()), [])
        self.assertEqual([r["dialog"] for r in agent.cdrs], [key])
        self.assertEqual(
            [(src, dst, [p["type"] for p in packets], call) for src, dst, packets, call in hep.reports],
            [
                ((OPERATOR, 6001), (CONTACT_ADDR, 30001), ["sr"], "q@lan"),
                ((CONTACT_ADDR, 30001), (OPERATOR, 6001), ["rr"], "q@lan"),
            ],
        )


def spwm_garbage(work: Any) -> dict[str, int]:
    """
    The objects of SPWM's classes that C{work()} leaves to the garbage
    collector (in reference cycles), by class name: everything it frees
    by reference counting is not there.  The collector is off meanwhile,
    and garbage from before is collected first.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        work()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found: dict[str, int] = {}
        for o in gc.garbage:
            if type(o).__module__.startswith("spwm."):
                name = type(o).__qualname__
                found[name] = found.get(name, 0) + 1
        return found
    finally:
        gc.set_debug(0)
        del gc.garbage[:]
        if enabled:
            gc.enable()


class NoGarbageTests(SynchronousTestCase):
    """
    A call's media objects are freed by reference counting when its
    streams are released: none is left in a reference cycle for the
    garbage collector, whose full collections pause the whole process for
    longer the more calls are in progress (C{spwm.gcpolicy}).
    """

    def test_calls(self) -> None:
        """
        More calls than the ring of ended calls keeps, each with media
        both ways through both halves: latched to another port, RTP and
        RTCP (SR and RR, copied to HEP), ended by either side first.
        """
        from spwm.media import relay

        from .test_hep import FakeHep
        from .test_media_quality import report_block, rr, rtp, sr

        hep = FakeHep()
        reactor, agent, a_end, contact, c_end = _pair(hep=hep)
        self.patch(relay, "_monotonic", reactor.seconds)
        offer = _sdp(PHONE, ("audio", 4000, ""))
        answer = _sdp(OPERATOR, ("audio", 6000, ""))

        def calls() -> None:
            for n in range(ENDED_CALLS + 10):
                key = f"{n}/c@lan"
                _negotiate(agent, a_end, contact, c_end, key, offer, answer)
                contact.dialog_answered(c_end, key, "b", ours=True)
                agent.dialog_answered(a_end, key, "b", ours=False)
                phone_rtp, phone_rtcp = agent.stream_endpoints(a_end.session_id, key, 0)
                far_rtp, far_rtcp = contact.stream_endpoints(c_end.session_id, key, 0)
                for seq in range(3):
                    phone_rtp.datagramReceived(rtp(seq, seq * 160), (PHONE, 4010))
                    far_rtp.datagramReceived(rtp(100 + seq, seq * 160, ssrc=9), (OPERATOR, 6000))
                    reactor.advance(0.02)
                far_rtcp.datagramReceived(sr(9, 0xABCD, 0x1234), (OPERATOR, 6001))
                phone_rtcp.datagramReceived(rr(0x1234, [report_block(9, 0, 0, 102, 8, 0, 0)]), (PHONE, 4011))
                self.assertEqual((phone_rtp.latches, far_rtp.packets_out), (1, 3))
                first, second = ((agent, a_end), (contact, c_end))[:: 1 if n % 2 else -1]
                first[0].dialog_ended(first[1], key)
                second[0].dialog_ended(second[1], key)
                reactor.advance(1)

        self.assertEqual(spwm_garbage(calls), {})
        self.assertEqual(len(hep.reports), 2 * (ENDED_CALLS + 10))
        assert_released(self, agent, contact)
        self.assertEqual(len(contact.cdrs), ENDED_CALLS)

    def test_forked_held_and_refused(self) -> None:
        """
        Forked early media with audio and video, the loser's streams
        released at the answer, video removed by a re-INVITE, the call
        held; a stream whose port pairs are all taken by another program;
        all of it ended.
        """
        forking = ForkingTests()
        reactor, agent, a_end, contact, c_end = _pair()

        def calls() -> None:
            offer = _sdp(PHONE, ("audio", 4000, ""), ("video", 4002, ""))
            agent.sdp_into_tunnel(a_end, DIALOG, SDP_TYPE, offer, tag="ph")
            contact.sdp_out_of_tunnel(c_end, DIALOG, SDP_TYPE, offer, tag="ph")
            for tag, answer in (
                ("a", _sdp(OPERATOR_A, ("audio", 6000, ""), ("video", 6002, ""))),
                ("b", _sdp(OPERATOR_B, ("audio", 7000, ""), ("video", 0, ""))),
            ):
                contact.sdp_into_tunnel(c_end, DIALOG, SDP_TYPE, answer, tag=tag)
                agent.sdp_out_of_tunnel(a_end, DIALOG, SDP_TYPE, answer, tag=tag)
            reactor.udp[CONTACT_ADDR, 30000].receive(b"ring-a", (OPERATOR_A, 6000))
            reactor.udp[CONTACT_ADDR, 30000].receive(b"ring-b", (OPERATOR_B, 7000))
            forking._answered(agent, a_end, contact, c_end, "b")
            held = _sdp(PHONE, ("audio", 4000, "a=sendonly"), ("video", 0, ""), version=2)
            agent.sdp_into_tunnel(a_end, DIALOG, SDP_TYPE, held, tag="ph")
            contact.sdp_out_of_tunnel(c_end, DIALOG, SDP_TYPE, held, tag="ph")
            reactor.refuse.update(range(30000, 30100))
            _negotiate(agent, a_end, contact, c_end, "2/refused", _sdp(PHONE, ("audio", 4100, "")), _sdp(OPERATOR, ("audio", 6100, "")))
            for key in (DIALOG, "2/refused"):
                agent.dialog_ended(a_end, key)
                contact.dialog_ended(c_end, key)
            assert_released(self, agent, contact)

        self.assertEqual(spwm_garbage(calls), {})
