"""
Tests for L{spwm.sip.registrar.EmbeddedRegistrar}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.errors import SipParseError
from spwm.sip.message import parse_message
from spwm.sip.registrar import EmbeddedRegistrar, aor_key
from spwm.sip.uri import parse_name_addr, parse_uri
from tests.test_sip_proxy import register, request

PATH = "<sip:tok1@203.0.113.5:5060;lr>"


def reg_with_path(*args: object, path: str = PATH, **kw: object) -> bytes:
    """
    A REGISTER as the contact point forwards it: with a Path.
    """
    data = register(*args, **kw)  # type: ignore[arg-type]
    return data.replace(b"Content-Length:", f"Path: {path}\r\nContent-Length:".encode())


class RegistrarTests(SynchronousTestCase):
    """
    Tests for L{EmbeddedRegistrar}.
    """

    def setUp(self) -> None:
        self.r = EmbeddedRegistrar()

    def do(self, data: bytes, now: float = 0.0) -> list:
        return self.r.handle_request(parse_message(data), now)

    def test_register_and_route(self) -> None:
        """
        A REGISTER is answered 200 listing the binding with its remaining
        expiry and the Path; a request for the AOR is retargeted to the
        contact and routed along the stored Path.
        """
        [ok] = self.do(reg_with_path(expires=120))
        self.assertEqual(ok.status, 200)
        self.assertIsNotNone(ok.to_tag)
        c = parse_name_addr(ok.get("Contact"))
        self.assertEqual(
            (str(c.uri), c.param("expires")), ("sip:alice@192.0.2.10:5062", "120")
        )
        self.assertEqual(ok.get("Path"), PATH)
        [b] = self.r.bindings("sip:alice@example.org", 10.0)
        self.assertEqual(
            (b.contact, b.path, b.expires),
            ("sip:alice@192.0.2.10:5062", (PATH,), 120.0),
        )
        [fwd] = self.do(request("INVITE", "sip:alice@example.org"), 10.0)
        self.assertEqual(fwd.method, "INVITE")
        self.assertEqual(fwd.uri, "sip:alice@192.0.2.10:5062")
        self.assertEqual(fwd.get_all("Route"), [PATH])

    def test_refresh_expiry(self) -> None:
        """
        Re-registering the same contact replaces the binding; Expires 0
        removes it; expired bindings go on C{expire}.
        """
        self.do(reg_with_path(expires=60))
        self.do(reg_with_path(expires=300), 30.0)
        [b] = self.r.bindings("sip:alice@example.org")
        self.assertEqual(b.expires, 330.0)
        self.do(reg_with_path(expires=0), 40.0)
        self.assertEqual(self.r.bindings("sip:alice@example.org"), [])
        self.do(reg_with_path(expires=10), 50.0)
        self.r.expire(60.0)
        self.assertEqual(self.r.bindings("sip:alice@example.org"), [])

    def test_instances_tell_phones_apart(self) -> None:
        """
        Two contacts with different C{+sip.instance} are two bindings; the
        newest is used for routing.
        """
        self.do(
            reg_with_path(
                contact="sip:alice@192.0.2.10:5062",
                contact_params=';+sip.instance="<urn:uuid:1>"',
            ),
            0.0,
        )
        self.do(
            reg_with_path(
                contact="sip:alice@192.0.2.11:5062",
                contact_params=';+sip.instance="<urn:uuid:2>"',
                path="<sip:tok2@203.0.113.5;lr>",
            ),
            1.0,
        )
        self.assertEqual(len(self.r.bindings("sip:alice@example.org")), 2)
        [fwd] = self.do(request("MESSAGE", "sip:alice@example.org"), 2.0)
        self.assertEqual(
            (fwd.uri, fwd.get("Route")),
            ("sip:alice@192.0.2.11:5062", "<sip:tok2@203.0.113.5;lr>"),
        )

    def test_wildcard(self) -> None:
        """
        C{Contact: *} with C{Expires: 0} removes all bindings; without it the
        REGISTER is refused with 400.
        """
        self.do(reg_with_path())
        star = register().replace(
            b"Contact: <sip:alice@192.0.2.10:5062>;expires=600", b"Contact: *"
        )
        [bad] = self.do(star)
        self.assertEqual(bad.status, 400)
        [ok] = self.do(
            star.replace(b"Content-Length:", b"Expires: 0\r\nContent-Length:")
        )
        self.assertEqual(ok.status, 200)
        self.assertEqual(self.r.bindings("sip:alice@example.org"), [])

    def test_unknown_404_unavailable_480(self) -> None:
        """
        Unknown users get 404, users without a live binding 480; an ACK is
        never answered.
        """
        [nf] = self.do(request("INVITE", "sip:nobody@example.org"))
        self.assertEqual(nf.status, 404)
        self.do(reg_with_path(expires=10))
        [ta] = self.do(request("INVITE", "sip:alice@example.org"), 11.0)
        self.assertEqual(ta.status, 480)
        self.assertEqual(self.do(request("ACK", "sip:nobody@example.org")), [])

    def test_publish_489(self) -> None:
        """
        A PUBLISH, even for a registered AOR (the publisher's own), is
        answered 489 instead of being routed to the phones: there is no
        presence server here.
        """
        self.do(reg_with_path(expires=120))
        [bad] = self.do(request("PUBLISH", "sip:alice@example.org"), 10.0)
        self.assertEqual((bad.status, bad.reason), (489, "Bad Event (no presence server here)"))
        self.assertIsNotNone(bad.to_tag)
        [fwd] = self.do(request("SUBSCRIBE", "sip:alice@example.org"), 10.0)
        self.assertEqual(fwd.uri, "sip:alice@192.0.2.10:5062")

    def test_whole_aor_match(self) -> None:
        """
        A callee is matched by its whole address-of-record: the same user
        under another domain (or with another port) is not found (404),
        while the canonical forms of the AOR (host case, the default port,
        C{sips}, URI parameters, escaped user characters) all reach it.
        """
        self.do(reg_with_path())
        for other in ("sip:alice@203.0.113.5", "sip:alice@example.org:5070", "sip:Alice@example.org"):
            [nf] = self.do(request("INVITE", other))
            self.assertEqual(nf.status, 404, other)
        for same in (
            "sip:alice@EXAMPLE.org",
            "sip:alice@example.org:5060",
            "sips:alice@example.org",
            "sip:alice@example.org;user=phone;transport=tcp",
            "sip:%61lice@example.org",
        ):
            [fwd] = self.do(request("INVITE", same))
            self.assertEqual(fwd.uri, "sip:alice@192.0.2.10:5062", same)

    def test_aor_key(self) -> None:
        """
        L{aor_key} is the RFC 3261 10.3 canonical form: IPv6 hosts in
        brackets and compressed, ports other than the default kept.
        """
        cases = {
            "sip:bob@[2001:DB8:0::1]": "bob@[2001:db8::1]",
            "sip:bob@Example.ORG:5080;transport=tcp": "bob@example.org:5080",
            "sips:bob@example.org:5061": "bob@example.org",
            "sips:bob@example.org:5060": "bob@example.org:5060",
            "sip:b%6Fb@example.org": "bob@example.org",
        }
        for uri, key in cases.items():
            self.assertEqual(aor_key(parse_uri(uri)), key, uri)

    def test_domains(self) -> None:
        """
        With C{domains} a REGISTER for another domain gets 403 and stores
        nothing; one for a served domain (any case) is accepted.
        """
        r = EmbeddedRegistrar(domains=["Example.ORG", "[2001:db8::5]"])
        msg = parse_message(reg_with_path().replace(b"@example.org", b"@example.net"))
        [refused] = r.handle_request(msg, 0.0)
        self.assertEqual((refused.status, refused.reason), (403, "Forbidden: domain not served here"))
        self.assertEqual(r.bindings("sip:alice@example.net"), [])
        [ok] = r.handle_request(parse_message(reg_with_path().replace(b"@example.org", b"@EXAMPLE.org")), 0.0)
        self.assertEqual(ok.status, 200)
        self.assertEqual(len(r.bindings("sip:alice@example.org")), 1)
        v6 = parse_message(reg_with_path().replace(b"@example.org", b"@[2001:db8:0:0::5]"))
        [ok6] = r.handle_request(v6, 0.0)
        self.assertEqual(ok6.status, 200)

    def test_any_domain_by_default(self) -> None:
        """
        Without C{domains} every domain is served, as before.
        """
        [ok] = self.do(reg_with_path().replace(b"@example.org", b"@anything.example"))
        self.assertEqual(ok.status, 200)

    def test_routed_request_passes(self) -> None:
        """
        A request that still has a Route goes back unchanged.
        """
        msg = parse_message(
            request("BYE", "sip:x@192.0.2.10", extra=(PATH.join(["Route: ", ""]),))
        )
        self.assertEqual(self.r.handle_request(msg, 0.0), [msg])

    def test_limit(self) -> None:
        """
        Beyond C{max_aors} a REGISTER for a new AOR gets 503.
        """
        r = EmbeddedRegistrar(max_aors=1)
        r.handle_request(parse_message(reg_with_path()), 0.0)
        [full] = r.handle_request(
            parse_message(reg_with_path("bob", "sip:bob@192.0.2.11")), 0.0
        )
        self.assertEqual(full.status, 503)

    @given(st.text(max_size=60))
    def test_odd_contacts(self, text: str) -> None:
        """
        Whatever Contact a parsed REGISTER carries, the registrar answers
        with a response and never raises.
        """
        data = register().replace(
            b"<sip:alice@192.0.2.10:5062>;expires=600",
            text.encode("utf-8", "replace").replace(b"\r", b"").replace(b"\n", b""),
        )
        try:
            msg = parse_message(data)
        except SipParseError:
            return
        out = self.r.handle_request(msg, 0.0)
        self.assertEqual(len(out), 1)
        self.assertFalse(out[0].is_request)
