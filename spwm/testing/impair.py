# -*- test-case-name: tests.test_testing_impair -*-
"""
A user-space WAN link emulator for the end-to-end bed, and the call quality
figures (one-way delay, loss, late packets, E-model MOS) measured through it.

This machine's kernel has no C{sch_netem}, so the emulated WAN is a program:
a namespace C{wan} between the home router and the operator gateway holds
two veth ends (C{rtr0} towards the router, C{gw0} towards the gateway) and
L{run} forwards every Ethernet frame between two C{AF_PACKET} sockets bound
to them, through one L{LinkQueue} per direction.  The link stays a plain
Ethernet segment for the router and the gateway (ARP crosses it; nothing in
the wan namespace has an address).  C{AF_PACKET} rather than a TUN/TAP pair:
it needs no bridge, no addresses and no routing in the wan namespace, the
frames are the ones on the wire (so the rate limit counts real frame sizes)
and one process with two sockets serves both directions.  The senders into
the link (the router's and the gateway's C{pub0}) get TSO/GSO and transmit
checksum offload turned off (L{disable_offloads}): otherwise the program
would read unsegmented 64 KB TCP super-frames and frames whose checksum the
hardware was meant to fill in.

The queue model (L{LinkQueue}, sans-I/O: time and frames in, frames out)
applies, per direction and in this order:

 1. loss: seeded C{random.Random}, either independent (C{loss}) or
    Gilbert-Elliott (L{GilbertElliott}: two states with their own loss
    probability); a lost frame is counted and forgotten;
 2. a rate limit: the frame is serialised at C{rate} bit/s after the frames
    before it (a bottleneck queue of at most C{queue_bytes}; a frame that
    does not fit is tail-dropped and counted);
 3. the propagation delay C{delay} plus a jitter drawn uniformly from
    [-C{jitter}, +C{jitter}] (never below zero);
 4. without C{reorder} a frame never leaves before the frame before it
    (departure = max(its own, the previous departure)), as on a real access
    link: jitter then only stretches the gaps, and the mean delay grows a
    little above C{delay}; with C{reorder} each frame keeps its own time.

Frames wait in one heap ordered by departure time (ties by arrival), served
by one timer: the program sleeps in C{select} until the earliest departure.
The heap is bounded (C{max_frames}); an overflow is counted as a queue drop.

The counters per direction are C{in}, C{out}, C{lost}, C{queue_dropped},
C{send_errors} and the same split by kind (C{udp_in}, C{tcp_lost}, ...;
kinds C{udp}, C{tcp}, C{other} by the IPv4 protocol); C{queued} is the heap's
size now.  The program's own lateness is counted too: C{slip_max_ms} (the
most a due frame waited for this program), C{slip_over_1ms} and
C{slip_over_5ms} (how many times the earliest due frame was served more than
1 or 5 ms late); C{cpu_seconds} is the program's CPU time.  L{run} writes them as JSON to a file (atomically, every 0.2 s and at
exit) which the bed's L{tests.e2e.netbed.Topology}
reads.

Run inside the wan namespace::

    python3 -m spwm.testing.impair run rtr0 gw0 --profile lossy --seed 1 \\
        --stats /tmp/wan.json
    python3 -m spwm.testing.impair offloads pub0       # in a sender's namespace
    python3 -m spwm.testing.impair endpoint ...        # the test calls, below

Call quality: L{endpoint_main} is a G.711 call generator/answerer (50
packets per second of 172-byte RTP, 160 bytes of payload, per direction and
call) that records every packet it sends and receives with
C{time.monotonic()}; both ends run on the same host, so C{CLOCK_MONOTONIC}
is one clock for both and the delays are true one-way delays.
L{direction_stats} matches the two captures by (SSRC, sequence) and
L{emodel_r} / L{mos} estimate the listening quality, with ITU-T G.107's
E-model simplified for a G.711 call with packet-loss concealment::

    R    = 93.2 - Id - Ie_eff                      (R0 - Is = 93.2, A = 0)
    Id   = 0.024 d + 0.11 (d - 177.3) H(d - 177.3) (d: mouth-to-ear delay, ms;
                                                    H(x) = 1 if x >= 0 else 0)
    Ie_eff = Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl)
             Ie = 0, Bpl = 25.1 (G.113 Appendix I: G.711 with PLC);
             Ppl = effective loss in % (lost + later than 150 ms);
             BurstR = 1 / (p + q) from the loss pattern (p: P(lost | previous
             received), q: P(received | previous lost)); 1 for random loss
    MOS  = 1                                      if R <= 0
           1 + 0.035 R + 7e-6 R (R - 60) (100 - R) if 0 < R < 100
           4.5                                    if R >= 100

with d = 20 ms (one G.711 packet of packetisation) + the jitter buffer's
depth, taken as the 99th percentile of the one-way delays of the packets
that arrive in time (at most 150 ms).  No loss and no delay give
R = 92.7, MOS 4.40 (R = 93.2 at d = 0: MOS 4.41).
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import json
import math
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections import Counter, deque
from typing import Iterable, Mapping, Sequence

from attrs import define, field, frozen, validators

__all__ = [
    "PROFILES",
    "Direction",
    "DirectionStats",
    "GilbertElliott",
    "LinkQueue",
    "Profile",
    "direction_stats",
    "disable_offloads",
    "emodel_r",
    "endpoint_main",
    "frame_kind",
    "mos",
    "percentile",
    "read_capture",
    "rtp_packet",
    "run",
]

# -- the link model ------------------------------------------------------------


def _probability(instance: object, attribute: object, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a probability must be between 0 and 1, not {value!r}")


@frozen
class GilbertElliott:
    """
    Bursty loss: a two-state Markov chain, evaluated once per frame.

    @ivar p: probability of going from the good to the bad state.
    @ivar r: probability of going from the bad to the good state.
    @ivar loss_good: loss probability in the good state.
    @ivar loss_bad: loss probability in the bad state.
    """

    p: float = field(validator=_probability)
    r: float = field(validator=_probability)
    loss_good: float = field(default=0.0, validator=_probability)
    loss_bad: float = field(default=1.0, validator=_probability)

    @property
    def mean_loss(self) -> float:
        """The long-run loss probability."""
        if self.p + self.r == 0:
            return self.loss_good
        bad = self.p / (self.p + self.r)
        return bad * self.loss_bad + (1 - bad) * self.loss_good


@frozen
class Direction:
    """
    What one direction of the link does to a frame.

    @ivar delay: propagation delay, seconds.
    @ivar jitter: half-width of the uniform jitter, seconds.
    @ivar reorder: let jitter reorder frames (off: FIFO, as an access link).
    @ivar loss: independent loss probability (ignored with C{burst}).
    @ivar burst: Gilbert-Elliott loss instead of independent loss.
    @ivar rate: bottleneck rate in bit/s, or C{None} for none.
    @ivar queue_bytes: the bottleneck queue's size (only with C{rate}).
    """

    delay: float = field(default=0.0, validator=validators.ge(0))
    jitter: float = field(default=0.0, validator=validators.ge(0))
    reorder: bool = False
    loss: float = field(default=0.0, validator=_probability)
    burst: GilbertElliott | None = None
    rate: float | None = field(default=None, validator=validators.optional(validators.gt(0)))
    queue_bytes: int = field(default=64_000, validator=validators.gt(0))

    def describe(self) -> str:
        """A short human-readable summary, e.g. C{80 ms ± 20 ms, 5 % loss}."""
        parts = [f"{self.delay * 1000:g} ms"]
        if self.jitter:
            parts[0] += f" ± {self.jitter * 1000:g} ms"
            if self.reorder:
                parts[0] += " (reordering)"
        if self.burst is not None:
            parts.append(f"{self.burst.mean_loss * 100:.2g} % bursty loss")
        elif self.loss:
            parts.append(f"{self.loss * 100:g} % loss")
        if self.rate is not None:
            parts.append(f"{self.rate / 1e6:g} Mbit/s, {self.queue_bytes // 1000} kB queue")
        return ", ".join(parts)


@frozen
class Profile:
    """
    A named WAN: C{up} applies from the home router to the operator,
    C{down} the other way.
    """

    name: str
    up: Direction
    down: Direction

    def describe(self) -> str:
        """C{up} and C{down} in words (once when they are the same)."""
        if self.up == self.down:
            return self.up.describe() + ", each direction"
        return f"up {self.up.describe()}; down {self.down.describe()}"


def _both(name: str, direction: Direction) -> Profile:
    return Profile(name, direction, direction)


#: The WAN profiles, each symmetric.  C{good}, C{lossy}, C{bad} and
#: C{narrow} are the four of issue 12; C{bursty} and C{reordering} show the
#: optional behaviours.  The 2 Mbit/s queue holds 100 ms (25,000 bytes).
PROFILES: Mapping[str, Profile] = {
    p.name: p
    for p in [
        _both("clean", Direction()),
        _both("good", Direction(delay=0.020, jitter=0.005, loss=0.005)),
        _both("lossy", Direction(delay=0.040, loss=0.02)),
        _both("bad", Direction(delay=0.080, jitter=0.020, loss=0.05)),
        _both(
            "narrow",
            Direction(delay=0.060, loss=0.01, rate=2_000_000, queue_bytes=25_000),
        ),
        _both(
            "bursty",
            Direction(delay=0.040, burst=GilbertElliott(p=0.01, r=0.25)),
        ),
        _both("reordering", Direction(delay=0.040, jitter=0.020, reorder=True)),
    ]
}


def frame_kind(frame: bytes) -> str:
    """
    C{"udp"}, C{"tcp"} or C{"other"}: the IPv4 protocol of an Ethernet
    frame (an 802.1Q tag is not looked into).
    """
    if len(frame) >= 24 and frame[12:14] == b"\x08\x00":
        proto = frame[23]
        if proto == 17:
            return "udp"
        if proto == 6:
            return "tcp"
    return "other"


class LinkQueue:
    """
    One direction of the emulated link (see the module's docstring): frames
    and the time in (L{offer}), frames out when they are due (L{pop_due}).
    No clock, no I/O: the caller passes the time.

    @ivar counters: C{in}, C{out}, C{lost}, C{queue_dropped} and the same
        prefixed by the kind (C{udp_in}, ...).
    """

    def __init__(
        self, params: Direction, rng: random.Random, max_frames: int = 20_000
    ) -> None:
        self.params = params
        self._rng = rng
        self._max_frames = max_frames
        self._heap: list[tuple[float, int, bytes, str]] = []
        self._seq = 0
        self._last_departure = -math.inf
        #: when the bottleneck has serialised everything offered so far
        self._tx_free_at = -math.inf
        #: (finish time, size) of the frames still being serialised
        self._serialising: deque[tuple[float, int]] = deque()
        self._backlog = 0
        self._bad = False
        self.counters: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._heap)

    def _count(self, what: str, kind: str) -> None:
        self.counters[what] += 1
        self.counters[f"{kind}_{what}"] += 1

    def _lose(self) -> bool:
        burst = self.params.burst
        rng = self._rng
        if burst is None:
            return bool(self.params.loss) and rng.random() < self.params.loss
        if self._bad:
            if rng.random() < burst.r:
                self._bad = False
        elif rng.random() < burst.p:
            self._bad = True
        chance = burst.loss_bad if self._bad else burst.loss_good
        return rng.random() < chance

    def offer(self, now: float, frame: bytes, kind: str | None = None) -> bool:
        """
        A frame enters the link at C{now}.

        @return: whether it was queued (C{False}: lost or dropped).
        """
        p = self.params
        if kind is None:
            kind = frame_kind(frame)
        self._count("in", kind)
        # the bytes offered (IP frames): the bench's bandwidth factor
        self.counters["bytes_in"] += len(frame)
        if self._lose():
            self._count("lost", kind)
            return False
        if len(self._heap) >= self._max_frames:
            self._count("queue_dropped", kind)
            return False
        leave = now
        if p.rate is not None:
            # the bytes not yet serialised at `now`
            while self._serialising and self._serialising[0][0] <= now:
                self._backlog -= self._serialising.popleft()[1]
            if self._backlog + len(frame) > p.queue_bytes:
                self._count("queue_dropped", kind)
                return False
            leave = max(now, self._tx_free_at) + len(frame) * 8 / p.rate
            self._tx_free_at = leave
            self._serialising.append((leave, len(frame)))
            self._backlog += len(frame)
        departure = leave + p.delay
        if p.jitter:
            departure = max(leave, departure + self._rng.uniform(-p.jitter, p.jitter))
        if not p.reorder:
            departure = max(departure, self._last_departure)
            self._last_departure = departure
        self._seq += 1
        heapq.heappush(self._heap, (departure, self._seq, frame, kind))
        return True

    def next_departure(self) -> float | None:
        """When the next frame leaves, or C{None} when none waits."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[tuple[bytes, str]]:
        """
        Take the frames due at C{now}, in departure order.

        @return: (frame, kind) pairs; the caller counts them out with
            L{sent} (or as send errors).
        """
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, frame, kind = heapq.heappop(heap)
            due.append((frame, kind))
        return due

    def sent(self, kind: str, ok: bool = True) -> None:
        """Count a frame that L{pop_due} gave out as sent (or failed)."""
        self._count("out" if ok else "send_errors", kind)

    def snapshot(self) -> dict[str, int]:
        """The counters, and C{queued}: the frames waiting now."""
        result = dict(self.counters)
        result["queued"] = len(self._heap)
        return result


# -- the program ---------------------------------------------------------------

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
PACKET_IGNORE_OUTGOING = 23
SOL_PACKET = 263
SIOCETHTOOL = 0x8946
#: legacy ethtool "set" commands: tx checksum, scatter-gather, TSO, GSO, GRO
_ETHTOOL_OFF = {"tx-checksum": 0x17, "sg": 0x19, "tso": 0x1F, "gso": 0x24, "gro": 0x2C}
STATS_INTERVAL = 0.2


def disable_offloads(ifname: str) -> list[str]:
    """
    Turn off transmit checksum, scatter-gather, TSO, GSO and GRO of
    C{ifname} (the C{ethtool} ioctl; the machine has no C{ethtool}), so the
    frames that leave it are whole, wire-sized and checksummed.

    @return: the features that could not be turned off (named).
    """
    failed = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name, cmd in _ETHTOOL_OFF.items():
            value = bytearray(struct.pack("II", cmd, 0))
            ifreq = struct.pack("16sP", ifname.encode(), _address_of(value))
            try:
                fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
            except OSError:
                failed.append(name)
    return failed


def _address_of(buffer: bytearray) -> int:
    import ctypes

    return ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))


