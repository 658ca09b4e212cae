# -*- test-case-name: tests.test_state -*-
"""
A session in the state file (L{spwm.state}) and back: one codec instead
of the resumption's and the SIP core's exporters stitched together.

An entry is C{{"keys": {user: hex}, "flows": {user: flow id},
"session_key": hex, "sip": {...}}} (C{"session_key"} only when the
session has one: files written before it are read as without); C{"sip"} is what the contact point's SIP core exports for the
session (its registrations and rewritten contacts), passed through.
"""

from __future__ import annotations

from typing import Any

from spwm.session.session import Session

__all__ = ["from_json", "to_json"]


def to_json(session: Session, sip: Any) -> dict[str, Any]:
    """
    @param sip: the SIP core's export of the session's registrations.
    @return: the session's entry, JSON-ready.
    """
    entry = {
        "keys": {user: key.hex() for user, key in session.keys.items()},
        "flows": dict(session.flows),
        "sip": sip,
    }
    if session.session_key is not None:
        entry["session_key"] = session.session_key.hex()
    return entry


def from_json(session_id: Any, entry: Any) -> tuple[Session, Any]:
    """
    @return: the session (keys and flows, state C{ENDED}: the caller
        decides) and the entry's C{"sip"} part (C{None} if absent).
    @raise ValueError: C{entry} is not what L{to_json} makes.
    """
    try:
        keys = {str(user): bytes.fromhex(key) for user, key in entry["keys"].items()}
        flows = {str(user): int(fid) for user, fid in entry["flows"].items()}
        own = entry.get("session_key")
        session_key = None if own is None else bytes.fromhex(own)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"malformed sessions: {e!r}") from None
    return Session(str(session_id), keys=keys, flows=flows, session_key=session_key), entry.get("sip")
