"""
End-to-end cases of the split SIP proxy (issue 4) under the C{strict}
policy: LAN phones (SIPp) reach the operator's Kamailio only through the
agent, the tunnel (TCP 443, TLS unless said otherwise) and the contact
point.  The verdicts are SIPp's exit status and statistics, Kamailio's
location table and kernel packet counters.
"""

from __future__ import annotations

import os
import signal
import time

from .netbed import (
    DATA,
    AGENT,
    CONTACT,
    ECHO,
    KAMAILIO,
    ManagedProcess,
    PHONE,
    PHONES,
    sipp_argv,
    USERS,
)
from .sipbed import PCAP, SECOND_AGENT, SpwmSipTestCase

PROXY = f"{AGENT}:5060"
"""Where LAN phones send their SIP: the agent."""


def hairpin_call(case: SpwmSipTestCase, scenario: str, callee: str) -> None:
    """
    alice on PHONES[0] calls C{callee} on PHONES[1], both behind the agent
    at L{AGENT}; while the call is up each phone sends 100 RTP packets
    (alice SSRC 1, the callee SSRC 101, from port 7000 of its host) to the
    relay port its own SDP names, and counts what it gets back.  Each must
    receive the other's stream and nothing of its own.
    """
    # the callee answers without -rtp_echo: an echo would send alice's first
    # packets back to her before the callee's own stream latches the relay
    callee_phone = case.topology.spawn(
        "lan", f"phone-{callee}",
        sipp_argv("uas_echo.xml", None, PHONES[1], 5060, f"phone-{callee}", case.logdir,
                  extra=["-mi", PHONES[1], "-mp", "6000"]),
        cwd=case.logdir,
    )
    case.wait_for_listener("lan", "udp", PHONES[1], 5060, callee_phone)
    argv = sipp_argv(
        scenario, PROXY, PHONES[0], 5060, f"alice-calls-{callee}", case.logdir,
        keys={"user": "alice"},
        extra=["-s", callee, "-au", "alice", "-ap", USERS["alice"], "-m", "1",
               "-d", "4500", "-mi", PHONES[0], "-mp", "6000",
               "-recv_timeout", "8000", "-timeout", "30s", "-timeout_error"],
    )
    caller = case.topology.spawn("lan", f"alice-calls-{callee}", argv, cwd=case.logdir)
    [(_, alice_port)] = case.wait_for_sdp(f"alice-calls-{callee}", "SIP/2.0 200")
    [(_, callee_port)] = case.wait_for_sdp(f"phone-{callee}", "INVITE")
    # the tools send from port 7000, not the port their SDP names, so the
    # agent learns where each phone is from its first packet (latching);
    # a packet for a phone not yet heard from goes to the SDP's port.  Each
    # tool sends one uncounted packet on binding and its counted stream
    # 0.5 s later, so both are latched first whichever process starts last
    at_alice, at_callee = case.rtptools(
        ("lan", PHONES[0], 7000, [f"{AGENT}:{alice_port}"], 100, 50, False, "rtp-alice", 1, 0.5, True),
        ("lan", PHONES[1], 7000, [f"{AGENT}:{callee_port}"], 100, 50, False, f"rtp-{callee}", 101, 0.5, True),
    )
    case.assertSippSuccess(case.wait_sipp(caller))
    case.assertSippSuccess(case.sipp_finish(callee_phone))
    case.assertNotIn("1", at_alice["by_ssrc"], f"alice got her own audio back: {at_alice}")
    case.assertNotIn("101", at_callee["by_ssrc"], f"{callee} got her own audio back: {at_callee}")
    case.assertGreaterEqual(at_alice["by_ssrc"].get("101", 0), 98, f"alice did not hear {callee}: {at_alice}")
    case.assertGreaterEqual(at_callee["by_ssrc"].get("1", 0), 98, f"{callee} did not hear alice: {at_callee}")


