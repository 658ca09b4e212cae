"""
Every message of RFC 4475 (SIP torture tests) and RFC 5118 (IPv6 torture
tests) as a test case for L{spwm.sip}: valid ones parse, serialize back to
their bytes and have the fields the RFC cares about; invalid ones raise
L{SipParseError} with the status the RFC suggests; none raises anything else,
as a datagram or cut into pieces on a stream.

The messages are in C{tests/data/rfc4475} and C{tests/data/rfc5118}, copied
byte for byte from the shared test data with their C{INDEX.tsv}.
"""

from __future__ import annotations

import csv
import os
from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

from spwm.sip import (
    SipMessage,
    SipParseError,
    SipStreamFramer,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    unescape,
)

DATA = os.path.join(os.path.dirname(__file__), "data")


def _read(*path: str) -> bytes:
    with open(os.path.join(DATA, *path), "rb") as f:
        return f.read()


def _index(folder: str) -> dict[str, dict[str, str]]:
    with open(os.path.join(DATA, folder, "INDEX.tsv"), newline="") as f:
        rows = [line for line in f if not line.startswith("#")]
    return {row["file"]: row for row in csv.DictReader(rows, delimiter="\t")}


def _vias(m: SipMessage) -> list:
    return [parse_via(v) for v in m.get_all("via")]


# --- RFC 4475 -------------------------------------------------------------------

#: Messages the RFC says must be (or may be) accepted, with a check of the
#: fields that matter for each.
RFC4475_ACCEPTED: dict[str, Callable[[SynchronousTestCase, SipMessage, bytes], None]] = {}

#: Messages rejected, with the status given.  Where the RFC lets an element
#: accept a message liberally, SPWM's choice is to reject (stricter input
#: makes a safer proxy); docs/sip.md lists these choices.
RFC4475_REJECTED = {
    "badinv01.dat": 400,  # empty Via / Contact params
    "clerr.dat": 400,  # Content-Length larger than the datagram
    "ncl.dat": 400,  # negative Content-Length
    "scalar02.dat": 400,  # CSeq over 2**32-1
    "scalarlg.dat": 400,  # response: dropped by the caller
    "quotbal.dat": 400,  # unterminated quoted display name
    "ltgtruri.dat": 400,  # <> around the Request-URI
    "lwsruri.dat": 400,  # LWS in the Request-URI
    "lwsstart.dat": 400,  # several SP in the Request-Line
    "trws.dat": 400,  # trailing SP after the version
    "escruri.dat": 400,  # headers in the Request-URI
    "regbadct.dat": 400,  # Contact with "?" outside <>
    "badaspec.dat": 400,  # spaces inside <>
    "baddn.dat": 400,  # unquoted display name with ","
    "badvers.dat": 505,  # SIP/7.0
    "mismatch01.dat": 400,  # CSeq method differs (known method)
    "mismatch02.dat": 501,  # CSeq method differs (unknown method)
    "bigcode.dat": 400,  # status code 4294967301
    "insuf.dat": 400,  # no Call-ID, From, To
    "multi01.dat": 400,  # several Call-ID, To, From, Max-Forwards, CSeq
    "mcl01.dat": 400,  # two Content-Length
    "test.dat": 400,  # no SIP version, header line without colon
}


def accepts(name: str):
    def register(f):
        RFC4475_ACCEPTED[name] = f
        return f

    return register


