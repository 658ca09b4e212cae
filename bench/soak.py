#!/usr/bin/env python3
"""
Soak: calls with media through an SPWM agent and contact point for minutes
on end, with the tunnel cut now and then, watching each half's memory, file
descriptors and state.  A half that keeps something of every call, every
cut or every resumption grows here where a short benchmark cannot tell.

Processes (each its own)::

    sipp -sn uac_pcap ──UDP──> spwm-agent ══TLS══ cutter ══> spwm-contact ──UDP──> sipp -sn uas -rtp_echo
                                                                          --sip-proxy UAS

Each call is SIPp's built-in C{uac_pcap} scenario: INVITE with an SDP
offer, 200 with an answer, ACK, 8 s of G.711 RTP (C{g711a.pcap}, 7 s of
audio, and a DTMF event) that the UAS echoes back, BYE.  So every call
sets up relay ports and channels on both halves, carries media both ways
and ends.  (C{--scenario uac}: the same without RTP, a call every
C{--call-length} ms.)  The cutter is a TCP relay in this benchmark's own
process between the agent and the contact point; every C{--cut-every}
seconds it closes every tunnel connection it carries, so the agent
reconnects and resumes its session (calls in progress go on; the
registration has no digest credentials, so by the session key, which
needs TLS: with C{--plaintext} every cut ends the calls).

Every C{--sample} seconds it reads each half's resident memory (C{VmRSS}),
its open file descriptors and a few gauges of its C{/status} (dialogs,
media streams, sessions).  The baseline is the same run's: each half's
memory when the warm-up (the first C{--warmup} seconds of calls) has
passed.  It prints the growth from there to the end of the calls, per
minute and per 1,000 calls, as a least-squares slope over the samples
after the warm-up, and the same slope over the second half of the calls
alone (a half that settles has a flatter second half; one that keeps
something per call does not).  After the calls and C{--settle} seconds
it checks that each half is back where it was before the first call:
as many file descriptors, no dialog, stream or channel left.  The
session's tunnel connections are counted apart (C{--tunnel-connections
auto} may have grown them); when the agent ends with more than it started
with, the lines of its log that opened them are printed.

    python3 bench/soak.py                              # 10 minutes, 20 calls/s with media, a cut a minute
    python3 bench/soak.py --minutes 3 --rate 10        # shorter
    python3 bench/soak.py --scenario uac --rate 100 --call-length 1000   # signalling and relay ports, no RTP
    python3 bench/soak.py --cut-every 0                # no cuts
    python3 bench/soak.py --quic                       # media on a QUIC path; the cuts hit the TCP connections only

Everything it starts is ended by PID when it finishes, on Ctrl-C, on an
error and after C{--max-time}.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    Pair,
    Processes,
    cpu_model,
    cpu_seconds,
    free_port,
    machine_cpu,
    machine_usage,
    register_through,
    run_bounded,
)

from spwm.testing.ports import free_udp_block  # noqa: E402
from spwm.testing.sipp import last_stats, stat_count  # noqa: E402

#: where SIPp's own pcap files are (Debian's C{sip-tester})
PCAP_DIR = "/usr/share/sip-tester"

#: gauges read from each half's C{/status} (section, key); absent ones are skipped
GAUGES = (
    ("sip", "dialogs"),
    ("media", "streams"),
    ("media", "channels"),
    ("calls", "in_progress"),
    ("sessions", "live"),
    ("sessions", "dormant"),
    # the session's tunnel connections (--tunnel-connections auto grows
    # them while media stalls): descriptors that are no leak
    ("paths", "paths"),
)


# -- the cutter ---------------------------------------------------------------


def cutter(listen_port: int, target_port: int) -> None:
    """
    A TCP relay from C{127.0.0.1:listen_port} to C{127.0.0.1:target_port}
    (run in a forked process): every connection is relayed byte for byte;
    C{SIGUSR1} closes every connection it holds (both sides, with a reset),
    as a cut would, and it goes on accepting.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cut = [False]

    def on_usr1(signum: int, frame: Any) -> None:
        cut[0] = True

    signal.signal(signal.SIGUSR1, on_usr1)
    sel = selectors.DefaultSelector()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(64)
    server.setblocking(False)
    sel.register(server, selectors.EVENT_READ, None)
    peers: dict[socket.socket, socket.socket] = {}

    def close(s: socket.socket) -> None:
        other = peers.pop(s, None)
        for x in (s, other):
            if x is None:
                continue
            peers.pop(x, None)
            try:
                sel.unregister(x)
            except (KeyError, ValueError):
                pass
            try:
                x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            x.close()

    while True:
        if cut[0]:
            cut[0] = False
            for s in list(peers):
                if s in peers:
                    close(s)
        try:
            events = sel.select(0.2)
        except InterruptedError:
            continue
        for key, _ in events:
            s = key.fileobj
            if s is server:
                try:
                    client, _addr = server.accept()
                except BlockingIOError:
                    continue
                upstream = socket.create_connection(("127.0.0.1", target_port))
                for x in (client, upstream):
                    x.setblocking(False)
                    x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(x, selectors.EVENT_READ, None)
                peers[client] = upstream
                peers[upstream] = client
                continue
            if s not in peers:
                continue
            try:
                data = s.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                close(s)
                continue
            other = peers[s]
            try:
                other.setblocking(True)
                other.settimeout(5)
                other.sendall(data)
                other.setblocking(False)
            except OSError:
                close(s)


