# -*- test-case-name: tests.test_state -*-
"""
The contact point's state across a restart (C{--state-file}).

When the contact point stops it writes, before its tunnels drain, what its
agents need to find their registrations again in the next process: the
flow token key (so the C{Path}, C{Record-Route} and C{Contact} tokens the
operator's registrar holds stay valid) and, for every session with
per-user keys, those keys and the session's live registrations.  The next
process reads the file at start: the sessions are dormant there (see
L{spwm.security.resume}), and an agent that reconnects (at once, after
the go-away of the drain) resumes its registrations by proof, so its
phones stay reachable through an upgrade.  Calls in progress do not
survive a restart.

While it runs it writes the same every L{SAVE_INTERVAL} seconds
(L{ContactState.start}), so that a process that dies without a stop (a
crash, a worker killed) leaves the sessions and the token key of at most
that long before: the process that takes its place (the workers'
supervisor restarts a worker at once) gives them back to their agents
as after a stop.  Such a write takes the sessions in slices of
L{SAVE_SLICE} per reactor turn and leaves the text's assembly and the
writing to the disk to a thread: 10,000 sessions (3.1 MB of JSON, about
70 ms of CPU) never hold the relay for more than about 2 ms
(C{bench/state_write.py}).  The file says C{"running": true}: found at
a start, its process died with its calls (L{restore}).

The file holds keys: it is written with mode 0600, atomically (a
temporary file renamed over it).  A missing file is a first start; a
file that cannot be read or understood is logged and ignored (a fresh
start, as without the option).  Lifetimes are stored relative to the
wall clock at saving, so the time the process was down counts.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterable, Iterator

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from spwm.errors import ConfigError

#: The format of the file; another version is ignored.
VERSION = 1

#: Seconds between the writes while the contact point runs: what a crash
#: can lose (sessions made, keys learnt since the last write).
SAVE_INTERVAL = 30.0

#: Sessions a periodic write takes per reactor turn (about 2 ms of them).
SAVE_SLICE = 256


def write_file(path: str, text: str | Iterable[str]) -> None:
    """
    Write C{text} (or its pieces, in order) to C{path} atomically (a
    temporary file renamed over it, mode 0600, synced).

    @raise OSError: it could not be written.
    """
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        if isinstance(text, str):
            f.write(text)
        else:
            f.writelines(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _document(head: dict[str, Any], sessions: list[str]) -> Iterator[str]:
    """
    The pieces of a state file: C{head}'s fields and the sessions' entries
    (each C{"id": {...}}, JSON already), given one by one so that no
    piece is the size of the file (each is made and written while the
    writing thread holds the interpreter only briefly).
    """
    yield json.dumps(head)[:-1] + ', "sessions": {'
    for n, entry in enumerate(sessions):
        yield entry if n == 0 else ", " + entry
    yield "}}"


def in_thread(reactor: Any) -> Callable[..., "Deferred[Any]"]:
    """
    @return: C{run(f, *args)}: C{f(*args)} in C{reactor}'s thread pool, or
        at once for a clock without one (a test's).
    """
    if not hasattr(reactor, "getThreadPool"):
        def now(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            try:
                return succeed(f(*args))
            except Exception as e:
                return fail(e)

        return now
    from twisted.internet.threads import deferToThreadPool

    return lambda f, *args: deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


class _StateFile:
    """
    What the state files of both halves share: reading, writing at once
    (a stop) and every interval while running (a crash loses at most
    that much), the disk work in a thread, a failure said once.

    @ivar path: the file.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        clock: Any,
        wall: Callable[[], float] = time.time,
        run_in_thread: Callable[..., "Deferred[Any]"] | None = None,
    ) -> None:
        """
        @param run_in_thread: C{run(f, *args)} for the periodic writes'
            disk work (L{in_thread} of C{clock} by default).
        """
        self.path = path
        self.clock = clock
        self.wall = wall
        self.run_in_thread = run_in_thread if run_in_thread is not None else in_thread(clock)
        #: periodic writes done and failed (L{start})
        self.writes = 0
        self.failures = 0
        self._timer: Any = None
        # the periodic write under way (its slices or its disk write)
        self._writing: Deferred[None] | None = None
        self._stopped = False
        self._failing = False
        self.interval = SAVE_INTERVAL
        #: the wall clock's time of the last write that worked
        self.written_at: float | None = None

    def load(self) -> dict[str, Any] | None:
        """
        @return: the saved state, or C{None} (no file, or one that cannot be
            used: logged).
        """
        try:
            with open(self.path, "rb") as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as e:
            self.log.warn("state file {path} ignored: {reason}", path=self.path, reason=str(e))
            return None
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            self.log.warn("state file {path} ignored: not version {version}", path=self.path, version=VERSION)
            return None
        return doc

    def load_own(self, agent: bool) -> dict[str, Any] | None:
        """
        L{load}, refusing the other half's file (written at start, it
        would be overwritten: an agent's keys, a contact point's sessions
        and token key lost).

        @raise ConfigError: the file is the other half's.
        """
        doc = self.load()
        if doc is not None and (doc.get("agent") is True) != agent:
            mine, theirs = ("an agent's", "a contact point's") if agent else ("a contact point's", "an agent's")
            raise ConfigError("state-file", f"{self.path} is {theirs} state file, not {mine}: give each its own")
        return doc

    def _start(self, write: Callable[[], "Deferred[None]"], interval: float) -> None:
        self._stopped = False
        self.interval = interval
        self._tick(write, interval)

    def stop(self) -> Deferred[None]:
        """
        No more periodic writes.

        @return: fires once the one under way, if any, is over (the stop's
            own write must come after it, not be overwritten by it).
        """
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        writing = self._writing
        if writing is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        writing.addBoth(lambda _: done.callback(None))
        return done

    def _tick(self, write: Callable[[], "Deferred[None]"], interval: float) -> None:
        self._timer = None
        if self._stopped:
            return
        try:
            writing = write()
        except Exception:
            # a bug, not the disk: said (once) and tried again later
            self._not_written(Failure())
            writing = succeed(None)
        self._writing = writing

        def over(_: Any) -> None:
            self._writing = None
            if not self._stopped:
                self._timer = self.clock.callLater(interval, self._tick, write, interval)

        writing.addBoth(over)

    def _in_thread(self, text: str | Iterable[str], count: int) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        writing = self.run_in_thread(write_file, self.path, text)
        writing.addCallbacks(lambda _: self._written(count), self._not_written)
        writing.addBoth(lambda _: done.callback(None))
        return done

    def status(self) -> dict[str, Any]:
        """
        The status document's C{state_file} section: writes that worked
        and failed since the start, when the last one worked (seconds
        since the epoch), and 1 while the writes fail.
        """
        return {
            "path": self.path,
            "writes": self.writes,
            "failures": self.failures,
            "written_at": self.written_at,
            "failing": int(self._failing),
        }

    def _written(self, count: int) -> None:
        self.writes += 1
        self.written_at = self.wall()
        if self._failing:
            self._failing = False
            self.log.info("state file {path} written again: {count} sessions", path=self.path, count=count)

    def _not_written(self, failure: Any) -> None:
        self.failures += 1
        if not self._failing:
            self._failing = True
            self.log.error(
                "state file {path} not written: {reason} (tried again every {interval} s; said once)",
                path=self.path,
                reason=str(failure.value),
                interval=f"{self.interval:g}",
            )

    def _write_now(self, text: str, count: int) -> None:
        try:
            write_file(self.path, text)
        except OSError as e:
            self.failures += 1
            self.log.error("state file {path} not written: {reason}", path=self.path, reason=str(e))
            return
        self.writes += 1
        self.written_at = self.wall()
        self.log.info("state file {path} written: {count} sessions", path=self.path, count=count)


