"""
End-to-end proof of the monitoring (issue 14): during a call that SIPp
sets up through agent and contact point (alice on the LAN calls bob, the
operator's UAS at Kamailio, RTP from a pcap, echoed by bob), the status
listener of each half (C{--status-listen} on its own address, in its
namespace) gives the call in C{/status} with per-leg figures that match
what SIPp sent and what the bed's nftables counters counted, C{/metrics}
shows it, and the page C{/} loaded in headless Chromium (run in the
half's namespace) lists it; after the BYE the call detail record is in
both halves' logs and the call has moved from C{calls} to
C{ended_calls}.

The screenshots and DOMs of the pages are kept in the test's log
directory (C{_trial_temp/...}).  Without Chromium, or without the bed,
the test is skipped, or fails with C{SPWM_REQUIRE_E2E=1}.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

from spwm.testing.required import unavailable

from tests.integration.test_status_browser import BROWSER_TIMEOUT, browser_argv, chromium

from .netbed import AGENT, CONTACT, PHONE, USERS, NetbedError, sipp_argv
from .sipbed import PCAP, PCAP_PACKETS, SpwmSipTestCase

#: The status listeners' port (on the half's own address).
STATUS_PORT = 9090

#: Packets the per-leg figures may differ from the kernel's counts by
#: (the counters see the datagrams on the wire, the halves what their
#: sockets read; a packet in flight at the moment of reading).
SLACK = 3

#: Fetch a URL (argv[1]) and write its body to standard output; run in a
#: namespace with the bed's own timeout.
FETCH = (
    "import sys, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=5) as r:\n"
    "    sys.stdout.buffer.write(r.read())\n"
)


class MonitoringTests(SpwmSipTestCase):
    """
    One call watched through both halves' status listeners.
    """

    def setUp(self) -> None:
        super().setUp()
        binary = chromium()
        if binary is None:
            unavailable("Chromium not found (apt-get install chromium, or set SPWM_CHROMIUM)")
        self.chromium = binary
        self.make_topology("strict")
        self.start_kamailio()
        self.start_spwm_contact(tls=True, extra=["--status-listen", f"tcp:{STATUS_PORT}:interface={CONTACT}"])
        self.wait_for_listener("op", "tcp", CONTACT, STATUS_PORT, self.contact)
        self.start_spwm_agent(extra=["--status-listen", f"tcp:{STATUS_PORT}:interface={AGENT}"])
        self.wait_for_listener("lan", "tcp", AGENT, STATUS_PORT, self.agent)
        self.register_uas("bob")
        self.assertSippSuccess(self.sipp_uac("register.xml", f"{AGENT}:5060", user="alice", name="register-alice"))

    # -- helpers -------------------------------------------------------------

    def where(self, side: str) -> tuple[str, str]:
        """The namespace and status URL base of C{side}."""
        if side == "agent":
            return "lan", f"http://{AGENT}:{STATUS_PORT}"
        return "op", f"http://{CONTACT}:{STATUS_PORT}"

    def fetch(self, side: str, path: str) -> str:
        """The body of C{path} from C{side}'s status listener (bounded)."""
        role, base = self.where(side)
        done = self.topology.exec(role, [sys.executable, "-c", FETCH, base + path])
        return done.stdout.decode("utf-8", "replace")

    def status(self, side: str) -> dict[str, Any]:
        """C{side}'s C{/status} document."""
        return json.loads(self.fetch(side, "/status"))

    def page(self, side: str) -> str:
        """
        C{side}'s page in headless Chromium, run in its namespace: the DOM
        after load, and a screenshot kept next to it in the log directory.
        Each run is bounded by L{BROWSER_TIMEOUT} and stopped by its
        process group (its PID) whatever happens.
        """
        role, base = self.where(side)
        directory = self.logdir / f"browser-{side}"
        directory.mkdir(exist_ok=True)
        screenshot = directory / f"status-{side}.png"
        budget = "--virtual-time-budget=2000"
        runs = (
            ("dom", [budget, "--dump-dom", base + "/"]),
            ("shot", [budget, "--window-size=1400,1000", "--screenshot=" + str(screenshot), base + "/"]),
        )
        dom = ""
        for name, args in runs:
            process = self.topology.spawn(
                role, f"chromium-{side}-{name}", browser_argv(self.chromium, args, str(directory)),
                env={"HOME": str(directory), "LANG": "C.UTF-8"}, cwd=directory,
            )
            try:
                code = process.wait(BROWSER_TIMEOUT)
            finally:
                process.stop(grace=1.0)
            self.assertEqual(code, 0, process.stderr()[-2000:])
            if name == "dom":
                dom = process.stdout()
        self.assertEqual(screenshot.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
        (directory / f"status-{side}.html").write_text(dom, "utf-8")
        return dom

    def wait_until(self, predicate: Any, what: str, timeout: float = 15.0) -> None:
        """Poll C{predicate} every 0.2 s until true, at most C{timeout} s."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise NetbedError(f"not within {timeout}s: {what}")
            time.sleep(0.2)

    def the_call(self, document: dict[str, Any], call_id: str, listed: str = "calls") -> dict[str, Any]:
        """
        The one item of C{call_id} in a list of a C{/status} document,
        answered (Kamailio challenges alice's first INVITE: that one, same
        Call-ID, ends at once and leaves no call record of its own).
        """
        items = [c for c in document["lists"][listed]["items"] if c["call_id"] == call_id]
        self.assertEqual(len(items), 1, document["lists"][listed])
        self.assertIsNotNone(items[0]["answered_at"], items[0])
        return items[0]

    def assertNear(self, figure: int, counted: int, what: str) -> None:
        self.assertLessEqual(abs(figure - counted), SLACK, f"{what}: status says {figure}, the bed counted {counted}")

    def assertClean(self, leg: dict[str, Any], counted: int, what: str) -> None:
        """
        A leg of a clean bed: its packets within L{SLACK} of the kernel's
        count, nothing lost, reordered or duplicated, a small jitter.
        """
        self.assertNear(leg["packets"], counted, what)
        self.assertEqual((leg["lost"], leg["reordered"], leg["duplicates"]), (0, 0, 0), f"{what}: {leg}")
        self.assertGreaterEqual(leg["jitter_ms"], 0.0)
        self.assertLess(leg["jitter_ms"], 20.0, f"{what}: {leg}")

    # -- the test ------------------------------------------------------------

    def test_call_seen_in_json_metrics_and_page(self) -> None:
        """
        alice calls bob with the pcap's RTP, bob echoes it: while the call
        is up (the pcap played), each half's C{/status} lists it with its
        per-leg figures within a few packets of the bed's counters, no
        loss, small jitter, the tunnel leg's transit estimate and late
        drops; C{/metrics} counts one call in progress; each half's page
        shows the call with its legs.  After the BYE both logs have the
        call's detail record, C{calls} is empty and C{ended_calls} has it.
        """
        self.count_call_media()
        uas = self.sipp_uas()
        uac = self.topology.spawn(
            "lan", "alice-calls-bob",
            sipp_argv(
                "uac_rtp.xml", f"{AGENT}:5060", PHONE, 5060, "alice-calls-bob", self.logdir,
                keys={"user": "alice", "pcap": PCAP},
                extra=["-s", "bob", "-au", "alice", "-ap", USERS["alice"], "-m", "1",
                       "-d", "20000", "-timeout", "60s", "-timeout_error", "-mi", PHONE, "-mp", "6000"],
            ),
            cwd=self.logdir,
        )
        # the pcap plays for 4.7 s; then the call is up and silent
        self.wait_until(lambda: self.counter("lan", "phone_sent") >= PCAP_PACKETS, "the pcap sent", timeout=20.0)
        self.wait_until(
            lambda: self.counter("lan", "at_phone") >= self.counter("op", "from_uas") >= PCAP_PACKETS - SLACK,
            "the echo back at the phone",
        )
        time.sleep(0.5)
        counts = {
            name: self.counter(role, name)
            for role, name in (("lan", "phone_sent"), ("op", "at_uas"), ("op", "from_uas"), ("lan", "at_phone"))
        }
        self.assertEqual(counts["phone_sent"], PCAP_PACKETS, counts)

        agent, contact = self.status("agent"), self.status("contact")
        (listed,) = agent["lists"]["calls"]["items"]
        call_id = listed["call_id"]
        agent_call = self.the_call(agent, call_id)
        contact_call = self.the_call(contact, call_id)
        for call in (agent_call, contact_call):
            self.assertEqual(call["state"], "answered", call)
            self.assertIn("alice", call["from"])
            self.assertIn("bob", call["to"])
            self.assertIsNotNone(call["setup_s"])
        (a_stream,) = agent_call["streams"]
        (c_stream,) = contact_call["streams"]
        a_legs, c_legs = a_stream["quality"]["legs"], c_stream["quality"]["legs"]
        self.assertIsNone(a_legs["operator"])
        self.assertIsNone(c_legs["lan"])
        # up: phone -> agent (lan) -> tunnel -> contact point -> bob
        self.assertClean(a_legs["lan"], counts["phone_sent"], "agent, lan leg (up)")
        self.assertClean(c_legs["tunnel"], counts["at_uas"], "contact point, tunnel leg (up)")
        # down: bob's echo -> contact point (operator) -> tunnel -> agent
        self.assertClean(c_legs["operator"], counts["from_uas"], "contact point, operator leg (down)")
        self.assertClean(a_legs["tunnel"], counts["at_phone"], "agent, tunnel leg (down)")
        for legs, who in ((a_legs, "agent"), (c_legs, "contact point")):
            tunnel = legs["tunnel"]
            # half the tunnel's round trip on the bed (sub-millisecond
            # links): known, and small
            self.assertIsNotNone(tunnel["transit_ms"], f"{who}: {tunnel}")
            self.assertLess(tunnel["transit_ms"], 100.0, f"{who}: {tunnel}")
            self.assertEqual(tunnel["late_dropped"], 0, f"{who}: {tunnel}")
        for stream in (a_stream, c_stream):
            self.assertEqual(stream["quality"]["codec"], "PCMA/8000")
            for direction in ("up", "down"):
                self.assertGreater(stream["quality"]["mos"][direction], 4.0, stream["quality"])

        for side in ("agent", "contact"):
            metrics = self.fetch(side, "/metrics")
            self.assertIn("# TYPE spwm_calls_in_progress gauge", metrics)
            self.assertRegex(metrics, rf'spwm_calls_in_progress\{{side="{side}"\}} 1\.0')
            self.assertIn("# HELP spwm_media_jitter_seconds", metrics)
            packets = re.search(rf'spwm_media_packets_in_total\{{side="{side}"\}} ([0-9.e+]+)', metrics)
            self.assertIsNotNone(packets, metrics[-3000:])
            assert packets is not None
            self.assertGreaterEqual(float(packets.group(1)), PCAP_PACKETS - SLACK)

            dom = self.page(side)
            start = dom.find('<table id="calls">')
            end = dom.find('<h2 id="ended_calls-title"', start)
            self.assertTrue(0 <= start < end, dom[-3000:])
            calls = dom[start:end]
            self.assertIn(f">{call_id}</td>", calls)
            shown = {
                leg: int(n)
                for leg, n in re.findall(r'<tr><th>(lan|tunnel|operator)</th><td class="n">(\d+)</td>', calls)
            }
            expected = {"agent": {"lan", "tunnel"}, "contact": {"tunnel", "operator"}}[side]
            self.assertEqual(set(shown), expected, calls)
            self.assertGreaterEqual(min(shown.values()), PCAP_PACKETS - SLACK, calls)

        self.assertSippSuccess(self.wait_sipp(uac, timeout=60.0))
        self.assertSippSuccess(self.sipp_finish(uas))
        record = re.compile(
            rf"call {re.escape(call_id)} ended \(dialog ended\) after [0-9.]+s, answered for [0-9.]+s: "
            r"sip:alice@\S+ -> sip:bob@\S+, codec PCMA/8000; stream 0: .* 2[0-9][0-9] pkts lost 0 .*; MOS up [0-9.]+"
        )
        for process in (self.agent, self.contact):
            self.wait_until(lambda: record.search(process.stdout()) is not None, f"{process.name}: the call detail record")
        for side in ("agent", "contact"):
            document = self.status(side)
            self.assertEqual(document["lists"]["calls"]["total"], 0, document["lists"]["calls"])
            ended = self.the_call(document, call_id, "ended_calls")
            self.assertEqual(ended["reason"], "dialog ended")
            self.assertIsNotNone(ended["ended"])
            metrics = self.fetch(side, "/metrics")
            self.assertRegex(metrics, rf'spwm_calls_in_progress\{{side="{side}"\}} 0\.0')
            # by why it ended: one answered call, ended by its BYE
            ended_yes = {
                reason: float(value)
                for reason, value in re.findall(
                    r'^spwm_calls_ended_total\{answered="yes",reason="(\w+)",side="\w+"\} (\S+)$', metrics, re.M
                )
            }
            self.assertEqual({r: n for r, n in ended_yes.items() if n}, {"dialog_ended": 1.0}, metrics[-3000:])
            # the per-leg families got the call's two legs on this half
            legs = {"agent": ("lan", "tunnel"), "contact": ("tunnel", "operator")}[side]
            for family, value in (("spwm_media_jitter_seconds_count", "1.0"), ("spwm_media_lost_packets_total", "0.0")):
                found = {
                    leg: line.rsplit(" ", 1)[1]
                    for line in metrics.splitlines()
                    for leg in legs
                    if line.startswith(family + "{") and f'leg="{leg}"' in line
                }
                self.assertEqual(found, {leg: value for leg in legs}, f"{side} {family}")
