"""
C{SIGHUP} to a contact point started as a user starts it (C{twistd -n},
in a child process, on loopback): it loads its renewed certificate files
and keeps running (with C{--workers}, the supervisor passes the signal on
to every worker); with C{--plaintext} it says there is nothing to load.
Before, the signal's default ended the process.
"""

from __future__ import annotations

import json
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
        # the SIP ports apart from the tunnel port and, with --workers 2,
        # the workers' own after it (a run drew 12450-12451 and SIP 12451)
        sip = free_port(following=3, away_from=range(self.port, self.port + 3))
        self.process = WorkerProcess()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("SPWM_WORKER", None)
        args = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "spwm-contact", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--sip-address", f"127.0.0.1:{sip}", "--drain-time", "0.2",
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

    @defer.inlineCallbacks
    def test_sighup_reopens_the_cdr_file(self) -> Any:
        """
        C{--cdr-file} moved away as C{logrotate} does, then C{SIGHUP}: the
        file is made again at its path, with one line.
        """
        path = os.path.abspath(self.mktemp())
        yield self.start("--plaintext", "--cdr-file", path)
        self.assertTrue(os.path.exists(path))
        os.rename(path, path + ".1")
        self.hang_up()
        yield wait_until(lambda: f"--cdr-file: {path} reopened" in self.process.text())
        self.assertTrue(os.path.exists(path))
        self.assertNotIn("nothing to load again", self.process.text())
        self.assertFalse(self.process.ended.called)

    @defer.inlineCallbacks
    def test_stop_records_the_calls_it_ends(self) -> Any:
        """
        A call in progress when the contact point stops (SIGTERM, twistd)
        is in its C{--cdr-file}: both of its legs, ended by the stop.
        Before, calls that the stop ended in the reactor's last turns came
        after the file was closed and were lost, with an error line.
        """
        from spwm.tap import agent
        from spwm.tap.assembly import build_agent
        from spwm.testing.phone import Phone, call_with_media

        path = os.path.abspath(self.mktemp())
        yield self.start("--plaintext", "--cdr-file", path, "--media-allow", "127.0.0.0/8")
        phones = []
        for name in ("alice", "bob"):
            options = agent.Options()
            options.parseOptions(
                ["--plaintext", "--contact", f"127.0.0.1:{self.port}", "--agent-id", name,
                 "--sip-listen", f"127.0.0.1:{free_port()}", "--media-address", "127.0.0.1",
                 "--reconnect-max", "0.3"]
            )  # fmt: skip
            service = build_agent(options.config, reactor)
            service.service.startService()
            self.addCleanup(service.service.stopService)
            yield wait_until(lambda: service.tunnel_service.tunnel is not None)
            phone = Phone(reactor, name, "example.test", service.config.sip_listen[0])
            phone.start()
            self.addCleanup(phone.stop)
            response = yield phone.register()
            self.assertEqual(response.status, 200)
            phones.append(phone)
        a_call, b_call = yield call_with_media(*phones)
        yield wait_until(lambda: b_call.rx.unique > 5 and a_call.rx.unique > 5)
        yield self.stop()
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        self.assertEqual(len(records), 2, records)
        self.assertEqual({r["call_id"] for r in records}, {a_call.call_id})
        self.assertTrue(all(r["answered_s"] is not None for r in records), records)
        self.assertNotIn("records lost", self.process.text())


