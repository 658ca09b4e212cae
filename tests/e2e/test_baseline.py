"""
Baseline end-to-end cases: what a LAN phone sees without SPWM behind the
strict and the open router, and the tunnel's static UDP forward under the
strict policy.  The verdicts are SIPp's own (exit status and statistics),
the kernel's packet counters and the registrar's location table.
"""

from __future__ import annotations

from .netbed import (
    AGENT,
    CONTACT,
    ECHO,
    GATEWAY_PUBLIC,
    KAMAILIO,
    PHONE,
    UAS,
    E2ETestCase,
)

PCAP = "/usr/share/sip-tester/g711a.pcap"
"""The PCMA RTP recording shipped with Debian's sip-tester (236 packets)."""


class StrictWithoutSpwmTests(E2ETestCase):
    """
    The router lets out only TCP to port 443; the operator's SIP edge is
    publicly routed.  A LAN phone speaking plain SIP gets nowhere.
    """

    def setUp(self) -> None:
        super().setUp()
        self.make_topology("strict", open_operator=True)
        self.start_kamailio()
        self.register_uas("bob")

    def test_register_fails(self) -> None:
        """
        A REGISTER from the LAN to Kamailio never gets an answer: SIPp
        reports the failed call (exit status 1), the router's egress counter
        shows the dropped datagrams and the location table has no binding
        for the phone.
        """
        result = self.sipp_uac(
            "register.xml", f"{KAMAILIO}:5060", user="alice", recv_timeout=2
        )
        self.assertEqual(result.returncode, 1, result)
        self.assertEqual(result.successful, 0)
        self.assertEqual(result.count("FailedTimeoutOnRecv(C)"), 1)
        self.assertNotIn("SIP/2.0 401", result.messages())
        self.assertGreater(self.topology.read_counter("rtr", "egress_dropped"), 0)
        self.assertEqual(
            [b.aor for b in self.location_table()], ["bob"], self.location_table()
        )

    def test_call_fails(self) -> None:
        """
        An INVITE from the LAN to bob never reaches the operator network:
        the caller's SIPp reports a failed call and the operator UAS saw no
        call at all.
        """
        uas = self.sipp_uas()
        result = self.sipp_uac(
            "uac_call.xml", f"{KAMAILIO}:5060", user="alice", service="bob",
            recv_timeout=2,
        )
        self.assertEqual(result.returncode, 1, result)
        self.assertEqual(result.successful, 0)
        self.assertEqual(result.count("FailedTimeoutOnRecv(C)"), 1)
        uas_result = self.sipp_finish(uas)
        self.assertEqual(uas_result.count("IncomingCall(C)"), 0, uas_result)


class OpenWithoutSpwmTests(E2ETestCase):
    """
    The router lets anything out (masquerade, stateful).  This records what
    real users behind such a NAT see with an operator that does no NAT
    traversal help (no nathelper, no media relay): outgoing calls and their
    echoed media work, the registration stores an unreachable private
    contact, so incoming calls fail.
    """

    def setUp(self) -> None:
        super().setUp()
        self.make_topology("open", open_operator=True)
        self.start_kamailio()
        self.register_uas("bob")

    def test_register_stores_private_contact(self) -> None:
        """
        The REGISTER through the NAT succeeds (SIPp exit status 0, digest
        authentication included), but the binding holds the phone's private
        LAN address, with no received address and no Path.
        """
        result = self.sipp_uac("register.xml", f"{KAMAILIO}:5060", user="alice")
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.successful, 1)
        [alice] = [b for b in self.location_table() if b.aor == "alice"]
        self.assertEqual(alice.contact, f"sip:alice@{PHONE}:5060;transport=UDP")
        self.assertIsNone(alice.received)
        self.assertIsNone(alice.path)

    def test_outgoing_call_with_echoed_media(self) -> None:
        """
        A call from the LAN to bob succeeds, and RTP sent by the phone
        reaches the UAS and its echo comes back through the NAT, because
        the UAS answers the address the packets came from (symmetric RTP).
        """
        self.topology.add_counter("op", "rtp_at_uas", f"ip daddr {UAS} udp dport 6000")
        self.topology.add_counter(
            "lan", "rtp_at_phone", f"ip daddr {PHONE} ip saddr {UAS} udp sport 6000"
        )
        uas = self.sipp_uas()
        result = self.sipp_uac(
            "uac_rtp.xml", f"{KAMAILIO}:5060", user="alice", service="bob",
            keys={"pcap": PCAP}, extra=["-d", "2000", "-mi", PHONE, "-mp", "6000"],
        )
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.successful, 1)
        self.assertEqual(self.sipp_finish(uas).successful, 1)
        at_uas = self.topology.read_counter("op", "rtp_at_uas")
        at_phone = self.topology.read_counter("lan", "rtp_at_phone")
        self.assertGreater(at_uas, 50)
        self.assertGreater(at_phone, 50)
        self.assertLessEqual(at_phone, at_uas)

    def test_incoming_call_fails(self) -> None:
        """
        Once alice is registered from the LAN, a call to her from the
        operator network fails: Kamailio forwards the INVITE to the private
        contact, which it cannot reach, and answers 408.
        """
        result = self.sipp_uac("register.xml", f"{KAMAILIO}:5060", user="alice")
        self.assertEqual(result.returncode, 0, result)
        result = self.sipp_uac(
            "uac_call.xml", f"{KAMAILIO}:5060", user="carol", service="alice",
            role="op", local_ip=ECHO, name="carol-calls-alice",
        )
        self.assertEqual(result.returncode, 1, result)
        self.assertEqual(result.successful, 0)
        self.assertIn("SIP/2.0 408 Request Timeout", result.messages())


class SpwmUdpForwardTests(E2ETestCase):
    """
    The tunnel's static UDP forward under the strict policy: the agent in
    the LAN connects out to the contact point through the gateway's TCP 443,
    and carries datagrams between a LAN port and an operator host.
    """

    def setUp(self) -> None:
        super().setUp()
        self.make_topology("strict")

    def test_udp_forward_under_strict_policy(self) -> None:
        """
        A datagram sent directly from the LAN to the operator's UDP echo
        service gets no answer, but one sent to the agent's forward port
        reaches the echo service (from the contact point's address) and its
        answer comes back to the sender.
        """
        echo = self.udp_echo_server(ECHO, 7000)
        self.assertIsNone(
            self.udp_exchange("lan", PHONE, f"{ECHO}:7000", b"direct", timeout=1)
        )
        self.start_contact(
            ["--listen", f"tcp:443:interface={CONTACT}", "--plaintext",
             "--allow-forward", f"{ECHO}:7000"]
        )
        agent = self.start_agent(
            ["--contact", f"{GATEWAY_PUBLIC}:443", "--plaintext",
             "--forward-udp", f"{AGENT}:5555={ECHO}:7000"]
        )
        self.wait_for_listener("lan", "udp", AGENT, 5555, agent)
        answer = self.udp_exchange(
            "lan", PHONE, f"{AGENT}:5555", b"through the tunnel", timeout=10
        )
        self.assertEqual(answer, b"echo:through the tunnel")
        self.assertIn(f"from {CONTACT}:", echo.stdout())
        self.assertNotIn("from 192.0.2.", echo.stdout())
