# -*- test-case-name: tests.test_sip_transport -*-
"""
Twisted glue for the SIP proxy cores.

L{SipUdpProtocol} (a C{DatagramProtocol}) and L{SipStreamProtocol} /
L{SipStreamFactory} (TCP, TLS when wrapped) turn what arrives into calls on
a I{runner}, which feeds the core and carries out the core's actions:

  - L{AgentSipRunner} wraps an L{AgentSipProxy}: datagrams and stream
    messages from LAN applications become C{from_app} calls on their
    L{Flow}; C{ToApp} is written back on the same socket or connection;
    C{ToTunnel} goes to the tunnel.
  - L{ContactSipRunner} wraps a L{ContactSipProxy}: datagrams and stream
    messages from the operator network become C{from_network} calls;
    C{ToNetwork} goes out of the operator-side UDP socket, or over TCP
    through a small pool of connections (incoming ones are reused for
    responses, outgoing ones are opened on demand to the operator proxy).

Runners also expose the tunnel application's SIP part (C{sip_received},
C{tunnel_established}, C{tunnel_lost}) and keep one timer for the core's
C{next_deadline}.  Peer errors are caught at these entry points only and
logged with named fields; they never escape into the reactor.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from typing import Any, Callable, ClassVar, Iterable, Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport, IUDPTransport
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from spwm import leanpoll
from spwm._mypyc import instance_logger, mypyc_attr
from spwm.addr import RouteSources, hostport, is_wildcard
from spwm.addr import peer as peer_text
from spwm.logthrottle import Every, ThrottledLog, without_none_suppressed
from spwm.session.paths import not_taken
from spwm.sip.errors import SipParseError
from spwm.sip.flows import Flow
from spwm.sip.framing import KeepAlive, SipStreamFramer
from spwm.sip.actions import (
    BindingChanged,
    Dropped,
    OperatorProxy,
    ProxyChanged,
    RouteRefused,
    ToApp,
    ToNetwork,
    ToTunnel,
)
from spwm.sip.nexthop import proxy_text
from spwm.sip.stun import AnswerBudget, Ignored, binding_answer, is_stun


class SipTrace:
    """
    C{--sip-trace}: one info line per SIP message a runner receives or
    sends, with its direction and peer; the start line and headers, the
    body only with C{bodies} (else its length).  Messages are logged as
    they are on the wire, before the core sees them or after it made them.

    C{--hep}: the same messages, as they are, to a HEP collector
    (L{spwm.hep.HepSender}), with the addresses the runner knows (a
    message through the tunnel: the addresses of the tunnel connection
    that carries it, L{tunnel_addresses}).

    An embedding program's C{observer} is told of the same messages:
    C{observer(direction, peer, data)} (C{peer} starts with C{"tunnel"} for
    a message into or out of the tunnel, with C{"app"} or C{"network"}
    otherwise).

    @ivar lines: log the lines (C{--sip-trace}).
    @ivar hep: the HEP sender, or C{None}.
    @ivar observer: the embedding program's callable, or C{None}.
    """

    log = Logger()

    def __init__(
        self,
        bodies: bool = False,
        lines: bool = True,
        hep: Any = None,
        observer: Callable[[str, str, bytes], None] | None = None,
    ) -> None:
        self.log = instance_logger(self)  # compiled, the class attribute is not bound
        self.bodies = bodies
        self.lines = lines
        self.hep = hep
        self.observer = observer

    def message(
        self,
        direction: str,
        peer: str,
        data: bytes,
        addr: tuple[str, int] | None = None,
        local: tuple[str, int] | None = None,
        transport: str = "udp",
    ) -> None:
        """
        Log one message (and copy it to the HEP collector).

        @param direction: C{"received from"} or C{"sent to"}.
        @param peer: who it came from or goes to (see the runners).
        @param addr: the peer's address, when it has one (not the tunnel).
        @param local: our address on that flow, when known.
        @param transport: C{"udp"}, C{"tcp"} or C{"tls"}.
        """
        if self.hep is not None:
            if direction == "sent to":
                self.hep.sip(local, addr, data, transport)
            else:
                self.hep.sip(addr, local, data, transport)
        if self.observer is not None:
            self.observer(direction, peer, data)
        if not self.lines:
            return
        head, sep, body = data.partition(b"\r\n\r\n")
        text = head.decode("utf-8", "replace").replace("\r\n", "\n")
        if body and self.bodies:
            text += "\n\n" + body.decode("utf-8", "replace").replace("\r\n", "\n")
        elif body:
            text += f"\n\n[body: {len(body)} bytes]"
        self.log.info("SIP {direction} {peer}:\n{sip}", direction=direction, peer=peer, sip=text)


def tunnel_addresses(tunnel: Any) -> tuple[tuple[str, int] | None, tuple[str, int] | None, str]:
    """
    Our and the peer's address of the connection that carries a tunnel's
    SIP now (through the agent's handle, a session's carrier path, or the
    connection itself), and its
    transport for HEP (C{"tcp"}, or C{"udp"} for QUIC): read from its
    transport when a message is traced, C{None} where unknown.
    """
    connection = tunnel
    for _ in range(3):
        # the agent's stable handle -> its session's front -> the carrier
        inner = getattr(connection, "current", None) or getattr(connection, "carrier", None)
        if inner is None:
            break
        connection = inner
    transport = getattr(connection, "transport", None)
    found: list[tuple[str, int] | None] = []
    kind = "tcp"
    for name in ("getHost", "getPeer"):
        try:
            where = getattr(transport, name)()
        except Exception:
            found.append(None)
            continue
        host, port = getattr(where, "host", None), getattr(where, "port", None)
        found.append((host, port) if isinstance(host, str) and isinstance(port, int) else None)
        if getattr(where, "type", "TCP") == "UDP":
            kind = "udp"
    return found[0], found[1], kind


def _send_sip(tunnel_key: Any, flow_id: int, data: bytes) -> Any:
    return tunnel_key.send_sip(flow_id, data)


def _tunnel_congested(tunnel_key: Any) -> bool:
    """
    Whether a tunnel's signalling backlog is over its high-water mark
    (L{spwm.tunnel.protocol.TunnelProtocol.congested}; a tunnel without
    one never is): what the contact point's core asks before it routes a
    new request into it.
    """
    return bool(getattr(tunnel_key, "congested", False))


#: The most hosts a SIP UDP socket remembers as checked (emptied when full).
MAX_CHECKED_HOSTS = 1024


class RunnerFace(TypingProtocol):
    """
    What the SIP sockets and connections below use of their runner (a
    L{_Runner}, or what stands for one in a test: compiled code checks a
    declared class at run time, not an interface).
    """

    def udp_started(self, proto: SipUdpProtocol) -> None: ...

    def udp_stopped(self, proto: SipUdpProtocol) -> None: ...

    def datagram_received(self, proto: SipUdpProtocol, data: bytes, addr: tuple[str, int]) -> None: ...

    def stream_connected(self, proto: SipStreamProtocol) -> int: ...

    def stream_lost(self, proto: SipStreamProtocol) -> None: ...

    def stream_message(self, proto: SipStreamProtocol, data: bytes) -> None: ...


@mypyc_attr(native_class=False)
class SipUdpProtocol(DatagramProtocol):
    """
    One SIP UDP socket; hands each datagram to its runner.

    @ivar local: the socket's address C{(host, port)}; taken from the
        transport when not given.
    """

    transport: IUDPTransport  # set by the reactor before any event

    log = Logger()

    def __init__(self, runner: RunnerFace, local: tuple[str, int] | None = None) -> None:
        self.runner = runner
        self.local = local
        # the socket's own sendto, and the hosts Twisted's write has let
        # through on this socket (IP literals of its family)
        self._sendto: Callable[[bytes, tuple[str, int]], Any] | None = None
        self._good: set[str] = set()

    def startProtocol(self) -> None:
        if self.local is None:
            host = self.transport.getHost()
            self.local = (host.host, host.port)
        handle = getattr(self.transport, "getHandle", None)
        sock = handle() if handle else None
        if isinstance(sock, socket.socket):
            self._sendto = sock.sendto
        self.runner.udp_started(self)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        """
        Send one datagram to C{addr}. Twisted's C{Port.write} checks that
        the host is an IP address of the socket's family for every
        datagram (a host name would make C{sendto} resolve it, blocking);
        a host it let through once is sent to with the socket's own
        C{sendto}, as the media relay does. A C{sendto} that fails is
        left to C{write}, whose errors are the caller's as before.

        @raise twisted.internet.error.InvalidAddressError: C{addr} is not
            an IP address of the socket's family (from C{write}).
        """
        host = addr[0]
        sendto = self._sendto
        if sendto is not None and host in self._good:
            try:
                sendto(data, addr)
                return
            except OSError:
                pass
        self.transport.write(data, addr)
        if sendto is not None:
            if len(self._good) >= MAX_CHECKED_HOSTS:
                self._good.clear()
            self._good.add(host)

    def stopProtocol(self) -> None:
        self.runner.udp_stopped(self)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            self.runner.datagram_received(self, data, (addr[0], addr[1]))
        except Exception:
            self.log.failure("SIP datagram from {peer} failed", peer=peer_text(addr))


@mypyc_attr(native_class=False)
class SipStreamProtocol(Protocol):
    """
    One SIP stream connection (TCP, or TLS under a TLS wrapper): frames the
    byte stream, answers RFC 5626 keepalive pings and hands each message to
    its runner.

    @ivar transport_name: C{"tcp"} or C{"tls"}.
    @ivar conn_id: the runner's number for this connection.
    """

    transport: ITransport  # set by the reactor before any event

    log = Logger()

    def __init__(
        self, runner: RunnerFace, transport_name: str = "tcp", max_size: int = 65535
    ) -> None:
        self.runner = runner
        self.transport_name = transport_name
        self.framer = SipStreamFramer(max_size)
        self.conn_id: int | None = None
        self.local: tuple[str, int] = ("", 0)
        self.peer: tuple[str, int] = ("", 0)
        self.outgoing = False
        #: the listener's factory that bounds this connection (set by
        #: L{SipStreamFactory.buildProtocol}); C{None}: not bounded
        self.listener: SipStreamFactory | None = None
        #: closes the connection unless a first SIP message comes in time
        self._first_timer: IDelayedCall | None = None
        self._refused = False

    def connectionMade(self) -> None:
        h, p = self.transport.getHost(), self.transport.getPeer()
        self.local = (getattr(h, "host", ""), getattr(h, "port", 0))
        self.peer = (getattr(p, "host", ""), getattr(p, "port", 0))
        listener = self.listener
        if listener is not None:
            if not listener.admit(self):
                # over the listener's limit: closed before the runner knows it
                self._refused = True
                _abort(self.transport)
                return
            self._first_timer = listener.first_message_timer(self)
        self.conn_id = self.runner.stream_connected(self)

    def first_message_overdue(self) -> None:
        """
        No complete SIP message came within the listener's bound: close
        the connection (without waiting for a peer that may not read).
        """
        self._first_timer = None
        _abort(self.transport)

    def dataReceived(self, data: bytes) -> None:
        try:
            items = self.framer.feed(data)
        except SipParseError as e:
            self.log.warn(
                "SIP stream from {peer} unusable: {code} {reason}",
                peer=self._peer_text(),
                code=e.status,
                reason=e.reason,
            )
            self.transport.loseConnection()
            return
        try:
            for item in items:
                if isinstance(item, KeepAlive):
                    self.transport.write(b"\r\n")
                else:
                    self._cancel_first_timer()
                    self.runner.stream_message(self, item)
        except Exception:
            self.log.failure("SIP message from {peer} failed", peer=self._peer_text())
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._cancel_first_timer()
        if self._refused:
            return
        if self.listener is not None:
            self.listener.released(self)
        try:
            self.runner.stream_lost(self)
        except Exception:
            self.log.failure(
                "cleaning up SIP stream from {peer} failed", peer=self._peer_text()
            )

    def _cancel_first_timer(self) -> None:
        if self._first_timer is not None:
            if self._first_timer.active():
                self._first_timer.cancel()
            self._first_timer = None

    def flow(self) -> Flow:
        """
        @return: this connection as an application flow.
        """
        return Flow(self.transport_name, self.local, self.peer, self.conn_id)

    def _peer_text(self) -> str:
        return peer_text(self.peer)


def _abort(transport: Any) -> None:
    """
    Close a connection at once, dropping what waits to be written (a peer
    that does not read holds nothing of ours).
    """
    getattr(transport, "abortConnection", transport.loseConnection)()


@mypyc_attr(native_class=False)
class SipStreamFactory(Factory):
    """
    Builds L{SipStreamProtocol}s for a runner (listening or connecting).

    A listener's factory (C{max_connections} given) bounds its connections:
    one more than C{max_connections} open is closed at once, and one that
    brings no complete SIP message within C{first_message_timeout} is
    closed; each with a line, one per 10 s at most.  A connection that has
    carried SIP stays open however long it is idle (phones keep their
    flows open, RFC 5626).

    @ivar open: the connections counted now.
    @ivar refused: connections closed over C{max_connections}.
    @ivar silent: connections closed for want of a first message.
    """

    noisy = False

    log = Logger()

    def __init__(
        self,
        runner: RunnerFace,
        transport_name: str = "tcp",
        max_size: int = 65535,
        max_connections: int | None = None,
        first_message_timeout: float | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param max_connections: connections held at once; C{None}: this
            factory counts nothing (an outgoing connection's).
        @param first_message_timeout: seconds for the first message;
            C{None}: no bound.
        @param clock: for that bound and for the lines' rate; needed with
            either bound.
        @raise ValueError: a bound without a clock.
        """
        if clock is None and (max_connections is not None or first_message_timeout is not None):
            raise ValueError("a SIP listener's connection bounds need a clock")
        self.runner = runner
        self.transport_name = transport_name
        self.max_size = max_size
        self.max_connections = max_connections
        self.first_message_timeout = first_message_timeout
        self.open: set[SipStreamProtocol] = set()
        self.refused = 0
        self.silent = 0
        self._clock = clock
        self._log = ThrottledLog(self.log, clock, Every(10.0)) if clock is not None else None

    def buildProtocol(self, addr: Any) -> SipStreamProtocol:
        proto = SipStreamProtocol(self.runner, self.transport_name, self.max_size)
        if self.max_connections is not None or self.first_message_timeout is not None:
            proto.listener = self
        return proto

    def admit(self, proto: SipStreamProtocol) -> bool:
        """
        Count a new connection, or say (in a line, rate-limited) why it is
        closed.

        @return: whether it is within C{max_connections}.
        """
        if self.max_connections is not None and len(self.open) >= self.max_connections:
            self.refused += 1
            assert self._log is not None
            self._closed_line(
                self._log.warn,
                proto,
                "refused SIP {transport} connection from {peer}: {open} connections open, limit {limit}"
                " (--max-sip-connections; ",
                open=len(self.open),
                limit=self.max_connections,
            )
            return False
        self.open.add(proto)
        return True

    def first_message_timer(self, proto: SipStreamProtocol) -> IDelayedCall | None:
        """
        @return: the call that closes C{proto} unless its first message
            comes in time; C{None}: no bound.
        """
        if self.first_message_timeout is None:
            return None
        assert self._clock is not None
        return self._clock.callLater(self.first_message_timeout, self._overdue, proto)

    def _overdue(self, proto: SipStreamProtocol) -> None:
        self.silent += 1
        assert self._log is not None
        self._closed_line(
            self._log.info,
            proto,
            "closed SIP {transport} connection from {peer}: no complete SIP message within {timeout:g} s (",
            timeout=self.first_message_timeout,
        )
        proto.first_message_overdue()

    def _closed_line(self, write: Callable[..., bool], proto: SipStreamProtocol, format: str, **fields: Any) -> None:
        # one line per kind per 10 s (the format is the kind), with the
        # count of those suppressed since
        write(
            format,
            format + "{suppressed} more since the last such line)",
            transport=self.transport_name,
            peer=peer_text(proto.peer),
            **fields,
        )

    def released(self, proto: SipStreamProtocol) -> None:
        """
        A counted connection is gone.
        """
        self.open.discard(proto)


