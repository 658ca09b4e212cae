"""
SPWM's split SIP proxy and media relay in the end-to-end test bed: a base
test case that starts a contact point (TLS or plain, with Kamailio as the
operator proxy or with the embedded registrar) and agents in the LAN, and
small helpers to count media packets and open media ports.

The verdicts of the tests built on it come from SIPp (exit status and
statistics), Kamailio's location table, kernel packet counters
(L{netbed.Topology.add_counter}) and C{ss}; never from SPWM's own counters.
"""

from __future__ import annotations

import json
import re
import struct
import sys
import time
from pathlib import Path
from typing import Sequence

from spwm.testing.certs import TestCA

from .netbed import (
    AGENT,
    CONTACT,
    ECHO,
    GATEWAY_PUBLIC,
    KAMAILIO,
    PHONE,
    UAS,
    E2ETestCase,
    ManagedProcess,
    NetbedError,
    SippResult,
    sipp_wait,
)

CONTACT_NAME = "contact.example.test"
"""The name in the contact point's test certificate (agents check it)."""

AGENT_MEDIA_PORTS = (40000, 40199)
"""The agent's media port range in these tests."""

CONTACT_MEDIA_PORTS = (50000, 50199)
"""The contact point's media port range in these tests."""

SECOND_AGENT = "192.0.2.11"
"""A second agent address in the LAN namespace (added by L{add_lan_address})."""

PCAP = "/usr/share/sip-tester/g711a.pcap"
"""The PCMA RTP recording shipped with Debian's sip-tester (236 packets, 20 ms each)."""

PCAP_PACKETS = 236

RTPTOOL = Path(__file__).resolve().parent / "rtptool.py"


def short_pcap(source: str, destination: Path, packets: int) -> Path:
    """
    Write the first C{packets} packets of the pcap file C{source} to
    C{destination} (SIPp plays them with their original spacing, 30 ms for
    Debian's g711a.pcap).
    """
    data = Path(source).read_bytes()
    out = bytearray(data[:24])
    offset = 24
    for _ in range(packets):
        incl = struct.unpack("<I", data[offset + 8 : offset + 12])[0]
        out += data[offset : offset + 16 + incl]
        offset += 16 + incl
    destination.write_bytes(bytes(out))
    return destination


def sdp_media_ports(log: str, first_line: str) -> list[tuple[str, int]]:
    """
    The C{m=} lines (media, port) of the last message received in a SIPp
    messages log whose first line starts with C{first_line}.
    """
    found: list[tuple[str, int]] = []
    for block in log.split("-----------------------------------------------"):
        if "message received" not in block:
            continue
        # timestamp, "UDP message received [N] bytes :", the start line
        starts = [line for line in block.splitlines() if line.strip()]
        if len(starts) < 3 or not starts[2].startswith(first_line):
            continue
        ports = re.findall(r"^m=(\w+) (\d+) ", block, re.M)
        if ports:
            found = [(media, int(port)) for media, port in ports]
    return found


