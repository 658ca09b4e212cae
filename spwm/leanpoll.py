# -*- test-case-name: tests.test_leanpoll -*-
"""
The epoll reactor's dispatch of ready descriptors, without a log context
per event.

Twisted's C{EPollReactor.doPoll} calls each ready descriptor's
C{doRead} or C{doWrite} through C{log.callWithLogger}: the descriptor's
C{logPrefix()} and a context pushed and popped
(C{twisted.python.context}), so that the legacy C{log.msg} lines written
meanwhile carry that prefix as their C{system}.  That is about eight
Python calls for every socket event, and a SIP call is about fifteen
events in each half: 3 % of each half's instructions per call (issue 15,
C{docs/performance.md}).  SPWM writes its lines through
C{twisted.logger}, by namespace, which that context does not reach.

L{install} gives one reactor L{lean_poll} in place of its C{doPoll}:
the same poll and the same dispatch (C{_doReadOrWrite}, which handles a
descriptor's failure itself), and the same last resort for an exception
that escapes it (C{log.err}, the loop goes on), without the context.
The C{twistd} plugins install it (L{spwm.tap.common.build_service}); a
program that embeds the protocols keeps its reactor as it is.

Such a reactor also says when its turn ends (L{turn_end}): a function
given to it is called once, after the events of the poll round it was
given in (or, given while the timers ran, before the reactor waits for
events).  The SIP runners end their slice of a turn so
(L{spwm.sip.transport}) instead of scheduling a call for the next turn
(C{callLater(0)}) in each turn that had a message: a timer made,
ordered in the reactor's heap and run, about 100 Python calls per SIP
call in each half (3 %).  Elsewhere (a reactor without it, a test's clock) L{turn_end}
gives C{None} and they schedule that call, as before.

Such a reactor also writes a TCP connection's data at the end of the
turn it was written in (L{_Writes}).  Twisted's own asks epoll to watch
the socket for room to write (C{epoll_ctl}), waits for the next poll
round to say there is, sends, and stops watching (C{epoll_ctl} again):
a SIP message into the tunnel cost two system calls and a poll round
more than its C{send}.  Here a connected TCP connection that starts
writing waits for the end of the turn; then it sends what it holds, once
(what several writes of the turn left, in one C{send}), and only what
the socket did not take waits for epoll as before.  Every other writer
(a connecting client, a pipe, a process) is watched as before.
"""

from __future__ import annotations

import errno
from select import EPOLLOUT
from typing import Any, Callable

from twisted.internet.tcp import Connection
from twisted.python import log

#: What L{lean_poll} and L{_Writes} read of the reactor (Twisted's C{EPollReactor}).
_NEEDS = ("_poller", "_selectables", "_doReadOrWrite", "doPoll", "_writes", "addWriter", "removeWriter", "removeAll", "getWriters")


def _end_turn(ends: list[Callable[[], None]]) -> None:
    """
    Call, once each, the functions given to L{turn_end} (those given
    meanwhile too).
    """
    while ends:
        now = ends[:]
        del ends[:]
        for end in now:
            try:
                end()
            except Exception:
                log.err()


