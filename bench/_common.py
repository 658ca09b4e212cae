"""
Helpers shared by the benchmarks (C{tunnel_udp.py}, C{sip_calls.py},
C{media.py}): process handling with a clean-up by PID, CPU and kernel
counters, percentiles, the py-spy summary; and what the SIP benchmarks need
on top: starting an agent and a contact point with SIP and media options,
waiting for their tunnel, py-spy on both halves, a bounded run with a
clean-up of everything by PID.  The load itself (sender, receiver, ramp,
loss) is in C{_load.py}; SIPp's statistics file in C{spwm.testing.sipp}.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, ROOT)
from spwm.testing.ports import free_port  # noqa: E402,F401  (re-exported for the benchmarks)


# -- processes and counters ----------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU seconds used so far by process C{pid}.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def raise_nofile() -> None:
    """
    Raise this process's open-file limit to its hard limit (thousands of
    connections in one process).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def udp_counters() -> dict[str, int]:
    """
    The kernel's UDP counters (system-wide; other users of the machine add noise).
    """
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])}
    except (OSError, IndexError, ValueError):
        return {}


def machine_cpu() -> list[int]:
    """
    The machine's CPU time counters from C{/proc/stat} (all CPUs summed).
    """
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def machine_usage(before: list[int], after: list[int]) -> dict[str, float]:
    """
    Busy, softirq and steal shares (of all CPUs) between two L{machine_cpu} readings.
    """
    d = [b - a for a, b in zip(before, after)]
    total = sum(d[:8]) or 1
    idle = d[3] + d[4]
    return {"busy": (total - idle) / total, "softirq": d[6] / total, "steal": d[7] / total}


def percentile(sorted_values: Any, q: float) -> float:
    """
    The C{q} quantile (0..1) of an already sorted sequence, or NaN if empty.
    """
    n = len(sorted_values)
    if not n:
        return float("nan")
    return sorted_values[min(n - 1, int(q * n))]


