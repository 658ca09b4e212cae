"""
The load side shared by the benchmarks (C{tunnel_udp.py}, C{media.py},
C{sip_calls.py}): a paced datagram sender, an epoll receive loop, the
exponential ramp with bisection that finds the highest rate that passes,
and the loss and microsecond formatting of the reports.
"""

from __future__ import annotations

import select
import signal
import socket
import time
from typing import Any, Callable, NamedTuple


def child_setup() -> None:
    """
    In a forked worker: die quietly on SIGINT/SIGTERM.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def paced_sender_main(
    socks: list[socket.socket],
    dests: list[tuple[str, int]],
    size: int,
    fill: Callable[[bytearray, int, int], Any],
    rate: float,
    duration: float,
    conn: Any,
) -> None:
    """
    A forked sender: C{rate} datagrams of C{size} bytes per second for
    C{duration} seconds, round robin over C{socks} (socket i sends to
    C{dests[i]}), paced in batches of about 2 ms with C{time.sleep}; C{rate
    <= 0} sends unpaced, in batches of 64.  Reports C{(sent, send errors,
    elapsed, cpu)} on C{conn}.

    @param fill: C{fill(buf, i, seq)} writes datagram C{seq} of stream C{i}
        into C{buf}; it is called just before the datagram is sent, so it
        can stamp the send time.
    """
    child_setup()
    buf = bytearray(size)
    n = len(socks)
    sends = [s.sendto for s in socks]
    seq = [0] * n
    sent = failed = 0
    i = 0
    unlimited = rate <= 0
    batch_cap = 64 if unlimited else max(1, int(rate * 0.002))
    monotonic = time.monotonic
    t0 = monotonic()
    end = t0 + duration
    cpu0 = time.process_time()
    while True:
        now = monotonic()
        if now >= end:
            break
        due = batch_cap if unlimited else int((now - t0) * rate) + 1 - sent - failed
        if due <= 0:
            # next datagram is due in 1/rate; sleep in steps of at least 0.5 ms
            time.sleep(max(0.0005, (sent + failed) / rate - (now - t0)))
            continue
        if due > batch_cap:
            due = batch_cap
        for _ in range(due):
            s = seq[i]
            fill(buf, i, s)
            try:
                sends[i](buf, dests[i])
                sent += 1
            except OSError:
                failed += 1
            seq[i] = s + 1
            i += 1
            if i == n:
                i = 0
    conn.send((sent, failed, monotonic() - t0, time.process_time() - cpu0))


def epoll_readers(socks: list[socket.socket]) -> tuple[select.epoll, dict[int, Any]]:
    """
    Make C{socks} non-blocking and register them in a new C{epoll} for
    reading; return it with each descriptor's C{recv_into}.
    """
    ep = select.epoll()
    by_fd = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = s.recv_into
    return ep, by_fd


def receive_until(
    socks: list[socket.socket], until: float, on_packet: Callable[[bytearray, int, float], Any]
) -> None:
    """
    Read every datagram that reaches C{socks} until the monotonic time
    C{until}, calling C{on_packet(buf, nbytes, now)} for each (C{buf} is
    reused: decode it there; C{now} is the monotonic receive time).
    """
    ep, by_fd = epoll_readers(socks)
    buf = bytearray(2048)
    monotonic = time.monotonic
    try:
        while True:
            left = until - monotonic()
            if left <= 0:
                break
            for fd, _ in ep.poll(min(left, 0.1)):
                recv = by_fd[fd]
                while True:
                    try:
                        n = recv(buf)
                    except BlockingIOError:
                        break
                    on_packet(buf, n, monotonic())
    finally:
        ep.close()


class Ramp(NamedTuple):
    """
    What L{bisect_ramp} found.

    @ivar good: the highest rate that passed (0 if none did).
    @ivar bad: the lowest rate that failed, or C{None}.
    @ivar results: what every step returned, in the order run.
    @ivar stopped: a step could not judge its rate (say, the load generator
        could not send that fast): the search stopped there and C{good} is
        a lower bound.
    """

    good: float
    bad: float | None
    results: list[Any]
    stopped: bool


def bisect_ramp(
    step: Callable[[float], tuple[bool | None, Any]],
    start: float,
    cap: float,
    factor: float,
    bisect: int,
    *,
    max_steps: int | None = None,
    integer: bool = False,
    below_start: bool = True,
) -> Ramp:
    """
    The highest rate that passes: C{start}, C{start * factor}, ... up to
    C{cap} until a step fails, then C{bisect} halvings between the last
    rate that passed and the first that failed.

    @param step: runs one step at a rate; returns C{(True, result)} when it
        passed, C{(False, result)} when it failed, C{(None, result)} when it
        cannot tell (the search stops).
    @param max_steps: at most this many ramp steps (before bisecting); with
        C{factor > 1} and C{start > 0} C{cap} bounds the ramp anyway.
    @param integer: bisect on whole rates (and stop when the middle is one
        of the two ends).
    @param below_start: bisect between 0 and C{start} when the first step
        fails (otherwise the ramp ends there).
    """
    good, bad = 0.0, None
    results: list[Any] = []
    rate = start
    steps = 0
    while rate <= cap and (max_steps is None or steps < max_steps):
        steps += 1
        ok, result = step(rate)
        results.append(result)
        if ok is None:
            return Ramp(good, bad, results, True)
        if ok:
            good = rate
            rate *= factor
        else:
            bad = rate
            break
    if bad is not None and (good or below_start):
        for _ in range(bisect):
            mid = (good + bad) / 2
            if integer:
                mid = round(mid)
            if mid in (good, bad):
                break
            ok, result = step(mid)
            results.append(result)
            if ok is None:
                return Ramp(good, bad, results, True)
            if ok:
                good = mid
            else:
                bad = mid
    return Ramp(good, bad, results, False)


def loss(sent: int, received: int) -> float:
    """
    The fraction of C{sent} that was not C{received} (0 when nothing was
    sent; duplicates do not make it negative).
    """
    return 0.0 if sent <= 0 else max(0.0, 1.0 - received / sent)


def fmt_us(seconds: float, width: int = 7) -> str:
    """
    C{seconds} in whole microseconds, right-aligned in C{width} characters.
    """
    return f"{seconds * 1e6:{width}.0f}"
