"""
L{spwm.tap.parts.lookup_srv} against a DNS server on loopback (Twisted
Names, the test's own zone): SRV records as the contact point reads them,
a name without any, a server that does not answer.
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
    root target one for TCP (no service); every other name does not exist.
    """

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        records = {
            (b"_sip._udp.example.test", tdns.SRV): [
                tdns.Record_SRV(10, 60, 5061, b"b.example.test"),
                tdns.Record_SRV(20, 0, 5062, b"c.example.test"),
            ],
            (b"_sip._tcp.example.test", tdns.SRV): [tdns.Record_SRV(0, 0, 5060, b"")],
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
