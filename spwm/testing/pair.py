# -*- test-case-name: tests.test_tunnel_connection -*-
"""
Two tunnel cores joined back to back, for tests (after h11's ConnectionPair
and aioquic's transfer/roundtrip helpers).
"""

from __future__ import annotations

from typing import Any

from spwm.limits import TunnelLimits
from spwm.tunnel.connection import Role, TunnelConnection


class CorePair:
    """
    An agent core and a contact core with a shared clock value C{now}.

    @ivar agent: the agent's L{TunnelConnection}.
    @ivar contact: the contact point's L{TunnelConnection}.
    @ivar agent_events: every event the agent produced, in order.
    @ivar contact_events: every event the contact produced, in order.
    """

    def __init__(
        self,
        limits: TunnelLimits | None = None,
        now: float = 1000.0,
        agent_hello: dict[str, Any] | None = None,
        **contact_args: Any,
    ) -> None:
        """
        @param agent_hello: extra fields of the agent's hello.
        @param contact_args: more arguments of the contact point's
            L{TunnelConnection} (C{hello}: the welcome's extra fields).
        """
        self.now = now
        self.agent = TunnelConnection(Role.AGENT, now, limits=limits, agent_id="agent-1", hello=agent_hello)
        contact_args.setdefault("session_id", "s-1")
        self.contact = TunnelConnection(Role.CONTACT, now, limits=limits, **contact_args)
        self.agent_events: list[Any] = []
        self.contact_events: list[Any] = []

    def transfer(self, max_rounds: int = 50) -> int:
        """
        Move bytes both ways until both sides are quiet.

        @return: the number of bytes moved.
        @raise AssertionError: if it does not settle within C{max_rounds}.
        """
        moved = 0
        for _ in range(max_rounds):
            a = self.agent.data_to_send(self.now)
            if a:
                self.contact_events += self.contact.receive_data(a, self.now)
            c = self.contact.data_to_send(self.now)
            if c:
                self.agent_events += self.agent.receive_data(c, self.now)
            if not a and not c:
                return moved
            moved += len(a) + len(c)
        raise AssertionError(f"cores did not settle within {max_rounds} rounds")

    def advance(self, seconds: float) -> None:
        """
        Move time forward, run both cores' timers and transfer.
        """
        target = self.now + seconds
        while True:
            deadlines = [d for d in (self.agent.next_deadline(), self.contact.next_deadline()) if d is not None]
            nxt = min(deadlines) if deadlines else None
            if nxt is None or nxt > target:
                break
            self.now = max(self.now, nxt)
            self.agent_events += self.agent.handle_timer(self.now)
            self.contact_events += self.contact.handle_timer(self.now)
            self.transfer()
        self.now = target
        self.transfer()

    def handshake(self) -> CorePair:
        """
        Complete the handshake.
        """
        self.transfer()
        return self
