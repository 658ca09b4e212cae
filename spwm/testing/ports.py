# -*- test-case-name: tests.test_testing_ports -*-
"""
Free ports on a local address, for tests, benchmarks and the demo.

The ports are drawn below the kernel's ephemeral range
(C{net.ipv4.ip_local_port_range}, 32768-60999 by default). A port the
kernel handed out itself (C{bind} to port 0) can be taken again at any
moment as the local port of an outgoing connection somewhere on the
machine, and a listener started a moment later then finds it in use; a
port outside that range is only ever taken by someone asking for it by
number.
"""

from __future__ import annotations

import random
import socket
from typing import Iterable, Sequence

#: Where the ports are drawn from: under the ephemeral range, and away
#: from the ranges the tests and the bed bind by number (20000 and up).
LOW, HIGH = 10000, 19999

_draw = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, binds: Sequence[tuple[int, int]]) -> bool:
    """
    Whether every C{(socket type, port)} of C{binds} can be bound on
    C{host} now (all at once; each is closed again).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held: list[socket.socket] = []
    try:
        for kind, port in binds:
            s = socket.socket(family, kind)
            held.append(s)
            s.bind((host, port))
    except OSError:
        return False
    finally:
        for s in held:
            s.close()
    return True


def free_port(host: str = "127.0.0.1", following: int = 0, away_from: Iterable[int] = ()) -> int:
    """
    A port free now on C{host} for both UDP and TCP, with the C{following}
    ports after it free for TCP too (SIP over TLS listens on port + 1),
    none of them in C{away_from} (ports a test has drawn already for
    something that takes the ports after it too, such as C{--workers}).

    @raise RuntimeError: if none is found in 100 tries.
    """
    high = min(HIGH, _ephemeral_low() - 1) - following
    taken = set(away_from)
    for _ in range(100):
        port = _draw.randint(LOW, high)
        if taken and not taken.isdisjoint(range(port, port + following + 1)):
            continue
        binds = [(socket.SOCK_DGRAM, port)] + [(socket.SOCK_STREAM, port + n) for n in range(following + 1)]
        if _bindable(host, binds):
            return port
    raise RuntimeError(f"no free port on {host}")


def free_udp_block(low: int, high: int, count: int, host: str = "127.0.0.1") -> int:
    """
    The first port C{p} in C{[low, high)}, in steps of C{count}, with C{p}
    to C{p + count - 1} free for UDP on C{host} now.

    @raise RuntimeError: none.
    """
    for port in range(low, high - count + 1, count):
        if _bindable(host, [(socket.SOCK_DGRAM, port + n) for n in range(count)]):
            return port
    raise RuntimeError(f"no {count} free UDP ports in {low}-{high}")
