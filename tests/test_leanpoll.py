"""
Tests for L{spwm.leanpoll}: the epoll reactor's dispatch without a log
context per event.
"""

from __future__ import annotations

import select
import socket
from typing import Any, Callable

from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.trial.unittest import TestCase

from spwm import leanpoll


class _Reader:
    """
    A readable descriptor that records its reads (and can fail them).
    """

    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock = sock
        self.fail = fail
        self.reads: list[bytes] = []
        self.lost: list[Any] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "reader"

    def doRead(self) -> None:
        self.reads.append(self.sock.recv(100))
        if self.fail:
            raise RuntimeError("doRead failed")

    def connectionLost(self, reason: Any) -> None:
        self.lost.append(reason)


class _Poller:
    def __init__(self, events: list[tuple[int, int]]) -> None:
        self.events = events
        self.asked: list[tuple[float, int]] = []

    def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
        self.asked.append((timeout, most))
        return self.events


class _FakeReactor:
    """
    What L{leanpoll.lean_poll} reads of a reactor, with a dispatch that
    records and can fail or remove a descriptor.
    """

    def __init__(self, events: list[tuple[int, int]], selectables: dict[int, Any]) -> None:
        self._poller = _Poller(events)
        self._selectables = selectables
        self.dispatched: list[tuple[Any, int, int]] = []
        self.raise_for: set[int] = set()
        self.remove_on: dict[int, int] = {}
        self._spwm_turn_ends: list[Any] = []
        #: what L{timeout} answers (the reactor's next timer, C{None}: none)
        self.due: float | None = None

    def timeout(self) -> float | None:
        return self.due

    def _doReadOrWrite(self, selectable: Any, fd: int, event: int) -> None:
        self.dispatched.append((selectable, fd, event))
        if fd in self.remove_on:
            del self._selectables[self.remove_on[fd]]
        if fd in self.raise_for:
            raise RuntimeError(f"dispatch of {fd} failed")


def epoll_reactor(test: TestCase) -> EPollReactor:
    """
    A reactor of its own for C{test}, closed after it (make the sockets it
    reads first: they close after it lets them go).
    """
    reactor = EPollReactor()

    def close() -> None:
        reactor.removeAll()
        reactor.waker.connectionLost(None)
        reactor._poller.close()

    test.addCleanup(close)
    return reactor


