#!/usr/bin/env python3
"""
Two contact-point workers on two cores against one (issue 15): the
largest number of concurrent G.711 calls each relays with loss < 0.1 % and
p99 added latency < 5 ms both ways, and their ratio.

C{bench/contact_media.py} loads one worker from a Python loop that needs
most of a core at 500 calls; two workers would need two such cores, and
the machine has two in all.  Here the control plane stays in Python (the
lean agent of C{contact_media.py}: preface, hello, REGISTER, the media
channels' C{open}, INVITE/200/ACK in SIP frames, the operator's side of
SIP) and the data plane is a small C program (C{bench/dataplane.c},
compiled at run time with C{cc -O2} into the work directory) that takes
the set-up sockets over (inherited descriptors): DATAGRAM frames into
the tunnels, the operator side's UDP sockets that receive and answer
(sendmmsg, recvmmsg, epoll, everything due sent once per tick of 1 ms),
timestamps and one-way latency histograms.

    generator (unpinned)                   spwm-contact --workers W       generator
    C data plane ══tunnels (plaintext)══> worker i (CPU i) ─UDP─> operator-side sockets
                 <═════════════════════                  <─UDP─

The tunnels are B{plaintext} (C{--plaintext}): TLS in the C program
would mean taking a TLS session over from Python's C{ssl}; what is asked
is the ratio between one worker and two, and each worker's TLS costs it
alike.  Every worker gets C{--sessions-per-worker} lean-agent sessions
(default 2), each connected to that worker's own port (the C{--listen}
port + 1 + its index, C{docs/operations.md}, "Workers"; with one worker
the C{--listen} port); the calls go round-robin over the sessions, so
each worker relays the same share, and each worker's status says how
many channels it holds (checked against the share).

Pinning (C{--pin workers}, the default): worker I on CPU I (with one
worker: CPU 0), the supervisor and the generator not pinned, so with two
workers the generator shares the two cores with them, as it would any
other work of the machine; C{--pin split}: one worker on CPU 0 and the
generator on CPU 1 (C{contact_media.py}'s layout; for one worker only);
C{--pin none}.

The baseline in the same step ("direct"): the same program sends the
same packets at the same rates between the same sessions' UDP sockets
(no contact point), so its own scheduling and the kernel's loopback are
in both; "added" is relay minus direct at the same percentile.  It is
also the generator's ceiling: there it sends and receives every packet
as UDP both ways, more work than in the relay phase.  C{--ceiling} runs
that alone, without a contact point.

    python3 bench/workers_scale.py                                   # 2 rounds, 1 and 2 workers alternating
    python3 bench/workers_scale.py --per-worker 450,500,550 --rounds 3 --duration 8
    python3 bench/workers_scale.py --workers 2 --per-worker 500       # one worker count only
    python3 bench/workers_scale.py --ceiling 1000,1500,2000           # the generator alone

Every process is ended by PID at the end, on Ctrl-C and after --max-time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    Processes,
    cpu_model,
    cpu_seconds,
    free_port,
    machine_cpu,
    machine_usage,
    raise_nofile,
    run_bounded,
)
from contact_media import PERIOD, SOCKET_BUFFER, Failed, LeanAgent, fmt_ms, start_contact  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DRAIN = 0.5


class NoCompiler(Exception):
    """
    There is no C compiler to build the data plane with.
    """


def build_dataplane(workdir: str) -> str:
    """
    Compile C{dataplane.c} into C{workdir}; the program's path.

    @raise NoCompiler: no C{cc}, C{gcc} or C{clang} on C{PATH}.
    @raise Failed: it did not compile.
    """
    cc = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    if cc is None:
        raise NoCompiler("no C compiler (cc, gcc or clang) on PATH: the data plane is C (install gcc, or set CC)")
    out = os.path.join(workdir, "dataplane")
    built = subprocess.run([cc, "-O2", "-o", out, os.path.join(HERE, "dataplane.c")], capture_output=True, text=True, check=False)
    if built.returncode:
        first = (built.stderr.strip().splitlines() or ["no output"])[0]
        raise Failed(f"{cc} could not compile bench/dataplane.c: {first}")
    return out


def hist_percentile(hist: list[list[int]], q: float) -> float:
    """
    The C{q} quantile, in seconds, of a histogram of C{[upper bound in
    microseconds, count]} bins in ascending order (as L{_common.percentile}
    indexes a sorted list), or NaN if empty.
    """
    total = sum(c for _, c in hist)
    if not total:
        return float("nan")
    index = min(total - 1, int(q * total))
    seen = 0
    for upper, count in hist:
        seen += count
        if seen > index:
            return upper / 1e6
    return hist[-1][0] / 1e6


def ksoftirqd() -> list[int]:
    """
    The PIDs of the kernel's C{ksoftirqd/N} threads, by CPU (the network's
    receive work when it is deferred from interrupts to a thread).
    """
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if name.startswith("ksoftirqd/"):
                found[int(name.split("/")[1])] = int(entry)
    return [found[k] for k in sorted(found)]


#: the kernel's counters worth a look when a step fails (TcpExt, Udp)
KERNEL_COUNTERS = (
    "TCPTimeouts", "TCPLossProbes", "TCPBacklogDrop", "TCPRcvQDrop", "TCPZeroWindowDrop", "TCPToZeroWindowAdv",
    "PruneCalled", "TCPRcvCollapsed", "TCPOFOQueue", "RcvbufErrors", "SndbufErrors",
)  # fmt: skip


def kernel_counters() -> dict[str, int]:
    """
    The host-wide TcpExt and Udp counters (C{/proc/net/netstat}, C{/proc/net/snmp}).
    """
    out: dict[str, int] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2]):
            kind = names.split(":")[0]
            if kind in ("TcpExt", "Udp"):
                out.update({k: int(v) for k, v in zip(names.split()[1:], values.split()[1:])})
    return out


def all_cpu(exclude: set[int]) -> dict[int, float]:
    """
    CPU seconds so far of every process on the machine but C{exclude}
    (kernel threads too), by PID.
    """
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in exclude:
            out[int(entry)] = cpu_seconds(int(entry))
    return out


def others_share(before: dict[int, float], after: dict[int, float], wall: float) -> float:
    """
    The CPU (share of one core) that the processes alive at both
    readings used between them.
    """
    return sum(after[p] - before[p] for p in before.keys() & after.keys()) / wall


def episodes(slot_max_us: list[int], limit_ms: float = 5.0) -> str:
    """
    The stretches of a phase whose packets took over C{limit_ms} (by
    100 ms of sending time), as text: C{"1.2-1.5 s (max 430 ms), ..."}.
    """
    out = []
    start = None
    worst = 0
    for i, us in enumerate([*slot_max_us, 0]):
        if us > limit_ms * 1000:
            start = i if start is None else start
            worst = max(worst, us)
        elif start is not None:
            out.append(f"{start / 10:.1f}-{i / 10:.1f} s (max {worst / 1000:.0f} ms)")
            start, worst = None, 0
    return ", ".join(out) or "none"


# -- the data plane ------------------------------------------------------------


class Session:
    """
    The sockets of one session the data plane drives: its tunnel (or
    anything, for the direct path alone), the operator side's socket and
    the baseline's other end.
    """

    def __init__(self, tunnel: socket.socket, op: socket.socket, lan: socket.socket) -> None:
        self.tunnel, self.op, self.lan = tunnel, op, lan
        self.pending = b""  # tunnel bytes read but not parsed yet


def dataplane(
    binary: str,
    sessions: list[Session],
    calls: list[tuple[int, int, int]],
    path: str,
    duration: float,
    phase: int,
    seq: bool,
    base: int,
    timeout: float,
    tick_us: int = 1000,
    procs: Processes | None = None,
) -> dict[str, Any]:
    """
    Run the C data plane over C{sessions} for one phase; its JSON result
    (each session's unparsed tunnel bytes in C{rest}).

    @param calls: per call C{(session index, channel, relay port)}.
    @raise Failed: the program failed (its line) or overran C{timeout}.
    """
    lines = [
        f"path {path} duration {duration} tick_us {tick_us} phase {phase} seq {int(seq)} base {base} drain {DRAIN}",
        f"sessions {len(sessions)}",
    ]
    fds: list[int] = []
    for s in sessions:
        lines.append(
            f"{s.tunnel.fileno()} {s.op.fileno()} {s.lan.fileno()} {s.op.getsockname()[1]} {s.lan.getsockname()[1]}"
            f" {s.pending.hex() or '-'}"
        )
        fds += [s.tunnel.fileno(), s.op.fileno(), s.lan.fileno()]
    lines.append(f"calls {len(calls)}")
    lines += [f"{s} {channel} {port}" for s, channel, port in calls]
    proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=fds)
    if procs is not None:
        procs.popen.append(proc)  # ended by PID with the rest on Ctrl-C or --max-time
    try:
        out, err = proc.communicate(("\n".join(lines) + "\n").encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise Failed(f"the data plane did not finish within {timeout:g} s") from None
    if procs is not None:
        procs.popen.remove(proc)
    if proc.returncode:
        raise Failed((err.decode(errors="replace").strip().splitlines() or [f"the data plane exited with status {proc.returncode}"])[-1])
    result: dict[str, Any] = json.loads(out)
    for d in ("forward", "return"):
        r = result[d]
        r["loss"] = max(0.0, 1 - r["received"] / max(r["sent"], 1))
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            r[name] = hist_percentile(r["hist"], q)
        r["max"] = r["max_us"] / 1e6
    return result


# -- the contact point and its workers -----------------------------------------


def children(pid: int) -> list[int]:
    """
    The PIDs of process C{pid}'s children.
    """
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return out


def worker_index(pid: int) -> int | None:
    """
    A worker's index from its environment (C{SPWM_WORKER=INDEX/COUNT/PARENT}).
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"SPWM_WORKER="):
                    return int(item.split(b"=", 1)[1].split(b"/")[0])
    except (OSError, ValueError):
        pass
    return None


