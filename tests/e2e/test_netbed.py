"""
Tests of the test bed itself: the skip/fail rule, that the topology
enforces its policies and leaves nothing behind, and that SIPp runs keep
their own trace files.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from . import netbed
from .netbed import (
    CONTACT,
    ECHO,
    PHONE,
    UAS,
    E2ETestCase,
    NetbedError,
    Topology,
    run,
    sipp_argv,
    sipp_trace,
)

# one OPTIONS per call, no answer awaited: a SIPp call that needs no peer
OPTIONS_ONCE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="one OPTIONS, no answer awaited">
  <send>
    <![CDATA[

      OPTIONS sip:[service]@[remote_ip] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:probe@[local_ip]>;tag=[call_number]
      To: <sip:[service]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="20"/>
</scenario>
"""


class RequirementTests(SynchronousTestCase):
    """
    L{netbed.require_e2e} skips without C{SPWM_REQUIRE_E2E=1} and fails with
    it, naming what is missing.
    """

    def test_skip_names_missing(self) -> None:
        """
        Without the variable a missing tool makes the test skip, and the
        message names it.
        """
        with mock.patch.object(netbed, "missing_requirements", lambda: ["sipp (x)"]), \
                mock.patch.dict(os.environ, {"SPWM_REQUIRE_E2E": ""}):
            e = self.assertRaises(SkipTest, netbed.require_e2e, self)
        self.assertIn("sipp (x)", str(e))

    def test_fail_when_required(self) -> None:
        """
        With C{SPWM_REQUIRE_E2E=1} a missing tool fails the test with a
        message naming it.
        """
        with mock.patch.object(netbed, "missing_requirements", lambda: ["root"]), \
                mock.patch.dict(os.environ, {"SPWM_REQUIRE_E2E": "1"}):
            e = self.assertRaises(self.failureException, netbed.require_e2e, self)
        self.assertIn("root", str(e))

    def test_nothing_missing(self) -> None:
        """
        With everything present the check returns quietly.
        """
        with mock.patch.object(netbed, "missing_requirements", lambda: []):
            self.assertIsNone(netbed.require_e2e(self))


class TopologyTests(E2ETestCase):
    """
    The topology itself: policies, the gateway, teardown.
    """

    def test_destroy_removes_everything(self) -> None:
        """
        After L{Topology.destroy} none of the namespaces exist and the
        processes started in them are gone; a second call does nothing.
        """
        topology = Topology.create(self.logdir / "bed", "open")
        self.addCleanup(topology.destroy)
        process = topology.spawn("op", "sleeper", ["sleep", "60"])
        topology.destroy()
        self.assertIsNotNone(process.returncode)
        names = run(["ip", "netns", "list"]).stdout.decode()
        for name in topology.namespaces.values():
            self.assertNotIn(name, names)
        topology.destroy()

    def test_strict_policy_drops_udp(self) -> None:
        """
        Under C{strict} a UDP datagram from the LAN to a public address
        gets no answer and is counted as dropped by the router; under
        C{open} the same exchange with an operator host works once the
        operator network is routed.
        """
        topology = self.make_topology("strict", open_operator=True)
        # the UAS address accepts any UDP when the operator network is open
        self.udp_echo_server(netbed.UAS, 7000)
        self.assertIsNone(
            self.udp_exchange("lan", PHONE, f"{netbed.UAS}:7000", b"x", timeout=1)
        )
        self.assertGreater(topology.read_counter("rtr", "egress_dropped"), 0)
        topology.set_policy("open")
        self.assertEqual(
            self.udp_exchange("lan", PHONE, f"{netbed.UAS}:7000", b"x", timeout=3),
            b"echo:x",
        )

    def test_normal_policy(self) -> None:
        """
        Under C{normal} a datagram from the LAN to UDP port 443 of an
        operator host gets its answer through the NAT (the router counts
        it both ways in C{udp_out_443} and C{udp_in_443}), one to another
        UDP port is dropped (C{egress_dropped}); under C{strict} UDP to
        port 443 is dropped too (C{udp_out_443} stays 0).  (That C{strict}
        also stops a flow let out before is shown by
        C{tests.e2e.test_udpnat}.)
        """
        topology = self.make_topology("normal", open_operator=True)
        self.udp_echo_server(netbed.UAS, 443)
        self.udp_echo_server(netbed.UAS, 7000)
        self.assertIsNone(self.udp_exchange("lan", PHONE, f"{netbed.UAS}:7000", b"x", timeout=1))
        self.assertGreater(topology.read_counter("rtr", "egress_dropped"), 0)
        self.assertEqual(
            self.udp_exchange("lan", PHONE, f"{netbed.UAS}:443", b"q", timeout=3), b"echo:q"
        )
        self.assertGreaterEqual(topology.read_counter("rtr", "udp_out_443"), 1)
        self.assertGreaterEqual(topology.read_counter("rtr", "udp_in_443"), 1)
        topology.set_policy("strict")
        self.assertIsNone(self.udp_exchange("lan", PHONE, f"{netbed.UAS}:443", b"q", timeout=1))
        self.assertEqual(topology.read_counter("rtr", "udp_out_443"), 0)
        self.assertEqual(topology.read_counter("rtr", "udp_out"), 0)
        self.assertGreater(topology.read_counter("rtr", "egress_dropped"), 0)

    def test_gateway_exposes_only_contact_port(self) -> None:
        """
        Under C{open}, a datagram from the LAN to an operator host that the
        gateway does not expose is dropped by the gateway.
        """
        topology = self.make_topology("open")
        self.udp_echo_server(ECHO, 7000)
        self.assertIsNone(
            self.udp_exchange("lan", PHONE, f"{ECHO}:7000", b"x", timeout=1)
        )
        self.assertGreater(topology.read_counter("gw", "inbound_dropped"), 0)

    def test_bad_policy(self) -> None:
        """
        An unknown egress policy is refused before anything is created.
        """
        self.assertRaises(ValueError, Topology.create, self.logdir / "bed", "lax")

    def test_spawn_failure_is_reported(self) -> None:
        """
        L{E2ETestCase.wait_for_listener} reports a process that exits before
        listening, with its output.
        """
        self.make_topology("strict")
        process = self.topology.spawn("op", "false", ["sh", "-c", "echo boom >&2; exit 3"])
        e = self.assertRaises(
            NetbedError, self.wait_for_listener, "op", "tcp", CONTACT, 443, process
        )
        self.assertIn("boom", str(e))


