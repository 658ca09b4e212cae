"""
End-to-end cases of resumption (issue 6) under the C{strict} policy, with
Kamailio's digest authentication as the operator's registrar: during a call
with RTP flowing both ways the agent's tunnel is cut; the agent reconnects
(from the same or from a new public address), proves the per-user key, and
the call's media flows again within one second of the new connection, with
no SIP at all between the contact point and Kamailio meanwhile; a forged
resumption (a tunnel from the LAN that names the real session but cannot
prove the key) is refused and takes nothing over.

The verdicts are SIPp's (exit status, statistics, the messages it
received), Kamailio's location table, kernel packet counters (nftables in
the namespaces), C{ss}, C{rtptool}'s own socket and the forger's own view;
SPWM's logs only name the session and say which half did what.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

from attrs import frozen

from .netbed import (
    AGENT,
    CONTACT,
    GATEWAY_PUBLIC,
    KAMAILIO,
    PHONE,
    PHONES,
    REPO_ROOT,
    ROUTER_PUBLIC,
    UAS,
    USERS,
    ManagedProcess,
    NetbedError,
    run,
    sipp_argv,
)
from .sipbed import CONTACT_NAME, RTPTOOL, SpwmSipTestCase

PROXY = f"{AGENT}:5060"
"""Where LAN phones send their SIP: the agent."""

NEW_PUBLIC = "198.51.100.3"
"""The router's second public address: where the agent's tunnel comes from after the move."""

FORGER_ADDRESS = PHONES[1]
"""The LAN address the forged resumption comes from."""

USER = "alice@example.test"
"""The per-user key's name for alice (C{username@realm})."""

PPS = 50
"""RTP packets per second the phone sends (the UAS echoes each one)."""

RESUME_BOUND = 1.0
"""Seconds within which media must flow again after the new tunnel is up."""

FORGER = r'''
"""
A forged resumption: a TLS tunnel from the LAN with the bed's CA whose
hello names the victim's session and whose resume carries a wrong proof.
Prints one JSON line per event; exits after resume-failed/resumed or 8 s.
"""
import json, sys
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from spwm.tunnel.protocol import AgentTunnelFactory

session, users, ca, name, source, host, proof = sys.argv[1:8]
users = users.split(",")

def report(event, **fields):
    print(json.dumps(dict(event=event, **fields)), flush=True)

def stop():
    if reactor.running:
        reactor.stop()

class Forger:
    def tunnel_established(self, tunnel):
        report("established", session_id=tunnel.session_id, challenge=tunnel.peer_hello.get("challenge"))
        tunnel.send_control({"op": "resume", "session_id": session, "proofs": {u: proof for u in users}})
    def control_received(self, tunnel, message):
        report("control", message=message)
        if message.get("op") in ("resume-failed", "resumed"):
            # stay a moment: a takeover would open media channels now
            reactor.callLater(1.0, stop)
    def tunnel_lost(self, tunnel, reason):
        report("lost", reason=str(reason))
        stop()
    def sip_received(self, tunnel, flow_id, data):
        report("sip", flow_id=flow_id, data=data[:200].decode("utf-8", "replace"))
    def channel_requested(self, tunnel, channel_id, kind, meta):
        report("channel", channel_id=channel_id, meta=meta)
    def datagram_received(self, tunnel, channel_id, data, component):
        report("datagram", channel_id=channel_id, size=len(data))
    def stream_data_received(self, tunnel, channel_id, data):
        report("stream", channel_id=channel_id, size=len(data))
    def stream_ended(self, tunnel, channel_id):
        pass
    def channel_closed(self, tunnel, channel_id, code, reason):
        pass

factory = AgentTunnelFactory(
    Forger(), reactor, "forger", hello={"resume": {"session_id": session, "users": users}}
)
tls = optionsForClientTLS(name, trustRoot=Certificate.loadPEM(open(ca, "rb").read()))
endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, host, 443, timeout=5, bindAddress=(source, 0)))
endpoint.connect(factory).addErrback(lambda f: (report("connect-failed", reason=f.getErrorMessage()), stop()))
reactor.callLater(8.0, stop)
reactor.run()
'''


@frozen
class Sample:
    """
    One reading of the kernel counters.

    @ivar t: C{time.monotonic()} when the reading started.
    @ivar at_uas: RTP packets from the contact point to the UAS (phone to UAS).
    @ivar at_phone: RTP packets from the agent to the phone (the UAS's echo).
    @ivar syn: the agent's TCP SYNs towards the gateway's port 443.
    """

    t: float
    at_uas: int
    at_phone: int
    syn: int


