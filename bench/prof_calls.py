#!/usr/bin/env python3
"""
Per-call figures of the cProfile statistics that C{bench/sip_calls.py
--cprofile DIR} writes: for each file, the Python function calls (C
functions included) and the profiled busy seconds (everything but the
reactor's wait in C{epoll.poll}) divided by the number of calls, and the
functions that differ most between two runs.

Function-call counts are deterministic (the same calls give the same
count on a busy machine); the profiled seconds are not, and cProfile
roughly doubles them.

    python3 bench/prof_calls.py --calls 500 /tmp/old/spwm-agent.prof /tmp/new/spwm-agent.prof
    python3 bench/prof_calls.py --calls 500 --diff OLD.prof NEW.prof
"""

from __future__ import annotations

import argparse
import pstats
import re
import sys
from collections import Counter

_WAIT = "<method 'poll' of 'select.epoll' objects>"


def _key(filename: str, name: str) -> tuple[str, str]:
    # one name for a function whatever the checkout it ran from
    return re.sub(r"^.*?/(spwm|twisted|site-packages|python3\.\d+)/", r"\1/", filename), name


def figures(path: str) -> tuple[int, float]:
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    calls = sum(v[1] for v in stats.values())
    busy = sum(v[2] for k, v in stats.items() if k[2] != _WAIT)
    return calls, busy


def per_function(path: str) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for (filename, _, name), v in pstats.Stats(path).stats.items():  # type: ignore[attr-defined]
        out[_key(filename, name)] += v[1]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, required=True, help="SIP calls the run made (e.g. 500 for --fixed 50 --step 10)")
    p.add_argument("--diff", action="store_true", help="two files: the 25 functions whose call counts grew most")
    p.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    for path in args.files:
        calls, busy = figures(path)
        print(f"{path}: {calls / args.calls:8.0f} Python function calls per call, {busy / args.calls * 1e3:6.2f} ms profiled busy per call")
    if args.diff:
        if len(args.files) != 2:
            p.error("--diff takes two files")
        old, new = (per_function(f) for f in args.files)
        for key in sorted(set(old) | set(new), key=lambda k: old[k] - new[k])[:25]:
            print(f"  {(new[key] - old[key]) / args.calls:+7.1f} per call  {key[0]}:{key[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
