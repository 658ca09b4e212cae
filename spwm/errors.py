# -*- test-case-name: tests.test_config -*-
"""
The exceptions that SPWM raises.
"""

from __future__ import annotations

import errno


class SpwmError(Exception):
    """
    The root of every error that SPWM raises on purpose.
    """


class ConfigError(SpwmError):
    """
    A configuration value is invalid.

    @ivar key: the configuration key (as written in the TOML file, which is
        also the long command-line option without its dashes).
    @ivar problem: what is wrong with it, in words.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


class TunnelProtocolError(SpwmError):
    """
    The peer broke the tunnel protocol.  The tunnel is closed with C{code}.

    @ivar code: an L{spwm.tunnel.frames.ErrorCode}.
    @ivar reason: what was wrong, in words.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


class ChannelLimitError(SpwmError):
    """
    Opening one more channel would exceed L{TunnelLimits.max_channels}
    (raised by L{spwm.tunnel.connection.TunnelConnection}).
    """


class TunnelNotOpenError(SpwmError, RuntimeError):
    """
    The tunnel is not (or no longer) open: nothing can be sent or opened
    (raised by L{spwm.tunnel.connection.TunnelConnection}).
    """


class ListenError(SpwmError):
    """
    A listener could not be bound at start: the process stops with this one
    line.

    @ivar key: the option that names the address (without its dashes).
    @ivar address: the address as the user wrote it (or as it was derived).
    @ivar problem: what went wrong, in words.
    """

    def __init__(self, key: str, address: str, problem: str) -> None:
        super().__init__(key, address, problem)
        self.key = key
        self.address = address
        self.problem = problem

    def __str__(self) -> str:
        return f"--{self.key} {self.address}: {self.problem}"

    @classmethod
    def from_exception(cls, key: str, address: str, error: BaseException) -> ListenError:
        """
        The error for a bind that raised C{error} (a
        L{twisted.internet.error.CannotListenError} or an L{OSError}), in
        words a person can act on.
        """
        cause = getattr(error, "socketError", error)
        return cls(key, address, _socket_problem(cause))


#: what a failed bind means, by errno
_BIND_PROBLEMS = {
    errno.EADDRINUSE: "address already in use",
    errno.EACCES: "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "not an address of this host",
}


def _socket_problem(error: BaseException) -> str:
    if isinstance(error, OSError):
        known = _BIND_PROBLEMS.get(error.errno or 0)
        if known is not None:
            return known
        if error.strerror:
            return error.strerror[:1].lower() + error.strerror[1:]
    text = str(error) or type(error).__name__
    return text[:1].lower() + text[1:]
