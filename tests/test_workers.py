"""
Tests for L{spwm.workers}: the shares of each worker, the shared listener
and the supervisor (on a fake reactor).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
from typing import Any

import attrs

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spwm.errors import ConfigError
from spwm.tap import contact
from spwm.tap.options import ContactConfig
from spwm.testing.ports import free_port
from spwm.workers import (
    HANDON_ENV,
    MAX_RESTARTS,
    RESTART_HOLD,
    STARTED_ENV,
    STARTED_FD,
    STARTED_WORD,
    WORKER_ENV,
    ReusePortEndpoint,
    WorkerSpec,
    WorkerSupervisor,
    EMBEDDED_REGISTRAR_WARNING,
    build_workers,
    listen_address,
    media_slice,
    offset_port,
    parse_workers,
    plugin_arguments,
    report_started,
    sweep_handon_dirs,
    usable_cpus,
    worker_command,
    worker_config,
    worker_warnings,
)


class SharesTests(SynchronousTestCase):
    def test_parse_workers(self) -> None:
        self.assertEqual(parse_workers("3"), 3)
        self.assertEqual(parse_workers(2), 2)
        self.assertEqual(parse_workers("auto"), usable_cpus())
        self.assertRaises(ValueError, parse_workers, "0")
        self.assertRaises(ValueError, parse_workers, "many")
        self.assertEqual(parse_workers("256"), 256)
        with self.assertRaises(ValueError) as raised:
            parse_workers("1000")
        self.assertEqual(str(raised.exception), "must be at most 256 (one process per core), not 1000")

    def test_option(self) -> None:
        options = contact.Options()
        options.parseOptions(["--plaintext", "--workers", "4"])
        self.assertEqual(options.config.workers, 4)
        self.assertEqual(ContactConfig.from_options({"plaintext": True}).workers, 1)

    def test_media_slice(self) -> None:
        """
        Whole even/odd pairs, disjoint, covering the range.
        """
        slices = [media_slice((50000, 50999), i, 3) for i in range(3)]
        self.assertEqual(slices, [(50000, 50331), (50332, 50665), (50666, 50999)])
        for low, high in slices:
            self.assertEqual((low % 2, high % 2), (0, 1))
        self.assertEqual(media_slice((50001, 50010), 0, 2), (50002, 50005))
        self.assertEqual(media_slice((50001, 50010), 1, 2), (50006, 50009))
        with self.assertRaises(ConfigError):
            media_slice((50000, 50003), 0, 3)

    def test_offset_port(self) -> None:
        self.assertEqual(offset_port("tcp:9090:interface=127.0.0.1", 2), "tcp:9092:interface=127.0.0.1")
        self.assertEqual(offset_port("tcp:9090", 1), "tcp:9091")
        with self.assertRaises(ConfigError):
            offset_port("unix:/tmp/x", 1)

    def test_worker_config(self) -> None:
        config = ContactConfig.from_options(
            {"plaintext": True, "listen": "tcp:4433", "workers": 2, "sip-address": "127.0.0.1:5070",
             "media-ports": "50000-50999", "state-file": "/var/lib/spwm/state", "status-listen": "tcp:9090"}
        )  # fmt: skip
        second = worker_config(config, WorkerSpec(1, 2, 0))
        self.assertEqual(second.sip_address, ("127.0.0.1", 5071))
        self.assertEqual(second.media_ports, (50500, 50999))
        self.assertEqual(second.state_file, "/var/lib/spwm/state.1")
        self.assertEqual(second.status.listen, "tcp:9091")
        self.assertEqual(second.listen, "tcp:4433")
        first = worker_config(config, WorkerSpec(0, 2, 0))
        self.assertEqual((first.sip_address, first.media_ports), (("127.0.0.1", 5070), (50000, 50499)))
        # the workers' own tunnel ports: by default after the shared one
        self.assertEqual((first.worker_ports, first.worker_index), (4434, 0))
        self.assertEqual((second.worker_ports, second.worker_index), (4434, 1))
        self.assertIsNone(second.handon_dir)
        self.assertEqual(worker_config(config, WorkerSpec(1, 2, 0, "/tmp/d")).handon_dir, "/tmp/d")
        given = worker_config(attrs.evolve(config, worker_ports=7000), WorkerSpec(1, 2, 0))
        self.assertEqual(given.worker_ports, 7000)
        # one QUIC port each (a QUIC path reaches its session's worker)
        quic = attrs.evolve(config, plaintext=False, cert="c.pem", key="k.pem", quic_listen=("127.0.0.1", 4433))
        self.assertEqual(worker_config(quic, WorkerSpec(1, 2, 0)).quic_listen, ("127.0.0.1", 4434))
        self.assertEqual(worker_config(quic, WorkerSpec(0, 2, 0)).quic_listen, ("127.0.0.1", 4433))
        any_port = attrs.evolve(quic, quic_listen=("127.0.0.1", 0))
        self.assertEqual(worker_config(any_port, WorkerSpec(1, 2, 0)).quic_listen, ("127.0.0.1", 0))

    def test_spec_from_environment(self) -> None:
        self.assertIsNone(WorkerSpec.from_environment({}))
        self.assertEqual(WorkerSpec.from_environment({WORKER_ENV: "1/2/77"}), WorkerSpec(1, 2, 77))
        self.assertEqual(
            WorkerSpec.from_environment({WORKER_ENV: "1/2/77", HANDON_ENV: "/tmp/d"}), WorkerSpec(1, 2, 77, "/tmp/d")
        )
        for bad in ("x", "2/2/1", "1/2"):
            with self.assertRaises(ConfigError):
                WorkerSpec.from_environment({WORKER_ENV: bad})

    def test_command(self) -> None:
        argv = ["twistd", "-n", "--logfile", "x", "spwm-contact", "--workers", "2", "--plaintext"]
        self.assertEqual(plugin_arguments(argv), ["--workers", "2", "--plaintext"])
        self.assertEqual(worker_command(argv)[-5:], ["--pidfile=", "spwm-contact", "--workers", "2", "--plaintext"])
        with self.assertRaises(ConfigError):
            plugin_arguments(["python", "embed.py"])

    def test_build_checks(self) -> None:
        """
        The supervisor refuses at build what a worker could not do.
        """
        argv = ["twistd", "spwm-contact"]
        for values, key in (
            ({"listen": "unix:/tmp/s"}, "listen"),
            ({"listen": "tcp:0"}, "listen"),
            ({"listen": "tcp:4433", "media-ports": "50000-50001"}, "media-ports"),
            ({"listen": "tcp:4433", "sip-address": "127.0.0.1:65535"}, "sip-address"),
            ({"listen": "tcp:4433", "worker-ports": 65535}, "worker-ports"),
            ({"listen": "tcp:4433", "worker-ports": 4432}, "worker-ports"),
            ({"listen": "tcp:4433", "sip-address": "127.0.0.1:4435"}, "worker-ports"),
            ({"listen": "tcp:4433", "worker-ports": 5071}, "worker-ports"),
            ({"listen": "tcp:4433", "worker-ports": 9091, "status-listen": "tcp:9090"}, "worker-ports"),
        ):
            config = ContactConfig.from_options({"plaintext": True, "workers": 2, **values})
            with self.assertRaises(ConfigError) as caught:
                build_workers(config, Clock(), argv)
            self.assertEqual(caught.exception.key, key, values)
        config = ContactConfig.from_options({"plaintext": True, "workers": 2, "listen": "tcp:4433"})
        built = build_workers(config, Clock(), argv)
        self.assertEqual(built.service.count, 2)
        self.assertEqual(listen_address("tcp6:4433"), (socket.AF_INET6, "::", 4433))


class ReusePortTests(TestCase):
    def test_two_listeners_one_port(self) -> None:
        """
        Two listeners bind the same port (as two workers do), and both
        accept; a listener without SO_REUSEPORT on it is refused.
        """
        port = free_port()
        factory = Factory.forProtocol(Protocol)
        ports = []
        for _ in range(2):
            d = ReusePortEndpoint(reactor, socket.AF_INET, "127.0.0.1", port, 16).listen(factory)
            ports.append(self.successResultOf(d))
        for p in ports:
            self.addCleanup(p.stopListening)
            self.assertEqual(p.getHost().port, port)
        plain = socket.socket()
        self.addCleanup(plain.close)
        self.assertRaises(OSError, plain.bind, ("127.0.0.1", port))

    def test_refused(self) -> None:
        held = socket.socket()
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        d = ReusePortEndpoint(reactor, socket.AF_INET, "127.0.0.1", held.getsockname()[1], 16).listen(
            Factory.forProtocol(Protocol)
        )
        from twisted.internet.error import CannotListenError

        self.failureResultOf(d, CannotListenError)


class FakeProcess:
    def __init__(self, reactor: FakeReactor, proto: Any, env: dict) -> None:
        self.reactor = reactor
        self.proto = proto
        self.env = env
        self.signals: list[int] = []
        self.pid = 1000 + len(reactor.spawned)

    def signalProcess(self, sig: int) -> None:
        self.signals.append(sig)

    def started(self) -> None:
        """
        The worker says it has started (as L{report_started} writes it).
        """
        self.proto.childDataReceived(STARTED_FD, STARTED_WORD)

    def end(self, code: int | None = None, sig: int | None = None) -> None:
        if code == 0:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code, sig))
        self.proto.processEnded(reason)


class FakeReactor(Clock):
    running = True

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []

    def spawnProcess(self, proto: Any, executable: str, args: list, env: dict, childFDs: Any = None) -> FakeProcess:
        process = FakeProcess(self, proto, env)
        process.childFDs = childFDs
        self.spawned.append(process)
        proto.makeConnection(process)
        return process


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.stopped: list[bool] = []
        self.supervisor = WorkerSupervisor(
            self.reactor, 2, ["python", "x"], stop_time=5.0, env={}, stop=lambda: self.stopped.append(True)
        )
        self.supervisor.startService()
        directory = self.supervisor.handon_dir
        assert directory is not None
        self.addCleanup(shutil.rmtree, directory, True)

    def test_warnings(self) -> None:
        """
        What the configuration cannot do with several workers is said once,
        as a warning, when they start: the embedded registrar (no
        C{--sip-proxy}) is one per worker.
        """
        from spwm.tap import contact

        def warnings(*argv: str) -> tuple[str, ...]:
            options = contact.Options()
            options.parseOptions(["--plaintext", "--workers", "2", *argv])
            return worker_warnings(options.config)

        self.assertEqual(warnings(), (EMBEDDED_REGISTRAR_WARNING,))
        self.assertEqual(warnings("--sip-proxy", "192.0.2.7:5060"), ())
        supervisor = WorkerSupervisor(self.reactor, 1, ["python", "x"], env={}, warnings=("one", "two"))
        with capturedLogs() as events:
            supervisor.startService()
        self.addCleanup(shutil.rmtree, supervisor.handon_dir, True)
        self.assertEqual(
            [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn], ["one", "two"]
        )

    def test_handon_dir(self) -> None:
        """
        The workers' hand-on sockets go in a directory only this user can
        enter, named to every worker; it goes when the workers have ended.
        """
        directory = self.supervisor.handon_dir
        assert directory is not None
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        self.assertEqual([p.env[HANDON_ENV] for p in self.reactor.spawned], [directory, directory])
        d = self.supervisor.stopService()
        self.assertTrue(os.path.isdir(directory))
        for process in self.reactor.spawned:
            process.end(code=0)
        self.successResultOf(d)
        self.assertFalse(os.path.exists(directory))

    def test_handon_dir_named_by_pid(self) -> None:
        """
        The directory's name carries the supervisor's PID, so that a later
        supervisor can tell whether the one that made it still runs.
        """
        directory = self.supervisor.handon_dir
        assert directory is not None
        self.assertTrue(os.path.basename(directory).startswith(f"spwm-handon-{os.getpid()}-"))

    def test_started_with_index(self) -> None:
        self.assertEqual([p.env[WORKER_ENV].split("/")[:2] for p in self.reactor.spawned], [["0", "2"], ["1", "2"]])

    def test_output_logged(self) -> None:
        lines: list[tuple[int, str]] = []
        self.supervisor.worker_line = lambda i, line: lines.append((i, line))  # type: ignore[method-assign]
        proto = self.reactor.spawned[1].proto
        proto.childDataReceived(1, b"one\ntw")
        proto.childDataReceived(2, b"o\n")
        self.assertEqual(lines, [(1, "one"), (1, "two")])

    def test_restart_bounded(self) -> None:
        """
        A crashed worker is started again at once (0.5 s), up to
        MAX_RESTARTS in the window; the next waits RESTART_HOLD.
        """
        self.reactor.advance(10)
        for n in range(MAX_RESTARTS):
            self.reactor.spawned[-1 if n else 1].end(sig=signal.SIGKILL)
            self.reactor.advance(0.5)
            self.assertEqual(len(self.reactor.spawned), 3 + n)
        self.reactor.spawned[-1].end(code=1)
        self.reactor.advance(RESTART_HOLD - 1)
        self.assertEqual(len(self.reactor.spawned), 2 + MAX_RESTARTS)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.spawned), 3 + MAX_RESTARTS)
        self.assertEqual(self.supervisor.restarts, [0, MAX_RESTARTS + 1])
        self.assertEqual(self.stopped, [])

    def assertStoppedAtStart(self) -> None:
        """
        The supervisor stopped for a start-up failure and restarts nothing.
        """
        self.assertEqual(self.stopped, [True])
        self.assertTrue(self.supervisor.failed_at_start)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_startup_failure_stops(self) -> None:
        """
        A worker that exits by itself at start stops the supervisor: no
        restart loop on a port in use.
        """
        self.assertFalse(self.supervisor.failed_at_start)
        self.reactor.advance(1)
        self.reactor.spawned[0].end(code=1)
        self.assertStoppedAtStart()

    def test_slow_startup_failure_stops(self) -> None:
        """
        A start-up failure is a worker that exits before it said it had
        started, however long that took (a busy host takes seconds to
        import and start a worker): the other worker started, this one
        fails 30 s after the supervisor started, and the supervisor stops
        instead of restarting it.
        """
        self.reactor.spawned[0].started()
        self.reactor.advance(30)
        self.reactor.spawned[1].end(code=1)
        self.assertStoppedAtStart()

    def test_started_worker_restarted(self) -> None:
        """
        A worker that said it had started and then exits by itself, even
        a moment later, is restarted: it is not a start-up failure.
        """
        self.reactor.spawned[1].started()
        self.reactor.advance(0.1)
        self.reactor.spawned[1].end(code=1)
        self.assertEqual(self.stopped, [])
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(self.supervisor.restarts, [0, 1])

    def test_started_pipe(self) -> None:
        """
        Each worker gets a pipe on L{STARTED_FD}, named in its environment;
        the word may come in pieces; the worker's output on it is not
        logged as its lines.
        """
        lines: list[tuple[int, str]] = []
        self.supervisor.worker_line = lambda i, line: lines.append((i, line))  # type: ignore[method-assign]
        for process in self.reactor.spawned:
            self.assertEqual(process.childFDs[STARTED_FD], "r")
            self.assertEqual(process.env[STARTED_ENV], str(STARTED_FD))
        proto = self.reactor.spawned[0].proto
        proto.childDataReceived(STARTED_FD, STARTED_WORD[:3])
        self.assertFalse(proto.started)
        proto.childDataReceived(STARTED_FD, STARTED_WORD[3:])
        self.assertTrue(proto.started)
        self.assertEqual(lines, [])

    def test_report_started(self) -> None:
        """
        The worker writes L{STARTED_WORD} on the descriptor its environment
        names and closes it; without the variable it does nothing.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        report_started({STARTED_ENV: str(write)})
        self.assertEqual(os.read(read, 100), STARTED_WORD)
        self.assertEqual(os.read(read, 100), b"")  # closed: end of file
        report_started({})

    def test_stop(self) -> None:
        """
        Stopping sends SIGTERM to every worker, SIGKILL to those still
        running after stop_time, and is over when all have ended; none is
        restarted.
        """
        d = self.supervisor.stopService()
        assert d is not None
        first, second = self.reactor.spawned
        self.assertEqual((first.signals, second.signals), ([signal.SIGTERM], [signal.SIGTERM]))
        first.end(code=0)
        self.assertNoResult(d)
        self.reactor.advance(5.0)
        self.assertEqual(second.signals, [signal.SIGTERM, signal.SIGKILL])
        second.end(sig=signal.SIGKILL)
        self.successResultOf(d)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)


