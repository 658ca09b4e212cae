# -*- test-case-name: tests.test_config -*-
"""
The exceptions that SPWM raises.
"""

from __future__ import annotations


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
