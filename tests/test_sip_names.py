"""
Tests for L{spwm.sip.names}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.names import ProxyNames, default_port, normalize_host, parse_name
from spwm.sip.uri import parse_uri


class NamesTests(SynchronousTestCase):
    """
    Tests for L{parse_name}, L{normalize_host}, L{default_port} and
    L{ProxyNames}.
    """

    def test_parse_name(self) -> None:
        """
        C{--sip-name} values: names (lower-cased), names with a port, IPv4
        and IPv6 literals with and without a port.
        """
        cases = {
            "Agent.Example.NET": ("agent.example.net", None),
            "agent.example.net.:5070": ("agent.example.net", 5070),
            "192.0.2.1": ("192.0.2.1", None),
            "192.0.2.1:5080": ("192.0.2.1", 5080),
            "2001:DB8::1": ("2001:db8::1", None),
            "[2001:db8::1]": ("2001:db8::1", None),
            "[2001:db8::1]:5062": ("2001:db8::1", 5062),
        }
        for value, expected in cases.items():
            self.assertEqual(parse_name(value), expected, value)

    def test_parse_name_refuses(self) -> None:
        """
        Empty values, bad ports and things that are no host are refused.
        """
        for value in ("", " ", "host:0", "host:70000", "host:x", "[2001:db8::1", "[::1]x", "a b", "sip:x@y"):
            self.assertRaises(ValueError, parse_name, value)

    def test_normalize_host(self) -> None:
        """
        IP literals compare as addresses (IPv4-mapped IPv6 as IPv4), names
        without case or trailing dot.
        """
        self.assertEqual(normalize_host("[2001:DB8:0:0::1]"), "2001:db8::1")
        self.assertEqual(normalize_host("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(normalize_host("Host.Example."), "host.example")

    def test_default_port(self) -> None:
        """
        5061 for C{sips} and C{;transport=tls}, else 5060.
        """
        self.assertEqual(default_port(parse_uri("sip:h")), 5060)
        self.assertEqual(default_port(parse_uri("sip:h;transport=TLS")), 5061)
        self.assertEqual(default_port(parse_uri("sips:h;transport=tcp")), 5061)
        self.assertEqual(default_port(parse_uri("sip:h;transport=tcp")), 5060)

    def test_names_us(self) -> None:
        """
        A name without a port matches on every listening port; one with a
        port only there; other schemes never match.
        """
        names = ProxyNames([("192.0.2.1", 5060), ("192.0.2.1", 5061)], [("a.example", None), ("b.example", 5099)])
        self.assertTrue(names.names_us(parse_uri("sip:a.example;transport=tls")))
        self.assertTrue(names.names_us(parse_uri("sip:A.example:5060")))
        self.assertFalse(names.names_us(parse_uri("sip:a.example:5099")))
        self.assertTrue(names.names_us(parse_uri("sip:b.example:5099")))
        self.assertFalse(names.names_us(parse_uri("sip:b.example")))
        self.assertFalse(names.names_us(parse_uri("tel:+1234")))
        self.assertFalse(names.names_us(parse_uri("sip:192.0.2.2")))


class OptionsTests(SynchronousTestCase):
    """
    C{--sip-name}, C{--domain} and C{--sip-trace} reach the cores and
    runners that L{build_agent} and L{build_contact} build.
    """

    def test_agent(self) -> None:
        """
        The agent's names are its listening addresses (with the TLS port
        when SIP over TLS is on) and its C{--sip-name}s; C{--sip-trace}
        gives the runner a trace.
        """
        from twisted.internet.testing import MemoryReactorClock

        from spwm.tap import agent
        from spwm.tap.assembly import agent_names, build_agent

        options = agent.Options()
        options.parseOptions(
            ["--plaintext", "--sip-listen", "192.0.2.1:5070", "--sip-name", "Agent.LAN", "--sip-name", "[2001:db8::1]:5080"]
        )
        service = build_agent(options.config, reactor=MemoryReactorClock())
        names = service.sip_core.names
        self.assertEqual(names.addresses, frozenset({("192.0.2.1", 5070)}))
        self.assertEqual(names.names, frozenset({("agent.lan", None), ("2001:db8::1", 5080)}))
        self.assertIsNone(service.router.sip.trace)
        names = agent_names([("192.0.2.1", 5060)], True, [])
        self.assertTrue(names.names_us(parse_uri("sip:192.0.2.1;transport=tls")))
        options = agent.Options()
        options.parseOptions(["--plaintext", "--sip-trace", "--sip-trace-bodies"])
        service = build_agent(options.config, reactor=MemoryReactorClock())
        self.assertTrue(service.router.sip.trace.bodies)

    def test_contact(self) -> None:
        """
        The contact point's names are its C{--sip-address} and
        C{--sip-name}s; C{--domain} limits the embedded registrar, and is
        refused with C{--sip-proxy}.
        """
        from twisted.internet.testing import MemoryReactorClock

        from spwm.config import ConfigExit
        from spwm.tap import contact
        from spwm.tap.assembly import build_contact

        options = contact.Options()
        options.parseOptions(
            ["--plaintext", "--sip-address", "203.0.113.5:5060", "--sip-name", "edge.example.net", "--domain", "Example.ORG", "--sip-trace"]
        )
        service = build_contact(options.config, reactor=MemoryReactorClock())
        core = service.sip_core
        self.assertTrue(core.names.names_us(parse_uri("sip:EDGE.example.net;lr")))
        self.assertTrue(core.names.names_us(parse_uri("sip:203.0.113.5:5060;lr")))
        self.assertEqual(core.registrar.domains, frozenset({"example.org"}))
        self.assertIsNotNone(service.router.sip.trace)
        options = contact.Options()
        with self.assertRaises(ConfigExit) as caught:
            options.parseOptions(["--plaintext", "--domain", "example.org", "--sip-proxy", "198.51.100.7"])
        self.assertIn("domain", str(caught.exception))
        with self.assertRaises(ConfigExit):
            contact.Options().parseOptions(["--plaintext", "--domain", "example.org:5060"])
