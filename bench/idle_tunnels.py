#!/usr/bin/env python3
"""
Idle tunnels: memory per tunnel and CPU of their keepalives.

N agents' tunnels (TLS by default) to an C{spwm-contact} on loopback, all
idle, against the same N TLS connections to a bare Twisted TLS server (a
protocol that does nothing) in the same run.  Reported per kind: the
server's resident memory per connection (RSS after the connections minus
before, over N), the client process's likewise, and the CPU of both sides
over the measuring window (share of one core, and per 1,000 connections),
with the machine's busy and steal shares.  The server is pinned to one
core and the clients' process to the other (C{taskset}), so the load
generator does not take the server's core.

    python3 bench/idle_tunnels.py                      # 2,000 tunnels, 60 s, keepalive 15 s
    python3 bench/idle_tunnels.py --count 10000 --measure 90
    python3 bench/idle_tunnels.py --count 2000 --profile /tmp/prof   # py-spy the contact point
    python3 bench/idle_tunnels.py --kinds spwm --keepalive 1          # many pings, short run

Every process is ended by PID at the end, on Ctrl-C and after --max-time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    ROOT,
    Processes,
    cpu_seconds,
    free_port,
    machine_cpu,
    machine_usage,
    raise_nofile,
    run_bounded,
    summarize_profile,
)
from spwm.listenqueue import read_netstat  # noqa: E402  (after _common: it puts the checkout on sys.path)
from spwm.testing.procs import children  # noqa: E402


def rss_kib(pid: int) -> int:
    """
    Resident memory of process C{pid} in KiB (C{VmRSS}).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def server_rss(pid: int) -> int:
    """
    Resident memory of the server and its children (the workers), KiB.
    """
    return rss_kib(pid) + sum(rss_kib(c) for c in children(pid))


def server_cpu(pid: int) -> float:
    """
    CPU seconds of the server and its children (the workers) now.
    """
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children(pid))


# -- the processes' own code (run with --role) ------------------------------


