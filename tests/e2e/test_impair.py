"""
The bed with the user-space WAN emulator (L{spwm.testing.impair}) between
the home router and the operator gateway, on the C{lossy} profile (40 ms,
2 % loss each direction).  Only what noise cannot change is asserted: the
emulator's counters agree with what the endpoints saw, the call through
SPWM under C{strict} survives with media both ways, and no datagram
arrives twice.  The quality figures are the benchmark's (C{bench/impair.py}).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


from spwm.testing.certs import TestCA
from spwm.testing.impair import direction_stats, read_capture
from tests.e2e.netbed import (
    AGENT,
    CONTACT,
    ECHO,
    GATEWAY_PUBLIC,
    PHONE,
    REPO_ROOT,
    ROUTER_PUBLIC,
    UAS,
    E2ETestCase,
    ManagedProcess,
    NetbedError,
)

#: the home router's second public address (its ISP gives it another)
NEW_PUBLIC = "198.51.100.3"


class ImpairedWanTests(E2ETestCase):
    """
    One G.711 call (50 packets per second each way) over plain UDP under
    C{open}, then through SPWM under C{strict}, on the C{lossy} WAN.
    """

    def endpoint(self, role: str, name: str, args: list[str]) -> tuple[ManagedProcess, Path]:
        """
        Start an C{impair endpoint} in the namespace of C{role}; wait until
        it is bound.

        @return: the process and the path of its capture.
        """
        out = self.logdir / f"{name}.capture"
        process = self.topology.spawn(
            role, name,
            [sys.executable, "-m", "spwm.testing.impair", "endpoint", *args,
             "--out", str(out), "--realtime", "5", "--max-time", "30"],
            env={"PYTHONPATH": str(REPO_ROOT)},
        )
        deadline = time.monotonic() + 10
        while "ready" not in process.stdout():
            if process.returncode is not None or time.monotonic() > deadline:
                raise NetbedError(f"{name} did not start: {process.stderr()[-2000:]}")
            time.sleep(0.02)
        return process, out

    def call(self, role_answerer: str, answer_at: str, call_to: str, packets: int, tag: str) -> tuple:
        """
        One call: the answerer at C{answer_at}, the caller on L{PHONE} to
        C{call_to}; wait for both to end.

        @return: the figures up (caller to answerer) and down.
        """
        answerer, answer_capture = self.endpoint(
            role_answerer, f"answerer-{tag}",
            ["answerer", answer_at, "--calls", "1", "--packets", str(packets)],
        )
        caller, call_capture = self.endpoint(
            "lan", f"caller-{tag}",
            ["caller", PHONE, call_to, "--calls", "1", "--packets", str(packets)],
        )
        self.assertEqual(caller.wait(packets / 50 + 20), 0, caller.stderr())
        self.assertEqual(answerer.wait(10), 0, answerer.stderr())
        caller_sent, caller_received = read_capture(str(call_capture))
        answer_sent, answer_received = read_capture(str(answer_capture))
        self.assertEqual(len(caller_sent), packets)
        self.assertEqual(len(answer_sent), packets)
        return (
            direction_stats(caller_sent, answer_received),
            direction_stats(answer_sent, caller_received),
        )

    def test_lossy_counters_and_spwm_call(self) -> None:
        """
        Plain UDP under C{open}: every call packet crosses the emulator as
        one UDP frame; the frames it lost are exactly those missing at the
        receiver, in each direction, and none arrives twice.  Then under
        C{strict} through the agent's UDP forward and the tunnel: no UDP
        crosses the WAN any more, and the call's packets arrive both ways,
        at most once each, up to the last one.
        """
        bed = self.make_topology("open", open_operator=True, wan="lossy", wan_seed=3)
        before = bed.wan_stats()
        up, down = self.call("op", f"{UAS}:7002", f"{UAS}:7002", 200, "udp")
        stats = bed.wan_stats()
        for name, figures, counters, was in (
            ("up", up, stats["up"], before["up"]),
            ("down", down, stats["down"], before["down"]),
        ):
            udp_in = counters.get("udp_in", 0) - was.get("udp_in", 0)
            udp_lost = counters.get("udp_lost", 0) - was.get("udp_lost", 0)
            udp_out = counters.get("udp_out", 0) - was.get("udp_out", 0)
            self.assertEqual(udp_in, 200, name)
            self.assertEqual(udp_lost, figures.lost, name)
            self.assertEqual(udp_out, figures.delivered, name)
            self.assertEqual(counters.get("udp_queue_dropped", 0), 0, name)
            self.assertEqual(figures.duplicates, 0, name)
            # 2 % of 200: the seeded emulator did lose some
            self.assertGreater(figures.lost, 0, name)

        bed.set_policy("strict")
        contact = self.start_contact(
            ["--listen", f"tcp:443:interface={CONTACT}", "--plaintext",
             "--allow-forward", f"{ECHO}:7000"]
        )
        agent = self.start_agent(
            ["--contact", f"{GATEWAY_PUBLIC}:443", "--plaintext",
             "--forward-udp", f"{AGENT}:5555={ECHO}:7000"]
        )
        self.wait_for_listener("lan", "udp", AGENT, 5555, agent)
        self.wait_for_log(contact, r"tunnel up with", timeout=20)
        # the tunnel's connections are probed while it has channels: the
        # queues are seldom both empty, and only the UDP counters matter
        udp_before = bed.wan_stats(empty=False)
        up, down = self.call("op", f"{ECHO}:7000", f"{AGENT}:5555", 250, "spwm")
        after = bed.wan_stats(empty=False)
        for name in ("up", "down"):
            self.assertEqual(
                after[name].get("udp_in", 0), udp_before[name].get("udp_in", 0), name
            )
            self.assertGreater(
                after[name].get("tcp_in", 0), udp_before[name].get("tcp_in", 0), name
            )
        self.assertIsNone(agent.returncode)
        self.assertIsNone(contact.returncode)
        for name, figures in (("up", up), ("down", down)):
            self.assertEqual(figures.duplicates, 0, name)
            # TCP repairs the WAN's loss; what is missing was sent before
            # the channel opened, never most of the call
            self.assertGreater(figures.delivered, 0.9 * figures.sent, (name, figures))
        # the call survives to its end: the last packets arrive both ways
        caller_sent, caller_received = read_capture(str(self.logdir / "caller-spwm.capture"))
        answer_sent, answer_received = read_capture(str(self.logdir / "answerer-spwm.capture"))
        self.assertIn(249, {seq for _, seq, _ in answer_received})
        self.assertIn(249, {seq for _, seq, _ in caller_received})
        self.assertTrue(os.path.exists(self.logdir / f"wan-{bed.suffix}.json"))


class AddressChangeTests(E2ETestCase):
    """
    A call through the agent's UDP forward while the home router's public
    address changes (no WAN emulator).
    """

    endpoint = ImpairedWanTests.endpoint

    def change_public_address(self) -> None:
        """
        The router gets another public address and drops the old one: the
        kernel forgets the old address's NAT mappings, so each tunnel
        connection's next packet leaves from the new address and the
        contact point answers it with a reset.
        """
        bed = self.topology
        mac = json.loads(bed.exec("rtr", ["ip", "-j", "link", "show", "pub0"]).stdout)[0]["address"]
        bed.exec("gw", ["ip", "neigh", "replace", NEW_PUBLIC, "lladdr", mac, "dev", "pub0", "nud", "permanent"])
        bed.exec("rtr", ["sysctl", "-q", "-w", "net.ipv4.conf.pub0.promote_secondaries=1"])
        bed.exec("rtr", ["ip", "addr", "add", f"{NEW_PUBLIC}/24", "dev", "pub0", "nodad"])
        bed.exec("rtr", ["ip", "addr", "del", f"{ROUTER_PUBLIC}/24", "dev", "pub0"])
        bed.exec("rtr", ["ip", "route", "replace", "default", "via", GATEWAY_PUBLIC])

    def test_forward_through_an_address_change(self) -> None:
        """
        Under C{strict}, TLS, one tunnel connection: two seconds into a
        call through the forward the router's public address changes and
        the connection breaks.  (With several, a replacement from the new
        address may attach before the last old one is known lost, and the
        session goes on without a resumption: that run would not test
        it.)  The agent resumes its session from the new address, the
        forward goes on from the same socket at the contact point (the
        answerer keeps answering to where the call's first packet came
        from), and the call's packets arrive both ways up to the last one,
        none twice.  (Before the forwards' flows outlived a connection,
        nothing came down again after the change.)
        """
        self.make_topology("strict")
        ca = TestCA(str(self.logdir / "pki"))
        files = ca.issue(["contact.example.test", CONTACT], "contact")
        contact = self.start_contact(
            ["--listen", f"tcp:443:interface={CONTACT}", "--cert", files.cert, "--key", files.key,
             "--allow-forward", f"{ECHO}:7000"]
        )
        agent = self.start_agent(
            ["--contact", f"{GATEWAY_PUBLIC}:443", "--ca", ca.ca_file, "--server-name", "contact.example.test",
             "--tunnel-connections", "1", "--forward-udp", f"{AGENT}:5555={ECHO}:7000"]
        )
        self.wait_for_listener("lan", "udp", AGENT, 5555, agent)
        self.wait_for_log(contact, r"tunnel up with", timeout=20)
        packets = 300
        answerer, answer_capture = self.endpoint("op", "answerer-move", ["answerer", f"{ECHO}:7000", "--calls", "1",
                                                                         "--packets", str(packets)])
        caller, call_capture = self.endpoint("lan", "caller-move", ["caller", PHONE, f"{AGENT}:5555", "--calls", "1",
                                                                   "--packets", str(packets)])
        time.sleep(2.0)
        self.change_public_address()
        self.wait_for_log(contact, rf"resumed from {NEW_PUBLIC}:", timeout=20)
        self.assertEqual(caller.wait(packets / 50 + 20), 0, caller.stderr())
        self.assertEqual(answerer.wait(10), 0, answerer.stderr())
        caller_sent, caller_received = read_capture(str(call_capture))
        answer_sent, answer_received = read_capture(str(answer_capture))
        for name, sent, received in (
            ("up", caller_sent, answer_received), ("down", answer_sent, caller_received)
        ):
            figures = direction_stats(sent, received)
            self.assertEqual(figures.duplicates, 0, name)
            self.assertIn(packets - 1, {seq for _, seq, _ in received}, name)
            self.assertGreater(figures.delivered, 0.8 * figures.sent, (name, figures))
        self.assertIsNone(agent.returncode)
        self.assertIsNone(contact.returncode)