# -- samples -------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    """
    Open file descriptors of C{pid}, not counting epoll instances (the
    media relay's is made with the first call and kept).
    """
    count = 0
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") != "anon_inode:[eventpoll]":
                    count += 1
            except OSError:
                pass
    except OSError:
        return 0
    return count


def status_doc(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as reply:
            return json.loads(reply.read())
    except (OSError, ValueError):
        return {}


def gauges(doc: dict[str, Any]) -> dict[str, float]:
    out = {}
    for section, key in GAUGES:
        value = (doc.get(section) or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{section}.{key}"] = value
    return out


def slope(points: list[tuple[float, float]]) -> float:
    """
    The least-squares slope of C{(x, y)} points (0 for fewer than two).
    """
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


# -- SIPp's media ports ----------------------------------------------------------

#: The uac_pcap scenario names SIPp's [auto_media_port] in each call's SDP:
#: its -mp plus 4 x the call's number modulo 10,000 (SIPp's documentation),
#: ports it does not bind.  That sweep is kept off the halves' media ranges,
#: off the ports L{free_port} hands out (10000-19999) and off the UAS's echo
#: ports: a call whose SDP names the echo has both halves relay the echo's
#: audio round and round through it (nothing any relay could tell from a
#: phone).  The halves' ranges start at L{MEDIA_BASE}, the sweep after them.
MEDIA_BASE = 20000
UAC_MEDIA_SWEEP = 10_004

#: Where the UAS's echo ports are looked for (below L{free_port}'s).
ECHO_PORTS = (8000, 10000)


# -- the run -------------------------------------------------------------------


def run(args: argparse.Namespace, procs: Processes, workdir: str) -> int:
    uas_port = free_port()
    status_ports = {"agent": free_port(), "contact": free_port()}
    relay_port = free_port() if args.cut_every else None
    quic = ["--quic-listen", f"127.0.0.1:{free_port()}"] if args.quic else []
    pair = Pair(
        procs,
        workdir,
        ("127.0.0.1", uas_port),
        media_ports=args.media_ports,
        tls=not args.plaintext,
        agent_extra=[
            "--status-listen", f"tcp:{status_ports['agent']}:interface=127.0.0.1",
            "--cdr-file", os.path.join(workdir, "agent-cdr.jsonl"), *args.agent_arg,
        ],
        contact_extra=[
            "--status-listen", f"tcp:{status_ports['contact']}:interface=127.0.0.1",
            "--cdr-file", os.path.join(workdir, "contact-cdr.jsonl"), *quic, *args.contact_arg,
        ],
        agent_contact_port=relay_port,
        media_base=MEDIA_BASE,
    )
    uac_media = MEDIA_BASE + 2 * args.media_ports
    if uac_media + UAC_MEDIA_SWEEP > 65536:
        raise SystemExit(f"--media-ports {args.media_ports}: no room for SIPp's media ports after the halves' ranges")
    cut_proc = None
    if relay_port is not None:
        cut_proc = procs.fork(cutter, relay_port, pair.tunnel_port)
    pair.wait_up()
    # one REGISTER for the whole run (its registrar's port is SIPp's UAS's
    # afterwards, which cannot answer a refresh): it must outlive the calls
    # and the settling, or the contact point refuses the tunnel's requests
    # (403, not registered) from then on; a run of an hour with an expiry
    # of 3600 s failed its last calls so
    expires = max(3600, int(args.minutes * 60 + args.settle + 600))
    # SIPp's From is sip:sipp@127.0.0.1:PORT (its own port): the
    # address-of-record registered, the port included (RFC 3261 19.1.4)
    uac_port = free_port()
    registered = register_through(pair.sip_listen, uas_port, "sipp", f"127.0.0.1:{uac_port}", expires=expires)
    pids = pair.pids

    uas_dir = os.path.join(workdir, "uas")
    uac_dir = os.path.join(workdir, "uac")
    for d in (uas_dir, uac_dir):
        os.makedirs(d)
        # the uac_pcap scenario plays pcap/g711a.pcap relative to its directory
        os.symlink(PCAP_DIR, os.path.join(d, "pcap"))

    def sipp(argv: list[str], cwd: str) -> subprocess.Popen:
        out = open(os.path.join(cwd, "sipp.out"), "wb")
        p = subprocess.Popen(["sipp", *argv], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        procs.popen.append(p)
        return p

    # the echo listens on -mp to -mp + 3 (audio and video, RTP and RTCP)
    echo = free_udp_block(*ECHO_PORTS, 4)
    trace = ["-trace_msg"] if args.trace_sip else []
    uas = sipp(["-sn", "uas", "-rtp_echo", "-i", "127.0.0.1", "-p", str(uas_port), "-mp", str(echo), "-nostdin", *trace], uas_dir)
    time.sleep(0.5)
    if uas.poll() is not None:
        raise RuntimeError(f"the SIPp UAS exited with {uas.returncode}; see {uas_dir}")

    seconds = args.minutes * 60
    calls = int(round(args.rate * seconds))
    call_s = 9.0 if args.scenario == "uac_pcap" else args.call_length / 1000
    print(
        f"soak: SIPp {args.scenario} -{args.phone_transport.upper()}-> agent -> {'cutter -> ' if relay_port else ''}contact point "
        f"({'plaintext' if args.plaintext else 'TLS'}{', media on a QUIC path beside it (not cut)' if quic else ''}) "
        f"-> SIPp uas -rtp_echo; {args.rate:g} calls/s for "
        f"{args.minutes:g} min ({calls} calls of about {call_s:g} s, about {args.rate * call_s:.0f} at once); "
        + (f"the tunnel cut every {args.cut_every:g} s" if args.cut_every else "no cuts"),
        flush=True,
    )
    print(f"  machine: {os.cpu_count()} CPUs, {cpu_model()}", flush=True)
    for line in pair.command_lines:
        print(f"  started: {line}")
    print(f"  REGISTER sip:sipp@127.0.0.1:{uac_port} through the pair: {registered}", flush=True)

    time.sleep(1.0)
    idle = {name: {"fds": fd_count(pid), "rss": rss_kb(pid), "gauges": gauges(status_doc(status_ports[name]))} for name, pid in pids.items()}
    stat = os.path.join(uac_dir, "stat.csv")
    uac_args = [
        "-sn", args.scenario, f"{pair.sip_listen[0]}:{pair.sip_listen[1]}",
        "-i", "127.0.0.1", "-p", str(uac_port), "-mp", str(uac_media),
        "-nostdin", "-r", f"{args.rate:g}", "-m", str(calls), "-l", str(max(10, int(args.rate * (call_s + 10)))),
        "-recv_timeout", "10000", "-timeout", f"{seconds + call_s + 120:.0f}s", "-timeout_error",
        "-trace_stat", "-stf", stat, "-fd", "5", "-trace_err", *trace,
    ]
    if args.scenario == "uac":
        uac_args += ["-d", str(args.call_length)]
    if args.phone_transport == "tcp":
        # SIPp over TCP retransmits nothing, as a phone over TCP or TLS:
        # SIP the pair loses is a failed call
        uac_args += ["-t", "t1"]
    cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
    mach0 = machine_cpu()
    start = time.monotonic()
    uac = sipp(uac_args, uac_dir)
    samples: list[dict[str, Any]] = []
    next_cut = start + args.cut_every if args.cut_every else float("inf")
    cuts = 0
    print("  | min | calls | agent RSS MB | contact RSS MB | agent fds | contact fds | agent gauges | contact gauges |")
    print("  | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    next_sample = start + args.sample
    while uac.poll() is None:
        time.sleep(max(0.05, min(next_sample, next_cut) - time.monotonic()))
        now = time.monotonic()
        if now >= next_cut and cut_proc is not None and uac.poll() is None:
            os.kill(cut_proc.pid, signal.SIGUSR1)
            cuts += 1
            next_cut += args.cut_every
        if now >= next_sample:
            next_sample += args.sample
            last = last_stats(stat)
            sample = {
                "t": now,
                "calls": stat_count(last, "OutgoingCall(C)"),
                **{f"{name}_rss": rss_kb(pid) for name, pid in pids.items()},
                **{f"{name}_fds": fd_count(pid) for name, pid in pids.items()},
                **{f"{name}_gauges": gauges(status_doc(port)) for name, port in status_ports.items()},
            }
            samples.append(sample)
            print(
                f"  | {(now - start) / 60:.1f} | {sample['calls']} | {sample['agent_rss'] / 1024:.1f} | "
                f"{sample['contact_rss'] / 1024:.1f} | {sample['agent_fds']} | {sample['contact_fds']} | "
                f"{_short(sample['agent_gauges'])} | {_short(sample['contact_gauges'])} |",
                flush=True,
            )
            for name, pid in pids.items():
                if not os.path.exists(f"/proc/{pid}"):
                    raise RuntimeError(f"spwm-{name} exited during the soak; see {workdir}")
    wall = time.monotonic() - start
    cpu = {k: (cpu_seconds(v) - cpu0[k]) / wall for k, v in pids.items()}
    mach = machine_usage(mach0, machine_cpu())
    last = last_stats(stat)

    def n(key: str) -> int:
        return stat_count(last, key)

    success, failed = n("SuccessfulCall(C)"), n("FailedCall(C)")
    time.sleep(args.settle)
    after = {name: {"fds": fd_count(pid), "rss": rss_kb(pid), "gauges": gauges(status_doc(status_ports[name]))} for name, pid in pids.items()}

    print(
        f"\n  calls: {success} of {calls} completed, {failed} failed, in {wall / 60:.1f} min; {cuts} cuts; "
        f"CPU agent {100 * cpu['agent']:.0f} %, contact point {100 * cpu['contact']:.0f} % of a core; "
        f"machine busy {100 * mach['busy']:.0f} %, steal {100 * mach['steal']:.1f} %"
    )
    bounded = True
    warm = [s for s in samples if s["t"] - start >= args.warmup]
    for name in pids:
        points = [((s["t"] - start) / 60, s[f"{name}_rss"] / 1024) for s in warm]
        if len(points) >= 4:
            base = points[0][1]
            end = points[-1][1]
            per_min = slope(points)
            second = slope(points[len(points) // 2 :])
            warm_calls = warm[-1]["calls"] - warm[0]["calls"]
            per_kcall = (end - base) * 1024 / max(1, warm_calls) * 1000
            print(
                f"  {name}: RSS {idle[name]['rss'] / 1024:.1f} MB idle, {base:.1f} MB after the warm-up (the baseline), "
                f"{end:.1f} MB at the end of the calls: {end - base:+.1f} MB over {warm_calls} calls "
                f"({per_kcall:+.1f} kB per 1,000 calls); slope {1024 * per_min:+.0f} kB/min, "
                f"second half {1024 * second:+.0f} kB/min"
            )
        else:
            print(f"  {name}: too few samples after the warm-up for a slope (--minutes, --warmup, --sample)")
        left = {k: v for k, v in after[name]["gauges"].items() if v and not k.startswith(("sessions.", "paths."))}
        grown = after[name]["gauges"].get("paths.paths", 0) - idle[name]["gauges"].get("paths.paths", 0)
        fds = after[name]["fds"] - idle[name]["fds"]
        ok = not left and fds - max(0, grown) <= 0
        bounded = bounded and ok
        print(
            f"  {name}: {args.settle:g} s after the calls: {after[name]['fds']} file descriptors "
            f"({fds:+d} against before the first call, {grown:+d} tunnel connections), RSS {after[name]['rss'] / 1024:.1f} MB, "
            f"{_short(after[name]['gauges'])}: {'back to idle' if ok else 'NOT BACK TO IDLE'}"
        )
        if name == "agent" and grown > 0:
            # what grew them (--tunnel-connections auto): the count's own words
            for line in count_changes(pair.agent_log)[-3:]:
                print(f"    {line}")
    media_ok = True
    if args.scenario == "uac_pcap":
        for name in pids:
            verdict = media_verdict(os.path.join(workdir, f"{name}-cdr.jsonl"), name)
            media_ok = media_ok and verdict["silent"] == 0 and verdict["looped"] == 0
            print(
                f"  {name}: media of {verdict['answered']} answered calls (its --cdr-file): a median of "
                f"{verdict['median']:g} datagrams through the tunnel each; {verdict['silent']} with less than half of "
                f"that (media lost), {verdict['looped']} with more than twice (media looping)"
                + (f": {', '.join(verdict['examples'])}" if verdict["examples"] else "")
            )
    if args.trace_sip:
        print_one_way(uac_dir, uas_dir)
    print_sip_carried({name: status_doc(port) for name, port in status_ports.items()})
    for line, count in sorted(pair.warning_counts().items(), key=lambda kv: -kv[1])[:12]:
        print(f"  log x{count}: {line}")
    with open(os.path.join(workdir, "samples.json"), "w") as f:
        json.dump({"idle": idle, "after": after, "samples": samples}, f)
    ok = bounded and media_ok and failed == 0 and success == calls
    print(f"verdict: {'every call completed and both halves came back to idle' if ok else 'SEE ABOVE'}")
    return 0 if ok else 1


def print_sip_carried(docs: dict[str, dict[str, Any]]) -> None:
    """
    The SIP the cuts put in flight again: sent again on another connection
    of the session (C{paths.sip_order}), carried into a resumed session or
    dropped there (the agent's C{no_tunnel}).
    """
    for name, doc in docs.items():
        order = (doc.get("paths") or {}).get("sip_order") or {}
        held = doc.get("no_tunnel") or {}
        parts = [f"{key} {order[key]}" for key in ("sip_resent", "sip_copies", "sip_given_up") if key in order]
        parts += [f"{key} {held[key]}" for key in ("held_resuming", "held_carried", "carried_taken", "carried_dropped") if key in held]
        sip = doc.get("sip") or {}
        parts += [f"{key} {sip[key]}" for key in ("resume_held", "resume_carried", "resume_carried_taken", "resume_carried_dropped") if key in sip]
        if parts:
            print(f"  {name}: SIP through the cuts: {', '.join(parts)}")


def print_one_way(uac_dir: str, uas_dir: str) -> None:
    """
    From both SIPp's message logs (C{--trace-sip}): how long SIP took
    through the pair, one way, per kind of message.
    """
    from spwm.testing.sipp import message_times, one_way

    logs = []
    for d in (uac_dir, uas_dir):
        found = [name for name in os.listdir(d) if name.endswith("_messages.log")]
        if not found:
            print(f"  SIP one-way: no message log in {d}")
            return
        with open(os.path.join(d, found[0]), encoding="utf-8", errors="replace") as f:
            logs.append(message_times(f.read()))
    uac, uas = logs
    parts = []
    for sender, receiver, what, method, label in (
        (uac, uas, "INVITE", "INVITE", "INVITE"),
        (uas, uac, "200", "INVITE", "its 200"),
        (uac, uas, "ACK", "ACK", "ACK"),
        (uac, uas, "BYE", "BYE", "BYE"),
        (uas, uac, "200", "BYE", "its 200"),
    ):
        times = one_way(sender, receiver, what, method)
        if not times:
            continue
        p50 = times[len(times) // 2] * 1000
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
        late = sum(1 for t in times if t > 0.5)
        parts.append(f"{label} p50 {p50:.1f} / p99 {p99:.0f} / max {times[-1] * 1000:.0f} ms ({late} of {len(times)} over 500 ms)")
    print("  SIP one-way through the pair (first copies, SIPp's message logs): " + "; ".join(parts))


def count_changes(log: str) -> list[str]:
    """
    @return: the agent log's lines of C{--tunnel-connections auto}
        changing its count (opening or dropping connections), timestamps
        kept, the logger's name dropped.
    """
    lines = []
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                if "PathKeeper#info" in line and ("; opening " in line or "; spreading them" in line or "; dropping" in line):
                    stamp, _, text = line.partition(" [")
                    lines.append(f"{stamp} {text.partition('] ')[2].rstrip()}")
    except OSError:
        pass
    return lines


def media_verdict(path: str, side: str) -> dict[str, Any]:
    """
    What a half's call detail records say of each answered call's media
    through the tunnel: every call plays the same pcap, so a call whose
    tunnel leg carried less than half the median lost its media (no
    channel), and one with more than twice the median looped.

    @return: C{answered}, C{median}, C{silent}, C{looped} and up to five
        C{examples} (Call-ID and count).
    """
    counts: list[tuple[str, int]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("answered_s") is None:
                continue
            packets = 0
            for stream in record.get("streams") or []:
                legs = stream.get("legs") or {}
                packets += (legs.get("tunnel") or {}).get("packets") or 0
            counts.append((str(record.get("call_id")), packets))
    ordered = sorted(c for _, c in counts)
    median = ordered[len(ordered) // 2] if ordered else 0
    silent = [(i, c) for i, c in counts if c < median / 2]
    looped = [(i, c) for i, c in counts if c > 2 * median]
    examples = [f"{i} {c}" for i, c in (silent + looped)[:5]]
    return {"answered": len(counts), "median": median, "silent": len(silent), "looped": len(looped), "examples": examples}


def _short(g: dict[str, float]) -> str:
    return " ".join(f"{k.split('.', 1)[1]}={v:g}" for k, v in g.items()) or "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of calls (default 10)")
    parser.add_argument("--rate", type=float, default=20.0, help="new calls per second (default 20)")
    parser.add_argument("--scenario", choices=("uac_pcap", "uac"), default="uac_pcap", help="SIPp's built-in scenario (default uac_pcap: with RTP)")
    parser.add_argument("--call-length", type=int, default=1000, help="--scenario uac: ms between ACK and BYE (default 1000)")
    parser.add_argument("--cut-every", type=float, default=60.0, help="seconds between tunnel cuts (default 60; 0: none)")
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between samples (default 15)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of calls before the baseline (default 60)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the calls before the idle check (default 5)")
    parser.add_argument("--media-ports", type=int, default=4000, help="each half's media port range (default 4000)")
    parser.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS in the tunnel: no session key either (its one REGISTER has no digest credentials), so each cut"
        " ends the calls and every later call is refused 403 until a new REGISTER (docs/security.md): use it with --cut-every 0",
    )
    parser.add_argument(
        "--quic",
        action="store_true",
        help="the contact point also listens for QUIC (--quic-listen): the agent sends the media on a QUIC "
        "path beside the TLS tunnel, which the cuts do not touch",
    )
    parser.add_argument("--agent-arg", action="append", default=[], metavar="ARG")
    parser.add_argument("--contact-arg", action="append", default=[], metavar="ARG")
    parser.add_argument("--max-time", type=float, default=None, help="stop everything after this many seconds (default: the calls plus 5 minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--phone-transport", choices=("udp", "tcp"), default="udp",
        help="how SIPp's UAC (the phones) reaches the agent (default udp; tcp: no retransmissions, as a phone over TCP or TLS)",
    )
    parser.add_argument(
        "--trace-sip", action="store_true",
        help="both SIPp log every message (-trace_msg, about 7 kB a call; with --keep, to see why calls failed)",
    )
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(PCAP_DIR, "g711a.pcap")) and args.scenario == "uac_pcap":
        parser.error(f"{PCAP_DIR}/g711a.pcap not found (Debian's sip-tester has it); or --scenario uac")
    max_time = args.max_time or args.minutes * 60 + 300
    return run_bounded(lambda procs, workdir: run(args, procs, workdir), max_time, args.keep)


if __name__ == "__main__":
    sys.exit(main())
