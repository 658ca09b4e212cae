# -*- test-case-name: tests.test_cli -*-
"""
C{spwm cdr FILE...}: the call detail records of C{--cdr-file} summed up
per agent (or per day, or per half): call legs, answered, mean answered
time, MOS per direction, lost packets, legs that ended otherwise than by
a BYE or CANCEL.  Pure code over the files' lines, for the command line.
"""

from __future__ import annotations

import gzip
import json
import re
import statistics
import time
import zlib
from typing import Any, Iterable, Iterator, TextIO

from spwm.errors import SpwmError

__all__ = ["parse_duration", "read_records", "summarize", "HEADERS", "UnreadableFileError"]

#: The columns of L{summarize}'s rows.
HEADERS = ("{by}", "legs", "answered", "ASR %", "ACD s", "MOS up p50", "MOS up min", "MOS down p50", "MOS down min", "lost %", "ended otherwise")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """
    C{90}, C{90s}, C{30m}, C{24h}, C{7d}: seconds.

    @raise ValueError: anything else.
    """
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 3600, 30m, 24h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _open(path: str) -> TextIO:
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


class UnreadableFileError(SpwmError):
    """
    A file of L{read_records} cannot be read: missing, not readable, a
    C{.gz} one cut short or not gzip.

    @ivar path: the file as given.
    @ivar reason: why, in a few words (C{No such file or directory},
        C{Compressed file ended before the end-of-stream marker was
        reached}, C{Not a gzipped file (b'no')}).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot read {self.path}: {self.reason}"


def _is_record(value: Any) -> bool:
    """
    Whether a JSON value is a call detail record: an object with a text
    C{call_id} and C{reason} and a number C{started}, as every record
    of C{--cdr-file} has.
    """
    return (
        isinstance(value, dict)
        and isinstance(value.get("call_id"), str)
        and isinstance(value.get("reason"), str)
        and _number(value.get("started")) is not None
    )


def _file_records(path: str, skipped: list[int]) -> Iterator[dict[str, Any]]:
    with _open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if _is_record(record):
                yield record
            else:
                skipped[0] += 1


def read_records(paths: Iterable[str], skipped: list[int]) -> Iterator[dict[str, Any]]:
    """
    The records of the files (C{.gz} ones too, as logrotate compresses
    them), in order; a line that is not a call detail record (not JSON,
    or JSON of another kind, see L{_is_record}) is counted in
    C{skipped[0]}.

    @raise UnreadableFileError: a file cannot be read, as far as it was
        read (a missing file, a C{.gz} one cut short or not gzip).
    """
    for path in paths:
        try:
            yield from _file_records(path, skipped)
        except OSError as e:
            raise UnreadableFileError(path, e.strerror or str(e)) from None
        except (EOFError, zlib.error) as e:
            raise UnreadableFileError(path, str(e)) from None


def _key(record: dict[str, Any], by: str) -> str:
    if by == "day":
        started = record.get("started")
        if isinstance(started, (int, float)):
            return time.strftime("%Y-%m-%d", time.gmtime(started))
        return "?"
    value = record.get(by)
    return str(value) if value else "?"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class _Group:
    def __init__(self) -> None:
        self.legs = 0
        self.answered: list[float] = []
        self.mos_up: list[float] = []
        self.mos_down: list[float] = []
        self.packets = 0
        self.lost = 0
        self.otherwise = 0

    def add(self, record: dict[str, Any]) -> None:
        self.legs += 1
        answered = _number(record.get("answered_s"))
        if answered is not None:
            self.answered.append(answered)
        mos = record.get("mos")
        if not isinstance(mos, dict):
            mos = {}
        for key, into in (("up", self.mos_up), ("down", self.mos_down)):
            value = _number(mos.get(key))
            if value is not None:
                into.append(value)
        for stream in record.get("streams") or ():
            legs = stream.get("legs") if isinstance(stream, dict) else None
            for leg in (legs or {}).values():
                if isinstance(leg, dict):
                    self.packets += int(_number(leg.get("packets")) or 0)
                    self.lost += int(_number(leg.get("lost")) or 0)
        if record.get("reason") != "dialog ended":
            self.otherwise += 1

    def row(self, key: str) -> list[Any]:
        def median(values: list[float]) -> float | None:
            return round(statistics.median(values), 2) if values else None

        sent = self.packets + self.lost
        return [
            key,
            self.legs,
            len(self.answered),
            round(100.0 * len(self.answered) / self.legs, 1) if self.legs else None,
            round(statistics.fmean(self.answered), 1) if self.answered else None,
            median(self.mos_up),
            round(min(self.mos_up), 2) if self.mos_up else None,
            median(self.mos_down),
            round(min(self.mos_down), 2) if self.mos_down else None,
            round(100.0 * self.lost / sent, 2) if sent else None,
            self.otherwise,
        ]


def summarize(records: Iterable[dict[str, Any]], by: str = "agent", since: float | None = None) -> list[list[Any]]:
    """
    One row per C{by} value (C{agent}, C{day}, C{side}), sorted, and a last
    row C{all}; only the legs that started at C{since} (Unix time) or
    later, when given.

    A row: the key, call legs, answered legs, their share (ASR), the mean
    answered time (ACD), the MOS estimate per direction (median and worst
    of the legs rated), lost packets as a share of those sent on the legs
    this half saw, and legs that ended otherwise than by BYE or CANCEL
    (C{tunnel lost}, C{media inactivity}, C{no response}...).
    """
    groups: dict[str, _Group] = {}
    total = _Group()
    for record in records:
        if since is not None:
            started = _number(record.get("started"))
            if started is None or started < since:
                continue
        key = _key(record, by)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group()
        group.add(record)
        total.add(record)
    rows = [groups[key].row(key) for key in sorted(groups)]
    if rows:
        rows.append(total.row("all"))
    return rows
