"""
Real SIP clients behind the agent (issue 10): baresip, Linphone
(C{linphonec}) and PJSIP (C{pjsua2}), configured from the files of
C{examples/clients/} that the quick start shows, each in the
configurations a user would choose -- the agent as outbound proxy (a
pre-loaded Route) or as the registrar/proxy address, SIP over UDP, TCP and
TLS from the phone to the agent -- and a phone whose SDP names an address
other than the one it sends from.

In each configuration the phone registers at Kamailio with digest
authentication, calls bob (a SIPp UAS echoing RTP), holds and resumes that
call, hangs up, and is called by carol (SIPp on the operator network); a
phone with the agent as registrar only cannot call out through it, so it
holds and resumes the call it receives instead.  Audio is counted by the
kernel at both ends of each call (nft counters in the phone's namespace
and at the far end), so one-way audio fails; no request may reach Kamailio
with a top Route naming the agent.  docs/testing.md has the matrix.

One bed per client (one Kamailio, contact point and agent); the
configurations run one after the other in it, each as its own user, and
the test reports every configuration that failed.
"""

from __future__ import annotations

import time
from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

from spwm.testing.certs import TestCA
from spwm.testing.required import unavailable

from .netbed import AGENT, CONTACT, ECHO, KAMAILIO, PHONE_SECOND_ADDRESS, REPO_ROOT, UAS, USERS, NetbedError, sipp_argv
from .phones import CLIENTS, Baresip, Linphone, Phone, Pjsip, agent_certificate, missing_clients
from .sipbed import AGENT_MEDIA_PORTS, PCAP, SpwmSipTestCase

FAR = "{ %s, %s }" % (UAS, ECHO)
MEDIA = "%d-%d" % AGENT_MEDIA_PORTS

#: packets each way in a stretch of a call (the phones send 50 a second)
ENOUGH = 25


