# -*- test-case-name: tests.test_workers -*-
"""
C{spwm-contact --workers N}: one contact point over N processes, one per
core.

The parent (C{twistd spwm-contact --workers N}) is a supervisor only: it
starts N worker processes (the same command line, each told its index in
the environment, L{WORKER_ENV}), relays their log lines, restarts a worker
that dies (at a bounded rate) and stops them with itself.

Every worker is a whole contact point (L{spwm.tap.assembly.build_contact})
with its own share (L{worker_config}):

  - the tunnel listener is shared: every worker binds the same address
    with C{SO_REUSEPORT} (L{ReusePortEndpoint}) and the kernel spreads
    new connections over them (see C{docs/operations.md}, "Workers", for
    why this and not a parent handing on accepted sockets);
  - its own operator-side SIP port: C{--sip-address} port + index, so the
    C{Path} and C{Record-Route} it writes name the worker that holds the
    tunnel, and the operator's proxy sends every request for those
    phones to that process;
  - its own slice of C{--media-ports} (whole port pairs);
  - its own state file (C{--state-file} + C{.INDEX}) and status port
    (C{--status-listen} port + index);
  - its own tunnel port besides the shared one (L{WorkerPorts}:
    C{--worker-ports} + index, by default the C{--listen} port + 1 +
    index), named in the welcome (C{resume_port}): an agent resumes its
    session and attaches further connections there, since the kernel
    spreads connections to the shared port by a hash of the addresses and
    ports, not by session; the worker's session ids end in C{-wINDEX}, so
    a resume or attach that reaches the wrong worker anyway is answered
    with the port of the right one (C{redirect}) on a worker's own port,
    and handed on to the right one on the shared port
    (L{spwm.handon}, through a Unix socket in the supervisor's private
    directory, L{HANDON_ENV});
  - its own QUIC port (C{--quic-listen} port + index), named in the
    welcome as before (C{quic_port}), so a QUIC path reaches its
    session's worker.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import sys
import tempfile
from typing import Any, Callable

import attrs
from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from spwm.errors import ConfigError

#: the environment variable that makes a process worker INDEX of COUNT
#: (C{INDEX/COUNT/PARENT_PID})
WORKER_ENV = "SPWM_WORKER"
#: the environment variable that names the supervisor's private directory
#: of the workers' hand-on sockets (L{spwm.handon})
HANDON_ENV = "SPWM_HANDON_DIR"

#: the environment variable that names the descriptor on which a worker
#: tells the supervisor that it has started (L{report_started})
STARTED_ENV = "SPWM_WORKER_STARTED_FD"
#: that descriptor in the worker (a pipe the supervisor reads)
STARTED_FD = 3
#: what the worker writes there once its services have all started
STARTED_WORD = b"started\n"

#: restarts of one worker allowed within L{RESTART_WINDOW} seconds before
#: the next waits L{RESTART_HOLD} seconds
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
RESTART_HOLD = 30.0


def _exit_one() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


#: the most workers C{--workers} takes: each is a process for a core, with
#: its own SIP, tunnel and status ports (a typo of 1000 would start 1000)
MAX_WORKERS = 256


def parse_workers(value: object) -> int:
    """
    C{--workers}: a positive number up to L{MAX_WORKERS}, or C{auto} (the
    number of CPUs this process may run on).
    """
    text = str(value).strip().lower()
    if text == "auto":
        return usable_cpus()
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of workers or auto") from None
    if n < 1:
        raise ValueError("must be at least 1")
    if n > MAX_WORKERS:
        raise ValueError(f"must be at most {MAX_WORKERS} (one process per core), not {n}")
    return n


def usable_cpus() -> int:
    """
    The CPUs this process may run on (its affinity), at least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@attrs.frozen
