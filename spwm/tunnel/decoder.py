# -*- test-case-name: tests.test_tunnel_frames -*-
"""
The frame decoder: bytes in, complete frames out, limits checked at header time.
"""

from __future__ import annotations

from spwm.errors import TunnelProtocolError
from spwm.tunnel.frames import (
    ALLOWED_FLAGS,
    CONNECTION_LEVEL,
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    ErrorCode,
    FrameType,
)

#: Per frame type: the type, the flags it does not define, and whether it
#: is connection-level (channel 0 only); one lookup per frame.
_RULES = {int(t): (t, ~ALLOWED_FLAGS[t] & 0xFF, t in CONNECTION_LEVEL) for t in FrameType}
_UNPACK = HEADER.unpack_from

#: A decoded frame: type, flags, channel and payload.
Frame = tuple[int, int, int, bytes]


class FrameDecoder:
    """
    Split a byte stream into frames.

    Feed it any chunks with L{feed}; it returns every complete frame and keeps
    the rest.  After it has raised, it is broken and refuses more input.

    @ivar max_payload: the largest payload accepted (at most L{MAX_PAYLOAD}).
    """

    __slots__ = ("_buf", "_need", "max_payload", "_failed")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        if not 0 < max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be in 1..{MAX_PAYLOAD}")
        self._buf = bytearray()
        # the size the waiting start of a frame must reach to be parsed
        self._need = 0
        self.max_payload = max_payload
        self._failed = False

    @property
    def buffered(self) -> int:
        """
        How many bytes wait for the rest of their frame.
        """
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """
        Add bytes and return the frames they complete, in order.

        @raise TunnelProtocolError: for an unknown frame type, flags that the
            type does not define, a connection-level frame on a channel, or a
            payload larger than the limit.  The check happens on the header,
            before the payload is buffered.
        """
        if self._failed:
            raise TunnelProtocolError(ErrorCode.PROTOCOL_ERROR, "decoder already failed")
        buf = self._buf
        if buf:
            # the start of a frame waits: parse it with the new bytes once
            # they complete it (a frame trickling in is not copied per read)
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        # Parsed from the bytes object itself, so that each payload is one
        # slice (one copy), not a bytearray slice turned into bytes.
        frames: list[Frame] = []
        offset = 0
        end = len(data)
        max_payload = self.max_payload
        try:
            while end - offset >= HEADER_SIZE:
                ftype, flags, channel, length = _UNPACK(data, offset)
                rule = _RULES.get(ftype)
                if rule is None:
                    raise TunnelProtocolError(
                        ErrorCode.UNKNOWN_FRAME_TYPE, f"unknown frame type {ftype:#04x}"
                    )
                known, forbidden, connection_level = rule
                if flags & forbidden:
                    raise TunnelProtocolError(
                        ErrorCode.PROTOCOL_ERROR,
                        f"reserved flags {flags:#04x} set on {known.name} frame",
                    )
                if length > max_payload:
                    raise TunnelProtocolError(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"{known.name} frame of {length} bytes exceeds {max_payload}",
                    )
                if channel and connection_level:
                    raise TunnelProtocolError(
                        ErrorCode.PROTOCOL_ERROR,
                        f"{known.name} frame on channel {channel}",
                    )
                start = offset + HEADER_SIZE
                stop = start + length
                if stop > end:
                    self._need = stop - offset
                    break
                frames.append((ftype, flags, channel, data[start:stop]))
                offset = stop
        except TunnelProtocolError:
            self._failed = True
            raise
        if offset < end:
            if end - offset < HEADER_SIZE:
                self._need = HEADER_SIZE
            buf += memoryview(data)[offset:]
        return frames
