"""
End-to-end: an agent with two contact points (C{--contact} twice) and
Kamailio as an RFC 5626 outbound registrar (issue 15, "Several contact
points").  The phone registers once; the registrar holds two flows; one
contact point's process is killed; the phone stays reachable (an incoming
call from the operator network, answered, RTP both ways) and places a new
call, and sends no new REGISTER.

The verdicts come from Kamailio's location table and log, SIPp and kernel
packet counters.
"""

from __future__ import annotations

import glob
import os
import signal
import time

from twisted.trial.unittest import SkipTest

from .netbed import (
    AGENT,
    CONTACT,
    ECHO,
    GATEWAY_PUBLIC,
    KAMAILIO,
    PHONE,
    UAS,
    Kamailio,
    ManagedProcess,
    NetbedError,
)
from .sipbed import CONTACT_MEDIA_PORTS, PCAP, SpwmSipTestCase

PROXY = f"{AGENT}:5060"

CONTACT_2 = "203.0.113.11"
"""The second contact point's address in the operator network."""

GATEWAY_PUBLIC_2 = "198.51.100.11"
"""The gateway's second public address: TCP 443 there goes to L{CONTACT_2}."""

CONTACT_2_MEDIA_PORTS = (CONTACT_MEDIA_PORTS[1] + 1, CONTACT_MEDIA_PORTS[1] + 200)


def outbound_module() -> str | None:
    """
    @return: the path of Kamailio's C{outbound} module, or C{None}.
    """
    found = glob.glob("/usr/lib/*/kamailio/modules/outbound.so") + glob.glob("/usr/lib/kamailio/modules/outbound.so")
    return found[0] if found else None