class WorkerSpec:
    """
    Which worker this process is.

    @ivar index: 0 .. count - 1.
    @ivar count: how many workers.
    @ivar parent: the supervisor's PID.
    @ivar handon_dir: the supervisor's directory of the workers' hand-on
        sockets (L{spwm.handon}), or C{None}: no hand-ons.
    """

    index: int
    count: int
    parent: int
    handon_dir: str | None = None

    @classmethod
    def from_environment(cls, environ: Any = None) -> WorkerSpec | None:
        """
        The spec in L{WORKER_ENV}, or C{None} when this is not a worker.

        @raise ConfigError: the variable is set but not valid.
        """
        environ = os.environ if environ is None else environ
        text = environ.get(WORKER_ENV)
        if not text:
            return None
        try:
            index, count, parent = (int(x) for x in text.split("/"))
        except ValueError:
            raise ConfigError("workers", f"{WORKER_ENV}={text!r} is not INDEX/COUNT/PID") from None
        if not 0 <= index < count:
            raise ConfigError("workers", f"{WORKER_ENV}={text!r}: index out of range")
        return cls(index, count, parent, environ.get(HANDON_ENV) or None)

    def env_value(self) -> str:
        return f"{self.index}/{self.count}/{self.parent}"


#: a worker's session id: random hex, then C{-w} and the worker's index
_WORKER_SESSION = re.compile(r"-w(\d{1,4})$")


@attrs.frozen
class WorkerPorts:
    """
    Where the workers of one contact point take the connections of their
    own sessions: worker I on C{base + I} (TCP, the C{--listen} address),
    besides the shared C{--listen} port.  Pure: session ids and ports.

    @ivar base: worker 0's own port.
    @ivar index: this worker.
    @ivar count: how many workers.
    """

    base: int
    index: int
    count: int

    @property
    def own(self) -> int:
        """
        This worker's own port (the welcome's C{resume_port}).
        """
        return self.base + self.index

    def new_session_id(self) -> str:
        """
        A fresh session id that names this worker.
        """
        return f"{secrets.token_hex(8)}-w{self.index}"

    def redirect(self, session_id: object) -> int | None:
        """
        The own port of the worker that holds C{session_id}, when that is
        another worker; C{None}: this one, or an id no worker of this
        contact point made (a session from before the workers, another
        worker count, a forgery), which is then simply unknown here.
        """
        index = self.worker_of(session_id)
        return None if index is None else self.base + index

    def worker_of(self, session_id: object) -> int | None:
        """
        The index of the worker that holds C{session_id}, when that is
        another worker (as L{redirect}).
        """
        if not isinstance(session_id, str):
            return None
        match = _WORKER_SESSION.search(session_id)
        if match is None:
            return None
        index = int(match.group(1))
        if index == self.index or index >= self.count:
            return None
        return index


def worker_ports_base(config: Any) -> int:
    """
    C{--worker-ports}, or the C{--listen} port + 1.

    @raise ConfigError: C{--listen} is not TCP (as L{listen_address}).
    """
    if config.worker_ports is not None:
        return int(config.worker_ports)
    return listen_address(config.listen)[2] + 1


def check_worker_ports(config: Any) -> None:
    """
    The workers' own ports fit below 65536 and take neither the shared
    C{--listen} port nor a worker's SIP (TCP too) or status port.

    @raise ConfigError: one of them does.
    """
    base = worker_ports_base(config)
    count = config.workers
    ours = set(range(base, base + count))
    if base + count - 1 > 65535:
        raise ConfigError("worker-ports", f"port {base} + {count} workers passes 65535")
    shared = listen_address(config.listen)[2]
    if shared in ours:
        raise ConfigError("worker-ports", f"{base}-{base + count - 1} holds the --listen port {shared}")
    sip = config.sip_address[1]
    if ours & set(range(sip, sip + count)):
        raise ConfigError("worker-ports", f"{base}-{base + count - 1} overlaps the workers' SIP ports {sip}-{sip + count - 1}")
    if config.status.listen:
        status = int(offset_port(config.status.listen, 0).split(":")[1])
        if ours & set(range(status, status + count)):
            raise ConfigError(
                "worker-ports", f"{base}-{base + count - 1} overlaps the workers' status ports {status}-{status + count - 1}"
            )