class ResumptionTestBase(SpwmSipTestCase):
    """
    alice (LAN phone, registered with digest through the agent) calls bob
    (the operator UAS, registered at Kamailio, echoing RTP); a TLS tunnel;
    the agent reconnects after at most 0.5 s; both halves keep a broken
    session for 10 s.
    """

    resume_window = 10.0
    #: the agent's --tunnel-connections
    connections = 1

    def setUp(self) -> None:
        super().setUp()
        self.make_topology("strict")
        self.start_kamailio()
        self.start_spwm_contact(tls=True, extra=self.contact_extra())
        # one connection unless a case says otherwise: these cases cut the
        # session's connection (with two, cutting one is make-before-break,
        # no resumption: MakeBeforeBreakTests)
        self.start_spwm_agent(extra=self.agent_extra())
        self.register_uas("bob")
        self.assertSippSuccess(self.sipp_uac("register.xml", PROXY, user="alice", name="register-alice"))
        [alice] = [b for b in self.location_table() if b.aor == "alice"]
        self.assertIn(f"@{CONTACT}:5060;lr", alice.path, alice)
        self.uas = self.sipp_uas()
        # the kernel's view: media at both ends, the agent's new tunnel
        # connections, and every SIP packet between contact point and Kamailio
        self.count_udp("op", "at_uas", f"ip saddr {CONTACT} ip daddr {UAS} udp dport 6000", hook="output")
        self.count_udp("lan", "at_phone", f"ip saddr {AGENT} ip daddr {PHONE} udp dport 6000", hook="output")
        self.count_udp(
            "lan", "tunnel_syn",
            f"ip saddr {AGENT} ip daddr {GATEWAY_PUBLIC} tcp dport 443 tcp flags & (syn | ack) == syn",
            hook="output",
        )
        self.count_udp(
            "op", "sip_to_kamailio",
            f"ip saddr {CONTACT} ip daddr {KAMAILIO} meta l4proto {{ tcp, udp }} th dport 5060", hook="output",
        )
        self.count_udp(
            "op", "sip_from_kamailio",
            f"ip saddr {KAMAILIO} ip daddr {CONTACT} meta l4proto {{ tcp, udp }} th sport 5060", hook="output",
        )

    def contact_extra(self) -> list[str]:
        """More options for the contact point."""
        return []

    def agent_extra(self) -> list[str]:
        """The agent's options beside the bed's own."""
        return [
            "--reconnect-max", "0.5", "--resume-window", str(self.resume_window),
            "--tunnel-connections", str(self.connections),
        ]  # fmt: skip

    # -- the call -------------------------------------------------------------

    def start_call(self, seconds: float) -> tuple[ManagedProcess, ManagedProcess]:
        """
        alice calls bob (SIPp offers PHONE:6100 and sends nothing); once
        answered, C{rtptool} sends PPS RTP packets per second from PHONE:6000
        to the agent's port for the rest of the call (the agent latches
        any port of the negotiated host) and bob echoes them.  Returns when
        RTP has crossed both ways.

        @return: the SIPp caller and the C{rtptool} process.
        """
        argv = sipp_argv(
            "uac_call.xml", PROXY, PHONE, 5060, "alice-calls-bob", self.logdir,
            keys={"user": "alice"},
            extra=["-s", "bob", "-au", "alice", "-ap", USERS["alice"], "-m", "1",
                   "-d", str(int(seconds * 1000)), "-mi", PHONE, "-mp", "6100",
                   "-recv_timeout", "8000", "-timeout", f"{seconds + 15:.0f}s", "-timeout_error"],
        )
        caller = self.topology.spawn("lan", "alice-calls-bob", argv, cwd=self.logdir)
        [(_, agent_port)] = self.wait_for_sdp("alice-calls-bob", "SIP/2.0 200")
        count = int((seconds - 1.0) * PPS)
        rtp = self.topology.spawn(
            "lan", "rtp-phone",
            [sys.executable, str(RTPTOOL), "send", PHONE, "6000", f"{AGENT}:{agent_port}", str(count), str(PPS)],
        )
        deadline = time.monotonic() + 5.0
        while self.sample().at_phone < 10:
            if time.monotonic() > deadline:
                self.fail(f"no RTP both ways before the cut: {self.sample()}; see {self.logdir}")
            time.sleep(0.1)
        return caller, rtp

    def finish_call(self, caller: ManagedProcess, rtp: ManagedProcess) -> dict[str, Any]:
        """
        The call ends normally: BYE and 200 on both SIPp ends.  Returns
        C{rtptool}'s report.
        """
        self.assertSippSuccess(self.wait_sipp(caller, timeout=30.0))
        self.assertSippSuccess(self.sipp_finish(self.uas))
        rtp.wait(10.0)
        return json.loads(rtp.stdout().strip().splitlines()[-1])

    # -- observations ---------------------------------------------------------

    def _counters(self, role: str) -> dict[str, int]:
        done = self.topology.exec(role, ["nft", "-j", "list", "counters"])
        return {
            item["counter"]["name"]: int(item["counter"]["packets"])
            for item in json.loads(done.stdout).get("nftables", [])
            if "counter" in item
        }

    def sample(self) -> Sample:
        """Read the media and SYN counters now."""
        t = time.monotonic()
        lan, op = self._counters("lan"), self._counters("op")
        return Sample(t, op["at_uas"], lan["at_phone"], lan["tunnel_syn"])

    def sip_counts(self) -> tuple[int, int]:
        """SIP packets so far from the contact point to Kamailio and back."""
        op = self._counters("op")
        return op["sip_to_kamailio"], op["sip_from_kamailio"]

    def operator_view(self) -> list[tuple[str, str, str, str]]:
        """Kamailio's bindings, without the expiry that counts down."""
        return sorted((b.aor, b.contact, b.path, b.received) for b in self.location_table())

    def received_messages(self, name: str) -> int:
        """How many SIP messages SIPp C{name} has received so far."""
        path = self.logdir / f"{name}.messages.log"
        return path.read_text("utf-8", "replace").count("message received") if path.exists() else 0

    def tunnel_ports(self) -> list[int]:
        """Local ports of the agent's established connections to the gateway's 443 (C{ss})."""
        done = self.topology.exec("lan", ["ss", "-tnpH", "state", "established"], check=False)
        ports = []
        for line in done.stdout.decode().splitlines():
            if f"{GATEWAY_PUBLIC}:443" in line and f"pid={self.agent.pid}," in line:
                ports.append(int(re.search(rf"{re.escape(AGENT)}:(\d+)", line).group(1)))
        return ports

    def session_id(self) -> str:
        """The session of the agent's (first) tunnel, from the contact point's log."""
        match = self.wait_for_log(self.contact, r"tunnel up with \S+: agent agent, session ([0-9a-f]+)")
        return match.group(1)

    def cut_tunnel(self) -> float:
        """
        Kill the agent's tunnel connection with C{ss -K} in the LAN
        namespace (the kernel resets it: the agent sees the error, the RST
        goes out to the contact point).  Returns when it was cut; the
        counters just before are in C{before_cut} (the agent may have
        connected again before the first sample after the cut).
        """
        [port] = self.tunnel_ports()
        self.before_cut = self.sample()
        t = time.monotonic()
        self.topology.exec(
            "lan", ["ss", "-K", "-tn", "state", "established", "src", f"{AGENT}:{port}", "dst", f"{GATEWAY_PUBLIC}:443"],
            check=False,
        )
        self.assertEqual(self.tunnel_ports().count(port), 0, "ss -K did not kill the tunnel connection")
        return t

    def watch_resumption(self, session: str, cut: float, after: float = 1.5, timeout: float = 10.0) -> tuple[list[Sample], float]:
        """
        Sample the counters (about every 0.1 s) from the cut until the
        contact point has logged the resumption of C{session} and C{after}
        seconds more; saved to C{timeline.txt} in the log directory.

        @return: the samples and when the resumption line was first seen.
        """
        pattern = re.compile(rf"session {session} resumed from ")
        # from the counters just before the cut: a new connection may come
        # before the first sample after it (a prompt reconnection, ~20 ms)
        samples = [self.before_cut]
        seen = None
        deadline = cut + timeout
        while True:
            samples.append(self.sample())
            if seen is None and pattern.search(self.contact.stdout()):
                seen = time.monotonic()
            if seen is not None and time.monotonic() > seen + after:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(max(0.0, samples[-1].t + 0.1 - time.monotonic()))
        with open(self.logdir / "timeline.txt", "a") as out:
            out.write(f"cut at {cut:.3f}; contact resumption line seen at {seen}\n")
            for s in samples:
                out.write(f"{s.t - cut:7.3f} at_uas={s.at_uas} at_phone={s.at_phone} syn={s.syn}\n")
        if seen is None:
            self.fail(
                f"the contact point did not log the resumption of session {session} within {timeout} s;"
                f" see {self.logdir}/spwm-contact.stdout and spwm-agent.stdout"
            )
        return samples, seen

    def assertMediaResumedWithin(self, samples: list[Sample], cut: float, bound: float) -> float:
        """
        Media flowed again both ways within C{bound} seconds after the new
        tunnel came up: measured from the last sample before the agent's
        new SYN was counted (so the delay includes TCP, TLS, the SPWM
        handshake and the resumption, plus up to one sampling interval)
        to the first sample where both ends' counters had moved past their
        value at that moment.

        @return: the measured delay.
        """
        first = samples[0].syn
        index = next((i for i, s in enumerate(samples) if s.syn > first), None)
        if index is None:
            self.fail(f"the agent opened no new tunnel connection; see {self.logdir}/timeline.txt")
        before = samples[index - 1] if index > 0 else Sample(cut, samples[0].at_uas, samples[0].at_phone, first)
        up = {}
        for name in ("at_uas", "at_phone"):
            base = getattr(before, name)
            up[name] = next((s.t for s in samples[index:] if getattr(s, name) > base), None)
        missing = [name for name, t in up.items() if t is None]
        self.assertEqual(missing, [], f"media did not flow again ({missing}); see {self.logdir}/timeline.txt")
        delay = max(up.values()) - before.t
        with open(self.logdir / "timeline.txt", "a") as out:
            out.write(f"new SYN after {before.t - cut:.3f} s; media both ways {delay:.3f} s later\n")
        self.assertLessEqual(delay, bound, f"media resumed {delay:.3f} s after the new tunnel; see {self.logdir}/timeline.txt")
        return delay

    def assertNoSip(self, before: tuple[tuple[int, int], list[Any], int, int]) -> None:
        """
        Nothing changed on the operator side since C{before} (from
        L{operator_snapshot}): no SIP packet between the contact point and
        Kamailio either way, the same bindings, no new message at bob or
        at alice's phone.
        """
        self.assertEqual(self.sip_counts(), before[0], "SIP crossed between the contact point and Kamailio (to, from)")
        self.assertEqual(self.operator_view(), before[1], "Kamailio's location table changed")
        self.assertEqual(self.received_messages("sipp-uas"), before[2], "bob received SIP")
        self.assertEqual(self.received_messages("alice-calls-bob"), before[3], "alice's phone received SIP")

    def operator_snapshot(self) -> tuple[tuple[int, int], list[Any], int, int]:
        """What L{assertNoSip} compares with."""
        return (
            self.sip_counts(), self.operator_view(),
            self.received_messages("sipp-uas"), self.received_messages("alice-calls-bob"),
        )

    def assertCallResumed(
        self, session: str, samples: list[Sample], cut: float, before: Any,
        caller: ManagedProcess, rtp: ManagedProcess, public: str,
    ) -> dict:
        """
        After a cut: media both ways again within L{RESUME_BOUND}, both
        halves logged the resumption of C{session} (the contact point from
        C{public}), no SIP since C{before} (L{operator_snapshot}), and the
        call ends normally with at least 80 % of the RTP round trips.

        @return: C{rtptool}'s report.
        """
        self.assertMediaResumedWithin(samples, cut, RESUME_BOUND)
        peer = self.assertResumedLogs(session)
        self.assertTrue(peer.startswith(public + ":"), f"the contact point resumed from {peer}")
        self.assertNoSip(before)
        report = self.finish_call(caller, rtp)
        self.assertGreaterEqual(report["received"], 0.8 * report["sent"], report)
        return report

    def assertResumedLogs(self, session: str) -> str:
        """
        Both halves logged the resumption of C{session}; returns the peer
        address the contact point names.
        """
        self.wait_for_log(self.agent, rf"session {session} resumed on the new tunnel", timeout=5.0)
        return self.wait_for_log(self.contact, rf"session {session} resumed from (\S+)", timeout=15.0).group(1)


