"""
Tests for L{spwm.hep}: what is sent is decoded here by a decoder of the
test's own, written from the HEP3 layout (it imports nothing from
C{spwm.hep}'s internals), and for the sender over loopback UDP.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spwm.hep import HepSender, encode, parse_target
from spwm.media.quality import StreamQuality, parse_rtcp
from spwm.sip.transport import SipTrace

from .test_media_quality import report_block, rr, sr

INVITE = (
    b"INVITE sip:bob@example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1\r\n"
    b"Call-ID: abc@192.0.2.10\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def decode_hep3(data: bytes) -> dict[str, Any]:
    """
    Decode one HEP3 packet: C{"HEP3"}, total length, then chunks of
    (vendor 16, type 16, length 16 with the header, value).
    """
    assert data[:4] == b"HEP3", data[:4]
    (total,) = struct.unpack("!H", data[4:6])
    assert total == len(data), (total, len(data))
    out: dict[str, Any] = {}
    at = 6
    while at < total:
        vendor, kind, length = struct.unpack("!HHH", data[at : at + 6])
        assert vendor == 0 and length >= 6 and at + length <= total
        value = data[at + 6 : at + length]
        if kind in (1, 2, 11):
            out[kind] = value[0]
        elif kind in (3, 4):
            out[kind] = str(ipaddress.IPv4Address(value))
        elif kind in (5, 6):
            out[kind] = str(ipaddress.IPv6Address(value))
        elif kind in (7, 8):
            (out[kind],) = struct.unpack("!H", value)
        elif kind in (9, 10, 12):
            (out[kind],) = struct.unpack("!I", value)
        else:
            out[kind] = value
        at += length
    return out


class EncodeTests(SynchronousTestCase):
    def test_sip_ipv4(self) -> None:
        packet = encode(("192.0.2.10", 5060), ("198.51.100.1", 5070), INVITE, 1700000000.25, 1, "udp", 2)
        chunks = decode_hep3(packet)
        self.assertEqual(chunks[1], 2)  # IPv4
        self.assertEqual(chunks[2], 17)  # UDP
        self.assertEqual((chunks[3], chunks[4]), ("192.0.2.10", "198.51.100.1"))
        self.assertEqual((chunks[7], chunks[8]), (5060, 5070))
        self.assertEqual((chunks[9], chunks[10]), (1700000000, 250000))
        self.assertEqual((chunks[11], chunks[12]), (1, 2))
        self.assertEqual(chunks[15], INVITE)
        self.assertNotIn(17, chunks)

    def test_rtcp_ipv6_tcp_correlation(self) -> None:
        packet = encode(
            ("2001:db8::1", 40001), ("192.0.2.1", 50001), b"{}", 5.0, 5, "tcp", 1, "abc@192.0.2.10", "secret"
        )
        chunks = decode_hep3(packet)
        self.assertEqual((chunks[1], chunks[2]), (10, 6))
        self.assertEqual((chunks[5], chunks[6]), ("2001:db8::1", "::ffff:c000:201"))
        self.assertEqual(chunks[11], 5)
        self.assertEqual(chunks[17], b"abc@192.0.2.10")
        self.assertEqual(chunks[14], b"secret")

    def test_not_an_address(self) -> None:
        """
        A peer without an IP (the tunnel) is the unspecified address.
        """
        chunks = decode_hep3(encode(("tunnel", 0), ("192.0.2.1", 5060), b"x", 0.0))
        self.assertEqual((chunks[3], chunks[7]), ("0.0.0.0", 0))

    def test_too_long(self) -> None:
        self.assertRaises(ValueError, encode, ("192.0.2.1", 1), ("192.0.2.2", 2), b"x" * 65507, 0.0)

    def test_rtcp_json_xr(self) -> None:
        """
        An XR VoIP metrics block becomes heplify's flat
        C{report_blocks_xr}, its values as on the wire.
        """
        from spwm.hep import rtcp_json

        from .test_media_quality import voip_metrics_block, xr

        body = json.loads(rtcp_json(parse_rtcp(rr(1, []) + xr(1, [voip_metrics_block(9, 13, 88, 41, 40, 52)]))))
        self.assertEqual(body["type"], 201)
        self.assertEqual(
            body["report_blocks_xr"],
            {
                "type": 7,
                "id": 9,
                "fraction_lost": 13,
                "fraction_discard": 3,
                "burst_density": 0,
                "gap_density": 0,
                "burst_duration": 0,
                "gap_duration": 0,
                "round_trip_delay": 52,
                "end_system_delay": 40,
            },
        )

    def test_parse_target(self) -> None:
        self.assertEqual(parse_target("192.0.2.9:9060"), ("192.0.2.9", 9060))
        self.assertEqual(parse_target("[2001:db8::9]:9060"), ("2001:db8::9", 9060))
        for bad in ("192.0.2.9", "192.0.2.9:0", ":9060", "192.0.2.9:x"):
            self.assertRaises(ValueError, parse_target, bad)


class FakeHep:
    def __init__(self) -> None:
        self.sip_copies: list[tuple[Any, ...]] = []
        self.reports: list[tuple[Any, ...]] = []

    def sip(self, src: Any, dst: Any, data: bytes, transport: str = "udp") -> None:
        self.sip_copies.append((src, dst, data, transport))

    def rtcp(self, src: Any, dst: Any, packets: Any, call_id: str) -> None:
        self.reports.append((src, dst, packets, call_id))


class TraceTests(SynchronousTestCase):
    """
    The SIP trace hook copies each message to HEP, with or without the
    log lines.
    """

    def test_hep_without_lines(self) -> None:
        hep = FakeHep()
        trace = SipTrace(lines=False, hep=hep)
        with capturedLogs() as events:
            trace.message("received from", "app udp 192.0.2.10:5060", INVITE, ("192.0.2.10", 5060), ("192.0.2.1", 5060))
            trace.message("sent to", "operator tcp 203.0.113.5:5060", INVITE, ("203.0.113.5", 5060), None, "tcp")
        self.assertEqual(events, [])
        self.assertEqual(
            hep.sip_copies,
            [
                (("192.0.2.10", 5060), ("192.0.2.1", 5060), INVITE, "udp"),
                (None, ("203.0.113.5", 5060), INVITE, "tcp"),
            ],
        )

    def test_lines_and_hep(self) -> None:
        hep = FakeHep()
        trace = SipTrace(hep=hep)
        with capturedLogs() as events:
            trace.message("sent to", "tunnel flow 1", INVITE)
        self.assertEqual(len(events), 1)
        self.assertEqual(hep.sip_copies, [(None, None, INVITE, "udp")])

    def test_rtcp_report_hook(self) -> None:
        """
        Every RTCP datagram a stream's legs see is handed on parsed, with
        the leg's name.
        """
        quality = StreamQuality("contact")
        seen: list[tuple[str, Any]] = []
        quality.on_report = lambda leg, packets: seen.append((leg, packets))
        report = rr(5, [report_block(6, 1, 2, 3, 4, 0, 0)])
        quality.tunnel.received(report, 1.0)
        quality.local.received(sr(6, 1, 2), 2.0)
        self.assertEqual([(leg, [p["type"] for p in packets]) for leg, packets in seen], [("tunnel", ["rr"]), ("operator", ["sr"])])


class _Collector(DatagramProtocol):
    def __init__(self) -> None:
        self.received: defer.DeferredQueue[bytes] = defer.DeferredQueue()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.put(data)


class SenderTests(TestCase):
    """
    L{HepSender} over loopback UDP: what the collector receives decodes.
    """

    timeout = 10

    @defer.inlineCallbacks
    def test_sip_and_rtcp_to_collector(self) -> Any:
        collector = _Collector()
        port = reactor.listenUDP(0, collector, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        sender = HepSender(reactor, ("127.0.0.1", port.getHost().port), agent_id=2, clock=lambda: 1234.5)
        sender.start()
        self.addCleanup(sender.stop)
        sender.sip(("192.0.2.10", 5060), ("192.0.2.1", 5060), INVITE)
        report = sr(0x77, 3900000000, 1 << 31, [report_block(0x88, 64, 10, 1000, 80, 0, 0)])
        sender.rtcp(("192.0.2.10", 4001), ("192.0.2.1", 20001), parse_rtcp(report), "abc@192.0.2.10")
        first = decode_hep3((yield collector.received.get()))
        second = decode_hep3((yield collector.received.get()))
        self.assertEqual((first[11], first[12], first[15], first[9], first[10]), (1, 2, INVITE, 1234, 500000))
        self.assertEqual((second[11], second[17]), (5, b"abc@192.0.2.10"))
        body = json.loads(second[15])
        self.assertEqual((body["type"], body["ssrc"], body["report_count"]), (200, 0x77, 1))
        self.assertEqual(body["sender_information"]["ntp_timestamp_usec"], 1 << 31)
        self.assertEqual(
            body["report_blocks"][0],
            {
                "source_ssrc": 0x88,
                "fraction_lost": 64,
                "packets_lost": 10,
                "highest_seq_no": 1000,
                "ia_jitter": 80,
                "lsr": 0,
                "dlsr": 0,
            },
        )
        self.assertEqual((sender.sent, sender.failed), (2, 0))

    def test_not_started_sends_nothing(self) -> None:
        sender = HepSender(reactor, ("127.0.0.1", 9), clock=lambda: 0.0)
        sender.sip(None, None, INVITE)
        self.assertEqual((sender.sent, sender.failed), (0, 0))

    def test_too_long_counted_and_logged_once(self) -> None:
        collector = _Collector()
        port = reactor.listenUDP(0, collector, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        sender = HepSender(reactor, ("127.0.0.1", port.getHost().port), clock=lambda: 0.0)
        sender.start()
        self.addCleanup(sender.stop)
        with capturedLogs() as events:
            for _ in range(3):
                sender.sip(None, None, b"x" * 70000)
        self.assertEqual(sender.failed, 3)
        # the 1st and 2nd failures are logged (powers of two), not the 3rd
        self.assertEqual(len(events), 2)
