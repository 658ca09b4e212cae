# -*- test-case-name: tests.test_tap -*-
"""
Addresses as people read and write them, for log lines and messages.
"""

from __future__ import annotations

from typing import Any


def hostport(host: str, port: int | None = None) -> str:
    """
    C{HOST:PORT}, with an IPv6 literal in brackets (C{[2001:db8::10]:443}),
    as in a URI.  Without a port, just the host (an IPv6 literal still in
    brackets, so that a port written after it can be told apart).

    A host already in brackets is not bracketed again; an IPv6 zone
    (C{fe80::1%eth0}) stays inside the brackets.
    """
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port is None:
        return host
    return f"{host}:{port}"


def peer(address: Any) -> str:
    """
    A Twisted address (C{IPv4Address}, C{IPv6Address}) or a C{(host, port,
    ...)} tuple as L{hostport}; anything else as C{str()} (a UNIX socket's
    path, for example).
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return hostport(host, port)
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str):
        return hostport(address[0], address[1])
    return str(address)
