# -*- test-case-name: tests.test_testing_sipp -*-
"""
SIPp's statistics file (C{-trace_stat -stf FILE}), read once for the
benchmarks (C{bench/sip_calls.py}) and the end-to-end bed
(C{tests/e2e/netbed.py}).

The file is C{;}-separated text: a header line of column names (C{StartTime},
C{OutgoingCall(C)}, C{SuccessfulCall(C)}, C{FailedCall(C)},
C{ResponseTime1(C)}, ...) and one line per statistics period, each ending in
C{;}.  Durations are C{HH:MM:SS:uuuuuu}.
"""

from __future__ import annotations

import os


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
