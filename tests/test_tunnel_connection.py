"""
Tests for L{spwm.tunnel.connection}, the sans-I/O tunnel core.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spwm.limits import TunnelLimits
from spwm.testing.pair import CorePair
from spwm.tunnel import events as ev
from spwm.tunnel.connection import ChannelLimitError, Role, State, TunnelConnection
from spwm.tunnel.decoder import FrameDecoder
from spwm.tunnel.frames import (
    FLAG_SEQ,
    ChannelKind,
    ErrorCode,
    PREFACE_SIZE,
    FrameType,
    decode_error,
    encode_control,
    encode_frame,
    encode_preface,
)


def of_type(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def frames_in(data: bytes, skip_preface: bool = True) -> list[tuple[int, int, int, bytes]]:
    return FrameDecoder().feed(data[8:] if skip_preface else data)


class HandshakeTests(SynchronousTestCase):
    """
    The versioned handshake.
    """

    def test_handshake(self) -> None:
        """
        Both sides report the handshake with the session and agent identities.
        """
        pair = CorePair(hello={"capabilities": ["x"]}).handshake()
        [a] = of_type(pair.agent_events, ev.HandshakeCompleted)
        [c] = of_type(pair.contact_events, ev.HandshakeCompleted)
        self.assertEqual((a.version, a.session_id, a.agent_id), (1, "s-1", "agent-1"))
        self.assertEqual((c.version, c.session_id, c.agent_id), (1, "s-1", "agent-1"))
        self.assertEqual(a.peer_hello["capabilities"], ["x"])
        self.assertEqual(c.peer_hello["op"], "hello")
        self.assertIs(pair.agent.state, State.OPEN)
        self.assertIs(pair.contact.state, State.OPEN)

    def test_hello_carries_extra_fields(self) -> None:
        """
        The agent's hello carries the fields it was given (room for resumption data).
        """
        agent = TunnelConnection(Role.AGENT, 0, agent_id="a", hello={"resume": [{"user": "u"}]})
        contact = TunnelConnection(Role.CONTACT, 0, session_id="s")
        [done] = contact.receive_data(agent.data_to_send(0), 0)
        self.assertEqual(done.peer_hello["resume"], [{"user": "u"}])

    def test_hello_with_the_preface(self) -> None:
        """
        An agent that speaks one version sends its hello with its preface
        (the contact point can choose nothing else): the contact point's
        preface and welcome come back in one flight, one round trip in
        all, whether the two arrive together or apart.  An agent that
        speaks a range waits for the version chosen, as before.
        """
        for split in (None, 3, PREFACE_SIZE, PREFACE_SIZE + 5):
            agent = TunnelConnection(Role.AGENT, 0, agent_id="a")
            contact = TunnelConnection(Role.CONTACT, 0, session_id="s")
            first = agent.data_to_send(0)
            pieces = [first] if split is None else [first[:split], first[split:]]
            events = [e for piece in pieces for e in contact.receive_data(piece, 0)]
            self.assertEqual([type(e).__name__ for e in events], ["HandshakeCompleted"])
            [up] = agent.receive_data(contact.data_to_send(0), 0)
            self.assertEqual((up.session_id, agent.state, agent.data_to_send(0)), ("s", State.OPEN, b""))
        ranged = TunnelConnection(Role.AGENT, 0, agent_id="a", versions=(1, 2))
        contact = TunnelConnection(Role.CONTACT, 0, session_id="s")
        first = ranged.data_to_send(0)
        self.assertEqual(first, encode_preface(1, 2))
        self.assertEqual(contact.receive_data(first, 0), [])
        self.assertEqual(ranged.receive_data(contact.data_to_send(0), 0), [])
        [done] = contact.receive_data(ranged.data_to_send(0), 0)
        self.assertEqual(done.peer_hello["version"], 1)

    def test_version_mismatch(self) -> None:
        """
        An agent that speaks only a version the contact point does not gets
        a VERSION_MISMATCH error and both sides close.
        """
        agent = TunnelConnection(Role.AGENT, 0, agent_id="a", versions=(7, 9))
        contact = TunnelConnection(Role.CONTACT, 0, session_id="s")
        [closed] = contact.receive_data(agent.data_to_send(0), 0)
        self.assertEqual(closed.code, ErrorCode.VERSION_MISMATCH)
        self.assertIs(contact.state, State.CLOSED)
        reply = contact.data_to_send(0)
        self.assertEqual(reply[:8], encode_preface(0, 0))
        [closed] = agent.receive_data(reply, 0)
        self.assertEqual(closed.code, ErrorCode.VERSION_MISMATCH)

    def test_newer_agent_gets_our_version(self) -> None:
        """
        An agent that also speaks later versions is answered with the highest
        common one, so a later version can be added without breaking anyone.
        """
        agent = TunnelConnection(Role.AGENT, 0, agent_id="a", versions=(1, 5))
        contact = TunnelConnection(Role.CONTACT, 0, session_id="s")
        contact.receive_data(agent.data_to_send(0), 0)
        agent.receive_data(contact.data_to_send(0), 0)
        [done] = contact.receive_data(agent.data_to_send(0), 0)
        self.assertEqual(done.version, 1)

    def test_bad_magic(self) -> None:
        """
        Something that is not an SPWM agent (say, an HTTP client) is refused.
        """
        contact = TunnelConnection(Role.CONTACT, 0, session_id="s")
        [closed] = contact.receive_data(b"GET / HTTP/1.1\r\n\r\n", 0)
        self.assertEqual(closed.code, ErrorCode.PROTOCOL_ERROR)
        self.assertIn("magic", closed.reason)
        self.assertEqual(contact.receive_data(b"more", 0), [])

    def test_frames_before_handshake(self) -> None:
        """
        A SIP frame before the hello is a protocol error.
        """
        contact = TunnelConnection(Role.CONTACT, 0, session_id="s")
        [closed] = contact.receive_data(encode_preface(1, 1) + encode_frame(FrameType.SIP, 0, 1, b"x"), 0)
        self.assertEqual(closed.code, ErrorCode.PROTOCOL_ERROR)

    def test_handshake_timeout(self) -> None:
        """
        A peer that never finishes the handshake is closed after the timeout.
        """
        contact = TunnelConnection(Role.CONTACT, 100, session_id="s", limits=TunnelLimits(handshake_timeout=5))
        self.assertEqual(contact.next_deadline(), 105)
        self.assertEqual(contact.handle_timer(104), [])
        [closed] = contact.handle_timer(105)
        self.assertEqual(closed.code, ErrorCode.HANDSHAKE_TIMEOUT)
        (ftype, _, _, payload), = FrameDecoder().feed(contact.data_to_send(105))
        self.assertEqual(decode_error(payload)[0], ErrorCode.HANDSHAKE_TIMEOUT)

    def test_bad_hello(self) -> None:
        """
        A hello that is not JSON, or lacks an agent id, is refused.
        """
        for payload in [b"{", b"[]", json.dumps({"op": "hello"}).encode()]:
            contact = TunnelConnection(Role.CONTACT, 0, session_id="s")
            [closed] = contact.receive_data(encode_preface(1, 1) + encode_frame(FrameType.CONTROL, 0, 0, payload), 0)
            self.assertEqual(closed.code, ErrorCode.BAD_CONTROL)


class ChannelTests(SynchronousTestCase):
    """
    Channels, SIP and datagrams over an open tunnel.
    """

    def setUp(self) -> None:
        self.pair = CorePair().handshake()
        self.pair.agent_events.clear()
        self.pair.contact_events.clear()

    def test_sip_both_ways(self) -> None:
        """
        SIP messages arrive with their flow id.
        """
        self.pair.agent.send_sip(5, b"REGISTER sip:x SIP/2.0\r\n\r\n")
        self.pair.contact.send_sip(5, b"SIP/2.0 200 OK\r\n\r\n")
        self.pair.transfer()
        self.assertEqual(self.pair.contact_events, [ev.SipReceived(5, b"REGISTER sip:x SIP/2.0\r\n\r\n")])
        self.assertEqual(self.pair.agent_events, [ev.SipReceived(5, b"SIP/2.0 200 OK\r\n\r\n")])

    def test_open_datagram_close(self) -> None:
        """
        A channel opened by one side is known to the other before its first
        datagram; datagrams keep their boundaries and component; close is seen.
        """
        cid = self.pair.agent.open_channel(ChannelKind.DATAGRAM, {"use": "media"})
        self.assertEqual(cid % 2, 1)
        self.pair.agent.send_datagram(cid, b"rtp", self.pair.now)
        self.pair.agent.send_datagram(cid, b"rtcp", self.pair.now, component=1)
        self.pair.transfer()
        self.assertEqual(
            self.pair.contact_events,
            [
                ev.ChannelOpened(cid, ChannelKind.DATAGRAM, {"use": "media"}),
                ev.DatagramReceived(cid, b"rtp", 0),
                ev.DatagramReceived(cid, b"rtcp", 1),
            ],
        )
        self.pair.contact.send_datagram(cid, b"back", self.pair.now)
        self.pair.contact.close_channel(cid, 0, "bye")
        self.pair.transfer()
        self.assertEqual(self.pair.agent_events, [ev.DatagramReceived(cid, b"back", 0), ev.ChannelClosed(cid, 0, "bye")])
        self.assertEqual(self.pair.agent.channel_count, 0)
        self.assertEqual(self.pair.contact.channel_count, 0)

    def test_contact_channels_are_even(self) -> None:
        """
        The contact point allocates even ids, the agent odd ones, never reused.
        """
        ids = [self.pair.contact.open_channel(ChannelKind.DATAGRAM, {}) for _ in range(3)]
        self.assertEqual(ids, [2, 4, 6])
        self.pair.contact.close_channel(4)
        self.assertEqual(self.pair.contact.open_channel(ChannelKind.DATAGRAM, {}), 8)

    def test_stream_channel(self) -> None:
        """
        Stream channels carry bytes and end-of-stream; data after the end is an error.
        """
        cid = self.pair.contact.open_channel(ChannelKind.STREAM, {"use": "msrp"})
        self.assertTrue(self.pair.contact.send_stream_data(cid, b"hello "))
        self.pair.contact.send_stream_data(cid, b"world", fin=True)
        self.pair.transfer()
        self.assertEqual(
            self.pair.agent_events[1:],
            [ev.StreamDataReceived(cid, b"hello "), ev.StreamDataReceived(cid, b"world"), ev.StreamEnded(cid)],
        )
        self.assertRaises(ValueError, self.pair.contact.send_stream_data, cid, b"more")
        [closed] = self.pair.agent.receive_data(encode_frame(FrameType.STREAM_DATA, 0, cid, b"x"), self.pair.now)
        self.assertEqual(closed.code, ErrorCode.PROTOCOL_ERROR)

    def test_large_stream_data_is_split(self) -> None:
        """
        Stream data larger than a frame is split into several frames.
        """
        cid = self.pair.agent.open_channel(ChannelKind.STREAM, {})
        self.pair.agent.send_stream_data(cid, b"a" * 150_000)
        self.pair.transfer()
        data = b"".join(e.data for e in of_type(self.pair.contact_events, ev.StreamDataReceived))
        self.assertEqual(data, b"a" * 150_000)

    def test_datagram_on_unknown_channel(self) -> None:
        """
        A datagram on a channel that was never opened closes the tunnel.
        """
        [closed] = self.pair.contact.receive_data(encode_frame(FrameType.DATAGRAM, 0, 99, b"x"), self.pair.now)
        self.assertEqual(closed.code, ErrorCode.UNKNOWN_CHANNEL)

    def test_close_on_unknown_channel(self) -> None:
        """
        A close of a channel that was never opened closes the tunnel; on a
        connection of a session with several (C{paths}), where the open may
        have gone on another connection only, it is a late frame.
        """
        frame = encode_control({"op": "close", "channel": 99, "code": 0, "reason": ""})
        [closed] = self.pair.contact.receive_data(frame, self.pair.now)
        self.assertEqual(closed.code, ErrorCode.UNKNOWN_CHANNEL)
        pair = CorePair().handshake()
        pair.contact.paths = True
        self.assertEqual(pair.contact.receive_data(frame, pair.now), [])
        self.assertEqual(pair.contact.stats.late_frames, 1)
        self.assertIs(pair.contact.state, State.OPEN)

    def test_numbered_sip_only_when_agreed(self) -> None:
        """
        A SIP frame with C{FLAG_SEQ} is taken (its event says numbered)
        only when both hellos said C{paths} and C{sip-seq}; otherwise it
        breaks the protocol.  Either side alone does not agree it.
        """
        frame = encode_frame(FrameType.SIP, FLAG_SEQ, 3, b"\x00\x00\x00\x07INVITE")
        both = CorePair(agent_hello={"paths": 1, "sip-seq": 1}, hello={"paths": 1, "sip-seq": 1}).handshake()
        self.assertTrue(both.agent.sip_seq and both.contact.sip_seq)
        [got] = both.contact.receive_data(frame, both.now)
        self.assertEqual(got, ev.SipReceived(3, b"\x00\x00\x00\x07INVITE", False, True))
        for agent_hello, hello in (
            ({"paths": 1}, {"paths": 1, "sip-seq": 1}),
            ({"paths": 1, "sip-seq": 1}, {"paths": 1}),
            ({"sip-seq": 1}, {"sip-seq": 1}),
        ):
            pair = CorePair(agent_hello=agent_hello, hello=hello).handshake()
            self.assertFalse(pair.agent.sip_seq or pair.contact.sip_seq, (agent_hello, hello))
            [closed] = pair.contact.receive_data(frame, pair.now)
            self.assertEqual(closed.code, ErrorCode.PROTOCOL_ERROR)

    def test_late_datagram_is_dropped(self) -> None:
        """
        A datagram on a channel that was open and is now closed is a late
        frame: dropped and counted, the tunnel lives on.
        """
        cid = self.pair.agent.open_channel(ChannelKind.DATAGRAM, {})
        self.pair.transfer()
        self.pair.contact.close_channel(cid)
        events = self.pair.contact.receive_data(encode_frame(FrameType.DATAGRAM, 0, cid, b"late"), self.pair.now)
        self.assertEqual(events, [])
        self.assertEqual(self.pair.contact.stats.late_frames, 1)
        self.assertIs(self.pair.contact.state, State.OPEN)

    def test_send_on_closed_channel_is_counted(self) -> None:
        """
        Sending a datagram on a channel that is not open drops it and counts it.
        """
        self.pair.agent.send_datagram(77, b"x", self.pair.now)
        self.assertEqual(self.pair.agent.stats.datagrams_unknown_channel, 1)
        self.assertEqual(self.pair.agent.data_to_send(self.pair.now), b"")

    def test_peer_opens_with_wrong_parity(self) -> None:
        """
        A peer opening a channel with our parity breaks the protocol.
        """
        msg = encode_control({"op": "open", "channel": 2, "kind": "datagram", "meta": {}})
        [closed] = self.pair.contact.receive_data(msg, self.pair.now)
        self.assertEqual(closed.code, ErrorCode.PROTOCOL_ERROR)

    def test_channel_limit(self) -> None:
        """
        Past the channel limit our own opens raise, and the peer's are refused
        with CHANNEL_LIMIT while the tunnel lives on.
        """
        agent = TunnelConnection(Role.AGENT, 0, agent_id="a")
        contact = TunnelConnection(Role.CONTACT, 0, session_id="s", limits=TunnelLimits(max_channels=1))
        contact.receive_data(agent.data_to_send(0), 0)
        agent.receive_data(contact.data_to_send(0), 0)
        contact.receive_data(agent.data_to_send(0), 0)
        agent.receive_data(contact.data_to_send(0), 0)
        self.assertIs(contact.state, State.OPEN)
        first = agent.open_channel(ChannelKind.DATAGRAM, {})
        second = agent.open_channel(ChannelKind.DATAGRAM, {})
        events = contact.receive_data(agent.data_to_send(0), 0)
        self.assertEqual([type(e) for e in events], [ev.ChannelOpened])
        self.assertRaises(ChannelLimitError, contact.open_channel, ChannelKind.DATAGRAM, {})
        [refused] = agent.receive_data(contact.data_to_send(0), 0)
        self.assertEqual((refused.channel_id, refused.code), (second, ErrorCode.CHANNEL_LIMIT))
        self.assertTrue(agent.is_open_channel(first))
        self.assertIs(contact.state, State.OPEN)
        self.assertIs(agent.state, State.OPEN)

    def test_unknown_control_op_is_ignored(self) -> None:
        """
        A control message with an op the core does not own goes to the
        application (room for later versions); sending one of the core's
        own ops through the application API is refused.
        """
        events = self.pair.contact.receive_data(encode_control({"op": "future-thing", "x": 1}), self.pair.now)
        self.assertEqual(events, [ev.ControlReceived({"op": "future-thing", "x": 1})])
        self.assertEqual(self.pair.contact.stats.unknown_control, 1)
        self.pair.agent.send_control({"op": "resume", "proofs": {}})
        self.pair.transfer()
        self.assertEqual(self.pair.contact_events, [ev.ControlReceived({"op": "resume", "proofs": {}})])
        self.assertRaises(ValueError, self.pair.agent.send_control, {"op": "open"})

    def test_error_frame_closes(self) -> None:
        """
        An ERROR frame from the peer closes the tunnel, reported as by the peer.
        """
        self.pair.agent.close(ErrorCode.NO_ERROR, "bye")
        self.pair.transfer()
        [closed] = of_type(self.pair.contact_events, ev.TunnelClosed)
        self.assertEqual((closed.code, closed.reason, closed.by_peer), (0, "bye", True))
        self.assertRaises(RuntimeError, self.pair.agent.send_sip, 1, b"x")


class SchedulerTests(SynchronousTestCase):
    """
    Priorities, stale media, queue bounds.
    """

    def setUp(self) -> None:
        self.pair = CorePair(limits=TunnelLimits(media_deadline=0.05, max_media_queue=2000, max_priority_queue=1000)).handshake()
        self.agent = self.pair.agent
        self.cid = self.agent.open_channel(ChannelKind.DATAGRAM, {})
        self.pair.transfer()

    def test_sip_goes_before_media(self) -> None:
        """
        A SIP frame queued after media is sent before it.
        """
        self.agent.send_datagram(self.cid, b"m1", self.pair.now)
        self.agent.send_sip(1, b"SIP")
        out = frames_in(b"\0" * 8 + self.agent.data_to_send(self.pair.now))
        self.assertEqual([f[0] for f in out], [FrameType.SIP, FrameType.DATAGRAM])

    def test_stale_media_dropped(self) -> None:
        """
        Media that waited longer than the deadline (the transport was paused)
        is dropped and counted; fresh media and SIP go out.
        """
        now = self.pair.now
        self.agent.send_datagram(self.cid, b"old", now)
        self.agent.send_sip(1, b"SIP")
        self.agent.send_datagram(self.cid, b"new", now + 0.04)
        out = frames_in(b"\0" * 8 + self.agent.data_to_send(now + 0.06))
        self.assertEqual([f[3] for f in out], [b"SIP", b"new"])
        self.assertEqual(self.agent.stats.media_dropped_stale, 1)

    def test_media_dropped_per_channel(self) -> None:
        """
        The datagrams dropped in the media queue are counted on their
        channel too (stale and overflow), not on another channel; a
        channel that is not open has no count.
        """
        other = self.agent.open_channel(ChannelKind.DATAGRAM, {})
        self.pair.transfer()
        now = self.pair.now
        self.agent.send_datagram(self.cid, b"old", now)
        self.agent.send_datagram(other, b"fresh", now + 0.04)
        self.agent.data_to_send(now + 0.06)
        self.assertEqual((self.agent.media_dropped(self.cid), self.agent.media_dropped(other)), (1, 0))
        for _ in range(100):
            self.agent.send_datagram(other, b"x" * 172, now + 0.07)
        overflow = self.agent.stats.media_dropped_overflow
        self.assertGreater(overflow, 80)
        self.assertEqual((self.agent.media_dropped(self.cid), self.agent.media_dropped(other)), (1, overflow))
        self.assertIsNone(self.agent.media_dropped(9999))

    def test_media_queue_is_bounded(self) -> None:
        """
        While paused, the media queue holds at most its byte limit.
        """
        for _ in range(100):
            self.agent.send_datagram(self.cid, b"x" * 172, self.pair.now)
        self.assertGreater(self.agent.stats.media_dropped_overflow, 80)
        self.assertLessEqual(len(self.agent.data_to_send(self.pair.now)), 2000 + 200)

    def test_max_bytes(self) -> None:
        """
        C{max_bytes} limits media but never holds back SIP.
        """
        for _ in range(5):
            self.agent.send_datagram(self.cid, b"x" * 100, self.pair.now)
        self.agent.send_sip(1, b"s" * 300)
        out = self.agent.data_to_send(self.pair.now, max_bytes=420)
        self.assertEqual(len(out), 308 + 108)
        self.assertEqual(len(self.agent.data_to_send(self.pair.now)), 4 * 108)

    def test_priority_overflow_closes(self) -> None:
        """
        When the peer stops reading and signalling piles up past its limit,
        the tunnel closes rather than drop SIP.
        """
        self.assertIsNone(self.agent.check_queues())
        for _ in range(10):
            self.agent.send_sip(1, b"s" * 200)
        closed = self.agent.check_queues()
        self.assertEqual(closed.code, ErrorCode.QUEUE_OVERFLOW)
        self.assertIs(self.agent.state, State.CLOSED)


    def test_congested_past_a_quarter(self) -> None:
        """
        The tunnel is congested while more than a quarter of the signalling
        queue limit waits, and no longer once it is sent; media does not
        count.
        """
        self.assertFalse(self.agent.congested)
        self.agent.send_sip(1, b"s" * 200)
        self.assertFalse(self.agent.congested)
        self.agent.send_sip(1, b"s" * 200)
        self.assertTrue(self.agent.congested)
        self.assertIsNone(self.agent.check_queues())
        self.pair.transfer()
        self.assertFalse(self.agent.congested)
        for _ in range(5):
            self.agent.send_datagram(self.cid, b"m" * 300, self.pair.now)
        self.assertFalse(self.agent.congested)


class KeepaliveTests(SynchronousTestCase):
    """
    Pings, dead peers and go-away.
    """

    def test_idle_tunnel_pings_and_lives(self) -> None:
        """
        An idle tunnel exchanges pings and stays open for a long time.
        """
        pair = CorePair(limits=TunnelLimits(keepalive_interval=10, keepalive_timeout=30)).handshake()
        pair.advance(300)
        self.assertIs(pair.agent.state, State.OPEN)
        self.assertIs(pair.contact.state, State.OPEN)
        self.assertGreater(pair.agent.stats.pings_sent + pair.contact.stats.pings_sent, 10)

    def test_silent_peer_is_dead(self) -> None:
        """
        A peer silent for longer than the timeout (TCP hangs without an error)
        is declared dead.
        """
        pair = CorePair(limits=TunnelLimits(keepalive_interval=10, keepalive_timeout=30)).handshake()
        now = pair.now
        agent = pair.agent
        events = []
        t = now
        while agent.state is State.OPEN and t < now + 100:
            t = agent.next_deadline()
            events += agent.handle_timer(t)
            agent.data_to_send(t)  # written into the void
        [closed] = of_type(events, ev.TunnelClosed)
        self.assertEqual(closed.code, ErrorCode.KEEPALIVE_TIMEOUT)
        self.assertEqual(t, now + 30)

    def test_tcp_keepalive_both_offer(self) -> None:
        """
        When the hello and the welcome both offer C{tcp_keepalive}, an
        idle tunnel sends no keepalive PING and declares no keepalive
        timeout however long it is silent (the kernel does both): no
        deadline is left, and a PING from the peer is still answered.
        """
        limits = TunnelLimits(keepalive_interval=10, keepalive_timeout=30)
        offer = {"tcp_keepalive": 1}
        pair = CorePair(limits=limits, agent_hello=offer, hello=offer).handshake()
        self.assertTrue(pair.agent.tcp_keepalive)
        self.assertTrue(pair.contact.tcp_keepalive)
        self.assertIsNone(pair.agent.next_deadline())
        self.assertIsNone(pair.contact.next_deadline())
        self.assertEqual(pair.agent.handle_timer(pair.now + 300), [])
        self.assertEqual(pair.agent.data_to_send(pair.now + 300), b"")
        pair.advance(300)
        self.assertIs(pair.agent.state, State.OPEN)
        self.assertIs(pair.contact.state, State.OPEN)
        self.assertEqual(pair.agent.stats.pings_sent + pair.contact.stats.pings_sent, 0)
        pair.agent.ping(pair.now)
        pair.transfer()
        self.assertEqual(pair.agent.stats.pings_sent, 1)
        self.assertEqual(len(of_type(pair.agent_events, ev.RttSampled)), 1)

    def test_tcp_keepalive_one_side_offers(self) -> None:
        """
        When only one end offers C{tcp_keepalive} (an older peer, an
        agent behind an HTTP proxy, a contact point with
        C{--ping-keepalive}), both keep the PING keepalive and the
        silence timeout.
        """
        limits = TunnelLimits(keepalive_interval=10, keepalive_timeout=30)
        for agent_hello, welcome in (({"tcp_keepalive": 1}, None), (None, {"tcp_keepalive": 1})):
            pair = CorePair(limits=limits, agent_hello=agent_hello, hello=welcome).handshake()
            self.assertFalse(pair.agent.tcp_keepalive)
            self.assertFalse(pair.contact.tcp_keepalive)
            pair.advance(100)
            self.assertGreater(pair.agent.stats.pings_sent + pair.contact.stats.pings_sent, 3)
            self.assertEqual(pair.agent.next_deadline(), pair.agent._ping_due())

    def test_go_away(self) -> None:
        """
        Go-away reaches the peer with the drain time; the sender closes when
        the drain time is over.
        """
        pair = CorePair().handshake()
        pair.contact.go_away(pair.now, "maintenance", drain=3)
        pair.transfer()
        [gone] = of_type(pair.agent_events, ev.PeerWentAway)
        self.assertEqual((gone.reason, gone.drain), ("maintenance", 3))
        self.assertTrue(pair.agent.going_away)
        pair.advance(3)
        [closed] = of_type(pair.contact_events, ev.TunnelClosed)
        self.assertEqual(closed.code, ErrorCode.GOING_AWAY)


    def test_final_go_away(self) -> None:
        """
        When the hello and the welcome both say C{"final-stop"}, a final
        go-away reaches the peer as such; a plain one, or any between
        peers of which one did not say it, is not final.
        """
        offer = {"final-stop": 1}
        pair = CorePair(agent_hello=offer, hello=offer).handshake()
        self.assertEqual((pair.agent.final_stop, pair.contact.final_stop), (True, True))
        pair.agent.go_away(pair.now, "agent stopping", 0.0, final=True)
        pair.transfer()
        [gone] = of_type(pair.contact_events, ev.PeerWentAway)
        self.assertEqual((gone.reason, gone.drain, gone.final), ("agent stopping", 0.0, True))
        plain = CorePair(agent_hello=offer, hello=offer).handshake()
        plain.agent.go_away(plain.now, "tunnel no longer needed", 0.0)
        plain.transfer()
        [gone] = of_type(plain.contact_events, ev.PeerWentAway)
        self.assertFalse(gone.final)
        for agent_hello, welcome in ((offer, None), (None, offer)):
            older = CorePair(agent_hello=agent_hello, hello=welcome).handshake()
            self.assertEqual((older.agent.final_stop, older.contact.final_stop), (False, False))


class PropertyTests(SynchronousTestCase):
    """
    Random input never breaks the core.
    """

    @given(st.binary(max_size=500))
    def test_garbage_after_handshake(self, data: bytes) -> None:
        """
        Random bytes after the handshake give events or a clean close, never an exception.
        """
        pair = CorePair().handshake()
        events = pair.contact.receive_data(data, pair.now)
        if pair.contact.state is State.CLOSED:
            self.assertIsInstance(events[-1], ev.TunnelClosed)

    @settings(max_examples=50)
    @given(st.lists(st.tuples(st.sampled_from(["agent", "contact"]), st.integers(0, 3), st.binary(max_size=50)), max_size=40))
    def test_interleaved_channels(self, ops: list[tuple[str, int, bytes]]) -> None:
        """
        Datagrams on several channels opened by both sides arrive on the right
        channel in order.
        """
        pair = CorePair().handshake()
        chans = {
            "agent": [pair.agent.open_channel(ChannelKind.DATAGRAM, {}) for _ in range(4)],
            "contact": [pair.contact.open_channel(ChannelKind.DATAGRAM, {}) for _ in range(4)],
        }
        pair.transfer()
        pair.agent_events.clear()
        pair.contact_events.clear()
        sent: dict[str, list[tuple[int, bytes]]] = {"agent": [], "contact": []}
        for side, i, data in ops:
            core = pair.agent if side == "agent" else pair.contact
            cid = chans[side][i]
            core.send_datagram(cid, data, pair.now)
            sent[side].append((cid, data))
        pair.transfer()
        self.assertEqual([(e.channel_id, e.data) for e in pair.contact_events], sent["agent"])
        self.assertEqual([(e.channel_id, e.data) for e in pair.agent_events], sent["contact"])


class FastPathTests(SynchronousTestCase):
    """
    The media fast paths keep the order of events.
    """

    def test_sink_only_when_nothing_precedes(self) -> None:
        """
        A datagram goes to the sink at once unless another event precedes it
        in the same chunk; then it stays an event behind that one.
        """
        pair = CorePair().handshake()
        cid = pair.agent.open_channel(ChannelKind.DATAGRAM, {})
        pair.agent.send_datagram(cid, b"first", pair.now)
        sunk: list[tuple[int, bytes, int]] = []
        events = pair.contact.receive_data(pair.agent.data_to_send(pair.now), pair.now, lambda *a: sunk.append(a))
        self.assertEqual(events, [ev.ChannelOpened(cid, ChannelKind.DATAGRAM, {}), ev.DatagramReceived(cid, b"first", 0)])
        self.assertEqual(sunk, [])
        pair.agent.send_datagram(cid, b"second", pair.now, component=1)
        events = pair.contact.receive_data(pair.agent.data_to_send(pair.now), pair.now, lambda *a: sunk.append(a))
        self.assertEqual(events, [])
        self.assertEqual(sunk, [(cid, b"second", 1)])

    def test_datagram_frame(self) -> None:
        """
        With nothing queued, the frame comes back for immediate writing;
        with SIP queued ahead, the datagram is queued behind it.
        """
        pair = CorePair().handshake()
        cid = pair.agent.open_channel(ChannelKind.DATAGRAM, {})
        pair.transfer()
        frame = pair.agent.datagram_frame(cid, b"rtp", pair.now)
        self.assertEqual(frames_in(b"\0" * 8 + frame), [(FrameType.DATAGRAM, 0, cid, b"rtp")])
        pair.agent.send_sip(1, b"SIP")
        self.assertIsNone(pair.agent.datagram_frame(cid, b"later", pair.now))
        out = frames_in(b"\0" * 8 + pair.agent.data_to_send(pair.now))
        self.assertEqual([f[3] for f in out], [b"SIP", b"later"])
        self.assertIsNone(pair.agent.datagram_frame(999, b"x", pair.now))
        self.assertEqual(pair.agent.stats.datagrams_unknown_channel, 1)


class FuzzRegressionTests(SynchronousTestCase):
    """
    Inputs found while fuzzing (C{fuzz/fuzz_frames.py}) that broke the
    core's contract that C{receive_data} never raises.
    """

    def test_deeply_nested_control_json_before_hello(self) -> None:
        """
        A CONTROL frame whose JSON nests deeper than Python's recursion
        limit, sent by a client instead of its hello (before any
        authorisation), closes the tunnel with C{BAD_CONTROL} and does not
        raise C{RecursionError} out of C{receive_data}.
        """
        contact = TunnelConnection(Role.CONTACT, 0.0, session_id="s")
        agent = TunnelConnection(Role.AGENT, 0.0, agent_id="a")
        preface = agent.data_to_send(0.0)
        data = preface + encode_frame(FrameType.CONTROL, 0, 0, b"[" * 60000)
        events = contact.receive_data(data, 0.0)
        self.assertEqual(contact.state, State.CLOSED)
        self.assertEqual(events[-1].code, ErrorCode.BAD_CONTROL)

    def test_deeply_nested_control_json_after_handshake(self) -> None:
        """
        The same frame on an open tunnel closes it with C{BAD_CONTROL}.
        """
        pair = CorePair().handshake()
        events = pair.contact.receive_data(encode_frame(FrameType.CONTROL, 0, 0, b'{"op":' + b"[" * 60000), pair.now)
        self.assertEqual(pair.contact.state, State.CLOSED)
        self.assertEqual(events[-1].code, ErrorCode.BAD_CONTROL)



class _Wire:
    """
    Two cores on a recorded wire: every frame that leaves either side is
    logged with the time and its type; timers run exactly at the deadlines
    the cores give.
    """

    def __init__(self, limits: TunnelLimits) -> None:
        self.pair = CorePair(limits=limits).handshake()
        self.now = self.pair.now
        self.log: list[tuple[float, str, int]] = []
        self.closed: list[Any] = []
        self.deliver = {"agent": True, "contact": True}
        self._decoders = {"agent": FrameDecoder(), "contact": FrameDecoder()}

    def _record(self, side: str, data: bytes) -> None:
        for ftype, _flags, _channel, _payload in self._decoders[side].feed(data):
            self.log.append((self.now, side, ftype))

    def pump(self) -> None:
        agent, contact = self.pair.agent, self.pair.contact
        for _ in range(50):
            a = agent.data_to_send(self.now)
            if a:
                self._record("agent", a)
                if self.deliver["agent"]:
                    self.closed += of_type(contact.receive_data(a, self.now), ev.TunnelClosed)
            c = contact.data_to_send(self.now)
            if c:
                self._record("contact", c)
                if self.deliver["contact"]:
                    self.closed += of_type(agent.receive_data(c, self.now), ev.TunnelClosed)
            if not a and not c:
                return
        raise AssertionError("cores did not settle")

    def run_until(self, target: float) -> None:
        agent, contact = self.pair.agent, self.pair.contact
        for _ in range(100000):
            deadlines = [d for d in (agent.next_deadline(), contact.next_deadline()) if d is not None]
            if not deadlines or min(deadlines) > target:
                break
            self.now = max(self.now, min(deadlines))
            self.closed += of_type(agent.handle_timer(self.now), ev.TunnelClosed)
            self.closed += of_type(contact.handle_timer(self.now), ev.TunnelClosed)
            self.pump()
        else:
            raise AssertionError("timers made no progress")
        self.now = target
        self.pump()

    def send(self, side: str) -> None:
        core = self.pair.agent if side == "agent" else self.pair.contact
        core.send_sip(1, b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        self.pump()

    def frames(self, side: str, after: float, ftype: int | None = None) -> list[float]:
        return [t for t, s, f in self.log if s == side and t >= after and (ftype is None or f == ftype)]


class KeepaliveTimingTests(SynchronousTestCase):
    """
    A ping leaves at most the keepalive interval after the last frame, at
    every phase of the old check grid, and the dead-peer timeout counts
    from the last frame received.
    """

    limits = TunnelLimits(keepalive_interval=10, keepalive_timeout=30)

    def test_ping_within_interval_at_every_phase(self) -> None:
        """
        Whichever side sent the last frame, and whenever it did relative to
        the handshake (t0 + k * interval / 10 for k in 0..10 after some idle
        intervals), each side's next frame (a PING if nothing else) leaves
        at most one interval later, and the wire is never silent longer.
        """
        interval = self.limits.keepalive_interval
        for sender in ("agent", "contact"):
            for k in range(11):
                wire = _Wire(self.limits)
                t0 = wire.now
                wire.run_until(t0 + 3 * interval + k * interval / 10 - 0.001)
                wire.run_until(t0 + 3 * interval + k * interval / 10)
                last = wire.now
                wire.send(sender)
                wire.run_until(last + 3 * interval)
                for side in ("agent", "contact"):
                    pings = wire.frames(side, last, FrameType.PING)
                    self.assertTrue(pings, (sender, k, side))
                    self.assertLessEqual(pings[0] - last, interval, (sender, k, side))
                times = sorted(t for t, _s, _f in wire.log if t >= last)
                gaps = [b - a for a, b in zip(times, times[1:])]
                self.assertLessEqual(max(gaps), interval, (sender, k))
                self.assertEqual(wire.closed, [])

    def test_dead_peer_timeout_from_last_frame_received(self) -> None:
        """
        When the peer falls silent (its frames no longer arrive) at any phase,
        the tunnel is declared dead exactly the timeout after the last frame
        that arrived, not on a later check.
        """
        interval = self.limits.keepalive_interval
        for k in range(11):
            wire = _Wire(self.limits)
            t0 = wire.now
            wire.run_until(t0 + 2 * interval + k * interval / 10)
            wire.send("contact")
            last = wire.now
            wire.deliver["contact"] = False
            wire.run_until(last + 4 * interval)
            self.assertIs(wire.pair.agent.state, State.CLOSED)
            self.assertEqual(wire.pair.agent.close_code, ErrorCode.KEEPALIVE_TIMEOUT)
            closed_at = [t for t, s, f in wire.log if s == "agent" and f == FrameType.ERROR]
            self.assertEqual(closed_at[0], last + self.limits.keepalive_timeout, k)

    def test_one_way_traffic_keeps_the_tunnel(self) -> None:
        """
        A side that only receives (one-way media, no answers) is not declared
        dead by the side that only sends: the sender pings because nothing
        arrives, and the PONG answers.
        """
        interval = self.limits.keepalive_interval
        wire = _Wire(self.limits)
        start = wire.now
        for step in range(200):
            wire.run_until(start + step * interval / 4)
            wire.send("agent")
        self.assertEqual(wire.closed, [])
        self.assertIs(wire.pair.agent.state, State.OPEN)
        pings = wire.frames("agent", start, FrameType.PING)
        self.assertGreater(len(pings), 30)
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        self.assertGreaterEqual(min(gaps), interval)

    @settings(max_examples=60)
    @given(
        st.lists(
            st.tuples(st.floats(min_value=0, max_value=25, allow_nan=False), st.sampled_from(["agent", "contact"])),
            max_size=25,
        )
    )
    def test_arbitrary_frame_timings(self, sends: list[tuple[float, str]]) -> None:
        """
        For any timing of application frames in either direction: neither
        direction of the wire is silent for longer than the keepalive
        interval, a side sends at most one PING per interval, and the tunnel
        stays open.
        """
        interval = self.limits.keepalive_interval
        wire = _Wire(self.limits)
        start = wire.now
        for delay, side in sends:
            wire.run_until(wire.now + delay)
            wire.send(side)
        wire.run_until(wire.now + 3 * interval)
        self.assertEqual(wire.closed, [])
        for side in ("agent", "contact"):
            times = [start] + wire.frames(side, start)
            gaps = [b - a for a, b in zip(times, times[1:])]
            self.assertLessEqual(max(gaps), interval + 1e-9, side)
            pings = wire.frames(side, start, FrameType.PING)
            ping_gaps = [b - a for a, b in zip(pings, pings[1:])]
            if ping_gaps:
                self.assertGreaterEqual(min(ping_gaps), interval - 1e-9, side)


def _loads_outcome(load: Any, payload: bytes) -> tuple[str, Any]:
    try:
        return ("value", load(payload))
    except Exception as e:
        return ("error", type(e))


class ControlJsonTests(SynchronousTestCase):
    """
    Control frames are read as C{json.loads} reads bytes, also where the
    usual frame is decoded as UTF-8 without its guess of the encoding.
    """

    CASES = [
        b'{"op":"open","id":3}',
        b"{",
        b"{}",
        b'{\x00"\x00}\x00',
        "{\"op\":\"h\u00e9\"}".encode("utf-16"),
        "{\"op\":\"x\"}".encode("utf-16-le"),
        "{\"op\":\"x\"}".encode("utf-32"),
        b'\xef\xbb\xbf{"op":"bom"}',
        b'{"op":"\xff"}',
        b'{"op":"\\ud800"}',
        b'{"op":"\xed\xa0\x80"}',
        b"[1]",
        b"",
    ]

    def test_as_json_loads(self) -> None:
        """
        The same value or the same kind of error as C{json.loads}.
        """
        from spwm.tunnel.connection import _json_loads

        for payload in self.CASES:
            self.assertEqual(_loads_outcome(_json_loads, payload), _loads_outcome(json.loads, payload), payload)

    @given(st.binary(max_size=40), st.sampled_from([b"", b"{", b'{"op":"', b"\xef\xbb\xbf{"]))
    @settings(max_examples=300)
    def test_any_bytes(self, tail: bytes, head: bytes) -> None:
        """
        Any bytes, most of them starting as a frame does.
        """
        from spwm.tunnel.connection import _json_loads

        payload = head + tail
        self.assertEqual(_loads_outcome(_json_loads, payload), _loads_outcome(json.loads, payload))
