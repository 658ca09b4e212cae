# -*- test-case-name: tests.test_session_state -*-
"""
One session: what a contact point keeps for one agent identity across its
connections (the wormhole C{Outbound} idea: the session outlives them).

A L{Session} is a record; the session manager
(L{spwm.session.manager.SessionManager}) moves it through
L{spwm.session.state.CONTACT_TRANSITIONS} and carries out the effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import Factory, define
from twisted.internet.interfaces import IDelayedCall

from spwm.session.state import SessionState

if TYPE_CHECKING:
    from spwm.security.resume import RegistrationWatcher

__all__ = ["Session"]


@define(eq=False)
class Session:
    """
    @ivar session_id: the session's stable name (the contact point made
        it; flow tokens and media are keyed by it).
    @ivar state: where it is (L{SessionState}).
    @ivar keys: user id -> per-user key.
    @ivar session_key: the session's own key (L{spwm.security.keys.derive_session_key}),
        when both halves made one: it resumes a session whose
        registrations gave no per-user key; C{None} otherwise.
    @ivar flows: user id -> the agent's flow that registered it.
    @ivar watcher: the REGISTER transactions crossing it, while live.
    @ivar timer: the window's end (C{SUSPENDED}) or the check of its last
        registration's expiry (C{DORMANT}).
    @ivar connections: the connections attached, the primary (that
        carries SIP and the channels) first.  More than one is possible;
        with one, everything is as before.
    @ivar suspended: the lost connection whose calls are kept while
        C{SUSPENDED}.
    @ivar agent_id: the agent's name its last connection gave (C{""}:
        none yet), kept while no connection is attached and across a
        restart, for the status listings.
    """

    session_id: str
    state: SessionState = SessionState.ENDED
    keys: dict[str, bytes] = Factory(dict)
    session_key: bytes | None = None
    flows: dict[str, int] = Factory(dict)
    watcher: RegistrationWatcher | None = None
    timer: IDelayedCall | None = None
    connections: list[Any] = Factory(list)
    suspended: Any = None
    agent_id: str = ""

    @property
    def resumable(self) -> bool:
        """
        Whether a key can prove the session: a per-user key or its own.
        """
        return bool(self.keys) or self.session_key is not None

    @property
    def primary(self) -> Any:
        """
        The connection that carries the session's SIP and channels, or
        C{None}.
        """
        return self.connections[0] if self.connections else None

    def use_tunnel(self, tunnel: Any) -> None:
        """
        Attach a connection (the first one attached is the primary).
        """
        if not any(c is tunnel for c in self.connections):
            self.connections.append(tunnel)
        agent = getattr(tunnel, "agent_id", None)
        if agent:
            self.agent_id = str(agent)

    def stop_using_tunnel(self, tunnel: Any) -> bool:
        """
        Detach a connection.

        @return: whether it was the primary (the next one, if any, is now).
        """
        for index, connection in enumerate(self.connections):
            if connection is tunnel:
                del self.connections[index]
                return index == 0
        return False

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