class ContactState(_StateFile):
    """
    Reads and writes the state file of one contact point.
    """

    def secret(self, doc: dict[str, Any] | None) -> bytes | None:
        """
        @return: the flow token key saved in C{doc}, if usable.
        """
        if doc is None:
            return None
        try:
            secret = bytes.fromhex(doc["token_secret"])
        except (KeyError, TypeError, ValueError):
            self.log.warn("state file {path}: no usable token key; tokens from before the restart are void", path=self.path)
            return None
        return secret if len(secret) >= 16 else None

    def restore(self, doc: dict[str, Any], core: Any, resumption: Any) -> int:
        """
        Give the SIP core the saved registrations and the resumption logic
        the saved sessions (dormant until their agents come back).

        @return: the number of sessions restored.
        """
        now = self.clock.seconds()
        saved_at = doc.get("saved_at")
        elapsed = max(0.0, self.wall() - saved_at) if isinstance(saved_at, (int, float)) else 0.0
        if core.registrar is not None and isinstance(doc.get("registrar"), list):
            try:
                core.registrar.import_bindings(_aged(doc["registrar"], elapsed), now)
            except ValueError as e:
                self.log.warn("state file {path}: {reason}", path=self.path, reason=str(e))
        sessions = doc.get("sessions")
        if not isinstance(sessions, dict):
            return 0
        for session_id, entry in sessions.items():
            if not isinstance(entry, dict):
                continue
            try:
                sip = entry.get("sip")
                if isinstance(sip, dict):
                    sip = {**sip, "registrations": _aged(sip.get("registrations"), elapsed)}
                core.import_registrations(str(session_id), sip, now)
            except ValueError as e:
                self.log.warn("state file {path}: {reason}", path=self.path, reason=str(e))
        try:
            count: int = resumption.import_state(
                {k: v for k, v in sessions.items() if isinstance(v, dict)}, calls_ended=doc.get("running") is not True
            )
        except ValueError as e:
            self.log.warn("state file {path}: {reason}", path=self.path, reason=str(e))
            count = 0
        kept = resumption.resumable_ids()  # one set, not one per session
        for session_id in sessions:
            if str(session_id) not in kept:
                # registrations without a usable key: nobody can resume them
                core.forget_session(str(session_id))
        self.log.info(
            "state file {path}: {count} sessions restored, their registrations await their agents",
            path=self.path,
            count=count,
        )
        return count

    def save(self, core: Any, resumption: Any) -> None:
        """
        Write the state now (atomically, mode 0600); a failure is logged.
        """
        self._write_now(*self.document(core, resumption))

    def stop_and_save(self, core: Any, resumption: Any) -> Deferred[None]:
        """
        The stop: the state as it is now, written once the periodic write
        under way (if any) is over, and no periodic write after it.
        """
        text, count = self.document(core, resumption)
        return self.stop().addCallback(lambda _: self._write_now(text, count))

    def document(self, core: Any, resumption: Any) -> tuple[str, int]:
        """
        @return: the file's text now (every session at once: the stop's),
            and how many sessions it holds.
        """
        now = self.clock.seconds()
        sessions = resumption.export_state(lambda session_id: core.export_registrations(session_id, now))
        doc = {
            "version": VERSION,
            "saved_at": self.wall(),
            "token_secret": core.secret.hex(),
            "sessions": sessions,
        }
        if core.registrar is not None:
            doc["registrar"] = core.registrar.export_bindings(now)
        return json.dumps(doc), len(sessions)

    # -- while running ---------------------------------------------------

    def start(self, core: Any, resumption: Any, interval: float = SAVE_INTERVAL) -> None:
        """
        Write the state now and then every C{interval} seconds until
        L{stop}, each time in slices (L{SAVE_SLICE} sessions per reactor
        turn) with the text's assembly and the disk work in a thread.  A
        failure is logged once (and again when writing works again), not
        every time.
        """
        self._start(lambda: self._write_in_slices(core, resumption), interval)

    def _write_in_slices(self, core: Any, resumption: Any) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        now = self.clock.seconds()
        # "running": the process that wrote this had not stopped (found at
        # a start, it died: the calls were not ended for the far parties)
        head: dict[str, Any] = {
            "version": VERSION, "saved_at": self.wall(), "running": True, "token_secret": core.secret.hex()
        }
        # every session's id (export_session skips those no key can
        # resume): a copy of the keys, no walk through the sessions here
        ids = list(resumption.sessions)
        parts: list[str] = []

        def export(session_id: str) -> Any:
            return core.export_registrations(session_id, now)

        def step(start: int) -> None:
            try:
                more(start)
            except Exception:
                # a bug, not the disk: said (once), the write given up
                self._not_written(Failure())
                done.callback(None)

        def more(start: int) -> None:
            if self._stopped:
                done.callback(None)
                return
            for session_id in ids[start : start + SAVE_SLICE]:
                entry = resumption.export_session(session_id, export)
                if entry is not None:
                    parts.append(f"{json.dumps(session_id)}: {json.dumps(entry)}")
            if start + SAVE_SLICE < len(ids):
                self.clock.callLater(0, step, start + SAVE_SLICE)
                return
            if core.registrar is not None:
                head["registrar"] = core.registrar.export_bindings(now)
            self._in_thread(_document(head, parts), len(parts)).chainDeferred(done)

        step(0)
        return done