class ResumptionTests(ResumptionTestBase):
    """
    The cut tunnel of a live call is resumed, from the same and from a new
    public address.
    """

    def test_media_resumes_after_cut(self) -> None:
        """
        A second into alice's call to bob (RTP both ways), the agent's
        tunnel connection is killed: the agent reconnects, both halves log
        the resumption of the same session, RTP reaches both ends again
        within one second of the new connection, no SIP crosses between
        the contact point and Kamailio and the binding is unchanged, and
        the call ends normally with BYE; at least 80 % of the RTP made the
        round trip.
        """
        session = self.session_id()
        caller, rtp = self.start_call(7.0)
        time.sleep(1.0)
        before = self.operator_snapshot()
        cut = self.cut_tunnel()
        samples, _ = self.watch_resumption(session, cut)
        report = self.assertCallResumed(session, samples, cut, before, caller, rtp, ROUTER_PUBLIC)
        self.assertEqual(report["sources"], [f"{AGENT}:{self.agent_port()}"], report)
        self.assertNotIn("not resumed", self.agent.stdout())

    def agent_port(self) -> int:
        """The agent's media port in the 200 alice's phone received."""
        [(_, port)] = self.wait_for_sdp("alice-calls-bob", "SIP/2.0 200")
        return port

    def test_media_resumes_from_new_public_address(self) -> None:
        """
        As above, but before the cut the router is told to send the agent's
        new connections from a second public address (198.51.100.3): the
        old connection keeps its NAT mapping (so the reset reaches the
        contact point), the new tunnel comes from the new address, the
        contact point names that address when it resumes the session, and
        the call goes on without SIP and ends normally.
        """
        session = self.session_id()
        self.wait_for_log(self.contact, rf"tunnel up with {re.escape(ROUTER_PUBLIC)}:\d+: agent agent, session {session}")
        caller, rtp = self.start_call(7.0)
        self.topology.exec("rtr", ["ip", "addr", "add", f"{NEW_PUBLIC}/24", "dev", "pub0", "nodad"])
        self.topology.exec(
            "rtr", ["nft", "insert", "rule", "ip", "spwm_nat", "postrouting",
                    "oifname", "pub0", "ip", "saddr", AGENT, "snat", "to", NEW_PUBLIC],
        )
        time.sleep(1.0)
        before = self.operator_snapshot()
        cut = self.cut_tunnel()
        samples, _ = self.watch_resumption(session, cut)
        self.assertCallResumed(session, samples, cut, before, caller, rtp, NEW_PUBLIC)

    def test_media_resumes_after_silent_move(self) -> None:
        """
        The laptop case: the agent's old path dies silently (the router
        drops every packet of the old connection both ways, so no reset
        reaches the contact point, which still holds the old tunnel as
        live) and the agent comes back from a new public address.  The
        contact point must accept the proven resumption although the old
        tunnel has not timed out yet (keepalive timeout 45 s): media flows
        again within one second of the new connection, no SIP crosses,
        and the call ends normally.
        """
        session = self.session_id()
        caller, rtp = self.start_call(7.0)
        [port] = self.tunnel_ports()
        self.topology.exec("rtr", ["ip", "addr", "add", f"{NEW_PUBLIC}/24", "dev", "pub0", "nodad"])
        self.topology.exec(
            "rtr", ["nft", "insert", "rule", "ip", "spwm_nat", "postrouting",
                    "oifname", "pub0", "ip", "saddr", AGENT, "snat", "to", NEW_PUBLIC],
        )
        blackhole = (
            "table inet spwm_blackhole {\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter - 5; policy accept;\n"
            f"    ip saddr {AGENT} tcp sport {port} drop\n"
            f"    ip daddr {AGENT} tcp dport {port} drop\n"
            "  }\n"
            "}\n"
        )
        time.sleep(1.0)
        before = self.operator_snapshot()
        run(["ip", "netns", "exec", self.topology.namespaces["rtr"], "nft", "-f", "-"], stdin=blackhole.encode())
        cut = self.cut_tunnel()
        try:
            samples, _ = self.watch_resumption(session, cut, timeout=5.0)
        except self.failureException:
            refusal = re.search(rf"refused resumption of session {session} from \S+ (.*)", self.contact.stdout())
            if refusal is None:
                raise
            self.fail(
                "SPWM bug (spwm/security/resume.py, ContactResumption.control_received; fixed in 694e4ff): the contact "
                "point refuses a proven resumption while it still holds the old tunnel as live "
                f"({refusal.group(1).strip()!r}); the session is only suspended in tunnel_lost, which for "
                "a silently dead path comes with the keepalive timeout (45 s), and the agent then gives "
                f"its session up; see {self.logdir}/spwm-contact.stdout"
            )
        self.assertCallResumed(session, samples, cut, before, caller, rtp, NEW_PUBLIC)


