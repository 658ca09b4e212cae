"""
Tests for the WAN emulator's queue model, the E-model and the call figures
(C{spwm.testing.impair}).  The queue is sans-I/O: every test passes the
time itself (a fake clock), nothing sleeps and nothing touches a socket.
"""

from __future__ import annotations

import math
import random
import struct

from twisted.trial.unittest import SynchronousTestCase

from spwm.testing.impair import (
    PROFILES,
    Direction,
    GilbertElliott,
    LinkQueue,
    direction_stats,
    emodel_r,
    frame_kind,
    mos,
    percentile,
    read_capture,
    rtp_packet,
)


def _frame(proto: int = 17, size: int = 214) -> bytes:
    """An Ethernet frame of C{size} bytes carrying IPv4 with C{proto}."""
    header = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    ip = bytearray(20)
    ip[0] = 0x45
    ip[9] = proto
    return header + bytes(ip) + b"\x00" * (size - 34)


def _drive(
    queue: LinkQueue, arrivals: list[float], frames: list[bytes] | None = None
) -> list[tuple[float, bytes]]:
    """
    Offer a frame at each arrival time, then release everything, stepping
    a fake clock to every departure; return (departure time, frame) pairs.
    """
    out: list[tuple[float, bytes]] = []
    frames = frames or [struct.pack("!I", i) + _frame()[4:] for i in range(len(arrivals))]
    pending = list(zip(arrivals, frames))
    for _ in range(10 * (len(arrivals) + len(queue)) + 10):
        nxt = queue.next_departure()
        if pending and (nxt is None or pending[0][0] <= nxt):
            at, frame = pending.pop(0)
            queue.offer(at, frame)
            continue
        if nxt is None:
            break
        for frame, kind in queue.pop_due(nxt):
            queue.sent(kind)
            out.append((nxt, frame))
    else:
        raise AssertionError("the queue did not drain")
    return out


def _index(frame: bytes) -> int:
    return int(struct.unpack("!I", frame[:4])[0])


