"""
Fuzz the SIP parser (L{spwm.sip.message.parse_message}) and the stream
framer (L{spwm.sip.framing.SipStreamFramer}).

The contract: for any bytes, C{parse_message} returns a message or raises
L{SipParseError}, nothing else; a parsed message serialises; the framer,
fed the bytes in any chunks, returns messages and keep-alives or raises
L{SipParseError}, and what it returns does not exceed its limit.

    python fuzz/fuzz_sip.py -max_total_time=60
"""

from __future__ import annotations

from _common import files, run

import atheris

with atheris.instrument_imports():
    from spwm.sip.errors import SipParseError
    from spwm.sip.framing import KeepAlive, SipStreamFramer
    from spwm.sip.message import parse_message


def test(data: bytes) -> None:
    if not data:
        return
    mode = data[0] % 4
    body = data[1:]
    if mode < 2:
        try:
            message = parse_message(body, max_size=65535 if mode == 0 else 512)
        except SipParseError:
            return
        message.to_bytes()
        return
    framer = SipStreamFramer(max_size=4096 if mode == 2 else 65535)
    # split the input at points derived from the input itself
    chunk = 1 + (len(body) % 97 if mode == 3 else len(body))
    try:
        for start in range(0, len(body), chunk):
            for item in framer.feed(body[start : start + chunk]):
                if isinstance(item, KeepAlive):
                    continue
                assert isinstance(item, bytes), item
                assert len(item) <= framer.max_size, (len(item), framer.max_size)
                try:
                    parse_message(item, max_size=framer.max_size)
                except SipParseError:
                    pass
    except SipParseError:
        return


def seeds() -> list[tuple[str, bytes]]:
    out = []
    for name, data in files("rfc4475/*.dat", "rfc4475/wire/*", "rfc5118/*.dat", "rfc5118/wire/*"):
        for mode in range(4):
            out.append((f"{name}-{mode}", bytes([mode]) + data))
    return out


if __name__ == "__main__":
    run("sip", test, seeds())