def media_slice(ports: tuple[int, int], index: int, count: int) -> tuple[int, int]:
    """
    Worker C{index}'s share of the media port range: whole port pairs
    (even, odd), the pairs split as evenly as they go.

    @raise ConfigError: fewer pairs than workers.
    """
    low, high = ports
    first = low + (low & 1)
    pairs = (high - first + 1) // 2
    if pairs < count:
        raise ConfigError("media-ports", f"{low}-{high} holds {pairs} port pair(s), fewer than {count} workers")
    start = index * pairs // count
    end = (index + 1) * pairs // count
    return first + 2 * start, first + 2 * end - 1


def offset_port(description: str, index: int) -> str:
    """
    A Twisted endpoint description with its port (the first field after
    the type, as in C{tcp:9090:interface=...}) moved up by C{index}.

    @raise ConfigError: no numeric port there.
    """
    kind, _, rest = description.partition(":")
    port, sep, tail = rest.partition(":")
    if kind.strip().lower() not in ("tcp", "tcp6") or not port.isdigit():
        raise ConfigError("status-listen", f"{description!r}: with --workers, give tcp:PORT (each worker serves PORT + its index)")
    return f"{kind}:{int(port) + index}{sep}{tail}"


def worker_config(config: Any, spec: WorkerSpec) -> Any:
    """
    The configuration of worker C{spec.index}: C{config} with its own SIP
    port, media slice, state file, status port, QUIC port and (with more
    than one worker) its own tunnel port (C{worker_ports} + C{worker_index}).
    """
    host, port = config.sip_address
    if port + spec.count - 1 > 65535:
        raise ConfigError("sip-address", f"port {port} + {spec.count} workers passes 65535")
    changes: dict[str, Any] = {
        "sip_address": (host, port + spec.index),
        "media_ports": media_slice(config.media_ports, spec.index, spec.count),
    }
    if config.state_file:
        changes["state_file"] = f"{config.state_file}.{spec.index}"
    if config.status.listen:
        changes["status"] = attrs.evolve(config.status, listen=offset_port(config.status.listen, spec.index))
    if config.quic_listen is not None and config.quic_listen[1]:
        quic_host, quic_port = config.quic_listen
        if quic_port + spec.count - 1 > 65535:
            raise ConfigError("quic-listen", f"port {quic_port} + {spec.count} workers passes 65535")
        changes["quic_listen"] = (quic_host, quic_port + spec.index)
    if spec.count > 1:
        changes["worker_ports"] = worker_ports_base(config)
        changes["worker_index"] = spec.index
        changes["handon_dir"] = spec.handon_dir
    return attrs.evolve(config, **changes)


def listen_address(description: str) -> tuple[int, str, int]:
    """
    C{(family, interface, port)} of a C{tcp}/C{tcp6} endpoint description,
    as the workers' shared listener binds it.

    @raise ConfigError: another kind of endpoint (C{--workers} needs TCP).
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

    from twisted.internet import reactor

    from spwm.tap.common import server_endpoint

    endpoint = server_endpoint(reactor, "listen", description)
    if isinstance(endpoint, TCP6ServerEndpoint):
        return socket.AF_INET6, endpoint._interface or "::", endpoint._port
    if isinstance(endpoint, TCP4ServerEndpoint):
        return socket.AF_INET, endpoint._interface or "0.0.0.0", endpoint._port
    raise ConfigError("listen", f"{description!r}: --workers shares a TCP listener; give tcp:PORT or tcp6:PORT")


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    A TCP listener that other processes share: the socket is made here
    with C{SO_REUSEPORT} (Twisted's C{listenTCP} has no such option),
    bound, listening with C{backlog}, then given to the reactor
    (C{adoptStreamPort}).  TLS, if any, is in the factory.
    """

    def __init__(self, reactor: Any, family: int, interface: str, port: int, backlog: int) -> None:
        self.reactor = reactor
        self.family = family
        self.interface = interface
        self.port = port
        self.backlog = backlog

    def listen(self, factory: IProtocolFactory) -> Deferred[Any]:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            port = self.reactor.adoptStreamPort(sock.fileno(), self.family, factory)
        except OSError as e:
            sock.close()
            from twisted.internet.defer import fail

            return fail(CannotListenError(self.interface, self.port, e))
        # the reactor holds its own duplicate of the descriptor
        sock.close()
        return succeed(port)


