# -*- test-case-name: tests.test_media_manager -*-
"""
The media port range: pairs of ports (even RTP port, odd RTCP port) handed
out and taken back.
"""

from __future__ import annotations

import errno
import socket
from typing import Callable

from spwm.errors import SpwmError


class PortsExhaustedError(SpwmError):
    """
    Every port pair of the range is in use.
    """


class PortAllocator:
    """
    Hands out port pairs C{(p, p + 1)} with C{p} even from C{[low, high]}.

    Pairs are handed out round-robin, so a pair that was just released is
    the last to be reused: late packets of an ended call do not reach the
    next one.

    @ivar low: the lowest port of the range.
    @ivar high: the highest port of the range.
    """

    def __init__(self, low: int, high: int) -> None:
        """
        @raise ValueError: the range holds no even/odd pair.
        """
        first = low + (low & 1)
        if not (0 < low <= high <= 65535) or first + 1 > high:
            raise ValueError(f"media port range {low}-{high} holds no port pair")
        self.low = low
        self.high = high
        self._first = first
        self._pairs = (high - first + 1) // 2
        self._next = 0
        self._used: set[int] = set()

    @property
    def capacity(self) -> int:
        """
        The number of pairs in the range.
        """
        return self._pairs

    @property
    def in_use(self) -> int:
        """
        The number of pairs handed out and not released.
        """
        return len(self._used)

    def allocate(self) -> int:
        """
        @return: the even port of a free pair, now in use.
        @raise PortsExhaustedError: every pair is in use.
        """
        if len(self._used) < self._pairs:
            # (a full range is refused at once: no walk over every pair)
            for _ in range(self._pairs):
                port = self._first + 2 * self._next
                self._next = (self._next + 1) % self._pairs
                if port not in self._used:
                    self._used.add(port)
                    return port
        raise PortsExhaustedError(
            f"all {self._pairs} media port pairs of {self.low}-{self.high} in use"
        )

    @property
    def full(self) -> bool:
        """
        Whether every pair is in use.
        """
        return len(self._used) >= self._pairs

    def holds(self, port: int) -> bool:
        """
        Whether C{port} belongs to a pair handed out and not released.
        """
        return port - ((port - self._first) & 1) in self._used

    def release(self, port: int) -> None:
        """
        Give back the pair of C{port} (a value that L{allocate} returned).
        Releasing a pair that is not in use does nothing.
        """
        self._used.discard(port)


def _bind_udp(address: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))


def check_range(
    address: str, low: int, high: int, bind: Callable[[str, int], None] = _bind_udp
) -> int:
    """
    Check at start that the media port range can be used on C{address}:
    find the first pair C{(p, p + 1)} whose two UDP ports can be bound now
    (and close them again).

    A pair in use by another program is skipped; any other error (the
    address is not one of this host, permission denied) is the answer at
    once, since the next pair would meet it too.

    @param bind: binds and closes one UDP socket, raising L{OSError}
        (for tests).
    @return: the even port of the first pair that could be bound.
    @raise OSError: no pair can be bound; the error of the last attempt.
    """
    PortAllocator(low, high)  # the same checks of the range
    last: OSError | None = None
    for port in range(low + (low & 1), high, 2):
        try:
            bind(address, port)
            bind(address, port + 1)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            last = e
            continue
        return port
    assert last is not None
    raise last
