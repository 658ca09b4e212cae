#!/usr/bin/env python3
"""
A reconnect storm: N agents resume their sessions at once after a
contact point restart.

The contact point starts from a state file (C{--state-file}) that holds N
sessions with their per-user keys and registrations, as a contact point
writes it when it stops: all N are dormant in the new process.  Then N
clients connect at the same moment and each resumes its session as an
agent does (TLS, the preface, a C{hello} naming the session, the
C{resume} with its proof against the welcome's challenge); a session is
back when its C{resumed} arrives.  Like agents, the clients try again
with the agent's jittered backoff after a refused, reset or timed-out
connection.  Reported: when the first, half, 90 % and all of the sessions
were back, what failed, the contact point's CPU per resumption, the
host's listen-queue overflows, the machine's busy and steal shares.

The baseline in the same run: the same clients, the same N TLS
handshakes at once, against bare Twisted TLS servers (one per worker,
C{SO_REUSEPORT}) whose protocol does nothing.

The clients are not Twisted: one non-blocking loop over C{ssl} and
C{selectors} per client process (C{--client-procs}), so that N client
handshakes cost as little of the two cores as the standard library
allows and the contact point's share is what is measured.  With
C{--workers 1} the contact point is pinned to CPU 0 and the clients to
CPU 1; with more workers nothing is pinned.

    python3 bench/storm.py                                   # 2,000 agents, one worker
    python3 bench/storm.py --count 10000                     # the issue's storm
    python3 bench/storm.py --count 10000 --workers 2 --via shared   # every agent to the shared port

Every process is ended by PID at the end, on Ctrl-C and after --max-time.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import secrets
import selectors
import socket
import ssl
import struct
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
    percentile,
    raise_nofile,
    run_bounded,
    summarize_profile,
)
from spwm.listenqueue import read_netstat  # noqa: E402  (after _common: it puts the checkout on sys.path)
from spwm.testing.procs import children  # noqa: E402

#: how long a client waits for TCP, then for TLS and the welcome, then
#: for the answer to its resume, before it gives the attempt up: the
#: agent's connect timeout, its --handshake-timeout (counted, as the
#: agent's, from the TCP connection) and its keepalive timeout (3 x 15 s:
#: once the welcome is in, only a dead tunnel ends the wait)
CONNECT_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 10.0
RESUME_TIMEOUT = 45.0


# -- what the contact point restarts from -----------------------------------


def make_plan(count: int, workers: int) -> list[dict[str, Any]]:
    """
    N sessions, spread over the workers in turn: each with one user, its
    key, its flow and its worker.  A worker's session ids end in C{-wINDEX}
    (as the workers' own ids do), so a resumption on the wrong worker can
    be handed on.
    """
    plan = []
    for n in range(count):
        worker = n % workers
        suffix = f"-w{worker}" if workers > 1 else ""
        plan.append(
            {
                "session_id": f"{secrets.token_hex(8)}{suffix}",
                "user": f"u{n}@example.net",
                "key": secrets.token_hex(32),
                "flow": n + 1,
                "worker": worker,
            }
        )
    return plan


def state_documents(plan: list[dict[str, Any]], workers: int, saved_at: float) -> list[dict[str, Any]]:
    """
    The state file of each worker, as L{spwm.state.ContactState.save}
    writes it: the sessions with their keys and flows
    (L{spwm.session.codec.to_json}) and one live registration each.
    """
    from spwm.session.codec import to_json
    from spwm.session.session import Session
    from spwm.state import VERSION

    docs = []
    for worker in range(workers):
        sessions = {}
        for p in plan:
            if p["worker"] != worker:
                continue
            session = Session(p["session_id"], keys={p["user"]: bytes.fromhex(p["key"])}, flows={p["user"]: p["flow"]})
            sip = {
                "registrations": [
                    {
                        "aor": f"sip:{p['user']}",
                        "contact": f"sip:{p['user'].split('@')[0]}@192.0.2.10:5060",
                        "flow_id": p["flow"],
                        "ttl": 3600.0,
                    }
                ],
                "rewritten": [],
            }
            sessions[p["session_id"]] = to_json(session, sip)
        docs.append({"version": VERSION, "saved_at": saved_at, "token_secret": secrets.token_hex(32), "sessions": sessions})
    return docs


# -- the clients (run with --role clients) ------------------------------------


class _Client:
    """
    One agent's attempt: TCP, TLS, and (unless bare) the tunnel's
    handshake and the resumption of its session.
    """

    __slots__ = ("entry", "port", "sock", "tls", "state", "buf", "deadline", "attempt", "preface", "redirected")

    def __init__(self, entry: dict[str, Any], port: int, attempt: int, redirected: bool = False) -> None:
        self.entry = entry
        self.redirected = redirected
        self.port = port
        self.attempt = attempt
        self.sock: socket.socket | None = None
        self.tls: ssl.SSLSocket | None = None
        self.state = "connect"
        self.buf = b""
        self.deadline = 0.0
        self.preface = False


def clients(args: argparse.Namespace) -> None:
    """
    Read the plan (JSON lines) from C{args.plan}; on C{go} on stdin, start
    every attempt at once; print C{up SECONDS} per session back and C{done}
    at the end; then hold the connections until stdin closes.
    """
    from spwm.security.keys import resumption_proof
    from spwm.tunnel.frames import ALPN, HEADER, PREFACE_SIZE, FrameType, encode_control, encode_frame, encode_preface
    from spwm.tunnel.service import backoff

    raise_nofile()
    with open(args.plan) as f:
        plan = [json.loads(line) for line in f]
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols([ALPN.decode()])
    sel = selectors.DefaultSelector()
    wait = backoff(cap=8.0)
    retry_at: list[tuple[float, int, int, dict[str, Any], int]] = []  # (when, seq, attempt, entry, port)
    timeouts: list[tuple[float, int, _Client]] = []
    seq = 0
    counts = {"up": 0, "given_up": 0, "retries": 0, "redirects": 0, "refused": 0}
    reasons: dict[str, int] = {}
    up_times: list[float] = []
    live: list[_Client] = []
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    t0 = time.monotonic()

    def expire(c: _Client, after: float) -> None:
        nonlocal seq
        c.deadline = time.monotonic() + after
        seq += 1
        heapq.heappush(timeouts, (c.deadline, seq, c))

    def start(entry: dict[str, Any], port: int, attempt: int, redirected: bool = False) -> None:
        c = _Client(entry, port, attempt, redirected)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        c.sock = sock
        err = sock.connect_ex(("127.0.0.1", port))
        if err not in (0, 115):  # EINPROGRESS
            sock.close()
            failed(c, os.strerror(err))
            return
        expire(c, CONNECT_TIMEOUT)
        sel.register(sock, selectors.EVENT_WRITE, c)

    def close(c: _Client) -> None:
        s = c.tls or c.sock
        if s is not None:
            try:
                sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        c.state = "closed"

    def failed(c: _Client, reason: str, again: bool = True) -> None:
        nonlocal seq
        close(c)
        reasons[reason] = reasons.get(reason, 0) + 1
        if again and time.monotonic() - t0 < args.give_up:
            counts["retries"] += 1
            seq += 1
            heapq.heappush(retry_at, (time.monotonic() + wait(c.attempt), seq, c.attempt + 1, c.entry, c.entry["port"]))
        else:
            counts["given_up"] += 1

    def send(c: _Client, data: bytes) -> None:
        assert c.tls is not None
        c.tls.sendall(data)

    def handshake(c: _Client) -> None:
        assert c.tls is not None
        try:
            c.tls.do_handshake()
        except ssl.SSLWantReadError:
            sel.modify(c.tls, selectors.EVENT_READ, c)
            return
        except ssl.SSLWantWriteError:
            sel.modify(c.tls, selectors.EVENT_WRITE, c)
            return
        except (ssl.SSLError, OSError) as e:
            failed(c, f"TLS: {type(e).__name__}")
            return
        sel.modify(c.tls, selectors.EVENT_READ, c)
        if args.bare:
            is_up(c)
            return
        c.state = "hello"
        hello = {"op": "hello", "version": 1, "agent_id": f"storm-{c.entry['flow']}", "tcp_keepalive": 1,
                 "resume": {"session_id": c.entry["session_id"], "users": [c.entry["user"]]}}  # fmt: skip
        send(c, encode_preface(1, 1) + encode_control(hello))

    def is_up(c: _Client) -> None:
        c.state = "up"
        counts["up"] += 1
        up_times.append(time.monotonic() - t0)
        live.append(c)

    def frames(c: _Client) -> None:
        if not c.preface:
            if len(c.buf) < PREFACE_SIZE:
                return
            c.preface, c.buf = True, c.buf[PREFACE_SIZE:]
        while len(c.buf) >= HEADER.size:
            ftype, flags, channel, length = HEADER.unpack_from(c.buf)
            if len(c.buf) < HEADER.size + length:
                return
            payload, c.buf = c.buf[HEADER.size : HEADER.size + length], c.buf[HEADER.size + length :]
            if ftype == FrameType.PING:
                send(c, encode_frame(FrameType.PONG, 0, 0, payload))
            elif ftype == FrameType.ERROR:
                failed(c, f"ERROR {struct.unpack_from('>H', payload)[0]}")
                return
            elif ftype == FrameType.GOAWAY:
                failed(c, "GOAWAY")
                return
            elif ftype == FrameType.CONTROL:
                control(c, json.loads(payload))
                if c.state == "closed":
                    return

    def control(c: _Client, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "welcome" and c.state == "hello":
            c.state = "resume"
            expire(c, RESUME_TIMEOUT)
            proof = resumption_proof(bytes.fromhex(c.entry["key"]), bytes.fromhex(message["challenge"]), c.entry["session_id"])
            resume = {"op": "resume", "session_id": c.entry["session_id"], "proofs": {c.entry["user"]: proof}, "media": False}
            send(c, encode_control(resume))
        elif op == "resumed" and c.state == "resume":
            is_up(c)
        elif op == "resume-failed":
            redirect = message.get("redirect")
            if isinstance(redirect, int) and not c.redirected:
                # the session lives in another worker: there at once, once
                counts["redirects"] += 1
                close(c)
                start(c.entry, redirect, c.attempt, redirected=True)
            else:
                counts["refused"] += 1
                failed(c, f"resume-failed: {message.get('reason')}", again=False)

    def readable(c: _Client) -> None:
        assert c.tls is not None
        while True:
            try:
                data = c.tls.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except (ssl.SSLError, OSError) as e:
                failed(c, f"read: {type(e).__name__}", again=c.state != "up")
                return
            if not data:
                failed(c, f"closed by the server ({c.state})", again=c.state != "up")
                return
            if c.state == "up" and args.bare:
                continue
            c.buf += data
            frames(c)
            if c.state == "closed":
                return

    def event(c: _Client, mask: int) -> None:
        if c.state == "connect":
            assert c.sock is not None
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                failed(c, os.strerror(err))
                return
            sel.unregister(c.sock)
            c.tls = ctx.wrap_socket(c.sock, server_hostname="localhost", do_handshake_on_connect=False)
            sel.register(c.tls, selectors.EVENT_WRITE, c)
            c.state = "tls"
            expire(c, HANDSHAKE_TIMEOUT)
            handshake(c)
        elif c.state == "tls":
            handshake(c)
        else:
            readable(c)

    for entry in plan:
        start(entry, entry["port"], 1)
    last = 0.0
    total = len(plan)
    while time.monotonic() - t0 < args.give_up + 10:
        now = time.monotonic()
        if now - last >= 0.5:
            last = now
            print(f"progress {now - t0:.1f} {counts['up']} {counts['given_up']} {counts['retries']}", flush=True)
        if counts["up"] + counts["given_up"] >= total:
            break
        while retry_at and retry_at[0][0] <= now:
            _, _, attempt, entry, port = heapq.heappop(retry_at)
            start(entry, port, attempt)
        while timeouts and timeouts[0][0] <= now:
            _, _, c = heapq.heappop(timeouts)
            if c.state in ("connect", "tls", "hello", "resume") and c.deadline <= now:
                failed(c, f"timeout ({c.state})")
        wake = min([0.5] + [max(0.0, t[0][0] - now) for t in (retry_at, timeouts) if t])
        for key, mask in sel.select(wake):
            event(key.data, mask)
    print(f"done {json.dumps({'counts': counts, 'reasons': reasons, 'up': up_times})}", flush=True)
    # hold the sessions until the bench has read the contact point's side
    sys.stdin.readline()


# -- the baseline: a bare TLS server (run with --role bare-server) ----------


def bare_server(args: argparse.Namespace) -> None:
    """
    A Twisted TLS server whose protocol does nothing, on a shared port
    (C{SO_REUSEPORT}), so that several of them share the connections as
    the workers do.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from spwm.tunnel.service import server_tls_options

    raise_nofile()
    factory = TLSMemoryBIOFactory(server_tls_options(args.cert, args.key), False, Factory.forProtocol(Protocol))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(args.backlog)
    sock.setblocking(False)
    reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, factory)  # type: ignore[attr-defined]
    sock.close()
    print("listening", flush=True)
    reactor.run()


