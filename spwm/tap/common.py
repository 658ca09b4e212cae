# -*- test-case-name: tests.test_config -*-
"""
Options shared by both services.
"""

from __future__ import annotations

import errno
import signal
from typing import Any, Callable

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from spwm.config import (
    ConfigExit,
    Option,
    ip_literal_port,
    non_negative_float,
    optional_listen_description,
    optional_string,
    positive_float,
    positive_int,
    zero_or_at_least,
)
from spwm.addr import hostport
from spwm.errors import ConfigError, ListenError
from spwm.gcpolicy import GcPolicy
from spwm.media.ports import check_range
from spwm.limits import Limits

_D = Limits()

TUNNEL_LIMIT_OPTIONS = (
    Option("handshake-timeout", _D.tunnel.handshake_timeout, positive_float, "Seconds for the tunnel handshake to complete."),
    Option("keepalive-interval", _D.tunnel.keepalive_interval, positive_float, "Seconds without a frame sent or without one received before the tunnel sends a ping (idle TLS/TCP tunnels: before the kernel's first keepalive probe, see --ping-keepalive)."),
    Option("keepalive-timeout", _D.tunnel.keepalive_timeout, positive_float, "Seconds of silence after which the peer is declared dead (idle TLS/TCP tunnels: unanswered keepalive probes or unacknowledged data, counted by the kernel)."),
    Option("ping-keepalive", False, bool, "Keep idle tunnels alive with PING frames as well as the kernel's TCP keepalive (by default, between two ends that both offer it, an idle TLS/TCP tunnel sends no frames: the kernel probes it every --keepalive-interval and closes it after --keepalive-timeout). Needed behind a TCP proxy or load balancer that closes connections idle at its own level; the agent does it by itself with --http-proxy.", flag=True),
    Option("media-deadline", _D.tunnel.media_deadline, positive_float, "Seconds a media datagram may wait in the tunnel before it is dropped."),
    Option("max-channels", _D.tunnel.max_channels, positive_int, "Open channels per tunnel."),
    Option("max-sip-size", _D.sip.max_message_size, positive_int, "Largest SIP message accepted (bytes; at most 65535, a tunnel frame: a larger value counts as 65535); larger ones get 413 or are dropped."),
    Option("max-sip-connections", _D.sip.max_stream_connections, positive_int, "SIP TCP (and TLS) connections each SIP listening socket holds at once (the agent's --sip-listen, the contact point's --sip-address); one more is closed at once, with a warning."),
    Option("max-signalling-queue", _D.tunnel.max_priority_queue, positive_int, "Bytes of SIP and control a tunnel may queue for a peer that does not read; past a quarter of it new SIP requests get 503, past it the tunnel is closed."),
    Option("max-media-queue", _D.tunnel.max_media_queue, positive_int, "Bytes of media a tunnel may queue; past it datagrams are dropped and counted."),
    Option("udp-buffer", _D.sip.udp_buffer, positive_int, "Receive buffer (bytes) of SIP and forward UDP sockets."),
    Option("media-keep", _D.media.relay_keep, non_negative_float, "Seconds a media relay socket stays bound after its call for the next call the port allocator gives its port, which then takes it over without a system call (what reaches it meanwhile is dropped); 0: closed at once."),
    Option("media-buffer", _D.media.receive_buffer, positive_int, "Receive buffer (bytes) of each media relay socket: about 300 audio packets; a backlog beyond it is too late to play and the kernel drops it."),
    Option("no-bye-on-loss", False, bool, "Send no BYE of our own when a call ends here without one (its media lost: tunnel lost past resumption, no media for --media-timeout), nor a CANCEL or 480 for a call lost while it rings: the parties are then not told, and stay in a silent (or ringing) call until they hang up.", flag=True),
    Option("user-ciphering", False, bool, "Seal each registered user's SIP and media frames with that user's key (both halves must ask).", flag=True),
    Option("resume-window", _D.session.resume_window, non_negative_float, "Seconds a broken tunnel's calls and media wait to be resumed (its registrations stay, dormant, until they expire); 0: never suspend."),
)


#: C{--status-interval}: 0 (no status lines) or at least 1 s (a smaller
#: one wrote a line per reactor turn: 1748 in 3 s at 0.001)
status_interval = zero_or_at_least(1, "no status lines")


STATUS_OPTIONS = (
    Option("status-listen", None, optional_listen_description, "Serve the status page (/), /status (JSON) and /metrics (Prometheus) here: IP:PORT, PORT (every address) or a Twisted endpoint such as tcp:9090:interface=127.0.0.1 (default: not served)."),
    Option("status-interval", 300.0, status_interval, "Seconds between status lines in the log, at least 1; 0: none."),
)

