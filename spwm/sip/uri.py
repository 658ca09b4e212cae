# -*- test-case-name: tests.test_sip_uri -*-
"""
SIP URIs and the structured header values a proxy reads and rewrites:
name-addr (From, To, Contact, Route, Record-Route, Path) and Via.

Values are immutable (frozen data classes); rewriting makes a new value with
C{with_*} methods and C{str()} gives its canonical text.  Parsing keeps
percent-escapes as written (C{user}, C{params}, C{headers} are the escaped
text), so that a value that is only read and written back does not change;
L{unescape} gives the meaning.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Iterable, TypeVar

from dataclasses import dataclass, field, replace

from spwm.sip import _grammar as g
from spwm.sip.errors import SipParseError, bad

Params = tuple[tuple[str, "str | None"], ...]

_FOLD = re.compile(r"[ \t]*\r?\n[ \t]+")


def _unfold(text: str) -> str:
    if "\n" in text:
        return _FOLD.sub(" ", text)
    return text


def unescape(text: str) -> str:
    """
    Decode C{%HH} escapes (RFC 3261 19.1.2) once; invalid escapes stay as they
    are (RFC 4475 3.1.1.5).  Decoded bytes are read as UTF-8 with
    C{surrogateescape}, so C{%00} gives a NUL character and nothing is truncated
    (RFC 4475 3.1.1.4).

    @param text: escaped text (a user part, a parameter value).
    @return: the unescaped text.
    """
    if "%" not in text:
        return text
    raw = _ESCAPE_B.sub(
        lambda m: bytes((int(m.group(1), 16),)), text.encode("utf-8", "surrogateescape")
    )
    return raw.decode("utf-8", "surrogateescape")


_ESCAPE_B = re.compile(rb"%([0-9A-Fa-f]{2})")


def _param_lookup(params: Params, name: str) -> str | None:
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return "" if value is None else value
    return None


def _param_set(params: Params, name: str, value: str | None) -> Params:
    lname = name.lower()
    out = []
    done = False
    for key, old in params:
        if key.lower() == lname:
            if not done:
                out.append((key, value))
                done = True
        else:
            out.append((key, old))
    if not done:
        out.append((name, value))
    return tuple(out)


def _param_del(params: Params, name: str) -> Params:
    lname = name.lower()
    return tuple(p for p in params if p[0].lower() != lname)


def _params_text(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _parse_params(text: str) -> Params:
    return tuple([(m[1], m[2]) for m in g.PARAM.finditer(text)])


def _plain_params(text: str) -> Params | None:
    """
    Plain params (L{g.PLAIN_PARAMS}, starting with ";") as
    L{_parse_params} gives them, without its expression; C{None} for any
    others.
    """
    if g.PLAIN_PARAMS.fullmatch(text) is None:
        return None
    params: list[tuple[str, str | None]] = []
    for param in text[1:].split(";"):
        name, equals, value = param.partition("=")
        params.append((name, value if equals else None))
    return tuple(params)


def _bracket(host: str) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


@dataclass(frozen=True, slots=True)
class SipUri:
    """
    A URI as found in a Request-URI or a name-addr.

    SIP and SIPS URIs (RFC 3261 19.1) are parsed into their parts; other schemes
    (tel, http, unknown ones: RFC 4475 3.3.2-3.3.4) keep everything after the
    colon in C{opaque}, with C{host} empty.

    @ivar scheme: lower-case scheme ("sip", "sips", "tel", ...).
    @ivar user: the user part, escapes kept, or C{None}.
    @ivar password: the password, or C{None}.
    @ivar host: host name or address; IPv6 addresses without brackets.
    @ivar port: the port, or C{None} when absent.
    @ivar params: URI parameters in order; a parameter without value has C{None}.
    @ivar headers: the text after "?" (escaped), or C{None}.
    @ivar opaque: for schemes other than sip/sips, the text after the colon.
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    headers: str | None = None
    opaque: str | None = None
    #: the text, once made (L{__str__}): a parsed URI is shared by every
    #: value with the same text (L{parse_uri}), and a party's URIs are
    #: written into each call's record and dialog state
    _text: str | None = field(default=None, init=False, compare=False, repr=False)

    def param(self, name: str) -> str | None:
        """
        Look a URI parameter up, ignoring case of its name.

        @return: its value; C{""} if it is present without a value
            (C{;lr}); C{None} if absent.
        """
        return _param_lookup(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> SipUri:
        """
        @return: a copy with parameter C{name} set to C{value} (replaced in
            place if present, else appended); C{None} means no value.
        """
        return replace(self, params=_param_set(self.params, name, value))

    def without_param(self, name: str) -> SipUri:
        """
        @return: a copy without parameter C{name}.
        """
        return replace(self, params=_param_del(self.params, name))

    def with_params(self, params: Iterable[tuple[str, str | None]]) -> SipUri:
        """
        @return: a copy with exactly these parameters.
        """
        return replace(self, params=tuple(params))

    def with_user(self, user: str | None) -> SipUri:
        """
        @return: a copy with this (escaped) user part.
        """
        return replace(self, user=user)

    def with_host(self, host: str, port: int | None = None) -> SipUri:
        """
        @return: a copy with this host (IPv6 without brackets) and port.
        """
        return replace(self, host=host.strip("[]"), port=port)

    @property
    def host_port(self) -> str:
        """
        The host (IPv6 in brackets) and the port if any, as in a URI.
        """
        host = _bracket(self.host)
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._make_text()
            object.__setattr__(self, "_text", text)
        return text

    def _make_text(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts += [":", self.password]
            parts.append("@")
        parts.append(self.host_port)
        parts.append(_params_text(self.params))
        if self.headers is not None:
            parts += ["?", self.headers]
        return "".join(parts)


def _host_port(host: str, port: str | None, what: str) -> tuple[str, int | None]:
    """
    A matched host (IPv6 brackets removed) and port (checked to be 65535 or
    less); C{what} names the port in the error.
    """
    if host.startswith("["):
        host = host[1:-1]
    if port is None:
        return host, None
    number = int(port)
    if number > 65535:
        raise bad(f"{what} {number} out of range")
    return host, number


#: The most values each of L{parse_uri}, L{parse_name_addr} and
#: L{parse_via} keeps by their text (emptied when full): the messages of a
#: dialog repeat their From, To, Contact, Request-URI and Via values, and a
#: parsed value is immutable, so each is parsed once.
PARSED_CACHE_SIZE = 1024

#: Longer texts are parsed every time (the caches stay small).
PARSED_CACHE_TEXT = 512

#: Each cached parser's values by text, by the parser's name.
PARSED_CACHES: dict[str, dict[str, Any]] = {}

_T = TypeVar("_T")
_K = TypeVar("_K", str, bytes)


def keep_parsed(cache: dict[_K, _T], text: _K, value: _T) -> _T:
    """
    Keep C{value} in C{cache} by its C{text} (at most L{PARSED_CACHE_SIZE}
    texts of up to L{PARSED_CACHE_TEXT}, the cache emptied when full).

    @return: C{value}.
    """
    if len(text) <= PARSED_CACHE_TEXT:
        if len(cache) >= PARSED_CACHE_SIZE:
            cache.clear()
        cache[text] = value
    return value


def _parsed_once(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """
    Keep what C{parse} returns by its text (L{PARSED_CACHE_SIZE},
    L{PARSED_CACHE_TEXT}); what it raises is raised again every time.
    """
    cache: dict[str, Any] = {}
    PARSED_CACHES[parse.__name__] = cache

    @functools.wraps(parse)
    def parse_kept(text: str) -> _T:
        value = cache.get(text)
        if value is None:
            value = keep_parsed(cache, text, parse(text))
        return value

    return parse_kept


@_parsed_once
def parse_uri(text: str) -> SipUri:
    """
    Parse a URI (RFC 3261 19.1 for sip/sips, RFC 3986 absolute URI otherwise).

    @param text: the URI, without angle brackets or surrounding whitespace.
    @return: the parsed URI (the same object for the same text while it is
        in the cache, L{PARSED_CACHE_SIZE}).
    @raise SipParseError: (400) when it is malformed, for example an IPv6
        address without brackets (RFC 5118 4.2) or a port over 65535.
    """
    m = g.ABSOLUTE_URI.fullmatch(text)
    if m is None:
        raise bad(f"malformed URI {text[:60]!r}")
    scheme = m.group(1).lower()
    rest = m.group(2)
    if scheme not in ("sip", "sips"):
        if not rest:
            raise bad(f"empty {scheme} URI")
        return SipUri(scheme=scheme, opaque=rest)
    m = g.SIP_URI_REST.fullmatch(rest)
    if m is None:
        raise bad(f"malformed SIP URI {text[:60]!r}")
    user, password, host, port, params, headers = m.groups()
    host, port_n = _host_port(host, port, "port")
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port_n,
        params=tuple([(p[1], p[2]) for p in g.URI_PARAM.finditer(params)])
        if params
        else (),
        headers=headers,
    )


def _unquote(display: str) -> str:
    if display.startswith('"'):
        return re.sub(r"\\(.)", r"\1", display[1:-1], flags=re.DOTALL)
    return display


@dataclass(frozen=True, slots=True)
class NameAddr:
    """
    A name-addr or addr-spec with header parameters (From, To, Contact, Route,
    Record-Route, Path, Refer-To ...).

    @ivar display: the display name as written (quotes and escapes kept), or
        C{None}.  L{display_name} gives it unquoted.
    @ivar uri: the URI.
    @ivar params: header parameters (tag, expires, q, +sip.instance ...).
    @ivar angle: whether the URI was (and will be) in angle brackets.
    """

    display: str | None
    uri: SipUri
    params: Params = ()
    angle: bool = True
    #: The C{tag} parameter, or C{None}: looked up once, when the value is
    #: made (a proxy reads the tags of From and To many times per message,
    #: and a parsed value is shared by every message with the same text:
    #: L{parse_name_addr}); an attribute, not a property, for the same
    #: reason.
    tag: str | None = field(init=False, compare=False, repr=False)

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, display: str | None, uri: SipUri, params: Params = (), angle: bool = True) -> None:
        object.__setattr__(self, "display", display)
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "angle", angle)
        object.__setattr__(self, "tag", _param_lookup(params, "tag"))

    @property
    def display_name(self) -> str | None:
        """
        The display name without quotes and quoted-pair escapes.
        """
        return None if self.display is None else _unquote(self.display)

    def param(self, name: str) -> str | None:
        """
        Look a header parameter up, ignoring case of its name.

        @return: its value (quotes kept); C{""} if present without a value;
            C{None} if absent.
        """
        return _param_lookup(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        """
        @return: a copy with header parameter C{name} set (replaced in place or
            appended); C{None} means no value.
        """
        return replace(self, params=_param_set(self.params, name, value))

    def without_param(self, name: str) -> NameAddr:
        """
        @return: a copy without header parameter C{name}.
        """
        return replace(self, params=_param_del(self.params, name))

    def with_uri(self, uri: SipUri) -> NameAddr:
        """
        @return: a copy with another URI.
        """
        return replace(self, uri=uri)

    def __str__(self) -> str:
        uri = str(self.uri)
        if self.angle or self.display or self.uri.params or self.uri.headers or (
            self.uri.opaque is not None and any(c in uri for c in ",;?")
        ):
            text = f"{self.display} <{uri}>" if self.display else f"<{uri}>"
        else:
            text = uri
        return text + _params_text(self.params)


@_parsed_once
def parse_name_addr(text: str) -> NameAddr:
    """
    Parse one name-addr or addr-spec with header parameters (RFC 3261 20.10).

    Without angle brackets, any ";" starts the header parameters
    (RFC 4475 3.3.12) and the URI may not contain "?" (3.1.2.13).

    @param text: one value (split lists first with L{split_header_values}).
    @return: the parsed value (the same object for the same text while it
        is in the cache, L{PARSED_CACHE_SIZE}).
    @raise SipParseError: (400) when malformed: unbalanced quotes, spaces
        inside the brackets, unquoted non-token display names, bad params.
    """
    text = _unfold(text)
    # The part before plain params parsed once: the messages of many
    # dialogs share it, their tags differ.
    close = text.rfind(">")
    if close > 0 and text.startswith(";", close + 1):
        plain = _plain_params(text[close + 1 :])
        if plain is not None:
            head = _name_addr_head(text[: close + 1])
            if head is not None:
                return NameAddr(display=head.display, uri=head.uri, params=plain)
    return _name_addr_by_expression(text)


def _name_addr_by_expression(text: str) -> NameAddr:
    """
    L{parse_name_addr} of an unfolded value, all through the expression.
    """
    if "<" in text:
        m = g.NAME_ADDR.fullmatch(text)
        if m is None:
            raise bad(f"malformed name-addr {text[:60]!r}")
        display, uri, params = m.groups()
        angle = True
    else:
        m = g.ADDR_SPEC.fullmatch(text)
        if m is None:
            raise bad(f"malformed addr-spec {text[:60]!r}")
        uri, params = m.groups()
        display = None
        angle = False
    return NameAddr(
        display=display,
        uri=parse_uri(uri),
        params=_parse_params(params) if params else (),
        angle=angle,
    )


@dataclass(frozen=True, slots=True)
class Via:
    """
    One Via value (RFC 3261 20.42), a via-parm.

    @ivar protocol: sent protocol name and version, "SIP/2.0".
    @ivar transport: upper-case transport ("UDP", "TCP", "TLS", "SCTP", ...).
    @ivar host: sent-by host; IPv6 without brackets.
    @ivar port: sent-by port, or C{None}.
    @ivar params: via parameters in order; C{None} for a value-less one.
    """

    protocol: str
    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(
        self,
        protocol: str,
        transport: str,
        host: str,
        port: int | None = None,
        params: Params = (),
    ) -> None:
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", params)

    def param(self, name: str) -> str | None:
        """
        @return: the value of parameter C{name} (case-insensitive); C{""} if
            present without a value (C{;rport}); C{None} if absent.
        """
        return _param_lookup(self.params, name)

    @property
    def branch(self) -> str | None:
        """
        The branch parameter, or C{None} (RFC 2543 peers).
        """
        return _param_lookup(self.params, "branch")

    @property
    def received(self) -> str | None:
        """
        The received parameter without IPv6 brackets (RFC 5118 4.5), or C{None}.
        """
        value = _param_lookup(self.params, "received")
        if value and value.startswith("["):
            return value.strip("[]")
        return value

    @property
    def rport(self) -> str | None:
        """
        The rport parameter (RFC 3581): C{None} if absent, C{""} if present
        without value (the client asks for it), else the port as text.
        """
        return _param_lookup(self.params, "rport")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """
        C{(host, port)} of sent-by.
        """
        return (self.host, self.port)

    def with_param(self, name: str, value: str | None = None) -> Via:
        """
        @return: a copy with parameter C{name} set (replaced in place or
            appended); C{None} means without value.
        """
        return replace(self, params=_param_set(self.params, name, value))

    def without_param(self, name: str) -> Via:
        """
        @return: a copy without parameter C{name}.
        """
        return replace(self, params=_param_del(self.params, name))

    def __str__(self) -> str:
        host = _bracket(self.host)
        if self.port is not None:
            host = f"{host}:{self.port}"
        return f"{self.protocol}/{self.transport} {host}{_params_text(self.params)}"


#: L{_via_head}'s and L{_name_addr_head}'s values, by text (bounded as
#: the parsers' caches, L{keep_parsed}).
_VIA_HEADS: dict[str, Via] = {}
_NAME_ADDR_HEADS: dict[str, NameAddr] = {}


def _plain_via(text: str) -> Via | None:
    """
    An unfolded via-parm with plain params, parsed from its sent-protocol
    and sent-by (parsed once: the Vias of many transactions share them,
    their branches differ) and its params cut by C{str.split}; C{None} for
    any other (the expression parses it).

    @raise SipParseError: its port is over 65535, as L{parse_via} says.
    """
    semi = text.find(";")
    if semi <= 0:
        return None
    params = _plain_params(text[semi:])
    if params is None:
        return None
    head = _via_head(text[:semi])
    if head is None:
        return None
    return Via(protocol=head.protocol, transport=head.transport, host=head.host, port=head.port, params=params)


def _via_head(text: str) -> Via | None:
    """
    A via-parm's text before its params, parsed (C{params} empty), or
    C{None} when it does not match on its own.

    @raise SipParseError: its port is over 65535, as L{parse_via} says.
    """
    head = _VIA_HEADS.get(text)
    if head is None:
        m = g.VIA.fullmatch(text)
        if m is None or m.group(6):
            return None
        name, version, transport, host, port, _ = m.groups()
        host, port_n = _host_port(host, port, "Via port")
        head = keep_parsed(
            _VIA_HEADS,
            text,
            Via(protocol=f"{name.upper()}/{version}", transport=transport.upper(), host=host, port=port_n),
        )
    return head


def _name_addr_head(text: str) -> NameAddr | None:
    """
    A name-addr's text up to its closing ">", parsed (no params), or
    C{None} when it does not match on its own.

    @raise SipParseError: its URI is malformed, as L{parse_name_addr} says.
    """
    head = _NAME_ADDR_HEADS.get(text)
    if head is None:
        m = g.NAME_ADDR.fullmatch(text)
        if m is None or m.group(3):
            return None
        head = keep_parsed(_NAME_ADDR_HEADS, text, NameAddr(display=m.group(1), uri=parse_uri(m.group(2))))
    return head


def check_via(text: str) -> None:
    """
    Check one via-parm as L{parse_via} does, without building the value
    (a message's Via values below the top one, which a proxy only passes on).

    @raise SipParseError: as L{parse_via}.
    """
    if text in PARSED_CACHES["parse_via"]:
        return
    if "\n" not in text and _plain_via(text) is not None:
        return
    m = g.VIA.fullmatch(_unfold(text))
    if m is None:
        raise bad(f"malformed Via {_unfold(text)[:60]!r}")
    _host_port(m.group(4), m.group(5), "Via port")


@_parsed_once
def parse_via(text: str) -> Via:
    """
    Parse one via-parm (one value of a Via header; split lists first).

    Whitespace around "/", ":", ";" and "=" is accepted (RFC 4475 3.1.1.1),
    IPv6 sent-by in brackets and C{received} with or without brackets
    (RFC 5118 4.5).

    @return: the parsed value (the same object for the same text while it
        is in the cache, L{PARSED_CACHE_SIZE}).
    @raise SipParseError: (400) when malformed, e.g. empty parameters
        (RFC 4475 3.1.2.1) or a port over 65535.
    """
    text = _unfold(text)
    via = _plain_via(text)
    return _via_by_expression(text) if via is None else via


def _via_by_expression(text: str) -> Via:
    """
    L{parse_via} of an unfolded value, all through the expression.
    """
    m = g.VIA.fullmatch(text)
    if m is None:
        raise bad(f"malformed Via {text[:60]!r}")
    name, version, transport, host, port, params = m.groups()
    host, port_n = _host_port(host, port, "Via port")
    return Via(
        protocol=f"{name.upper()}/{version}",
        transport=transport.upper(),
        host=host,
        port=port_n,
        params=_parse_params(params) if params else (),
    )


def split_header_values(text: str, strict: bool = False) -> list[str]:
    """
    Split a comma-separated header value into its elements (RFC 3261 7.3.1);
    commas inside quoted strings and inside angle brackets do not split.

    @param text: the (unfolded) header value.
    @param strict: raise on empty elements and unbalanced quotes or brackets
        instead of keeping the rest as one element.
    @return: the stripped elements.
    @raise SipParseError: (400) only if C{strict}.
    """
    if "," not in text:
        value = text.strip()
        if strict and (not value or ('"' in value and g.LIST_ELEMENT.fullmatch(value) is None)):
            raise bad(f"malformed list value {text[:60]!r}")
        return [value] if value else []
    out = []
    if '"' not in text and "<" not in text:
        # (every comma splits: what the element expression gives, without
        # it; Via lists, Allow, Supported)
        for part in text.split(","):
            element = part.strip()
            if element:
                out.append(element)
            elif strict:
                raise bad(f"empty list element in {text[:60]!r}")
        return out
    return _split_by_expression(text, strict)


def _split_by_expression(text: str, strict: bool) -> list[str]:
    """
    L{split_header_values} of a value with a comma, element by element
    through the expression.
    """
    out: list[str] = []
    pos = 0
    end = len(text)
    match = g.LIST_ELEMENT.match
    while True:
        m = match(text, pos)
        assert m is not None  # the element pattern also matches nothing
        stop = m.end()
        element = text[pos:stop].strip()
        if stop < end and text[stop] != ",":
            # unbalanced quote or bracket
            if strict:
                raise bad(f"unbalanced quote or bracket in {text[:60]!r}")
            element = text[pos:].strip()
            if element:
                out.append(element)
            return out
        if element:
            out.append(element)
        elif strict:
            raise bad(f"empty list element in {text[:60]!r}")
        if stop >= end:
            return out
        pos = stop + 1


__all__ = [
    "NameAddr",
    "SipParseError",
    "SipUri",
    "Via",
    "check_via",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_header_values",
    "unescape",
]