class LinkQueueTests(SynchronousTestCase):
    """
    One direction of the link: delay, jitter, loss, rate, bounds, counters.
    """

    def test_fixed_delay(self) -> None:
        """
        A frame leaves exactly C{delay} after it arrived, not before.
        """
        queue = LinkQueue(Direction(delay=0.04), random.Random(1))
        self.assertTrue(queue.offer(10.0, _frame()))
        self.assertEqual(queue.next_departure(), 10.04)
        self.assertEqual(queue.pop_due(10.039), [])
        self.assertEqual(len(queue.pop_due(10.04)), 1)
        self.assertIsNone(queue.next_departure())

    def test_jitter_keeps_order(self) -> None:
        """
        Without reordering, 2,000 frames 1 ms apart with ±20 ms jitter leave
        in the order they arrived, each no earlier than C{delay - jitter}
        after its arrival and never before the frame ahead of it.
        """
        queue = LinkQueue(Direction(delay=0.05, jitter=0.02), random.Random(3))
        arrivals = [i * 0.001 for i in range(2000)]
        out = _drive(queue, arrivals)
        order = [_index(f) for _, f in out]
        self.assertEqual(order, list(range(2000)))
        times = [t for t, _ in out]
        self.assertEqual(times, sorted(times))
        for (t, f) in out:
            self.assertGreaterEqual(t - arrivals[_index(f)], 0.03 - 1e-9)
        # the jitter is there: the delays spread over most of its range
        delays = [t - arrivals[_index(f)] for t, f in out]
        self.assertGreater(max(delays) - min(delays), 0.03)

    def test_jitter_reorders_when_asked(self) -> None:
        """
        With C{reorder}, each frame keeps its own departure: every delay is
        within C{delay ± jitter}, and some frames overtake others.
        """
        queue = LinkQueue(
            Direction(delay=0.05, jitter=0.02, reorder=True), random.Random(3)
        )
        arrivals = [i * 0.001 for i in range(2000)]
        out = _drive(queue, arrivals)
        order = [_index(f) for _, f in out]
        self.assertEqual(sorted(order), list(range(2000)))
        self.assertNotEqual(order, list(range(2000)))
        for t, f in out:
            delay = t - arrivals[_index(f)]
            self.assertTrue(0.03 - 1e-9 <= delay <= 0.07 + 1e-9, delay)

    def test_seeded_loss_is_exact(self) -> None:
        """
        Independent loss draws one number per frame from the seeded
        generator: over 10,000 frames at 5 % the count is exactly what the
        same generator gives (482 for this seed), within 4-6 %, and every
        frame is either lost or delivered.
        """
        queue = LinkQueue(Direction(delay=0.01, loss=0.05), random.Random(15))
        expected_rng = random.Random(15)
        expected = sum(expected_rng.random() < 0.05 for _ in range(10000))
        out = _drive(queue, [i * 0.02 for i in range(10000)])
        lost = queue.counters["lost"]
        self.assertEqual(lost, expected)
        self.assertEqual(lost, 482)
        self.assertTrue(400 <= lost <= 600)
        self.assertEqual(queue.counters["in"], 10000)
        self.assertEqual(queue.counters["out"], 10000 - lost)
        self.assertEqual(len(out), 10000 - lost)
        self.assertEqual(queue.counters["udp_lost"], lost)

    def test_gilbert_elliott_bursts(self) -> None:
        """
        Gilbert-Elliott loss (p = 1 %, r = 25 %, all lost in the bad state)
        loses about p / (p + r) = 3.8 % of the frames, in bursts of about
        1 / r = 4 frames.
        """
        burst = GilbertElliott(p=0.01, r=0.25)
        self.assertAlmostEqual(burst.mean_loss, 0.01 / 0.26)
        queue = LinkQueue(Direction(burst=burst), random.Random(5))
        runs = []
        run = 0
        for i in range(100_000):
            if queue.offer(i * 0.02, _frame()):
                if run:
                    runs.append(run)
                run = 0
            else:
                run += 1
            queue.pop_due(i * 0.02)
        rate = queue.counters["lost"] / 100_000
        self.assertTrue(0.03 < rate < 0.048, rate)
        mean_run = sum(runs) / len(runs)
        self.assertTrue(3.0 < mean_run < 5.0, mean_run)

    def test_rate_serialises(self) -> None:
        """
        At 2 Mbit/s a 1,000-byte frame takes 4 ms: ten frames offered at
        once leave 4 ms apart after the propagation delay.
        """
        queue = LinkQueue(Direction(delay=0.06, rate=2_000_000), random.Random(1))
        for _ in range(10):
            self.assertTrue(queue.offer(0.0, _frame(size=1000)))
        out = _drive(queue, [])
        times = [round(t, 9) for t, _ in out]
        self.assertEqual(times, [round(0.06 + 0.004 * (i + 1), 9) for i in range(10)])

    def test_bounded_queue_tail_drops(self) -> None:
        """
        A 25,000-byte bottleneck queue takes 25 frames of 1,000 bytes
        offered at once and tail-drops the rest (counted); once 4 ms have
        serialised one frame, one more fits.
        """
        queue = LinkQueue(
            Direction(rate=2_000_000, queue_bytes=25_000), random.Random(1)
        )
        accepted = [queue.offer(0.0, _frame(size=1000)) for _ in range(30)]
        self.assertEqual(accepted, [True] * 25 + [False] * 5)
        self.assertEqual(queue.counters["queue_dropped"], 5)
        self.assertEqual(queue.counters["udp_queue_dropped"], 5)
        self.assertFalse(queue.offer(0.0039, _frame(size=1000)))
        self.assertTrue(queue.offer(0.004, _frame(size=1000)))
        self.assertFalse(queue.offer(0.004, _frame(size=1000)))
        self.assertEqual(queue.snapshot()["queued"], 26)

    def test_heap_bounded(self) -> None:
        """
        The delay line holds at most C{max_frames}; more are dropped and
        counted, so memory stays bounded whatever the input rate.
        """
        queue = LinkQueue(Direction(delay=1.0), random.Random(1), max_frames=100)
        for i in range(150):
            queue.offer(i * 1e-4, _frame())
        self.assertEqual(len(queue), 100)
        self.assertEqual(queue.counters["queue_dropped"], 50)

    def test_kinds(self) -> None:
        """
        Frames are counted by IPv4 protocol: udp, tcp, other (ARP, IPv6);
        the bytes offered in all (C{bytes_in}: the bench's bandwidth factor).
        """
        self.assertEqual(frame_kind(_frame(17)), "udp")
        self.assertEqual(frame_kind(_frame(6)), "tcp")
        self.assertEqual(frame_kind(_frame(1)), "other")
        self.assertEqual(frame_kind(b"\x00" * 12 + b"\x08\x06" + b"\x00" * 28), "other")
        queue = LinkQueue(Direction(), random.Random(1))
        queue.offer(0.0, _frame(6))
        queue.offer(0.0, _frame(17))
        for frame, kind in queue.pop_due(0.0):
            queue.sent(kind)
        self.assertEqual(
            queue.snapshot(),
            {"in": 2, "out": 2, "tcp_in": 1, "tcp_out": 1, "udp_in": 1,
             "udp_out": 1, "queued": 0, "bytes_in": len(_frame(6)) + len(_frame(17))},
        )

    def test_profiles(self) -> None:
        """
        The profile table has the issue's four WANs and a clean one, the
        same each direction.
        """
        self.assertEqual(PROFILES["clean"].up, Direction())
        self.assertEqual(PROFILES["good"].up, Direction(delay=0.02, jitter=0.005, loss=0.005))
        self.assertEqual(PROFILES["lossy"].down, Direction(delay=0.04, loss=0.02))
        self.assertEqual(PROFILES["bad"].up, Direction(delay=0.08, jitter=0.02, loss=0.05))
        narrow = PROFILES["narrow"].up
        self.assertEqual((narrow.delay, narrow.loss, narrow.rate), (0.06, 0.01, 2_000_000))
        self.assertEqual(
            PROFILES["bad"].describe(), "80 ms ± 20 ms, 5 % loss, each direction"
        )


