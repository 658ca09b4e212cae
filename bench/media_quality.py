#!/usr/bin/env python3
"""
Benchmark: the per-packet cost of the call quality measure
(C{spwm.media.quality}) on the relay's fast path, against the same relay
endpoint without it, in the same run.

One C{MediaRelayEndpoint} relays G.711-sized RTP (172 bytes, in-order
sequence numbers and timestamps, one lost packet in 50, one reordered in
100) in both directions: C{datagramReceived} (from our side into a no-op
tunnel send) and C{send} (from the tunnel to a no-op C{sendto}). No
socket and no reactor: what is timed is the Python work per packet that
the measure adds. Rounds alternate between the two endpoints so that a
busy machine slows both alike; the best round of each is kept.

Run from the repository's root::

    python3 bench/media_quality.py                # 20 rounds of 20,000 packets each way
    python3 bench/media_quality.py --rounds 40 --packets 50000

Read the added time against a half's whole CPU per packet from
C{bench/media.py} (its "CPU of one core" over the packets per second) to
get the share (C{docs/performance.md}, "Call quality").
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import cpu_model, machine_cpu, machine_usage  # noqa: E402

from spwm.media.quality import StreamQuality  # noqa: E402
from spwm.media.relay import MediaRelayEndpoint  # noqa: E402

PHONE = ("192.0.2.10", 4000)


def packets(count: int) -> list[bytes]:
    """
    RTP packets as a phone sends them, one in 50 missing, one in 100
    swapped with the next.
    """
    seqs = [n for n in range(count + count // 50 + 2) if n % 50 != 49][:count]
    for i in range(0, len(seqs) - 1, 100):
        seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
    return [struct.pack("!BBHII", 0x80, 8, n & 0xFFFF, (n * 160) & 0xFFFFFFFF, 0x5B00) + bytes(160) for n in seqs]


def endpoint(measured: bool) -> MediaRelayEndpoint:
    relay = MediaRelayEndpoint()
    relay.expect(*PHONE)
    relay.attach(lambda channel, data, component: None, 1)
    relay._sendto = lambda data, target: None  # type: ignore[assignment]
    relay.datagramReceived(b"\x00", PHONE)  # latch
    if measured:
        quality = StreamQuality("agent", "PCMA/8000")
        relay.quality_in = quality.local
        relay.quality_out = quality.tunnel
    return relay


def one_round(relay: MediaRelayEndpoint, load: list[bytes]) -> float:
    receive = relay.datagramReceived
    send = relay.send
    start = time.perf_counter()
    for data in load:
        receive(data, PHONE)
        send(data)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--packets", type=int, default=20000, help="packets per direction per round")
    args = parser.parse_args()
    load = packets(args.packets)
    plain, measured = endpoint(False), endpoint(True)
    best = {False: float("inf"), True: float("inf")}
    before = machine_cpu()
    for _ in range(args.rounds):
        for which, relay in ((False, plain), (True, measured)):
            best[which] = min(best[which], one_round(relay, load))
    usage = machine_usage(before, machine_cpu())
    per = {k: v / args.packets / 2 * 1e9 for k, v in best.items()}
    print(
        f"machine: {os.cpu_count()} CPUs, {cpu_model()}; during the run busy {usage['busy'] * 100:.0f} %,"
        f" steal {usage['steal'] * 100:.0f} %"
    )
    print(f"{args.rounds} rounds of {args.packets} packets each way, best round of each")
    print(f"  relay endpoint without the measure: {per[False]:7.0f} ns per packet")
    print(f"  relay endpoint with the measure:    {per[True]:7.0f} ns per packet")
    print(f"  added: {per[True] - per[False]:.0f} ns per packet ({per[True] / per[False]:.2f}x the endpoint alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
