#!/usr/bin/env python3
"""
Benchmark: what one request to a half's status server costs, in process.

A half renders C{/status}, C{/metrics} and the page in its event loop, so
its media waits while a request is answered.  This builds a L{Status} whose
C{calls} and C{tunnels} listings hold C{--calls} items shaped as a contact
point's (a call with one stream and its quality per leg; a tunnel with its
round trip) and times the real L{StatusResource} for each path, with the
JSON as it was encoded before (indented, json's pure Python encoder) as the
baseline in the same run.

    python3 bench/status_cost.py                        # 1,000 calls and tunnels; limit 100 and 1000
    python3 bench/status_cost.py --calls 10000 --limits 100,1000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402
from twisted.web.test.requesthelper import DummyRequest  # noqa: E402

from bench._common import cpu_model, machine_cpu, machine_usage  # noqa: E402
from spwm.status import Query, Status, StatusResource  # noqa: E402

_LEG = {
    "packets": 500, "bytes": 86000, "lost": 3, "reordered": 0, "duplicates": 0,
    "jitter_ms": 1.5, "transit_ms": 21.0, "late_dropped": 0, "rtcp": None,
}  # fmt: skip


def call_item(i: int) -> dict[str, Any]:
    """A contact point's call listing item (C{MediaManager.call_list}'s fields)."""
    return {
        "session": f"{i:016x}", "agent": f"agent-{i % 50}", "call": f"{i}/c{i}@192.0.2.7",
        "call_id": f"c{i}@192.0.2.7", "from": f"sip:user{i}@example.org", "to": "sip:bob@example.org",
        "started": 1.7e9 + i, "answered_at": 1.7e9 + i + 0.2, "duration": 62.5, "setup_s": 0.2,
        "codec": "PCMU/8000", "state": "answered",
        "streams": [{
            "index": 0, "media": "audio",
            "quality": {"legs": {"lan": None, "tunnel": dict(_LEG), "operator": dict(_LEG)},
                        "mos": {"up": 4.38, "down": 4.4}, "codec": "PCMU/8000"},
            "packets_in": 3125, "packets_out": 3125, "dropped_source": 0, "dropped_no_channel": 0,
            "dropped_no_target": 0, "dropped_send": 0,
        }],
    }  # fmt: skip


def tunnel_item(i: int) -> dict[str, Any]:
    """A tunnel listing item."""
    return {
        "agent": f"agent-{i}", "session": f"{i:016x}", "peer": f"198.51.100.{i % 250 + 1}:{40000 + i % 20000}",
        "tls": "TLSv1.3 TLS_AES_256_GCM_SHA384", "rtt_ms": 20.0 + i % 30, "queued": 0, "uptime": 3600.0,
        "media_on": "tcp",
    }  # fmt: skip


def status_of(count: int) -> Status:
    status = Status("contact", Clock())
    status.add("media", lambda: {"streams": count, "calls": count})
    calls = [call_item(i) for i in range(count)]
    tunnels = [tunnel_item(i) for i in range(count)]
    status.add_list("calls", lambda: calls)
    status.add_list("tunnels", lambda: tunnels)
    return status


def median_ms(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1000, help="calls and tunnels listed (default 1000)")
    p.add_argument("--limits", default="100,1000", help="the ?limit= values to ask for (default 100,1000)")
    p.add_argument("--rounds", type=int, default=15, help="requests per figure; the median is shown (default 15)")
    args = p.parse_args(argv)
    if args.calls < 1 or args.rounds < 1:
        p.error("--calls and --rounds must be above 0")
    try:
        limits = [int(x) for x in args.limits.split(",") if x.strip()]
    except ValueError:
        p.error("--limits takes comma-separated numbers")
    status = status_of(args.calls)
    resource = StatusResource(status)

    def request(path: bytes, **query: str) -> Callable[[], bytes]:
        def run() -> bytes:
            r = DummyRequest([path])
            r.args = {k.encode(): [v.encode()] for k, v in query.items()}
            return resource.render_GET(r)

        return run

    print(f"status request cost, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
          f"{os.cpu_count()} CPUs, {cpu_model()}; {args.calls} calls and tunnels listed; median of {args.rounds}")
    before = machine_cpu()
    print("| request | now ms | before (indented JSON) ms | ratio | bytes now / before |")
    print("| --- | ---: | ---: | ---: | --- |")
    for limit in limits:
        run = request(b"status", limit=str(limit))
        query = Query(limit=limit)

        def baseline() -> bytes:
            doc = status.full(query)
            return json.dumps(doc, indent=1, sort_keys=True, default=str).encode() + b"\n"

        # alternating, so that a host that changes pace hits both alike
        now = old = 0.0
        for _ in range(3):
            now += median_ms(run, args.rounds)
            old += median_ms(baseline, args.rounds)
        print(f"| /status?limit={limit} | {now / 3:.1f} | {old / 3:.1f} | {old / now:.2f} | {len(run())} / {len(baseline())} |")
    for name, path in (("/metrics", b"metrics"), ("/ (the page)", b"")):
        print(f"| {name} | {median_ms(request(path), args.rounds):.1f} | - | - | {len(request(path)())} |")
    usage = machine_usage(before, machine_cpu())
    print(f"machine during the run: busy {usage['busy']:.0%}, steal {usage['steal']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