class SpwmSipTestCase(E2ETestCase):
    """
    An E2E test case with helpers to run SPWM's contact point and agents
    with SIP and media enabled.
    """

    def add_lan_address(self, address: str) -> None:
        """
        Give the LAN namespace one more address (e.g. for a second agent).
        """
        self.topology.exec(
            "lan", ["ip", "addr", "add", f"{address}/24", "dev", "eth0", "nodad"]
        )

    def certificates(self) -> tuple[str, str, str]:
        """
        Make a test CA and a server certificate for L{CONTACT_NAME} in the
        log directory.

        @return: (CA file, certificate file, key file).
        """
        ca = TestCA(str(self.logdir / "pki"))
        files = ca.issue([CONTACT_NAME, CONTACT], "contact")
        return ca.ca_file, files.cert, files.key

    #: seconds the contact point keeps a broken tunnel's session for resumption
    resume_window = 2.0

    #: seconds both halves keep a relay socket bound after its call
    #: (C{--media-keep}; 10 by default): short, so that the tests see the
    #: ports closed soon after a hang-up, through the keeping
    media_keep = 1.0

    def start_spwm_contact(
        self,
        tls: bool = True,
        sip_proxy: str | None = f"{KAMAILIO}:5060",
        media_timeout: float | None = None,
        extra: Sequence[str] = (),
    ) -> ManagedProcess:
        """
        Start the contact point on L{CONTACT}: tunnels on TCP 443, SIP on
        UDP and TCP 5060, media on L{CONTACT_MEDIA_PORTS} allowed only to
        the operator network.

        @param tls: TLS with a test CA (the agents get C{--ca}), else
            C{--plaintext}.
        @param sip_proxy: the operator proxy, or C{None} for the embedded
            registrar.
        """
        args = ["--listen", f"tcp:443:interface={CONTACT}"]
        if tls:
            self.ca_file, cert, key = self.certificates()
            args += ["--cert", cert, "--key", key]
        else:
            self.ca_file = None
            args += ["--plaintext"]
        if sip_proxy is not None:
            args += ["--sip-proxy", sip_proxy]
        args += [
            "--sip-address", f"{CONTACT}:5060",
            "--media-address", CONTACT,
            "--media-ports", "%d-%d" % CONTACT_MEDIA_PORTS,
            "--media-allow", "203.0.113.0/24",
        ]
        if media_timeout is not None:
            args += ["--media-timeout", str(media_timeout)]
        args += ["--resume-window", str(self.resume_window), "--media-keep", str(self.media_keep)]
        args += list(extra)
        self.contact_argv = args
        process = self.start_contact(args)
        self.wait_for_listener("op", "udp", CONTACT, 5060, process)
        self.contact = process
        return process

    def restart_spwm_contact(self) -> ManagedProcess:
        """
        Stop the contact point as an operator would (SIGTERM: go-away to
        the agents, drain, exit) and start it again with the same options
        (and certificate); wait until it listens again.
        """
        self.contact.stop(grace=10.0)
        process = self.start_contact(self.contact_argv)
        self.wait_for_listener("op", "udp", CONTACT, 5060, process)
        self.contact = process
        return process

    def start_spwm_agent(
        self,
        address: str = AGENT,
        media_timeout: float | None = None,
        name: str = "agent",
        extra: Sequence[str] = (),
    ) -> ManagedProcess:
        """
        Start an agent in the LAN namespace listening for SIP on
        C{address}:5060 (UDP and TCP), media on C{address} and
        L{AGENT_MEDIA_PORTS}; wait until its tunnel is up.
        """
        args = ["--contact", f"{GATEWAY_PUBLIC}:443", "--agent-id", name]
        if self.ca_file is not None:
            args += ["--ca", self.ca_file, "--server-name", CONTACT_NAME]
        else:
            args += ["--plaintext"]
        args += [
            "--sip-listen", f"{address}:5060",
            "--media-address", address,
            "--media-ports", "%d-%d" % AGENT_MEDIA_PORTS,
        ]
        if media_timeout is not None:
            args += ["--media-timeout", str(media_timeout)]
        args += ["--media-keep", str(self.media_keep)]
        args += list(extra)
        process = self.start_agent(args)
        self.wait_for_listener("lan", "udp", address, 5060, process)
        self.wait_for_tunnel(process)
        self.agent = process
        return process

    def wait_for_tunnel(self, agent: ManagedProcess, timeout: float = 15.0) -> None:
        """
        Wait until C{agent} has an established TCP connection to the
        contact point's public address (seen by C{ss} in the LAN namespace,
        not by the agent's logs) and a little longer for the SPWM
        handshake.
        """
        deadline = time.monotonic() + timeout
        while True:
            done = self.topology.exec("lan", ["ss", "-tnpH", "state", "established"], check=False)
            for line in done.stdout.decode().splitlines():
                # ip netns exec execs the agent: same pid
                if f"{GATEWAY_PUBLIC}:443" in line and f"pid={agent.pid}," in line:
                    # the handshake follows the TCP connection at once
                    time.sleep(0.5)
                    return
            if agent.returncode is not None:
                raise NetbedError(
                    f"{agent.name} exited with {agent.returncode}:\n{agent.stderr()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise NetbedError(f"{agent.name}: no tunnel after {timeout}s")
            time.sleep(0.1)

    # -- SIPp ---------------------------------------------------------------

    def wait_sipp(self, process: ManagedProcess, timeout: float = 30.0) -> SippResult:
        """The verdict of a background SIPp that ends by itself (bounded)."""
        return sipp_wait(process, self.logdir, timeout)

    def assertSippSuccess(self, result: SippResult, calls: int = 1) -> None:
        """
        SIPp exited 0 with C{calls} successful and no failed calls; the
        message points at its logs otherwise.
        """
        where = f"see {result.logdir}/{result.name}.*"
        self.assertEqual(result.returncode, 0, f"{result.name} exit {result.returncode}; {where}")
        self.assertEqual(result.successful, calls, f"{result.name}: {result.stats}; {where}")
        self.assertEqual(result.failed, 0, f"{result.name}: {result.stats}; {where}")

    # -- media --------------------------------------------------------------

    def open_media_ports(self, role: str, ports: tuple[int, int]) -> list[str]:
        """
        UDP sockets bound in the namespace of C{role} with a local port in
        C{ports} (inclusive), as C{ss -uln} lists them.
        """
        done = self.topology.exec(role, ["ss", "-ulnH"], check=False)
        found = []
        for line in done.stdout.decode().splitlines():
            columns = line.split()
            if len(columns) < 4:
                continue
            match = re.search(r":(\d+)$", columns[3])
            if match and ports[0] <= int(match.group(1)) <= ports[1]:
                found.append(columns[3])
        return found

    def wait_media_ports_closed(self, timeout: float = 5.0) -> tuple[list[str], list[str]]:
        """
        Poll until neither the agent's nor the contact point's namespace has
        a UDP socket in its media port range, or C{timeout} passes.

        @return: what is still open (agent side, contact side).
        """
        deadline = time.monotonic() + timeout
        while True:
            lan = self.open_media_ports("lan", AGENT_MEDIA_PORTS)
            op = self.open_media_ports("op", CONTACT_MEDIA_PORTS)
            if (not lan and not op) or time.monotonic() > deadline:
                return lan, op
            time.sleep(0.2)

    def count_udp(self, role: str, name: str, match: str, hook: str = "input") -> None:
        """Shorthand for L{netbed.Topology.add_counter}."""
        self.topology.add_counter(role, name, match, hook)

    def counter(self, role: str, name: str) -> int:
        """Shorthand for L{netbed.Topology.read_counter}."""
        return self.topology.read_counter(role, name)

    def count_call_media(self) -> None:
        """
        nft counters of the RTP of a call between the LAN phone (PHONE:6000)
        and the operator UAS (bob, UAS:6000): C{phone_sent} and C{at_phone}
        in the LAN namespace, C{at_uas} and C{from_uas} in the operator's.
        """
        self.count_udp("lan", "phone_sent", f"ip saddr {PHONE} ip daddr {AGENT} udp sport 6000")
        self.count_udp("op", "at_uas", f"ip saddr {CONTACT} ip daddr {UAS} udp dport 6000")
        self.count_udp("op", "from_uas", f"ip saddr {UAS} ip daddr {CONTACT} udp sport 6000", hook="output")
        self.count_udp("lan", "at_phone", f"ip saddr {AGENT} ip daddr {PHONE} udp dport 6000")

    def alice_calls_bob_with_rtp(self, uas: ManagedProcess, millis: int) -> None:
        """
        alice (PHONE, RTP from port 6000) calls bob through the agent with
        SIPp's C{uac_rtp.xml} for C{millis} ms; SIPp succeeds on both ends
        (C{uas} is bob's running SIPp).
        """
        result = self.sipp_uac(
            "uac_rtp.xml", f"{AGENT}:5060", user="alice", service="bob",
            keys={"pcap": PCAP}, extra=["-d", str(millis), "-mi", PHONE, "-mp", "6000"],
            name="alice-calls-bob",
        )
        self.assertSippSuccess(result)
        self.assertSippSuccess(self.sipp_finish(uas))

    def assertCallFromOperatorReachesPhone(self, callee: str = "alice", proxy: str = KAMAILIO) -> None:
        """
        carol, on the operator network (ECHO), calls C{callee} by her
        address of record at the Kamailio on C{proxy}; a SIPp UAS on the LAN phone
        (PHONE:5060, echoing RTP) answers: the call completes on both SIPp
        ends, the phone saw one incoming call, and more than 50 RTP packets
        arrived at each end (nft counters C{in_at_phone}, C{in_at_caller}).
        """
        phone = self.sipp_uas(local_ip=PHONE, role="lan", name=f"phone-{callee}")
        self.count_udp("lan", "in_at_phone", f"ip saddr {AGENT} ip daddr {PHONE} udp dport 6000")
        self.count_udp("op", "in_at_caller", f"ip saddr {CONTACT} ip daddr {ECHO} udp dport 6000")
        result = self.sipp_uac(
            "uac_rtp.xml", f"{proxy}:5060", user="carol", service=callee,
            role="op", local_ip=ECHO, keys={"pcap": PCAP},
            extra=["-d", "2000", "-mi", ECHO, "-mp", "6000"],
            name=f"carol-calls-{callee}",
        )
        self.assertSippSuccess(result)
        phone_result = self.sipp_finish(phone)
        self.assertSippSuccess(phone_result)
        self.assertEqual(phone_result.count("IncomingCall(C)"), 1)
        at_phone = self.counter("lan", "in_at_phone")
        at_caller = self.counter("op", "in_at_caller")
        self.assertGreater(at_phone, 50, (at_phone, at_caller))
        self.assertGreater(at_caller, 50, (at_phone, at_caller))

    def wait_for_sdp(self, name: str, first_line: str, count: int = 1, timeout: float = 10.0) -> list[tuple[str, int]]:
        """
        Poll SIPp C{name}'s messages log until a received message starting
        with C{first_line} carries SDP with at least C{count} m= lines.
        """
        path = self.logdir / f"{name}.messages.log"
        deadline = time.monotonic() + timeout
        while True:
            if path.exists():
                ports = sdp_media_ports(path.read_text("utf-8", "replace"), first_line)
                if len(ports) >= count:
                    return ports
            if time.monotonic() > deadline:
                raise NetbedError(f"no SDP in a received {first_line!r} in {path} after {timeout}s")
            time.sleep(0.1)

    def rtptool(self, role: str, src: str, src_port: int, dests: list[str], count: int, pps: float, rtcp: bool = False, name: str = "rtptool", ssrc: int = 1) -> dict:
        """
        Run C{rtptool.py send} in the namespace of C{role} (bounded) and
        return its JSON report; its output is kept in C{<name>.stdout}.

        @param ssrc: the SSRC of the stream to the first destination (the
            next ones count up from it).
        """
        [report] = self.rtptools((role, src, src_port, dests, count, pps, rtcp, name, ssrc))
        return report

    def rtptools(self, *runs: tuple) -> list[dict]:
        """
        Run several C{rtptool.py send} at once, each given as a tuple
        (role, src, src_port, dests, count, pps, rtcp, name[, ssrc[,
        delay[, latch]]]), and return their reports in the same order.
        """
        processes = []
        for role, src, src_port, dests, count, pps, rtcp, name, *more in runs:
            argv = [sys.executable, str(RTPTOOL), "send", src, str(src_port), ",".join(dests), str(count), str(pps)]
            if rtcp:
                argv.append("rtcp")
            if more:
                argv.append(f"ssrc={more[0]}")
            if len(more) > 1:
                argv.append(f"delay={more[1]}")
            if len(more) > 2 and more[2]:
                argv.append("latch")
            processes.append((self.topology.spawn(role, name, argv), count / pps + 15.0))
        reports = []
        for process, timeout in processes:
            process.wait(timeout)
            out = process.stdout().strip().splitlines()
            if process.returncode != 0 or not out:
                raise NetbedError(f"{process.name} failed ({process.returncode}): {process.stderr()[-2000:]}")
            reports.append(json.loads(out[-1]))
        return reports
