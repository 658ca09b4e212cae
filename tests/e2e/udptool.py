"""
Tiny UDP tools the test bed runs inside namespaces (no Twisted, no reactor).

  udptool.py echo ADDRESS PORT
      answer every datagram with b"echo:" + datagram; print one line per
      datagram ("from HOST:PORT HEX") to stdout.
  udptool.py send SOURCE HOST:PORT HEX TIMEOUT
      from SOURCE (any port) send the bytes HEX once a second until an
      answer arrives or TIMEOUT seconds pass; print "answer HEX" and exit 0,
      or exit 1 on timeout.
"""

from __future__ import annotations

import socket
import sys
import time


def echo(address: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    while True:
        data, peer = sock.recvfrom(65535)
        print(f"from {peer[0]}:{peer[1]} {data.hex()}", flush=True)
        sock.sendto(b"echo:" + data, peer)


def send(source: str, destination: str, payload: bytes, timeout: float) -> int:
    host, _, port = destination.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.sendto(payload, (host, int(port)))
        print(f"sent to {destination} {payload.hex()}", flush=True)
        sock.settimeout(max(0.01, min(1.0, deadline - time.monotonic())))
        try:
            data, peer = sock.recvfrom(65535)
        except socket.timeout:
            continue
        print(f"answer from {peer[0]}:{peer[1]} {data.hex()}", flush=True)
        return 0
    print("no answer", flush=True)
    return 1


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "send":
        sys.exit(send(sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4]), float(sys.argv[5])))
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}")
