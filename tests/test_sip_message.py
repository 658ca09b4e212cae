"""
Tests for L{spwm.sip.message}: parsing, byte preservation, the mutators,
limits, make_response, and hypothesis round trips and garbage.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip import (
    SipMessage,
    SipParseError,
    make_response,
    parse_message,
    parse_name_addr,
)
from spwm.sip.errors import SipParseError as ErrorsSipParseError
from spwm.sip import _grammar as g
from spwm.sip.message import Header, _first_element, _first_element_by_expression, _plain_headers, canonical_name
from spwm.errors import SpwmError

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds ,"
    b" SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKx;received=192.0.2.9\r\n"
    b"Max-Forwards:   70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"f: \"Alice, A.\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"i: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"X-Unknown :  keep   this ,  exactly\r\n"
    b"m: <sip:alice@pc33.atlanta.example.com>, \"x,y\" <sip:b@h>;q=0.5\r\n"
    b"Route: <sip:p1.example.com;lr>,\r\n <sip:p2.example.com;lr>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"l: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


class ParseTests(SynchronousTestCase):
    """
    Parsing a message and reading its fields.
    """

    def test_request_fields(self) -> None:
        """
        Start line, headers in wire order (compact names expanded) and the
        convenience accessors are read correctly.
        """
        m = parse_message(INVITE)
        self.assertTrue(m.is_request)
        self.assertEqual((m.method, m.uri, m.version), ("INVITE", "sip:bob@biloxi.example.com", "SIP/2.0"))
        self.assertEqual(
            [h.name for h in m.headers],
            ["via", "max-forwards", "to", "from", "call-id", "cseq", "x-unknown",
             "contact", "route", "content-type", "content-length"],
        )
        self.assertEqual(m.headers[3].raw_name, b"f")
        self.assertEqual(m.call_id, "a84b4c76e66710@pc33.atlanta.example.com")
        self.assertEqual(m.cseq, (314159, "INVITE"))
        self.assertEqual(m.cseq_method, "INVITE")
        self.assertEqual(m.max_forwards, 70)
        self.assertEqual(m.from_tag, "1928301774")
        self.assertIsNone(m.to_tag)
        self.assertEqual(m.content_type, "application/sdp")
        self.assertEqual(m.body, b"v=0\n")
        via = m.top_via
        self.assertEqual((via.transport, via.host, via.branch), ("UDP", "pc33.atlanta.example.com", "z9hG4bK776asdhds"))

    def test_lists(self) -> None:
        """
        get() gives the first element of a list header; get_all() splits
        lists across lines but not at commas inside quotes; unknown headers
        are one value per line; count() counts values.
        """
        m = parse_message(INVITE)
        self.assertEqual(len(m.get_all("v")), 2)
        self.assertEqual(m.get("Contact"), "<sip:alice@pc33.atlanta.example.com>")
        self.assertEqual(
            m.get_all("CONTACT"),
            ["<sip:alice@pc33.atlanta.example.com>", '"x,y" <sip:b@h>;q=0.5'],
        )
        self.assertEqual(m.get_all("route"), ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"])
        self.assertEqual(m.get("x-unknown"), "keep   this ,  exactly")
        self.assertEqual(m.count("route"), 2)
        self.assertEqual(m.count("record-route"), 0)
        self.assertIsNone(m.get("record-route"))
        self.assertEqual(parse_name_addr(m.get("from")).display_name, "Alice, A.")

    def test_has(self) -> None:
        """
        has() tells whether count() is above zero: a list header needs a
        value, not only a line (the first line may be empty); any other
        header needs a line.
        """
        m = parse_message(INVITE)
        self.assertTrue(m.has("route"))
        self.assertTrue(m.has("v"))
        self.assertFalse(m.has("record-route"))
        m.headers.insert(0, Header(b"Record-Route", "record-route", b" , "))
        m.headers.insert(0, Header(b"Subject", "subject", b""))
        self.assertEqual((m.has("record-route"), m.count("record-route")), (False, 0))
        self.assertEqual((m.has("subject"), m.count("subject")), (True, 1))
        m.append_header("Record-Route", "<sip:p3.example.com;lr>")
        self.assertEqual((m.has("record-route"), m.count("record-route")), (True, 1))

    def test_response(self) -> None:
        """
        A response has status and reason, no method; cseq_method tells what
        it answers.
        """
        data = INVITE.replace(b"INVITE sip:bob@biloxi.example.com SIP/2.0", b"SIP/2.0 180 Ringing  ")
        m = parse_message(data)
        self.assertFalse(m.is_request)
        self.assertEqual((m.status, m.reason, m.method, m.uri), (180, "Ringing  ", None, None))
        self.assertEqual(m.cseq_method, "INVITE")
        self.assertEqual(m.to_bytes(), data)

    def test_unmodified_bytes(self) -> None:
        """
        An unmodified message serializes to exactly its bytes, odd spacing,
        folding and unknown headers included; leading CRLFs are skipped.
        """
        self.assertEqual(parse_message(INVITE).to_bytes(), INVITE)
        self.assertEqual(parse_message(b"\r\n\r\n" + INVITE).to_bytes(), INVITE)

    def test_empty_line_endings(self) -> None:
        """
        The header section ends at the first empty line whatever its line
        ends (CRLF or bare LF, mixed); the body starts after it.
        """
        head, body = INVITE.split(b"\r\n\r\n")
        for blank in (b"\r\n\r\n", b"\n\n", b"\r\n\n", b"\n\r\n"):
            data = head + blank + body
            m = parse_message(data)
            self.assertEqual(m.body, b"v=0\n", blank)
            self.assertEqual(m.to_bytes(), data, blank)
        # an empty line further down does not count before the first
        m = parse_message(head + b"\n\n" + body + b"\r\n\r\n")
        self.assertEqual(m.body, b"v=0\n")

    def test_trailing_datagram_bytes(self) -> None:
        """
        Bytes after the Content-Length body are not part of the message.
        """
        m = parse_message(INVITE + b"junk")
        self.assertEqual(m.body, b"v=0\n")
        self.assertEqual(m.to_bytes(), INVITE)

    def test_no_content_length(self) -> None:
        """
        Without Content-Length the body is the rest of the datagram;
        ensure_content_length() adds the header for a stream.
        """
        data = INVITE.replace(b"l: 4\r\n", b"")
        m = parse_message(data + b"more")
        self.assertEqual(m.body, b"v=0\nmore")
        m.ensure_content_length()
        self.assertEqual(m.get("content-length"), "8")
        self.assertEqual(parse_message(m.to_bytes()).body, b"v=0\nmore")

    def test_errors_are_spwm_errors(self) -> None:
        """
        SipParseError is re-exported and is an SpwmError with status and reason.
        """
        self.assertIs(SipParseError, ErrorsSipParseError)
        e = SipParseError(400, "Bad Request: x")
        self.assertIsInstance(e, SpwmError)
        self.assertEqual(str(e), "400 Bad Request: x")


class RejectTests(SynchronousTestCase):
    """
    Malformed messages and limits give SipParseError with a useful status
    and reason.
    """

    def assertRejected(self, data: bytes, status: int, words: str, **kw) -> None:
        with self.assertRaises(SipParseError) as caught:
            parse_message(data, **kw)
        self.assertEqual(caught.exception.status, status)
        self.assertIn(words, caught.exception.reason)

    def test_max_size(self) -> None:
        """
        A message over max_size gets 413 naming the limit.
        """
        self.assertRejected(INVITE, 413, "limit of 100", max_size=100)

    def test_max_headers(self) -> None:
        """
        More header lines than max_headers gets 400 naming the limit.
        """
        self.assertRejected(INVITE, 400, "more than 5 header lines", max_headers=5)
        parse_message(INVITE, max_headers=11)

    def test_bad_line_and_limit(self) -> None:
        """
        Which comes first names the problem: a malformed line within the
        first max_headers lines, the limit when the malformed line is
        further down.
        """
        bad = INVITE.replace(b"CSeq:", b"CSeq")
        self.assertRejected(bad, 400, "malformed header line b'CSeq 314159", max_headers=11)
        self.assertRejected(bad, 400, "more than 3 header lines", max_headers=3)

    def test_many_folded_lines(self) -> None:
        """
        A long header section of folded, whitespace-heavy lines ending in a
        malformed line is refused (the lines are cut without trying every
        way to cut them).
        """
        head, rest = INVITE.split(b"\r\n", 1)
        folded = b"X-F:  \r\n   a  \r\n \t b \r\n" * 300
        data = head + b"\r\n" + folded + rest.replace(b"CSeq:", b"CSeq")
        self.assertRejected(data, 400, "malformed header line", max_headers=1000)

    def test_missing_headers(self) -> None:
        """
        Each mandatory header's absence is named.
        """
        for line, name in [
            (b"i: a84b4c76e66710@pc33.atlanta.example.com\r\n", "Call-ID"),
            (b"CSeq: 314159 INVITE\r\n", "CSeq"),
            (b"To: Bob <sip:bob@biloxi.example.com>\r\n", "To"),
        ]:
            self.assertRejected(INVITE.replace(line, b""), 400, f"missing {name}")

    def test_bad_lines(self) -> None:
        """
        Header lines without colon, bad start lines, bad Content-Length and
        an unterminated header section are rejected with 400.
        """
        self.assertRejected(INVITE.replace(b"CSeq:", b"CSeq"), 400, "malformed header line")
        self.assertRejected(INVITE.replace(b"l: 4", b"l: four"), 400, "Content-Length")
        self.assertRejected(INVITE.replace(b"l: 4", b"l: 40"), 400, "Content-Length 40")
        self.assertRejected(INVITE.replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1), 505, "SIP/3.0")
        self.assertRejected(INVITE.split(b"\r\n\r\n")[0], 400, "not terminated")
        self.assertRejected(b"", 400, "empty")
        self.assertRejected(b"\r\n\r\n", 400, "empty")
        self.assertRejected(INVITE.replace(b"Max-Forwards:   70", b"Max-Forwards: 256"), 400, "Max-Forwards")


class MutatorTests(SynchronousTestCase):
    """
    The mutators change only the lines they touch.
    """

    def setUp(self) -> None:
        self.m = parse_message(INVITE)

    def assertOnlyChanged(self, before: bytes, after: bytes, old: list[bytes], new: list[bytes]) -> None:
        """
        C{after} is C{before} with the lines C{old} replaced by C{new}.
        """
        lines_b = before.split(b"\r\n")
        lines_a = after.split(b"\r\n")
        for line in old:
            lines_b.remove(line)
        for line in new:
            lines_a.remove(line)
        self.assertEqual(lines_a, lines_b)

    def test_prepend_via(self) -> None:
        """
        prepend_header puts the new Via before the first Via line; everything
        else keeps its bytes.
        """
        self.m.prepend_header("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKnew")
        out = self.m.to_bytes()
        self.assertTrue(out.startswith(
            b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKnew\r\nVia: SIP/2.0/UDP pc33"
        ))
        self.assertEqual(out.replace(b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKnew\r\n", b""), INVITE)
        self.assertEqual(self.m.top_via.branch, "z9hG4bKnew")

    def test_prepend_absent(self) -> None:
        """
        prepend_header of an absent header puts it first; append_header of an
        absent header puts it last.
        """
        self.m.prepend_header("Record-Route", "<sip:192.0.2.1;lr>")
        self.m.append_header("X-New", "1")
        self.assertEqual(self.m.headers[0].name, "record-route")
        self.assertEqual(self.m.headers[-1].to_bytes(), b"X-New: 1\r\n")

    def test_append_after_last(self) -> None:
        """
        append_header inserts after the last line of that header.
        """
        self.m.append_header("contact", "<sip:c@h>")
        names = [h.name for h in self.m.headers]
        self.assertEqual(names.index("contact") + 1, names.index("route") - 1)
        self.assertEqual(self.m.get_all("m")[-1], "<sip:c@h>")

    def test_pop_from_multi_value_line(self) -> None:
        """
        pop_first_value on a line with two values removes only the first; the
        line keeps the second as written.
        """
        popped = self.m.pop_first_value("via")
        self.assertEqual(popped, "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds")
        out = self.m.to_bytes()
        self.assertOnlyChanged(
            INVITE, out,
            [INVITE.split(b"\r\n")[1]],
            [b"Via: SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKx;received=192.0.2.9"],
        )
        self.assertEqual(self.m.top_via.host, "2001:db8::1")
        self.assertEqual(self.m.pop_first_value("via"), "SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKx;received=192.0.2.9")
        self.assertEqual(self.m.count("via"), 0)
        self.assertIsNone(self.m.pop_first_value("via"))

    def test_pop_folded(self) -> None:
        """
        Popping from a folded list keeps the rest of the value.
        """
        self.assertEqual(self.m.pop_first_value("Route"), "<sip:p1.example.com;lr>")
        self.assertEqual(self.m.get_all("route"), ["<sip:p2.example.com;lr>"])
        self.assertIn(b"\r\nRoute: <sip:p2.example.com;lr>\r\n", self.m.to_bytes())

    def test_replace_first_value(self) -> None:
        """
        replace_first_value keeps the other values of the line.
        """
        self.m.replace_first_value("v", "SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKr")
        self.assertEqual(
            [v.split(";")[0] for v in self.m.get_all("via")],
            ["SIP/2.0/UDP 192.0.2.7", "SIP/2.0/TCP [2001:db8::1]:5070"],
        )
        self.assertEqual(self.m.headers[0].raw_name, b"Via")

    def test_set_and_remove(self) -> None:
        """
        set_header replaces every line with one at the place of the first,
        keeping the spelling of its name; remove_header removes all lines.
        """
        self.m.set_header("Max-Forwards", "69")
        self.assertIn(b"\r\nMax-Forwards: 69\r\nTo:", self.m.to_bytes())
        self.m.set_header("contact", "*")
        self.assertEqual(self.m.get_all("contact"), ["*"])
        self.assertIn(b"\r\nm: *\r\n", self.m.to_bytes())
        self.m.remove_header("Route")
        self.assertNotIn(b"Route", self.m.to_bytes())
        self.m.set_header("Subject", "new")
        self.assertEqual(self.m.headers[-1].to_bytes(), b"Subject: new\r\n")

    def test_set_body(self) -> None:
        """
        set_body fixes Content-Length in place (compact name kept) and sets
        Content-Type if given.
        """
        self.m.set_body(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n", "application/sdp")
        out = self.m.to_bytes()
        self.assertIn(b"\r\nl: 31\r\n\r\nv=0", out)
        again = parse_message(out)
        self.assertEqual(again.body, b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n")
        self.m.set_body(b"")
        self.assertTrue(self.m.to_bytes().endswith(b"l: 0\r\n\r\n"))

    def test_compact_names(self) -> None:
        """
        Headers written in compact form are found by their full names, and
        full names by their compact forms.
        """
        self.assertEqual(self.m.get("From"), self.m.get("f"))
        self.assertEqual(self.m.get("call-id"), "a84b4c76e66710@pc33.atlanta.example.com")
        self.assertEqual(self.m.get("c"), "application/sdp")
        self.assertEqual(self.m.get("content-length"), "4")

    def test_header_edit_drops_raw(self) -> None:
        """
        Assigning a Header's value directly also rewrites that line.
        """
        self.m.headers[1].value = b"5"
        self.assertIn(b"\r\nMax-Forwards: 5\r\n", self.m.to_bytes())

    def test_start_line_edit(self) -> None:
        """
        Changing the Request-URI rewrites the start line only.
        """
        self.m.uri = "sip:bob@192.0.2.4"
        out = self.m.to_bytes()
        self.assertTrue(out.startswith(b"INVITE sip:bob@192.0.2.4 SIP/2.0\r\nVia: SIP/2.0/UDP pc33"))
        self.assertEqual(out.split(b"\r\n", 1)[1], INVITE.split(b"\r\n", 1)[1])

    def test_injection_refused(self) -> None:
        """
        Values with CR or LF, and bad header names, are caller bugs: ValueError.
        """
        self.assertRaises(ValueError, self.m.set_header, "Subject", "a\r\nVia: x")
        self.assertRaises(ValueError, self.m.append_header, "Bad Name", "x")


def fresh(m: SipMessage) -> SipMessage:
    """
    The same headers in a message that has parsed none of them yet.
    """
    return SipMessage(is_request=m.is_request, method=m.method, uri=m.uri, headers=list(m.headers))


def readings(m: SipMessage) -> tuple:
    return (
        m.top_via, m.from_, m.to, m.from_tag, m.to_tag, m.call_id, m.cseq, m.cseq_method,
        m.max_forwards, m.content_type, m.contact_addresses(),
    )


class ParsedOnceTests(SynchronousTestCase):
    """
    What L{parse_message} checked is kept on the message; every way of
    changing a header makes the next read parse it again.
    """

    def setUp(self) -> None:
        self.m = parse_message(INVITE)

    def test_kept_equals_parsed_again(self) -> None:
        """
        The kept values are what parsing the headers again gives.
        """
        self.assertEqual(readings(self.m), readings(fresh(self.m)))
        self.assertEqual(self.m.from_, parse_name_addr(self.m.get("From") or ""))
        self.assertEqual(self.m.cseq, (314159, "INVITE"))
        self.assertEqual(len(self.m.contact_addresses()), 2)

    def test_not_parsed_again(self) -> None:
        """
        Reading a kept header twice gives the very same object.
        """
        self.assertIs(self.m.top_via, self.m.top_via)
        self.assertIs(self.m.from_, self.m.from_)
        self.assertIs(self.m.contact_addresses(), self.m.contact_addresses())

    def test_mutators_invalidate(self) -> None:
        """
        Each mutator makes the next read see the change.
        """
        m = self.m
        m.replace_first_value("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKnew")
        self.assertEqual(m.top_via.host, "192.0.2.1")
        m.prepend_header("Via", "SIP/2.0/TCP 192.0.2.2;branch=z9hG4bKtop")
        self.assertEqual(m.top_via.host, "192.0.2.2")
        m.pop_first_value("Via")
        self.assertEqual(m.top_via.host, "192.0.2.1")
        m.set_header("To", "<sip:carol@example.org>;tag=t2")
        self.assertEqual(m.to_tag, "t2")
        m.set_header("CSeq", "7 INVITE")
        self.assertEqual(m.cseq, (7, "INVITE"))
        m.set_header("Contact", "<sip:c@192.0.2.3>")
        self.assertEqual([str(na.uri) for na in m.contact_addresses()], ["sip:c@192.0.2.3"])
        m.append_header("Contact", "<sip:d@192.0.2.4>")
        self.assertEqual(len(m.contact_addresses()), 2)
        m.set_header("Max-Forwards", "9")
        self.assertEqual(m.max_forwards, 9)
        m.set_header("Content-Type", "Text/Plain; x=1")
        self.assertEqual(m.content_type, "text/plain")
        m.remove_header("From")
        self.assertIsNone(m.from_)
        self.assertEqual(readings(m)[:-1], readings(fresh(m))[:-1])

    def test_direct_edits_seen(self) -> None:
        """
        Assigning a line's value or editing the header list directly is
        seen too.
        """
        m = self.m
        [frm] = [h for h in m.headers if h.name == "from"]
        frm.value = b"<sip:alice@atlanta.example.com>;tag=other"
        self.assertEqual(m.from_tag, "other")
        m.headers.insert(0, type(frm)(b"i", "call-id", b"another-call"))
        self.assertEqual(m.call_id, "another-call")
        m.headers[:] = [h for h in m.headers if h.name != "contact"]
        self.assertEqual(m.contact_addresses(), [])
        [mf] = [h for h in m.headers if h.name == "max-forwards"]
        self.assertEqual(m.max_forwards, 70)
        mf.value = b"x"
        self.assertIsNone(m.max_forwards)


def _plain_header_lines(head: bytes) -> list[tuple[bytes, bytes, bytes, bytes, bytes]] | None:
    headers = _plain_headers(head)
    if headers is None:
        return None
    for h in headers:
        # each line's groups, and its parts the very objects it holds
        assert h._raw is not None and h._raw[1] is h.raw_name and h._raw[3] is h.value
        assert h.name == canonical_name(h.raw_name.decode("ascii"))
    return [h._raw for h in headers]


class PlainHeaderLinesTests(SynchronousTestCase):
    """
    L{_plain_headers} cuts a plain header section as the expression
    does, and leaves every other section to it.
    """

    def setUp(self) -> None:
        # the names of INVITE's lines, as a half has them after its
        # first messages
        parse_message(INVITE)
        self.head = INVITE[INVITE.index(b"\r\n") + 2 : INVITE.index(b"\r\n\r\n") + 2]

    def test_plain(self) -> None:
        """
        Lines with CRLF ends, no folding and names seen before are cut as
        C{HEADER_LINES_B.findall} cuts them.
        """
        head = self.head.replace(b"lr>,\r\n <sip:p2", b"lr>, <sip:p2").replace(b"X-Unknown :", b"X-Unknown:")
        cut = _plain_header_lines(head)
        self.assertIsNotNone(cut)
        self.assertEqual(cut, g.HEADER_LINES_B.findall(head))
        self.assertEqual(len(cut), 11)
        self.assertEqual(cut[1], (b"Max-Forwards:   70\r\n", b"Max-Forwards", b":   ", b"70", b"\r\n"))
        self.assertEqual(_plain_header_lines(b""), [])

    def test_not_plain(self) -> None:
        """
        A folded line, a bare LF, a CR alone, a name never seen, a space
        before the colon or a line without one: left to the expression.
        """
        plain = b"To: <sip:b@h>\r\nCSeq: 1 INVITE\r\n"
        self.assertIsNotNone(_plain_header_lines(plain))
        for head in [
            b"To: <sip:b@h>\r\n CSeq: 1 INVITE\r\n",
            b"To: <sip:b@h>\r\n\tCSeq: 1 INVITE\r\n",
            b"To: <sip:b@h>\nCSeq: 1 INVITE\r\n",
            b"To: <sip:b@h>\rx\r\nCSeq: 1 INVITE\r\n",
            b"To: <sip:b@h>\r\nX-Never-Seen-Before-Name: 1\r\n",
            b"To : <sip:b@h>\r\nCSeq: 1 INVITE\r\n",
            b"To <sip:b@h>\r\nCSeq: 1 INVITE\r\n",
            b" To: <sip:b@h>\r\nCSeq: 1 INVITE\r\n",
        ]:
            self.assertIsNone(_plain_header_lines(head), head)

    def test_cr_alone_refused(self) -> None:
        """
        A CR alone in a value is still refused.
        """
        data = INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159\rINVITE")
        self.assertRaises(SipParseError, parse_message, data)

    @given(
        st.lists(
            st.tuples(
                st.sampled_from([b"To", b"Via", b"CSeq", b"v", b"X-Unknown ", b"X-Never-Seen", b"T o", b""]),
                st.sampled_from([b":", b": ", b":   ", b":\t ", b"", b" :"]),
                st.binary(max_size=12).map(lambda b: b.replace(b"\x00", b"")),
                st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n ", b"\r\n\t"]),
            ),
            max_size=6,
        ),
        st.sampled_from([b"", b"\r\n", b"\n"]),
    )
    def test_as_the_expression(self, lines: list[tuple[bytes, bytes, bytes, bytes]], tail: bytes) -> None:
        """
        Whatever the section, a cut is the expression's, and covers it.
        """
        parse_message(INVITE)
        head = b"".join(b"".join(line) for line in lines) + tail
        cut = _plain_header_lines(head)
        if cut is not None:
            self.assertEqual(cut, g.HEADER_LINES_B.findall(head))
            self.assertEqual(b"".join(line[0] for line in cut), head)


class FirstElementTests(SynchronousTestCase):
    """
    L{_first_element}: the element expression's split, and without it
    when no quote or bracket comes before the first comma.
    """

    def test_split(self) -> None:
        """
        The first element and the raw rest after its comma.
        """
        self.assertEqual(_first_element("a, b ,c"), ("a", " b ,c"))
        self.assertEqual(_first_element("a"), ("a", None))
        self.assertEqual(_first_element('"x,y" <sip:a@h>, b'), ('"x,y" <sip:a@h>', " b"))
        self.assertEqual(_first_element("<sip:a@h;p=1,2>,b"), ("<sip:a@h;p=1,2>", "b"))

    @given(st.text(' ,\t ab;=:<>"\\', max_size=24))
    def test_as_the_expression(self, text: str) -> None:
        """
        Whatever the text, the expression's split.
        """
        self.assertEqual(_first_element(text), _first_element_by_expression(text))


class CheckedValuesTests(SynchronousTestCase):
    """
    A header line value that passed the checks of L{parse_message} is not
    decoded or parsed again in the next message that carries it; one that
    failed fails again the same way.
    """

    def setUp(self) -> None:
        # what earlier tests left in the module's caches of checked values
        from spwm.sip import message as module

        for name in ("_VIA_LINES", "_NAME_ADDRS", "_CALL_IDS", "_CSEQS", "_MAX_FORWARDS", "_CONTACT_LINES"):
            if hasattr(module, name):
                self.patch(module, name, {})

    def _spy(self) -> list[str]:
        # the parsers of name-addrs and Via and the value decoding, as
        # the message module calls them: the names of those called
        from spwm.sip import message as module

        called: list[str] = []
        for name in ("parse_name_addr", "parse_via", "check_via", "split_header_values", "_decode"):
            real = getattr(module, name)

            def spy(*args: object, _real=real, _name=name, **kwargs: object) -> object:
                called.append(_name)
                return _real(*args, **kwargs)

            self.patch(module, name, spy)
        return called

    def test_second_message_not_parsed(self) -> None:
        """
        The second parse of the same message reads every checked line
        from what the first found, with the same values.
        """
        called = self._spy()
        first = readings(parse_message(INVITE))
        self.assertIn("parse_name_addr", called)
        del called[:]
        again = parse_message(INVITE)
        self.assertEqual(called, [])
        self.assertEqual(readings(again), first)
        self.assertEqual(first, readings(fresh(again)))

    def test_failures_repeat(self) -> None:
        """
        A value that does not pass is refused every time, with the same
        error; a CSeq that passed before is still held against the
        request's method, and a Via line with a malformed second value is
        refused though its first value passed in another line.
        """
        good = parse_message(INVITE)
        cases = [
            (INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"), "CSeq method does not match the request method"),
            (INVITE.replace(b"CSeq: 314159", b"CSeq: 4294967296"), "CSeq number over 2**32-1"),
            (INVITE.replace(b"Max-Forwards:   70", b"Max-Forwards: 256"), "malformed Max-Forwards"),
            (INVITE.replace(b"i: a84b", b"i: a84b x"), "malformed Call-ID"),
            (INVITE.replace(b"l: 4", b"l: 4x"), "malformed Content-Length"),
            (INVITE.replace(b"z9hG4bKx;", b"z9hG4bKx;;"), "malformed Via"),
            (INVITE.replace(b"To: Bob <sip:bob@biloxi.example.com>", b"To: Bob <sip:bob@biloxi.example.com"), "malformed"),
        ]
        for data, reason in cases:
            errors = []
            for _ in range(2):
                with self.assertRaises(SipParseError) as caught:
                    parse_message(data)
                errors.append((caught.exception.status, str(caught.exception)))
                self.assertIn(reason, str(caught.exception))
            self.assertEqual(errors[0], errors[1])
        self.assertEqual(readings(parse_message(INVITE)), readings(good))


class MakeResponseTests(SynchronousTestCase):
    """
    make_response builds RFC 3261 8.2.6 responses.
    """

    def test_copies(self) -> None:
        """
        Via lines, From, To, Call-ID and CSeq are copied byte for byte; the
        To tag is added; Content-Length is 0.
        """
        req = parse_message(INVITE)
        resp = make_response(req, 180, "Ringing", to_tag="t1", extra_headers=[("Contact", "<sip:b@h>")])
        out = resp.to_bytes()
        self.assertTrue(out.startswith(b"SIP/2.0 180 Ringing\r\n" + INVITE.split(b"\r\n")[1] + b"\r\n"))
        self.assertIn(b"\r\nf: \"Alice, A.\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n", out)
        again = parse_message(out)
        self.assertEqual(again.to_tag, "t1")
        self.assertEqual(again.from_tag, "1928301774")
        self.assertEqual(again.cseq, (314159, "INVITE"))
        self.assertEqual(again.get("contact"), "<sip:b@h>")
        self.assertEqual(again.body, b"")
        self.assertEqual(again.get("content-length"), "0")

    def test_keeps_existing_tag(self) -> None:
        """
        A To that has a tag keeps it.
        """
        req = parse_message(INVITE.replace(b"To: Bob <sip:bob@biloxi.example.com>", b"To: <sip:b@h>;tag=old"))
        self.assertEqual(parse_message(make_response(req, 200, "OK", to_tag="new").to_bytes()).to_tag, "old")


# --- hypothesis -------------------------------------------------------------------

_token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1, max_size=12)
_host = st.one_of(
    st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_user = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,;?/", min_size=1, max_size=12)
_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(str.strip)
_ws = st.sampled_from(["", " ", "  ", "\t", " \t"])
_extra_name = _token.filter(lambda n: n.lower() not in {
    "via", "v", "from", "f", "to", "t", "call-id", "i", "cseq", "contact", "m",
    "max-forwards", "content-length", "l",
})


@st.composite
def messages(draw) -> SipMessage:
    """
    Build a valid message through the public API.
    """
    method = draw(st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE", "X-NEW"]))
    host = draw(_host)
    if draw(st.booleans()):
        m = SipMessage(is_request=True, method=method, uri=f"sip:{draw(_user)}@{host}")
    else:
        m = SipMessage(is_request=False, status=draw(st.integers(100, 699)), reason=draw(_value))
    for _ in range(draw(st.integers(1, 3))):
        m.append_header(
            draw(st.sampled_from(["Via", "v"])),
            f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS']))} {host}"
            f";branch=z9hG4bK{draw(_token)}",
        )
    m.append_header("From", f"<sip:a@{host}>;tag={draw(_token)}")
    m.append_header("t", f"\"{draw(_value).replace(chr(92), '').replace(chr(34), '')}\" <sip:b@{host}>")
    m.append_header("Call-ID", draw(_token))
    m.append_header("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {method}")
    for _ in range(draw(st.integers(0, 4))):
        m.append_header(draw(_extra_name), draw(_value))
    m.set_body(draw(st.binary(max_size=200)))
    return m


@st.composite
def wire_messages(draw) -> bytes:
    """
    Wire bytes with odd but valid spacing, compact names and folding.
    """
    ws = lambda: draw(_ws)  # noqa: E731
    fold = lambda: draw(st.sampled_from(["", "", "\r\n ", "\r\n\t"]))  # noqa: E731
    body = draw(st.binary(max_size=100))
    lines = [
        f"{draw(st.sampled_from(['Via', 'v', 'VIA']))}{ws()}:{ws()}SIP{ws()}/{ws()}2.0{ws()}/{ws()}UDP {draw(_host)}{ws()};{ws()}branch{ws()}={ws()}{draw(_token)}",
        f"{draw(st.sampled_from(['From', 'f']))}:{fold()} <sip:x@h>{ws()};{fold()}tag={draw(_token)}",
        f"{draw(st.sampled_from(['To', 't']))}:{ws()}sip:y@h",
        f"{draw(st.sampled_from(['Call-ID', 'i', 'call-id']))}:{ws()}{draw(_token)}{ws()}",
        f"CSeq:{ws()}{draw(st.integers(0, 99999))}{fold() or ' '}OPTIONS",
    ]
    for _ in range(draw(st.integers(0, 3))):
        lines.insert(
            draw(st.integers(0, len(lines))),
            f"{draw(_extra_name)}{ws()}:{ws()}{draw(_value)}{fold()}{draw(_value)}{ws()}",
        )
    lines.append(f"{draw(st.sampled_from(['Content-Length', 'l']))}{ws()}:{ws()}{len(body)}")
    head = "OPTIONS sip:y@h SIP/2.0\r\n" + "\r\n".join(lines) + "\r\n\r\n"
    return head.encode() + body


class HypothesisTests(SynchronousTestCase):
    """
    Properties over generated messages and garbage.
    """

    @given(messages())
    def test_build_serialize_parse(self, m: SipMessage) -> None:
        """
        A message built with the API, serialized and parsed, has the same
        start line, headers and body, and serializes to the same bytes.
        """
        data = m.to_bytes()
        again = parse_message(data)
        self.assertEqual(again.to_bytes(), data)
        self.assertEqual(
            (again.is_request, again.method, again.uri, again.status, again.reason, again.body),
            (m.is_request, m.method, m.uri, m.status, m.reason, m.body),
        )
        self.assertEqual(again.headers, m.headers)

    @given(wire_messages())
    def test_kept_equals_parsed_again(self, data: bytes) -> None:
        """
        What the parser keeps equals what the properties parse afresh.
        """
        m = parse_message(data)
        self.assertEqual(readings(m), readings(fresh(m)))

    @given(wire_messages())
    def test_parsed_round_trip(self, data: bytes) -> None:
        """
        Parsing odd but valid wire bytes and serializing gives the same bytes.
        """
        self.assertEqual(parse_message(data).to_bytes(), data)

    @given(wire_messages(), st.sampled_from(["Via", "v", "From", "To", "Call-ID", "CSeq", "Content-Length"]))
    def test_untouched_lines_kept(self, data: bytes, name: str) -> None:
        """
        Changing one header leaves every other line byte for byte.
        """
        m = parse_message(data)
        before = [h.to_bytes() for h in m.headers]
        target = [h.name for h in m.headers].index(
            {"Via": "via", "From": "from", "To": "to", "Call-ID": "call-id",
             "CSeq": "cseq", "Content-Length": "content-length"}.get(name, "via")
        )
        m.set_header(name, m.get(name))
        after = [h.to_bytes() for h in m.headers]
        self.assertEqual(before[:target] + before[target + 1:], after[:target] + after[target + 1:])
        self.assertEqual(parse_message(m.to_bytes()).get(name), m.get(name))

    @given(st.binary(max_size=400))
    def test_garbage(self, data: bytes) -> None:
        """
        Arbitrary bytes give a message or SipParseError, nothing else.
        """
        try:
            parse_message(data)
        except SipParseError:
            pass

    @given(wire_messages(), st.data())
    def test_mutated(self, data: bytes, draw: st.DataObject) -> None:
        """
        Valid messages with bytes changed, inserted or removed give a message
        or SipParseError, nothing else; if they parse, accessors work.
        """
        buf = bytearray(data)
        for _ in range(draw.draw(st.integers(1, 4))):
            i = draw.draw(st.integers(0, len(buf) - 1))
            op = draw.draw(st.sampled_from(["set", "insert", "delete"]))
            b = draw.draw(st.sampled_from(b'\r\n :;,<>"\\[]@=\x00\xff/%a0'))
            if op == "set":
                buf[i] = b
            elif op == "insert":
                buf.insert(i, b)
            else:
                del buf[i]
        try:
            m = parse_message(bytes(buf))
        except SipParseError:
            return
        self.assertEqual(m.to_bytes(), bytes(buf)[: len(m.to_bytes())])
        m.top_via, m.cseq, m.from_tag, m.to_tag, m.call_id, m.max_forwards