#: Seconds of SIP work a runner does in one reactor turn (a half's
#: default, L{spwm.tap.assembly}): the rest of a burst waits for the next
#: turn, so the media and the other sockets go in between (a burst of 25
#: call set-ups is tens of milliseconds of work: every relayed datagram
#: waited that long).
SLICE = 0.0005

#: Messages that may wait for a later turn (a few tenths of a second of
#: SIP work: enough for a wait to reach L{OVERLOAD_AFTER}, whose
#: refusals then keep the queue short).  When that many wait, each new
#: one is queued after the oldest waiting is handled at once: the order
#: holds, the queue's memory stays bounded, and a half that cannot
#: keep up reads as slowly as without slices (the kernel's buffers then
#: drop, as before).
MAX_WAITING = 2048

#: Seconds a new request may have waited for its turn here before it is
#: refused as overloaded: answered 503 at once (L{spwm.sip.checks.shed}),
#: a few tens of microseconds of work instead of a call's.  A burst of
#: call set-ups waits milliseconds; a wait this long means requests come
#: faster than the half handles them, and left to grow the waits pass the
#: senders' retransmission timer (T1, 0.5 s), after which every copy adds
#: work and the calls already admitted fail with the new ones.  Only the
#: waits of this queue count: a half starved of CPU for a while (the host,
#: a garbage collection) reads what came meanwhile at once, and handles
#: it unrefused unless that takes this long.
OVERLOAD_AFTER = 0.2