class SpwmSipKamailioTests(SpwmSipTestCase):
    """
    Agent and contact point (TLS tunnel) between LAN phones and Kamailio
    with digest authentication; bob is the operator-side UAS.
    """

    def setUp(self) -> None:
        super().setUp()
        self.make_topology("strict")
        self.start_kamailio()
        self.start_spwm_contact(tls=True)
        self.start_spwm_agent()

    def register(self, user: str = "alice", local_ip: str = PHONE, transport: str = "u1", name: str | None = None):
        """
        Register C{user} from C{local_ip}:5060 through the agent and assert
        SIPp's success.
        """
        result = self.sipp_uac(
            "register.xml", PROXY, user=user, local_ip=local_ip,
            transport=transport, name=name or f"register-{user}",
        )
        self.assertSippSuccess(result)
        return result

    def test_register_with_digest_through_agent(self) -> None:
        """
        A LAN phone registers through the agent with digest authentication
        (SIPp sees the 401 and then the 200), although the router lets no
        UDP out; Kamailio's location table holds alice's own contact with a
        Path through the contact point's operator-side address.
        """
        result = self.register("alice")
        self.assertIn("SIP/2.0 401", result.messages())
        [alice] = [b for b in self.location_table() if b.aor == "alice"]
        self.assertTrue(alice.contact.startswith(f"sip:alice@{PHONE}:5060"), alice)
        self.assertIsNotNone(alice.path, alice)
        self.assertIn(f"@{CONTACT}:5060;lr", alice.path)

    def test_outgoing_call_with_media(self) -> None:
        """
        The LAN phone calls bob (the operator UAS): SIPp on both ends
        reports the call set up and torn down, and RTP flows both ways:
        the phone's packets reach the UAS from the contact point, the UAS's
        echo reaches the phone from the agent (kernel counters at both
        ends; one-way audio fails).
        """
        self.register_uas("bob")
        uas = self.sipp_uas()
        self.register("alice")
        self.count_call_media()
        self.alice_calls_bob_with_rtp(uas, 3000)
        sent = self.counter("lan", "phone_sent")
        at_uas = self.counter("op", "at_uas")
        from_uas = self.counter("op", "from_uas")
        at_phone = self.counter("lan", "at_phone")
        counts = dict(sent=sent, at_uas=at_uas, from_uas=from_uas, at_phone=at_phone)
        self.assertGreater(sent, 80, counts)
        self.assertGreaterEqual(at_uas, sent - 2, f"phone to UAS lost packets: {counts}")
        self.assertGreaterEqual(at_phone, from_uas - 2, f"UAS to phone lost packets: {counts}")
        self.assertGreater(from_uas, 80, f"no audio back from the UAS: {counts}")

    def test_incoming_call_by_address_of_record(self) -> None:
        """
        carol, on the operator network, calls alice by her address of
        record at Kamailio; the INVITE reaches the LAN phone through the
        contact point and the tunnel (Kamailio routes it along the stored
        Path), the call completes on both SIPp ends, and the caller's RTP
        and the phone's echo both arrive.
        """
        self.register("alice")
        self.assertCallFromOperatorReachesPhone("alice")

    def test_call_to_lost_flow_gets_430(self) -> None:
        """
        alice registers, then her agent dies (SIGKILL): a call from carol
        to alice still finds the binding at Kamailio, which routes it along
        the Path to the contact point, and once the resumption window is
        over the contact point answers C{430 Flow Failed} (RFC 5626) instead
        of leaving the caller to time out.
        """
        self.register("alice")
        os.killpg(self.agent.pid, signal.SIGKILL)
        self.agent.wait(5.0)
        time.sleep(self.resume_window + 0.5)
        result = self.sipp_uac(
            "uac_call.xml", f"{KAMAILIO}:5060", user="carol", service="alice",
            role="op", local_ip=ECHO, name="carol-calls-alice", recv_timeout=4,
        )
        self.assertEqual(result.returncode, 1, result)
        self.assertIn("SIP/2.0 430", result.messages())

    def test_incoming_call_to_tcp_phone(self) -> None:
        """
        alice registers over TCP and keeps her connection to the agent
        open; carol calls her from the operator network: the INVITE comes
        back to alice over that same connection (the agent cannot open one
        towards the phone), alice's out-of-call scenario answers, the call
        completes and RTP arrives at both ends.
        """
        argv = sipp_argv(
            "register_stay.xml", PROXY, PHONE, 5060, "phone-alice-tcp", self.logdir,
            keys={"user": "alice", "contact": f"{PHONE}:5060", "expires": "300"},
            extra=["-au", "alice", "-ap", USERS["alice"], "-m", "1", "-d", "5000",
                   "-oocsf", str(DATA / "uas_echo.xml"),
                   "-mi", PHONE, "-mp", "6000", "-rtp_echo",
                   "-recv_timeout", "5000", "-timeout", "20s", "-timeout_error"],
            transport="t1",
        )
        phone = self.topology.spawn("lan", "phone-alice-tcp", argv, cwd=self.logdir)
        deadline = time.monotonic() + 10
        while not any(b.aor == "alice" for b in self.location_table()):
            if time.monotonic() > deadline or phone.returncode is not None:
                self.fail(f"alice did not register over TCP; see {self.logdir}/phone-alice-tcp.*")
            time.sleep(0.1)
        self.count_udp("lan", "at_phone", f"ip saddr {AGENT} ip daddr {PHONE} udp dport 6000")
        self.count_udp("op", "at_caller", f"ip saddr {CONTACT} ip daddr {ECHO} udp dport 6000")
        result = self.sipp_uac(
            "uac_rtp.xml", f"{KAMAILIO}:5060", user="carol", service="alice",
            role="op", local_ip=ECHO, keys={"pcap": PCAP},
            extra=["-d", "2000", "-mi", ECHO, "-mp", "6000"],
            name="carol-calls-alice",
        )
        self.assertSippSuccess(result)
        self.assertIn("INVITE sip:alice@", self.wait_sipp(phone).messages())
        self.assertGreater(self.counter("lan", "at_phone"), 50)
        self.assertGreater(self.counter("op", "at_caller"), 50)

    def test_cancel_ringing_call(self) -> None:
        """
        The LAN phone calls bob, bob rings, the phone cancels: the phone
        gets 200 to its CANCEL and 487 to its INVITE, bob saw the CANCEL
        (both SIPp scenarios succeed).
        """
        self.register_uas("bob")
        uas = self.sipp_uas("uas_ring_cancel.xml", name="bob-rings")
        self.register("alice")
        result = self.sipp_uac(
            "uac_cancel.xml", PROXY, user="alice", service="bob",
            name="alice-cancels",
        )
        self.assertSippSuccess(result)
        self.assertIn("SIP/2.0 487", result.messages())
        self.assertSippSuccess(self.sipp_finish(uas))

    def test_call_between_two_lan_phones(self) -> None:
        """
        alice and carol, two phones behind the same agent, both registered
        at Kamailio; alice calls carol: the INVITE goes out through the
        tunnel to Kamailio and comes back in through the same tunnel to
        carol (a hairpin), the call completes, and each phone's own RTP
        stream (told apart by SSRC) reaches the other phone and only the
        other one.
        """
        self.register("alice", PHONES[0])
        self.register("carol", PHONES[1])
        hairpin_call(self, "uac_call.xml", "carol")

    def _two_phones(self, transport: str) -> None:
        """
        alice on PHONES[0] and carol on PHONES[1] register through the one
        agent and call bob at the same time, each with RTP.
        """
        self.register_uas("bob")
        uas = self.sipp_uas()
        callers = [("alice", PHONES[0]), ("carol", PHONES[1])]
        for user, address in callers:
            self.register(user, address, transport=transport)
        table = {b.aor: b for b in self.location_table()}
        for user, address in callers:
            self.assertIn(user, table)
            self.assertTrue(table[user].contact.startswith(f"sip:{user}@{address}:5060"), table[user])
            self.assertIn(f"@{CONTACT}:5060;lr", table[user].path or "")
        for user, address in callers:
            self.count_udp("lan", f"at_{user}", f"ip saddr {AGENT} ip daddr {address} udp dport 6000")
        processes = []
        for user, address in callers:
            argv = sipp_argv(
                "uac_rtp.xml", PROXY, address, 5060, f"{user}-calls-bob", self.logdir,
                keys={"user": user, "pcap": PCAP},
                extra=["-s", "bob", "-au", user, "-ap", USERS[user], "-m", "1",
                       "-d", "2000", "-mi", address, "-mp", "6000",
                       "-recv_timeout", "5000", "-timeout", "20s", "-timeout_error"],
                transport=transport,
            )
            processes.append(self.topology.spawn("lan", f"{user}-calls-bob", argv, cwd=self.logdir))
        for process in processes:
            self.assertSippSuccess(self.wait_sipp(process))
        self.assertSippSuccess(self.sipp_finish(uas), calls=2)
        for user, _ in callers:
            self.assertGreater(self.counter("lan", f"at_{user}"), 50, user)

    def test_two_phones_on_two_hosts(self) -> None:
        """
        Two LAN phones on two LAN hosts register through one agent (two
        bindings, each with its own contact and a Path through the contact
        point) and call bob at the same time: both calls succeed and each
        phone gets its own echoed audio back.
        """
        self._two_phones("u1")

    def test_two_phones_on_tcp(self) -> None:
        """
        The same as L{test_two_phones_on_two_hosts} with the phones talking
        SIP over TCP to the agent.
        """
        self._two_phones("t1")


