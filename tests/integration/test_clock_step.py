"""
The system clock set back under a running agent (C{twistd -n spwm-agent},
its wall clock moved by libfaketime, the C{faketime} package): the agent's
timers keep their delays (L{spwm.clock}).

An agent waits between attempts to reach a contact point that is down;
its clock is set back ten minutes; the contact point comes up: the agent's
tunnel is up within seconds, not ten minutes later, and its log says the
clock was set.  Without libfaketime the test is skipped, or fails with
C{SPWM_REQUIRE_E2E=1} (CI installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from spwm.testing.ports import free_port
from spwm.testing.required import unavailable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: where Debian's faketime package puts the library
LIBFAKETIME = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)

#: how far the clock is set back (s)
STEP = 600


def _library() -> str:
    for path in LIBFAKETIME:
        if os.path.exists(path):
            return path
    unavailable("libfaketime not found (apt-get install faketime)")


class ClockSetBackTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.library = _library()
        self.work = tempfile.mkdtemp(prefix="spwm-clockstep-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.procs: list[subprocess.Popen[Any]] = []
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> str:
        log = os.path.join(self.work, f"{name}.log")
        environ = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        environ.update(env or {})
        with open(log, "wb") as out:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--pidfile=", "-n", *argv],
                    cwd=ROOT,
                    env=environ,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        return log

    def wait_for(self, log: str, text: str, count: int = 1, timeout: float = 30.0) -> float:
        """
        Wait until C{log} holds C{text} C{count} times.

        @return: the seconds it took.
        """
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            with open(log, errors="replace") as f:
                if f.read().count(text) >= count:
                    return time.monotonic() - start
            for p in self.procs:
                if p.poll() is not None:
                    self.fail(f"a half exited ({p.returncode}):\n" + open(log, errors="replace").read()[-3000:])
            time.sleep(0.05)
        with open(log, errors="replace") as f:
            self.fail(f"{text!r} not {count} times in {log} within {timeout} s:\n" + f.read()[-3000:])

    def test_agent_reconnects_in_time_after_the_clock_is_set_back(self) -> None:
        tunnel, sip = free_port(), free_port()
        offset = os.path.join(self.work, "offset")
        with open(offset, "w") as f:
            f.write("+0\n")
        agent = self.start(
            "agent",
            [
                "spwm-agent",
                "--plaintext",
                "--contact",
                f"127.0.0.1:{tunnel}",
                "--reconnect-max",
                "1",
                "--sip-listen",
                f"127.0.0.1:{sip}",
                "--status-interval",
                "0",
            ],
            env={
                "LD_PRELOAD": self.library,
                "FAKETIME_TIMESTAMP_FILE": offset,
                "FAKETIME_NO_CACHE": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            },
        )
        # nothing listens: the agent waits between attempts (at most 1 s)
        self.wait_for(agent, "attempt 3 in")
        with open(offset, "w") as f:
            f.write(f"-{STEP}\n")
        # the attempt under way when the clock was set may still fail;
        # the contact point comes up once the one after it is waiting
        self.wait_for(agent, "attempt 5 in")
        self.start(
            "contact",
            [
                "spwm-contact",
                "--plaintext",
                "--listen",
                f"tcp:{tunnel}:interface=127.0.0.1",
                "--sip-address",
                f"127.0.0.1:{free_port()}",
                "--media-address",
                "127.0.0.1",
                "--status-interval",
                "0",
            ],
        )
        # within a few of its 1 s waits, not STEP seconds later
        self.wait_for(agent, "tunnel up with", timeout=20.0)
        self.wait_for(agent, f"the system clock was set back by {STEP}", timeout=20.0)