#: Seconds the messages must have been handled that late before a new
#: request is refused: an overload lasts, while a half that stopped for a
#: moment (the host took its CPU, a long reactor turn) hands on the few
#: messages that waited through it within a turn or two, and refusing
#: them would fail calls the half has the capacity for.
OVERLOAD_HOLD = 0.05


class _Runner:
    """
    What both runners share: socket and connection bookkeeping, the timer,
    carrying out actions, and the input in slices.

    Every message in (from the network or applications, from a tunnel)
    goes through L{_submit}: with C{slice_seconds}, the messages of one
    reactor turn are handled at once until they have taken that long; the
    rest wait, in order, for the next turns (later messages queue behind
    them).  A change of a tunnel or a connection (up, lost, dormant) first
    handles every waiting message, so it comes after what arrived before
    it, as without slicing.  Without C{slice_seconds} (tests) every
    message is handled at once.  A message that waited for its turn
    C{overload_after} seconds or longer (L{OVERLOAD_AFTER}; C{None}:
    never), once the messages have been that late for L{OVERLOAD_HOLD},
    is handed to the core as overloaded (L{overloaded}).
    """

    log = Logger()

    #: seconds between two log lines for the same refused Route
    WARN_INTERVAL: ClassVar[float] = 60.0

    def __init__(
        self,
        core: Any,
        clock: IReactorTime,
        trace: SipTrace | None = None,
        slice_seconds: float | None = None,
        timer: Callable[[], float] = time.perf_counter,
        overload_after: float | None = OVERLOAD_AFTER,
    ) -> None:
        self.log = instance_logger(self)  # compiled, the class attribute is not bound
        self.core = core
        self._clock = clock
        self.trace = trace
        self._slice = slice_seconds
        self._timer_now = timer
        self._waiting: deque[tuple[Callable[..., None], tuple[Any, ...], float]] = deque()
        self._slice_end: float | None = None
        self._turn: IDelayedCall | None = None
        #: how the reactor ends a turn's slice for us (L{spwm.leanpoll}), or
        #: C{None}: a call scheduled for the next turn does
        self._turn_end = leanpoll.turn_end(clock)
        #: L{OVERLOAD_AFTER} (C{None}: never overloaded); whether the
        #: message being handled is overloaded (L{overloaded})
        self._overload_after = overload_after
        self._overloaded = False
        #: when the messages began to be handled late (each after a wait
        #: of L{OVERLOAD_AFTER} or longer); C{None} while they are not
        self._late_since: float | None = None
        #: messages that waited for a later turn, and turns that had some
        self.deferred_messages = 0
        self.deferred_turns = 0
        # one line per refused Route per minute, per drop reason per 10 s
        self._route_log = ThrottledLog(self.log, clock, Every(self.WARN_INTERVAL))
        self._drop_log = ThrottledLog(self.log, clock, Every(10.0))
        #: answers STUN Binding requests on the UDP sockets (within its
        #: rate) when set; otherwise STUN is only recognised and ignored
        self.stun_budget: AnswerBudget | None = None
        self._udp: dict[tuple[str, int], SipUdpProtocol] = {}
        self._streams: dict[int, SipStreamProtocol] = {}
        self._next_conn = 1
        self._timer: IDelayedCall | None = None
        self._deadline: float | None = None
        self._stopped = False
        #: the service stops, its sockets still open for a while (the
        #: contact point's drain): the calls that end meanwhile get BYEs
        #: only toward the network, none into a tunnel (they all go)
        self.draining = False

    # -- input in slices ---------------------------------------------------

    def _submit(self, handle: Callable[..., None], *args: Any) -> None:
        """
        Handle one message now, or queue it behind others for a later
        reactor turn (see the class).
        """
        if self._slice is None:
            handle(*args)
            return
        waiting = self._waiting
        if waiting:
            now = self._timer_now()
            if len(waiting) >= MAX_WAITING:
                # full: the oldest goes now, this one behind the rest
                self._run(*waiting.popleft(), now)
            waiting.append((handle, args, now))
            self.deferred_messages += 1
            return
        now = self._timer_now()
        if self._slice_end is None:
            self._slice_end = now + self._slice
            if self._turn_end is not None:
                self._turn_end(self._end_of_turn)
            else:
                self._turn = self._clock.callLater(0, self._next_turn)
        if now < self._slice_end:
            handle(*args)
        else:
            self._waiting.append((handle, args, now))
            self.deferred_messages += 1
            self.deferred_turns += 1

    def _end_of_turn(self) -> None:
        """
        The reactor's turn ended (L{spwm.leanpoll.turn_end}): the next
        message starts a new slice; what waits goes in the next turns.
        """
        if self._turn is not None:
            # (the next turn's call is scheduled already)
            return
        if self._waiting:
            self._turn = self._clock.callLater(0, self._next_turn)
        else:
            self._slice_end = None
            self._late_since = None

    def _next_turn(self) -> None:
        self._turn = None
        self._slice_end = None
        if not self._waiting:
            self._late_since = None
            return
        timer = self._timer_now
        now = timer()
        end = self._slice_end = now + (self._slice or 0.0)
        self._turn = self._clock.callLater(0, self._next_turn)
        waiting = self._waiting
        while waiting and now < end:
            handle, args, since = waiting.popleft()
            self._run(handle, args, since, now)
            now = timer()
        if waiting:
            self.deferred_turns += 1
        else:
            self._late_since = None  # caught up

    def _run(self, handle: Callable[..., None], args: tuple[Any, ...], since: float, now: float) -> None:
        """
        Handle a message that waited for its turn since C{since}.
        """
        after = self._overload_after
        if after is not None and now - since >= after:
            late_since = self._late_since
            if late_since is None:
                self._late_since = late_since = now
            self._overloaded = now - late_since >= OVERLOAD_HOLD
        else:
            self._late_since = None
        try:
            handle(*args)
        except Exception:
            self.log.failure("SIP message failed")
        finally:
            self._overloaded = False

    def drain(self) -> None:
        """
        Handle every waiting message now, in order.
        """
        waiting = self._waiting
        timer = self._timer_now
        while waiting:
            handle, args, since = waiting.popleft()
            self._run(handle, args, since, timer())
        self._late_since = None

    def overloaded(self) -> bool:
        """
        Whether the message being handled waited for its turn for
        L{OVERLOAD_AFTER} or longer, the messages before it having been
        that late for L{OVERLOAD_HOLD} already: what the cores are told
        with each message, to refuse it if it is a new request
        (L{spwm.sip.checks.shed}).
        """
        return self._overloaded

    def oldest_wait(self) -> float:
        """
        Seconds the oldest message waiting for its turn has waited (0:
        none waits).
        """
        waiting = self._waiting
        return self._timer_now() - waiting[0][2] if waiting else 0.0

    def slice_status(self) -> dict[str, int]:
        """
        For the status: messages waiting for a later turn now, whether
        the oldest of them has waited L{OVERLOAD_AFTER} or longer (new
        requests that wait as long are answered 503), and since the start
        the messages that waited and the turns whose SIP work ran over its
        slice.
        """
        after = self._overload_after
        late_since = self._late_since
        overloaded = (
            after is not None
            and late_since is not None
            and self.oldest_wait() >= after
            and self._timer_now() - late_since >= OVERLOAD_HOLD
        )
        return {
            "waiting": len(self._waiting),
            "overloaded": int(overloaded),
            "deferred_messages": self.deferred_messages,
            "deferred_turns": self.deferred_turns,
        }

    @property
    def waiting(self) -> int:
        """
        Messages waiting for a later reactor turn now.
        """
        return len(self._waiting)

    # -- sockets and connections -------------------------------------------

    def udp_started(self, proto: SipUdpProtocol) -> None:
        assert proto.local is not None
        self._udp[proto.local] = proto

    def udp_stopped(self, proto: SipUdpProtocol) -> None:
        if proto.local is not None and self._udp.get(proto.local) is proto:
            del self._udp[proto.local]

    def stream_connected(self, proto: SipStreamProtocol) -> int:
        conn_id = self._next_conn
        self._next_conn += 1
        self._streams[conn_id] = proto
        return conn_id

    def stream_lost(self, proto: SipStreamProtocol) -> None:
        self.drain()
        if proto.conn_id is not None:
            self._streams.pop(proto.conn_id, None)

    def datagram_received(
        self, proto: SipUdpProtocol, data: bytes, addr: tuple[str, int]
    ) -> None:
        """
        A datagram from a SIP socket (handled now or in a later turn); a
        STUN message is handled here (L{spwm.sip.stun}), never as SIP.
        """
        if is_stun(data):
            self._stun(proto, data, addr)
            return
        self._submit(self._datagram_received, proto, data, addr)

    def _stun(self, proto: SipUdpProtocol, data: bytes, addr: tuple[str, int]) -> None:
        """
        Answer a STUN Binding request (RFC 5626 8) when this runner has a
        L{stun_budget} with a token left; say in one line (per reason per
        10 s) why any other STUN message gets no answer.
        """
        budget = self.stun_budget
        if budget is None:
            self._ignore_stun(addr, "STUN is answered on the agent's SIP ports only")
            return
        answer = binding_answer(data, addr)
        if isinstance(answer, Ignored):
            self._ignore_stun(addr, answer.reason)
        elif not budget.take(self._clock.seconds()):
            self._ignore_stun(addr, f"over {budget.rate:g} answers a second")
        else:
            proto.send(answer, addr)

    def _ignore_stun(self, addr: tuple[str, int], reason: str) -> None:
        self._drop_log.info(
            ("stun", reason),
            "STUN message from {peer} not answered: {reason} ({suppressed} more since the last such line)",
            peer=peer_text(addr),
            reason=reason,
        )

    def stream_message(self, proto: SipStreamProtocol, data: bytes) -> None:
        """
        A message from a SIP connection (handled now or in a later turn).
        """
        self._submit(self._stream_message, proto, data)

    def _datagram_received(self, proto: SipUdpProtocol, data: bytes, addr: tuple[str, int]) -> None:
        raise NotImplementedError

    def _stream_message(self, proto: SipStreamProtocol, data: bytes) -> None:
        raise NotImplementedError

    def _wildcard_socket(self, flow: Flow) -> SipUdpProtocol | None:
        """
        The socket bound to every address on the flow's port, which a flow
        naming one of those addresses came in on (IPv4 first for an IPv4
        application, since a C{::} socket may serve both).
        """
        port = flow.local[1]
        v6 = ":" in flow.remote[0]
        found = None
        for (host, p), proto in self._udp.items():
            if p != port or not is_wildcard(host):
                continue
            if (":" in host) == v6:
                return proto
            found = proto
        return found


    # -- actions and timer ---------------------------------------------------

    def execute(self, actions: list[Any]) -> None:
        """
        Carry out a core's actions in order, then re-arm the timer.
        """
        # class patterns: no isinstance call per action and type
        for action in actions:
            match action:
                case ToApp():
                    if self.trace is not None:
                        flow = action.flow
                        self.trace.message(
                            "sent to", self._app_peer(flow), action.data, flow.remote, flow.local, flow.transport
                        )
                    self._to_app(action)
                case ToNetwork():
                    if self.trace is not None:
                        self.trace.message(
                            "sent to",
                            f"operator {action.transport} {peer_text(action.addr)}",
                            action.data,
                            action.addr,
                            getattr(self.core, "address", None),
                            action.transport,
                        )
                    self._to_network(action)
                case ToTunnel():
                    if self.trace is not None:
                        local, remote, carried = tunnel_addresses(action.tunnel_key)
                        self.trace.message(
                            "sent to", self._tunnel_peer(action.tunnel_key, action.flow_id), action.data, remote, local, carried
                        )
                    self._to_tunnel(action)
                case Dropped():
                    self._log_drop(action.reason, action.answered)
                case BindingChanged():
                    self._log_binding(action)
                case RouteRefused():
                    self._log_route_refused(action)
                case ProxyChanged():
                    self._log_proxy(action)
        self._rearm()

    def leg_lost(self, session_id: str, dialog_key: str, reason: str) -> list[str]:
        """
        The media manager ended a call leg whose media it lost (C{reason}:
        its call record's): the core ends its dialogs with BYEs of its own
        (C{leg_lost}), which are sent.

        @return: whom a BYE went to, for the call record; nobody once
            the runner has stopped (its sockets are closed: the service
            stops).
        """
        if self._stopped:
            return []
        flow, _, call_id = dialog_key.partition("/")
        try:
            flow_id = int(flow)
        except ValueError:
            return []
        actions, told = self.core.leg_lost(
            session_id, flow_id, call_id, reason, self._clock.seconds(), not self.draining
        )
        self.execute(actions)
        return list(told)

    def ringing_lost(self, session_id: str) -> None:
        """
        The media manager released a session for good (C{session_ended}):
        the core ends its calls that still ring and had no media stream
        (C{ringing_lost}), which is sent.
        """
        if self._stopped:
            return
        self.execute(self.core.ringing_lost(session_id, self._clock.seconds(), not self.draining))

    def _log_proxy(self, change: ProxyChanged) -> None:
        using = proxy_text(change.using)
        if not change.answering:
            using = f"none: new requests are answered 503 until one answers (those inside calls go to {using})"
        if change.up:
            self.log.info(
                "operator proxy {proxy} answers again ({why}); requests go to {using}",
                proxy=proxy_text(change.proxy),
                why=change.why,
                using=using,
            )
        else:
            self.log.warn(
                "operator proxy {proxy} does not answer ({why}); requests go to {using}",
                proxy=proxy_text(change.proxy),
                why=change.why,
                using=using,
            )

    @staticmethod
    def _app_peer(flow: Flow) -> str:
        return f"app {flow.transport} {peer_text(flow.remote)}"

    @staticmethod
    def _tunnel_peer(tunnel: Any, flow_id: int) -> str:
        session = getattr(tunnel, "session_id", None)
        if session is None:
            # the agent's stable handle: the connection that carries it now
            session = getattr(getattr(tunnel, "current", None), "session_id", None)
        if session is None:
            return f"tunnel flow {flow_id}"
        return f"tunnel {session} flow {flow_id}"

    def _log_binding(self, event: BindingChanged) -> None:
        if event.app is not None:
            self.log.info(
                "{change} {aor} at {contact}{lifetime} (app {app}, flow {flow_id})",
                change=event.change,
                aor=event.aor,
                contact=event.contact,
                lifetime=f" for {event.expires} s" if event.expires else "",
                app=f"{event.app.transport} {peer_text(event.app.remote)}",
                flow_id=event.flow_id,
            )
        elif event.change == "registered":
            self.log.info(
                "registered {aor} at {contact} for {expires} s through tunnel {session_id} flow {flow_id}",
                aor=event.aor,
                contact=event.contact,
                expires=event.expires,
                session_id=event.session_id,
                flow_id=event.flow_id,
            )
        else:
            self.log.info(
                "{change} {aor} at {contact} (tunnel {session_id} flow {flow_id})",
                change=event.change,
                aor=event.aor,
                contact=event.contact,
                session_id=event.session_id,
                flow_id=event.flow_id,
            )

    def _log_route_refused(self, event: RouteRefused) -> None:
        # One line per Route per minute: a phone retrying every few seconds
        # must not fill the log.
        tally = self._route_log.hit(event.route)
        if tally is None:
            return
        host = f"[{event.host}]" if ":" in event.host else event.host
        name = host if event.port is None else f"{host}:{event.port}"
        line = without_none_suppressed(
            "{method} refused with 403 Forbidden: its Route {route} names neither "
            "this contact point nor one of its tunnel flows, and SPWM does not relay; "
            "if {name} is the agent, start the agent with --sip-name {name}; if it "
            "is this contact point, start it with --sip-name {name} "
            "({suppressed} more since the last such line)",
            tally.suppressed,
        )
        self.log.warn(line, method=event.method, route=event.route, name=name, suppressed=tally.suppressed)

    def _log_drop(self, reason: str, answered: bool = False) -> None:
        # One line per reason per 10 s: a flood of bad SIP must not become
        # a flood of log lines.  A refusal's reason says what it was
        # answered with: it was not dropped.
        self._drop_log.info(
            reason,
            ("{reason}" if answered else "SIP message dropped: {reason}")
            + " ({suppressed} more since the last such line)",
            reason=reason,
        )

    def _to_app(self, action: ToApp) -> None:
        self.log.warn("no application side here; dropped a message")

    def _to_network(self, action: ToNetwork) -> None:
        self.log.warn("no network side here; dropped a message")

    def _to_tunnel(self, action: ToTunnel) -> None:
        raise NotImplementedError

    def _rearm(self) -> None:
        """
        Keep one timer for the core's next deadline.  A deadline that moved
        later leaves the armed timer alone (an application flow's idle
        lifetime moves with every message): the core's timer handling is
        harmless when nothing is due yet, and re-arms for the later one.
        """
        deadline = self.core.next_deadline()
        if (
            self._timer is not None
            and deadline is not None
            and self._deadline is not None
            and self._deadline <= deadline
        ):
            return
        if deadline is None and self._timer is None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._deadline = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self._clock.seconds())
            self._timer = self._clock.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._deadline = None
        try:
            self.execute(self.core.handle_timer(self._clock.seconds()))
        except Exception:
            self.log.failure("SIP proxy timer failed")

    def stop(self) -> None:
        """
        Handle what waits, cancel the timers (service shutdown).
        """
        self._stopped = True
        self.drain()
        if self._turn is not None and self._turn.active():
            self._turn.cancel()
        self._turn = None
        self._slice_end = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._deadline = None


