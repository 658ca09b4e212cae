#!/usr/bin/env python3
"""
Benchmark: RTP-sized UDP datagrams through an SPWM agent and contact point on
loopback, against the same load sent directly between two sockets.

Processes (each its own, so the two tunnel halves get a core each as in
production)::

    sender/receiver ──UDP──> spwm-agent ══TCP/TLS══> spwm-contact ──UDP──> target
      (N sockets)    <──────            <══════════               <──────  (echo or sink)

    sender/receiver ──────────────────── UDP ────────────────────────────> target
                     <────────────────────────────────────────────────────  (the direct baseline)

Every datagram carries a phase byte, its stream, a sequence number and the
C{time.monotonic()} of its sending; the target writes its own receive time
into the echo.  C{CLOCK_MONOTONIC} is one clock for every process of the
machine, so latencies are true one-way figures, not RTT/2:

    - forward: sender -> target (measured by the target);
    - return: target's echo -> receiver (measured by the receiver);
    - RTT: both legs.

Modes:

    - C{fixed} (default): C{--rate} datagrams per second in total, half each way
      (the target echoes), spread over C{--streams} sender sockets, for
      C{--duration} seconds, through the tunnel and directly.
    - C{ramp}: one way only (the target is a sink), steps up the rate until the
      loss reaches C{--loss-limit}, then bisects, through the tunnel and
      directly.
    - C{loadgen}: how fast the load generator alone can send (no receiver).

Everything the benchmark starts is ended by PID when it finishes, on Ctrl-C,
on an error and when C{--max-time} runs out.

Run from the repository's root::

    python3 bench/tunnel_udp.py                      # fixed 20,000 pps, plaintext
    python3 bench/tunnel_udp.py --tls                # the same over TLS
    python3 bench/tunnel_udp.py --mode ramp --tls    # the highest one-way rate
    python3 bench/tunnel_udp.py --profile /tmp/prof  # py-spy on both halves
    python3 bench/tunnel_udp.py --quic               # direct, TLS/TCP and QUIC in one run

With C{--quic} the contact point also listens on QUIC (C{--quic-listen})
and a second agent runs its tunnel over QUIC (C{--udp-path only}), with
forwards of its own: every phase then runs over the direct path, the
TLS/TCP tunnel (C{tunnel}) and the QUIC tunnel (C{quic}), in that order,
in the same run.  C{--quic} implies C{--tls}.
"""

from __future__ import annotations

import argparse
import array
import collections
import math
import multiprocessing
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    ROOT,
    Processes,
    cpu_model,
    cpu_seconds,
    free_port,
    machine_cpu,
    machine_usage,
    percentile,
    summarize_profile,
    udp_counters,
)
from _load import bisect_ramp, child_setup, fmt_us, loss, paced_sender_main, receive_until  # noqa: E402

#: phase, stream, sequence, send time, echo time
PACKET = struct.Struct("!BHIdd")
PHASE_PROBE = 254
PHASE_CONTROL = 255
RCVBUF = 4 * 1024 * 1024
#: spwm-agent and spwm-contact's default --max-channels (open channels per tunnel)
CHANNELS_PER_TUNNEL = 4096

_monotonic = time.monotonic


# -- small helpers -----------------------------------------------------------