def bare_server(args: argparse.Namespace) -> None:
    """
    A Twisted TLS server whose protocol does nothing.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from spwm.tunnel.service import server_tls_options

    raise_nofile()
    wrapped = Factory.forProtocol(Protocol)
    factory: Any = wrapped
    if not args.plaintext:
        factory = TLSMemoryBIOFactory(server_tls_options(args.cert, args.key), False, wrapped)
    reactor.listenTCP(args.port, factory, backlog=args.backlog or 4096, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def clients(args: argparse.Namespace) -> None:
    """
    Open C{args.count} connections, at most 200 being set up at a time;
    print C{ready N} once all are established (SPWM: the tunnel handshake;
    bare: the TLS handshake), then stay idle.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
    from twisted.internet.interfaces import IHandshakeListener
    from twisted.internet.protocol import Factory, Protocol
    from zope.interface import implementer

    from spwm.limits import TunnelLimits
    from spwm.tunnel.protocol import AgentTunnelFactory
    from spwm.tunnel.service import client_tls_options

    raise_nofile()
    state = {"up": 0, "lost": 0, "started": 0, "failed": 0}
    print(f"base {rss_kib(os.getpid())}", flush=True)

    def settled() -> None:
        if state["up"] + state["failed"] == args.count:
            print(f"ready {state['up']} failed {state['failed']}", flush=True)

    def up() -> None:
        state["up"] += 1
        settled()
        more()

    established: set[int] = set()

    class App:
        def tunnel_established(self, tunnel: Any) -> None:
            established.add(id(tunnel))
            up()

        def tunnel_lost(self, tunnel: Any, reason: str) -> None:
            if id(tunnel) in established:
                established.discard(id(tunnel))
                state["lost"] += 1
                print(f"lost {reason}", flush=True)
            else:
                # connected but never through the handshake (its timeout)
                failed(None, getattr(tunnel, "bench_attempt", 1))

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **kw: None

    @implementer(IHandshakeListener)
    class Bare(Protocol):
        def handshakeCompleted(self) -> None:
            up()

        def connectionMade(self) -> None:
            if args.plaintext:
                up()

        def connectionLost(self, reason: Any = None) -> None:
            state["lost"] += 1

    factory: Any
    if args.kind in ("spwm", "spwm-ping"):
        limits = TunnelLimits(
            keepalive_interval=args.keepalive, keepalive_timeout=3 * args.keepalive, tcp_keepalive=args.kind == "spwm"
        )
        factory = AgentTunnelFactory(App(), reactor, "idle", limits)
    else:
        factory = Factory.forProtocol(Bare)
    tls = None if args.plaintext else client_tls_options("localhost", args.ca)

    from spwm.tunnel.service import backoff

    wait = backoff(cap=args.retry_cap)
    retrying = {"now": 0, "retries": 0}

    def failed(f: Any = None, attempt: int = 1) -> None:
        # an agent tries again with its jittered backoff (1 s doubling,
        # --retry-cap); the benchmark's old clients gave up at once
        if attempt <= args.retries:
            retrying["now"] += 1
            retrying["retries"] += 1
            reactor.callLater(wait(attempt), again, attempt + 1)  # type: ignore[attr-defined]
            return
        state["failed"] += 1
        settled()
        more()

    def again(attempt: int) -> None:
        retrying["now"] -= 1
        connect(attempt)

    def connect(attempt: int = 1) -> None:
        endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", args.port, timeout=30)
        if tls is not None:
            endpoint = wrapClientTLS(tls, endpoint)
        d = endpoint.connect(factory)
        d.addCallback(mark, attempt)
        d.addErrback(failed, attempt)

    def mark(protocol: Any, attempt: int) -> Any:
        # under TLS the endpoint gives the TLS wrapper: mark the tunnel in it
        inner = getattr(protocol, "wrappedProtocol", protocol)
        inner.bench_attempt = attempt
        return protocol

    def more() -> None:
        while state["started"] < args.count and state["started"] - state["up"] - state["failed"] < args.window:
            state["started"] += 1
            connect()

    import cProfile
    import pstats
    import signal

    profiler = cProfile.Profile()

    def start_profile(signum: int, frame: Any) -> None:
        profiler.enable()

    def stop_profile(signum: int, frame: Any) -> None:
        profiler.disable()
        stats = pstats.Stats(profiler)
        total = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
        print(f"profile calls {total}", flush=True)
        top = sorted(stats.stats.items(), key=lambda kv: -kv[1][1])[:12]  # type: ignore[attr-defined]
        for (filename, line, name), v in top:
            short = "/".join(filename.split("/")[-2:])
            print(f"profile  {v[1]:>9} {name} ({short}:{line})", flush=True)
        for (filename, line, name), v in top[:3]:
            for (cf, cl, cn), cv in sorted(v[4].items(), key=lambda kv: -kv[1][0])[:3]:
                short = "/".join(cf.split("/")[-2:])
                print(f"profile     {name} called {cv[0]} times by {cn} ({short}:{cl})", flush=True)
        print(f"profile reactor timers {len(reactor.getDelayedCalls())}", flush=True)  # type: ignore[attr-defined]
        print("profile end", flush=True)

    signal.signal(signal.SIGUSR1, start_profile)
    signal.signal(signal.SIGUSR2, stop_profile)
    from twisted.internet.task import LoopingCall

    def progress() -> None:
        print(f"progress {state['up']} {state['failed']} retrying {retrying['now']} retries {retrying['retries']}", flush=True)

    LoopingCall(progress).start(2.0, now=False)
    reactor.callWhenRunning(more)  # type: ignore[attr-defined]
    reactor.run(installSignalHandlers=True)  # type: ignore[attr-defined]


# -- the benchmark -----------------------------------------------------------


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + cmd


