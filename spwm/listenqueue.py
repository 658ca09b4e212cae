# -*- test-case-name: tests.test_listenqueue -*-
"""
The tunnel listener's accept queue: its length (the C{listen(2)} backlog)
and a watch on the kernel's counters of connections it had to refuse
because an accept queue was full.

Twisted listens with a backlog of 50; a burst of agents reconnecting at
once (a contact point restart) overflows that, and the kernel drops their
SYNs or final ACKs silently: the agents time out, the contact point sees
nothing.  The default here is the system's own ceiling,
C{net.core.somaxconn} (the kernel caps any larger backlog to it anyway).

The kernel counts the overflows only for the whole host
(C{TcpExt: ListenOverflows ListenDrops} in C{/proc/net/netstat}), not per
socket: L{ListenQueueWatch} reads them on a slow timer while the listener
runs and writes one throttled line when they grew, saying that the
figures are host-wide.
"""

from __future__ import annotations

from typing import Callable

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from spwm.logthrottle import Every, ThrottledLog

SOMAXCONN = "/proc/sys/net/core/somaxconn"
NETSTAT = "/proc/net/netstat"
#: the backlog when the system's ceiling cannot be read
FALLBACK_BACKLOG = 4096
#: seconds between two looks at the kernel's counters
WATCH_INTERVAL = 10.0
#: at most one line per this many seconds
LINE_INTERVAL = 60.0

#: endpoint types whose description takes a C{backlog} parameter
_BACKLOG_TYPES = ("tcp", "tcp6", "unix")


def system_backlog(path: str = SOMAXCONN) -> int:
    """
    The system's largest listen backlog (C{net.core.somaxconn}), or
    L{FALLBACK_BACKLOG} when it cannot be read.
    """
    try:
        with open(path) as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return FALLBACK_BACKLOG
    return value if value > 0 else FALLBACK_BACKLOG


def with_backlog(description: str, backlog: int) -> str:
    """
    A Twisted server endpoint description with C{backlog=} added, for the
    endpoint types that take one (C{tcp}, C{tcp6}, C{unix}), unless the
    description names a backlog itself (that one wins).
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind.isdigit():
        # "443": Twisted reads a bare port as tcp
        kind = "tcp"
    if kind not in _BACKLOG_TYPES:
        return description
    parameters = description.split(":")[1:]
    if any(p.strip().lower().startswith("backlog=") for p in parameters):
        return description
    return f"{description}:backlog={backlog}"


@frozen
class ListenCounters:
    """
    The kernel's host-wide counters of connections refused for a full
    accept queue.

    @ivar overflows: C{TcpExt ListenOverflows}: the accept queue was full.
    @ivar drops: C{TcpExt ListenDrops}: dropped at a listener for any
        reason (overflows included).
    """

    overflows: int
    drops: int

    def __sub__(self, other: ListenCounters) -> ListenCounters:
        return ListenCounters(self.overflows - other.overflows, self.drops - other.drops)


def parse_netstat(text: str) -> ListenCounters | None:
    """
    The listen counters of C{/proc/net/netstat}'s text (pairs of lines: a
    header of names and a line of values, both starting C{TcpExt:}), or
    C{None} when it has none.
    """
    lines = text.splitlines()
    for header, values in zip(lines, lines[1:]):
        if not (header.startswith("TcpExt:") and values.startswith("TcpExt:")):
            continue
        names = header.split()[1:]
        numbers = values.split()[1:]
        if len(names) != len(numbers):
            return None
        table = dict(zip(names, numbers))
        try:
            return ListenCounters(int(table["ListenOverflows"]), int(table["ListenDrops"]))
        except (KeyError, ValueError):
            return None
    return None


def read_netstat(path: str = NETSTAT) -> ListenCounters | None:
    """
    The listen counters now, or C{None} where the file cannot be read
    (not Linux, no C{/proc}).
    """
    try:
        with open(path) as f:
            return parse_netstat(f.read())
    except OSError:
        return None


class ListenQueueWatch(Service):
    """
    While running, reads the kernel's listen counters every C{interval}
    seconds and, when they grew, writes one warning (at most one a
    minute, with how many were suppressed) naming the listener and its
    backlog and saying that the counters are the whole host's.

    @ivar grown: the counters' growth seen while running, summed.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        description: str,
        backlog: int | None,
        *,
        interval: float = WATCH_INTERVAL,
        read: Callable[[], ListenCounters | None] = read_netstat,
    ) -> None:
        """
        @param description: the listener, for the line.
        @param backlog: its backlog, for the line (C{None}: not known).
        @param read: the counters now (tests give their own).
        """
        self.clock = clock
        self.description = description
        self.backlog = backlog
        self.interval = interval
        self.read = read
        self.grown = ListenCounters(0, 0)
        self._last: ListenCounters | None = None
        self._timer: IDelayedCall | None = None
        self._lines = ThrottledLog(self.log, clock, Every(LINE_INTERVAL))

    def startService(self) -> None:
        super().startService()
        self._last = self.read()
        if self._last is not None:
            self._timer = self.clock.callLater(self.interval, self._check)

    def stopService(self) -> None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _check(self) -> None:
        self._timer = self.clock.callLater(self.interval, self._check)
        now = self.read()
        if now is None or self._last is None:
            return
        delta = now - self._last
        self._last = now
        if delta.overflows <= 0 and delta.drops <= 0:
            return
        self.grown = ListenCounters(self.grown.overflows + max(delta.overflows, 0), self.grown.drops + max(delta.drops, 0))
        self._lines.warn(
            None,
            "listen queue full: the kernel refused connections for a full accept queue"
            " ({overflows} overflows, {drops} listen drops in {interval} s; host-wide counters,"
            " not only this listener's) while tunnels are accepted on {listener} with backlog {backlog};"
            " raise --listen-backlog and net.core.somaxconn if they are this one's"
            " ({suppressed} more such lines suppressed)",
            overflows=delta.overflows,
            drops=delta.drops,
            interval=self.interval,
            listener=self.description,
            backlog=self.backlog if self.backlog is not None else "?",
        )

    def status(self) -> dict[str, int]:
        """
        The counters' growth while the listener ran (host-wide).
        """
        return {"host_listen_overflows": self.grown.overflows, "host_listen_drops": self.grown.drops}