def log_level(value: Any) -> str:
    """
    C{info} or C{debug}.
    """
    if value not in ("info", "debug"):
        raise ValueError(f"must be info or debug, not {value!r}")
    return str(value)


LOG_OPTIONS = (
    Option("cdr-file", None, optional_string, "Append each ended call's detail record to this file as one line of JSON (the log's 'call ... ended' line for machines; created mode 0640; reopened on SIGHUP, for logrotate; --workers share it)."),
    Option("log-level", "info", log_level, "info: one line per call (its call detail record at the end), registrations, tunnels and problems; debug: also each call's start and answer lines (they cost CPU at high call rates)."),
)

HEP_OPTIONS = (
    Option("hep", None, ip_literal_port, "Copy every SIP message this half sends and receives, and the RTCP reports it relays, to this HEP v3 (Homer) collector, IP:PORT over UDP (default: none)."),
)


class StartupExit(SystemExit, Exception):
    """
    A listener could not be bound at start: the process exits with status 1
    and this one line (on standard error, or in the log when twistd has
    redirected standard error there).

    It is a L{SystemExit}, so that Python prints the line and no traceback;
    and an L{Exception}, so that twistd, which catches only those around
    C{startService}, removes its PID file and, when it daemonizes, tells the
    waiting parent (which otherwise waits for ever) instead of leaving it
    hanging.
    """


class StartupService(MultiService):
    """
    The top service of one half.  Its children bind their listeners
    synchronously in C{startService}; if one cannot, the children already
    started are stopped again and L{StartupExit} ends the process before the
    reactor runs, so no half-started process is left.

    @ivar side: C{"agent"} or C{"contact"}, for the line.
    """

    log = Logger()

    def __init__(self, side: str) -> None:
        super().__init__()
        self.side = side

    def startService(self) -> None:
        """
        Start every child.

        @raise StartupExit: a child raised L{ListenError}.
        """
        try:
            super().startService()
        except ListenError as e:
            for child in reversed(list(self)):
                if child.running:
                    maybeDeferred(child.stopService).addErrback(
                        lambda f: self.log.failure("stopping after a failed start", f)
                    )
            self.running = 0
            raise StartupExit(f"spwm-{self.side}: {e}") from None


class MediaRangeCheck(Service):
    """
    At start, checks that at least one pair of the media port range can be
    bound on the media address (the relay sockets themselves are bound per
    call).

    @ivar bind: binds and closes one UDP socket (for tests).
    """

    log = Logger()

    def __init__(self, address: str, ports: tuple[int, int], bind: Any = None) -> None:
        self.address = address
        self.ports = ports
        self.bind = bind

    def startService(self) -> None:
        """
        @raise ListenError: no pair of the range can be bound.
        """
        super().startService()
        low, high = self.ports
        where = f"{low}-{high} on {hostport(self.address)}"
        try:
            if self.bind is None:
                check_range(self.address, low, high)
            else:
                check_range(self.address, low, high, self.bind)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ListenError("media-ports", where, "every port pair is in use") from None
            raise ListenError.from_exception("media-ports", where, e) from None
        self.log.info("media ports {where}", where=where)


def load_tls(key: str, load: Any, *args: Any) -> Any:
    """
    C{load(*args)}, which reads certificates or keys named by option C{key}.

    @raise ConfigError: they do not load.
    """
    from OpenSSL import SSL, crypto
    from twisted.internet.error import VerifyError

    try:
        return load(*args)
    except VerifyError:
        problem = "the key does not belong to the certificate"
    except (crypto.Error, SSL.Error):
        problem = "not a PEM certificate and key"
    except (OSError, ValueError) as e:
        problem = getattr(e, "strerror", None) or str(e)
    raise ConfigError(key, f"cannot load certificate/key: {problem}")


def load_certificates(key: str, path: str) -> list[Any]:
    """
    The certificates of the PEM file C{path} (option C{key}).

    @raise ConfigError: there are none or one does not load.
    """
    from spwm.tunnel.service import load_pem_certificates

    try:
        certificates = load_pem_certificates(path)
    except Exception:
        certificates = []
    if not certificates:
        raise ConfigError(key, f"no PEM certificate in {path!r}")
    return certificates


def server_endpoint(reactor: Any, key: str, description: str) -> Any:
    """
    C{serverFromString} for option C{key}.

    @raise ConfigError: Twisted does not understand C{description}, or
        cannot read what it names (an C{ssl:} endpoint's key and
        certificate files, which were a traceback).
    """
    from OpenSSL import crypto

    try:
        return serverFromString(reactor, description)
    except (ValueError, LookupError, TypeError, OSError, crypto.Error) as e:
        raise ConfigError(
            key, f"{description!r}: {e} (give IP:PORT, PORT or a Twisted endpoint such as tcp:9090:interface=127.0.0.1)"
        ) from None


