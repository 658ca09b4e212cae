"""
Tests for L{spwm.lookups}: names looked up in threads that a stop does
not wait for.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IResolutionReceiver
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from spwm import lookups


@implementer(IResolutionReceiver)
class _Receiver:
    def __init__(self) -> None:
        self.addresses: list[Any] = []
        self.done: Deferred[list[Any]] = Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


class LookupTests(TestCase):
    def test_pool_threads_do_not_hold_the_process(self) -> None:
        """
        The lookup pool is one per process, started, and its threads are
        daemon threads, not the reactor's pool (which the reactor joins
        when it stops).
        """
        pool = lookups.lookup_pool()
        self.assertIs(lookups.lookup_pool(), pool)
        self.assertIsNot(pool, reactor.getThreadPool())
        self.assertTrue(pool.started)
        self.assertTrue(pool.threadFactory(target=lambda: None).daemon)

    async def test_resolver_looks_up_in_the_pool(self) -> None:
        """
        After L{lookups.install} the reactor's name resolver calls
        C{getaddrinfo} in a thread of the lookup pool and delivers its
        addresses; the resolver before is given back.
        """
        threads: list[str] = []

        def getaddrinfo(host: str, port: int, family: int, kind: int) -> list[Any]:
            threads.append(threading.current_thread().name)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", port))]

        before = lookups.install(reactor, getaddrinfo)
        self.addCleanup(reactor.installNameResolver, before)
        receiver = _Receiver()
        reactor.nameResolver.resolveHostName(receiver, "contact.example", 443)
        addresses = await receiver.done
        self.assertEqual([(a.host, a.port) for a in addresses], [("192.0.2.7", 443)])
        self.assertEqual(len(threads), 1)
        self.assertTrue(threads[0].startswith("PoolThread-spwm-lookups-"), threads)
