#!/usr/bin/env python3
"""
Media through one contact-point worker alone: N concurrent G.711 calls
relayed by an C{spwm-contact} that has a CPU to itself, with a lean agent
in the benchmark's process on the other CPU.

C{bench/media.py} measures the pair (agent and contact point) and its
load generator on the same two CPUs, so at 500 calls the three share
them and none can be measured alone.  The issue's target is about one
contact-point worker on one core; this benchmark measures exactly that.

The lean agent is not Twisted and not SPWM's agent: one non-blocking
loop (C{ssl}, C{selectors}) that speaks the tunnel protocol as an agent
does (the preface, a C{hello} with C{paths} so datagrams carry their
sequence numbers as the default agent's do, the media channels' C{open}),
registers the caller and sets up real calls through the contact point
(REGISTER, INVITE with an SDP offer, 200 with the answer, ACK, BYE, all
in SIP frames, answered by the benchmark as the operator's proxy), then
sends and receives the calls' RTP:

    benchmark, CPU 1                      spwm-contact, CPU 0        benchmark, CPU 1
    lean agent ══TLS tunnel (DATAGRAM frames)══> media relay ─UDP─> operator-side socket
               <══════════════════════════════             <─UDP─

Every call sends 172-byte RTP packets (12-byte header and 160 bytes of
payload) at 50 per second each way, the calls evenly staggered through
each 20 ms.  A packet carries its call, sequence number and
C{time.monotonic()} of sending (one clock for every process of the
machine): the latencies are one-way.  The tunnel's datagrams of one
20 ms slot's worth go in one TLS write (an agent's reactor writes what a
reactor iteration collected in one write as well).

The baseline in the same run: the same loop sends the same packets, at
the same rates both ways, from one UDP socket to the operator-side socket
and back, so the loop's own scheduling delay and the kernel's loopback are
in both; "added" is the relay's figure minus the baseline's at the same
percentile.  A step passes when the loss is under 0.1 % and the p99
added is under 5 ms, in both directions (the issue's target).

    python3 bench/contact_media.py                          # 500 calls, TLS
    python3 bench/contact_media.py --calls 500,750,1000,1250 --duration 8   # a ramp: stops at the first failed step (--keep-going: not)
    python3 bench/contact_media.py --no-seq                 # as an agent without paths (--tunnel on-demand)
    python3 bench/contact_media.py --profile /tmp/cm.raw    # py-spy the contact point through the last step

Every process is ended by PID at the end, on Ctrl-C and after --max-time.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import secrets
import selectors
import socket
import ssl
import struct
import subprocess
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    ROOT,
    Processes,
    cpu_model,
    cpu_seconds,
    free_port,
    machine_cpu,
    machine_usage,
    percentile,
    raise_nofile,
    run_bounded,
    summarize_profile,
)

PERIOD = 0.02  # 50 packets per second per call and direction
SIZE = 172  # RTP header + 160 bytes of G.711
RTP = struct.Struct("!BBHII")
STAMP = struct.Struct("!IId")  # call, sequence, send time
SIP_FLOW_REGISTER = 1
SIP_FLOW_CALLS = 2
SIDE_CALLS = 1_000_000  # the first index of the calls --sip-burst sets up beside the media
USER = "caller"
DOMAIN = "bench.spwm.test"
SOCKET_BUFFER = 4 * 1024 * 1024

_monotonic = time.monotonic


class Failed(Exception):
    """
    A step of the set-up failed: the message says which.
    """


# -- a little SIP --------------------------------------------------------------


def sip_message(start: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [start, *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def sip_parse(data: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers, body


def sdp(user: str, port: int) -> bytes:
    return (
        f"v=0\r\no={user} 1 1 IN IP4 127.0.0.1\r\ns=bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    ).encode()


def sdp_port(body: bytes) -> int:
    for line in body.decode("ascii", "replace").splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise Failed("an SDP without an audio line")


# -- the lean agent ------------------------------------------------------------


class LeanAgent:
    """
    One tunnel to the contact point, the operator's SIP proxy (a UDP
    socket) and the operator side's media socket, in one loop.
    """

    def __init__(
        self,
        port: int,
        ca: str | None,
        seq: bool,
        sip_port: int,
        user: str = USER,
        sip: socket.socket | None = None,
        by_call_id: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """
        @param user: the phone's user part (several agents of one
            benchmark register distinct users).
        @param sip: the operator's SIP socket, when agents share one (it
            is then not bound here), with C{by_call_id}: their calls by
            Call-ID, so each answers the others' requests alike.
        """
        from spwm.tunnel.frames import ALPN, encode_control, encode_preface

        self.seq = seq
        self.user = user
        self.sel = selectors.DefaultSelector()
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ca is not None:
            ctx = ssl.create_default_context(cafile=ca)
            ctx.set_alpn_protocols([ALPN.decode()])
            self.tunnel: Any = ctx.wrap_socket(raw, server_hostname="localhost")
        else:
            self.tunnel = raw
        hello: dict[str, Any] = {"op": "hello", "version": 1, "agent_id": "bench-lean-agent", "tcp_keepalive": 1}
        if seq:
            hello.update(paths=1, stalls=1)
        self.tunnel.sendall(encode_preface(1, 1) + encode_control(hello))
        self.tunnel.setblocking(False)
        self.rbuf = bytearray()
        self.preface = False
        self.out = bytearray()
        self.sel.register(self.tunnel, selectors.EVENT_READ, "tunnel")
        if sip is None:
            self.sip = self._udp(sip_port, "sip", buffer=False)
        else:
            self.sip = sip
            self.sel.register(sip, selectors.EVENT_READ, "sip")
        self.op = self._udp(0, "op")
        self.op_port = self.op.getsockname()[1]
        self.lan = self._udp(0, "lan")  # the baseline's other end
        self.welcome: dict[str, Any] | None = None
        self.sip_in: list[bytes] = []  # SIP messages out of the tunnel
        self.next_channel = 1
        self.calls: list[dict[str, Any]] = []
        self.by_call_id: dict[str, dict[str, Any]] = {} if by_call_id is None else by_call_id
        self.sip_burst = (0, 0.5)  # calls set up per burst during a relay phase, seconds between bursts
        self.side_index = SIDE_CALLS
        self.seq_base = 0
        self.collect: Any = None  # (direction, call, seq, sent) during a phase
        self.counters = {"pings": 0, "other_frames": 0}

    def _udp(self, port: int, name: str, buffer: bool = True) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", port))
        if buffer:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, name)
        return sock

    # I/O

    def send_frame(self, ftype: int, flags: int, channel: int, payload: bytes) -> None:
        from spwm.tunnel.frames import encode_frame

        self.out += encode_frame(ftype, flags, channel, payload)

    def flush(self) -> bool:
        """
        Write what is queued (TLS records of at most 16 kB); C{True} when
        everything is written.
        """
        while self.out:
            chunk = bytes(self.out[:16384])
            try:
                n = self.tunnel.send(chunk)
            except (ssl.SSLWantWriteError, BlockingIOError):
                return False
            except ssl.SSLWantReadError:
                return False
            del self.out[:n]
        return True

    def read_tunnel(self, now: float) -> None:
        from spwm.tunnel.frames import FrameType, HEADER

        try:
            while True:
                data = self.tunnel.recv(262144)
                if not data:
                    raise Failed("the contact point closed the tunnel")
                self.rbuf += data
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        buf = self.rbuf
        pos = 0
        if not self.preface:
            if len(buf) < 8:
                return
            self.preface = True
            pos = 8
        unpack = HEADER.unpack_from
        stamp = STAMP.unpack_from
        collect = self.collect
        end = len(buf)
        while end - pos >= 8:
            ftype, flags, channel, length = unpack(buf, pos)
            if end - pos - 8 < length:
                break
            body = pos + 8
            pos = body + length
            if ftype == 3:
                if collect is not None:
                    at = body + (4 if flags & 2 else 0) + 12
                    call, seq, sent = stamp(buf, at)
                    collect(1, call, seq, now - sent)
            elif ftype == FrameType.SIP:
                self.sip_in.append(bytes(buf[body:pos]))
            elif ftype == FrameType.CONTROL:
                message = json.loads(bytes(buf[body:pos]))
                if message.get("op") == "welcome":
                    self.welcome = message
                elif message.get("op") == "close":
                    raise Failed(f"the contact point closed channel {message.get('channel')}: {message.get('reason')}")
            elif ftype == FrameType.PING:
                self.counters["pings"] += 1
                self.send_frame(FrameType.PONG, 0, 0, bytes(buf[body:pos]))
            elif ftype in (FrameType.GOAWAY, FrameType.ERROR):
                raise Failed(f"the contact point sent {FrameType(ftype).name}: {bytes(buf[body:pos])!r}")
            else:
                self.counters["other_frames"] += 1
        del buf[:pos]

    def read_udp(self, sock: socket.socket, direction: int, now: float) -> list[tuple[bytes, Any]]:
        """
        Read what is waiting; timestamped packets go to C{collect}, others
        (SIP) are returned.
        """
        other: list[tuple[bytes, Any]] = []
        collect = self.collect
        stamp = STAMP.unpack_from
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                return other
            if len(data) == SIZE and data[0] == 0x80:
                if collect is not None:
                    call, seq, sent = stamp(data, 12)
                    collect(direction, call, seq, now - sent)
            else:
                other.append((data, addr))

    def wait(self, timeout: float) -> None:
        """
        One turn of the loop for the set-up: read everything ready.
        """
        if self.out and not self.flush():
            self.sel.modify(self.tunnel, selectors.EVENT_READ | selectors.EVENT_WRITE, "tunnel")
        else:
            self.sel.modify(self.tunnel, selectors.EVENT_READ, "tunnel")
        for key, _ in self.sel.select(timeout):
            now = _monotonic()
            if key.data == "tunnel":
                self.read_tunnel(now)
            elif key.data == "sip":
                for data, addr in self.read_udp(self.sip, 0, now):
                    self.operator(data, addr)
            elif key.data == "op":
                self.read_udp(self.op, 0, now)
            else:
                self.read_udp(self.lan, 0, now)

    def until(self, done: Any, timeout: float, what: str) -> None:
        deadline = _monotonic() + timeout
        while not done():
            if _monotonic() > deadline:
                raise Failed(f"{what}: nothing after {timeout:g} s")
            self.wait(0.05)

    # SIP: the agent's side in the tunnel, the operator's on the UDP socket

    def operator(self, data: bytes, addr: Any) -> None:
        start, headers, body = sip_parse(data)
        if start.startswith("SIP/2.0") or not start:
            return  # a response to us, or noise: nothing to do
        method = start.split()[0]
        copied = [("Via", v) for v in headers.get("via", [])]
        copied += [("Record-Route", v) for v in headers.get("record-route", [])]
        copied += [("From", headers["from"][0]), ("Call-ID", headers["call-id"][0]), ("CSeq", headers["cseq"][0])]
        if method == "REGISTER":
            answer = [("To", headers["to"][0] + ";tag=reg")]
            answer += [("Contact", c + ";expires=3600") for c in headers.get("contact", [])]
            answer += [("Path", p) for p in headers.get("path", [])]
            self.sip.sendto(sip_message("SIP/2.0 200 OK", copied + answer), addr)
        elif method == "INVITE":
            call = self.by_call_id[headers["call-id"][0]]
            call["relay"] = sdp_port(body)
            if not call["relay"]:
                raise Failed(f"the contact point refused call {call['index']}'s media (port 0 in its offer): see its log")
            to = [("To", headers["to"][0] + f";tag=op{call['index']}")]
            contact = [("Contact", f"<sip:operator@127.0.0.1:{self.sip.getsockname()[1]}>"), ("Content-Type", "application/sdp")]
            self.sip.sendto(sip_message("SIP/2.0 200 OK", copied + to + contact, sdp("operator", call["op_port"])), addr)
        elif method in ("BYE", "CANCEL", "OPTIONS"):
            self.sip.sendto(sip_message("SIP/2.0 200 OK", copied + [("To", headers["to"][0])]), addr)
        # ACK: nothing

    def tunnel_sip(self, start: str, headers: list[tuple[str, str]], body: bytes = b"", flow: int = SIP_FLOW_CALLS) -> None:
        from spwm.tunnel.frames import FrameType

        self.send_frame(FrameType.SIP, 0, flow, sip_message(start, headers, body))

    def phone_via(self, flow: int) -> tuple[str, str]:
        port = 40000 + flow
        return ("Via", f"SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(8)};rport={port};received=127.0.0.1")

    def register(self) -> None:
        """
        The caller's REGISTER, as an agent sends it into the tunnel; the
        benchmark answers it as the operator's registrar.
        """
        self.until(lambda: self.welcome is not None, 10, "no welcome")
        aor = f"sip:{self.user}@{DOMAIN}"
        call_id = secrets.token_hex(8)
        self.tunnel_sip(
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            [
                self.phone_via(SIP_FLOW_REGISTER), ("Max-Forwards", "69"), ("From", f"<{aor}>;tag=r1"), ("To", f"<{aor}>"),
                ("Call-ID", call_id), ("CSeq", "1 REGISTER"),
                ("Contact", f'<sip:{self.user}@127.0.0.1:{40000 + SIP_FLOW_REGISTER}>;+sip.instance="<urn:uuid:{uuid.uuid4()}>"'),
                ("Expires", "3600"),
            ],
            flow=SIP_FLOW_REGISTER,
        )  # fmt: skip
        self.until(lambda: self._final(call_id) is not None, 10, "REGISTER through the contact point")
        status = self._final(call_id)
        if status != 200:
            raise Failed(f"REGISTER through the contact point: {status}")

    def _final(self, call_id: str) -> int | None:
        for data in self.sip_in:
            start, headers, _ = sip_parse(data)
            if headers.get("call-id", [""])[0] == call_id and start.startswith("SIP/2.0 "):
                code = int(start.split()[1])
                if code >= 200:
                    return code
        return None

    def invite(self, index: int) -> dict[str, Any]:
        """
        Start call C{index}: its media channel's C{open} (as an agent
        opens it before the SDP that needs it), then the INVITE with an
        offer.
        """
        from spwm.tunnel.frames import encode_control

        call_id = f"bench{index}-{secrets.token_hex(6)}"
        channel = self.next_channel
        self.next_channel += 2
        call: dict[str, Any] = {"index": index, "call_id": call_id, "channel": channel, "relay": None, "tag": f"c{index}"}
        call["op_port"] = self.op_port
        self.by_call_id[call_id] = call
        meta = {"dialog": f"{SIP_FLOW_CALLS}/{call_id}", "mux": False, "stream": 0, "use": "media"}
        self.out += encode_control({"op": "open", "channel": channel, "kind": "datagram", "meta": meta})
        self.tunnel_sip(
            f"INVITE sip:operator@{DOMAIN} SIP/2.0",
            [
                self.phone_via(SIP_FLOW_CALLS), ("Max-Forwards", "69"),
                ("From", f"<sip:{self.user}@{DOMAIN}>;tag={call['tag']}"), ("To", f"<sip:operator@{DOMAIN}>"),
                ("Call-ID", call_id), ("CSeq", "1 INVITE"), ("Contact", f"<sip:{self.user}@127.0.0.1:{40000 + SIP_FLOW_CALLS}>"),
                ("Content-Type", "application/sdp"),
            ],
            sdp(self.user, 40000 + 2 * (index % 10000)),
        )  # fmt: skip
        return call

    def answered(self, pending: dict[str, dict[str, Any]], data: bytes) -> dict[str, Any] | None:
        """
        A final answer to one of the C{pending} INVITEs: ACK it, take it
        out of C{pending} and return the call; anything else: C{None}.

        @raise Failed: the INVITE was refused.
        """
        start, headers, _ = sip_parse(data)
        call_id = headers.get("call-id", [""])[0]
        call = pending.get(call_id)
        if call is None or not start.startswith("SIP/2.0 ") or "INVITE" not in headers.get("cseq", [""])[0]:
            return None
        code = int(start.split()[1])
        if code < 200:
            return None
        if code >= 300:
            raise Failed(f"call {call['index']}: INVITE answered {start}")
        if call["relay"] is None:
            raise Failed(f"call {call['index']}: answered before the operator saw its INVITE")
        call["to"] = headers["to"][0]
        call["contact"] = headers["contact"][0].strip("<>")
        call["route"] = headers.get("record-route", [])
        self.tunnel_sip(f"ACK {call['contact']} SIP/2.0", self._in_dialog(call, "1 ACK"))
        del pending[call_id]
        return call

    def set_up(self, n: int, timeout: float) -> None:
        """
        Calls until there are C{n}: INVITE, 200, ACK; at most 50 under way.
        """
        deadline = _monotonic() + timeout
        pending: dict[str, dict[str, Any]] = {}
        while len(self.calls) < n:
            while len(pending) < 50 and len(self.calls) + len(pending) < n:
                call = self.invite(len(self.calls) + len(pending))
                pending[call["call_id"]] = call
            self.wait(0.05)
            if _monotonic() > deadline:
                raise Failed(f"call set-up: {len(self.calls)} of {n} calls after {timeout:g} s")
            for data in self.sip_in:
                done = self.answered(pending, data)
                if done is not None:
                    self.calls.append(done)
            self.sip_in.clear()
        self.until(self.flush, 10, "writing the ACKs")

    def _side_calls(self, pending: dict[str, dict[str, Any]], counts: list[int]) -> None:
        """
        The SIP out of the tunnel during a phase: an answered side call is
        hung up at once; the 200 to its BYE ends it.
        """
        for data in self.sip_in:
            call = self.answered(pending, data)
            if call is not None:
                counts[1] += 1
                self.hang_up_one(call)
            elif data.startswith(b"SIP/2.0 200"):
                start, headers, _ = sip_parse(data)
                ended = headers.get("call-id", [""])[0]
                if "BYE" in headers.get("cseq", [""])[0] and ended in self.by_call_id:
                    del self.by_call_id[ended]
                    counts[2] += 1
        self.sip_in.clear()

    def hang_up_one(self, call: dict[str, Any]) -> None:
        """
        Close the call's channel and send its BYE.
        """
        from spwm.tunnel.frames import encode_control

        self.out += encode_control({"op": "close", "channel": call["channel"], "code": 0, "reason": "dialog ended"})
        self.tunnel_sip(f"BYE {call['contact']} SIP/2.0", self._in_dialog(call, "2 BYE"))

    def _in_dialog(self, call: dict[str, Any], cseq: str) -> list[tuple[str, str]]:
        headers = [self.phone_via(SIP_FLOW_CALLS), ("Max-Forwards", "69")]
        headers += [("Route", r) for r in call["route"]]
        headers += [("From", f"<sip:{self.user}@{DOMAIN}>;tag={call['tag']}"), ("To", call["to"]), ("Call-ID", call["call_id"]), ("CSeq", cseq)]
        return headers

    def hang_up(self, timeout: float) -> int:
        """
        BYE every call; the number of 200s.
        """
        for call in self.calls:
            self.hang_up_one(call)
        ids = {c["call_id"] for c in self.calls}
        ok: set[str] = set()
        deadline = _monotonic() + timeout
        while ok != ids and _monotonic() < deadline:
            self.wait(0.05)
            for data in self.sip_in:
                start, headers, _ = sip_parse(data)
                if start.startswith("SIP/2.0 200") and "BYE" in headers.get("cseq", [""])[0]:
                    ok.add(headers.get("call-id", [""])[0])
            self.sip_in.clear()
        return len(ok)

    # media

    def phase(self, n: int, path: str, duration: float) -> dict[str, Any]:
        """
        C{n} calls' RTP both ways for C{duration} s over C{path}
        (C{"relay"} or C{"direct"}), then 0.5 s for the last to arrive.
        """
        from spwm.tunnel.frames import FrameType

        calls = self.calls[:n]
        per_call = int(duration / PERIOD) + 2
        seen = [bytearray(n * per_call), bytearray(n * per_call)]
        lat = [array.array("d"), array.array("d")]
        dups = [0, 0]

        def collect(direction: int, call: int, seq: int, delay: float) -> None:
            if call >= n or seq >= per_call:
                return
            i = call * per_call + seq
            if seen[direction][i]:
                dups[direction] += 1
                return
            seen[direction][i] = 1
            lat[direction].append(delay)

        self.collect = collect
        relay_to = [("127.0.0.1", c["relay"]) for c in calls]
        lan_addr = self.lan.getsockname()
        op_addr = ("127.0.0.1", self.op_port)
        header = struct.Struct("!BBIHI" if self.seq else "!BBIH")
        flags = 2 if self.seq else 0
        length = SIZE + (4 if self.seq else 0)
        channels = [c["channel"] for c in calls]
        # a channel's sequence numbers go on from phase to phase, as an
        # agent's do (the contact point drops numbers it has had)
        base = self.seq_base
        self.seq_base += per_call
        packet = bytearray(SIZE)
        rtp = RTP.pack_into
        stamp = STAMP.pack_into
        sent = [0, 0]
        sel = self.sel
        write_wanted = False
        cpu0 = self._contact_cpu()
        me0 = os.times()
        m0 = machine_cpu()
        t0 = _monotonic()
        end = t0 + duration
        burst, every = self.sip_burst if path == "relay" else (0, 0.0)
        next_burst = t0 + every / 2 if burst else end
        side_pending: dict[str, dict[str, Any]] = {}
        side = [0, 0, 0]  # calls started, answered (and hung up at once), ended (200 to the BYE)
        self.sip_in.clear()
        rate = n / PERIOD
        while True:
            now = _monotonic()
            if now >= end:
                break
            due = min(int((now - t0) * rate) + 1, int(duration * rate))
            # forward: the agent's datagrams into the tunnel (or straight to the operator side)
            g = sent[0]
            if g < due:
                if path == "relay":
                    frames = []
                    for k in range(g, due):
                        call, seq = k % n, k // n
                        rtp(packet, 0, 0x80, 0, seq & 0xFFFF, seq * 160, call + 1)
                        stamp(packet, 12, call, seq, _monotonic())
                        if self.seq:
                            frames.append(header.pack(FrameType.DATAGRAM, flags, channels[call], length, base + seq))
                        else:
                            frames.append(header.pack(FrameType.DATAGRAM, flags, channels[call], length))
                        frames.append(bytes(packet))
                    self.out += b"".join(frames)
                else:
                    for k in range(g, due):
                        call, seq = k % n, k // n
                        rtp(packet, 0, 0x80, 0, seq & 0xFFFF, seq * 160, call + 1)
                        stamp(packet, 12, call, seq, _monotonic())
                        self.lan.sendto(packet, op_addr)
                sent[0] = due
            # return: the operator side's RTP to the relay (or straight back)
            g = sent[1]
            if g < due:
                for k in range(g, due):
                    call, seq = k % n, k // n
                    rtp(packet, 0, 0x80, 0, seq & 0xFFFF, seq * 160, 0x10000 + call)
                    stamp(packet, 12, call, seq, _monotonic())
                    try:
                        self.op.sendto(packet, relay_to[call] if path == "relay" else lan_addr)
                    except BlockingIOError:
                        pass  # counted as lost
                sent[1] = due
            if now >= next_burst:
                for _ in range(burst):
                    extra = self.invite(self.side_index)
                    self.side_index += 1
                    side_pending[extra["call_id"]] = extra
                side[0] += burst
                next_burst += every
            if self.sip_in:
                self._side_calls(side_pending, side)
            if self.out:
                done = self.flush()
                if done == write_wanted:
                    write_wanted = not done
                    sel.modify(self.tunnel, selectors.EVENT_READ | (selectors.EVENT_WRITE if write_wanted else 0), "tunnel")
            next_due = t0 + due / rate
            for key, _ in sel.select(max(0.0, min(next_due, end) - _monotonic())):
                now = _monotonic()
                if key.data == "tunnel":
                    self.read_tunnel(now)
                elif key.data == "op":
                    self.read_udp(self.op, 0, now)
                elif key.data == "lan":
                    self.read_udp(self.lan, 1, now)
                else:
                    for data, addr in self.read_udp(self.sip, 0, now):
                        self.operator(data, addr)
        busy_until = _monotonic() + 0.5
        while _monotonic() < busy_until:
            self.wait(0.02)
        self._side_calls(side_pending, side)
        cpu1 = self._contact_cpu()
        me1 = os.times()
        usage = machine_usage(m0, machine_cpu())
        self.collect = None
        wall = _monotonic() - t0
        out: dict[str, Any] = {"path": path, "calls": n, "wall": wall, "busy": usage["busy"], "steal": usage["steal"]}
        out["side"] = side
        out["contact_cpu"] = (cpu1 - cpu0) / wall
        out["bench_cpu"] = (me1.user + me1.system - me0.user - me0.system) / wall
        for d, name in ((0, "forward"), (1, "return")):
            values = sorted(lat[d])
            out[name] = {
                "sent": sent[d],
                "received": len(values),
                "loss": 1 - len(values) / max(sent[d], 1),
                "dups": dups[d],
                "p50": percentile(values, 0.50) if values else float("nan"),
                "p99": percentile(values, 0.99) if values else float("nan"),
                "max": values[-1] if values else float("nan"),
            }
        return out

    contact_pid = 0

    def _contact_cpu(self) -> float:
        return cpu_seconds(self.contact_pid) if self.contact_pid else 0.0


# -- the benchmark -------------------------------------------------------------


def start_contact(procs: Processes, workdir: str, args: argparse.Namespace, sip_proxy: int, tls: list[str]) -> tuple[Any, int]:
    port = free_port()
    max_calls = max(args.calls)
    contact_args = [
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--sip-proxy", f"127.0.0.1:{sip_proxy}",
        "--sip-address", f"127.0.0.1:{free_port()}", "--media-address", "127.0.0.1",
        "--media-ports", f"{args.media_low}-{args.media_low + 4 * (max_calls + args.sip_burst) + 200}", "--media-allow", "127.0.0.0/8",
        "--drain-time", "0.2", "--udp-buffer", str(SOCKET_BUFFER),
        "--status-listen", f"tcp:{args.status_port}:interface=127.0.0.1",
        *(["--cert", tls[0], "--key", tls[1]] if tls else ["--plaintext"]), *args.contact_arg,
    ]  # fmt: skip
    profile = [f"--profile={args.cprofile}", "--profiler=cprofile", "--savestats"] if args.cprofile else []
    cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", *profile, "spwm-contact",
           *contact_args]  # fmt: skip
    if args.pin:
        cmd = ["taskset", "-c", "0", *cmd]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = os.path.join(workdir, "contact.log")
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    procs.popen.append(server)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise Failed(f"spwm-contact ended at start: see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            time.sleep(0.1)
    raise Failed(f"spwm-contact did not listen within 20 s: see {log}")


def tunnel_socket_info(port: int) -> list[str]:
    """
    The kernel's view of the tunnel's loopback connection, both ends
    (C{ss -tin}: windows, retransmissions, how long the sender was limited
    by the receiver's window), or nothing when C{ss} cannot tell.
    """
    try:
        out = subprocess.run(
            ["ss", "-tinH", f"( sport = :{port} or dport = :{port} )"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    lines = [" ".join(line.split()) for line in out.splitlines() if line.strip()]
    # each connection is a line of addresses and a line of figures
    return [" ".join(lines[i : i + 2]) for i in range(0, len(lines), 2)]


def loop_status(port: int) -> dict[str, Any]:
    """
    The contact point's own view of its lateness (the C{loop} section of
    its status), or C{{}} when it cannot be read.
    """
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as reply:
            return dict(json.load(reply).get("loop") or {})
    except (OSError, ValueError):
        return {}


def caveats(relay: dict[str, Any], cpus: int) -> str:
    """
    What may have limited a step besides the contact point: its load
    generator near the end of its own core, or other work on the machine
    (the machine's busy time less the two processes'), as text to append
    to the step's line (empty when neither).
    """
    notes = []
    if relay["bench_cpu"] >= 0.9:
        notes.append(f"the load generator used {100 * relay['bench_cpu']:.0f} % of its core: it may have limited this step")
    others = cpus * relay["busy"] - relay["contact_cpu"] - relay["bench_cpu"]
    if others >= 0.1:
        notes.append(f"other work on the machine took {others:.2f} of a core: figures disturbed")
    return "".join(f" [{note}]" for note in notes)


def fmt_ms(seconds: float) -> str:
    return f"{1000 * seconds:.2f}"


def main(procs: Processes, workdir: str, args: argparse.Namespace) -> int:
    try:
        return run(procs, workdir, args)
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(procs: Processes, workdir: str, args: argparse.Namespace) -> int:
    from spwm.testing.certs import TestCA

    raise_nofile()
    tls: list[str] = []
    if not args.plaintext:
        ca = TestCA(os.path.join(workdir, "ca"))
        files = ca.issue(["localhost", "127.0.0.1"], "contact")
        tls = [files.cert, files.key, ca.ca_file]
    if args.pin:
        os.sched_setaffinity(0, {1})
    sip_port = free_port()
    args.status_port = free_port()
    server, port = start_contact(procs, workdir, args, sip_port, tls)
    agent = LeanAgent(port, tls[2] if tls else None, not args.no_seq, sip_port)
    agent.contact_pid = server.pid
    agent.sip_burst = (args.sip_burst, args.sip_every)
    agent.register()
    print(
        f"media through one contact-point worker: {'plaintext' if args.plaintext else 'TLS'},"
        f" {'datagrams with sequence numbers (the default agent)' if not args.no_seq else 'no sequence numbers (--tunnel-connections 1)'},"
        f" {'spwm-contact alone on CPU 0, the benchmark on CPU 1' if args.pin else 'nothing pinned'};"
        f" {os.cpu_count()} CPUs, {cpu_model()}",
        flush=True,
    )
    print("| calls | path | sent fwd / ret | loss fwd / ret | p50 fwd / ret (ms) | p99 fwd / ret (ms) | max fwd / ret (ms) | contact CPU | bench CPU | busy | steal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    spy = None
    failed_step = None
    results = []
    for step, n in enumerate(args.calls):
        t = time.monotonic()
        agent.set_up(n, timeout=30 + n * 0.05)
        setup = time.monotonic() - t
        rows = []
        for path in (["direct"] if not args.skip_direct else []) + ["relay"]:
            if args.profile and path == "relay" and step == len(args.calls) - 1:
                spy = subprocess.Popen(["py-spy", "record", "--nonblocking", "-r", "250", "-f", "raw", "-o", args.profile,
                                        "-p", str(server.pid), "-d", str(int(args.duration))],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                procs.popen.append(spy)
                time.sleep(0.5)
            r = agent.phase(n, path, args.duration)
            rows.append(r)
            f, b = r["forward"], r["return"]
            print(
                f"| {n} | {path} | {f['sent']} / {b['sent']} | {100 * f['loss']:.3f} / {100 * b['loss']:.3f} %"
                f" | {fmt_ms(f['p50'])} / {fmt_ms(b['p50'])} | {fmt_ms(f['p99'])} / {fmt_ms(b['p99'])}"
                f" | {fmt_ms(f['max'])} / {fmt_ms(b['max'])} | {100 * r['contact_cpu']:.0f} %"
                f" | {100 * r['bench_cpu']:.0f} % | {100 * r['busy']:.0f} % | {100 * r['steal']:.1f} % |",
                flush=True,
            )
            if r["side"][0]:
                print(
                    f"  SIP beside the media: {r['side'][0]} more calls set up and hung up at once, in bursts of"
                    f" {agent.sip_burst[0]} every {agent.sip_burst[1]:g} s: {r['side'][1]} answered, {r['side'][2]} ended"
                )
            if f["dups"] or b["dups"]:
                print(f"  duplicates delivered: {f['dups']} forward, {b['dups']} return")
            if path == "relay" and f["loss"] > 0.01:
                for line in tunnel_socket_info(agent.tunnel.getsockname()[1]):
                    print(f"  tunnel socket (ss -tin): {line}")
            if path == "relay":
                loop = loop_status(args.status_port)
                if loop:
                    print(
                        f"  the contact point's loop, its last 10 s window: timers late p50 {loop.get('lag_ms_p50')},"
                        f" p90 {loop.get('lag_ms_p90')}, max {loop.get('lag_ms_max')} ms; windows warned of so far"
                        f" {loop.get('late_windows')}"
                    )
        relay = rows[-1]
        ok = relay["forward"]["loss"] < 0.001 and relay["return"]["loss"] < 0.001
        added = None
        if not args.skip_direct:
            direct = rows[0]
            added = (relay["forward"]["p99"] - direct["forward"]["p99"], relay["return"]["p99"] - direct["return"]["p99"])
            ok = ok and max(added) < 0.005
        results.append((n, relay, added, setup, ok))
        if not ok and failed_step is None:
            failed_step = n
        if not ok and not args.keep_going:
            break
    if spy is not None:
        spy.wait(args.duration + 30)
    hung = agent.hang_up(30)
    print()
    for n, relay, added, setup, ok in results:
        text = f"{n} calls (set up in {setup:.1f} s): loss {100 * relay['forward']['loss']:.3f} / {100 * relay['return']['loss']:.3f} %"
        if added is not None:
            text += f", p99 added {fmt_ms(added[0])} / {fmt_ms(added[1])} ms"
        text += f", the contact point {100 * relay['contact_cpu']:.0f} % of a core"
        text += f", {1e6 * relay['contact_cpu'] / (2 * n / PERIOD):.1f} us per datagram: {'PASS' if ok else 'FAIL'}"
        print(text + caveats(relay, os.cpu_count() or 1))
    print(f"hung up: {hung} of {len(agent.calls)} BYEs answered 200; pings answered {agent.counters['pings']}")
    if args.profile and os.path.exists(args.profile):
        for line in summarize_profile(args.profile, top=25):
            print(line)
    passed = [n for n, *_, ok in results if ok]
    target = "target: loss < 0.1 %" + (", p99 added < 5 ms" if not args.skip_direct else "") + " both ways"
    if failed_step is None:
        print(f"verdict: every step passed, the largest {max(passed)} calls ({target})")
    else:
        print(f"verdict: {failed_step} calls FAILED first; the largest passed: {max(passed) if passed else 'none'} ({target})")
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", default="500", help="calls per step, comma-separated (default 500); stops at the first failed step")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of RTP per step and path (default 8)")
    p.add_argument("--plaintext", action="store_true", help="a plaintext tunnel (default TLS)")
    p.add_argument("--no-seq", action="store_true", help="datagrams without sequence numbers, as from an agent without paths (--tunnel on-demand)")
    p.add_argument("--sip-burst", type=int, default=0, metavar="K",
                   help="during each relay phase, K more calls set up at once every --sip-every seconds, each hung up when answered (SIP beside the media)")  # fmt: skip
    p.add_argument("--sip-every", type=float, default=0.5, metavar="S", help="seconds between two --sip-burst bursts (default 0.5)")
    p.add_argument("--keep-going", action="store_true", help="run every step, not only up to the first that fails")
    p.add_argument("--skip-direct", action="store_true", help="no baseline (and so no 'added' figure)")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin the contact point to CPU 0 and the benchmark to CPU 1")
    p.add_argument("--contact-arg", action="append", default=[], metavar="ARG", help="one more argument for spwm-contact")
    p.add_argument("--media-low", type=int, default=30000, help="the contact point's first media port")
    p.add_argument("--profile", metavar="FILE", help="py-spy the contact point through the last step's relay phase into FILE (raw)")
    p.add_argument("--cprofile", metavar="FILE", help="run the contact point under cProfile; its statistics go to FILE when it stops (for call counts)")
    p.add_argument("--max-time", type=float, default=600.0)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    try:
        args.calls = [int(x) for x in args.calls.split(",") if x.strip()]
    except ValueError:
        p.error(f"--calls: not a list of numbers: {args.calls!r}")
    if not args.calls or min(args.calls) < 1:
        p.error("--calls must name at least one step of 1 call or more")
    if args.sip_burst < 0 or args.sip_every <= 0:
        p.error("--sip-burst must be 0 or more and --sip-every above 0")
    if args.duration <= 0:
        p.error("--duration must be above 0")
    if args.pin and (os.cpu_count() or 1) < 2:
        args.pin = False
    return args


if __name__ == "__main__":
    a = parse(sys.argv[1:])
    sys.exit(run_bounded(lambda procs, workdir: main(procs, workdir, a), a.max_time, a.keep))
