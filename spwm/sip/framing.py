# -*- test-case-name: tests.test_sip_framing -*-
"""
SIP over a byte stream (TCP, TLS, a tunnel stream), sans-I/O.

RFC 3261 18.3: on a stream, each message's body length comes from its
Content-Length, which is then required.  RFC 5626 4.4.1: a client sends
C{CRLF CRLF} as a keepalive ping and the server answers C{CRLF} (pong);
RFC 3261 7.5: CRLFs before a start line are ignored.
"""

from __future__ import annotations

import attrs

from spwm.sip import _grammar as g
from spwm.sip.errors import SipParseError, bad


@attrs.frozen
class KeepAlive:
    """
    The peer sent an RFC 5626 keepalive ping (C{CRLF CRLF}); answer it with
    C{b"\\r\\n"}.
    """


_PING = b"\r\n\r\n"
_CRLF = b"\r\n"
#: the bytes a message may start with: a method or C{SIP/2.0} is a
#: token (RFC 3261 25.1); a stray LF is left to the parser, as before
_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~\n")


class SipStreamFramer:
    """
    Cut a byte stream into SIP messages.

    Feed it bytes as they arrive; it returns each complete message (start
    line, headers and Content-Length body) as C{bytes}, ready for
    L{spwm.sip.message.parse_message}, and a L{KeepAlive} for each ping.
    Bare CRLF pongs are dropped.  Bytes of an incomplete message stay buffered.

    @ivar max_size: the largest message (header section plus body) accepted.
    """

    def __init__(self, max_size: int = 65535) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        # where to resume the search for the end of the header section
        self._scan = 0
        # (header length, total length) of the message being received
        self._pending: tuple[int, int] | None = None
        self._error: SipParseError | None = None

    @property
    def buffered(self) -> int:
        """
        The number of bytes held for an incomplete message.
        """
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | KeepAlive]:
        """
        Add bytes from the stream.

        @return: the messages and keepalives completed by these bytes, in order.
        @raise SipParseError: when the stream cannot be framed any more: a
            header section or message over C{max_size} (413), a message
            without Content-Length or with a malformed one, bytes that
            cannot start a message (a STUN message, say: RFC 5626 keeps a
            stream flow alive with C{CRLF CRLF}) (400).  The framer
            then refuses further input with the same error; close the
            connection.
        """
        if self._error is not None:
            raise self._error
        buf = self._buffer
        buf += data
        out: list[bytes | KeepAlive] = []
        pos = 0
        try:
            while True:
                if self._pending is None:
                    # keepalives and CRLFs between messages
                    while buf.startswith(_CRLF, pos):
                        if buf.startswith(_PING, pos):
                            out.append(KeepAlive())
                            pos += 4
                        elif len(buf) - pos >= 3 and buf[pos + 2] != 13:
                            pos += 2  # pong, or a stray CRLF
                        elif len(buf) - pos >= 4:
                            pos += 2  # CRLF CR x: stray CRLF
                        else:
                            break  # could still become a ping
                    if pos >= len(buf) or buf.startswith(_CRLF, pos):
                        break
                    first = buf[pos]
                    if first not in _START and not (first == 13 and pos == len(buf) - 1):
                        # binary (a STUN message, TLS to a TCP port ...):
                        # no header end would ever come
                        raise bad(f"not a SIP message: it starts with the byte 0x{first:02x}")
                    end = g.HEAD_END_B.search(buf, max(pos, self._scan))
                    if end is None:
                        if len(buf) - pos > self.max_size:
                            raise bad(
                                f"header section over the limit of {self.max_size} bytes",
                                413,
                            )
                        self._scan = max(pos, len(buf) - 3)
                        break
                    head_len = end.end() - pos
                    self._scan = 0
                    lengths = [
                        m.group(1).strip()
                        for m in g.CONTENT_LENGTH_LINE_B.finditer(buf, pos, end.end())
                    ]
                    if not lengths:
                        raise bad("missing Content-Length on a stream transport")
                    if any(not v.isdigit() for v in lengths) or len(set(map(int, lengths))) != 1:
                        raise bad("malformed or conflicting Content-Length")
                    total = head_len + int(lengths[0])
                    if total > self.max_size:
                        raise bad(
                            f"message of {total} bytes over the limit of {self.max_size}",
                            413,
                        )
                    self._pending = (head_len, total)
                total = self._pending[1]
                if len(buf) - pos < total:
                    break
                out.append(bytes(buf[pos : pos + total]))
                pos += total
                self._pending = None
        except SipParseError as e:
            self._error = e
            self._buffer = bytearray()
            raise
        if pos:
            del buf[:pos]
            if self._scan:
                self._scan = max(0, self._scan - pos)
        return out