# -- the benchmark ------------------------------------------------------------


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + cmd


def server_cpu(server: Any) -> float:
    """
    CPU seconds so far of a server process and its children (the
    workers), or of every member of a L{_Group}.
    """
    if isinstance(server, _Group):
        return sum(server_cpu(m) for m in server.members)
    return cpu_seconds(server.pid) + sum(cpu_seconds(c) for c in children(server.pid))


def somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4096


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} after {timeout:g} s")


def storm(procs: Processes, workdir: str, args: argparse.Namespace, kind: str, plan: list[dict[str, Any]],
          tls: list[str], server: Any) -> dict[str, Any]:  # fmt: skip
    """
    Run the clients against a started server; return the figures.
    """
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    n = max(1, args.client_procs)
    client_cpu = None if args.workers > 1 else 1
    started = []
    for i in range(n):
        path = os.path.join(workdir, f"{kind}-plan-{i}.jsonl")
        with open(path, "w") as f:
            for entry in plan[i::n]:
                f.write(json.dumps(entry) + "\n")
        cmd = [sys.executable, os.path.abspath(__file__), "--role", "clients", "--plan", path, "--ca", tls[2],
               "--give-up", str(args.give_up), *(["--bare"] if kind == "bare" else [])]  # fmt: skip
        p = subprocess.Popen(pinned(client_cpu, cmd), cwd=ROOT, env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile)  # fmt: skip
        procs.popen.append(p)
        started.append(p)
    for p in started:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind}: a client process did not start")
    m0, cpu0, overflows0 = machine_cpu(), server_cpu(server), read_netstat()
    for p in started:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    t0 = time.monotonic()
    done: list[dict[str, Any]] = []
    for p in started:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("done "):
                done.append(json.loads(line[5:]))
                break
        else:
            raise RuntimeError(f"{kind}: a client process ended without its figures")
    wall = time.monotonic() - t0
    cpu1, overflows1 = server_cpu(server), read_netstat()
    usage = machine_usage(m0, machine_cpu())
    ups = sorted(t for d in done for t in d["up"])
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for d in done:
        for k, v in d["counts"].items():
            counts[k] = counts.get(k, 0) + v
        for k, v in d["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    if server.poll() is not None:
        raise RuntimeError(f"{kind}: the server ended during the storm")
    result = {
        "kind": kind,
        "count": len(plan),
        "up": len(ups),
        "first": ups[0] if ups else float("nan"),
        "p50": percentile(ups, 0.5) if ups else float("nan"),
        "p90": percentile(ups, 0.9) if ups else float("nan"),
        "last": ups[-1] if ups else float("nan"),
        "wall": wall,
        "server_cpu": cpu1 - cpu0,
        "overflows": (overflows1 - overflows0).overflows if overflows0 and overflows1 else -1,
        "counts": counts,
        "reasons": reasons,
        **usage,
    }
    for p in started:
        assert p.stdin is not None
        p.stdin.close()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    return result


def run_bare(procs: Processes, workdir: str, args: argparse.Namespace, tls: list[str], plan: list[dict[str, Any]]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    port = free_port()
    servers = []
    for i in range(args.workers):
        cmd = [sys.executable, os.path.abspath(__file__), "--role", "bare-server", "--port", str(port),
               "--cert", tls[0], "--key", tls[1], "--backlog", str(somaxconn())]  # fmt: skip
        log = open(os.path.join(workdir, f"bare-{i}.log"), "wb")
        p = subprocess.Popen(pinned(0 if args.workers == 1 else None, cmd), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=log, stdin=subprocess.DEVNULL, text=True, preexec_fn=raise_nofile)  # fmt: skip
        procs.popen.append(p)
        assert p.stdout is not None
        if p.stdout.readline().strip() != "listening":
            raise RuntimeError("the bare server did not start")
        servers.append(p)
    bare_plan = [dict(e, port=port) for e in plan]
    result = storm(procs, workdir, args, "bare", bare_plan, tls, _Group(servers))
    for p in servers:
        p.terminate()
        p.wait(5)
    return result


class _Group:
    """Several servers, measured as one (L{server_cpu} sums them)."""

    def __init__(self, members: list[subprocess.Popen]) -> None:
        self.members = members

    def poll(self) -> int | None:
        for m in self.members:
            if m.poll() is not None:
                return m.returncode
        return None


def run_spwm(procs: Processes, workdir: str, args: argparse.Namespace, tls: list[str], plan: list[dict[str, Any]]) -> dict[str, Any]:
    port = free_port()
    state = os.path.join(workdir, "contact.state")
    docs = state_documents(plan, args.workers, time.time())
    for i, doc in enumerate(docs):
        path = f"{state}.{i}" if args.workers > 1 else state
        with open(path, "w") as f:
            json.dump(doc, f)
    sip = free_port()
    contact_args = [
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--sip-address", f"127.0.0.1:{sip}",
        "--max-tunnels", str(len(plan) + 100), "--max-tunnels-per-address", str(len(plan) + 100),
        "--status-interval", "0", "--media-ports", f"{args.media_low}-{args.media_low + 99}",
        "--state-file", state, "--cert", tls[0], "--key", tls[1],
        *(["--workers", str(args.workers)] if args.workers > 1 else []), *args.contact_arg,
    ]  # fmt: skip
    log = os.path.join(workdir, "contact.log")
    started = time.monotonic()
    cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "spwm-contact",
           *contact_args]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "wb") as out:
        server = subprocess.Popen(pinned(0 if args.workers == 1 else None, cmd), cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=raise_nofile)  # fmt: skip
    procs.popen.append(server)

    def restored() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"spwm-contact ended at start: see {log}")
        with open(log, errors="replace") as f:
            text = f.read()
        return text.count("sessions restored") >= args.workers

    wait_for(restored, 120, "the contact point did not restore its sessions")
    start_s = time.monotonic() - started
    time.sleep(1.0)
    # an agent resumes where its session lives: the worker's own port
    # (the welcome's resume_port), or the shared port with --via shared
    for e in plan:
        e["port"] = port if args.workers == 1 or args.via == "shared" else port + 1 + e["worker"]
    spy = None
    if args.profile:
        # py-spy the worker (one worker: the process itself) through the storm
        target = server.pid if args.workers == 1 else children(server.pid)[0]
        spy = subprocess.Popen(["py-spy", "record", "--nonblocking", "-r", "100", "-f", "raw", "-o", args.profile,
                                "-p", str(target)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        procs.popen.append(spy)
        time.sleep(1.0)
    result = storm(procs, workdir, args, "spwm", plan, tls, server)
    if spy is not None:
        import signal

        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        spy.wait(30)
        result["profile"] = summarize_profile(args.profile, top=25)
    result["start_s"] = start_s
    with open(log, errors="replace") as f:
        text = f.read()
    result["log_resumed"] = text.count(" resumed from ")
    result["log_refused"] = text.count("refused resumption")
    result["handed_on"] = text.count("handed on")
    return result


def main(procs: Processes, workdir: str, args: argparse.Namespace) -> int:
    from spwm.testing.certs import TestCA

    ca = TestCA(os.path.join(workdir, "ca"))
    files = ca.issue(["localhost", "127.0.0.1"], "contact")
    tls = [files.cert, files.key, ca.ca_file]
    plan = make_plan(args.count, args.workers)
    print(
        f"reconnect storm: {args.count} agents at once, TLS, {args.workers} worker(s), {args.client_procs} client"
        f" process(es), {'pinned: server CPU 0, clients CPU 1' if args.workers == 1 else 'nothing pinned'}",
        flush=True,
    )
    results = []
    if not args.skip_bare:
        results.append(run_bare(procs, workdir, args, tls, plan))
    results.append(run_spwm(procs, workdir, args, tls, plan))
    print()
    print("| kind | back | first | half | 90 % | all | server CPU | per set-up | retries | redirects | given up | listen overflows | busy | steal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        c = r["counts"]
        print(
            f"| {r['kind']} | {r['up']} of {r['count']} | {r['first']:.2f} s | {r['p50']:.2f} s | {r['p90']:.2f} s"
            f" | {r['last']:.2f} s | {r['server_cpu']:.1f} s | {1000 * r['server_cpu'] / max(r['up'], 1):.2f} ms"
            f" | {c.get('retries', 0)} | {c.get('redirects', 0)} | {c.get('given_up', 0)} | {r['overflows']}"
            f" | {100 * r['busy']:.0f} % | {100 * r['steal']:.1f} % |"
        )
    for r in results:
        if r["reasons"]:
            print(f"{r['kind']}: attempts that failed: " + ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1])))
    spwm = results[-1]
    print(
        f"spwm: the contact point read its state and listened {spwm['start_s']:.1f} s after its start;"
        f" its log: {spwm['log_resumed']} resumed, {spwm['log_refused']} refused, {spwm['handed_on']} handed on"
    )
    if len(results) == 2:
        bare = results[0]
        print(
            f"ratio spwm/bare: all back {spwm['last'] / bare['last']:.2f}x, server CPU per set-up"
            f" {spwm['server_cpu'] / max(spwm['up'], 1) / (bare['server_cpu'] / max(bare['up'], 1)):.2f}x"
        )
    for line in spwm.get("profile", []):
        print(line)
    lost = spwm["count"] - spwm["up"]
    verdict = "every session back" if not lost else f"{lost} sessions NOT back"
    print(
        f"verdict: {verdict}, the last {spwm['last']:.1f} s after they all set off, {spwm['start_s'] + spwm['last']:.1f} s"
        f" after the contact point's start (target: all within 20 s)"
    )
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=2000, help="agents (default 2000)")
    p.add_argument("--workers", type=int, default=1, help="--workers of the contact point (and bare servers in the baseline)")
    p.add_argument("--client-procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--via", choices=["worker", "shared"], default="worker",
                   help="with --workers: agents resume at their worker's own port (as after a welcome's resume_port, the default) or at the shared port (handed on)")  # fmt: skip
    p.add_argument("--give-up", type=float, default=90.0, help="clients stop trying after this many seconds")
    p.add_argument("--skip-bare", action="store_true", help="no baseline")
    p.add_argument("--contact-arg", action="append", default=[], metavar="ARG", help="one more argument for spwm-contact")
    p.add_argument("--media-low", type=int, default=47000, help="the contact point's media ports (100 from here)")
    p.add_argument("--profile", metavar="FILE", help="py-spy the contact point (its first worker) through the storm into FILE (raw)")
    p.add_argument("--max-time", type=float, default=900.0)
    p.add_argument("--keep", action="store_true")
    # the processes' own roles
    p.add_argument("--role", choices=["bench", "bare-server", "clients"], default="bench", help=argparse.SUPPRESS)
    p.add_argument("--plan", help=argparse.SUPPRESS)
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--backlog", type=int, default=4096, help=argparse.SUPPRESS)
    p.add_argument("--cert", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument("--ca", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("count", "workers", "client_procs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be 1 or more")
    if args.give_up <= 0:
        p.error("--give-up must be above 0")
    return args


if __name__ == "__main__":
    a = parse(sys.argv[1:])
    if a.role == "bare-server":
        bare_server(a)
    elif a.role == "clients":
        clients(a)
    else:
        sys.exit(run_bounded(lambda procs, workdir: main(procs, workdir, a), a.max_time, a.keep))
