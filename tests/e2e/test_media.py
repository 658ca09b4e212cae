"""
End-to-end cases of the media relay (issue 5) under the C{strict} policy,
with Kamailio as the operator's registrar and proxy and SIPp phones: RTP
and RTCP both ways, hold and resume across the inactivity timeout, audio
with video, early media from two forked branches at once, no media port
left open after hang-up, and 50 concurrent calls.
Packets are counted by the kernel (nftables counters in the namespaces) or
by C{rtptool.py}'s own sockets; open ports by C{ss}.
"""

from __future__ import annotations

import os
import signal
import time

from .netbed import (
    AGENT,
    CONTACT,
    KAMAILIO,
    PHONE,
    UAS,
    sipp_argv,
    USERS,
)
from .sipbed import (
    AGENT_MEDIA_PORTS,
    CONTACT_MEDIA_PORTS,
    PCAP,
    SpwmSipTestCase,
    short_pcap,
)

PROXY = f"{AGENT}:5060"


class MediaTestBase(SpwmSipTestCase):
    """
    alice (LAN, through agent and contact point) calls bob (the operator
    UAS, registered at Kamailio, echoing RTP).  Helpers only; the cases are
    in the subclasses.
    """

    media_timeout: float | None = None
    tls = False

    def setUp(self) -> None:
        super().setUp()
        self.make_topology("strict")
        self.start_kamailio()
        self.start_spwm_contact(tls=self.tls, media_timeout=self.media_timeout)
        self.start_spwm_agent(media_timeout=self.media_timeout)
        self.register_uas("bob")
        result = self.sipp_uac("register.xml", PROXY, user="alice", name="register-alice")
        self.assertSippSuccess(result)

    def background_uac(self, scenario: str, name: str, extra: list[str], keys: dict[str, str] | None = None, calls: int = 1, timeout: float = 30.0, media_port: int = 6000):
        """
        Start alice's SIPp UAC towards bob through the agent in the
        background, offering media at C{PHONE:media_port} (SIPp binds it).
        """
        argv = sipp_argv(
            scenario, PROXY, PHONE, 5060, name, self.logdir,
            keys={"user": "alice", **(keys or {})},
            extra=["-s", "bob", "-au", "alice", "-ap", USERS["alice"], "-m", str(calls),
                   "-recv_timeout", "8000", "-timeout", f"{timeout}s", "-timeout_error",
                   "-mi", PHONE, "-mp", str(media_port), *extra],
        )
        return self.topology.spawn("lan", name, argv, cwd=self.logdir)

    def assertPortsClosed(self) -> None:
        """
        After hang-up neither the agent's nor the contact point's namespace
        has a UDP socket left in its media port range (C{ss -uln}), once
        the bed's C{--media-keep} (1 s) has passed.
        """
        lan, op = self.wait_media_ports_closed(timeout=5.0)
        self.assertEqual((lan, op), ([], []), "media ports still open after hang-up (agent, contact)")

    def count_media(self, port: int, phone_port: int | None = None) -> None:
        """
        Kernel counters for one media stream, named after the UAS's port
        C{port}: C{at_uas_P} (from the contact point to the UAS),
        C{from_uas_P} (the UAS's packets back), C{phone_sent_P} (from the
        phone's C{phone_port}, default C{port}, to the agent) and
        C{at_phone_P} (from the agent to the phone's C{phone_port}).
        """
        phone_port = phone_port or port
        self.count_udp("op", f"at_uas_{port}", f"ip saddr {CONTACT} ip daddr {UAS} udp dport {port}")
        self.count_udp("op", f"from_uas_{port}", f"ip saddr {UAS} ip daddr {CONTACT} udp sport {port}", hook="output")
        self.count_udp("lan", f"phone_sent_{port}", f"ip saddr {PHONE} ip daddr {AGENT} udp sport {phone_port}")
        self.count_udp("lan", f"at_phone_{port}", f"ip saddr {AGENT} ip daddr {PHONE} udp dport {phone_port}")

    def media_counts(self, port: int) -> dict[str, int]:
        """The four counters of L{count_media} for C{port}."""
        return {
            name: self.counter(role, f"{name}_{port}")
            for role, name in (("lan", "phone_sent"), ("op", "at_uas"), ("op", "from_uas"), ("lan", "at_phone"))
        }

    def assertBothWays(self, counts: dict[str, int], minimum: int, lost: int = 2) -> None:
        """
        At least C{minimum} packets went each way and at most C{lost} were
        lost on each way through agent, tunnel and contact point.
        """
        self.assertGreaterEqual(counts["phone_sent"], minimum, counts)
        self.assertGreaterEqual(counts["at_uas"], counts["phone_sent"] - lost, f"phone to UAS: {counts}")
        self.assertGreaterEqual(counts["from_uas"], minimum, f"UAS sent nothing back: {counts}")
        self.assertGreaterEqual(counts["at_phone"], counts["from_uas"] - lost, f"UAS to phone: {counts}")


