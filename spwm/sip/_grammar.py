# -*- test-case-name: tests.test_sip_message -*-
"""
The RFC 3261 grammar SPWM needs, as compiled regular expressions.

Each expression names the ABNF rule (RFC 3261 section 25.1 unless stated) it
implements, and says where it is deliberately more liberal than the ABNF
(always because RFC 4475 or RFC 5118 says a robust element must accept it).

Byte patterns (C{*_B}) work on the wire form of a message; text patterns work
on header values that were decoded (UTF-8, C{surrogateescape}) and unfolded
(every C{LWS} folding replaced by one space).
"""

from __future__ import annotations

import re

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN = rf"[{TOKEN_CHARS}]+"

# --- wire level (bytes) -------------------------------------------------------

#: Request-Line = Method SP Request-URI SP SIP-Version CRLF (7.1).  Exactly one
#: SP between the elements (RFC 4475 3.1.2.8-10 reject everything else); bare
#: LF line ends are tolerated (RFC 5118's archived messages use them).
REQUEST_LINE_B = re.compile(
    rb"([A-Za-z0-9\-.!%*_+`'~]+) ([^ \t\r\n]+) ([Ss][Ii][Pp]/[0-9]+\.[0-9]+)\r?\n"
)

#: Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF (7.2);
#: Reason-Phrase may be empty (RFC 4475 3.1.1.13) and hold UTF-8.
STATUS_LINE_B = re.compile(
    rb"([Ss][Ii][Pp]/[0-9]+\.[0-9]+) ([0-9]{3}) ([^\x00-\x08\x0a-\x1f\x7f]*)\r?\n"
)

#: message-header = field-name HCOLON field-value CRLF, with folded
#: continuation lines (7.3.1).  HCOLON = *( SP / HTAB ) ":" SWS; the optional
#: folding right after the colon belongs to the separator (group 2).  Group 3
#: is the raw value, folding untouched; group 4 the line end.
HEADER_LINE_B = re.compile(
    rb"([A-Za-z0-9\-.!%*_+`'~]+)([ \t]*:[ \t]*(?:\r?\n[ \t]+)?)"
    rb"([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)(\r?\n)"
)

#: L{HEADER_LINE_B} with the whole line as group 1: name, separator, raw
#: value and line end are groups 2 to 5.
HEADER_LINES_B = re.compile(b"(" + HEADER_LINE_B.pattern + b")")

#: The empty line that ends the header section (first CRLF CRLF, LF LF tolerated).
HEAD_END_B = re.compile(rb"\r?\n\r?\n")

#: Folding inside a raw value: LWS = [*WSP CRLF] 1*WSP (25.1).
FOLD_B = re.compile(rb"[ \t]*\r?\n[ \t]+")

#: A Content-Length (or compact "l") header line inside a raw header section,
#: for the stream framer, which must not parse whole messages.
CONTENT_LENGTH_LINE_B = re.compile(
    rb"(?:^|\n)(?:content-length|l)[ \t]*:[ \t]*(?:\r?\n[ \t]+)?([^\r\n]*)",
    re.IGNORECASE,
)

# --- values (text, unfolded) -----------------------------------------------------

#: quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE; quoted-pair
#: = "\" (%x00-09 / %x0B-0C / %x0E-7F); qdtext may be UTF-8 (RFC 4475 3.1.1.2).
QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'

#: IPv6reference = "[" IPv6address "]"; kept liberal (hex, colons, dots) since
#: RFC 5118 4.10 requires tolerating the three-colon form of the buggy ABNF.
IPV6_REFERENCE = r"\[[0-9A-Fa-f]*:[0-9A-Fa-f:.]*\]"

#: hostname / IPv4address (both fit this) / IPv6reference.
HOST = rf"(?:[A-Za-z0-9\-.]+|{IPV6_REFERENCE})"

#: gen-value = token / host / quoted-string (and a bare IPv6 address for Via
#: received, RFC 5118 4.5, which the token alternative covers with ":").
GEN_VALUE = rf"(?:{QUOTED}|{IPV6_REFERENCE}|[{TOKEN_CHARS}:]+)"

