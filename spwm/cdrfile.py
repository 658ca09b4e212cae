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
moves it away, then signals).

A record that cannot be written (a full disk, a file system gone
read-only) waits in memory, in order, and is tried again with the next
record, every L{RETRY_INTERVAL} seconds and on C{SIGHUP}: a disk that
fills up for an hour costs no record.  At most L{MAX_WAITING} wait; past
that the oldest is lost, counted and said in a rate-limited line, and so
are those still waiting when the process ends.  A write cut short leaves
a fragment in the file: a newline ends it before the next record (the
fragment is a line that C{spwm cdr} skips) and the whole record is
written again.
"""

from __future__ import annotations

import json
import os
from collections import deque
from typing import Any, Callable

from twisted.logger import Logger

from spwm.errors import ConfigError
from spwm.logthrottle import PowersOfTwo, ThrottledLog

__all__ = ["CdrFile", "MAX_WAITING", "RETRY_INTERVAL", "open_for_append"]

#: Mode of a file the contact point creates (the records name the
#: parties: not for every user of the machine).
FILE_MODE = 0o640

#: Records that wait in memory for a file that cannot be written, at most
#: (about 1 kB each).
MAX_WAITING = 10_000

#: Seconds between two tries of the records that wait.
RETRY_INTERVAL = 10.0


def open_for_append(path: str) -> int:
    """
    Open C{path} for appending, creating it with L{FILE_MODE} whatever the
    process's umask (twistd's daemon mode sets 077); an existing file keeps
    its own mode.

    @return: the file descriptor.
    @raise OSError: it cannot be opened.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    # O_EXCL tells whether this call made the file: only then is its mode
    # ours to set (an operator's chmod of an existing file stands).  Two
    # tries cover a file removed between the two opens.
    for _ in range(2):
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            try:
                return os.open(path, flags)
            except FileNotFoundError:
                continue
        try:
            os.fchmod(fd, FILE_MODE)
        except OSError:
            os.close(fd)
            raise
        return fd
    # a dangling symbolic link: its target is made as the umask allows
    return os.open(path, flags | os.O_CREAT, FILE_MODE)


