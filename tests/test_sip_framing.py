"""
Tests for L{spwm.sip.framing.SipStreamFramer}.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip import KeepAlive, SipParseError, SipStreamFramer, parse_message


def _msg(n: int, body: bytes = b"") -> bytes:
    return (
        b"OPTIONS sip:b@h SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP h;branch=z9hG4bK" + str(n).encode() + b"\r\n"
        b"From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c" + str(n).encode() + b"\r\n"
        b"CSeq: 1 OPTIONS\r\nl: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


A = _msg(1, b"hello\r\n\r\nworld")
B = _msg(2)
STREAM = b"\r\n\r\n" + A + b"\r\n" + B + b"\r\n\r\n" + A
EXPECTED = [KeepAlive(), A, B, KeepAlive(), A]


def _feed(framer: SipStreamFramer, chunks) -> list:
    out = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


class FramerTests(SynchronousTestCase):
    """
    Framing by Content-Length, keepalives and limits.
    """

    def test_whole(self) -> None:
        """
        A stream of messages, a ping, a pong and another ping gives messages
        and KeepAlive events in order; the pong is dropped.
        """
        self.assertEqual(_feed(SipStreamFramer(), [STREAM]), EXPECTED)

    def test_byte_by_byte(self) -> None:
        """
        Byte-by-byte feeding gives the same events; each message parses.
        """
        framer = SipStreamFramer()
        out = _feed(framer, [STREAM[i : i + 1] for i in range(len(STREAM))])
        self.assertEqual(out, EXPECTED)
        self.assertEqual(framer.buffered, 0)
        self.assertEqual(parse_message(out[1]).body, b"hello\r\n\r\nworld")

    def test_partial_kept(self) -> None:
        """
        An incomplete message stays buffered.
        """
        framer = SipStreamFramer()
        self.assertEqual(framer.feed(A + B[:10]), [A])
        self.assertEqual(framer.buffered, 10)
        self.assertEqual(framer.feed(B[10:]), [B])

    def test_lone_crlf_waits(self) -> None:
        """
        A CRLF alone could start a ping: it waits for the next bytes.
        """
        framer = SipStreamFramer()
        self.assertEqual(framer.feed(b"\r\n"), [])
        self.assertEqual(framer.feed(b"\r\n"), [KeepAlive()])
        self.assertEqual(framer.feed(b"\r\n"), [])
        self.assertEqual(framer.feed(B), [B])

    def test_missing_content_length(self) -> None:
        """
        A message without Content-Length is fatal (400) and the framer
        refuses more input.
        """
        framer = SipStreamFramer()
        data = B.replace(b"l: 0\r\n", b"")
        with self.assertRaises(SipParseError) as caught:
            framer.feed(data)
        self.assertEqual(caught.exception.status, 400)
        self.assertIn("Content-Length", caught.exception.reason)
        self.assertRaises(SipParseError, framer.feed, B)

    def test_bad_content_length(self) -> None:
        """
        Negative, non-numeric or conflicting Content-Length is fatal (400).
        """
        for bad in [b"l: -1\r\n", b"l: five\r\n", b"l: 0\r\nContent-Length: 3\r\n"]:
            framer = SipStreamFramer()
            with self.assertRaises(SipParseError) as caught:
                framer.feed(B.replace(b"l: 0\r\n", bad))
            self.assertEqual(caught.exception.status, 400)

    def test_binary_start(self) -> None:
        """
        Bytes that cannot start a SIP message (a STUN Binding request, TLS)
        are fatal (400) at once, not buffered up to max_size; a CR that may
        still become a CRLF waits, a stray LF is left to the parser.
        """
        stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)
        for data in [stun, b"\r\n\r\n" + stun, b"\x16\x03\x01\x02\x00", b"\r\n\rX"]:
            with self.assertRaises(SipParseError) as caught:
                SipStreamFramer().feed(data)
            self.assertEqual(caught.exception.status, 400)
            self.assertIn("not a SIP message", caught.exception.reason)
        framer = SipStreamFramer()
        self.assertEqual(framer.feed(b"\r\n\r\n\r"), [KeepAlive()])
        self.assertEqual(framer.feed(b"\n" + B), [B])
        self.assertEqual(SipStreamFramer().feed(b"\n" + B), [b"\n" + B])

    def test_size_limits(self) -> None:
        """
        A header section or message over max_size is fatal (413) naming the
        limit, before the body is buffered.
        """
        framer = SipStreamFramer(max_size=100)
        with self.assertRaises(SipParseError) as caught:
            framer.feed(b"x" * 101)
        self.assertEqual(caught.exception.status, 413)
        self.assertIn("100", caught.exception.reason)
        framer = SipStreamFramer(max_size=len(B) + 5)
        with self.assertRaises(SipParseError) as caught:
            framer.feed(B.replace(b"l: 0", b"l: 9"))
        self.assertEqual(caught.exception.status, 413)
        self.assertEqual(SipStreamFramer(max_size=len(B)).feed(B), [B])

    @given(st.lists(st.integers(0, len(STREAM)), max_size=20))
    def test_any_split(self, cuts: list[int]) -> None:
        """
        Any split of the stream gives the same events.
        """
        cuts = sorted(set(cuts))
        chunks = [STREAM[i:j] for i, j in zip([0] + cuts, cuts + [len(STREAM)])]
        self.assertEqual(_feed(SipStreamFramer(), chunks), EXPECTED)

    @given(st.lists(st.binary(max_size=50), max_size=10))
    def test_garbage(self, chunks: list[bytes]) -> None:
        """
        Arbitrary bytes give messages, keepalives or SipParseError, nothing
        else; every message framed has exactly its Content-Length body.
        """
        framer = SipStreamFramer(max_size=200)
        try:
            out = _feed(framer, chunks)
        except SipParseError:
            return
        for item in out:
            self.assertIsInstance(item, (bytes, KeepAlive))
            if isinstance(item, bytes):
                try:
                    parse_message(item)
                except SipParseError:
                    pass
