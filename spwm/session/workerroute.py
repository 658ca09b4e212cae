# -*- test-case-name: tests.test_session_workerroute -*-
"""
Agent: the connections of a session go to the contact point's worker that
holds it.

A contact point with C{--workers N} is N processes behind one shared port
(C{SO_REUSEPORT}): the kernel gives each new connection to a worker by a
hash of its addresses and ports, so a resumption or a session's further
connection reaches the worker that holds the session only by chance.  Each
worker therefore also listens on its own port and says it in the welcome
(C{resume_port}); the agent makes every connection that resumes or joins
its session to that port (L{WorkerRoute}, L{SteeredEndpoint}).  A worker
that gets one for another worker's session anyway (an agent from before,
a NAT that maps ports, a session resumed through the shared port) answers
C{resume-failed} or C{attach-failed} with C{redirect}: that worker's port;
the agent follows it once (L{WorkerSteering}) and gives up as before when
the followed connection is refused again.  One that gets it on the shared
port hands it on to the right worker instead (L{spwm.handon}): an agent
that cannot reach the workers' ports (an HTTP proxy that allows 443 only)
resumes there through the shared port.

L{WorkerRoute} is pure: hellos and answers in, ports out.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spwm.session.carrier import PathKind, path_kind

__all__ = ["SteeredEndpoint", "WorkerRoute", "WorkerSteering", "port_of"]

#: how long (s) a worker's port that timed out is not tried again, even
#: when a welcome names it: behind a firewall that drops what is not 443,
#: each try would cost the whole connect timeout (10 s) of a resumption
AVOID_FOR = 3600.0


def port_of(value: object) -> int | None:
    """
    A TCP port in a welcome or an answer, or C{None} when C{value} is not one.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        return None
    return value


class WorkerRoute:
    """
    Which port of the contact point the agent's next connection goes to.

    @ivar resume_port: the own port of the worker that holds our session
        (its welcome's C{resume_port}, or a C{redirect}); C{None}: the
        contact point has one process, or it did not say (older), or that
        port could not be reached.
    @ivar redirects: redirects followed.
    @ivar fallbacks: connections to the worker's port that failed (the
        next one goes to the shared port).
    @ivar avoided: welcomes that named a worker's port this agent could
        not reach within its connect timeout lately (L{AVOID_FOR}): the
        session's connections went to the shared port instead.
    """

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.resume_port: int | None = None
        self.redirects = 0
        self.fallbacks = 0
        self.avoided = 0
        self._now = now
        # port -> until when it is not tried (timed out: dropped on the way)
        self._avoid: dict[int, float] = {}
        # a redirect was followed and the session is not back yet: the
        # next redirect is not followed (no loops)
        self._following = False

    def learn(self, welcome: dict[str, Any]) -> None:
        """
        A connection that starts or resumes our session is up: its
        welcome says where its worker is (or nothing: one process).
        """
        port = port_of(welcome.get("resume_port"))
        if port is not None and port in self._avoid:
            if self._now() < self._avoid[port]:
                self.avoided += 1
                port = None
            else:
                del self._avoid[port]
        self.resume_port = port

    def settled(self) -> None:
        """
        The session is resumed, or a connection attached to it, or a new
        one started: a later redirect may be followed again.
        """
        self._following = False

    def redirect(self, port: object) -> bool:
        """
        The contact point answers that another worker holds the session,
        on C{port}.

        @return: whether to follow (the next connection to the session
            goes to C{port}); C{False} when C{port} is no port or a
            redirect to another port was followed already without the
            session coming back.  Another answer naming the port followed
            already (a further connection's attach that crossed the
            resumption, both sent to the wrong worker) is followed too:
            the same worker, no ping-pong.
        """
        target = port_of(port)
        if target is None:
            return False
        if self._following:
            if target != self.resume_port:
                return False
            self.redirects += 1
            return True
        self._following = True
        self.resume_port = target
        self.redirects += 1
        return True

    def port_for(self, to_session: bool) -> int | None:
        """
        The port of the next connection: the worker's own for one that
        resumes or joins our session (C{to_session}), else C{None} (the
        configured one, the shared port).
        """
        return self.resume_port if to_session else None

    def unreachable(self, port: int, timed_out: bool = False) -> None:
        """
        A connection to C{port} failed (a firewall, a worker that is no
        more): the next one goes to the shared port, where a redirect
        can still name the worker.  One that timed out (a firewall that
        drops what it does not let through) is not tried again for
        L{AVOID_FOR}; a refused one (a worker restarting, a firewall that
        rejects: it cost a round trip) is tried at the next welcome.
        """
        if timed_out:
            self._avoid[port] = self._now() + AVOID_FOR
        if port == self.resume_port:
            self.resume_port = None
            self.fallbacks += 1

    def status(self) -> dict[str, Any]:
        return {
            "resume_port": self.resume_port,
            "redirects": self.redirects,
            "fallbacks": self.fallbacks,
            "avoided": self.avoided,
        }


