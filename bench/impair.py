#!/usr/bin/env python3
"""
Benchmark: G.711 calls on an impaired WAN, through SPWM under the C{strict}
policy (only TCP to port 443 leaves the LAN) and over plain UDP under
C{open} without SPWM, on the same emulated link, in the same run.

Needs root and the end-to-end bed (C{tests/e2e/netbed.py}: network
namespaces, nftables).  For each profile of L{spwm.testing.impair.PROFILES}
the bench builds a bed with the user-space WAN emulator between the home
router and the operator gateway, then:

 1. SPWM: an C{spwm-contact} (TLS, a test CA made at run time) and an
    C{spwm-agent} with C{--forward-udp 192.0.2.10:5555=203.0.113.40:7000};
    the caller (C{impair endpoint caller}, N sockets on the phone's address,
    one call each: one tunnel channel each) sends to the agent's forward
    port, the answerer on 203.0.113.40:7000 answers every call to the
    address it came from (the contact point's socket of that channel);
 2. with C{--quic}, the QUIC path: the contact point has listened for
    QUIC on UDP 443 from the start (the strict phases' agents run with
    C{--udp-path off}); the router's policy becomes C{normal} (UDP 443 out
    through its NAT, L{tests.e2e.netbed.POLICIES}), an agent with the
    default C{--udp-path auto} and one TCP connection attaches its QUIC
    path, a short call (not measured) moves the media to it, and once the
    agent's status says the media is on it, the same call
    (what carried the media at the end, and how often it moved during
    the call, are printed after the table);
 3. plain UDP: the router's policy becomes C{open} and the same caller
    sends straight to the answerer on the operator's 203.0.113.30:7002
    (through the router's NAT), the answer returning the same way.

Each call is 50 packets per second of 172-byte RTP (160 bytes of G.711) in
each direction for C{--seconds}.  Both ends record every packet sent and
received with C{time.monotonic()}: both run on this host, so
C{CLOCK_MONOTONIC} is one clock for both and the delays are true one-way
delays.  The captures are matched by (SSRC, sequence)
(L{spwm.testing.impair.direction_stats}); reported per direction: sent,
delivered, late (> 150 ms), effective loss ((lost + late) / sent), one-way
delay p50/p95/p99/max, the longest gap (lost or late packets in a row x 20
ms), the E-model R and MOS (G.107 simplified, G.711 with PLC; the formula
is in the docstring of L{spwm.testing.impair} and in docs/performance.md);
and the emulator's counters for each phase.

The media path measured is the agent's UDP forward: datagrams in tunnel
channels, as the media relay of a SIP call carries them; no SIP is set up.

Run from the repository's root, as root::

    python3 bench/impair.py --profiles bad,clean
    python3 bench/impair.py --profiles bad,lossy,clean --tunnel-connections 1 --quic
    python3 bench/impair.py --calls 10 --plot /tmp/impair.png
    python3 bench/impair.py --help
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from _common import cpu_model, machine_cpu, machine_usage  # noqa: E402

from spwm.testing.impair import (  # noqa: E402
    INTERVAL,
    LATE,
    PROFILES,
    DirectionStats,
    direction_stats,
    read_capture,
)

MAIN_PROFILES = ["clean", "good", "lossy", "bad", "narrow"]
#: the cut phase (C{--cut}): a call this long, one connection killed this far in
CUT_SECONDS = 10.0
CUT_AT = 5.0
#: the cut's gap is looked for from 1 s before the cut to this long after it
CUT_WINDOW = 4.0
#: C{--cuts K}: the cuts this far apart (one gap window after another,
#: and sooner than the agent's STEADY_UP of 10 s: each new connection
#: is young when it is cut)
CUT_APART = 5.0
#: how long a repeated cut waits for the agent's connection to be back
CUT_WAIT = 8.0
#: --tunnel-connections auto starts with this many (PathLimits.count_floor)
AUTO_FLOOR = 2
#: the home router's other public address (--rebind moves between the two)
ROUTER_PUBLIC_OTHER = "198.51.100.3"
FORWARD_PORT = 5555
ANSWER_PORT_SPWM = 7000
ANSWER_PORT_UDP = 7002
SERVER_NAME = "contact.example.test"
#: the QUIC phase's first call (not measured), in seconds: the media moves to QUIC during it
QUIC_WARM_UP = 4.0
#: the QUIC phase's agent serves its status here, on 127.0.0.1 of the LAN namespace
AGENT_STATUS = 9091


class BenchError(Exception):
    """A step of the bench failed (the message says which)."""


def wait_for(predicate: Any, timeout: float, what: str, process: Any = None) -> None:
    """Poll C{predicate} every 50 ms until true, C{timeout} or C{process} exits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.returncode is not None:
            raise BenchError(f"{what}: {process.name} exited: {process.stderr()[-1500:]}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The emulator's counters between two readings, per direction."""
    result = {}
    for direction in ("up", "down"):
        a, b = after[direction], before[direction]
        result[direction] = {
            k: (v - b.get(k, 0) if not k.startswith("slip_max") and k != "queued" else v)
            for k, v in a.items()
        }
    return result


class ProfileRun:
    """One profile: the bed, SPWM under strict, then plain UDP under open."""

    def __init__(self, netbed: Any, args: argparse.Namespace, profile: str, workdir: Path) -> None:
        self.netbed = netbed
        self.args = args
        self.profile = profile
        self.workdir = workdir
        self.bed = netbed.Topology.create(
            workdir, "strict", open_operator=True, wan=profile, wan_seed=args.seed
        )
        self.env = {"PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}

    def twistd(self, role: str, name: str, args: list[str]) -> Any:
        return self.bed.spawn(
            role, name,
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "--logger=bench.impair.log_observer",
             name, *args],
            env=self.env, cwd=self.workdir,
        )

    def start_contact(self) -> None:
        nb = self.netbed
        if self.args.plaintext:
            contact_sec = self.agent_sec = ["--plaintext"]
        else:
            from spwm.testing.certs import TestCA

            ca = TestCA(str(self.workdir / "ca"))
            files = ca.issue([SERVER_NAME, nb.CONTACT], "contact")
            contact_sec = ["--cert", files.cert, "--key", files.key]
            self.agent_sec = ["--ca", ca.ca_file, "--server-name", SERVER_NAME]
        target = f"{nb.ECHO}:{ANSWER_PORT_SPWM}"
        quic = ["--quic-listen", f"{nb.CONTACT}:443"] if self.args.quic else []
        self.contact = self.twistd(
            "op", "spwm-contact",
            [*contact_sec, "--listen", f"tcp:443:interface={nb.CONTACT}",
             *quic, "--allow-forward", target],
        )

    def start_agent(self, connections: int | str, quic: bool = False) -> None:
        """
        An agent with C{--tunnel-connections N}; waits until its session
        holds N connections (the contact point said C{paths} and each
        further one is attached), or, with one, until the tunnel is up;
        C{auto}: until it holds the two it starts with.

        @param quic: C{--udp-path auto} (the default; its status on
            L{AGENT_STATUS}), else C{--udp-path off} when the contact point
            offers QUIC, so that the TCP phases stay TCP only.
        """
        nb = self.netbed
        self.agent_log_at = 0
        target = f"{nb.ECHO}:{ANSWER_PORT_SPWM}"
        ups = self.contact.stdout().count("tunnel up with")
        if quic:
            udp_path = ["--status-listen", f"tcp:{AGENT_STATUS}:interface=127.0.0.1"]
        elif self.args.quic:
            udp_path = ["--udp-path", "off"]
        else:
            udp_path = []
        self.agent = self.twistd(
            "lan", "spwm-agent",
            [*self.agent_sec, "--contact", f"{nb.GATEWAY_PUBLIC}:443",
             "--tunnel-connections", str(connections),
             *udp_path, *self.args.agent_arg,
             "--forward-udp", f"{nb.AGENT}:{FORWARD_PORT}={target}"],
        )
        wait_for(lambda: self.contact.stdout().count("tunnel up with") > ups, 30,
                 "the tunnel did not come up", self.contact)
        auto = connections == "auto"
        if auto:
            connections = AUTO_FLOOR
        assert isinstance(connections, int)
        if connections > 1:
            wait_for(lambda: f"; {connections} paths" in self.agent.stdout(), 30,
                     f"the agent's session did not get {connections} connections", self.agent)
        # what the agent really holds (ss), not what it was told; auto
        # may have grown already (a link that showed loss at the start)
        held = connections
        wait_for(lambda: len(self.tunnel_ports()) == held or auto and len(self.tunnel_ports()) > held, 10,
                 f"the agent does not hold {connections} connection(s): {self.tunnel_ports()}", self.agent)

    def agent_paths(self) -> dict[str, Any]:
        """The C{paths} section of the agent's C{/status} (QUIC phase only)."""
        done = self.bed.exec(
            "lan",
            [sys.executable, "-c",
             "import sys, urllib.request; "
             "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())",
             f"http://127.0.0.1:{AGENT_STATUS}/status"],
            check=False,
        )
        if done.returncode != 0:
            return {}
        paths: dict[str, Any] = json.loads(done.stdout).get("paths", {})
        return paths

    def media_on(self) -> str | None:
        """What carries the agent's session's media now (C{tcp}, C{quic}, C{tcp+quic})."""
        session = self.agent_paths().get("session") or {}
        on: str | None = session.get("media_on")
        return on

    def stop_agent(self) -> None:
        self.agent.stop()
        wait_for(lambda: not self.tunnel_ports(), 10, "the agent's connections did not close")

    def tunnel_ports(self) -> dict[int, int]:
        """
        The agent's established connections to the gateway's 443: local
        port -> bytes it sent (C{ss -ti}).
        """
        nb = self.netbed
        done = self.bed.exec("lan", ["ss", "-tinH", "state", "established", "dst", f"{nb.GATEWAY_PUBLIC}:443"],
                             check=False)
        ports: dict[int, int] = {}
        port = None
        for line in done.stdout.decode().splitlines():
            found = re.search(rf"{re.escape(nb.AGENT)}:(\d+)\s", line)
            if found is not None:
                port = int(found.group(1))
                ports[port] = 0
                continue
            sent = re.search(r"bytes_sent:(\d+)", line)
            if sent is not None and port is not None:
                ports[port] = int(sent.group(1))
        return ports

    def cut_busiest(self, wait: float = 0.0) -> tuple[float, int]:
        """
        Kill (C{ss -K}) the agent's connection that sent the most bytes,
        the one that carries the media: the worst connection to lose.

        @param wait: wait up to this long for a connection to be there (a
            cut after another: the agent may still be reconnecting).
        @return: the time of the cut (C{time.monotonic()}, the endpoints'
            clock) and the port.
        """
        nb = self.netbed
        ports = self.tunnel_ports()
        deadline = time.monotonic() + wait
        while not ports and time.monotonic() < deadline:
            time.sleep(0.05)
            ports = self.tunnel_ports()
        if not ports:
            raise BenchError("no tunnel connection to cut")
        port = max(ports, key=lambda p: ports[p])
        cut = time.monotonic()
        self.bed.exec("lan", ["ss", "-K", "-tn", "state", "established", "src", f"{nb.AGENT}:{port}",
                              "dst", f"{nb.GATEWAY_PUBLIC}:443"], check=False)
        if port in self.tunnel_ports():
            raise BenchError(f"ss -K did not kill the connection from port {port}")
        return cut, port

    def paths_seen(self) -> tuple[int, int]:
        """
        The most connections the agent's session held since the last
        call of this (its log's C{; N paths} lines; at least 1), and how
        many it holds now (C{ss}).
        """
        text = self.agent.stdout()
        counts = [int(n) for n in re.findall(r"; (\d+) paths", text[self.agent_log_at:])]
        self.agent_log_at = len(text)
        now = len(self.tunnel_ports())
        return max(counts + [now, 1]), now

    def rebind(self) -> tuple[float, int]:
        """
        Change the router's public address mid-call (as a home router that
        gets a new address from its ISP, or a phone moving network): add
        the other public address, then delete the current one; the kernel
        drops the masquerade's connection-tracking entries of the address
        deleted, so every tunnel connection's next packet leaves from the
        new address and the contact point answers it with a reset.

        @return: the time of the change (C{time.monotonic()}) and 0.
        """
        nb = self.netbed
        old = getattr(self, "public", nb.ROUTER_PUBLIC)
        new = ROUTER_PUBLIC_OTHER if old == nb.ROUTER_PUBLIC else nb.ROUTER_PUBLIC
        # the gateway reaches the new address without ARP over the emulated link
        mac = json.loads(self.bed.exec("rtr", ["ip", "-j", "link", "show", "pub0"]).stdout)[0]["address"]
        self.bed.exec("gw", ["ip", "neigh", "replace", new, "lladdr", mac, "dev", "pub0", "nud", "permanent"])
        self.bed.exec("rtr", ["sysctl", "-q", "-w", "net.ipv4.conf.pub0.promote_secondaries=1"])
        self.bed.exec("rtr", ["ip", "addr", "add", f"{new}/24", "dev", "pub0", "nodad"])
        at = time.monotonic()
        self.bed.exec("rtr", ["ip", "addr", "del", f"{old}/24", "dev", "pub0"])
        self.bed.exec("rtr", ["ip", "route", "replace", "default", "via", nb.GATEWAY_PUBLIC])
        self.public = new
        return at, 0

    def endpoint(self, role: str, name: str, argv: list[str], seconds: float) -> tuple[Any, Path]:
        out = self.workdir / f"{name}.capture"
        process = self.bed.spawn(
            role, name,
            [sys.executable, "-m", "spwm.testing.impair", "endpoint", *argv,
             "--out", str(out), "--realtime", "5", "--max-time", str(seconds + 60)],
            env=self.env,
        )
        wait_for(lambda: "ready" in process.stdout(), 10, f"{name} did not start", process)
        return process, out

    def wan_stats(self) -> dict[str, Any]:
        """
        The emulator's counters once nothing is queued; with several
        connections the agent's pings (every 100 ms on each) may keep
        something queued on a slow link all the time: then as they are
        half a second later (the calls have ended: their packets crossed).
        """
        try:
            return self.bed.wan_stats(timeout=3)
        except self.netbed.NetbedError:
            time.sleep(0.5)
            return self.bed.wan_stats(settle=False)

    def call(
        self, answer_at: str, call_to: str, tag: str, seconds: float, cut_at: float | None = None,
        rebind: bool = False, start_at: float | None = None, cuts: int = 1,
    ) -> dict[str, Any]:
        nb = self.netbed
        packets = int(seconds * 50)
        calls = str(self.args.calls)
        if start_at is not None:
            # at a given time: the counters as they are (a packet or two of
            # the agent's pings may be under way and counted in the call's bytes)
            before = self.bed.wan_stats(settle=False)
            time.sleep(max(0.0, start_at - time.monotonic()))
        else:
            before = self.wan_stats()
        started = time.monotonic()
        answerer, answer_capture = self.endpoint(
            "op", f"answerer-{tag}", ["answerer", answer_at, "--calls", calls, "--packets", str(packets)], seconds)
        caller, call_capture = self.endpoint(
            "lan", f"caller-{tag}", ["caller", nb.PHONE, call_to, "--calls", calls, "--packets", str(packets)], seconds)
        cut = None
        more: list[tuple[float, int]] = []
        if cut_at is not None:
            time.sleep(cut_at)
            cut = self.rebind() if rebind else self.cut_busiest()
            for _ in range(cuts - 1):
                time.sleep(max(0.0, cut[0] + CUT_APART * (len(more) + 1) - time.monotonic()))
                more.append(self.cut_busiest(wait=CUT_WAIT))
        if caller.wait(seconds + 70) != 0 or answerer.wait(20) != 0:
            raise BenchError(f"{tag}: an endpoint failed: {caller.stderr()[-800:]} {answerer.stderr()[-800:]}")
        after = self.wan_stats()
        caller_sent, caller_received = read_capture(str(call_capture))
        answer_sent, answer_received = read_capture(str(answer_capture))
        result = {
            "up": direction_stats(caller_sent, answer_received),
            "down": direction_stats(answer_sent, caller_received),
            "wan": diff(after, before),
            "started": started,
        }
        if cut is not None:
            # (each cut's "before" is the call's longest gap before the first)
            events = []
            for at, port in [cut, *more]:
                up_gap, up_from = gap_run(caller_sent, answer_received, at)
                down_gap, down_from = gap_run(answer_sent, caller_received, at)
                events.append({
                    "port": port,
                    # when it happened, on the endpoints' clock and on the logs'
                    "at": at,
                    "wall": at + time.time() - time.monotonic(),
                    "up": up_gap,
                    "down": down_gap,
                    "up_from": up_from,
                    "down_from": down_from,
                    "up_before": cut_gap(caller_sent, answer_received, cut[0], before=True),
                    "down_before": cut_gap(answer_sent, caller_received, cut[0], before=True),
                    "up_cost": cut_cost(caller_sent, answer_received, at),
                    "down_cost": cut_cost(answer_sent, caller_received, at),
                })
            log = self.agent.stdout()
            for event in events:
                event["attached_after"] = attached_after(log, event["wall"])
            # the table shows the worst of several cuts; the lines after it each
            result["cut"] = max(events, key=lambda e: max(e["up"], e["down"]))
            result["cuts"] = events
        return result

    def run(self) -> dict[str, Any]:
        nb = self.netbed
        seconds = self.args.seconds
        self.start_contact()
        spwm: dict[int, dict[str, Any]] = {}
        for n in self.args.connections:
            self.start_agent(n)
            up_at = time.monotonic()
            try:
                if self.args.warm:
                    # not measured: the session's connection count as a
                    # call that is not the first of the session finds it
                    self.call(f"{nb.ECHO}:{ANSWER_PORT_SPWM}", f"{nb.AGENT}:{FORWARD_PORT}", f"warm{n}",
                              self.args.warm)
                self.paths_seen()
                start_at = up_at + self.args.call_after if self.args.call_after is not None else None
                phase = self.call(f"{nb.ECHO}:{ANSWER_PORT_SPWM}", f"{nb.AGENT}:{FORWARD_PORT}", f"spwm{n}", seconds,
                                  start_at=start_at)
                phase["call_after"] = phase["started"] - up_at
                phase["paths"] = self.paths_seen()
                phase["udp_leaked"] = phase["wan"]["up"].get("udp_in", 0)
                if self.args.cut:
                    cuts = self.args.cuts
                    cut = self.call(f"{nb.ECHO}:{ANSWER_PORT_SPWM}", f"{nb.AGENT}:{FORWARD_PORT}", f"cut{n}",
                                    CUT_SECONDS + CUT_APART * (cuts - 1), cut_at=CUT_AT, cuts=cuts)
                    phase["cut"] = cut["cut"]
                    phase["cuts"] = cut["cuts"]
                if self.args.rebind:
                    moved = self.call(f"{nb.ECHO}:{ANSWER_PORT_SPWM}", f"{nb.AGENT}:{FORWARD_PORT}", f"rebind{n}",
                                      CUT_SECONDS, cut_at=CUT_AT, rebind=True)
                    phase["rebind"] = moved["cut"]
                phase["agent_alive"] = self.agent.returncode is None
            finally:
                self.stop_agent()
            spwm[n] = phase
        result: dict[str, Any] = {"profile": self.profile, "spwm": spwm}
        if self.args.quic:
            result["quic"] = self.quic_phase(seconds)
        self.bed.set_policy("open")
        result["udp"] = self.call(f"{nb.UAS}:{ANSWER_PORT_UDP}", f"{nb.UAS}:{ANSWER_PORT_UDP}", "udp", seconds)
        return result

    def quic_phase(self, seconds: float) -> dict[str, Any]:
        """
        The router under C{normal} (UDP 443 out), an agent with the default
        C{--udp-path auto} and one TCP connection; once its QUIC path is
        attached, a short call (L{QUIC_WARM_UP}, not measured) during which
        the media moves to it, and once the status says the media is on
        QUIC, the same call as the other phases.  What carried the media at
        the end and the path's moves during the call go with the figures.
        """
        nb = self.netbed
        self.bed.set_policy("normal")
        self.start_agent(1, quic=True)
        try:
            wait_for(lambda: (self.agent_paths().get("udp_path") or {}).get("quic_path") is True, 40,
                     "no QUIC path attached", self.agent)
            # the scheduler moves media to the QUIC path once it has been
            # answered for its hold: a short call first, not measured
            self.call(f"{nb.ECHO}:{ANSWER_PORT_SPWM}", f"{nb.AGENT}:{FORWARD_PORT}", "quicwarm", QUIC_WARM_UP)
            # "quic", or "tcp+quic": on a lossy link the scheduler sends
            # the media on both paths while losses keep coming
            wait_for(lambda: "quic" in (self.media_on() or ""), 20, "the media did not move to QUIC", self.agent)
            before = self.agent_paths()
            phase = self.call(f"{nb.ECHO}:{ANSWER_PORT_SPWM}", f"{nb.AGENT}:{FORWARD_PORT}", "quic", seconds)
            after = self.agent_paths()
            phase["paths_before"] = before
            phase["paths_after"] = after
            if self.args.rebind:
                # the QUIC path's own NAT binding changes with the address:
                # the connection migrates (the contact point finds it by its
                # connection ID) while the TCP connection breaks
                moved = self.call(f"{nb.ECHO}:{ANSWER_PORT_SPWM}", f"{nb.AGENT}:{FORWARD_PORT}", "quicrebind",
                                  CUT_SECONDS, cut_at=CUT_AT, rebind=True)
                phase["rebind"] = moved["cut"]
                phase["rebind_paths"] = self.agent_paths()
            phase["agent_alive"] = self.agent.returncode is None
        finally:
            self.stop_agent()
        return phase

    def close(self) -> None:
        self.bed.destroy()


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def log_observer() -> Any:
    """
    The halves' log (C{twistd --logger}): Twisted's text format on
    stdout, with milliseconds, to line their events up with the gaps.
    """
    from twisted.logger import textFileLogObserver

    return textFileLogObserver(sys.stdout, timeFormat="%Y-%m-%dT%H:%M:%S.%f")


def cut_gap(
    sent: dict[tuple[int, int], float], received: list[tuple[int, int, float]], cut: float, late: float = LATE,
    before: bool = False,
) -> float:
    """
    The audio one cut cost: the longest run of packets not delivered in
    time (lost, or later than C{late}) among those sent from 1 s before
    the cut to L{CUT_WINDOW} s after it, x 20 ms (the worst stream); in
    seconds.  With C{before}: the same among those the call sent before
    that window (its first C{CUT_AT - 1} s), what the link itself costs
    without a cut, to compare.
    """
    return gap_run(sent, received, cut, late, before)[0]


def gap_run(
    sent: dict[tuple[int, int], float], received: list[tuple[int, int, float]], cut: float, late: float = LATE,
    before: bool = False,
) -> tuple[float, float | None]:
    """
    L{cut_gap}, and when its run started: the first packet's send time
    less the cut's, in seconds (C{None}: no packet missed).
    """
    first: dict[tuple[int, int], float] = {}
    for ssrc, seq, at in received:
        key = (ssrc, seq)
        if key in sent and key not in first:
            first[key] = at - sent[key]
    streams: dict[int, list[int]] = {}
    for (ssrc, seq), at in sent.items():
        if (at < cut - 1.0) if before else (cut - 1.0 <= at <= cut + CUT_WINDOW):
            streams.setdefault(ssrc, []).append(seq)
    longest = 0
    start: float | None = None
    for ssrc, seqs in streams.items():
        run = 0
        for seq in sorted(seqs):
            d = first.get((ssrc, seq))
            run = 0 if d is not None and d <= late else run + 1
            if run > longest:
                longest = run
                start = sent[(ssrc, seq - run + 1)] - cut
    return longest * INTERVAL, start


def cut_cost(
    sent: dict[tuple[int, int], float], received: list[tuple[int, int, float]], cut: float, late: float = LATE,
) -> tuple[int, float, float]:
    """
    What one cut cost beyond what the link costs anyway: the packets not
    delivered in time (lost, or later than C{late}) among those sent in
    the cut's window (L{cut_gap}'s), against as many as the same call
    missed at its own rate outside the window (before and after it).

    @return: the packets missed in the window, those expected there at
        the call's rate outside it, and the difference per stream x 20 ms
        (at least 0): the audio the cut cost each stream, in seconds.
    """
    delivered = {(ssrc, seq) for ssrc, seq, at in received if at - sent.get((ssrc, seq), at + 1.0) <= late}
    inside = outside = missed_inside = missed_outside = 0
    streams = set()
    for key, at in sent.items():
        streams.add(key[0])
        missed = key not in delivered
        if cut - 1.0 <= at <= cut + CUT_WINDOW:
            inside += 1
            missed_inside += missed
        else:
            outside += 1
            missed_outside += missed
    expected = missed_outside / outside * inside if outside else 0.0
    return missed_inside, expected, max(0.0, missed_inside - expected) / max(1, len(streams)) * INTERVAL


def attached_after(log: str, wall: float) -> float | None:
    """
    How long after C{wall} (a cut, on the logs' clock: UTC seconds) the
    agent's log says the next connection attached to its session (the
    replacement), in seconds; C{None} if it says none did.
    """
    for match in re.finditer(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+) .*connection \d+ attached", log, re.M):
        at = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        if at >= wall:
            return at - wall
    return None


def phases(r: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """A profile's phases: (key, label, figures), SPWM per N, the QUIC path, then plain UDP."""
    quic = [("quic", "SPWM normal, QUIC path", r["quic"])] if "quic" in r else []
    ordered = sorted(r["spwm"].items(), key=lambda item: (isinstance(item[0], str), str(item[0]).zfill(3)))
    return [(f"spwm{n}", f"SPWM strict, {n} conn.", phase) for n, phase in ordered] + quic + [
        ("udp", "plain UDP", r["udp"])
    ]


def bandwidth_factor(phase: dict[str, Any], udp: dict[str, Any], direction: str) -> float:
    """The bytes a phase put on the WAN in one direction over plain UDP's (NaN if unknown)."""
    mine = phase["wan"][direction].get("bytes_in", 0)
    base = udp["wan"][direction].get("bytes_in", 0)
    return mine / base if base else math.nan


def _event_gap(event: dict[str, Any] | None, direction: str) -> str:
    """A cut's or a rebind's gap, and in brackets the same call's longest gap before it."""
    if event is None:
        return "-"
    before = event.get(f"{direction}_before")
    return f"{event[direction] * 1000:.0f}" + ("" if before is None else f" ({before * 1000:.0f})")


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| profile (each direction) | path | dir | sent | delivered | late > 150 ms | eff. loss | "
        "p50 / p95 / p99 / max ms | longest gap ms | BurstR | MOS | WAN bytes x UDP | cut gap ms (before) | rebind gap ms (before) | "
        "conns max / end |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        describe = PROFILES[r["profile"]].describe().replace(", each direction", "")
        for _, label, phase in phases(r):
            for direction in ("up", "down"):
                s: DirectionStats = phase[direction]
                factor = bandwidth_factor(phase, r["udp"], direction)
                cut = phase.get("cut")
                moved = phase.get("rebind")
                paths = phase.get("paths")
                lines.append(
                    f"| {r['profile']}: {describe} | {label} | {direction} | {s.sent} | {s.delivered} | "
                    f"{s.late} ({100 * s.late / max(1, s.sent):.1f} %) | {100 * s.effective_loss:.1f} % | "
                    f"{ms(s.p50)} / {ms(s.p95)} / {ms(s.p99)} / {ms(s.max)} | "
                    f"{s.longest_gap * 1000:.0f} | {s.burst_r:.2f} | {s.mos:.2f} | "
                    f"{'-' if math.isnan(factor) else f'{factor:.2f}'} | "
                    f"{_event_gap(cut, direction)} | {_event_gap(moved, direction)} | "
                    f"{'-' if paths is None else f'{paths[0]} / {paths[1]}'} |"
                )
    return lines


def cut_lines(results: list[dict[str, Any]]) -> list[str]:
    """
    Per cut: when it was (the logs' clock) and when each direction's
    longest gap started, relative to it.
    """
    lines = []
    for r in results:
        for n, phase in r["spwm"].items():
            for cut in phase.get("cuts") or [phase.get("cut")]:
                if not cut or "wall" not in cut:
                    continue
                wall = datetime.datetime.fromtimestamp(cut["wall"], datetime.timezone.utc)
                gaps = []
                for d in ("up", "down"):
                    start = cut.get(f"{d}_from")
                    where = "" if start is None else f" from {start:+.2f} s"
                    gaps.append(f"{d} {cut[d] * 1000:.0f} ms{where}")
                costs = []
                for d in ("up", "down"):
                    if f"{d}_cost" in cut:
                        missed, expected, cost = cut[f"{d}_cost"]
                        costs.append(f"{d} {cost * 1000:.0f} ms ({missed} missed in the window, {expected:.1f} expected)")
                attached = cut.get("attached_after")
                lines.append(f"  {r['profile']:<7} spwm{n}: cut at {wall:%H:%M:%S.%f} UTC (port {cut['port']}); "
                             f"longest gap {', '.join(gaps)}"
                             + (f"; audio the cut cost beyond the link's own rate: {', '.join(costs)}" if costs else "")
                             + (f"; replacement attached after {attached:.2f} s" if attached is not None else ""))
    return lines


def wan_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        for key, _, phase in phases(r):
            w = phase["wan"]
            parts = []
            for direction in ("up", "down"):
                c = w[direction]
                parts.append(
                    f"{direction}: in {c.get('in', 0):.0f} (udp {c.get('udp_in', 0):.0f}, tcp {c.get('tcp_in', 0):.0f}; "
                    f"{c.get('bytes_in', 0) / 1000:.0f} kB), "
                    f"lost {c.get('lost', 0):.0f}, queue-dropped {c.get('queue_dropped', 0):.0f}, "
                    f"slip max {c.get('slip_max_ms', 0):.1f} ms (>1 ms {c.get('slip_over_1ms', 0):.0f}x, "
                    f">5 ms {c.get('slip_over_5ms', 0):.0f}x)"
                )
            lines.append(f"  {r['profile']:7} {key:6} emulator " + "; ".join(parts))
            if phase.get("udp_leaked"):
                lines.append(f"  {r['profile']:7} WARNING: {phase['udp_leaked']} UDP frames crossed the WAN during {key}")
            if key == "quic":
                b, a = phase["paths_before"], phase["paths_after"]
                session, before_session = a.get("session") or {}, b.get("session") or {}
                lines.append(
                    f"  {r['profile']:7} quic   media on {before_session.get('media_on')} at the start, "
                    f"{session.get('media_on')} at the end; media moves during the call "
                    f"{session.get('media_switches', 0) - before_session.get('media_switches', 0)}; "
                    f"QUIC paths lost {a.get('udp_path', {}).get('losses', 0) - b.get('udp_path', {}).get('losses', 0)}"
                )
                if "rebind_paths" in phase:
                    c = phase["rebind_paths"]
                    lines.append(
                        f"  {r['profile']:7} quic   after the rebind: media on {(c.get('session') or {}).get('media_on')}, "
                        f"QUIC paths lost {c.get('udp_path', {}).get('losses', 0) - a.get('udp_path', {}).get('losses', 0)}, "
                        f"attached {c.get('udp_path', {}).get('attachments', 0) - a.get('udp_path', {}).get('attachments', 0)}"
                    )
            if "agent_alive" in phase and not phase["agent_alive"]:
                lines.append(f"  {r['profile']:7} {key}: the agent had exited by the end of the SPWM call")
    return lines


def plot(results: list[dict[str, Any]], path: str, calls: int) -> None:
    """One CDF panel per profile: one-way delay of SPWM and plain UDP, the 150 ms line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    colors = ["tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for ax, r in zip(axes.flat, results):
        top = LATE * 1000 * 2
        keyed = phases(r)
        for i, (key, label, phase) in enumerate(keyed):
            for d in ("up", "down"):
                color = "tab:blue" if key == "udp" else colors[i % len(colors)]
                style = "-" if d == "up" else "--"
                s: DirectionStats = phase[d]
                delays = [x * 1000 for x in s.delays]
                if not delays:
                    continue
                ys = [(j + 1) / s.sent for j in range(len(delays))]
                top = max(top, min(delays[-1], 1000))
                ax.step(delays, ys, where="post", color=color, linestyle=style,
                        label=f"{label} {d}: MOS {s.mos:.2f}")
        ax.axvline(LATE * 1000, color="black", linewidth=0.8)
        ax.text(LATE * 1000, 0.02, " 150 ms", fontsize=8)
        ax.set_xlim(0, top * 1.05)
        ax.set_ylim(0, 1.01)
        ax.set_title(f"{r['profile']}: {PROFILES[r['profile']].describe()}", fontsize=9)
        ax.set_xlabel("one-way delay, ms")
        ax.set_ylabel("share of packets sent")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"G.711, {calls} call(s): one-way delay CDF (lost packets never reach it)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default=",".join(MAIN_PROFILES),
                        help=f"comma-separated, of {', '.join(PROFILES)} (default %(default)s)")
    parser.add_argument("--calls", type=int, default=1, help="concurrent calls in the one tunnel")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each call")
    parser.add_argument("--seed", type=int, default=1, help="the emulator's seed")
    parser.add_argument("--plaintext", action="store_true", help="no TLS in the tunnel")
    parser.add_argument("--tunnel-connections", default="auto", metavar="N[,N...]",
                        help="the agent's --tunnel-connections (a number or auto); several: one SPWM phase each, in one bed (default %(default)s)")
    parser.add_argument("--cut", action="store_true",
                        help=f"also, per N, a {CUT_SECONDS:g} s call in which the agent's busiest connection is killed "
                             f"(ss -K) after {CUT_AT:g} s: the audio gap it costs (after the table: the cut's time "
                             f"on the halves' logs, which have milliseconds, and when each longest gap started)")
    parser.add_argument("--cuts", type=int, default=1, metavar="K",
                        help=f"with --cut: K cuts, {CUT_APART:g} s apart (each new connection cut young, as on a link "
                             f"that breaks every few seconds; the call is longer by that); the table shows the worst "
                             f"gap, the lines after it each (default %(default)s)")
    parser.add_argument("--quic", action="store_true",
                        help="also a phase on the QUIC path: the router under normal (UDP 443 out), the contact "
                             "point with --quic-listen, an agent with --udp-path auto and one TCP connection "
                             "(the strict phases' agents get --udp-path off); needs TLS")
    parser.add_argument("--rebind", action="store_true",
                        help=f"also, per N (and after the QUIC phase with --quic), a {CUT_SECONDS:g} s call in which the home "
                             f"router's public address changes after {CUT_AT:g} s (every TCP connection breaks; a QUIC "
                             f"path migrates): the audio gap it costs")
    parser.add_argument("--warm", type=float, default=0.0, metavar="SECONDS",
                        help="per N, a call this long before the measured one, on the same agent (not measured): "
                             "with auto, the count a later call of the session starts with")
    parser.add_argument("--call-after", type=float, default=None, metavar="SECONDS",
                        help="start the measured call this long after the agent's connections are up (default: as "
                             "soon as the bench is ready, which takes longer while the agent pings: the emulator's "
                             "counters are read once nothing is queued, for up to 3.5 s; with this option they are "
                             "read as they are); the delay is printed")
    parser.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for the agent (repeat: --agent-arg=--media-deadline --agent-arg=0.1)")
    parser.add_argument("--plot", metavar="PNG", help="write the CDF picture here (needs matplotlib: the bench extra)")
    parser.add_argument("--workdir", default=None, help="logs and captures (default: a new directory under /tmp)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--max-time", type=float, default=1800.0)
    args = parser.parse_args(argv)
    profiles = [p for p in args.profiles.split(",") if p]
    try:
        args.connections = [n if n == "auto" else int(n) for n in args.tunnel_connections.split(",") if n]
    except ValueError:
        parser.error(f"--tunnel-connections: numbers or auto, not {args.tunnel_connections!r}")
    if not args.connections or not all(n == "auto" or 1 <= n <= 16 for n in args.connections):
        parser.error("--tunnel-connections: each auto or between 1 and 16")
    if args.quic and args.plaintext:
        parser.error("--quic needs TLS (the QUIC path is not offered with --plaintext)")
    if not 1 <= args.cuts <= 10:
        parser.error("--cuts: between 1 and 10")
    if args.cuts > 1 and not args.cut:
        parser.error("--cuts goes with --cut")
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        parser.error(f"unknown profile(s) {', '.join(unknown)}; use {', '.join(PROFILES)}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install -e .[bench]")

    from tests.e2e import netbed

    missing = netbed.missing_requirements()
    if missing:
        print("impair bench: the bed is unavailable, missing: " + "; ".join(missing), file=sys.stderr)
        return 1
    workdir = Path(args.workdir or f"/tmp/spwm-bench-impair-{os.getpid()}")
    workdir.mkdir(parents=True, exist_ok=True)

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(f"impair bench: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(args.max_time))

    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"impair bench {started:%Y-%m-%d %H:%M} UTC: python3 bench/impair.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {platform.node()}, {os.cpu_count()} x {cpu_model()}, {platform.platform()}")
    print(f"load average before: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print(f"{args.calls} call(s) x {args.seconds:g} s, G.711 50 pps each way; tunnel {'plaintext' if args.plaintext else 'TLS'}, "
          f"--tunnel-connections {','.join(map(str, args.connections))}"
          f"{(' and a cut each' if args.cuts == 1 else f' and {args.cuts} cuts {CUT_APART:g} s apart each') if args.cut else ''}"
          f"{' and a rebind each' if args.rebind else ''}{f' after a {args.warm:g} s warm-up call' if args.warm else ''}"
          f"{'; a QUIC path phase under normal' if args.quic else ''}; "
          f"seed {args.seed}; one clock (CLOCK_MONOTONIC) for both ends")
    cpu0 = machine_cpu()
    results = []
    for profile in profiles:
        run = None
        try:
            run = ProfileRun(netbed, args, profile, workdir / profile)
            results.append(run.run())
            print(f"  {profile}: done")
        except (BenchError, netbed.NetbedError) as e:
            print(f"  {profile}: FAILED: {e} (logs in {workdir / profile})", file=sys.stderr)
            return 1
        finally:
            if run is not None:
                run.close()
    usage = machine_usage(cpu0, machine_cpu())
    print(f"machine during the run: busy {100 * usage['busy']:.0f} %, softirq {100 * usage['softirq']:.1f} %, "
          f"steal {100 * usage['steal']:.1f} %; load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print()
    print("\n".join(table(results)))
    print()
    print("\n".join(wan_lines(results)))
    for line in cut_lines(results):
        print(line)
    for r in results:
        for n, phase in r["spwm"].items():
            print(f"  {r['profile']:<7} spwm{n}: the measured call started {phase['call_after']:.1f} s after the agent's connections were up")
    if args.plot:
        plot(results, args.plot, args.calls)
        print(f"\nCDF picture: {args.plot}")
    if args.json:
        doc = [
            {"profile": r["profile"],
             **{key: {**{d: _fields(phase[d]) for d in ("up", "down")},
                      "wan": phase["wan"], "cut": phase.get("cut"), "cuts": phase.get("cuts"), "rebind": phase.get("rebind"),
                      "paths": phase.get("paths"), "paths_after": phase.get("paths_after")}
                for key, _, phase in phases(r)}}
            for r in results
        ]
        Path(args.json).write_text(json.dumps(doc, indent=1))
    print(f"logs and captures: {workdir}")
    return 0


def _fields(s: DirectionStats) -> dict[str, Any]:
    import attrs

    return {k: v for k, v in attrs.asdict(s).items() if k != "delays"}


if __name__ == "__main__":
    sys.exit(main())
