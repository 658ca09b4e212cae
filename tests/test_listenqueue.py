"""
Tests for L{spwm.listenqueue}: the tunnel listener's backlog and the watch
on the kernel's listen-queue counters.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from spwm.listenqueue import (
    FALLBACK_BACKLOG,
    ListenCounters,
    ListenQueueWatch,
    parse_netstat,
    read_netstat,
    system_backlog,
    with_backlog,
)
from spwm.tap.assembly import build_contact
from spwm.tap.options import ContactConfig

NETSTAT = """\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPHPHits
TcpExt: 0 0 7 9 100
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
"""


class BacklogTests(SynchronousTestCase):
    """
    The backlog and how it reaches the endpoint description.
    """

    def test_system_backlog(self) -> None:
        """
        The system's somaxconn, or the fallback when it is missing or not a
        positive number.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("65535\n")
        self.assertEqual(system_backlog(path), 65535)
        with open(path, "w") as f:
            f.write("nonsense")
        self.assertEqual(system_backlog(path), FALLBACK_BACKLOG)
        with open(path, "w") as f:
            f.write("0")
        self.assertEqual(system_backlog(path), FALLBACK_BACKLOG)
        self.assertEqual(system_backlog(self.mktemp()), FALLBACK_BACKLOG)

    def test_with_backlog(self) -> None:
        """
        Added to tcp, tcp6, unix and bare-port descriptions, unless one is
        given; others are left alone.
        """
        self.assertEqual(with_backlog("tcp:443", 100), "tcp:443:backlog=100")
        self.assertEqual(
            with_backlog("tcp6:443:interface=\\:\\:", 100), "tcp6:443:interface=\\:\\::backlog=100"
        )
        self.assertEqual(with_backlog("443", 7), "443:backlog=7")
        self.assertEqual(with_backlog("unix:/tmp/s", 7), "unix:/tmp/s:backlog=7")
        self.assertEqual(with_backlog("tcp:443:backlog=10", 100), "tcp:443:backlog=10")
        self.assertEqual(with_backlog("systemd:domain=INET:index=0", 100), "systemd:domain=INET:index=0")

    def test_reaches_listen(self) -> None:
        """
        C{--listen-backlog} is the backlog the contact point listens with;
        without it, the system's.
        """
        for given, expected in ((77, 77), (None, system_backlog())):
            reactor = MemoryReactorClock()
            options = {"plaintext": True, "listen": "tcp:0"}
            if given is not None:
                options["listen-backlog"] = given
            config = ContactConfig.from_options(options)
            self.assertEqual(config.listen_backlog, given)
            built = build_contact(config, reactor)
            built.listener.startService()
            self.assertEqual(reactor.tcpServers[0][2], expected)


class CounterTests(SynchronousTestCase):
    """
    Reading the kernel's counters.
    """

    def test_parse(self) -> None:
        self.assertEqual(parse_netstat(NETSTAT), ListenCounters(7, 9))
        self.assertIsNone(parse_netstat("IpExt: A\nIpExt: 1\n"))
        self.assertIsNone(parse_netstat("TcpExt: ListenOverflows\nTcpExt: 1\n"))
        self.assertIsNone(parse_netstat("TcpExt: ListenOverflows ListenDrops\nTcpExt: 1\n"))
        self.assertIsNone(parse_netstat(""))

    def test_read(self) -> None:
        """
        The file as the kernel writes it (where there is one), and
        C{None} without it.
        """
        self.assertIsNone(read_netstat(self.mktemp()))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(NETSTAT)
        self.assertEqual(read_netstat(path), ListenCounters(7, 9))


