"""
C{python3 -m spwm status [URL]}: the terminal view of a running half.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spwm.__main__ import main, render, table
from spwm.status import Status, StatusHTTPService
from spwm.testing.ports import free_port

DOC: dict[str, Any] = {
    "side": "contact",
    "version": "0.1.0",
    "uptime": 42.0,
    "lists": {
        "tunnels": {
            "total": 1,
            "items": [
                {
                    "agent": "office\x1b[31m",
                    "source": "[2001:db8::5]:40000",
                    "tls": "TLSv1.3",
                    "cipher": "TLS_AES_256_GCM_SHA384",
                    "rtt_ms": 12.25,
                    "queue_signalling": 0,
                    "queue_stream": 10,
                    "uptime": 30.0,
                }
            ],
        },
        "registrations": {
            "total": 3,
            "items": [
                {"aor": "sip:alice@example.org", "contact": "sip:alice@192.0.2.10:5062", "agent": "office", "expires_in": 590},
                {"aor": "sip:bob@example.org", "contact": "sip:bob@192.0.2.11", "agent": "office", "expires_in": 7},
            ],
        },
        "calls": {
            "total": 1,
            "items": [
                {
                    "call_id": "abc@h",
                    "from": "sip:alice@example.org",
                    "to": "sip:bob@example.org",
                    "agent": "office",
                    "state": "answered",
                    "duration": 12.0,
                    "codec": "PCMU/8000",
                    "streams": [
                        {
                            "quality": {
                                "legs": {
                                    "tunnel": {"packets": 600, "lost": 2, "jitter_ms": 3.25, "transit_ms": 20.0},
                                    "operator": None,
                                },
                                "mos": {"up": 4.3, "down": None},
                            }
                        }
                    ],
                }
            ],
        },
    },
}


def _free_port() -> int:
    return free_port()


class RenderTests(SynchronousTestCase):
    def test_table(self) -> None:
        """
        Columns are as wide as their widest cell, numbers right-aligned,
        C{None} a dash.
        """
        self.assertEqual(
            table(["name", "n"], [["a", 1], ["long name", 100], ["b", None]]).splitlines(),
            ["name         n", "---------  ---", "a            1", "long name  100", "b            -"],
        )

    def test_render(self) -> None:
        """
        Tunnels, registrations and calls, each with its count (and how many
        are shown when the listener paged them), the call's figures per
        leg; control characters from the network are not written out.
        """
        text = render(DOC)
        lines = text.splitlines()
        self.assertEqual(lines[0], "SPWM contact point 0.1.0, up 42.0 s")
        self.assertIn("Tunnels: 1", lines)
        self.assertIn("Registrations: 3 (first 2 of 3)", lines)
        self.assertNotIn("\x1b", text)
        self.assertIn("office?[31m  [2001:db8::5]:40000  TLSv1.3", text)
        self.assertIn("tunnel 600p 2lost j3.2ms d20.0ms; MOS 4.3/-", text)
        header = next(line for line in lines if line.startswith("address-of-record"))
        row = next(line for line in lines if line.startswith("sip:bob@"))
        self.assertEqual(len(header.rstrip()), len(row.rstrip()))

    def test_proxies(self) -> None:
        """
        A contact point with several operator proxies: one line under the
        header says which answer and which is in use; none without them.
        """
        self.assertFalse(any(line.startswith("Operator proxies") for line in render(DOC).splitlines()))
        first, second = "198.51.100.7:5060;transport=udp", "198.51.100.8:5060;transport=udp"

        def pool(second_up: bool, using: str) -> dict[str, Any]:
            return dict(DOC, sip={"proxies": {first: False, second: second_up}, "proxy": using})

        self.assertEqual(
            render(pool(True, second)).splitlines()[1],
            "Operator proxies: 198.51.100.7:5060;transport=udp DOES NOT ANSWER,"
            " 198.51.100.8:5060;transport=udp answers (in use)",
        )
        # with none answering, requests inside calls still go to the first
        self.assertEqual(
            render(pool(False, first)).splitlines()[1],
            "Operator proxies: 198.51.100.7:5060;transport=udp DOES NOT ANSWER (in use),"
            " 198.51.100.8:5060;transport=udp DOES NOT ANSWER; NONE ANSWERS: new SIP requests from phones get 503",
        )

    def test_certificate(self) -> None:
        """
        A contact point with TLS: its certificate and when it expires, under
        the header; close to the end it says to renew it, past it that
        agents refuse the contact point, and a renewal that did not load is
        named; nothing in plaintext.
        """
        self.assertFalse(any(line.startswith("Certificate") for line in render(DOC).splitlines()))
        cert = {"subject": "cp.example.net", "not_after": 1811462400.0, "expires_in": 90 * 86400, "reloads": 0}
        self.assertEqual(
            render(dict(DOC, certificate=cert)).splitlines()[1],
            "Certificate: cp.example.net, expires 2027-05-28 (in 90 days)",
        )
        soon = dict(cert, expires_in=3 * 86400 + 100, reloads=1)
        self.assertEqual(
            render(dict(DOC, certificate=soon)).splitlines()[1],
            "Certificate: cp.example.net, expires 2027-05-28, in 3 days: RENEW IT; loaded again once since the start",
        )
        gone = dict(cert, expires_in=-5, reloads=2, error="cannot load certificate/key: the key does not belong to the certificate")
        self.assertEqual(
            render(dict(DOC, certificate=gone)).splitlines()[1],
            "Certificate: cp.example.net, EXPIRED 2027-05-28: agents refuse this contact point;"
            " loaded again 2 times since the start; THE CHANGED FILES DO NOT LOAD"
            " (cannot load certificate/key: the key does not belong to the certificate): still the one above",
        )

    def test_client_certificate(self) -> None:
        """
        An agent with mutual TLS: its SIP over TLS certificate and the
        client certificate it presents, one line each; an expired client
        certificate says that the contact point refuses the agent.
        """
        agent = dict(DOC, side="agent")
        cert = {"subject": "agent-7", "not_after": 1811462400.0, "expires_in": 90 * 86400, "reloads": 0}
        sip = dict(cert, subject="pbx.lan.example")
        self.assertEqual(
            render(dict(agent, certificate=sip, client_certificate=cert)).splitlines()[1:3],
            [
                "Certificate: pbx.lan.example, expires 2027-05-28 (in 90 days)",
                "Client certificate: agent-7, expires 2027-05-28 (in 90 days)",
            ],
        )
        self.assertEqual(
            render(dict(agent, client_certificate=dict(cert, expires_in=-1))).splitlines()[1],
            "Client certificate: agent-7, EXPIRED 2027-05-28: a contact point with --client-ca refuses this agent",
        )

    def test_tunnel_down(self) -> None:
        """
        An agent whose tunnel is down says so under the header, with the
        last attempt's reason in words; one line per contact point that is
        not up; with both down new requests get 503, with the other up they
        go through it; an on-demand tunnel nobody needs is idle, not down;
        nothing while the tunnels are up.
        """
        agent = dict(DOC, side="agent")
        up = {"contact": "cp.example.net:443", "up": True, "failures": 0, "last_failure": None}
        self.assertFalse(any(line.startswith("Tunnel to") for line in render(dict(agent, tunnel=up)).splitlines()))
        down = dict(up, up=False, failures=3, last_failure="certificate for cp.example.net expired on 2026-11-30")
        second = dict(up, contact="cp2.example.net:443", up=False, failures=1, last_failure="Connection refused.")
        self.assertEqual(
            render(dict(agent, tunnel=down, tunnel_2=second)).splitlines()[1:3],
            [
                "Tunnel to cp.example.net:443: DOWN after 3 failed attempts: certificate for cp.example.net expired"
                " on 2026-11-30; new SIP requests from phones get 503 until it is up",
                "Tunnel to cp2.example.net:443: DOWN after 1 failed attempt: Connection refused; new SIP requests"
                " from phones get 503 until it is up",
            ],
        )
        self.assertEqual(
            render(dict(agent, tunnel=up, tunnel_2=second)).splitlines()[1],
            "Tunnel to cp2.example.net:443: DOWN after 1 failed attempt: Connection refused; new SIP requests"
            " from phones go through cp.example.net:443",
        )
        self.assertEqual(
            render(dict(agent, tunnel=down, tunnel_2=dict(second, up=True, failures=0))).splitlines()[1],
            "Tunnel to cp.example.net:443: DOWN after 3 failed attempts: certificate for cp.example.net expired"
            " on 2026-11-30; new SIP requests from phones go through cp2.example.net:443",
        )
        idle = dict(up, up=False, mode="on-demand", wanted=0)
        self.assertEqual(
            render(dict(agent, tunnel=idle)).splitlines()[1],
            "Tunnel to cp.example.net:443: idle (on demand: it connects at the next SIP from a phone)",
        )

    def test_tunnel_connections_grown(self) -> None:
        """
        An agent whose C{--tunnel-connections auto} keeps more connections
        than it starts with says how many and why, in its log's words;
        nothing at the floor, for a fixed count (no count in the document)
        or for a contact point.
        """
        agent = dict(DOC, side="agent")
        paths = {"paths": 2, "connections_wanted": 2, "connections_floor": 2, "connections_why": ""}
        self.assertFalse(any(line.startswith("Tunnel connections") for line in render(dict(agent, paths=paths)).splitlines()))
        self.assertFalse(any(line.startswith("Tunnel connections") for line in render(dict(agent, paths={"paths": 3})).splitlines()))
        grown = dict(paths, connections_wanted=16, connections_why="the media load on a lossy link needs more connections")
        self.assertEqual(
            render(dict(agent, paths=grown)).splitlines()[1],
            "Tunnel connections: 16 (auto starts with 2): the media load on a lossy link needs more connections",
        )
        self.assertFalse(
            any(line.startswith("Tunnel connections") for line in render(dict(DOC, side="contact", paths=grown)).splitlines())
        )

    def test_cdr_file_losses(self) -> None:
        """
        C{--cdr-file} records that wait for a file that takes no writes, or
        were lost, are said under the header; nothing while every record
        was written.
        """
        fine = {"path": "/var/log/spwm/cdr.jsonl", "written": 12, "waiting": 0, "write_errors": 0, "failures": 0, "reopened": 0}
        self.assertFalse(any(line.startswith("CDR file") for line in render(dict(DOC, cdr_file=fine)).splitlines()))
        self.assertEqual(
            render(dict(DOC, cdr_file=dict(fine, failures=3))).splitlines()[1],
            "CDR file /var/log/spwm/cdr.jsonl: 3 RECORDS LOST; 12 written",
        )
        self.assertEqual(
            render(dict(DOC, cdr_file=dict(fine, waiting=5, write_errors=9))).splitlines()[1],
            "CDR file /var/log/spwm/cdr.jsonl: 5 RECORDS WAIT (the file takes no writes, see the log); 12 written",
        )

    def test_loop(self) -> None:
        """
        A contact point's event loop: how late its timers run, under the
        header; a p90 of 5 ms or more is said to be a process short of CPU.
        """
        self.assertFalse(any(line.startswith("Event loop") for line in render(DOC).splitlines()))
        fine = dict(DOC, loop={"lag_ms_p50": 0.3, "lag_ms_p90": 0.62, "lag_ms_max": 1.2, "late_windows": 0})
        self.assertEqual(
            render(fine).splitlines()[1], "Event loop: timers late p50 0.3, p90 0.6, max 1.2 ms over the last 10 s"
        )
        late = dict(DOC, loop={"lag_ms_p50": 2.0, "lag_ms_p90": 17.0, "lag_ms_max": 43.0, "late_windows": 3})
        self.assertIn("p90 17.0, max 43.0 ms over the last 10 s; SHORT OF CPU", render(late).splitlines()[1])

    def test_paths(self) -> None:
        """
        A tunnel that is a path of a session shows what carries the
        session's media and its moves (media/carrier); one that is not,
        dashes; the contact point's sessions get a table of their own.
        """
        path = dict(DOC["lists"]["tunnels"]["items"][0], agent="home", media_on="quic", carrier_on="tcp",
                    media_switches=3, carrier_switches=1)
        doc = dict(DOC, lists=dict(
            DOC["lists"],
            tunnels={"total": 2, "items": [DOC["lists"]["tunnels"]["items"][0], path]},
            sessions={"total": 1, "items": [
                {"session": "s1", "agent": "home", "state": "live", "connections": ["a", "b"], "users": 2},
            ]},
        ))
        lines = render(doc).splitlines()
        header = next(line for line in lines if line.startswith("agent "))
        self.assertTrue(header.endswith("media on  switches"), header)
        home = next(line for line in lines if line.startswith("home "))
        self.assertEqual(home.split()[-2:], ["quic", "3/1"])
        office = next(line for line in lines if line.startswith("office"))
        self.assertEqual(office.split()[-3:], ["30.0", "-", "-"])
        self.assertIn("Sessions: 1", lines)
        (s1,) = [line.split() for line in lines if line.startswith("s1 ")]
        self.assertEqual(s1, ["s1", "home", "live", "2", "2"])


class ScriptTests(SynchronousTestCase):
    def test_console_script(self) -> None:
        """
        setup.cfg installs C{spwm} as L{spwm.__main__.main}.
        """
        import configparser
        import importlib
        import os

        config = configparser.ConfigParser()
        config.read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg"))
        scripts = dict(
            line.split("=", 1) for line in config["options.entry_points"]["console_scripts"].split("\n") if line.strip()
        )
        module, _, name = scripts["spwm "].strip().partition(":")
        self.assertIs(getattr(importlib.import_module(module), name), main)

    def test_reader_gone(self) -> None:
        """
        Output to a reader that went away (C{spwm compile --check | head
        -1}) ends the command with status 1, without a traceback.
        """

        class Closed(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError(32, "Broken pipe")

        err = io.StringIO()
        self.assertEqual(main(["compile", "--check"], out=Closed(), err=err), 1)
        self.assertEqual(err.getvalue(), "")

    def test_reader_gone_script(self) -> None:
        """
        The same from the command itself, buffered or not: its output pipe
        closed before it writes gives no traceback and status 1.
        """
        import os
        import subprocess
        import sys

        for unbuffered in ("", "1"):
            env = dict(os.environ, PYTHONUNBUFFERED=unbuffered)
            if not unbuffered:
                del env["PYTHONUNBUFFERED"]
            p = subprocess.Popen(
                [sys.executable, "-m", "spwm", "compile", "--check"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
            assert p.stdout is not None and p.stderr is not None
            p.stdout.close()
            errors = p.stderr.read()
            p.stderr.close()
            self.assertEqual((p.wait(timeout=30), errors), (1, b""))


class CommandTests(TestCase):
    def test_usage_errors(self) -> None:
        """
        An unknown option is a usage error of the command it was given to
        (its own usage line), and a port out of range, a C{--timeout} not
        above 0 and a negative C{--limit} are too, before anything is
        asked: status 2.
        """
        for argv, usage, message in (
            (["status", "127.0.0.1:9099", "--bogus"], "usage: spwm status", "unrecognized arguments: --bogus"),
            (["cdr", "x.jsonl", "--bogus"], "usage: spwm cdr", "unrecognized arguments: --bogus"),
            (["status", "127.0.0.1:99999"], "usage: spwm status", "127.0.0.1:99999: Port out of range 0-65535"),
            # (they were a misleading 'does not answer: Operation now in
            # progress' / 'Timeout value out of range' line, status 1)
            (["status", "--timeout", "0"], "usage: spwm status", "argument --timeout: must be greater than 0, not '0'"),
            (["status", "--timeout", "inf"], "usage: spwm status", "argument --timeout: must be a finite number"),
            (["status", "--limit", "-5"], "usage: spwm status", "argument --limit: must be 0 or more, not '-5'"),
        ):
            err = io.StringIO()
            with redirect_stderr(err), self.assertRaises(SystemExit) as e:
                main(argv, out=io.StringIO(), err=err)
            self.assertEqual(e.exception.code, 2)
            self.assertTrue(err.getvalue().startswith(usage), err.getvalue())
            self.assertIn(message, err.getvalue())

    def test_no_answer(self) -> None:
        """
        A URL that does not answer: one line on standard error, status 1.
        """
        err = io.StringIO()
        port = _free_port()
        self.assertEqual(main(["status", f"127.0.0.1:{port}"], out=io.StringIO(), err=err), 1)
        self.assertEqual(
            err.getvalue(), f"spwm status: http://127.0.0.1:{port}/status does not answer: Connection refused\n"
        )

    @defer.inlineCallbacks
    def test_running_half(self) -> Any:
        """
        From a status listener on loopback: the tables of its listings.
        """
        status = Status("agent", reactor)
        status.add_list("tunnels", lambda: DOC["lists"]["tunnels"]["items"])
        status.add_list("registrations", lambda: DOC["lists"]["registrations"]["items"])
        service = StatusHTTPService(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), status)
        service.startService()
        self.addCleanup(service.stopService)
        port = yield service.listening
        out, err = io.StringIO(), io.StringIO()
        code = yield deferToThread(
            main, ["status", f"http://127.0.0.1:{port.getHost().port}", "--timeout", "5"], out, err
        )
        self.assertEqual((code, err.getvalue()), (0, ""))
        self.assertIn("SPWM agent", out.getvalue())
        self.assertIn("Registrations: 2", out.getvalue())
        self.assertIn("sip:alice@example.org", out.getvalue())
        err = io.StringIO()
        code = yield deferToThread(main, ["status", f"http://127.0.0.1:{port.getHost().port}/metrics"], out, err)
        self.assertEqual(code, 1)
        self.assertEqual(
            err.getvalue(),
            f"spwm status: http://127.0.0.1:{port.getHost().port}/metrics did not answer with a status document (JSON)\n",
        )


def _record(agent: str, started: float, answered: float | None, up: float | None, lost: int = 0, reason: str = "dialog ended") -> dict[str, Any]:
    return {
        "call_id": f"{agent}-{started}",
        "side": "contact",
        "agent": agent,
        "reason": reason,
        "started": started,
        "duration_s": 10.0,
        "answered_s": answered,
        "mos": {"up": up, "down": None if up is None else up - 0.1},
        "streams": [{"legs": {"lan": None, "tunnel": {"packets": 100 - lost, "lost": lost}, "operator": {"packets": 100, "lost": 0}}}],
    }


class CdrCommandTests(SynchronousTestCase):
    """
    C{spwm cdr}: the records of C{--cdr-file} files summed up.
    """

    def setUp(self) -> None:
        import json
        import time

        self.now = time.time()
        day = 86400.0
        records = [
            _record("branch-1", self.now - 100, 60.0, 4.4),
            _record("branch-1", self.now - 50, None, None, reason="no response"),
            _record("branch-2", self.now - 2 * day, 30.0, 3.0, lost=10),
        ]
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            for r in records[:2]:
                f.write(json.dumps(r) + "\n")
            f.write("not json\n")
        # the older record in a rotated, compressed file
        import gzip

        self.rotated = self.mktemp() + ".gz"
        with gzip.open(self.rotated, "wt") as f:
            f.write(json.dumps(records[2]) + "\n")

    def run_cdr(self, *args: str) -> tuple[int, list[str], str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["cdr", *args], out, err)
        return code, out.getvalue().splitlines(), err.getvalue()

    def test_per_agent(self) -> None:
        """
        One row per agent and one for all: legs, answered, ASR, ACD, MOS per
        direction (median, worst), lost packets as a share of those sent on
        the legs, legs that ended otherwise; lines that are not records are
        counted.
        """
        code, lines, err = self.run_cdr(self.path, self.rotated)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(lines[0].split()[:3], ["agent", "legs", "answered"])
        rows = [line.split() for line in lines[2:5]]
        self.assertEqual(rows[0], ["branch-1", "2", "1", "50.0", "60.0", "4.4", "4.4", "4.3", "4.3", "0.0", "1"])
        self.assertEqual(rows[1], ["branch-2", "1", "1", "100.0", "30.0", "3.0", "3.0", "2.9", "2.9", "5.0", "0"])
        self.assertEqual(rows[2], ["all", "3", "2", "66.7", "45.0", "3.7", "3.0", "3.6", "2.9", "1.7", "1"])
        self.assertEqual(lines[5], "(1 line that is not a record skipped)")

    def test_by_day_and_since(self) -> None:
        """
        C{--by day} gives one row per UTC day; C{--since} keeps the legs
        that started that long ago or later.
        """
        code, lines, _ = self.run_cdr(self.path, self.rotated, "--by", "day")
        self.assertEqual(code, 0)
        self.assertEqual(lines[0].split()[0], "day")
        import time

        days = {time.strftime("%Y-%m-%d", time.gmtime(t)) for t in (self.now - 100, self.now - 50, self.now - 2 * 86400)}
        self.assertEqual({line.split()[0] for line in lines[2:] if line[:4].isdigit()}, days)
        code, lines, _ = self.run_cdr(self.path, self.rotated, "--since", "1h")
        self.assertEqual([line.split()[:2] for line in lines[2:4]], [["branch-1", "2"], ["all", "2"]])
        code, lines, _ = self.run_cdr(self.rotated, "--since", "30m")
        self.assertEqual(lines, ["no call legs in that time"])

    def test_errors(self) -> None:
        """
        A file that cannot be read: one line, status 1; a duration that is
        not one: one line, status 2.
        """
        code, lines, err = self.run_cdr("/nonexistent/cdr.jsonl")
        self.assertEqual((code, lines), (1, []))
        self.assertEqual(err, "spwm cdr: cannot read /nonexistent/cdr.jsonl: No such file or directory\n")
        code, lines, err = self.run_cdr(self.path, "--since", "yesterday")
        self.assertEqual(code, 2)
        self.assertEqual(err, "spwm cdr: --since: not a duration: 'yesterday' (e.g. 3600, 30m, 24h, 7d)\n")

    def test_unreadable_gzip(self) -> None:
        """
        A C{.gz} file cut short (logrotate still compressing it) or one
        that is not gzip at all: one line naming the file and the reason,
        status 1, nothing on the output, even after a file that reads.
        """
        with open(self.rotated, "rb") as f:
            data = f.read()
        cut = self.mktemp() + ".gz"
        with open(cut, "wb") as f:
            f.write(data[:30])
        code, lines, err = self.run_cdr(self.path, cut)
        self.assertEqual((code, lines), (1, []))
        self.assertEqual(
            err, f"spwm cdr: cannot read {cut}: Compressed file ended before the end-of-stream marker was reached\n"
        )
        other = self.mktemp() + ".gz"
        with open(other, "wb") as f:
            f.write(b"no gzip here\n")
        code, lines, err = self.run_cdr(other)
        self.assertEqual((code, lines), (1, []))
        self.assertEqual(err, f"spwm cdr: cannot read {other}: Not a gzipped file (b'no')\n")
        damaged = self.mktemp() + ".gz"
        with open(damaged, "wb") as f:
            f.write(data[:12] + bytes(b ^ 0xFF for b in data[12:]))
        code, lines, err = self.run_cdr(damaged)
        self.assertEqual((code, lines), (1, []))
        self.assertTrue(err.startswith(f"spwm cdr: cannot read {damaged}: "), err)
        self.assertEqual(len(err.splitlines()), 1)

    def test_json_that_is_not_a_record(self) -> None:
        """
        A JSON line that is not a call detail record (an object without
        the record's C{call_id}, C{reason} and C{started}, an array, a
        number, a string) is skipped and counted like a line that is not
        JSON, not summed up as a leg.
        """
        with open(self.path, "a") as f:
            f.write('{"agent":5}\n[]\n7\n"text"\n{"call_id":"x","reason":"dialog ended","started":"soon"}\n')
        code, lines, err = self.run_cdr(self.path)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual([line.split()[:2] for line in lines[2:4]], [["branch-1", "2"], ["all", "2"]])
        self.assertEqual(lines[4], "(6 lines that are not records skipped)")