class AgentReloadSignalTests(TestCase):
    """
    C{SIGHUP} to an agent started with C{twistd -n spwm-agent}: it loads
    its certificate files again (C{--client-cert}, C{--ca}) and keeps
    running; without any it says there is nothing to load.  Its client
    certificate's expiry is warned of at the start.
    """

    timeout = 60

    @defer.inlineCallbacks
    def start(self, *extra: str, pty: bool = False) -> Any:
        """
        Start C{twistd -n spwm-agent} towards a port nobody listens on
        (it keeps trying) with C{extra}, and wait until its SIP listens;
        with C{pty}, on a terminal of its own.
        """
        self.process = WorkerProcess()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        low = free_port(following=4)
        args = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "spwm-agent", "--contact", f"127.0.0.1:{free_port()}", "--server-name", "contact.spwm.test",
            "--sip-listen", f"127.0.0.1:{free_port()}", "--media-ports", f"{low}-{low + 3}",
            "--status-interval", "0", *extra,
        ]  # fmt: skip
        self.transport = reactor.spawnProcess(self.process, sys.executable, args, env=env, path=ROOT, usePTY=pty)
        self.addCleanup(ReloadSignalTests.stop, self)  # type: ignore[arg-type]
        try:
            yield wait_until(lambda: self.process.ended.called or "SIP on udp and tcp" in self.process.text(), timeout=30)
        except AssertionError:
            self.fail(f"it did not start: {self.process.text()}")
        if self.process.ended.called:
            self.fail(f"it did not start: {self.process.text()}")

    @defer.inlineCallbacks
    def test_sighup_loads_the_client_certificate_again(self) -> Any:
        """
        Mutual TLS with a client certificate that expires in 10 days: a
        warning at the start; renewed files and C{SIGHUP}: one line names
        the new certificate, and the agent keeps running.
        """
        ca = TestCA(os.path.abspath(self.mktemp()))
        client = ca.issue(["agent-1"], "client-agent-1", client=True, days=10)
        yield self.start(
            "--agent-id", "agent-1", "--ca", ca.ca_file, "--client-cert", client.cert, "--client-key", client.key
        )
        yield wait_until(lambda: "certificate in use (agent-1," in self.process.text(), timeout=10)
        text = self.process.text()
        self.assertIn("--ca, --client-cert: the certificate in use (agent-1, ", text)
        self.assertIn("days: renew it (renewed files are loaded within 60 s, or at once on SIGHUP)", text)
        renew(ca, client, "agent-1", client=True)
        os.kill(self.transport.pid, signal.SIGHUP)
        yield wait_until(lambda: "certificate loaded again (SIGHUP)" in self.process.text(), timeout=10)
        self.assertIn(
            "--ca, --client-cert: certificate loaded again (SIGHUP): agent-1, expires ", self.process.text()
        )
        self.assertIn("new tunnel connections get it, open ones keep theirs", self.process.text())
        self.assertFalse(self.process.ended.called)
        yield ReloadSignalTests.stop(self)  # type: ignore[arg-type]
        self.assertIn("Server Shut Down.", self.process.text())
        self.assertNotIn("Traceback", self.process.text())

    @defer.inlineCallbacks
    def test_sighup_without_certificate_files(self) -> Any:
        """
        An agent with no certificate files of its own (C{--plaintext}):
        C{SIGHUP} says so in one line and the agent keeps running.
        """
        yield self.start("--plaintext")
        os.kill(self.transport.pid, signal.SIGHUP)
        yield wait_until(
            lambda: "SIGHUP: nothing to load again (no --sip-tls-cert, --client-cert, --ca or --cdr-file)" in self.process.text()
        )
        self.assertFalse(self.process.ended.called)
        self.assertNotIn("Traceback", self.process.text())

    @defer.inlineCallbacks
    def test_sighup_on_a_terminal_ends_it(self) -> Any:
        """
        An agent started in a shell (its output a terminal) ends when the
        terminal hangs up, as a program there should: no handler.
        """
        from twisted.internet.error import ProcessTerminated

        yield self.start("--plaintext", pty=True)
        os.kill(self.transport.pid, signal.SIGHUP)
        yield wait_until(lambda: self.process.ended.called, timeout=10)
        ended = yield self.process.ended
        self.assertIsInstance(ended, ProcessTerminated)
        self.assertEqual(ended.signal, signal.SIGHUP)
        self.assertNotIn("nothing to load again", self.process.text())
