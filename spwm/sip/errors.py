# -*- test-case-name: tests.test_sip_message -*-
"""
The one error the SIP message layer raises for bad input.
"""

from __future__ import annotations

from spwm.errors import SpwmError


class SipParseError(SpwmError):
    """
    A SIP message, URI or header value is malformed or over a limit.

    This is the only exception the SIP parsers raise for any input (checked with
    hypothesis).  A proxy answers a request that fails with C{status} and
    C{reason} when the request can be answered at all, and drops responses.

    @ivar status: the SIP status code to answer with (400, 413, 414, 505, 501).
    @ivar reason: what is wrong, short enough to be used as the reason phrase,
        e.g. C{"Bad Request: missing Call-ID"}.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


def bad(problem: str, status: int = 400) -> SipParseError:
    """
    Build a L{SipParseError} whose reason starts with the status's phrase.

    @param problem: what is wrong, in a few words.
    @param status: the SIP status code.
    @return: the error (to be raised by the caller).
    """
    phrase = _PHRASES.get(status, "Bad Request")
    return SipParseError(status, f"{phrase}: {problem}")


_PHRASES = {
    400: "Bad Request",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    501: "Not Implemented",
    505: "Version Not Supported",
    513: "Message Too Large",
}
