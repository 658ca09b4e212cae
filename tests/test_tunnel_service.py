"""
Tests for L{spwm.tunnel.service}: reconnection with backoff, go-away, HTTP
CONNECT, draining the contact point.
"""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionRefusedError, TimeoutError as ConnectTimeout
from twisted.python.failure import Failure
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from spwm.tunnel.frames import ErrorCode
from spwm.tunnel.protocol import AgentTunnelFactory, ContactTunnelFactory
from spwm.session.workerroute import SteeredEndpoint, WorkerRoute
from spwm.tunnel.service import (
    AgentTunnelService,
    _RetryPolicy,
    ContactListenService,
    LOST_SPREAD,
    PROMPT_BURST,
    STEADY_UP,
    HTTPConnectEndpoint,
    StaggeredEndpoint,
    backoff,
    describe_failure,
)
from tests.test_tunnel_protocol import RecordingApp


class FakeEndpoint:
    """
    A client endpoint whose attempts the test completes by hand.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[Factory, Deferred[Protocol]]] = []

    def connect(self, factory: Factory) -> Deferred[Protocol]:
        d: Deferred[Protocol] = Deferred()
        self.attempts.append((factory, d))
        return d


class BackoffTests(SynchronousTestCase):
    """
    The jittered exponential backoff policy.
    """

    def test_growth_and_cap(self) -> None:
        """
        Delays double per attempt up to the cap; jitter takes at most half off.
        """
        high = backoff(initial=1, factor=2, cap=10, rng=lambda: 1.0)
        low = backoff(initial=1, factor=2, cap=10, rng=lambda: 0.0)
        self.assertEqual([high(n) for n in range(1, 7)], [1, 2, 4, 8, 10, 10])
        self.assertEqual([low(n) for n in range(1, 5)], [0.5, 1, 2, 4])

    def test_no_overflow(self) -> None:
        """
        Any attempt number, however large, gets the cap (the exponent no
        longer overflows a float at attempt 1025).
        """
        policy = backoff(initial=1, factor=2, cap=60, rng=lambda: 1.0)
        for attempt in (1024, 1025, 1100, 10**6, 10**18):
            self.assertEqual(policy(attempt), 60)
        huge = backoff(initial=1, factor=1e300, cap=5, rng=lambda: 1.0)
        self.assertEqual(huge(3), 5)


class AgentServiceTests(SynchronousTestCase):
    """
    The agent's reconnecting tunnel service.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.app = RecordingApp()
        self.factory = AgentTunnelFactory(self.app, self.clock, "agent-1")
        self.service = AgentTunnelService(
            self.endpoint,
            self.factory,
            self.clock,
            description="contact.example.test:443",
            policy=backoff(initial=1, factor=2, cap=8, rng=lambda: 1.0),
        )

    def tearDown(self) -> None:
        self.service.stopService()

    def connect_contact(self) -> Any:
        """
        Complete the pending attempt with a contact point in memory.
        """
        factory, d = self.endpoint.attempts[-1]
        contact_factory = ContactTunnelFactory(RecordingApp(), self.clock)
        server = contact_factory.buildProtocol(None)
        client = factory.buildProtocol(None)
        pump = iosim.connect(server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False), greet=False, clock=self.clock)
        d.callback(client)
        pump.flush()
        return contact_factory, pump

    def test_backoff_and_reasons(self) -> None:
        """
        Failed attempts are retried after growing delays, each logged with
        the reason of the last failure.
        """
        with capturedLogs() as events:
            self.service.startService()
            for expected in [1, 2, 4, 8, 8]:
                self.endpoint.attempts[-1][1].errback(ConnectionRefusedError("nobody home"))
                n = len(self.endpoint.attempts)
                self.clock.advance(expected - 0.01)
                self.assertEqual(len(self.endpoint.attempts), n)
                self.clock.advance(0.02)
                self.assertEqual(len(self.endpoint.attempts), n + 1)
            self.service.startService()
        lines = [e for e in events if e.get("log_format", "").startswith("tunnel to {contact} down")]
        self.assertEqual(len(lines), 5)
        self.assertIn("nobody home", lines[0]["reason"])
        self.assertEqual(lines[-1]["delay"], 8)
        # one line per retry: ClientService's own ("Scheduling retry N to
        # connect ... in 0.7610160266955841 seconds.") is left out, the
        # rest of what it logs is not
        self.assertEqual([e for e in events if "Scheduling retry" in e.get("log_format", "")], [])
        self.assertEqual(
            [formatEvent(e) for e in events if "Duplicate ClientService" in e.get("log_format", "")],
            [f"Duplicate ClientService.startService {self.service!r}"],
        )

    def test_reason_names_a_workers_own_port(self) -> None:
        """
        An attempt that went to a worker's own port (C{--workers} at the
        contact point) and failed: the failure and retry lines name that
        port, not only the configured C{--contact}; one to the configured
        port does not.
        """
        route = WorkerRoute()
        to_session = [False]
        made: dict[int | None, FakeEndpoint] = {}

        def make(port: int | None) -> FakeEndpoint:
            return made.setdefault(port, FakeEndpoint())

        self.service = AgentTunnelService(
            SteeredEndpoint(make, route, lambda: to_session[0]),
            self.factory,
            self.clock,
            description="contact.example.test:443",
            policy=backoff(initial=1, factor=2, cap=8, rng=lambda: 1.0),
        )
        with capturedLogs() as events:
            self.service.startService()
            made[None].attempts[-1][1].errback(ConnectionRefusedError("nobody home"))
            route.learn({"resume_port": 7001})
            to_session[0] = True
            self.clock.advance(1)
            made[7001].attempts[-1][1].errback(ConnectionRefusedError("nobody home"))
        lines = [formatEvent(e) for e in events if e.get("log_format", "").startswith("tunnel to {contact} down")]
        self.assertEqual(len(lines), 2)
        self.assertNotIn("port", lines[0].split("attempt")[0])
        self.assertIn("(at the worker's own port 7001)", lines[1])

    def test_reconnects_after_1100_failures(self) -> None:
        """
        With the default policy (cap 60 s), an agent whose contact point
        refuses 1,100 attempts (about 13 to 18 hours) still tries again and
        connects at the next attempt.
        """
        service = AgentTunnelService(
            self.endpoint,
            self.factory,
            self.clock,
            description="contact.example.test:443",
            policy=backoff(cap=60.0),
        )
        self.service = service
        service.startService()
        for n in range(1100):
            self.assertEqual(len(self.endpoint.attempts), n + 1)
            self.endpoint.attempts[-1][1].errback(ConnectionRefusedError("nobody home"))
            self.clock.advance(60.0)
        self.assertEqual(len(self.endpoint.attempts), 1101)
        self.assertEqual(service.status()["failures"], 1100)
        self.connect_contact()
        self.assertIsNotNone(service.tunnel)
        self.assertTrue(service.tunnel.is_open)
        self.assertEqual(service.status()["failures"], 0)

    def test_connects_and_reports(self) -> None:
        """
        After the handshake the service holds the tunnel; the application heard of it.
        """
        self.service.startService()
        self.connect_contact()
        self.assertIsNotNone(self.service.tunnel)
        self.assertTrue(self.service.tunnel.is_open)
        self.assertEqual(self.app.calls, [("established",)])

    def test_go_away_reconnects_at_once(self) -> None:
        """
        A graceful go-away from the contact point makes the agent move at
        once, without backoff.
        """
        self.service.startService()
        contact_factory, pump = self.connect_contact()
        contact_factory.go_away_all("maintenance", 30)
        pump.flush()
        self.clock.advance(0)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.assertIsNone(self.service.tunnel)

    def test_lost_tunnel_reconnects_soon(self) -> None:
        """
        A tunnel that had been up for a while and dies (here the keepalive
        timeout; a network change, every path of a session broken) is
        tried again within L{LOST_SPREAD}, not after a backoff step.
        """
        self.service.startService()
        contact_factory, pump = self.connect_contact()
        # The network hangs: nothing moves until both sides give up.
        self.clock.advance(50)
        pump.flush()
        self.assertIsNone(self.service.tunnel)
        self.clock.advance(LOST_SPREAD)
        self.assertEqual(len(self.endpoint.attempts), 2)

    def drop_soon(self, times: int) -> None:
        """
        C{times} tunnels in a row lost by the network a second after they
        came up, each tried again within L{LOST_SPREAD}.
        """
        for _ in range(times):
            n = len(self.endpoint.attempts)
            _, pump = self.connect_contact()
            self.clock.advance(1.0)
            self.service.tunnel.transport.loseConnection()
            pump.flush()
            self.assertIsNone(self.service.tunnel)
            self.clock.advance(LOST_SPREAD)
            self.assertEqual(len(self.endpoint.attempts), n + 1)

    def test_tunnel_lost_soon_after_up(self) -> None:
        """
        A tunnel lost by the network within L{STEADY_UP} of coming up (a
        link that breaks every few seconds) is tried again within
        L{LOST_SPREAD}, L{PROMPT_BURST} times in a row; the next such
        loss waits the backoff (a middlebox that kills every connection
        soon: such a loop does not spin), and growing ones after it;
        after L{STEADY_UP} without such a loss, one goes at once again.
        """
        self.service.startService()
        self.drop_soon(PROMPT_BURST)
        for expected in [1, 2]:
            contact_factory, pump = self.connect_contact()
            self.clock.advance(0.5)
            self.service.tunnel.transport.loseConnection()
            pump.flush()
            n = len(self.endpoint.attempts)
            self.clock.advance(expected - 0.01)
            self.assertEqual(len(self.endpoint.attempts), n, expected)
            self.clock.advance(0.02)
            self.assertEqual(len(self.endpoint.attempts), n + 1, expected)
        self.clock.advance(STEADY_UP)
        self.drop_soon(1)

    def test_refused_again_and_again_backs_off(self) -> None:
        """
        A contact point that closes every tunnel right after the hello (a
        refusal: mutual TLS with a certificate for another agent, or a
        QUIC connection that would open a session there) is tried again
        after growing delays, 1, 2, 4, 8, 8 s with this policy, not every
        second for ever; a tunnel that then stays up and is lost later is
        tried again at once, and the delays start over.
        """
        self.service.startService()
        for expected in [1, 2, 4, 8, 8]:
            contact_factory, pump = self.connect_contact()
            (server,) = contact_factory.tunnels
            server.close(ErrorCode.REFUSED, "client certificate for agent-2 does not match agent id 'agent-1'")
            pump.flush()
            self.assertIsNone(self.service.tunnel)
            n = len(self.endpoint.attempts)
            self.clock.advance(expected - 0.01)
            self.assertEqual(len(self.endpoint.attempts), n, expected)
            self.clock.advance(0.02)
            self.assertEqual(len(self.endpoint.attempts), n + 1, expected)
        contact_factory, pump = self.connect_contact()
        self.clock.advance(STEADY_UP + 1)
        self.service.tunnel.transport.loseConnection()
        pump.flush()
        self.clock.advance(LOST_SPREAD)
        self.assertEqual(len(self.endpoint.attempts), 7)
        contact_factory, pump = self.connect_contact()
        self.clock.advance(1)
        self.service.tunnel.transport.loseConnection()
        pump.flush()
        self.clock.advance(1.01)
        self.assertEqual(len(self.endpoint.attempts), 8)

    def test_handshake_failure_is_retried(self) -> None:
        """
        A connection that closes before the handshake completes counts as a
        failed attempt with its reason.
        """
        with capturedLogs() as events:
            self.service.startService()
            factory, d = self.endpoint.attempts[-1]
            client = factory.buildProtocol(None)
            transport = StringTransport()
            client.makeConnection(transport)
            d.callback(client)
            client.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            client.connectionLost(None)
            self.clock.advance(1.01)
        self.assertEqual(len(self.endpoint.attempts), 2)
        failed = [e for e in events if e.get("log_format", "").startswith("tunnel to {contact} failed")]
        self.assertIn("bad magic", failed[0]["reason"])


    def handshake_fails(self) -> None:
        """
        Take TCP for the pending attempt, then fail the handshake (the
        peer answers garbage and closes).
        """
        factory, d = self.endpoint.attempts[-1]
        client = factory.buildProtocol(None)
        client.makeConnection(StringTransport())
        d.callback(client)
        client.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        client.connectionLost(Failure(ConnectionDone()))

    def delays(self, events: list[dict]) -> list[float]:
        return [e["delay"] for e in events if e.get("log_format", "").startswith("tunnel to {contact} down")]

    def test_same_failure_warned_once(self) -> None:
        """
        Attempts that fail the same way one after the other: one warning
        for the first, then one line per attempt (the retry line); a
        failure of another kind, or the first after a tunnel was up, is
        warned again.
        """
        with capturedLogs() as events:
            self.service.startService()
            for delay in [1, 2, 4]:
                self.handshake_fails()
                self.clock.advance(delay)
            contact_factory, pump = self.connect_contact()
            [tunnel] = list(contact_factory.tunnels)
            tunnel.close(0, "restarting")
            pump.flush()
            self.clock.advance(1)
            self.handshake_fails()
        warned = [e for e in events if e.get("log_format", "").startswith("tunnel to {contact} failed")]
        self.assertEqual(len(warned), 2)
        self.assertEqual(len(self.delays(events)), 5)

    def test_connection_refused_warned_once(self) -> None:
        """
        Attempts that cannot connect at all (a contact point not
        listening) warn once for the first of a row, with the reason, as a
        failed handshake does (operations.md, "Logs"); the repeats are the
        retry line's.
        """
        with capturedLogs() as events:
            self.service.startService()
            for delay in [1, 2, 4]:
                self.endpoint.attempts[-1][1].errback(Failure(ConnectionRefusedError()))
                self.clock.advance(delay)
            # the attempt under way when the service stops is cancelled:
            # no failure to warn of
            self.service.stopService()
        warned = [e for e in events if e.get("log_format", "").startswith("tunnel to {contact} failed")]
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["log_level"], LogLevel.warn)
        self.assertIn("refused", warned[0]["reason"])
        self.assertEqual(len(self.delays(events)), 3)

    def test_quic_nothing_back_hint(self) -> None:
        """
        Over QUIC (C{--udp-path only}), an attempt that times out in the
        handshake with nothing back from the contact point's UDP port
        says what to check; one that got answers does not.
        """
        from spwm.limits import TunnelLimits
        from spwm.tunnel.quic import QuicClientReport

        report = QuicClientReport()
        self.service.stopService()
        self.service = AgentTunnelService(
            self.endpoint,
            AgentTunnelFactory(self.app, self.clock, "agent-1", TunnelLimits(handshake_timeout=2)),
            self.clock,
            description="contact.example.test (QUIC, UDP port 4433)",
            tls=report,  # type: ignore[arg-type]
            policy=backoff(initial=1, factor=2, cap=8, rng=lambda: 1.0),
        )
        reasons = []
        for answers in (0, 3):
            report.port, report.datagrams_in = 4433, answers
            with capturedLogs() as events:
                if not self.service.running:
                    self.service.startService()
                factory, d = self.endpoint.attempts[-1]
                client = factory.buildProtocol(None)
                client.makeConnection(StringTransport())
                d.callback(client)
                self.clock.advance(2)
                client.connectionLost(Failure(ConnectionDone()))
            [line] = [e for e in events if e.get("log_format", "").startswith("tunnel to {contact} down")]
            reasons.append(line["reason"])
            self.clock.advance(8)
        self.assertEqual(
            reasons,
            [
                "no handshake within 2 s; nothing came back from UDP port 4433: does the contact point listen"
                " for QUIC (--quic-listen) and does the network let UDP through?",
                "no handshake within 2 s",
            ],
        )

    def test_failed_handshake_counts_as_failed_attempt(self) -> None:
        """
        ClientService counts an attempt that took TCP but failed the
        handshake (prepareConnection) as failed: the delays keep growing
        over refused and half-made attempts alike; only a tunnel that is
        up resets them.
        """
        with capturedLogs() as events:
            self.service.startService()
            self.endpoint.attempts[-1][1].errback(ConnectionRefusedError("nobody home"))
            self.clock.advance(1)
            self.handshake_fails()
            self.clock.advance(2)
            self.handshake_fails()
            self.assertEqual(self.service.status()["failures"], 3)
            self.clock.advance(4)
            contact_factory, pump = self.connect_contact()
            self.assertEqual(self.service.status()["failures"], 0)
            [tunnel] = list(contact_factory.tunnels)
            tunnel.close(0, "restarting")
            pump.flush()
        self.assertEqual(self.delays(events), [1, 2, 4, 1])
        self.assertEqual(len(self.endpoint.attempts), 4)
        self.assertIsNone(self.service.tunnel)

    def test_attempt_under_way_until_handshake(self) -> None:
        """
        While TCP is up but the handshake is not done, the service is
        connecting and has no tunnel; it has one once the handshake is
        done.
        """
        self.service.startService()
        factory, d = self.endpoint.attempts[-1]
        contact_factory = ContactTunnelFactory(RecordingApp(), self.clock)
        server = contact_factory.buildProtocol(None)
        client = factory.buildProtocol(None)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False),
            greet=False, clock=self.clock,
        )
        d.callback(client)
        self.assertTrue(self.service.connecting)
        self.assertIsNone(self.service.tunnel)
        pump.flush()
        self.assertFalse(self.service.connecting)
        self.assertTrue(self.service.tunnel.is_open)

    def test_stop_during_handshake(self) -> None:
        """
        Stopping while the handshake is under way closes the connection,
        logs no failure and schedules no attempt.
        """
        with capturedLogs() as events:
            self.service.startService()
            factory, d = self.endpoint.attempts[-1]
            client = factory.buildProtocol(None)
            transport = StringTransport()
            client.makeConnection(transport)
            d.callback(client)
            stopped = self.service.stopService()
            self.assertTrue(transport.disconnecting)
            client.connectionLost(Failure(ConnectionDone()))
            self.successResultOf(stopped)
            self.clock.advance(100)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertEqual([e for e in events if "failed" in e.get("log_format", "")], [])
        self.assertEqual(self.delays(events), [])

    def test_go_away_then_failure_waits_as_before(self) -> None:
        """
        The immediate attempt after a go-away is not a failure: if it
        fails, the next waits the first delay, not the second.
        """
        with capturedLogs() as events:
            self.service.startService()
            contact_factory, pump = self.connect_contact()
            contact_factory.go_away_all("maintenance", 30)
            pump.flush()
            self.clock.advance(0)
            self.endpoint.attempts[-1][1].errback(ConnectionRefusedError("nobody home"))
            self.clock.advance(1)
            self.endpoint.attempts[-1][1].errback(ConnectionRefusedError("nobody home"))
        self.assertEqual(self.delays(events), [0, 1, 2])
        self.assertEqual(len(self.endpoint.attempts), 3)


