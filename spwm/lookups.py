# -*- test-case-name: tests.test_lookups -*-
"""
Name lookups that a stop does not wait for.

Twisted looks names up (C{getaddrinfo}, which blocks) in the reactor's
thread pool, and the reactor joins that pool's threads when it stops.  A
lookup that waits for a name server that does not answer (a LAN whose
DNS is down, a firewall that drops it) then holds the stop for the
resolver's whole timeout: 5 s times 2 tries for each name server of
C{/etc/resolv.conf}, up to 30 s, while the process has already said it
is stopping.  An agent started on a terminal does not end on Ctrl-C; a
service manager waits, then kills.

Both halves look their names up (the agent's C{--contact}, the contact
point's C{--sip-proxy}) in a pool of daemon threads of their own
instead, which nothing joins: a lookup under way when the process stops
is abandoned with it.  L{install} makes the reactor's name resolver use
it.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable

from twisted.python.threadpool import ThreadPool

__all__ = ["MAX_THREADS", "install", "lookup_pool"]

#: Lookups at once; more wait for a thread.
MAX_THREADS = 4


class _DaemonThread(threading.Thread):
    """
    A thread that does not keep the process alive.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class _DaemonThreadPool(ThreadPool):
    """
    A thread pool of L{_DaemonThread}s.
    """

    threadFactory = _DaemonThread


_pool: ThreadPool | None = None


def lookup_pool() -> ThreadPool:
    """
    The process's pool of lookup threads (started at the first call).
    """
    global _pool
    if _pool is None:
        pool = _DaemonThreadPool(0, MAX_THREADS, name="spwm-lookups")
        pool.start()
        _pool = pool
    return _pool


def install(reactor: Any, getaddrinfo: Callable[..., Any] = socket.getaddrinfo) -> Any:
    """
    Make C{reactor}'s name resolver look names up in L{lookup_pool}.

    @param getaddrinfo: C{socket.getaddrinfo}, or a test's.
    @return: the resolver it had before.
    """
    # The resolver Twisted installs by default, given another pool.
    from twisted.internet._resolver import GAIResolver

    return reactor.installNameResolver(GAIResolver(reactor, lookup_pool, getaddrinfo))