#: The open-file limit a half raises its own to at most: Linux's default
#: ceiling (C{fs.nr_open}), for a hard limit of "unlimited".
OPEN_FILES_MAX = 1 << 20


def raise_open_files(resource: Any = None) -> tuple[int, int] | None:
    """
    Raise the process's soft limit of open descriptors to its hard limit
    (at most L{OPEN_FILES_MAX}), as servers do: a shell usually gives
    1,024, which a contact point's tunnels and two relay sockets per call
    and half reach at a few hundred calls, while the hard limit (hundreds
    of thousands) is the administrator's.

    @param resource: the C{resource} module (tests give another).
    @return: C{(before, after)} when raised, else C{None} (already at the
        hard limit, or the system refused).
    """
    if resource is None:
        try:
            import resource
        except ImportError:
            return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = OPEN_FILES_MAX if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_MAX)
        if soft == resource.RLIM_INFINITY or soft >= target:
            return None
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return None
    return soft, target


def build_service(side: str, build: Callable[[], Any], clock: Any = None) -> IService:
    """
    C{build().service} for C{twistd}: a L{ConfigError} becomes one line
    (C{spwm-SIDE: invalid configuration: KEY: PROBLEM}) and exit status 1.
    Names are looked up in threads that a stop does not wait for
    (L{spwm.lookups}).  Under twistd (no C{clock} given) the reactor goes
    by the steady clock (L{spwm.clock}) and dispatches socket events
    without a log context (L{spwm.leanpoll}).  A half that carries calls gets the process's
    garbage collection policy (L{GcPolicy}, timed by C{clock}, the
    reactor if not given), and its status the C{gc} section.
    """
    from twisted.internet import reactor

    from spwm import clock as steady_clock, leanpoll, lookups

    lookups.install(reactor)
    steady = None
    if clock is None:
        # twistd's reactor: timers and ages by the time elapsed, not by
        # the system clock, which may be set (spwm.clock), and socket
        # events dispatched without a log context each (spwm.leanpoll)
        steady = steady_clock.install(reactor)
        leanpoll.install(reactor)
        # before the build: the relay sockets' keeping takes a share of it
        raised = raise_open_files()
        if raised is not None:
            _log.info("open files limit raised from {before} to {after}", before=raised[0], after=raised[1])
    try:
        built = build()
    except ConfigError as e:
        raise ConfigExit(f"spwm-{side}: invalid configuration: {e}") from None
    service: IService = built.service
    status = getattr(built, "status", None)
    if status is not None and isinstance(service, MultiService):
        # a half that carries calls (not the workers' supervisor, whose
        # workers each say so): full garbage collections on a timer, one
        # policy per process, and a line when the system clock is set
        policy = GcPolicy(reactor if clock is None else clock)
        policy.setServiceParent(service)
        status.add("gc", policy.status)
        if steady is not None:
            steady_clock.StepWatch(steady, reactor).setServiceParent(service)
    return service


_log = Logger()

#: the signals that stop a half (twistd's handlers stop the reactor)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_signals_once(
    previous: dict[int, Any], again: Callable[[int], None] | None = None
) -> Callable[[int, Any], None]:
    """
    A handler for SIGTERM and SIGINT that passes only the first of them
    to the handler that signal had before (C{previous[signum]},
    Twisted's), and each later one to C{again} instead.

    A second stop signal to a reactor already stopping (an operator's
    second Ctrl-C or C{kill} during the contact point's drain; systemd's
    default C{KillMode=control-group}, which signals a worker directly
    and then the supervisor passes the signal on) would be a traceback
    (C{ReactorNotRunning}) at critical level.
    """
    seen: list[int] = []

    def once(signum: int, frame: Any) -> None:
        if seen:
            if again is not None:
                again(signum)
            return
        seen.append(signum)
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, frame)

    return once


def guard_stop_signals(reactor: Any = None) -> None:
    """
    Once the reactor runs (it installs its own handlers then), let only
    the first SIGTERM or SIGINT through (L{stop_signals_once}); each
    later one is an info line, C{SIGINT: the stop is already under way}.
    For the twistd plugins (both halves, the supervisor of
    C{--workers} and each worker), not for programs that embed the
    protocols: the signals are the program's.
    """
    if reactor is None:
        from twisted.internet import reactor

    def again(signum: int) -> None:
        reactor.callFromThread(
            _log.info, "{signal}: the stop is already under way", signal=signal.Signals(signum).name
        )

    def install() -> None:
        once = stop_signals_once({signum: signal.getsignal(signum) for signum in STOP_SIGNALS}, again)
        for signum in STOP_SIGNALS:
            signal.signal(signum, once)

    reactor.callWhenRunning(install)
