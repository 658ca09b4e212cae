"""
Tests for L{spwm.sip.uri}: SIP URIs, name-addr, Via and list splitting.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip import _grammar as g, uri as uri_module
from spwm.sip.uri import check_via
from spwm.sip import (
    NameAddr,
    SipParseError,
    SipUri,
    Via,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_header_values,
    unescape,
)


class UriTests(SynchronousTestCase):
    """
    parse_uri and SipUri.
    """

    def test_full(self) -> None:
        """
        Every part of a SIP URI is parsed; str() gives it back.
        """
        text = "sips:alice:secret@atlanta.example.com:5061;transport=tcp;lr?subject=x&h=1"
        uri = parse_uri(text)
        self.assertEqual(
            uri,
            SipUri("sips", "alice", "secret", "atlanta.example.com", 5061,
                   (("transport", "tcp"), ("lr", None)), "subject=x&h=1"),
        )
        self.assertEqual(str(uri), text)
        self.assertEqual(uri.param("TRANSPORT"), "tcp")
        self.assertEqual(uri.param("lr"), "")
        self.assertIsNone(uri.param("maddr"))

    def test_ipv6(self) -> None:
        """
        IPv6 hosts lose their brackets in C{host} and get them back in str().
        """
        uri = parse_uri("sip:[2001:db8::10]:5070")
        self.assertEqual((uri.host, uri.port, uri.host_port), ("2001:db8::10", 5070, "[2001:db8::10]:5070"))
        self.assertEqual(str(uri.with_host("2001:db8::1")), "sip:[2001:db8::1]")

    def test_rejects(self) -> None:
        """
        Unbracketed IPv6, ports over 65535, spaces and empty URIs are rejected.
        """
        for text in ["sip:2001:db8::10", "sip:h:65536", "sip:a b", "sip:", "", "nocolon", "sip:@h", "sip:h;=x"]:
            self.assertRaises(SipParseError, parse_uri, text)

    def test_other_schemes(self) -> None:
        """
        Other schemes keep their text in C{opaque}.
        """
        uri = parse_uri("tel:+1-201-555-0123;phone-context=x")
        self.assertEqual((uri.scheme, uri.opaque, uri.host), ("tel", "+1-201-555-0123;phone-context=x", ""))
        self.assertEqual(str(uri), "tel:+1-201-555-0123;phone-context=x")

    def test_with(self) -> None:
        """
        with_param replaces in place or appends; without_param removes;
        with_user changes the user.
        """
        uri = parse_uri("sip:a@h;x=1;lr")
        self.assertEqual(str(uri.with_param("X", "2")), "sip:a@h;x=2;lr")
        self.assertEqual(str(uri.with_param("ob")), "sip:a@h;x=1;lr;ob")
        self.assertEqual(str(uri.without_param("lr")), "sip:a@h;x=1")
        self.assertEqual(str(uri.with_user("b").with_params([])), "sip:b@h")

    def test_unescape(self) -> None:
        """
        unescape decodes once, keeps invalid escapes and NULs.
        """
        self.assertEqual(unescape("a%25%34%31%00%zz"), "a%41\x00%zz")
        self.assertEqual(unescape("plain"), "plain")


class NameAddrTests(SynchronousTestCase):
    """
    parse_name_addr and NameAddr.
    """

    def test_forms(self) -> None:
        """
        Quoted and token display names, no display name, and addr-spec whose
        ";" starts header parameters.
        """
        na = parse_name_addr('"Bob \\"B\\"" <sip:bob@h;lr>;tag=1;expires=60')
        self.assertEqual(na.display_name, 'Bob "B"')
        self.assertEqual(na.uri.params, (("lr", None),))
        self.assertEqual((na.tag, na.param("EXPIRES")), ("1", "60"))
        na = parse_name_addr("Bob Smith <sip:b@h>")
        self.assertEqual(na.display, "Bob Smith")
        na = parse_name_addr("sip:b@h;tag=x")
        self.assertEqual((na.angle, na.uri.params, na.tag), (False, (), "x"))
        self.assertEqual(str(na), "sip:b@h;tag=x")

    def test_str(self) -> None:
        """
        str() adds angle brackets when the URI has parameters.
        """
        na = NameAddr(None, parse_uri("sip:b@h;lr"), (), angle=False)
        self.assertEqual(str(na), "<sip:b@h;lr>")
        na = parse_name_addr('"A" <sip:a@[2001:db8::1]:5060>').with_param("+sip.instance", '"<urn:uuid:1>"')
        self.assertEqual(str(na), '"A" <sip:a@[2001:db8::1]:5060>;+sip.instance="<urn:uuid:1>"')
        self.assertEqual(parse_name_addr(str(na)), na)

    def test_tag_of_copies(self) -> None:
        """
        The tag, looked up once when a value is made, is that of each copy
        (with_param, without_param, made directly); the kept lookup is no
        part of equality or repr.
        """
        na = parse_name_addr("<sip:a@h>;TAG=1;x")
        self.assertEqual(na.tag, "1")
        self.assertEqual(na.with_param("tag", "2").tag, "2")
        self.assertEqual(na.with_param("Tag").tag, "")
        self.assertIsNone(na.without_param("tag").tag)
        self.assertEqual(NameAddr(None, na.uri, (("tag", "3"),)).tag, "3")
        self.assertEqual(na, NameAddr(None, na.uri, na.params))
        self.assertNotIn("_tag", repr(na))

    def test_rejects(self) -> None:
        """
        Unbalanced quotes, spaces in brackets, unquoted commas, "?" in
        addr-spec and empty params are rejected.
        """
        for text in ['"a <sip:a@h>', "< sip:a@h >", "Bell, A <sip:a@h>", "sip:a@h?x=y", "<sip:a@h>;;", ""]:
            self.assertRaises(SipParseError, parse_name_addr, text)


class ViaTests(SynchronousTestCase):
    """
    parse_via and Via.
    """

    def test_parse(self) -> None:
        """
        Spaces around separators, IPv6 sent-by, valueless params.
        """
        via = parse_via("SIP / 2.0 / tcp [2001:db8::9]:5061 ; branch = z9hG4bKa ;rport;received=[2001:db8::8]")
        self.assertEqual(
            via,
            Via("SIP/2.0", "TCP", "2001:db8::9", 5061,
                (("branch", "z9hG4bKa"), ("rport", None), ("received", "[2001:db8::8]"))),
        )
        self.assertEqual((via.branch, via.rport, via.received, via.sent_by), ("z9hG4bKa", "", "2001:db8::8", ("2001:db8::9", 5061)))
        self.assertEqual(parse_via("SIP/2.0/UDP h;received=2001:db8::9:255").received, "2001:db8::9:255")

    def test_str_and_with(self) -> None:
        """
        str() gives canonical text; with_param fills rport and adds received.
        """
        via = parse_via("SIP/2.0/UDP [2001:db8::9];branch=z9hG4bKa;rport")
        via = via.with_param("rport", "5062").with_param("received", "192.0.2.1")
        self.assertEqual(str(via), "SIP/2.0/UDP [2001:db8::9];branch=z9hG4bKa;rport=5062;received=192.0.2.1")
        self.assertEqual(parse_via(str(via)), via)
        self.assertEqual(str(via.without_param("rport")), "SIP/2.0/UDP [2001:db8::9];branch=z9hG4bKa;received=192.0.2.1")

    def test_rejects(self) -> None:
        """
        Missing parts, empty params and bad ports are rejected.
        """
        for text in ["SIP/2.0 h", "SIP/2.0/UDP", "SIP/2.0/UDP h;;", "SIP/2.0/UDP h:99999", "SIP/2.0/UDP h;branch=", "SIP/2.0/UDP h, x"]:
            self.assertRaises(SipParseError, parse_via, text)


class CheckViaTests(SynchronousTestCase):
    """
    check_via refuses what parse_via refuses, with the same reason.
    """

    @given(st.text(alphabet="SIP/2.0UDPTCPudp 0123456789.:;=[]abc-\t\r\n,", max_size=40))
    def test_same_as_parse(self, text: str) -> None:
        """
        For any text, check_via raises exactly when parse_via does.
        """
        try:
            parse_via(text)
        except SipParseError as e:
            with self.assertRaises(SipParseError) as caught:
                check_via(text)
            self.assertEqual(str(caught.exception), str(e))
        else:
            check_via(text)

    def test_port(self) -> None:
        """
        A Via port over 65535 is refused; a good value passes.
        """
        self.assertRaises(SipParseError, check_via, "SIP/2.0/UDP h:70000;branch=z9hG4bKx")
        check_via("SIP/2.0/UDP h:5060;branch=z9hG4bKx")


def _outcome(parse, text):
    try:
        return parse(text)
    except SipParseError as e:
        return str(e)


_TOKEN_TEXT = "abzAZ09-.!%*_+`'~"
_plain_param = st.tuples(
    st.text(_TOKEN_TEXT, min_size=1, max_size=6),
    st.one_of(st.none(), st.text(_TOKEN_TEXT + ":", min_size=1, max_size=8)),
).map(lambda p: ";" + p[0] + ("" if p[1] is None else "=" + p[1]))
_params = st.one_of(
    st.lists(_plain_param, max_size=4).map("".join),
    st.tuples(st.lists(_plain_param, max_size=3).map("".join), st.sampled_from([";", " ", "=", ";=x", '"', "; a", ";a=\r\n b", ";a=[::1]"])).map("".join),
    st.text(_TOKEN_TEXT + ":=; \t\"[]<>,@", max_size=16),
)


class PlainParamsTests(SynchronousTestCase):
    """
    A Via or name-addr whose params are plain is parsed from the part
    before them, parsed once, and the params cut by C{str.split}: the same
    value, or the same error, as the whole value through the expression.
    """

    def setUp(self) -> None:
        for cache in uri_module.PARSED_CACHES.values():
            cache.clear()

    @given(
        st.sampled_from([
            "SIP/2.0/UDP 192.0.2.1:5060", "SIP/2.0/TCP host.example", "SIP / 2.0 / UDP h",
            "SIP/2.0/UDP [2001:db8::1]:5070", "SIP/2.0/UDP h:99999", "SIP/2.0/UDPh", "SIP/2.0/UDP h ",
            " SIP/2.0/tls a.b", "SIP/2.0/UDP h:", "x", "",
        ]),
        _params,
    )
    def test_via(self, head: str, params: str) -> None:
        """
        parse_via and check_via, as the expression.
        """
        text = head + params
        expected = self.assertAsTheExpression(parse_via, uri_module._via_by_expression, text)
        uri_module.PARSED_CACHES["parse_via"].clear()
        self.assertEqual(_outcome(check_via, text), None if isinstance(expected, Via) else expected)

    @given(
        st.sampled_from([
            "sipp <sip:sipp@192.0.2.10:5060>", "<sip:a@h>", '"A >b" <sip:a@h>', "<sip:a@h:70000>",
            "A B <sip:a@h>", "<sip a@h>", "sip:a@h", "<sips:b@[2001:db8::2]>", " <sip:x@y;lr>",
            "<tel:+1>", '"x" <sip:a@h>>', "<>",
        ]),
        _params,
    )
    def test_name_addr(self, head: str, params: str) -> None:
        """
        parse_name_addr, as the expression.
        """
        self.assertAsTheExpression(parse_name_addr, uri_module._name_addr_by_expression, head + params)

    def assertAsTheExpression(self, parse, by_expression, text: str):
        """
        C{parse} (its cache emptied) gives what C{by_expression} gives.

        @return: that.
        """
        for cache in uri_module.PARSED_CACHES.values():
            cache.clear()
        expected = _outcome(by_expression, uri_module._unfold(text))
        self.assertEqual(_outcome(parse, text), expected)
        return expected

    def test_parsed_once(self) -> None:
        """
        Two values that differ in their params only share the part before.
        """
        a = parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport")
        b = parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK2;received=2001:db8::9")
        self.assertEqual((a.host, a.port, a.params), ("192.0.2.1", 5060, (("branch", "z9hG4bK1"), ("rport", None))))
        self.assertEqual(b.params, (("branch", "z9hG4bK2"), ("received", "2001:db8::9")))
        self.assertIs(a.host, b.host)
        c = parse_name_addr('"Alice" <sip:alice@192.0.2.1>;tag=1')
        d = parse_name_addr('"Alice" <sip:alice@192.0.2.1>;tag=2')
        self.assertEqual((c.display, c.tag, d.tag), ('"Alice"', "1", "2"))
        self.assertIs(c.uri, d.uri)


class CacheTests(SynchronousTestCase):
    """
    Each parser keeps what it parsed by its text, within its bounds.
    """

    def test_same_text_parsed_once(self) -> None:
        """
        The same text gives the same (immutable) value; a malformed text is
        refused every time.
        """
        for parse, text in [
            (parse_uri, "sip:cache-a@example.com;transport=tcp"),
            (parse_name_addr, '"A" <sip:cache-a@example.com>;tag=1'),
            (parse_via, "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKcache"),
        ]:
            self.assertIs(parse(text), parse(text))
            self.assertRaises(SipParseError, parse, text + " <")
            self.assertRaises(SipParseError, parse, text + " <")

    def test_bounds(self) -> None:
        """
        A text longer than PARSED_CACHE_TEXT is not kept; the cache never
        holds more than PARSED_CACHE_SIZE values.
        """
        long = "sip:" + "a" * uri_module.PARSED_CACHE_TEXT + "@example.com"
        self.assertEqual(parse_uri(long), parse_uri(long))
        self.assertNotIn(long, uri_module.PARSED_CACHES["parse_uri"])
        for i in range(uri_module.PARSED_CACHE_SIZE + 10):
            parse_uri(f"sip:u{i}@example.com")
            self.assertLessEqual(len(uri_module.PARSED_CACHES["parse_uri"]), uri_module.PARSED_CACHE_SIZE)
        self.assertIn(f"sip:u{i}@example.com", uri_module.PARSED_CACHES["parse_uri"])


class UriTextTests(SynchronousTestCase):
    """
    A URI makes its text once; copies with a change make their own, and
    the kept text plays no part in equality.
    """

    def test_text_made_once(self) -> None:
        """
        The second C{str()} is the very text the first made.
        """
        u = uri_module.SipUri("sip", user="alice", host="2001:db8::1", port=5070, params=(("lr", None),))
        text = str(u)
        self.assertEqual(text, "sip:alice@[2001:db8::1]:5070;lr")
        self.assertIs(str(u), text)

    def test_copies_and_equality(self) -> None:
        """
        A copy made with another part has its own text; a URI whose text
        was made equals (and hashes as) one whose was not.
        """
        u = parse_uri("sip:bob@example.org;transport=tcp")
        str(u)
        self.assertEqual(str(u.with_host("192.0.2.1", 5062)), "sip:bob@192.0.2.1:5062;transport=tcp")
        self.assertEqual(str(u.without_param("transport")), "sip:bob@example.org")
        self.assertEqual(str(u.with_user("carol")), "sip:carol@example.org;transport=tcp")
        fresh = uri_module.SipUri("sip", user="bob", host="example.org", params=(("transport", "tcp"),))
        self.assertEqual(u, fresh)
        self.assertEqual(hash(u), hash(fresh))
        self.assertEqual(repr(u), repr(fresh))


class SplitTests(SynchronousTestCase):
    """
    split_header_values.
    """

    def test_split(self) -> None:
        """
        Commas inside quotes and angle brackets do not split.
        """
        self.assertEqual(
            split_header_values('"a,b" <sip:x@h;p=1,2>;q=1 , <sip:y@h>,z'),
            ['"a,b" <sip:x@h;p=1,2>;q=1', "<sip:y@h>", "z"],
        )
        self.assertEqual(split_header_values(""), [])
        self.assertEqual(split_header_values('"a,b'), ['"a,b'])

    def test_strict(self) -> None:
        """
        strict=True rejects empty elements and unbalanced quotes.
        """
        self.assertRaises(SipParseError, split_header_values, "a,,b", strict=True)
        self.assertRaises(SipParseError, split_header_values, 'a, "b', strict=True)
        self.assertRaises(SipParseError, split_header_values, '"b', strict=True)
        self.assertEqual(split_header_values("a , b", strict=True), ["a", "b"])

    @given(st.text(' ,\t ab;=:<>"\\', max_size=30), st.booleans())
    def test_as_the_element_expression(self, text: str, strict: bool) -> None:
        """
        With or without quotes and brackets, the elements (or the error)
        are the element expression's, element by element.
        """
        self.assertEqual(_outcome(lambda t: split_header_values(t, strict), text), _outcome(lambda t: uri_module._split_by_expression(t, strict) if "," in t else split_header_values(t, strict), text))


_text = st.one_of(
    st.text(max_size=80),
    st.text('sip:@[]:;=,<>" \\?&%0123456789abcdef.tag', max_size=60),
)


class GarbageTests(SynchronousTestCase):
    """
    The value parsers raise only SipParseError for any text.
    """

    @given(_text)
    def test_parse_uri(self, text: str) -> None:
        """
        parse_uri: a SipUri or SipParseError; str() of a result parses again.
        """
        try:
            uri = parse_uri(text)
        except SipParseError:
            return
        self.assertEqual(parse_uri(str(uri)), uri)

    @given(_text)
    def test_parse_name_addr(self, text: str) -> None:
        """
        parse_name_addr: a NameAddr or SipParseError.
        """
        try:
            parse_name_addr(text)
        except SipParseError:
            pass

    @given(st.one_of(_text, _text.map(lambda t: "SIP/2.0/UDP " + t)))
    def test_parse_via(self, text: str) -> None:
        """
        parse_via: a Via or SipParseError; str() of a result parses again.
        """
        try:
            via = parse_via(text)
        except SipParseError:
            return
        self.assertEqual(parse_via(str(via)), via)

    @given(_text, st.booleans())
    def test_split(self, text: str, strict: bool) -> None:
        """
        split_header_values: a list or (strict only) SipParseError.
        """
        try:
            split_header_values(text, strict=strict)
        except SipParseError:
            self.assertTrue(strict)
