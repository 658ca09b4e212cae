"""
C{--udp-path auto} in memory (L{spwm.session.quicpath}, and the QUIC kind
of path in L{spwm.session.carrier}): the probe's schedule and backoff with
a fake clock, and a session whose second path is of kind QUIC (real tunnel
protocols joined in memory, C{iosim}): attached as QUIC on both halves,
media moved to it after the hold, back to TCP when it stalls, and to it
again when it answers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from spwm.session.carrier import path_kind
from spwm.session.paths import PathKind
from spwm.session.quicpath import Keepers, QuicProber, quic_port_of
from spwm.tunnel.frames import ChannelKind
from tests.test_session_carrier import Bed, _Conn


class FakeFront:
    def __init__(self, hello: dict[str, Any]) -> None:
        self.peer_hello = hello
        self.is_open = True


class ProberTests(SynchronousTestCase):
    """
    L{QuicProber}: when it probes, how it backs off.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.front: FakeFront | None = FakeFront({"paths": 1, "quic_port": 4433})
        self.attempts: list[tuple[int, Deferred[Any]]] = []

        def connect(port: int) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.attempts.append((port, d))
            return d

        self.prober = QuicProber(self.clock, lambda: self.front, connect, retry=5.0, retry_cap=60.0)

    def fail_at(self, delays: list[float]) -> None:
        """
        Each attempt fails; the next comes after each of C{delays}, not before.
        """
        for delay in delays:
            count = len(self.attempts)
            self.attempts[-1][1].errback(ConnectionError("no answer"))
            self.clock.advance(delay - 0.01)
            self.assertEqual(len(self.attempts), count, delay)
            self.clock.advance(0.02)
            self.assertEqual(len(self.attempts), count + 1, delay)

    def test_port_from_the_welcome(self) -> None:
        """
        Only an int port in range counts.
        """
        self.assertEqual(quic_port_of({"quic_port": 443}), 443)
        for bad in ({}, {"quic_port": "443"}, {"quic_port": 0}, {"quic_port": 70000}, {"quic_port": True}):
            self.assertIsNone(quic_port_of(bad), bad)

    def test_not_offered(self) -> None:
        """
        A welcome without C{quic_port}: no probe, ever.
        """
        self.front = FakeFront({"paths": 1})
        self.prober.session_up()
        self.clock.advance(600)
        self.assertEqual(self.attempts, [])
        self.assertIsNone(self.prober.status()["quic_port"])

    def test_first_probe_at_once(self) -> None:
        """
        The session is up on TCP: the QUIC probe starts in the background
        at once, to the welcome's port; one at a time.
        """
        self.prober.session_up()
        self.assertEqual(self.attempts, [])
        self.clock.advance(0)
        self.assertEqual([port for port, _ in self.attempts], [4433])
        self.prober.session_up()
        self.clock.advance(10)
        self.assertEqual(len(self.attempts), 1)

    def test_backoff(self) -> None:
        """
        Failed probes: again after 5 s, doubling up to 60 s, and staying there.
        """
        self.prober.session_up()
        self.clock.advance(0)
        self.fail_at([5, 10, 20, 40, 60, 60])
        self.assertEqual(self.prober.probe_failures, 6)

    def test_repeated_failure_logged_once(self) -> None:
        """
        A probe that fails as the last one did (UDP blocked for good) is not
        logged again at every try: once, then when the reason changes or
        after ten minutes with the count of those not logged; after the
        path attached and went, a failure is logged again.
        """
        with capturedLogs() as events:
            self.prober.session_up()
            self.clock.advance(0)
            self.fail_at([5, 10, 20, 40] + [60] * 10)
            lines = [formatEvent(e) for e in events if "no QUIC path" in e.get("log_format", "")]
            self.assertEqual(
                lines,
                [
                    "no QUIC path to the contact point (UDP port 4433): no answer; media stays on TCP, next try in 5 s",
                    "no QUIC path to the contact point (UDP port 4433): no answer; media stays on TCP, next try in 60 s"
                    " (12 more like it in 10 min not logged)",
                ],
            )
            del events[:]
            self.attempts[-1][1].errback(ConnectionError("refused"))
            self.clock.advance(60)
            path = _Conn()
            self.attempts[-1][1].callback(path)
            self.prober.attached(path)
            path.lose()
            self.clock.advance(60)
            self.attempts[-1][1].errback(ConnectionError("refused"))
            lines = [formatEvent(e) for e in events if "no QUIC path" in e.get("log_format", "")]
            self.assertEqual(len(lines), 2)
            self.assertTrue(all(": refused;" in line for line in lines))

    def test_lost_path(self) -> None:
        """
        An attached path lost soon after: probed again after a growing
        delay (flapping is bounded); one that held up for the cap or
        longer: again after 5 s.
        """
        self.prober.session_up()
        self.clock.advance(0)
        for delay in (5.0, 10.0, 20.0):
            path = _Conn()
            self.attempts[-1][1].callback(path)
            self.prober.attached(path)
            self.assertTrue(self.prober.status()["quic_path"])
            self.clock.advance(1)
            count = len(self.attempts)
            path.lose()
            self.clock.advance(delay - 0.01)
            self.assertEqual(len(self.attempts), count)
            self.clock.advance(0.02)
            self.assertEqual(len(self.attempts), count + 1)
        path = _Conn()
        self.attempts[-1][1].callback(path)
        self.prober.attached(path)
        self.clock.advance(61)
        path.lose()
        self.clock.advance(5)
        self.assertEqual(len(self.attempts), 5)
        self.assertEqual((self.prober.attachments, self.prober.losses), (4, 4))

    def test_never_attached(self) -> None:
        """
        A QUIC connection that is up but never attached (refused) counts
        as a failed probe.
        """
        self.prober.session_up()
        self.clock.advance(0)
        path = _Conn()
        self.attempts[-1][1].callback(path)
        path.lose()
        self.assertEqual((self.prober.probe_failures, self.prober.attachments), (1, 0))
        self.clock.advance(5)
        self.assertEqual(len(self.attempts), 2)

    def test_session_down(self) -> None:
        """
        Down: no probe; a probe that comes up after is closed; stop closes
        the path.
        """
        self.prober.session_up()
        self.clock.advance(0)
        self.prober.session_down()
        late = _Conn()
        self.attempts[-1][1].callback(late)
        self.assertEqual(late.closed, ["the session is gone"])
        self.clock.advance(600)
        self.assertEqual(len(self.attempts), 1)
        self.prober.session_up()
        self.clock.advance(0)
        kept = _Conn()
        self.attempts[-1][1].callback(kept)
        self.prober.stop()
        self.assertEqual(kept.closed, ["agent stopping"])

    def test_keepers(self) -> None:
        """
        L{Keepers} tells each part.
        """
        told: list[tuple[str, Any]] = []

        class Part:
            def __getattr__(self, name: str) -> Any:
                return lambda *args: told.append((name, args))

        keepers = Keepers(Part(), Part())
        keepers.session_up()
        keepers.attached(1)
        keepers.lost(2)
        keepers.session_down()
        self.assertEqual(
            told,
            [("session_up", ()), ("session_up", ()), ("attached", (1,)), ("attached", (1,)),
             ("lost", (2,)), ("lost", (2,)), ("session_down", ()), ("session_down", ())],
        )


