"""
Tests for L{spwm.tunnel.quic}: the tunnel over QUIC with a fake clock and
an in-memory datagram pipe between the agent's QuicConnection and the
contact point's listener (real TLS, real aioquic, no socket).
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.connection import QuicConnection
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from spwm import leanpoll
from spwm.limits import QuicLimits, TunnelLimits
from spwm.testing.certs import TestCA
from spwm.tunnel.api import TunnelHandle
from spwm.tunnel.connection import Role
from spwm.tunnel.frames import HEADER, PREFACE, ChannelKind, FrameType, encode_frame
from spwm.tunnel.info import describe_tunnel
from spwm.tunnel.protocol import NO_CERTIFICATE_OVER_QUIC, AgentTunnelFactory, ContactTunnelFactory, TunnelProtocol
from spwm.tunnel.quic import (
    FrameSplitter,
    QuicClientReport,
    QuicListener,
    QuicTunnelTransport,
    client_configuration,
    server_configuration,
)
from tests.test_tunnel_protocol import RecordingApp

AGENT_ADDR = ("192.0.2.10", 40000)
CONTACT_ADDR = ("198.51.100.1", 443)


class _ListenerUDP:
    """
    The contact point's UDP port: what the listener writes goes to the pipe.
    """

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe

    def write(self, data: bytes, addr: Any) -> None:
        self.pipe.to_agent.append((data, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", *CONTACT_ADDR)


class Pipe:
    """
    Datagrams between one agent and one listener; C{cut} loses all of them.
    """

    def __init__(self, clock: Clock, listener: QuicListener) -> None:
        self.clock = clock
        self.listener = listener
        self.to_agent: list[tuple[bytes, Any]] = []
        self.to_contact: list[tuple[bytes, Any]] = []
        self.agent: QuicTunnelTransport | None = None
        self.cut = False
        self.agent_addr = AGENT_ADDR
        listener.transport = _ListenerUDP(self)  # type: ignore[assignment]

    def agent_send(self, data: bytes, addr: Any) -> None:
        self.to_contact.append((data, addr))

    def pump(self, rounds: int = 200, step: float = 0.005) -> None:
        """
        Deliver what both sides send; when nothing is in flight, let the
        fake time run in small steps (QUIC paces its packets), at most
        C{rounds} times.
        """
        for _ in range(rounds):
            if not self.to_agent and not self.to_contact:
                self.clock.advance(step)
                if not self.to_agent and not self.to_contact:
                    continue
            to_contact, self.to_contact = self.to_contact, []
            to_agent, self.to_agent = self.to_agent, []
            if self.cut:
                continue
            for data, _ in to_contact:
                self.listener.datagramReceived(data, self.agent_addr)
            for data, _ in to_agent:
                if self.agent is not None:
                    self.agent.datagram_received(data, CONTACT_ADDR)


class QuicTunnelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        self.cert = self.ca.issue(["contact.spwm.test", "127.0.0.1"], "contact")
        self.clock = Clock()
        self.clock.advance(1000)
        self.contact_app = RecordingApp()
        self.agent_app = RecordingApp()
        self.factory = ContactTunnelFactory(self.contact_app, self.clock, TunnelLimits(), max_per_host=2)
        self.listener = QuicListener(
            self.factory, self.clock, server_configuration(self.cert.cert, self.cert.key, QuicLimits(), 45.0)
        )
        self.pipe = Pipe(self.clock, self.listener)

    def connect(
        self, server_name: str = "contact.spwm.test", ca_file: str | None = None, hello: dict[str, Any] | None = None
    ) -> tuple[TunnelProtocol, QuicTunnelTransport, QuicClientReport]:
        report = QuicClientReport()
        configuration = client_configuration(server_name, ca_file or self.ca.ca_file, QuicLimits(), 45.0)
        quic = QuicConnection(configuration=configuration)

        def tls_error(why: str) -> None:
            report.last_error = why

        transport = QuicTunnelTransport(
            quic,
            self.clock,
            self.pipe.agent_send,
            CONTACT_ADDR,
            IPv4Address("UDP", *AGENT_ADDR),
            on_tls_error=tls_error,
            server_name=server_name,
        )
        self.pipe.agent = transport
        protocol = AgentTunnelFactory(self.agent_app, self.clock, "agent-1", hello=hello).buildProtocol(None)
        quic.connect(CONTACT_ADDR, now=self.clock.seconds())
        transport.attach(protocol)
        self.pipe.pump()
        return protocol, transport, report

    def contact_side(self) -> tuple[TunnelProtocol, QuicTunnelTransport]:
        (transport,) = self.listener.transports
        return transport.protocol, transport

    def test_handshake(self) -> None:
        """
        QUIC's handshake (after a Retry), then the tunnel's own handshake on
        the stream: both ends established, the agent id and the session id
        known to both; the handle is the TCP tunnel's class.
        """
        agent, _, _ = self.connect()
        contact, _ = self.contact_side()
        self.assertTrue(agent.is_open)
        self.assertTrue(contact.is_open)
        self.assertEqual(contact.agent_id, "agent-1")
        self.assertEqual(agent.session_id, contact.session_id)
        self.assertEqual(self.agent_app.calls, [("established",)])
        self.assertEqual(self.contact_app.calls, [("established",)])
        self.assertEqual(self.listener.retries_sent, 1)
        self.assertIsInstance(agent, TunnelHandle)
        self.assertEqual(contact.peer, "192.0.2.10:40000")
        self.assertIn(contact, self.factory.tunnels)

    def test_status_says_tls_over_quic(self) -> None:
        """
        The status listing describes a QUIC tunnel, on both ends, as TLS
        1.3 with the cipher suite aioquic negotiated, its path's transport
        as C{quic} and its round trip as QUIC measured it; never as
        plaintext TCP.
        """
        agent, _, _ = self.connect()
        contact, _ = self.contact_side()
        for end in (agent, contact):
            info = describe_tunnel(end, self.clock.seconds())
            self.assertEqual(info["tls"], "TLSv1.3")
            self.assertIn(info["cipher"], ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"])
            self.assertEqual([p["transport"] for p in info["paths"]], ["quic"])
            self.assertIsInstance(info["rtt_ms"], float)

    def test_sip_both_ways(self) -> None:
        """
        SIP frames travel on the stream, in order, both ways.
        """
        agent, _, _ = self.connect()
        contact, _ = self.contact_side()
        for i in range(5):
            self.assertTrue(agent.send_sip(7, b"REGISTER %d" % i))
        self.assertTrue(contact.send_sip(7, b"SIP/2.0 200 OK"))
        self.pipe.pump()
        self.assertEqual([c for c in self.contact_app.calls if c[0] == "sip"], [("sip", 7, b"REGISTER %d" % i) for i in range(5)])
        self.assertIn(("sip", 7, b"SIP/2.0 200 OK"), self.agent_app.calls)

    def test_datagrams_as_quic_datagrams(self) -> None:
        """
        Media DATAGRAM frames go as QUIC DATAGRAM frames both ways and reach
        the channel as over TCP; one too large for a QUIC packet goes on the
        stream instead and arrives too.
        """
        agent, agent_quic, _ = self.connect()
        contact, contact_quic = self.contact_side()
        cid = agent.open_channel(ChannelKind.DATAGRAM, {"use": "media"})
        self.pipe.pump()
        agent.send_datagram(cid, b"rtp-1")
        agent.send_datagram(cid, b"rtcp", 1)
        contact.send_datagram(cid, b"rtp-back")
        big = b"x" * 1500
        agent.send_datagram(cid, big)
        self.pipe.pump()
        got = [c for c in self.contact_app.calls if c[0] == "datagram"]
        self.assertEqual(got, [("datagram", cid, b"rtp-1", 0), ("datagram", cid, b"rtcp", 1), ("datagram", cid, big, 0)])
        self.assertIn(("datagram", cid, b"rtp-back", 0), self.agent_app.calls)
        self.assertEqual(agent_quic.stats.datagrams_sent, 2)
        self.assertEqual(agent_quic.stats.datagrams_on_stream, 1)
        self.assertEqual(contact_quic.stats.datagrams_received, 2)
        self.assertEqual(contact_quic.stats.datagrams_sent, 1)
        self.assertEqual(contact.connection.stats.datagrams_in, 3)

    def test_packets_the_socket_refused(self) -> None:
        """
        A packet the UDP socket refuses (its send buffer full) is counted
        (C{packets_unsent}) and lost as on the network: its media datagram
        is gone, the SIP in it comes again, and the connection goes on.
        """
        agent, agent_quic, _ = self.connect()
        cid = agent.open_channel(ChannelKind.DATAGRAM, {"use": "media"})
        self.pipe.pump()
        send = agent_quic._send

        def refuse(data: bytes, addr: Any) -> bool:
            return False

        agent_quic._send = refuse
        agent.send_datagram(cid, b"rtp-refused")
        self.assertTrue(agent.send_sip(7, b"REGISTER refused once"))
        self.assertGreaterEqual(agent_quic.stats.packets_unsent, 1)
        agent_quic._send = send
        agent.send_datagram(cid, b"rtp-after")
        self.pipe.pump()
        got = [c for c in self.contact_app.calls if c[0] in ("datagram", "sip")]
        self.assertEqual(got, [("datagram", cid, b"rtp-after", 0), ("sip", 7, b"REGISTER refused once")])

    def test_datagram_beside_a_partial_stream_frame(self) -> None:
        """
        A media datagram that arrives while part of a stream frame (a SIP
        message larger than a packet) has come and the rest has not is
        delivered at once: the core was given whole frames only.  (It was
        dropped as "early": about one in 3,000 of a busy session's media
        datagrams, each a gap that made the other half copy its media on
        every path.)
        """
        agent, _, _ = self.connect()
        contact, contact_quic = self.contact_side()
        cid = agent.open_channel(ChannelKind.DATAGRAM, {"use": "media"})
        self.pipe.pump()
        self.assertTrue(agent.send_sip(7, b"INVITE " + b"x" * 4000))
        sip_packets = list(self.pipe.to_contact)
        self.pipe.to_contact.clear()
        agent.send_datagram(cid, b"rtp-beside")
        self.clock.advance(0)
        media_packets = list(self.pipe.to_contact)
        self.pipe.to_contact.clear()
        self.assertTrue(sip_packets and media_packets)
        # the first part of the SIP message, then the datagram, then the rest
        self.pipe.to_contact.extend(sip_packets[:1] + media_packets + sip_packets[1:])
        self.pipe.pump()
        got = [c for c in self.contact_app.calls if c[0] in ("datagram", "sip")]
        self.assertEqual(got, [("datagram", cid, b"rtp-beside", 0), ("sip", 7, b"INVITE " + b"x" * 4000)])
        self.assertEqual(contact_quic.stats.datagrams_dropped_early, 0)

    def test_malformed_and_early_datagrams(self) -> None:
        """
        A QUIC DATAGRAM frame that is not one tunnel DATAGRAM frame is
        dropped and counted; the tunnel stays open.
        """
        agent, agent_quic, _ = self.connect()
        contact, contact_quic = self.contact_side()
        agent_quic.quic.send_datagram_frame(b"junk")
        agent_quic.quic.send_datagram_frame(HEADER.pack(FrameType.DATAGRAM, 0, 1, 10) + b"short")
        agent_quic.write(b"")  # nothing: but the datagrams above go out with the next flush
        agent.send_sip(1, b"x")
        self.pipe.pump()
        self.assertEqual(contact_quic.stats.datagrams_dropped_malformed, 2)
        self.assertTrue(contact.is_open)

    def test_datagram_before_open(self) -> None:
        """
        A QUIC datagram that overtakes its channel's open on the stream is
        dropped and counted (over TCP an unknown channel is a protocol
        error); the tunnel stays open.
        """
        agent, agent_quic, _ = self.connect()
        contact, contact_quic = self.contact_side()
        agent_quic.quic.send_datagram_frame(HEADER.pack(FrameType.DATAGRAM, 0, 1, 3) + b"rtp")
        agent.send_sip(1, b"x")
        self.pipe.pump()
        self.assertEqual(contact_quic.stats.datagrams_dropped_early, 1)
        self.assertTrue(contact.is_open)
        self.assertEqual([c for c in self.contact_app.calls if c[0] == "datagram"], [])

    def test_media_shares_packets(self) -> None:
        """
        Media written in one turn of the reactor leaves at the end of the
        turn, several frames to a QUIC packet; 16 waiting go at once.
        """
        agent, agent_quic, _ = self.connect()
        cid = agent.open_channel(ChannelKind.DATAGRAM, {"use": "media"})
        self.pipe.pump()
        for i in range(5):
            agent.send_datagram(cid, b"%d" % i * 100)
        self.assertEqual(self.pipe.to_contact, [])
        self.clock.advance(0)
        self.assertEqual(len(self.pipe.to_contact), 1)
        self.pipe.to_contact.clear()
        for i in range(16):
            agent.send_datagram(cid, b"%d" % i * 100)
        self.assertGreaterEqual(len(self.pipe.to_contact), 1)
        self.assertLess(len(self.pipe.to_contact), 16)
        self.pipe.pump()
        got = [c for c in self.contact_app.calls if c[0] == "datagram"]
        self.assertEqual(len(got), 21 - 5)  # the first five were cleared from the pipe above
        self.assertEqual(agent_quic.stats.datagrams_sent, 21)

    def test_media_at_the_turn_end(self) -> None:
        """
        Where the reactor says when its turn ends (L{leanpoll.turn_end}),
        the media written in a turn leaves then, several frames to a
        packet, with no timer of its own.
        """
        ends: list[Any] = []
        self.clock._spwm_turn_ends = ends  # type: ignore[attr-defined]
        agent, agent_quic, _ = self.connect()
        cid = agent.open_channel(ChannelKind.DATAGRAM, {"use": "media"})
        self.pipe.pump()
        leanpoll._end_turn(ends)
        self.pipe.pump()
        for i in range(5):
            agent.send_datagram(cid, b"%d" % i * 100)
        self.clock.advance(0)
        self.assertEqual(self.pipe.to_contact, [])
        leanpoll._end_turn(ends)
        self.assertEqual(len(self.pipe.to_contact), 1)
        self.pipe.pump()
        got = [c for c in self.contact_app.calls if c[0] == "datagram"]
        self.assertEqual(len(got), 5)

    def test_stream_backpressure(self) -> None:
        """
        Past the stream's high-water mark of unacknowledged bytes the
        tunnel is paused (its own queue limits then apply, as on a full
        TCP socket), and resumed once the peer has acknowledged them.
        """
        agent, agent_quic, _ = self.connect()
        contact, _ = self.contact_side()
        self.pipe.cut = True
        for i in range(5):
            agent.send_sip(3, b"x" * 60000)
        self.assertGreater(agent_quic.stream_backlog, QuicLimits().stream_high_water)
        self.assertTrue(agent._paused)
        self.pipe.cut = False
        for _ in range(40):
            self.clock.advance(0.2)
            self.pipe.pump()
        self.assertFalse(agent._paused)
        self.assertEqual(len([c for c in self.contact_app.calls if c[0] == "sip"]), 5)

    def test_timer_one_call(self) -> None:
        """
        A QUIC connection keeps one delayed call, moved rather than
        replaced, at aioquic's next deadline.
        """
        _, agent_quic, _ = self.connect()
        timer = agent_quic._timer
        self.assertIsNotNone(timer)
        self.assertTrue(timer.active())
        self.assertAlmostEqual(timer.getTime(), agent_quic.quic.get_timer())
        ours = [c for c in self.clock.getDelayedCalls() if c is timer]
        self.assertEqual(len(ours), 1)

    def test_peer_gone(self) -> None:
        """
        When every packet is lost, the tunnel is lost once, on both ends,
        within the keepalive timeout, and no timer is left behind.
        """
        agent, agent_quic, _ = self.connect()
        contact, contact_quic = self.contact_side()
        self.pipe.cut = True
        for _ in range(200):
            self.clock.advance(1.0)
            self.pipe.pump()
        self.assertEqual([c for c in self.agent_app.calls if c[0] == "lost"], [("lost", "peer silent for 45 s")])
        self.assertEqual([c for c in self.contact_app.calls if c[0] == "lost"], [("lost", "peer silent for 45 s")])
        self.assertTrue(agent_quic.terminated)
        self.assertTrue(contact_quic.terminated)
        self.assertEqual(self.listener.connections, {})
        self.assertNotIn(contact, self.factory.tunnels)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close(self) -> None:
        """
        Closing the tunnel closes the QUIC connection; the peer hears the
        tunnel's reason once.
        """
        agent, agent_quic, _ = self.connect()
        agent.close(0, "agent stopping")
        for _ in range(20):
            self.pipe.pump()
            self.clock.advance(0.5)
        self.assertEqual([c for c in self.contact_app.calls if c[0] == "lost"], [("lost", "agent stopping")])
        self.assertEqual([c for c in self.agent_app.calls if c[0] == "lost"], [("lost", "agent stopping")])
        self.assertTrue(agent_quic.terminated)
        self.assertEqual(self.listener.transports, set())

    def test_stop_drains(self) -> None:
        """
        Stopping the listener takes no new connection but keeps the UDP
        port while tunnels live, so their go-away reaches the agents; the
        port closes when the last one has ended.
        """
        from spwm.tunnel.quic import _ListeningQuic

        agent, agent_quic, _ = self.connect()
        closed: list[bool] = []

        class Port:
            def stopListening(self) -> None:
                closed.append(True)

        listening = _ListeningQuic(Port(), self.listener, self.clock)
        stopped = listening.stopListening()
        self.factory.go_away_all("contact point shutting down", 5.0)
        self.pipe.pump()
        self.assertIsNotNone(agent.go_away_info)
        self.assertEqual(closed, [])
        self.assertNoResult(stopped)
        agent.close(0, "moving after go-away")
        for _ in range(10):
            self.pipe.pump()
        self.assertEqual(closed, [True])
        self.successResultOf(stopped)
        self.assertEqual(self.listener.transports, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wrong_name(self) -> None:
        """
        A certificate for another name: the attempt fails with the TLS/TCP
        tunnel's sentence, and the contact point keeps nothing.
        """
        agent, agent_quic, report = self.connect(server_name="wrong.spwm.test")
        for _ in range(10):
            self.clock.advance(1.0)
            self.pipe.pump()
        self.assertEqual(
            report.last_error, "certificate for contact.spwm.test, 127.0.0.1 does not match server name wrong.spwm.test"
        )
        self.failureResultOf(agent.when_established(), ConnectionError)
        self.assertFalse(agent.is_open)
        self.assertTrue(agent_quic.terminated)

    def test_untrusted_issuer(self) -> None:
        """
        A certificate from a CA the agent does not trust: the TLS/TCP
        tunnel's sentence, naming the issuer and --ca.
        """
        other = TestCA(self.mktemp(), name="Other CA")
        agent, agent_quic, report = self.connect(ca_file=other.ca_file)
        for _ in range(10):
            self.clock.advance(1.0)
            self.pipe.pump()
        self.assertEqual(
            report.last_error,
            "untrusted issuer (SPWM Test CA) of the certificate for contact.spwm.test, 127.0.0.1:"
            " not in --ca or the system's trust store",
        )
        self.assertFalse(agent.is_open)

    def mutual_tls(self) -> None:
        """
        The contact point checks client certificates (C{--client-ca}).
        """
        self.factory.check_client_identity = True

    def test_mutual_tls_no_session_over_quic(self) -> None:
        """
        With mutual TLS, a QUIC connection that would open a session (or
        resume one) is refused with the reason, in one line: QUIC carries
        no client certificate.  The application hears of no tunnel.
        """
        self.mutual_tls()
        for hello in (None, {"paths": 1}, {"paths": 1, "resume": {"session_id": "0123456789abcdef"}}):
            self.agent_app.calls.clear()
            self.contact_app.calls.clear()
            agent, agent_quic, _ = self.connect(hello=hello)
            for _ in range(10):
                self.pipe.pump()
                self.clock.advance(0.5)
            self.assertFalse(agent.is_open)
            self.assertNotIn(("established",), self.contact_app.calls)
            self.assertEqual(
                [c for c in self.agent_app.calls if c[0] == "lost"], [("lost", NO_CERTIFICATE_OVER_QUIC)]
            )
            self.assertTrue(agent_quic.terminated)
            self.assertEqual(self.listener.transports, set())

    def test_mutual_tls_attach_over_quic(self) -> None:
        """
        With mutual TLS, a QUIC connection that joins a session (its hello
        says C{attach}) is taken: it is held to the attach exchange (the
        application decides on its proof); SIP on it before then is a
        protocol error that ends it, with nothing delivered.
        """
        self.mutual_tls()
        agent, _, _ = self.connect(hello={"paths": 1, "attach": {"session_id": "0123456789abcdef"}})
        contact, _ = self.contact_side()
        self.assertTrue(contact.is_open)
        self.assertEqual(self.contact_app.calls, [("established",)])
        self.assertTrue(contact.connection.attaching)
        agent.send_sip(0, b"INVITE sip:bob@example.test SIP/2.0\r\n\r\n")
        self.pipe.pump()
        self.assertEqual([c for c in self.contact_app.calls if c[0] == "sip"], [])
        self.assertFalse(contact.is_open)

    def test_admission(self) -> None:
        """
        The factory's limit per address applies to QUIC connections: past
        it, a new connection gets no state.
        """
        self.connect()
        self.connect()
        self.assertEqual(len(self.listener.transports), 2)
        _, third, _ = self.connect()
        self.assertEqual(len(self.listener.transports), 2)
        # refused again at each retransmission of its Initial
        self.assertGreaterEqual(self.factory.refused, 1)
        self.assertFalse(third.quic._handshake_complete)


class FrameSplitterTests(SynchronousTestCase):
    def test_any_cut(self) -> None:
        """
        However the bytes are cut, the stream comes out whole (preface and
        non-datagram frames, in order) and each DATAGRAM frame alone.
        """
        frames = [
            encode_frame(FrameType.SIP, 0, 1, b"INVITE"),
            encode_frame(FrameType.DATAGRAM, 0, 3, b"rtp"),
            encode_frame(FrameType.DATAGRAM, 1, 3, b""),
            encode_frame(FrameType.PING, 0, 0, b""),
            encode_frame(FrameType.DATAGRAM, 0, 5, b"y" * 300),
        ]
        preface = PREFACE.pack(b"SPWM", 1, 1, 0)
        data = preface + b"".join(frames)
        stream = preface + frames[0] + frames[3]
        for cut in range(len(data) + 1):
            for second in (cut, (cut + len(data)) // 2):
                splitter = FrameSplitter(pick_datagrams=True)
                pieces = splitter.split(data[:cut]) + splitter.split(data[cut:second]) + splitter.split(data[second:])
                self.assertEqual(b"".join(p for d, p in pieces if not d), stream)
                self.assertEqual([p for d, p in pieces if d], [frames[1], frames[2], frames[4]])
                self.assertTrue(splitter.at_boundary)

    def test_receiving_side(self) -> None:
        """
        Without picking, only whole frames come out; a partial frame waits.
        """
        splitter = FrameSplitter(pick_datagrams=False)
        preface = PREFACE.pack(b"SPWM", 1, 1, 0)
        frame = encode_frame(FrameType.SIP, 0, 1, b"INVITE")
        self.assertEqual(splitter.split(preface + frame[:5]), [(False, preface)])
        self.assertFalse(splitter.at_boundary)
        self.assertEqual(splitter.split(frame[5:]), [(False, frame)])
        self.assertTrue(splitter.at_boundary)