def _aged(items: Any, elapsed: float) -> Any:
    """
    Saved entries with the time the process was down taken off their
    lifetimes (C{ttl}); anything else is left for the importer to refuse.
    """
    if not isinstance(items, list):
        return items
    return [
        {**r, "ttl": r["ttl"] - elapsed} if isinstance(r, dict) and isinstance(r.get("ttl"), (int, float)) else r
        for r in items
    ]


class AgentState(_StateFile):
    """
    The agent's state file (C{spwm-agent --state-file}): for each contact
    point's side, its session (id, keys, flows: L{spwm.session.codec})
    and what its SIP core needs to reach the phones on UDP through the
    same flow ids (L{spwm.sip.agent_proxy.AgentSipProxy.export_state}).
    Written at start, every interval and at stop; read at start, where
    each session becomes dormant and the first tunnel offers its
    resumption: after a restart (an upgrade) or a crash, the contact
    point's dormant session is resumed (its registrations) and the
    registrar's Paths reach the phones again, with no REGISTER.  The
    calls in progress are gone with the process (the stop ends them for
    both parties).

    @param sides: C{(resumption, core)} per contact point: the side's
        L{spwm.security.resume.AgentResumption} and its (inner)
        L{spwm.sip.agent_proxy.AgentSipProxy}.
    """

    def document(self, sides: list[tuple[Any, Any]]) -> tuple[dict[str, Any], int]:
        """
        @return: the file's contents now, and how many sessions it holds.
        """
        now = self.clock.seconds()
        entries = [{"session": resumption.export_session(), "sip": core.export_state(now)} for resumption, core in sides]
        doc = {"version": VERSION, "saved_at": self.wall(), "agent": True, "sides": entries}
        return doc, sum(1 for e in entries if e["session"] is not None)

    def save(self, sides: list[tuple[Any, Any]]) -> None:
        """
        Write the state now.
        """
        doc, count = self.document(sides)
        self._write_now(json.dumps(doc), count)

    def stop_and_save(self, sides: list[tuple[Any, Any]]) -> Deferred[None]:
        """
        The stop: the state as it is now (before the sessions are
        released, which clears their keys), written once the periodic
        write under way (if any) is over, and no periodic write after it.
        """
        doc, count = self.document(sides)
        return self.stop().addCallback(lambda _: self._write_now(json.dumps(doc), count))

    def start(self, sides: list[tuple[Any, Any]], interval: float = SAVE_INTERVAL) -> None:
        """
        Write the state now and every C{interval} seconds until L{stop}
        (small: one session per contact point; the disk work in a thread).
        """

        def write() -> Deferred[None]:
            doc, count = self.document(sides)
            return self._in_thread(json.dumps(doc), count)

        self._start(write, interval)

    def restore(self, doc: dict[str, Any] | None, sides: list[tuple[Any, Any]]) -> int:
        """
        Before the tunnels start: each side's session, dormant, and its
        phones' UDP flows (lifetimes minus the time the agent was down).
        A file of another contact point count, or what does not fit, is
        skipped with a line.

        @return: the number of sessions restored.
        """
        if doc is None:
            return 0
        entries = doc.get("sides")
        if doc.get("agent") is not True or not isinstance(entries, list):
            self.log.warn("state file {path} ignored: not an agent's", path=self.path)
            return 0
        saved_at = doc.get("saved_at")
        elapsed = max(0.0, self.wall() - saved_at) if isinstance(saved_at, (int, float)) else 0.0
        now = self.clock.seconds()
        sessions = flows = 0
        for (resumption, core), entry in zip(sides, entries):
            if not isinstance(entry, dict):
                continue
            sip = entry.get("sip")
            if isinstance(sip, dict):
                sip = {key: _aged(sip.get(key), elapsed) for key in ("flows", "bindings")} | {
                    "registered": [
                        [r[0], r[1] - elapsed] if isinstance(r, list) and len(r) == 2 and isinstance(r[1], (int, float)) else r
                        for r in sip.get("registered") or []
                    ]
                    if isinstance(sip.get("registered"), list)
                    else None
                }
                flows += core.import_state(sip, now)
            if resumption.import_session(entry.get("session")):
                sessions += 1
        self.log.info(
            "state file {path}: {sessions} sessions and {flows} phone flows restored; the tunnel offers their resumption",
            path=self.path,
            sessions=sessions,
            flows=flows,
        )
        return sessions
