# -*- test-case-name: tests.test_sip_message -*-
"""
SIP messages: parse, inspect, change and serialize (sans-I/O).

A parsed message remembers the exact bytes of its start line and of every
header line.  The mutators are the only way a proxy changes a message; they
rewrite only the lines they touch, so a message that is only routed keeps
header order, unknown headers, unusual spacing, folding and body byte for
byte (L{SipMessage.to_bytes}).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable

from dataclasses import dataclass, field

from spwm.sip import _grammar as g
from spwm.sip.errors import SipParseError, bad
from spwm.sip.uri import (
    keep_parsed,
    NameAddr,
    SipUri,
    Via,
    parse_name_addr,
    parse_uri,
    check_via,
    parse_via,
    split_header_values,
)

#: Compact header forms (RFC 3261 7.3.3 and the extensions that define them).
COMPACT_FORMS = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "e": "content-encoding",
    "s": "subject",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "b": "referred-by",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}

#: Headers whose values are comma-separated lists (RFC 3261 7.3.1 and the
#: extensions that define them).  get() gives their first element, get_all()
#: every element, and the list mutators work element by element.  Any other
#: header (including unknown ones, whose grammar we cannot know) is one value
#: per line.
LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "path",
        "service-route",
        "allow",
        "allow-events",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "accept-contact",
        "reject-contact",
        "request-disposition",
        "alert-info",
        "call-info",
        "error-info",
        "in-reply-to",
        "content-encoding",
        "content-language",
        "warning",
        "reason",
        "security-client",
        "security-server",
        "security-verify",
        "p-associated-uri",
        "p-asserted-identity",
        "p-preferred-identity",
        "history-info",
        "privacy",
    }
)

_MAX_CSEQ = 2**32 - 1

_KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "PRACK",
        "UPDATE",
        "SUBSCRIBE",
        "NOTIFY",
        "REFER",
        "MESSAGE",
        "INFO",
        "PUBLISH",
    }
)

_DISPLAY_NAMES = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
}

_name_cache: dict[bytes, str] = {}
_NAME_CACHE_MAX = 512


def canonical_name(name: str) -> str:
    """
    @return: the lower-case full form of a header name (compact forms expanded).
    """
    cname = _canonical_names.get(name)
    if cname is None:
        lname = name.lower()
        cname = COMPACT_FORMS.get(lname, lname)
        if len(_canonical_names) < _NAME_CACHE_MAX:
            _canonical_names[name] = cname
    return cname


#: L{canonical_name}'s answers (code asks for a handful of names, many
#: times per message).
_canonical_names: dict[str, str] = {}


def _wire_name(raw: bytes) -> str:
    name = _name_cache.get(raw)
    if name is None:
        name = canonical_name(raw.decode("ascii"))
        if len(_name_cache) < _NAME_CACHE_MAX:
            _name_cache[raw] = name
    return name


def _decode(value: bytes) -> str:
    text = value.decode("utf-8", "surrogateescape")
    if "\n" in text:
        text = g.FOLD_B.sub(b" ", value).decode("utf-8", "surrogateescape")
    return text.strip()


def _encode(value: str) -> bytes:
    if "\r" in value or "\n" in value:
        raise ValueError(f"header value must not hold CR or LF: {value!r}")
    return value.encode("utf-8", "surrogateescape")


#: Header names as the mutators were given them -> (wire name, canonical
#: name), checked once (code names a handful of headers).
_given_names: dict[str, tuple[bytes, str]] = {}


def _encode_name(name: str) -> bytes:
    raw = name.encode("ascii", "replace")
    if g.HEADER_LINE_B.fullmatch(raw + b":\r\n") is None:
        raise ValueError(f"not a header name: {name!r}")
    return raw


def _given_name(name: str) -> tuple[bytes, str]:
    """
    @return: the wire and canonical forms of a header name given to a
        mutator.
    @raise ValueError: it is not a header name.
    """
    names = _given_names.get(name)
    if names is None:
        names = (_encode_name(name), canonical_name(name))
        if len(_given_names) < _NAME_CACHE_MAX:
            _given_names[name] = names
    return names


@dataclass(slots=True)
class Header:
    """
    One header line.

    @ivar raw_name: the name as written on the wire (C{b"v"}, C{b"MaX-fOrWaRdS"}).
    @ivar name: lower-case full name (compact forms expanded).
    @ivar value: the raw value bytes after the colon and its whitespace,
        folding untouched, up to the line end.
    """

    raw_name: bytes
    name: str
    value: bytes
    # (exact line as received with its line end, raw_name, separator, value,
    # line end), the parser's match: used while raw_name and value are
    # still those very objects
    _raw: tuple[bytes, bytes, bytes, bytes, bytes] | None = field(
        default=None, repr=False, compare=False
    )

    def __init__(
        self,
        raw_name: bytes,
        name: str,
        value: bytes,
        _raw: tuple[bytes, bytes, bytes, bytes, bytes] | None = None,
    ) -> None:
        # (written out: spwm compile compiles a method written here, and
        # leaves the one the dataclass decorator writes to Python; a
        # message makes one per line)
        self.raw_name = raw_name
        self.name = name
        self.value = value
        self._raw = _raw

    @property
    def text(self) -> str:
        """
        The value decoded (UTF-8, undecodable bytes as surrogates), unfolded
        and stripped.
        """
        return _decode(self.value)

    def to_bytes(self) -> bytes:
        """
        @return: the line with its line end: as received if unchanged.
        """
        raw = self._raw
        if raw is not None and raw[3] is self.value and raw[1] is self.raw_name:
            return raw[0]
        return self.raw_name + b": " + self.value + b"\r\n"


def _first_element(text: str) -> tuple[str, str | None]:
    """
    Split the first element off a raw list value.

    @return: C{(first, rest)} where C{rest} is the raw text after the comma
        (C{None} when there is no further element).
    """
    comma = text.find(",")
    first = text if comma < 0 else text[:comma]
    if '"' not in first and "<" not in first:
        # (no quote or bracket before the first comma: the element
        # expression would stop at it)
        return (text, None) if comma < 0 else (first, text[comma + 1 :])
    return _first_element_by_expression(text)


def _first_element_by_expression(text: str) -> tuple[str, str | None]:
    """
    L{_first_element}, through the element expression.
    """
    m = g.LIST_ELEMENT.match(text)
    stop = m.end() if m is not None else len(text)
    if stop < len(text) and text[stop] == ",":
        return text[:stop], text[stop + 1 :]
    return text, None


@dataclass(slots=True)
class SipMessage:
    """
    A SIP request or response.

    @ivar is_request: C{True} for requests.
    @ivar method: the request method, C{None} for responses (see
        L{cseq_method}).
    @ivar uri: the Request-URI text, C{None} for responses.
    @ivar status: the status code of a response.
    @ivar reason: the reason phrase of a response.
    @ivar version: "SIP/2.0".
    @ivar headers: header lines in wire order, one L{Header} per line.
    @ivar body: the body (exactly Content-Length bytes of a parsed message).

    The headers a proxy reads on every message (Via, From, To, Call-ID,
    CSeq, Contact) are parsed once: L{parse_message} keeps what it checked,
    and the properties keep what they parse, each with the very L{Header}
    and value bytes it came from.  Changing the header (with the methods
    below, or by assigning a line's C{value} or editing C{headers}) makes
    the next read parse it again.
    """

    is_request: bool
    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str | None = None
    version: str = "SIP/2.0"
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    # (start line as received, (method, uri, status, reason, version) then)
    _start_line: tuple[bytes, tuple] | None = field(
        default=None, repr=False, compare=False
    )
    _blank: bytes = field(default=b"\r\n", repr=False, compare=False)
    # header name -> (the Header and value it was parsed from, the result)
    _parsed: dict[str, tuple[Any, Any, Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __init__(
        self,
        is_request: bool,
        method: str | None = None,
        uri: str | None = None,
        status: int | None = None,
        reason: str | None = None,
        version: str = "SIP/2.0",
        headers: list[Header] | None = None,
        body: bytes = b"",
        _start_line: tuple[bytes, tuple] | None = None,
        _blank: bytes = b"\r\n",
    ) -> None:
        # (written out, as L{Header}'s)
        self.is_request = is_request
        self.method = method
        self.uri = uri
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = [] if headers is None else headers
        self.body = body
        self._start_line = _start_line
        self._blank = _blank
        self._parsed = {}

    # --- reading ----------------------------------------------------------

    def _kept(self, cname: str, parse: Callable[[Header], Any]) -> Any:
        """
        C{parse(line)} of the first line of header C{cname} (C{None} when
        absent), kept while that line and its value are unchanged.
        """
        for h in self.headers:
            if h.name == cname:
                break
        else:
            return None
        parsed = self._parsed
        if cname in parsed:
            kept = parsed[cname]
            if kept[0] is h and kept[1] is h.value:
                return kept[2]
        value = parse(h)
        self._parsed[cname] = (h, h.value, value)
        return value

    def _lines(self, name: str) -> list[Header]:
        cname = canonical_name(name)
        return [h for h in self.headers if h.name == cname]

    def get(self, name: str) -> str | None:
        """
        The first value of a header: for L{LIST_HEADERS} (Via, Contact,
        Route ...) the first element of the first line, for any other header
        the whole first line.  Decoded, unfolded and stripped.

        @param name: header name, any case, compact form accepted.
        @return: the value, or C{None} if the header is absent.
        """
        cname = canonical_name(name)
        for h in self.headers:
            if h.name == cname:
                text = h.text
                if cname not in LIST_HEADERS or "," not in text:
                    return text
                values = split_header_values(text)
                if values:
                    return values[0]
        return None

    def get_all(self, name: str) -> list[str]:
        """
        Every value of every line of a header, in order; comma-separated lists
        of L{LIST_HEADERS} are split (commas inside quotes and C{<...>} do not
        split); other headers give one value per line.
        """
        cname = canonical_name(name)
        out: list[str] = []
        single = cname not in LIST_HEADERS
        for h in self.headers:
            if h.name == cname:
                text = h.text
                if single:
                    out.append(text)
                else:
                    out.extend(split_header_values(text))
        return out

    def count(self, name: str) -> int:
        """
        @return: the number of values of a header (C{len(get_all(name))}).
        """
        return len(self.get_all(name))

    def has(self, name: str) -> bool:
        """
        @return: whether a header has a value (C{count(name) > 0}), read up
            to the first line that has one.
        """
        cname = canonical_name(name)
        single = cname not in LIST_HEADERS
        for h in self.headers:
            if h.name == cname and (single or split_header_values(h.text)):
                return True
        return False

    # --- changing -----------------------------------------------------------

    def _new(self, name: str, value: str) -> Header:
        raw_name, cname = _given_name(name)
        return Header(raw_name, cname, _encode(value))

    def prepend_header(self, name: str, value: str) -> None:
        """
        Insert a new line before the first line of that header, or at the top
        of the headers if it is absent (Via, Record-Route).
        """
        header = self._new(name, value)
        self._parsed.pop(header.name, None)
        for i, h in enumerate(self.headers):
            if h.name == header.name:
                self.headers.insert(i, header)
                return
        self.headers.insert(0, header)

    def append_header(self, name: str, value: str) -> None:
        """
        Insert a new line after the last line of that header, or at the end of
        the headers if it is absent.
        """
        header = self._new(name, value)
        self._parsed.pop(header.name, None)
        for i in range(len(self.headers) - 1, -1, -1):
            if self.headers[i].name == header.name:
                self.headers.insert(i + 1, header)
                return
        self.headers.append(header)

    def pop_first_value(self, name: str) -> str | None:
        """
        Remove the first value of a header: if its first line holds several
        values (C{"a, b"}), only C{a} goes and the line keeps the rest as it
        was written; otherwise the line goes.

        @return: the removed value (unfolded, stripped), or C{None} if absent.
        """
        cname = canonical_name(name)
        self._parsed.pop(cname, None)
        for i, h in enumerate(self.headers):
            if h.name != cname:
                continue
            text = h.value.decode("utf-8", "surrogateescape")
            if cname in LIST_HEADERS:
                first, rest = _first_element(text)
                while not first.strip() and rest is not None:
                    first, rest = _first_element(rest)
                if rest is not None and rest.strip(" \t\r\n,"):
                    h.value = rest.lstrip(" \t\r\n").encode("utf-8", "surrogateescape")
                    return _decode(first.encode("utf-8", "surrogateescape"))
                del self.headers[i]
                return _decode(first.encode("utf-8", "surrogateescape"))
            del self.headers[i]
            return h.text
        return None

    def replace_first_value(self, name: str, value: str) -> None:
        """
        Replace the first value of a header, keeping the other values of its
        line and every other line as they are; add the header if absent.
        """
        cname = canonical_name(name)
        self._parsed.pop(cname, None)
        new = _encode(value)
        for h in self.headers:
            if h.name != cname:
                continue
            if cname in LIST_HEADERS:
                text = h.value.decode("utf-8", "surrogateescape")
                first, rest = _first_element(text)
                if rest is not None:
                    h.value = new + b"," + rest.encode("utf-8", "surrogateescape")
                    return
            h.value = new
            return
        self.append_header(name, value)

    def set_header(self, name: str, value: str) -> None:
        """
        Replace all lines of a header with one line holding C{value}, at the
        place (and with the spelling of the name) of the first; add it at the
        end if absent.
        """
        cname = canonical_name(name)
        self._parsed.pop(cname, None)
        new = _encode(value)
        headers = self.headers
        at = [i for i, h in enumerate(headers) if h.name == cname]
        if not at:
            headers.append(Header(_encode_name(name), cname, new))
            return
        headers[at[0]].value = new
        for i in reversed(at[1:]):
            del headers[i]

    def remove_header(self, name: str) -> None:
        """
        Remove every line of a header.
        """
        cname = canonical_name(name)
        self._parsed.pop(cname, None)
        self.headers[:] = [h for h in self.headers if h.name != cname]

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        """
        Replace the body and set Content-Length to its length (and
        Content-Type if given).
        """
        self.body = bytes(body)
        self.set_header("Content-Length", str(len(self.body)))
        if content_type is not None:
            self.set_header("Content-Type", content_type)

    def ensure_content_length(self) -> None:
        """
        Add Content-Length if it is absent (a datagram from an RFC 2543 peer
        may lack it; stream transports require it).
        """
        if not any(h.name == "content-length" for h in self.headers):
            self.headers.append(
                Header(b"Content-Length", "content-length", str(len(self.body)).encode())
            )

    # --- serializing --------------------------------------------------------

    def start_line(self) -> bytes:
        """
        @return: the start line with its line end (as received if unchanged).
        """
        raw = self._start_line
        if raw is not None and raw[1] == (
            self.method,
            self.uri,
            self.status,
            self.reason,
            self.version,
        ):
            return raw[0]
        if self.is_request:
            text = f"{self.method} {self.uri} {self.version}\r\n"
        else:
            text = f"{self.version} {self.status} {self.reason or ''}\r\n"
        return text.encode("utf-8", "surrogateescape")

    def to_bytes(self) -> bytes:
        """
        Serialize.  A parsed message that was not changed gives exactly the
        bytes it was parsed from (up to the end of its Content-Length body;
        leading CRLFs and trailing datagram noise are not part of it).
        """
        # Header.to_bytes inlined: most lines go out as they came in
        parts = [
            raw[0]
            if (raw := h._raw) is not None and raw[3] is h.value and raw[1] is h.raw_name
            else h.to_bytes()
            for h in self.headers
        ]
        return b"".join([self.start_line(), *parts, self._blank, self.body])

    # --- convenience ------------------------------------------------------

    @property
    def call_id(self) -> str:
        """
        The Call-ID ("" if absent, which a parsed message never is).
        """
        return self._kept("call-id", _header_text) or ""

    @property
    def cseq(self) -> tuple[int, str]:
        """
        C{(number, method)} of CSeq.

        @raise SipParseError: if CSeq is absent or malformed (never for a
            parsed message).
        """
        cseq = self._kept("cseq", _cseq)
        if cseq is None or cseq is _MALFORMED:
            raise bad("missing or malformed CSeq")
        return cseq

    @property
    def cseq_method(self) -> str | None:
        """
        The method of CSeq (what a response answers), or C{None}.
        """
        cseq = self._kept("cseq", _cseq)
        return None if cseq is None or cseq is _MALFORMED else cseq[1]

    @property
    def top_via(self) -> Via | None:
        """
        The first Via value, parsed, or C{None}.

        @raise SipParseError: if it is malformed (never for a parsed message).
        """
        via = self._kept("via", _first_via)
        if via is _MALFORMED:
            # a first line without a value: the first value is further down
            text = self.get("via")
            return None if text is None else parse_via(text)
        return via

    @property
    def from_(self) -> NameAddr | None:
        """
        The From header, parsed, or C{None}.

        @raise SipParseError: if it is malformed (never for a parsed message).
        """
        return self._kept("from", _name_addr)

    @property
    def to(self) -> NameAddr | None:
        """
        The To header, parsed, or C{None}.

        @raise SipParseError: if it is malformed (never for a parsed message).
        """
        return self._kept("to", _name_addr)

    @property
    def from_tag(self) -> str | None:
        """
        The From tag, or C{None}.
        """
        from_ = self._kept("from", _name_addr)
        return None if from_ is None else from_.tag

    @property
    def to_tag(self) -> str | None:
        """
        The To tag, or C{None}.
        """
        to = self._kept("to", _name_addr)
        return None if to is None else to.tag

    def contact_addresses(self) -> list[NameAddr]:
        """
        The C{Contact} values, parsed, in order; C{"*"} and values that do
        not parse are left out (a parsed message has none of the latter).
        The list is the message's own: do not change it.
        """
        lines = [h for h in self.headers if h.name == "contact"]
        kept = self._parsed.get("contact")
        if (
            kept is not None
            and len(kept[0]) == len(lines)
            and all(a is b and v is b.value for a, v, b in zip(kept[0], kept[1], lines))
        ):
            return kept[2]
        out = []
        for value in self.get_all("Contact"):
            if value.strip() == "*":
                continue
            try:
                out.append(parse_name_addr(value))
            except SipParseError:
                continue
        self._parsed["contact"] = (lines, [h.value for h in lines], out)
        return out

    @property
    def max_forwards(self) -> int | None:
        """
        Max-Forwards, or C{None} if absent or malformed.
        """
        return self._kept("max-forwards", _max_forwards)

    @property
    def content_type(self) -> str | None:
        """
        The media type of Content-Type, lower case, without parameters.
        """
        return self._kept("content-type", _media_type)


#: What a property keeps for a header that does not parse its way.
_MALFORMED: Any = object()


def _header_text(h: Header) -> str:
    return h.text


def _name_addr(h: Header) -> NameAddr:
    return parse_name_addr(h.text)


def _max_forwards(h: Header) -> int | None:
    m = g.DIGITS.fullmatch(h.text)
    return int(m.group(1)) if m is not None else None


def _media_type(h: Header) -> str | None:
    text = h.text
    if not text:
        return None
    return text.split(";", 1)[0].strip().lower()


def _cseq(h: Header) -> Any:
    m = g.CSEQ.fullmatch(h.text)
    return _MALFORMED if m is None else (int(m.group(1)), m.group(2))


def _first_via(h: Header) -> Any:
    values = split_header_values(h.text)
    return parse_via(values[0]) if values else _MALFORMED


def _check_headers(message: SipMessage) -> Header | None:
    """
    Check the headers a proxy relies on (RFC 3261 8.1.1, 20): one well-formed
    From, To, Call-ID and CSeq; at least one Via and every Via value
    well-formed; Max-Forwards and Content-Length once at most and in range;
    Contact values well-formed.  Keep what it parsed on the message.

    A line value that passed before (L{_VIA_LINES}, L{_NAME_ADDRS} ...) is not decoded or parsed
    again: the result is a function of its bytes.

    @return: the Content-Length line, or C{None}.
    @raise SipParseError: on the first problem found.
    """
    first: dict[str, Header] = {}
    more: dict[str, list[Header]] = {}
    for h in message.headers:
        name = h.name
        if name in _CHECKED:
            if name not in first:
                first[name] = h
            elif name in more:
                more[name].append(h)
            else:
                more[name] = [h]
    for name in ("from", "to", "call-id", "cseq"):
        if name not in first:
            raise bad(f"missing {_DISPLAY_NAMES.get(name, name.title())}")
        if name in more:
            raise bad(f"more than one {_DISPLAY_NAMES.get(name, name.title())}")
    for name in ("max-forwards", "content-length"):
        if name in more:
            raise bad(f"more than one {name.title()}")
    if "via" not in first:
        raise bad("missing Via")
    parsed = message._parsed
    h = first["via"]
    v = h.value
    top = _VIA_LINES.get(v)
    if top is None or top is _VALID:
        top = _via_line(v, True)
    parsed["via"] = (h, v, top)
    if "via" in more:
        for h in more["via"]:
            if h.value not in _VIA_LINES:
                _via_line(h.value, False)
    for name in ("from", "to"):
        h = first[name]
        v = h.value
        address = _NAME_ADDRS.get(v)
        if address is None:
            address = keep_parsed(_NAME_ADDRS, v, parse_name_addr(_value_text(v)))
        parsed[name] = (h, v, address)
    h = first["call-id"]
    v = h.value
    call_id = _CALL_IDS.get(v)
    if call_id is None:
        text = _value_text(v)
        if g.CALL_ID.fullmatch(text) is None:
            raise bad("malformed Call-ID")
        call_id = keep_parsed(_CALL_IDS, v, text)
    parsed["call-id"] = (h, v, call_id)
    h = first["cseq"]
    v = h.value
    cseq = _CSEQS.get(v)
    if cseq is None:
        m = g.CSEQ.fullmatch(_value_text(v))
        if m is None:
            raise bad("malformed CSeq")
        cseq = (int(m.group(1)), m.group(2))
        if cseq[0] > _MAX_CSEQ:
            parsed["cseq"] = (h, v, cseq)
            raise bad("CSeq number over 2**32-1")
        keep_parsed(_CSEQS, v, cseq)
    parsed["cseq"] = (h, v, cseq)
    if message.is_request and cseq[1] != message.method:
        if message.method in _KNOWN_METHODS:
            raise bad("CSeq method does not match the request method")
        raise bad("CSeq method does not match the request method", 501)
    if "max-forwards" in first:
        h = first["max-forwards"]
        v = h.value
        hops = _MAX_FORWARDS.get(v)
        if hops is None:
            m = g.DIGITS.fullmatch(h.text)
            if m is None or int(m.group(1)) > 255:
                raise bad("malformed Max-Forwards")
            hops = keep_parsed(_MAX_FORWARDS, v, int(m.group(1)))
        parsed["max-forwards"] = (h, v, hops)
    if "contact" not in first:
        parsed["contact"] = ([], [], [])
    else:
        contacts = [first["contact"], *more["contact"]] if "contact" in more else [first["contact"]]
        addresses = []
        for h in contacts:
            v = h.value
            line = _CONTACT_LINES.get(v)
            if line is None:
                line = [
                    parse_name_addr(value)
                    for value in split_header_values(h.text, strict=True)
                    if value != "*"
                ]
                keep_parsed(_CONTACT_LINES, v, line)
            addresses += line
        parsed["contact"] = (contacts, [h.value for h in contacts], addresses)
    return first.get("content-length")


_CHECKED = frozenset(
    {"from", "to", "call-id", "cseq", "via", "max-forwards", "content-length", "contact"}
)

#: What L{_check_headers} and L{parse_message} found in a line value that
#: passed, by the value's bytes, per header (the messages of a dialog
#: repeat their From, To, Call-ID, CSeq, Contact and Via lines), bounded
#: as the URI caches (L{keep_parsed}).  A value that fails is checked
#: again each time, so it fails the same way.
_VIA_LINES: dict[bytes, Any] = {}  # the first value, parsed, or _VALID
_NAME_ADDRS: dict[bytes, NameAddr] = {}  # From and To
_CALL_IDS: dict[bytes, str] = {}
_CSEQS: dict[bytes, tuple[int, str]] = {}
_MAX_FORWARDS: dict[bytes, int] = {}
_CONTACT_LINES: dict[bytes, list[NameAddr]] = {}  # every value but "*"
_CONTENT_LENGTHS: dict[bytes, int] = {}

#: A Via line whose values were checked, the first not parsed.
_VALID: Any = object()



def _value_text(v: bytes) -> str:
    # Header.text of a value: decoded, unfolded, stripped
    return _decode(v) if b"\n" in v else v.decode("utf-8", "surrogateescape").strip()


def _via_line(v: bytes, top: bool) -> Any:
    """
    Check every value of one Via line (L{_VIA_LINES}).

    @param top: parse the first value (the message's top Via).
    @return: the first value, parsed if C{top}, else L{_VALID}.
    @raise SipParseError: a value is malformed, or the line has none.
    """
    text = _value_text(v)
    # (what split_header_values gives a plain single value, inline)
    single = text and "," not in text and '"' not in text
    values = [text] if single else split_header_values(text, strict=True)
    if not values:  # the first line has a value (strict split)
        raise bad("missing Via")
    found = parse_via(values[0]) if top else _VALID
    for value in values[1:] if top else values:
        check_via(value)
    return keep_parsed(_VIA_LINES, v, found)


def parse_message(
    data: bytes, *, max_size: int = 65535, max_headers: int = 128
) -> SipMessage:
    """
    Parse exactly one SIP message: a datagram, or one message cut from a
    stream by L{spwm.sip.framing.SipStreamFramer}.

    The body is Content-Length bytes; octets after it are ignored (RFC 3261
    18.3, RFC 4475 3.1.1.8).  Without Content-Length the body is the rest of
    the data (datagrams from RFC 2543 peers).  CRLFs before the start line are
    skipped (RFC 3261 7.5).

    @param data: the bytes.
    @param max_size: the largest message accepted, in bytes.
    @param max_headers: the most header lines accepted.
    @return: the message.
    @raise SipParseError: for anything malformed or over a limit, and nothing
        else for any input: 413 over C{max_size}; 505 for a request of another
        SIP version; 501 for an unknown method whose CSeq does not match; 400
        otherwise, with a reason that says what is wrong.
    """
    data = bytes(data)
    size = len(data)
    if size > max_size:
        raise bad(f"message of {size} bytes over the limit of {max_size}", 413)
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    if start == size:
        raise bad("empty message")
    # the first empty line (g.HEAD_END_B), found with bytes.find: a
    # regex search that starts with an optional CR tries every position
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if crlf < 0 and lf < 0:
        raise bad("header section not terminated by an empty line")
    if lf < 0 or 0 <= crlf < lf:
        head_end, body_start = crlf + 1, crlf + 3
    else:
        head_end, body_start = lf + 1, lf + 2

    # start line
    # (the version as nearly every message writes it, without decoding)
    if data[start : start + 4].upper() == b"SIP/":
        m = g.STATUS_LINE_B.match(data, start, head_end)
        if m is None:
            raise bad("malformed Status-Line")
        raw_version, raw_status, raw_reason = m.groups()
        version = "SIP/2.0" if raw_version == b"SIP/2.0" else raw_version.decode("ascii").upper()
        status = int(raw_status)
        if status < 100 or status > 699:
            raise bad(f"status code {status} out of range")
        if version != "SIP/2.0":
            raise bad(f"{version}", 505)
        message = SipMessage(
            is_request=False,
            status=status,
            reason=raw_reason.decode("utf-8", "surrogateescape"),
            version=version,
        )
    else:
        m = g.REQUEST_LINE_B.match(data, start, head_end)
        if m is None:
            raise bad("malformed Request-Line")
        raw_method, raw_uri, raw_version = m.groups()
        version = "SIP/2.0" if raw_version == b"SIP/2.0" else raw_version.decode("ascii").upper()
        if version != "SIP/2.0":
            raise bad(f"{version}", 505)
        uri = raw_uri.decode("utf-8", "surrogateescape")
        method = raw_method.decode("ascii")
        scheme = uri[:5].lower()
        if scheme.startswith("sip:") or scheme == "sips:":
            if parse_uri(uri).headers is not None:
                raise bad("headers in the Request-URI")
        elif g.ABSOLUTE_URI.fullmatch(uri) is None:
            raise bad("malformed Request-URI")
        message = SipMessage(is_request=True, method=method, uri=uri, version=version)
    message._start_line = (
        m.group(0),
        (message.method, message.uri, message.status, message.reason, message.version),
    )
    pos = m.end()

    # header lines: plain ones cut without the expression
    # (_plain_headers), else one findall cuts them; they are all
    # well-formed when they cover the header section without a gap
    # (findall skips what does not match)
    headers = _plain_headers(data[pos:head_end])
    if headers is None:
        lines = g.HEADER_LINES_B.findall(data, pos, head_end)
        if len(b"".join([line[0] for line in lines])) != head_end - pos:
            _refuse_header_lines(data, pos, head_end, max_headers)
        headers = []
        if lines:
            # by map: no Python call per line but Header's own
            _, raw_names, _, values, _ = zip(*lines)
            names: list[Any] = list(map(_name_cache.get, raw_names))
            if None in names:
                names = list(map(_wire_name, raw_names))
            headers = list(map(Header, raw_names, names, values, lines))
    if len(headers) > max_headers:
        raise bad(f"more than {max_headers} header lines")
    message.headers = headers
    message._blank = data[head_end:body_start]

    content_length = _check_headers(message)

    # body
    if content_length is None:
        message.body = data[body_start:]
    else:
        length = _CONTENT_LENGTHS.get(content_length.value)
        if length is None:
            cl = g.DIGITS.fullmatch(content_length.text)
            if cl is None:
                raise bad("malformed Content-Length")
            length = keep_parsed(_CONTENT_LENGTHS, content_length.value, int(cl.group(1)))
        if body_start + length > size:
            raise bad(
                f"Content-Length {length} larger than the {size - body_start} "
                "bytes of body received"
            )
        message.body = data[body_start : body_start + length]
    return message


def _plain_headers(head: bytes) -> list[Header] | None:
    """
    The header lines of a plain section, cut without the expression: every
    line ends in CRLF (no CR or LF stands alone), no line is folded, and
    every name is one an earlier message's lines had (L{_name_cache},
    which holds only names the expression matched; a folded line's name
    would start with white space). Nearly every message is plain (issue
    15: the expression took about a fifth of a message's parse).

    @param head: the header section, from the first header line to the
        end of the last one's line end.
    @return: the lines, each with the groups C{HEADER_LINES_B} would have
        matched; C{None} when the section is not plain (the expression
        cuts it, and finds what is wrong).
    """
    names = _name_cache
    headers: list[Header] = []
    lines = head.split(b"\r\n")
    if lines.pop():  # (what follows the last CRLF: nothing)
        return None
    # no CR or LF but the CRLFs it was split at (two counts cost less
    # than looking in each line)
    ends = len(lines)
    if head.count(b"\r") != ends or head.count(b"\n") != ends:
        return None
    for line in lines:
        # (the colon by index: bytes.find is a method call, a name a few
        # octets)
        size = len(line)
        colon = 0
        while colon < size and line[colon] != 58:
            colon += 1
        if colon == 0 or colon == size:
            return None
        raw_name = line[:colon]
        name = names.get(raw_name)
        if name is None:
            return None
        start = colon + 1
        while start < size and (line[start] == 32 or line[start] == 9):
            start += 1
        value = line[start:]
        headers.append(Header(raw_name, name, value, (line + b"\r\n", raw_name, line[colon:start], value, b"\r\n")))
    return headers


def _refuse_header_lines(data: bytes, pos: int, head_end: int, max_headers: int) -> None:
    """
    Find the first problem of a header section that is not all well-formed
    lines, line by line, as L{parse_message} reports it.

    @raise SipParseError: always.
    """
    count = 0
    match = g.HEADER_LINE_B.match
    while pos < head_end:
        m = match(data, pos, head_end)
        if m is None:
            break
        if count >= max_headers:
            raise bad(f"more than {max_headers} header lines")
        count += 1
        pos = m.end()
    raise bad(f"malformed header line {data[pos : pos + 30]!r}")


_TAG_MISSING = object()


def stable_tag(msg: SipMessage) -> str:
    """
    The To tag of an answer a half makes itself: derived from the Call-ID,
    so a retransmitted request gets the same answer (RFC 3261 8.2.6.2).
    """
    return hashlib.sha256((msg.call_id or "").encode("utf-8", "surrogateescape")).hexdigest()[:10]


def make_response(
    request: SipMessage,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> SipMessage:
    """
    Build a response to a request (RFC 3261 8.2.6): Via (every line, as
    received), From, To (with C{to_tag} added if given and To has no tag),
    Call-ID and CSeq copied; then C{extra_headers}; then C{Content-Length: 0}.

    @param request: the request.
    @param status: the status code.
    @param reason: the reason phrase.
    @param to_tag: the To tag to add.
    @param extra_headers: C{(name, value)} pairs to add.
    @return: the response.
    """
    response = SipMessage(is_request=False, status=status, reason=reason)
    for h in request.headers:
        if h.name in ("via", "from", "call-id", "cseq"):
            copy = Header(h.raw_name, h.name, h.value)
            copy._raw = h._raw
            response.headers.append(copy)
        elif h.name == "to":
            copy = Header(h.raw_name, h.name, h.value)
            if to_tag is not None and parse_name_addr(h.text).tag is None:
                copy.value = h.value.rstrip() + b";tag=" + _encode(to_tag)
            else:
                copy._raw = h._raw
            response.headers.append(copy)
    for name, value in extra_headers:
        response.append_header(name, value)
    response.headers.append(Header(b"Content-Length", "content-length", b"0"))
    return response


__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "Header",
    "NameAddr",
    "SipMessage",
    "SipParseError",
    "SipUri",
    "Via",
    "canonical_name",
    "make_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_header_values",
    "stable_tag",
]
