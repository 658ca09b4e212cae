"""
The status page in a real browser: a contact point and two agents on
loopback, a call with RTP between two test phones, and Debian's Chromium
headless loading the contact point's and an agent's page (its DOM and a
screenshot, kept as an artifact in the test's directory under
C{_trial_temp}).

Without Chromium the test is skipped, or fails with C{SPWM_REQUIRE_E2E=1}
(CI installs it: C{.ci/run}).  Each browser run is bounded in time and
killed by its process group id (the browser's PID) when over.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from typing import Any

from twisted.internet import defer, protocol, reactor

from spwm.testing.required import unavailable

from tests.integration.test_status import _WithStatus
from tests.integration.test_tunnel_loopback import wait_until

#: How long one browser run may take before it is killed.
BROWSER_TIMEOUT = 60.0


def chromium() -> str | None:
    """
    The Chromium binary: C{$SPWM_CHROMIUM}, else C{chromium} on the path.
    """
    path = os.environ.get("SPWM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        if sum(len(e) for e in self.err) < 1 << 20:
            self.err.append(data)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


def browser_argv(binary: str, args: list[str], directory: str) -> list[str]:
    """
    The command line of one headless Chromium run with C{args} (a
    profile in C{directory}); also used by the end-to-end monitoring test
    (C{tests/e2e/test_monitoring.py}), which runs it in a namespace.
    """
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--user-data-dir=" + os.path.join(directory, "profile"),
        *args,
    ]


@defer.inlineCallbacks
def run_browser(binary: str, args: list[str], directory: str) -> Any:
    """
    Run Chromium headless with C{args} (in its own session, so that it
    and its helper processes are killed together by its PID), at most
    L{BROWSER_TIMEOUT} seconds.

    @return: (exit code, standard output, standard error).
    """
    argv = ["setsid", *browser_argv(binary, args, directory)]
    collect = _Collect()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": directory, "LANG": "C.UTF-8"}
    process = reactor.spawnProcess(collect, shutil.which("setsid") or "/usr/bin/setsid", argv, env=env, path=directory)
    pid = process.pid

    def kill() -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = reactor.callLater(BROWSER_TIMEOUT, kill)
    try:
        code = yield collect.ended
    finally:
        if timer.active():
            timer.cancel()
        # helpers left behind by the browser go with its group
        kill()
    return code, b"".join(collect.out), b"".join(collect.err)


class BrowserTests(_WithStatus):
    """
    The page of a running contact point and agent, in Chromium.
    """

    timeout = 180

    def setUp(self) -> Any:
        binary = chromium()
        if binary is None:
            unavailable("Chromium not found (apt-get install chromium, or set SPWM_CHROMIUM)")
        if shutil.which("setsid") is None:
            self.fail("setsid (util-linux) not found")
        self.chromium = binary
        return super().setUp()

    @defer.inlineCallbacks
    def load(self, service: Any, name: str) -> Any:
        """
        The DOM of a half's page after it loaded, and a screenshot of it.
        """
        port = service.status_http.port.getHost().port
        url = f"http://127.0.0.1:{port}/"
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        # The page reloads itself every 5 s: stop well before.
        budget = "--virtual-time-budget=2000"
        code, dom, err = yield run_browser(self.chromium, [budget, "--dump-dom", url], directory)
        self.assertEqual(code, 0, err[-2000:])
        screenshot = os.path.join(directory, f"status-{name}.png")
        code, _, err = yield run_browser(
            self.chromium, [budget, "--window-size=1400,1000", "--screenshot=" + screenshot, url], directory
        )
        self.assertEqual(code, 0, err[-2000:])
        with open(screenshot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        with open(os.path.join(directory, f"status-{name}.html"), "wb") as f:
            f.write(dom)
        return dom.decode("utf-8", "replace")

    def assert_call_shown(self, dom: str, call_id: str) -> None:
        """
        The page's calls table has the call, answered, with its From and
        To and packet figures above zero (per leg from the quality
        measurements, or the relay's counts without them).
        """
        start = dom.find('<table id="calls">')
        end = dom.find('<h2 id="ended_calls-title"', start)
        self.assertTrue(0 <= start < end, dom[-3000:])
        calls = dom[start:end]
        self.assertIn(f">{call_id}</td>", calls)
        self.assertIn("<td>answered</td>", calls)
        self.assertIn("sip:alice@example.test", calls)
        self.assertIn("sip:bob@example.test", calls)
        legs = [int(n) for n in re.findall(r'<tr><th>(?:lan|tunnel|operator)</th><td class="n">(\d+)</td>', calls)]
        relay = [int(a) + int(b) for a, b in re.findall(r"(\d+) in, (\d+) out \(no quality figures\)", calls)]
        self.assertTrue(legs or relay, calls)
        self.assertGreater(max(legs + relay), 0, calls)

    @defer.inlineCallbacks
    def test_call_on_the_page(self) -> Any:
        """
        During a call with RTP both ways, the contact point's page shows
        both tunnels, both registrations and the call with its figures;
        the agent's page its tunnel and the call.
        """
        alice, bob, a_call, b_call = yield self.call()
        yield wait_until(lambda: self.contact.media.status()["packets_out"] > 20)
        (call_id,) = {c["call_id"] for c in self.contact.media.call_list()}
        dom = yield self.load(self.contact, "contact")
        self.assertIn("<h1>SPWM contact point</h1>", dom)
        self.assertIn("Tunnels (2)", dom)
        self.assertIn("Registrations (2)", dom)
        self.assertIn("Calls in progress (2)", dom)
        for agent_id in ("a1", "a2"):
            self.assertIn(f"<td>{agent_id}</td>", dom)
        self.assertIn("TLSv1.3", dom)
        self.assert_call_shown(dom, call_id)
        dom = yield self.load(self.agents[0], "agent")
        self.assertIn("<h1>SPWM agent</h1>", dom)
        self.assertIn("Tunnels (1)", dom)
        self.assertIn("Calls in progress (1)", dom)
        self.assert_call_shown(dom, call_id)
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)