class MakeBeforeBreakTests(ResumptionTestBase):
    """
    An agent with two connections (the default): cutting one of them
    mid-call is no resumption (issue 12).
    """

    connections = 2

    def test_one_connection_cut_mid_call(self) -> None:
        """
        A second into alice's call to bob (RTP both ways), one of the
        agent's two tunnel connections is killed (C{ss -K}): RTP keeps
        reaching both ends, nothing is resumed or suspended, no SIP crosses
        between the contact point and Kamailio, a second connection is
        attached again; the call ends normally with BYE, at least 80 % of
        the RTP made the round trip and none arrived twice.
        """
        session = self.session_id()
        deadline = time.monotonic() + 10.0
        while len(self.tunnel_ports()) < 2:
            if time.monotonic() > deadline:
                self.fail(f"the agent did not keep two connections: {self.tunnel_ports()}; see {self.logdir}")
            time.sleep(0.1)
        caller, rtp = self.start_call(7.0)
        time.sleep(1.0)
        before = self.operator_snapshot()
        port = self.tunnel_ports()[0]
        cut = time.monotonic()
        self.topology.exec(
            "lan", ["ss", "-K", "-tn", "state", "established", "src", f"{AGENT}:{port}", "dst", f"{GATEWAY_PUBLIC}:443"],
            check=False,
        )
        self.assertNotIn(port, self.tunnel_ports(), "ss -K did not kill the tunnel connection")
        at_cut = self.sample()
        samples = []
        while time.monotonic() < cut + 2.0:
            samples.append(self.sample())
            time.sleep(0.1)
        with open(self.logdir / "timeline.txt", "a") as out:
            out.write(f"cut at {cut:.3f} (port {port})\n")
            for s in samples:
                out.write(f"{s.t - cut:7.3f} at_uas={s.at_uas} at_phone={s.at_phone} syn={s.syn}\n")
        # 50 packets a second each way: media went on after the cut
        self.assertGreater(samples[-1].at_uas - at_cut.at_uas, 50, f"see {self.logdir}/timeline.txt")
        self.assertGreater(samples[-1].at_phone - at_cut.at_phone, 50, f"see {self.logdir}/timeline.txt")
        deadline = time.monotonic() + 10.0
        while len(self.tunnel_ports()) < 2:
            if time.monotonic() > deadline:
                self.fail(f"no replacement connection: {self.tunnel_ports()}; see {self.logdir}")
            time.sleep(0.1)
        self.wait_for_log(self.agent, rf"session {session}: connection \d+ attached", timeout=15.0)
        self.assertNoSip(before)
        report = self.finish_call(caller, rtp)
        self.assertGreaterEqual(report["received"], 0.8 * report["sent"], report)
        self.assertLessEqual(report["received"], report["sent"], report)
        for half in (self.agent, self.contact):
            self.assertNotIn(f"session {session} resumed", half.stdout())
            self.assertNotIn("not resumed", half.stdout())


