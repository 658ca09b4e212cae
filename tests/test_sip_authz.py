"""
Tests for L{spwm.sip.authz}: a tunnel may send calls and open media only
after a registration through it succeeded, and only as what it registered.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.authz import TUNNEL_REGISTERS_PER_USER, AuthorizingContactProxy, MediaAcceptor
from spwm.tunnel.api import Router
from spwm.sip.message import parse_message
from spwm.sip.actions import Dropped, ToTunnel
from spwm.sip.contact_proxy import ContactSipProxy
from spwm.tunnel.frames import ChannelKind, ErrorCode
from spwm.testing.tunnel import FakeTunnel
from tests import skip_if_compiled
from tests.test_sip_proxy import SDP, request


class RecordingManager:
    def __init__(self) -> None:
        self.requested: list[int] = []

    def accept(self, tunnel: Any, channel_id: int, kind: Any, meta: dict) -> Any:
        self.requested.append(channel_id)
        return self


class GateTestCase(SynchronousTestCase):
    """
    The contact point's gate in front of its SIP core (embedded registrar).
    """

    def setUp(self) -> None:
        self.proxy = AuthorizingContactProxy(ContactSipProxy(("203.0.113.10", 5060), b"k" * 32))
        self.tunnel = FakeTunnel("s-1")
        self.proxy.tunnel_attached(self.tunnel, "s-1")

    def send(self, data: bytes, flow: int = 1) -> list[Any]:
        return self.proxy.from_tunnel(self.tunnel, "s-1", flow, data, 10.0)

    def statuses(self, actions: list[Any]) -> list[int]:
        out = []
        for a in actions:
            if isinstance(a, ToTunnel):
                msg = parse_message(a.data)
                if not msg.is_request:
                    out.append(msg.status)
        return out

    def register(self, user: str = "alice") -> None:
        actions = self.send(
            request(
                "REGISTER",
                "sip:example.org",
                from_=f"<sip:{user}@example.org>;tag=r1",
                to=f"<sip:{user}@example.org>",
                call_id=f"reg-{user}",
                extra=(f"Contact: <sip:{user}@192.0.2.10:5062>", "Expires: 300"),
            )
        )
        self.assertIn(200, self.statuses(actions))



class AuthorizationTests(GateTestCase):
    """
    What a tunnel may send before and after its registration.
    """

    def test_invite_before_registration_is_forbidden(self) -> None:
        """
        An unregistered tunnel's INVITE gets 403 and goes nowhere else.
        """
        actions = self.send(request("INVITE", "sip:bob@example.org", body=SDP, content_type="application/sdp"))
        self.assertEqual(self.statuses(actions), [403])
        [resp] = [parse_message(a.data) for a in actions if isinstance(a, ToTunnel)]
        self.assertIn("not registered", resp.reason)
        self.assertEqual(self.proxy.refused, {"tunnel not registered": 1})

    def test_register_and_options_allowed(self) -> None:
        """
        REGISTER and OPTIONS pass before any registration.
        """
        self.register()
        options = self.send(request("OPTIONS", "sip:example.org", call_id="o1"))
        self.assertNotIn(403, self.statuses(options))

    def test_after_registration_only_as_registered(self) -> None:
        """
        After a 2xx to REGISTER the tunnel may call as that user, not as another.
        """
        self.register("alice")
        self.assertTrue(self.proxy.is_authorized("s-1"))
        as_alice = self.send(request("MESSAGE", "sip:bob@example.org", call_id="m1"))
        self.assertNotIn(403, self.statuses(as_alice))
        as_carol = self.send(request("MESSAGE", "sip:bob@example.org", from_="<sip:carol@example.org>;tag=x", call_id="m2"))
        self.assertEqual(self.statuses(as_carol), [403])
        self.assertEqual(self.proxy.refused, {"From is not registered through this tunnel": 1})

    def test_unregister_falls_back(self) -> None:
        """
        When the tunnel's registrations are removed it is unregistered again.
        """
        self.register("alice")
        self.send(
            request(
                "REGISTER",
                "sip:example.org",
                from_="<sip:alice@example.org>;tag=r2",
                to="<sip:alice@example.org>",
                call_id="reg-alice",
                cseq=2,
                extra=("Contact: <sip:alice@192.0.2.10:5062>", "Expires: 0"),
            )
        )
        self.assertFalse(self.proxy.is_authorized("s-1"))
        actions = self.send(request("MESSAGE", "sip:bob@example.org", call_id="m3"))
        self.assertEqual(self.statuses(actions), [403])

    def test_other_tunnel_stays_unregistered(self) -> None:
        """
        One tunnel's registration authorises that tunnel only.
        """
        self.register("alice")
        other = FakeTunnel("s-2")
        self.proxy.tunnel_attached(other, "s-2")
        actions = self.proxy.from_tunnel(other, "s-2", 1, request("MESSAGE", "sip:bob@example.org", call_id="m4"), 10.0)
        self.assertEqual(self.statuses(actions), [403])

    def test_withheld_caller_id(self) -> None:
        """
        A registered tunnel may call with its caller ID withheld (RFC 3323:
        an anonymous From), also naming the identity it prefers (RFC 3325)
        when that is one registered through it; not with another one's,
        and not before it is registered at all.
        """
        anonymous = '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=an'

        def call(n: int, *extra: str) -> list[int]:
            return self.statuses(self.send(request("INVITE", "sip:bob@example.org", from_=anonymous, call_id=f"anon-{n}", extra=extra)))

        self.assertEqual(call(0), [403])
        self.assertEqual(self.proxy.refused, {"tunnel not registered": 1})
        self.register("alice")
        self.assertNotIn(403, call(1))
        self.assertNotIn(403, call(2, "P-Preferred-Identity: <sip:alice@example.org>"))
        self.assertEqual(call(3, "P-Preferred-Identity: <sip:mallory@example.org>"), [403])
        self.assertEqual(
            self.proxy.refused,
            {"tunnel not registered": 1, "P-Preferred-Identity is not registered through this tunnel": 1},
        )

    def message(self, n: int, from_: str = "<sip:alice@example.org>;tag=f", *extra: str) -> list[Any]:
        return self.send(request("MESSAGE", "sip:bob@example.org", from_=from_, call_id=f"m-{n}", extra=extra))

    def test_preferred_identity_whatever_the_from(self) -> None:
        """
        Every P-Preferred-Identity value (every header line, every list
        element) must be registered through the tunnel, also beside a
        registered From: a proxy may assert any of them.  One that does
        not parse is refused too; the 403 names the header, whatever its
        case.
        """
        self.register("alice")
        anonymous = '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=an'
        alice = "P-Preferred-Identity: <sip:alice@example.org>"
        refused = {
            1: (None, "P-Preferred-Identity: <sip:bob@example.org>"),
            2: (anonymous, alice, "P-Preferred-Identity: <sip:bob@example.org>"),
            3: (anonymous, "P-Preferred-Identity: <sip:alice@example.org>, <sip:bob@example.org>"),
            4: (None, "P-Preferred-Identity: <sip:alice@example.org>, <tel:+15551234>"),
            5: (None, "P-Preferred-Identity: <sips:alice@example.org>"),
            11: (None, "p-PREFERRED-identity : <sip:bob@example.org>"),
        }
        malformed = {
            6: (None, "P-Preferred-Identity: <sip:bob@example.org"),
            7: (anonymous, "P-Preferred-Identity: <sip:alice@example.org>,"),
            8: (None, "P-Preferred-Identity:"),
        }
        for cases, reason in ((refused, "not registered"), (malformed, "malformed")):
            for n, (from_, *extra) in cases.items():
                actions = self.message(n, from_ or "<sip:alice@example.org>;tag=f", *extra)
                [resp] = [parse_message(a.data) for a in actions if isinstance(a, ToTunnel)]
                self.assertEqual((n, resp.status, resp.reason), (n, 403, f"Forbidden (P-Preferred-Identity is {reason}" + (
                    " through this tunnel)" if reason == "not registered" else ")")))
        self.assertNotIn(403, self.statuses(self.message(9, "<sip:alice@example.org>;tag=f", alice)))
        self.assertNotIn(403, self.statuses(self.message(10, anonymous, alice, "P-Preferred-Identity: <sip:alice@example.org>")))
        self.assertEqual(
            self.proxy.refused,
            {"P-Preferred-Identity is not registered through this tunnel": 6, "P-Preferred-Identity is malformed": 3},
        )

    def test_identity_compared_as_a_uri(self) -> None:
        """
        From and P-Preferred-Identity are compared with the registered
        address as RFC 3261 19.1.4 compares URIs: scheme, user (with case),
        password and port count, the host's case and escapes do not, nor
        do URI parameters.
        """
        self.register("alice")
        for n, other in enumerate(
            ["sips:alice@example.org", "sip:ALICE@example.org", "sip:alice@example.org:5070", "sip:alice:pw@example.org"]
        ):
            self.assertEqual(self.statuses(self.message(n, f"<{other}>;tag=f")), [403], other)
            self.assertEqual(
                self.statuses(self.message(10 + n, "<sip:alice@example.org>;tag=f", f"P-Preferred-Identity: <{other}>")),
                [403],
                other,
            )
        same = "<sip:%61lice@EXAMPLE.org;user=phone>"
        self.assertNotIn(403, self.statuses(self.message(20, f"{same};tag=f", f"P-Preferred-Identity: {same}")))
        self.assertEqual(
            self.proxy.refused,
            {"From is not registered through this tunnel": 4, "P-Preferred-Identity is not registered through this tunnel": 4},
        )

    def test_parsed_once(self) -> None:
        """
        A request the checks read is parsed once, by the core's parser: the
        checks parse it and hand it on, and the core reads the same message
        (a passed request; a refused one goes no further).  One that does
        not parse goes on as it came, and the core answers it 400.
        """
        from spwm.sip import authz, contact_proxy

        skip_if_compiled(authz, "counts the parses by replacing the parser its functions call")
        self.register("alice")
        parses: list[tuple[str, bytes]] = []

        def spy(where: str, real: Any) -> Any:
            def parse(data: bytes, **kwargs: Any) -> Any:
                parses.append((where, data))
                return real(data, **kwargs)

            return parse

        self.patch(authz, "parse_message", spy("checks", authz.parse_message))
        self.patch(contact_proxy, "parse_message", spy("core", contact_proxy.parse_message))
        cases = [
            # (passed: the embedded registrar knows no bob)
            ("<sip:alice@example.org>;tag=once", [404], ["checks"]),
            ("<sip:carol@example.org>;tag=once", [403], ["checks"]),
            ("<sip:alice@example.org;tag=once", [400], ["checks", "core"]),
        ]
        for n, (from_, statuses, readers) in enumerate(cases):
            data = request("MESSAGE", "sip:bob@example.org", from_=from_, call_id=f"p-{n}")
            del parses[:]
            actions = self.send(data)
            # (a response's status line: the 400 copies the From that does not parse)
            self.assertEqual([int(a.data.split(b" ", 2)[1]) for a in actions if isinstance(a, ToTunnel)], statuses)
            # (the embedded registrar's copy from the network is another message)
            self.assertEqual([where for where, parsed in parses if parsed is data], readers)
        self.assertEqual(self.proxy.refused, {"From is not registered through this tunnel": 1})

    def test_unregistered_ack_is_dropped_silently(self) -> None:
        """
        An ACK is never answered.
        """
        actions = self.send(request("ACK", "sip:bob@example.org"))
        self.assertEqual(self.statuses(actions), [])

    def test_media_gate(self) -> None:
        """
        Media channels from an unregistered tunnel are refused; after the
        registration they reach the media manager, which then gets the
        channel's datagrams directly.
        """
        manager = RecordingManager()
        gate = MediaAcceptor(manager, self.proxy)
        router = Router(None, {"media": gate}, None)
        self.assertIsNone(router.channel_requested(self.tunnel, 1, ChannelKind.DATAGRAM, {"use": "media"}))
        self.assertEqual(self.tunnel.closed, [(1, ErrorCode.REFUSED, "media before registration")])
        self.assertEqual((manager.requested, gate.refused), ([], 1))
        self.register()
        handler = router.channel_requested(self.tunnel, 3, ChannelKind.DATAGRAM, {"use": "media"})
        self.assertEqual(manager.requested, [3])
        self.assertIs(handler, manager)


class LimitTests(GateTestCase):
    """
    REGISTER rate and users per tunnel.
    """

    def setUp(self) -> None:
        super().setUp()
        self.proxy.max_users = 2
        self.proxy.register_limit = 5

    def test_users_per_tunnel(self) -> None:
        """
        A REGISTER for one address-of-record more than the limit gets 403;
        refreshing a registered one still passes.
        """
        self.register("alice")
        self.register("bob")
        actions = self.send(
            request("REGISTER", "sip:example.org", from_="<sip:carol@example.org>;tag=c", to="<sip:carol@example.org>",
                    call_id="reg-carol", extra=("Contact: <sip:carol@192.0.2.10:5062>", "Expires: 300"))
        )
        self.assertEqual(self.statuses(actions), [403])
        self.assertEqual(self.proxy.refused, {"too many users on this tunnel": 1})
        # answered, so the log line names the answer and is no drop
        self.assertEqual(
            [a for a in actions if isinstance(a, Dropped)],
            [Dropped("REGISTER refused with 403 Forbidden: too many users on this tunnel", "REGISTER refused", answered=True)],
        )
        self.register("alice")

    def test_register_rate(self) -> None:
        """
        More REGISTER requests for one address per minute than the limit
        get 503 with Retry-After; a minute later they pass again.
        """
        for i in range(5):
            self.register("alice")
        actions = self.send(request("REGISTER", "sip:example.org", from_="<sip:alice@example.org>;tag=x", to="<sip:alice@example.org>",
                                    call_id="reg-x", extra=("Contact: <sip:alice@192.0.2.10:5062>",)))
        self.assertEqual(self.statuses(actions), [503])
        [resp] = [parse_message(a.data) for a in actions if isinstance(a, ToTunnel)]
        self.assertEqual(resp.get("Retry-After"), "60")
        ok = self.proxy.from_tunnel(self.tunnel, "s-1", 1, request(
            "REGISTER", "sip:example.org", from_="<sip:alice@example.org>;tag=r9", to="<sip:alice@example.org>",
            call_id="reg-y", extra=("Contact: <sip:alice@192.0.2.10:5062>", "Expires: 300")), 75.0)
        self.assertIn(200, self.statuses(ok))

    def _register(self, user: str, n: int, now: float = 10.0) -> list[int]:
        actions = self.proxy.from_tunnel(self.tunnel, "s-1", 1, request(
            "REGISTER", "sip:example.org", from_=f"<sip:{user}@example.org>;tag=r{n}", to=f"<sip:{user}@example.org>",
            call_id=f"reg-{user}-{n}", extra=(f"Contact: <sip:{user}@192.0.2.10:5062>", "Expires: 300")), now)
        return self.statuses(actions)

    def test_register_rate_per_user(self) -> None:
        """
        The limit is per address-of-record: a phone that sends REGISTER
        after REGISTER (a wrong password, retried for ever) gets 503 for
        its own address only; the other phones behind the same agent
        register as before.
        """
        for n in range(5):
            self.assertEqual(self._register("bob", n), [200])
        self.assertEqual(self._register("bob", 5), [503])
        self.assertEqual(self._register("alice", 0), [200])
        self.assertEqual(self._register("bob", 6), [503])
        self.assertEqual(self.proxy.refused, {"too many REGISTER requests for this user": 2})

    def test_register_rate_per_tunnel(self) -> None:
        """
        In all, a tunnel may send L{TUNNEL_REGISTERS_PER_USER} REGISTERs
        per minute per user it may register: past that, every address gets
        503 (many addresses tried through one tunnel); a minute later they
        pass again, and the addresses not seen for a minute are forgotten.
        """
        self.assertEqual(self.proxy.tunnel_register_limit, TUNNEL_REGISTERS_PER_USER * 2)
        for n in range(self.proxy.tunnel_register_limit):
            self.assertEqual(self._register(f"u{n}", 0), [403] if n >= 2 else [200])
        self.assertEqual(self._register("alice", 0), [503])
        self.assertEqual(self.proxy.refused["too many REGISTER requests"], 1)
        self.assertEqual(self._register("u0", 1, now=75.0), [200])
        for n in range(self.proxy.tunnel_register_limit):
            self._register(f"v{n}", 0, now=76.0)
        self.assertLessEqual(len(self.proxy._register_times["s-1"]), self.proxy.tunnel_register_limit + 2)
