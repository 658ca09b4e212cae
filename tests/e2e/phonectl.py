"""
Send one command to baresip's C{ctrl_tcp} module (netstring-framed JSON)
and print its response; run inside the phone's namespace by the interop
tests (no Twisted; bounded).

  phonectl.py PORT COMMAND [PARAMS]
"""

from __future__ import annotations

import json
import socket
import sys
import time


def command(port: int, name: str, params: str | None) -> dict:
    message = {"command": name, "token": "t"}
    if params:
        message["params"] = params
    body = json.dumps(message).encode()
    with socket.create_connection(("127.0.0.1", port), 3.0) as sock:
        sock.sendall(str(len(body)).encode() + b":" + body + b",")
        buffer = b""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buffer += chunk
            # netstrings: LEN:JSON,  (events may come before the response)
            while b":" in buffer:
                length, _, rest = buffer.partition(b":")
                if not length.isdigit() or len(rest) < int(length) + 1:
                    break
                item = json.loads(rest[: int(length)])
                buffer = rest[int(length) + 1 :]
                if item.get("response"):
                    return item
    return {"response": True, "ok": False, "data": "no response from baresip"}


if __name__ == "__main__":
    reply = command(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    print(json.dumps(reply))
    sys.exit(0 if reply.get("ok") else 1)
