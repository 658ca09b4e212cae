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

_KNOWN = {int(t): t for t in FrameType}
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

    __slots__ = ("_buf", "max_payload", "_failed")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        if not 0 < max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be in 1..{MAX_PAYLOAD}")
        self._buf = bytearray()
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
        buf += data
        frames: list[Frame] = []
        offset = 0
        end = len(buf)
        max_payload = self.max_payload
        try:
            while end - offset >= HEADER_SIZE:
                ftype, flags, channel, length = _UNPACK(buf, offset)
                known = _KNOWN.get(ftype)
                if known is None:
                    raise TunnelProtocolError(
                        ErrorCode.UNKNOWN_FRAME_TYPE, f"unknown frame type {ftype:#04x}"
                    )
                if flags & ~ALLOWED_FLAGS[known]:
                    raise TunnelProtocolError(
                        ErrorCode.PROTOCOL_ERROR,
                        f"reserved flags {flags:#04x} set on {known.name} frame",
                    )
                if length > max_payload:
                    raise TunnelProtocolError(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"{known.name} frame of {length} bytes exceeds {max_payload}",
                    )
                if channel and known in CONNECTION_LEVEL:
                    raise TunnelProtocolError(
                        ErrorCode.PROTOCOL_ERROR,
                        f"{known.name} frame on channel {channel}",
                    )
                start = offset + HEADER_SIZE
                stop = start + length
                if stop > end:
                    break
                frames.append((ftype, flags, channel, bytes(buf[start:stop])))
                offset = stop
        except TunnelProtocolError:
            self._failed = True
            buf.clear()
            raise
        if offset:
            del buf[:offset]
        return frames
