# -*- test-case-name: tests.test_state -*-
"""
A session in the state file (L{spwm.state}) and back: one codec instead
of the resumption's and the SIP core's exporters stitched together.

An entry is C{{"keys": {user: hex}, "flows": {user: flow id},
"session_key": hex, "agent": name, "sip": {...}}} (C{"session_key"} and
C{"agent"} only when the session has them: files written before them are
read as without); C{"sip"} is what the contact point's SIP core exports for the
session (its registrations and rewritten contacts), passed through.
"""

from __future__ import annotations

from typing import Any

from spwm.session.session import Session

__all__ = ["from_json", "to_json"]


#: The longest agent name a state file may give a session (the hello's
#: limit: anything longer is not ours).
MAX_AGENT = 256


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
    if session.agent_id:
        entry["agent"] = session.agent_id
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
        agent = entry.get("agent", "")
        if not isinstance(agent, str) or len(agent) > MAX_AGENT:
            raise ValueError("malformed sessions: agent")
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"malformed sessions: {e!r}") from None
    session = Session(str(session_id), keys=keys, flows=flows, session_key=session_key, agent_id=agent)
    return session, entry.get("sip")