class WatchTests(SynchronousTestCase):
    """
    L{ListenQueueWatch}: a slow timer while running, one throttled line
    when the counters grew.
    """

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.clock = Clock()
        self.counters: ListenCounters | None = ListenCounters(5, 5)
        self.watch = ListenQueueWatch(self.clock, "tcp:443", 4096, interval=10.0, read=lambda: self.counters)

    def lines(self) -> list[dict]:
        return [e for e in self.events if e.get("log_namespace", "").startswith("spwm.listenqueue")]

    def test_quiet(self) -> None:
        """
        No growth, no line; one timer while running, none after the stop.
        """
        self.watch.startService()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(100)
        self.assertEqual(self.lines(), [])
        self.watch.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_growth_logged_throttled(self) -> None:
        """
        Growth gives a warning saying the counters are host-wide, at most
        one a minute; the status sums the growth.
        """
        self.watch.startService()
        self.counters = ListenCounters(8, 10)
        self.clock.advance(10)
        lines = self.lines()
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["log_level"], LogLevel.warn)
        self.assertEqual((lines[0]["overflows"], lines[0]["drops"]), (3, 5))
        self.assertIn("host-wide", lines[0]["log_format"])
        self.assertEqual(lines[0]["backlog"], 4096)
        for i in range(5):
            self.counters = ListenCounters(9 + i, 11 + i)
            self.clock.advance(10)
        self.assertEqual(len(self.lines()), 1)
        self.counters = ListenCounters(20, 20)
        self.clock.advance(10)
        lines = self.lines()
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[1]["suppressed"], 5)
        self.assertEqual(self.watch.status(), {"host_listen_overflows": 15, "host_listen_drops": 15})

    def test_no_counters(self) -> None:
        """
        Without the kernel's file, no timer at all.
        """
        self.counters = None
        self.watch.startService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.watch.stopService()


class _Port:
    def __init__(self) -> None:
        self.reading = True
        self.calls: list[str] = []

    def stopReading(self) -> None:
        self.reading = False
        self.calls.append("stop")

    def startReading(self) -> None:
        self.reading = True
        self.calls.append("start")


class _Tunnel:
    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.established: Deferred = Deferred()

    def when_established(self):
        return self.established


class HandshakeGateTests(SynchronousTestCase):
    """
    L{HandshakeGate}: the port stops accepting while C{limit} connections
    handshake, and accepts again when one ends, established or not.
    """

    def test_pause_and_resume(self) -> None:
        from twisted.python.failure import Failure

        from spwm.listenqueue import HandshakeGate

        gate = HandshakeGate(2)
        port = _Port()
        gate.set_port(port)
        first, second, third = _Tunnel(), _Tunnel(), _Tunnel()
        gate.connection(first)
        self.assertTrue(port.reading)
        gate.connection(second)
        self.assertFalse(port.reading)
        self.assertEqual(gate.status(), {"handshaking": 2, "accept_pauses": 1})
        first.established.callback(first)
        self.assertTrue(port.reading)
        gate.connection(third)
        self.assertFalse(port.reading)
        # a handshake that fails frees its place too; its failure is consumed
        second.established.errback(Failure(ConnectionError("lost")))
        self.assertTrue(port.reading)
        third.established.callback(third)
        self.assertEqual(gate.status(), {"handshaking": 0, "accept_pauses": 2})
        self.assertEqual(port.calls, ["stop", "start", "stop", "start"])

    def test_port_later_and_released(self) -> None:
        """
        Connections counted before the port is known pause it when it
        comes; once released the port is left alone.
        """
        from spwm.listenqueue import HandshakeGate

        gate = HandshakeGate(1)
        tunnel = _Tunnel()
        gate.connection(tunnel)
        port = _Port()
        self.assertIs(gate.set_port(port), port)
        self.assertFalse(port.reading)
        gate.release()
        tunnel.established.callback(tunnel)
        self.assertEqual(port.calls, ["stop"])

    def test_several_ports(self) -> None:
        """
        With C{--workers} the shared port and the worker's own pause
        together; one added while paused starts paused.
        """
        from spwm.listenqueue import HandshakeGate

        gate = HandshakeGate(1)
        shared, own = _Port(), _Port()
        gate.set_port(shared)
        tunnel = _Tunnel()
        gate.connection(tunnel)
        gate.set_port(own)
        self.assertEqual((shared.reading, own.reading), (False, False))
        tunnel.established.callback(tunnel)
        self.assertEqual((shared.reading, own.reading), (True, True))
        self.assertEqual((shared.calls, own.calls), (["stop", "start"], ["stop", "start"]))
        self.assertEqual(gate.pauses, 1)

    def test_wired(self) -> None:
        """
        The contact point's factory tells the gate of each connection;
        --max-handshakes is its limit.
        """
        config = ContactConfig.from_options({"plaintext": True, "listen": "tcp:0", "max-handshakes": 3})
        self.assertEqual(config.limits.tunnel.max_handshaking, 3)
        built = build_contact(config, MemoryReactorClock())
        self.assertIsNotNone(built.factory.on_connection)
        gate = built.factory.on_connection.__self__
        self.assertEqual(gate.limit, 3)
        built.factory.buildProtocol(None)
        self.assertEqual(gate.handshaking, 1)