class HandshakeGate:
    """
    A bound on tunnels in their handshake: while C{limit} connections are
    handshaking (TLS and the SPWM hello), the listening port stops
    accepting (C{stopReading}); the kernel's accept queue and the
    clients' SYN retries hold the rest, and it accepts again as soon as
    one handshake ends (done or failed).

    Without it a reconnect storm starts every handshake at once: they
    share the CPU, none finishes within the handshake timeout and all
    fail together (C{docs/performance.md}, "A reconnect storm").

    @ivar handshaking: connections in their handshake now.
    @ivar pauses: times accepting was stopped.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.handshaking = 0
        self.pauses = 0
        self._ports: list[object] = []
        self._stopped = False

    def set_port(self, port: object) -> object:
        """
        A listening port to pause and resume (a listener's C{listening}
        result; returned unchanged); there may be several (C{--workers}:
        the shared port and the worker's own), paused together.
        """
        self._ports.append(port)
        if self._stopped:
            port.stopReading()  # type: ignore[attr-defined]
        self._update()
        return port

    def release(self) -> None:
        """
        The ports are going away: leave them alone from now on.
        """
        self._ports = []
        self._stopped = False

    def connection(self, tunnel: object) -> None:
        """
        A new connection (its tunnel protocol, with C{when_established}).
        """
        self.handshaking += 1
        self._update()
        tunnel.when_established().addBoth(self._ended)  # type: ignore[attr-defined]

    def _ended(self, result: object) -> None:
        # established or lost: either way no longer handshaking (the
        # failure is the tunnel's own business, consumed here)
        self.handshaking -= 1
        self._update()

    def _update(self) -> None:
        if not self._ports:
            return
        if self.handshaking >= self.limit and not self._stopped:
            self._stopped = True
            self.pauses += 1
            for port in self._ports:
                port.stopReading()  # type: ignore[attr-defined]
        elif self.handshaking < self.limit and self._stopped:
            self._stopped = False
            for port in self._ports:
                port.startReading()  # type: ignore[attr-defined]

    def status(self) -> dict[str, int]:
        return {"handshaking": self.handshaking, "accept_pauses": self.pauses}
