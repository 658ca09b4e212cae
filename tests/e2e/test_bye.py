"""
A call whose media is lost is ended for both parties by the halves' own
BYEs (docs/sip-proxy.md, "Ending a call whose media is lost"), with a real
phone: baresip behind the agent calls bob (a SIPp UAS echoing RTP,
registered at Kamailio); then the phone's audio is dropped in its own
namespace, so no media crosses either half.  After the media timeout (3 s
on both halves) the agent ends the call for baresip and the contact point
for bob, each with a BYE in the other party's name: bob's SIPp, which
waits for a BYE, answers it and ends its scenario; baresip answers its
own and ends the call.

A contact point killed during a call (SIGKILL, with a state file it wrote
while it ran) and started again: the agent resumes its session there and
ends the call both ways itself, bob's through the new contact point; a
call that still rang at bob then gets the agent's CANCEL, which Kamailio
matches to its INVITE; a call from carol that still rang at baresip gets
the phone's CANCEL and carol the agent's 480 through the new contact point
and Kamailio.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from typing import Any, Sequence

from .netbed import CONTACT, ECHO, KAMAILIO, USERS, ManagedProcess, run, sipp_argv
from .phones import Baresip
from .test_interop import InteropTestCase

#: --media-timeout on both halves
MEDIA_TIMEOUT = 3.0


class _BaresipBed(InteropTestCase):
    """
    The interop bed with baresip, and its processes' logs read.
    """

    client = "baresip"

    def wait_log(self, process: Any, texts: Sequence[str], timeout: float) -> str:
        """
        Wait (bounded) until C{process}'s log holds each of C{texts}.

        @return: the log.
        """
        deadline = time.monotonic() + timeout
        while True:
            log = process.log() if isinstance(process, Baresip) else process.stdout()
            if all(text in log for text in texts):
                return str(log)
            if time.monotonic() > deadline:
                self.fail(f"{texts} not all in the log within {timeout}s; see {self.logdir}")
            time.sleep(0.2)

    def call_bob(self, name: str, scenario: str, uas_name: str) -> tuple[Baresip, ManagedProcess]:
        """
        baresip C{name} (alice, over UDP) registers and calls bob, a SIPp
        UAS C{uas_name} running C{scenario} for one call.

        @return: the phone and bob's SIPp.
        """
        phone = Baresip(self.topology, self.logdir, name, "alice", "udp", self.agent_ca)
        phone.start()
        self.addCleanup(phone.stop)
        self.wait_registered(phone)
        uas = self.sipp_uas(scenario, extra=["-m", "1"], name=uas_name)
        phone.dial("sip:bob@example.test")
        return phone, uas


class BaresipByeOnLossTests(_BaresipBed):
    """
    The interop bed (Kamailio, a TLS tunnel, an agent with SIP over UDP,
    TCP and TLS, bob registered) with C{--media-timeout 3} on both
    halves.
    """

    client = "baresip"

    def start_spwm_contact(self, *args: Any, **kwargs: Any) -> ManagedProcess:
        kwargs["media_timeout"] = MEDIA_TIMEOUT
        return super().start_spwm_contact(*args, **kwargs)

    def start_spwm_agent(self, *args: Any, **kwargs: Any) -> ManagedProcess:
        kwargs["media_timeout"] = MEDIA_TIMEOUT
        return super().start_spwm_agent(*args, **kwargs)

    def drop_phone_audio(self) -> None:
        """
        Drop every UDP datagram baresip sends from its RTP ports (the
        C{rtp_ports} of its config, 10000-10099) in the phone's namespace.
        """
        script = """
