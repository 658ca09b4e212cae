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


def free_port(host: str = "127.0.0.1", following: int = 0) -> int:
    """
    A port free now on C{host} for both UDP and TCP, with the C{following}
    ports after it free for TCP too (SIP over TLS listens on port + 1).

    @raise RuntimeError: if none is found in 100 tries.
    """
    high = min(HIGH, _ephemeral_low() - 1) - following
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        port = _draw.randint(LOW, high)
        held: list[socket.socket] = []
        try:
            u = socket.socket(family, socket.SOCK_DGRAM)
            held.append(u)
            u.bind((host, port))
            for offset in range(following + 1):
                t = socket.socket(family)
                held.append(t)
                t.bind((host, port + offset))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return port
    raise RuntimeError(f"no free port on {host}")
