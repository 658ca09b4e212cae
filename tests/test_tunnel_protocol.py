"""
Tests for L{spwm.tunnel.protocol}: the Twisted adapter over in-memory
transports and a fake clock, with and without TLS.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import ssl
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from spwm.limits import TunnelLimits
from spwm.testing.certs import TestCA
from spwm.tunnel.frames import ALPN, ChannelKind, ErrorCode
from spwm.tunnel.api import Router
from spwm.tunnel.protocol import AgentTunnelFactory, ContactTunnelFactory, set_tcp_keepalive
from spwm.tunnel.service import PLAINTEXT_ANSWER, ReportingClientTLS, describe_failure, server_tls_options


class RecordingApp:
    """
    A tunnel application that records every call.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.tunnel: Any = None

    def tunnel_established(self, tunnel: Any) -> None:
        self.tunnel = tunnel
        self.calls.append(("established",))

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        self.calls.append(("lost", reason))

    def sip_received(self, tunnel: Any, flow_id: int, data: bytes) -> None:
        self.calls.append(("sip", flow_id, data))

    def channel_requested(self, tunnel: Any, channel_id: int, kind: ChannelKind, meta: dict) -> None:
        self.calls.append(("channel", channel_id, kind, meta))

    def datagram_received(self, tunnel: Any, channel_id: int, data: bytes, component: int) -> None:
        self.calls.append(("datagram", channel_id, data, component))

    def stream_data_received(self, tunnel: Any, channel_id: int, data: bytes) -> None:
        self.calls.append(("stream", channel_id, data))

    def stream_ended(self, tunnel: Any, channel_id: int) -> None:
        self.calls.append(("end", channel_id))

    def channel_closed(self, tunnel: Any, channel_id: int, code: int, reason: str) -> None:
        self.calls.append(("closed", channel_id, code, reason))


class _Producer:
    """
    A stream producer that counts what the tunnel tells it.
    """

    def __init__(self, name: str, order: list[str] | None = None) -> None:
        self.name = name
        self.order = order
        self.paused = 0
        self.resumed = 0
        self.on_resume: Any = None

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1
        if self.order is not None:
            self.order.append(self.name)
        if self.on_resume is not None:
            self.on_resume()

    def stopProducing(self) -> None:
        pass


def connect_pair(
    clock: Clock,
    limits: TunnelLimits | None = None,
    tls: tuple[Any, Any] | None = None,
    agent_hello: dict[str, Any] | None = None,
):
    """
    Connect an agent and a contact point in memory.

    @param agent_hello: extra fields of the agent's hello.
    """
    agent_app, contact_app = RecordingApp(), RecordingApp()
    contact_factory = ContactTunnelFactory(contact_app, clock, limits)
    agent_factory = AgentTunnelFactory(agent_app, clock, "agent-x", limits, hello=agent_hello)
    server_f, client_f = contact_factory, agent_factory
    if tls is not None:
        server_f = TLSMemoryBIOFactory(tls[0], False, contact_factory, clock=clock)
        client_f = TLSMemoryBIOFactory(tls[1], True, agent_factory, clock=clock)
    server = server_f.buildProtocol(None)
    client = client_f.buildProtocol(None)
    server_t = iosim.FakeTransport(server, isServer=True)
    client_t = iosim.FakeTransport(client, isServer=False)
    pump = iosim.connect(server, server_t, client, client_t, greet=False, clock=clock)
    return agent_app, contact_app, contact_factory, pump


