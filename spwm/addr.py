# -*- test-case-name: tests.test_tap -*-
"""
Addresses as people read and write them, for log lines and messages.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
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


def is_ip_address(host: str) -> bool:
    """
    Whether C{host} is an IPv4 or IPv6 address (not a name to resolve).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def is_wildcard(host: str) -> bool:
    """
    Whether C{host} is the unspecified address (C{0.0.0.0} or C{::}) a
    socket bound to every address has (asked per SIP datagram: cached).
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


class RouteSources:
    """
    The local address the kernel would send from to a host: what a socket
    bound to a wildcard address must write into C{Via}, C{Record-Route} and
    SDP for that host.  Asked with a connected UDP socket (nothing is
    sent); answers are cached, at most C{limit} of them.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._cache: dict[str, str | None] = {}
        self._limit = limit

    def source_for(self, host: str) -> str | None:
        """
        The source address towards C{host} (an IP literal), or C{None}
        when there is no route (or C{host} is not an IP literal).
        """
        try:
            return self._cache[host]
        except KeyError:
            pass
        found = route_source(host)
        if len(self._cache) >= self._limit:
            self._cache.pop(next(iter(self._cache)))
        self._cache[host] = found
        return found


def route_source(host: str, port: int = 9) -> str | None:
    """
    The local address the kernel picks to reach C{host} (an IP literal),
    or C{None} when there is no route or C{host} is not an IP literal.
    A UDP socket is connected and asked its name; no packet leaves.
    """
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(address), port))
            found: str = probe.getsockname()[0]
    except OSError:
        return None
    return found.split("%", 1)[0]
