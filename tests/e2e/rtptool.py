"""
A small RTP/RTCP sender and counter the media tests run inside namespaces
(no Twisted, no reactor; every run is bounded in time).

  rtptool.py send SRC_IP SRC_PORT DEST[,DEST...] COUNT PPS [rtcp] [ssrc=N] [delay=S] [latch]
      from SRC_IP:SRC_PORT send COUNT packets to every DEST (HOST:PORT) at
      PPS packets per second each (RTP PCMA, 160-byte payload, one SSRC per
      destination numbered from N, default 1; with "rtcp" a 28-byte RTCP
      sender report instead); with delay=S bind first, then wait S seconds
      (counting what arrives) before sending; with "latch" send one packet
      of SSRC 0 to every DEST right after binding, so that a relay that
      latches to its peer's source address has learnt it before the counted
      stream starts.  Meanwhile count what comes back on the same socket, per
      SSRC; wait one second after the last packet, then print one JSON line
      {"sent": N, "received": N, "by_ssrc": {...}, "sources": [...]}.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time


def rtp_packet(ssrc: int, seq: int) -> bytes:
    header = struct.pack("!BBHII", 0x80, 8, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc)
    return header + b"\xd5" * 160


def rtcp_packet(ssrc: int, seq: int) -> bytes:
    # sender report, no report blocks: V=2 PT=200 length=6 (28 bytes)
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, seq, 0, seq * 160, seq, seq * 160)


def ssrc_of(data: bytes) -> int | None:
    if len(data) >= 12 and data[0] >> 6 == 2:
        if data[1] in (200, 201):
            return struct.unpack("!I", data[4:8])[0]
        return struct.unpack("!I", data[8:12])[0]
    return None


def send(src_ip: str, src_port: int, dests: list[tuple[str, int]], count: int, pps: float, rtcp: bool, first_ssrc: int = 1, delay: float = 0.0, latch: bool = False) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((src_ip, src_port))
    sock.setblocking(False)
    make = rtcp_packet if rtcp else rtp_packet
    by_ssrc: dict[int, int] = {}
    sources: set[str] = set()
    received = 0
    sent = 0

    def drain() -> None:
        nonlocal received
        while True:
            try:
                data, peer = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                continue
            received += 1
            sources.add(f"{peer[0]}:{peer[1]}")
            ssrc = ssrc_of(data)
            if ssrc is not None:
                by_ssrc[ssrc] = by_ssrc.get(ssrc, 0) + 1

    start = time.monotonic() + delay
    if latch:
        for dest in dests:
            try:
                sock.sendto(make(0, 0), dest)
            except (BlockingIOError, ConnectionRefusedError):
                pass
    interval = 1.0 / pps
    for seq in range(count):
        due = start + seq * interval
        while True:
            drain()
            left = due - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.002))
        for index, dest in enumerate(dests):
            try:
                sock.sendto(make(first_ssrc + index, seq), dest)
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        drain()
        time.sleep(0.005)
    return {
        "sent": sent,
        "received": received,
        "by_ssrc": {str(k): v for k, v in sorted(by_ssrc.items())},
        "sources": sorted(sources),
    }


def parse_dest(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


if __name__ == "__main__":
    if sys.argv[1] != "send":
        sys.exit(f"unknown command {sys.argv[1]!r}")
    options = sys.argv[7:]
    ssrc = [int(o.partition("=")[2]) for o in options if o.startswith("ssrc=")]
    delay = [float(o.partition("=")[2]) for o in options if o.startswith("delay=")]
    result = send(
        sys.argv[2], int(sys.argv[3]),
        [parse_dest(d) for d in sys.argv[4].split(",")],
        int(sys.argv[5]), float(sys.argv[6]),
        "rtcp" in options,
        ssrc[0] if ssrc else 1,
        delay[0] if delay else 0.0,
        "latch" in options,
    )
    print(json.dumps(result), flush=True)