class OperatorVariantMixin:
    """
    Register, call out and be called with another contact point
    configuration (set C{contact_args}); plain TCP tunnel.
    """

    contact_args: tuple[str, ...] = ()
    sip_proxy = f"{KAMAILIO}:5060"

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.make_topology("strict")
        self.start_kamailio()
        self.start_spwm_contact(tls=False, sip_proxy=self.sip_proxy, extra=self.contact_args)
        self.start_spwm_agent()

    def test_register_call_out_and_in(self) -> None:
        """
        alice registers through the agent (digest), calls bob (the
        operator UAS) with RTP both ways, and then takes a call from carol
        on the operator network: all SIPp runs succeed and media arrives at
        both ends of both calls.
        """
        self.register_uas("bob")
        uas = self.sipp_uas()
        result = self.sipp_uac("register.xml", PROXY, user="alice", name="register-alice")
        self.assertSippSuccess(result)
        self.count_call_media()
        self.count_udp("op", "at_caller", f"ip saddr {CONTACT} ip daddr {ECHO} udp dport 6000")
        self.alice_calls_bob_with_rtp(uas, 2000)
        at_uas, at_phone = self.counter("op", "at_uas"), self.counter("lan", "at_phone")
        self.assertGreater(at_uas, 50, (at_uas, at_phone))
        self.assertGreater(at_phone, 50, (at_uas, at_phone))
        phone = self.sipp_uas(local_ip=PHONE, role="lan", name="phone-alice")
        result = self.sipp_uac(
            "uac_rtp.xml", f"{KAMAILIO}:5060", user="carol", service="alice",
            role="op", local_ip=ECHO, keys={"pcap": PCAP},
            extra=["-d", "2000", "-mi", ECHO, "-mp", "6000"],
            name="carol-calls-alice",
        )
        self.assertSippSuccess(result)
        self.assertSippSuccess(self.sipp_finish(phone))
        self.assertGreater(self.counter("op", "at_caller"), 50)
        self.assertGreater(self.counter("lan", "at_phone"), at_phone + 50)


