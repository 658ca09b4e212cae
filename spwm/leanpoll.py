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
"""

from __future__ import annotations

import errno
from typing import Any, Callable

from twisted.python import log

#: What L{lean_poll} reads of the reactor (Twisted's C{EPollReactor}).
_NEEDS = ("_poller", "_selectables", "_doReadOrWrite", "doPoll")


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
    reactor.doIteration = poll
    reactor.doPoll = poll
    reactor._spwm_lean_poll = True
    return True