class CdrFile:
    """
    Appends each ended call's record to a file, one JSON object a line.

    A media manager's call observer (L{call_event}).  The file stays open
    while the process stops and until it exits, or until L{close}: the
    calls that a stop ends are recorded too, also those whose end comes
    in the reactor's last turns, after its shutdown triggers (the
    sessions of tunnels closed when the drain time is over).

    @ivar written: records written since the start.
    @ivar failures: records lost: more than L{MAX_WAITING} waited, or some
        still waited when the file was closed.
    @ivar write_errors: writes that failed (each record that waits may
        fail several times).
    @ivar reopened: times the file was reopened (C{SIGHUP}).
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        reactor: Any = None,
        *,
        opener: Callable[[str], int] = open_for_append,
        write: Callable[[int, bytes], int] = os.write,
        max_waiting: int = MAX_WAITING,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        """
        Open the file now, so that a path that cannot be written is a
        configuration error at start rather than lost records later.

        @param reactor: tries the records that wait again every
            C{retry_interval} seconds, and once more after its shutdown,
            if given (else only the next record and L{reload} try them).
        @param write: C{os.write}, or a test's.
        @raise ConfigError: it cannot be opened.
        """
        self.path = path
        self.opener = opener
        self.written = 0
        self.failures = 0
        self.write_errors = 0
        self.reopened = 0
        self.max_waiting = max_waiting
        self.retry_interval = retry_interval
        self._write = write
        self._reactor = reactor
        self._retry: Any = None
        self._waiting: deque[bytes] = deque()
        # a write was cut short: its fragment needs a newline first
        self._torn = False
        # the last write failed: the next that succeeds says so
        self._failing = False
        self._errors = ThrottledLog(self.log, None, PowersOfTwo())
        try:
            self._fd: int | None = opener(path)
        except OSError as e:
            raise ConfigError("cdr-file", f"cannot open {path!r} for appending: {e.strerror or e}") from None
        add_trigger = getattr(reactor, "addSystemEventTrigger", None)
        if add_trigger is not None:
            add_trigger("after", "shutdown", self._shut_down)

    def _shut_down(self) -> None:
        """
        After the reactor's shutdown: no more retry timer; the records
        that wait are tried once more.  The file stays open (see the
        class).
        """
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._reactor = None
        if self._waiting:
            self._flush()

    @property
    def waiting(self) -> int:
        """
        Records that wait for the file to take them.
        """
        return len(self._waiting)

    def call_event(self, event: str, record: dict[str, Any]) -> None:
        """
        A call observer: an C{ended} call's record is written (after those
        that wait).
        """
        if event != "ended":
            return
        data = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
        if self._fd is None:
            self._lost(1, "the file is closed")
            return
        self._waiting.append(data)
        if len(self._waiting) > self.max_waiting:
            self._waiting.popleft()
            self._lost(1, f"more than {self.max_waiting} records waited")
        self._flush()

    def _flush(self) -> None:
        """
        Write the records that wait, oldest first, until one fails.
        """
        done = 0
        try:
            while self._waiting:
                if self._fd is None:
                    raise OSError("the file is closed")
                if self._torn:
                    if self._write(self._fd, b"\n") != 1:
                        raise OSError("the end of a cut-short line was not written")
                    self._torn = False
                data = self._waiting[0]
                count = self._write(self._fd, data)
                if count != len(data):
                    self._torn = count > 0
                    raise OSError(f"only {count} of {len(data)} bytes written")
                self._waiting.popleft()
                self.written += 1
                done += 1
        except OSError as e:
            self.write_errors += 1
            # the 1st, 2nd, 4th, 8th... failed write gets a line
            if self._errors.hit("write", count=self.write_errors) is not None:
                self.log.error(
                    "--cdr-file: cannot write to {path}: {error}; {waiting} records wait in memory and are "
                    "tried again every {interval:g} s ({count} failed writes so far)",
                    path=self.path,
                    error=e.strerror or e,
                    waiting=len(self._waiting),
                    interval=self.retry_interval,
                    count=self.write_errors,
                )
            self._failing = True
            self._arm()
            return
        if self._failing:
            self._failing = False
            self.log.info(
                "--cdr-file: {path} takes records again: {count} that waited written", path=self.path, count=done
            )

    def _arm(self) -> None:
        if self._retry is not None or self._reactor is None or not hasattr(self._reactor, "callLater"):
            return

        def retry() -> None:
            self._retry = None
            self._flush()

        self._retry = self._reactor.callLater(self.retry_interval, retry)

    def _lost(self, count: int, why: str) -> None:
        self.failures += count
        # the 1st, 2nd, 4th, 8th... lost record gets a line, and so do
        # several lost at once
        if self._errors.hit("lost", count=self.failures) is not None or count > 1:
            self.log.error(
                "--cdr-file: {count} records lost so far ({why}), not written to {path}",
                count=self.failures,
                why=why,
                path=self.path,
            )

    def reload(self) -> None:
        """
        Reopen the file by its path (C{SIGHUP}: after C{logrotate} moved it
        away), and try the records that wait.  A path that cannot be
        opened keeps the file open before.
        """
        try:
            fd = self.opener(self.path)
        except OSError as e:
            self.log.error(
                "--cdr-file: cannot reopen {path} ({error}): records still go to the file open before",
                path=self.path,
                error=e.strerror or e,
            )
            self._flush()
            return
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
        # a fragment stays in the old file
        self._torn = False
        self.reopened += 1
        self.log.info("--cdr-file: {path} reopened", path=self.path)
        self._flush()

    def close(self) -> None:
        """
        Try the records that wait once more and close the file
        (idempotent); those still waiting and records after it are lost,
        counted.
        """
        if self._fd is None:
            return
        if self._waiting:
            self._flush()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        os.close(self._fd)
        self._fd = None
        if self._waiting:
            count = len(self._waiting)
            self._waiting.clear()
            self._lost(count, "they still waited for the file when it was closed")

    def status(self) -> dict[str, Any]:
        """
        The status document's C{cdr_file} section.
        """
        return {
            "path": self.path,
            "written": self.written,
            "waiting": len(self._waiting),
            "write_errors": self.write_errors,
            "failures": self.failures,
            "reopened": self.reopened,
        }