class DormantResumptionTests(ResumptionTestBase):
    """
    The agent stays away for longer than the resumption window (2 s here).
    """

    resume_window = 2.0

    def test_registration_survives_long_outage(self) -> None:
        """
        alice is registered (no call). The router drops the agent's new
        tunnel connections (SYN) and the tunnel is cut: past the window the
        contact point logs that it keeps her registration, and when the
        path is back (5 s after the cut) the agent resumes the session,
        registrations only, with no SIP between the contact point and
        Kamailio and Kamailio's binding unchanged. Then carol calls alice
        by her address of record: the INVITE reaches the phone along the
        old Path, and RTP arrives at both ends.
        """
        session = self.session_id()
        before = self.sip_counts(), self.operator_view()
        block = (
            "table inet spwm_block {\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter - 5; policy accept;\n"
            f"    ip saddr {AGENT} tcp dport 443 tcp flags & (syn | ack) == syn drop\n"
            "  }\n"
            "}\n"
        )
        rtr = self.topology.namespaces["rtr"]
        run(["ip", "netns", "exec", rtr, "nft", "-f", "-"], stdin=block.encode())
        cut = self.cut_tunnel()
        self.wait_for_log(
            self.contact,
            rf"session {session} not resumed within 2.0 s: calls and media released; 1 registrations kept",
            timeout=10.0,
        )
        time.sleep(max(0.0, cut + 5.0 - time.monotonic()))
        run(["ip", "netns", "exec", rtr, "nft", "delete", "table", "inet", "spwm_block"])
        self.wait_for_log(self.contact, rf"session {session} resumed from \S+ \(registrations only\)", timeout=20.0)
        self.wait_for_log(self.agent, rf"session {session} resumed on the new tunnel to \S+ \(registrations only\)", timeout=5.0)
        self.assertEqual((self.sip_counts(), self.operator_view()), before, "SIP crossed or the binding changed")
        self.assertCallFromOperatorReachesPhone("alice")