def die_with_parent(parent: int) -> None:
    """
    Ask the kernel to send this process SIGTERM when its parent dies
    (Linux C{PR_SET_PDEATHSIG}); if the parent is already gone, stop now.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def plugin_arguments(argv: list[str], name: str = "spwm-contact") -> list[str]:
    """
    The plugin's own arguments in a C{twistd} command line (what follows
    the plugin name).

    @raise ConfigError: C{name} is not in it (not run by C{twistd}).
    """
    try:
        at = argv.index(name)
    except ValueError:
        raise ConfigError("workers", f"--workers is for `twistd {name}` (embedding programs run one contact point per process)") from None
    return argv[at + 1 :]


#: the supervisor's hand-on directory: C{spwm-handon-PID-RANDOM} in the
#: temporary directory (the PID: a later supervisor can tell it is stale)
HANDON_PREFIX = "spwm-handon-"
_HANDON_NAME = re.compile(r"spwm-handon-(\d+)-[^/]+\Z")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_handon_dirs(parent: str, alive: Callable[[int], bool] = _alive) -> list[str]:
    """
    Remove the hand-on directories in C{parent} that supervisors killed
    with SIGKILL left behind: this user's, named with a PID no process
    has now, holding nothing but sockets.  A directory of a supervisor
    that runs (or of one whose PID was given again) is left alone.

    @return: the directories removed.
    """
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        match = _HANDON_NAME.match(name)
        if match is None:
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or alive(int(match.group(1))):
                continue
            entries = os.listdir(path)
            if not all(stat.S_ISSOCK(os.lstat(os.path.join(path, e)).st_mode) for e in entries):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
    return removed


def report_started(environ: Any = None) -> None:
    """
    In a worker whose reactor runs (its services have all started, every
    listener bound): tell the supervisor, on the descriptor L{STARTED_ENV}
    names (L{STARTED_WORD}), and close it.  Nothing when the variable is
    not set or the descriptor is not there (a worker started by hand).
    """
    environ = os.environ if environ is None else environ
    text = environ.get(STARTED_ENV, "")
    if not text.isdigit():
        return
    fd = int(text)
    try:
        os.write(fd, STARTED_WORD)
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass


class _WorkerProcess(protocol.ProcessProtocol):
    """
    One worker's process: its output goes to the log line by line; its
    L{STARTED_FD} says when it has started.

    @ivar started: the worker said it has started (L{report_started}).
    """

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self._partial = b""
        self._said = b""
        self.started = False
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == STARTED_FD:
            self._said = (self._said + data)[-len(STARTED_WORD) :]
            if self._said == STARTED_WORD:
                self.started = True
            return
        self.outReceived(data)

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > 65536:
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            if line.strip():
                self.supervisor.worker_line(self.index, line.decode("utf-8", "replace").rstrip())

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        if self._partial.strip():
            self.supervisor.worker_line(self.index, self._partial.decode("utf-8", "replace").rstrip())
        self._partial = b""
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.supervisor.worker_ended(self.index, code, sig, self.started)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """
    Starts C{count} workers, restarts one that dies (at most
    L{MAX_RESTARTS} in L{RESTART_WINDOW} seconds, then after
    L{RESTART_HOLD}), stops them all (SIGTERM, SIGKILL after C{stop_time})
    when it stops.  A worker that exits by itself (not by a signal) at its
    first start, before it said it had started (L{report_started}: every
    listener bound), had a start-up error (a port in use: its one line is
    in the log): the supervisor stops the process (C{stop}) instead of
    restarting it, however long the start took (seconds on a busy host).

    @ivar command: the worker's command line (argv, with the executable).
    @ivar restarts: restarts so far, per worker.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        count: int,
        command: list[str],
        *,
        stop_time: float = 10.0,
        env: dict[str, str] | None = None,
        stop: Callable[[], None] | None = None,
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.reactor = reactor
        self.count = count
        #: said once at the start (what the configuration does not do
        #: with several workers)
        self.warnings = warnings
        self.command = command
        self.stop_time = stop_time
        self.env = dict(os.environ if env is None else env)
        self._stop = stop if stop is not None else self._stop_reactor
        self.processes: dict[int, Any] = {}
        self._protocols: dict[int, _WorkerProcess] = {}
        self._recent: dict[int, list[float]] = {i: [] for i in range(count)}
        self._timers: dict[int, Any] = {}
        self.restarts = [0] * count
        #: a worker exited at start, and the contact point stopped for it
        self.failed_at_start = False
        self._stopping = False
        #: the private directory (mode 0700) of the workers' hand-on
        #: sockets (L{spwm.handon}), made at the start, removed at the end
        self.handon_dir: str | None = None

    def _stop_reactor(self) -> None:
        if self.failed_at_start:
            # twistd exits 0 once its reactor has stopped, whatever stopped
            # it: a contact point whose worker could not start must exit 1
            # like one that could not start itself (its scripts and
            # supervisors look at the status). At exit, after twistd's own
            # clean-up (the PID file), with the log flushed.
            atexit.register(_exit_one)
        if self.reactor.running:
            self.reactor.stop()

    def startService(self) -> None:
        super().startService()
        if self.handon_dir is None:
            for stale in sweep_handon_dirs(tempfile.gettempdir()):
                self.log.info("removed {path}, left by a contact point that was killed", path=stale)
            self.handon_dir = tempfile.mkdtemp(prefix=f"{HANDON_PREFIX}{os.getpid()}-")
        self.log.info("starting {count} contact point workers", count=self.count)
        for text in self.warnings:
            self.log.warn("{text}", text=text)
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._timers.pop(index, None)
        if self._stopping:
            return
        env = dict(self.env)
        env[WORKER_ENV] = WorkerSpec(index, self.count, os.getpid()).env_value()
        env[STARTED_ENV] = str(STARTED_FD)
        if self.handon_dir is not None:
            env[HANDON_ENV] = self.handon_dir
        proto = _WorkerProcess(self, index)
        self._protocols[index] = proto
        self.processes[index] = self.reactor.spawnProcess(
            proto, self.command[0], self.command, env=env, childFDs={0: "w", 1: "r", 2: "r", STARTED_FD: "r"}
        )

    def worker_line(self, index: int, line: str) -> None:
        self.log.info("worker {index}: {line}", index=index, line=line)

    def worker_ended(self, index: int, code: int | None, sig: int | None, started: bool = True) -> None:
        """
        Worker C{index} ended with status C{code} or signal C{sig};
        C{started}: it had said it started (L{report_started}).
        """
        self.processes.pop(index, None)
        if self._stopping:
            return
        now = self.reactor.seconds()
        how = f"signal {sig}" if sig else f"status {code}"
        if sig is None and not started and self.restarts[index] == 0:
            self.log.error(
                "worker {index} exited with {how} at start; stopping the contact point (see its lines above)",
                index=index,
                how=how,
            )
            self.failed_at_start = True
            self._stop()
            return
        recent = [t for t in self._recent[index] if now - t < RESTART_WINDOW]
        delay = 0.5 if len(recent) < MAX_RESTARTS else RESTART_HOLD
        recent.append(now)
        self._recent[index] = recent
        self.restarts[index] += 1
        self.log.warn(
            "worker {index} exited with {how}; restarting it in {delay} s (restart {count};"
            " its agents reconnect; it reads its state file, written at most --state-interval s before)",
            index=index,
            how=how,
            delay=delay,
            count=self.restarts[index],
        )
        self._timers[index] = self.reactor.callLater(delay, self._spawn, index)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        self._stopping = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        waiting = [self._protocols[i].ended for i in list(self.processes)]
        for index, process in list(self.processes.items()):
            self._signal(process, signal.SIGTERM)
        if not waiting:
            self._remove_handon_dir()
            return None
        from twisted.internet.defer import DeferredList

        done = DeferredList(waiting, consumeErrors=True)
        done.addCallback(lambda result: self._remove_handon_dir())

        def kill() -> None:
            for index, process in list(self.processes.items()):
                self.log.warn("worker {index} still running after {seconds} s; killing it", index=index, seconds=self.stop_time)
                self._signal(process, signal.SIGKILL)

        killer = self.reactor.callLater(self.stop_time, kill)

        def finished(result: Any) -> None:
            if killer.active():
                killer.cancel()

        done.addCallback(finished)
        return done

    def _remove_handon_dir(self) -> None:
        directory, self.handon_dir = self.handon_dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def reload(self) -> None:
        """
        C{SIGHUP}: pass it on to every worker (each loads its certificate
        files again: L{spwm.security.certwatch}).
        """
        self.log.info(
            "SIGHUP: passed on to the {count} running workers (each loads its certificate files again)",
            count=len(self.processes),
        )
        for process in list(self.processes.values()):
            self._signal(process, signal.SIGHUP)

    @staticmethod
    def _signal(process: Any, sig: int) -> None:
        try:
            process.signalProcess(sig)
        except Exception:
            # already gone
            pass

    def status(self) -> dict[str, Any]:
        return {"workers": self.count, "running": len(self.processes), "restarts": sum(self.restarts)}


