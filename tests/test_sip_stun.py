"""
Tests for L{spwm.sip.stun}: the limited STUN server of a SIP UDP port.
"""

from __future__ import annotations

import binascii
import ipaddress
import struct

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.stun import MAX_REQUEST, AnswerBudget, Ignored, binding_answer, is_stun

TID = bytes(range(1, 13))
COOKIE = b"\x21\x12\xa4\x42"


def stun(mtype: int = 1, attrs: bytes = b"", tid: bytes = TID) -> bytes:
    """
    A STUN message of type C{mtype} with C{attrs} (already padded).
    """
    return struct.pack("!HH", mtype, len(attrs)) + COOKIE + tid + attrs


def attr(atype: int, value: bytes) -> bytes:
    return struct.pack("!HH", atype, len(value)) + value + b"\0" * (-len(value) % 4)


def with_fingerprint(message: bytes) -> bytes:
    """
    C{message} with a FINGERPRINT (RFC 8489 14.7) added, its length fixed.
    """
    head = message[:2] + struct.pack("!H", len(message) - 20 + 8) + message[4:]
    crc = binascii.crc32(head) ^ 0x5354554E
    return head + struct.pack("!HHI", 0x8028, 4, crc)


def attributes(message: bytes) -> dict[int, bytes]:
    out = {}
    pos = 20
    while pos < len(message):
        atype, alen = struct.unpack_from("!HH", message, pos)
        out[atype] = message[pos + 4 : pos + 4 + alen]
        pos += 4 + alen + (-alen % 4)
    return out


def mapped(value: bytes, tid: bytes = TID) -> tuple[str, int]:
    """
    Decode an XOR-MAPPED-ADDRESS value (RFC 8489 14.2), independently of
    the code under test.
    """
    family, xport = value[1], struct.unpack("!H", value[2:4])[0]
    key = COOKIE + (tid if family == 2 else b"")
    raw = bytes(a ^ k for a, k in zip(value[4:], key))
    return str(ipaddress.ip_address(raw)), xport ^ 0x2112


class RecogniseTests(SynchronousTestCase):
    """
    L{is_stun}: what is taken for STUN.
    """

    def test_binding_request(self) -> None:
        """
        A Binding request, with or without attributes, is STUN; so is any
        other well-framed STUN message.
        """
        self.assertTrue(is_stun(stun()))
        self.assertTrue(is_stun(stun(attrs=attr(0x8022, b"phone"))))
        self.assertTrue(is_stun(stun(0x0111)))

    def test_not_stun(self) -> None:
        """
        SIP, keepalives, a wrong cookie, a length that is not the rest of
        the datagram or not a multiple of 4, the first two bits set: not STUN.
        """
        for data in [
            b"OPTIONS sip:a@b SIP/2.0\r\n\r\n",
            b"\r\n\r\n",
            b"\r\n\r\n" + b"\0" * 16,
            stun()[:19],
            stun()[:4] + b"\x21\x12\xa4\x43" + stun()[8:],
            stun() + b"\0\0\0\0",
            stun(attrs=b"\0" * 4)[:-2],
            b"\x00\x01\x00\x02" + COOKIE + TID + b"\0\0",
            b"\x40" + stun()[1:],
        ]:
            self.assertFalse(is_stun(data), data)

    @given(st.binary(max_size=64))
    def test_text_is_not_stun(self, data: bytes) -> None:
        """
        Bytes that start with a SIP method or a CR LF (what a SIP datagram
        starts with) are never taken for STUN.
        """
        self.assertFalse(is_stun(b"INVITE " + data))
        self.assertFalse(is_stun(b"\r\n" + data[:2] + b"INVI" + data))

    @given(st.binary(max_size=600), st.sampled_from([("192.0.2.1", 5060), ("2001:db8::1", 1), ("::ffff:192.0.2.9", 65535), ("x", 1)]))
    def test_any_bytes(self, data: bytes, source: tuple[str, int]) -> None:
        """
        Any bytes give an answer or L{Ignored}, never an exception; an
        answer only to a STUN Binding request, at most 52 bytes, with the
        request's transaction id.
        """
        out = binding_answer(data, source)
        if isinstance(out, Ignored):
            return
        self.assertTrue(is_stun(data))
        self.assertEqual(data[:2], b"\x00\x01")
        self.assertLessEqual(len(out), 52)
        self.assertEqual(out[4:20], data[4:20])

    @given(st.integers(0, 0x3FFF), st.binary(max_size=600))
    def test_any_framed(self, mtype: int, body: bytes) -> None:
        """
        A well-framed STUN message with any type and any attribute bytes
        gives an answer or L{Ignored}, never an exception.
        """
        data = stun(mtype, body + b"\0" * (-len(body) % 4))
        out = binding_answer(data, ("192.0.2.1", 5060))
        if not isinstance(out, Ignored):
            self.assertEqual(mtype, 1)
            self.assertLessEqual(len(out), 52)