class ContactRestartTests(ResumptionTestBase):
    """
    The contact point restarts with C{--state-file}.
    """

    def contact_extra(self) -> list[str]:
        return ["--state-file", str(self.logdir / "contact.state")]

    def test_registration_survives_contact_restart(self) -> None:
        """
        alice is registered (digest: keys on both halves); the contact
        point is stopped (SIGTERM: go-away, drain, state written) and
        started again with the same options: it restores alice's session,
        the agent resumes it (registrations only), no SIP crosses between
        the contact point and Kamailio and Kamailio's binding (with the
        Path token of before) is unchanged; carol's call to alice reaches
        the phone with RTP both ways.
        """
        session = self.session_id()
        before = self.sip_counts(), self.operator_view()
        self.restart_spwm_contact()
        self.wait_for_log(self.contact, r"state file \S+: 1 sessions restored", timeout=5.0)
        self.wait_for_log(self.contact, rf"session {session} resumed from \S+ \(registrations only\)", timeout=20.0)
        self.assertEqual((self.sip_counts(), self.operator_view()), before, "SIP crossed or the binding changed")
        self.assertCallFromOperatorReachesPhone("alice")


class AgentRestartTests(ResumptionTestBase):
    """
    The agent restarts with C{--state-file}.
    """

    def agent_extra(self) -> list[str]:
        return [*super().agent_extra(), "--state-file", str(self.logdir / "agent.state")]

    def test_registration_survives_agent_restart(self) -> None:
        """
        alice is registered (digest, over UDP); the agent is stopped
        (SIGTERM: it tells the contact point, which keeps her registration
        dormant) and started again with the same options: it reads its
        state file and resumes the session (registrations only), no SIP
        crosses between the contact point and Kamailio, Kamailio's binding
        is unchanged, and carol's call to alice reaches the phone (SIPp on
        UDP, which did not register again) with RTP both ways.  (Without
        the file, carol's call got 430 until alice's next REGISTER.)
        """
        session = self.session_id()
        before = self.sip_counts(), self.operator_view()
        self.agent.stop(grace=10.0)
        self.start_spwm_agent(extra=self.agent_extra())
        self.wait_for_log(self.agent, r"1 sessions and 1 phone flows restored", timeout=5.0)
        self.wait_for_log(self.contact, rf"session {session} resumed from \S+ \(registrations only\)", timeout=20.0)
        self.assertEqual((self.sip_counts(), self.operator_view()), before, "SIP crossed or the binding changed")
        self.assertCallFromOperatorReachesPhone("alice")