class SpwmSipOperatorTcpTests(OperatorVariantMixin, SpwmSipTestCase):
    """
    The contact point talks to Kamailio over TCP
    (C{--sip-proxy HOST:5060;transport=tcp}); the phones stay on UDP.
    """

    sip_proxy = f"{KAMAILIO}:5060;transport=tcp"


class SpwmSipContactRewriteTests(OperatorVariantMixin, SpwmSipTestCase):
    """
    C{--contact-rewrite}: the registrar stores the contact point's address
    with a flow token instead of the phone's contact (for registrars
    without Path).
    """

    contact_args = ("--contact-rewrite",)

    def test_binding_names_contact_point(self) -> None:
        """
        With C{--contact-rewrite} the binding in Kamailio's location table
        is a URI at the contact point's operator-side address, not the
        phone's private address, and the phone's 200 still shows its own
        contact.
        """
        result = self.sipp_uac("register.xml", PROXY, user="alice", name="register-alice")
        self.assertSippSuccess(result)
        [alice] = [b for b in self.location_table() if b.aor == "alice"]
        self.assertIn(f"@{CONTACT}:5060", alice.contact, alice)
        self.assertNotIn(PHONE, alice.contact, alice)
        answer = result.messages().rsplit("SIP/2.0 200", 1)[1]
        self.assertIn(f"sip:alice@{PHONE}:5060", answer)


