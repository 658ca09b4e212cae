"""
Tests for L{spwm.security.certwatch}: the contact point's certificate
files loaded again when they change, what it says when they do not load,
and its warnings before the certificate expires.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from spwm.errors import ConfigError
from spwm.security.certwatch import (
    CHECK_INTERVAL,
    CertificateWatch,
    Loader,
    ReloadableServerTLS,
    file_stamp,
    read_facts,
)
from spwm.tap.common import load_tls
from spwm.testing.certs import CertFiles, TestCA
from spwm.tunnel.service import server_tls_options

DAY = 86400.0


def renew(ca: TestCA, into: CertFiles, name: str, days: float = 90) -> None:
    """
    Write a new certificate and key for C{name} over C{into}'s files, as an
    ACME client does (new files moved into place).
    """
    fresh = ca.issue([name], "fresh", days=days)
    os.replace(fresh.key, into.key)
    os.replace(fresh.cert, into.cert)


class WatchTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = TestCA(self.mktemp())
        self.files = self.ca.issue(["old.spwm.test"], "contact")
        self.clock = Clock()
        self.now = time.time()
        self.installed: list[Any] = []
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def build(self) -> Any:
        return load_tls("cert", server_tls_options, self.files.cert, self.files.key)

    def watch(self, **kwargs: Any) -> CertificateWatch:
        watch = CertificateWatch(
            self.clock,
            "cert",
            self.files.cert,
            [self.files.cert, self.files.key],
            [Loader(self.build, self.installed.append)],
            wall=lambda: self.now,
            **kwargs,
        )
        return watch

    def lines(self, level: LogLevel | None = None) -> list[str]:
        from twisted.logger import formatEvent

        return [
            formatEvent(e)
            for e in self.events
            if "certwatch" in str(e.get("log_namespace", "")) and (level is None or e.get("log_level") is level)
        ]


class StampTests(SynchronousTestCase):
    def test_stamp_changes_when_a_file_is_replaced(self) -> None:
        """
        Replacing a file by another (rename over it) changes the stamp;
        looking again without a change does not; a missing file has a
        stamp of its own.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "a")
        with open(path, "w") as f:
            f.write("one")
        first = file_stamp([path])
        self.assertEqual(file_stamp([path]), first)
        with open(path + ".new", "w") as f:
            f.write("two")
        os.replace(path + ".new", path)
        second = file_stamp([path])
        self.assertNotEqual(second, first)
        os.remove(path)
        self.assertNotIn(file_stamp([path]), (first, second))