def status(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as reply:
            return dict(json.load(reply))
    except (OSError, ValueError):
        return {}


def wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise Failed(f"{what} did not listen on port {port} within {timeout:g} s") from None
            time.sleep(0.1)


class Contact:
    """
    A C{twistd -n spwm-contact --workers W --plaintext} with its workers
    found (by PID and index) and pinned as C{pin} says.
    """

    def __init__(self, procs: Processes, logdir: str, workers: int, args: argparse.Namespace, sip_port: int) -> None:
        self.workers = workers
        self.status_port = free_port()
        while self.status_port + workers > 65535:
            self.status_port = free_port()
        ns = argparse.Namespace(
            calls=[workers * max(args.per_worker)], media_low=args.media_low, sip_burst=0, status_port=self.status_port,
            contact_arg=["--workers", str(workers), *args.contact_arg],
            cprofile=args.cprofile if workers == 1 else None, pin=False,
        )  # fmt: skip
        self.server, self.port = start_contact(procs, logdir, ns, sip_port, [])
        self.procs = procs
        if workers == 1:
            self.ports = [self.port]
            pids = {0: self.server.pid}
        else:
            self.ports = [self.port + 1 + i for i in range(workers)]
            for i, port in enumerate(self.ports):
                wait_port(port, 20, f"worker {i}")
            pids = {}
            for pid in children(self.server.pid):
                index = worker_index(pid)
                if index is not None:
                    pids[index] = pid
            if sorted(pids) != list(range(workers)):
                raise Failed(f"found workers {sorted(pids)} of {workers} among the contact point's processes")
        self.pids = [pids[i] for i in range(workers)]
        self.pinned: list[str] = []
        if args.pin in ("workers", "split"):
            for i, pid in enumerate(self.pids):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    os.sched_setaffinity(int(tid), {i})
                self.pinned.append(f"worker {i} on CPU {i}")

    def cpu(self) -> list[float]:
        """
        CPU seconds so far: each worker's, then the supervisor's (0 with one worker).
        """
        return [cpu_seconds(p) for p in self.pids] + [cpu_seconds(self.server.pid) if self.workers > 1 else 0.0]

    def calls(self) -> list[Any]:
        """
        Each worker's calls in progress by its status (C{None} when it cannot be read).
        """
        return [(status(self.status_port + i).get("calls") or {}).get("in_progress") for i in range(self.workers)]

    def loops(self) -> list[dict[str, Any]]:
        """
        Each worker's view of its own lateness (its status's C{loop}).
        """
        return [dict(status(self.status_port + i).get("loop") or {}) for i in range(self.workers)]

    def stop(self) -> None:
        if self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(5)
        self.procs.popen.remove(self.server)


# -- the benchmark -------------------------------------------------------------


class Bench:
    def __init__(self, procs: Processes, workdir: str, args: argparse.Namespace, binary: str) -> None:
        self.procs, self.workdir, self.args, self.binary = procs, workdir, args, binary
        self.phase = 0
        self.softirq_pids = ksoftirqd()

    def run_workers(self, workers: int, round_: int) -> dict[str, Any]:
        """
        One ramp with C{workers} workers: the largest call count that passed, and every step.
        """
        args = self.args
        sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sip.bind(("127.0.0.1", 0))
        sip.setblocking(False)
        logdir = os.path.join(self.workdir, f"round{round_ + 1}-workers{workers}")
        os.makedirs(logdir)
        contact = Contact(self.procs, logdir, workers, args, sip.getsockname()[1])
        agents: list[LeanAgent] = []
        by_call_id: dict[str, dict[str, Any]] = {}
        steps: list[dict[str, Any]] = []
        try:
            for k in range(workers * args.sessions_per_worker):
                port = contact.ports[k % workers]
                agent = LeanAgent(port, None, True, 0, user=f"caller{k}", sip=sip, by_call_id=by_call_id)
                agent.contact_pid = contact.pids[k % workers]
                if args.tunnel_rcvbuf:
                    # the generator's end only: on loopback the kernel's autotuning keeps it at tcp_rmem's 128 kB
                    agent.tunnel.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.tunnel_rcvbuf)
                agent.register()
                resume = (agent.welcome or {}).get("resume_port")
                if workers > 1 and resume != port:
                    raise Failed(f"session {k} connected to port {port} and its welcome names {resume}: not its worker")
                agents.append(agent)
            where = "; ".join(contact.pinned) or "nothing pinned"
            if args.pin == "split":
                os.sched_setaffinity(0, {1})
                where += ", the generator on CPU 1"
            else:
                os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
                where += ", the generator and supervisor not pinned"
            print(f"\nround {round_ + 1}, {workers} worker(s): {len(agents)} sessions (plaintext), {where}", flush=True)
            for per in args.per_worker:
                n = per * workers
                step = self.step(contact, agents, n)
                steps.append(step)
                if not step["ok"] and not args.keep_going:
                    break
            hung = sum(a.hang_up(30) for a in agents)
            print(f"  hung up: {hung} of {sum(len(a.calls) for a in agents)} BYEs answered 200", flush=True)
        finally:
            for a in agents:
                for s in (a.tunnel, a.op, a.lan):
                    s.close()
            contact.stop()
            sip.close()
        passed = [s["calls"] for s in steps if s["ok"]]
        return {"workers": workers, "round": round_, "largest": max(passed) if passed else 0, "steps": steps}

    def step(self, contact: Contact, agents: list[LeanAgent], n: int) -> dict[str, Any]:
        count = len(agents)
        t = time.monotonic()
        for i, a in enumerate(agents):
            a.set_up(len(range(i, n, count)), timeout=30 + n * 0.05)
        setup = time.monotonic() - t
        for a in agents:
            a.until(a.flush, 10, "writing to the tunnel")
            a.wait(0.2)  # what the set-up's last answers brought
        held = contact.calls()
        calls = []
        for g in range(n):
            call = agents[g % count].calls[g // count]
            calls.append((g % count, call["channel"], call["relay"]))
        rows = {}
        for path in ("direct", "relay"):
            rows[path] = self.phase_run(contact, agents, calls, path)
        relay, direct = rows["relay"], rows["direct"]
        added = (relay["forward"]["p99"] - direct["forward"]["p99"], relay["return"]["p99"] - direct["return"]["p99"])
        ok = relay["forward"]["loss"] < 0.001 and relay["return"]["loss"] < 0.001 and max(added) < 0.005
        step = {"calls": n, "setup": setup, "relay": relay, "direct": direct, "added": added, "ok": ok, "held": held}
        wcpu = " + ".join(f"{100 * c:.0f}" for c in relay["workers_cpu"])
        # each worker relays its share both ways: 2 datagrams per call and 20 ms
        per = n / contact.workers * 2 / PERIOD
        step["us_per_datagram"] = [1e6 * c / per for c in relay["workers_cpu"]]
        per_datagram = " / ".join(f"{u:.1f}" for u in step["us_per_datagram"])
        print(
            f"  {n} calls (set up in {setup:.1f} s; calls per worker by their status {held}):"
            f" loss {100 * relay['forward']['loss']:.3f} / {100 * relay['return']['loss']:.3f} %,"
            f" p99 added {fmt_ms(added[0])} / {fmt_ms(added[1])} ms; workers {wcpu} % of a core ({per_datagram} us per datagram)"
            f" (supervisor {100 * relay['supervisor_cpu']:.0f} %), generator {100 * relay['generator_cpu']:.0f} %"
            f" (direct: {100 * direct['generator_cpu']:.0f} %), other processes {100 * relay['others']:.0f} %"
            f" (direct {100 * direct['others']:.0f} %), steal {100 * relay['steal']:.1f} %: {'PASS' if ok else 'FAIL'}"
            + (" [other work on the machine took a tenth of a core or more: figures disturbed]" if max(relay["others"], direct["others"]) >= 0.1 else ""),
            flush=True,
        )
        for name, r in (("direct", direct), ("relay", relay)):
            f, b = r["forward"], r["return"]
            print(
                f"    {name}: sent {f['sent']} / {b['sent']}, p50 {fmt_ms(f['p50'])} / {fmt_ms(b['p50'])},"
                f" p99 {fmt_ms(f['p99'])} / {fmt_ms(b['p99'])}, max {fmt_ms(f['max'])} / {fmt_ms(b['max'])} ms"
                + (f", duplicates {f['dups']} / {b['dups']}" if f["dups"] or b["dups"] else "")
            )
        print(
            f"    ksoftirqd per CPU {' + '.join(f'{100 * c:.0f}' for c in relay['ksoftirqd'])} % (direct"
            f" {' + '.join(f'{100 * c:.0f}' for c in direct['ksoftirqd'])} %); the generator's ticks: late over 2 ms"
            f" {relay['late_ticks']} (direct {direct['late_ticks']}), at most {relay['tick_late_max_us'] / 1000:.1f} ms"
            f" (direct {direct['tick_late_max_us'] / 1000:.1f})"
        )
        if relay["kernel"]:
            print(f"    the kernel's counters (host-wide) through the relay phase: {relay['kernel']}")
        if not ok:
            for d in ("forward", "return"):
                by_session = relay[d]["slot_max_us"]
                for w in range(contact.workers):
                    slots = [max(col) for col in zip(*by_session[w :: contact.workers])]
                    print(f"    relay {d}, worker {w}'s sessions: packets sent when over 5 ms: {episodes(slots)}")
        loops = contact.loops()
        if any(loops):
            print("    the workers' loops, their last 10 s: timers late p50 / p90 / max (ms) " + "; ".join(
                f"{lp.get('lag_ms_p50')} / {lp.get('lag_ms_p90')} / {lp.get('lag_ms_max')}" for lp in loops))
        return step

    def phase_run(self, contact: Contact | None, agents: list[LeanAgent], calls: list[tuple[int, int, int]], path: str) -> dict[str, Any]:
        sessions = []
        for a in agents:
            s = Session(a.tunnel, a.op, a.lan)
            s.pending = bytes(a.rbuf)
            a.rbuf.clear()
            sessions.append(s)
        per_call = int(self.args.duration / PERIOD) + 2
        base = agents[0].seq_base
        for a in agents:
            a.seq_base += per_call  # a channel's sequence numbers go on from phase to phase
        self.phase += 1
        cpu0 = contact.cpu() if contact else []
        k0 = [cpu_seconds(p) for p in self.softirq_pids]
        mine = {os.getpid(), *(contact.pids if contact else []), *([contact.server.pid] if contact else [])}
        o0 = all_cpu(mine)
        n0 = kernel_counters()
        m0 = machine_cpu()
        t0 = time.monotonic()
        r = dataplane(
            self.binary, sessions, calls, path, self.args.duration, self.phase, True, base,
            self.args.duration + 30, self.args.tick_us, self.procs,
        )  # fmt: skip
        wall = time.monotonic() - t0
        usage = machine_usage(m0, machine_cpu())
        cpu1 = contact.cpu() if contact else []
        k1 = [cpu_seconds(p) for p in self.softirq_pids]
        n1 = kernel_counters()
        others = others_share(o0, all_cpu(mine), wall)
        for a, rest in zip(agents, r["rest"]):
            a.rbuf += bytes.fromhex(rest)
            a.read_tunnel(time.monotonic())
        shares = [(b - a) / wall for a, b in zip(cpu0, cpu1)]
        r.update(
            workers_cpu=shares[:-1], supervisor_cpu=shares[-1] if shares else 0.0,
            generator_cpu=r["cpu"] / r["wall"], steal=usage["steal"],
            ksoftirqd=[(b - a) / wall for a, b in zip(k0, k1)], others=others,
            kernel={k: n1[k] - n0[k] for k in KERNEL_COUNTERS if k in n0 and k in n1 and n1[k] != n0[k]},
        )  # fmt: skip
        if r["forward"]["send_errors"] or r["return"]["send_errors"] or r["write_drops"]:
            print(f"    {path}: send errors {r['forward']['send_errors']} / {r['return']['send_errors']}, tunnel bytes dropped {r['write_drops']}")
        return r

    def ceiling(self, counts: list[int]) -> None:
        """
        The generator alone: the direct path only, without a contact point.
        """
        print(f"the generator's own ceiling: direct UDP both ways, {self.args.sessions_per_worker * 2} sessions, nothing pinned")
        sessions = []
        for _ in range(self.args.sessions_per_worker * 2):
            pair = socket.socketpair()
            socks = []
            for _ in range(2):
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                udp.bind(("127.0.0.1", 0))
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    udp.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                udp.setblocking(False)
                socks.append(udp)
            pair[0].setblocking(False)
            sessions.append((Session(pair[0], socks[0], socks[1]), pair[1]))
        for n in counts:
            calls = [(g % len(sessions), 0, 0) for g in range(n)]
            self.phase += 1
            m0 = machine_cpu()
            o0 = all_cpu({os.getpid()})
            r = dataplane(
                self.binary, [s for s, _ in sessions], calls, "direct", self.args.duration, self.phase, True, 0,
                self.args.duration + 30, self.args.tick_us, self.procs,
            )  # fmt: skip
            usage = machine_usage(m0, machine_cpu())
            f, b = r["forward"], r["return"]
            print(
                f"  {n} calls ({int(2 * n / PERIOD)} datagrams/s sent and received):"
                f" loss {100 * f['loss']:.3f} / {100 * b['loss']:.3f} %, p99 {fmt_ms(f['p99'])} / {fmt_ms(b['p99'])} ms,"
                f" max {fmt_ms(f['max'])} / {fmt_ms(b['max'])} ms; generator {100 * r['cpu'] / r['wall']:.0f} % of a core,"
                f" other processes {100 * others_share(o0, all_cpu({os.getpid()}), r['wall']):.0f} %,"
                f" steal {100 * usage['steal']:.1f} %",
                flush=True,
            )
        for session, other in sessions:
            for sock in (session.tunnel, session.op, session.lan, other):
                sock.close()


def main(procs: Processes, workdir: str, args: argparse.Namespace) -> int:
    try:
        return run(procs, workdir, args)
    except NoCompiler as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(procs: Processes, workdir: str, args: argparse.Namespace) -> int:
    raise_nofile()
    binary = build_dataplane(workdir)
    bench = Bench(procs, workdir, args, binary)
    if args.ceiling:
        bench.ceiling(args.ceiling)
        return 0
    print(
        f"media through 1 and 2 contact-point workers: plaintext tunnels, datagrams with sequence numbers, the C data plane"
        f" (tick {args.tick_us} us); {os.cpu_count()} CPUs, {cpu_model()}; per worker {args.per_worker} calls",
        flush=True,
    )
    results = []
    for r in range(args.rounds):
        order = args.workers if r % 2 == 0 else list(reversed(args.workers))
        for w in order:
            results.append(bench.run_workers(w, r))
    print("\nsummary (target: loss < 0.1 %, p99 added < 5 ms both ways):")
    print("| round | workers | largest passed | at it: workers' CPU (% of a core) | generator CPU | other processes, most in a step | steal |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for res in results:
        best = next((s for s in res["steps"] if s["calls"] == res["largest"] and s["ok"]), None)
        cpu = " + ".join(f"{100 * c:.0f}" for c in best["relay"]["workers_cpu"]) if best else "-"
        gen = f"{100 * best['relay']['generator_cpu']:.0f} %" if best else "-"
        steal = f"{100 * best['relay']['steal']:.1f} %" if best else "-"
        first_fail = next((s["calls"] for s in res["steps"] if not s["ok"]), None)
        largest = f"{res['largest']}" + (f" (failed {first_fail})" if first_fail else " (every step passed: a lower bound)")
        busiest = max(max(s["relay"]["others"], s["direct"]["others"]) for s in res["steps"]) if res["steps"] else 0.0
        print(f"| {res['round'] + 1} | {res['workers']} | {largest} | {cpu} | {gen} | {100 * busiest:.0f} % | {steal} |")
    if set(args.workers) == {1, 2}:
        for r in range(args.rounds):
            one = next(x["largest"] for x in results if x["round"] == r and x["workers"] == 1)
            two = next(x["largest"] for x in results if x["round"] == r and x["workers"] == 2)
            ratio = f"{two / one:.2f}" if one else "n/a"
            print(f"round {r + 1}: 2 workers / 1 worker = {two} / {one} = {ratio} (target >= 1.8)")
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-worker", default="400,450,500,550,600",
                   help="calls per worker, a ramp (comma-separated, ascending; W workers get W times each); stops at the first failed step")  # fmt: skip
    p.add_argument("--workers", default="1,2", help="worker counts to compare, alternating each round (default 1,2)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=8.0, help="seconds of RTP per step and path (default 8)")
    p.add_argument("--sessions-per-worker", type=int, default=2, help="lean-agent sessions (tunnels) per worker (default 2)")
    p.add_argument("--tick-us", type=int, default=1000, help="the data plane sends what is due every this many microseconds (default 1000)")
    p.add_argument("--pin", choices=("workers", "split", "none"), default="workers",
                   help="workers: worker I on CPU I, the generator unpinned (default); split: one worker on CPU 0, the generator on CPU 1")  # fmt: skip
    p.add_argument("--tunnel-rcvbuf", type=int, default=SOCKET_BUFFER,
                   help="SO_RCVBUF of the generator's end of each tunnel (default 4 MiB; 0: the kernel's autotuning)")  # fmt: skip
    p.add_argument("--keep-going", action="store_true", help="run every step, not only up to the first that fails")
    p.add_argument("--ceiling", default="", help="comma-separated call counts: the generator alone (direct UDP), no contact point")
    p.add_argument("--contact-arg", action="append", default=[], metavar="ARG", help="one more argument for spwm-contact")
    p.add_argument("--media-low", type=int, default=30000, help="the contact point's first media port")
    p.add_argument("--max-time", type=float, default=1800.0)
    p.add_argument("--cprofile", metavar="FILE",
                   help="run a one-worker contact point under cProfile; its statistics go to FILE when it stops (call counts)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    try:
        args.per_worker = [int(x) for x in args.per_worker.split(",") if x.strip()]
        args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
        args.ceiling = [int(x) for x in args.ceiling.split(",") if x.strip()]
    except ValueError:
        p.error("--per-worker, --workers and --ceiling take comma-separated numbers")
    if not args.per_worker or min(args.per_worker) < 1 or args.per_worker != sorted(args.per_worker):
        p.error("--per-worker must be an ascending list of 1 call or more")
    if not args.workers or min(args.workers) < 1 or max(args.workers) > (os.cpu_count() or 1):
        p.error(f"--workers: from 1 to this machine's {os.cpu_count()} CPUs")
    if args.pin == "split" and max(args.workers) > 1:
        p.error("--pin split is for one worker (--workers 1)")
    if args.tick_us < 50:
        p.error("--tick-us must be 50 or more")
    if args.duration <= 0 or args.rounds < 1 or args.sessions_per_worker < 1:
        p.error("--duration, --rounds and --sessions-per-worker must be above 0")
    return args


if __name__ == "__main__":
    a = parse(sys.argv[1:])
    sys.exit(run_bounded(lambda procs, workdir: main(procs, workdir, a), a.max_time, a.keep))
