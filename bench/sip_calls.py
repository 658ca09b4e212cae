#!/usr/bin/env python3
"""
Benchmark: SIP call rate through an SPWM agent and contact point (signalling
only), against SIPp calling the same UAS directly, in the same run.

Processes (each its own)::

    sipp -sn uac ──UDP──> spwm-agent ══TCP/TLS══> spwm-contact ──UDP──> sipp -sn uas
                           --sip-listen                --sip-proxy UAS

    sipp -sn uac ───────────────────── UDP ─────────────────────────────> sipp -sn uas
                                                                          (the direct baseline)

Each call is SIPp's built-in C{uac} scenario: INVITE (with an SDP offer, so
both halves allocate relay ports for it), 100/180/200 with an SDP answer,
ACK, a pause of C{--call-length} ms, BYE, 200. The contact point runs with
C{--sip-proxy} pointing at the UAS, so every request the agent sends out goes
to it.

The rate is ramped: C{--start} calls per second, times C{--factor} per step
of C{--step} seconds, until a step fails, then C{--bisect} bisection steps. A
step fails when a call fails (SIPp's failed-call counters: timeouts, 5xx,
unexpected messages), when not every call completed, or when SIPp could not
keep the asked rate (the concurrent-call limit C{-l} of C{--limit-seconds} of
calls was reached because answers came back too slowly). Retransmissions are
reported; they do not fail a step by themselves.

Everything it starts is ended by PID when it finishes, on Ctrl-C, on an
error and when C{--max-time} runs out.

Run from the repository's root::

    python3 bench/sip_calls.py                  # ramp both paths, plaintext tunnel
    python3 bench/sip_calls.py --tls
    python3 bench/sip_calls.py --fixed 300      # one step at 300 calls/s on both paths
    python3 bench/sip_calls.py --fixed 700,150,150 --skip-direct   # overload, then does it recover?
    python3 bench/sip_calls.py --fixed 300 --profile /tmp/prof --skip-direct
    python3 bench/sip_calls.py --fixed 50 --step 10 --skip-direct --cprofile /tmp/cprof   # Python calls per call
    python3 bench/sip_calls.py --fixed 10 --step 20 --skip-direct --instructions /tmp/cg   # instructions per call
    python3 bench/sip_calls.py --fixed 50 --step 10 --skip-direct --syscalls /tmp/sc       # system calls per call
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    MEDIA_HIGH,
    MEDIA_LOW,
    ROOT,
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
    udp_counters,
    start_profilers,
    wait_profilers,
)

from _load import bisect_ramp  # noqa: E402

from spwm.testing.sipp import last_stats, sipp_time, stat_count  # noqa: E402

#: SIPp's counters whose sum is "failed calls" (the cumulative columns).
FAILED = "FailedCall(C)"


class Bench:
    """
    The UAS, the pair in front of it, and one SIPp UAC run per step.
    """

    def __init__(self, args: argparse.Namespace, procs: Processes, workdir: str) -> None:
        self.args = args
        self.procs = procs
        self.workdir = workdir
        self.steps = 0
        #: each half's instructions per second without calls (C{--instructions})
        self.idle: dict[str, float | None] = {}
        #: each half's system calls per second without calls, by name (C{--syscalls})
        self.idle_calls: dict[str, dict[str, float]] = {}
        self.uas_port = free_port()
        #: every step's SIPp UAC binds this port: its From is
        #: sip:sipp@127.0.0.1:PORT, the address-of-record registered below
        self.uac_port = free_port()
        uas_dir = os.path.join(workdir, "uas")
        os.makedirs(uas_dir)
        self.pair: Pair | None = None
        if not args.skip_tunnel:
            self.pair = Pair(
                procs,
                workdir,
                ("127.0.0.1", self.uas_port),
                media_ports=args.media_ports,
                tls=args.tls,
                agent_extra=args.agent_arg,
                contact_extra=args.contact_arg,
            )
            # under callgrind a half starts about fifty times as slowly
            slow = 10.0 if args.instructions else 1.0
            self.pair.wait_up(20.0 * slow)
            # SIPp's uac calls as sip:sipp@127.0.0.1:PORT (its own port); the
            # contact point lets a tunnel call only as an address-of-record
            # registered through it, the port included (RFC 3261 19.1.4).
            self.registered = register_through(
                self.pair.sip_listen, self.uas_port, "sipp", f"127.0.0.1:{self.uac_port}", timeout=10.0 * slow
            )
        self.uas = self._sipp(
            ["-sn", "uas", "-i", "127.0.0.1", "-p", str(self.uas_port), "-mp", str(free_port()), "-nostdin"],
            uas_dir,
        )
        time.sleep(0.3)
        if self.uas.poll() is not None:
            raise RuntimeError(f"the SIPp UAS exited with {self.uas.returncode}; see {uas_dir}")

    def _sipp(self, args: list[str], cwd: str) -> subprocess.Popen:
        out = open(os.path.join(cwd, "sipp.out"), "wb")
        p = subprocess.Popen(["sipp", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.procs.popen.append(p)
        return p

    def idle_instructions(self, seconds: float) -> dict[str, float | None]:
        """
        Each half's instructions per second over C{seconds} without calls
        (its timers), under callgrind.
        """
        assert self.pair is not None
        pids = self.pair.pids
        for pid in pids.values():
            self.procs.callgrind(pid, "zero")
        start = time.monotonic()
        time.sleep(seconds)
        counts = {k: self.procs.callgrind(v, "dump") for k, v in pids.items()}
        wall = time.monotonic() - start
        return {k: None if v is None else v / wall for k, v in counts.items()}

    def start_straces(self, pids: dict[str, int], tag: str) -> dict[str, tuple[subprocess.Popen | None, str]]:
        """
        An strace counting the system calls of each half (C{--syscalls});
        C{None} for a half it could not attach to.
        """
        return {k: (self.procs.strace(pid, out), out) for k, pid in pids.items() for out in [os.path.join(self.args.syscalls, f"{k}-{tag}.txt")]}

    def idle_syscalls(self, seconds: float) -> dict[str, dict[str, float]]:
        """
        Each half's system calls per second over C{seconds} without calls
        (its timers), by name.
        """
        assert self.pair is not None
        straces = self.start_straces(self.pair.pids, "idle")
        start = time.monotonic()
        time.sleep(seconds)
        rates = {}
        for k, (p, out) in straces.items():
            table = None if p is None else self.procs.strace_table(p, out)
            if table is not None:
                wall = time.monotonic() - start
                rates[k] = {name: n / wall for name, n in table.items()}
        return rates

    def dest(self, path: str) -> tuple[str, int]:
        if path == "tunnel":
            assert self.pair is not None
            return self.pair.sip_listen
        return ("127.0.0.1", self.uas_port)

    def step(self, path: str, rate: float, seconds: float, profile: str | None = None) -> dict[str, Any]:
        """
        One SIPp UAC run: C{rate} calls/s for C{seconds} s to C{path}.
        """
        a = self.args
        self.steps += 1
        cwd = os.path.join(self.workdir, f"step{self.steps:02d}-{path}-{rate:.0f}")
        os.makedirs(cwd)
        calls = max(1, int(round(rate * seconds)))
        limit = max(10, int(rate * a.limit_seconds))
        host, port = self.dest(path)
        stat = os.path.join(cwd, "stat.csv")
        bound = seconds * 2 + 25
        args = [
            "-sn", "uac", f"{host}:{port}",
            "-i", "127.0.0.1", "-p", str(self.uac_port), "-mp", str(free_port()),
            "-nostdin",
            "-r", f"{rate:.3f}", "-rp", "1000",
            "-m", str(calls), "-l", str(limit), "-d", str(a.call_length),
            "-recv_timeout", str(int(a.recv_timeout * 1000)),
            "-timeout", f"{bound:.0f}s", "-timeout_error",
            "-trace_stat", "-stf", stat, "-fd", "1",
            "-trace_rtt", "-rtt_freq", "1",
            "-trace_err",
        ]
        pids = self.pair.pids if (self.pair is not None and path == "tunnel") else {}
        cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
        uas_cpu0 = cpu_seconds(self.uas.pid)
        mach0 = machine_cpu()
        udp0 = udp_counters()
        counted = bool(self.procs.callgrind_dir and pids)
        if counted:
            for pid in pids.values():
                self.procs.callgrind(pid, "zero")
        straces = self.start_straces(pids, f"step{self.steps:02d}") if a.syscalls and pids else {}
        start = time.monotonic()
        uac = self._sipp(args, cwd)
        spies = start_profilers(self.procs, self.pair, profile, f"{path}-{rate:.0f}", seconds - 1) if profile and pids else []
        try:
            code = uac.wait(bound + 10)
        except subprocess.TimeoutExpired:
            uac.kill()
            code = uac.wait(5)
        wall = time.monotonic() - start
        instructions: dict[str, tuple[int | None, float | None]] = {}
        if counted:
            for k, v in pids.items():
                count = self.procs.callgrind(v, "dump")
                idle = self.idle.get(k)
                # the step's instructions less what the half's timers took
                # meanwhile (as measured without calls)
                instructions[k] = (count, None if count is None or idle is None else count - idle * (time.monotonic() - start))
        syscalls: dict[str, dict[str, float] | None] = {}
        for k, (p, out) in straces.items():
            # (a half strace could not attach to: unread)
            table = None if p is None else self.procs.strace_table(p, out)
            idle_rates = self.idle_calls.get(k, {})
            traced = time.monotonic() - start
            # the step's system calls less what the half's timers made
            # meanwhile (as counted without calls)
            syscalls[k] = None if table is None else {name: n - idle_rates.get(name, 0.0) * traced for name, n in table.items()}
        uac_cpu = _children_cpu()
        cpu = {k: (cpu_seconds(v) - cpu0[k]) / wall for k, v in pids.items()}
        cpu["uas"] = (cpu_seconds(self.uas.pid) - uas_cpu0) / wall
        cpu["uac"] = uac_cpu / wall
        mach = machine_usage(mach0, machine_cpu())
        udp1 = udp_counters()
        udp = {k: udp1.get(k, 0) - udp0.get(k, 0) for k in ("RcvbufErrors", "SndbufErrors", "InErrors")}
        last = last_stats(stat)

        def n(key: str) -> int:
            return stat_count(last, key)

        rtts = sorted(_read_rtts(cwd))
        refused = _refusals(cwd)
        failed_detail = {k[6:-3]: n(k) for k in last if k.startswith("Failed") and k.endswith("(C)") and k != FAILED and n(k)}
        created = n("OutgoingCall(C)")
        success = n("SuccessfulCall(C)")
        failed = n(FAILED)
        achieved = success / max(1e-9, wall)
        # the UAC needs about one call length and a round trip after the last call
        slow = wall > seconds * 1.1 + 1.5 + a.call_length / 1000
        ok = code == 0 and failed == 0 and success == calls and not slow
        verdict = "ok" if ok else ("FAILED CALLS" if failed else ("INCOMPLETE" if success < calls else ("TOO SLOW" if slow else f"SIPP EXIT {code}")))
        return {
            "path": path,
            "rate": rate,
            "calls": calls,
            "created": created,
            "success": success,
            "failed": failed,
            "failed_detail": failed_detail,
            "refused": refused,
            "retrans": n("Retransmissions(C)"),
            "wall": wall,
            "achieved": achieved,
            "rtt": rtts,
            "mean_rt": sipp_time(last.get("ResponseTime1(C)", "")),
            "cpu": cpu,
            "instructions": instructions,
            "syscalls": syscalls,
            "machine": mach,
            "udp": udp,
            "code": code,
            "ok": ok,
            "verdict": verdict,
            "profiles": wait_profilers(spies) if spies else [],
            "dir": cwd,
        }


def _children_cpu() -> float:
    """
    CPU seconds of the reaped children since the last call (the UAC that just exited).
    """
    usage = os.times()
    total = usage.children_user + usage.children_system
    prev = getattr(_children_cpu, "prev", 0.0)
    _children_cpu.prev = total  # type: ignore[attr-defined]
    return total - prev


#: how SIPp's error log names a call aborted on a final response it did not
#: expect: a half's refusal of its INVITE ("503 Service Unavailable
#: (overloaded)", "(tunnel congested)", ...)
_REFUSAL = re.compile(r"Aborting call .*received 'SIP/2\.0 ([3-6]\d\d [^'\r\n]*)")


def _refusals(cwd: str) -> dict[str, int]:
    """
    Calls whose INVITE was answered by a final error response, by that
    response's status line less its version (C{"503 Service Unavailable
    (overloaded)"}), from SIPp's C{*_errors.log} in C{cwd}.
    """
    counts: dict[str, int] = {}
    for name in os.listdir(cwd):
        if name.endswith("_errors.log"):
            with open(os.path.join(cwd, name), errors="replace") as f:
                # one "Aborting call" line per call; answers to its
                # retransmissions come later as "Dead call" lines
                for line in f:
                    m = _REFUSAL.search(line)
                    if m:
                        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def refusal_text(refused: dict[str, int]) -> str:
    """
    The refusals of L{_refusals} for a step's line, most first:
    C{"2520 503 (tunnel congested), 189 503 (overloaded)"}.
    """
    def short(status: str) -> str:
        code, _, rest = status.partition(" ")
        reason = rest[rest.find("("):] if "(" in rest else rest
        return f"{code} {reason}".strip()

    return ", ".join(f"{n} {short(k)}" for k, n in sorted(refused.items(), key=lambda kv: (-kv[1], kv[0])))


def _read_rtts(cwd: str) -> list[float]:
    """
    Response times (INVITE to 200, seconds) from SIPp's C{*_rtt.csv} in C{cwd}.
    """
    out = []
    for name in os.listdir(cwd):
        if name.endswith("_rtt.csv"):
            with open(os.path.join(cwd, name)) as f:
                next(f, None)
                for line in f:
                    parts = line.strip().split(";")
                    if len(parts) >= 2:
                        try:
                            out.append(float(parts[1]) / 1000)
                        except ValueError:
                            pass
    return out


#: Issue 15's call rate through one agent and one contact-point worker.
TARGET = 1000


def describe(r: dict[str, Any]) -> str:
    cpu = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["cpu"].items())
    # each half's CPU per completed call (its share of a core over the
    # step's wall time), the figure to compare between two trees
    if r["success"]:
        per_call = ", ".join(
            f"{k} {v * r['wall'] / r['success'] * 1e3:.2f}" for k, v in r["cpu"].items() if k in ("agent", "contact")
        )
        if per_call:
            cpu += f"; per call (ms) {per_call}"
        if r["instructions"]:
            # the same instructions whatever the host's speed: the figure
            # to compare between two trees on a shared machine
            counts = ", ".join(
                (f"{k} {count / r['success'] / 1e6:.3f}" if count is not None else f"{k} unread")
                + (f" ({net / r['success'] / 1e6:.3f} less idle)" if net is not None else "")
                for k, (count, net) in r["instructions"].items()
            )
            cpu += f"; instructions per call (millions, user space, under callgrind) {counts}"
        if r["syscalls"]:
            # as host-independent as the instructions: the kernel's side
            parts = []
            for k, table in r["syscalls"].items():
                if table is None:
                    parts.append(f"{k} unread")
                    continue
                top = sorted(((n, name) for name, n in table.items() if name != "total"), reverse=True)[:5]
                detail = ", ".join(f"{name} {n / r['success']:.1f}" for n, name in top)
                parts.append(f"{k} {table['total'] / r['success']:.1f} ({detail})")
            cpu += f"; system calls per call, less idle (strace) {'; '.join(parts)}"
    m = r["machine"]
    rtt = r["rtt"]
    fails = f" {r['failed_detail']}" if r["failed_detail"] else ""
    if r["refused"]:
        fails += f" (of them refused: {refusal_text(r['refused'])})"
    return (
        f"  {r['path']:6} {r['rate']:7.1f} calls/s asked: {r['success']}/{r['calls']} calls ok in {r['wall']:5.1f} s "
        f"({r['achieved']:6.1f}/s), failed {r['failed']}{fails}, retrans {r['retrans']}, "
        f"INVITE->200 p50 {percentile(rtt, .5) * 1e3:.0f} ms p99 {percentile(rtt, .99) * 1e3:.0f} ms max "
        f"{(rtt[-1] if rtt else float('nan')) * 1e3:.0f} ms  {r['verdict']}  "
        f"[CPU {cpu}; machine busy {100 * m['busy']:.0f}%, steal {100 * m['steal']:.0f}%; kernel UDP errors {r['udp']}]"
    )


def ramp(bench: Bench, args: argparse.Namespace, path: str, start: float, cap: float) -> tuple[float, float | None, list[dict[str, Any]]]:
    """
    The highest rate that passed and the lowest that failed (or C{None}).
    """

    def step(rate: float) -> tuple[bool, dict[str, Any]]:
        r = bench.step(path, rate, args.step)
        print(describe(r), flush=True)
        return r["ok"], r

    # whole calls/s when bisecting; no bisection below --start
    found = bisect_ramp(step, start, cap, args.factor, args.bisect, integer=True, below_start=False)
    return found.good, found.bad, found.results


def _compiled_text(root: str) -> str:
    """
    Whether the checkout's modules of C{spwm.compiled.MODULES} run compiled (C{spwm
    compile}, C{spwm.compiled}) or as their source.
    """
    from spwm.compiled import status

    runs = status(os.path.join(root, "spwm"))
    kinds = {what for _, what in runs}
    if kinds == {"compiled"}:
        return "modules compiled (spwm compile)"
    if kinds == {"source"}:
        return "modules from source (not compiled)"
    return "; ".join(f"{module} {what}" for module, what in runs)


def _commit(root: str) -> str:
    """
    The checkout's commit (and C{+changes} when its work tree differs),
    or C{"not a git checkout"}.
    """
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    if not head:
        return "not a git checkout"
    return head + (" +changes" if dirty else "")


def run(args: argparse.Namespace, procs: Processes, workdir: str) -> int:
    procs.cprofile_dir = args.cprofile
    procs.callgrind_dir = args.instructions
    bench = Bench(args, procs, workdir)
    print(
        f"SIP call rate: SIPp uac -> {'agent -> contact point (' + ('TLS' if args.tls else 'plaintext') + ') -> ' if bench.pair else ''}"
        f"SIPp uas, and uac -> uas directly; call length {args.call_length} ms, {args.step:g} s per step"
    )
    if bench.pair is not None:
        # the halves run this checkout's code whatever PYTHONPATH says
        # (_common puts it first): say which, so two trees compared are two
        print(f"  code: {ROOT} ({_commit(ROOT)}), {sys.executable}; {_compiled_text(ROOT)}")
        for line in bench.pair.command_lines:
            print(f"  started: {line}")
    print(f"  started: sipp -sn uas -i 127.0.0.1 -p {bench.uas_port} ...", flush=True)
    if bench.pair is not None:
        print(f"  REGISTER sip:sipp@127.0.0.1:{bench.uac_port} through the pair (answered by the bench as the registrar): {bench.registered}")
        if args.instructions:
            bench.idle = bench.idle_instructions(args.step)
            rates = ", ".join(f"{k} {v / 1e6:.3f}" if v is not None else f"{k} unread" for k, v in bench.idle.items())
            print(f"  idle for {args.step:g} s (no calls): instructions per second (millions) {rates}", flush=True)
        if args.syscalls:
            bench.idle_calls = bench.idle_syscalls(args.step)
            rates = ", ".join(
                f"{k} {bench.idle_calls[k].get('total', 0.0):.1f}" if k in bench.idle_calls else f"{k} unread"
                for k in bench.pair.pids
            )
            print(f"  idle for {args.step:g} s (no calls): system calls per second {rates}", flush=True)
    found: dict[str, tuple[float, float | None]] = {}
    paths = [p for p in ("direct", "tunnel") if not (p == "direct" and args.skip_direct) and not (p == "tunnel" and args.skip_tunnel)]
    if args.fixed:
        for path in paths:
            for rate in args.fixed:
                r = bench.step(path, rate, args.step, profile=args.profile if path == "tunnel" else None)
                print(describe(r), flush=True)
                for line in r["profiles"]:
                    print(line)
                if path == "tunnel":
                    print(f"  target ({TARGET:,} calls/s through the pair, none failed; issue 15): {'MET' if r['ok'] and rate >= TARGET else 'NOT MET'} at {rate:g} calls/s")
    else:
        for path in paths:
            good, bad, _ = ramp(bench, args, path, args.start, args.max_rate)
            found[path] = (good, bad)
        for path, (good, bad) in found.items():
            print(f"  {path}: highest rate without failures {good:.0f} calls/s" + (f"; failures from {bad:.0f} calls/s" if bad else f" (not failed up to --max-rate {args.max_rate:g})"))
        if "tunnel" in found and "direct" in found and found["direct"][0]:
            bound = "" if found["direct"][1] else " at most (the direct path did not fail within --max-rate)"
            print(f"  ratio tunnel/direct: {found['tunnel'][0] / found['direct'][0]:.3f}{bound}")
        if "tunnel" in found:
            print(f"  target ({TARGET:,} calls/s through the pair, none failed; issue 15): {'MET' if found['tunnel'][0] >= TARGET else 'NOT MET'}")
    if bench.pair is not None:
        for line, count in sorted(bench.pair.warning_counts().items(), key=lambda kv: -kv[1])[:12]:
            print(f"  log x{count}: {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tls", action="store_true", help="TLS between agent and contact point (default: --plaintext)")
    p.add_argument("--start", type=float, default=50, help="first rate of the ramp, calls/s (default 50)")
    p.add_argument("--factor", type=float, default=1.5, help="rate factor per ramp step (default 1.5)")
    p.add_argument("--max-rate", type=float, default=3000, help="stop the ramp here, calls/s (default 3000)")
    p.add_argument("--bisect", type=int, default=3, help="bisection steps after the first failed step (default 3)")
    p.add_argument("--step", type=float, default=8.0, help="seconds of calls per step (default 8)")
    p.add_argument("--fixed", help="steps at these rates (comma-separated, in this order) per path instead of a ramp")
    p.add_argument("--call-length", type=int, default=0, help="pause between ACK and BYE, ms (SIPp -d; default 0)")
    p.add_argument("--limit-seconds", type=float, default=2.0, help="SIPp -l = rate x this (default 2 s of calls)")
    p.add_argument("--recv-timeout", type=float, default=5.0, help="a call fails after this many seconds without an expected message (default 5)")
    p.add_argument("--media-ports", type=int, default=4000, help="size of each half's media port range (default 4000)")
    p.add_argument("--skip-direct", action="store_true")
    p.add_argument("--skip-tunnel", action="store_true")
    p.add_argument("--profile", metavar="DIR", help="--fixed: py-spy both halves during the tunnel step; files in DIR")
    p.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for spwm-agent (repeat: --agent-arg=--tunnel-connections --agent-arg=1)",
    )
    p.add_argument(
        "--contact-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for spwm-contact (repeat: --contact-arg=--max-calls --contact-arg=40)",
    )
    p.add_argument(
        "--cprofile",
        metavar="DIR",
        help="run both halves under cProfile (deterministic call counts; about twice the CPU): DIR/spwm-agent.prof and"
        " DIR/spwm-contact.prof are written when they stop (read them with pstats)",
    )
    p.add_argument(
        "--instructions",
        metavar="DIR",
        help="run both halves under Valgrind's callgrind and report the instructions each executes per call in the"
        " pair's steps (the same on a busy or a quiet host; user space only, not the kernel's system calls; about fifty"
        " times the CPU, so low rates: --fixed 10 --step 20); callgrind's dumps go to DIR",
    )
    p.add_argument(
        "--syscalls",
        metavar="DIR",
        help="count each half's system calls with strace -c during the pair's steps and report them per call, less"
        " what the halves make idle (the kernel's side, which --instructions does not see; strace slows every system"
        " call, so low rates: --fixed 50 --step 10); strace's tables go to DIR",
    )
    p.add_argument("--max-time", type=float, default=900, help="stop everything after this many seconds (default 900)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (SIPp statistics, logs)")
    args = p.parse_args(argv)
    if args.fixed:
        try:
            args.fixed = [float(x) for x in args.fixed.split(",") if x.strip()]
        except ValueError:
            p.error("--fixed: rates separated by commas")
    if not 2 <= args.media_ports <= max_media_ports(2):
        p.error(f"--media-ports: from 2 to {max_media_ports(2)} (each half's range, both between {MEDIA_LOW} and {MEDIA_HIGH})")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    if args.instructions:
        if args.cprofile:
            p.error("--instructions and --cprofile: one at a time")
        missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
        if missing:
            p.error(f"--instructions needs Valgrind ({', '.join(missing)} not found; Debian: apt-get install valgrind)")
    if args.syscalls:
        if args.instructions:
            p.error("--syscalls and --instructions: one at a time")
        if shutil.which("strace") is None:
            p.error("--syscalls needs strace (not found; Debian: apt-get install strace)")
    if args.cprofile:
        args.cprofile = os.path.abspath(args.cprofile)
        os.makedirs(args.cprofile, exist_ok=True)
    if args.instructions:
        args.instructions = os.path.abspath(args.instructions)
        os.makedirs(args.instructions, exist_ok=True)
    if args.syscalls:
        args.syscalls = os.path.abspath(args.syscalls)
        os.makedirs(args.syscalls, exist_ok=True)
    return run_bounded(lambda procs, workdir: run(args, procs, workdir), args.max_time, args.keep)


if __name__ == "__main__":
    sys.exit(main())
