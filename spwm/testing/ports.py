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

Each port handed out is also claimed for L{CLAIM_SECONDS} in a file every
process of this user shares (L{claims_path}): two test processes that run
at once (C{python3 -m tests} runs the unit and integration tests in two
trial workers) each find a port free a moment before either binds it, and
without the claim they could be handed the same one.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

#: Where the ports are drawn from: under the ephemeral range, and away
#: from the ranges the tests and the bed bind by number (20000 and up).
LOW, HIGH = 10000, 19999

_draw = random.SystemRandom()

#: Seconds a port handed out stays claimed: time for its taker to bind it
#: (a process started for it included).
CLAIM_SECONDS = 60.0


def claims_path() -> str:
    """
    The file of the claimed ports: one line per claim, the port and the
    time it was claimed; the expired ones are dropped at each claim, so it
    holds only the last L{CLAIM_SECONDS}' worth.
    """
    return os.path.join(tempfile.gettempdir(), f"spwm-test-ports-{os.getuid()}")


@contextmanager
def _claims() -> Iterator[dict[int, float]]:
    """
    The live claims, under an exclusive lock of the file; what the block
    leaves in the dict is written back.  Without a usable file (a
    read-only temporary directory) an empty dict, kept nowhere.
    """
    try:
        f = open(claims_path(), "a+")
    except OSError:
        yield {}
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        now = time.time()
        f.seek(0)
        claims: dict[int, float] = {}
        for line in f.read().split("\n"):
            try:
                port, at = line.split()
                if now - float(at) < CLAIM_SECONDS:
                    claims[int(port)] = float(at)
            except ValueError:
                continue
        yield claims
        f.seek(0)
        f.truncate()
        f.write("".join(f"{port} {at:.3f}\n" for port, at in claims.items()))


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
    something that takes the ports after it too, such as C{--workers}),
    nor claimed by another draw of the last L{CLAIM_SECONDS}; claimed for
    as long.

    @raise RuntimeError: if none is found in 100 tries.
    """
    high = min(HIGH, _ephemeral_low() - 1) - following
    taken = set(away_from)
    with _claims() as claims:
        for _ in range(100):
            port = _draw.randint(LOW, high)
            wanted = range(port, port + following + 1)
            if not taken.isdisjoint(wanted) or not claims.keys().isdisjoint(wanted):
                continue
            binds = [(socket.SOCK_DGRAM, port)] + [(socket.SOCK_STREAM, p) for p in wanted]
            if _bindable(host, binds):
                claims.update(dict.fromkeys(wanted, time.time()))
                return port
    raise RuntimeError(f"no free port on {host}")


def free_udp_block(low: int, high: int, count: int, host: str = "127.0.0.1") -> int:
    """
    The first port C{p} in C{[low, high)}, in steps of C{count}, with C{p}
    to C{p + count - 1} free for UDP on C{host} now (and claimed, as
    L{free_port}'s).

    @raise RuntimeError: none.
    """
    with _claims() as claims:
        for port in range(low, high - count + 1, count):
            wanted = range(port, port + count)
            if claims.keys().isdisjoint(wanted) and _bindable(host, [(socket.SOCK_DGRAM, p) for p in wanted]):
                claims.update(dict.fromkeys(wanted, time.time()))
                return port
    raise RuntimeError(f"no {count} free UDP ports in {low}-{high}")