@attrs.frozen
class Workers:
    """
    The supervisor of C{--workers N}, as L{build_workers} made it.

    @ivar service: the one service to start.
    """

    config: Any
    supervisor: WorkerSupervisor

    @property
    def service(self) -> WorkerSupervisor:
        return self.supervisor


def build_workers(config: Any, reactor: Any = None, argv: list[str] | None = None) -> Workers:
    """
    The supervisor of C{config.workers} workers, after checking that every
    worker's share can be made (a TCP C{--listen} with a port, enough media
    port pairs, SIP ports, status ports).

    @raise ConfigError: one cannot.
    """
    if reactor is None:
        from twisted.internet import reactor
    family, interface, port = listen_address(config.listen)
    if port == 0:
        raise ConfigError("listen", "--workers share one listening port: give it (not 0)")
    for index in range(config.workers):
        worker_config(config, WorkerSpec(index, config.workers, 0))
    check_worker_ports(config)
    command = worker_command(sys.argv if argv is None else argv)
    stop_time = config.limits.tunnel.drain_time + 10.0
    return Workers(
        config, WorkerSupervisor(reactor, config.workers, command, stop_time=stop_time, warnings=worker_warnings(config))
    )


#: What the supervisor says at start for the embedded registrar.
EMBEDDED_REGISTRAR_WARNING = (
    "every worker has an embedded registrar of its own (no --sip-proxy): a phone registered through"
    " one worker cannot be called through another, and calls between them get 404; give --sip-proxy"
    " (the operator's registrar) or run one worker"
)


def worker_warnings(config: Any) -> tuple[str, ...]:
    """
    What a contact point of several workers cannot do with C{config}: the
    embedded registrar is per process, and a phone's tunnel lands on
    whichever worker the kernel picks.
    """
    return (EMBEDDED_REGISTRAR_WARNING,) if config.sip_proxy is None and not config.also_sip_proxy else ()


def worker_command(argv: list[str]) -> list[str]:
    """
    The command line of a worker: this Python running C{twistd -n
    --pidfile= spwm-contact} with the plugin's arguments of C{argv}.
    """
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "spwm-contact",
        *plugin_arguments(argv),
    ]


__all__ = [
    "HANDON_ENV",
    "ReusePortEndpoint",
    "WORKER_ENV",
    "WorkerSpec",
    "WorkerPorts",
    "WorkerSupervisor",
    "Workers",
    "check_worker_ports",
    "build_workers",
    "die_with_parent",
    "listen_address",
    "media_slice",
    "offset_port",
    "parse_workers",
    "report_started",
    "worker_command",
    "worker_config",
    "worker_ports_base",
]
