"""
Tests for the benchmark of one contact-point worker's media
(C{bench/contact_media.py}): its lean agent speaks the tunnel protocol as
the contact point expects, so the calls it sets up are real calls whose
RTP the contact point relays both ways.  (The figures are the benchmark's:
C{python3 bench/contact_media.py}.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from bench.contact_media import caveats, sdp, sdp_port, sip_message, sip_parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SipTests(SynchronousTestCase):
    def test_message_round_trip(self) -> None:
        """
        What the bench writes it reads back: the start line, every header
        value under its lower-case name in order, and the body after
        C{Content-Length}.
        """
        body = sdp("caller", 40002)
        data = sip_message("INVITE sip:a@b SIP/2.0", [("Via", "v1"), ("Via", "v2"), ("Call-ID", "x")], body)
        start, headers, got = sip_parse(data)
        self.assertEqual(start, "INVITE sip:a@b SIP/2.0")
        self.assertEqual(headers["via"], ["v1", "v2"])
        self.assertEqual(headers["content-length"], [str(len(body))])
        self.assertEqual(got, body)
        self.assertEqual(sdp_port(body), 40002)


class CaveatTests(SynchronousTestCase):
    def test_generator_and_other_work(self) -> None:
        """
        A step's line says when the load generator was near the end of its
        core, or when other work took a tenth of a core or more (the
        machine's busy time less the two processes'); nothing otherwise.
        """
        quiet = {"bench_cpu": 0.8, "contact_cpu": 0.93, "busy": 0.87}
        self.assertEqual(caveats(quiet, 2), "")
        busy_bench = dict(quiet, bench_cpu=0.92, busy=0.93)
        self.assertEqual(caveats(busy_bench, 2), " [the load generator used 92 % of its core: it may have limited this step]")
        shared = {"bench_cpu": 0.41, "contact_cpu": 0.61, "busy": 0.98}
        self.assertEqual(caveats(shared, 2), " [other work on the machine took 0.94 of a core: figures disturbed]")


class RunTests(SynchronousTestCase):
    def test_calls_relayed_both_ways(self) -> None:
        """
        Two calls, then three (the sequence numbers of a channel go on from
        step to step), over TLS, one second of RTP each, with two more
        calls set up and hung up beside them every 0.4 s: every packet of
        the relay phase arrives once in each direction, every call ends
        with a 200 to its BYE, every call beside them is answered and
        ended.  (The latency is the benchmark's to judge: every step runs,
        whatever its p99 on a busy machine.)
        """
        out = subprocess.run(
            [sys.executable, os.path.join(ROOT, "bench", "contact_media.py"), "--calls", "2,3", "--duration", "1", "--sip-burst", "2", "--sip-every", "0.4", "--keep-going",
             "--no-pin", "--max-time", "90"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        row = re.search(r"^\| 3 \| relay \| (\d+) / (\d+) \| ([\d.]+) / ([\d.]+) %", out.stdout, re.M)
        self.assertIsNotNone(row, out.stdout)
        assert row is not None
        sent_fwd, sent_ret = int(row.group(1)), int(row.group(2))
        self.assertGreater(sent_fwd, 100)
        self.assertGreater(sent_ret, 100)
        self.assertEqual((float(row.group(3)), float(row.group(4))), (0.0, 0.0), out.stdout)
        self.assertIn("hung up: 3 of 3 BYEs answered 200", out.stdout)
        # the calls set up beside the media: every one answered and ended
        side = re.findall(r"SIP beside the media: (\d+) more calls .*: (\d+) answered, (\d+) ended", out.stdout)
        self.assertEqual(len(side), 2, out.stdout)
        for started, answered, ended in side:
            self.assertGreater(int(started), 0)
            self.assertEqual((answered, ended), (started, started), out.stdout)
        self.assertNotIn("duplicates delivered", out.stdout)