@implementer(IStreamClientEndpoint)
class SteeredEndpoint:
    """
    The agent's tunnel endpoint, to the port L{WorkerRoute} names: the
    configured one (C{make(None)}) for a new session, the worker's own for
    a connection that resumes or joins the session.
    """

    def __init__(
        self,
        make: Callable[[int | None], IStreamClientEndpoint],
        route: WorkerRoute,
        to_session: Callable[[], bool],
    ) -> None:
        """
        @param make: the endpoint to a port of the contact point's host
            (C{None}: the configured port), with the same TLS checks.
        @param to_session: whether the next connection resumes or joins
            the session (its hello says C{resume} or C{attach}).
        """
        self._make = make
        self.route = route
        self._to_session = to_session
        self._endpoints: dict[int | None, IStreamClientEndpoint] = {}
        #: the port the latest attempt went to (C{None}: the configured
        #: one), for the lines that say why it failed
        self.last_port: int | None = None

    def endpoint(self, port: int | None) -> IStreamClientEndpoint:
        found = self._endpoints.get(port)
        if found is None:
            found = self._endpoints[port] = self._make(port)
        return found

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        port = self.route.port_for(self._to_session())
        self.last_port = port
        d = self.endpoint(port).connect(protocolFactory)
        if port is not None:

            def failed(reason: Failure) -> Failure:
                timed_out = reason.check(error.TimeoutError, TimeoutError) is not None
                self.route.unreachable(port, timed_out=timed_out)
                return reason

            d.addErrback(failed)
        return d


class WorkerSteering:
    """
    Agent: the tunnels' observer in front of the session logic (or the
    paths layer): it learns the worker's port from the welcome of each
    connection that starts or resumes the session, and follows a
    C{redirect} in C{resume-failed} (the tunnel service reconnects at
    once, to that port) or C{attach-failed} (the path keeper opens the
    connection again, to that port) once; everything else goes on to
    C{observer} unchanged.

    @ivar followed: redirects followed.
    """

    log = Logger()

    def __init__(
        self,
        observer: Any,
        route: WorkerRoute,
        *,
        reconnect: Callable[[], None],
        reattach: Callable[[Any], None] | None = None,
    ) -> None:
        """
        @param reconnect: the tunnel service makes its next attempt at once.
        @param reattach: the path keeper replaces this connection at once,
            without counting a failure.
        """
        self.observer = observer
        self.route = route
        self._reconnect = reconnect
        self._reattach = reattach
        self.followed = 0

    def tunnel_established(self, tunnel: Any) -> None:
        local = getattr(tunnel, "local_hello", None) or {}
        if "attach" not in local:
            self.route.learn(getattr(tunnel, "peer_hello", None) or {})
            if "resume" not in local:
                self.route.settled()
        self.observer.tunnel_established(tunnel)

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        self.observer.tunnel_lost(tunnel, reason)

    def control_received(self, tunnel: Any, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op in ("resumed", "attached"):
            self.route.settled()
        elif (
            op in ("resume-failed", "attach-failed")
            and "redirect" in message
            and (op == "resume-failed" or self._reattach is not None)
            # a QUIC path is sent to its worker's QUIC port by the welcome
            and path_kind(tunnel) is not PathKind.QUIC
            and self.route.redirect(message.get("redirect"))
        ):
            self.followed += 1
            self.log.info(
                "{what} is held by another worker of the contact point: reconnecting to its port {port}",
                what="our session" if op == "resume-failed" else "our session (another connection)",
                port=self.route.resume_port,
            )
            if op == "resume-failed":
                self._reconnect()
            else:
                assert self._reattach is not None
                self._reattach(tunnel)
            tunnel.close(0, "session held by another worker")
            return
        self.observer.control_received(tunnel, message)
