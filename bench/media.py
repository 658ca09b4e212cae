#!/usr/bin/env python3
"""
Benchmark: the RTP of N concurrent calls through an SPWM agent and contact
point (real calls: SIP INVITE/200/ACK with SDP through both halves, so the
media relay sockets and the per-call tunnel channels are what is measured),
against the same load sent directly between the same sockets, in the same run.

Processes::

    LAN side                                                     operator side
    N RTP sockets ─UDP─> agent relay ══tunnel══> contact relay ─UDP─> N RTP sockets
                  <─────             <══════════               <─────
    (sender + receiver processes per direction)

    signaller: a SIP caller behind the agent (spwm.testing.phone's Phone, its
    RTP sockets replaced by the benchmark's) and a SIP responder as the
    operator's proxy (the contact point's --sip-proxy) that answers INVITEs
    with SDP naming the operator-side sockets.

Every call sends 172-byte RTP packets (12-byte header + 160 bytes of G.711
payload) at 50 packets per second in each direction, to the addresses the SDP
negotiated (the agent's relay port for the LAN side, the contact point's for
the operator side). The payload carries the phase, the call, a sequence
number and the C{time.monotonic()} of sending; C{CLOCK_MONOTONIC} is one clock
for all processes of the machine, so latencies are true one-way figures.
The direct baseline sends from the same sockets straight to each other.

Before the load, the tunnel is authorised as the operator's registrar would:
the caller's address-of-record is registered through the pair, and the
benchmark answers that REGISTER itself (see L{_common.register_through}).

Run from the repository's root::

    python3 bench/media.py                          # 500 calls (50,000 pps in total)
    python3 bench/media.py --calls 100,200,300,400,500,600   # a ramp; stops at the first failed step
    python3 bench/media.py --calls 500 --profile /tmp/prof   # py-spy both halves (pip install py-spy)
"""

from __future__ import annotations

import argparse
import array
import multiprocessing
import os
import socket
import struct
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    MEDIA_HIGH,
    MEDIA_LOW,
    Pair,
    Processes,
    cpu_seconds,
    free_port,
    machine_cpu,
    machine_usage,
    max_media_ports,
    percentile,
    register_through,
    run_bounded,
    start_profilers,
    udp_counters,
    wait_profilers,
)
from _load import child_setup, fmt_us, loss, paced_sender_main, receive_until  # noqa: E402

#: RTP header (V=2, PT 0, sequence, timestamp, SSRC), then our payload:
#: phase, call, sequence, send time.
PACKET = struct.Struct("!BBHIIBHId")
SIZE = 172
RATE_PER_CALL = 50
SOCKET_BUFFER = 1024 * 1024
USER = "caller"
DOMAIN = "bench.spwm.test"

_monotonic = time.monotonic


# -- the load ----------------------------------------------------------------


def rtp_filler(phase: int) -> Callable[[bytearray, int, int], None]:
    """
    The L{paced_sender_main} C{fill} of C{phase}: an RTP header (PT 0,
    sequence, timestamp, SSRC by call), then the phase, the call, the
    sequence and the send time.
    """
    pack_into = PACKET.pack_into
    monotonic = _monotonic

    def fill(buf: bytearray, i: int, seq: int) -> None:
        pack_into(buf, 0, 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, 0x5B000000 + i, phase, i, seq, monotonic())

    return fill


def receiver_main(socks: list[socket.socket], phase: int, until: float, conn: Any) -> None:
    """
    Read every socket until C{until}; report C{(count, duplicates, per-call
    counts, latency bytes, cpu)} for packets of C{phase}.
    """
    child_setup()
    unpack = PACKET.unpack_from
    size = PACKET.size
    lat = array.array("d")
    add = lat.append
    sent_at = array.array("d")
    add_sent = sent_at.append
    per_call = array.array("l", [0] * len(socks))
    highest = [-1] * len(socks)
    count = dups = 0

    def packet(buf: bytearray, n: int, now: float) -> None:
        nonlocal count, dups
        if n < size:
            return
        fields = unpack(buf)
        if fields[5] != phase:
            return
        call, seq = fields[6], fields[7]
        if seq == highest[call]:
            dups += 1
            return
        highest[call] = seq
        count += 1
        per_call[call] += 1
        add(now - fields[8])
        add_sent(fields[8])

    cpu0 = time.process_time()
    receive_until(socks, until, packet)
    conn.send((count, dups, per_call.tobytes(), lat.tobytes(), sent_at.tobytes(), time.process_time() - cpu0))


