# -*- test-case-name: tests.test_cdrfile -*-
"""
C{--cdr-file}: every ended call's detail record as one line of JSON
appended to a file (JSON Lines), for billing, troubleshooting and log
shippers.

The records are the ones the log's C{call ... ended} line is made from
(L{spwm.media.manager.call_detail_record}); each half writes its own legs.
Each record is written with one C{write} to a file opened with
C{O_APPEND}, so the processes of C{--workers} can share one file without
tearing each other's lines.  C{SIGHUP} reopens the file (C{logrotate}
moves it away, then signals); a file that cannot be written loses the
records meanwhile, counted and said in a rate-limited line, never more.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from twisted.logger import Logger

from spwm.errors import ConfigError
from spwm.logthrottle import PowersOfTwo, ThrottledLog

__all__ = ["CdrFile", "open_for_append"]

#: Mode of a file the contact point creates (the records name the
#: parties: not for every user of the machine).
FILE_MODE = 0o640


def open_for_append(path: str) -> int:
    """
    Open C{path} for appending, creating it with L{FILE_MODE}.

    @return: the file descriptor.
    @raise OSError: it cannot be opened.
    """
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


class CdrFile:
    """
    Appends each ended call's record to a file, one JSON object a line.

    A media manager's call observer (L{call_event}).  The file stays open
    while the process stops (the calls a drain ends are recorded too) and
    is closed after the reactor's shutdown, or by L{close}.

    @ivar written: records written since the start.
    @ivar failures: records lost to a failed write.
    @ivar reopened: times the file was reopened (C{SIGHUP}).
    """

    log = Logger()

    def __init__(self, path: str, reactor: Any = None, *, opener: Callable[[str], int] = open_for_append) -> None:
        """
        Open the file now, so that a path that cannot be written is a
        configuration error at start rather than lost records later.

        @param reactor: closes the file after its shutdown, if given.
        @raise ConfigError: it cannot be opened.
        """
        self.path = path
        self.opener = opener
        self.written = 0
        self.failures = 0
        self.reopened = 0
        self._errors = ThrottledLog(self.log, None, PowersOfTwo())
        try:
            self._fd: int | None = opener(path)
        except OSError as e:
            raise ConfigError("cdr-file", f"cannot open {path!r} for appending: {e.strerror or e}") from None
        add_trigger = getattr(reactor, "addSystemEventTrigger", None)
        if add_trigger is not None:
            add_trigger("after", "shutdown", self.close)

    def call_event(self, event: str, record: dict[str, Any]) -> None:
        """
        A call observer: an C{ended} call's record is written.
        """
        if event != "ended":
            return
        data = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
        try:
            if self._fd is None:
                raise OSError("the file is closed")
            done = os.write(self._fd, data)
            if done != len(data):
                raise OSError(f"only {done} of {len(data)} bytes written")
        except OSError as e:
            self.failures += 1
            # the 1st, 2nd, 4th, 8th... lost record gets a line
            if self._errors.hit("write", count=self.failures) is not None:
                self.log.error(
                    "--cdr-file: the record of call {call_id} was not written to {path}: {error} "
                    "({count} records lost so far)",
                    call_id=record.get("call_id"),
                    path=self.path,
                    error=e.strerror or e,
                    count=self.failures,
                )
            return
        self.written += 1

    def reload(self) -> None:
        """
        Reopen the file by its path (C{SIGHUP}: after C{logrotate} moved it
        away).  A path that cannot be opened keeps the file open before.
        """
        try:
            fd = self.opener(self.path)
        except OSError as e:
            self.log.error(
                "--cdr-file: cannot reopen {path} ({error}): records still go to the file open before",
                path=self.path,
                error=e.strerror or e,
            )
            return
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
        self.reopened += 1
        self.log.info("--cdr-file: {path} reopened", path=self.path)

    def close(self) -> None:
        """
        Close the file (idempotent); records after it are lost, counted.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def status(self) -> dict[str, Any]:
        """
        The status document's C{cdr_file} section.
        """
        return {"path": self.path, "written": self.written, "failures": self.failures, "reopened": self.reopened}