class ReloadTests(WatchTestCase):
    def test_unchanged_files_are_not_loaded(self) -> None:
        """
        Each tick looks at the files; while they do not change nothing is
        loaded or said.
        """
        watch = self.watch()
        watch.startService()
        self.addCleanup(watch.stopService)
        for _ in range(5):
            self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.installed, [])
        self.assertEqual(watch.reloads, 0)
        self.assertEqual(self.lines(), [])

    def test_renewed_files_are_loaded_at_the_next_tick(self) -> None:
        """
        Files replaced by a renewal are loaded within one interval: the new
        options are installed, the facts and status name the new
        certificate, and one line says so.
        """
        watch = self.watch()
        watch.startService()
        self.addCleanup(watch.stopService)
        self.assertEqual(watch.facts.subject, "old.spwm.test")
        renew(self.ca, self.files, "new.spwm.test", days=60)
        self.clock.advance(CHECK_INTERVAL - 1)
        self.assertEqual(self.installed, [])
        self.clock.advance(1)
        self.assertEqual(len(self.installed), 1)
        self.assertEqual(self.installed[0].certificate.get_subject().commonName, "new.spwm.test")
        self.assertEqual(watch.facts.subject, "new.spwm.test")
        status = watch.status()
        self.assertEqual(status["subject"], "new.spwm.test")
        self.assertEqual(status["reloads"], 1)
        self.assertEqual(status["reload_failures"], 0)
        self.assertIsNone(status["error"])
        self.assertLess(abs(status["expires_in"] - 60 * DAY), 120)
        [line] = self.lines()
        self.assertIn("--cert: certificate loaded again (the files changed): new.spwm.test, expires ", line)
        self.assertIn("new tunnels get it, open ones keep theirs", line)
        # and only once
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.installed), 1)

    def test_certbot_symbolic_links(self) -> None:
        """
        certbot's layout: C{live/} holds symbolic links into C{archive/}, and
        a renewal writes C{cert2.pem} and C{privkey2.pem} there and points
        the links at them; the watch follows the links and loads the new
        files.
        """
        base = self.mktemp()
        archive, live = os.path.join(base, "archive"), os.path.join(base, "live")
        os.makedirs(archive)
        os.makedirs(live)
        os.replace(self.files.cert, os.path.join(archive, "cert1.pem"))
        os.replace(self.files.key, os.path.join(archive, "privkey1.pem"))
        for link, target in (("fullchain.pem", "cert1.pem"), ("privkey.pem", "privkey1.pem")):
            os.symlink(os.path.join("..", "archive", target), os.path.join(live, link))
        self.files = CertFiles(os.path.join(live, "fullchain.pem"), os.path.join(live, "privkey.pem"))
        watch = self.watch()
        watch.startService()
        self.addCleanup(watch.stopService)
        fresh = self.ca.issue(["new.spwm.test"], "fresh")
        os.replace(fresh.cert, os.path.join(archive, "cert2.pem"))
        os.replace(fresh.key, os.path.join(archive, "privkey2.pem"))
        for link, target in (("fullchain.pem", "cert2.pem"), ("privkey.pem", "privkey2.pem")):
            tmp = os.path.join(live, link + ".new")
            os.symlink(os.path.join("..", "archive", target), tmp)
            os.replace(tmp, os.path.join(live, link))
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.installed), 1)
        self.assertEqual(watch.facts.subject, "new.spwm.test")

    def test_files_that_do_not_load_keep_the_old_certificate(self) -> None:
        """
        A renewal caught half way (the new certificate with the old key)
        installs nothing: one error line names the problem and the
        certificate still served; it is not repeated while the files stay
        as they are, and once they are whole they are loaded.
        """
        watch = self.watch()
        watch.startService()
        self.addCleanup(watch.stopService)
        fresh = self.ca.issue(["new.spwm.test"], "fresh")
        os.replace(fresh.cert, self.files.cert)
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.installed, [])
        self.assertEqual(watch.facts.subject, "old.spwm.test")
        self.assertEqual(watch.failures, 1)
        self.assertEqual(watch.error, "cannot load certificate/key: the key does not belong to the certificate")
        [line] = self.lines(LogLevel.error)
        self.assertIn(
            "--cert: the certificate files changed but do not load (cannot load certificate/key: the key does not "
            "belong to the certificate): the one loaded at ",
            line,
        )
        self.assertIn(" (old.spwm.test, expires ", line)
        self.assertTrue(line.endswith(" UTC) stays in use"), line)
        for _ in range(3):
            self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.lines(LogLevel.error)), 1)
        self.assertEqual(watch.failures, 1)
        os.replace(fresh.key, self.files.key)
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.installed), 1)
        self.assertEqual(watch.facts.subject, "new.spwm.test")
        self.assertIsNone(watch.error)

    def test_missing_file(self) -> None:
        """
        A certificate file that is gone (a renewal that removed it first)
        is a failed load, not a traceback; the old certificate stays.
        """
        watch = self.watch()
        watch.startService()
        self.addCleanup(watch.stopService)
        os.remove(self.files.cert)
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.installed, [])
        self.assertEqual(watch.error, "cannot load certificate/key: No such file or directory")
        self.assertEqual(len(self.lines(LogLevel.error)), 1)

    def test_all_or_nothing(self) -> None:
        """
        With two loaders (TLS and QUIC), one that fails installs neither.
        """
        quic: list[Any] = []

        def failing() -> Any:
            raise ConfigError("cert", "cannot load certificate/key: not a PEM certificate and key")

        watch = CertificateWatch(
            self.clock,
            "cert",
            self.files.cert,
            [self.files.cert, self.files.key],
            [Loader(self.build, self.installed.append), Loader(failing, quic.append)],
            wall=lambda: self.now,
        )
        self.assertFalse(watch.reload())
        self.assertEqual((self.installed, quic), ([], []))

    def test_reload_asked_for(self) -> None:
        """
        L{CertificateWatch.reload} (SIGHUP) loads the files even when they
        did not change, and says it was the same certificate.
        """
        watch = self.watch()
        self.assertTrue(watch.reload())
        self.assertEqual(len(self.installed), 1)
        [line] = self.lines()
        self.assertIn("certificate loaded again (SIGHUP): old.spwm.test", line)
        self.assertIn("(the same certificate as before)", line)

    def test_stopped_watch_does_not_tick(self) -> None:
        """
        Once stopped, no timer is left behind.
        """
        watch = self.watch()
        watch.startService()
        watch.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ExpiryTests(WatchTestCase):
    def test_far_from_expiry_says_nothing(self) -> None:
        """
        A certificate with 90 days left: no line at start or later.
        """
        watch = self.watch()
        watch.startService()
        self.addCleanup(watch.stopService)
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.lines(), [])

    def test_warns_within_two_weeks_once_a_day(self) -> None:
        """
        Ten days before the end: a warning at start that names the file,
        the date and the days left, then none until a day later.
        """
        self.files = self.ca.issue(["soon.spwm.test"], "soon", days=10)
        watch = self.watch()
        watch.startService()
        self.addCleanup(watch.stopService)
        [line] = self.lines(LogLevel.warn)
        self.assertIn(f"--cert: the certificate in use (soon.spwm.test, {self.files.cert}) expires on ", line)
        self.assertIn("in 10 days: renew it", line)
        for _ in range(10):
            self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.lines(LogLevel.warn)), 1)
        self.now += DAY
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.lines(LogLevel.warn)), 2)
        self.assertIn("in 9 days", self.lines(LogLevel.warn)[1])

    def test_expired_is_an_error(self) -> None:
        """
        A certificate that has expired: an error line that says agents
        refuse the contact point.
        """
        self.files = self.ca.issue(["old.spwm.test"], "gone", expired=True)
        watch = self.watch()
        watch.startService()
        self.addCleanup(watch.stopService)
        [line] = self.lines(LogLevel.error)
        self.assertIn("EXPIRED on ", line)
        self.assertIn("agents refuse this contact point until it is renewed", line)
        self.assertLess(watch.status()["expires_in"], 0)

    def test_renewal_ends_the_warnings(self) -> None:
        """
        Once a renewed certificate is loaded, the warnings stop.
        """
        self.files = self.ca.issue(["soon.spwm.test"], "soon", days=3)
        watch = self.watch()
        watch.startService()
        self.addCleanup(watch.stopService)
        self.assertEqual(len(self.lines(LogLevel.warn)), 1)
        renew(self.ca, self.files, "soon.spwm.test", days=90)
        self.now += DAY
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.installed), 1)
        self.now += DAY
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.lines(LogLevel.warn)), 1)