class QuicKindBed(Bed):
    def connect_quic(self) -> Any:
        """
        A connection whose transports say they are QUIC.
        """
        server = self.contact_factory.buildProtocol(None)
        client = self.agent_factory.buildProtocol(None)
        server_transport = iosim.FakeTransport(server, True)
        client_transport = iosim.FakeTransport(client, False)
        for transport in (server_transport, client_transport):
            transport.path_kind = PathKind.QUIC  # type: ignore[attr-defined]
            # QUIC's own round-trip estimate (QuicTunnelTransport.rtt)
            transport.rtt = (0.002, 0.001)  # type: ignore[attr-defined]
        pump = iosim.connect(server, server_transport, client, client_transport, greet=False, clock=self.clock)
        self.pumps.append((pump, client, server))
        self.flush()
        return client, server


class QuicPathTests(SynchronousTestCase):
    """
    A session with a TCP path and a QUIC path.
    """

    def setUp(self) -> None:
        self.bed = QuicKindBed()
        self.a1, self.c1 = self.bed.connect()
        self.a2, self.c2 = self.bed.connect_quic()
        front = self.bed.agent.paths.front
        assert front is not None
        self.front = front
        self.contact_front = self.bed.contact.paths.fronts[0]
        self.cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()

    def media(self, seconds: float, agent: bool = True, contact: bool = False) -> None:
        """
        RTP every 20 ms for C{seconds}: from the agent, and or from the contact point.
        """
        for _ in range(int(round(seconds / 0.02))):
            if agent:
                self.front.send_datagram(self.cid, b"up")
            if contact:
                self.contact_front.send_datagram(self.cid, b"down")
            self.bed.advance(0.02)

    def media_until(self, condition: Any, bound: float, **how: bool) -> float:
        """
        Media (as L{media}) until C{condition()}, at most C{bound} s.

        @return: the time it took.
        """
        start = self.bed.clock.seconds()
        for _ in range(int(round(bound / 0.02))):
            if condition():
                return self.bed.clock.seconds() - start
            self.media(0.02, **how)
        self.assertTrue(condition(), f"not within {bound} s")
        return self.bed.clock.seconds() - start

    def test_attached_as_quic(self) -> None:
        """
        Both halves know the second path as QUIC; SIP stays on TCP.
        """
        self.assertEqual([path_kind(p) for p in self.front.paths], [PathKind.TCP, PathKind.QUIC])
        self.assertEqual([path_kind(p) for p in self.contact_front.paths], [PathKind.TCP, PathKind.QUIC])
        kinds = {p["path_id"]: p["kind"] for p in self.front.scheduler.snapshot()["paths"]}
        self.assertEqual(kinds, {0: "tcp", 1: "quic"})
        self.assertEqual(self.front.summary()["carrier_on"], "tcp")
        self.assertEqual(self.front.summary()["paths"], ["quic", "tcp"])

    def test_media_moves_after_the_hold(self) -> None:
        """
        Media starts on TCP and moves to QUIC once the QUIC path has held
        up for the hold (1 s), not before; on both halves; SIP stays.
        """
        self.media(0.5, contact=True)
        self.assertEqual((self.front.media_kind(), self.contact_front.media_kind()), ("tcp", "tcp"))
        self.media_until(
            lambda: self.front.media_kind() == "quic" and self.contact_front.media_kind() == "quic", 2.0, contact=True
        )
        self.assertEqual(self.front.scheduler.carrier(), 0)
        self.assertEqual(self.contact_front.scheduler.carrier(), 0)
        self.assertEqual(self.front.summary()["media_switches"], 1)
        got = len(self.bed.contact.media.got)
        self.media(0.2, contact=True)
        self.assertEqual(len(self.bed.contact.media.got) - got, 10)

    def test_quiet_quic_path_does_not_flap(self) -> None:
        """
        The contact point hears a QUIC path that carries no media of the
        agent only by its pings (every 100 ms): it is no stalled path, so
        the contact point's hold does not grow and its media moves too.
        """
        self.media(2.0, agent=False, contact=True)
        snapshot = self.contact_front.scheduler.snapshot()
        self.assertEqual([p["stalls"] for p in snapshot["paths"]], [0, 0])
        self.assertEqual(self.contact_front.media_kind(), "quic")

    def test_contact_point_drops_silent_quic_path(self) -> None:
        """
        UDP cut both ways mid-call: the agent closes its QUIC path after
        its dead bound, but its close cannot arrive; the contact point,
        which still hears the agent on TCP, drops the silent QUIC path
        within a bound like the agent's (not at the tunnel's keepalive
        timeout, 45 s), with one line.
        """
        self.media_until(
            lambda: self.front.media_kind() == "quic" and self.contact_front.media_kind() == "quic", 2.0, contact=True
        )
        self.bed.stalled.add(1)
        with capturedLogs() as events:
            took = self.media_until(lambda: len(self.front.paths) == 1, 3.0, contact=True)
            self.assertLessEqual(took, 1.5)
            took = self.media_until(lambda: len(self.contact_front.paths) == 1, 3.0, contact=True)
            self.assertLessEqual(took, 0.5)
        self.assertTrue(self.c2.close_info is not None or not self.c2.is_open)
        lines = [formatEvent(e) for e in events if "silent while the others are heard" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(self.contact_front.media_kind(), "tcp")

    def test_fallback_and_return(self) -> None:
        """
        On QUIC, the QUIC path stops answering (UDP cut): the agent's
        media is back on TCP within 200 ms, the contact point's too, no
        carrier move; it answers again: media back on QUIC after the hold
        (longer now: the path stalled), not at once.
        """
        self.media_until(
            lambda: self.front.media_kind() == "quic" and self.contact_front.media_kind() == "quic", 2.0, contact=True
        )
        self.media(0.3, contact=True)
        self.bed.stalled.add(1)
        took = self.media_until(lambda: self.front.media_kind() == "tcp", 1.0, contact=True)
        self.assertLessEqual(took, 0.2)
        took = self.media_until(lambda: self.contact_front.media_kind() == "tcp", 1.0, contact=True)
        self.assertLessEqual(took, 0.2)
        self.assertEqual((self.front.switches, self.contact_front.switches), (0, 0))
        got = len(self.bed.contact.media.got), len(self.bed.agent.media.got)
        self.media(0.2, contact=True)
        self.assertEqual((len(self.bed.contact.media.got) - got[0], len(self.bed.agent.media.got) - got[1]), (10, 10))
        self.bed.stalled.discard(1)
        self.media(0.5, contact=True)
        # the best path is still TCP (copies may go on QUIC too for a
        # while after the stall: the scheduler's duplication window)
        self.assertEqual(self.front.scheduler.snapshot()["media"], [0])
        # back on QUIC as the best path; the stall's lost datagrams keep
        # copies on TCP too for a while (losses that keep coming hold the
        # duplication on: the scheduler's lossy window)
        self.media_until(
            lambda: self.front.scheduler.snapshot()["media"] == [1]
            and self.contact_front.scheduler.snapshot()["media"] == [1],
            5.0,
            contact=True,
        )
        self.assertGreaterEqual(self.front.scheduler.media_switches, 3)
        self.assertIn(self.bed.agent.paths.status()["session"]["media_on"], ("quic", "tcp+quic"))
        self.assertEqual(self.front.media_kind(), self.bed.agent.paths.status()["session"]["media_on"])

    def test_flapping_bounded(self) -> None:
        """
        A QUIC path that keeps stalling gets media back later and later
        (the hold doubles with each stall of the last minute), so media
        moves at most a few times however often the path breaks.
        """
        self.media_until(lambda: self.front.media_kind() == "quic", 2.0, contact=True)
        holds = []
        for _ in range(3):
            self.bed.stalled.add(1)
            self.media_until(lambda: self.front.scheduler.snapshot()["media"] == [0], 1.0, contact=True)
            self.media(0.3, contact=True)
            self.bed.stalled.discard(1)
            holds.append(
                self.media_until(lambda: self.front.scheduler.snapshot()["media"] == [1], 20.0, contact=True)
            )
        self.assertEqual(len(holds), 3)
        # at least the scheduler's hold, and longer each time (its policy
        # says by how much: PathLimits.switch_hold, max_switch_hold)
        self.assertGreaterEqual(holds[0], self.front.scheduler.limits.switch_hold)
        self.assertLess(holds[0], holds[1])
        self.assertLess(holds[1], holds[2])
        # one move each way per break, no more
        self.assertLessEqual(self.front.scheduler.media_switches, 7)
