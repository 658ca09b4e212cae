# -*- test-case-name: tests.test_certwatch -*-
"""
Certificates loaded again when their files change: the contact point's
(C{--cert}), the agent's SIP over TLS one (C{--sip-tls-cert}) and its
tunnel's (C{--client-cert}, C{--ca}).

Certificates from an ACME client (Let's Encrypt: 90 days, renewed after
about 60) change under a running contact point.  Restarting it to take a
renewed certificate would end every call whose media goes through it; so
the files are loaded again in place instead: L{CertificateWatch} looks at
them every L{CHECK_INTERVAL} seconds (and at once on C{SIGHUP}, where the
program asks for it; the agent's tunnel files also before each
connection) and, when they changed and load, hands the new TLS options
to the listeners.  Connections already open keep the certificate
they were made with; new ones get the new one.  Files that changed but do
not load (a renewal half written, a key that does not belong to the
certificate) leave the old certificate in use, with one error line.

It also says when the certificate in use is about to expire
(L{EXPIRY_WARNING} before, once a day) or has expired: agents refuse a
contact point whose certificate has expired (and a contact point with
C{--client-ca} an agent whose client certificate has), so that line is
the one an operator must not miss.  The status document carries the same
(C{certificate} section: C{not_after}, C{expires_in}, C{reloads}).

The watch knows nothing of TLS itself: each of its L{Loader}s builds one
object from the files (L{spwm.tunnel.service.server_tls_options} for the
TLS listeners, the QUIC configuration for C{--quic-listen}) and installs
it; all of them are built before any is installed, so the TLS and QUIC
listeners never serve two different certificates.
"""

from __future__ import annotations

import calendar
import os
import signal
import time
from typing import Any, Callable, Iterable, Protocol

from attrs import frozen
from OpenSSL import SSL
from twisted.application.internet import TimerService
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

#: seconds between two looks at the files
CHECK_INTERVAL = 60.0
#: warn this long before the certificate expires
EXPIRY_WARNING = 14 * 86400.0
#: at most one expiry line per this many seconds
EXPIRY_LINE_INTERVAL = 86400.0

#: what L{file_stamp} gives a file that cannot be read
_MISSING = (-1, -1, -1, -1)


def file_stamp(paths: Iterable[str]) -> tuple[tuple[int, int, int, int], ...]:
    """
    What tells a file's new content from its old without reading it: its
    device, inode, modification time (ns) and size, for each of C{paths}
    (an ACME client replaces files or the symbolic links to them; either
    changes this).
    """
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(_MISSING)
        else:
            stamps.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


@frozen
class CertificateFacts:
    """
    What the log and the status page say of a certificate.

    @ivar subject: its subject's common name (or the whole subject).
    @ivar not_after: when it expires, seconds since the epoch (UTC).
    """

    subject: str
    not_after: float

    @classmethod
    def of(cls, x509: Any) -> CertificateFacts:
        """
        The facts of a pyOpenSSL C{X509}.
        """
        name = x509.get_subject()
        subject = name.commonName or ", ".join(
            f"{k.decode('ascii', 'replace')}={v.decode('utf-8', 'replace')}" for k, v in name.get_components()
        )
        stamp = (x509.get_notAfter() or b"").decode("ascii", "replace")
        try:
            not_after = float(calendar.timegm(time.strptime(stamp, "%Y%m%d%H%M%SZ")))
        except ValueError:
            not_after = 0.0
        return cls(subject or "(no subject)", not_after)


def read_facts(cert_file: str) -> CertificateFacts:
    """
    The facts of the first certificate in the PEM file C{cert_file}.

    @raise ValueError: the file has no certificate.
    @raise OSError: it cannot be read.
    """
    from spwm.tunnel.service import load_pem_certificates

    certificates = load_pem_certificates(cert_file)
    if not certificates:
        raise ValueError(f"no certificate in {cert_file}")
    return CertificateFacts.of(certificates[0].original)


