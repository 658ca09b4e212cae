# -*- test-case-name: tests.test_sip_names -*-
"""
Whether a URI names this proxy (RFC 3261 16.4), for a C{Route} or a
Request-URI.

A proxy removes a top C{Route} that names it and replaces a Request-URI
that it placed in C{Record-Route} (strict routing).  A URI names a proxy
when its host is one of the proxy's addresses or configured names and its
port (the default port when the URI gives none: 5061 for C{sips} or
C{;transport=tls}, else 5060) is one the proxy listens on; the transport
parameter is otherwise ignored.  Host names compare without case and
without a trailing dot; IP literals compare as addresses (C{[::1]} and
C{[0:0::1]} are the same).

A wildcard listening address (C{0.0.0.0}, C{::}) stands for every address
of the host; L{ProxyNames} then takes I{any} IP literal with a port of that
listener for its own (C{0.0.0.0}: IPv4 literals; C{::}: all).  This is
safe on the agent, the only half that listens on wildcards: whatever Route
it removes, its one next hop is the tunnel, so it cannot be made to relay
anywhere.  The cost is that an operator hop written as an IP literal with
the agent's port is taken for the agent; name such hops by DNS name, or
give the agent concrete listening addresses.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any, Iterable

from attrs import field, frozen

__all__ = ["ProxyNames", "default_port", "normalize_host", "parse_name", "sip_domain", "sip_name"]


def default_port(uri: Any) -> int:
    """
    @return: the port a URI without one means: 5061 for C{sips} or
        C{;transport=tls}, else 5060 (RFC 3263 4.2).
    """
    if uri.scheme == "sips":
        return 5061
    for name, value in uri.params:
        if name.lower() == "transport" and (value or "").lower() == "tls":
            return 5061
    return 5060


@lru_cache(maxsize=1024)
def normalize_host(host: str) -> str:
    """
    @return: C{host} in the form it is compared in: an IP literal as its
        compressed address (IPv6 without brackets, IPv4-mapped IPv6 as
        IPv4), a name lower-cased without a trailing dot.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text.lower().rstrip(".")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


@lru_cache(maxsize=1024)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_name(value: str) -> tuple[str, int | None]:
    """
    Parse a C{--sip-name} value: C{NAME}, C{NAME:PORT}, an IP literal
    (IPv6 in brackets when a port follows).

    @return: the normalized host and the port, or C{None} for "every port
        this proxy listens on".
    @raise ValueError: when the value is empty or its port is not a number
        from 1 to 65535.
    """
    text = value.strip()
    if not text:
        raise ValueError("must be a host name or address, optionally with :PORT")
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{value!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{value!r}: expected :PORT after ']'")
            port = _port(rest[1:], value)
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = _port(rest, value)
    else:
        host = text  # a name, an IPv4 literal or a bare IPv6 literal
    if not host or any(c in host for c in " \t;@<>/"):
        raise ValueError(f"{value!r}: not a host name or address")
    return normalize_host(host), port


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return int(text)


def _addresses(items: Iterable[tuple[str, int]]) -> frozenset[tuple[str, int]]:
    return frozenset((normalize_host(h), int(p)) for h, p in items)


def _names(items: Iterable[tuple[str, int | None]]) -> frozenset[tuple[str, int | None]]:
    return frozenset((normalize_host(h), p) for h, p in items)


@frozen
class ProxyNames:
    """
    The addresses and names of one proxy half.

    @ivar addresses: the listening sockets C{(ip, port)}; an address may be
        a wildcard (C{0.0.0.0}, C{::}).
    @ivar names: configured names (C{--sip-name}) with a port, or C{None}
        for every port in C{addresses}.
    """

    addresses: frozenset[tuple[str, int]] = field(converter=_addresses)
    names: frozenset[tuple[str, int | None]] = field(
        converter=_names, factory=frozenset
    )
    _ports: frozenset[int] = field(init=False)
    _wildcard4: frozenset[int] = field(init=False)
    _wildcard6: frozenset[int] = field(init=False)

    @_ports.default
    def _ports_default(self) -> frozenset[int]:
        return frozenset(p for _, p in self.addresses)

    @_wildcard4.default
    def _wildcard4_default(self) -> frozenset[int]:
        return frozenset(p for h, p in self.addresses if h == "0.0.0.0")

    @_wildcard6.default
    def _wildcard6_default(self) -> frozenset[int]:
        return frozenset(p for h, p in self.addresses if h == "::")

    def names_us(self, uri: Any) -> bool:
        """
        @param uri: a parsed L{spwm.sip.uri.SipUri}.
        @return: whether C{uri} names this proxy (any user part, any
            transport parameter).
        """
        if uri.scheme not in ("sip", "sips") or not uri.host:
            return False
        port = uri.port if uri.port is not None else default_port(uri)
        return self.matches(uri.host, port)

    def matches(self, host: str, port: int) -> bool:
        """
        @return: whether C{host} (name or IP literal, IPv6 with or without
            brackets) and C{port} are ours.
        """
        h = normalize_host(host)
        if (h, port) in self.addresses:
            return True
        if (h, port) in self.names or ((h, None) in self.names and port in self._ports):
            return True
        if port in self._wildcard6 and _is_ip(h):
            return True
        if port in self._wildcard4 and _is_ip(h) and ":" not in h:
            return True
        return False


def sip_name(value: Any) -> tuple[str, int | None]:
    """
    The C{--sip-name} option: see L{parse_name}.
    """
    if not isinstance(value, str):
        raise ValueError("must be a host name or address, optionally with :PORT")
    return parse_name(value)


def sip_domain(value: Any) -> str:
    """
    The C{--domain} option: a domain name (or IP literal) without a port.

    @return: the domain as it is compared (L{normalize_host}).
    """
    if not isinstance(value, str):
        raise ValueError("must be a domain name")
    host, port = parse_name(value)
    if port is not None:
        raise ValueError(f"{value!r}: a domain has no port")
    return host