class ForgedResumptionTests(ResumptionTestBase):
    """
    A tunnel that names alice's session but cannot prove her key.
    """

    def forge(self, session: str, name: str, proof: str = "00" * 32) -> list[dict[str, Any]]:
        """
        Run the forger from L{FORGER_ADDRESS} in the LAN (TLS with the
        bed's CA) with C{proof} for alice; return the events it printed.
        """
        script = self.logdir / "forger.py"
        script.write_text(FORGER, "utf-8")
        process = self.topology.spawn(
            "lan", name,
            [sys.executable, str(script), session, USER, self.ca_file, CONTACT_NAME, FORGER_ADDRESS, GATEWAY_PUBLIC, proof],
            env={"PYTHONPATH": str(REPO_ROOT)},
        )
        try:
            process.wait(15.0)
        except NetbedError:
            process.stop()
            raise
        events = [json.loads(line) for line in process.stdout().splitlines() if line.startswith("{")]
        self.assertTrue(events, f"the forger printed nothing: {process.stderr()[-2000:]}")
        return events

    def block_agent(self) -> None:
        """
        The router answers the agent's new tunnel connections with a TCP
        reset (the forger's, from another LAN address, pass).
        """
        block = (
            "table inet spwm_block {\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter - 5; policy accept;\n"
            f"    ip saddr {AGENT} tcp dport 443 tcp flags & (syn | ack) == syn reject with tcp reset\n"
            "  }\n"
            "}\n"
        )
        run(["ip", "netns", "exec", self.topology.namespaces["rtr"], "nft", "-f", "-"], stdin=block.encode())

    def unblock_agent(self) -> None:
        """Undo L{block_agent}."""
        self.topology.exec("rtr", ["nft", "delete", "table", "inet", "spwm_block"])

    def assertRefused(self, events: list[dict[str, Any]], session: str, reason: str) -> None:
        """
        The forger got its own fresh session and C{resume-failed} for
        C{reason}, and neither media channels, datagrams nor SIP; the
        contact point logged the refusal.
        """
        kinds = [e["event"] for e in events]
        self.assertEqual(kinds[0], "established", events)
        self.assertNotEqual(events[0]["session_id"], session, "the forger was handed the victim's session")
        controls = [e["message"] for e in events if e["event"] == "control"]
        self.assertEqual(controls, [{"op": "resume-failed", "reason": reason}], events)
        self.assertEqual([k for k in kinds if k in ("channel", "datagram", "stream", "sip")], [], events)
        self.wait_for_log(
            self.contact,
            rf"refused resumption of session {session} from {re.escape(ROUTER_PUBLIC)}:\d+: {re.escape(reason)}",
            timeout=15.0,
        )

    def test_forged_resumption_refused(self) -> None:
        """
        During alice's call: (1) while her tunnel is up, a forged resume
        naming her session is refused (C{wrong proof for alice@example.test}:
        a live session can be taken over, but only with the keys); (2) her tunnel is cut while the router turns her agent's
        reconnections away, and a forged resume with a wrong proof for
        alice is refused (C{wrong proof for alice@example.test}) and gets
        no channel, datagram or SIP; (3) the router lets the agent through
        again and the real agent resumes the very session: RTP flows both
        ways again, no SIP crossed, and the call ends normally with BYE.
        """
        session = self.session_id()
        caller, rtp = self.start_call(9.0)
        before = self.operator_snapshot()
        events = self.forge(session, "forger-live")
        self.assertRefused(events, session, f"wrong proof for {USER}")
        # the real call was not disturbed
        s1 = self.sample()
        time.sleep(0.5)
        s2 = self.sample()
        self.assertGreater(s2.at_phone - s1.at_phone, 10, (s1, s2))
        # turn the agent's new connections away (reset), then cut its tunnel
        self.block_agent()
        cut = self.cut_tunnel()
        events = self.forge(session, "forger-suspended")
        self.assertRefused(events, session, f"wrong proof for {USER}")
        self.assertEqual(self.agent.stdout().count(f"session {session} resumed"), 0)
        self.unblock_agent()
        samples, _ = self.watch_resumption(session, cut)
        self.assertResumedLogs(session)
        # (samples[0] is from before the cut, samples[1] from after the unblock)
        last = samples[-1]
        self.assertGreater(last.at_uas, samples[1].at_uas, "no RTP reached bob after the resumption")
        self.assertGreater(last.at_phone, samples[1].at_phone, "no RTP reached alice after the resumption")
        self.assertNoSip(before)
        self.finish_call(caller, rtp)

    def test_forged_non_ascii_proof_refused(self) -> None:
        """
        A forged resume whose proof is text with non-hex, non-ASCII
        characters, against alice's suspended session (no call needed), is
        answered C{resume-failed} like any wrong proof, and the real agent
        resumes the session afterwards.
        """
        session = self.session_id()
        self.block_agent()
        self.cut_tunnel()
        events = self.forge(session, "forger-non-ascii", proof="\u00e9" * 64)
        if "unexpected error on tunnel" in self.contact.stdout():
            self.fail(
                "SPWM bug (spwm/security/keys.py, check_proof; fixed in 694e4ff): hmac.compare_digest raises TypeError for a "
                "non-ASCII str proof; it escapes ContactResumption.control_received and the contact point "
                "closes the forger's tunnel with an internal error (and a traceback per attempt) instead of "
                f"answering resume-failed; forger saw {events}; see {self.logdir}/spwm-contact.stdout"
            )
        self.assertRefused(events, session, f"wrong proof for {USER}")
        self.unblock_agent()
        self.assertResumedLogs(session)