class SessionLostTests(SynchronousTestCase):
    """
    L{AgentTunnelService.session_lost}: the agent's session lost every
    connection at once.
    """

    setUp = AgentServiceTests.setUp
    tearDown = AgentServiceTests.tearDown
    connect_contact = AgentServiceTests.connect_contact

    def test_cuts_backoff_wait_short(self) -> None:
        """
        The service's own connection went first, soon after it came up
        (it waits a backoff step); when the session's last path goes, the
        next attempt is made within L{LOST_SPREAD}.
        """
        self.service.startService()
        AgentServiceTests.drop_soon(self, PROMPT_BURST)  # type: ignore[arg-type]
        n = len(self.endpoint.attempts)
        _, pump = self.connect_contact()
        self.clock.advance(1.0)
        self.service.tunnel.transport.loseConnection()
        pump.flush()
        self.clock.advance(0.1)
        self.assertEqual(len(self.endpoint.attempts), n)
        self.service.session_lost(STEADY_UP + 5)
        self.clock.advance(LOST_SPREAD)
        self.assertEqual(len(self.endpoint.attempts), n + 1)
        self.assertLessEqual(self.service.next_attempt_at, self.clock.seconds())

    def test_next_attempt_soon_when_connected(self) -> None:
        """
        Told while its connection is still up (it is the session's last
        path, lost next), the attempt after that loss goes within
        L{LOST_SPREAD} however young the connection is.
        """
        self.service.startService()
        _, pump = self.connect_contact()
        self.clock.advance(1.0)
        self.service.session_lost(STEADY_UP)
        self.service.tunnel.transport.loseConnection()
        pump.flush()
        self.clock.advance(LOST_SPREAD)
        self.assertEqual(len(self.endpoint.attempts), 2)

    def test_closed_as_it_came_up(self) -> None:
        """
        A connection closed by the application as it comes up (an attach
        to a session that is gone, which tells C{session_lost} first) does
        not clear that: the next attempt goes within L{LOST_SPREAD}.
        """
        service = self.service

        class Closing(RecordingApp):
            def tunnel_established(self, tunnel: Any) -> None:
                super().tunnel_established(tunnel)
                service.session_lost(STEADY_UP)
                tunnel.close(0, "no session to attach to any more")

        self.app.__class__ = Closing
        service.startService()
        _, pump = self.connect_contact()
        pump.flush()
        self.clock.advance(0)
        self.assertIsNone(service.tunnel)
        self.clock.advance(LOST_SPREAD)
        self.assertEqual(len(self.endpoint.attempts), 2)

    def test_attach_under_way_replaced(self) -> None:
        """
        An attempt whose handshake is under way and whose hello joins the
        session is closed when the session is lost; the next attempt goes
        within L{LOST_SPREAD}, counted as no failure. One that resumes
        (no C{attach}) is left alone.
        """
        service = self.service

        def handshaking(hello: dict[str, Any]) -> tuple[Any, StringTransport]:
            self.factory.hello = hello
            factory, d = self.endpoint.attempts[-1]
            client = factory.buildProtocol(None)
            transport = StringTransport()
            client.makeConnection(transport)
            d.callback(client)
            return client, transport

        service.startService()
        client, transport = handshaking({"attach": {"session_id": "s1"}})
        service.session_lost(STEADY_UP)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.disconnected)
        with capturedLogs() as events:
            client.connectionLost(Failure(ConnectionDone()))
        # one line at info: part of an address change, not a fault
        dropped = [e for e in events if "attempt dropped" in formatEvent(e)]
        self.assertEqual([e["log_level"] for e in dropped], [LogLevel.info])
        self.assertFalse([e for e in events if e["log_level"] >= LogLevel.warn])
        self.clock.advance(LOST_SPREAD)
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.assertEqual(service.status()["failures"], 0)
        client, transport = handshaking({"resume": {"session_id": "s1"}})
        service.session_lost(STEADY_UP)
        self.assertFalse(transport.disconnecting)

    def test_attach_waiting_for_tls_kept(self) -> None:
        """
        An attempt whose hello joins the session but still waits for its
        TLS handshake (decided then: it resumes the session) is left
        alone when the session is lost.
        """
        service = self.service
        service.startService()

        class Transport(StringTransport):
            def when_handshake_done(self, callback: Any) -> bool:
                return True

        self.factory.hello = {"attach": {"session_id": "s1"}}
        self.factory.seal = object()
        factory, d = self.endpoint.attempts[-1]
        client = factory.buildProtocol(None)
        transport = Transport()
        client.makeConnection(transport)
        d.callback(client)
        self.assertTrue(service._preparing.hello_held)
        service.session_lost(STEADY_UP)
        self.assertFalse(transport.disconnecting)

    def test_young_session_backs_off(self) -> None:
        """
        A session lost within L{STEADY_UP} of its start is tried again
        within L{LOST_SPREAD} L{PROMPT_BURST} times in a row (each loss
        takes one, whichever of the service and the session tells first),
        then keeps the backoff (a contact point that drops every session
        soon does not make agents spin); a shorter wait is never made
        longer.
        """
        self.service.startService()
        for n in range(1, PROMPT_BURST + 1):
            _, pump = self.connect_contact()
            self.clock.advance(1.0)
            self.service.session_lost(1.0)
            self.service.tunnel.transport.loseConnection()
            pump.flush()
            self.clock.advance(LOST_SPREAD)
            self.assertEqual(len(self.endpoint.attempts), n + 1)
        _, pump = self.connect_contact()
        self.clock.advance(1.0)
        self.service.session_lost(STEADY_UP - 1)
        self.service.tunnel.transport.loseConnection()
        pump.flush()
        self.clock.advance(0.99)
        self.assertEqual(len(self.endpoint.attempts), PROMPT_BURST + 1)
        self.clock.advance(0.02)
        self.assertEqual(len(self.endpoint.attempts), PROMPT_BURST + 2)
        self.service._retry.rng = lambda: 1.0
        self.service._waits.pending = self.clock.callLater(0.01, lambda: None)
        self.service.session_lost(STEADY_UP)
        self.assertAlmostEqual(self.service._waits.pending.getTime(), self.clock.seconds() + 0.01)


