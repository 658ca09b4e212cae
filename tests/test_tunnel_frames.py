"""
Tests for L{spwm.tunnel.frames} and L{spwm.tunnel.decoder}.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spwm.errors import TunnelProtocolError
from spwm.tunnel.decoder import FrameDecoder
from spwm.tunnel.frames import (
    ALLOWED_FLAGS,
    CONNECTION_LEVEL,
    HEADER,
    MAX_PAYLOAD,
    ErrorCode,
    FrameType,
    decode_error,
    encode_error,
    encode_frame,
)


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, int, int, bytes]:
    ftype = draw(st.sampled_from(list(FrameType)))
    allowed = ALLOWED_FLAGS[ftype]
    flags = draw(st.integers(0, allowed)) & allowed
    channel = 0 if ftype in CONNECTION_LEVEL else draw(st.integers(0, 0xFFFFFFFF))
    payload = draw(st.binary(max_size=300))
    return int(ftype), flags, channel, payload


def chunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


class RoundTripTests(SynchronousTestCase):
    """
    Encoding then decoding gives back the same frames.
    """

    @given(st.lists(frames(), max_size=20))
    def test_round_trip(self, items: list[tuple[int, int, int, bytes]]) -> None:
        """
        Every frame type survives encode and decode unchanged.
        """
        wire = b"".join(encode_frame(*f) for f in items)
        self.assertEqual(FrameDecoder().feed(wire), items)

    @given(st.lists(frames(), max_size=10), st.lists(st.integers(0, 10_000), max_size=12))
    def test_arbitrary_chunking(self, items: list[tuple[int, int, int, bytes]], cuts: list[int]) -> None:
        """
        Splitting the byte stream anywhere gives the same frames.
        """
        wire = b"".join(encode_frame(*f) for f in items)
        decoder = FrameDecoder()
        out = []
        for piece in chunk(wire, cuts):
            out += decoder.feed(piece)
        self.assertEqual(out, items)
        self.assertEqual(decoder.buffered, 0)

    def test_byte_by_byte(self) -> None:
        """
        Feeding one byte at a time works, and a partial frame stays buffered.
        """
        wire = encode_frame(FrameType.SIP, 0, 7, b"INVITE") + encode_frame(FrameType.DATAGRAM, 1, 3, b"x" * 5)
        decoder = FrameDecoder()
        out = []
        for i in range(len(wire) - 1):
            out += decoder.feed(wire[i : i + 1])
        self.assertEqual(out, [(FrameType.SIP, 0, 7, b"INVITE")])
        self.assertEqual(decoder.buffered, HEADER.size + 4)
        out += decoder.feed(wire[-1:])
        self.assertEqual(out[-1], (FrameType.DATAGRAM, 1, 3, b"xxxxx"))

    def test_error_payload(self) -> None:
        """
        ERROR frames carry a code and a reason.
        """
        frame = encode_error(ErrorCode.FRAME_TOO_LARGE, "too big")
        [(ftype, _, _, payload)] = FrameDecoder().feed(frame)
        self.assertEqual(ftype, FrameType.ERROR)
        self.assertEqual(decode_error(payload), (ErrorCode.FRAME_TOO_LARGE, "too big"))
        self.assertRaises(ValueError, decode_error, b"\x00")

    def test_encode_refuses_oversize(self) -> None:
        """
        A payload larger than the wire format allows is a caller error.
        """
        self.assertRaises(ValueError, encode_frame, FrameType.SIP, 0, 1, b"x" * (MAX_PAYLOAD + 1))


class BadInputTests(SynchronousTestCase):
    """
    The decoder refuses bad frames with its own error, and only that.
    """

    def assertRefused(self, wire: bytes, code: ErrorCode, max_payload: int = MAX_PAYLOAD) -> None:
        decoder = FrameDecoder(max_payload)
        with self.assertRaises(TunnelProtocolError) as cm:
            decoder.feed(wire)
        self.assertEqual(cm.exception.code, code)
        # A failed decoder stays failed.
        self.assertRaises(TunnelProtocolError, decoder.feed, b"")

    def test_unknown_type(self) -> None:
        """
        An unknown frame type is refused.
        """
        self.assertRefused(HEADER.pack(0x7F, 0, 0, 0), ErrorCode.UNKNOWN_FRAME_TYPE)

    def test_reserved_flags(self) -> None:
        """
        Flags that the frame type does not define are refused.
        """
        self.assertRefused(HEADER.pack(FrameType.SIP, 0x40, 1, 0), ErrorCode.PROTOCOL_ERROR)

    def test_too_large_at_header_time(self) -> None:
        """
        A length over the limit is refused on the header, before the payload arrives.
        """
        self.assertRefused(HEADER.pack(FrameType.SIP, 0, 1, 2000), ErrorCode.FRAME_TOO_LARGE, max_payload=1000)

    def test_connection_level_on_channel(self) -> None:
        """
        A PING on a channel is refused.
        """
        self.assertRefused(HEADER.pack(FrameType.PING, 0, 5, 0), ErrorCode.PROTOCOL_ERROR)

    def test_bad_limit(self) -> None:
        """
        A limit outside the wire format's range is a caller error.
        """
        self.assertRaises(ValueError, FrameDecoder, 0)
        self.assertRaises(ValueError, FrameDecoder, MAX_PAYLOAD + 1)

    @given(st.binary(max_size=2000), st.integers(1, MAX_PAYLOAD))
    def test_garbage(self, data: bytes, max_payload: int) -> None:
        """
        Random bytes give frames or L{TunnelProtocolError}, nothing else.
        """
        try:
            FrameDecoder(max_payload).feed(data)
        except TunnelProtocolError:
            pass