class LeanPollTests(TestCase):
    def reactor(self) -> EPollReactor:
        return epoll_reactor(self)

    def pair(self) -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        a.setblocking(False)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        return a, b

    def test_install(self) -> None:
        """
        An epoll reactor dispatches with L{leanpoll.lean_poll} once it is
        installed (once: a second install changes nothing); another
        reactor is left as it is.
        """
        reactor = self.reactor()
        self.assertTrue(leanpoll.install(reactor))
        poll = reactor.doIteration
        self.assertIs(reactor.doPoll, poll)
        self.assertTrue(leanpoll.install(reactor))
        self.assertIs(reactor.doIteration, poll)
        clock = Clock()
        self.assertFalse(leanpoll.install(clock))
        self.assertFalse(hasattr(clock, "doIteration"))

    def test_events_without_log_context(self) -> None:
        """
        A readable socket's C{doRead} is called by the installed reactor's
        iteration, and not through C{log.callWithLogger}; a reader whose
        C{doRead} fails is disconnected by the reactor (its
        C{connectionLost}), and the other reader of the same round is
        read.
        """
        # (the sockets first: they close after the reactor lets them go)
        (a, b), (c, d) = self.pair(), self.pair()
        reactor = self.reactor()
        leanpoll.install(reactor)
        wrapped: list[Any] = []
        self.patch(log, "callWithLogger", lambda *a, **k: wrapped.append(a))
        failing, reader = _Reader(a, fail=True), _Reader(c)
        reactor.addReader(failing)
        reactor.addReader(reader)
        b.send(b"one")
        d.send(b"two")
        for _ in range(10):
            if reader.reads and failing.lost:
                break
            reactor.doIteration(0.5)
        self.assertEqual((failing.reads, reader.reads, wrapped), ([b"one"], [b"two"], []))
        self.assertEqual(len(failing.lost), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNotIn(failing, reactor.getReaders())
        self.assertIn(reader, reactor.getReaders())

    def test_dispatch_fails(self) -> None:
        """
        An exception that escapes the dispatch of one event is logged and
        the round goes on with the next.
        """
        fake = _FakeReactor([(3, select.EPOLLIN), (4, select.EPOLLIN)], {3: "three", 4: "four"})
        fake.raise_for = {3}
        leanpoll.lean_poll(fake, 0.25)
        self.assertEqual(fake.dispatched, [("three", 3, select.EPOLLIN), ("four", 4, select.EPOLLIN)])
        self.assertEqual(fake._poller.asked, [(0.25, 2)])
        [failure] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(failure.value), "dispatch of 3 failed")

    def test_removed_in_the_round(self) -> None:
        """
        An event of a descriptor removed by an earlier event of the same
        round is skipped; no timeout is a wait without end (-1).
        """
        fake = _FakeReactor([(3, select.EPOLLIN), (4, select.EPOLLIN), (5, select.EPOLLOUT)], {3: "three", 4: "four", 5: "five"})
        fake.remove_on = {3: 4}
        leanpoll.lean_poll(fake, None)
        self.assertEqual(fake.dispatched, [("three", 3, select.EPOLLIN), ("five", 5, select.EPOLLOUT)])
        self.assertEqual(fake._poller.asked, [(-1, 3)])

    def test_interrupted(self) -> None:
        """
        A poll interrupted by a signal is an iteration without events;
        another error of the poll is raised.
        """
        fake = _FakeReactor([], {})

        def interrupted(timeout: float, most: int) -> list[tuple[int, int]]:
            raise InterruptedError(4, "interrupted")

        fake._poller.poll = interrupted  # type: ignore[method-assign]
        leanpoll.lean_poll(fake, 1.0)
        self.assertEqual(fake.dispatched, [])

        def broken(timeout: float, most: int) -> list[tuple[int, int]]:
            raise OSError(9, "bad descriptor")

        fake._poller.poll = broken  # type: ignore[method-assign]
        self.assertRaises(OSError, leanpoll.lean_poll, fake, 1.0)


