"""
Python objects held per idle tunnel: C{N} tunnels between a contact
point's L{ContactTunnelFactory} (as C{spwm-contact --plaintext} builds
it) and agents' L{AgentTunnelFactory}, connected in memory
(C{twisted.test.iosim}) and through their handshake; tracemalloc's
growth per tunnel (both ends: the agents stay alive with their
contact-point ends), and the largest lines in C{spwm/} and Twisted.

    python3 bench/tunnel_memory.py [--count 1000] [--lines 15]

A deterministic figure (the machine's load does not move it); the RSS
per tunnel with TLS is C{bench/idle_tunnels.py}'s.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.test.iosim import FakeTransport, connect  # noqa: E402

from spwm.limits import TunnelLimits  # noqa: E402
from spwm.tap import contact  # noqa: E402
from spwm.tap.assembly import build_contact  # noqa: E402
from spwm.testing.ports import free_port  # noqa: E402
from spwm.tunnel.protocol import AgentTunnelFactory  # noqa: E402


class _App:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **kw: None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="tunnels (default 1000)")
    parser.add_argument("--lines", type=int, default=15, help="largest source lines to list")
    args = parser.parse_args()
    options = contact.Options()
    options.parseOptions(
        ["--plaintext", "--listen", "tcp:0:interface=127.0.0.1", "--sip-address", f"127.0.0.1:{free_port()}",
         "--status-interval", "0", "--max-tunnels", str(args.count + 100),
         "--max-tunnels-per-address", str(args.count + 100)]
    )  # fmt: skip
    factory = build_contact(options.config, reactor).factory
    agents = AgentTunnelFactory(_App(), reactor, "idle", TunnelLimits())
    kept: list[Any] = []

    def one(i: int) -> Any:
        addr = IPv4Address("TCP", f"198.51.100.{i % 250 + 1}", 10000 + i % 50000)
        server, client = factory.buildProtocol(addr), agents.buildProtocol(addr)
        pump = connect(server, FakeTransport(server, True, peerAddress=addr), client, FakeTransport(client, False))
        for _ in range(6):
            pump.pump()
        kept.append(server)
        return server

    for i in range(50):  # warm up the caches and interned strings
        one(i)
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    servers = [one(i) for i in range(50, 50 + args.count)]
    gc.collect()
    after = tracemalloc.take_snapshot()
    up = sum(1 for s in servers if s.connection is not None and s.connection.state.name == "OPEN")
    if up != args.count:
        print(f"only {up} of {args.count} tunnels completed their handshake", file=sys.stderr)
        return 1
    total = sum(d.size_diff for d in after.compare_to(before, "lineno"))
    print(f"{args.count} idle tunnels in memory: {total / args.count / 1024:.1f} kB of Python objects per tunnel (both ends)")
    wanted = [tracemalloc.Filter(True, "*/spwm/*"), tracemalloc.Filter(True, "*/twisted/*")]
    for d in after.filter_traces(wanted).compare_to(before.filter_traces(wanted), "lineno")[: args.lines]:
        frame = d.traceback[0]
        print(f"  {d.size_diff / args.count:7.0f} B  {os.path.relpath(frame.filename)}:{frame.lineno}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