def udp_socket(bind_port: int = 0) -> socket.socket:
    """
    A UDP socket on 127.0.0.1 with a large receive buffer.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)
    s.bind(("127.0.0.1", bind_port))
    return s


# -- the target (echo or sink) --------------------------------------------------


def target_main(sock: socket.socket, conn: Any) -> None:
    """
    The target process: counts what arrives, records the forward latency and
    echoes (with its receive time) when asked to.  Probes are always echoed.
    Control: a datagram whose phase byte is L{PHASE_CONTROL} makes it read one
    command from C{conn}: C{("start", phase, echo)} or C{("report",)}.
    """
    child_setup()
    sock.setblocking(True)
    buf = bytearray(2048)
    view = memoryview(buf)
    recv = sock.recvfrom_into
    send = sock.sendto
    unpack = PACKET.unpack_from
    pack_into = struct.Struct("!d").pack_into
    phase = -1
    echo = False
    count = 0
    echoed = 0
    lat = array.array("d")
    add = lat.append
    while True:
        n, addr = recv(buf)
        p = buf[0]
        if p == phase:
            now = _monotonic()
            count += 1
            add(now - unpack(buf)[3])
            if echo:
                pack_into(buf, 15, now)
                try:
                    send(view[:n], addr)
                    echoed += 1
                except OSError:
                    pass
        elif p == PHASE_PROBE:
            try:
                send(view[:n], addr)
            except OSError:
                pass
        elif p == PHASE_CONTROL:
            cmd = conn.recv()
            if cmd[0] == "start":
                _, phase, echo = cmd
                count = echoed = 0
                lat = array.array("d")
                add = lat.append
                conn.send("ok")
            elif cmd[0] == "report":
                conn.send((count, echoed, lat.tobytes()))
                phase = -1
            elif cmd[0] == "exit":
                return


# -- the load generator -------------------------------------------------------


def filler(phase: int) -> Callable[[bytearray, int, int], None]:
    """
    The L{paced_sender_main} C{fill} of C{phase}: phase, stream, sequence and
    send time; the target writes its receive time into the last field.
    """
    pack_into = PACKET.pack_into
    monotonic = _monotonic

    def fill(buf: bytearray, i: int, seq: int) -> None:
        pack_into(buf, 0, phase, i, seq, monotonic(), 0.0)

    return fill


def receiver_main(socks: list[socket.socket], phase: int, until: float, conn: Any) -> None:
    """
    Read echoes from every sender socket until C{until} (a monotonic time);
    report C{(count, rtt bytes, return-leg bytes, cpu)}.
    """
    child_setup()
    unpack = PACKET.unpack_from
    rtt = array.array("d")
    ret = array.array("d")
    count = 0

    def packet(buf: bytearray, n: int, now: float) -> None:
        nonlocal count
        p, _, _, t_send, t_echo = unpack(buf)
        if p == phase:
            count += 1
            rtt.append(now - t_send)
            ret.append(now - t_echo)

    cpu0 = time.process_time()
    receive_until(socks, until, packet)
    conn.send((count, rtt.tobytes(), ret.tobytes(), time.process_time() - cpu0))


# -- one measured phase -------------------------------------------------------


class Bench:
    """
    The benchmark's state: the target, the sender sockets, the tunnel processes.
    """

    def __init__(self, args: argparse.Namespace, procs: Processes, workdir: str) -> None:
        self.args = args
        self.procs = procs
        self.workdir = workdir
        self.target_sock = udp_socket()
        self.target_addr = self.target_sock.getsockname()
        self.socks = [udp_socket() for _ in range(args.streams)]
        self.ctl_sock = udp_socket()
        self.ctl, child = multiprocessing.Pipe()
        self.target = procs.fork(target_main, self.target_sock, child)
        self.forward_ports: list[int] = []
        #: tunnel path ("tunnel": TLS/TCP, "quic") -> its agent and forward ports
        self.agents: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, list[int]] = {}
        self.agent: subprocess.Popen | None = None
        self.contact: subprocess.Popen | None = None
        self.phase = 0

    # target control
    def _target(self, *cmd: Any) -> Any:
        self.ctl.send(cmd)
        self.ctl_sock.sendto(bytes([PHASE_CONTROL]) + bytes(PACKET.size), self.target_addr)
        if not self.ctl.poll(5.0):
            raise RuntimeError(f"target did not answer {cmd[0]}")
        return self.ctl.recv()

    @property
    def tunnel_paths(self) -> list[str]:
        """
        The tunnel paths measured: C{tunnel} (TLS/TCP, or plaintext), and C{quic} with C{--quic}.
        """
        return ["tunnel", "quic"] if self.args.quic else ["tunnel"]

    def security(self) -> tuple[list[str], list[str]]:
        """
        The contact point's and the agent's TLS options (a test CA's
        certificate for C{localhost}), or C{--plaintext} for both.
        """
        if not self.args.tls:
            return ["--plaintext"], ["--plaintext"]
        from spwm.testing.certs import TestCA

        ca = TestCA(os.path.join(self.workdir, "ca"))
        files = ca.issue(["localhost", "127.0.0.1"], "contact")
        return ["--cert", files.cert, "--key", files.key], ["--ca", ca.ca_file, "--server-name", "localhost"]

    def start_tunnel(self) -> None:
        a = self.args
        tport = free_port()
        qport = free_port()
        self.ports = {path: [free_port() for _ in range(a.forwards)] for path in self.tunnel_paths}
        self.forward_ports = self.ports["tunnel"]
        target = f"{self.target_addr[0]}:{self.target_addr[1]}"
        common = ["--udp-buffer", str(RCVBUF)]
        if a.streams > CHANNELS_PER_TUNNEL - 16:
            # every stream is a channel; leave room for the tunnel's own
            common += ["--max-channels", str(a.streams + 64)]
        contact_sec, agent_sec = self.security()
        self.contact = self.procs.start_twistd(
            "spwm-contact",
            [
                *contact_sec,
                *common,
                "--listen",
                f"tcp:{tport}:interface=127.0.0.1",
                "--allow-forward",
                target,
                "--drain-time",
                "0.2",
                *(["--quic-listen", f"127.0.0.1:{qport}"] if a.quic else []),
            ],
            os.path.join(self.workdir, "contact.log"),
        )
        time.sleep(0.5)
        for path in self.tunnel_paths:
            fwd = []
            for p in self.ports[path]:
                fwd += ["--forward-udp", f"{p}={target}"]
            quic = ["--udp-path", "only", "--quic-port", str(qport)] if path == "quic" else []
            # each agent its own SIP port (the default 5060 may be taken) and media range
            own = ["--sip-listen", f"127.0.0.1:{free_port()}"]
            if path == "quic":
                own += ["--media-ports", "41000-41999"]
            self.agents[path] = self.procs.start_twistd(
                "spwm-agent",
                [
                    *agent_sec,
                    *common,
                    "--contact",
                    f"127.0.0.1:{tport}",
                    "--reconnect-max",
                    "1",
                    *own,
                    *quic,
                    *fwd,
                    *self.args.agent_arg,
                ],
                os.path.join(self.workdir, f"agent-{path}.log"),
            )
        self.agent = self.agents["tunnel"]
        self.command_lines = [" ".join(p.args[5:]) for p in (self.contact, *self.agents.values())]
        for path in self.tunnel_paths:
            self._probe(path)
            self.warm_up(self.tunnel_dests(path))

    def _probe(self, path: str) -> None:
        # Wait until a probe comes back through the tunnel.  It goes from
        # stream 0's socket to stream 0's forward: a socket of its own would
        # be one more sender (one more channel) on that forward.
        probe = self.socks[0]
        deadline = time.monotonic() + 20.0
        while True:
            for proc in (self.contact, self.agents[path]):
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[5]} exited; see {self.workdir}")
            probe.sendto(PACKET.pack(PHASE_PROBE, 0, 0, 0.0, 0.0), self.tunnel_dests(path)[0])
            r, _, _ = select.select([probe], [], [], 0.2)
            if r:
                probe.recv(2048)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {path} tunnel did not forward within 20 s; see {self.workdir}")

    def tunnel_dests(self, path: str = "tunnel") -> list[tuple[str, int]]:
        ports = self.ports[path]
        return [("127.0.0.1", ports[i % len(ports)]) for i in range(len(self.socks))]

    def direct_dests(self) -> list[tuple[str, int]]:
        return [self.target_addr] * len(self.socks)

    def warm_up(self, dests: list[tuple[str, int]]) -> None:
        """
        One probe per sender socket, so every channel is open before measuring.
        """
        waiting = set(range(len(self.socks)))
        # poll, not select: with many streams the descriptors pass 1024
        poller = select.poll()
        index = {s.fileno(): i for i, s in enumerate(self.socks)}
        for fd in index:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + 10.0
        while waiting and time.monotonic() < deadline:
            for i in waiting:
                self.socks[i].sendto(PACKET.pack(PHASE_PROBE, i, 0, 0.0, 0.0), dests[i])
            end = time.monotonic() + 0.5
            while waiting and time.monotonic() < end:
                for fd, _ in poller.poll(100):
                    self.socks[index[fd]].recv(2048)
                    waiting.discard(index[fd])
        if waiting:
            by_dest = collections.Counter(dests[i] for i in waiting)
            raise RuntimeError(
                f"{len(waiting)} of {len(self.socks)} streams got no answer during warm-up "
                f"(by destination: {dict(by_dest)}); see {self.workdir}"
            )
        # Leave nothing stale in the sockets.
        for s in self.socks:
            s.setblocking(False)
            try:
                while True:
                    s.recv(2048)
            except BlockingIOError:
                pass
            s.setblocking(True)

    def run_phase(
        self, path: str, rate: float, duration: float, echo: bool, profile: str | None = None, idle: bool = False
    ) -> dict[str, Any]:
        """
        One measurement: C{rate} datagrams/s from the senders (one way) for
        C{duration} s over C{path} ("direct", "tunnel" or "quic").
        """
        self.phase = (self.phase + 1) % 200
        phase = self.phase
        tunneled = path != "direct"
        agent = self.agents.get(path)
        dests = self.tunnel_dests(path) if tunneled else self.direct_dests()
        self._target("start", phase, echo)
        tunnel_pids = [p.pid for p in (agent, self.contact) if p is not None] if tunneled else []
        cpu0 = {pid: cpu_seconds(pid) for pid in tunnel_pids + [self.target.pid]}
        udp0 = udp_counters()
        mach0 = machine_cpu()
        s_conn, s_child = multiprocessing.Pipe()
        r_conn = None
        start = time.monotonic()
        drain = self.args.drain
        if echo:
            r_conn, r_child = multiprocessing.Pipe()
            receiver = self.procs.fork(receiver_main, self.socks, phase, start + duration + drain, r_child)
        sender = self.procs.fork(
            paced_sender_main, self.socks, dests, self.args.size, filler(phase), rate, duration, s_child
        )
        spies = []
        if profile and tunneled:
            for name, proc in (("agent", agent), ("contact", self.contact)):
                kind = "quic" if path == "quic" else "tls" if self.args.tls else "plain"
                out = os.path.join(profile, f"{name}-{kind}.txt")
                spies.append(
                    (
                        out,
                        subprocess.Popen(
                            ["py-spy", "record", "--nonblocking", "-r", "250", "-f", "raw", "-o", out,
                             "-p", str(proc.pid), "-d", str(max(1, int(duration - 1)))] + (["--idle"] if idle else []),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        ),
                    )
                )
                self.procs.popen.append(spies[-1][1])
        if not s_conn.poll(duration + 30):
            raise RuntimeError("sender did not report")
        sent, failed, elapsed, s_cpu = s_conn.recv()
        sender.join(5)
        time.sleep(drain if not echo else max(0.0, start + duration + drain - time.monotonic()))
        recv_back = 0
        rtt = ret = array.array("d")
        r_cpu = 0.0
        if r_conn is not None:
            if not r_conn.poll(10):
                raise RuntimeError("receiver did not report")
            recv_back, rtt_b, ret_b, r_cpu = r_conn.recv()
            rtt = array.array("d")
            rtt.frombytes(rtt_b)
            ret = array.array("d")
            ret.frombytes(ret_b)
            receiver.join(5)
        wall = time.monotonic() - start
        cpu1 = {pid: cpu_seconds(pid) for pid in cpu0}
        udp1 = udp_counters()
        mach = machine_usage(mach0, machine_cpu())
        fwd_count, echoed, lat_b = self._target("report")
        fwd = array.array("d")
        fwd.frombytes(lat_b)
        for _, spy in spies:
            try:
                spy.wait(15)
            except subprocess.TimeoutExpired:
                spy.kill()
        cpu = {"target": (cpu1[self.target.pid] - cpu0[self.target.pid]) / wall, "sender": s_cpu / elapsed}
        if echo:
            cpu["receiver"] = r_cpu / (duration + drain)
        if tunneled:
            cpu["agent"] = (cpu1[agent.pid] - cpu0[agent.pid]) / wall
            cpu["contact"] = (cpu1[self.contact.pid] - cpu0[self.contact.pid]) / wall
        return {
            "path": path,
            "rate": rate,
            "duration": elapsed,
            "sent": sent,
            "send_failed": failed,
            "fwd_received": fwd_count,
            "fwd_lat": sorted(fwd),
            "echoed": echoed,
            "back_received": recv_back,
            "rtt": sorted(rtt),
            "ret_lat": sorted(ret),
            "cpu": cpu,
            "wall": wall,
            "udp": {k: udp1.get(k, 0) - udp0.get(k, 0) for k in ("RcvbufErrors", "SndbufErrors", "InErrors")},
            "profiles": [out for out, _ in spies],
            "machine": mach,
        }


# -- reports -----------------------------------------------------------------


def describe(r: dict[str, Any], echo: bool) -> list[str]:
    d = r["duration"]
    lines = [
        f"  {r['path']:6}  asked {r['rate']:.0f}/s one way; sent {r['sent']} in {d:.2f} s "
        f"({r['sent'] / d:.0f}/s, {r['send_failed']} send errors)",
        f"          forward: delivered {r['fwd_received'] / d:9.0f}/s  loss {100 * loss(r['sent'], r['fwd_received']):7.3f} %"
        f"  latency us p50 {fmt_us(percentile(r['fwd_lat'], .5), 8)} p99 {fmt_us(percentile(r['fwd_lat'], .99), 8)}"
        f" max {fmt_us(r['fwd_lat'][-1] if r['fwd_lat'] else float('nan'), 8)}",
    ]
    if echo:
        lines.append(
            f"          return:  delivered {r['back_received'] / d:9.0f}/s  loss {100 * loss(r['echoed'], r['back_received']):7.3f} %"
            f"  latency us p50 {fmt_us(percentile(r['ret_lat'], .5), 8)} p99 {fmt_us(percentile(r['ret_lat'], .99), 8)}"
            f" max {fmt_us(r['ret_lat'][-1] if r['ret_lat'] else float('nan'), 8)}"
        )
        lines.append(
            f"          RTT:                                      "
            f"  latency us p50 {fmt_us(percentile(r['rtt'], .5), 8)} p99 {fmt_us(percentile(r['rtt'], .99), 8)}"
            f" max {fmt_us(r['rtt'][-1] if r['rtt'] else float('nan'), 8)}"
        )
        total_sent = r["sent"] + r["echoed"]
        total_recv = r["fwd_received"] + r["back_received"]
        lines.append(
            f"          total:   delivered {total_recv / d:9.0f}/s  loss {100 * loss(r['sent'] * 2, total_recv):7.3f} %"
            f" (of {total_sent} sent by sender and target)"
        )
    cpu = ", ".join(f"{k} {100 * v:.0f} %" for k, v in r["cpu"].items())
    m = r["machine"]
    if "agent" in r["cpu"]:
        lines.append(f"          tunnel CPU per datagram (agent + contact point): {cpu_per_packet(r) * 1e6:.1f} us")
    lines.append(
        f"          CPU of one core: {cpu};  machine ({os.cpu_count()} CPUs): busy {100 * m['busy']:.0f} %, "
        f"softirq {100 * m['softirq']:.0f} %, steal {100 * m['steal']:.0f} %;  kernel UDP errors: {r['udp']}"
    )
    return lines


def cpu_per_packet(r: dict[str, Any]) -> float:
    """
    Seconds of CPU both tunnel halves spent per datagram they carried
    (forward and return legs).
    """
    carried = max(1, r["fwd_received"] + r["back_received"])
    return (r["cpu"].get("agent", 0.0) + r["cpu"].get("contact", 0.0)) * r["wall"] / carried


# -- modes -------------------------------------------------------------------


def mode_fixed(bench: Bench, args: argparse.Namespace) -> None:
    echo = not args.one_way
    one_way = args.rate / 2 if echo else args.rate
    shape = "each way" if echo else "one way (agent -> contact; the target is a sink)"
    print(
        f"fixed: {args.rate:.0f} pps in total = {args.streams} streams x {one_way / args.streams:.0f} pps {shape}, "
        f"{args.size}-byte datagrams, {args.duration:g} s per path, {'TLS' if args.tls else 'plaintext'}"
        + (", and the tunnel over QUIC" if args.quic else "")
    )
    direct = None
    if not args.skip_direct:
        bench.warm_up(bench.direct_dests())
        direct = bench.run_phase("direct", one_way, args.duration, echo=echo)
    tunnels = {}
    for path in bench.tunnel_paths:
        bench.warm_up(bench.tunnel_dests(path))
        tunnels[path] = bench.run_phase(path, one_way, args.duration, echo=echo, profile=args.profile, idle=args.idle)
    for r in (direct, *tunnels.values()):
        if r is not None:
            print("\n".join(describe(r, echo)))
    legs = [("forward", "sent", "fwd_received", "fwd_lat")]
    if echo:
        legs += [("return", "echoed", "back_received", "ret_lat"), ("RTT", None, None, "rtt")]
    if "quic" in tunnels:
        print("  ratios quic/tunnel (QUIC against TLS/TCP):")
        print_ratios(tunnels["quic"], tunnels["tunnel"], legs)
        print(
            f"    CPU per datagram x{cpu_per_packet(tunnels['quic']) / max(1e-12, cpu_per_packet(tunnels['tunnel'])):.2f}"
        )
    for path, tunnel in tunnels.items():
        if direct is None:
            break
        print(f"  ratios {path}/direct:")
        print_ratios(tunnel, direct, legs)
        sent = tunnel["sent"] + (tunnel["sent"] if echo else 0)
        total_loss = loss(sent, tunnel["fwd_received"] + tunnel["back_received"])
        added = max(percentile(tunnel[lat], 0.99) - percentile(direct[lat], 0.99) for _, s, _, lat in legs if s)
        ok = total_loss == 0 and added < 0.001
        print(
            f"  target (no loss, p99 added one-way latency < 1 ms): {'MET' if ok else 'NOT MET'} "
            f"(loss {100 * total_loss:.3f} %, worst p99 added {added * 1e6:.0f} us)"
        )
    if args.profile:
        for tunnel in tunnels.values():
            for path in tunnel["profiles"]:
                print("\n".join(summarize_profile(path)))


def print_ratios(tunnel: dict[str, Any], direct: dict[str, Any], legs: list[Any]) -> None:
    """
    Delivered rate and latency percentiles of C{tunnel} against C{direct}.
    """
    for key, sent_key, recv_key, lat in legs:
        parts = []
        if sent_key:
            ratio = (tunnel[recv_key] / tunnel["duration"]) / max(1e-9, direct[recv_key] / direct["duration"])
            parts.append(f"delivered pps {ratio:.3f}")
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            t, d = percentile(tunnel[lat], q), percentile(direct[lat], q)
            parts.append(f"{name} x{t / d:.1f} (+{(t - d) * 1e6:.0f} us)")
        print(f"    {key:8} " + ", ".join(parts))


def ramp(bench: Bench, args: argparse.Namespace, path: str) -> tuple[float, list[str]]:
    """
    Find the highest one-way rate with loss under the limit; return it and the log.
    """
    limit = args.loss_limit / 100
    lines = []

    def step(rate: float) -> tuple[bool | None, Any]:
        r = bench.run_phase(path, rate, args.step, echo=False)
        lost = loss(r["sent"], r["fwd_received"])
        achieved = r["sent"] / r["duration"]
        gen_limited = achieved < 0.98 * rate
        verdict = "generator-limited" if gen_limited else ("ok" if lost < limit else "LOSS")
        cpu = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["cpu"].items())
        m = r["machine"]
        cpu += f"; machine busy {100 * m['busy']:.0f}%, softirq {100 * m['softirq']:.0f}%, steal {100 * m['steal']:.0f}%"
        line = (
            f"  {path:6} {rate:9.0f}/s asked, {achieved:9.0f}/s sent, {r['fwd_received'] / r['duration']:9.0f}/s delivered, "
            f"loss {100 * lost:7.3f} %, p50 {percentile(r['fwd_lat'], .5) * 1e6:7.0f} us, "
            f"p99 {percentile(r['fwd_lat'], .99) * 1e6:8.0f} us  {verdict}  [{cpu}; {r['udp']}]"
        )
        print(line, flush=True)
        lines.append(line)
        # a generator-limited step cannot judge the rate: the search stops
        return (None if gen_limited else lost < limit), r

    found = bisect_ramp(step, args.ramp_start, args.ramp_max, args.ramp_factor, args.bisect, max_steps=40)
    if found.stopped:
        lines.append(f"  {path}: the load generator could not send faster; the result is a lower bound")
        print(lines[-1])
    return found.good, lines


def mode_ramp(bench: Bench, args: argparse.Namespace) -> None:
    print(
        f"ramp: one way (agent -> contact), {args.streams} streams, {args.size}-byte datagrams, "
        f"{args.step:g} s per step, loss limit {args.loss_limit} %, {'TLS' if args.tls else 'plaintext'}"
        + (", and the tunnel over QUIC" if args.quic else "")
    )
    results = {}
    if not args.skip_direct:
        bench.warm_up(bench.direct_dests())
        results["direct"], _ = ramp(bench, args, "direct")
    for path in bench.tunnel_paths:
        bench.warm_up(bench.tunnel_dests(path))
        results[path], _ = ramp(bench, args, path)
    for path, rate in results.items():
        print(f"  max one-way rate at < {args.loss_limit} % loss, {path}: {rate:.0f} pps")
    for path in bench.tunnel_paths:
        if "direct" in results and results["direct"] and results[path] is not None:
            print(f"  ratio {path}/direct: {results[path] / results['direct']:.3f}")


def mode_loadgen(bench: Bench, args: argparse.Namespace) -> None:
    """
    The load generator's own ceiling: unpaced sending to the sink, and paced
    at the highest rate that it still reaches.
    """
    bench.warm_up(bench.direct_dests())
    r = bench.run_phase("direct", 0, args.step, echo=False)
    print(
        f"loadgen: unpaced, one sender process over {args.streams} sockets: {r['sent'] / r['duration']:.0f} pps sent, "
        f"sink received {r['fwd_received'] / r['duration']:.0f} pps (loss {100 * loss(r['sent'], r['fwd_received']):.3f} %); "
        f"CPU {', '.join(f'{k} {100 * v:.0f} %' for k, v in r['cpu'].items())}"
    )


def senders_per_forward() -> int | None:
    """
    How many local senders C{spwm-agent} gives a channel on one
    C{--forward-udp} port by default (C{--max-forward-senders}, from
    C{spwm.forward.AgentForwarder}'s C{max_senders}): the datagrams of every
    further sender are dropped and counted.  C{None} if that parameter is
    gone.
    """
    import inspect

    sys.path.insert(0, ROOT)
    from spwm.forward import AgentForwarder

    param = inspect.signature(AgentForwarder).parameters.get("max_senders")
    return None if param is None or not isinstance(param.default, int) else param.default


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("fixed", "ramp", "loadgen"), default="fixed")
    p.add_argument("--tls", action="store_true", help="TLS between agent and contact point (default: --plaintext)")
    p.add_argument(
        "--quic", action="store_true", help="also run the tunnel over QUIC (a second agent, --udp-path only); implies --tls"
    )
    p.add_argument("--rate", type=float, default=20000, help="fixed: datagrams per second in total, both ways (default 20000)")
    p.add_argument("--streams", type=int, default=200, help="sender sockets = forward channels (default 200)")
    p.add_argument(
        "--forwards",
        type=int,
        help="UDP forwards on the agent; streams spread over them (default: as few as the agent's "
        "senders per forward allow, 1 up to 256 streams)",
    )
    p.add_argument("--size", type=int, default=172, help="datagram size in bytes (default 172: RTP + 160 bytes of G.711)")
    p.add_argument("--duration", type=float, default=10.0, help="fixed: seconds per path (default 10)")
    p.add_argument("--drain", type=float, default=0.5, help="seconds to wait for late datagrams after sending (default 0.5)")
    p.add_argument("--step", type=float, default=3.0, help="ramp: seconds per step (default 3)")
    p.add_argument("--ramp-start", type=float, default=10000)
    p.add_argument("--ramp-factor", type=float, default=1.25)
    p.add_argument("--ramp-max", type=float, default=500000)
    p.add_argument("--bisect", type=int, default=3, help="ramp: bisection steps after the first failure (default 3)")
    p.add_argument("--loss-limit", type=float, default=0.1, help="ramp: percent loss that fails a step (default 0.1)")
    p.add_argument("--one-way", action="store_true", help="fixed: --rate one way only, the target a sink (no echo)")
    p.add_argument("--skip-direct", action="store_true", help="skip the direct baseline")
    p.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more spwm-agent argument (repeatable), e.g. --agent-arg=--tunnel-connections --agent-arg=1",
    )
    p.add_argument("--profile", metavar="DIR", help="fixed: py-spy both halves during the tunnel run; files in DIR")
    p.add_argument("--idle", action="store_true", help="--profile: count idle samples too (time waiting in epoll)")
    p.add_argument("--max-time", type=float, default=600, help="stop everything after this many seconds (default 600)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, certificates)")
    args = p.parse_args(argv)
    if args.quic:
        args.tls = True
    if args.streams < 1 or args.streams > 65535 or args.size < PACKET.size:
        p.error(f"--streams must be 1..65535 and --size at least {PACKET.size}")
    per_forward = senders_per_forward()
    if args.forwards is None:
        args.forwards = math.ceil(args.streams / per_forward) if per_forward else 1
    elif args.forwards < 1:
        p.error("--forwards must be at least 1")
    elif per_forward and math.ceil(args.streams / args.forwards) > per_forward:
        p.error(
            f"--streams {args.streams} over --forwards {args.forwards} puts {math.ceil(args.streams / args.forwards)} "
            f"senders on one forward; the agent gives channels to at most {per_forward} senders per forward "
            f"(and drops the others' datagrams): use --forwards {math.ceil(args.streams / per_forward)} or more"
        )
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    sys.path.insert(0, ROOT)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(args.max_time))
    procs = Processes()
    workdir = tempfile.mkdtemp(prefix="spwm-bench-")
    status = 0
    try:
        print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; load average {os.getloadavg()[0]:.2f}")
        bench = Bench(args, procs, workdir)
        if args.mode != "loadgen":
            bench.start_tunnel()
            for line in bench.command_lines:
                print(f"  started: twistd -n --pidfile= {line}")
        {"fixed": mode_fixed, "ramp": mode_ramp, "loadgen": mode_loadgen}[args.mode](bench, args)
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}); stopping", file=sys.stderr)
        status = 130
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    finally:
        signal.alarm(0)
        sys.stdout.flush()
        procs.stop_all()
        if args.keep or status:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