class TurnEndTests(TestCase):
    """
    L{leanpoll.turn_end}: a function called once at the end of the
    reactor's turn.
    """

    def test_after_the_events(self) -> None:
        """
        A function given while an event is dispatched is called once,
        after every event of that poll round; the next round, without
        one given, calls none.
        """
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        for s in (a, b, c, d):
            self.addCleanup(s.close)
        reactor = epoll_reactor(self)
        leanpoll.install(reactor)
        end = leanpoll.turn_end(reactor)
        assert end is not None
        give: Callable[[Callable[[], None]], None] = end
        order: list[str] = []

        class Reader(_Reader):
            def doRead(self) -> None:
                super().doRead()
                order.append("read")
                give(lambda: order.append("end"))

        reactor.addReader(Reader(a))
        reactor.addReader(Reader(c))
        b.send(b"x")
        d.send(b"y")
        for _ in range(10):
            if order.count("read") == 2:
                break
            reactor.doIteration(0.5)
        self.assertEqual(order, ["read", "read", "end", "end"])
        reactor.doIteration(0)
        self.assertEqual(len(order), 4)

    def test_before_the_wait(self) -> None:
        """
        A function given while the timers ran (before the poll) is called
        before the reactor waits, and the wait is no longer than the
        reactor's next timer then (one the function scheduled).
        """
        fake = _FakeReactor([], {})
        called: list[str] = []

        def end() -> None:
            called.append("end")
            fake.due = 0.0

        fake._spwm_turn_ends.append(end)
        leanpoll.lean_poll(fake, 5.0)
        self.assertEqual((called, fake._poller.asked), (["end"], [(0.0, 0)]))
        fake.due = 2.0
        fake._spwm_turn_ends.append(lambda: called.append("again"))
        leanpoll.lean_poll(fake, None)
        self.assertEqual((called, fake._poller.asked[-1]), (["end", "again"], (2.0, 0)))

    def test_failing_end(self) -> None:
        """
        A function that raises is logged; the others are called, and one
        given by an end is called in the same turn.
        """
        fake = _FakeReactor([(3, select.EPOLLIN)], {3: "three"})
        called: list[str] = []

        def failing() -> None:
            raise RuntimeError("end failed")

        def gives() -> None:
            called.append("gives")
            fake._spwm_turn_ends.append(lambda: called.append("given"))

        fake._spwm_turn_ends.append(failing)
        fake._spwm_turn_ends.append(gives)
        fake.raise_for = set()
        leanpoll.lean_poll(fake, 0)
        self.assertEqual(called, ["gives", "given"])
        self.assertEqual(fake._spwm_turn_ends, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_other_reactors(self) -> None:
        """
        A reactor that does not dispatch with L{leanpoll.lean_poll} (a
        test's clock, one not installed) has no turn end.
        """
        self.assertIsNone(leanpoll.turn_end(Clock()))
        reactor = epoll_reactor(self)
        self.assertIsNone(leanpoll.turn_end(reactor))
        leanpoll.install(reactor)
        self.assertIsNotNone(leanpoll.turn_end(reactor))


class _Protocol(Protocol):
    """
    A protocol that records how its connection ended.
    """

    def __init__(self) -> None:
        self.lost: list[Failure] = []

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


class _Writer:
    """
    A writable descriptor that is not a TCP connection.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writes = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "writer"

    def doWrite(self) -> None:
        self.writes += 1

    def connectionLost(self, reason: Any) -> None:
        pass


class WritesTests(TestCase):
    """
    A connected TCP connection's writes go out at the end of the turn
    they were made in (L{leanpoll._Writes}); what the socket does not
    take, and every other writer, waits for epoll as before.
    """

    def setUp(self) -> None:
        # (the sockets first: they close after the reactor lets them go)
        self.pairs = []
        for _ in range(2):
            a, b = socket.socketpair()
            b.setblocking(False)
            self.addCleanup(a.close)
            self.addCleanup(b.close)
            self.pairs.append((a, b))
        self.reactor = epoll_reactor(self)
        leanpoll.install(self.reactor)

    def connection(self, index: int = 0) -> tuple[tcp.Connection, socket.socket, _Protocol]:
        """
        A connected TCP connection on one of the socket pairs, and the
        other end.
        """
        a, b = self.pairs[index]
        protocol = _Protocol()
        connection = tcp.Connection(a, protocol, self.reactor)
        connection.connected = 1
        protocol.makeConnection(connection)
        return connection, b, protocol

    def test_sent_at_the_turn_end(self) -> None:
        """
        The writes of one turn are not sent as they are made, nor
        watched for by epoll; at the turn's end they are sent together,
        in one C{send}, and the connection is left unwatched.
        """
        connection, peer, protocol = self.connection()
        sends: list[bytes] = []
        send = connection.writeSomeData

        def counted(data: bytes) -> Any:
            sends.append(bytes(data))
            return send(data)

        connection.writeSomeData = counted  # type: ignore[method-assign]
        connection.write(b"INVITE ")
        connection.write(b"sip:bob")
        self.assertRaises(BlockingIOError, peer.recv, 100)
        self.assertNotIn(connection.fileno(), self.reactor._writes)
        self.assertEqual(self.reactor.getWriters(), [connection])
        self.reactor.doIteration(0)
        self.assertEqual(sends, [b"INVITE sip:bob"])
        self.assertEqual(peer.recv(100), b"INVITE sip:bob")
        self.assertEqual((self.reactor._writes, self.reactor._selectables, self.reactor.getWriters()), (set(), {self.reactor.waker.fileno(): self.reactor.waker}, []))
        self.assertEqual(protocol.lost, [])

    def test_rest_waits_for_room(self) -> None:
        """
        What the socket does not take at the turn's end is watched for by
        epoll and sent as the socket has room, all of it in order.
        """
        connection, peer, protocol = self.connection()
        data = bytes(range(256)) * 8192
        connection.write(data)
        self.reactor.doIteration(0)
        self.assertIn(connection.fileno(), self.reactor._writes)
        got = b""
        for _ in range(2000):
            try:
                got += peer.recv(1 << 16)
            except BlockingIOError:
                pass
            if len(got) == len(data):
                break
            self.reactor.doIteration(0.01)
        self.assertEqual(got, data)
        self.reactor.doIteration(0)
        self.assertNotIn(connection.fileno(), self.reactor._writes)

    def test_lose_connection(self) -> None:
        """
        A connection written to and then closed (C{loseConnection}) sends
        its data at the turn's end and ends there, once.
        """
        connection, peer, protocol = self.connection()
        connection.write(b"BYE")
        connection.loseConnection()
        self.reactor.doIteration(0)
        self.assertEqual(peer.recv(100), b"BYE")
        self.assertEqual(peer.recv(100), b"")
        self.assertEqual(len(protocol.lost), 1)
        protocol.lost[0].trap(ConnectionDone)
        self.reactor.doIteration(0)
        self.assertEqual((len(protocol.lost), self.reactor.getWriters()), (1, []))

    def test_aborted_before_the_end(self) -> None:
        """
        A connection aborted in the turn it was written to sends nothing
        and ends once.
        """
        connection, peer, protocol = self.connection()
        connection.write(b"lost")
        connection.abortConnection()
        for _ in range(3):
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0)
        self.assertEqual(peer.recv(100), b"")
        self.assertEqual(len(protocol.lost), 1)
        self.assertEqual(self.reactor.getWriters(), [])

    def test_other_writers(self) -> None:
        """
        A writer that is not a connected TCP connection (here a bare
        descriptor, and a connection whose C{doWrite} is its own, as a
        connecting client's) is watched for by epoll at once.
        """
        a, b = self.pairs[0]
        writer = _Writer(a)
        self.reactor.addWriter(writer)
        self.assertIn(a.fileno(), self.reactor._writes)
        self.reactor.doIteration(0)
        self.assertEqual(writer.writes, 1)
        self.reactor.removeWriter(writer)
        self.assertNotIn(a.fileno(), self.reactor._writes)
        connection, peer, protocol = self.connection(1)
        connection.doWrite = lambda: None  # type: ignore[method-assign]
        self.reactor.addWriter(connection)
        self.assertIn(connection.fileno(), self.reactor._writes)
        self.reactor.removeWriter(connection)

    def test_producer_once_per_turn(self) -> None:
        """
        A producer that writes each time it is resumed is resumed once by
        the turn's end; the write it makes then is watched for by epoll,
        not sent in the same turn: a turn sends once when epoll says so
        and once at its end.
        """
        connection, peer, protocol = self.connection()
        resumed: list[int] = []

        @implementer(IPullProducer)
        class Producer:
            def resumeProducing(self) -> None:
                resumed.append(1)
                connection.write(b"x" * 10)

            def stopProducing(self) -> None:
                pass

        connection.registerProducer(Producer(), False)
        self.assertEqual(len(resumed), 1)
        leanpoll._end_turn(self.reactor._spwm_turn_ends)
        self.assertEqual(len(resumed), 2)
        self.assertEqual(peer.recv(100), b"x" * 10)
        self.assertIn(connection.fileno(), self.reactor._writes)
        self.reactor.doIteration(0)
        self.assertEqual(len(resumed), 4)
        self.assertEqual(peer.recv(100), b"x" * 20)
        connection.unregisterProducer()

    def test_remove_all(self) -> None:
        """
        A reactor that stops (C{removeAll}) counts a connection whose
        write waits among the descriptors it lets go, and forgets it.
        """
        connection, peer, protocol = self.connection()
        connection.stopReading()
        connection.write(b"late")
        self.assertIn(connection, self.reactor.removeAll())
        self.assertEqual(self.reactor.getWriters(), [])
        connection.connectionLost(Failure(ConnectionDone()))
        self.reactor.doIteration(0)
        self.assertEqual(len(protocol.lost), 1)