class AdapterTests(SynchronousTestCase):
    """
    The adapter over an in-memory connection.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.agent_app, self.contact_app, self.factory, self.pump = connect_pair(self.clock)
        self.pump.flush()

    def test_established(self) -> None:
        """
        Both applications hear of the tunnel with matching identities.
        """
        self.assertEqual(self.agent_app.calls, [("established",)])
        self.assertEqual(self.contact_app.calls, [("established",)])
        self.assertEqual(self.agent_app.tunnel.session_id, self.contact_app.tunnel.session_id)
        self.assertEqual(self.contact_app.tunnel.agent_id, "agent-x")
        self.assertEqual(len(self.factory.tunnels), 1)
        self.successResultOf(self.agent_app.tunnel.when_established())

    def test_traffic(self) -> None:
        """
        SIP, channels and datagrams go through the adapters.
        """
        agent = self.agent_app.tunnel
        agent.send_sip(3, b"OPTIONS")
        cid = agent.open_channel(ChannelKind.DATAGRAM, {"use": "t"})
        agent.send_datagram(cid, b"d", 1)
        self.pump.flush()
        self.assertEqual(
            self.contact_app.calls[1:],
            [("sip", 3, b"OPTIONS"), ("channel", cid, ChannelKind.DATAGRAM, {"use": "t"}), ("datagram", cid, b"d", 1)],
        )

    def test_channel_handlers(self) -> None:
        """
        A channel opened with a handler gives its events to the handler,
        not the application; a channel the application accepted with a
        handler too; the handler is dropped when the channel closes, and
        with the connection.
        """
        agent, contact = self.agent_app.tunnel, self.contact_app.tunnel
        mine, theirs = RecordingApp(), RecordingApp()
        self.contact_app.channel_requested = (  # type: ignore[method-assign]
            lambda tunnel, channel_id, kind, meta: theirs
        )
        cid = agent.open_channel(ChannelKind.STREAM, {"use": "t"}, mine)
        agent.send_stream_data(cid, b"up")
        self.pump.flush()
        contact.send_stream_data(cid, b"back")
        contact.end_stream(cid)
        self.pump.flush()
        self.assertEqual(theirs.calls, [("stream", cid, b"up")])
        self.assertEqual(mine.calls, [("stream", cid, b"back"), ("end", cid)])
        contact.close_channel(cid, 0, "done")
        self.pump.flush()
        self.assertEqual(mine.calls[-1], ("closed", cid, 0, "done"))
        self.assertEqual((agent._handlers, contact._handlers), ({}, {}))
        other = agent.open_channel(ChannelKind.DATAGRAM, {"use": "t"}, mine)
        self.pump.flush()
        contact.send_datagram(other, b"down", 1)
        self.pump.flush()
        self.assertEqual(mine.calls[-1], ("datagram", other, b"down", 1))
        self.assertEqual(set(agent._handlers), {other})
        self.pump.clientIO.loseConnection()
        self.pump.flush()
        self.assertEqual((agent._handlers, contact._handlers), ({}, {}))
        self.assertEqual([c for c in self.agent_app.calls if c[0] not in ("established", "lost")], [])

    def test_keepalive_death(self) -> None:
        """
        When the connection hangs silently, both ends declare the peer dead
        after the keepalive timeout and tell their applications.
        """
        # Stop moving bytes: the "network" hangs.
        for _ in range(50):
            self.clock.advance(1)
        self.assertTrue(self.pump.clientIO.disconnecting)
        self.assertTrue(self.pump.serverIO.disconnecting)
        self.pump.flush()
        self.assertIn(("lost", "peer silent for 45 s"), self.agent_app.calls)
        self.assertIn(("lost", "peer silent for 45 s"), self.contact_app.calls)

    def test_keepalive_keeps_idle_tunnel(self) -> None:
        """
        An idle tunnel whose bytes flow stays up thanks to pings.
        """
        for _ in range(200):
            self.clock.advance(1)
            self.pump.flush()
        self.assertEqual(self.agent_app.calls, [("established",)])
        self.assertEqual(len(self.factory.tunnels), 1)

    def test_frames_move_no_timer(self) -> None:
        """
        Frames do not reschedule the keepalive timer (it is computed from
        last-activity times): 400 SIP messages over four intervals cost a
        handful of timer calls, and the first ping still leaves at most one
        interval after the last frame.
        """
        calls = []
        real_call_later = self.clock.callLater

        def counting_call_later(delay: float, f: Any, *a: Any, **kw: Any) -> Any:
            calls.append(delay)
            return real_call_later(delay, f, *a, **kw)

        self.clock.callLater = counting_call_later  # type: ignore[method-assign]
        agent = self.agent_app.tunnel
        contact = self.contact_app.tunnel
        for n in range(400):
            self.clock.advance(0.15)
            agent.send_sip(1, b"OPTIONS")
            self.pump.flush()
            contact.send_sip(1, b"200")
            self.pump.flush()
        # One wake-up per interval or so on each side, not one per frame.
        self.assertLess(len(calls), 20)
        pings = agent.connection.stats.pings_sent + contact.connection.stats.pings_sent
        self.assertEqual(pings, 0)
        interval = TunnelLimits().keepalive_interval
        self.clock.advance(interval - 0.01)
        self.pump.flush()
        self.assertEqual(agent.connection.stats.pings_sent + contact.connection.stats.pings_sent, 0)
        self.clock.advance(0.02)
        self.pump.flush()
        self.assertEqual(agent.connection.stats.pings_sent, 1)
        self.assertEqual(contact.connection.stats.pings_sent, 1)

    def test_rtt_from_timed_pings(self) -> None:
        """
        Before any timed ping an in-memory connection knows no round trip
        (no socket); each PONG's sample moves the smoothed RTT by 1/8
        towards it.
        """
        agent, contact = self.agent_app.tunnel, self.contact_app.tunnel
        self.assertIsNone(agent.rtt)
        agent.ping()
        self.clock.advance(0.040)
        self.pump.flush()
        self.assertAlmostEqual(agent.rtt, 0.040)
        agent.ping()
        self.clock.advance(0.120)
        self.pump.flush()
        self.assertAlmostEqual(agent.rtt, 0.875 * 0.040 + 0.125 * 0.120)
        self.assertIsNone(contact.rtt)

    def test_late_dropped_per_channel(self) -> None:
        """
        C{late_dropped} is the core's per-channel count of media-queue
        drops: C{None} for a channel that is not open.
        """
        agent = self.agent_app.tunnel
        channel = agent.open_channel(ChannelKind.DATAGRAM, {})
        self.pump.flush()
        self.assertEqual(agent.late_dropped(channel), 0)
        agent.connection._channels[channel].media_dropped = 3
        self.assertEqual(agent.late_dropped(channel), 3)
        self.assertIsNone(agent.late_dropped(channel + 100))

    def test_ping_within_interval_at_every_phase(self) -> None:
        """
        Over real adapters and a fake clock: whatever the phase of the last
        frame relative to the handshake (k tenths of an interval), each side
        sends its next frame (a ping) at most one interval after it.  (The
        fixed grid sent the first ping up to two intervals later.)
        """
        interval = TunnelLimits().keepalive_interval
        step = interval / 100
        for k in range(11):
            clock = Clock()
            agent_app, contact_app, factory, pump = connect_pair(clock)
            pump.flush()
            for _ in range(int((3 * interval + k * interval / 10) / step)):
                clock.advance(step)
                pump.flush()
            agent, contact = agent_app.tunnel, contact_app.tunnel
            agent.send_sip(1, b"OPTIONS")
            pump.flush()
            last = clock.seconds()
            before = (agent.connection.stats.pings_sent, contact.connection.stats.pings_sent)
            first_ping: dict[str, float] = {}
            for _ in range(int(2 * interval / step)):
                clock.advance(step)
                pump.flush()
                for name, tunnel, n in (("agent", agent, before[0]), ("contact", contact, before[1])):
                    if name not in first_ping and tunnel.connection.stats.pings_sent > n:
                        first_ping[name] = clock.seconds()
            self.assertEqual(set(first_ping), {"agent", "contact"}, k)
            for name, at in first_ping.items():
                self.assertLessEqual(at - last, interval + step / 2, (k, name))
            self.assertEqual(contact_app.calls[-1], ("sip", 1, b"OPTIONS"))

    def test_backpressure_drops_stale_media(self) -> None:
        """
        While the transport has paused us, media waits; when it resumes,
        media older than the deadline is dropped and SIP still goes out.
        """
        agent = self.agent_app.tunnel
        cid = agent.open_channel(ChannelKind.DATAGRAM, {"use": "t"})
        self.pump.flush()
        agent.pauseProducing()
        agent.send_datagram(cid, b"stale")
        self.clock.advance(0.1)
        agent.send_sip(1, b"SIP")
        agent.send_datagram(cid, b"fresh")
        self.pump.flush()
        self.assertNotIn(("sip", 1, b"SIP"), self.contact_app.calls)
        agent.resumeProducing()
        self.pump.flush()
        got = [c for c in self.contact_app.calls if c[0] in ("sip", "datagram")]
        self.assertEqual(got, [("sip", 1, b"SIP"), ("datagram", cid, b"fresh", 0)])
        self.assertEqual(agent.connection.stats.media_dropped_stale, 1)

    def test_paused_signalling_overflow_closes(self) -> None:
        """
        A peer that stops reading while SIP piles up past the limit gets the
        tunnel closed, with a logged reason.
        """
        clock = Clock()
        agent_app, contact_app, factory, pump = connect_pair(clock, TunnelLimits(max_priority_queue=10_000))
        pump.flush()
        agent = agent_app.tunnel
        agent.pauseProducing()
        for _ in range(200):
            agent.send_sip(1, b"x" * 100)
        self.assertFalse(agent.is_open)
        self.assertTrue(pump.clientIO.disconnecting)
        self.assertEqual(agent.close_info.code, ErrorCode.QUEUE_OVERFLOW)

    def test_stream_producers_paused_and_resumed(self) -> None:
        """
        Stream producers registered with the tunnel are all paused when the
        stream queue goes over its limit, stay paused while it is above
        half of it, and are resumed (each once) when the tunnel has written
        it down; no timer is involved.
        """
        clock = Clock()
        agent_app, contact_app, factory, pump = connect_pair(clock, TunnelLimits(max_stream_queue=4000))
        pump.flush()
        agent = agent_app.tunnel
        cid = agent.open_channel(ChannelKind.STREAM, {"use": "t"})
        pump.flush()
        first, second = _Producer("first"), _Producer("second")
        agent.register_stream_producer(first)
        agent.register_stream_producer(second)
        agent.pauseProducing()
        self.assertTrue(agent.send_stream_data(cid, b"a" * 3000))
        self.assertEqual((first.paused, second.paused), (0, 0))
        self.assertFalse(agent.send_stream_data(cid, b"b" * 2000))
        self.assertEqual((first.paused, second.paused), (1, 1))
        agent.send_sip(1, b"SIP")
        self.assertEqual((first.resumed, second.resumed), (0, 0))
        delayed = clock.getDelayedCalls()
        agent.resumeProducing()
        self.assertEqual((first.resumed, second.resumed), (1, 1))
        self.assertEqual(clock.getDelayedCalls(), delayed)
        pump.flush()
        self.assertEqual(
            b"".join(c[2] for c in contact_app.calls if c[0] == "stream"), b"a" * 3000 + b"b" * 2000
        )

    def test_stream_producers_resumed_round_robin(self) -> None:
        """
        The producer resumed first changes from one drain to the next; one
        that fills the queue again stops the others from being resumed.
        """
        clock = Clock()
        agent_app, contact_app, factory, pump = connect_pair(clock, TunnelLimits(max_stream_queue=1000))
        pump.flush()
        agent = agent_app.tunnel
        cid = agent.open_channel(ChannelKind.STREAM, {"use": "t"})
        pump.flush()
        order: list[str] = []
        producers = [_Producer(name, order) for name in ("a", "b", "c")]
        for producer in producers:
            agent.register_stream_producer(producer)
        firsts = []
        for _ in range(3):
            agent.pauseProducing()
            agent.send_stream_data(cid, b"x" * 2000)
            del order[:]
            agent.resumeProducing()
            firsts.append(order[0])
            self.assertEqual(sorted(order), ["a", "b", "c"])
        self.assertEqual(len(set(firsts)), 3)
        # A producer that fills the queue again as soon as it is resumed
        # (faster than the transport takes it): the rest stay paused.
        agent.pauseProducing()
        agent.send_stream_data(cid, b"x" * 2000)
        del order[:]

        def refill() -> None:
            agent.pauseProducing()
            agent.send_stream_data(cid, b"y" * 2000)

        for producer in producers:
            producer.on_resume = refill
        agent.resumeProducing()
        self.assertEqual(len(order), 1)
        self.assertEqual([p.paused for p in producers], [5, 5, 5])
        agent.unregister_stream_producer(producers[1])
        self.assertNotIn(producers[1], agent._stream_producers)

    def test_lost_tunnel_resumes_its_producers(self) -> None:
        """
        A tunnel lost with its stream queue full resumes the producers it
        paused (their next write finds the channel gone).
        """
        agent = self.agent_app.tunnel
        cid = agent.open_channel(ChannelKind.STREAM, {"use": "t"})
        self.pump.flush()
        producer = _Producer("p")
        agent.register_stream_producer(producer)
        agent.pauseProducing()
        agent.send_stream_data(cid, b"x" * (TunnelLimits().max_stream_queue + 1))
        self.assertEqual(producer.paused, 1)
        agent.transport.loseConnection()
        self.pump.flush()
        self.assertEqual(producer.resumed, 1)

    def test_when_closed_and_going_away(self) -> None:
        """
        C{when_going_away} fires when the peer sends go-away and
        C{when_closed} when the connection is lost, with the protocol;
        asked afterwards they fire at once.
        """
        agent = self.agent_app.tunnel
        went, closed = [], []
        agent.when_going_away().addCallback(went.append)
        agent.when_closed().addCallback(closed.append)
        self.factory.go_away_all("bye", 2)
        self.pump.flush()
        self.assertEqual((went, closed), ([agent], []))
        agent.close(0, "moving")
        self.pump.flush()
        self.assertEqual(closed, [agent])
        self.assertIsNotNone(agent.lost_reason)
        self.assertIs(self.successResultOf(agent.when_closed()), agent)
        self.assertIs(self.successResultOf(agent.when_going_away()), agent)

    def test_close_for_good(self) -> None:
        """
        An agent that said C{"final-stop"} and stops sends a final go-away
        before its close: the contact point's end knows the agent stopped.
        An older agent's close (no C{"final-stop"}) is a plain close.
        """
        for hello, stopped in (({"final-stop": 1}, True), (None, False)):
            clock = Clock()
            agent_app, contact_app, _, pump = connect_pair(clock, agent_hello=hello)
            pump.flush()
            contact = contact_app.tunnel
            agent_app.tunnel.close_for_good("agent stopping")
            pump.flush()
            self.assertEqual(contact.agent_stopped, stopped)
            self.assertEqual((contact.go_away_info is not None), stopped)
            self.assertEqual((contact.close_info.code, contact.close_info.reason), (0, "agent stopping"))

    def test_timer_error_closes_with_a_reason(self) -> None:
        """
        An unexpected error in the timer's work closes the tunnel, and the
        close is told (close_info, log line) like any other.
        """
        agent = self.agent_app.tunnel

        class Broken:
            # the connection's core, but for its timer's work (a compiled
            # core's methods cannot be replaced)
            def __init__(self, connection: Any) -> None:
                self.connection = connection

            def __getattr__(self, name: str) -> Any:
                return getattr(self.connection, name)

            def handle_timer(self, now: float) -> list[Any]:
                raise RuntimeError("bug")

        agent.connection = Broken(agent.connection)
        with capturedLogs() as events:
            self.clock.advance(TunnelLimits().keepalive_interval + 1)
            self.pump.flush()
        self.assertEqual(agent.close_info.code, ErrorCode.INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any("closed {side}" in e.get("log_format", "") for e in events))

    def test_go_away_all(self) -> None:
        """
        The factory's go-away reaches every agent.
        """
        seen = []
        self.agent_app.tunnel.when_going_away().addCallback(seen.append)
        self.factory.go_away_all("bye", 2)
        self.pump.flush()
        self.assertEqual(seen, [self.agent_app.tunnel])
        self.assertEqual(self.agent_app.tunnel.go_away_info.drain, 2)

    def test_garbage_closes_only_that_tunnel(self) -> None:
        """
        A peer sending garbage gets an ERROR frame and a closed connection;
        nothing is raised.
        """
        app = RecordingApp()
        factory = ContactTunnelFactory(app, self.clock)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"\x16\x03\x01 this is TLS to a plaintext port")
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"bad magic", transport.value())
        self.assertEqual(proto.close_info.code, ErrorCode.PROTOCOL_ERROR)
        # The good tunnel is untouched.
        self.assertEqual(len(self.factory.tunnels), 1)

    def test_handshake_timeout(self) -> None:
        """
        A connection that never says anything is closed after the handshake timeout.
        """
        factory = ContactTunnelFactory(RecordingApp(), self.clock, TunnelLimits(handshake_timeout=3))
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.clock.advance(2.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(proto.close_info.code, ErrorCode.HANDSHAKE_TIMEOUT)
        proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [c for c in self.clock.getDelayedCalls() if c.active()])
        self.failureResultOf(proto.when_established())

    def test_agent_handshake_timeout_not_warned(self) -> None:
        """
        The agent's own attempt that times out in the handshake is no line
        of the protocol's: the service or the QUIC prober that made
        it logs the failure with its reason (one line); the contact point's
        stays a warning.
        """
        lines = {}
        for name, factory in [
            ("agent", AgentTunnelFactory(RecordingApp(), self.clock, "a1", TunnelLimits(handshake_timeout=3))),
            ("contact", ContactTunnelFactory(RecordingApp(), self.clock, TunnelLimits(handshake_timeout=3))),
        ]:
            proto = factory.buildProtocol(None)
            proto.makeConnection(StringTransport())
            with capturedLogs() as events:
                self.clock.advance(3.1)
            self.assertEqual(proto.close_info.code, ErrorCode.HANDSHAKE_TIMEOUT)
            lines[name] = [e["log_level"].name for e in events if "no handshake" in str(e.get("reason"))]
        self.assertEqual(lines, {"agent": [], "contact": ["warn"]})

    def test_app_error_closes_tunnel(self) -> None:
        """
        An exception in the application is logged and closes that tunnel.
        """
        def boom(*a: Any) -> None:
            raise ZeroDivisionError()

        self.contact_app.sip_received = boom
        self.agent_app.tunnel.send_sip(1, b"x")
        self.pump.flush()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.factory.tunnels, set())


class MuxTests(SynchronousTestCase):
    """
    L{Router} routes channels by use.
    """

    def test_routes_by_use_and_refuses_unknown(self) -> None:
        """
        A channel goes to the handler the acceptor of its use returns; an
        unknown use is refused.
        """
        clock = Clock()
        part = RecordingApp()
        part.accept = lambda tunnel, channel_id, kind, meta: part  # type: ignore[attr-defined]
        mux = Router(part, {"media": part}, None)
        agent_app = RecordingApp()
        factory = ContactTunnelFactory(mux, clock)
        agent_factory = AgentTunnelFactory(agent_app, clock, "a")
        server, client = factory.buildProtocol(None), agent_factory.buildProtocol(None)
        pump = iosim.connect(server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False), greet=False, clock=clock)
        pump.flush()
        tunnel = agent_app.tunnel
        good = tunnel.open_channel(ChannelKind.DATAGRAM, {"use": "media"})
        bad = tunnel.open_channel(ChannelKind.DATAGRAM, {"use": "other"})
        tunnel.send_datagram(good, b"m")
        tunnel.send_datagram(bad, b"late")
        pump.flush()
        self.assertIn(("datagram", good, b"m", 0), part.calls)
        self.assertIn(("closed", bad, ErrorCode.REFUSED, "unknown channel use 'other'"), agent_app.calls)
        self.assertNotIn(("datagram", bad, b"late", 0), part.calls)


class TLSTests(SynchronousTestCase):
    """
    TLS in memory with certificates made at test time.
    """

    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())

    def server_options(self, names: list[str], expired: bool = False) -> Any:
        files = self.ca.issue(names, "server", expired=expired)
        return server_tls_options(files.cert, files.key)

    def client_options(self, name: str) -> ReportingClientTLS:
        with open(self.ca.ca_file, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        return ReportingClientTLS(ssl.optionsForClientTLS(name, trustRoot=trust, acceptableProtocols=[ALPN]), name)

    def test_good_certificate(self) -> None:
        """
        A certificate for the right name from a trusted CA gives a tunnel,
        with ALPN spwm/1 negotiated.
        """
        clock = Clock()
        agent_app, contact_app, factory, pump = connect_pair(
            clock, tls=(self.server_options(["contact.example.test"]), self.client_options("contact.example.test"))
        )
        pump.flush()
        self.assertEqual(agent_app.calls, [("established",)])
        agent_app.tunnel.send_sip(1, b"hi")
        pump.flush()
        self.assertIn(("sip", 1, b"hi"), contact_app.calls)
        self.assertEqual(pump.clientIO.protocol.negotiatedProtocol, ALPN)

    def test_keying_material(self) -> None:
        """
        Both ends export the same keying material from the TLS session
        (through the transport's OpenSSL handle); a plaintext tunnel has
        none.
        """
        clock = Clock()
        agent_app, contact_app, factory, pump = connect_pair(
            clock, tls=(self.server_options(["contact.example.test"]), self.client_options("contact.example.test"))
        )
        pump.flush()
        agent_key = agent_app.tunnel.export_keying_material(b"EXPORTER-test", 32)
        self.assertEqual(len(agent_key), 32)
        self.assertEqual(contact_app.tunnel.export_keying_material(b"EXPORTER-test", 32), agent_key)
        self.assertNotEqual(agent_app.tunnel.export_keying_material(b"EXPORTER-other", 32), agent_key)
        plain_agent, _, _, plain_pump = connect_pair(clock)
        plain_pump.flush()
        self.assertIsNone(plain_agent.tunnel.export_keying_material(b"EXPORTER-test", 32))

    def test_name_mismatch(self) -> None:
        """
        A certificate for another name stops the connection.
        """
        clock = Clock()
        client = self.client_options("other.example.test")
        agent_app, contact_app, factory, pump = connect_pair(
            clock, tls=(self.server_options(["contact.example.test"]), client)
        )
        pump.flush()
        self.assertEqual(agent_app.calls, [])
        self.assertEqual(contact_app.calls, [])
        self.assertEqual(
            client.last_error, "certificate for contact.example.test does not match server name other.example.test"
        )

    def test_expired(self) -> None:
        """
        An expired certificate stops the connection, and the reason says so.
        """
        clock = Clock()
        client = self.client_options("contact.example.test")
        agent_app, contact_app, factory, pump = connect_pair(
            clock, tls=(self.server_options(["contact.example.test"], expired=True), client)
        )
        pump.flush()
        self.assertEqual(agent_app.calls, [])
        self.assertRegex(
            client.last_error, r"^certificate for contact\.example\.test expired on \d{4}-\d\d-\d\d \d\d:\d\d UTC$"
        )
        with open(self.ca.directory + "/server.pem", "rb") as f:
            not_after = ssl.Certificate.loadPEM(f.read()).original.get_notAfter().decode()
        self.assertIn(f"{not_after[:4]}-{not_after[4:6]}-{not_after[6:8]}", client.last_error)

    def test_untrusted(self) -> None:
        """
        A certificate from a CA the agent does not trust stops the connection.
        """
        other = TestCA(self.mktemp(), "Another CA")
        files = other.issue(["contact.example.test"], "server")
        clock = Clock()
        client = self.client_options("contact.example.test")
        agent_app, contact_app, factory, pump = connect_pair(
            clock, tls=(server_tls_options(files.cert, files.key), client)
        )
        pump.flush()
        self.assertEqual(agent_app.calls, [])
        self.assertEqual(
            client.last_error,
            "untrusted issuer (Another CA) of the certificate for contact.example.test:"
            " not in --ca or the system's trust store",
        )

    def test_plaintext_contact_point(self) -> None:
        """
        A contact point started with --plaintext answers a TLS agent with
        SPWM bytes: the reason says so, without an exception's repr.
        """
        clock = Clock()
        contact_factory = ContactTunnelFactory(RecordingApp(), clock)
        agent_factory = AgentTunnelFactory(RecordingApp(), clock, "agent-x")
        client_f = TLSMemoryBIOFactory(self.client_options("contact.example.test"), True, agent_factory, clock=clock)
        server = contact_factory.buildProtocol(None)
        client = client_f.buildProtocol(None)
        lost: list[Any] = []
        client.wrappedProtocol.when_closed().addCallback(lambda protocol: lost.append(protocol.lost_reason))
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False),
            greet=False, clock=clock,
        )
        pump.flush()
        clock.advance(3)
        pump.flush()
        [reason] = lost
        self.assertEqual(describe_failure(reason), PLAINTEXT_ANSWER)
        self.assertEqual(PLAINTEXT_ANSWER, "the contact point answered in plaintext (is it started with --plaintext?)")


class ConnectionLimitTests(SynchronousTestCase):
    """
    The contact point bounds tunnels in total and per source address.
    """

    def test_per_host_and_total(self) -> None:
        """
        Past the per-address limit, connections from that address are refused
        while other addresses still get in; past the total, everyone is
        refused; a closed tunnel frees its place.
        """
        from twisted.internet.address import IPv4Address

        clock = Clock()
        factory = ContactTunnelFactory(RecordingApp(), clock, max_tunnels=3, max_per_host=2)

        def connect(host: str) -> Any:
            proto = factory.buildProtocol(IPv4Address("TCP", host, 1234))
            if proto is not None:
                proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", host, 1234)))
            return proto

        a1, a2 = connect("198.51.100.1"), connect("198.51.100.1")
        self.assertIsNotNone(a1)
        self.assertIsNotNone(a2)
        with capturedLogs() as events:
            self.assertIsNone(connect("198.51.100.1"))
            self.assertIsNone(connect("198.51.100.1"))
        self.assertEqual(len([e for e in events if "refused tunnel" in e["log_format"]]), 1)
        b1 = connect("198.51.100.2")
        self.assertIsNotNone(b1)
        self.assertIsNone(connect("198.51.100.3"))
        self.assertEqual(factory.refused, 3)
        a1.connectionLost(None)
        self.assertIsNotNone(connect("198.51.100.1"))
        self.assertEqual(factory.tunnels.per_host, {"198.51.100.1": 2, "198.51.100.2": 1})

    def test_slow_peer_does_not_hold_a_place(self) -> None:
        """
        A connection that never completes the handshake (slow loris) is
        dropped after the handshake timeout and frees its place.
        """
        from twisted.internet.address import IPv4Address

        clock = Clock()
        factory = ContactTunnelFactory(RecordingApp(), clock, TunnelLimits(handshake_timeout=5), max_per_host=1)
        addr = IPv4Address("TCP", "198.51.100.9", 1)
        proto = factory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        proto.dataReceived(b"SPW")  # a trickle, never the whole preface
        self.assertIsNone(factory.buildProtocol(addr))
        clock.advance(5)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertIsNotNone(factory.buildProtocol(addr))


class ClosingTests(SynchronousTestCase):
    """
    How a tunnel's transport is closed.
    """

    class Transport(StringTransport):
        aborted = False

        def abortConnection(self) -> None:
            self.aborted = True
            super().loseConnection()

    def connect(self, limits: TunnelLimits | None = None) -> tuple[Any, Any, Clock]:
        clock = Clock()
        proto = ContactTunnelFactory(RecordingApp(), clock, limits).buildProtocol(None)
        transport = self.Transport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def test_protocol_error_flushes_then_aborts(self) -> None:
        """
        After a protocol error the ERROR frame is written and the connection
        closed gracefully; if it is still there after a grace period (a TLS
        handshake that never finished would hold it), it is aborted.
        """
        proto, transport, clock = self.connect()
        proto.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertIn(b"bad magic", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        clock.advance(2.0)
        self.assertTrue(transport.aborted)

    def test_timeout_aborts_at_once(self) -> None:
        """
        A handshake timeout aborts at once: the peer is not there to read.
        """
        proto, transport, clock = self.connect(TunnelLimits(handshake_timeout=1))
        clock.advance(1)
        self.assertTrue(transport.aborted)
        self.assertEqual(proto.close_info.code, ErrorCode.HANDSHAKE_TIMEOUT)

    def test_graceful_close_leaves_no_timer(self) -> None:
        """
        When the connection goes away in time, the abort timer goes too.
        """
        proto, transport, clock = self.connect()
        proto.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        proto.connectionLost(None)
        self.assertEqual([c for c in clock.getDelayedCalls() if c.active()], [])


class _KernelSocket:
    """
    A TCP socket's options as Linux takes them: an C{int} value (Python
    raises C{TypeError} for a larger one), C{TCP_KEEPIDLE} and
    C{TCP_KEEPINTVL} at most 32767 s (C{EINVAL} above).
    """

    def __init__(self) -> None:
        self.options: dict[tuple[int, int], int] = {}

    def getsockopt(self, level: int, name: int) -> int:
        return socket.SOCK_STREAM if (level, name) == (socket.SOL_SOCKET, socket.SO_TYPE) else self.options[level, name]

    def setsockopt(self, level: int, name: int, value: int) -> None:
        if not -(2**31) <= value < 2**31:
            raise TypeError("a bytes-like object is required, not 'int'")
        if name in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL) and level == socket.IPPROTO_TCP and value > 32767:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.options[level, name] = value


class TcpKeepaliveTests(SynchronousTestCase):
    """
    L{set_tcp_keepalive} gives the kernel values it takes.
    """

    def test_values(self) -> None:
        """
        The idle time is the interval, the probes share the rest of the
        timeout, and unacknowledged data is given the timeout.
        """
        sock = _KernelSocket()
        self.assertTrue(set_tcp_keepalive(sock, 15.0, 45.0))
        self.assertEqual(sock.options[socket.IPPROTO_TCP, socket.TCP_KEEPIDLE], 15)
        self.assertEqual(sock.options[socket.IPPROTO_TCP, socket.TCP_KEEPINTVL], 10)
        self.assertEqual(sock.options[socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT], 45000)

    def test_long_times(self) -> None:
        """
        Times longer than the kernel's options hold (a keepalive timeout of
        a month: C{TCP_USER_TIMEOUT} in ms past an C{int}, which was a
        C{TypeError} at each tunnel connection) are given as the longest
        they hold.
        """
        sock = _KernelSocket()
        self.assertTrue(set_tcp_keepalive(sock, 1e6, 3e6))
        self.assertEqual(sock.options[socket.IPPROTO_TCP, socket.TCP_KEEPIDLE], 32767)
        self.assertEqual(sock.options[socket.IPPROTO_TCP, socket.TCP_KEEPINTVL], 32767)
        self.assertEqual(sock.options[socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT], 2**31 - 1)