class SweepTests(SynchronousTestCase):
    """
    Hand-on directories left by supervisors killed with SIGKILL.
    """

    def test_sweep(self) -> None:
        """
        A directory named with a PID no process has, holding only sockets,
        goes; one of a live PID, one holding anything else, one of another
        name and a file by that name stay.
        """
        import socket as socket_module

        parent = self.mktemp()
        os.mkdir(parent)

        def make(name: str, sockets: int = 1, other: bool = False) -> str:
            path = os.path.join(parent, name)
            os.mkdir(path, 0o700)
            for i in range(sockets):
                s = socket_module.socket(socket_module.AF_UNIX)
                s.bind(os.path.join(path, f"w{i}.sock"))
                s.close()
            if other:
                with open(os.path.join(path, "notes"), "w") as f:
                    f.write("x")
            return path

        dead = make("spwm-handon-101-abc", sockets=2)
        empty = make("spwm-handon-102-abc", sockets=0)
        live = make("spwm-handon-200-abc")
        mixed = make("spwm-handon-103-abc", other=True)
        old = make("spwm-handon-abc")
        with open(os.path.join(parent, "spwm-handon-104-file"), "w"):
            pass
        removed = sweep_handon_dirs(parent, alive=lambda pid: pid >= 200)
        self.assertEqual(sorted(removed), sorted([dead, empty]))
        for path in (live, mixed, old):
            self.assertTrue(os.path.isdir(path))
        self.assertEqual(sweep_handon_dirs(os.path.join(parent, "missing")), [])
