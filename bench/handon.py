#!/usr/bin/env python3
"""
Benchmark: what a hand-on costs (C{--workers 2}, C{spwm/handon.py}).

An agent behind an HTTP proxy that lets C{CONNECT} through to the shared
C{--listen} port only (so it cannot reach the workers' own ports) forwards
RTP-sized UDP datagrams through its tunnel to a target that echoes them
(C{bench/tunnel_udp.py}'s load, one connection: C{--tunnel-connections 1}).
The proxy cuts the agent's connection until its resumption lands on the
worker that holds the session (C{direct}) or on the other one, which hands
it on (C{handed-on}); the two are measured in turns, in the same run::

    sender ──UDP──> agent ══TCP══> proxy ══> worker k ──UDP──> target   (direct)
    sender ──UDP──> agent ══TCP══> proxy ══> worker j ══unix══> worker k ──UDP──> target   (handed-on)

It prints, per phase, loss and latency (as C{tunnel_udp.py}) and the CPU
of each worker per datagram carried (both legs), so the relay's cost is
the handing worker's share.

Run from the repository's root::

    python3 bench/handon.py                   # 4,000 pps in total, 2 rounds
    python3 bench/handon.py --rate 10000 --rounds 3 --tls
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import socket
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT, Processes, cpu_seconds, percentile, run_bounded  # noqa: E402
from _common import free_port as consecutive, register_through  # noqa: E402
from _load import loss  # noqa: E402
import tunnel_udp  # noqa: E402
from tunnel_udp import Bench, describe, free_port  # noqa: E402


#: digest credentials (the registrar answers 200 without checking them)
DIGEST = (
    'Digest username="bench", realm="example.test", nonce="n0nce", uri="sip:example.test",'
    ' response="0123456789abcdef0123456789abcdef", cnonce="c1", nc=00000001, qop=auth'
)


def proxy_main(port: int, allowed: int, control: int) -> None:
    """
    The proxy process: CONNECT to C{allowed} only; a datagram to
    C{control} cuts every connection it carries.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    from spwm.testing.httpproxy import ConnectProxy

    proxy = ConnectProxy(reactor, {allowed})

    class Control(DatagramProtocol):
        def datagramReceived(self, data: bytes, addr: Any) -> None:
            self.transport.write(str(proxy.cut()).encode(), addr)

    reactor.listenTCP(port, proxy, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.listenUDP(control, Control(), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def consecutive_ports(count: int) -> int:
    """
    The first of C{count} TCP ports free now.
    """
    return consecutive(following=count - 1)


def children(pid: int) -> list[int]:
    from spwm.testing.procs import children as of

    return of(pid)


class HandOnBench(Bench):
    """
    L{tunnel_udp.Bench} with a contact point of two workers and the agent
    behind the proxy.
    """

    def start_tunnel(self) -> None:
        a = self.args
        tport = free_port(socket.SOCK_STREAM)
        # the workers' own ports (the proxy refuses them)
        worker_ports = consecutive_ports(2)
        self.proxy_port = free_port(socket.SOCK_STREAM)
        self.control = free_port(socket.SOCK_DGRAM)
        self.procs.fork(proxy_main, self.proxy_port, tport, self.control)
        self.ports = {"tunnel": [free_port(socket.SOCK_DGRAM) for _ in range(a.forwards)]}
        self.forward_ports = self.ports["tunnel"]
        target = f"{self.target_addr[0]}:{self.target_addr[1]}"
        common = ["--udp-buffer", str(tunnel_udp.RCVBUF)]
        contact_sec, agent_sec = self.security()
        self.contact_log = os.path.join(self.workdir, "contact.log")
        sip = consecutive_ports(2)
        registrar = free_port(socket.SOCK_DGRAM)
        self.contact = self.procs.start_twistd(
            "spwm-contact",
            [*contact_sec, *common, "--workers", "2", "--listen", f"tcp:{tport}:interface=127.0.0.1",
             "--worker-ports", str(worker_ports),
             "--sip-address", f"127.0.0.1:{sip}", "--sip-proxy", f"127.0.0.1:{registrar}", "--allow-forward", target, "--drain-time", "0.2"],
            self.contact_log,
        )  # fmt: skip
        time.sleep(2.0)
        agent_sip = ("127.0.0.1", free_port(socket.SOCK_DGRAM))
        fwd = []
        for p in self.ports["tunnel"]:
            fwd += ["--forward-udp", f"{p}={target}"]
        self.agent = self.agents["tunnel"] = self.procs.start_twistd(
            "spwm-agent",
            [*agent_sec, *common, "--contact", f"127.0.0.1:{tport}", "--http-proxy", f"127.0.0.1:{self.proxy_port}",
             "--tunnel-connections", "1", "--reconnect-max", "1",
             "--sip-listen", f"{agent_sip[0]}:{agent_sip[1]}", *fwd],
            os.path.join(self.workdir, "agent.log"),
        )  # fmt: skip
        self.command_lines = [" ".join(p.args[5:]) for p in (self.contact, self.agent)]
        self._probe("tunnel")
        # digest credentials: the session gets a key, so it can be resumed
        registered = register_through(agent_sip, registrar, "bench", "example.test", authorization=DIGEST)
        if not registered.startswith("200"):
            raise RuntimeError(f"REGISTER through the pair: {registered}")
        self.warm_up(self.tunnel_dests("tunnel"))

    def workers(self) -> dict[int, int]:
        """
        Worker index -> PID, from the supervisor's log.
        """
        found: dict[int, int] = {}
        for pid in children(self.contact.pid):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            except OSError:
                continue
            spec = env.get(b"SPWM_WORKER")
            if spec:
                found[int(spec.split(b"/")[0])] = pid
        return found

    def log_text(self) -> str:
        with open(self.contact_log, errors="replace") as f:
            return f.read()

    def session_worker(self) -> int:
        sessions = re.findall(r"session [0-9a-f]+-w(\d+) resumed", self.log_text())
        if sessions:
            return int(sessions[-1])
        return int(re.findall(r"session ([0-9a-f]+)-w(\d+)", self.log_text())[0][1])

    def reach(self, handed_on: bool, tries: int = 20) -> int:
        """
        Cut the agent's connection until its resumption is (or is not)
        handed on.

        @return: the cuts it took.
        """
        ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for cut in range(1, tries + 1):
            before = self.log_text().count("handed on to worker")
            resumed = self.log_text().count(" resumed from ")
            ctl.sendto(b"cut", ("127.0.0.1", self.control))
            deadline = time.monotonic() + 20
            while self.log_text().count(" resumed from ") <= resumed:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no resumption within 20 s; see {self.workdir}")
                time.sleep(0.1)
            self._probe("tunnel")
            now = self.log_text().count("handed on to worker") > before
            if now == handed_on:
                self.warm_up(self.tunnel_dests("tunnel"))
                return cut
        raise RuntimeError(f"no {'hand-on' if handed_on else 'direct'} resumption in {tries} cuts")


def run(bench: HandOnBench, args: argparse.Namespace) -> None:
    one_way = args.rate / 2
    print(
        f"hand-on: {args.rate:.0f} pps in total = {args.streams} streams x {one_way / args.streams:.0f} pps each way, "
        f"{args.size}-byte datagrams, {args.duration:g} s per phase, {args.rounds} round(s), "
        f"{'TLS' if args.tls else 'plaintext'}, one connection, through the proxy"
    )
    results: dict[str, list[dict[str, Any]]] = {"direct": [], "handed-on": []}
    for round_ in range(args.rounds):
        for name in ("direct", "handed-on") if round_ % 2 == 0 else ("handed-on", "direct"):
            cuts = bench.reach(name == "handed-on")
            holder = bench.session_worker()
            pids = bench.workers()
            cpu0 = {i: cpu_seconds(pid) for i, pid in pids.items()}
            r = bench.run_phase("tunnel", one_way, args.duration, echo=True)
            cpu = {i: (cpu_seconds(pid) - cpu0[i]) for i, pid in pids.items()}
            carried = max(1, r["fwd_received"] + r["back_received"])
            # the contact point is its workers (not the supervisor)
            r["cpu"]["contact"] = sum(cpu.values()) / r["wall"]
            r["path"] = name
            print(f"round {round_ + 1}, {name} (after {cuts} cut(s); the session on worker {holder}):")
            print("\n".join(describe(r, True)))
            per = {i: cpu[i] / carried * 1e6 for i in cpu}
            print(
                "          CPU per datagram: "
                + ", ".join(f"worker {i}{' (holds the session)' if i == holder else ''} {us:.1f} us" for i, us in sorted(per.items()))
                + f"; both workers {sum(per.values()):.1f} us"
            )
            r["workers_us"] = sum(per.values())
            results[name].append(r)
    print("summary (median over rounds):")
    for name, rs in results.items():
        us = sorted(r["workers_us"] for r in rs)
        rtt = sorted(percentile(r["rtt"], 0.99) * 1e6 for r in rs)
        lost = [100 * loss(2 * r["sent"], r["fwd_received"] + r["back_received"]) for r in rs]
        print(
            f"  {name:10} both workers' CPU per datagram {us[len(us) // 2]:.1f} us (runs {', '.join(f'{u:.1f}' for u in us)});"
            f" RTT p99 {rtt[len(rtt) // 2]:.0f} us; loss {', '.join(f'{x:.3f}' for x in lost)} %"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tls", action="store_true", help="TLS between agent and contact point (default: --plaintext)")
    p.add_argument("--rate", type=float, default=4000, help="datagrams per second in total, both ways (default 4000)")
    p.add_argument("--streams", type=int, default=40, help="sender sockets = forward channels (default 40)")
    p.add_argument("--size", type=int, default=172, help="datagram size (default 172: RTP + 160 bytes of G.711)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per phase (default 8)")
    p.add_argument("--drain", type=float, default=0.5, help="seconds to wait for late datagrams (default 0.5)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of both phases, their order alternating (default 2)")
    p.add_argument("--max-time", type=float, default=230, help="stop everything after this many seconds (default 230)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = p.parse_args(argv)
    args.forwards = 1
    sys.path.insert(0, ROOT)

    def bench_main(procs: Processes, workdir: str) -> int:
        bench = HandOnBench(args, procs, workdir)
        bench.start_tunnel()
        for line in bench.command_lines:
            print(f"  started: twistd -n --pidfile= {line}")
        run(bench, args)
        return 0

    return run_bounded(bench_main, args.max_time, args.keep)


if __name__ == "__main__":
    multiprocessing.set_start_method("fork", force=True)
    sys.exit(main())
