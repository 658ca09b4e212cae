"""
What the contact point's state file costs while it runs
(C{--state-interval}): N sessions with a key and a registration each, in
a real C{ContactSipProxy} and C{SessionManager}; the periodic write
(L{spwm.state.ContactState.start}: slices of sessions per reactor turn,
the disk work handed to a thread) against the stop's write
(L{spwm.state.ContactState.save}, all at once) in the same run: CPU per
write, the longest slice (how long the write holds the reactor, the
relay with it), the disk write, the file's size, and the share of a core
at the interval; with the machine's busy and steal shares while it ran.

    python3 bench/state_write.py [--sessions 10000] [--interval 30] [--rounds 5]

Each figure is the median of the rounds. No sockets, no reactor: a
C{Clock} turns the slices, and the "thread" runs the disk work at once,
timed apart.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import Deferred, succeed  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from bench._common import cpu_model, machine_cpu, machine_usage  # noqa: E402
from spwm.session.manager import SessionManager  # noqa: E402
from spwm.session.session import Session  # noqa: E402
from spwm.sip.contact_proxy import ContactSipProxy  # noqa: E402
from spwm.state import SAVE_SLICE, ContactState  # noqa: E402


class _Media:
    def session_suspended(self, session_id: str) -> None:
        pass

    def session_ended(self, session_id: str, reason: str = "") -> None:
        pass


def contact_point(clock: Clock, count: int) -> tuple[ContactSipProxy, SessionManager]:
    """
    A contact point's SIP core and sessions, with C{count} sessions of one
    user each (a key, a flow, a registration for an hour).
    """
    core = ContactSipProxy(("198.51.100.1", 5060), secrets.token_bytes(32))
    # (the core answers what the session manager asks of the SIP runner)
    sessions = SessionManager(clock, 60.0, _Media(), core)
    for n in range(count):
        session_id = secrets.token_hex(8)
        user = f"u{n}@example.net"
        registration = {
            "aor": f"sip:{user}",
            "contact": f"sip:u{n}@192.0.2.10:5060",
            "flow_id": n + 1,
            "ttl": 3600.0,
        }
        core.import_registrations(session_id, {"registrations": [registration], "rewritten": []}, clock.seconds())
        sessions.sessions[session_id] = Session(session_id, keys={user: secrets.token_bytes(32)}, flows={user: n + 1})
    return core, sessions


class _TimedClock(Clock):
    """
    A clock that times each call it runs (the slices).
    """

    def __init__(self) -> None:
        super().__init__()
        self.held: list[float] = []

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        def timed(*a: Any, **k: Any) -> Any:
            start = time.process_time()
            try:
                return f(*a, **k)
            finally:
                self.held.append(time.process_time() - start)

        return super().callLater(delay, timed, *args, **kw)


def periodic(core: ContactSipProxy, sessions: SessionManager, clock: _TimedClock, path: str) -> dict[str, float]:
    # the disk work (in a thread in the service): its wall time, and its
    # CPU, taken out of the slice it ran in here
    disk: list[float] = []
    disk_cpu: list[float] = []

    def in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        start, cpu = time.perf_counter(), time.process_time()
        result = f(*args)
        disk.append(time.perf_counter() - start)
        disk_cpu.append(time.process_time() - cpu)
        return succeed(result)

    state = ContactState(path, clock, time.time, in_thread)
    clock.held.clear()
    start = time.process_time()
    state.start(core, sessions, 3600.0)
    first = time.process_time() - start
    clock.advance(0)
    total = time.process_time() - start - sum(disk_cpu)
    state.stop()
    slices = [first, *clock.held]
    slices[-1] -= sum(disk_cpu)
    return {"cpu": total, "longest": max(slices), "slices": len(slices), "disk": sum(disk), "disk_cpu": sum(disk_cpu)}


def one_shot(core: ContactSipProxy, sessions: SessionManager, clock: Clock, path: str) -> dict[str, float]:
    state = ContactState(path, clock, time.time)
    start = time.process_time()
    wall = time.perf_counter()
    state.save(core, sessions)
    return {"cpu": time.process_time() - start, "wall": time.perf_counter() - wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--interval", type=float, default=30.0, help="--state-interval for the share of a core")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    clock = _TimedClock()
    clock.advance(1000)
    core, sessions = contact_point(clock, args.sessions)
    rows: list[tuple[dict[str, float], dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "contact.state")
        before = machine_cpu()
        for _ in range(args.rounds):
            rows.append((periodic(core, sessions, clock, path), one_shot(core, sessions, clock, path)))
        usage = machine_usage(before, machine_cpu())
        size = os.path.getsize(path)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    cpu = median([p["cpu"] for p, _ in rows])
    longest = median([p["longest"] for p, _ in rows])
    disk = median([p["disk"] for p, _ in rows])
    disk_cpu = median([p["disk_cpu"] for p, _ in rows])
    stop_cpu = median([s["cpu"] for _, s in rows])
    stop_wall = median([s["wall"] for _, s in rows])
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; busy {usage['busy'] * 100:.0f} %, steal {usage['steal'] * 100:.1f} % while it ran")
    print(f"{args.sessions} sessions, file {size / 1e6:.2f} MB; medians of {args.rounds} rounds")
    print(
        f"periodic write: {cpu * 1e3:.1f} ms CPU in the reactor over {int(median([p['slices'] for p, _ in rows]))}"
        f" turns of {SAVE_SLICE} sessions, the longest {longest * 1e3:.2f} ms; its thread (the text's pieces"
        f" and the disk) {disk * 1e3:.1f} ms, {disk_cpu * 1e3:.1f} ms of it CPU"
    )
    print(f"stop's write (all at once, the baseline): {stop_cpu * 1e3:.1f} ms CPU, {stop_wall * 1e3:.1f} ms holding the reactor")
    print(
        f"ratio: the periodic write's CPU (both threads) {(cpu + disk_cpu) / stop_cpu:.2f}x the stop's; its longest"
        f" hold of the reactor {longest / stop_wall:.3f}x; every {args.interval:g} s:"
        f" {(cpu + disk_cpu) / args.interval * 100:.2f} % of a core"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