# -- the signaller (SIP, in its own process with a Twisted reactor) ------------


class _FixedPort:
    """
    Stands in for a call's Twisted RTP port: the benchmark owns the socket.
    """

    def __init__(self, port: int) -> None:
        self._port = port

    def getHost(self) -> Any:
        class _Host:
            port = self._port

        return _Host()

    def write(self, data: bytes, addr: Any) -> None:  # pragma: no cover - never sends
        pass

    def stopListening(self) -> None:
        return None


DIGEST = (
    'Digest username="{user}", realm="{domain}", nonce="bench", uri="sip:{domain}", '
    'response="00112233445566778899aabbccddeeff", cnonce="c", nc=00000001, qop=auth'
)


def signaller_main(
    agent_sip: tuple[str, int], responder_port: int, lan_ports: list[int], op_ports: list[int], conn: Any, cipher: bool = False
) -> None:
    """
    The SIP side of the benchmark. Commands on C{conn}: C{("calls", n)} sets
    up calls until there are C{n} and answers with every call's
    C{(lan_port, agent_relay, op_port, contact_relay)}; C{("hangup",)} sends
    BYE in every call and answers with C{(ok, failed)}; C{("exit",)}.
    """
    child_setup()
    from twisted.internet import defer, reactor, task

    from spwm.testing.phone import Phone

    class BenchPhone(Phone):
        def __init__(self, *a: Any, ports: list[int], bind: int = 0, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self._free = list(ports)
            self._bind = bind

        def start(self) -> None:
            self._sip_port = self.reactor.listenUDP(self._bind, self, interface=self.address)
            self._sip_port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)

        def _bind_media(self, call: Any) -> Any:
            call.port = _FixedPort(self._free.pop(0))
            return defer.succeed(None)

        def _request_received(self, message: Any, addr: tuple[str, int]) -> None:
            # The responder is the operator's registrar too (ciphering runs).
            if message.method == "REGISTER":
                contact = message.get("contact") or ""
                self._reply(message, addr, 200, "OK", to_tag="reg", extra=[("Contact", f"{contact};expires=3600")])
                return
            super()._request_received(message, addr)

    answered: dict[str, Any] = {}
    caller = BenchPhone(reactor, USER, DOMAIN, agent_sip, ports=lan_ports)
    responder = BenchPhone(reactor, "operator", DOMAIN, ("127.0.0.1", 9), ports=op_ports, bind=responder_port)
    responder.on_incoming = lambda call: answered.__setitem__(call.call_id, call)
    caller.start()
    responder.start()
    registered: Any = defer.succeed(None)
    if cipher:
        # Register the caller's own flow with digest credentials: the halves
        # make the user's key and seal this flow's SIP and its calls' media.
        registered = defer.Deferred()
        reactor.callWhenRunning(
            lambda: caller.register(authorization=DIGEST.format(user=USER, domain=DOMAIN)).chainDeferred(registered)
        )
    calls: list[Any] = []
    errors: list[str] = []

    @defer.inlineCallbacks
    def setup(n: int) -> Any:
        yield registered
        sem = defer.DeferredSemaphore(25)

        def one() -> Any:
            d = caller.call("operator")
            d.addCallback(calls.append)
            d.addErrback(lambda f: errors.append(f.getErrorMessage()))
            return d

        yield defer.DeferredList([sem.run(one) for _ in range(n - len(calls))])
        out = []
        for call in calls:
            peer = answered.get(call.call_id)
            if peer is None:
                errors.append(f"no answered call for Call-ID {call.call_id}")
                continue
            out.append((call.local_port, tuple(call.remote_media), peer.local_port, tuple(peer.remote_media)))
        return out

    @defer.inlineCallbacks
    def hangup() -> Any:
        sem = defer.DeferredSemaphore(25)
        results = yield defer.DeferredList([sem.run(caller.hang_up, c) for c in calls], consumeErrors=True)
        ok = sum(1 for success, r in results if success and r.status == 200)
        return ok, len(results) - ok

    busy = {"now": False}

    def poll() -> None:
        if busy["now"] or not conn.poll(0):
            return
        cmd = conn.recv()
        busy["now"] = True
        if cmd[0] == "calls":
            d = setup(cmd[1])
            d.addCallback(lambda out: conn.send((out, list(errors[:10]))))
        elif cmd[0] == "hangup":
            d = hangup()
            d.addCallback(lambda r: conn.send(r))
        else:
            d = defer.gatherResults([caller.stop(), responder.stop()])
            d.addBoth(lambda _: reactor.stop())
        d.addErrback(lambda f: conn.send(("error", f.getErrorMessage())))
        d.addBoth(lambda _: busy.__setitem__("now", False))

    task.LoopingCall(poll).start(0.02)
    reactor.run(installSignalHandlers=False)