table inet spwm_drop {
    chain output {
        type filter hook output priority filter - 20; policy accept;
        udp sport 10000-10099 drop
    }
}
"""
        run(["ip", "netns", "exec", self.topology.namespaces["ph"], "nft", "-f", "-"], stdin=script.encode())

    def test_media_lost_both_parties_told(self) -> None:
        """
        baresip calls bob, audio both ways; the phone's audio is dropped:
        both halves end the call for want of media and each sends a BYE
        of its own with C{Reason: SIP;cause=408;text="media inactivity"}:
        bob's SIPp gets the contact point's (through Kamailio) and answers
        it, ending its scenario with success; baresip gets the agent's
        and ends the call; the halves' call lines say whom they told.
        """
        phone, uas = self.call_bob("baresip-bye", "uas_echo.xml", "bob-bye")
        self.wait_media()
        self.media_flows(1.0, "the call")
        self.drop_phone_audio()
        # bob's UAS waits for a BYE: the contact point's ends its scenario
        self.assertSippSuccess(self.wait_sipp(uas, timeout=4 * MEDIA_TIMEOUT + 10))
        messages = (self.logdir / "bob-bye.messages.log").read_text("utf-8", "replace")
        self.assertIn('Reason: SIP;cause=408;text="media inactivity"', messages)
        self.wait_log(self.agent, ["ended (media inactivity)", ": BYE sent to the phone"], 10.0)
        self.wait_log(self.contact, ["ended (media inactivity)", ": BYE sent to the far party"], 10.0)
        # baresip took the agent's BYE as the far end's hang-up and closed
        # the call (it does not log the Reason)
        self.wait_log(phone, ["session closed: Connection reset by peer", "terminated"], 10.0)

    def test_ringing_call_lost_both_parties_told(self) -> None:
        """
        baresip calls bob, who rings (a SIPp UAS that answers 180 and
        waits for a CANCEL); the agent stops: the contact point CANCELs
        the INVITE through Kamailio (bob answers it 200 and the INVITE
        487, his scenario ends with success once the 487 is ACKed) and
        the stopping agent answers baresip 480 (docs/sip-proxy.md,
        "Ending a call lost while it rings"); the halves' call lines say
        what they sent.
        """
        phone, uas = self.call_bob("baresip-ring", "uas_ring_cancel.xml", "bob-rings")
        self.wait_log(phone, ["180 Ringing"], 10.0)
        self.agent.stop()
        self.assertSippSuccess(self.wait_sipp(uas, timeout=20))
        self.wait_log(self.contact, ["ended (tunnel lost)", ": CANCEL sent to the far party"], 10.0)
        self.assertIn(": 480 sent to the phone", self.agent.stdout())
        self.wait_log(phone, ["480 Temporarily Unavailable"], 10.0)

class BaresipByeAfterCrashTests(_BaresipBed):
    """
    The same bed with C{--state-file} written every second: the contact
    point is killed (SIGKILL: no stop, no BYE of its own) during a call
    and started again with the same options.
    """

    client = "baresip"

    def start_spwm_contact(self, *args: Any, **kwargs: Any) -> ManagedProcess:
        self.state_file = self.logdir / "contact.state"
        kwargs["extra"] = [*kwargs.get("extra", ()), "--state-file", str(self.state_file), "--state-interval", "1"]
        return super().start_spwm_contact(*args, **kwargs)

    def saved_sessions(self) -> int:
        """
        @return: how many sessions the file written while running holds
            with their keys (written after the phone's REGISTER: one
            without is not restored).
        """
        try:
            doc = json.loads(self.state_file.read_text("utf-8"))
        except (OSError, ValueError):
            return 0
        sessions = doc.get("sessions", {}) if doc.get("running") else {}
        return sum(1 for entry in sessions.values() if entry.get("keys"))

    def crash_and_restart(self) -> None:
        """
        Once the contact point's periodic write holds the agent's session,
        kill it (SIGKILL) and start it again with the same options.
        """
        deadline = time.monotonic() + 10.0
        while self.saved_sessions() < 1:
            if time.monotonic() > deadline:
                self.fail(f"no session in {self.state_file} within 10 s")
            time.sleep(0.2)
        os.killpg(self.contact.pid, signal.SIGKILL)
        self.contact.wait(5.0)
        process = self.start_contact(self.contact_argv)
        self.wait_for_listener("op", "udp", CONTACT, 5060, process)
        self.contact = process

    def told_after_restart(self, uas: ManagedProcess, name: str, timeout: float, told: str) -> None:
        """
        Bob's SIPp C{name} ends its scenario with success within
        C{timeout} seconds, having had the agent's C{Reason} through
        Kamailio; the new contact point restored the session and the
        agent resumed it; the agent's call line ends with C{told}.
        """
        self.assertSippSuccess(self.wait_sipp(uas, timeout=timeout))
        messages = (self.logdir / f"{name}.messages.log").read_text("utf-8", "replace")
        self.assertIn('Reason: SIP;cause=503;text="tunnel lost"', messages)
        self.wait_log(self.contact, ["1 sessions restored", "(registrations only)"], 10.0)
        self.wait_log(self.agent, ["ended (tunnel lost)", told], 10.0)

    def test_crash_both_parties_told(self) -> None:
        """
        baresip calls bob; once the contact point's periodic write holds
        the agent's session, the contact point is killed and started
        again: it restores the session, the agent resumes it (its
        registrations; the calls are gone with the dead process, which
        told nobody) and ends the call itself both ways: bob's SIPp gets
        a BYE in baresip's name with C{Reason: ... "tunnel lost"} through
        the new contact point and Kamailio and ends its scenario; baresip
        gets the agent's BYE and closes the call.
        """
        phone, uas = self.call_bob("baresip-crash", "uas_echo.xml", "bob-crash")
        self.wait_media()
        self.media_flows(1.0, "the call")
        self.crash_and_restart()
        self.told_after_restart(uas, "bob-crash", 30.0, ": BYE sent to the far party and the phone")
        self.wait_log(phone, ["terminated"], 10.0)

    def test_crash_ringing_far_party_cancelled(self) -> None:
        """
        baresip calls bob, who rings (180, waits for a CANCEL); the contact
        point is killed and started again: the agent resumes its session
        (registrations only), answers baresip 480 and sends bob a CANCEL
        through the new contact point, which gives it the branch the dead
        one gave the INVITE, so Kamailio matches it to its INVITE
        transaction (its C{t_check_trans}: an unmatched CANCEL is dropped)
        and passes it on with its C{Reason}; bob answers 200 and 487, and
        his scenario ends once the 487 is ACKed.  Within 15 s of the
        restart: Kamailio's own C{fr_inv_timer} (30 s) would CANCEL bob
        too, without that Reason.
        """
        phone, uas = self.call_bob("baresip-crashring", "uas_ring_cancel.xml", "bob-crashring")
        self.wait_log(phone, ["180 Ringing"], 10.0)
        self.crash_and_restart()
        self.told_after_restart(uas, "bob-crashring", 15.0, ": 480 sent to the phone; CANCEL sent to the far party")
        self.wait_log(phone, ["480 Temporarily Unavailable"], 10.0)

    def test_crash_ringing_far_caller_answered(self) -> None:
        """
        carol (SIPp, operator side) calls alice's baresip through
        Kamailio; baresip rings (180, answers nothing); the contact point
        is killed and started again: the agent resumes its session
        (registrations only), CANCELs baresip and answers carol 480
        through the new contact point, which knows the dead one's Via by
        the same token key and sends the 480 on to Kamailio, which
        passes it to carol with its C{Reason} and ACKs it itself (hop by
        hop: that ACK goes into the tunnel and stays at the agent); carol
        ACKs and her scenario ends with success within 20 s of the
        restart, before Kamailio's own C{fr_inv_timer} (30 s, a 408).
        """
        phone = Baresip(self.topology, self.logdir, "baresip-rings", "alice", "udp", self.agent_ca, auto_answer=False)
        phone.start()
        self.addCleanup(phone.stop)
        self.wait_registered(phone)
        name = "carol-rings-alice"
        argv = sipp_argv(
            "uac_ring_480.xml", f"{KAMAILIO}:5060", ECHO, 5060, name, self.logdir,
            keys={"user": "carol"},
            extra=["-s", "alice", "-au", "carol", "-ap", USERS["carol"], "-m", "1",
                   "-recv_timeout", "25000", "-timeout", "40s", "-timeout_error"],
        )  # fmt: skip
        carol = self.topology.spawn("op", name, argv, cwd=self.logdir)
        self.addCleanup(carol.stop)
        messages = self.logdir / f"{name}.messages.log"
        deadline = time.monotonic() + 10.0
        while "SIP/2.0 180" not in (messages.read_text("utf-8", "replace") if messages.exists() else ""):
            if time.monotonic() > deadline:
                self.fail(f"carol's call did not ring within 10 s; see {self.logdir}")
            time.sleep(0.2)
        self.crash_and_restart()
        self.told_after_restart(carol, name, 20.0, ": 480 sent to the far party; CANCEL sent to the phone")
        # the 480 has the tag of baresip's 180 (the early dialog's)
        tags = dict(re.findall(r"^SIP/2.0 (180|480) .*?^To: .*?;tag=(\S+)", messages.read_text("utf-8", "replace"), re.M | re.S))
        self.assertEqual(tags.get("480"), tags.get("180"), f"see {messages}")
        self.assertIsNotNone(tags.get("480"), f"see {messages}")
