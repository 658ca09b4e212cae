# -*- test-case-name: tests.test_sdp -*-
"""
Session descriptions (SDP, RFC 8866, formerly RFC 4566): parse and rewrite.

This is a sans-I/O layer used by the media relay. It understands exactly the
lines that a media relay has to touch and keeps every other byte as it was:

  - C{c=} at session and media level (C{IN IP4} and C{IN IP6});
  - C{m=} ports, including port 0 (a rejected or removed stream) and the
    C{port/count} form;
  - C{a=rtcp} (RFC 3605) and C{a=rtcp-mux} (RFC 5761), C{a=rtcp-mux-only};
  - the ICE attributes (C{a=candidate}, C{a=ice-ufrag}, C{a=ice-pwd},
    C{a=ice-options}, C{a=ice-lite}, C{a=end-of-candidates},
    C{a=remote-candidates}), which a rewrite removes: the relay is the only
    candidate;
  - hold: C{a=sendonly}, C{a=recvonly}, C{a=inactive} and the RFC 2543 hold
    address C{0.0.0.0} (or C{::}), which a rewrite keeps;
  - C{o=}: its address becomes ours like C{c=}'s, its version is handled
    by L{OriginVersioner};
  - C{multipart/mixed} bodies: L{find_sdp} and L{replace_sdp}.

Line order and line endings (CRLF, LF or CR, as found) are kept; a line that
the rewrite does not change is copied byte for byte.

The parser raises only L{SdpError}, for any input.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any, Callable, NamedTuple, Sequence

from dataclasses import dataclass, field

from spwm.errors import SpwmError

__all__ = [
    "ICE_ATTRIBUTES",
    "DIRECTIONS",
    "Connection",
    "MediaDescription",
    "SessionDescription",
    "SdpError",
    "OriginVersioner",
    "parse_sdp",
    "rewrite_sdp",
    "TcpRewrite",
    "rewrite_tcp_media",
    "find_sdp",
    "replace_sdp",
]


class SdpError(SpwmError):
    """
    A session description (or the multipart body around it) is malformed.
    """


#: Attributes that belong to ICE (RFC 8839). A rewrite removes them.
ICE_ATTRIBUTES = frozenset(
    {
        b"candidate",
        b"ice-ufrag",
        b"ice-pwd",
        b"ice-options",
        b"ice-lite",
        b"ice-mismatch",
        b"ice-pacing",
        b"end-of-candidates",
        b"remote-candidates",
    }
)

#: The direction attributes (RFC 3264 section 5.1).
DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})

#: One line as C{splitlines(keepends=True)} cuts it: C{<type>=<value>} or
#: empty (groups 1 and 2 C{None}), then its ending if any.
_LINE = re.compile(rb"(?:([a-zA-Z])=([^\r\n]*))?(\r\n|\r|\n)?\Z")
_TOKEN = re.compile(rb"[!#-'*+\-.0-9A-Z^-~]+\Z")
_DIGITS = re.compile(rb"[0-9]{1,20}\Z")
_ORIGIN_VERSION = re.compile(rb"(o=\S+[ \t]+\S+[ \t]+)([0-9]+)")
_UNSPECIFIED = frozenset({"0.0.0.0", "::"})
_DISCARD_PORT = 9


@dataclass(frozen=True, slots=True)
class Connection:
    """
    A C{c=} line (RFC 8866 section 5.7).

    @ivar nettype: the network type, normally C{"IN"}.
    @ivar addrtype: C{"IP4"}, C{"IP6"} or another address type.
    @ivar address: the address without a TTL or count suffix: an IP literal
        or a host name.
    """

    nettype: str
    addrtype: str
    address: str

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(self, nettype: str, addrtype: str, address: str) -> None:
        object.__setattr__(self, "nettype", nettype)
        object.__setattr__(self, "addrtype", addrtype)
        object.__setattr__(self, "address", address)

    @property
    def unspecified(self) -> bool:
        """
        C{True} for C{0.0.0.0} and C{::}: RFC 2543 hold, or the "no candidate
        yet" placeholder of trickle ICE (RFC 8840).
        """
        return self.address in _UNSPECIFIED


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """
    One C{m=} section, with the effective values that apply to it.

    @ivar index: the position of the C{m=} line (0 for the first).
    @ivar media: the media type (C{"audio"}, C{"video"}, C{"application"}, ...).
    @ivar port: the transport port; 0 means rejected or removed.
    @ivar port_count: the C{/count} of the port (1 when absent).
    @ivar proto: the transport protocol (C{"RTP/AVP"}, C{"UDP/TLS/RTP/SAVPF"},
        C{"TCP/MSRP"}, ...).
    @ivar formats: the format list of the C{m=} line.
    @ivar connection: the effective connection: the media level C{c=}, else
        the session level one, else C{None}.
    @ivar rtcp_port: the RTCP port: C{a=rtcp}, else C{port + 1} (0 for a
        rejected stream).
    @ivar rtcp_address: the RTCP address: from C{a=rtcp} if given there,
        else the connection address.
    @ivar rtcp_mux: C{a=rtcp-mux} is present.
    @ivar rtcp_mux_only: C{a=rtcp-mux-only} is present (RFC 8858).
    @ivar direction: the effective direction: media attribute, else the
        session attribute, else C{"sendrecv"}.
    @ivar setup: the value of C{a=setup} (RFC 4145) at media level, else
        at session level, or C{None}.
    @ivar ice: ICE attributes apply to this stream (media or session level).
    @ivar mid: the value of C{a=mid} (RFC 9143), or C{None}.
    @ivar connection_mode: the value of C{a=connection} (RFC 4145:
        C{"new"} or C{"existing"}) at media or session level, or C{None}.
    @ivar path: the URIs of C{a=path} (MSRP, RFC 4975), in order.
    """

    index: int
    media: str
    port: int
    port_count: int
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None
    rtcp_port: int
    rtcp_address: str | None
    rtcp_mux: bool
    rtcp_mux_only: bool
    direction: str
    setup: str | None
    ice: bool
    mid: str | None
    connection_mode: str | None = None
    path: tuple[str, ...] = ()

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(
        self,
        index: int,
        media: str,
        port: int,
        port_count: int,
        proto: str,
        formats: tuple[str, ...],
        connection: Connection | None,
        rtcp_port: int,
        rtcp_address: str | None,
        rtcp_mux: bool,
        rtcp_mux_only: bool,
        direction: str,
        setup: str | None,
        ice: bool,
        mid: str | None,
        connection_mode: str | None = None,
        path: tuple[str, ...] = (),
    ) -> None:
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "media", media)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "port_count", port_count)
        object.__setattr__(self, "proto", proto)
        object.__setattr__(self, "formats", formats)
        object.__setattr__(self, "connection", connection)
        object.__setattr__(self, "rtcp_port", rtcp_port)
        object.__setattr__(self, "rtcp_address", rtcp_address)
        object.__setattr__(self, "rtcp_mux", rtcp_mux)
        object.__setattr__(self, "rtcp_mux_only", rtcp_mux_only)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "setup", setup)
        object.__setattr__(self, "ice", ice)
        object.__setattr__(self, "mid", mid)
        object.__setattr__(self, "connection_mode", connection_mode)
        object.__setattr__(self, "path", path)

    @property
    def address(self) -> str | None:
        """
        The effective connection address, or C{None} when there is no C{c=}.
        """
        return None if self.connection is None else self.connection.address

    @property
    def address_family(self) -> str | None:
        """
        The effective address type (C{"IP4"}, C{"IP6"}), or C{None}.
        """
        return None if self.connection is None else self.connection.addrtype

    @property
    def rejected(self) -> bool:
        """
        Port 0: the stream is rejected (in an answer) or removed (in an offer).
        """
        return self.port == 0

    @property
    def is_tcp(self) -> bool:
        """
        The transport is TCP (RFC 4145: C{TCP}, C{TCP/MSRP}, C{TCP/TLS/...}).
        """
        return "TCP" in self.proto.upper().split("/")

    @property
    def placeholder(self) -> bool:
        """
        The address is unspecified as a trickle ICE placeholder (RFC 8840:
        port 9 or ICE present): the stream is live and gets a relay address.
        """
        return (
            self.connection is not None
            and self.connection.unspecified
            and (self.ice or self.port == _DISCARD_PORT)
        )

    @property
    def hold_address(self) -> bool:
        """
        The address is the RFC 2543 hold address (C{0.0.0.0} or C{::}, not a
        trickle placeholder). A rewrite keeps it.
        """
        # Connection.unspecified read in place: the negotiation asks for
        # it, through held, several times per call (issue 15)
        connection = self.connection
        return connection is not None and connection.address in _UNSPECIFIED and not self.placeholder

    @property
    def held(self) -> bool:
        """
        The stream is on hold or one-way: C{sendonly}, C{recvonly},
        C{inactive} or the hold address. Such a stream may carry no packets
        in one or both directions for a long time.
        """
        if self.direction != "sendrecv":
            return True
        # hold_address, in place
        connection = self.connection
        return connection is not None and connection.address in _UNSPECIFIED and not self.placeholder


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """
    A parsed session description.

    @ivar lines: every line of the body with its line ending, in order;
        C{b"".join(lines)} is the body as it was parsed.
    @ivar origin: the C{o=} fields (username, sess-id, sess-version,
        nettype, addrtype, unicast-address), or C{None} without C{o=}.
    @ivar connection: the session level C{c=}, or C{None}.
    @ivar media: the media descriptions in order.
    """

    lines: tuple[bytes, ...]
    origin: tuple[str, str, int, str, str, str] | None
    connection: Connection | None
    media: tuple[MediaDescription, ...]
    # what _scan found, for a rewrite of the same body
    _scanned: _Scan | None = field(default=None, compare=False, repr=False)

    # (written out: spwm compile compiles it; the dataclass's own
    # __init__ runs as Python, issue 15)
    def __init__(
        self,
        lines: tuple[bytes, ...],
        origin: tuple[str, str, int, str, str, str] | None,
        connection: Connection | None,
        media: tuple[MediaDescription, ...],
        _scanned: _Scan | None = None,
    ) -> None:
        object.__setattr__(self, "lines", lines)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "connection", connection)
        object.__setattr__(self, "media", media)
        object.__setattr__(self, "_scanned", _scanned)

    def to_bytes(self) -> bytes:
        """
        @return: the body exactly as it was parsed.
        """
        return b"".join(self.lines)


def _ascii(value: bytes) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise SdpError("non-ASCII bytes in a field that must be ASCII") from None


def _parse_connection(value: bytes) -> Connection:
    parts = value.split()
    if len(parts) != 3 or not (_TOKEN.match(parts[0]) and _TOKEN.match(parts[1])):
        raise SdpError("malformed c= line")
    address = parts[2].split(b"/", 1)[0]
    if not address:
        raise SdpError("malformed c= line: empty address")
    # (the fields hold no whitespace: decoded at once)
    nettype, addrtype, text = _ascii(b" ".join((parts[0], parts[1], address))).split(" ")
    return Connection(nettype, addrtype, text)


def _split_line(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """
    @return: (type letter, value, line ending) of a raw line (C{b""} for
        what it does not have).
    """
    match = _LINE.match(raw)
    if match is None:
        raise SdpError("malformed line (not <type>=<value>)")
    kind, value, ending = match.groups()
    return kind or b"", value or b"", ending or b""


def _attribute(value: bytes) -> tuple[bytes, bytes | None]:
    name, sep, rest = value.partition(b":")
    return name.lower(), (rest if sep else None)


class _Section:
    """
    What the parser collects about one section (session or media).
    """

    __slots__ = (
        "connection",
        "rtcp",
        "rtcp_mux",
        "rtcp_mux_only",
        "direction",
        "setup",
        "ice",
        "mid",
        "mline",
        "connection_mode",
        "path",
    )

    def __init__(self) -> None:
        self.connection: Connection | None = None
        self.rtcp: tuple[int, str | None] | None = None
        self.rtcp_mux = False
        self.rtcp_mux_only = False
        self.direction: str | None = None
        self.setup: str | None = None
        self.ice = False
        self.mid: str | None = None
        self.connection_mode: str | None = None
        self.path: tuple[str, ...] = ()
        self.mline: tuple[str, int, int, str, tuple[str, ...]] | None = None


def _parse_port(value: bytes, maximum: int = 65535) -> int:
    if not _DIGITS.match(value):
        raise SdpError("malformed port")
    port = int(value)
    if port > maximum:
        raise SdpError("port out of range")
    return port


def _parse_mline(value: bytes) -> tuple[str, int, int, str, tuple[str, ...]]:
    parts = value.split(b" ")
    if len(parts) < 3 or not all(parts[:3]):
        raise SdpError("malformed m= line")
    media, port_field, proto = parts[:3]
    port_text, slash, count_text = port_field.partition(b"/")
    port = _parse_port(port_text)
    count = 1
    if slash:
        count = _parse_port(count_text)
        if count < 1:
            raise SdpError("malformed m= line: port count 0")
    fields = [media, proto, *[f for f in parts[3:] if f]]
    # (the fields hold no space: decoded at once)
    media_text, proto_text, *formats = _ascii(b" ".join(fields)).split(" ")
    return media_text, port, count, proto_text, tuple(formats)


def _parse_rtcp(value: bytes) -> tuple[int, str | None]:
    parts = value.split()
    if len(parts) not in (1, 4):
        raise SdpError("malformed a=rtcp attribute")
    port = _parse_port(parts[0])
    address = None
    if len(parts) == 4:
        address = _ascii(parts[3].split(b"/", 1)[0])
    return port, address


class _Scan(NamedTuple):
    """
    What L{_scan} finds in a body.

    @ivar lines: the raw lines.
    @ivar fields: for each line, its (type letter, value, line ending);
        C{None} for what it does not have (an empty line has no type).
    @ivar starts: the index of each section's first line (the session's
        is 0, then each C{m=} line's).
    @ivar sections: the sections.
    @ivar origin: the C{o=} fields, or C{None}.
    """

    lines: tuple[bytes, ...]
    fields: list[tuple[Any, ...]]
    starts: list[int]
    sections: list[_Section]
    origin: tuple[Any, ...] | None

    def blocks(self) -> list[tuple[tuple[bytes, ...], list[tuple[Any, ...]]]]:
        """
        @return: for each section, its lines and their fields.
        """
        bounds = [*self.starts, len(self.lines)]
        return [
            (self.lines[start:end], self.fields[start:end])
            for start, end in zip(bounds, bounds[1:])
        ]


#: C{Match.groups} for C{map}: the fields of every line without a Python
#: call per line.
_GROUPS: Callable[[re.Match[bytes]], tuple[Any, ...]] = re.Match.groups


def _scan(body: bytes) -> _Scan:
    """
    Split C{body} into lines and sections.

    @raise SdpError: the body is malformed (the first problem, line by
        line).
    """
    if not isinstance(body, bytes):
        raise SdpError("an SDP body is bytes")
    lines = tuple(body.splitlines(keepends=True))
    if not lines:
        raise SdpError("empty session description")
    matches = list(map(_LINE.match, lines))
    good = matches.index(None) if None in matches else len(lines)
    if good == 0:
        raise SdpError("malformed line (not <type>=<value>)")
    # (every one of these matched)
    matched: list[Any] = matches[:good]
    fields = list(map(_GROUPS, matched))
    if fields[0][0] != b"v":
        raise SdpError("a session description starts with v=")
    starts = [0]
    section = _Section()
    sections = [section]
    origin = None
    for position, (kind, value, _) in enumerate(fields):
        if kind == b"m":
            section = _Section()
            section.mline = _parse_mline(value)
            sections.append(section)
            starts.append(position)
        elif kind == b"c":
            if section.connection is not None:
                raise SdpError("more than one c= line in a section")
            section.connection = _parse_connection(value)
        elif kind == b"o" and len(sections) == 1:
            if origin is not None:
                raise SdpError("more than one o= line")
            parts = value.split()
            if len(parts) != 6 or not _DIGITS.match(parts[2]):
                raise SdpError("malformed o= line")
            # (the fields hold no whitespace: decoded at once)
            texts = _ascii(b" ".join(parts)).split(" ")
            origin = (
                texts[0],
                texts[1],
                int(parts[2]),
                texts[3],
                texts[4],
                texts[5],
            )
        elif kind == b"a":
            name, arg = _attribute(value)
            if name in ICE_ATTRIBUTES:
                section.ice = True
            elif name == b"rtcp":
                if arg is None:
                    raise SdpError("a=rtcp without a port")
                section.rtcp = _parse_rtcp(arg)
            elif name == b"rtcp-mux":
                section.rtcp_mux = True
            elif name == b"rtcp-mux-only":
                section.rtcp_mux_only = True
            elif arg is None and name in (
                b"sendrecv",
                b"sendonly",
                b"recvonly",
                b"inactive",
            ):
                section.direction = name.decode("ascii")
            elif name == b"setup" and arg is not None:
                section.setup = _ascii(arg.strip())
            elif name == b"mid" and arg is not None:
                section.mid = _ascii(arg.strip())
            elif name == b"connection" and arg is not None:
                section.connection_mode = _ascii(arg.strip()).lower()
            elif name == b"path" and arg is not None:
                section.path = tuple(_ascii(uri) for uri in arg.split())
    if good < len(lines):
        raise SdpError("malformed line (not <type>=<value>)")
    return _Scan(lines, fields, starts, sections, origin)


def parse_sdp(body: bytes) -> SessionDescription:
    """
    Parse a session description.

    The lines the relay needs (C{v=} first, C{o=}, C{c=}, C{m=}, C{a=rtcp})
    are checked; any other C{<letter>=<value>} line is kept as it is, and
    empty lines are tolerated.

    @param body: the SDP body (not a multipart body: see L{find_sdp}).
    @return: the parsed description.
    @raise SdpError: the body is malformed. No other exception is raised for
        any C{bytes} input.
    """
    return _describe(_scan(body))


def _describe(scan: _Scan) -> SessionDescription:
    """
    The description of a scanned body (L{parse_sdp}).
    """
    sections = scan.sections
    session = sections[0]
    media = []
    for index, section in enumerate(sections[1:]):
        assert section.mline is not None
        kind, port, count, proto, formats = section.mline
        connection = section.connection or session.connection
        if port == 0:
            rtcp_port = 0
        elif section.rtcp is not None:
            rtcp_port = section.rtcp[0]
        else:
            rtcp_port = min(port + 1, 65535)
        rtcp_address = None
        if section.rtcp is not None and section.rtcp[1] is not None:
            rtcp_address = section.rtcp[1]
        elif connection is not None:
            rtcp_address = connection.address
        media.append(
            MediaDescription(
                index=index,
                media=kind,
                port=port,
                port_count=count,
                proto=proto,
                formats=formats,
                connection=connection,
                rtcp_port=rtcp_port,
                rtcp_address=rtcp_address,
                rtcp_mux=section.rtcp_mux or section.rtcp_mux_only,
                rtcp_mux_only=section.rtcp_mux_only,
                direction=section.direction or session.direction or "sendrecv",
                setup=section.setup or session.setup,
                ice=section.ice or session.ice,
                mid=section.mid,
                connection_mode=section.connection_mode or session.connection_mode,
                path=section.path,
            )
        )
    return SessionDescription(
        lines=scan.lines,
        origin=scan.origin,
        connection=session.connection,
        media=tuple(media),
        _scanned=scan,
    )


def rewrite_sdp(
    body: bytes,
    address: str,
    ports: Sequence[tuple[int, int | None] | None],
    versioner: OriginVersioner | None = None,
    parsed: SessionDescription | None = None,
) -> bytes:
    """
    Rewrite a session description so that its media goes to C{address}.

    For every C{m=} line with an entry C{(rtp_port, rtcp_port)} in C{ports}:
    the C{m=} port becomes C{rtp_port} (a C{/count} is dropped: the relay
    carries one port); its C{c=} (media level, or the session level one it
    inherits) becomes C{IN IP4|IP6 address}, unless it is the hold address
    C{0.0.0.0}/C{::}, which stays; C{a=rtcp} gets C{rtcp_port} (or
    C{rtp_port} when C{rtcp_port} is C{None}: RTCP multiplexed, RFC 5761)
    and, if it names an address, C{address}. When C{rtcp_port} is not
    C{rtp_port + 1} and there is no C{a=rtcp}, one is added at the end of
    the media section. An entry C{(0, None)} rejects the stream (port 0).
    The C{o=} line gets C{IN IP4|IP6 address} as its network, address type
    and address, whatever the streams (also when every C{c=} is a hold
    address or no stream is relayed): the far side sees one address family
    and none of our side's addresses. Its username, session id and version
    are kept (the version then goes through C{versioner}).

    A C{m=} line with C{None}, and every line with port 0, are left as they
    are; a live stream left alone that inherited a rewritten session C{c=}
    gets a media level copy of the original one, so its address does not
    change. ICE attributes are removed everywhere. All other lines are kept
    byte for byte.

    @param body: the SDP body.
    @param address: the relay's media address (an IPv4 or IPv6 literal).
    @param ports: one entry per C{m=} line, in order.
    @param versioner: if given, fixes the C{o=} version (L{OriginVersioner}).
    @param parsed: L{parse_sdp}C{(body)} if the caller has it (a
        description of another body is not used).
    @return: the rewritten body.
    @raise SdpError: the body is malformed.
    @raise ValueError: C{address} is not an IP literal, or C{ports} does not
        have one entry per C{m=} line.
    """
    family = _address_family(address)
    encoded = address.encode("ascii")
    origin_tail = family + b" " + encoded
    scan = None if parsed is None else parsed._scanned
    if scan is None or b"".join(scan.lines) != body:
        scan = _scan(body)
        parsed = _describe(scan)
    assert parsed is not None
    sections = scan.sections
    if len(ports) != len(parsed.media):
        raise ValueError(f"{len(ports)} port entries for {len(parsed.media)} m= lines")
    session = sections[0]
    blocks = scan.blocks()
    inheriting = [m for m in parsed.media if sections[m.index + 1].connection is None]
    session_c = session.connection
    rewrite_session_c = session_c is not None and (
        not session_c.unspecified or any(m.placeholder for m in inheriting)
    )
    out: list[bytes] = []
    for number, (block, block_fields) in enumerate(blocks):
        media = parsed.media[number - 1] if number else None
        entry = ports[number - 1] if number else None
        if media is not None and media.port == 0:
            entry = None
        relayed = entry is not None and entry[0] != 0
        section_out: list[bytes] = []
        for raw, (kind, value, ending) in zip(block, block_fields):
            if ending is None:
                ending = b""
            if kind == b"a":
                name, arg = _attribute(value)
                if name in ICE_ATTRIBUTES:
                    continue
                # (relayed: entry and media are not None)
                if name == b"rtcp" and relayed and entry is not None and media is not None:
                    raw = _rtcp_line(value, arg, entry, family, encoded, media, ending)
            elif kind == b"c":
                if (number == 0 and rewrite_session_c) or (
                    relayed and media is not None and not media.hold_address
                ):
                    raw = b"c=IN " + family + b" " + encoded + ending
            elif kind == b"m" and entry is not None:
                raw = _replace_port(value, entry[0], ending)
            elif kind == b"o" and number == 0:
                # (the scan checked: six fields)
                raw = b"o=" + b" ".join(value.split()[:3]) + b" IN " + origin_tail + ending
            section_out.append(raw)
        if media is not None:
            ending = block_fields[0][2] or b"\r\n"
            own_c = sections[number].connection is not None
            if (
                not relayed
                and media.port != 0
                and (entry is None or entry[0] != 0)
                and not own_c
                and rewrite_session_c
            ):
                # keep the address of a live stream left alone
                at = 1
                while at < len(section_out) and section_out[at].startswith(b"i="):
                    at += 1
                if not section_out[at - 1].endswith((b"\n", b"\r")):
                    section_out[at - 1] += ending
                section_out.insert(at, _session_c_raw(blocks[0][0]) + ending)
            if relayed and entry is not None:
                rtp, rtcp = entry
                if rtcp is not None and rtcp != rtp + 1 and sections[number].rtcp is None:
                    if not section_out[-1].endswith((b"\n", b"\r")):
                        section_out[-1] += ending
                    section_out.append(b"a=rtcp:%d" % rtcp + ending)
            if out and not out[-1].endswith((b"\n", b"\r")):
                out[-1] += ending
        out.extend(section_out)
    result = b"".join(out)
    if versioner is not None:
        result = versioner.apply(result)
    return result


@functools.lru_cache(maxsize=16)
def _address_family(address: str) -> bytes:
    """
    C{b"IP4"} or C{b"IP6"} for an IP literal (a relay's few addresses).

    @raise ValueError: C{address} is not an IP literal.
    """
    return b"IP6" if ipaddress.ip_address(address).version == 6 else b"IP4"


@dataclass(frozen=True, slots=True)
class TcpRewrite:
    """
    How L{rewrite_tcp_media} changes one TCP C{m=} section.

    @ivar setup: our C{a=setup} value towards our side (C{"active"},
        C{"passive"} or C{"actpass"}).
    @ivar address: our media address (an IP literal).
    @ivar port: the port we advertise (9 when we connect, RFC 4145).
    """

    setup: str
    address: str
    port: int


_MSRP_URI = re.compile(
    rb"(msrps?://)(\[[0-9A-Fa-f:.]+\]|[^\s/@:\[\]]+):[0-9]{1,5}(/\S*)\Z", re.IGNORECASE
)


def rewrite_tcp_media(body: bytes, changes: Sequence[TcpRewrite | None]) -> bytes:
    """
    Set our role and address in the TCP media sections of a session
    description (before L{rewrite_sdp}, which does C{c=} and C{m=}).

    For every C{m=} section with a L{TcpRewrite}: its C{a=setup} line gets
    our value (one is added at the end of the section if it has none; a
    session level C{a=setup} is then overridden), and an C{a=path} (MSRP)
    holding exactly one URI of the simple form
    C{msrp[s]://host:port/session;transport} gets our address and port as
    its authority. A path with several URIs (MSRP relays) or another form
    is left as it is. Every other line is kept byte for byte.

    @param changes: one entry per C{m=} line, in order.
    @raise SdpError: the body is malformed.
    @raise ValueError: C{changes} does not have one entry per C{m=} line.
    """
    scan = _scan(body)
    lines, fields, sections = scan.lines, scan.fields, scan.sections
    if len(changes) != len(sections) - 1:
        raise ValueError(f"{len(changes)} entries for {len(sections) - 1} m= lines")
    out: list[bytes] = []
    owners: list[int] = []
    for owner, (block, _) in enumerate(scan.blocks()):
        owners.extend([owner] * len(block))
    last_of: dict[int, int] = {}
    for position, owner in enumerate(owners):
        last_of[owner] = position
    for position, raw in enumerate(lines):
        owner = owners[position]
        change = changes[owner - 1] if owner else None
        if change is not None:
            kind, value, ending = fields[position]
            if ending is None:
                ending = b""
            if kind == b"a":
                name, arg = _attribute(value)
                if name == b"setup":
                    raw = b"a=setup:" + change.setup.encode("ascii") + ending
                elif name == b"path" and arg is not None:
                    raw = _path_line(value, arg, change, ending)
            out.append(raw)
            if position == last_of[owner] and sections[owner].setup is None:
                ending = fields[position][2] or b""
                if not ending:
                    ending = fields[0][2] or b"\r\n"
                    out[-1] += ending
                out.append(b"a=setup:" + change.setup.encode("ascii") + ending)
        else:
            out.append(raw)
    return b"".join(out)


def _path_line(value: bytes, arg: bytes, change: TcpRewrite, ending: bytes) -> bytes:
    uris = arg.split()
    if len(uris) != 1:
        return b"a=" + value + ending
    match = _MSRP_URI.match(uris[0])
    if match is None:
        return b"a=" + value + ending
    host = change.address.encode("ascii")
    if b":" in host:
        host = b"[" + host + b"]"
    name = value.partition(b":")[0]
    uri = match.group(1) + host + b":%d" % change.port + match.group(3)
    return b"a=" + name + b":" + uri + ending


def _session_c_raw(session_lines: Sequence[bytes]) -> bytes:
    for raw in session_lines:
        kind, value, _ = _split_line(raw)
        if kind == b"c":
            return b"c=" + value
    raise AssertionError("no session c= line")  # pragma: no cover


def _replace_port(value: bytes, port: int, ending: bytes) -> bytes:
    media, _, rest = value.partition(b" ")
    _, _, rest = rest.partition(b" ")
    return b"m=" + media + b" %d " % port + rest + ending


def _rtcp_line(
    value: bytes,
    arg: bytes | None,
    entry: tuple[int, int | None],
    family: bytes,
    address: bytes,
    media: MediaDescription,
    ending: bytes,
) -> bytes:
    rtp, rtcp = entry
    port = rtp if rtcp is None else rtcp
    parts = (arg or b"").split()
    tail = b""
    if len(parts) == 4:
        if media.hold_address:
            tail = b" " + b" ".join(parts[1:])
        else:
            tail = b" " + parts[1] + b" " + family + b" " + address
    name = value.partition(b":")[0]
    return b"a=" + name + b":%d" % port + tail + ending


class OriginVersioner:
    """
    Keeps the C{o=} version of the descriptions that one side of a dialog
    receives from us consistent (RFC 3264 section 8): the version goes up
    when our output changes and stays the same when it does not, whatever
    the original endpoint did with its own version.

    Use one per dialog and direction ("towards our side").
    """

    __slots__ = ("_origin", "_last", "_version")

    def __init__(self) -> None:
        self._origin: tuple[bytes, ...] | None = None
        self._last: bytes | None = None
        self._version = 0

    @property
    def version(self) -> int | None:
        """
        The last version written, or C{None} before the first body.
        """
        return None if self._origin is None else self._version

    def apply(self, body: bytes) -> bytes:
        """
        Fix the C{o=} version of a (rewritten) body.

        A body whose origin (username, sess-id, network and address) differs
        from the previous one starts afresh with its own version. The origin
        compared is the one in C{body}: after L{rewrite_sdp} its network and
        address are ours, so a new username or sess-id from the endpoint
        starts afresh, while an endpoint that only changes its own address
        keeps the session the other side knows, and the version goes on
        rising (starting afresh there could send the same origin with a
        lower version).

        @param body: an SDP body, normally the output of L{rewrite_sdp}.
        @return: C{body} with the C{o=} version set; unchanged if it has no
            C{o=} line.
        @raise SdpError: the body is malformed.
        """
        lines = body.splitlines(keepends=True)
        for position, raw in enumerate(lines):
            kind, value, ending = _split_line(raw)
            if kind == b"m":
                return body
            if kind == b"o":
                break
        else:
            return body
        match = _ORIGIN_VERSION.match(raw)
        if match is None:
            raise SdpError("malformed o= line")
        parts = value.split()
        origin = (parts[0], parts[1], *parts[3:])
        offered = int(match.group(2))
        rest = raw[match.end() :]
        key = b"".join(lines[:position]) + match.group(1) + rest + b"".join(
            lines[position + 1 :]
        )
        if origin != self._origin:
            self._origin = origin
            self._version = offered
        elif key != self._last:
            self._version = max(offered, self._version + 1)
        self._last = key
        lines[position] = match.group(1) + b"%d" % self._version + rest
        return b"".join(lines)


# multipart bodies (RFC 2046 section 5.1, RFC 5621)

_PARAM = re.compile(
    r';\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)'
)


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    main, _, params_text = content_type.partition(";")
    params = {}
    for match in _PARAM.finditer(";" + params_text):
        value = match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[match.group(1).lower()] = value
    return main.strip().lower(), params


def _multipart_parts(content_type: str, body: bytes) -> list[tuple[str, int, int]]:
    """
    @return: for each part of a multipart body: its content type and the
        start and end offsets of its body within C{body}.
    @raise SdpError: the multipart body is malformed.
    """
    _, params = _media_type(content_type)
    boundary = params.get("boundary")
    if not boundary or len(boundary) > 70:
        raise SdpError("multipart body without a valid boundary")
    try:
        delimiter = b"--" + boundary.encode("ascii")
    except UnicodeEncodeError:
        raise SdpError("multipart boundary is not ASCII") from None
    # every delimiter line: at the start or after a line ending
    positions = []
    start = 0
    while True:
        found = body.find(delimiter, start)
        if found < 0:
            break
        if found == 0 or body[found - 1 : found] == b"\n":
            positions.append(found)
        start = found + len(delimiter)
    parts = []
    closed = False
    for number, found in enumerate(positions):
        after = found + len(delimiter)
        if body[after : after + 2] == b"--":
            closed = True
            break
        line_end = body.find(b"\n", after)
        if line_end < 0 or number + 1 >= len(positions):
            raise SdpError("multipart part without an end")
        part_start = line_end + 1
        part_end = positions[number + 1]
        # the line break before a delimiter belongs to the delimiter
        if body[part_end - 2 : part_end] == b"\r\n":
            part_end -= 2
        elif body[part_end - 1 : part_end] == b"\n":
            part_end -= 1
        part = body[part_start:part_end]
        header_end = _header_end(part)
        if header_end is None:
            raise SdpError("multipart part without a header/body separator")
        head_len, sep_len = header_end
        part_type = "text/plain"
        for header in re.split(rb"\r?\n", part[:head_len]):
            name, colon, value = header.partition(b":")
            if colon and name.strip().lower() == b"content-type":
                part_type = value.strip().decode("latin-1")
        parts.append((part_type, part_start + head_len + sep_len, part_end))
    if not closed:
        raise SdpError("multipart body without a closing delimiter")
    return parts


def _header_end(part: bytes) -> tuple[int, int] | None:
    if part.startswith(b"\r\n"):
        return 0, 2
    if part.startswith(b"\n"):
        return 0, 1
    crlf = part.find(b"\r\n\r\n")
    lf = part.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return crlf, 4
    if lf >= 0:
        return lf, 2
    return None


def _sdp_span(content_type: str, body: bytes) -> tuple[int, int] | None:
    main, _ = _media_type(content_type)
    if main == "application/sdp":
        return 0, len(body)
    if main.startswith("multipart/"):
        for part_type, start, end in _multipart_parts(content_type, body):
            if _media_type(part_type)[0] == "application/sdp":
                return start, end
    return None


def find_sdp(content_type: str, body: bytes) -> bytes | None:
    """
    Find the session description in a SIP message body.

    @param content_type: the value of the message's C{Content-Type} header
        (an empty string when it has none).
    @param body: the message body.
    @return: the SDP body: C{body} itself for C{application/sdp}, the first
        C{application/sdp} part of a C{multipart/*} body; C{None} when there
        is none.
    @raise SdpError: a multipart body is malformed.
    """
    span = _sdp_span(content_type, body)
    if span is None:
        return None
    return body[span[0] : span[1]]


def replace_sdp(content_type: str, body: bytes, sdp: bytes) -> bytes:
    """
    Put a new session description in place of the one L{find_sdp} found.

    Every other byte of a multipart body (preamble, other parts, delimiters,
    epilogue) is kept as it was. The caller fixes C{Content-Length}.

    @param content_type: the C{Content-Type} of the message.
    @param body: the message body.
    @param sdp: the new SDP.
    @return: the new message body.
    @raise SdpError: a multipart body is malformed.
    @raise ValueError: the body contains no SDP.
    """
    span = _sdp_span(content_type, body)
    if span is None:
        raise ValueError("the body contains no SDP")
    return body[: span[0]] + sdp + body[span[1] :]
