# -*- test-case-name: tests.test_session_quicpath -*-
"""
C{--udp-path auto} (issue 13): the agent's session starts on TLS/TCP as
always; when the contact point's welcome says it listens for QUIC
(C{"quic_port"}), L{QuicProber} opens a tunnel over QUIC to it in the
background, the connection proves it belongs to the session (the
C{attach} exchange of L{spwm.session.carrier.PathSessions}, as a second
TCP connection does) and becomes a path of kind QUIC of the session's
L{spwm.session.carrier.PathFront}.  The scheduler
(L{spwm.session.paths.PathScheduler}) then moves the media to it once it
has held up for its hold, and back to TCP when it stalls.

SIP, control and channel open/close stay on the TCP carrier: it is ordered
and reliable, it is up already, and the QUIC path may vanish with a NAT
binding at any time (the carrier moves to QUIC only if every TCP path
fails first).

A QUIC path that is lost (the front closes it when the scheduler finds it
dead; a NAT binding gone, UDP blocked) or a probe that fails is tried again
after a delay that starts at C{retry} and doubles up to C{retry_cap}; a
path that stayed attached for C{retry_cap} or longer before it was lost
starts the delays again from C{retry}.  So a network that drops UDP costs
one probe a minute, and a path that keeps breaking soon after it is made
is not made again and again.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["QuicProber", "Keepers", "quic_port_of", "REPEAT_LINE"]

#: a probe that fails as the last logged one did is logged again only after
#: this long (s), with the count of those not logged
REPEAT_LINE = 600.0


def quic_port_of(hello: dict[str, Any]) -> int | None:
    """
    The UDP port of the contact point's QUIC listener its welcome names
    (C{"quic_port"}), or C{None}.
    """
    port = hello.get("quic_port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        return port
    return None


class QuicProber:
    """
    Agent: keeps one QUIC path attached to the live session when the
    contact point offers QUIC (see the module's docstring).  Told of the
    session's life by L{spwm.session.carrier.PathSessions} as a
    L{spwm.session.carrier.PathKeeper} is (through L{Keepers}).

    @ivar port: the contact point's QUIC port, from the welcome of the
        session's first connection (C{None}: not offered).
    @ivar probes: QUIC connections attempted.
    @ivar probe_failures: attempts that failed before the attachment.
    @ivar attachments: QUIC paths attached.
    @ivar losses: attached QUIC paths lost.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        front: Callable[[], Any],
        connect: Callable[[int], Deferred[Any]],
        *,
        description: str = "the contact point",
        first_delay: float = 0.0,
        retry: float = 5.0,
        retry_cap: float = 60.0,
    ) -> None:
        """
        @param front: the live session's front (or C{None}).
        @param connect: C{connect(port)} opens a tunnel over QUIC to the
            contact point's UDP C{port} whose hello attaches it to the
            session; fires with its L{spwm.tunnel.protocol.TunnelProtocol}
            once its tunnel handshake is done, or fails with the reason.
        @param description: the contact point's host, for the log.
        @param first_delay: from the session's start to the first probe.
        """
        self.clock = clock
        self._front = front
        self._connect = connect
        self.description = description
        self.first_delay = first_delay
        self.retry = retry
        self.retry_cap = max(retry, retry_cap)
        self.port: int | None = None
        self.probes = 0
        self.probe_failures = 0
        self.attachments = 0
        self.losses = 0
        self._failures = 0
        self._up = False
        self._path: Any = None
        self._attached_at: float | None = None
        self._connecting = False
        self._timer: IDelayedCall | None = None
        #: the reason of the last failure logged, when, and the failures
        #: like it not logged since
        self._said: str | None = None
        self._said_at = 0.0
        self._unsaid = 0

    # -- what PathSessions tells it (Keepers) ---------------------------------

    def session_up(self) -> None:
        """
        The session is up: probe QUIC if its welcome offers it.
        """
        front = self._front()
        self.port = quic_port_of(front.peer_hello) if front is not None else None
        self._up = True
        self._failures = 0
        self._said = None
        if self.port is None:
            return
        self._later(self.first_delay)

    def session_down(self) -> None:
        """
        The session's last path is gone: probe nothing until it is up again.
        """
        self._up = False
        self._cancel()

    def attached(self, path: Any) -> None:
        if path is not None and path is self._path:
            self._attached_at = self.clock.seconds()
            self.attachments += 1
            # a failure after this is news again
            self._said = None

    def lost(self, path: Any) -> None:
        # our own path's end is followed through its when_closed()
        pass

    def stop(self) -> Deferred[Any] | None:
        """
        The agent stops: close the QUIC path.

        @return: fires once it is closed (its UDP socket with it), or
            C{None} when there is none.
        """
        self.session_down()
        path, self._path = self._path, None
        if path is None:
            return None
        closed: Deferred[Any] = path.when_closed()
        path.close_for_good("agent stopping")
        return closed.addCallback(lambda _: deferLater(self.clock, 0, lambda: None))

    # -- probing --------------------------------------------------------------

    @property
    def next_delay(self) -> float:
        """
        The delay before the next attempt after the failures so far.
        """
        if self._failures <= 0:
            return self.retry
        return float(min(self.retry_cap, self.retry * 2 ** min(self._failures - 1, 16)))

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _later(self, delay: float) -> None:
        self._cancel()
        self._timer = self.clock.callLater(delay, self._probe)

    def _probe(self) -> None:
        self._timer = None
        if not self._up or self.port is None or self._path is not None or self._connecting:
            return
        front = self._front()
        if front is None or not front.is_open:
            return
        self._connecting = True
        self.probes += 1
        d = self._connect(self.port)
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: Any) -> None:
        self._connecting = False
        if not self._up:
            protocol.close(0, "the session is gone")
            return
        self._path = protocol
        self._attached_at = None
        protocol.when_closed().addCallback(self._closed)

    def _failed(self, reason: Failure) -> None:
        self._connecting = False
        self.probe_failures += 1
        self._failures += 1
        if not self._up:
            return
        delay = self.next_delay
        why = reason.getErrorMessage()
        now = self.clock.seconds()
        if why == self._said and now - self._said_at < REPEAT_LINE:
            # UDP blocked for good: not the same line at every probe
            self._unsaid += 1
        else:
            unsaid = (
                f" ({self._unsaid} more like it in {(now - self._said_at) / 60:.0f} min not logged)"
                if why == self._said and self._unsaid
                else ""
            )
            self.log.info(
                "no QUIC path to {contact} (UDP port {port}): {reason}; media stays on TCP, next try in {delay:g} s{unsaid}",
                contact=self.description,
                port=self.port,
                reason=why,
                delay=delay,
                unsaid=unsaid,
            )
            self._said, self._said_at, self._unsaid = why, now, 0
        self._later(delay)

    def _closed(self, protocol: Any) -> None:
        if protocol is not self._path:
            return
        self._path = None
        attached_at, self._attached_at = self._attached_at, None
        now = self.clock.seconds()
        if attached_at is None:
            # never attached (refused, or the session went meanwhile)
            self.probe_failures += 1
            self._failures += 1
        else:
            self.losses += 1
            if now - attached_at >= self.retry_cap:
                self._failures = 1
            else:
                self._failures += 1
        if not self._up:
            return
        delay = self.next_delay
        self.log.info(
            "the QUIC path to {contact} (UDP port {port}) is gone; media is on TCP, next try in {delay:g} s",
            contact=self.description,
            port=self.port,
            delay=delay,
        )
        self._later(delay)

    def status(self) -> dict[str, Any]:
        """
        For the status page.
        """
        return {
            "quic_port": self.port,
            "quic_path": self._attached_at is not None,
            "probes": self.probes,
            "probe_failures": self.probe_failures,
            "attachments": self.attachments,
            "losses": self.losses,
            "next_probe_in": (
                round(max(0.0, self._timer.getTime() - self.clock.seconds()), 3)
                if self._timer is not None and self._timer.active()
                else None
            ),
        }


class Keepers:
    """
    Several of what L{spwm.session.carrier.PathSessions} tells of the
    session's life (C{session_up}, C{session_down}, C{attached}, C{lost},
    C{stop}), told to each: a L{spwm.session.carrier.PathKeeper} and a
    L{QuicProber}.
    """

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def session_up(self) -> None:
        for part in self.parts:
            part.session_up()

    def session_down(self) -> None:
        for part in self.parts:
            part.session_down()

    def race_resumption(self) -> None:
        for part in self.parts:
            race = getattr(part, "race_resumption", None)
            if race is not None:
                race()

    def attached(self, path: Any) -> None:
        for part in self.parts:
            part.attached(path)

    def lost(self, path: Any) -> None:
        for part in self.parts:
            part.lost(path)

    def stop(self) -> Deferred[Any] | None:
        """
        @return: fires once every part that returned a L{Deferred} has stopped.
        """
        waits = [d for d in (part.stop() for part in self.parts) if isinstance(d, Deferred)]
        return DeferredList(waits).addCallback(lambda _: None) if waits else None