@accepts("wsinv.dat")
def _wsinv(t, m, data):
    t.assertEqual(m.method, "INVITE")
    t.assertEqual(m.uri, "sip:vivekg@chair-dnrc.example.com;unknownparam")
    t.assertEqual(m.cseq, (9, "INVITE"))
    t.assertEqual(m.max_forwards, 68)
    t.assertEqual(m.to_tag, "1918181833n")
    t.assertEqual(m.from_tag, "98asjd8")
    t.assertEqual(
        parse_name_addr(m.get("from")).display_name, 'J Rosenberg \\"'
    )
    t.assertEqual(m.call_id, "wsinv.ndaksdj@192.0.2.1")
    t.assertEqual(
        [(v.transport, v.host, v.branch) for v in _vias(m)],
        [
            ("UDP", "192.0.2.2", "390skdjuw"),
            ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
            ("UDP", "192.168.255.111", "z9hG4bK30239"),
        ],
    )
    t.assertEqual(m.get("subject"), "")
    t.assertEqual(m.get("UnknownHeaderWithUnusualValue"), ";;,,;;,;")
    t.assertEqual(
        m.get("newfangledheader"), "newfangled value continued newfangled value"
    )
    contact = parse_name_addr(m.get("contact"))
    t.assertEqual(contact.display_name, 'Quoted string ""')
    t.assertEqual(contact.param("newparam"), "newvalue")
    t.assertEqual(contact.param("secondparam"), "")
    t.assertEqual(contact.param("q"), "0.33")
    t.assertEqual(m.content_type, "application/sdp")
    t.assertEqual(len(m.body), 150)