def _packet_socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:
        pass  # filtered by packet type below
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def _write_stats(path: str, document: dict[str, object]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(document, f)
    os.replace(tmp, path)


def run(
    a: str, b: str, profile: Profile, seed: int, stats: str, max_seconds: float
) -> int:
    """
    Forward frames between interfaces C{a} (the home router's side) and
    C{b} (the operator's side) through the profile's queues until SIGTERM
    or C{max_seconds}.  Writes the counters to C{stats}.
    """
    sa, sb = _packet_socket(a), _packet_socket(b)
    up = LinkQueue(profile.up, random.Random(seed * 2 + 1))
    down = LinkQueue(profile.down, random.Random(seed * 2 + 2))
    routes = [(sa, up, sb), (sb, down, sa)]
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    monotonic = time.monotonic
    started = monotonic()
    deadline = started + max_seconds
    written_at = 0.0

    slips = {up: 0.0, down: 0.0}
    writer: _StatsWriter | None = None

    def document() -> dict[str, object]:
        result: dict[str, object] = {
            "profile": profile.name,
            "seed": seed,
            "pid": os.getpid(),
            "written_at": monotonic(),
            "cpu_seconds": time.process_time(),
            "stats_write_max_ms": round(writer.slowest * 1000, 3) if writer else 0.0,
        }
        for name, queue in (("up", up), ("down", down)):
            counters: dict[str, float] = dict(queue.snapshot())
            counters["slip_max_ms"] = round(slips[queue] * 1000, 3)
            result[name] = counters
        return result

    _write_stats(stats, document())
    writer = _StatsWriter(stats)
    print(
        f"wan emulator: {a} <-> {b}, profile {profile.name} "
        f"({profile.describe()}), seed {seed}",
        flush=True,
    )
    while not stopping:
        now = monotonic()
        if now >= deadline:
            break
        waits = [t for t in (up.next_departure(), down.next_departure()) if t is not None]
        timeout = min([STATS_INTERVAL] + [t - now for t in waits])
        readable, _, _ = select.select([sa, sb], [], [], max(0.0, timeout))
        now = monotonic()
        for sock, queue, _ in routes:
            if sock not in readable:
                continue
            for _ in range(256):
                try:
                    frame, address = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                if address[2] == PACKET_OUTGOING:
                    continue
                queue.offer(now, frame)
        now = monotonic()
        for _, queue, out in routes:
            first = queue.next_departure()
            if first is not None and first <= now:
                # how late this program serves the earliest due frame
                slip = now - first
                slips[queue] = max(slips[queue], slip)
                if slip > 0.001:
                    queue.counters["slip_over_1ms"] += 1
                if slip > 0.005:
                    queue.counters["slip_over_5ms"] += 1
            for frame, kind in queue.pop_due(now):
                try:
                    out.send(frame)
                except OSError:
                    queue.sent(kind, ok=False)
                else:
                    queue.sent(kind)
        if now - written_at >= STATS_INTERVAL:
            # the file is written by another thread: a write that blocks
            # (a busy disk) must not hold the frames back
            writer.put(document())
            written_at = now
    writer.close(document())
    return 0


class _StatsWriter:
    """
    Writes the latest counters document to a file from its own thread,
    so that the forwarding loop never waits for the file system.
    """

    def __init__(self, path: str) -> None:
        import threading

        self._path = path
        self._latest: dict[str, object] | None = None
        self._wake = threading.Event()
        self._stopping = False
        self.slowest = 0.0
        self.failed = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def put(self, document: dict[str, object]) -> None:
        """Have C{document} written soon (replacing one not yet written)."""
        self._latest = document
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            document, self._latest = self._latest, None
            if document is not None:
                started = time.monotonic()
                try:
                    _write_stats(self._path, document)
                except OSError as e:
                    if not self.failed:
                        print(f"wan emulator: cannot write {self._path}: {e}", file=sys.stderr)
                    self.failed = True
                self.slowest = max(self.slowest, time.monotonic() - started)

    def close(self, document: dict[str, object]) -> None:
        """Stop the thread and write C{document} last."""
        self._stopping = True
        self._wake.set()
        self._thread.join(5.0)
        _write_stats(self._path, document)


# -- the call endpoints ----------------------------------------------------------

RTP = struct.Struct("!BBHII")
#: after the RTP header: the send time (monotonic) and a 32-bit sequence
STAMP = struct.Struct("!dI")
PAYLOAD = 160
INTERVAL = 0.020
ANSWER_BIT = 0x40000000


def rtp_packet(ssrc: int, seq: int, now: float) -> bytes:
    """A G.711 (PCMU) RTP packet: 12-byte header, 160-byte payload."""
    header = RTP.pack(0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc)
    stamp = STAMP.pack(now, seq)
    return header + stamp + b"\xff" * (PAYLOAD - len(stamp))


@define
class _Stream:
    """One call's sending half: its socket, SSRC, peer and schedule."""

    sock: socket.socket
    ssrc: int
    dest: tuple[str, int]
    when: float
    seq: int = 0


def endpoint_main(argv: Sequence[str]) -> int:
    """
    C{endpoint caller BIND_IP DEST_HOST:PORT --calls N --packets K --out F}:
    N sockets on BIND_IP, each a call sending K packets (50 per second,
    SSRC 0x1000 + call) to DEST and receiving what comes back.

    C{endpoint answerer BIND_IP:PORT --calls N --packets K --out F}: one
    socket; each caller SSRC s that arrives starts an answer stream (SSRC
    s | 0x40000000) of K packets to the address s came from.

    Both print C{ready} once bound, write every packet sent and received
    (C{s|r SSRC SEQ TIME}) to C{F} at the end, and exit after the last
    packet of their own plus C{--linger} seconds, or at C{--max-time}.
    C{--realtime PRIORITY} runs them under C{SCHED_FIFO}, so that other
    load on the machine does not stretch their timestamps.
    """
    parser = argparse.ArgumentParser(prog="impair endpoint")
    parser.add_argument("role", choices=["caller", "answerer"])
    parser.add_argument("bind")
    parser.add_argument("dest", nargs="?")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--packets", type=int, default=250)
    parser.add_argument("--linger", type=float, default=1.5)
    parser.add_argument("--max-time", type=float, default=120.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--realtime", type=int, default=0, metavar="PRIORITY")
    args = parser.parse_args(argv)
    if args.realtime:
        _realtime(args.realtime, "endpoint")
    monotonic = time.monotonic
    log: list[str] = []
    streams: list[_Stream] = []
    sockets: list[socket.socket] = []
    if args.role == "caller":
        host, _, port = args.dest.rpartition(":")
        start = monotonic() + 0.1
        for i in range(args.calls):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((args.bind, 0))
            s.setblocking(False)
            sockets.append(s)
            streams.append(_Stream(s, 0x1000 + i, (host, int(port)), start + i * INTERVAL / args.calls))
    else:
        host, _, port = args.bind.rpartition(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, int(port)))
        s.setblocking(False)
        sockets.append(s)
    answered: set[int] = set()
    print("ready", flush=True)
    deadline = monotonic() + args.max_time
    finished_at: float | None = None
    while True:
        now = monotonic()
        if now >= deadline:
            break
        if finished_at is None and len(streams) == args.calls and all(
            st.seq >= args.packets for st in streams
        ):
            finished_at = now
        if finished_at is not None and now - finished_at >= args.linger:
            break
        pending = [st.when for st in streams if st.seq < args.packets]
        timeout = min(pending) - now if pending else 0.05
        readable, _, _ = select.select(sockets, [], [], max(0.0, min(timeout, 0.05)))
        for s in readable:
            for _ in range(64):
                try:
                    data, peer = s.recvfrom(2048)
                except BlockingIOError:
                    break
                at = monotonic()
                if len(data) < RTP.size + STAMP.size:
                    continue
                _, _, seq16, _, ssrc = RTP.unpack_from(data)
                _, seq = STAMP.unpack_from(data, RTP.size)
                log.append(f"r {ssrc} {seq} {at!r}")
                if args.role == "answerer" and ssrc not in answered and len(answered) < args.calls:
                    answered.add(ssrc)
                    streams.append(_Stream(s, ssrc | ANSWER_BIT, peer, at))
        now = monotonic()
        for st in streams:
            while st.seq < args.packets and st.when <= now:
                t = monotonic()
                try:
                    st.sock.sendto(rtp_packet(st.ssrc, st.seq, t), st.dest)
                except OSError:
                    pass  # counted as lost by the matching
                log.append(f"s {st.ssrc} {st.seq} {t!r}")
                st.seq += 1
                st.when += INTERVAL
    with open(args.out, "w") as f:
        f.write("\n".join(log) + "\n")
    return 0


# -- the figures ---------------------------------------------------------------

LATE = 0.150
PACKETISATION_MS = 20.0


def read_capture(path: str) -> tuple[dict[tuple[int, int], float], list[tuple[int, int, float]]]:
    """
    An endpoint's capture: what it sent ((SSRC, seq) to time) and what it
    received ((SSRC, seq, time) in arrival order, duplicates kept).
    """
    sent: dict[tuple[int, int], float] = {}
    received: list[tuple[int, int, float]] = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue
            key = (int(parts[1]), int(parts[2]))
            if parts[0] == "s":
                sent[key] = float(parts[3])
            else:
                received.append((key[0], key[1], float(parts[3])))
    return sent, received


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank C{q}-th percentile (0-100) of sorted values; NaN if none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def emodel_r(
    delay_ms: float, ppl: float, burst_r: float = 1.0, ie: float = 0.0, bpl: float = 25.1
) -> float:
    """
    The E-model's R (ITU-T G.107, simplified, see the module's docstring).

    @param delay_ms: mouth-to-ear delay in ms.
    @param ppl: packet loss in percent (0-100).
    @param burst_r: the burst ratio (1 for random loss).
    @param ie: the codec's equipment impairment (G.711: 0).
    @param bpl: the codec's packet-loss robustness (G.711 with PLC: 25.1).
    """
    d = delay_ms
    idd = 0.024 * d + (0.11 * (d - 177.3) if d >= 177.3 else 0.0)
    ie_eff = ie + (95 - ie) * ppl / (ppl / burst_r + bpl) if ppl > 0 else ie
    return 93.2 - idd - ie_eff


def mos(r: float) -> float:
    """The MOS estimate of an R value (ITU-T G.107 Annex B)."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)


@frozen
class DirectionStats:
    """
    One direction of one or more calls, from the two ends' captures.

    Delays are seconds; C{late} counts unique packets that arrived later
    than L{LATE}; C{effective_loss} = (lost + late) / sent; C{longest_gap}
    is the longest run of consecutive packets of one stream lost or late,
    in seconds (run length x 20 ms).
    """

    sent: int
    delivered: int
    duplicates: int
    lost: int
    late: int
    effective_loss: float
    p50: float
    p95: float
    p99: float
    max: float
    longest_gap: float
    burst_r: float
    delay_ms: float
    r: float
    mos: float
    delays: tuple[float, ...] = field(repr=False, eq=False)


def direction_stats(
    sent: Mapping[tuple[int, int], float],
    received: Iterable[tuple[int, int, float]],
    late: float = LATE,
) -> DirectionStats:
    """
    Match one direction's packets by (SSRC, sequence) and compute its
    figures (see L{DirectionStats}; MOS with L{emodel_r}).  Received
    packets that were not sent (another direction's) are ignored.
    """
    first: dict[tuple[int, int], float] = {}
    duplicates = 0
    for ssrc, seq, at in received:
        key = (ssrc, seq)
        if key not in sent:
            continue
        if key in first:
            duplicates += 1
        else:
            first[key] = at - sent[key]
    delays = sorted(first.values())
    in_time = [d for d in delays if d <= late]
    n_late = len(delays) - len(in_time)
    lost = len(sent) - len(first)
    total = len(sent)
    # the loss pattern of each stream, in sequence order
    streams: dict[int, list[int]] = {}
    for ssrc, seq in sent:
        streams.setdefault(ssrc, []).append(seq)
    longest = 0
    found_found = found_lost = lost_found = lost_lost = 0
    for ssrc, seqs in streams.items():
        run = 0
        previous: bool | None = None
        for seq in sorted(seqs):
            d = first.get((ssrc, seq))
            ok = d is not None and d <= late
            run = 0 if ok else run + 1
            longest = max(longest, run)
            if previous is not None:
                if previous and ok:
                    found_found += 1
                elif previous:
                    found_lost += 1
                elif ok:
                    lost_found += 1
                else:
                    lost_lost += 1
            previous = ok
    p = found_lost / (found_found + found_lost) if found_found + found_lost else 0.0
    q = lost_found / (lost_found + lost_lost) if lost_found + lost_lost else 1.0
    burst_r = 1.0 / (p + q) if p + q > 0 else 1.0
    effective = (lost + n_late) / total if total else 0.0
    jitter_buffer = percentile(in_time, 99) * 1000 if in_time else late * 1000
    delay_ms = PACKETISATION_MS + jitter_buffer
    r = emodel_r(delay_ms, effective * 100, burst_r)
    return DirectionStats(
        sent=total,
        delivered=len(first),
        duplicates=duplicates,
        lost=lost,
        late=n_late,
        effective_loss=effective,
        p50=percentile(delays, 50),
        p95=percentile(delays, 95),
        p99=percentile(delays, 99),
        max=delays[-1] if delays else math.nan,
        longest_gap=longest * INTERVAL,
        burst_r=burst_r,
        delay_ms=delay_ms,
        r=r,
        mos=mos(r),
        delays=tuple(delays),
    )


# -- command line ----------------------------------------------------------------


def _realtime(priority: int, who: str) -> None:
    """Run under SCHED_FIFO at C{priority}, or say (once) why not."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as e:
        print(f"{who}: no SCHED_FIFO ({e}); running at normal priority", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The C{python3 -m spwm.testing.impair} command (see the module)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "endpoint":
        return endpoint_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python3 -m spwm.testing.impair")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="forward frames between two interfaces")
    r.add_argument("a", help="the home router's side (direction up: a -> b)")
    r.add_argument("b", help="the operator's side")
    r.add_argument("--profile", choices=sorted(PROFILES), default="clean")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--stats", required=True, help="the JSON counters file")
    r.add_argument("--max-time", type=float, default=3600.0)
    r.add_argument(
        "--realtime", type=int, default=0, metavar="PRIORITY",
        help="run under SCHED_FIFO at this priority (0: no), so that the "
        "machine's other load does not delay the frames",
    )
    o = sub.add_parser("offloads", help="turn off TSO/GSO/GRO/tx checksum")
    o.add_argument("interfaces", nargs="+")
    sub.add_parser("profiles", help="list the profiles")
    args = parser.parse_args(argv)
    if args.command == "profiles":
        for name, profile in PROFILES.items():
            print(f"{name:12} {profile.describe()}")
        return 0
    if args.command == "offloads":
        status = 0
        for ifname in args.interfaces:
            failed = disable_offloads(ifname)
            # GRO/SG may be fixed on some devices; TSO, GSO and tx-checksum matter
            if {"tso", "gso", "tx-checksum"} & set(failed):
                print(f"{ifname}: could not turn off {', '.join(failed)}", file=sys.stderr)
                status = 1
        return status
    if args.realtime:
        _realtime(args.realtime, "wan emulator")
    try:
        return run(args.a, args.b, PROFILES[args.profile], args.seed, args.stats, args.max_time)
    except OSError as e:
        print(f"wan emulator: stopped on {args.a}/{args.b}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