class AnswerTests(SynchronousTestCase):
    """
    L{binding_answer}: the Binding success response.
    """

    def test_ipv4(self) -> None:
        """
        The answer is a Binding success response with the request's
        transaction id and the source in XOR-MAPPED-ADDRESS, nothing else.
        """
        out = binding_answer(stun(), ("192.0.2.10", 5062))
        assert isinstance(out, bytes)
        self.assertEqual(out[:2], b"\x01\x01")
        self.assertEqual(out[4:20], COOKIE + TID)
        self.assertTrue(is_stun(out))
        attrs = attributes(out)
        self.assertEqual(list(attrs), [0x0020])
        self.assertEqual(mapped(attrs[0x0020]), ("192.0.2.10", 5062))
        self.assertEqual(len(out), 32)

    def test_ipv6(self) -> None:
        """
        An IPv6 source is XORed with the cookie and the transaction id; an
        IPv4-mapped one is answered as IPv4; a scope is left out.
        """
        out = binding_answer(stun(), ("2001:db8::10", 40000))
        assert isinstance(out, bytes)
        self.assertEqual(mapped(attributes(out)[0x0020]), ("2001:db8::10", 40000))
        self.assertEqual(len(out), 44)
        out = binding_answer(stun(), ("::ffff:192.0.2.7", 7))
        assert isinstance(out, bytes)
        self.assertEqual(mapped(attributes(out)[0x0020]), ("192.0.2.7", 7))
        out = binding_answer(stun(), ("fe80::1%eth0", 9))
        assert isinstance(out, bytes)
        self.assertEqual(mapped(attributes(out)[0x0020]), ("fe80::1", 9))

    def test_fingerprint(self) -> None:
        """
        A request with a correct FINGERPRINT gets one, correct and last; a
        wrong one, or one not last, gets no answer.
        """
        request = with_fingerprint(stun(attrs=attr(0x8022, b"phone 1.0")))
        out = binding_answer(request, ("192.0.2.10", 5062))
        assert isinstance(out, bytes)
        self.assertEqual(list(attributes(out)), [0x0020, 0x8028])
        self.assertEqual(with_fingerprint(out[:-8]), out)
        bad = request[:-1] + bytes([request[-1] ^ 1])
        self.assertEqual(binding_answer(bad, ("192.0.2.10", 5062)), Ignored("wrong STUN FINGERPRINT"))
        after = stun(attrs=with_fingerprint(stun())[20:] + attr(0x8022, b"x"))
        self.assertIsInstance(binding_answer(after, ("192.0.2.10", 5062)), Ignored)

    def test_ignored(self) -> None:
        """
        Other STUN messages get no answer: responses, indications, a
        request with a comprehension-required attribute (USERNAME,
        MESSAGE-INTEGRITY: ICE checks), attributes cut short, a request
        over 548 bytes, a source that is not an IP address.
        """
        src = ("192.0.2.10", 5062)
        for message, reason in [
            (stun(0x0101), "STUN message type 0x0101, not a Binding request"),
            (stun(0x0011), "STUN message type 0x0011, not a Binding request"),
            (stun(attrs=attr(0x0006, b"user")), "STUN Binding request with attribute 0x0006, not answered here"),
            (stun(attrs=b"\x80\x22\x00\x09abcd"), "STUN attribute cut short"),
            (stun(attrs=attr(0x8022, b"x" * (MAX_REQUEST - 23))), f"STUN Binding request of {MAX_REQUEST + 4} bytes, over {MAX_REQUEST}"),
            (b"SIP/2.0 200 OK\r\n", "not a STUN message"),
        ]:
            self.assertEqual(binding_answer(message, src), Ignored(reason))
        self.assertIsInstance(binding_answer(stun(), ("phone.example", 5062)), Ignored)


class BudgetTests(SynchronousTestCase):
    """
    L{AnswerBudget}: the rate of answers.
    """

    def test_bucket(self) -> None:
        """
        A burst takes the bucket; then tokens come back at C{rate} a
        second, never more than C{burst}; refusals are counted.
        """
        budget = AnswerBudget(rate=2.0, burst=3)
        self.assertEqual([budget.take(10.0) for _ in range(4)], [True, True, True, False])
        self.assertEqual(budget.refused, 1)
        self.assertTrue(budget.take(10.5))
        self.assertFalse(budget.take(10.5))
        self.assertEqual([budget.take(100.0) for _ in range(4)], [True, True, True, False])
        self.assertFalse(budget.take(99.0))
        self.assertEqual(budget.refused, 4)
