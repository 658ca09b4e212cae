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