class SpwmMediaTests(MediaTestBase):
    """
    Media of calls through a plain-TCP tunnel with the default timeouts.
    """

    def test_rtp_and_rtcp_both_ways(self) -> None:
        """
        alice calls bob: the call succeeds on both SIPp ends, RTP crosses
        both ways (counted at both ends), RTCP sent by each end to the
        relay's RTCP port (the SDP's RTP port + 1) reaches the other end,
        and after the BYE no media port is open on either half.
        """
        pcap = short_pcap(PCAP, self.logdir / "rtp80.pcap", 80)
        self.count_media(6000)
        self.count_udp("op", "rtcp_at_uas", f"ip saddr {CONTACT} ip daddr {UAS} udp dport 6001")
        self.count_udp("lan", "rtcp_at_phone", f"ip saddr {AGENT} ip daddr {PHONE} udp dport 6001")
        uas = self.sipp_uas()
        uac = self.background_uac("uac_rtp.xml", "alice-calls-bob", ["-d", "4000"], keys={"pcap": str(pcap)})
        [(_, agent_port)] = self.wait_for_sdp("alice-calls-bob", "SIP/2.0 200")
        [(_, contact_port)] = self.wait_for_sdp("sipp-uas", "INVITE")
        self.assertTrue(AGENT_MEDIA_PORTS[0] <= agent_port <= AGENT_MEDIA_PORTS[1], agent_port)
        self.assertTrue(CONTACT_MEDIA_PORTS[0] <= contact_port <= CONTACT_MEDIA_PORTS[1], contact_port)
        phone_rtcp, uas_rtcp = self.rtptools(
            ("lan", PHONE, 6001, [f"{AGENT}:{agent_port + 1}"], 10, 10, True, "rtcp-phone"),
            # starts once the phone's socket is surely bound
            ("op", UAS, 6001, [f"{CONTACT}:{contact_port + 1}"], 10, 10, True, "rtcp-uas", 1, 0.5),
        )
        self.assertSippSuccess(self.wait_sipp(uac))
        self.assertSippSuccess(self.sipp_finish(uas))
        self.assertBothWays(self.media_counts(6000), 70)
        self.assertEqual(phone_rtcp["sent"], 10)
        self.assertEqual(uas_rtcp["sent"], 10)
        self.assertGreaterEqual(self.counter("op", "rtcp_at_uas"), 10)
        self.assertGreaterEqual(self.counter("lan", "rtcp_at_phone"), 10)
        # the phone's RTCP socket got the UAS's reports back from the agent
        self.assertEqual(phone_rtcp["received"], 10, phone_rtcp)
        self.assertEqual(phone_rtcp["sources"], [f"{AGENT}:{agent_port + 1}"])
        self.assertPortsClosed()

    def test_multihomed_phone_latched(self) -> None:
        """
        alice's SDP names 192.0.2.99 (where nothing listens) while she
        sends SIP and RTP from PHONE (a phone with two interfaces): the
        agent latches on her signalling host, her RTP reaches bob and
        bob's comes back to PHONE (counted at both ends); the agent says
        once that it latched to an address the SDP did not name, and both
        halves log the call's detail record at its end (with the codec).
        """
        pcap = short_pcap(PCAP, self.logdir / "rtp80.pcap", 80)
        self.count_media(6000)
        uas = self.sipp_uas()
        uac = self.background_uac(
            "uac_rtp_multihomed.xml", "alice-calls-bob", ["-d", "4000"],
            keys={"pcap": str(pcap), "sdp_ip": "192.0.2.99"},
        )
        self.assertSippSuccess(self.wait_sipp(uac))
        self.assertSippSuccess(self.sipp_finish(uas))
        self.assertBothWays(self.media_counts(6000), 70)
        log = self.agent.stdout()
        self.assertEqual(log.count(f"RTP from {PHONE}:6000, not the address its SDP named (192.0.2.99:6000)"), 1, log[-3000:])
        for text in (log, self.contact.stdout()):
            self.assertRegex(
                text, r"call \S+ ended \(dialog ended\) after [0-9.]+s, answered for [0-9.]+s: .* codec PCMA/8000"
            )
        self.assertPortsClosed()

    def test_audio_and_video(self) -> None:
        """
        A call with an audio and a video stream: both are relayed both
        ways (counted per stream at both ends; SIPp plays the audio, the
        test's C{rtptool} sends the video from another port of the phone's
        host, which the agent latches) and all their ports close after the
        BYE.
        """
        pcap = short_pcap(PCAP, self.logdir / "rtp60.pcap", 60)
        self.count_media(6000)
        self.count_media(6002, phone_port=7002)
        uas = self.sipp_uas("uas_av.xml")
        uac = self.background_uac("uac_av.xml", "alice-calls-bob", ["-d", "3000"], keys={"pcap": str(pcap)})
        ports = self.wait_for_sdp("alice-calls-bob", "SIP/2.0 200", count=2)
        self.assertEqual([m for m, _ in ports], ["audio", "video"])
        video = self.rtptool("lan", PHONE, 7002, [f"{AGENT}:{ports[1][1]}"], 60, 30, name="video-phone")
        self.assertSippSuccess(self.wait_sipp(uac))
        self.assertSippSuccess(self.sipp_finish(uas))
        self.assertBothWays(self.media_counts(6000), 50)
        self.assertBothWays(self.media_counts(6002), 50)
        self.assertGreaterEqual(video["received"], 58, video)
        self.assertPortsClosed()


    def test_tunnel_loss_releases_contact_ports(self) -> None:
        """
        The agent dies (SIGKILL) in the middle of a call with media: the
        contact point releases every relay port of the call when the
        resumption window (2 s here) is over, not after the inactivity
        timeout (60 s here).
        """
        uas = self.sipp_uas()
        uac = self.background_uac("uac_call.xml", "alice-calls-bob", ["-d", "20000"], timeout=30.0)
        self.wait_for_sdp("alice-calls-bob", "SIP/2.0 200")
        self.assertTrue(self.open_media_ports("op", CONTACT_MEDIA_PORTS))
        os.killpg(self.agent.pid, signal.SIGKILL)
        self.agent.wait(5.0)
        self.assertTrue(self.open_media_ports("op", CONTACT_MEDIA_PORTS), "released before the resumption window")
        deadline = time.monotonic() + self.resume_window + 5.0
        while self.open_media_ports("op", CONTACT_MEDIA_PORTS) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.open_media_ports("op", CONTACT_MEDIA_PORTS), [], "contact point kept the media ports of a lost tunnel")
        uac.stop()
        uas.stop()


