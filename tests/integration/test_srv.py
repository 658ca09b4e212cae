"""
L{spwm.tap.parts.lookup_srv} and L{spwm.tap.parts.lookup_naptr} against a
DNS server on loopback (Twisted Names, the test's own zone): SRV and NAPTR
records as the contact point reads them, a name without any, a server
that does not answer; and the operator proxies a name's NAPTR and SRV
records give.
"""

from __future__ import annotations

from typing import Any

import dns.resolver
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.names import common, dns as tdns, server
from twisted.trial.unittest import TestCase

from spwm.tap import parts
from spwm.testing.ports import free_port


class Zone(common.ResolverBase):
    """
    The test's zone: C{_sip._udp.example.test} has two SRV records and a
    root target one for TCP (no service); C{naptr.example.test} has NAPTR
    records for SIP over TCP and UDP and an ENUM-like one, and
    C{_sip._tcp.naptr.example.test} an SRV record; every other name does
    not exist.
    """

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        records = {
            (b"_sip._udp.example.test", tdns.SRV): [
                tdns.Record_SRV(10, 60, 5061, b"b.example.test"),
                tdns.Record_SRV(20, 0, 5062, b"c.example.test"),
            ],
            (b"_sip._tcp.example.test", tdns.SRV): [tdns.Record_SRV(0, 0, 5060, b"")],
            (b"naptr.example.test", tdns.NAPTR): [
                tdns.Record_NAPTR(20, 10, b"s", b"SIP+D2U", b"", b"_sip._udp.naptr.example.test"),
                tdns.Record_NAPTR(10, 10, b"S", b"SIP+D2T", b"", b"_sip._tcp.naptr.example.test"),
                tdns.Record_NAPTR(30, 10, b"u", b"E2U+sip", b"!^.*$!sip:info@example.test!", b""),
            ],
            (b"_sip._tcp.naptr.example.test", tdns.SRV): [tdns.Record_SRV(0, 0, 5070, b"b.example.test")],
        }.get((name.lower(), type))
        if records is None:
            return defer.fail(tdns.DomainError(name))
        answers = [tdns.RRHeader(name, type, cls, 60, payload, auth=True) for payload in records]
        return defer.succeed((answers, [], []))


class LookupSrvTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        factory = server.DNSServerFactory(authorities=[Zone()])
        self.port = reactor.listenUDP(0, tdns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.resolver = dns.resolver.Resolver(configure=False)
        self.resolver.nameservers = ["127.0.0.1"]
        self.resolver.port = self.port.getHost().port

    @defer.inlineCallbacks
    def test_records(self) -> Any:
        """
        The SRV records with their priority, weight, port and target.
        """
        got = yield deferToThread(parts.lookup_srv, "_sip._udp.example.test", self.resolver)
        self.assertEqual(sorted(got), [(10, 60, 5061, "b.example.test"), (20, 0, 5062, "c.example.test")])

    @defer.inlineCallbacks
    def test_naptr_records(self) -> Any:
        """
        The NAPTR records with their order, preference, flags, service and
        replacement (C{.} for none); a name without any has none.
        """
        got = yield deferToThread(parts.lookup_naptr, "naptr.example.test", self.resolver)
        self.assertEqual(
            sorted(got),
            [
                (10, 10, "S", "SIP+D2T", "_sip._tcp.naptr.example.test"),
                (20, 10, "s", "SIP+D2U", "_sip._udp.naptr.example.test"),
                (30, 10, "u", "E2U+sip", "."),
            ],
        )
        got = yield deferToThread(parts.lookup_naptr, "example.test", self.resolver)
        self.assertEqual(got, [])

    @defer.inlineCallbacks
    def test_operator_proxy_by_naptr(self) -> Any:
        """
        C{--sip-proxy naptr.example.test} against this zone: its NAPTR
        records choose TCP, whose SRV record names the proxy and its port.
        """
        from spwm.sip.actions import OperatorProxy
        from spwm.tap.contact import parse_sip_proxy

        def resolve(host: str, family: int) -> list[str]:
            return {"b.example.test": ["127.0.0.1"]}[host]

        got = yield deferToThread(
            parts.resolve_proxies,
            [parse_sip_proxy("naptr.example.test")],
            2,
            resolve,
            lambda name: parts.lookup_srv(name, self.resolver),
            lambda name: parts.lookup_naptr(name, self.resolver),
        )
        self.assertEqual(got, [OperatorProxy("127.0.0.1", 5070, "tcp")])

    @defer.inlineCallbacks
    def test_no_service(self) -> Any:
        """
        A record whose target is the root: C{.} (no SIP service here).
        """
        got = yield deferToThread(parts.lookup_srv, "_sip._tcp.example.test", self.resolver)
        self.assertEqual(got, [(0, 0, 5060, ".")])

    @defer.inlineCallbacks
    def test_no_records(self) -> Any:
        """
        A name that does not exist has none (the caller takes its
        addresses, port 5060).
        """
        got = yield deferToThread(parts.lookup_srv, "_sip._udp.other.test", self.resolver)
        self.assertEqual(got, [])

    @defer.inlineCallbacks
    def test_no_server(self) -> Any:
        """
        A server that does not answer: an C{OSError} that says which
        lookup failed, within the lookup's lifetime.
        """
        self.patch(parts, "SRV_LIFETIME", 0.5)
        silent = dns.resolver.Resolver(configure=False)
        silent.nameservers = ["127.0.0.1"]
        silent.port = free_port()
        with self.assertRaises(OSError) as caught:
            yield deferToThread(parts.lookup_srv, "_sip._udp.example.test", silent)
        self.assertIn("the SRV lookup of _sip._udp.example.test failed", str(caught.exception))