class SippTraceNameTests(SynchronousTestCase):
    """
    L{sipp_argv} gives every run its own trace files, and L{sipp_trace}
    finds them in a command line.
    """

    def setUp(self) -> None:
        self.logdir = Path(self.mktemp()).resolve()
        self.logdir.mkdir(parents=True)

    def traces(self, argv: list[str]) -> list[str]:
        return [
            sipp_trace(argv, suffix).name
            for suffix in ("stat.csv", "messages.log", "errors.log", "screen.log")
        ]

    def test_same_name_counts_up(self) -> None:
        """
        The first run of a name has traces under that name, the next ones
        under C{-2}, C{-3}, as repeated process names are numbered.
        """
        runs = [sipp_argv("register.xml", f"{UAS}:5060", PHONE, 5060, "reg", self.logdir) for _ in range(3)]
        self.assertEqual(
            [self.traces(argv) for argv in runs],
            [
                [f"{stem}.stat.csv", f"{stem}.messages.log", f"{stem}.errors.log", f"{stem}.screen.log"]
                for stem in ("reg", "reg-2", "reg-3")
            ],
        )
        self.assertEqual(sipp_trace(runs[0], "stat.csv").parent, self.logdir)

    def test_existing_files_are_skipped(self) -> None:
        """
        A name whose files are already in the directory (a process of that
        name, or traces of another run) is not reused.
        """
        (self.logdir / "uas.stdout").write_text("")
        (self.logdir / "uas-2.messages.log").write_text("")
        argv = sipp_argv("uas_echo.xml", None, UAS, 5060, "uas", self.logdir)
        self.assertEqual(sipp_trace(argv, "stat.csv").name, "uas-3.stat.csv")

    def test_no_trace(self) -> None:
        """
        A command line that names no such trace gives C{None}.
        """
        self.assertIsNone(sipp_trace(["sipp", "-sn", "uac", "-stf"], "stat.csv"))
        self.assertIsNone(sipp_trace(["sleep", "60"], "messages.log"))


class SippTraceTests(E2ETestCase):
    """
    Two SIPp runs under one name keep separate traces, and each verdict
    comes from its own run.
    """

    def test_same_name_twice(self) -> None:
        """
        A run of one call, then a run of two under the same name: each
        result counts its own calls and messages, and both runs' traces
        are on disk (the second's and its output under C{-2}).
        """
        self.make_topology("strict")
        scenario = self.logdir / "options_once.xml"
        scenario.write_text(OPTIONS_ONCE)
        first = self.sipp_uac(str(scenario), f"{UAS}:5060", name="probe", calls=1)
        second = self.sipp_uac(str(scenario), f"{UAS}:5060", name="probe", calls=2)
        self.assertEqual((first.returncode, second.returncode), (0, 0))
        self.assertEqual((first.name, first.stem), ("probe", "probe"))
        self.assertEqual((second.name, second.stem), ("probe-2", "probe-2"))
        self.assertEqual((first.successful, second.successful), (1, 2))
        self.assertEqual(first.messages().count("OPTIONS sip:"), 1)
        self.assertEqual(second.messages().count("OPTIONS sip:"), 2)
        for stem in ("probe", "probe-2"):
            for suffix in ("stdout", "stat.csv", "messages.log", "screen.log"):
                self.assertTrue((self.logdir / f"{stem}.{suffix}").exists(), f"{stem}.{suffix}")