def wait_listening(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def run_kind(procs: Processes, workdir: str, args: argparse.Namespace, kind: str, tls: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    port = free_port()
    # the status server (one worker): scraped after the CPU window
    status_port = free_port() if args.scrape and kind in ("spwm", "spwm-ping") and args.workers == 1 else 0
    log = open(os.path.join(workdir, f"{kind}-server.log"), "wb")
    if kind in ("spwm", "spwm-ping"):
        sip = free_port()
        cmd = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "spwm-contact", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--sip-address", f"127.0.0.1:{sip}", "--max-tunnels", str(args.count + 100),
            "--max-tunnels-per-address", str(args.count + 100), "--status-interval", "0",
            "--keepalive-interval", str(args.keepalive), "--keepalive-timeout", str(3 * args.keepalive),
            "--media-ports", f"{args.media_low}-{args.media_low + 99}",
            *(["--listen-backlog", str(args.backlog)] if args.backlog else []),
            *(["--ping-keepalive"] if kind == "spwm-ping" else []),
            *(["--workers", str(args.workers)] if args.workers > 1 else []),
            *(["--status-listen", f"127.0.0.1:{status_port}"] if status_port else []),
            *(["--plaintext"] if args.plaintext else ["--cert", tls[0], "--key", tls[1]]),
        ]  # fmt: skip
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--role", "bare-server", "--port", str(port)]
        cmd += ["--backlog", str(args.backlog or 4096)]
        cmd += ["--plaintext"] if args.plaintext else ["--cert", tls[0], "--key", tls[1]]
    # ulimit: the server needs count + a few descriptors
    server = subprocess.Popen(
        pinned(args.server_cpu, cmd), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, preexec_fn=raise_nofile,
    )  # fmt: skip
    procs.popen.append(server)
    wait_listening(port)
    time.sleep(1.0)
    if kind in ("spwm", "spwm-ping") and args.workers > 1:
        # the workers start after the supervisor: wait for their listeners
        deadline = time.monotonic() + 20
        while len(children(server.pid)) < args.workers and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)
    server_before = server_rss(server.pid)
    ccmd = [sys.executable, os.path.abspath(__file__), "--role", "clients", "--kind", kind, "--port", str(port)]
    ccmd += ["--count", str(args.count), "--keepalive", str(args.keepalive), "--window", str(args.window)]
    ccmd += ["--plaintext"] if args.plaintext else ["--ca", tls[2]]
    ccmd += ["--retries", str(args.retries), "--retry-cap", str(args.retry_cap)]
    client = subprocess.Popen(
        pinned(args.client_cpu, ccmd), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    procs.popen.append(client)
    # the clients' baseline: its interpreter and imports, before connecting
    started = time.monotonic()
    setup_cpu0 = server_cpu(server.pid)
    overflows0 = read_netstat()
    assert client.stdout is not None
    line = ""
    client_base = 0
    last_change, last_seen = time.monotonic(), ""
    up = failed = 0
    while time.monotonic() - started < args.connect_time:
        line = client.stdout.readline()
        if line.startswith("base "):
            client_base = int(line.split()[1])
        if not line or line.startswith("ready"):
            break
        if line.startswith("progress"):
            if line != last_seen:
                last_seen, last_change = line, time.monotonic()
            elif time.monotonic() - last_change > args.stall:
                # some connections hang (neither up nor failed): stop waiting
                break
    if line.startswith("ready"):
        up, failed = int(line.split()[1]), int(line.split()[3])
    elif last_seen:
        up, failed = int(last_seen.split()[1]), int(last_seen.split()[2])
    else:
        raise RuntimeError(f"{kind}: the clients did not connect within {args.connect_time} s (last line {line!r})")
    connect_s = time.monotonic() - started
    # the server's CPU for the set-up: handshakes (TLS and SPWM), accepts
    setup_cpu = server_cpu(server.pid) - setup_cpu0
    failed = args.count - up
    if args.retries and last_seen:
        print(f"{kind}: {last_seen.split()[-1]} retries by the clients (up to {args.retries} each) by the last progress line", flush=True)
    if failed:
        print(f"{kind}: {failed} of {args.count} connections not set up (failed, timed out, or stalled {args.stall:g} s)", flush=True)
    overflows1 = read_netstat()
    overflowed = (overflows1 - overflows0).overflows if overflows0 and overflows1 else -1
    time.sleep(args.settle)
    server_after = server_rss(server.pid)
    client_rss = rss_kib(client.pid)
    spy = None
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        out = os.path.join(args.profile, f"{kind}-server.txt")
        spy = subprocess.Popen(
            ["py-spy", "record", "--nonblocking", "-r", "100", "-f", "raw", "-o", out, "-p", str(server.pid),
             "-d", str(int(args.measure))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.popen.append(spy)
    m0 = machine_cpu()
    s0, c0, t0 = server_cpu(server.pid), cpu_seconds(client.pid), time.monotonic()
    time.sleep(args.measure)
    s1, c1, t1 = server_cpu(server.pid), cpu_seconds(client.pid), time.monotonic()
    usage = machine_usage(m0, machine_cpu())
    calls: list[str] = []
    if args.count_calls:
        # a second window, under cProfile: Python calls in the clients'
        # process (the agents' side), a figure the machine's noise does not move
        import signal

        client.send_signal(signal.SIGUSR1)
        time.sleep(args.count_calls)
        client.send_signal(signal.SIGUSR2)
        while True:
            line = client.stdout.readline()
            if not line or line.startswith("profile end"):
                break
            if line.startswith("profile"):
                calls.append(line[len("profile"):].rstrip())
    scrapes = scrape(status_port, args.scrape) if status_port else {}
    if client.poll() is not None or server.poll() is not None:
        raise RuntimeError(f"{kind}: a process ended during the run")
    result = {
        "kind": kind,
        "connect_s": connect_s,
        "setup_ms": 1000 * setup_cpu / max(up, 1),
        "overflows": overflowed,
        "failed": failed,
        "server_kib_per_conn": (server_after - server_before) / max(up, 1),
        "server_before_mib": server_before / 1024,
        "client_kib_per_conn": (client_rss - client_base) / max(up, 1),
        "server_cpu": (s1 - s0) / (t1 - t0),
        "client_cpu": (c1 - c0) / (t1 - t0),
        **usage,
        "calls": calls,
        "scrapes": scrapes,
    }
    if spy is not None:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
        result["profile"] = summarize_profile(os.path.join(args.profile, f"{kind}-server.txt"))
    for p in (client, server):
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(2)
    return result


def scrape(port: int, times: int) -> dict[str, list[float]]:
    """
    GET C{/metrics}, C{/status} and the page from the contact point's
    status server C{times} times each, in turn: seconds per request (the
    half's event loop, and so its tunnels, wait while it renders one).
    """
    import urllib.request

    out: dict[str, list[float]] = {"/metrics": [], "/status": [], "/": []}
    for _ in range(times):
        for path in out:
            start = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as reply:
                reply.read()
            out[path].append(time.monotonic() - start)
    return out


def main(procs: Processes, workdir: str, args: argparse.Namespace) -> int:
    tls: list[str] = []
    if not args.plaintext:
        from spwm.testing.certs import TestCA

        ca = TestCA(os.path.join(workdir, "ca"))
        files = ca.issue(["localhost", "127.0.0.1"], "contact")
        tls = [files.cert, files.key, ca.ca_file]
    print(
        f"{args.count} idle connections, {'plaintext' if args.plaintext else 'TLS'}, keepalive interval"
        f" {args.keepalive:g} s, {args.measure:g} s measured; server on CPU {args.server_cpu},"
        f" clients on CPU {args.client_cpu}",
        flush=True,
    )
    results = [run_kind(procs, workdir, args, kind, tls) for kind in args.kinds.split(",")]
    print()
    print("| kind | set-up | failed | listen overflows (host) | server CPU per set-up | server kB/conn | client kB/conn | server CPU | per 1,000 | clients CPU | per 1,000 | machine busy | steal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    k = args.count / 1000
    for r in results:
        print(
            f"| {r['kind']} | {r['connect_s']:.1f} s | {r['failed']} | {r['overflows']} | {r['setup_ms']:.2f} ms | {r['server_kib_per_conn'] * 1.024:.1f} | {r['client_kib_per_conn'] * 1.024:.1f}"
            f" | {100 * r['server_cpu']:.2f} % | {100 * r['server_cpu'] / k:.3f} % | {100 * r['client_cpu']:.2f} %"
            f" | {100 * r['client_cpu'] / k:.3f} % | {100 * r['busy']:.1f} % | {100 * r['steal']:.2f} % |"
        )
    for r in results:
        # what a storm of 10,000 costs the server, from its CPU per set-up
        # here (no storm needed: the clients are not the limit then)
        print(f"{r['kind']}: 10,000 set-ups take {r['setup_ms'] * 10:.1f} s of the server's CPU (one core per worker)")
    byk = {r["kind"]: r for r in results}
    for name in ("spwm", "spwm-ping"):
        if name in byk and "bare" in byk:
            s, b = byk[name], byk["bare"]
            print(
                f"\nratio {name}/bare: server memory per connection {s['server_kib_per_conn'] / b['server_kib_per_conn']:.2f}x;"
                f" CPU above bare TLS, both sides: {100 * (s['server_cpu'] + s['client_cpu'] - b['server_cpu'] - b['client_cpu']):.2f} % of a core"
            )
    for r in results:
        if r["calls"]:
            total = int(r["calls"][0].split()[1])
            per = total / (args.count * args.count_calls)
            print(f"\n{r['kind']} clients under cProfile for {args.count_calls:g} s: {total} Python calls,"
                  f" {per:.2f} per connection per second; most called:")
            for line in r["calls"][1:]:
                print("  " + line)
    for r in results:
        if r["scrapes"]:
            print(f"\n{r['kind']}: a status request with {args.count - r['failed']} tunnels up, median (max) of {args.scrape}:")
            for path, times in r["scrapes"].items():
                print(f"  {path}: {1000 * statistics.median(times):.0f} ms ({1000 * max(times):.0f} ms)")
    for r in results:
        if "profile" in r:
            print(f"\nprofile of the {r['kind']} server:")
            for line in r["profile"]:
                print("  " + line)
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=2000, help="idle connections (default 2000)")
    p.add_argument("--kinds", default="spwm,bare", help="comma-separated: spwm (the kernel's TCP keepalive, the default), spwm-ping (PING frames, --ping-keepalive), bare (a Twisted TLS server and clients); default spwm,bare")
    p.add_argument("--keepalive", type=float, default=15.0, help="--keepalive-interval of both sides (timeout 3x)")
    p.add_argument("--measure", type=float, default=60.0, help="seconds of CPU measured once all are up")
    p.add_argument("--settle", type=float, default=3.0, help="seconds after the last connection before measuring")
    p.add_argument("--stall", type=float, default=30.0, help="stop waiting for the set-up after this many seconds without progress")
    p.add_argument("--connect-time", type=float, default=300.0, help="bound on setting up the connections")
    p.add_argument("--plaintext", action="store_true", help="no TLS")
    p.add_argument("--workers", type=int, default=1, help="--workers of the contact point (its memory and CPU are summed over the supervisor and the workers; pinning applies to all of them, so give --server-cpu -1)")
    p.add_argument("--window", type=int, default=200, help="connections being set up at once (a reconnect storm: --window COUNT)")
    p.add_argument("--retries", type=int, default=0, help="clients try again this many times after a failed connection or handshake, with the agent's jittered backoff (1 s doubling up to --retry-cap), as real agents do (default 0: give up)")
    p.add_argument("--retry-cap", type=float, default=8.0, help="longest wait between two tries (s; the agent's --reconnect-max is 60)")
    p.add_argument("--backlog", type=int, default=0, help="the servers' listen backlog (default: the contact point's own default, 4096 for the bare server)")
    p.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to (-1: none)")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU the clients are pinned to (-1: none)")
    p.add_argument("--media-low", type=int, default=47000, help="the contact point's media ports (100 from here)")
    p.add_argument("--count-calls", type=float, default=0.0, metavar="SECONDS", help="after the CPU window, count the Python calls of the clients' process (cProfile) for SECONDS")
    p.add_argument("--profile", help="py-spy the server during the measurement into this directory")
    p.add_argument("--scrape", type=int, default=0, metavar="K",
                   help="after the CPU window, GET the contact point's /metrics, /status and page K times each and print how long each took (one worker)")
    p.add_argument("--max-time", type=float, default=1200.0)
    p.add_argument("--keep", action="store_true")
    # the processes' own roles
    p.add_argument("--role", choices=["bench", "bare-server", "clients"], default="bench", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="spwm", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cert", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument("--ca", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.server_cpu < 0:
        args.server_cpu = None
    if args.client_cpu < 0:
        args.client_cpu = None
    return args


if __name__ == "__main__":
    a = parse(sys.argv[1:])
    if a.role == "bare-server":
        bare_server(a)
    elif a.role == "clients":
        clients(a)
    else:
        sys.exit(run_bounded(lambda procs, workdir: main(procs, workdir, a), a.max_time, a.keep))
