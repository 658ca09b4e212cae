"""
C{--udp-path auto} on loopback (issue 13): agents with one TCP connection
each and a contact point with C{--quic-listen}; a call with RTP both ways
starts on TCP, its media moves to the QUIC path the agent attached in the
background; when UDP is cut (the agent's QUIC connection discards every
datagram both ways: L{QuicTunnelTransport.blackhole}, the test hook that
stands for a firewall here, without network namespaces) the media moves
back to TCP with a short, counted gap and no SIP; when UDP is back it
moves to QUIC again.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher

from spwm.session.carrier import PathFront, path_kind
from spwm.session.paths import PathKind
from spwm.tunnel.quic import QuicTunnelTransport
from tests.integration.test_resumption import WAIT, _LoopbackPair
from tests.integration.test_sip_loopback import free_port
from tests.integration.test_tunnel_loopback import wait_until


def quic_path(front: PathFront) -> Any:
    """
    The front's QUIC path, or C{None}.
    """
    return next((p for p in front.paths if path_kind(p) is PathKind.QUIC), None)


def on_quic(front: PathFront) -> bool:
    """
    Whether the front's media goes on a QUIC path (alone or duplicated).
    """
    return "quic" in (front.media_kind() or "").split("+")


@defer.inlineCallbacks
def moved(predicate: Any, timeout: float) -> Any:
    """
    Wait (polling every 5 ms, at most C{timeout} s) for C{predicate}.

    @return: how long it took, in seconds.
    """
    start = reactor.seconds()
    yield wait_until(predicate, timeout=timeout, step=0.005)
    return reactor.seconds() - start


def missing(rx: Any, after: int) -> int:
    """
    The RTP sequence numbers above C{after} (extended) and below the
    highest received that never arrived: the packets a gap cost.
    """
    seen = rx._seen
    high = max(seen)
    return sum(1 for seq in range(after + 1, high) if seq not in seen)


class _UdpAutoPair(_LoopbackPair):
    """
    Two agents with C{--udp-path auto} (the default) and one TCP
    connection each; the contact point listens for QUIC on loopback.
    """

    agent_extra = ["--tunnel-connections", "1"]

    def setUp(self) -> Any:
        self.contact_extra = ["--quic-listen", f"127.0.0.1:{free_port()}"]
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        return super().setUp()

    def tearDown(self) -> None:
        # every failure is one line, never a traceback
        self.assertEqual([e for e in self.events if e.get("log_failure") is not None], [])

    @defer.inlineCallbacks
    def on_quic(self) -> Any:
        """
        L{_LoopbackPair.call}, once alice's session has its QUIC path on
        both halves and both halves send its media on it.

        @return: alice, bob, both calls, alice's front on the agent and on
            the contact point.
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        assert agent1.paths is not None and agent1.quic is not None
        yield wait_until(lambda: agent1.paths.front is not None, timeout=10)
        front = agent1.paths.front
        assert front is not None
        # it started on TCP, one connection
        self.assertEqual(path_kind(front.paths[0]), PathKind.TCP)
        contact_front = next(f for f in self.contact.paths.fronts if f.session_id == front.session_id)
        yield wait_until(
            lambda: front.media_kind() == "quic" and contact_front.media_kind() == "quic", timeout=15
        )
        self.assertEqual(sorted(path_kind(p).value for p in front.paths), ["quic", "tcp"])
        self.assertEqual(sorted(path_kind(p).value for p in contact_front.paths), ["quic", "tcp"])
        # SIP stays on TCP
        self.assertEqual(front.summary()["carrier_on"], "tcp")
        self.assertEqual(contact_front.summary()["carrier_on"], "tcp")
        return alice, bob, a_call, b_call, front, contact_front

    def sip_counts(self, alice: Any, bob: Any) -> Any:
        return dict(alice.sent), dict(bob.received), dict(alice.received), dict(bob.sent)


