"""
Tests for L{spwm.testing.sipp}: SIPp's statistics file.
"""

from __future__ import annotations

import math
import os

from twisted.trial.unittest import SynchronousTestCase

from spwm.testing.sipp import last_stats, message_times, one_way, parse_stats, read_stats, sipp_time, stat_count

# the shape of a real -trace_stat file (columns cut short)
STATS = (
    "StartTime;LastResetTime;CurrentTime;OutgoingCall(C);SuccessfulCall(C);FailedCall(C);ResponseTime1(C);\n"
    "2026-12-02\t09:00:00.000000\t1733130000.000000;2026-12-02\t09:00:00.000000\t1733130000.000000;"
    "2026-12-02\t09:00:01.000000\t1733130001.000000;5;4;0;00:00:00:001500;\n"
    "\n"
    "2026-12-02\t09:00:00.000000\t1733130000.000000;2026-12-02\t09:00:01.000000\t1733130001.000000;"
    "2026-12-02\t09:00:02.000000\t1733130002.000000;10;9;1;00:00:00:002000;\n"
)


class StatsTests(SynchronousTestCase):
    def test_rows(self) -> None:
        """
        Every row, keyed by the header's column names, without an empty
        column for the trailing separator.
        """
        rows = parse_stats(STATS)
        self.assertEqual([r["OutgoingCall(C)"] for r in rows], ["5", "10"])
        self.assertEqual(rows[1]["FailedCall(C)"], "1")
        self.assertNotIn("", rows[0])

    def test_empty_values_kept(self) -> None:
        """
        An empty value (two separators in a row) is a column, not the end.
        """
        rows = parse_stats("a;b;c;\n1;;3;\n")
        self.assertEqual(rows, [{"a": "1", "b": "", "c": "3"}])

    def test_short_row_skipped(self) -> None:
        """
        A row SIPp was still writing (too few fields) is not a row.
        """
        rows = parse_stats(STATS + "2026-12-02;2026;\n")
        self.assertEqual(len(rows), 2)
        self.assertEqual(rows[-1]["SuccessfulCall(C)"], "9")

    def test_header_only_or_empty(self) -> None:
        self.assertEqual(parse_stats(""), [])
        self.assertEqual(parse_stats("a;b;\n"), [])

    def test_files(self) -> None:
        """
        L{read_stats} and L{last_stats} read a file; a missing file has no
        rows.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(STATS)
        self.assertEqual(len(read_stats(path)), 2)
        self.assertEqual(last_stats(path)["SuccessfulCall(C)"], "9")
        missing = os.path.join(os.path.dirname(os.path.abspath(path)), "absent.csv")
        self.assertEqual(read_stats(missing), [])
        self.assertEqual(last_stats(missing), {})


    def test_counts(self) -> None:
        """
        A column's whole number; 0 for an absent, empty or garbled one.
        """
        row = {"SuccessfulCall(C)": "42", "Rate": "12.5", "Empty": "", "Bad": "n/a"}
        self.assertEqual(
            [stat_count(row, k) for k in ("SuccessfulCall(C)", "Rate", "Empty", "Bad", "Missing")], [42, 12, 0, 0, 0]
        )


class TimeTests(SynchronousTestCase):
    def test_durations(self) -> None:
        self.assertEqual(sipp_time("00:00:00:002000"), 0.002)
        self.assertEqual(sipp_time("01:02:03"), 3723.0)
        self.assertTrue(math.isnan(sipp_time("")))
        self.assertTrue(math.isnan(sipp_time("x:y:z")))


def _block(at: str, way: str, message: str) -> str:
    head = "UDP message sent (100 bytes):" if way == "sent" else "UDP message received [100] bytes :"
    return f"----------------------------------------------- 2026-12-04 {at}\n{head}\n\n{message}\n"


_INVITE = "INVITE sip:service@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061\nCall-ID: c1\nCSeq: 1 INVITE\n\nv=0\n"
_OK = "SIP/2.0 200 OK\nCall-ID: c1\nCSeq: 1 INVITE\nContent-Length: 0"
_ACK_OTHER = "ACK sip:service@127.0.0.1 SIP/2.0\nCall-ID: c2\nCSeq: 1 ACK\n"


class MessageLogTests(SynchronousTestCase):
    """
    SIPp's C{-trace_msg} log read for one-way times.
    """

    def test_first_copy_and_one_way(self) -> None:
        """
        Each message keeps the time it was first sent or received (a
        retransmission does not move it), responses are named by their
        code, and a note SIPp appends about another call's message does
        not rename the message before it; the one-way time is the
        receiver's first time less the sender's.
        """
        uac = message_times(
            _block("10:00:00.000", "sent", _INVITE)
            + _block("10:00:00.500", "sent", _INVITE)
            + _block("10:00:00.620", "received", _OK)
            + "-----------------------------------------------\nDead call c2 received a UDP message:\n" + _ACK_OTHER
        )
        uas = message_times(
            _block("10:00:00.010", "received", _INVITE)
            + _block("10:00:00.600", "sent", _OK)
            + _block("10:00:00.610", "received", _INVITE)
        )
        self.assertEqual(set(uac), {("sent", "c1", "INVITE", "1 INVITE"), ("received", "c1", "200", "1 INVITE")})
        self.assertAlmostEqual(uac["sent", "c1", "INVITE", "1 INVITE"], 36000.0)
        [invite] = one_way(uac, uas, "INVITE", "INVITE")
        self.assertAlmostEqual(invite, 0.010, places=6)
        [ok] = one_way(uas, uac, "200", "INVITE")
        self.assertAlmostEqual(ok, 0.020, places=6)
        self.assertEqual(one_way(uac, uas, "BYE", "BYE"), [])
