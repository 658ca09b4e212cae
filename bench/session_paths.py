"""
Per-datagram cost of the path scheduler (C{spwm.session.paths}): the calls
the session makes per media packet (C{media_paths}, C{sent}, C{received},
C{SeqStamper.next}, C{Dedup.accept}), in nanoseconds per call and as a
ratio to an empty method call with three arguments measured in the same
run (the baseline absorbs the machine's speed and load), with the
machine's busy and steal shares while it ran.

    python3 bench/session_paths.py [--number 200000]

Each figure is the best of five rounds in which every case runs once.
No sockets, no reactor.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import machine_cpu, machine_usage  # noqa: E402
from spwm.session.paths import Dedup, PathKind, PathScheduler, SeqStamper  # noqa: E402


class _Empty:
    def call(self, a: int, b: int, c: float) -> int:
        return a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=200000, help="calls per run (best of five runs)")
    args = parser.parse_args()
    sched = PathScheduler()
    sched.add(1, PathKind.TCP, 0.0)
    sched.add(2, PathKind.TCP, 0.0)
    sched.tick(0.0)
    dup = PathScheduler()
    dup.add(1, PathKind.TCP, 0.0)
    dup.add(2, PathKind.QUIC, 0.0)
    dup.tick(0.0)
    dup.loss_seen(1, 0.0)
    dedup = Dedup()
    stamper = SeqStamper()
    in_order = itertools.count()
    every_other = itertools.count(0, 2)
    empty = _Empty()
    names = dict(locals())
    cases = [
        ("baseline: empty method call", "empty.call(1, 0, 1.0)"),
        ("media_paths (one path)", "sched.media_paths(1.0)"),
        ("media_paths (duplicating)", "dup.media_paths(1.0)"),
        ("sent", "sched.sent(1, 172, 1.0)"),
        ("received", "sched.received(1, 1.0)"),
        ("SeqStamper.next", "stamper.next(3, 0)"),
        ("Dedup.accept, in order", "dedup.accept(5, 0, next(in_order))"),
        ("Dedup.accept, a gap each time", "dedup.accept(6, 0, next(every_other))"),
        ("Dedup.accept, a copy", "dedup.accept(5, 0, 0)"),
        ("baseline: next(itertools.count())", "next(in_order)"),
    ]
    timers = [timeit.Timer(stmt, globals=names) for _, stmt in cases]
    best = [float("inf")] * len(cases)
    before = machine_cpu()
    for _ in range(5):  # the cases take turns, so a change of load hits them all
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer.timeit(args.number))
    usage = machine_usage(before, machine_cpu())
    results = [(label, t / args.number * 1e9) for (label, _), t in zip(cases, best)]
    base = results[0][1]
    for label, ns in results:
        print(f"{label:36s} {ns:8.1f} ns   {ns / base:5.2f} x baseline")
    print(
        f"[machine: {os.cpu_count()} CPUs, busy {100 * usage['busy']:.0f}%, steal {100 * usage['steal']:.0f}%;"
        f" Python {sys.version.split()[0]}]"
    )


if __name__ == "__main__":
    main()