# -- the benchmark -------------------------------------------------------------


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    s.bind(("127.0.0.1", 0))
    return s


def open_sockets(pid: int) -> int:
    """
    UDP sockets open in process C{pid}: the media sockets and the SIP
    listeners (C{/proc/PID/fd} matched with C{/proc/PID/net/udp}), not the
    tunnel's TCP connections, whose number C{--tunnel-connections auto}
    changes on its own.
    """
    try:
        udp: set[str] = set()
        for table in ("udp", "udp6"):
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                udp.update(line.split()[9] for line in f)
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return -1
    n = 0
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        n += link.startswith("socket:[") and link[8:-1] in udp
    return n


def pin(mode: str, pids: dict[str, int]) -> str:
    """
    Pin the halves (C{os.sched_setaffinity}) so that the load generator
    does not share a core with the half under test: C{contact} puts the
    contact point alone on CPU 0 and the agent, this process and every
    process it forks later (signaller, senders, receivers) on CPU 1;
    C{agent} the other way round; C{halves} one half per CPU, the load
    anywhere; C{none} leaves the scheduler alone.

    @return: the layout, for the report.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "none":
        return "no pinning"
    if len(cpus) < 2:
        raise RuntimeError(f"--pin {mode} needs two CPUs, this process may use {cpus}")
    first, second = cpus[0], cpus[1]
    if mode == "halves":
        os.sched_setaffinity(pids["contact"], {first})
        os.sched_setaffinity(pids["agent"], {second})
        return f"contact point on CPU {first}, agent on CPU {second}, load generator unpinned"
    alone, rest = ("contact", "agent") if mode == "contact" else ("agent", "contact")
    os.sched_setaffinity(pids[alone], {first})
    os.sched_setaffinity(pids[rest], {second})
    os.sched_setaffinity(0, {second})
    return f"{alone} alone on CPU {first}; {rest}, senders, receivers and signaller on CPU {second}"


def media_ports_for(calls: int) -> int:
    """
    Each half's media port range for C{calls} calls at once (2 streams'
    pairs a call, and room for the ports still held by the previous step).
    """
    return max(1000, 4 * calls + 200)


class Bench:
    """
    The sockets of both sides, the pair, the signaller, and one measured phase per call.
    """

    def __init__(self, args: argparse.Namespace, procs: Processes, workdir: str) -> None:
        self.args = args
        self.procs = procs
        self.max_calls = max(args.calls)
        self.lan = [udp_socket() for _ in range(self.max_calls)]
        self.op = [udp_socket() for _ in range(self.max_calls)]
        responder_port = free_port()
        self.pair = Pair(
            procs,
            workdir,
            ("127.0.0.1", responder_port),
            media_ports=media_ports_for(self.max_calls),
            tls=args.tls,
            extra=["--user-ciphering"] if args.user_ciphering else [],
        )
        self.pair.wait_up()
        self.pinning = pin(args.pin, self.pair.pids)
        if args.renice is not None:
            # diagnosis: does the load generator take the CPU from the halves?
            for pid in self.pair.pids.values():
                os.setpriority(os.PRIO_PROCESS, pid, args.renice)
        self.sockets_idle = {k: open_sockets(v) for k, v in self.pair.pids.items()}
        # With ciphering the caller phone registers from its own flow (with
        # digest credentials, so both halves make its key) in the signaller.
        self.registered = (
            "by the caller phone"
            if args.user_ciphering
            else register_through(self.pair.sip_listen, responder_port, USER, DOMAIN)
        )
        self.ctl, child = multiprocessing.Pipe()
        self.signaller = procs.fork(
            signaller_main,
            self.pair.sip_listen,
            responder_port,
            [s.getsockname()[1] for s in self.lan],
            [s.getsockname()[1] for s in self.op],
            child,
            args.user_ciphering,
        )
        self.calls: list[tuple[int, tuple[str, int], int, tuple[str, int]]] = []
        self.phase = 0

    def signal(self, *cmd: Any, timeout: float = 120.0) -> Any:
        self.ctl.send(cmd)
        if not self.ctl.poll(timeout):
            raise RuntimeError(f"the signaller did not answer {cmd[0]} within {timeout:g} s")
        return self.ctl.recv()

    def ensure_calls(self, n: int) -> float:
        """
        Set up calls until there are C{n}; the seconds it took.
        """
        start = time.monotonic()
        reply = self.signal("calls", n, timeout=60 + n * 0.5)
        if reply[0] == "error":
            raise RuntimeError(f"call set-up failed: {reply[1]}")
        calls, errors = reply
        if len(calls) < n:
            raise RuntimeError(f"only {len(calls)} of {n} calls set up; first errors: {errors}")
        by_port = {s.getsockname()[1]: i for i, s in enumerate(self.lan)}
        # calls in the order of our LAN sockets, so call i is socket i on both sides
        self.calls = sorted(calls, key=lambda c: by_port[c[0]])
        op_index = {s.getsockname()[1]: i for i, s in enumerate(self.op)}
        self.op_for = [op_index[c[2]] for c in self.calls]
        return time.monotonic() - start

    def dests(self, n: int, path: str) -> tuple[list[socket.socket], list[tuple[str, int]], list[socket.socket], list[tuple[str, int]]]:
        """
        Sockets and destinations of the first C{n} calls: LAN -> operator, operator -> LAN.
        """
        calls = self.calls[:n]
        lan = [self.lan[i] for i in range(n)]
        op = [self.op[self.op_for[i]] for i in range(n)]
        if path == "tunnel":
            return lan, [c[1] for c in calls], op, [c[3] for c in calls]
        return lan, [s.getsockname() for s in op], op, [s.getsockname() for s in lan]

    def run_phase(self, n: int, path: str, duration: float, profile: str | None = None) -> dict[str, Any]:
        """
        C{n} calls' RTP both ways for C{duration} s over C{path}.
        """
        self.phase = (self.phase + 1) % 250
        phase = self.phase
        lan, to_op, op, to_lan = self.dests(n, path)
        rate = n * RATE_PER_CALL
        drain = self.args.drain
        pids = self.pair.pids if path == "tunnel" else {}
        cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
        udp0 = udp_counters()
        mach0 = machine_cpu()
        start = time.monotonic()
        until = start + duration + drain + 0.2
        conns = {}
        workers = []
        for name, socks in (("at_op", op), ("at_lan", lan)):
            a, b = multiprocessing.Pipe()
            conns[name] = a
            workers.append(self.procs.fork(receiver_main, socks, phase, until, b))
        time.sleep(0.1)
        for name, socks, dests in (("from_lan", lan, to_op), ("from_op", op, to_lan)):
            a, b = multiprocessing.Pipe()
            conns[name] = a
            workers.append(self.procs.fork(paced_sender_main, socks, dests, SIZE, rtp_filler(phase), rate, duration, b))
        spies = start_profilers(self.procs, self.pair, profile, f"{n}calls", duration - 1) if profile and pids else []
        res = {}
        for name in ("from_lan", "from_op", "at_op", "at_lan"):
            if not conns[name].poll(duration + drain + 30):
                raise RuntimeError(f"{name} did not report")
            res[name] = conns[name].recv()
        for w in workers:
            w.join(5)
        wall = time.monotonic() - start
        cpu = {k: (cpu_seconds(v) - cpu0[k]) / wall for k, v in pids.items()}
        mach = machine_usage(mach0, machine_cpu())
        udp1 = udp_counters()
        out: dict[str, Any] = {"path": path, "calls": n, "rate": rate, "cpu": cpu, "machine": mach}
        for direction, s_key, r_key in (("forward", "from_lan", "at_op"), ("return", "from_op", "at_lan")):
            sent, failed, elapsed, s_cpu = res[s_key]
            count, dups, per_b, lat_b, sent_b, r_cpu = res[r_key]
            per = array.array("l")
            per.frombytes(per_b)
            lat = array.array("d")
            lat.frombytes(lat_b)
            sent_at = array.array("d")
            sent_at.frombytes(sent_b)
            out[direction] = {
                "episodes": episodes(sent_at, lat, self.args.p99_limit / 1000),
                "sent": sent,
                "send_failed": failed,
                "elapsed": elapsed,
                "received": count,
                "dups": dups,
                "silent_calls": sum(1 for x in per if x == 0),
                "lat": sorted(lat),
            }
            cpu[f"sender {direction}"] = s_cpu / elapsed
            cpu[f"receiver {direction}"] = r_cpu / (duration + drain)
        out["udp"] = {k: udp1.get(k, 0) - udp0.get(k, 0) for k in ("RcvbufErrors", "SndbufErrors", "InErrors")}
        out["profiles"] = wait_profilers(spies) if spies else []
        return out


# -- reports -----------------------------------------------------------------


def episodes(sent_at: Any, lat: Any, threshold: float, gap: float = 0.05) -> list[tuple[float, float, float]]:
    """
    Periods when packets took longer than C{threshold}: C{(start, length,
    worst latency)}, start in seconds from the first packet; packets closer
    than C{gap} seconds belong to one episode.
    """
    if not sent_at:
        return []
    t0 = min(sent_at)
    slow = sorted((t - t0, l) for t, l in zip(sent_at, lat) if l > threshold)
    out: list[list[float]] = []
    for t, l in slow:
        if out and t - (out[-1][0] + out[-1][1]) <= gap:
            out[-1][1] = t - out[-1][0]
            out[-1][2] = max(out[-1][2], l)
        else:
            out.append([t, 0.0, l])
    return [tuple(e) for e in out]  # type: ignore[misc]


def describe_episodes(r: dict[str, Any], limit: float) -> list[str]:
    """
    When the slow packets (over C{limit}) were sent: how many episodes, how
    long, how far apart (a regular gap points to a timer; an irregular one to
    scheduling).
    """
    lines = []
    for d in ("forward", "return"):
        eps = r[d]["episodes"]
        if not eps:
            continue
        starts = [e[0] for e in eps]
        gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
        shown = ", ".join(f"{s:.2f}s+{l * 1e3:.0f}ms({w * 1e3:.0f})" for s, l, w in eps[:12])
        lines.append(
            f"    {d}: {len(eps)} episodes of packets slower than {limit * 1e3:g} ms, "
            f"{sum(e[1] for e in eps) * 1e3:.0f} ms in all; gaps between them p50 "
            f"{percentile(gaps, .5):.2f} s; start+length(worst): {shown}{' ...' if len(eps) > 12 else ''}"
        )
    return lines


def describe(r: dict[str, Any]) -> list[str]:
    lines = [f"  {r['path']:6} {r['calls']} calls, {r['rate']} pps asked each way"]
    for d in ("forward", "return"):
        x = r[d]
        lat = x["lat"]
        lines.append(
            f"    {d:7} (LAN -> op)  " if d == "forward" else f"    {d:7} (op -> LAN)  "
        )
        lines[-1] += (
            f"sent {x['sent'] / x['elapsed']:7.0f}/s, delivered {x['received'] / x['elapsed']:7.0f}/s, "
            f"loss {100 * loss(x['sent'], x['received']):6.3f} %, dup {x['dups']}, silent calls {x['silent_calls']}; "
            f"latency us p50 {fmt_us(percentile(lat, .5))} p99 {fmt_us(percentile(lat, .99))} max {fmt_us(lat[-1] if lat else float('nan'))}"
        )
    cpu = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["cpu"].items())
    m = r["machine"]
    # The machine's busy time not spent by the benchmark's own processes:
    # someone else's work (other containers on the same VM show neither in
    # steal nor in our process list), the kernel's softirq work for
    # loopback, and whatever runs unseen.  A run with much of it is not a
    # run on a quiet machine.
    others = m["busy"] * (os.cpu_count() or 1) - sum(r["cpu"].values())
    lines.append(
        f"    CPU of one core: {cpu}; machine busy {100 * m['busy']:.0f}%, softirq {100 * m['softirq']:.0f}%, "
        f"steal {100 * m['steal']:.1f}%, not the benchmark's {100 * max(others, 0.0):.0f}% of a core; kernel UDP errors {r['udp']}"
    )
    return lines


def compare(direct: dict[str, Any], tunnel: dict[str, Any], loss_limit: float, p99_limit: float) -> tuple[bool, list[str]]:
    """
    The ratios and the verdict against the target.
    """
    lines = ["    ratios tunnel/direct:"]
    worst_loss = 0.0
    worst_added = 0.0
    for d in ("forward", "return"):
        t, x = tunnel[d], direct[d]
        pps = (t["received"] / t["elapsed"]) / max(1e-9, x["received"] / x["elapsed"])
        parts = [f"delivered pps {pps:.3f}"]
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            a, b = percentile(t["lat"], q), percentile(x["lat"], q)
            parts.append(f"{name} x{a / b:.1f} (+{(a - b) * 1e6:.0f} us)")
        lines.append(f"      {d:7} " + ", ".join(parts))
        worst_loss = max(worst_loss, loss(t["sent"], t["received"]))
        worst_added = max(worst_added, percentile(t["lat"], 0.99) - percentile(x["lat"], 0.99))
    silent = tunnel["forward"]["silent_calls"] + tunnel["return"]["silent_calls"]
    ok = worst_loss < loss_limit and worst_added < p99_limit and silent == 0
    lines.append(
        f"    target (loss < {100 * loss_limit:g} %, p99 added < {p99_limit * 1e3:g} ms, no silent call): "
        f"{'MET' if ok else 'NOT MET'} (worst loss {100 * worst_loss:.3f} %, worst p99 added {worst_added * 1e3:.2f} ms, silent {silent})"
    )
    return ok, lines


def run(args: argparse.Namespace, procs: Processes, workdir: str) -> int:
    bench = Bench(args, procs, workdir)
    print(f"media: {'TLS' if args.tls else 'plaintext'} tunnel, {SIZE}-byte RTP at {RATE_PER_CALL} pps per call each way, {args.duration:g} s per path")
    for line in bench.pair.command_lines:
        print(f"  started: {line}")
    print(f"  REGISTER sip:{USER}@{DOMAIN} through the pair (answered by the bench as the registrar): {bench.registered}")
    print(f"  UDP sockets open before any call: {bench.sockets_idle}", flush=True)
    print(f"  pinning: {bench.pinning}", flush=True)
    summary = []
    status = 0
    for n in args.calls:
        took = bench.ensure_calls(n)
        print(
            f"\n{n} calls set up ({took:.1f} s for the new ones); UDP sockets open: "
            f"{ {k: open_sockets(v) for k, v in bench.pair.pids.items()} }",
            flush=True,
        )
        # warm up: latch every relay and fill every cache, results discarded
        bench.run_phase(n, "tunnel", 1.0)
        direct = None if args.skip_direct else bench.run_phase(n, "direct", args.duration)
        tunnel = bench.run_phase(n, "tunnel", args.duration, profile=args.profile)
        for r in (direct, tunnel):
            if r is not None:
                print("\n".join(describe(r)))
        if args.episodes:
            print("\n".join(describe_episodes(tunnel, args.p99_limit / 1000)))
        ok = None
        if direct is not None:
            ok, lines = compare(direct, tunnel, args.loss_limit / 100, args.p99_limit / 1000)
            print("\n".join(lines))
        for line in tunnel["profiles"]:
            print(line)
        summary.append((n, ok, tunnel))
        sys.stdout.flush()
        if ok is False and not args.keep_going:
            break
    ok, failed = bench.signal("hangup", timeout=120)
    time.sleep(args.release_wait)
    after = {k: open_sockets(v) for k, v in bench.pair.pids.items()}
    leak = {k: after[k] - bench.sockets_idle[k] for k in after}
    print(f"\nBYE: {ok} answered 200, {failed} not; UDP sockets open {args.release_wait:g} s later: {after} (before any call: {bench.sockets_idle}, leaked {leak})")
    if any(v > 0 for v in leak.values()):
        print("  LEAK: media sockets still open after every call ended")
        status = 1
    bench.ctl.send(("exit",))
    bench.signaller.join(10)
    print("\nsummary (tunnel):")
    for n, ok, t in summary:
        f, r = t["forward"], t["return"]
        print(
            f"  {n:5} calls {2 * n * RATE_PER_CALL:6} pps: loss {100 * loss(f['sent'], f['received']):.3f} % / {100 * loss(r['sent'], r['received']):.3f} %, "
            f"p99 {percentile(f['lat'], .99) * 1e3:.2f} / {percentile(r['lat'], .99) * 1e3:.2f} ms, "
            f"agent {100 * t['cpu']['agent']:.0f} %, contact {100 * t['cpu']['contact']:.0f} %  "
            + ("" if ok is None else ("target met" if ok else "TARGET NOT MET"))
        )
    for line, count in sorted(bench.pair.warning_counts().items(), key=lambda kv: -kv[1])[:12]:
        print(f"  log x{count}: {line}")
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", default="500", help="concurrent calls, or a comma-separated ramp (default 500)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of RTP per path and step (default 10)")
    p.add_argument("--drain", type=float, default=0.5, help="seconds to wait for late packets (default 0.5)")
    p.add_argument("--tls", action="store_true", help="TLS between agent and contact point (default: --plaintext)")
    p.add_argument("--user-ciphering", action="store_true", help="per-user ciphering on both halves (the caller registers with digest credentials)")
    p.add_argument("--skip-direct", action="store_true", help="no direct baseline (no ratios, no verdict)")
    p.add_argument("--loss-limit", type=float, default=0.1, help="percent loss that fails the target (default 0.1)")
    p.add_argument("--p99-limit", type=float, default=5.0, help="p99 added latency that fails the target, ms (default 5)")
    p.add_argument("--episodes", action="store_true", help="print when the packets slower than --p99-limit were sent (tunnel)")
    p.add_argument("--pin", choices=["none", "contact", "agent", "halves"], default="none", help="pin with sched_setaffinity: contact (or agent) alone on one CPU, everything else on the other; halves: one half per CPU (default none)")
    p.add_argument("--renice", type=int, metavar="N", help="run both halves at nice N (e.g. -10, needs root): is it scheduling?")
    p.add_argument("--keep-going", action="store_true", help="ramp: go on after a step misses the target")
    p.add_argument("--release-wait", type=float, default=3.0, help="seconds after the BYEs before counting sockets (default 3)")
    p.add_argument("--profile", metavar="DIR", help="py-spy both halves during every tunnel phase; files in DIR")
    p.add_argument("--max-time", type=float, default=900, help="stop everything after this many seconds (default 900)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = p.parse_args(argv)
    try:
        args.calls = [int(x) for x in args.calls.split(",") if x.strip()]
    except ValueError:
        p.error("--calls: numbers separated by commas")
    if not args.calls or min(args.calls) < 1 or args.calls != sorted(args.calls):
        p.error("--calls: positive and increasing")
    if media_ports_for(max(args.calls)) > max_media_ports(2):
        p.error(f"--calls: at most {(max_media_ports(2) - 200) // 4} (each half binds 4 media ports a call between {MEDIA_LOW} and {MEDIA_HIGH})")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    return run_bounded(lambda procs, workdir: run(args, procs, workdir), args.max_time, args.keep)


if __name__ == "__main__":
    sys.exit(main())