class InteropTestCase(SpwmSipTestCase):
    """
    The bed for one client: the phone host, Kamailio, a TLS tunnel, an
    agent with SIP over UDP, TCP and TLS (port 5061, certificate for its
    address from a test CA the phones trust), bob registered.
    """

    client = ""

    def setUp(self) -> None:
        super().setUp()
        missing = missing_clients().get(self.client)
        if missing:
            unavailable(f"{self.client} is not installed: {missing}")
        self.make_topology("strict")
        self.topology.add_phone_host()
        self.start_kamailio()
        self.start_spwm_contact(tls=True)
        ca = TestCA(str(self.logdir / "pki-agent"), name="Agent Test CA")
        files = agent_certificate(ca, AGENT)
        self.agent_ca = ca.ca_file
        self.start_spwm_agent(extra=["--sip-tls-cert", files.cert, "--sip-tls-key", files.key])
        self.wait_for_listener("lan", "tcp", AGENT, 5061, self.agent)
        self.register_uas("bob")
        self.count_udp("ph", "at_phone", f"ip saddr {AGENT} udp sport {MEDIA}")
        self.count_udp("ph", "from_phone", f"ip daddr {AGENT} udp dport {MEDIA}", hook="output")
        self.count_udp("op", "at_far", f"ip saddr {CONTACT} ip daddr {FAR} udp dport 6000")
        self.count_udp("op", "from_far", f"ip saddr {FAR} ip daddr {CONTACT} udp sport 6000")

    # -- media ---------------------------------------------------------------

    def media(self) -> dict[str, int]:
        """The four counters now."""
        return {
            "from_phone": self.counter("ph", "from_phone"),
            "at_far": self.counter("op", "at_far"),
            "from_far": self.counter("op", "from_far"),
            "at_phone": self.counter("ph", "at_phone"),
        }

    def media_flows(self, seconds: float, what: str) -> None:
        """
        Over C{seconds}, at least L{ENOUGH} packets are counted at each of
        the four points: the phone sent and the far end got, the far end
        sent and the phone got.
        """
        before = self.media()
        time.sleep(seconds)
        after = self.media()
        delta = {k: after[k] - before[k] for k in after}
        short = [k for k, v in delta.items() if v < ENOUGH]
        if short:
            raise AssertionError(f"{what}: too few RTP packets at {short}: {delta}")

    def wait_media(self, timeout: float = 10.0) -> None:
        """Wait until the phone receives RTP from the agent."""
        start = self.counter("ph", "at_phone")
        deadline = time.monotonic() + timeout
        while self.counter("ph", "at_phone") < start + 5:
            if time.monotonic() > deadline:
                raise AssertionError(f"no RTP reached the phone within {timeout}s: {self.media()}")
            time.sleep(0.2)

    # -- the steps -----------------------------------------------------------

    def wait_registered(self, phone: Phone, timeout: float = 10.0) -> None:
        """Kamailio has a binding for the phone's user, with a Path."""
        deadline = time.monotonic() + timeout
        while True:
            bindings = [b for b in self.location_table() if b.aor == phone.user]
            if bindings:
                if not bindings[0].path or f"@{CONTACT}:5060" not in bindings[0].path:
                    raise AssertionError(f"{phone.user}'s binding has no Path through the contact point: {bindings}")
                return
            if phone.process is not None and phone.process.returncode is not None:
                raise AssertionError(f"{phone.name} exited: {phone.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{phone.user} not registered at Kamailio after {timeout}s: {phone.log()}")
            time.sleep(0.2)

    def call_out_hold_resume(self, phone: Phone, tag: str) -> None:
        """
        The phone calls bob (C{uas_hold.xml}, echoing RTP): audio both
        ways; hold (re-INVITE) and resume (re-INVITE): audio both ways
        again; the phone hangs up; bob's SIPp saw exactly that dialog.
        """
        uas = self.sipp_uas("uas_hold.xml", extra=["-m", "1"], name=f"bob-{tag}")
        phone.dial("sip:bob@example.test")
        self.wait_media()
        self.media_flows(1.5, "call out")
        phone.hold()
        time.sleep(1.0)
        phone.resume()
        time.sleep(0.5)
        self.media_flows(1.5, "after resume")
        phone.hangup()
        self.assertSippSuccess(self.wait_sipp(uas, timeout=10.0))

    def call_in(self, phone: Phone, tag: str) -> None:
        """
        carol (operator network) calls the phone's user by address of
        record; the phone answers by itself; audio both ways.
        """
        before = self.media()
        result = self.sipp_uac(
            "uac_rtp.xml", f"{KAMAILIO}:5060", user="carol", service=phone.user,
            role="op", local_ip=ECHO, keys={"pcap": PCAP},
            extra=["-d", "3000", "-mi", ECHO, "-mp", "6000"],
            name=f"carol-calls-{tag}", recv_timeout=10.0,
        )
        after = self.media()
        self.assertSippSuccess(result)
        delta = {k: after[k] - before[k] for k in after}
        short = [k for k, v in delta.items() if v < ENOUGH]
        if short:
            raise AssertionError(f"call in: too few RTP packets at {short}: {delta}")

    def call_in_hold_resume(self, phone: Phone, tag: str) -> None:
        """
        carol calls the phone's user (C{uac_rtp_held.xml}, in the
        background); the phone answers by itself: audio both ways; the
        phone holds and resumes: audio both ways again; carol hangs up and
        her SIPp saw both re-INVITEs.
        """
        name = f"carol-calls-{tag}"
        argv = sipp_argv(
            "uac_rtp_held.xml", f"{KAMAILIO}:5060", ECHO, 5060, name, self.logdir,
            keys={"user": "carol", "pcap": PCAP},
            extra=["-s", phone.user, "-au", "carol", "-ap", USERS["carol"], "-m", "1",
                   "-d", "3000", "-mi", ECHO, "-mp", "6000",
                   "-recv_timeout", "10000", "-timeout", "30s", "-timeout_error"],
        )
        carol = self.topology.spawn("op", name, argv, cwd=self.logdir)
        self.wait_media()
        self.media_flows(1.5, "call in")
        phone.hold()
        time.sleep(1.0)
        phone.resume()
        time.sleep(0.5)
        self.media_flows(1.5, "call in, after resume")
        self.assertSippSuccess(self.wait_sipp(carol, timeout=20.0))

    def assertNoAgentRouteAtKamailio(self, since: int = 0) -> None:
        """
        No request reached Kamailio with a top Route naming the agent (a
        phone's pre-loaded Route must stop at the agent, RFC 3261 16.4;
        the bed's Kamailio drops Routes of initial requests, so only its
        log shows the difference).

        @param since: where in Kamailio's log to start (its length before).
        """
        leaked = [
            line for line in self.kamailio.process.stderr()[since:].splitlines()
            # the header as logged may list the whole route set: the top
            # value is the first one
            if " top route " in line and AGENT in line.partition(" top route ")[2].partition(">")[0]
        ]
        if leaked:
            raise AssertionError(f"a Route naming the agent reached Kamailio: {leaked[:3]}")

    def run_configurations(self, configurations: list[tuple[str, Callable[[], Phone], str]]) -> None:
        """
        Run each configuration (tag, a function making the phone, the
        calls: C{"out"} a call out with hold and resume, C{"in"} a call
        in, C{"in-hold"} a call in that the phone holds and resumes) in
        turn after the phone registered; fail at the end naming every
        configuration that failed and why.
        """
        failures = []
        for tag, make, calls in configurations:
            phone = make()
            since = len(self.kamailio.process.stderr())
            try:
                phone.start()
                self.wait_registered(phone)
                if "out" in calls.split():
                    self.call_out_hold_resume(phone, tag)
                if "in" in calls.split():
                    self.call_in(phone, tag)
                if "in-hold" in calls.split():
                    self.call_in_hold_resume(phone, tag)
                self.assertNoAgentRouteAtKamailio(since)
            except (AssertionError, NetbedError) as e:
                failures.append(f"{tag}: {e}")
                (self.logdir / "failures.txt").open("a").write(f"{tag}: {e}\n")
            finally:
                phone.stop()
        if failures:
            self.fail(f"{len(failures)} of {len(configurations)} configurations failed "
                      f"(logs in {self.logdir}):\n" + "\n".join(failures))