@accepts("intmeth.dat")
def _intmeth(t, m, data):
    t.assertEqual(m.method, "!interesting-Method0123456789_*+`.%indeed'~")
    t.assertEqual(m.cseq, (139122385, m.method))
    t.assertEqual(m.top_via.branch, "z9hG4bK-.!%66*_+`'~")
    to = parse_name_addr(m.get("to"))
    t.assertEqual(to.display_name, "BEL:\x07 NUL:\x00 DEL:\x7f")
    t.assertEqual(to.uri.user, "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    frm = parse_name_addr(m.get("from"))
    t.assertEqual(frm.tag, "_token~1'+`*%!-.")
    t.assertEqual(
        frm.param("fromParam''~+*_!.-%"),
        '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"',
    )
    t.assertEqual(m.call_id, "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
    t.assertEqual(m.get("extensionHeader-!.%*+_`'~"), "\ufeff\u5927\u505c\u96fb")
    t.assertEqual(parse_uri(m.uri).host, "example.com")


@accepts("esc01.dat")
def _esc01(t, m, data):
    uri = parse_uri(m.uri)
    t.assertEqual(uri.user, "sips%3Auser%40example.com")
    t.assertEqual(unescape(uri.user), "sips:user@example.com")
    t.assertEqual(unescape(parse_name_addr(m.get("to")).uri.user), "user")
    t.assertEqual(
        unescape(parse_name_addr(m.get("from")).uri.user), "I have spaces"
    )
    contact = parse_name_addr(m.get("contact")).uri
    t.assertEqual(contact.params, (("%6C%72", None), ("n%61me", "v%61lue%25%34%31")))
    # one level of unescaping only: value%41, not valueA
    t.assertEqual(unescape(contact.params[1][1]), "value%41")
    t.assertEqual(m.call_id, "esc01.239409asdfakjkn23onasd0-3234")
    t.assertEqual(m.content_type, "application/sdp")


@accepts("escnull.dat")
def _escnull(t, m, data):
    users = [unescape(parse_name_addr(c).uri.user) for c in m.get_all("contact")]
    t.assertEqual(users, ["\x00", "\x00\x00"])
    t.assertEqual(unescape(parse_name_addr(m.get("to")).uri.user), "null-\x00-null")


@accepts("esc02.dat")
def _esc02(t, m, data):
    t.assertEqual(m.method, "RE%47IST%45R")
    t.assertEqual(m.count("contact"), 2)
    t.assertEqual(m.count("C%6Fntact"), 1)
    t.assertEqual(parse_name_addr(m.get("to")).display_name, "%Z%45")


@accepts("lwsdisp.dat")
def _lwsdisp(t, m, data):
    frm = parse_name_addr(m.get("from"))
    t.assertEqual((frm.display, frm.tag), ("caller", "323"))


@accepts("longreq.dat")
def _longreq(t, m, data):
    t.assertEqual(len(m.get_all("via")), 34)
    t.assertEqual(len(m.from_tag), 155)
    t.assertTrue(len(m.call_id) > 100)


@accepts("dblreq.dat")
def _dblreq(t, m, data):
    t.assertEqual(m.method, "REGISTER")
    t.assertEqual(m.body, b"")
    wire = m.to_bytes()
    t.assertTrue(len(wire) < len(data))
    t.assertEqual(wire, data[: len(wire)])
    t.assertIn(b"INVITE", data[len(wire) :])


@accepts("semiuri.dat")
def _semiuri(t, m, data):
    uri = parse_uri(m.uri)
    t.assertEqual(unescape(uri.user), "user;par=u@example.net")
    t.assertEqual(uri.host, "example.com")


@accepts("transports.dat")
def _transports(t, m, data):
    t.assertEqual(
        [v.transport for v in _vias(m)], ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    )


@accepts("mpart01.dat")
def _mpart01(t, m, data):
    t.assertEqual(m.method, "MESSAGE")
    t.assertEqual(len(m.body), int(m.get("content-length")))
    t.assertTrue(data.endswith(m.body))
    t.assertIn(b"\x00", m.body)


@accepts("unreason.dat")
def _unreason(t, m, data):
    t.assertEqual(m.status, 200)
    t.assertIn("\u0441\u0442\u043e \u0434\u0435\u0432\u044f\u043d\u043e\u0441\u0442\u043e", m.reason)


@accepts("noreason.dat")
def _noreason(t, m, data):
    t.assertEqual((m.status, m.reason), (100, ""))


@accepts("baddate.dat")
def _baddate(t, m, data):
    # A proxy does not use Date: accepted and forwarded unchanged.
    t.assertIn("EST", m.get("date"))


@accepts("badbranch.dat")
def _badbranch(t, m, data):
    # Parsed; the transaction layer decides what a bare magic cookie means.
    t.assertEqual(m.top_via.branch, "z9hG4bK")


@accepts("unkscm.dat")
def _unkscm(t, m, data):
    uri = parse_uri(m.uri)
    t.assertEqual((uri.scheme, uri.opaque), ("nobodyknowsthisscheme", "totallyopaquecontent"))


@accepts("novelsc.dat")
def _novelsc(t, m, data):
    t.assertEqual(parse_uri(m.uri).scheme, "soap.beep")


@accepts("unksm2.dat")
def _unksm2(t, m, data):
    t.assertEqual(parse_name_addr(m.get("to")).uri.scheme, "isbn")
    t.assertEqual(parse_name_addr(m.get("from")).uri.scheme, "http")
    t.assertEqual(str(parse_name_addr(m.get("contact")).uri), "name:John_Smith")


@accepts("bext01.dat")
def _bext01(t, m, data):
    t.assertTrue(m.get_all("proxy-require"))


@accepts("invut.dat")
def _invut(t, m, data):
    t.assertEqual(m.content_type, "application/unknownformat")


@accepts("regaut01.dat")
def _regaut01(t, m, data):
    t.assertTrue(m.get("authorization"))


@accepts("bcast.dat")
def _bcast(t, m, data):
    t.assertEqual(_vias(m)[1].host, "255.255.255.255")


@accepts("zeromf.dat")
def _zeromf(t, m, data):
    t.assertEqual(m.max_forwards, 0)


@accepts("cparam01.dat")
def _cparam01(t, m, data):
    contact = parse_name_addr(m.get("contact"))
    t.assertEqual(contact.uri.params, ())
    t.assertEqual(contact.params, (("unknownparam", None),))


@accepts("cparam02.dat")
def _cparam02(t, m, data):
    contact = parse_name_addr(m.get("contact"))
    t.assertEqual(contact.uri.params, (("unknownparam", None),))
    t.assertEqual(contact.params, ())


@accepts("regescrt.dat")
def _regescrt(t, m, data):
    contact = parse_name_addr(m.get("m"))
    t.assertEqual(contact.uri.headers, "Route=%3Csip:sip.example.com%3E")
    t.assertEqual(m.count("Route"), 0)


@accepts("sdp01.dat")
def _sdp01(t, m, data):
    t.assertEqual(m.content_type, "application/sdp")


@accepts("inv2543.dat")
def _inv2543(t, m, data):
    t.assertIsNone(m.get("content-length"))
    t.assertIsNone(m.top_via.branch)
    t.assertIsNone(m.from_tag)
    t.assertIsNone(m.max_forwards)
    t.assertTrue(m.body.startswith(b"v=0"))
    t.assertTrue(data.endswith(m.body))


# --- RFC 5118 -------------------------------------------------------------------

RFC5118_ACCEPTED: dict[str, Callable] = {}


def accepts6(name: str):
    def register(f):
        RFC5118_ACCEPTED[name] = f
        return f

    return register


@accepts6("ipv6-good.dat")
def _ipv6_good(t, m, data):
    t.assertEqual(parse_uri(m.uri).host, "2001:db8::10")
    t.assertEqual(m.top_via.host, "2001:db8::9:1")
    t.assertEqual(parse_name_addr(m.get("contact")).uri.host, "2001:db8::1")


@accepts6("port-ambiguous.dat")
def _port_ambiguous(t, m, data):
    uri = parse_uri(m.uri)
    t.assertEqual((uri.host, uri.port), ("2001:db8::10:5070", None))


@accepts6("port-unambiguous.dat")
def _port_unambiguous(t, m, data):
    uri = parse_uri(m.uri)
    t.assertEqual((uri.host, uri.port), ("2001:db8::10", 5070))
    t.assertEqual(str(uri), "sip:[2001:db8::10]:5070")


@accepts6("via-received-param-with-delim.dat")
def _received_delim(t, m, data):
    t.assertEqual(m.top_via.received, "2001:db8::9:255")


@accepts6("via-received-param-no-delim.dat")
def _received_nodelim(t, m, data):
    t.assertEqual(m.top_via.received, "2001:db8::9:255")


@accepts6("ipv6-in-sdp.dat")
def _ipv6_sdp(t, m, data):
    t.assertIn(b"IN IP6 2001:db8::20", m.body)


@accepts6("mult-ip-in-header.dat")
def _mult_ip(t, m, data):
    t.assertEqual(
        [(v.transport, v.host, v.port, v.received) for v in _vias(m)],
        [
            ("UDP", "2001:db8::9:1", 6050, None),
            ("UDP", "192.0.2.1", None, None),
            ("TCP", "2001:db8::9:255", None, "192.0.2.200"),
        ],
    )


@accepts6("mult-ip-in-sdp.dat")
def _mult_ip_sdp(t, m, data):
    t.assertIn(b"IN IP6 2001:db8::1", m.body)


@accepts6("ipv4-mapped-ipv6.dat")
def _mapped(t, m, data):
    t.assertEqual([v.host for v in _vias(m)], ["::ffff:192.0.2.10", "::ffff:192.0.2.2"])
    t.assertEqual(parse_name_addr(m.get("contact")).uri.host, "::ffff:192.0.2.2")


@accepts6("ipv6-bug-abnf-3-colons.dat")
def _three_colons(t, m, data):
    t.assertEqual(parse_uri(m.uri).host, "2001:db8:::192.0.2.1")
    t.assertEqual(parse_name_addr(m.get("to")).uri.host, "2001:db8:::192.0.2.1")


@accepts6("ipv6-correct-abnf-2-colons.dat")
def _two_colons(t, m, data):
    t.assertEqual(parse_uri(m.uri).host, "2001:db8::192.0.2.1")


RFC5118_REJECTED = {"ipv6-bad.dat": 400}


# --- the test cases -------------------------------------------------------------


def _stream_messages(data: bytes, chunk: int) -> list[bytes]:
    framer = SipStreamFramer()
    out = []
    for i in range(0, len(data), chunk):
        out.extend(framer.feed(data[i : i + chunk]))
    return out


class _CorpusMixin:
    def check_accepted(self, data: bytes, check) -> None:
        m = parse_message(data)
        wire = m.to_bytes()
        self.assertEqual(wire, data[: len(wire)])
        check(self, m, data)
        if m.get("content-length") is not None:
            # the same message on a stream, whole and byte by byte
            self.assertEqual(_stream_messages(wire, len(wire)), [wire])
            self.assertEqual(_stream_messages(wire * 2, 1), [wire, wire])

    def check_rejected(self, data: bytes, status: int) -> None:
        with self.assertRaises(SipParseError) as caught:
            parse_message(data)
        self.assertEqual(caught.exception.status, status)
        self.assertTrue(caught.exception.reason)
        # on a stream it is either framed (and then rejected) or refused
        framer = SipStreamFramer()
        try:
            frames = framer.feed(data)
        except SipParseError:
            return
        for frame in frames:
            if isinstance(frame, bytes):
                self.assertRaises(SipParseError, parse_message, frame)


class RFC4475Tests(_CorpusMixin, SynchronousTestCase):
    """
    The RFC 4475 torture messages, one test each (generated below).
    """

    def test_every_file_classified(self) -> None:
        """
        Every message in the index has an expectation here, and the index's
        valid messages are all accepted.
        """
        index = _index("rfc4475")
        self.assertEqual(set(index), set(RFC4475_ACCEPTED) | set(RFC4475_REJECTED))
        for name, row in index.items():
            if row["valid_or_invalid"] == "valid":
                self.assertIn(name, RFC4475_ACCEPTED)
            if row["valid_or_invalid"] == "invalid" and name not in ("baddate.dat",):
                self.assertIn(name, RFC4475_REJECTED)


class RFC5118Tests(_CorpusMixin, SynchronousTestCase):
    """
    The RFC 5118 IPv6 torture messages, in their sendable form (C{wire/}),
    one test each (generated below); the archived forms never crash.
    """

    def test_every_file_classified(self) -> None:
        """
        Every message in the index has an expectation here; only 4.2 is
        rejected.
        """
        index = _index("rfc5118")
        self.assertEqual(set(index), set(RFC5118_ACCEPTED) | set(RFC5118_REJECTED))
        for name, row in index.items():
            self.assertEqual(name in RFC5118_REJECTED, row["valid_or_invalid"] == "invalid")

    def test_archived_forms(self) -> None:
        """
        The archived forms (bare LF, some without the empty line or with a
        wrong Content-Length) parse or raise L{SipParseError}, nothing else;
        those that parse serialize back to their bytes.
        """
        accepted = 0
        for name in sorted(RFC5118_ACCEPTED) + sorted(RFC5118_REJECTED):
            data = _read("rfc5118", name)
            try:
                m = parse_message(data)
            except SipParseError as e:
                self.assertIn(e.status, (400,))
                continue
            accepted += 1
            self.assertEqual(m.to_bytes(), data[: len(m.to_bytes())])
        self.assertEqual(accepted, 7)


def _make_test(folder: str, name: str, check=None, status=None):
    if check is not None:

        def test(self):
            self.check_accepted(_read(folder, name), check)

        test.__doc__ = f"{name} is accepted, round-trips and has the right fields."
    else:

        def test(self):
            self.check_rejected(_read(folder, name), status)

        test.__doc__ = f"{name} is rejected with status {status}."
    return test


def _attach(cls, folder, accepted, rejected):
    for name, check in accepted.items():
        attr = "test_" + name.replace(".dat", "").replace("-", "_")
        setattr(cls, attr, _make_test(folder, name, check=check))
    for name, status in rejected.items():
        attr = "test_" + name.replace(".dat", "").replace("-", "_")
        setattr(cls, attr, _make_test(folder, name, status=status))


_attach(RFC4475Tests, "rfc4475", RFC4475_ACCEPTED, RFC4475_REJECTED)
_attach(
    RFC5118Tests,
    "rfc5118/wire",
    RFC5118_ACCEPTED,
    RFC5118_REJECTED,
)
