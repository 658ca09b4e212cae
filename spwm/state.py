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
from typing import Any, Callable

from twisted.logger import Logger

#: The format of the file; another version is ignored.
VERSION = 1


class ContactState:
    """
    Reads and writes the state file of one contact point.

    @ivar path: the file.
    """

    log = Logger()

    def __init__(self, path: str, clock: Any, wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self.wall = wall

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
            count: int = resumption.import_state({k: v for k, v in sessions.items() if isinstance(v, dict)})
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
        tmp = f"{self.path}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            self.log.error("state file {path} not written: {reason}", path=self.path, reason=str(e))
            return
        self.log.info(
            "state file {path} written: {count} sessions", path=self.path, count=len(sessions)
        )


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