class SpwmEmbeddedRegistrarTests(SpwmSipTestCase):
    """
    The newcomer's path: no operator proxy at all.  The contact point runs
    its embedded registrar; two agents (two LAN addresses) each serve one
    phone.
    """

    def setUp(self) -> None:
        super().setUp()
        self.make_topology("strict")
        self.add_lan_address(SECOND_AGENT)
        self.start_spwm_contact(tls=False, sip_proxy=None)
        self.start_spwm_agent(AGENT, name="agent-one")
        self.start_spwm_agent(SECOND_AGENT, name="agent-two")

    def register_alice_and_bob(self) -> ManagedProcess:
        """
        alice registers through the first agent, bob through the second
        (no authentication: the embedded registrar answers 200 at once).

        @return: bob's phone, a SIPp UAS.
        """
        for user, address, agent in (("alice", PHONES[0], AGENT), ("bob", PHONES[1], SECOND_AGENT)):
            result = self.sipp_uac(
                "register_open.xml", f"{agent}:5060", user=user, local_ip=address,
                name=f"register-{user}",
            )
            self.assertSippSuccess(result)
        return self.sipp_uas(local_ip=PHONES[1], role="lan", name="phone-bob")

    def test_two_agents_call_each_other(self) -> None:
        """
        alice registers through the first agent, bob through the second
        (no authentication: the embedded registrar answers 200 at once);
        alice calls bob by his address of record: the call completes on
        both SIPp ends and the RTP and its echo cross both tunnels.
        """
        bob = self.register_alice_and_bob()
        self.count_udp("lan", "at_bob", f"ip saddr {SECOND_AGENT} ip daddr {PHONES[1]} udp dport 6000")
        self.count_udp("lan", "at_alice", f"ip saddr {AGENT} ip daddr {PHONES[0]} udp dport 6000")
        result = self.sipp_uac(
            "uac_rtp_open.xml", f"{AGENT}:5060", user="alice", service="bob",
            keys={"pcap": PCAP}, extra=["-d", "2000", "-mi", PHONES[0], "-mp", "6000"],
            name="alice-calls-bob",
        )
        self.assertSippSuccess(result)
        self.assertSippSuccess(self.sipp_finish(bob))
        at_bob = self.counter("lan", "at_bob")
        at_alice = self.counter("lan", "at_alice")
        self.assertGreater(at_bob, 50, (at_bob, at_alice))
        self.assertGreater(at_alice, 50, (at_bob, at_alice))

    def test_invite_retransmission_after_the_ack(self) -> None:
        """
        alice's phone sends its INVITE once more after the ACK (a
        retransmission that crossed the 200, delayed: under load the
        answer can take longer than the phone's 500 ms retransmission
        timer).  The halves drop it, as the 200 had passed them: bob's
        UAS, which would take it for an unexpected message and abandon
        the call, never sees it, and the call ends with its BYE answered.
        """
        bob = self.register_alice_and_bob()
        result = self.sipp_uac(
            "uac_late_retransmission.xml", f"{AGENT}:5060", user="alice", service="bob",
            extra=["-d", "500"], name="alice-calls-bob",
        )
        self.assertSippSuccess(result)
        finished = self.sipp_finish(bob)
        self.assertSippSuccess(finished)
        invites = finished.messages().count("INVITE sip:")
        self.assertEqual(invites, 1, "bob's UAS got the INVITE after the ACK")

    def test_two_phones_behind_one_agent_call_each_other(self) -> None:
        """
        alice and carol both register through the first agent; alice
        calls carol: the call goes into the tunnel, through the embedded
        registrar and back into the same tunnel (a hairpin); it completes
        on both SIPp ends and each phone's own RTP stream (told apart by
        SSRC) reaches the other phone and only the other one.
        """
        for user, address in (("alice", PHONES[0]), ("carol", PHONES[1])):
            result = self.sipp_uac(
                "register_open.xml", f"{AGENT}:5060", user=user, local_ip=address,
                name=f"register-{user}",
            )
            self.assertSippSuccess(result)
        hairpin_call(self, "uac_call_open.xml", "carol")
