# -*- test-case-name: tests.test_hep -*-
"""
HEP version 3 (the Homer encapsulation protocol): a copy of the SIP each
half sends and receives, and of the RTCP reports it relays, to a Homer (or
any HEP) collector, the way Kamailio's siptrace, rtpengine and FreeSWITCH
send it (C{--hep HOST:PORT}).

L{encode} is pure (the HEP3 chunks, below); L{HepSender} is the small UDP
sender (one socket, nothing queued: a datagram the kernel does not take is
counted and dropped).

A HEP3 packet is C{"HEP3"}, its total length (16 bits), then chunks: vendor
id (16 bits, 0 for the generic chunks), chunk type (16 bits), chunk length
(16 bits, the 6 header bytes included), value. The chunks written here:

 - 1 IP family (8 bits: 2 IPv4, 10 IPv6), 2 IP protocol (8 bits: 17 UDP,
   6 TCP);
 - 3/4 IPv4 source/destination (or 5/6 IPv6), 7/8 source/destination port;
 - 9/10 timestamp seconds and microseconds;
 - 11 protocol type (1 SIP, 5 RTCP), 12 capture agent id (32 bits);
 - 15 the payload (the SIP message as on the wire; for RTCP the report as
   JSON, the layout Homer's capture agents use);
 - 17 correlation id (the Call-ID, for RTCP), 14 auth key when given.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import time
from typing import Any, Callable

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from spwm.logthrottle import PowersOfTwo, ThrottledLog

#: HEP protocol types.
PROTO_SIP = 1
PROTO_RTCP = 5

#: Chunk types (vendor 0).
CHUNK_FAMILY = 1
CHUNK_IP_PROTO = 2
CHUNK_SRC_IP4 = 3
CHUNK_DST_IP4 = 4
CHUNK_SRC_IP6 = 5
CHUNK_DST_IP6 = 6
CHUNK_SRC_PORT = 7
CHUNK_DST_PORT = 8
CHUNK_TS_SEC = 9
CHUNK_TS_USEC = 10
CHUNK_PROTO_TYPE = 11
CHUNK_AGENT_ID = 12
CHUNK_AUTH_KEY = 14
CHUNK_PAYLOAD = 15
CHUNK_CORRELATION = 17

#: The largest HEP packet sent (one UDP datagram).
MAX_PACKET = 65507

_NONE4 = ("0.0.0.0", 0)
_NONE6 = ("::", 0)


def _chunk(kind: int, value: bytes) -> bytes:
    return struct.pack("!HHH", 0, kind, 6 + len(value)) + value


def encode(
    src: tuple[str, int],
    dst: tuple[str, int],
    payload: bytes,
    timestamp: float,
    proto_type: int = PROTO_SIP,
    transport: str = "udp",
    agent_id: int = 0,
    correlation_id: str | None = None,
    auth_key: str | None = None,
) -> bytes:
    """
    One HEP3 packet.

    @param src: the sender's IP literal and port; an address that is not
        an IP literal (a tunnel) is written as the unspecified address.
    @param dst: the receiver's, likewise. The family is the source's
        (IPv6 if either is IPv6; the other then as IPv6 too).
    @param timestamp: seconds since the epoch (capture time).
    @param transport: C{"udp"}, C{"tcp"} or C{"tls"} (TLS is written as
        TCP, as HEP has no number of its own for it).
    @raise ValueError: a port outside 0..65535, or the packet would be
        longer than L{MAX_PACKET}.
    """
    if len(payload) > MAX_PACKET:
        raise ValueError(f"HEP payload of {len(payload)} bytes is over {MAX_PACKET}")
    source = _address(src[0])
    target = _address(dst[0])
    six = source.version == 6 or target.version == 6
    if six:
        source = _as6(source)
        target = _as6(target)
    seconds = int(timestamp)
    micro = int(round((timestamp - seconds) * 1_000_000))
    if micro >= 1_000_000:
        seconds, micro = seconds + 1, micro - 1_000_000
    chunks = [
        _chunk(CHUNK_FAMILY, bytes([10 if six else 2])),
        _chunk(CHUNK_IP_PROTO, bytes([17 if transport == "udp" else 6])),
        _chunk(CHUNK_SRC_IP6 if six else CHUNK_SRC_IP4, source.packed),
        _chunk(CHUNK_DST_IP6 if six else CHUNK_DST_IP4, target.packed),
        _chunk(CHUNK_SRC_PORT, struct.pack("!H", src[1])),
        _chunk(CHUNK_DST_PORT, struct.pack("!H", dst[1])),
        _chunk(CHUNK_TS_SEC, struct.pack("!I", seconds & 0xFFFFFFFF)),
        _chunk(CHUNK_TS_USEC, struct.pack("!I", micro)),
        _chunk(CHUNK_PROTO_TYPE, bytes([proto_type])),
        _chunk(CHUNK_AGENT_ID, struct.pack("!I", agent_id & 0xFFFFFFFF)),
    ]
    if auth_key:
        chunks.append(_chunk(CHUNK_AUTH_KEY, auth_key.encode("utf-8")))
    if correlation_id:
        chunks.append(_chunk(CHUNK_CORRELATION, correlation_id.encode("utf-8")))
    chunks.append(_chunk(CHUNK_PAYLOAD, payload))
    body = b"".join(chunks)
    total = 6 + len(body)
    if total > MAX_PACKET:
        raise ValueError(f"HEP packet of {total} bytes is over {MAX_PACKET}")
    return b"HEP3" + struct.pack("!H", total) + body


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ipaddress.IPv4Address(0)


def _as6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address("::ffff:" + str(address))


def rtcp_json(packets: list[dict[str, Any]]) -> bytes:
    """
    Parsed RTCP (L{spwm.media.quality.parse_rtcp}) as the JSON that HEP
    capture agents (heplify, rtpengine) send with protocol type 5: C{type},
    C{ssrc}, C{sender_information}, C{report_count}, C{report_blocks} and,
    from an XR VoIP metrics block, the flat C{report_blocks_xr}.
    """
    out: dict[str, Any] = {}
    blocks: list[dict[str, Any]] = []
    for packet in packets:
        kind = packet["type"]
        if kind in ("sr", "rr"):
            out.setdefault("type", 200 if kind == "sr" else 201)
            out.setdefault("ssrc", packet["ssrc"])
            if kind == "sr":
                out["sender_information"] = {
                    "ntp_timestamp_sec": packet["ntp_sec"],
                    # the NTP fraction as it is, as heplify and rtpengine send it
                    "ntp_timestamp_usec": packet["ntp_frac"],
                    "rtp_timestamp": packet["rtp_ts"],
                    "packets": packet["packets"],
                    "octets": packet["octets"],
                }
            for block in packet["reports"]:
                blocks.append(
                    {
                        "source_ssrc": block["ssrc"],
                        "fraction_lost": block["fraction_lost"],
                        "packets_lost": block["cumulative_lost"],
                        "highest_seq_no": block["highest_seq"],
                        "ia_jitter": block["jitter"],
                        "lsr": block["lsr"],
                        "dlsr": block["dlsr"],
                    }
                )
        elif kind == "xr":
            metrics = [b for b in packet["blocks"] if b.get("block_type") == 7]
            if metrics:
                # heplify's flat layout, values as on the wire (x/256)
                m = metrics[-1]
                out["report_blocks_xr"] = {
                    "type": 7,
                    "id": m["ssrc"],
                    "fraction_lost": round(m["loss_rate"] * 256),
                    "fraction_discard": round(m["discard_rate"] * 256),
                    "burst_density": round(m["burst_density"] * 256),
                    "gap_density": round(m["gap_density"] * 256),
                    "burst_duration": m["burst_duration_ms"],
                    "gap_duration": m["gap_duration_ms"],
                    "round_trip_delay": m["round_trip_ms"],
                    "end_system_delay": m["end_system_delay_ms"],
                }
            out.setdefault("type", 207)
            out.setdefault("ssrc", packet["ssrc"])
    out["report_count"] = len(blocks)
    out["report_blocks"] = blocks
    return json.dumps(out, sort_keys=True).encode("ascii")


def parse_target(text: str) -> tuple[str, int]:
    """
    C{HOST:PORT} or C{[IPv6]:PORT} of C{--hep}.

    @raise ValueError: no port, or one outside 1..65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--hep wants HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