class TwoContactPointsTests(SpwmSipTestCase):
    """
    Two contact points in the operator namespace (L{CONTACT} and
    L{CONTACT_2}, each behind its own public address of the gateway), an
    agent with a tunnel to each, Kamailio with the outbound module.
    """

    #: long enough for the calls of L{test_flow_without_tunnel_answers_430}
    #: to happen while the contact point keeps the broken session
    resume_window = 20.0

    def setUp(self) -> None:
        super().setUp()
        if outbound_module() is None:
            message = "Kamailio's outbound module is missing (Debian package kamailio-outbound-modules)"
            if os.environ.get("SPWM_REQUIRE_E2E") == "1":
                self.fail(message + " (SPWM_REQUIRE_E2E=1 makes this a failure)")
            raise SkipTest(message)
        self.make_topology("strict")
        self.second_address()
        self.kamailio = Kamailio.start(self.topology, config_name="kamailio_outbound.cfg")
        self.addCleanup(self.kamailio.stop)
        self.start_spwm_contact(tls=True, extra=["--sip-trace"])
        self.contact_2 = self.start_second_contact()
        self.start_spwm_agent(extra=["--contact", f"{GATEWAY_PUBLIC_2}:443", "--sip-trace"])
        self.wait_for_tunnel_to(GATEWAY_PUBLIC_2, self.agent)

    def second_address(self) -> None:
        """
        L{CONTACT_2} in the operator namespace, L{GATEWAY_PUBLIC_2} on the
        gateway with TCP 443 there sent to L{CONTACT_2}.
        """
        self.topology.exec("op", ["ip", "addr", "add", f"{CONTACT_2}/24", "dev", "eth0", "nodad"])
        self.topology.exec("gw", ["ip", "addr", "add", f"{GATEWAY_PUBLIC_2}/24", "dev", "pub0", "nodad"])
        self.topology.exec(
            "gw",
            ["nft", "add", "rule", "ip", "spwm_nat", "prerouting", "iifname", "pub0", "ip", "daddr",
             GATEWAY_PUBLIC_2, "tcp", "dport", "443", "dnat", "to", f"{CONTACT_2}:443"],
        )
        self.topology.exec(
            "gw",
            ["nft", "insert", "rule", "inet", "spwm_gateway", "forward", "iifname", "pub0", "ip", "daddr",
             CONTACT_2, "tcp", "dport", "443", "ct", "status", "dnat", "accept"],
        )

    def start_second_contact(self) -> ManagedProcess:
        """
        The second contact point, like the first (same certificate, same
        Kamailio) on L{CONTACT_2}.
        """
        args = list(self.contact_argv)
        replace = {
            f"tcp:443:interface={CONTACT}": f"tcp:443:interface={CONTACT_2}",
            f"{CONTACT}:5060": f"{CONTACT_2}:5060",
            CONTACT: CONTACT_2,
            "%d-%d" % CONTACT_MEDIA_PORTS: "%d-%d" % CONTACT_2_MEDIA_PORTS,
        }
        args = [replace.get(a, a) for a in args]
        process = self._twistd("op", "spwm-contact-2", "spwm-contact", args)
        self.wait_for_listener("op", "tcp", CONTACT_2, 443, process)
        self.wait_for_listener("op", "udp", CONTACT_2, 5060, process)
        return process

    def wait_for_tunnel_to(self, public: str, agent: ManagedProcess, timeout: float = 15.0) -> None:
        """
        Wait until C{agent} has an established TCP connection to
        C{public}:443 (C{ss} in the LAN namespace).
        """
        deadline = time.monotonic() + timeout
        while True:
            done = self.topology.exec("lan", ["ss", "-tnpH", "state", "established"], check=False)
            if any(f"{public}:443" in line and f"pid={agent.pid}," in line for line in done.stdout.decode().splitlines()):
                time.sleep(0.5)
                return
            if agent.returncode is not None:
                raise NetbedError(f"{agent.name} exited with {agent.returncode}:\n{agent.stderr()[-3000:]}")
            if time.monotonic() > deadline:
                raise NetbedError(f"{agent.name}: no tunnel to {public} after {timeout}s")
            time.sleep(0.1)

    def wait_tunnel_gone(self, public: str, agent: ManagedProcess, timeout: float = 15.0) -> None:
        """
        Wait until C{agent} has no established connection to C{public}:443.
        """
        deadline = time.monotonic() + timeout
        while True:
            done = self.topology.exec("lan", ["ss", "-tnpH", "state", "established"], check=False)
            if not any(f"{public}:443" in line and f"pid={agent.pid}," in line for line in done.stdout.decode().splitlines()):
                return
            if time.monotonic() > deadline:
                raise NetbedError(f"{agent.name}: tunnel to {public} still up after {timeout}s")
            time.sleep(0.1)

    def registers_seen(self) -> int:
        """
        The REGISTERs of the LAN phone Kamailio logged so far (its log
        prefix names the Call-ID, which SIPp makes from the phone's
        address; bob registers from the operator network).
        """
        text = self.kamailio.process.stderr() + self.kamailio.process.stdout()
        return sum(1 for line in text.splitlines() if "request REGISTER" in line and f"@{PHONE}" in line)

    def register_two_flows(self) -> list:
        """
        alice registers once through the agent: Kamailio holds two flows
        (one instance, reg-id 1 and 2, a Path with ;ob through each
        contact point).

        @return: alice's bindings, in the location table's order.
        """
        result = self.sipp_uac("register.xml", PROXY, user="alice", name="register-alice")
        self.assertSippSuccess(result)
        self.assertEqual(result.messages().count("REGISTER sip:"), 2, "the phone sent one REGISTER and its retry with credentials")
        alice = [b for b in self.location_table() if b.aor == "alice"]
        self.assertEqual(len(alice), 2, alice)
        paths = " ".join(b.path or "" for b in alice)
        self.assertIn(f"@{CONTACT}:5060;lr;ob", paths)
        self.assertIn(f"@{CONTACT_2}:5060;lr;ob", paths)
        raw = [b.raw for b in alice]
        self.assertEqual(sorted(str(r.get("Reg-Id")) for r in raw), ["1", "2"], raw)
        instances = {str(r.get("Instance")) for r in raw}
        self.assertEqual(len(instances), 1, raw)
        self.assertIn("urn:uuid:", instances.pop())
        # the 401 and the 200, through both contact points
        self.assertEqual(self.registers_seen(), 4)
        return alice

    def first_flow(self, alice: list) -> tuple[ManagedProcess, str, str, str]:
        """
        The contact point of the flow Kamailio tries first (its location
        table lists it first).

        @return: its process, its address, its public address, and the
            other contact point's address.
        """
        if f"@{CONTACT}:" in (alice[0].path or ""):
            return self.contact, CONTACT, GATEWAY_PUBLIC, CONTACT_2
        return self.contact_2, CONTACT_2, GATEWAY_PUBLIC_2, CONTACT

    def assert_reachable_through(self, survivor: str, failure: str) -> None:
        """
        carol (operator network) calls alice: Kamailio's first branch fails
        with C{failure}, the next flow reaches the phone, which answers;
        more than 50 RTP packets each way through C{survivor}.  Then alice
        calls bob through C{survivor}, with RTP; no REGISTER of the phone
        reached Kamailio meanwhile.
        """
        self.register_uas("bob")
        phone = self.sipp_uas(local_ip=PHONE, role="lan", name="phone-alice")
        self.count_udp("lan", "in_at_phone", f"ip saddr {AGENT} ip daddr {PHONE} udp dport 6000")
        self.count_udp("op", "in_at_caller", f"ip saddr {survivor} ip daddr {ECHO} udp dport 6000")
        result = self.sipp_uac(
            "uac_rtp.xml", f"{KAMAILIO}:5060", user="carol", service="alice",
            role="op", local_ip=ECHO, keys={"pcap": PCAP},
            extra=["-d", "2000", "-mi", ECHO, "-mp", "6000"],
            recv_timeout=10.0, timeout=30.0, name="carol-calls-alice",
        )
        self.assertSippSuccess(result)
        phone_result = self.sipp_finish(phone)
        self.assertSippSuccess(phone_result)
        self.assertEqual(phone_result.count("IncomingCall(C)"), 1)
        at_phone = self.counter("lan", "in_at_phone")
        at_caller = self.counter("op", "in_at_caller")
        self.assertGreater(at_phone, 50, (at_phone, at_caller))
        self.assertGreater(at_caller, 50, (at_phone, at_caller))
        log = self.kamailio.process.stderr()
        self.assertIn(f"branch failed with {failure}", log, "Kamailio's first branch did not fail so")
        self.assertIn(f"next flow sip:alice@{PHONE}", log)

        uas = self.sipp_uas(name="bob")
        self.count_udp("op", "at_uas", f"ip saddr {survivor} ip daddr {UAS} udp dport 6000")
        self.count_udp("lan", "at_alice", f"ip saddr {AGENT} ip daddr {PHONE} udp dport 6000")
        self.alice_calls_bob_with_rtp(uas, 2000)
        self.assertGreater(self.counter("op", "at_uas"), 50)
        self.assertGreater(self.counter("lan", "at_alice"), 50)
        self.assertEqual(self.registers_seen(), 4, "a REGISTER of the phone reached Kamailio again")

    def resume_window_left(self, contact: ManagedProcess) -> None:
        """
        Fail unless C{contact} still keeps the broken session for its agent
        (it has not logged the end of the resumption window yet).
        """
        text = contact.stdout() + contact.stderr()
        self.assertNotIn("not resumed within", text, "the resumption window was over before the call")

    def test_phone_reachable_after_one_contact_point_dies(self) -> None:
        """
        The process of the contact point whose flow Kamailio tries first is
        killed (SIGKILL by PID): Kamailio's branch to it times out (408),
        the next flow reaches the phone; calls in and out work through the
        other contact point without a new REGISTER.
        """
        alice = self.register_two_flows()
        victim, _, victim_public, survivor = self.first_flow(alice)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5.0)
        self.wait_tunnel_gone(victim_public, self.agent)
        self.assert_reachable_through(survivor, "408")

    def test_flow_without_tunnel_answers_430(self) -> None:
        """
        The agent loses its tunnel to the contact point whose flow Kamailio
        tries first (its connections reset at that contact point, new ones
        dropped at the gateway) while that contact point runs and keeps the
        session for the agent: it answers Kamailio's branch C{430 Flow
        Failed}, and the next flow reaches the phone; calls in and out work
        through the other contact point without a new REGISTER.
        """
        alice = self.register_two_flows()
        _, address, public, survivor = self.first_flow(alice)
        self.topology.exec(
            "gw",
            ["nft", "insert", "rule", "inet", "spwm_gateway", "forward", "iifname", "pub0", "ip", "daddr",
             address, "tcp", "dport", "443", "ct", "state", "new", "drop"],
        )
        contact = self.contact if address == CONTACT else self.contact_2
        deadline = time.monotonic() + 10.0
        while True:
            established = ["ss", "-tnH", "state", "established", "src", address, "sport", "=", ":443"]
            if not self.topology.exec("op", established, check=False).stdout.strip():
                break
            if time.monotonic() > deadline:
                raise NetbedError(f"the tunnels at {address} outlived ss -K")
            self.topology.exec("op", ["ss", "-K", "state", "established", "src", address, "sport", "=", ":443"], check=False)
            time.sleep(0.2)
        self.wait_tunnel_gone(public, self.agent)
        # the contact point keeps the session for the agent to resume
        # (--resume-window), and a request for its flows gets 430 meanwhile
        self.resume_window_left(contact)
        self.assert_reachable_through(survivor, "430")
        self.resume_window_left(contact)