class EModelTests(SynchronousTestCase):
    """
    The simplified E-model (ITU-T G.107, G.113 values for G.711 with PLC).
    """

    def test_known_points(self) -> None:
        """
        No loss, no delay: R = 93.2, MOS 4.41; the bench's floor of 20 ms
        packetisation: MOS 4.40.  MOS is 1 at R <= 0 and 4.5 at R >= 100.
        """
        self.assertAlmostEqual(emodel_r(0, 0), 93.2)
        self.assertAlmostEqual(mos(93.2), 4.409285824)
        self.assertAlmostEqual(mos(emodel_r(20, 0)), 4.40, places=2)
        self.assertEqual(mos(0), 1.0)
        self.assertEqual(mos(-5), 1.0)
        self.assertEqual(mos(100), 4.5)

    def test_hand_computed(self) -> None:
        """
        d = 200 ms, 2 % random loss:
        Id = 0.024 * 200 + 0.11 * (200 - 177.3) = 7.297,
        Ie_eff = 95 * 2 / (2 + 25.1) = 7.01107, R = 78.8919,
        MOS = 1 + 0.035 R + 7e-6 R (R - 60)(100 - R) = 3.98144.
        d = 20 ms, 5 % loss with BurstR 2: Id = 0.48,
        Ie_eff = 95 * 5 / (2.5 + 25.1) = 17.2101, R = 75.5099, MOS 3.84362.
        """
        self.assertAlmostEqual(emodel_r(200, 2), 78.8919, places=4)
        self.assertAlmostEqual(mos(emodel_r(200, 2)), 3.98144, places=5)
        self.assertAlmostEqual(emodel_r(20, 5, burst_r=2.0), 75.5099, places=4)
        self.assertAlmostEqual(mos(emodel_r(20, 5, burst_r=2.0)), 3.84362, places=5)
        # below 177.3 ms only the linear term
        self.assertAlmostEqual(emodel_r(100, 0), 93.2 - 2.4)