class FactsTests(SynchronousTestCase):
    def test_facts(self) -> None:
        """
        The facts are the first certificate's common name and end.
        """
        ca = TestCA(self.mktemp())
        files = ca.issue(["facts.spwm.test"], "facts", days=30)
        facts = read_facts(files.cert)
        self.assertEqual(facts.subject, "facts.spwm.test")
        self.assertLess(abs(facts.not_after - (time.time() + 30 * DAY)), 120)

    def test_no_certificate(self) -> None:
        """
        A file without a certificate raises L{ValueError}.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("nothing here\n")
        self.assertRaises(ValueError, read_facts, path)


class ReloadableServerTLSTests(SynchronousTestCase):
    def test_connections_use_the_latest_options(self) -> None:
        """
        Connections made after L{ReloadableServerTLS.use} are on the new
        options' context; the old options' context is left to the
        connections made before.
        """
        ca = TestCA(self.mktemp())
        first = server_tls_options(*_pair(ca.issue(["a.spwm.test"], "a")))
        second = server_tls_options(*_pair(ca.issue(["b.spwm.test"], "b")))
        tls = ReloadableServerTLS(first)
        before = tls.serverConnectionForTLS(None)
        tls.use(second)
        after = tls.serverConnectionForTLS(None)
        self.assertIs(before.get_context(), first.getContext())
        self.assertIs(after.get_context(), second.getContext())
        self.assertIsNot(first.getContext(), second.getContext())


def _pair(files: CertFiles) -> tuple[str, str]:
    return files.cert, files.key



class AgentFilesTests(WatchTestCase):
    """
    The agent's tunnel files: a watch without a certificate of its own
    (C{--ca} alone), loaders added after it is made (one per contact
    point), and the TLS options each new connection is made with.
    """

    def ca_watch(self) -> CertificateWatch:
        return CertificateWatch(
            self.clock,
            "ca",
            None,
            [self.ca.ca_file],
            [],
            wall=lambda: self.now,
            users="tunnel connections",
        )

    def test_ca_alone(self) -> None:
        """
        A CA file is no certificate of ours: no facts, no expiry line; a
        new CA file is built by every loader added, with one line that
        names no certificate.
        """
        watch = self.ca_watch()
        built: list[str] = []
        watch.add(Loader(lambda: "first", built.append))
        watch.add(Loader(lambda: "second", built.append))
        watch.startService()
        self.addCleanup(watch.stopService)
        self.now += 1000 * DAY
        self.assertFalse(watch.check())
        self.assertEqual((built, self.lines()), ([], []))
        self.assertEqual(watch.status()["subject"], None)
        with open(self.ca.ca_file, "a") as f:
            f.write("\n")
        self.assertTrue(watch.check())
        self.assertEqual(built, ["first", "second"])
        self.assertEqual(
            self.lines(),
            ["--ca: files loaded again (the files changed); new tunnel connections get it, open ones keep theirs"],
        )

    def test_a_ca_file_that_does_not_load(self) -> None:
        """
        A CA file that fails its loader: one error line that names no
        certificate, nothing installed.
        """
        watch = self.ca_watch()
        installed: list[Any] = []

        def build() -> Any:
            raise ConfigError("ca", "no PEM certificate in 'ca.pem'")

        watch.add(Loader(build, installed.append))
        with open(self.ca.ca_file, "a") as f:
            f.write("\n")
        self.assertFalse(watch.check())
        self.assertFalse(watch.check())
        self.assertEqual(installed, [])
        [line] = self.lines(LogLevel.error)
        self.assertIn("--ca: the certificate files changed but do not load (no PEM certificate in 'ca.pem'): ", line)
        self.assertTrue(line.endswith(" UTC stays in use"), line)

    def test_new_connections_use_the_renewed_client_certificate(self) -> None:
        """
        The agent's TLS options with the watch as their C{refresh}: the
        connection made after a renewal presents the new certificate,
        without waiting for the watch's timer.
        """
        from OpenSSL import SSL

        from spwm.tunnel.service import client_certificate, client_options, client_tls_options

        client = self.ca.issue(["agent-1"], "client", client=True)

        def build() -> Any:
            cert = load_tls("client-cert", client_certificate, client.cert, client.key)
            return client_options("contact.spwm.test", self.ca.ca_file, cert)

        tls = client_tls_options(
            "contact.spwm.test", self.ca.ca_file, load_tls("client-cert", client_certificate, client.cert, client.key)
        )
        watch = CertificateWatch(
            self.clock, "client-cert", client.cert, [client.cert, client.key], [Loader(build, tls.use)],
            wall=lambda: self.now,
        )  # fmt: skip
        tls.refresh = watch.check

        def presented() -> str:
            # the certificate a new connection presents to the contact point
            from twisted.internet.protocol import Factory, Protocol
            from twisted.internet.testing import StringTransport
            from twisted.protocols.tls import TLSMemoryBIOFactory

            protocol = TLSMemoryBIOFactory(tls, True, Factory.forProtocol(Protocol)).buildProtocol(None)
            protocol.makeConnection(StringTransport())
            connection = protocol._tlsConnection
            self.assertIsInstance(connection, SSL.Connection)
            return str(connection.get_certificate().get_subject().commonName)

        self.assertEqual([presented(), presented()], ["agent-1", "agent-1"])
        renew(self.ca, client, "agent-2")
        # no timer ran: the connection itself looked at the files
        self.assertEqual(presented(), "agent-2")
        self.assertEqual(watch.facts.subject, "agent-2")
        self.assertEqual(watch.reloads, 1)
