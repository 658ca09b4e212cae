"""
Fuzz the SDP parser and rewriter (L{spwm.sdp.parse_sdp},
L{spwm.sdp.rewrite_sdp}, L{spwm.sdp.find_sdp}).

The contract: for any bytes, C{parse_sdp} returns a description or raises
L{SdpError}; a body that parses can be rewritten to the relay's address
and ports, and the result parses again with the same number of m= lines,
the new ports and the new address on every live stream.

    python fuzz/fuzz_sdp.py -max_total_time=60
"""

from __future__ import annotations

from _common import files, run

import atheris

with atheris.instrument_imports():
    from spwm.sdp import SdpError, find_sdp, parse_sdp, rewrite_sdp

CONTENT_TYPES = [
    "application/sdp",
    "multipart/mixed;boundary=unique-boundary-1",
    'multipart/alternative; boundary="b"',
    "text/plain",
]


def test(data: bytes) -> None:
    if not data:
        return
    mode = data[0] % 8
    address = "203.0.113.10" if mode & 1 else "2001:db8::10"
    body = data[1:]
    if mode >= 6:
        try:
            found = find_sdp(CONTENT_TYPES[mode & 3], body)
        except SdpError:
            return
        if found is None:
            return
        body = found
    try:
        parsed = parse_sdp(body)
    except SdpError:
        return
    ports: list = []
    for index, media in enumerate(parsed.media):
        if mode & 2 and index % 2:
            ports.append(None)
        elif mode & 4 and index == 0:
            ports.append((0, None))
        else:
            ports.append((40000 + 2 * index, None if index % 3 == 2 else 40001 + 2 * index))
    rewritten = rewrite_sdp(body, address, ports)
    again = parse_sdp(rewritten)
    assert len(again.media) == len(parsed.media), (body, rewritten)
    for media, before, change in zip(again.media, parsed.media, ports):
        if change is None or before.port == 0:
            assert media.port == before.port, (body, rewritten)
            continue
        assert media.port == change[0], (body, rewritten, change)
        if change[0] and media.connection is not None and media.connection.address not in ("0.0.0.0", "::"):
            assert media.connection.address == address, (body, rewritten)


def seeds() -> list[tuple[str, bytes]]:
    out = []
    for name, data in files("sdp/*.sdp", "sdp/*"):
        for mode in range(6):
            out.append((f"{name}-{mode}", bytes([mode]) + data))
    return out


if __name__ == "__main__":
    run("sdp", test, seeds())
