"""
End-to-end cases of the contact point's security rules (issue 6) under the
C{strict} policy, with Kamailio's digest authentication as the operator's
registrar: a tunnel that has not registered cannot place a call or get
media, a tunnel registered as one user cannot send requests as another, a
wrong password leaves the tunnel unregistered, and the contact point's
media relay latches only the host the SDP negotiated.

The verdicts are SIPp's (exit status, statistics and the messages it
received), Kamailio's location table, kernel packet counters (nftables in
the namespaces), C{ss} and C{rtptool}'s own socket; never SPWM's own
counters.
"""

from __future__ import annotations

from .netbed import AGENT, CONTACT, ECHO, KAMAILIO, PHONE, USERS, sipp_argv
from .sipbed import CONTACT_MEDIA_PORTS, PCAP, SpwmSipTestCase

PROXY = f"{AGENT}:5060"
"""Where LAN phones send their SIP: the agent."""

NOT_REGISTERED = "SIP/2.0 403 Forbidden (tunnel not registered)"
"""The contact point's answer to a request from a tunnel without a registration."""

NOT_YOURS = "SIP/2.0 403 Forbidden (From is not registered through this tunnel)"
"""The contact point's answer to a request as a user not registered through the tunnel."""

ATTACKER_SSRC = 4242
"""The SSRC of the RTP an operator-side host sends to a relay port it was not given."""


