"""
Both halves started as a user starts them (C{twistd -n}, in a child process)
on loopback: a listener that cannot be bound, or a bad configuration, stops
the process at once with one line and a non-zero exit status, without a
traceback; C{--version} prints SPWM's version.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

import spwm
from spwm.testing.ports import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: seconds a half may take to give up; far more than it needs (about 1 s)
TIMEOUT = 30


def twistd(*argv: str, daemon: list[str] | None = None) -> tuple[int, list[str]]:
    """
    Run C{twistd --pidfile= -n ARGV} (or, with C{daemon}, C{twistd DAEMON
    ARGV}) to its end.

    @return: the exit status and the lines it wrote (standard output, then
        standard error).
    @raise subprocess.TimeoutExpired: it was still running after
        L{TIMEOUT} seconds (it is killed).
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            *(["--pidfile=", "-n"] if daemon is None else daemon),
            *argv,
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return done.returncode, (done.stdout + done.stderr).splitlines()


class StartupTestCase(SynchronousTestCase):
    def busy(self, kind: int = socket.SOCK_STREAM) -> int:
        """
        Take a loopback port for the duration of the test.

        @return: its number.
        """
        sock = socket.socket(socket.AF_INET, kind)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        return sock.getsockname()[1]

    def assertStopsWith(self, argv: list[str], line: str) -> None:
        """
        The half started with C{argv} exits with status 1, having written
        exactly one line that names it (C{spwm-...:}), ending in C{line},
        and no traceback or other error.
        """
        code, lines = twistd(*argv)
        text = "\n".join(lines)
        self.assertEqual(code, 1, text)
        self.assertNotIn("Traceback", text)
        ours = [x for x in lines if "spwm-agent:" in x or "spwm-contact:" in x]
        self.assertEqual(len(ours), 1, text)
        self.assertTrue(ours[0].endswith(line), text)
        errors = [x for x in lines if "#error]" in x or "#critical]" in x]
        self.assertIn(errors, ([], ours), text)