class _Socket(DatagramProtocol):
    noisy = False

    def __init__(self, owner: HepSender) -> None:
        self.owner = owner

    def connectionRefused(self) -> None:
        self.owner._failed("the collector refused (ICMP port unreachable)")


class HepSender:
    """
    Sends HEP3 packets to one collector over UDP.

    @ivar target: the collector's C{(ip, port)}, resolved once.
    @ivar sent: packets handed to the kernel.
    @ivar failed: packets that could not be sent (socket errors, too long).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        target: tuple[str, int],
        agent_id: int = 0,
        clock: Callable[[], float] | None = None,
        auth_key: str | None = None,
    ) -> None:
        """
        @param target: the collector's IP literal and port.
        @param clock: seconds since the epoch, the capture's date
            (C{time.time}: the wall clock, whatever the reactor goes by).
        """
        self.reactor = reactor
        self.target = target
        self.agent_id = agent_id
        self.auth_key = auth_key
        self.clock = clock if clock is not None else time.time
        self.sent = 0
        self.failed = 0
        self._port: Any = None
        self._errors = ThrottledLog(self.log, None, PowersOfTwo())

    def start(self) -> None:
        """
        Bind the sending socket (an ephemeral port of the collector's family).
        """
        if self._port is None:
            interface = "::" if ":" in self.target[0] else "0.0.0.0"
            self._port = self.reactor.listenUDP(0, _Socket(self), interface=interface)

    def stop(self) -> None:
        """
        Close the socket.
        """
        if self._port is not None:
            port, self._port = self._port, None
            port.stopListening()

    def sip(
        self,
        src: tuple[str, int] | None,
        dst: tuple[str, int] | None,
        data: bytes,
        transport: str = "udp",
    ) -> None:
        """
        Send a copy of one SIP message (as on the wire).
        """
        self._send(src, dst, data, PROTO_SIP, transport, None)

    def rtcp(
        self,
        src: tuple[str, int] | None,
        dst: tuple[str, int] | None,
        packets: list[dict[str, Any]],
        call_id: str,
    ) -> None:
        """
        Send one RTCP report (parsed), correlated with its call's Call-ID.
        """
        self._send(src, dst, rtcp_json(packets), PROTO_RTCP, "udp", call_id)

    def _send(
        self,
        src: tuple[str, int] | None,
        dst: tuple[str, int] | None,
        payload: bytes,
        proto_type: int,
        transport: str,
        correlation: str | None,
    ) -> None:
        if self._port is None:
            return
        try:
            packet = encode(
                src or _NONE4,
                dst or _NONE4,
                payload,
                self.clock(),
                proto_type,
                transport,
                self.agent_id,
                correlation,
                self.auth_key,
            )
        except ValueError as e:
            self._failed(str(e))
            return
        try:
            self._port.write(packet, self.target)
        except (OSError, socket.error) as e:
            self._failed(str(e))
            return
        self.sent += 1

    def _failed(self, reason: str) -> None:
        self.failed += 1
        if self._errors.hit(None, self.failed) is not None:
            self.log.warn(
                "HEP copy to {target} not sent: {reason} ({count} so far)",
                target="{}:{}".format(*self.target),
                reason=reason,
                count=self.failed,
            )
