"""
Tests of the test bed itself: the skip/fail rule, and that the topology
enforces its policies and leaves nothing behind.
"""

from __future__ import annotations

import os
from unittest import mock

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from . import netbed
from .netbed import (
    CONTACT,
    ECHO,
    PHONE,
    E2ETestCase,
    NetbedError,
    Topology,
    run,
)


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