class Processes:
    """
    Every process the benchmark started, ended by PID in L{stop_all}.
    """

    def __init__(self) -> None:
        self.popen: list[subprocess.Popen] = []
        self.workers: list[multiprocessing.Process] = []
        #: a directory: each twistd runs under cProfile and saves its
        #: statistics there as C{NAME.prof} when it stops (C{--cprofile})
        self.cprofile_dir: str | None = None
        #: a directory: each twistd runs under Valgrind's callgrind, which
        #: counts the instructions it executes (C{--instructions}; about
        #: fifty times the CPU); L{callgrind} zeroes and dumps the counts
        self.callgrind_dir: str | None = None

    def start_twistd(self, name: str, args: list[str], log: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        profile = []
        if self.cprofile_dir:
            path = os.path.join(self.cprofile_dir, f"{name}.prof")
            profile = [f"--profile={path}", "--profiler=cprofile", "--savestats"]
        valgrind = []
        if self.callgrind_dir:
            dumps = os.path.join(self.callgrind_dir, f"{name}.%p")
            valgrind = ["valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={dumps}", "--dump-line=no"]
        cmd = [
            *valgrind,
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            *profile,
            name,
            *args,
        ]
        with open(log, "wb") as out:
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.popen.append(p)
        return p

    def callgrind(self, pid: int, command: str) -> int | None:
        """
        C{command} (C{"zero"} or C{"dump"}) to the callgrind of a twistd
        started under it (L{callgrind_dir}), through C{callgrind_control}.

        @return: for C{"dump"}, the instructions executed since the last
            zero (the dump's C{summary}); else, or when the dump cannot be
            read, C{None}.
        """
        assert self.callgrind_dir is not None
        flag = {"zero": "-z", "dump": "-d"}[command]
        before = set(os.listdir(self.callgrind_dir))
        try:
            subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        if command != "dump":
            return None
        # the dump is written by the process, soon after the command
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            for name in sorted(set(os.listdir(self.callgrind_dir)) - before):
                if f".{pid}." not in name:
                    continue
                with open(os.path.join(self.callgrind_dir, name), errors="replace") as f:
                    for line in f:
                        if line.startswith("summary:"):
                            return int(line.split()[1])
            time.sleep(0.1)
        return None

    def strace(self, pid: int, out: str) -> subprocess.Popen | None:
        """
        Count the system calls of process C{pid} and its threads from now
        on: C{strace -c} attached to it, writing its table to C{out} when
        L{strace_table} stops it.

        @return: the strace, attached; C{None} when it could not attach
            within 10 s.
        """
        p = subprocess.Popen(
            ["strace", "-c", "-f", "-o", out, "-p", str(pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.popen.append(p)
        assert p.stderr is not None
        # "strace: Process N attached" once the process is traced
        deadline = time.monotonic() + 10.0
        said = ""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([p.stderr], [], [], left)[0]:
                break
            line = p.stderr.readline()
            if not line:
                break
            if "attached" in line:
                return p
            said = line.strip()
        p.kill()
        p.wait(5)
        print(f"  strace could not attach to process {pid}: {said or 'no answer within 10 s'}", flush=True)
        return None

    @staticmethod
    def strace_table(p: subprocess.Popen, out: str) -> dict[str, int] | None:
        """
        Stop an L{strace} and read its table: calls by system call, and
        C{"total"}; C{None} when it cannot be read.
        """
        p.send_signal(signal.SIGINT)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
            return None
        calls: dict[str, int] = {}
        try:
            with open(out) as f:
                for line in f:
                    fields = line.split()
                    # % time, seconds, usecs/call, calls, [errors,] syscall
                    if len(fields) in (5, 6) and fields[3].isdigit():
                        calls[fields[-1]] = int(fields[3])
        except OSError:
            return None
        return calls if "total" in calls else None

    def fork(self, target: Any, *args: Any) -> multiprocessing.Process:
        p = multiprocessing.get_context("fork").Process(target=target, args=args, daemon=True)
        p.start()
        self.workers.append(p)
        return p

    def stop_all(self) -> None:
        pids = [p.pid for p in self.popen if p.poll() is None]
        pids += [w.pid for w in self.workers if w.pid is not None and w.is_alive()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3.0
        for p in self.popen:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(1.0)
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
            if w.is_alive() and w.pid is not None:
                os.kill(w.pid, signal.SIGKILL)
                w.join(1.0)


_GENERIC = (
    "twistd.py",
    "app.py",
    "_twistd_unix.py",
    "base.py",
    "log.py",
    "context.py",
    "posixbase.py",
    "<module>",
)


def summarize_profile(path: str, top: int = 16) -> list[str]:
    """
    Self and inclusive time by frame from a py-spy raw (collapsed) file of the
    reactor thread (samples of other threads, such as the idle thread pool,
    are left out).
    """
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, n = line.rstrip().rpartition(" ")
                if not stack or "mainLoop" not in stack:
                    continue
                count = int(n)
                total += count
                frames = stack.split(";")
                self_t[frames[-1]] += count
                seen = set()
                for fr in frames:
                    fn = fr.rsplit(":", 1)[0] + ")" if fr.endswith(")") else fr
                    if fn not in seen:
                        seen.add(fn)
                        incl[fn] += count
    except OSError as e:
        return [f"  (no profile: {e})"]
    if not total:
        return ["  (empty profile)"]
    out = [f"  {os.path.basename(path)}: {total} samples of the reactor thread; self time by line:"]
    for fr, n in self_t.most_common(top):
        out.append(f"    {100 * n / total:5.1f} %  {fr}")
    out.append("   inclusive time by function:")
    shown = 0
    for fr, n in incl.most_common():
        if not any(g in fr for g in _GENERIC):
            out.append(f"    {100 * n / total:5.1f} %  {fr}")
            shown += 1
            if shown >= top:
                break
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


# -- SIP and media -------------------------------------------------------------


#: Where L{media_ranges} places the halves' media ports: below Linux's
#: ephemeral range.
MEDIA_LOW, MEDIA_HIGH = 20000, 32000


def media_ranges(count: int, size: int) -> list[tuple[int, int]]:
    """
    C{count} disjoint even-aligned ranges of C{size} ports between
    L{MEDIA_LOW} and L{MEDIA_HIGH}, at a random place.

    @raise ValueError: they do not fit (L{max_media_ports}).
    """
    if not 2 <= size <= max_media_ports(count):
        raise ValueError(f"{size} media ports each: from 2 to {max_media_ports(count)} fit for {count} ranges")
    base = random.randrange(MEDIA_LOW, MEDIA_HIGH - count * size, 2)
    return [(base + i * size, base + (i + 1) * size - 1) for i in range(count)]


def max_media_ports(count: int) -> int:
    """
    The largest even range size of which C{count} fit between L{MEDIA_LOW}
    and L{MEDIA_HIGH}.
    """
    return (MEDIA_HIGH - MEDIA_LOW - 2) // count // 2 * 2


class Pair:
    """
    An C{spwm-contact} and an C{spwm-agent} on loopback with SIP and media,
    started as C{twistd -n} processes through L{Processes}.

    @ivar sip_listen: the agent's C{(host, port)} for SIP applications.
    @ivar sip_address: the contact point's operator-side SIP C{(host, port)}.
    @ivar command_lines: both command lines, for the report.
    """

    def __init__(
        self,
        procs: Processes,
        workdir: str,
        sip_proxy: tuple[str, int] | None,
        media_ports: int = 2000,
        tls: bool = False,
        extra: list[str] = (),
        agent_extra: list[str] = (),
        contact_extra: list[str] = (),
        agent_contact_port: int | None = None,
        media_base: int | None = None,
    ) -> None:
        """
        @param media_base: the contact point's media range starts here and
            the agent's follows it (C{media_ports} each); a random place
            between 20000 and 32000 by default (L{media_ranges}).
        """
        self.procs = procs
        self.workdir = workdir
        self.tunnel_port = free_port()
        # the agent connects here (a relay in front of the contact point's
        # port, to cut its connections), or to the contact point itself
        self.agent_contact_port = agent_contact_port or self.tunnel_port
        self.sip_listen = ("127.0.0.1", free_port())
        self.sip_address = ("127.0.0.1", free_port())
        if media_base is None:
            contact_media, agent_media = media_ranges(2, media_ports)
        else:
            contact_media = (media_base, media_base + media_ports - 1)
            agent_media = (media_base + media_ports, media_base + 2 * media_ports - 1)
        self.media = {"contact": contact_media, "agent": agent_media}
        if tls:
            sys.path.insert(0, ROOT)
            from spwm.testing.certs import TestCA

            ca = TestCA(os.path.join(workdir, "ca"))
            files = ca.issue(["localhost", "127.0.0.1"], "contact")
            contact_sec = ["--cert", files.cert, "--key", files.key]
            agent_sec = ["--ca", ca.ca_file, "--server-name", "localhost"]
        else:
            contact_sec = agent_sec = ["--plaintext"]
        proxy = ["--sip-proxy", f"{sip_proxy[0]}:{sip_proxy[1]}"] if sip_proxy else []
        self.contact_log = os.path.join(workdir, "contact.log")
        self.agent_log = os.path.join(workdir, "agent.log")
        self.contact = procs.start_twistd(
            "spwm-contact",
            [
                *contact_sec,
                "--listen", f"tcp:{self.tunnel_port}:interface=127.0.0.1",
                *proxy,
                "--sip-address", f"{self.sip_address[0]}:{self.sip_address[1]}",
                "--media-address", "127.0.0.1",
                "--media-ports", f"{contact_media[0]}-{contact_media[1]}",
                "--media-allow", "127.0.0.0/8",
                "--drain-time", "0.2",
                *extra,
                *contact_extra,
            ],
            self.contact_log,
        )
        time.sleep(0.3)
        self.agent = procs.start_twistd(
            "spwm-agent",
            [
                *agent_sec,
                "--contact", f"127.0.0.1:{self.agent_contact_port}",
                "--reconnect-max", "1",
                "--sip-listen", f"{self.sip_listen[0]}:{self.sip_listen[1]}",
                "--media-address", "127.0.0.1",
                "--media-ports", f"{agent_media[0]}-{agent_media[1]}",
                *extra,
                *agent_extra,
            ],
            self.agent_log,
        )
        self.command_lines = ["twistd -n --pidfile= " + " ".join(p.args[5:]) for p in (self.contact, self.agent)]

    @property
    def pids(self) -> dict[str, int]:
        return {"agent": self.agent.pid, "contact": self.contact.pid}

    def wait_up(self, timeout: float = 20.0) -> None:
        """
        Wait (bounded) until the contact point logs the agent's tunnel.

        @raise RuntimeError: a half exited, or no tunnel within C{timeout}.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in (self.contact, self.agent):
                if proc.poll() is not None:
                    half = "the contact point" if proc is self.contact else "the agent"
                    raise RuntimeError(f"{half} exited; see {self.workdir}")
            try:
                with open(self.contact_log, errors="replace") as f:
                    if "tunnel up with" in f.read():
                        time.sleep(0.2)
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no tunnel within {timeout:g} s; see {self.workdir}")

    def cpu(self) -> dict[str, float]:
        """
        CPU seconds used so far by each half.
        """
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def warning_counts(self) -> dict[str, int]:
        """
        Warning and error lines of both logs, counted by half and message
        (numbers and addresses blanked, so alike messages count together).
        """
        import re

        counts: dict[str, int] = {}
        for name, path in (("agent", self.agent_log), ("contact", self.contact_log)):
            try:
                with open(path, errors="replace") as f:
                    for line in f:
                        low = line.lower()
                        if "traceback" in low or "error" in low or "#warn" in low or "#critical" in low:
                            text = line.split(" ", 1)[-1].strip()
                            text = re.sub(r"\d+(\.\d+)*(:\d+)?", "N", text)
                            key = f"{name}: {text[:160]}"
                            counts[key] = counts.get(key, 0) + 1
            except OSError:
                pass
        return counts

    def warnings(self, limit: int = 10) -> list[str]:
        """
        Lines of both logs that look like trouble (tracebacks, errors, warnings).
        """
        out = []
        for name, path in (("agent", self.agent_log), ("contact", self.contact_log)):
            try:
                with open(path, errors="replace") as f:
                    for line in f:
                        low = line.lower()
                        if "traceback" in low or "error" in low or "#warn" in low or "#critical" in low:
                            out.append(f"{name}: {line.rstrip()}")
                            if len(out) >= limit:
                                return out
            except OSError:
                pass
        return out


def start_profilers(procs: Processes, pair: Pair, directory: str, tag: str, seconds: float, rate: int = 250) -> list[tuple[str, subprocess.Popen]]:
    """
    py-spy (raw collapsed stacks) on both halves for C{seconds}; the files
    are C{DIR/agent-TAG.txt} and C{DIR/contact-TAG.txt}.
    """
    spies = []
    for name, pid in pair.pids.items():
        out = os.path.join(directory, f"{name}-{tag}.txt")
        p = subprocess.Popen(
            ["py-spy", "record", "--nonblocking", "-r", str(rate), "-f", "raw", "-o", out, "-p", str(pid), "-d", str(max(1, int(seconds)))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.popen.append(p)
        spies.append((out, p))
    return spies


def wait_profilers(spies: list[tuple[str, subprocess.Popen]]) -> list[str]:
    """
    Wait (bounded) for the profilers; the summaries of their files.
    """
    lines = []
    for out, p in spies:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
        lines += summarize_profile(out)
    return lines


def run_bounded(main: Callable[[Processes, str], int], max_time: float, keep: bool) -> int:
    """
    Run C{main(procs, workdir)} with everything it starts ended by PID at the
    end, on Ctrl-C, on SIGTERM, on an error and after C{max_time} seconds;
    the work directory is removed unless the run failed or C{keep}.
    """

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGALRM, stop)
    signal.alarm(int(max_time))
    procs = Processes()
    workdir = tempfile.mkdtemp(prefix="spwm-bench-")
    status = 0
    try:
        print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; load average {os.getloadavg()[0]:.2f}", flush=True)
        status = main(procs, workdir)
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}); stopping", file=sys.stderr)
        status = 130
    except Exception as e:
        import traceback

        traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        status = 1
    finally:
        signal.alarm(0)
        sys.stdout.flush()
        procs.stop_all()
        print(f"load average at the end {os.getloadavg()[0]:.2f}", flush=True)
        if keep or status:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return status


def register_through(
    agent_sip: tuple[str, int],
    registrar_port: int,
    user: str,
    domain: str,
    expires: int = 3600,
    timeout: float = 10.0,
    authorization: str | None = None,
) -> str:
    """
    Register C{sip:USER@DOMAIN} through the pair, answering the REGISTER as
    the operator's registrar on C{127.0.0.1:registrar_port} (the contact
    point's C{--sip-proxy}), so the contact point lets the tunnel send other
    requests as that address-of-record. Call before anything else binds the
    registrar port.

    @param authorization: an C{Authorization} header for the REGISTER
        (digest credentials give the session a key: it can be resumed).

    @return: the final status line seen by the client.
    @raise RuntimeError: no final response within C{timeout}.
    """
    import secrets
    import select

    # the test phone's SIP parser and serialiser are the other side of the
    # wire: they share no code with SPWM's
    from spwm.testing import phone as ph

    registrar = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    registrar.bind(("127.0.0.1", registrar_port))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    cport = client.getsockname()[1]
    aor = f"sip:{user}@{domain}"
    call_id = secrets.token_hex(8)
    request = ph.build_sip(
        f"REGISTER sip:{domain} SIP/2.0",
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:{cport};branch=z9hG4bK{secrets.token_hex(6)};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{aor}>;tag={secrets.token_hex(4)}"),
            ("To", f"<{aor}>"),
            ("Call-ID", call_id),
            ("CSeq", "1 REGISTER"),
            ("Contact", f"<sip:{user}@127.0.0.1:{cport}>"),
            ("Expires", str(expires)),
            *([("Authorization", authorization)] if authorization else []),
        ],
    )
    deadline = time.monotonic() + timeout
    next_send = 0.0
    poller = select.poll()  # not select(): the benchmarks hold more than 1024 descriptors
    by_fd = {registrar.fileno(): registrar, client.fileno(): client}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    try:
        while time.monotonic() < deadline:
            if time.monotonic() >= next_send:
                client.sendto(request, agent_sip)
                next_send = time.monotonic() + 0.5
            for fd, _ in poller.poll(100):
                s = by_fd[fd]
                data, addr = s.recvfrom(65535)
                try:
                    msg = ph.parse_sip(data)
                except ph.SipParseError:
                    continue
                if s is registrar and msg.method == "REGISTER":
                    headers = [("Via", v) for v in msg.get_all("via")]
                    headers += [("From", msg.get("from") or ""), ("To", (msg.get("to") or "") + ";tag=reg1")]
                    headers += [("Call-ID", msg.get("call-id") or ""), ("CSeq", msg.get("cseq") or "")]
                    headers += [("Contact", f"{c};expires={expires}") for c in msg.get_all("contact")]
                    headers += [("Path", p) for p in msg.get_all("path")]
                    registrar.sendto(ph.build_sip("SIP/2.0 200 OK", headers), addr)
                elif s is client and msg.status is not None and msg.status >= 200:
                    return f"{msg.status} {msg.reason}"
        raise RuntimeError(f"REGISTER of {aor} through the pair: no final response within {timeout:g} s")
    finally:
        registrar.close()
        client.close()
