"""
Tests for L{spwm.cdrfile}: the C{--cdr-file} of ended calls' records, one
JSON line each, its reopening for log rotation and what it says when the
file cannot be written.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from spwm.cdrfile import CdrFile
from spwm.errors import ConfigError


def record(call_id: str, **more: Any) -> dict[str, Any]:
    return {"call_id": call_id, "dialog": f"7/{call_id}", "side": "contact", "duration_s": 1.5, **more}


class _Triggers:
    """
    A reactor's system event triggers, as far as L{CdrFile} uses them.
    """

    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, Any]] = []

    def addSystemEventTrigger(self, phase: str, event: str, fn: Any) -> None:
        self.triggers.append((phase, event, fn))


class _Clock(Clock, _Triggers):
    """
    A fake clock with system event triggers.
    """

    def __init__(self) -> None:
        Clock.__init__(self)
        _Triggers.__init__(self)


class CdrFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "cdr.jsonl")
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, level: LogLevel | None = None) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if "cdrfile" in str(e.get("log_namespace", "")) and (level is None or e.get("log_level") is level)
        ]

    def cdr(self, **kwargs: Any) -> CdrFile:
        cdr = CdrFile(self.path, **kwargs)
        self.addCleanup(cdr.close)
        return cdr

    def read(self, path: str | None = None) -> list[dict[str, Any]]:
        with open(path or self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def test_records_as_json_lines(self) -> None:
        """
        Each ended call's record is one line of JSON that reads back as the
        record (text outside ASCII as it is); other call events are not
        records.
        """
        cdr = self.cdr()
        first = record("a@192.0.2.1", **{"from": "sip:jürgen@example.test", "mos": {"up": 4.4, "down": None}})
        cdr.call_event("answered", {"setup_s": 0.2, "call": "7/a@192.0.2.1"})
        cdr.call_event("ended", first)
        cdr.call_event("ended", record("b@192.0.2.1"))
        self.assertEqual(self.read(), [first, record("b@192.0.2.1")])
        with open(self.path, "rb") as f:
            self.assertIn("jürgen".encode(), f.read())
        self.assertEqual(
            cdr.status(),
            {"path": self.path, "written": 2, "waiting": 0, "write_errors": 0, "failures": 0, "reopened": 0},
        )
        self.assertEqual(self.lines(), [])

    def test_appends_and_mode(self) -> None:
        """
        An existing file is appended to, never truncated; a new one is
        made readable by its owner and group only (the records name the
        parties).
        """
        with open(self.path, "w") as f:
            f.write(json.dumps(record("old")) + "\n")
        os.chmod(self.path, 0o600)
        self.cdr().call_event("ended", record("new"))
        self.assertEqual([r["call_id"] for r in self.read()], ["old", "new"])
        fresh = os.path.join(self.dir, "fresh.jsonl")
        old = os.umask(0)
        try:
            CdrFile(fresh).close()
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(fresh).st_mode), 0o640)

    def test_mode_whatever_the_umask(self) -> None:
        """
        Under twistd's daemon mode (umask 077) the file made at start and
        the one made again after a rotation are both mode 0640; an
        existing file keeps its own mode.
        """
        old = os.umask(0o077)
        self.addCleanup(os.umask, old)
        cdr = self.cdr()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        os.rename(self.path, self.path + ".1")
        cdr.reload()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        kept = os.path.join(self.dir, "kept.jsonl")
        open(kept, "w").close()
        os.chmod(kept, 0o600)
        CdrFile(kept).close()
        self.assertEqual(stat.S_IMODE(os.stat(kept).st_mode), 0o600)
        # a link to a file not there yet: the file is made where it points
        target = os.path.abspath(os.path.join(self.dir, "target.jsonl"))
        os.symlink(target, os.path.join(self.dir, "link.jsonl"))
        CdrFile(os.path.join(self.dir, "link.jsonl")).close()
        self.assertTrue(os.path.isfile(target))

    def test_two_writers_share_a_file(self) -> None:
        """
        Two processes' files on one path (C{--workers}): each record stays
        one whole line.
        """
        one, two = self.cdr(), self.cdr()
        for n in range(50):
            (one if n % 2 else two).call_event("ended", record(f"c{n}", padding="x" * 3000))
        self.assertEqual(sorted(r["call_id"] for r in self.read()), sorted(f"c{n}" for n in range(50)))

    def test_cannot_open(self) -> None:
        """
        A path that cannot be opened is a configuration error at start, in
        words.
        """
        with self.assertRaises(ConfigError) as caught:
            CdrFile(os.path.join(self.dir, "no", "such", "dir.jsonl"))
        self.assertEqual(caught.exception.key, "cdr-file")
        self.assertIn("cannot open ", str(caught.exception))
        self.assertIn("for appending: No such file or directory", str(caught.exception))

    def test_write_failures(self) -> None:
        """
        A file that cannot be written (a full disk: C{/dev/full}) keeps
        the records waiting in memory, with a line at the 1st, 2nd, 4th...
        failed write; past C{max_waiting} the oldest is lost, counted,
        with its own line; closing loses those that wait, with one line.
        """
        if not os.path.exists("/dev/full"):
            raise self.failureException("/dev/full is needed")
        cdr = CdrFile("/dev/full", max_waiting=3)
        self.addCleanup(cdr.close)
        for n in range(5):
            cdr.call_event("ended", record(f"c{n}"))
        self.assertEqual((cdr.written, cdr.waiting, cdr.write_errors, cdr.failures), (0, 3, 5, 2))
        lines = self.lines(LogLevel.error)
        self.assertEqual(
            lines[0],
            "--cdr-file: cannot write to /dev/full: No space left on device; 1 records wait in memory and"
            " are tried again every 10 s (1 failed writes so far)",
        )
        self.assertEqual(
            [line for line in lines if "lost" in line],
            [
                "--cdr-file: 1 records lost so far (more than 3 records waited), not written to /dev/full",
                "--cdr-file: 2 records lost so far (more than 3 records waited), not written to /dev/full",
            ],
        )
        self.assertEqual(len(lines), 5)
        cdr.close()
        self.assertEqual((cdr.waiting, cdr.failures), (0, 5))
        self.assertEqual(
            self.lines(LogLevel.error)[-1],
            "--cdr-file: 5 records lost so far (they still waited for the file when it was closed),"
            " not written to /dev/full",
        )
        self.assertEqual(cdr.status()["failures"], 5)

    def test_full_disk_then_space(self) -> None:
        """
        Records that a full disk refused wait and are written, in order,
        when it takes them again: with the next record, or by the retry
        timer; a write cut short leaves a fragment that a newline ends
        before the whole record is written again.
        """
        clock = _Clock()
        full = [True]
        short = [False]

        def write(fd: int, data: bytes) -> int:
            if short[0]:
                short[0] = False
                return os.write(fd, data[:7])
            if full[0]:
                raise OSError(28, "No space left on device")
            return os.write(fd, data)

        cdr = self.cdr(reactor=clock, write=write)
        cdr.call_event("ended", record("c0"))
        cdr.call_event("ended", record("c1"))
        self.assertEqual((cdr.written, cdr.waiting, cdr.failures), (0, 2, 0))
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [10.0])
        full[0] = False
        short[0] = True
        clock.advance(10)
        # cut short: one more try later
        self.assertEqual((cdr.written, cdr.waiting), (0, 2))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(10)
        self.assertEqual((cdr.written, cdr.waiting, cdr.failures), (2, 0, 0))
        self.assertEqual(clock.getDelayedCalls(), [])
        cdr.call_event("ended", record("c2"))
        with open(self.path, encoding="utf-8") as f:
            text = f.read().splitlines()
        self.assertEqual(text[0], '{"call_')
        self.assertEqual([json.loads(line)["call_id"] for line in text[1:]], ["c0", "c1", "c2"])
        self.assertEqual(self.lines(LogLevel.info), [f"--cdr-file: {self.path} takes records again: 2 that waited written"])
        self.assertEqual(cdr.status()["write_errors"], 3)

    def test_waiting_written_on_reload(self) -> None:
        """
        C{SIGHUP} tries the records that wait: a file moved to another
        disk, or space made and the file reopened.
        """
        full = [True]

        def write(fd: int, data: bytes) -> int:
            if full[0]:
                raise OSError(28, "No space left on device")
            return os.write(fd, data)

        cdr = self.cdr(write=write)
        cdr.call_event("ended", record("waited"))
        full[0] = False
        cdr.reload()
        self.assertEqual([r["call_id"] for r in self.read()], ["waited"])
        self.assertEqual((cdr.written, cdr.waiting), (1, 0))

    def test_reopen_after_rotation(self) -> None:
        """
        C{logrotate} moves the file away, then C{SIGHUP} (L{CdrFile.reload}):
        records go to a new file at the path; the moved one keeps those
        before.
        """
        cdr = self.cdr()
        cdr.call_event("ended", record("before"))
        os.rename(self.path, self.path + ".1")
        cdr.call_event("ended", record("rotated"))
        cdr.reload()
        cdr.call_event("ended", record("after"))
        self.assertEqual([r["call_id"] for r in self.read(self.path + ".1")], ["before", "rotated"])
        self.assertEqual([r["call_id"] for r in self.read()], ["after"])
        self.assertEqual(cdr.reopened, 1)
        self.assertEqual(self.lines(), [f"--cdr-file: {self.path} reopened"])

    def test_reopen_fails(self) -> None:
        """
        A path that cannot be opened again keeps the file open before, with
        one error line.
        """
        cdr = self.cdr()
        os.rename(self.path, self.path + ".1")
        # a directory where the file was (EISDIR, as root too)
        os.mkdir(self.path)
        cdr.reload()
        cdr.call_event("ended", record("kept"))
        self.assertEqual([r["call_id"] for r in self.read(self.path + ".1")], ["kept"])
        [line] = self.lines(LogLevel.error)
        self.assertTrue(line.startswith(f"--cdr-file: cannot reopen {self.path} ("), line)
        self.assertTrue(line.endswith("): records still go to the file open before"), line)

    def test_open_through_shutdown(self) -> None:
        """
        The file stays open through the reactor's shutdown: a call that
        the stop ends in the reactor's last turns, after its shutdown
        triggers, is recorded too; the trigger stops the retry timer and
        tries what waits once more.  L{CdrFile.close} closes it (twice is
        fine); a record after that is counted as lost.
        """
        reactor = _Clock()
        full = [True]

        def write(fd: int, data: bytes) -> int:
            if full[0]:
                raise OSError(28, "No space left on device")
            return os.write(fd, data)

        cdr = self.cdr(reactor=reactor, write=write)
        [(phase, event, shut_down)] = reactor.triggers
        self.assertEqual((phase, event), ("after", "shutdown"))
        cdr.call_event("ended", record("waited"))
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        full[0] = False
        shut_down()
        self.assertEqual(reactor.getDelayedCalls(), [])
        cdr.call_event("ended", record("drained"))
        self.assertEqual([r["call_id"] for r in self.read()], ["waited", "drained"])
        cdr.close()
        cdr.close()
        cdr.call_event("ended", record("late"))
        self.assertEqual([r["call_id"] for r in self.read()], ["waited", "drained"])
        self.assertEqual((cdr.written, cdr.failures), (2, 1))