class UdpAutoTests(_UdpAutoPair):
    """
    UDP works, then is cut and restored.
    """

    @defer.inlineCallbacks
    def test_to_quic_back_to_tcp_and_again(self) -> Any:
        """
        The call's media moves to QUIC (the QUIC transport carries the
        media datagrams both ways); UDP cut: media back on TCP on both
        halves, a gap of a few packets each way, no SIP; UDP back before
        the path is given up: media on QUIC again after the hold.
        """
        alice, bob, a_call, b_call, front, contact_front = yield self.on_quic()
        path = quic_path(front)
        transport = path.transport
        self.assertIsInstance(transport, QuicTunnelTransport)
        before = transport.stats.datagrams_sent, transport.stats.datagrams_received
        # packets each way on QUIC (25 in 0.5 s on a quiet host)
        yield wait_until(
            lambda: transport.stats.datagrams_sent - before[0] > 15 and transport.stats.datagrams_received - before[1] > 15,
            WAIT,
        ).addErrback(lambda f: None)
        self.assertGreater(transport.stats.datagrams_sent - before[0], 15)
        self.assertGreater(transport.stats.datagrams_received - before[1], 15)
        sip_before = self.sip_counts(alice, bob)
        switches = front.scheduler.media_switches, contact_front.scheduler.media_switches

        # UDP cut
        high = max(a_call.rx._seen), max(b_call.rx._seen)
        transport.blackhole = True
        agent_took = yield moved(lambda: front.media_kind() == "tcp", timeout=5)
        contact_took = agent_took + (yield moved(lambda: contact_front.media_kind() == "tcp", timeout=5))
        yield task.deferLater(reactor, 0.3, lambda: None)
        gaps = missing(a_call.rx, high[0]), missing(b_call.rx, high[1])
        print(f"\nUDP cut: media on TCP after {agent_took * 1000:.0f} ms (agent), "
              f"{contact_took * 1000:.0f} ms (contact point); packets lost: {gaps}")
        # 50 packets a second each way: a gap bounded by the stall bounds
        # (tens of ms on loopback) and the timers, with slack for a loaded
        # machine
        self.assertLessEqual(max(gaps), 20, gaps)
        self.assertEqual(self.sip_counts(alice, bob), sip_before)
        self.assertEqual((a_call.rx.duplicates, b_call.rx.duplicates), (0, 0))

        # UDP back, before the path is given up: media on QUIC again
        transport.blackhole = False
        yield wait_until(lambda: front.media_kind() == "quic" and contact_front.media_kind() == "quic", timeout=40)
        self.assertIs(quic_path(front), path)
        sent = transport.stats.datagrams_sent
        yield wait_until(lambda: transport.stats.datagrams_sent - sent > 5, WAIT).addErrback(lambda f: None)
        self.assertGreater(transport.stats.datagrams_sent - sent, 5)
        self.assertGreaterEqual(front.scheduler.media_switches, switches[0] + 2)
        self.assertGreaterEqual(contact_front.scheduler.media_switches, switches[1] + 2)
        self.assertEqual(self.sip_counts(alice, bob), sip_before)
        status = self.agents[0].status.document()["paths"]
        self.assertEqual(status["session"]["media_on"], "quic")
        self.assertGreaterEqual(status["session"]["media_switches"], 3)
        self.assertEqual(status["udp_path"]["attachments"], 1)
        contact_status = self.contact.status.document()["paths"]
        self.assertGreaterEqual(contact_status["quic_paths"], 1)
        self.assertGreaterEqual(contact_status["media_on"].get("quic", 0), 1)
        from prometheus_client.exposition import generate_latest

        metrics = generate_latest(self.contact.status.metrics.registry).decode()
        self.assertIn('spwm_paths_media_on{key="quic",side="contact"}', metrics)
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_dead_path_dropped_and_probed_again(self) -> Any:
        """
        UDP cut for longer than the dead bound: the agent closes the QUIC
        path (media stays on TCP); UDP back: the next probe attaches a new
        QUIC path and the media moves to it.
        """
        alice, bob, a_call, b_call, front, contact_front = yield self.on_quic()
        prober = self.agents[0].quic
        assert prober is not None
        prober.retry = 1.0  # the first re-probe after 1 s, not 5
        path = quic_path(front)
        path.transport.blackhole = True
        yield wait_until(lambda: quic_path(front) is None, timeout=10)
        self.assertEqual(front.media_kind(), "tcp")
        # (the prober hears of the close once the QUIC connection has ended)
        yield wait_until(lambda: prober.losses == 1, timeout=5)
        sip_before = self.sip_counts(alice, bob)
        path.transport.blackhole = False
        # on QUIC: alone, or beside TCP while the duplication window that a
        # busy machine's stalls keep open lasts (as in one run under -j2)
        yield wait_until(lambda: quic_path(front) is not None and on_quic(front), timeout=20)
        fresh = quic_path(front)
        self.assertIsNot(fresh, path)
        yield wait_until(lambda: on_quic(contact_front), timeout=20)
        sent = fresh.transport.stats.datagrams_sent
        yield wait_until(lambda: fresh.transport.stats.datagrams_sent - sent > 5, WAIT).addErrback(lambda f: None)
        self.assertGreater(fresh.transport.stats.datagrams_sent - sent, 5)
        self.assertEqual(prober.attachments, 2)
        self.assertEqual(self.sip_counts(alice, bob), sip_before)
        # the contact point's side of the cut path ends at its keepalive
        # timeout (the agent's close was cut too); end it now
        old_port = path.transport.getHost().port
        for tunnel in list(self.contact.factory.tunnels):
            transport = tunnel.transport
            if isinstance(transport, QuicTunnelTransport) and transport.getPeer().port == old_port:
                transport.abortConnection()
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)