class BaresipInteropTests(InteropTestCase):
    """baresip (Debian C{baresip}) with C{examples/clients/baresip/}."""

    client = "baresip"

    def phone(self, tag: str, user: str, transport: str, net_interface: str | None = None) -> Callable[[], Phone]:
        return lambda: Baresip(
            self.topology, self.logdir, f"baresip-{tag}", user, transport, self.agent_ca,
            net_interface=net_interface,
        )

    def test_configurations(self) -> None:
        """
        The agent as outbound proxy (pre-loaded Route, the only way
        baresip has: its registrar is its AOR's domain) over UDP, TCP and
        TLS; and a baresip whose SDP names its second interface
        (C{net_interface}) while it sends from its first: register, call
        out, be called.
        """
        self.run_configurations([
            ("outbound-udp", self.phone("outbound-udp", "alice", "udp"), "out in"),
            ("outbound-tcp", self.phone("outbound-tcp", "dave", "tcp"), "out in"),
            ("outbound-tls", self.phone("outbound-tls", "erin", "tls"), "out in"),
            ("multihomed", self.phone("multihomed", "frank", "udp", PHONE_SECOND_ADDRESS), "out in"),
        ])


class LinphoneInteropTests(InteropTestCase):
    """Linphone's C{linphonec} (Debian C{linphone-cli}) with C{examples/clients/linphone/}."""

    client = "linphone"

    def phone(self, configuration: str, user: str, transport: str) -> Callable[[], Phone]:
        tag = f"{configuration}-{transport}"
        return lambda: Linphone(
            self.topology, self.logdir, f"linphone-{tag}", user, transport, self.agent_ca,
            configuration=configuration,
        )

    def test_configurations(self) -> None:
        """
        The agent as outbound proxy (C{reg_proxy} and the pre-loaded route
        C{reg_route}) over UDP, TCP and TLS: register, call out, hold,
        resume, be called; the agent as SIP server address only
        (C{reg_proxy}, no route) over UDP and TLS: register, be called,
        hold and resume (Linphone sends its own calls to the callee's
        domain then).
        """
        self.run_configurations([
            ("outbound-udp", self.phone("outbound", "alice", "udp"), "out in"),
            ("outbound-tcp", self.phone("outbound", "dave", "tcp"), "out in"),
            ("outbound-tls", self.phone("outbound", "erin", "tls"), "out in"),
            ("registrar-udp", self.phone("registrar", "frank", "udp"), "in-hold"),
            ("registrar-tls", self.phone("registrar", "grace", "tls"), "in-hold"),
        ])