def utc_day(seconds: float) -> str:
    """
    C{2027-03-01 12:00 UTC}.
    """
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def _words(error: Exception) -> str:
    # a ConfigError's problem without its key (the line names the option)
    return str(getattr(error, "problem", None) or error)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    Server TLS connections made with whatever options were installed last
    (L{use}): a L{twisted.protocols.tls.TLSMemoryBIOFactory} keeps the
    creator it was given, so the listeners hold this one.

    @ivar options: the current L{twisted.internet.ssl.CertificateOptions}.
    """

    def __init__(self, options: Any) -> None:
        self.options = options

    def use(self, options: Any) -> None:
        """
        New connections from now on are made with C{options}.
        """
        self.options = options

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        # what Twisted does for a context factory: each connection on the
        # options' one (cached) context
        return SSL.Connection(self.options.getContext(), None)


@frozen
class Loader:
    """
    One thing built from the certificate files and installed in a listener.

    @ivar build: reads the files and returns the object (raises as
        L{spwm.tap.common.load_tls}'s loaders do when they do not load).
    @ivar install: puts a built object in use.
    """

    build: Callable[[], Any]
    install: Callable[[Any], None]


class CertificateWatch(TimerService):
    """
    While running, looks at the certificate files every C{interval}
    seconds and loads them again when they changed (L{check}); L{reload}
    loads them whatever their stamp says (C{SIGHUP}).

    @ivar facts: the certificate in use (C{None}: files without one of
        their own, the agent's C{--ca} alone).
    @ivar loaded_at: when it was loaded (wall clock).
    @ivar reloads: loads after the first that put a certificate in use.
    @ivar failures: loads after the first that failed.
    @ivar error: why the last load failed, or C{None} once one succeeded.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        option: str,
        cert_file: str | None,
        paths: Iterable[str],
        loaders: Iterable[Loader],
        *,
        interval: float = CHECK_INTERVAL,
        wall: Callable[[], float] = time.time,
        describe: Callable[[Exception], str] | None = None,
        users: str = "tunnels",
        refused: str = "agents refuse this contact point",
        on_signal: bool = True,
    ) -> None:
        """
        @param option: the option that names the files (C{cert}), for the
            log lines.
        @param cert_file: the certificate file (its first certificate is
            the one the facts are of), or C{None} for files that are not
            a certificate of ours (a CA file: no facts, no expiry lines).
        @param paths: every file the loaders read (the certificate, key,
            client CA): a change to any of them is a change.
        @param describe: turns a loader's exception into the words of the
            line (default: the exception's text).
        @param users: what gets the certificate, for the lines (the
            contact point's tunnels, the agent's SIP over TLS connections).
        @param refused: who refuses an expired one, for the lines.
        @param on_signal: whether C{SIGHUP} reaches L{reload} (the contact
            point's plugin), for the lines.
        """
        super().__init__(interval, self.check)
        self.clock = clock
        self.option = option
        self.cert_file = cert_file
        self.paths = tuple(paths)
        self.loaders = list(loaders)
        self.interval = interval
        self.wall = wall
        self.describe = describe or _words
        self.users = users
        self.refused = refused
        self.on_signal = on_signal
        self.stamp = file_stamp(self.paths)
        self.facts = read_facts(cert_file) if cert_file is not None else None
        self.loaded_at = wall()
        self.reloads = 0
        self.failures = 0
        self.error: str | None = None
        self._failed_stamp: tuple[tuple[int, int, int, int], ...] | None = None
        self._expiry_line_at: float | None = None

    def add(self, loader: Loader) -> None:
        """
        One more thing to build from the files and install at each load
        (the agent: each contact point's TLS options).
        """
        self.loaders.append(loader)

    # the watch (a TimerService: check at the start, then every interval)

    def check(self) -> bool:
        """
        Load the files again if their stamp changed since the last load
        (and since the last failed one: a file that failed is tried again
        once it changes again).

        @return: whether a new certificate is now in use.
        """
        stamp = file_stamp(self.paths)
        if stamp == self.stamp or stamp == self._failed_stamp:
            self.expiry_check()
            return False
        return self._load(stamp, sighup=False)

    def reload(self) -> bool:
        """
        Load the files again now, changed or not (C{SIGHUP}).

        @return: whether the load succeeded.
        """
        return self._load(file_stamp(self.paths), sighup=True)

    def expiry_check(self) -> None:
        """
        One line when the certificate in use expires within
        L{EXPIRY_WARNING} or has expired, at most once a day.
        """
        if self.facts is None:
            return
        now = self.wall()
        left = self.facts.not_after - now
        if left > EXPIRY_WARNING:
            return
        if self._expiry_line_at is not None and now - self._expiry_line_at < EXPIRY_LINE_INTERVAL:
            return
        self._expiry_line_at = now
        if left <= 0:
            self.log.error(
                "--{option}: the certificate in use ({subject}, {file}) EXPIRED on {day}: {refused} until it is "
                "renewed (renewed files are loaded within {interval:.0f} s{signal})",
                option=self.option,
                refused=self.refused,
                signal=self._signal_words(),
                subject=self.facts.subject,
                file=self.cert_file,
                day=utc_day(self.facts.not_after),
                interval=self.interval,
            )
        else:
            self.log.warn(
                "--{option}: the certificate in use ({subject}, {file}) expires on {day}, in {days:.0f} days: "
                "renew it (renewed files are loaded within {interval:.0f} s{signal})",
                option=self.option,
                signal=self._signal_words(),
                subject=self.facts.subject,
                file=self.cert_file,
                day=utc_day(self.facts.not_after),
                days=left / 86400,
                interval=self.interval,
            )

    def status(self) -> dict[str, Any]:
        """
        The status document's C{certificate} section.
        """
        facts = self.facts
        return {
            "file": self.cert_file,
            "subject": None if facts is None else facts.subject,
            "not_after": None if facts is None else facts.not_after,
            "expires_in": None if facts is None else round(facts.not_after - self.wall()),
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "reload_failures": self.failures,
            "error": self.error,
        }

    # internals

    def _signal_words(self) -> str:
        return ", or at once on SIGHUP" if self.on_signal else ""

    def _in_use(self, facts: CertificateFacts | None) -> str:
        # "cp.example.net, expires 2027-03-01 12:00 UTC", or nothing
        return "" if facts is None else f" ({facts.subject}, expires {utc_day(facts.not_after)})"

    def _load(self, stamp: tuple[tuple[int, int, int, int], ...], *, sighup: bool) -> bool:
        try:
            built = [loader.build() for loader in self.loaders]
            facts = read_facts(self.cert_file) if self.cert_file is not None else None
        except Exception as e:
            self.failures += 1
            self.error = self.describe(e)
            self._failed_stamp = stamp
            self.log.error(
                "--{option}: {what} do not load ({error}): the one loaded at {loaded}{in_use} stays in use",
                option=self.option,
                what="on SIGHUP the certificate files" if sighup else "the certificate files changed but",
                error=self.error,
                loaded=utc_day(self.loaded_at),
                in_use=self._in_use(self.facts),
            )
            return False
        for loader, thing in zip(self.loaders, built):
            loader.install(thing)
        self.stamp = stamp
        self._failed_stamp = None
        self.error = None
        self.reloads += 1
        self.loaded_at = self.wall()
        renewed = facts != self.facts
        self.facts = facts
        self._expiry_line_at = None
        self.log.info(
            "--{option}: {what} loaded again ({why}){in_use}{same}; new {users} get it, open ones keep theirs",
            option=self.option,
            what="certificate" if facts is not None else "files",
            users=self.users,
            why="SIGHUP" if sighup else "the files changed",
            in_use="" if facts is None else f": {facts.subject}, expires {utc_day(facts.not_after)}",
            same="" if renewed or facts is None else " (the same certificate as before)",
        )
        self.expiry_check()
        return True


def install_reload_signal(reactor: Any, reload: Callable[[], Any]) -> None:
    """
    From now on, C{SIGHUP} calls C{reload} in the reactor's thread (once
    it runs; instead of ending the process, the signal's default).  For
    the twistd plugins, not for programs that embed the protocols: the
    signal is the program's.

    Installed at once, not when the reactor starts: a half's listeners
    say they listen before the reactor runs, and a C{systemctl reload}
    sent then (or a supervisor passing one on to a worker) would
    otherwise end the process.  Twisted's own handlers leave C{SIGHUP}
    alone.
    """

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(reload)

    def install() -> None:
        signal.signal(signal.SIGHUP, handler)

    if not hasattr(signal, "SIGHUP"):
        return
    try:
        install()
    except ValueError:
        # not the main thread: when the reactor runs, in its thread
        reactor.callWhenRunning(install)


class Reloadable(Protocol):
    """
    What C{SIGHUP} reaches: a L{CertificateWatch}, the C{--cdr-file}.
    """

    def reload(self) -> Any:
        """
        Load (or open) the files again.
        """


def reload_on_hangup(reactor: Any, watches: Iterable[Reloadable | None], nothing: str) -> None:
    """
    For the twistd plugins: C{SIGHUP} (C{kill -HUP}, systemd's
    C{ExecReload}) loads the files of every watch in C{watches} again (and
    reopens the C{--cdr-file}); without any, it says C{nothing} in one
    line instead of ending the process.
    """
    present = [watch for watch in watches if watch is not None]

    def reload() -> None:
        if not present:
            Logger().info("SIGHUP: {nothing}", nothing=nothing)
        for watch in present:
            watch.reload()

    install_reload_signal(reactor, reload)


__all__ = [
    "CHECK_INTERVAL",
    "EXPIRY_WARNING",
    "CertificateFacts",
    "CertificateWatch",
    "Loader",
    "ReloadableServerTLS",
    "file_stamp",
    "install_reload_signal",
    "read_facts",
    "reload_on_hangup",
]
