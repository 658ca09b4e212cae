# -*- test-case-name: tests.test_tunnel_service -*-
"""
How soon an agent connects again after losing a connection that worked:
the constants both the tunnel service (its own connection) and the path
keeper (the session's further connections) go by, and the token bucket
that bounds their prompt attempts.  Pure: the time comes in.
"""

from __future__ import annotations

__all__ = ["LOST_SPREAD", "PROMPT_BURST", "STEADY_UP", "PromptBucket"]

#: a tunnel up at least this long (s) that is lost is tried again within
#: L{LOST_SPREAD} instead of after the first backoff step
STEADY_UP = 10.0

#: the spread of that first attempt (s): agents that lost their tunnels
#: together (a contact point's crash) do not all come back in one instant
LOST_SPREAD = 0.1

#: a tunnel that worked but was lost sooner than L{STEADY_UP} by the
#: network (the contact point did not close it) is tried again within
#: L{LOST_SPREAD} too, this many times in a row, then once per
#: L{STEADY_UP} (a token bucket): a call on a link that breaks every few
#: seconds comes back after each break rather than after ever longer
#: waits, and a middlebox that kills every connection soon after it is up
#: still meets the backoff
PROMPT_BURST = 3


class PromptBucket:
    """
    C{burst} prompt attempts in a row, then one per L{STEADY_UP}.
    """

    __slots__ = ("burst", "_tokens", "_filled")

    def __init__(self, burst: int = PROMPT_BURST) -> None:
        self.burst = float(burst)
        self._tokens = self.burst
        self._filled: float | None = None

    def take(self, at: float) -> bool:
        """
        May one more attempt go at once, at time C{at}?  Each yes takes one.
        """
        if self._filled is not None:
            self._tokens = min(self.burst, self._tokens + (at - self._filled) / STEADY_UP)
        self._filled = at
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