class AgentSipRunner(_Runner):
    """
    Runs an L{AgentSipProxy}: LAN sockets in, tunnel out, and back.

    @param core: the L{AgentSipProxy}, or what stands for it with its
        interface (L{spwm.security.resume}'s watch over it); typed C{Any}
        since compiled code checks a declared class at the call.
    @param send_to_tunnel: carries out C{ToTunnel(key, flow_id, data)};
        by default C{key.send_sip(flow_id, data)}.
    """

    def __init__(
        self,
        core: Any,
        clock: IReactorTime,
        send_to_tunnel: Callable[[Any, int, bytes], Any] = _send_sip,
        trace: SipTrace | None = None,
        slice_seconds: float | None = None,
        timer: Callable[[], float] = time.perf_counter,
        overload_after: float | None = OVERLOAD_AFTER,
    ) -> None:
        super().__init__(core, clock, trace, slice_seconds, timer, overload_after)
        self._send_to_tunnel = send_to_tunnel
        self._sources = RouteSources()
        # phones using SIP outbound over UDP keep their flows with STUN
        # (RFC 5626 4.4.2); their first hop answers
        self.stun_budget = AnswerBudget()

    def _datagram_received(self, proto: SipUdpProtocol, data: bytes, addr: tuple[str, int]) -> None:
        local = proto.local
        assert local is not None
        if is_wildcard(local[0]):
            # a socket on every address: the flow (and so Via and
            # Record-Route) names the address the phone reaches us on
            source = self._sources.source_for(addr[0])
            if source is not None:
                local = (source, local[1])
        flow = Flow("udp", local, addr, None)
        if self.trace is not None and data.strip(b"\r\n\t "):
            self.trace.message("received from", self._app_peer(flow), data, addr, proto.local)
        self.execute(
            self.core.from_app(
                flow, data, self._clock.seconds(), congested=self._congested(), overloaded=self.overloaded()
            )
        )

    def _stream_message(self, proto: SipStreamProtocol, data: bytes) -> None:
        flow = proto.flow()
        if self.trace is not None:
            self.trace.message(
                "received from", self._app_peer(flow), data, flow.remote, flow.local, flow.transport
            )
        self.execute(
            self.core.from_app(
                flow, data, self._clock.seconds(), congested=self._congested(), overloaded=self.overloaded()
            )
        )

    def _congested(self) -> bool:
        """
        Whether the tunnel's signalling backlog is over its high-water mark
        (its C{congested}; a tunnel handle without one never is).
        """
        return bool(getattr(self.core.tunnel_key, "congested", False))

    def stream_lost(self, proto: SipStreamProtocol) -> None:
        super().stream_lost(proto)
        if proto.conn_id is not None:
            self.core.flow_closed(proto.flow())

    def close_stream_flows(self, flow_ids: Iterable[int]) -> int:
        """
        Close the TCP and TLS connections of these application flows (UDP
        flows have none): a phone whose connection closes registers again
        at once (RFC 5626 4.4.1; most phones without outbound do too).

        @return: the number of connections closed.
        """
        now = self._clock.seconds()
        closed = 0
        for flow_id in set(flow_ids):
            flow = self.core.flows.lookup(flow_id, now)
            if flow is None or flow.conn_id is None:
                continue
            stream = self._streams.get(flow.conn_id)
            if stream is not None and stream.transport is not None:
                stream.transport.loseConnection()
                closed += 1
        return closed

    def sip_received(self, tunnel: Any, flow_id: int, data: bytes, side: int | None = None) -> None:
        """
        The tunnel delivered a SIP message for C{flow_id} (handled now or
        in a later turn).

        @param side: with several contact points, which one's tunnel
            (the core is then a L{spwm.sip.fanout.FanoutCore}).
        """
        self._submit(self._sip_received, tunnel, flow_id, data, side)

    def _sip_received(self, tunnel: Any, flow_id: int, data: bytes, side: int | None) -> None:
        if self.trace is not None:
            local, remote, carried = tunnel_addresses(tunnel)
            self.trace.message("received from", self._tunnel_peer(tunnel, flow_id), data, remote, local, carried)
        try:
            now = self._clock.seconds()
            overloaded = self.overloaded()
            if side is None:
                self.execute(self.core.from_tunnel(flow_id, data, now, overloaded=overloaded))
            else:
                self.execute(self.core.from_side(side, flow_id, data, now, overloaded=overloaded))
        except Exception:
            self.log.failure("SIP message from the tunnel failed", flow_id=flow_id)

    def _to_app(self, action: ToApp) -> None:
        flow = action.flow
        if flow.conn_id is None:
            proto = self._udp.get(flow.local) or self._wildcard_socket(flow)
            if proto is None or proto.transport is None:
                self.log.warn(
                    "no UDP socket on {local} for the flow", local=hostport(flow.local[0], flow.local[1])
                )
                return
            proto.send(action.data, flow.remote)
            return
        stream = self._streams.get(flow.conn_id)
        if stream is None:
            self.log.info(
                "connection of flow {peer} is gone",
                peer=peer_text(flow.remote),
            )
            return
        stream.transport.write(action.data)

    def _to_tunnel(self, action: ToTunnel) -> None:
        self._send_to_tunnel(action.tunnel_key, action.flow_id, action.data)


