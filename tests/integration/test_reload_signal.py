"""
C{SIGHUP} to a contact point started as a user starts it (C{twistd -n},
in a child process, on loopback): it loads its renewed certificate files
and keeps running (with C{--workers}, the supervisor passes the signal on
to every worker); with C{--plaintext} it says there is nothing to load.
Before, the signal's default ended the process.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
from typing import Any

from cryptography import x509
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from spwm.testing.certs import TestCA
from spwm.testing.ports import free_port
from tests.integration.test_certificate_renewal import renew, serial
from tests.integration.test_tunnel_loopback import wait_until
from tests.integration.test_workers import ROOT, WorkerProcess


def served_serial(port: int) -> int:
    """
    The serial number of the certificate a TLS handshake with
    C{127.0.0.1:port} is shown (blocking: run it in a thread).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["spwm/1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname="contact.spwm.test") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


class ReloadSignalTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.ca = TestCA(os.path.abspath(self.mktemp()))
        self.cert = self.ca.issue(["contact.spwm.test", "127.0.0.1"], "contact")

    @defer.inlineCallbacks
    def start(self, *extra: str, listeners: int = 1) -> Any:
        """
        Start C{twistd -n spwm-contact} with C{extra} and wait until its
        C{listeners} tunnel listeners listen.
        """
        self.port = free_port(following=2)
        self.process = WorkerProcess()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("SPWM_WORKER", None)
        args = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "spwm-contact", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--sip-address", f"127.0.0.1:{free_port(following=3)}", "--drain-time", "0.2",
            "--status-interval", "0", *extra,
        ]  # fmt: skip
        self.transport = reactor.spawnProcess(self.process, sys.executable, args, env=env, path=ROOT)
        self.addCleanup(self.stop)
        try:
            yield wait_until(
                lambda: self.process.ended.called
                or self.process.text().count(f"listening for tunnels on tcp:{self.port}:") >= listeners,
                timeout=30,
            )
        except AssertionError:
            self.fail(f"it did not start: {self.process.text()}")
        if self.process.ended.called:
            self.fail(f"it did not start: {self.process.text()}")

    @defer.inlineCallbacks
    def stop(self) -> Any:
        if not self.process.ended.called and self.transport.pid:
            os.kill(self.transport.pid, signal.SIGTERM)
        try:
            yield wait_until(lambda: self.process.ended.called, timeout=20)
        finally:
            if not self.process.ended.called and self.transport.pid:
                os.kill(self.transport.pid, signal.SIGKILL)

    def hang_up(self) -> None:
        os.kill(self.transport.pid, signal.SIGHUP)

    def tls(self) -> list[str]:
        return ["--cert", self.cert.cert, "--key", self.cert.key]

    @defer.inlineCallbacks
    def test_sighup_loads_the_renewed_certificate(self) -> Any:
        """
        Renewed files and C{SIGHUP}: one line says the certificate was
        loaded again, new handshakes get it, the process keeps running and
        stops cleanly afterwards.
        """
        yield self.start(*self.tls())
        old = yield deferToThread(served_serial, self.port)
        self.assertEqual(old, serial(self.cert.cert))
        new = renew(self.ca, self.cert)
        self.hang_up()
        yield wait_until(lambda: "certificate loaded again (SIGHUP)" in self.process.text(), timeout=10)
        got = yield deferToThread(served_serial, self.port)
        self.assertEqual(got, new)
        self.assertFalse(self.process.ended.called)
        yield self.stop()
        # twistd's own clean stop (it ends by the signal it was sent)
        self.assertIn("Server Shut Down.", self.process.text())
        self.assertNotIn("Traceback", self.process.text())

    @defer.inlineCallbacks
    def test_sighup_to_the_supervisor_reaches_every_worker(self) -> Any:
        """
        With C{--workers 2}, C{SIGHUP} to the supervisor: it says it passed
        the signal on, both workers load the files, and handshakes on the
        shared port get the new certificate whichever worker takes them.
        """
        yield self.start(*self.tls(), "--workers", "2", listeners=2)
        new = renew(self.ca, self.cert)
        self.hang_up()
        yield wait_until(lambda: self.process.text().count("certificate loaded again (SIGHUP)") >= 2)
        self.assertIn("SIGHUP: passed on to the 2 running workers", self.process.text())
        for _ in range(8):
            got = yield deferToThread(served_serial, self.port)
            self.assertEqual(got, new)
        self.assertFalse(self.process.ended.called)
        self.assertNotIn("Traceback", self.process.text())

    @defer.inlineCallbacks
    def test_sighup_in_plaintext(self) -> Any:
        """
        With C{--plaintext} there is no certificate: C{SIGHUP} says so in
        one line and the contact point keeps running.
        """
        yield self.start("--plaintext")
        self.hang_up()
        yield wait_until(lambda: "SIGHUP: nothing to load again (--plaintext: no certificate)" in self.process.text())
        self.assertFalse(self.process.ended.called)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5):
            pass