def lean_poll(reactor: Any, timeout: float | None) -> None:
    """
    C{EPollReactor.doPoll} without the log context: wait for events (at
    most C{timeout} seconds, C{None} for ever) and hand each to its
    descriptor; the turn's end (L{turn_end}) after the timers and after
    the events.
    """
    ends = reactor._spwm_turn_ends
    if ends:
        # given while the timers ran: their turn ends before the wait,
        # which is no longer than the timers it may have scheduled allow
        _end_turn(ends)
        due = reactor.timeout()
        if due is not None and (timeout is None or due < timeout):
            timeout = due
    if timeout is None:
        timeout = -1
    try:
        # as many events as descriptors, as Twisted's own
        events = reactor._poller.poll(timeout, len(reactor._selectables))
    except OSError as e:
        if e.errno == errno.EINTR:
            return
        raise
    selectables = reactor._selectables
    dispatch = reactor._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            # removed by an earlier event of this round
            continue
        try:
            dispatch(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err()
    if ends:
        _end_turn(ends)


def turn_end(reactor: Any) -> Callable[[Callable[[], None]], None] | None:
    """
    The function that has C{reactor} call a function once at the end of
    its current turn (see the module), or C{None} when C{reactor} does not
    dispatch with L{lean_poll}.
    """
    ends = getattr(reactor, "_spwm_turn_ends", None)
    return None if ends is None else ends.append


class _Writes:
    """
    A reactor's writers, a connected TCP connection's write sent at the
    end of the turn it was made in (see the module).

    A connection that starts writing (C{addWriter}) waits in L{waiting}
    and the turn's end is asked for; one that stops (C{removeWriter}:
    its buffer is empty, or it was lost) leaves it.  At the turn's end
    (L{flush}) each writer that waits then is written once, as the
    reactor's dispatch writes it when epoll says the socket has room
    (C{_doReadOrWrite}: a failure or the end of a connection handled as
    there); whatever still waits after that (the socket took part of
    it, or it was written during the flush) is handed to the reactor's
    own C{addWriter}, to be written when the socket has room.  One
    C{doWrite} per writer and turn: a producer that writes each time it
    is resumed cannot hold the turn.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._add = reactor.addWriter
        self._remove = reactor.removeWriter
        self._remove_all = reactor.removeAll
        self._get_writers = reactor.getWriters
        self.ends: list[Callable[[], None]] = reactor._spwm_turn_ends
        #: connections whose write waits for the turn's end, in order
        self.waiting: dict[Any, None] = {}

    def add_writer(self, writer: Any) -> None:
        waiting = self.waiting
        if writer in waiting:
            return
        if (
            isinstance(writer, Connection)
            and writer.connected
            # (a connecting client's doWrite is its doConnect)
            and "doWrite" not in writer.__dict__
            and writer.fileno() not in self.reactor._writes
        ):
            if not waiting:
                self.ends.append(self.flush)
            waiting[writer] = None
        else:
            self._add(writer)

    def remove_writer(self, writer: Any) -> None:
        if writer in self.waiting:
            del self.waiting[writer]
        else:
            self._remove(writer)

    def flush(self) -> None:
        waiting = self.waiting
        dispatch = self.reactor._doReadOrWrite
        for writer in list(waiting):
            if writer not in waiting:
                continue
            try:
                dispatch(writer, writer.fileno(), EPOLLOUT)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err()
        self._hand_over()

    def _hand_over(self) -> None:
        """
        Have the reactor watch every writer that still waits.
        """
        waiting = self.waiting
        while waiting:
            writer = next(iter(waiting))
            del waiting[writer]
            if writer.fileno() != -1:
                self._add(writer)

    def remove_all(self) -> list[Any]:
        # (the reactor stops: what waits is lost with the rest)
        self._hand_over()
        return self._remove_all()

    def writers(self) -> list[Any]:
        return self._get_writers() + list(self.waiting)


def install(reactor: Any) -> bool:
    """
    Make C{reactor} dispatch with L{lean_poll}, if it is an epoll reactor
    as this module knows it; once per reactor.

    @return: whether it does now.
    """
    if getattr(reactor, "_spwm_lean_poll", False):
        return True
    if type(reactor).__name__ != "EPollReactor" or not all(hasattr(reactor, name) for name in _NEEDS):
        return False

    def poll(timeout: float | None) -> None:
        lean_poll(reactor, timeout)

    # (ReactorBase.mainLoop calls doIteration)
    reactor._spwm_turn_ends = []
    writes = _Writes(reactor)
    reactor.addWriter = writes.add_writer
    reactor.removeWriter = writes.remove_writer
    reactor.removeAll = writes.remove_all
    reactor.getWriters = writes.writers
    reactor.doIteration = poll
    reactor.doPoll = poll
    reactor._spwm_lean_poll = True
    return True