class ContactSipRunner(_Runner):
    """
    Runs a L{ContactSipProxy}: the operator-side socket and connections in
    and out, tunnels on the other side.

    @param core: the L{ContactSipProxy}, its
        L{spwm.sip.authz.AuthorizingContactProxy}, or what stands for them
        with their interface (typed C{Any}, as L{AgentSipRunner}'s).

    @param connect: opens an outgoing TCP connection to C{(host, port)} with
        the given factory and returns a Deferred firing with the protocol
        (e.g. C{lambda addr, f: TCP4ClientEndpoint(reactor, *addr).connect(f)}).
    @param max_connections: the pool's limit on outgoing connections.
    @param max_queued: messages held per connection while it is being
        opened; more are dropped.

    While a session is being resumed (C{resuming(session_id)}: its agent's
    connection broke within the resumption window), a message for it that
    would otherwise be dropped waits for the resumed connection, at most
    C{resume_hold} seconds and C{resume_max_held} messages per session:
    a response to a non-INVITE request is not sent again by its UAS, and
    over TCP nothing is retransmitted, so a BYE or its 200 lost in a cut
    would leave a call up at one end.  A new request that RFC 5626 can
    send to the phone's other flow is answered C{430} as before.

    The SIP the session's last connection took with it (sent, not yet
    acknowledged by the agent: C{sip-seq}) is I{carried} (L{carry}): it
    goes first on the resumed connection when the session was resumed
    with its calls; resumed with its registrations only
    (L{settle_carried}), or not within C{resume_hold}, it is dropped,
    since the calls it belongs to are gone at the agent; what the agent
    says it took (C{sip_next}) is left out.
    """

    def __init__(
        self,
        core: Any,
        clock: IReactorTime,
        connect: Callable[[tuple[str, int], Factory], Deferred] | None = None,
        send_to_tunnel: Callable[[Any, int, bytes], Any] = _send_sip,
        max_connections: int = 64,
        max_queued: int = 64,
        trace: SipTrace | None = None,
        slice_seconds: float | None = None,
        timer: Callable[[], float] = time.perf_counter,
        overload_after: float | None = OVERLOAD_AFTER,
    ) -> None:
        super().__init__(core, clock, trace, slice_seconds, timer, overload_after)
        self._connect = connect
        self._send_to_tunnel = send_to_tunnel
        self.max_connections = max_connections
        self.max_queued = max_queued
        self._by_peer: dict[tuple[str, int], SipStreamProtocol] = {}
        self._connecting: dict[tuple[str, int], list[bytes]] = {}
        # one line per address per minute: a proxy that is down is tried
        # again at every request (and every OPTIONS ping of a pool)
        self._connect_log = ThrottledLog(self.log, clock, Every(self.WARN_INTERVAL), max_keys=64)
        #: C{resuming(session_id)}: whether that session waits for its
        #: agent to resume it (C{None}: none ever does)
        self.resuming: Callable[[str], bool] | None = None
        self.resume_hold = 4.0
        self.resume_max_held = 1024
        #: session id -> the messages (C{ToTunnel}) that wait for it
        self._held: dict[str, deque[ToTunnel]] = {}
        self._held_keys: dict[str, set[tuple[int, bytes]]] = {}
        self._held_timers: dict[str, IDelayedCall] = {}
        #: session id -> the SIP its last connection took with it (number,
        #: flow id, bytes), oldest first
        self._carried: dict[str, list[tuple[int, int, bytes]]] = {}
        #: session id -> the next number it expected from the agent there
        self._carried_next: dict[str, int] = {}
        #: C{resume_held} (messages that waited), C{resume_held_sent}
        #: (sent on the resumed connection), C{resume_held_overflow},
        #: C{resume_held_expired} (undeliverable after the wait)
        self.held_counts = {
            "resume_held": 0,
            "resume_held_sent": 0,
            "resume_held_overflow": 0,
            "resume_held_expired": 0,
            "resume_held_duplicates": 0,
            "resume_carried": 0,
            "resume_carried_dropped": 0,
            "resume_carried_taken": 0,
        }

    def stop(self) -> None:
        """
        Also close the connections opened to the operator's proxies.
        """
        super().stop()
        for timer in self._held_timers.values():
            if timer.active():
                timer.cancel()
        self._held_timers.clear()
        self._held.clear()
        self._held_keys.clear()
        self._carried.clear()
        self._carried_next.clear()
        for proto in list(self._by_peer.values()):
            if proto.outgoing and proto.transport is not None:
                proto.transport.loseConnection()

    def use_proxies(self, proxies: list[OperatorProxy], why: str) -> None:
        """
        The operator's proxies are now C{proxies} (in order), because
        C{why} (a name resolves to other addresses): the pool keeps the
        state of those that stay, one line says what changed, and the
        connections opened to proxies that left are closed.
        """
        pool = self.core.proxies
        if pool is None or not proxies or tuple(proxies) == pool.proxies:
            return
        gone = [p for p in pool.proxies if p not in proxies]
        pool.replace(proxies, self._clock.seconds())
        self.log.info(
            "operator proxies now {proxies} ({why}); requests go to {using}",
            proxies=", ".join(proxy_text(p) for p in proxies),
            why=why,
            using=proxy_text(pool.current),
        )
        for proxy in gone:
            proto = self._by_peer.get((proxy.host, proxy.port))
            if proto is not None and proto.outgoing and proto.transport is not None and proxy.transport == "tcp":
                proto.transport.loseConnection()
        self._rearm()

    def udp_started(self, proto: SipUdpProtocol) -> None:
        first = not self._udp
        super().udp_started(proto)
        pool = self.core.proxies
        if first and pool is not None and pool.probing:
            self.log.info(
                "operator proxies {proxies}, in this order: OPTIONS to each every {interval}s, requests to the first that answers",
                proxies=", ".join(proxy_text(p) for p in pool.proxies),
                interval=f"{pool.interval:g}",
            )
        elif first and pool is not None:
            self.log.info("operator proxy {proxy}: requests go there", proxy=proxy_text(pool.current))
        # the core's first deadline: the operator's proxies' first pings
        # go once there is a socket to send them from
        self._rearm()

    def _datagram_received(self, proto: SipUdpProtocol, data: bytes, addr: tuple[str, int]) -> None:
        if self.trace is not None and data.strip(b"\r\n\t "):
            self.trace.message("received from", f"operator udp {peer_text(addr)}", data, addr, proto.local)
        self.execute(
            self.core.from_network(
                "udp",
                addr,
                data,
                self._clock.seconds(),
                congested=_tunnel_congested,
                overloaded=self.overloaded(),
            )
        )

    def stream_connected(self, proto: SipStreamProtocol) -> int:
        conn_id = super().stream_connected(proto)
        self._by_peer.setdefault(proto.peer, proto)
        return conn_id

    def stream_lost(self, proto: SipStreamProtocol) -> None:
        super().stream_lost(proto)
        for addr in [a for a, s in self._by_peer.items() if s is proto]:
            del self._by_peer[addr]

    def _stream_message(self, proto: SipStreamProtocol, data: bytes) -> None:
        if self.trace is not None:
            self.trace.message(
                "received from", f"operator tcp {peer_text(proto.peer)}", data, proto.peer, proto.local, "tcp"
            )
        self.execute(
            self.core.from_network(
                "tcp",
                proto.peer,
                data,
                self._clock.seconds(),
                congested=_tunnel_congested,
                overloaded=self.overloaded(),
            )
        )

    # -- tunnel application (SIP part) ---------------------------------------

    def tunnel_established(self, tunnel: Any) -> None:
        """
        A tunnel came up (or a session was resumed on it): what waited for
        its session goes on it now.
        """
        self.drain()
        self.core.tunnel_attached(tunnel, tunnel.session_id)
        held = self._held.pop(tunnel.session_id, None)
        self._held_keys.pop(tunnel.session_id, None)
        timer = self._held_timers.pop(tunnel.session_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._carried_next.pop(tunnel.session_id, None)
        for _, flow_id, data in self._carried.pop(tunnel.session_id, ()):
            # what the agent had not taken (settle_carried), before what
            # waited meanwhile; one it cannot take now is not answered
            # (it was sent once already)
            self._send_to_tunnel(tunnel, flow_id, data)
        for action in held or ():
            if self._send_to_tunnel(tunnel, action.flow_id, action.data) is False:
                self._undeliverable(action)
            else:
                self.held_counts["resume_held_sent"] += 1

    def carry(
        self, session: str, messages: list[tuple[int, int, bytes]], taken: int, *, taken_over: bool = False
    ) -> None:
        """
        The session lost its last connection with these SIP messages sent
        and not acknowledged by the agent (number, flow id and bytes,
        oldest first): over TCP the operator's side does not send them
        again.  C{taken}: the next number the contact point expected from
        the agent there (the C{sip_next} of its C{resumed}).  While the
        session is being resumed they are kept (at most
        C{resume_max_held}, at most C{resume_hold} seconds) for
        L{settle_carried}; otherwise they are dropped.  C{taken_over}: the
        session is live still, on connections that a resumption takes over
        (they died silently).
        """
        if session in self._carried_next:
            return
        if not taken_over and (self.resuming is None or not self.resuming(session)):
            return
        self._carried_next[session] = taken
        self._carried[session] = messages[: self.resume_max_held]
        self.held_counts["resume_carried"] += len(self._carried[session])
        self.held_counts["resume_carried_dropped"] += max(0, len(messages) - self.resume_max_held)
        if session not in self._held_timers:
            self._held_timers[session] = self._clock.callLater(self.resume_hold, self._hold_over, session)

    def settle_carried(self, session: str, resumed: bool, peer_next: object) -> int | None:
        """
        The session is being resumed: with its calls (C{resumed}) what the
        agent took of the carried SIP (numbered below C{peer_next}, its
        offer's C{sip_next}; without one, nothing) is left out and the
        rest goes first on the resumed connection (L{tunnel_established});
        with its registrations only (the agent had released its calls) it
        is dropped, since the calls it belongs to are gone there.

        @return: what the contact point took of the agent's (the next
            number it expected from it), for the C{resumed}; C{None}:
            not known (nothing carried).
        """
        taken = self._carried_next.get(session)
        carried = self._carried.get(session)
        if not carried:
            return taken if resumed else None
        if not resumed:
            self.held_counts["resume_carried_dropped"] += len(carried)
            del self._carried[session]
            return None
        left = not_taken(carried, peer_next)
        self.held_counts["resume_carried_taken"] += len(carried) - len(left)
        self._carried[session] = left
        return taken

    def _drop_carried(self, session: str) -> None:
        self._carried_next.pop(session, None)
        carried = self._carried.pop(session, None)
        if carried:
            self.held_counts["resume_carried_dropped"] += len(carried)

    def held_status(self) -> dict[str, int]:
        """
        For the status: the messages that waited for a resumption so far,
        and those waiting now.
        """
        return dict(
            self.held_counts,
            resume_held_now=sum(len(q) for q in self._held.values()),
            resume_carried_now=sum(len(c) for c in self._carried.values()),
        )

    def _hold(self, action: ToTunnel) -> bool:
        """
        Keep a message the session's connection could not take, if the
        session is being resumed.

        @return: whether it was kept.
        """
        session = getattr(action.tunnel_key, "session_id", None)
        if self.resuming is None or not isinstance(session, str) or not self.resuming(session):
            return False
        if self.core.fails_over(action.tunnel_key, action.flow_id, action.data):
            return False
        held = self._held.setdefault(session, deque())
        keys = self._held_keys.setdefault(session, set())
        if (action.flow_id, action.data) in keys:
            # a retransmission of a message that waits already (see
            # AgentTunnelHandle._hold)
            self.held_counts["resume_held_duplicates"] += 1
            return True
        if len(held) >= self.resume_max_held:
            self.held_counts["resume_held_overflow"] += 1
            return False
        held.append(action)
        keys.add((action.flow_id, action.data))
        self.held_counts["resume_held"] += 1
        if session not in self._held_timers:
            self._held_timers[session] = self._clock.callLater(self.resume_hold, self._hold_over, session)
        return True

    def _hold_over(self, session: str) -> None:
        """
        The session was not resumed in time: what waited for it is
        undeliverable.
        """
        self._held_timers.pop(session, None)
        self._held_keys.pop(session, None)
        self._drop_carried(session)
        for action in self._held.pop(session, ()):
            self.held_counts["resume_held_expired"] += 1
            self._undeliverable(action)

    def _undeliverable(self, action: ToTunnel) -> None:
        self.execute(self.core.undeliverable(action.tunnel_key, action.flow_id, action.data, self._clock.seconds()))

    def tunnel_lost(self, tunnel: Any, reason: str = "") -> None:
        """
        A tunnel went away: its flows answer 430 from now on.
        """
        self.drain()
        self.core.tunnel_detached(tunnel)

    def tunnel_dormant(self, tunnel: Any) -> None:
        """
        A tunnel went away, but its session's registrations stay until
        they expire or L{forget_session}: its flows answer 430 meanwhile,
        and a resumption (L{tunnel_established} with the same session id)
        finds them again.
        """
        self.drain()
        self.core.tunnel_detached(tunnel, keep_registrations=True)

    def forget_session(self, session_id: str) -> None:
        """
        A dormant session is given up: forget its registrations.
        """
        self.drain()
        self.core.forget_session(session_id)

    def registrations(self, session_id: str) -> list[Any]:
        """
        @return: the live registrations of a session (see
            L{ContactSipProxy.registrations}).
        """
        return self.core.registrations(session_id)

    def sip_received(self, tunnel: Any, flow_id: int, data: bytes) -> None:
        """
        The tunnel delivered a SIP message from the agent's flow C{flow_id}
        (handled now or in a later turn).
        """
        self._submit(self._sip_received, tunnel, flow_id, data)

    def _sip_received(self, tunnel: Any, flow_id: int, data: bytes) -> None:
        if self.trace is not None:
            local, remote, carried = tunnel_addresses(tunnel)
            self.trace.message("received from", self._tunnel_peer(tunnel, flow_id), data, remote, local, carried)
        try:
            now = self._clock.seconds()
            self.execute(
                self.core.from_tunnel(
                    tunnel,
                    tunnel.session_id,
                    flow_id,
                    data,
                    now,
                    congested=_tunnel_congested,
                    overloaded=self.overloaded(),
                )
            )
        except Exception:
            self.log.failure("SIP message from tunnel failed", flow_id=flow_id)

    # -- output ----------------------------------------------------------------

    def _to_tunnel(self, action: ToTunnel) -> None:
        if self._send_to_tunnel(action.tunnel_key, action.flow_id, action.data) is False and not self._hold(action):
            # the session's tunnel is not open (it waits for its agent):
            # a new request for an RFC 5626 flow gets 430, which sends the
            # registrar to the phone's other flow
            self._undeliverable(action)

    def _to_network(self, action: ToNetwork) -> None:
        if action.transport == "udp":
            proto = self._udp.get(self.core.address) or next(
                iter(self._udp.values()), None
            )
            if proto is None or proto.transport is None:
                self.log.warn("no operator-side UDP socket; dropped a message")
                return
            proto.send(action.data, action.addr)
            return
        if action.transport not in ("tcp",):
            self.log.warn(
                "transport {transport} not supported towards the operator",
                transport=action.transport,
            )
            return
        addr = action.addr
        stream = self._by_peer.get(addr)
        if stream is not None:
            stream.transport.write(action.data)
            return
        queue = self._connecting.get(addr)
        if queue is not None:
            if len(queue) >= self.max_queued:
                self.log.warn(
                    "queue to {peer} full; dropped a message",
                    peer=peer_text(addr),
                )
            else:
                queue.append(action.data)
            return
        if self._connect is None:
            self.log.warn(
                "no way to open TCP connections; dropped a message to {peer}",
                peer=peer_text(addr),
            )
            return
        outgoing = sum(1 for s in self._by_peer.values() if s.outgoing) + len(
            self._connecting
        )
        if outgoing >= self.max_connections:
            self.log.warn(
                "TCP pool full; dropped a message to {peer}",
                peer=peer_text(addr),
            )
            return
        self._connecting[addr] = [action.data]
        d = self._connect(addr, SipStreamFactory(self, "tcp"))
        d.addCallbacks(
            self._connected,
            self._connect_failed,
            callbackArgs=(addr,),
            errbackArgs=(addr,),
        )

    def _connected(self, proto: SipStreamProtocol, addr: tuple[str, int]) -> None:
        proto.outgoing = True
        queue = self._connecting.pop(addr, [])
        # responses and requests for this address use this connection
        self._by_peer[addr] = proto
        for data in queue:
            proto.transport.write(data)

    def _connect_failed(self, failure: Failure, addr: tuple[str, int]) -> None:
        queue = self._connecting.pop(addr, [])
        self._connect_log.warn(
            addr,
            "TCP connection to {peer} failed, {dropped} messages dropped: {reason}"
            " ({suppressed} more failures since the last such line)",
            peer=peer_text(addr),
            dropped=len(queue),
            reason=failure.getErrorMessage(),
        )
