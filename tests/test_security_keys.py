"""
Tests for L{spwm.security.keys} and L{spwm.security.resume.RegistrationWatcher}.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spwm.security.keys import (
    DigestCredentials,
    check_proof,
    derive_user_key,
    parse_digest,
    resumption_proof,
)
from spwm.security.resume import RegistrationWatcher

AUTH = (
    'Digest username="alice", realm="example.test", nonce="abc\\"def", uri="sip:example.test", '
    'response="6629fae49393a05397450978507c4ef1", algorithm=SHA-256, cnonce="0a4f113b", nc=00000001, qop=auth'
)


class DigestTests(SynchronousTestCase):
    """
    Reading digest credentials.
    """

    def test_parse(self) -> None:
        """
        Quoted and token values, escapes, any order; MD5 or SHA-256 alike.
        """
        c = parse_digest(AUTH)
        self.assertEqual(
            c, DigestCredentials("alice", "example.test", 'abc"def', "0a4f113b", "00000001", "6629fae49393a05397450978507c4ef1")
        )
        self.assertEqual(c.user_id, "alice@example.test")

    def test_without_qop(self) -> None:
        """
        RFC 2069-style credentials have no cnonce or nc: they are empty.
        """
        c = parse_digest('Digest username="bob",realm="r",nonce="n",uri="sip:r",response="x"')
        self.assertEqual((c.cnonce, c.nc), ("", ""))

    def test_not_digest(self) -> None:
        """
        Other schemes and incomplete credentials give nothing.
        """
        self.assertIsNone(parse_digest('Basic YWxpY2U6c2VjcmV0'))
        self.assertIsNone(parse_digest('Digest username="alice", realm="r"'))
        self.assertIsNone(parse_digest('Digest username="alice" realm'))

    @given(st.text(max_size=200))
    def test_garbage(self, text: str) -> None:
        """
        Any text gives credentials or None, never an exception.
        """
        parse_digest(text)
        parse_digest("Digest " + text)


class KeyTests(SynchronousTestCase):
    """
    The key and the resumption proof.
    """

    def setUp(self) -> None:
        self.credentials = parse_digest(AUTH)

    def test_same_inputs_same_key(self) -> None:
        """
        Both halves, given the same credentials and exported material, get
        the same 32-byte key; different material or credentials give another.
        """
        a = derive_user_key(self.credentials, b"x" * 32)
        self.assertEqual(a, derive_user_key(self.credentials, b"x" * 32))
        self.assertEqual(len(a), 32)
        self.assertNotEqual(a, derive_user_key(self.credentials, b"y" * 32))
        other = DigestCredentials("alice", "example.test", "other-nonce", "0a4f113b", "00000001", self.credentials.response)
        self.assertNotEqual(a, derive_user_key(other, b"x" * 32))
        self.assertNotEqual(derive_user_key(self.credentials, None), a)

    def test_proof(self) -> None:
        """
        A proof checks for its key, challenge and session only.
        """
        key = derive_user_key(self.credentials, b"x" * 32)
        proof = resumption_proof(key, b"challenge", "s-1")
        self.assertTrue(check_proof(key, b"challenge", "s-1", proof))
        self.assertFalse(check_proof(key, b"another", "s-1", proof))
        self.assertFalse(check_proof(key, b"challenge", "s-2", proof))
        self.assertFalse(check_proof(b"\0" * 32, b"challenge", "s-1", proof))
        self.assertFalse(check_proof(key, b"challenge", "s-1", 42))
        # Text a forger chose: non-ASCII, surrogates: just wrong, no exception.
        self.assertFalse(check_proof(key, b"challenge", "s-1", "\u00e9" * 64))
        self.assertFalse(check_proof(key, b"challenge", "s-1", "\udcff"))


class WatcherTests(SynchronousTestCase):
    """
    Matching REGISTER requests with their 2xx.
    """

    REGISTER = (
        "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bK1\r\n"
        "From: <sip:alice@example.test>;tag=1\r\nTo: <sip:alice@example.test>\r\nCall-ID: reg-1\r\n"
        "CSeq: {cseq} REGISTER\r\nContact: <sip:alice@192.0.2.5>\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    OK = (
        "SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bK1\r\n"
        "From: <sip:alice@example.test>;tag=1\r\nTo: <sip:alice@example.test>;tag=2\r\nCall-ID: reg-1\r\n"
        "CSeq: {cseq} REGISTER\r\nContent-Length: 0\r\n\r\n"
    )

    def test_2xx_gives_the_credentials_of_its_request(self) -> None:
        """
        Only a 2xx to the REGISTER that carried the credentials gives them.
        """
        watcher = RegistrationWatcher()
        watcher.request(self.REGISTER.format(cseq=1, auth="").encode())
        watcher.request(self.REGISTER.format(cseq=2, auth=f"Authorization: {AUTH}\r\n").encode())
        self.assertIsNone(watcher.response(self.OK.format(status="401 Unauthorized", cseq=2).encode()))
        self.assertIsNone(watcher.response(self.OK.format(status="200 OK", cseq=1).encode()))
        self.assertEqual(watcher.response(self.OK.format(status="200 OK", cseq=2).encode()), parse_digest(AUTH))
        self.assertIsNone(watcher.response(self.OK.format(status="200 OK", cseq=2).encode()))

    def test_garbage_is_ignored(self) -> None:
        """
        Malformed messages are ignored.
        """
        watcher = RegistrationWatcher()
        watcher.request(b"REGISTER garbage")
        self.assertIsNone(watcher.response(b"SIP/2.0 200 REGISTER garbage"))