class PjsipInteropTests(InteropTestCase):
    """PJSIP through the C{pjsua2} module (C{pjsua2-python}) with C{examples/clients/pjsip/phone.py}."""

    client = "pjsip"

    def phone(self, outbound: bool, user: str, transport: str, sdp_address: str | None = None) -> Callable[[], Phone]:
        tag = f"{'outbound' if outbound else 'registrar'}-{transport}" + ("-multihomed" if sdp_address else "")
        return lambda: Pjsip(
            self.topology, self.logdir, f"pjsip-{tag}", user, transport, self.agent_ca,
            outbound=outbound, sdp_address=sdp_address,
        )

    def test_configurations(self) -> None:
        """
        The agent as outbound proxy (C{proxies}, a pre-loaded Route) over
        UDP, TCP and TLS: register, call out, hold, resume, be called; the
        agent as registrar (C{registrarUri}) over UDP and TLS: register, be
        called, hold and resume (without a proxy PJSIP sends its own calls
        to the callee's domain); and a PJSIP whose SDP names its second
        interface (the media transport's C{publicAddress}) while it sends
        from its first: register, call out, be called.
        """
        self.run_configurations([
            ("outbound-udp", self.phone(True, "alice", "udp"), "out in"),
            ("outbound-tcp", self.phone(True, "dave", "tcp"), "out in"),
            ("outbound-tls", self.phone(True, "erin", "tls"), "out in"),
            ("registrar-udp", self.phone(False, "frank", "udp"), "in-hold"),
            ("registrar-tls", self.phone(False, "grace", "tls"), "in-hold"),
            ("multihomed", self.phone(True, "heidi", "udp", PHONE_SECOND_ADDRESS), "out in"),
        ])


def _without_comments(text: str) -> str:
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(lines).strip()


class QuickstartSnippetTests(SynchronousTestCase):
    """
    C{docs/quickstart.md} shows the files the interop tests run, as they
    are (no root needed).
    """

    def setUp(self) -> None:
        self.quickstart = (REPO_ROOT / "docs" / "quickstart.md").read_text()

    def assertShown(self, text: str, where: str) -> None:
        self.assertIn(text, self.quickstart, f"docs/quickstart.md no longer shows {where} as it is")

    def test_baresip(self) -> None:
        self.assertShown((CLIENTS / "baresip" / "config").read_text(), "examples/clients/baresip/config")
        self.assertShown(_without_comments((CLIENTS / "baresip" / "accounts").read_text()),
                         "the line of examples/clients/baresip/accounts")

    def test_linphone(self) -> None:
        self.assertShown(_without_comments((CLIENTS / "linphone" / "linphonerc-outbound").read_text()),
                         "examples/clients/linphone/linphonerc-outbound")

    def test_pjsip(self) -> None:
        text = (CLIENTS / "pjsip" / "phone.py").read_text()
        start = text.index("# -- CONFIGURATION")
        end = text.index("# ----", start + 10)
        self.assertShown(text[start:end], "the configuration block of examples/clients/pjsip/phone.py")