class StaggeredEndpointTests(SynchronousTestCase):
    """
    L{StaggeredEndpoint}: happy eyeballs on one address.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.inner = FakeEndpoint()
        self.endpoint = StaggeredEndpoint(self.inner, self.clock, stagger=0.3, attempts=3)
        self.factory = Factory.forProtocol(Protocol)

    def test_first_connect_wins(self) -> None:
        """
        While none has connected, another attempt every C{stagger}, at most
        C{attempts}; the first to connect is the result, the others are
        cancelled, and one that connects all the same gets no protocol.
        """
        d = self.endpoint.connect(self.factory)
        self.assertEqual(len(self.inner.attempts), 1)
        self.clock.advance(0.3)
        self.clock.advance(0.3)
        self.clock.advance(5)
        self.assertEqual(len(self.inner.attempts), 3)
        self.assertEqual(self.endpoint.extra_attempts, 2)
        factories = [f for f, _ in self.inner.attempts]
        second = factories[1].buildProtocol(None)
        self.assertIsInstance(second, Protocol)
        self.assertIsNone(factories[0].buildProtocol(None))
        self.inner.attempts[1][1].callback(second)
        self.assertIs(self.successResultOf(d), second)
        self.assertTrue(all(attempt.called for _, attempt in self.inner.attempts))

    def test_connected_at_once(self) -> None:
        """
        A connection made before C{stagger} is the only attempt.
        """
        d = self.endpoint.connect(self.factory)
        factory, attempt = self.inner.attempts[0]
        attempt.callback(factory.buildProtocol(None))
        self.successResultOf(d)
        self.clock.advance(10)
        self.assertEqual(len(self.inner.attempts), 1)

    def test_failure_without_others_fails(self) -> None:
        """
        An attempt that fails while none other is under way fails the
        connect (a refusal is not tried again here); one that fails while
        another is under way waits for it.
        """
        d = self.endpoint.connect(self.factory)
        self.inner.attempts[0][1].errback(ConnectionRefusedError("nobody home"))
        self.failureResultOf(d, ConnectionRefusedError)
        self.assertIsNone(self.inner.attempts[0][0].buildProtocol(None))
        self.clock.advance(10)
        self.assertEqual(len(self.inner.attempts), 1)
        d = self.endpoint.connect(self.factory)
        self.clock.advance(0.3)
        self.inner.attempts[1][1].errback(ConnectionRefusedError("timed out"))
        self.assertNoResult(d)
        factory, attempt = self.inner.attempts[2]
        attempt.callback(factory.buildProtocol(None))
        self.successResultOf(d)

    def test_cancel(self) -> None:
        """
        Cancelling the connect cancels every attempt and starts no more.
        """
        d = self.endpoint.connect(self.factory)
        self.clock.advance(0.3)
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(all(attempt.called for _, attempt in self.inner.attempts))
        # a connection made all the same gets no protocol
        self.assertIsNone(self.inner.attempts[0][0].buildProtocol(None))
        self.clock.advance(10)
        self.assertEqual(len(self.inner.attempts), 2)


class HTTPConnectTests(SynchronousTestCase):
    """
    Connecting through an HTTP CONNECT proxy.
    """

    def setUp(self) -> None:
        self.proxy = FakeEndpoint()
        self.endpoint = HTTPConnectEndpoint(self.proxy, "contact.example.test", 443)

    def start(self) -> tuple[Deferred[Protocol], Protocol, StringTransport, list[bytes]]:
        received: list[bytes] = []

        class Inner(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)

        d = self.endpoint.connect(Factory.forProtocol(Inner))
        factory, pd = self.proxy.attempts[0]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        pd.callback(proto)
        return d, proto, transport, received

    def test_connect(self) -> None:
        """
        The endpoint asks for CONNECT and, after a 200, hands the connection
        to the real protocol with any bytes that followed the response.
        """
        d, proto, transport, received = self.start()
        self.assertEqual(transport.value(), b"CONNECT contact.example.test:443 HTTP/1.1\r\nHost: contact.example.test:443\r\n\r\n")
        self.assertNoResult(d)
        proto.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\nSPWM")
        inner = self.successResultOf(d)
        self.assertEqual(received, [b"SPWM"])
        self.assertIs(inner.transport, transport)

    def test_refused(self) -> None:
        """
        A proxy that refuses fails the attempt with one line naming the
        proxy and its status and reason (no representation of bytes).
        """
        self.endpoint = HTTPConnectEndpoint(self.proxy, "contact.example.test", 443, description="192.0.2.1:3128")
        d, proto, transport, received = self.start()
        proto.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        failure = self.failureResultOf(d)
        self.assertEqual(describe_failure(failure), "HTTP proxy 192.0.2.1:3128 refused CONNECT: 403 Forbidden")
        self.assertTrue(transport.disconnecting)

    def test_proxy_unreachable(self) -> None:
        """
        A proxy that cannot be reached fails the attempt with a line naming
        the proxy (not Twisted's text, which reads as if the contact point
        refused).
        """
        self.endpoint = HTTPConnectEndpoint(self.proxy, "contact.example.test", 443, description="192.0.2.1:3128")
        for exc, line in [
            (ConnectionRefusedError(111, "Connection refused"), "HTTP proxy 192.0.2.1:3128: connection refused"),
            (ConnectTimeout(), "HTTP proxy 192.0.2.1:3128: no answer to the TCP connection (timed out)"),
        ]:
            d = self.endpoint.connect(Factory.forProtocol(Protocol))
            self.proxy.attempts.pop()[1].errback(exc)
            self.assertEqual(describe_failure(self.failureResultOf(d)), line)

    def test_closed_or_not_http(self) -> None:
        """
        A proxy that closes before it answers the CONNECT, or answers
        something that is not HTTP, fails the attempt with a line that
        says so and names the proxy.
        """
        self.endpoint = HTTPConnectEndpoint(self.proxy, "contact.example.test", 443, description="192.0.2.1:3128")
        d, proto, transport, received = self.start()
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            describe_failure(self.failureResultOf(d)),
            "HTTP proxy 192.0.2.1:3128: closed the connection before answering CONNECT",
        )
        for answer in [b"SSH-2.0-OpenSSH_9.2\r\n", b"\x16\x03\x01", b"HTTP/2 200\r\n\r\n", b"HTX"]:
            self.proxy.attempts.clear()
            d, proto, transport, received = self.start()
            proto.dataReceived(answer)
            self.assertEqual(
                describe_failure(self.failureResultOf(d)), "HTTP proxy 192.0.2.1:3128: not an HTTP answer to CONNECT"
            )
            self.assertTrue(transport.disconnecting)
            proto.connectionLost(Failure(ConnectionDone()))  # no second result
        self.proxy.attempts.clear()
        d, proto, transport, received = self.start()
        proto.dataReceived(b"HTT")  # a start of an answer: wait for the rest
        self.assertNoResult(d)

    def test_no_answer(self) -> None:
        """
        A proxy that takes the connection and never answers the CONNECT
        fails the attempt after the timeout, as a TCP connection that
        times out does (one line, then the agent tries again); one that
        answers in time is not cut by the timer.
        """
        clock = Clock()
        self.endpoint = HTTPConnectEndpoint(
            self.proxy, "contact.example.test", 444, clock=clock, timeout=10.0, description="192.0.2.1:3128"
        )
        d, proto, transport, received = self.start()
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        failure = self.failureResultOf(d, ConnectTimeout)
        self.assertEqual(
            describe_failure(failure), "HTTP proxy 192.0.2.1:3128: no answer to CONNECT contact.example.test:444 within 10 s"
        )
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))  # no second result
        self.assertEqual(clock.getDelayedCalls(), [])
        self.proxy.attempts.clear()
        d, proto, transport, received = self.start()
        proto.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_ipv6_target(self) -> None:
        """
        An IPv6 target is written in brackets.
        """
        endpoint = HTTPConnectEndpoint(self.proxy, "2001:db8::1", 443)
        endpoint.connect(Factory.forProtocol(Protocol))
        factory, pd = self.proxy.attempts[0]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"CONNECT [2001:db8::1]:443 HTTP/1.1"))


class FakeProxy:
    """
    An HTTP CONNECT proxy in memory that demands Basic credentials (or
    offers other schemes) and answers the CONNECT it was sent.
    """

    def __init__(self, user_pass: str | None, schemes: tuple[str, ...] = ('Basic realm="corp"',)) -> None:
        self.expected = None if user_pass is None else base64.b64encode(user_pass.encode()).decode()
        self.schemes = schemes

    def answer(self, request: bytes) -> bytes:
        head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head.split("\r\n")
        assert lines[0].startswith("CONNECT ")
        given = [line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("proxy-authorization:")]
        if self.expected is None or given == [f"Basic {self.expected}"]:
            return b"HTTP/1.1 200 Connection established\r\n\r\n"
        offers = "".join(f"Proxy-Authenticate: {s}\r\n" for s in self.schemes)
        return f"HTTP/1.1 407 Proxy Authentication Required\r\n{offers}Content-Length: 0\r\n\r\n".encode()


class ProxyAuthTests(SynchronousTestCase):
    """
    C{Proxy-Authorization: Basic} for the CONNECT, and one clear line on 407.
    """

    def attempt(self, proxy: FakeProxy, auth: str | None) -> Any:
        endpoint_under = FakeEndpoint()
        endpoint = HTTPConnectEndpoint(
            endpoint_under, "contact.example.test", 443, auth=auth, description="proxy.example.test:3128"
        )
        d = endpoint.connect(Factory.forProtocol(Protocol))
        factory, pd = endpoint_under.attempts[0]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        pd.callback(proto)
        proto.dataReceived(proxy.answer(transport.value()))
        return d, transport

    def test_basic_accepted(self) -> None:
        """
        With the right user and password (UTF-8, RFC 7617) the proxy connects.
        """
        d, transport = self.attempt(FakeProxy("alice:pä:ss"), "alice:pä:ss")
        self.successResultOf(d)
        self.assertIn(b"Proxy-Authorization: Basic YWxpY2U6cMOkOnNz\r\n", transport.value())

    def test_wrong_credentials(self) -> None:
        """
        Wrong credentials: the failure says the proxy refused them.
        """
        d, _ = self.attempt(FakeProxy("alice:right"), "alice:wrong")
        reason = describe_failure(self.failureResultOf(d))
        self.assertEqual(
            reason,
            'the HTTP proxy at proxy.example.test:3128 demands authentication (Proxy-Authenticate: Basic realm="corp");'
            " it refused the user and password of http-proxy-auth (or SPWM_HTTP_PROXY_AUTH)",
        )

    def test_no_credentials(self) -> None:
        """
        No credentials: the failure says where to put them; no header is sent.
        """
        d, transport = self.attempt(FakeProxy("alice:right"), None)
        self.assertNotIn(b"Proxy-Authorization", transport.value())
        reason = describe_failure(self.failureResultOf(d))
        self.assertIn("demands authentication (Proxy-Authenticate: Basic", reason)
        self.assertIn('set http-proxy-auth = "user:password" in the --config file or SPWM_HTTP_PROXY_AUTH', reason)

    def test_ntlm_only(self) -> None:
        """
        A proxy offering only NTLM/Negotiate: the failure says we do not
        speak it and what to do instead.
        """
        d, _ = self.attempt(FakeProxy("x:y", schemes=("NTLM", "Negotiate")), "x:z")
        reason = describe_failure(self.failureResultOf(d))
        self.assertIn("(Proxy-Authenticate: NTLM; Negotiate)", reason)
        self.assertIn("cntlm or px", reason)

    def test_refused_on_command_line(self) -> None:
        """
        C{--http-proxy-auth} on the command line, also abbreviated, is
        refused with one line saying where the credentials go; in the file
        it is taken.
        """
        from spwm.config import ConfigExit
        from spwm.tap import agent

        for argv in (
            ["--http-proxy-auth=alice:secret"],
            # abbreviated, as usage.Options takes it (it was taken so)
            ["--http-proxy", "proxy.example.test:3128", "--http-proxy-au", "alice:secret"],
        ):
            with self.assertRaises(ConfigExit) as caught:
                agent.Options().parseOptions(argv)
            self.assertIn("--config file or set SPWM_HTTP_PROXY_AUTH", str(caught.exception))
            self.assertNotIn("secret", str(caught.exception))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('http-proxy = "proxy.example.test:3128"\nhttp-proxy-auth = "alice:secret"\n')
        options = agent.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options.proxy_auth(), "alice:secret")

    def test_from_the_environment(self) -> None:
        """
        C{SPWM_HTTP_PROXY_AUTH} gives the credentials when the file does
        not; a malformed value is refused with one line naming the variable.
        """
        import os

        from spwm.config import ConfigExit
        from spwm.tap import agent

        old = os.environ.get(agent.PROXY_AUTH_ENV)
        self.addCleanup(
            lambda: os.environ.pop(agent.PROXY_AUTH_ENV, None)
            if old is None
            else os.environ.__setitem__(agent.PROXY_AUTH_ENV, old)
        )
        os.environ[agent.PROXY_AUTH_ENV] = "bob:pw"
        options = agent.Options()
        options.parseOptions(["--http-proxy", "proxy.example.test:3128"])
        self.assertEqual(options.proxy_auth(), "bob:pw")
        os.environ[agent.PROXY_AUTH_ENV] = "no-colon"
        with self.assertRaises(ConfigExit) as caught:
            agent.Options().parseOptions(["--http-proxy", "proxy.example.test:3128"])
        self.assertIn("SPWM_HTTP_PROXY_AUTH: must be USER:PASSWORD", str(caught.exception))


class ContactServiceTests(SynchronousTestCase):
    """
    The contact point's listener.
    """

    def test_drain_on_stop(self) -> None:
        """
        Stopping sends go-away to every tunnel and finishes once they have
        gone, or when the drain time is over.
        """
        reactor = MemoryReactorClock()
        factory = ContactTunnelFactory(RecordingApp(), reactor)

        class Endpoint:
            def listen(self, f: Factory) -> Deferred[Any]:
                class Port:
                    def stopListening(self) -> None:
                        return None

                    def getHost(self) -> str:
                        return "fake"

                return succeed(Port())

        service = ContactListenService(Endpoint(), factory, reactor, drain=5)
        service.startService()
        agent_app = RecordingApp()
        server = factory.buildProtocol(None)
        client = AgentTunnelFactory(agent_app, reactor, "a").buildProtocol(None)
        pump = iosim.connect(server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False), greet=False, clock=reactor)
        pump.flush()
        d = service.stopService()
        pump.flush()
        self.assertIsNotNone(client.go_away_info)
        self.assertNoResult(d)
        reactor.advance(5.1)
        pump.flush()
        self.successResultOf(d)
        self.assertEqual(factory.tunnels, set())

    def listening_service(self, count: int, drain: float = 5.0) -> tuple[Any, ContactListenService, list, list]:
        """
        A started listener with C{count} agents connected in memory.
        """
        reactor = MemoryReactorClock()
        factory = ContactTunnelFactory(RecordingApp(), reactor)

        class Port:
            def stopListening(self) -> None:
                return None

            def getHost(self) -> str:
                return "fake"

        class Endpoint:
            def listen(self, f: Factory) -> Deferred[Any]:
                return succeed(Port())

        service = ContactListenService(Endpoint(), factory, reactor, drain=drain)
        service.startService()
        clients, pumps = [], []
        for n in range(count):
            server = factory.buildProtocol(None)
            client = AgentTunnelFactory(RecordingApp(), reactor, f"a{n}").buildProtocol(None)
            pump = iosim.connect(
                server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False),
                greet=False, clock=reactor,
            )
            pump.flush()
            clients.append(client)
            pumps.append(pump)
        return reactor, service, clients, pumps

    def test_drain_ends_when_the_last_tunnel_closes(self) -> None:
        """
        The stop finishes as soon as the last agent has moved, long before
        the drain time, and leaves no timer behind.
        """
        reactor, service, clients, pumps = self.listening_service(2, drain=30)
        d = service.stopService()
        for pump in pumps:
            pump.flush()
        self.assertTrue(all(c.go_away_info is not None for c in clients))
        reactor.advance(1)
        clients[0].close(0, "moving after go-away")
        pumps[0].flush()
        self.assertNoResult(d)
        reactor.advance(1)
        clients[1].close(0, "moving after go-away")
        pumps[1].flush()
        self.successResultOf(d)
        self.assertEqual(reactor.seconds(), 2)
        self.assertEqual(service.factory.tunnels, set())
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.func.__name__ == "over"], [])

    def test_drain_ends_at_drain_time(self) -> None:
        """
        An agent that does not move keeps the stop waiting until the drain
        time is over, then its tunnel is closed.
        """
        reactor, service, clients, pumps = self.listening_service(2, drain=5)
        d = service.stopService()
        clients[0].close(0, "moving after go-away")
        for pump in pumps:
            pump.flush()
        reactor.advance(4.99)
        pumps[1].flush()
        self.assertNoResult(d)
        reactor.advance(0.01)
        self.successResultOf(d)
        pumps[1].flush()
        self.assertEqual(clients[1].close_info.reason, "drain time over")
        self.assertEqual(service.factory.tunnels, set())

    def test_when_stopped_after_the_losses(self) -> None:
        """
        L{ContactListenService.when_stopped} fires once the stop is over
        and every tunnel's loss has been told (in the turn after its
        connection is lost), not at the drain's end already.
        """
        reactor, service, clients, pumps = self.listening_service(2, drain=5)
        app = service.factory.app
        stopped = service.when_stopped()
        # what the app had been told of when the Deferred fired
        told = stopped.addCallback(lambda _: [call for call in app.calls if call[0] == "lost"])
        d = service.stopService()
        reactor.advance(5)
        self.successResultOf(d)
        self.assertNoResult(told)
        for pump in pumps:
            pump.flush()
        self.assertEqual(len(self.successResultOf(told)), 2)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_no_drain(self) -> None:
        """
        A drain time of 0 (C{--drain-time 0}): the agents are told to go
        away and every tunnel is closed in the next turn, with one line
        saying so.
        """
        reactor, service, clients, pumps = self.listening_service(2, drain=0)
        with capturedLogs() as events:
            d = service.stopService()
        self.assertEqual(
            [formatEvent(e) for e in events if e.get("log_namespace", "").endswith("ContactListenService")],
            ["closing 2 tunnel(s) at once (no drain time)"],
        )
        reactor.advance(0)
        self.successResultOf(d)
        for pump in pumps:
            pump.flush()
        self.assertTrue(all(c.go_away_info is not None for c in clients))
        self.assertEqual([c.close_info.reason for c in clients], ["drain time over"] * 2)
        self.assertEqual(service.factory.tunnels, set())

    def test_no_tunnels_no_wait(self) -> None:
        """
        Without tunnels the stop is over at once.
        """
        reactor, service, clients, pumps = self.listening_service(0)
        self.assertIsNone(service.stopService())
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_listen_fails_later(self) -> None:
        """
        An endpoint that fails to listen after the start: one error line
        (no traceback) and the reactor is stopped.
        """
        later: Deferred[Any] = Deferred()

        class Endpoint:
            def listen(self, f: Factory) -> Deferred[Any]:
                return later

        class Reactor(Clock):
            running = True
            stopped = 0

            def stop(self) -> None:
                self.stopped += 1

        reactor = Reactor()
        service = ContactListenService(
            Endpoint(), ContactTunnelFactory(RecordingApp(), reactor), reactor, description="tcp:443", reactor=reactor
        )
        with capturedLogs() as events:
            service.startService()
            later.errback(CannotListenError("", 443, OSError(98, "Address already in use")))
        [line] = [e for e in events if e.get("log_level") is not None and e["log_level"].name in ("error", "critical")]
        self.assertNotIn("log_failure", line)
        self.assertIn("address already in use", line["error"])
        self.assertEqual(reactor.stopped, 1)


class DescribeAlertTests(SynchronousTestCase):
    """
    An alert the contact point sent about the agent's client certificate
    (mutual TLS) is said as such; other TLS errors keep OpenSSL's words.
    """

    def error(self, reason: str) -> Any:
        from OpenSSL import SSL

        return SSL.Error([("SSL routines", "", reason)])

    def test_certificate_required(self) -> None:
        self.assertEqual(
            describe_failure(self.error("tlsv13 alert certificate required")),
            "TLS error: the contact point asks for a client certificate (mutual TLS: give --client-cert and"
            " --client-key) (tlsv13 alert certificate required)",
        )

    def test_certificate_refused(self) -> None:
        for reason in ("sslv3 alert bad certificate", "tls alert certificate expired", "tlsv1 alert unknown ca"):
            self.assertEqual(
                describe_failure(self.error(reason)),
                f"TLS error: the contact point refused this agent's client certificate ({reason}; its log says why)",
            )

    def test_other_errors(self) -> None:
        self.assertEqual(
            describe_failure(self.error("tlsv1 alert protocol version")), "TLS error: tlsv1 alert protocol version"
        )


class PromptBucketTests(SynchronousTestCase):
    """
    L{_RetryPolicy.prompt}: how often a young tunnel lost by the network
    may be tried again at once.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.floats(min_value=0.0, max_value=30.0, allow_nan=False), min_size=1, max_size=60))
    def test_bounded(self, gaps: list[float]) -> None:
        """
        Whatever the times of the losses, the prompt attempts granted up to
        any moment are at most L{PROMPT_BURST} plus one per L{STEADY_UP}
        since the first loss; losses L{STEADY_UP} apart are all granted.
        """
        policy = _RetryPolicy(lambda attempt: 1.0)
        now, first, granted = 0.0, None, 0
        for gap in gaps:
            now += gap
            first = now if first is None else first
            granted += policy.prompt(now)
            self.assertLessEqual(granted, PROMPT_BURST + (now - first) / STEADY_UP + 1e-9)
        spaced = _RetryPolicy(lambda attempt: 1.0)
        self.assertTrue(all(spaced.prompt(i * STEADY_UP) for i in range(len(gaps))))