class SpwmForkingTests(MediaTestBase):
    """
    bob is registered twice (two SIPp UAS on the operator side), so
    Kamailio forks alice's INVITE to both in parallel.
    """

    def test_early_media_from_two_branches(self) -> None:
        """
        Both branches answer 183 with their own SDP (own To-tag, own media
        port) and send early media to the contact point's one relay port;
        branch A answers 200 after 2.5 s and Kamailio cancels B.  The phone
        hears both branches' early media, both branches hear the phone
        while the call is early; after the answer only A's media flows:
        the phone gets every packet of A but only the early part of B's,
        and B gets only the early part of the phone's.  Every SIPp ends
        well and no media port stays open.
        """
        self.assertSippSuccess(
            self.sipp_uac(
                "register.xml", f"{KAMAILIO}:5060", user="bob", local_ip=UAS,
                local_port=5070, role="op", keys={"contact": f"{UAS}:5062"},
                name="register-bob-2",
            )
        )
        uas_a = self.sipp_uas(
            "uas_fork_answer.xml", local_port=5060, media_port=6100, name="uas-a",
            extra=["-key", "mport", "6000", "-d", "2500"],
        )
        uas_b = self.sipp_uas(
            "uas_fork_cancelled.xml", local_port=5062, media_port=6110, name="uas-b",
            extra=["-key", "mport", "6010"],
        )
        uac = self.background_uac("uac_fork.xml", "alice-forks", ["-d", "5000"], media_port=6100)
        [(_, agent_port)] = self.wait_for_sdp("alice-forks", "SIP/2.0 183")
        [(_, contact_port)] = self.wait_for_sdp("uas-a", "INVITE")
        [(_, contact_port_b)] = self.wait_for_sdp("uas-b", "INVITE")
        self.assertEqual(contact_port, contact_port_b)
        packets, pps = 200, 50  # 4 s: about 2 s early, 2 s answered
        phone, branch_a, branch_b = self.rtptools(
            ("lan", PHONE, 6000, [f"{AGENT}:{agent_port}"], packets, pps, False, "rtp-phone", 1),
            ("op", UAS, 6000, [f"{CONTACT}:{contact_port}"], packets, pps, False, "rtp-a", 1000),
            ("op", UAS, 6010, [f"{CONTACT}:{contact_port}"], packets, pps, False, "rtp-b", 2000),
        )
        self.assertSippSuccess(self.wait_sipp(uac))
        self.assertSippSuccess(self.sipp_finish(uas_a))
        self.assertSippSuccess(self.sipp_finish(uas_b))
        at_phone = phone["by_ssrc"]
        reports = {"phone": phone, "a": branch_a, "b": branch_b}
        # early media of both branches reached the phone
        self.assertGreaterEqual(at_phone.get("2000", 0), 40, reports)
        # the winner's media reached it all along, the loser's stopped
        self.assertGreaterEqual(at_phone.get("1000", 0), packets - 10, reports)
        self.assertLessEqual(at_phone.get("2000", 0), packets - 30, reports)
        # the phone's media reached both while early, then only the winner
        self.assertGreaterEqual(branch_a["by_ssrc"].get("1", 0), packets - 10, reports)
        self.assertGreaterEqual(branch_b["by_ssrc"].get("1", 0), 40, reports)
        self.assertLessEqual(branch_b["by_ssrc"].get("1", 0), packets - 30, reports)
        self.assertPortsClosed()


