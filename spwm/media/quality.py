# -*- test-case-name: tests.test_media_quality -*-
"""
Call quality, measured where a half can see it (pure: bytes and times in,
figures out; no reactor, socket or logger).

Per media stream and leg, L{RtpStats} keeps the figures of RFC 3550
appendix A.1 (extended sequence numbers, expected and lost packets), A.3
(loss) and A.8 (interarrival jitter) for the packets that arrive on that
leg, counting reordered and duplicate packets. It looks at the packet's
bytes without changing them and updates a few integers per packet (the
fast path allocates no object of its own). RTCP that arrives on the leg
(on the RTCP socket, or multiplexed with RTP, RFC 5761) is parsed by
L{parse_rtcp} (SR, RR, XR with the VoIP metrics block of RFC 3611).

L{StreamQuality} holds the two legs one half sees (the agent: C{lan} and
C{tunnel}; the contact point: C{tunnel} and C{operator}) and gives
L{StreamQuality.snapshot}, the figures the status page, the metrics and
the call detail record show. L{emodel} is the simplified ITU-T G.107
E-model (the formula is in C{docs/media.md}, "Call quality").

Directions: C{up} is from the LAN phone towards the operator, C{down} the
other way. On the agent, C{up} arrives on the C{lan} leg and C{down} on
the C{tunnel} leg; on the contact point C{up} arrives on the C{tunnel}
leg and C{down} on the C{operator} leg.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

#: RFC 3550 A.1: a jump of the sequence number by more than this is a
#: restart (confirmed by a second packet) or a stray packet.
MAX_DROPOUT = 3000
#: RFC 3550 A.1: a packet this far behind the highest is late, not a restart.
MAX_MISORDER = 100

#: The RTP header's first byte, payload type byte, sequence number and
#: timestamp.
_HEADER = struct.Struct("!HHI").unpack_from

#: Missing sequence numbers remembered (to tell a late packet from a
#: duplicate) before the ones too old to matter are pruned.
_MAX_HOLES = 2 * MAX_MISORDER

#: RTCP packet types (RFC 3550, RFC 3611).
RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
RTCP_XR = 207

#: SR arrival times remembered per leg for the round trip (L{StreamQuality}).
_SR_MEMORY = 8


class RtcpError(ValueError):
    """
    An RTCP packet that does not parse.
    """


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "big")


def _report_block(data: bytes, offset: int) -> dict[str, int]:
    lost = int.from_bytes(data[offset + 5 : offset + 8], "big")
    if lost & 0x800000:
        lost -= 0x1000000
    return {
        "ssrc": _u32(data, offset),
        "fraction_lost": data[offset + 4],
        "cumulative_lost": lost,
        "highest_seq": _u32(data, offset + 8),
        "jitter": _u32(data, offset + 12),
        "lsr": _u32(data, offset + 16),
        "dlsr": _u32(data, offset + 20),
    }


def _voip_metrics(data: bytes, offset: int) -> dict[str, Any]:
    """
    RFC 3611 section 4.7: the VoIP metrics block's body (32 bytes at
    C{offset}). Values the sender marks unavailable (127 for R and MOS)
    are C{None}; MOS values are given in tenths.
    """

    def unavailable(value: int) -> int | None:
        return None if value == 127 else value

    mos_lq = unavailable(data[offset + 22])
    mos_cq = unavailable(data[offset + 23])
    return {
        "ssrc": _u32(data, offset),
        "loss_rate": data[offset + 4] / 256,
        "discard_rate": data[offset + 5] / 256,
        "burst_density": data[offset + 6] / 256,
        "gap_density": data[offset + 7] / 256,
        "burst_duration_ms": int.from_bytes(data[offset + 8 : offset + 10], "big"),
        "gap_duration_ms": int.from_bytes(data[offset + 10 : offset + 12], "big"),
        "round_trip_ms": int.from_bytes(data[offset + 12 : offset + 14], "big"),
        "end_system_delay_ms": int.from_bytes(data[offset + 14 : offset + 16], "big"),
        "r_factor": unavailable(data[offset + 20]),
        "mos_lq": None if mos_lq is None else mos_lq / 10,
        "mos_cq": None if mos_cq is None else mos_cq / 10,
        "jb_nominal_ms": int.from_bytes(data[offset + 26 : offset + 28], "big"),
        "jb_maximum_ms": int.from_bytes(data[offset + 28 : offset + 30], "big"),
    }


def parse_rtcp(data: bytes) -> list[dict[str, Any]]:
    """
    Parse an RTCP (compound) packet: SR and RR with their report blocks,
    XR with its VoIP metrics blocks (other XR blocks by type only), the
    other packet types by type and SSRC only.

    @return: one dict per packet, in order, with C{"type"} (C{"sr"},
        C{"rr"}, C{"xr"}, C{"sdes"}, C{"bye"}, C{"app"} or the number).
    @raise RtcpError: a header, length or version that is wrong.
    """
    packets: list[dict[str, Any]] = []
    offset = 0
    end = len(data)
    if end < 4:
        raise RtcpError("shorter than an RTCP header")
    while offset < end:
        if end - offset < 4:
            raise RtcpError("trailing bytes after the last RTCP packet")
        first = data[offset]
        if first >> 6 != 2:
            raise RtcpError("RTCP version is not 2")
        count = first & 0x1F
        kind = data[offset + 1]
        length = (int.from_bytes(data[offset + 2 : offset + 4], "big") + 1) * 4
        if offset + length > end:
            raise RtcpError("RTCP length past the end of the datagram")
        body = offset + 4
        stop = offset + length
        if first & 0x20:
            # padding: the last byte says how much
            stop -= data[stop - 1]
            if stop < body:
                raise RtcpError("RTCP padding longer than the packet")
        packet: dict[str, Any]
        if kind == RTCP_SR:
            if stop - body < 24 + 24 * count:
                raise RtcpError("SR shorter than its report count")
            packet = {
                "type": "sr",
                "ssrc": _u32(data, body),
                "ntp_sec": _u32(data, body + 4),
                "ntp_frac": _u32(data, body + 8),
                "rtp_ts": _u32(data, body + 12),
                "packets": _u32(data, body + 16),
                "octets": _u32(data, body + 20),
                "reports": [_report_block(data, body + 24 + 24 * i) for i in range(count)],
            }
        elif kind == RTCP_RR:
            if stop - body < 4 + 24 * count:
                raise RtcpError("RR shorter than its report count")
            packet = {
                "type": "rr",
                "ssrc": _u32(data, body),
                "reports": [_report_block(data, body + 4 + 24 * i) for i in range(count)],
            }
        elif kind == RTCP_XR:
            if stop - body < 4:
                raise RtcpError("XR without its SSRC")
            blocks: list[dict[str, Any]] = []
            at = body + 4
            while at + 4 <= stop:
                block_type = data[at]
                block_end = at + 4 + 4 * int.from_bytes(data[at + 2 : at + 4], "big")
                if block_end > stop:
                    raise RtcpError("XR block past the end of the packet")
                if block_type == 7 and block_end - at >= 36:
                    block = _voip_metrics(data, at + 4)
                    block["block_type"] = 7
                    blocks.append(block)
                else:
                    blocks.append({"block_type": block_type})
                at = block_end
            packet = {"type": "xr", "ssrc": _u32(data, body), "blocks": blocks}
        else:
            names = {RTCP_SDES: "sdes", RTCP_BYE: "bye", RTCP_APP: "app"}
            packet = {"type": names.get(kind, kind)}
            if stop - body >= 4:
                packet["ssrc"] = _u32(data, body)
        packets.append(packet)
        offset += length
    return packets


def ntp_middle(sec: int, frac: int) -> int:
    """
    The middle 32 bits of a 64-bit NTP timestamp (what LSR carries).
    """
    return ((sec & 0xFFFF) << 16) | (frac >> 16)


class RtpStats:
    """
    The RTP figures of one leg of one stream, for the packets that arrive
    on it (RFC 3550 A.1, A.3, A.8). Feed it every datagram with
    L{received}; it tells RTP from RTCP (RFC 5761) and counts anything
    else (STUN, DTLS) in C{other}.

    @ivar packets: RTP packets seen (duplicates included).
    @ivar bytes: their bytes (UDP payload).
    @ivar duplicates: packets whose sequence number was seen already.
    @ivar reordered: packets that came after a later one (late, not lost).
    @ivar rate: the RTP clock rate (from the SDP; 8000 for G.711).
    @ivar jitter: the interarrival jitter of A.8 in timestamp units.
    @ivar restarts: times the sequence restarted (a new source, A.1).
    @ivar other: datagrams that are neither RTP nor RTCP.
    @ivar rtcp_packets: RTCP datagrams seen.
    @ivar rtcp_errors: RTCP datagrams that did not parse.
    """

    __slots__ = (
        "leg",
        "on_rtcp",
        "bytes",
        "started",
        "base_seq",
        "next_seq",
        "held_seq",
        "cycles",
        "bad_seq",
        "unique",
        "duplicates",
        "reordered",
        "holes",
        "rate",
        "jitter",
        "transit",
        "stray",
        "restarts",
        "earlier_expected",
        "earlier_lost",
        "earlier_received",
        "other",
        "rtcp_packets",
        "rtcp_errors",
    )

    def __init__(
        self,
        leg: str = "",
        rate: int = 8000,
        on_rtcp: Callable[[RtpStats, bytes, float], None] | None = None,
    ) -> None:
        """
        @param leg: the leg's name (C{"lan"}, C{"tunnel"}, C{"operator"}).
        @param on_rtcp: called with the RTCP datagrams that arrive on the
            leg, or C{None} (they are counted only).
        """
        self.leg = leg
        self.on_rtcp = on_rtcp
        self.bytes = 0
        self.started = False
        self.base_seq = 0
        # the number that follows the highest (-1: none yet)
        self.next_seq = -1
        # next_seq while a rate change parks it at -2 (set_rate)
        self.held_seq = 0
        self.cycles = 0
        self.bad_seq = -1
        self.unique = 0
        self.duplicates = 0
        self.reordered = 0
        # the missing numbers within MAX_MISORDER of the highest: a late
        # packet in it is reordered, one not in it a duplicate (only gaps
        # write it, so an in-order packet costs nothing here)
        self.holes: set[int] = set()
        # a float: the per-packet product with the arrival time is then
        # float by float
        self.rate = float(rate)
        self.jitter = 0.0
        # the relative transit time of the last packet (A.8)
        self.transit = 0.0
        # packets of a jump not (yet) confirmed as a restart (A.1)
        self.stray = 0
        self.restarts = 0
        # what the sequences before the last restart expected and lost
        self.earlier_expected = 0
        self.earlier_lost = 0
        self.earlier_received = 0
        self.other = 0
        self.rtcp_packets = 0
        self.rtcp_errors = 0

    def received(self, data: bytes, now: float) -> None:
        """
        One datagram arrived on the leg at C{now} (seconds, any clock that
        does not jump). The media fast path: a packet that follows the
        last one updates a few numbers; everything else goes to
        L{_unusual} or L{_sequence}.
        """
        try:
            # one C call for the four fields (a tuple from the free list:
            # five times cheaper than indexing the bytes in Python); the
            # try costs nothing until a datagram is shorter than 8 bytes
            head, seq, ts = _HEADER(data)
        except struct.error:
            self.other += 1
            return
        if head & 0xC000 != 0x8000 or head & 0xE0 == 0xC0:
            # RTCP (RFC 5761), STUN, DTLS; an 8 to 11 byte datagram with
            # the RTP version counts as RTP (a broken one: harmless)
            self._unusual(data, now)
            return
        if seq == self.next_seq:
            # in order, the usual case
            self.next_seq = (seq + 1) & 0xFFFF
            if seq == 0:
                self.cycles += 65536
            self.unique += 1
        elif not self._sequence(seq, ts, now):
            self.bytes += len(data)
            return
        # RFC 3550 A.8: D = the change of the relative transit time
        # (arrival in timestamp units - timestamp); J += (|D| - J) / 16
        transit = now * self.rate - ts
        d = transit - self.transit
        self.transit = transit
        if d < 0:
            d = -d
        if d > 2147483648.0:
            # the 32-bit timestamp wrapped between the two: modulo 2^32
            d = 4294967296.0 - d
        self.jitter += (d - self.jitter) * 0.0625
        self.bytes += len(data)

    def _unusual(self, data: bytes, now: float) -> None:
        """
        RTCP (RFC 5761: packet types 192-223) or not RTP at all.
        """
        if data[0] & 0xC0 == 0x80 and 192 <= data[1] <= 223:
            self.rtcp_packets += 1
            if self.on_rtcp is not None:
                self.on_rtcp(self, data, now)
            return
        self.other += 1

    def _sequence(self, seq: int, ts: int, now: float) -> bool:
        """
        RFC 3550 A.1 for a packet that does not follow the highest: the
        first, a gap, a duplicate, a late packet, a jump.

        @return: whether the packet's jitter is to be taken (C{False}:
            the first of a sequence, or a stray packet).
        """
        if not self.started:
            self._start(seq, ts, now)
            return False
        rebase = self.next_seq == -2
        if rebase:
            # the clock rate changed (L{set_rate}): this packet starts the
            # relative transit time anew, in the new unit
            self.next_seq = self.held_seq
            self.transit = now * self.rate - ts
            if seq == self.next_seq:
                self.next_seq = (seq + 1) & 0xFFFF
                if seq == 0:
                    self.cycles += 65536
                self.unique += 1
                return False
        highest = self.max_seq
        udelta = (seq - highest) & 0xFFFF
        if udelta == 0:
            self.duplicates += 1
        elif udelta < MAX_DROPOUT:
            # a gap: the skipped numbers are missing (for now); only the
            # last MAX_MISORDER of them can still come late
            if seq < highest:
                self.cycles += 65536
            holes = self.holes
            for step in range(max(1, udelta - MAX_MISORDER), udelta):
                holes.add((highest + step) & 0xFFFF)
            if len(holes) > _MAX_HOLES:
                self.holes = {h for h in holes if (seq - h) & 0xFFFF <= MAX_MISORDER}
            self.next_seq = (seq + 1) & 0xFFFF
            self.unique += 1
        elif udelta <= 65536 - MAX_MISORDER:
            # a very large jump: a restart if the next packet follows it
            if seq == self.bad_seq:
                self.restarts += 1
                self._start(seq, ts, now)
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                self.stray += 1
            return False
        else:
            # behind the highest: late (it was missing), or a duplicate
            if seq in self.holes:
                self.holes.discard(seq)
                self.reordered += 1
                self.unique += 1
            else:
                self.duplicates += 1
        return not rebase

    def set_rate(self, rate: int) -> None:
        """
        The RTP clock rate (the codec changed): the next packet takes the
        slow path, which starts the relative transit time anew (so the
        change does not show as one enormous jitter sample).
        """
        if rate == self.rate:
            return
        self.rate = float(rate)
        if self.started and self.next_seq >= 0:
            self.held_seq = self.next_seq
            self.next_seq = -2

    def _start(self, seq: int, ts: int, now: float) -> None:
        if self.started:
            # a restart: keep what the old sequence expected and lost
            expected = self.cycles + self.max_seq - self.base_seq + 1
            self.earlier_expected += expected
            self.earlier_lost += max(0, expected - self.unique)
            self.earlier_received += self.unique
            self.unique = 0
        self.started = True
        self.base_seq = seq
        self.next_seq = (seq + 1) & 0xFFFF
        self.cycles = 0
        self.bad_seq = -1
        self.holes = set()
        self.unique += 1
        self.transit = now * self.rate - ts

    @property
    def max_seq(self) -> int:
        """
        The highest sequence number seen (16 bits).
        """
        following = self.held_seq if self.next_seq == -2 else self.next_seq
        return (following - 1) & 0xFFFF

    @property
    def packets(self) -> int:
        """
        RTP packets seen (duplicates and stray packets included).
        """
        return self.earlier_received + self.unique + self.duplicates + self.stray

    @property
    def extended_max(self) -> int:
        """
        The highest extended sequence number seen (A.1: cycles + max).
        """
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        """
        Packets expected (A.3), over every sequence the leg carried.
        """
        if not self.started:
            return 0
        return self.earlier_expected + self._span()

    @property
    def lost(self) -> int:
        """
        Packets expected but not received (A.3), over every sequence the
        leg carried. A duplicate is not counted as received, so it never
        hides a loss; a late packet is not lost.
        """
        if not self.started:
            return 0
        return self.earlier_lost + max(0, self._span() - self.unique)

    def _span(self) -> int:
        """
        Packets expected of the current sequence (once started).
        """
        return self.cycles + self.max_seq - self.base_seq + 1

    @property
    def jitter_ms(self) -> float:
        """
        The interarrival jitter in milliseconds.
        """
        return self.jitter * 1000.0 / self.rate if self.rate else 0.0

    def loss_ratio(self) -> float:
        """
        Lost over expected (0 when nothing was expected).
        """
        expected = self.expected
        return self.lost / expected if expected else 0.0

    def figures(self) -> dict[str, Any]:
        """
        The leg's RTP figures by name (without RTCP, transit and drops):
        L{expected} and L{lost} from one L{_span} (taken at every stream's
        end; issue 15).
        """
        if self.started:
            current = self._span()
            expected = self.earlier_expected + current
            lost = self.earlier_lost + max(0, current - self.unique)
        else:
            expected = lost = 0
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "expected": expected,
            "lost": lost,
            "reordered": self.reordered,
            "duplicates": self.duplicates,
            "jitter_ms": round(self.jitter_ms, 3),
            "restarts": self.restarts,
        }


#: Codec impairments for the E-model with packet-loss concealment:
#: encoding name -> (Ie, Bpl), from ITU-T G.113 Appendix I (random loss).
CODEC_IMPAIRMENT: dict[str, tuple[float, float]] = {
    "PCMU": (0.0, 25.1),
    "PCMA": (0.0, 25.1),
    "G729": (11.0, 19.0),
    "G723": (15.0, 16.1),
}

#: Packetisation (ms) added to the network delay for the E-model's delay.
PACKET_TIME_MS = 20.0
#: The smallest jitter buffer (ms) assumed at the receiver.
MIN_JITTER_BUFFER_MS = 20.0


def codec_name(codec: str | None) -> str | None:
    """
    The encoding name of C{"PCMU/8000"} (upper case), or C{None}.
    """
    if not codec:
        return None
    return codec.split("/", 1)[0].strip().upper() or None


def clock_rate(codec: str | None, default: int = 8000) -> int:
    """
    The RTP clock rate of C{"NAME/RATE[/CHANNELS]"}, or C{default}.
    """
    if codec:
        parts = codec.split("/")
        if len(parts) > 1 and parts[1].strip().isdigit():
            rate = int(parts[1])
            if rate > 0:
                return rate
    return default


def delay_impairment(delay_ms: float) -> float:
    """
    Id of the simplified E-model for a one-way (mouth-to-ear) delay:
    C{0.024 d + 0.11 (d - 177.3) H(d - 177.3)}.
    """
    d = max(0.0, delay_ms)
    impairment = 0.024 * d
    if d > 177.3:
        impairment += 0.11 * (d - 177.3)
    return impairment


def mos_from_r(r: float) -> float:
    """
    G.107 Annex B: MOS (conversational, CQE) from R.
    """
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def emodel(codec: str | None, loss_ratio: float, delay_ms: float) -> tuple[float, float] | None:
    """
    The simplified E-model (ITU-T G.107 with default parameters):
    C{R = 93.2 - Id - Ie,eff}, C{Ie,eff = Ie + (95 - Ie) Ppl / (Ppl + Bpl)}
    (random loss, BurstR = 1), Ppl in percent.

    @param codec: the codec (C{"PCMU/8000"}); only those in
        L{CODEC_IMPAIRMENT} are rated.
    @param loss_ratio: packets lost over expected (0..1).
    @param delay_ms: the one-way delay.
    @return: C{(R, MOS)}, or C{None} for a codec without G.113 values.
    """
    name = codec_name(codec)
    if name is None or name not in CODEC_IMPAIRMENT:
        return None
    ie, bpl = CODEC_IMPAIRMENT[name]
    ppl = min(max(loss_ratio, 0.0), 1.0) * 100.0
    ie_eff = ie + (95.0 - ie) * ppl / (ppl + bpl)
    r = 93.2 - delay_impairment(delay_ms) - ie_eff
    return r, mos_from_r(r)


class _Rtcp:
    """
    The last RTCP figures seen on one leg.
    """

    __slots__ = ("sr", "rr", "rr_for_loss", "reported", "xr", "rtt_ms", "sr_arrivals")

    def __init__(self) -> None:
        self.sr: dict[str, Any] | None = None
        self.rr: list[dict[str, Any]] | None = None
        # the last report blocks whose interval lies within this stream's
        # life (the loss the MOS takes), and the sources reported on so far
        self.rr_for_loss: list[dict[str, Any]] | None = None
        self.reported: set[int] = set()
        self.xr: dict[str, Any] | None = None
        self.rtt_ms: float | None = None
        # NTP middle 32 bits of the SRs that arrived on this leg -> when
        self.sr_arrivals: dict[int, float] = {}

    def figures(self, rate: float) -> dict[str, Any] | None:
        if self.sr is None and self.rr is None and self.xr is None:
            return None
        reports = None
        if self.rr is not None:
            reports = [
                {
                    "ssrc": block["ssrc"],
                    "fraction_lost": round(block["fraction_lost"] / 256, 4),
                    "cumulative_lost": block["cumulative_lost"],
                    "jitter_ms": round(block["jitter"] * 1000.0 / rate, 3) if rate else None,
                }
                for block in self.rr
            ]
        sr = None
        if self.sr is not None:
            sr = {key: self.sr[key] for key in ("ssrc", "packets", "octets")}
        return {"sr": sr, "rr": reports, "xr": self.xr, "rtt_ms": self.rtt_ms}


#: The legs each side sees, its own first.
LEGS = {"agent": ("lan", "tunnel"), "contact": ("operator", "tunnel")}


class StreamQuality:
    """
    The quality figures of one media stream on one half: two legs, each
    with its L{RtpStats} (what arrives on it) and its last RTCP.

    The relay endpoints call C{local.received} for datagrams from our side
    and C{tunnel.received} for datagrams out of the tunnel.

    @ivar side: C{"agent"} or C{"contact"}.
    @ivar local: the figures of our side's leg (C{lan} or C{operator}).
    @ivar tunnel: the figures of the tunnel leg.
    @ivar codec: the negotiated codec (C{"PCMU/8000"}) or C{None}.
    @ivar tunnel_rtt: returns the tunnel's round trip in seconds (or
        C{None}); read for the snapshot only.
    @ivar late_dropped: returns the stream's datagrams dropped by the
        tunnel's media deadline (or C{None}: not counted per stream).
    @ivar readded: the stream was removed from the call and is added
        again (a new incarnation of its index): an endpoint's first
        report block about a source covers the time since its report
        before the removal, the gap included (a sender that went on
        numbering its packets while no relay took them shows as loss
        there), so the MOS takes an endpoint's reported loss only from
        its second report block about a source on.
    """

    def __init__(
        self,
        side: str,
        codec: str | None = None,
        tunnel_rtt: Callable[[], float | None] | None = None,
        late_dropped: Callable[[], int | None] | None = None,
        readded: bool = False,
    ) -> None:
        if side not in LEGS:
            raise ValueError(f"side must be 'agent' or 'contact', not {side!r}")
        self.side = side
        local_name, _ = LEGS[side]
        self.codec: str | None = None
        self.local = RtpStats(local_name, on_rtcp=self._rtcp)
        self.tunnel = RtpStats("tunnel", on_rtcp=self._rtcp)
        self._rtcp_of = {self.local.leg: _Rtcp(), self.tunnel.leg: _Rtcp()}
        self.tunnel_rtt = tunnel_rtt
        self.late_dropped = late_dropped
        self.readded = readded
        #: called with the leg's name and the parsed packets of every
        #: RTCP datagram (the HEP copy), or C{None}
        self.on_report: Callable[[str, list[dict[str, Any]]], None] | None = None
        self.set_codec(codec)

    def set_codec(self, codec: str | None) -> None:
        """
        The codec the SDP negotiated: its clock rate is the jitter's unit.
        """
        if codec is None or codec == self.codec:
            return
        self.codec = codec
        rate = clock_rate(codec)
        self.local.set_rate(rate)
        self.tunnel.set_rate(rate)

    def close(self) -> None:
        """
        The stream is released (its snapshot taken): drop the callbacks,
        which refer back to these figures or to the stream, so that
        reference counting frees them without the garbage collector.
        """
        self.local.on_rtcp = self.tunnel.on_rtcp = None
        self.on_report = None
        self.tunnel_rtt = self.late_dropped = None

    def _other(self, stats: RtpStats) -> RtpStats:
        return self.tunnel if stats is self.local else self.local

    def _rtcp(self, stats: RtpStats, data: bytes, now: float) -> None:
        """
        RTCP arrived on the leg of C{stats}: keep its figures; an RR block
        whose LSR names an SR that arrived on the other leg gives the
        round trip from this half to the reporting endpoint and back
        (arrival - the SR's arrival here - DLSR).
        """
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            stats.rtcp_errors += 1
            return
        if self.on_report is not None:
            self.on_report(stats.leg, packets)
        seen = self._rtcp_of[stats.leg]
        other = self._rtcp_of[self._other(stats).leg]
        blocks: list[dict[str, Any]] = []
        for packet in packets:
            kind = packet["type"]
            if kind == "sr":
                seen.sr = packet
                arrivals = seen.sr_arrivals
                if len(arrivals) >= _SR_MEMORY:
                    del arrivals[next(iter(arrivals))]
                arrivals[ntp_middle(packet["ntp_sec"], packet["ntp_frac"])] = now
                blocks.extend(packet["reports"])
            elif kind == "rr":
                blocks.extend(packet["reports"])
            elif kind == "xr":
                for block in packet["blocks"]:
                    if block.get("block_type") == 7:
                        seen.xr = block
        if blocks:
            seen.rr = blocks
            for_loss = blocks
            if self.readded:
                # a block's interval begins at the endpoint's previous
                # report: the first one about a source seen here began
                # before this incarnation
                for_loss = [b for b in blocks if b["ssrc"] in seen.reported]
                seen.reported.update(b["ssrc"] for b in blocks)
            if for_loss:
                seen.rr_for_loss = for_loss
            for block in blocks:
                sent = other.sr_arrivals.get(block["lsr"]) if block["lsr"] else None
                if sent is not None:
                    rtt = now - sent - block["dlsr"] / 65536.0
                    if rtt >= 0:
                        seen.rtt_ms = round(rtt * 1000.0, 3)

    def legs(self) -> dict[str, RtpStats]:
        """
        The legs this half sees, by name.
        """
        return {self.local.leg: self.local, "tunnel": self.tunnel}

    def rtcp_rtt_ms(self, leg: str) -> float | None:
        """
        The round trip from this half to the endpoint behind C{leg} and
        back, from RTCP (LSR/DLSR), or C{None}.
        """
        stats = self.legs().get(leg)
        return None if stats is None else self._rtcp_of[stats.leg].rtt_ms

    def transit_ms(self) -> float | None:
        """
        The tunnel's one-way transit estimate: half its round trip, when
        the tunnel measures one.
        """
        rtt = self.tunnel_rtt() if self.tunnel_rtt is not None else None
        return None if rtt is None else round(rtt * 500.0, 3)

    def _leg_figures(self, stats: RtpStats, transit: float | None) -> dict[str, Any]:
        figures = stats.figures()
        is_tunnel = stats is self.tunnel
        figures["transit_ms"] = transit if is_tunnel else None
        late = None
        if is_tunnel and self.late_dropped is not None:
            late = self.late_dropped()
        figures["late_dropped"] = late
        rtcp = self._rtcp_of[stats.leg]
        if rtcp.sr is None and rtcp.rr is None and rtcp.xr is None:
            figures["rtcp"] = None  # as _Rtcp.figures has it, without the call
        else:
            figures["rtcp"] = rtcp.figures(stats.rate)
        return figures

    def direction(self, which: str) -> RtpStats:
        """
        The leg on which the C{"up"} or C{"down"} media arrives at this half.
        """
        if self.side == "agent":
            return self.local if which == "up" else self.tunnel
        return self.tunnel if which == "up" else self.local

    def mos(self, which: str, transit_ms: float | None = None) -> float | None:
        """
        The E-model MOS of one direction (L{emodel}) from what this half
        sees of it: loss, the larger of our own count on the leg it
        arrives on and the fraction lost the receiving endpoint reports
        in RTCP (its last report block; see C{readded}); delay, half the sum of the RTCP round trips from this
        half to each endpoint, as far as known (else the tunnel transit,
        else 0), plus L{PACKET_TIME_MS}
        and a jitter buffer of twice the jitter (at least
        L{MIN_JITTER_BUFFER_MS}).

        @return: the MOS, or C{None} (no packets, or a codec without
            G.113 values).
        """
        stats = self.direction(which)
        if not stats.packets:
            return None
        loss = stats.loss_ratio()
        # the receiving endpoint's report about this direction arrives on
        # the other leg (it sends its RTCP back the way it came)
        report = self._rtcp_of[self._other(stats).leg].rr_for_loss
        if report:
            loss = max(loss, max(b["fraction_lost"] for b in report) / 256)
        # the two round trips from this half, one to each endpoint, make
        # one round trip from endpoint to endpoint
        trips = [self._rtcp_of[s.leg].rtt_ms for s in (self.local, self.tunnel)]
        known = [t for t in trips if t is not None]
        if known:
            network = sum(known) / 2
        elif transit_ms is not None:
            network = transit_ms
        else:
            network = 0.0
        delay = network + PACKET_TIME_MS + max(MIN_JITTER_BUFFER_MS, 2 * stats.jitter_ms)
        rated = emodel(self.codec, loss, delay)
        return None if rated is None else round(rated[1], 2)

    def snapshot(self) -> dict[str, Any]:
        """
        The figures for the status page, the metrics and the call detail
        record::

            {"legs": {"lan": {...} | None, "tunnel": {...}, "operator": {...} | None},
             "mos": {"up": float | None, "down": float | None},
             "codec": str | None}

        Each leg: C{packets}, C{bytes}, C{expected}, C{lost},
        C{reordered}, C{duplicates}, C{jitter_ms}, C{transit_ms} (the
        tunnel leg only), C{late_dropped}, C{rtcp} (the last SR/RR/XR
        figures and the RTCP round trip, or C{None}). The leg this half
        does not see is C{None}.
        """
        transit = self.transit_ms()
        legs: dict[str, Any] = {"lan": None, "tunnel": None, "operator": None}
        local = legs[self.local.leg] = self._leg_figures(self.local, transit)
        tunnel = legs["tunnel"] = self._leg_figures(self.tunnel, transit)
        # a direction without packets has no MOS (L{mos}): told by the
        # leg's figures, without the call
        up, down = (local, tunnel) if self.side == "agent" else (tunnel, local)
        return {
            "legs": legs,
            "mos": {
                "up": self.mos("up", transit) if up["packets"] else None,
                "down": self.mos("down", transit) if down["packets"] else None,
            },
            "codec": self.codec,
        }


#: Leg figures that add up over the incarnations of a stream.
_SUMMED = ("packets", "bytes", "expected", "lost", "reordered", "duplicates", "restarts")


def _worst(a: float | None, b: float | None, pick: Callable[[float, float], float]) -> float | None:
    if a is None:
        return b
    return a if b is None else pick(a, b)


def _merge_leg(earlier: dict[str, Any] | None, later: dict[str, Any] | None) -> dict[str, Any] | None:
    if earlier is None or later is None:
        return later if earlier is None else earlier
    merged = dict(later)
    for name in _SUMMED:
        merged[name] = earlier[name] + later[name]
    packets = earlier["packets"] + later["packets"]
    if packets:
        # each incarnation's jitter is its last estimate (A.8 smooths over
        # about 16 packets): weighted by the packets it stands for, not
        # the worst of two moments
        jitter = (earlier["jitter_ms"] * earlier["packets"] + later["jitter_ms"] * later["packets"]) / packets
        merged["jitter_ms"] = round(jitter, 3)
    merged["transit_ms"] = _worst(earlier["transit_ms"], later["transit_ms"], max)
    late = [n for n in (earlier["late_dropped"], later["late_dropped"]) if n is not None]
    merged["late_dropped"] = sum(late) if late else None
    if later["rtcp"] is None:
        merged["rtcp"] = earlier["rtcp"]
    return merged


def merge_snapshots(earlier: dict[str, Any] | None, later: dict[str, Any]) -> dict[str, Any]:
    """
    The figures of a stream over its incarnations: a stream removed from
    a call (port 0) and added again has a new L{StreamQuality} (new relay
    ports, its own sequence numbers); the call detail record shows them
    as one.

    Per leg the counts (C{packets}, C{bytes}, C{expected}, C{lost},
    C{reordered}, C{duplicates}, C{restarts}, C{late_dropped}) are
    summed; C{jitter_ms} is the incarnations' mean weighted by their
    packets on the leg, C{transit_ms} the worst (largest), C{rtcp} the
    last one seen. Per direction the MOS is
    the worst (lowest) rated incarnation's, as the call's is its worst
    stream's. The codec is the latest one.

    @param earlier: the snapshot of the earlier incarnations, or
        C{None} (the first).
    @param later: L{StreamQuality.snapshot} of the incarnation that ends.
    """
    if earlier is None:
        return later
    return {
        "legs": {name: _merge_leg(earlier["legs"].get(name), leg) for name, leg in later["legs"].items()},
        "mos": {which: _worst(earlier["mos"][which], later["mos"][which], min) for which in ("up", "down")},
        "codec": later["codec"] or earlier["codec"],
    }
