"""
Tests of C{examples/}: the demo end to end (as a subprocess, on loopback,
with a short call), the test phone's command line, and its pure parts
(C{spwm.testing.phone}: SIP and SDP parsing, RTP packets and counting)
without sockets.
"""

from __future__ import annotations

import ast
import os
import struct
import sys

from hypothesis import given, settings, strategies as st
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spwm.testing import phone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")



INVITE = (
    b"INVITE sip:bob@demo.spwm.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa, SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKb\r\n"
    b"v: SIP/2.0/UDP 127.0.0.1:5064;branch=z9hG4bKc\r\n"
    b"Record-Route: <sip:x@127.0.0.1;lr>, <sip:y@127.0.0.1;lr>\r\n"
    b'f: "Alice, A." <sip:alice@demo.spwm.test>;tag=abc\r\n'
    b"t: <sip:bob@demo.spwm.test>\r\n"
    b"i: call-1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Subject: a folded\r\n  header\r\n"
    b"c: application/sdp\r\n"
    b"l: 12\r\n"
    b"\r\n"
    b"v=0\r\no=x 1 1\r\ntrailing garbage"
)


class DemoTests(TestCase):
    """
    C{python examples/demo.py} as a user runs it, with a one-second call.
    """

    timeout = 90

    def test_demo_succeeds(self):
        """
        The demo exits 0 and prints its summary: SIP counts per half, RTP
        per phone with latency, tunnel and relay counters, every check OK.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        d = getProcessOutputAndValue(
            sys.executable, [os.path.join(EXAMPLES, "demo.py"), "--seconds", "1", "--timeout", "45"], env=env, path=ROOT
        )

        def check(result):
            out, err, code = result
            text = out.decode("utf-8", "replace")
            self.assertEqual(code, 0, f"demo failed:\n{text}\n{err.decode('utf-8', 'replace')}")
            self.assertIn("DEMO OK", text)
            for heading in ("SIP messages that crossed each half", "RTP per phone", "Tunnels, just before the BYE",
                            "Media relay sockets of the call", "Media manager of each half"):
                self.assertIn(heading, text)
            self.assertNotIn("FAILED", text)
            self.assertIn("[ok] RTP alice -> bob", text)
            self.assertIn("[ok] RTP bob -> alice", text)
            self.assertIn("[ok] BYE answered", text)
            rtp_rows = [line.split() for line in text.splitlines() if line.startswith(("alice ", "bob "))]
            self.assertEqual(len(rtp_rows), 2, text)
            for row in rtp_rows:
                sent, received = int(row[1]), int(row[2])
                self.assertGreaterEqual(sent, 40)
                self.assertGreaterEqual(received, sent * 0.99 - 1)

        return d.addCallback(check)

    def test_demo_one_agent(self):
        """
        A call between two phones behind the same agent (it hairpins through
        one tunnel) carries audio both ways, with no packet coming back to
        its sender.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        d = getProcessOutputAndValue(
            sys.executable, [os.path.join(EXAMPLES, "demo.py"), "--one-agent", "--seconds", "1", "--timeout", "45"],
            env=env, path=ROOT,
        )

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, out.decode("utf-8", "replace"))

        return d.addCallback(check)


    def test_demo_global_timeout(self):
        """
        A global timeout shorter than the call fails the demo with exit 1 and
        a message that names the step it was stuck at.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        d = getProcessOutputAndValue(
            sys.executable, [os.path.join(EXAMPLES, "demo.py"), "--seconds", "2", "--timeout", "2.01"], env=env, path=ROOT
        )

        def check(result):
            out, err, code = result
            text = out.decode("utf-8", "replace")
            self.assertEqual(code, 1, text)
            self.assertIn("DEMO FAILED", text)
            self.assertIn("global timeout", text)
            self.assertIn("stuck at:", text)

        return d.addCallback(check)


class SipParsingTests(SynchronousTestCase):
    """
    The phone's own small SIP parser.
    """

    def test_request(self):
        """
        A request with compact headers, comma-joined Via and Record-Route, a
        quoted comma, folding, and a body cut to its Content-Length.
        """
        message = phone.parse_sip(INVITE)
        self.assertEqual((message.method, message.uri, message.status), ("INVITE", "sip:bob@demo.spwm.test", None))
        self.assertEqual(len(message.get_all("via")), 3)
        self.assertEqual(message.get_all("record-route"), ["<sip:x@127.0.0.1;lr>", "<sip:y@127.0.0.1;lr>"])
        self.assertEqual(phone.tag_of(message.get("from")), "abc")
        self.assertEqual(phone.uri_of(message.get("from")), "sip:alice@demo.spwm.test")
        self.assertIsNone(phone.tag_of(message.get("to")))
        self.assertEqual(message.get("subject"), "a folded header")
        self.assertEqual(message.cseq, (1, "INVITE"))
        self.assertEqual(message.body, b"v=0\r\no=x 1 1")

    def test_response_round_trip(self):
        """
        A response built by L{phone.build_sip} parses back to the same values,
        with its Content-Length.
        """
        data = phone.build_sip("SIP/2.0 180 Ringing", [("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("CSeq", "7 INVITE")], b"xy")
        message = phone.parse_sip(data)
        self.assertEqual((message.status, message.reason, message.summary), (180, "Ringing", "180"))
        self.assertEqual(message.get("content-length"), "2")
        self.assertEqual(message.body, b"xy")

    def test_errors(self):
        """
        Malformed messages raise L{phone.SipParseError}.
        """
        for data in (b"", b"INVITE sip:x SIP/2.0\r\n", b"FOO\r\n\r\n", b"SIP/2.0 2000 OK\r\n\r\n",
                     b"INVITE sip:x SIP/2.0\r\nno colon\r\n\r\n", b"INVITE sip:x SIP/2.0\r\nl: 9\r\n\r\nab",
                     b"\xff\xfe SIP/2.0\r\n\r\n"):
            self.assertRaises(phone.SipParseError, phone.parse_sip, data)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300) | st.builds(lambda a, b: INVITE[:a] + b, st.integers(0, len(INVITE)), st.binary(max_size=40)))
    def test_fuzz_only_own_error(self, data):
        """
        Any bytes either parse or raise L{phone.SipParseError}, nothing else,
        and so does the CSeq of what parses.
        """
        try:
            message = phone.parse_sip(data)
        except phone.SipParseError:
            return
        try:
            message.cseq
        except phone.SipParseError:
            pass


class SdpTests(SynchronousTestCase):
    """
    The phone's SDP offer and the answer's media target.
    """

    def test_offer_target(self):
        """
        The offer names G.711 on our port; the target is read back from it.
        """
        body = phone.make_sdp("alice", "127.0.0.1", 4000, 42)
        self.assertIn(b"m=audio 4000 RTP/AVP 0 8\r\n", body)
        self.assertEqual(phone.sdp_audio_target(body), ("127.0.0.1", 4000))

    def test_media_level_connection_wins(self):
        """
        A media-level c= overrides the session one; LF line ends work.
        """
        body = b"v=0\nc=IN IP4 192.0.2.1\nm=audio 5000 RTP/AVP 0\nc=IN IP4 198.51.100.7\n"
        self.assertEqual(phone.sdp_audio_target(body), ("198.51.100.7", 5000))

    def test_rejected_or_missing(self):
        """
        Port 0, no audio, no address or bad UTF-8 give C{None}.
        """
        for body in (b"c=IN IP4 192.0.2.1\r\nm=audio 0 RTP/AVP 0\r\n", b"c=IN IP4 192.0.2.1\r\nm=video 5000 RTP/AVP 96\r\n",
                     b"m=audio 5000 RTP/AVP 0\r\n", b"\xff"):
            self.assertIsNone(phone.sdp_audio_target(body))


class RtpTests(SynchronousTestCase):
    """
    RTP packets and the receive statistics.
    """

    def test_packet(self):
        """
        A packet is 172 bytes, RTP version 2, PCMU, and carries its send time.
        """
        packet = phone.rtp_packet(65535, 160, 0x1234, 12.5, marker=True)
        self.assertEqual(len(packet), phone.RTP_PACKET_SIZE)
        self.assertEqual(packet[0], 0x80)
        self.assertEqual(packet[1], 0x80)
        self.assertEqual(phone.parse_rtp(packet), (65535, 0x1234, 12.5))
        self.assertIsNone(phone.parse_rtp(b"\x00" * 172))
        self.assertIsNone(phone.parse_rtp(packet[:19]))

    def test_stats(self):
        """
        Duplicates are counted once, foreign datagrams apart, sequence numbers
        wrap, and latency percentiles come from the send times.
        """
        stats = phone.RtpStats()
        for i, seq in enumerate([65534, 65535, 0, 1, 1]):
            stats.packet(phone.rtp_packet(seq, 0, 1, 100.0), 100.0 + (i + 1) / 1000)
        stats.packet(b"junk", 101.0)
        self.assertEqual((stats.received, stats.unique, stats.duplicates, stats.foreign), (5, 4, 1, 1))
        self.assertAlmostEqual(stats.percentile(0.5), 0.003)
        self.assertAlmostEqual(stats.percentile(0.99), 0.004)
        self.assertIsNone(phone.RtpStats().percentile(0.5))

    def test_foreign_rtp_has_no_send_time(self):
        """
        RTP from another kind of phone (PCMU audio, PCMU silence, another
        size, a header with a CSRC) is counted but carries no send time, so
        it gives no latency: the line C{examples/phone.py} prints says
        C{latency n/a}, not a figure read from audio bytes.
        """
        header = struct.pack("!BBHII", 0x80, 0, 7, 160, 0x99)
        audio = header + bytes(range(160))
        silence = header + b"\xff" * 160
        ours = phone.rtp_packet(7, 160, 0x99, 12.5)
        with_csrc = b"\x81" + ours[1:12] + b"\x00\x00\x00\x01" + ours[16:]
        for packet in (audio, silence, audio[:100], with_csrc):
            self.assertEqual(phone.parse_rtp(packet), (7, 0x99, None))
        stats = phone.RtpStats(own_ssrc=1)
        for seq in range(3, 8):
            stats.packet(struct.pack("!BBHII", 0x80, 0, seq, 160 * seq, 0x99) + bytes(160), 1e9)
        stats.packet(audio, 1e9)  # seq 7 again
        self.assertEqual((stats.received, stats.unique, stats.unstamped, stats.latencies), (6, 5, 5, []))
        self.assertIsNone(stats.percentile(0.5))
        self.assertEqual(
            phone.report_line("dave", 399, stats),
            "dave: sent 399 RTP, received 5 (dup 1), latency n/a (the peer's packets carry no send time)",
        )

    def test_report_line(self):
        """
        Between two test phones the line gives p50 and p99 in ms as before;
        with nothing received it says so.
        """
        stats = phone.RtpStats()
        for i, seq in enumerate([1, 2, 3, 3]):
            stats.packet(phone.rtp_packet(seq, 0, 1, 100.0), 100.0 + (i + 1) / 1000)
        self.assertEqual(stats.unstamped, 0)
        self.assertEqual(
            phone.report_line("alice", 250, stats), "alice: sent 250 RTP, received 3 (dup 1), p50 2.00 ms, p99 3.00 ms"
        )
        self.assertEqual(phone.report_line("bob", 250, phone.RtpStats()), "bob: sent 250 RTP, received none")

    def test_header_layout(self):
        """
        The sequence number and SSRC sit where RFC 3550 puts them.
        """
        packet = phone.rtp_packet(0x0102, 0x03040506, 0x0708090A, 0.0)
        self.assertEqual(struct.unpack("!HII", packet[2:12]), (0x0102, 0x03040506, 0x0708090A))


class PhoneModuleTests(TestCase):
    """
    The test phone is importable as C{spwm.testing.phone}, shares no code
    with SPWM, and C{examples/phone.py} still runs it.
    """

    def test_independent_of_spwm(self):
        """
        The phone's module imports nothing from C{spwm}: its SIP parser is
        the other side of the wire.
        """
        with open(phone.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add("." * node.level + (node.module or ""))
        self.assertIn("twisted.internet.protocol", imported)
        self.assertEqual([name for name in imported if name.startswith(("spwm", "."))], [])

    def test_example_script_runs_the_phone(self):
        """
        C{examples/phone.py --help} prints the phone's usage.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        d = getProcessOutputAndValue(
            sys.executable, [os.path.join(EXAMPLES, "phone.py"), "--help"], env=env, path=ROOT
        )

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err)
            self.assertIn(b"--answer", out)
            self.assertIn(b"A small SIP/RTP user agent", out)

        return d.addCallback(check)