class SpwmMediaTimeoutTests(MediaTestBase):
    """
    The same set-up with C{--media-timeout 3} on both halves and a TLS
    tunnel.
    """

    media_timeout = 3.0
    tls = True


    def test_held_call_survives_silence_and_resumes(self) -> None:
        """
        alice calls bob with RTP, puts the call on hold by re-INVITE
        (a=sendonly, answered a=recvonly), stays silent for 5 s (longer
        than the 3 s inactivity timeout plus its sweep): the relay ports
        stay open on both halves; she resumes by re-INVITE (a=sendrecv)
        and RTP flows both ways again: every packet of both bursts arrives
        at both ends.  After the BYE the ports close.
        """
        packets = 50
        pcap = short_pcap(PCAP, self.logdir / "rtp50.pcap", packets)
        self.count_media(6000)
        uas = self.sipp_uas("uas_hold.xml")
        uac = self.background_uac("uac_hold.xml", "alice-holds", ["-d", "5000"], keys={"pcap": str(pcap)})
        # wait for the hold re-INVITE at bob
        deadline = time.monotonic() + 15
        log = self.logdir / "sipp-uas.messages.log"
        while "a=sendonly" not in (log.read_text("utf-8", "replace") if log.exists() else ""):
            if time.monotonic() > deadline or uac.returncode is not None:
                self.fail(f"no hold re-INVITE at bob; see {self.logdir}")
            time.sleep(0.1)
        before = self.media_counts(6000)
        time.sleep(4.5)
        lan = self.open_media_ports("lan", AGENT_MEDIA_PORTS)
        op = self.open_media_ports("op", CONTACT_MEDIA_PORTS)
        self.assertTrue(lan and op, f"held call's media ports released during the hold: agent {lan}, contact {op}")
        during = self.media_counts(6000)
        self.assertEqual(before["phone_sent"], during["phone_sent"], "the phone was not silent on hold")
        self.assertSippSuccess(self.wait_sipp(uac))
        self.assertSippSuccess(self.sipp_finish(uas))
        after = self.media_counts(6000)
        self.assertBothWays(after, 2 * packets - 2)
        # the second burst (after the resume) went both ways too
        self.assertGreaterEqual(after["at_uas"] - during["at_uas"], packets - 2, (during, after))
        self.assertGreaterEqual(after["at_phone"] - during["at_phone"], packets - 2, (during, after))
        self.assertPortsClosed()

    def test_silent_call_not_on_hold_is_released(self) -> None:
        """
        The control case: a call that is not on hold and carries no media
        at all loses its relay ports after the 3 s inactivity timeout (so
        the hold case above proves that hold keeps them), and is ended for
        both ends by the halves' own BYEs (docs/sip-proxy.md, "Ending a
        call whose media is lost"): alice's SIPp (C{uac_call_ended.xml})
        gets the agent's, bob's the contact point's, each with
        C{Reason: SIP;cause=408;text="media inactivity"}, and both answer
        200.
        """
        uas = self.sipp_uas()
        uac = self.background_uac("uac_call_ended.xml", "alice-silent", [])
        self.wait_for_sdp("alice-silent", "SIP/2.0 200")
        self.assertTrue(self.open_media_ports("lan", AGENT_MEDIA_PORTS))
        lan, op = self.wait_media_ports_closed(timeout=6.0)
        self.assertEqual((lan, op), ([], []), "silent call's media ports not released by the timeout")
        self.assertSippSuccess(self.wait_sipp(uac))
        self.assertSippSuccess(self.sipp_finish(uas))
        for name in ("alice-silent", "sipp-uas"):
            messages = (self.logdir / f"{name}.messages.log").read_text("utf-8", "replace")
            self.assertIn('Reason: SIP;cause=408;text="media inactivity"', messages, name)