class SpwmSecurityTests(SpwmSipTestCase):
    """
    Agent and contact point (TLS tunnel, strict authorisation: the
    default) between a LAN phone and Kamailio with digest authentication;
    bob is the operator-side UAS.
    """

    def setUp(self) -> None:
        super().setUp()
        self.make_topology("strict")
        self.start_kamailio()
        self.start_spwm_contact(tls=True)
        self.start_spwm_agent()
        # everything the contact point sends to Kamailio, and every UDP
        # packet it sends into the operator network at all
        self.count_udp("op", "to_kamailio", f"ip saddr {CONTACT} ip daddr {KAMAILIO} udp dport 5060", hook="output")
        self.count_udp("op", "contact_udp_out", f"ip saddr {CONTACT} udp sport != 5060", hook="output")

    def invite_once(self, user: str, service: str = "bob", name: str | None = None) -> str:
        """
        The LAN phone sends one INVITE with SDP as C{user} (no credentials)
        through the agent; return the messages SIPp received.  SIPp
        succeeds on a 403 or a 407; the caller checks which.
        """
        result = self.sipp_uac(
            "uac_invite_once.xml", PROXY, user=user, service=service,
            extra=["-mi", PHONE, "-mp", "6000"], name=name or f"invite-as-{user}",
        )
        self.assertSippSuccess(result)
        return result.messages()

    def register(self, user: str = "alice") -> None:
        """Register C{user} from the phone through the agent (must succeed)."""
        self.assertSippSuccess(self.sipp_uac("register.xml", PROXY, user=user, name=f"register-{user}"))

    def test_unregistered_tunnel_cannot_call_or_open_media(self) -> None:
        """
        Before any REGISTER through the tunnel, the phone's INVITE is
        answered C{403 Forbidden (tunnel not registered)} by the contact
        point: nothing reaches Kamailio, and the contact point opens no
        media relay port and sends no media into the operator network.
        A REGISTER, which an unregistered tunnel may send, does reach
        Kamailio (the control that the counter sees the contact point's
        SIP).
        """
        messages = self.invite_once("alice")
        self.assertIn(NOT_REGISTERED, messages)
        self.assertNotIn("SIP/2.0 407", messages)
        self.assertEqual(self.counter("op", "to_kamailio"), 0, "the refused INVITE reached Kamailio")
        self.assertEqual(self.open_media_ports("op", CONTACT_MEDIA_PORTS), [])
        self.assertEqual(self.counter("op", "contact_udp_out"), 0)
        # the control: a REGISTER passes (and gets Kamailio's challenge)
        result = self.sipp_uac("register_bad.xml", PROXY, user="alice", name="register-challenged",
                               extra=["-ap", USERS["alice"] + "-wrong"])
        self.assertSippSuccess(result)
        self.assertGreater(self.counter("op", "to_kamailio"), 0)

    def test_registered_tunnel_cannot_send_as_another_user(self) -> None:
        """
        After alice has registered through the tunnel (digest, 200), an
        INVITE from the same phone with C{From: bob} is answered C{403
        Forbidden (From is not registered through this tunnel)} by the
        contact point and never reaches Kamailio; the same INVITE as alice
        passes the contact point and is challenged by Kamailio (C{407}).
        """
        self.register("alice")
        before = self.counter("op", "to_kamailio")
        messages = self.invite_once("bob", service="carol")
        self.assertIn(NOT_YOURS, messages)
        self.assertEqual(self.counter("op", "to_kamailio"), before, "the INVITE as bob reached Kamailio")
        self.assertEqual(self.open_media_ports("op", CONTACT_MEDIA_PORTS), [])
        # the control: as alice the INVITE gets to Kamailio, which challenges it
        messages = self.invite_once("alice", service="carol")
        self.assertIn("SIP/2.0 407", messages)
        self.assertNotIn("SIP/2.0 403", messages)
        self.assertGreater(self.counter("op", "to_kamailio"), before)

    def test_wrong_password_leaves_tunnel_unregistered(self) -> None:
        """
        alice registers with a wrong password: Kamailio's refusal (401
        again, or 403) reaches the phone, no binding exists, and the
        phone's following INVITE is answered C{403 Forbidden (tunnel not
        registered)} by the contact point.
        """
        result = self.sipp_uac("register_bad.xml", PROXY, user="alice", name="register-wrong",
                               extra=["-ap", "not-" + USERS["alice"]])
        self.assertSippSuccess(result)
        received = result.messages()
        self.assertIn("SIP/2.0 401", received)
        self.assertNotIn("SIP/2.0 200", received)
        self.assertEqual([b for b in self.location_table() if b.aor == "alice"], [])
        after_register = self.counter("op", "to_kamailio")
        messages = self.invite_once("alice")
        self.assertIn(NOT_REGISTERED, messages)
        self.assertEqual(self.counter("op", "to_kamailio"), after_register)

    def test_relay_latches_only_the_negotiated_host(self) -> None:
        """
        During alice's call to bob (RTP both ways), another operator host
        (203.0.113.40, inside C{--media-allow}) sends 100 RTP packets to
        the contact point's relay port of the call.  They arrive at the
        contact point (kernel counter) but none of them reaches the phone,
        the contact point sends nothing to that host (the relay did not
        latch it), and the call's own RTP goes on both ways with at most 2
        packets lost each way.
        """
        self.register_uas("bob")
        uas = self.sipp_uas()
        self.register("alice")
        self.count_call_media()
        self.count_udp("lan", "attack_at_phone", f"ip daddr {PHONE} udp dport 6000 @th,128,32 {ATTACKER_SSRC}")
        self.count_udp("op", "attack_at_contact", f"ip saddr {ECHO} ip daddr {CONTACT} udp sport 7002")
        self.count_udp("op", "contact_to_attacker", f"ip saddr {CONTACT} ip daddr {ECHO}", hook="output")
        argv = sipp_argv(
            "uac_rtp.xml", PROXY, PHONE, 5060, "alice-calls-bob", self.logdir,
            keys={"user": "alice", "pcap": PCAP},
            extra=["-s", "bob", "-au", "alice", "-ap", USERS["alice"], "-m", "1",
                   "-d", "4000", "-mi", PHONE, "-mp", "6000",
                   "-recv_timeout", "8000", "-timeout", "30s", "-timeout_error"],
        )
        caller = self.topology.spawn("lan", "alice-calls-bob", argv, cwd=self.logdir)
        # the relay port the contact point gave bob (in the INVITE bob got)
        [(_, relay_port)] = self.wait_for_sdp("sipp-uas", "INVITE")
        attack = self.rtptool("op", ECHO, 7002, [f"{CONTACT}:{relay_port}"], 100, 50,
                              name="rtp-attacker", ssrc=ATTACKER_SSRC)
        self.assertSippSuccess(self.wait_sipp(caller))
        self.assertSippSuccess(self.sipp_finish(uas))
        counts = {
            name: self.counter(role, name)
            for role, name in (
                ("lan", "phone_sent"), ("op", "at_uas"), ("op", "from_uas"), ("lan", "at_phone"),
                ("lan", "attack_at_phone"), ("op", "attack_at_contact"), ("op", "contact_to_attacker"),
            )
        }
        self.assertEqual(attack["sent"], 100, attack)
        self.assertGreaterEqual(counts["attack_at_contact"], 100, counts)
        self.assertEqual(counts["attack_at_phone"], 0, f"the attacker's RTP reached the phone: {counts}")
        self.assertEqual(counts["contact_to_attacker"], 0, f"the relay sent to the attacker: {counts}")
        self.assertEqual(attack["received"], 0, attack)
        self.assertGreater(counts["phone_sent"], 80, counts)
        self.assertGreaterEqual(counts["at_uas"], counts["phone_sent"] - 2, f"phone to UAS lost packets: {counts}")
        self.assertGreaterEqual(counts["at_phone"], counts["from_uas"] - 2, f"UAS to phone lost packets: {counts}")
        self.assertLessEqual(counts["at_phone"], counts["from_uas"], f"the phone got more than the UAS sent: {counts}")