class ContactStartupTests(StartupTestCase):
    """
    The contact point refuses to start on ports in use.
    """

    def contact(self, *extra: str) -> list[str]:
        return [
            "spwm-contact",
            "--plaintext",
            "--listen",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--sip-address",
            f"127.0.0.1:{free_port()}",
            "--status-interval",
            "0",
            *extra,
        ]

    def test_tunnel_port_in_use(self) -> None:
        """
        A tunnel port in use: C{--listen} and the address, exit status 1.
        """
        port = self.busy()
        self.assertStopsWith(
            self.contact("--listen", f"tcp:{port}:interface=127.0.0.1"),
            f"spwm-contact: --listen tcp:{port}:interface=127.0.0.1: address already in use",
        )

    def test_worker_port_in_use(self) -> None:
        """
        With C{--workers 2}, worker 1's own port in use: the worker says
        which option and address, the supervisor that it stops the contact
        point for it, and the whole contact point exits with status 1 (as
        one that cannot bind its own listener does), without a traceback.
        """
        listen = free_port(following=2)
        port = listen + 2
        with socket.socket() as held:
            held.bind(("127.0.0.1", port))
            held.listen()
            code, lines = twistd(*self.contact("--listen", f"tcp:{listen}:interface=127.0.0.1", "--workers", "2"))
        text = "\n".join(lines)
        self.assertEqual(code, 1, text)
        self.assertNotIn("Traceback", text)
        self.assertIn(f"spwm-contact: --worker-ports tcp:{port}:interface=127.0.0.1 (this worker's own port): address already in use", text)
        self.assertIn("worker 1 exited with status 1 at start; stopping the contact point", text)

    def test_sip_port_in_use(self) -> None:
        """
        An operator-side SIP port in use: C{--sip-address} and the address.
        """
        port = self.busy(socket.SOCK_DGRAM)
        self.assertStopsWith(
            self.contact("--sip-address", f"127.0.0.1:{port}"),
            f"spwm-contact: --sip-address udp 127.0.0.1:{port}: address already in use",
        )

    def test_status_port_in_use(self) -> None:
        """
        A status port in use: C{--status-listen} and the address.
        """
        port = self.busy()
        self.assertStopsWith(
            self.contact("--status-listen", f"tcp:{port}:interface=127.0.0.1"),
            f"spwm-contact: --status-listen tcp:{port}:interface=127.0.0.1: address already in use",
        )

    def test_media_address_not_ours(self) -> None:
        """
        A media address that is not this host's: C{--media-ports}, the range
        and the address.
        """
        self.assertStopsWith(
            self.contact("--media-address", "192.0.2.7"),
            "spwm-contact: --media-ports 50000-50999 on 192.0.2.7: not an address of this host",
        )

    def test_toml_flag_not_boolean(self) -> None:
        """
        C{plaintext = "yes"} in the file: one line naming the key.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('plaintext = "yes"\n')
        self.assertStopsWith(
            ["spwm-contact", "--config", path],
            f"spwm-contact: invalid configuration: {path}: plaintext: must be true or false, not 'yes'",
        )

    def test_cdr_file_cannot_be_opened(self) -> None:
        """
        A C{--cdr-file} in a directory that does not exist: one line, also
        with C{--workers} (the supervisor checks it before any worker
        starts).
        """
        for workers in ([], ["--workers", "2"]):
            self.assertStopsWith(
                self.contact("--cdr-file", "/nonexistent/cdr.jsonl", *workers),
                "spwm-contact: invalid configuration: cdr-file: cannot open '/nonexistent/cdr.jsonl' for appending:"
                " No such file or directory",
            )

    def test_missing_config(self) -> None:
        """
        A C{--config} pointing nowhere: one line naming it.
        """
        self.assertStopsWith(
            ["spwm-contact", "--config", "/nonexistent/contact.toml"],
            "spwm-contact: invalid configuration: config: cannot read '/nonexistent/contact.toml': "
            "No such file or directory",
        )


class AgentStartupTests(StartupTestCase):
    """
    The agent refuses to start on ports in use.
    """

    def agent(self, *extra: str) -> list[str]:
        return [
            "spwm-agent",
            "--plaintext",
            "--contact",
            f"127.0.0.1:{free_port()}",
            "--sip-listen",
            f"127.0.0.1:{free_port()}",
            "--status-interval",
            "0",
            *extra,
        ]

    def test_sip_port_in_use(self) -> None:
        """
        A SIP port in use: C{--sip-listen} and the address, exit status 1.
        """
        port = self.busy(socket.SOCK_DGRAM)
        self.assertStopsWith(
            self.agent("--sip-listen", f"127.0.0.1:{port}"),
            f"spwm-agent: --sip-listen udp 127.0.0.1:{port}: address already in use",
        )

    def test_forward_port_in_use(self) -> None:
        """
        A local forward port in use: C{--forward-udp} and the forward.
        """
        port = self.busy(socket.SOCK_DGRAM)
        self.assertStopsWith(
            self.agent("--forward-udp", f"{port}=192.0.2.9:7000"),
            f"spwm-agent: --forward-udp 127.0.0.1:{port}=192.0.2.9:7000: address already in use",
        )

    def test_numbers_out_of_range(self) -> None:
        """
        A receive buffer too large for the kernel's C{int} and an infinite
        keepalive interval are refused in one line each; they were a
        traceback at start (C{setsockopt}) and a traceback at each tunnel
        connection (C{TCP_KEEPIDLE}).
        """
        self.assertStopsWith(
            self.agent("--udp-buffer", "99999999999999999999"),
            "spwm-agent: invalid configuration: --udp-buffer: must be at most 2147483647, not '99999999999999999999'",
        )
        self.assertStopsWith(
            self.agent("--keepalive-interval", "inf"),
            "spwm-agent: invalid configuration: --keepalive-interval: must be a finite number, not 'inf'",
        )

    def test_media_range_in_use(self) -> None:
        """
        A media range whose every pair is in use: C{--media-ports}.
        """
        # Two adjacent UDP ports, even first, both taken.
        held = []
        for _ in range(100):
            low = free_port() & ~1
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
            try:
                for offset, sock in enumerate(socks):
                    sock.bind(("127.0.0.1", low + offset))
            except OSError:
                for sock in socks:
                    sock.close()
                continue
            held = socks
            break
        self.assertTrue(held, "no two adjacent free ports")
        for sock in held:
            self.addCleanup(sock.close)
        self.assertStopsWith(
            self.agent("--media-ports", f"{low}-{low + 1}"),
            f"spwm-agent: --media-ports {low}-{low + 1} on 127.0.0.1: every port pair is in use",
        )

    def test_daemon(self) -> None:
        """
        Without C{-n}, twistd's waiting parent exits 1 with the line (it
        used to wait for ever), the log has it and the PID file is gone.
        """
        port = self.busy(socket.SOCK_DGRAM)
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        pidfile, logfile = os.path.join(tmp, "agent.pid"), os.path.join(tmp, "agent.log")
        line = f"spwm-agent: --sip-listen udp 127.0.0.1:{port}: address already in use"
        code, lines = twistd(
            *self.agent("--sip-listen", f"127.0.0.1:{port}"), daemon=[f"--pidfile={pidfile}", f"--logfile={logfile}"]
        )
        self.assertEqual(code, 1, lines)
        self.assertIn(line, "\n".join(lines))
        # The parent exits as soon as the daemon has told it; the daemon
        # then removes its PID file and writes the line as it exits.
        log = ""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            with open(logfile) as f:
                log = f.read()
            if line in log and not os.path.exists(pidfile):
                break
            time.sleep(0.1)
        self.assertIn(line, log)
        self.assertNotIn("Traceback", log)
        self.assertFalse(os.path.exists(pidfile))

    def test_missing_ca(self) -> None:
        """
        A C{--ca} pointing nowhere: one line naming it.
        """
        self.assertStopsWith(
            ["spwm-agent", "--ca", "/nonexistent/ca.pem"],
            "spwm-agent: invalid configuration: --ca: cannot read '/nonexistent/ca.pem': No such file or directory",
        )

    def test_version(self) -> None:
        """
        C{twistd -n spwm-agent --version} prints SPWM's version and exits 0.
        """
        for half in ("spwm-agent", "spwm-contact"):
            code, lines = twistd(half, "--version")
            self.assertEqual(code, 0, lines)
            self.assertEqual(len(lines), 1, lines)
            self.assertTrue(lines[0].startswith(f"{half} {spwm.__version__} (Twisted "), lines)