class SpwmMediaLoadTests(MediaTestBase):
    """
    50 concurrent calls through one agent and one contact point (TLS
    tunnel), each with 50 RTP packets per second each way.
    """

    tls = True
    calls = 50

    def test_fifty_calls_with_rtp(self) -> None:
        """
        SIPp sets up 50 calls from alice to bob (all offering PHONE:6100,
        which SIPp binds but does not use); once the agent has bound a port
        pair for each (seen by C{ss}), C{rtptool} sends 50 pps of RTP for
        4 s to every call's RTP port from PHONE:6000 (the agent latches on
        any port of the negotiated host) and counts what comes back per SSRC: bob echoes
        each stream, so every packet crosses the pair twice.  Loss is under
        0.1 % each way (kernel counters at both ends), every call completes
        and every media port is closed afterwards.
        """
        calls, pps, seconds = self.calls, 50, 4
        self.count_media(6000)
        uas = self.sipp_uas()
        uac = self.background_uac(
            "uac_call.xml", "alice-load", ["-d", "9000", "-l", str(calls), "-r", "50"],
            calls=calls, timeout=40.0, media_port=6100,
        )
        deadline = time.monotonic() + 15
        while True:
            ports = sorted(
                int(a.rsplit(":", 1)[1]) for a in self.open_media_ports("lan", AGENT_MEDIA_PORTS)
            )
            if len(ports) >= 2 * calls:
                break
            if time.monotonic() > deadline or uac.returncode is not None:
                self.fail(f"{len(ports)} agent media sockets, expected {2 * calls}; see {self.logdir}")
            time.sleep(0.2)
        rtp_ports = [p for p in ports if p % 2 == 0]
        self.assertEqual(len(rtp_ports), calls, ports)
        report = self.rtptool(
            "lan", PHONE, 6000, [f"{AGENT}:{p}" for p in rtp_ports], pps * seconds, pps, name="rtp-load",
        )
        self.assertSippSuccess(self.wait_sipp(uac, timeout=45.0), calls=calls)
        self.assertSippSuccess(self.sipp_finish(uas), calls=calls)
        counts = self.media_counts(6000)
        total = calls * pps * seconds
        allowed = total // 1000  # 0.1 %
        self.assertEqual(report["sent"], total, report)
        self.assertGreaterEqual(counts["phone_sent"], total, counts)
        self.assertLessEqual(total - counts["at_uas"], allowed, f"phone to UAS loss: {counts}")
        self.assertLessEqual(counts["from_uas"] - counts["at_phone"], allowed, f"UAS to phone loss: {counts}")
        self.assertLessEqual(total - report["received"], 2 * allowed + (total - counts["from_uas"]), report)
        self.assertEqual(len(report["by_ssrc"]), calls, "some calls got no echo back")
        self.assertPortsClosed()