class StatsTests(SynchronousTestCase):
    """
    Matching the two ends' captures by (SSRC, sequence).
    """

    def test_hand_made_capture(self) -> None:
        """
        Ten packets of one stream, 20 ms apart: 3 and 4 lost, 7 late
        (200 ms), 2 received twice, the rest with delays 10, 20, ... ms.
        """
        sent = {(1, i): i * 0.02 for i in range(10)}
        delays = {0: 0.010, 1: 0.020, 2: 0.030, 5: 0.060, 6: 0.070, 7: 0.200, 8: 0.090, 9: 0.100}
        received = [(1, i, sent[1, i] + d) for i, d in delays.items()]
        received.append((1, 2, sent[1, 2] + 0.050))  # the duplicate
        received.append((99, 1, 5.0))  # another direction's packet: ignored
        stats = direction_stats(sent, received)
        self.assertEqual(
            (stats.sent, stats.delivered, stats.duplicates, stats.lost, stats.late),
            (10, 8, 1, 2, 1),
        )
        self.assertAlmostEqual(stats.effective_loss, 0.3)
        self.assertAlmostEqual(stats.p50, 0.060)
        self.assertAlmostEqual(stats.p95, 0.200)
        self.assertAlmostEqual(stats.max, 0.200)
        self.assertAlmostEqual(stats.longest_gap, 0.040)
        # transitions ok->ok 3,4 ... : oo(0-1,1-2) ol(2-3) ll(3-4) lo(4-5)
        # oo(5-6) ol(6-7) lo(7-8) oo(8-9): p = 2/6, q = 2/3, BurstR = 1
        self.assertAlmostEqual(stats.burst_r, 1.0)
        # the jitter buffer: p99 of the in-time delays (100 ms) + 20 ms
        self.assertAlmostEqual(stats.delay_ms, 120.0)
        self.assertAlmostEqual(stats.r, emodel_r(120.0, 30.0, 1.0))
        self.assertAlmostEqual(stats.mos, mos(stats.r))

    def test_bursty_pattern(self) -> None:
        """
        Losses in one run of 10 out of 100: p = 1/90, q = 1/10, so BurstR
        = 1 / (p + q) = 9, and the longest gap is 200 ms.
        """
        sent = {(7, i): i * 0.02 for i in range(100)}
        received = [(7, i, sent[7, i] + 0.03) for i in range(100) if not 40 <= i < 50]
        stats = direction_stats(sent, received)
        self.assertEqual(stats.lost, 10)
        self.assertAlmostEqual(stats.longest_gap, 0.2)
        self.assertAlmostEqual(stats.burst_r, 1 / (1 / 89 + 1 / 10))

    def test_percentile(self) -> None:
        """Nearest rank; NaN for nothing."""
        values = [float(i) for i in range(1, 101)]
        self.assertEqual(percentile(values, 50), 50.0)
        self.assertEqual(percentile(values, 99), 99.0)
        self.assertEqual(percentile(values, 100), 100.0)
        self.assertTrue(math.isnan(percentile([], 50)))

    def test_capture_round_trip(self) -> None:
        """
        The endpoint's capture format reads back as sent and received.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s 4096 0 1.5\ns 4096 1 1.52\nr 1073745920 0 1.6\nr 1073745920 0 1.7\n")
        sent, received = read_capture(path)
        self.assertEqual(sent, {(4096, 0): 1.5, (4096, 1): 1.52})
        self.assertEqual(received, [(1073745920, 0, 1.6), (1073745920, 0, 1.7)])

    def test_rtp_packet(self) -> None:
        """A G.711 packet: 12-byte RTP header, 160 bytes of payload."""
        packet = rtp_packet(0x1000, 70000, 12.5)
        self.assertEqual(len(packet), 172)
        self.assertEqual(packet[0], 0x80)
        self.assertEqual(struct.unpack("!HII", packet[2:12]), (70000 & 0xFFFF, 70000 * 160, 0x1000))