#: generic-param list: *( SEMI generic-param ), SEMI = SWS ";" SWS, EQUAL = SWS "=" SWS.
PARAMS = rf"(?:[ \t]*;[ \t]*{TOKEN}(?:[ \t]*=[ \t]*{GEN_VALUE})?)*"
PARAM = re.compile(rf"[ \t]*;[ \t]*({TOKEN})(?:[ \t]*=[ \t]*({GEN_VALUE}))?")

#: Plain generic-params: L{PARAMS} without white space, quoted strings or
#: IPv6 references (";branch=z9hG4bK74bf9;received=192.0.2.1;rport"),
#: which C{str.split} cuts as L{PARAM} would.
PLAIN_PARAMS = re.compile(rf"(?:;{TOKEN}(?:=[{TOKEN_CHARS}:]+)?)*")

#: display-name = *(token LWS) / quoted-string.  A token run directly before
#: "<" is accepted (RFC 4475 3.1.1.6).
DISPLAY_NAME = rf"(?:{QUOTED}|{TOKEN}(?:[ \t]+{TOKEN})*)"

#: name-addr = [ display-name ] LAQUOT addr-spec RAQUOT, then header params.
#: No spaces inside the angle brackets (RFC 4475 3.1.2.14 rejected).
NAME_ADDR = re.compile(
    rf"[ \t]*(?:({DISPLAY_NAME})[ \t]*)?<([^\s<>]+)>({PARAMS})[ \t]*"
)

#: addr-spec without angle brackets: the URI cannot hold ";", "," or "?"
#: (20.10), so any ";" starts the header params (RFC 4475 3.3.12).
ADDR_SPEC = re.compile(rf"[ \t]*([A-Za-z][A-Za-z0-9+\-.]*:[^\s;,?<>\"]+)({PARAMS})[ \t]*")

#: via-parm = sent-protocol LWS sent-by *( SEMI via-params ); SLASH and COLON
#: allow whitespace around them (RFC 4475 3.1.1.1).
VIA = re.compile(
    rf"[ \t]*({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]+"
    rf"({HOST})(?:[ \t]*:[ \t]*([0-9]{{1,5}}))?({PARAMS})[ \t]*"
)

#: absoluteURI scheme ":" rest, for the Request-URI and non-SIP URIs (RFC 3986 scheme).
ABSOLUTE_URI = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):([^\s<>\"]*)")

#: SIP-URI / SIPS-URI (19.1.1) after "sip:" / "sips:".
#: userinfo = ( user / telephone-subscriber ) [ ":" password ] "@";
#: user = 1*( unreserved / escaped / user-unreserved );
#: uri-parameter chars = paramchar; headers = "?" header *( "&" header ).
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
SIP_URI_REST = re.compile(
    rf"(?:([{_UNRESERVED}%&=+$,;?/]+)(?::([{_UNRESERVED}%&=+$,]*))?@)?"
    rf"({HOST})(?::([0-9]{{1,5}}))?"
    rf"((?:;[{_UNRESERVED}%\[\]/:&+$]+(?:=[{_UNRESERVED}%\[\]/:&+$]+)?)*)"
    rf"(?:\?([{_UNRESERVED}%\[\]/?:+$]+=[{_UNRESERVED}%\[\]/?:+$]*"
    rf"(?:&[{_UNRESERVED}%\[\]/?:+$]+=[{_UNRESERVED}%\[\]/?:+$]*)*))?"
)
URI_PARAM = re.compile(rf";([{_UNRESERVED}%\[\]/:&+$]+)(?:=([{_UNRESERVED}%\[\]/:&+$]+))?")

#: CSeq = 1*DIGIT LWS Method.
CSEQ = re.compile(rf"[ \t]*([0-9]+)[ \t]+({TOKEN})[ \t]*")

#: Call-ID = word [ "@" word ]; word allows many punctuation characters.
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
CALL_ID = re.compile(rf"[ \t]*{_WORD}(?:@{_WORD})?[ \t]*")

#: 1*DIGIT with optional surrounding whitespace (Max-Forwards, Content-Length, Expires).
DIGITS = re.compile(r"[ \t]*([0-9]+)[ \t]*")

#: One element of a comma-separated header value: commas inside quoted strings
#: and angle brackets do not split.
LIST_ELEMENT = re.compile(r'(?:"(?:[^"\\]|\\.)*"|<[^>]*>|[^,"<])*', re.DOTALL)

#: %HH escapes.
ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
