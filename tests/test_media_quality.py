"""
Tests for L{spwm.media.quality}: RTP statistics (RFC 3550 A.1, A.3, A.8)
against hand-made sequences, RTCP parsing against hand-built packets, the
E-model against hand computations.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spwm.media.quality import (
    RtcpError,
    RtpStats,
    StreamQuality,
    clock_rate,
    delay_impairment,
    emodel,
    merge_snapshots,
    mos_from_r,
    ntp_middle,
    parse_rtcp,
)


def rtp(seq: int, ts: int, ssrc: int = 0x1234, pt: int = 0, payload: bytes = b"\x00" * 160) -> bytes:
    """
    One RTP packet (version 2, no CSRC).
    """
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def feed(stats: RtpStats, seqs: list[int], start: float = 100.0) -> None:
    """
    Packets with these sequence numbers, 20 ms apart in arrival, each
    with the timestamp of its sequence number (160 per packet).
    """
    for n, seq in enumerate(seqs):
        stats.received(rtp(seq, seq * 160), start + n * 0.020)


def report_block(ssrc: int, fraction: int, lost: int, highest: int, jitter: int, lsr: int, dlsr: int) -> bytes:
    return struct.pack("!IB", ssrc, fraction) + (lost & 0xFFFFFF).to_bytes(3, "big") + struct.pack(
        "!IIII", highest, jitter, lsr, dlsr
    )


def sr(ssrc: int, ntp_sec: int, ntp_frac: int, blocks: list[bytes] = []) -> bytes:
    body = struct.pack("!IIIIII", ssrc, ntp_sec, ntp_frac, 1000, 50, 8000) + b"".join(blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 200, len(body) // 4) + body


def rr(ssrc: int, blocks: list[bytes]) -> bytes:
    body = struct.pack("!I", ssrc) + b"".join(blocks)
    return struct.pack("!BBH", 0x80 | len(blocks), 201, len(body) // 4) + body


def sdes(ssrc: int, cname: bytes) -> bytes:
    item = bytes([1, len(cname)]) + cname + b"\x00"
    item += b"\x00" * (-len(item) % 4)
    body = struct.pack("!I", ssrc) + item
    return struct.pack("!BBH", 0x81, 202, len(body) // 4) + body


def voip_metrics_block(ssrc: int, loss: int, r: int, mos_lq: int, mos_cq: int, rtt: int) -> bytes:
    body = struct.pack(
        "!IBBBBHHHHBBBBBBBBBBHHH",
        ssrc,
        loss,  # loss rate /256
        3,  # discard rate
        0,
        0,
        0,
        0,
        rtt,  # round trip delay ms
        40,  # end system delay ms
        127,
        127,
        127,
        16,  # Gmin
        r,
        127,
        mos_lq,
        mos_cq,
        0,
        0,
        60,
        120,
        200,
    )
    assert len(body) == 32
    return bytes([7, 0]) + struct.pack("!H", len(body) // 4) + body


def xr(ssrc: int, blocks: list[bytes]) -> bytes:
    body = struct.pack("!I", ssrc) + b"".join(blocks)
    return struct.pack("!BBH", 0x80, 207, len(body) // 4) + body


class RtpSequenceTests(SynchronousTestCase):
    """
    Loss, reordering, duplicates and wrap-around from sequence numbers.
    """

    def test_in_order(self) -> None:
        stats = RtpStats()
        feed(stats, list(range(1000, 1050)))
        self.assertEqual((stats.packets, stats.expected, stats.lost), (50, 50, 0))
        self.assertEqual((stats.reordered, stats.duplicates), (0, 0))
        self.assertEqual(stats.bytes, 50 * 172)

    def test_loss(self) -> None:
        """
        Three missing numbers (one alone, two together) are three lost.
        """
        stats = RtpStats()
        feed(stats, [1, 2, 4, 5, 8, 9, 10])
        self.assertEqual((stats.expected, stats.lost), (10, 3))
        self.assertAlmostEqual(stats.loss_ratio(), 0.3)

    def test_reorder(self) -> None:
        """
        A packet that comes after a later one is reordered, not lost.
        """
        stats = RtpStats()
        feed(stats, [1, 2, 4, 3, 5, 7, 6, 8])
        self.assertEqual((stats.expected, stats.lost, stats.reordered), (8, 0, 2))
        self.assertEqual(stats.duplicates, 0)

    def test_duplicates(self) -> None:
        """
        A repeated number (of the highest, or of an older one) is a
        duplicate: it does not hide a loss.
        """
        stats = RtpStats()
        feed(stats, [1, 2, 2, 3, 5, 3, 6])
        self.assertEqual(stats.duplicates, 2)
        self.assertEqual((stats.expected, stats.lost), (6, 1))
        self.assertEqual(stats.packets, 7)

    def test_duplicate_of_late_packet(self) -> None:
        """
        A late packet is reordered the first time, a duplicate the second;
        a packet too old to be late (more than MAX_MISORDER behind) is a
        stray one, not a duplicate or a reorder.
        """
        stats = RtpStats()
        feed(stats, [1, 2, 4, 3, 3, 5])
        self.assertEqual((stats.reordered, stats.duplicates, stats.lost), (1, 1, 0))
        feed(stats, list(range(6, 400)) + [1])
        self.assertEqual((stats.reordered, stats.duplicates, stats.stray), (1, 1, 1))

    def test_long_gap_remembers_recent_holes(self) -> None:
        """
        After a gap of 1000, the last 100 missing numbers may still come
        late; the holes kept stay bounded.
        """
        stats = RtpStats()
        feed(stats, [1, 1002, 950, 1003])
        self.assertEqual((stats.reordered, stats.lost), (1, 1000 - 1))
        self.assertLessEqual(len(stats.holes), 200)
        for start in range(1004, 5000, 50):
            feed(stats, [start + 40])
        self.assertLessEqual(len(stats.holes), 200)

    def test_wrap_around(self) -> None:
        """
        65534, 65535, 0, 1: one cycle, nothing lost; the extended
        highest number is 65536 + 1.
        """
        stats = RtpStats()
        feed(stats, [65533, 65534, 65535, 0, 1, 2])
        self.assertEqual((stats.expected, stats.lost), (6, 0))
        self.assertEqual(stats.extended_max, 65536 + 2)

    def test_wrap_around_with_loss_and_reorder(self) -> None:
        stats = RtpStats()
        feed(stats, [65533, 65535, 1, 0, 2, 3])
        self.assertEqual((stats.expected, stats.lost, stats.reordered), (7, 1, 1))
        self.assertEqual(stats.extended_max, 65536 + 3)

    def test_gap_wraps(self) -> None:
        """
        A gap that crosses zero counts a cycle too.
        """
        stats = RtpStats()
        feed(stats, [65530, 65531, 5, 6])
        self.assertEqual((stats.expected, stats.lost), (13, 9))

    def test_large_gap_clears_window(self) -> None:
        """
        After a gap longer than the duplicate window, an old number
        within the misorder range is late (reordered), not a duplicate.
        """
        stats = RtpStats()
        feed(stats, [1, 2, 500, 450])
        self.assertEqual((stats.duplicates, stats.reordered), (0, 1))
        self.assertEqual(stats.lost, 500 - 4)

    def test_restart(self) -> None:
        """
        A jump of more than MAX_DROPOUT is a stray packet until the next
        packet follows it: then the sequence restarts (A.1); the loss
        before the restart is kept.
        """
        stats = RtpStats()
        feed(stats, [10, 11, 13])  # one lost
        feed(stats, [40000], start=200.0)  # stray
        self.assertEqual(stats.restarts, 0)
        self.assertEqual(stats.lost, 1)
        feed(stats, [40000, 40001, 40002, 40003], start=300.0)
        self.assertEqual(stats.restarts, 1)
        # before: 4 expected, 1 lost; after: 40001..40003 (3), none lost
        self.assertEqual((stats.expected, stats.lost), (4 + 3, 1))

    @given(
        st.lists(st.integers(0, 0xFFFF), max_size=40),
        st.sampled_from([8000, 16000, 48000]),
        st.lists(st.integers(0, 0xFFFF), max_size=10),
    )
    def test_figures_as_the_properties(self, seqs: list[int], rate: int, after: list[int]) -> None:
        """
        C{figures()}, which computes them at once, says what the
        properties say: C{packets}, C{expected}, C{lost}, C{jitter_ms},
        also while a new clock rate holds the sequence (its next packet
        starts it anew) and after restarts.
        """
        stats = RtpStats()
        for which in (seqs, after):
            feed(stats, which)
            figures = stats.figures()
            self.assertEqual(
                (figures["packets"], figures["expected"], figures["lost"], figures["jitter_ms"]),
                (stats.packets, stats.expected, stats.lost, round(stats.jitter_ms, 3)),
            )
            stats.set_rate(rate)
            self.assertEqual(stats.figures()["expected"], stats.expected)

    def test_not_rtp(self) -> None:
        """
        STUN, DTLS and short datagrams are counted apart.
        """
        stats = RtpStats()
        stats.received(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"x" * 12, 1.0)
        stats.received(b"\x16\xfe\xfd" + b"x" * 20, 1.0)
        stats.received(b"\x80\x00\x00", 1.0)
        self.assertEqual((stats.other, stats.packets), (3, 0))

    def test_rtcp_muxed(self) -> None:
        """
        RTCP on the RTP socket (RFC 5761) is not counted as RTP and goes
        to the RTCP handler.
        """
        seen = []
        stats = RtpStats(on_rtcp=lambda s, data, now: seen.append(data))
        report = rr(1, [])
        stats.received(report, 1.0)
        self.assertEqual((stats.packets, stats.rtcp_packets, seen), (0, 1, [report]))


class JitterTests(SynchronousTestCase):
    """
    RFC 3550 A.8 against jitter known by construction.
    """

    def test_constant_transit(self) -> None:
        """
        Packets that arrive exactly as their timestamps advance: no jitter.
        """
        stats = RtpStats(rate=8000)
        feed(stats, list(range(200)))
        self.assertAlmostEqual(stats.jitter, 0.0, places=6)

    def test_alternating_transit(self) -> None:
        """
        Transit alternating between 0 and 10 ms: every |D| is 10 ms (80
        units at 8000 Hz), so J converges to 80 units: after n packets
        J = 80 (1 - (15/16)^(n-1)).
        """
        stats = RtpStats(rate=8000)
        n = 400
        for i in range(n):
            stats.received(rtp(i, i * 160), 10.0 + i * 0.020 + (0.010 if i % 2 else 0.0))
        expected = 80 * (1 - (15 / 16) ** (n - 1))
        self.assertAlmostEqual(stats.jitter, expected, places=3)
        self.assertAlmostEqual(stats.jitter_ms, 10.0, places=3)

    def test_one_step(self) -> None:
        """
        One packet 16 ms late after constant transit: J = 128/16 = 8
        units, then the next (on time again, |D| = 128) 8 + (128-8)/16.
        """
        stats = RtpStats(rate=8000)
        stats.received(rtp(0, 0), 1.0)
        stats.received(rtp(1, 160), 1.020 + 0.016)
        self.assertAlmostEqual(stats.jitter, 8.0, places=3)
        stats.received(rtp(2, 320), 1.040)
        self.assertAlmostEqual(stats.jitter, 8.0 + (128 - 8) / 16, places=3)

    def test_rate_change(self) -> None:
        """
        A new clock rate (a re-INVITE to a wideband codec) restarts the
        relative transit time: no jitter from the change itself, the
        sequence goes on.
        """
        stats = RtpStats(rate=8000)
        for i in range(50):
            stats.received(rtp(i, i * 160), 100.0 + i * 0.020)
        stats.set_rate(16000)
        self.assertEqual(stats.max_seq, 49)
        for i in range(50, 100):
            stats.received(rtp(i, 50 * 160 + (i - 50) * 320), 100.0 + i * 0.020)
        self.assertAlmostEqual(stats.jitter, 0.0, places=3)
        self.assertEqual((stats.expected, stats.lost, stats.max_seq), (100, 0, 99))

    def test_timestamp_wrap(self) -> None:
        """
        The 32-bit timestamp wrapping does not look like jitter.
        """
        stats = RtpStats(rate=8000)
        base = 0xFFFFFFFF - 320
        for i in range(6):
            stats.received(rtp(i, base + i * 160), 5.0 + i * 0.020)
        self.assertAlmostEqual(stats.jitter, 0.0, places=3)

    def test_rate(self) -> None:
        """
        The clock rate comes from the codec; 8000 when it has none.
        """
        self.assertEqual(clock_rate("PCMU/8000"), 8000)
        self.assertEqual(clock_rate("opus/48000/2"), 48000)
        self.assertEqual(clock_rate("G722/8000"), 8000)
        self.assertEqual(clock_rate("payload type 101"), 8000)
        self.assertEqual(clock_rate(None), 8000)


class RtcpTests(SynchronousTestCase):
    """
    RTCP packets built by hand, RFC 3550 and RFC 3611 layouts.
    """

    def test_sr(self) -> None:
        block = report_block(0xAAAA, 64, 12, 70000, 80, 0x12345678, 0x00010000)
        (packet,) = parse_rtcp(sr(0x1111, 3900000000, 0x80000000, [block]))
        self.assertEqual(packet["type"], "sr")
        self.assertEqual((packet["ssrc"], packet["ntp_sec"], packet["packets"], packet["octets"]), (0x1111, 3900000000, 50, 8000))
        self.assertEqual(
            packet["reports"],
            [
                {
                    "ssrc": 0xAAAA,
                    "fraction_lost": 64,
                    "cumulative_lost": 12,
                    "highest_seq": 70000,
                    "jitter": 80,
                    "lsr": 0x12345678,
                    "dlsr": 0x00010000,
                }
            ],
        )

    def test_rr_negative_cumulative(self) -> None:
        """
        The cumulative loss is a signed 24-bit number (duplicates make it
        negative).
        """
        (packet,) = parse_rtcp(rr(2, [report_block(3, 0, -5, 10, 0, 0, 0)]))
        self.assertEqual(packet["reports"][0]["cumulative_lost"], -5)

    def test_xr_voip_metrics(self) -> None:
        block = voip_metrics_block(0xAAAA, loss=13, r=88, mos_lq=41, mos_cq=40, rtt=52)
        (packet,) = parse_rtcp(xr(0x2222, [bytes([4, 0, 0, 2]) + b"\x00" * 8, block]))
        self.assertEqual(packet["type"], "xr")
        self.assertEqual(packet["blocks"][0], {"block_type": 4})
        metrics = packet["blocks"][1]
        self.assertEqual(metrics["block_type"], 7)
        self.assertEqual((metrics["r_factor"], metrics["mos_lq"], metrics["mos_cq"]), (88, 4.1, 4.0))
        self.assertEqual((metrics["round_trip_ms"], metrics["end_system_delay_ms"]), (52, 40))
        self.assertAlmostEqual(metrics["loss_rate"], 13 / 256)
        self.assertEqual((metrics["jb_nominal_ms"], metrics["jb_maximum_ms"]), (60, 120))

    def test_compound(self) -> None:
        """
        SR + SDES + XR in one datagram: each parsed, in order.
        """
        data = sr(1, 1, 2, [report_block(9, 0, 0, 1, 2, 3, 4)]) + sdes(1, b"phone@lan") + xr(1, [voip_metrics_block(9, 0, 93, 44, 43, 10)])
        kinds = [p["type"] for p in parse_rtcp(data)]
        self.assertEqual(kinds, ["sr", "sdes", "xr"])

    def test_malformed(self) -> None:
        good = rr(2, [report_block(3, 0, 0, 10, 0, 0, 0)])
        for bad in (
            b"\x80\xc9",  # short
            b"\x40" + good[1:],  # version 1
            good[:-4],  # length past the end
            good + b"\x80",  # trailing bytes
            struct.pack("!BBH", 0x81, 201, 1) + b"\x00" * 4,  # RR short of its block
        ):
            self.assertRaises(RtcpError, parse_rtcp, bad)

    def test_ntp_middle(self) -> None:
        self.assertEqual(ntp_middle(0x12345678, 0x9ABCDEF0), 0x56789ABC)


class EModelTests(SynchronousTestCase):
    """
    The simplified G.107 E-model against hand computations.
    """

    def test_mos_from_r(self) -> None:
        self.assertEqual(mos_from_r(-3), 1.0)
        self.assertEqual(mos_from_r(100.5), 4.5)
        # 1 + 0.035*93.2 + 93.2*33.2*6.8*7e-6 = 4.41
        self.assertAlmostEqual(mos_from_r(93.2), 1 + 3.262 + 93.2 * 33.2 * 6.8 * 7e-6, places=9)
        self.assertAlmostEqual(mos_from_r(93.2), 4.409, places=3)

    def test_delay(self) -> None:
        self.assertAlmostEqual(delay_impairment(100), 2.4)
        self.assertAlmostEqual(delay_impairment(177.3), 0.024 * 177.3)
        self.assertAlmostEqual(delay_impairment(277.3), 0.024 * 277.3 + 11.0)

    def test_g711_no_loss(self) -> None:
        r, mos = emodel("PCMU/8000", 0.0, 0.0)  # type: ignore[misc]
        self.assertAlmostEqual(r, 93.2)
        self.assertAlmostEqual(mos, 4.409, places=3)

    def test_g711_loss(self) -> None:
        """
        PCMA, 2 % loss, 60 ms: Ie,eff = 95 * 2 / (2 + 25.1) = 7.011;
        Id = 1.44; R = 84.749.
        """
        rated = emodel("PCMA/8000", 0.02, 60.0)
        assert rated is not None
        r, mos = rated
        self.assertAlmostEqual(r, 93.2 - 1.44 - 95 * 2 / 27.1, places=6)
        self.assertAlmostEqual(mos, mos_from_r(r))

    def test_g729(self) -> None:
        """
        G.729: Ie = 11, Bpl = 19; 1 % loss: Ie,eff = 11 + 84 * 1 / 20 = 15.2.
        """
        rated = emodel("G729/8000", 0.01, 0.0)
        assert rated is not None
        self.assertAlmostEqual(rated[0], 93.2 - 15.2, places=6)

    def test_unknown_codec(self) -> None:
        self.assertIsNone(emodel("opus/48000/2", 0.0, 0.0))
        self.assertIsNone(emodel(None, 0.0, 0.0))


class StreamQualityTests(SynchronousTestCase):
    """
    The snapshot the status page, metrics and call detail record read.
    """

    def test_agent_snapshot(self) -> None:
        """
        The agent sees lan and tunnel; the operator leg is C{None}. Up is
        what arrives on the LAN leg, down what comes out of the tunnel.
        """
        quality = StreamQuality("agent", "PCMU/8000", tunnel_rtt=lambda: 0.030)
        feed(quality.local, list(range(100)))
        feed(quality.tunnel, [n for n in range(100) if n % 10 != 5])
        snap = quality.snapshot()
        self.assertEqual(set(snap), {"legs", "mos", "codec"})
        self.assertEqual(snap["codec"], "PCMU/8000")
        self.assertIsNone(snap["legs"]["operator"])
        lan, tunnel = snap["legs"]["lan"], snap["legs"]["tunnel"]
        for leg in (lan, tunnel):
            self.assertLessEqual(
                {"packets", "bytes", "lost", "reordered", "duplicates", "jitter_ms", "transit_ms", "late_dropped", "rtcp"},
                set(leg),
            )
        self.assertEqual((lan["packets"], lan["lost"], lan["transit_ms"]), (100, 0, None))
        self.assertEqual((tunnel["packets"], tunnel["lost"], tunnel["transit_ms"]), (90, 10, 15.0))
        self.assertIsNone(tunnel["late_dropped"])
        self.assertIsNone(tunnel["rtcp"])
        # up: no loss, delay 15 + 20 + 20 -> Id = 1.32; down: 10 % loss
        up = mos_from_r(93.2 - 0.024 * 55)
        down = mos_from_r(93.2 - 0.024 * 55 - 95 * 10 / 35.1)
        self.assertEqual(snap["mos"], {"up": round(up, 2), "down": round(down, 2)})

    def test_contact_legs(self) -> None:
        quality = StreamQuality("contact")
        snap = quality.snapshot()
        self.assertIsNone(snap["legs"]["lan"])
        self.assertEqual(snap["legs"]["operator"]["packets"], 0)
        self.assertEqual(snap["mos"], {"up": None, "down": None})
        self.assertIsNone(snap["codec"])

    def test_rtcp_round_trip(self) -> None:
        """
        An SR arrives on the tunnel leg at t=10; the LAN phone's RR names
        it (LSR) with DLSR 0.5 s and arrives at t=10.560: the LAN round
        trip is 60 ms. Its fraction lost counts for the down direction.
        """
        quality = StreamQuality("agent", "PCMA/8000")
        feed(quality.local, list(range(50)))
        feed(quality.tunnel, list(range(50)))
        quality.tunnel.received(sr(7, 0x00011234, 0x56780000), 10.0)
        lsr = ntp_middle(0x00011234, 0x56780000)
        quality.local.received(rr(8, [report_block(7, 26, 3, 50, 16, lsr, 0x8000)]), 10.560)
        self.assertAlmostEqual(quality.rtcp_rtt_ms("lan"), 60.0, places=3)
        snap = quality.snapshot()
        self.assertEqual(snap["legs"]["lan"]["rtcp"]["rtt_ms"], quality.rtcp_rtt_ms("lan"))
        self.assertEqual(snap["legs"]["lan"]["rtcp"]["rr"][0]["jitter_ms"], 2.0)
        self.assertEqual(snap["legs"]["tunnel"]["rtcp"]["sr"], {"ssrc": 7, "packets": 50, "octets": 8000})
        # down: the phone reports 26/256 lost; delay: half the LAN round
        # trip (the only one known) + 20 ms packets + 20 ms buffer
        down = emodel("PCMA/8000", 26 / 256, 30.0 + 40.0)
        assert down is not None
        self.assertEqual(snap["mos"]["down"], round(down[1], 2))

    def test_readded_first_report_not_loss(self) -> None:
        """
        A re-added stream: the phone's first report block about a source
        (its interval began before this incarnation) is shown but not
        taken for the MOS; its next one is.
        """
        quality = StreamQuality("agent", "PCMU/8000", readded=True)
        feed(quality.local, list(range(50)))
        feed(quality.tunnel, list(range(50)))
        quality.local.received(rr(8, [report_block(7, 128, 250, 300, 16, 0, 0)]), 10.0)
        self.assertEqual(quality.snapshot()["legs"]["lan"]["rtcp"]["rr"][0]["fraction_lost"], 0.5)
        self.assertEqual(quality.mos("down"), quality.mos("up"))
        quality.local.received(rr(8, [report_block(7, 26, 253, 350, 16, 0, 0)]), 15.0)
        down = emodel("PCMU/8000", 26 / 256, 40.0)
        assert down is not None
        self.assertEqual(quality.mos("down"), round(down[1], 2))

    def test_rtcp_errors_counted(self) -> None:
        quality = StreamQuality("contact")
        quality.tunnel.received(b"\x80\xc9\x00\x05" + b"\x00" * 4, 1.0)
        self.assertEqual((quality.tunnel.rtcp_packets, quality.tunnel.rtcp_errors), (1, 1))


class MergeSnapshotsTests(SynchronousTestCase):
    """
    L{merge_snapshots}: one stream's figures over its incarnations.
    """

    def test_merge(self) -> None:
        """
        Counts add up, the jitter is weighted by packets, the transit is
        the worst, the MOS per direction the lowest rated, RTCP and codec the latest known; a
        first incarnation is its own snapshot.
        """
        first = StreamQuality("agent", "PCMU/8000", tunnel_rtt=lambda: 0.040, late_dropped=lambda: 2)
        feed(first.local, [n for n in range(100) if n != 50])
        feed(first.tunnel, list(range(100)))
        first.tunnel.received(sr(7, 1, 2), 10.0)
        second = StreamQuality("agent", "PCMA/8000", tunnel_rtt=lambda: 0.020, late_dropped=lambda: None)
        feed(second.local, list(range(1000, 1030)))
        for n, seq in enumerate(range(30)):
            # 5 ms of jitter steps on the tunnel leg
            second.tunnel.received(rtp(seq, seq * 160), 200.0 + n * 0.020 + (0.005 if n % 2 else 0.0))
        a, b = first.snapshot(), second.snapshot()
        self.assertIs(merge_snapshots(None, a), a)
        merged = merge_snapshots(a, b)
        self.assertEqual(merged["codec"], "PCMA/8000")
        self.assertIsNone(merged["legs"]["operator"])
        lan, tunnel = merged["legs"]["lan"], merged["legs"]["tunnel"]
        self.assertEqual((lan["packets"], lan["expected"], lan["lost"]), (129, 130, 1))
        self.assertEqual((tunnel["packets"], tunnel["bytes"]), (130, a["legs"]["tunnel"]["bytes"] + b["legs"]["tunnel"]["bytes"]))
        jitter = (a["legs"]["tunnel"]["jitter_ms"] * 100 + b["legs"]["tunnel"]["jitter_ms"] * 30) / 130
        self.assertGreater(b["legs"]["tunnel"]["jitter_ms"], a["legs"]["tunnel"]["jitter_ms"])
        self.assertEqual(tunnel["jitter_ms"], round(jitter, 3))
        self.assertEqual((tunnel["transit_ms"], tunnel["late_dropped"]), (20.0, 2))
        self.assertEqual(tunnel["rtcp"], a["legs"]["tunnel"]["rtcp"])
        for which in ("up", "down"):
            self.assertEqual(merged["mos"][which], min(a["mos"][which], b["mos"][which]))


class RealClientTests(SynchronousTestCase):
    """
    The RTCP baresip 1.0.0 sent in a G.711 call (tests/data/rtcp/README.md):
    it parses, and replayed through a stream's legs it gives the loss the
    call had and the round trip of loopback.
    """

    def records(self) -> list[tuple[int, float, bytes]]:
        import os

        path = os.path.join(os.path.dirname(__file__), "data", "rtcp", "baresip-1.0.0-pcmu.bin")
        with open(path, "rb") as f:
            data = f.read()
        out = []
        at = 0
        while at < len(data):
            direction, when, length = struct.unpack_from("!BdH", data, at)
            out.append((direction, when, data[at + 11 : at + 11 + length]))
            at += 11 + length
        return out

    def test_parses(self) -> None:
        theirs = [parse_rtcp(data) for direction, _, data in self.records() if direction == 0]
        self.assertEqual([[p["type"] for p in packets] for packets in theirs], [["app"], ["sr", "sdes"], ["sr", "sdes"], ["sr", "sdes"]])
        blocks = [packets[0]["reports"][0] for packets in theirs[1:]]
        # one packet in 25 was left out: about 10/256 per interval
        self.assertEqual([b["cumulative_lost"] for b in blocks], [9, 19, 29])
        self.assertEqual([b["fraction_lost"] for b in blocks], [9, 10, 10])
        self.assertEqual([b["ssrc"] for b in blocks], [0xC0FFEE] * 3)
        self.assertEqual([packets[0]["packets"] for packets in theirs[1:]], [250, 500, 750])

    def test_replayed_through_the_agent(self) -> None:
        """
        Our SRs arrive on the tunnel leg (as from the operator's side),
        baresip's reports on the LAN leg (as from the phone): the LAN
        round trip from LSR/DLSR is loopback's, under 5 ms.
        """
        quality = StreamQuality("agent", "PCMU/8000")
        for direction, when, data in self.records():
            (quality.tunnel if direction == 1 else quality.local).received(data, when)
        rtcp = quality.snapshot()["legs"]["lan"]["rtcp"]
        self.assertEqual(rtcp["rr"][0]["cumulative_lost"], 29)
        self.assertAlmostEqual(rtcp["rr"][0]["fraction_lost"], 10 / 256, places=4)
        rtt = quality.rtcp_rtt_ms("lan")
        assert rtt is not None
        self.assertGreaterEqual(rtt, 0.0)
        self.assertLess(rtt, 5.0)
        self.assertEqual((quality.local.rtcp_packets, quality.local.rtcp_errors), (4, 0))