class MutualTlsUdpAutoTests(_UdpAutoPair):
    """
    A contact point with mutual TLS (C{--client-ca}) and a QUIC listener,
    agents with client certificates: their sessions open over TCP (the
    certificate checked) and the QUIC path joins them, though QUIC
    carries no client certificate.
    """

    def contact_options(self, ca: Any) -> list[str]:
        return ["--client-ca", ca.ca_file]

    def agent_options(self, name: str, ca: Any) -> list[str]:
        files = ca.issue([name], "client-" + name, client=True)
        return ["--client-cert", files.cert, "--client-key", files.key]

    @defer.inlineCallbacks
    def test_media_on_quic(self) -> Any:
        """
        The call's media goes on the QUIC path on both halves (L{on_quic});
        the contact point refused no connection.
        """
        alice, bob, a_call, b_call, front, contact_front = yield self.on_quic()
        transport = quic_path(front).transport
        sent = transport.stats.datagrams_sent, transport.stats.datagrams_received
        yield wait_until(
            lambda: transport.stats.datagrams_sent - sent[0] > 5 and transport.stats.datagrams_received - sent[1] > 5, WAIT
        ).addErrback(lambda f: None)
        self.assertGreater(transport.stats.datagrams_sent - sent[0], 5)
        self.assertGreater(transport.stats.datagrams_received - sent[1], 5)
        self.assertEqual(self.contact.paths.attach_refused, 0)
        self.assertEqual(
            [e for e in self.events if "refused tunnel" in (e.get("log_format") or "")], []
        )
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)


class UdpBlockedTests(_UdpAutoPair):
    """
    UDP dropped from the start (every QUIC connection of the process
    discards its datagrams: the class-wide test hook), as on a network
    that lets only TCP out.
    """

    agent_extra = ["--tunnel-connections", "1", "--handshake-timeout", "1"]

    def setUp(self) -> Any:
        QuicTunnelTransport.blackhole = True
        self.addCleanup(setattr, QuicTunnelTransport, "blackhole", False)
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            text = formatEvent(event)
            if text:
                self.lines.append(text)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return super().setUp()

    @defer.inlineCallbacks
    def test_tcp_until_udp_gets_through(self) -> Any:
        """
        The call works on TCP alone; the probe fails with one line and is
        tried again; once UDP gets through, the next probe attaches the
        QUIC path and the media moves to it.
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        prober = agent1.quic
        assert prober is not None and agent1.paths is not None
        yield wait_until(lambda: prober.probe_failures >= 1, timeout=10)
        front = agent1.paths.front
        assert front is not None
        self.assertIsNone(quic_path(front))
        self.assertEqual(front.media_kind(), "tcp")
        failed = [line for line in self.lines if line.startswith("no QUIC path to")]
        self.assertTrue(failed)
        self.assertIn("media stays on TCP, next try in 5 s", failed[0])
        self.assertIsNotNone(agent1.status.document()["paths"]["udp_path"]["next_probe_in"])
        got = a_call.rx.unique, b_call.rx.unique
        yield wait_until(lambda: a_call.rx.unique - got[0] > 15 and b_call.rx.unique - got[1] > 15, WAIT).addErrback(
            lambda f: None
        )
        self.assertGreater(a_call.rx.unique - got[0], 15)
        self.assertGreater(b_call.rx.unique - got[1], 15)
        # UDP gets through again; the next probe (brought forward from its
        # 5 s, for the test's time)
        QuicTunnelTransport.blackhole = False
        prober._later(0.1)
        contact_front = next(f for f in self.contact.paths.fronts if f.session_id == front.session_id)
        yield wait_until(
            lambda: front.media_kind() == "quic" and contact_front.media_kind() == "quic", timeout=15
        )
        self.assertEqual(front.summary()["carrier_on"], "tcp")
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
