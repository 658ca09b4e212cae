# -*- test-case-name: tests.test_testing_sipp -*-
"""
SIPp's statistics file (C{-trace_stat -stf FILE}), read once for the
benchmarks (C{bench/sip_calls.py}) and the end-to-end bed
(C{tests/e2e/netbed.py}); and its message log (C{-trace_msg}), read for
the one-way times of SIP between two SIPp (L{message_times},
L{one_way}: C{bench/soak.py --trace-sip}).

The file is C{;}-separated text: a header line of column names (C{StartTime},
C{OutgoingCall(C)}, C{SuccessfulCall(C)}, C{FailedCall(C)},
C{ResponseTime1(C)}, ...) and one line per statistics period, each ending in
C{;}.  Durations are C{HH:MM:SS:uuuuuu}.
"""

from __future__ import annotations

import os
import re


def parse_stats(text: str) -> list[dict[str, str]]:
    """
    The rows of a SIPp statistics file's text, column name to value, oldest
    first.  Blank lines are skipped, and so is a row with fewer fields than
    the header has columns, less one (a line SIPp was still writing).
    """
    lines = [_fields(line) for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return []
    header = lines[0]
    return [dict(zip(header, row)) for row in lines[1:] if len(row) >= len(header) - 1]


def read_stats(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """
    L{parse_stats} of the file at C{path}; no rows when it cannot be read.
    """
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            text = f.read()
    except OSError:
        return []
    return parse_stats(text)


def last_stats(path: str | os.PathLike[str]) -> dict[str, str]:
    """
    The last row of the file at C{path} (SIPp's cumulative C{(C)} columns
    there are the totals of the run); empty when there is none.
    """
    rows = read_stats(path)
    return rows[-1] if rows else {}


def stat_count(row: dict[str, str], key: str) -> int:
    """
    The whole number in column C{key} of a statistics C{row} (0 when it is
    absent or not a number).
    """
    try:
        return int(float(row.get(key, "0") or 0))
    except ValueError:
        return 0


def sipp_time(value: str) -> float:
    """
    Seconds of a SIPp duration C{HH:MM:SS:uuuuuu} (or C{HH:MM:SS}); NaN when
    C{value} is not one.
    """
    parts = value.strip().split(":")
    try:
        h, m, s = int(parts[0]), int(parts[1]), int(parts[2])
        us = int(parts[3]) if len(parts) > 3 else 0
    except (IndexError, ValueError):
        return float("nan")
    return h * 3600 + m * 60 + s + us / 1e6


def _fields(line: str) -> list[str]:
    # every line ends in ";": one trailing separator, not an empty column
    line = line.rstrip("\r\n")
    if line.endswith(";"):
        line = line[:-1]
    return line.split(";")


#: the line that starts each message of a C{-trace_msg} log
_MESSAGE_HEAD = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d) (\d\d):(\d\d):(\d\d(?:\.\d+)?)$", re.M)


def message_times(text: str) -> dict[tuple[str, str, str, str], float]:
    """
    When each SIP message of a SIPp C{-trace_msg} log was first sent or
    received: (C{"sent"} or C{"received"}, Call-ID, the method or the
    status code, the CSeq header's value) to seconds since that day's
    midnight (the log's clock: the machine's, so that two SIPp's logs on
    one machine compare).  A message sent or received again (a
    retransmission) keeps its first time; blocks that are not a message
    (SIPp's notes on unexpected messages) are skipped.
    """
    times: dict[tuple[str, str, str, str], float] = {}
    heads = list(_MESSAGE_HEAD.finditer(text))
    for n, head in enumerate(heads):
        end = heads[n + 1].start() if n + 1 < len(heads) else len(text)
        lines = text[head.end() : end].strip("\n").split("\n")
        if len(lines) < 3:
            continue
        way = "sent" if " message sent " in lines[0] else "received" if " message received " in lines[0] else None
        first = lines[2] if not lines[1].strip() else lines[1]
        if way is None or not first.strip():
            continue
        words = first.strip().split(" ")
        what = words[1] if first.strip().startswith("SIP/2.0 ") and len(words) > 1 else words[0]
        call_id = cseq = ""
        for line in lines[lines.index(first) + 1 :]:
            if not line.strip() or line.startswith("-----"):
                break  # the headers end (a body, or SIPp's notes, follow)
            name, _, value = line.partition(":")
            if name.lower() in ("call-id", "i"):
                call_id = value.strip()
            elif name.lower() == "cseq":
                cseq = value.strip()
        at = int(head.group(2)) * 3600 + int(head.group(3)) * 60 + float(head.group(4))
        times.setdefault((way, call_id, what, cseq), at)
    return times


def one_way(
    sender: dict[tuple[str, str, str, str], float],
    receiver: dict[tuple[str, str, str, str], float],
    what: str,
    method: str,
) -> list[float]:
    """
    The one-way times (s) of the messages C{what} (a method, or a status
    code) in transactions of C{method} that C{sender} sent (first) and
    C{receiver} received (first), sorted; from L{message_times} of each.
    """
    out = []
    for (way, call_id, kind, cseq), sent in sender.items():
        if way != "sent" or kind != what or not cseq.endswith(" " + method):
            continue
        got = receiver.get(("received", call_id, kind, cseq))
        if got is not None:
            out.append(got - sent)
    return sorted(out)
