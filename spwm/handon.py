# -*- test-case-name: tests.test_handon -*-
"""
C{--workers N}: a resumption or a further connection of a session that
reaches the wrong worker through the shared port is handed on to the
worker that holds the session, transparently to the agent.

The kernel spreads the connections to the shared C{--listen} port over the
workers by a hash of addresses and ports, not by session.  An agent that
can reach the workers' own ports goes there (C{resume_port}, see
L{spwm.session.workerroute}) and, sent to the wrong one, follows a
C{redirect}.  An agent that can reach only the shared port (an HTTP proxy
that lets C{CONNECT} through to port 443 alone, a load balancer or a port
mapping that forwards only that port) could not: its resumption was
refused (N-1)/N of the times and its calls were lost.

So a worker reads the agent's hello before it answers (the agent sends
nothing before our preface, and nothing but its hello before our
welcome): when the hello resumes or attaches to a session of worker k
(session ids end in C{-wINDEX}) and the connection came in on the shared
port, the worker connects to worker k's hand-on socket (a Unix socket in
a directory of mode 0700 that the supervisor makes, L{socket_path}), sends
a one-line header (the agent's address, and the TLS exporter value the
session's keys are derived with, L{encode_header}) and the agent's bytes
so far, and from then on relays the plaintext both ways (flow control
both ways: each side's transport pauses the other's reading).  Worker k
takes the connection as one of its own (L{HandOnReceiver}), answers the
preface again (the relay drops that copy, the agent has had ours) and the
welcome, and the agent resumes or attaches as it would have at worker k.

A worker k that is not there (restarting) or the bound of hand-ons
(L{HandOn.limit}) reached: the connection is answered here as before
(C{redirect}, then refused), with one log line.  A connection to a
worker's own port that names another worker's session is redirected as
before: the agent reached one worker's port, so it can reach the others'
and a redirect is cheaper than a relay for the connection's whole life.

The decisions (L{first_frame}, L{hello_message}, L{handon_target},
L{encode_header}, L{parse_header}) are pure; the rest is Twisted glue.
"""

from __future__ import annotations

import json
import os
from functools import partial
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spwm.logthrottle import Every, ThrottledLog
from spwm.security.keys import EXPORTER_LABEL, KEY_LENGTH
from spwm.tunnel.connection import State
from spwm.tunnel.frames import HEADER, HEADER_SIZE, PREFACE_SIZE, FrameType, encode_preface
from spwm.tunnel.info import tls_of
from spwm.tunnel.protocol import TunnelProtocol, client_identity_problem
from spwm.workers import WorkerPorts

__all__ = [
    "HandOn",
    "HandOnCounts",
    "HandOnReceiver",
    "HandOnTarget",
    "HandedOn",
    "encode_header",
    "first_frame",
    "handon_target",
    "hello_message",
    "parse_header",
    "socket_path",
]

#: the longest header line accepted (the agent's address and an exporter
#: value need under 200 bytes)
MAX_HEADER = 1024

#: how long a worker waits for another worker's hand-on socket to accept
CONNECT_TIMEOUT = 2.0


class HandedOn(Exception):
    """
    The connection went on to another worker (what its handshake waiters
    are told: it will not complete here).
    """


# -- pure ---------------------------------------------------------------------


def first_frame(data: bytes) -> tuple[bytes, bytes] | None:
    """
    The first frame of C{data} (the bytes after the preface) and what
    follows it, or C{None} while it is incomplete.
    """
    if len(data) < HEADER_SIZE:
        return None
    length = HEADER.unpack_from(data)[3]
    end = HEADER_SIZE + length
    if len(data) < end:
        return None
    return data[:end], data[end:]


def hello_message(frame: bytes) -> dict[str, Any] | None:
    """
    The agent's hello in a frame, or C{None} when the frame is not a
    CONTROL frame holding a JSON object with C{op} C{hello} (the tunnel
    core then refuses it as usual).
    """
    ftype, flags, channel, length = HEADER.unpack_from(frame)
    if ftype != FrameType.CONTROL or flags or channel:
        return None
    try:
        message = json.loads(frame[HEADER_SIZE:])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("op") != "hello":
        return None
    return message


@attrs.frozen
class HandOnTarget:
    """
    Where a connection goes on to.

    @ivar worker: the index of the worker that holds the session.
    @ivar kind: C{"resume"} or C{"attach"} (what the hello asks).
    @ivar session_id: the session it names.
    """

    worker: int
    kind: str
    session_id: str


def handon_target(hello: dict[str, Any] | None, ports: WorkerPorts, on_shared_port: bool) -> HandOnTarget | None:
    """
    Whether the connection whose hello is C{hello} goes on to another
    worker: one that came in on the shared port (C{on_shared_port}) and
    resumes or attaches to a session that names another worker of this
    contact point.  C{None}: it stays here (a new session, this worker's
    session, an id of no worker, a connection to this worker's own port,
    which a redirect serves).
    """
    if not on_shared_port or hello is None:
        return None
    for kind in ("resume", "attach"):
        asked = hello.get(kind)
        if not isinstance(asked, dict):
            continue
        session_id = asked.get("session_id")
        worker = ports.worker_of(session_id)
        if worker is not None and isinstance(session_id, str):
            return HandOnTarget(worker, kind, session_id)
        return None
    return None


def encode_header(
    host: str, port: int, exporter: bytes | None, tls: tuple[str, str | None] | None = None
) -> bytes:
    """
    The line a worker sends first on a hand-on connection: the agent's
    address, the keying material its TLS session exported (the user
    keys of the session are derived with it), or C{None} (plaintext),
    and the TLS version and cipher of that session (for the status of
    the worker that takes it, which sees none), or C{None}.
    """
    fields: dict[str, Any] = {"v": 1, "host": host, "port": port, "exporter": None if exporter is None else exporter.hex()}
    if tls is not None:
        fields["tls"] = list(tls)
    return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def parse_header(
    data: bytes,
) -> tuple[tuple[str, int, bytes | None, tuple[str, str | None] | None], bytes] | None:
    """
    C{((host, port, exporter, tls), rest)} from the bytes of a hand-on
    connection, or C{None} while the header line is incomplete; C{tls}
    is C{(version, cipher)} or C{None} (plaintext, or a worker that did
    not say).

    @raise ValueError: not a header this version makes.
    """
    end = data.find(b"\n")
    if end < 0:
        if len(data) > MAX_HEADER:
            raise ValueError("hand-on header too long")
        return None
    try:
        fields = json.loads(data[:end])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"hand-on header is not JSON: {e}") from None
    if not isinstance(fields, dict) or fields.get("v") != 1:
        raise ValueError("hand-on header of another version")
    host, port, exporter = fields.get("host"), fields.get("port"), fields.get("exporter")
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        raise ValueError("hand-on header without the agent's address")
    if exporter is not None:
        if not isinstance(exporter, str):
            raise ValueError("hand-on header with a bad exporter value")
        exporter = bytes.fromhex(exporter)
    tls = fields.get("tls")
    told: tuple[str, str | None] | None = None
    if isinstance(tls, list) and len(tls) == 2 and isinstance(tls[0], str) and (tls[1] is None or isinstance(tls[1], str)):
        told = (tls[0], tls[1])
    return (host, port, exporter, told), data[end + 1 :]


def socket_path(directory: str, index: int) -> str:
    """
    Worker C{index}'s hand-on socket in the supervisor's directory.
    """
    return os.path.join(directory, f"w{index}.sock")


# -- the worker that hands on -----------------------------------------------


@attrs.define
class HandOnCounts:
    """
    One worker's hand-ons, for the status.

    @ivar open: hand-ons from this worker open now.
    @ivar resumes: resumptions handed on so far.
    @ivar attaches: further connections handed on so far.
    @ivar failed: hand-ons that could not be made (the worker not there,
        the limit), answered here instead.
    @ivar received: connections taken from other workers so far.
    """

    open: int = 0
    resumes: int = 0
    attaches: int = 0
    failed: int = 0
    received: int = 0


class HandOn:
    """
    One worker's part: the hand-ons it makes (L{tunnel_class} reads each
    hello on the shared port) and the socket where it takes the others'
    (L{service}).

    @ivar limit: hand-ons open at once from this worker; past it a
        connection is answered here (a redirect) as before.
    @ivar backlog: the listen backlog of this worker's hand-on socket (the
        tunnel listener's: in a reconnect storm the other workers hand
        on as fast as the kernel spreads connections, and a full queue
        fails the hand-on, which then costs the agent a redirect).
    @ivar counts: the L{HandOnCounts}.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, directory: str, ports: WorkerPorts, shared_port: int, limit: int, backlog: int = 50
    ) -> None:
        self.reactor = reactor
        self.backlog = backlog
        self.directory = directory
        self.ports, self.shared_port = ports, shared_port
        self.limit = limit
        self.counts = HandOnCounts()
        self._log = ThrottledLog(self.log, reactor, Every(10.0))
        #: what the contact point's tunnel factory builds
        self.tunnel_class = partial(HandOnTunnelProtocol, handon=self)

    def target(self, frame: bytes, tunnel: TunnelProtocol) -> HandOnTarget | None:
        """
        Where the connection C{tunnel}, whose first frame is C{frame}, goes
        on to, or C{None}: it stays.
        """
        host = tunnel.transport.getHost()
        shared = getattr(host, "type", None) == "TCP" and getattr(host, "port", None) == self.shared_port
        hello = hello_message(frame)
        found = handon_target(hello, self.ports, shared)
        if found is None or hello is None:
            return None
        if tunnel.check_client_identity and client_identity_problem(tunnel.transport, str(hello.get("agent_id"))):
            # refused here, with the reason, as any other
            return None
        if self.counts.open >= self.limit:
            self.counts.failed += 1
            self.warn(
                "{peer}: {limit} connections handed on to other workers already; answered here",
                peer=tunnel.peer,
                limit=self.limit,
            )
            return None
        return found

    def warn(self, format: str, **fields: Any) -> None:
        """
        A warning, at most one per format each 10 s.
        """
        self._log.warn(format, format + " ({suppressed} more since the last such line)", **fields)

    def connect(self, worker: int, front: HandOnTunnelProtocol) -> Deferred[Any]:
        """
        Connect to worker C{worker}'s hand-on socket, relaying for C{front}.
        """
        endpoint = UNIXClientEndpoint(self.reactor, socket_path(self.directory, worker), timeout=CONNECT_TIMEOUT)
        return endpoint.connect(_RelayFactory(front))

    def started(self, target: HandOnTarget) -> None:
        self.counts.open += 1
        if target.kind == "resume":
            self.counts.resumes += 1
        else:
            self.counts.attaches += 1

    def ended(self) -> None:
        self.counts.open -= 1

    def service(self, tunnels: Any) -> Service:
        """
        The listener of this worker's hand-on socket, building its
        connections with C{tunnels} (the contact point's tunnel factory).
        """
        return _HandOnListener(self, tunnels)

    def status(self) -> dict[str, int]:
        counts = self.counts
        return {"handed_on_open": counts.open, "handon_failed": counts.failed, "handed_on_in": counts.received}


class HandOnTunnelProtocol(TunnelProtocol):
    """
    A contact point's tunnel on the shared port of a worker: it holds the
    agent's hello until it knows whether the connection stays (it then
    becomes a plain L{TunnelProtocol}, at no cost per frame from then on)
    or goes on to another worker (it then relays).
    """

    __slots__ = ()

    def __init__(self, *args: Any, handon: HandOn, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handon_state = _Pending(handon)

    def _plain(self) -> None:
        self._handon_state = None
        self.__class__ = TunnelProtocol  # type: ignore[assignment]

    def dataReceived(self, data: bytes) -> None:
        state: _Pending = self._handon_state
        if state.relay is not None:
            state.relay.write(data)
            return
        state.held += data
        if state.target is not None:
            return  # connecting: the agent's transport is paused
        connection = self.connection
        if connection is None:
            return
        if state.fed < PREFACE_SIZE:
            # the preface goes to the core (it answers with ours; the
            # agent sends its hello only then)
            head = state.held[state.fed : PREFACE_SIZE]
            state.fed += len(head)
            TunnelProtocol.dataReceived(self, head)
            if state.fed < PREFACE_SIZE:
                return
        if self.connection is None or self.connection.state is not State.AWAIT_HELLO:
            self._feed_rest(state)
            return
        split = first_frame(state.held[PREFACE_SIZE:])
        if split is None:
            return
        target = state.handon.target(split[0], self)
        if target is None:
            self._feed_rest(state)
            return
        state.target = target
        self.transport.pauseProducing()
        d = state.handon.connect(target.worker, self)
        d.addErrback(self._relay_failed)

    def _feed_rest(self, state: _Pending) -> None:
        rest = state.held[state.fed :]
        self._plain()
        if rest:
            TunnelProtocol.dataReceived(self, rest)

    def relay_up(self, relay: _Relay) -> None:
        """
        The connection to the other worker is made: this connection is its
        from now on.
        """
        state: _Pending = self._handon_state
        connection = self.connection
        if self._lost or self._closing or connection is None or connection.state is State.CLOSED:
            relay.transport.loseConnection()
            return
        assert state.target is not None
        # what the core did is undone: no timer, not a tunnel of ours
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        relay.preface = encode_preface(connection.version or 0, connection.version or 0)
        self.connection = None
        if self._registry is not None:
            self._registry.discard(self)
            self._registry = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(Failure(HandedOn(state.target.worker)))
        state.relay = relay.transport
        state.handon.started(state.target)
        addr = self.transport.getPeer()
        relay.transport.write(
            encode_header(str(getattr(addr, "host", "")), int(getattr(addr, "port", 0)), self._exported(), self._tls())
            + state.held
        )
        state.held = b""
        relay.transport.registerProducer(_Reading(self.transport), True)
        self.log.info(
            "{kind} of session {session_id} from {peer}: handed on to worker {worker}",
            kind="resumption" if state.target.kind == "resume" else "another connection",
            session_id=state.target.session_id,
            peer=self.peer,
            worker=state.target.worker,
        )
        self.transport.resumeProducing()

    def _tls(self) -> tuple[str, str | None] | None:
        version, cipher = tls_of(self.transport)
        return None if version is None else (version, cipher)

    def _exported(self) -> bytes | None:
        return TunnelProtocol.export_keying_material(self, EXPORTER_LABEL, KEY_LENGTH)

    def _relay_failed(self, reason: Failure) -> None:
        state: _Pending = self._handon_state
        assert state.target is not None
        state.handon.counts.failed += 1
        state.handon.warn(
            "could not hand {peer} on to worker {worker} ({reason}); answered here",
            peer=self.peer,
            worker=state.target.worker,
            reason=reason.getErrorMessage(),
        )
        if self._lost:
            return
        self._feed_rest(state)
        self.transport.resumeProducing()

    def relay_lost(self) -> None:
        """
        The other worker closed its side: so does the agent's.
        """
        state: _Pending | None = self._handon_state
        if state is not None and state.relay is not None:
            state.relay = None
            state.handon.ended()
        if not self._lost:
            self._close_transport()

    def connectionLost(self, reason: Failure | None = None) -> None:
        state: _Pending | None = self._handon_state
        if state is not None and state.relay is not None:
            relay, state.relay = state.relay, None
            state.handon.ended()
            relay.loseConnection()
        super().connectionLost(reason)

    def pauseProducing(self) -> None:
        state: _Pending | None = self._handon_state
        if state is not None and state.relay is not None:
            state.relay.pauseProducing()
        super().pauseProducing()

    def resumeProducing(self) -> None:
        state: _Pending | None = self._handon_state
        if state is not None and state.relay is not None:
            state.relay.resumeProducing()
        super().resumeProducing()


class _Pending:
    """
    What a L{HandOnTunnelProtocol} holds until it knows.
    """

    __slots__ = ("fed", "handon", "held", "relay", "target")

    def __init__(self, handon: HandOn) -> None:
        self.handon = handon
        #: every byte from the agent so far (until the hello is read)
        self.held = b""
        #: how many of them went to the tunnel core (the preface)
        self.fed = 0
        self.target: HandOnTarget | None = None
        #: the transport to the other worker, once relaying
        self.relay: Any = None


@implementer(IPushProducer)
class _Reading:
    """
    The agent's transport as the producer of what goes to the other
    worker: paused while that socket's buffer is full.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class _Relay(Protocol):
    """
    The connection to the other worker's hand-on socket: what it sends
    goes to the agent, after its preface (the agent has had ours).
    """

    transport: Any

    def __init__(self, front: HandOnTunnelProtocol) -> None:
        self.front = front
        #: our preface, which the other worker's must equal
        self.preface = b""
        self._skip: bytes | None = None

    def connectionMade(self) -> None:
        self.front.relay_up(self)

    def dataReceived(self, data: bytes) -> None:
        if self._skip is None or len(self._skip) < len(self.preface):
            got = (self._skip or b"") + data
            self._skip, data = got[: len(self.preface)], got[len(self.preface) :]
            if len(self._skip) < len(self.preface):
                return
            if self._skip != self.preface:
                self.front.log.warn("worker hand-on: the other worker chose another tunnel version; closing")
                self.transport.abortConnection()
                return
        if data:
            self.front.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.front.relay_lost()


class _RelayFactory(Factory):
    noisy = False

    def __init__(self, front: HandOnTunnelProtocol) -> None:
        self.front = front

    def buildProtocol(self, addr: Any) -> _Relay:
        return _Relay(self.front)


# -- the worker that takes them ----------------------------------------------


class HandedOnTunnelProtocol(TunnelProtocol):
    """
    A tunnel handed on by another worker: its TLS session is there, so
    its exporter value (which the session's user keys are derived with)
    came in the header.
    """

    __slots__ = ()

    def __init__(self, *args: Any, exporter: bytes | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handon_state = exporter

    def export_keying_material(self, label: bytes, length: int) -> bytes | None:
        if label == EXPORTER_LABEL and length == KEY_LENGTH:
            exported: bytes | None = self._handon_state
            return exported
        return None


class _HandedOnTransport:
    """
    The hand-on socket as the tunnel's transport: its peer is the agent's
    address (for the logs, the status and the per-address limit); no
    TCP socket under it (no TCP options, no kernel keepalive: the tunnel
    keeps itself alive with pings through the relay).
    """

    transport = None

    def __init__(self, transport: Any, peer: Any, tls: tuple[str, str | None] | None = None) -> None:
        self._transport = transport
        self._peer = peer
        #: the TLS version and cipher of the agent's connection, as the
        #: worker that handed it on terminates it (the status shows it)
        self.handed_on_tls = tls

    def getPeer(self) -> Any:
        return self._peer

    def getHandle(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HandOnReceiver(Protocol):
    """
    One connection handed on to this worker: its header, then a tunnel as
    the contact point's tunnel factory builds it (admission, limits,
    handshake gate), fed with the agent's bytes.
    """

    transport: Any

    def __init__(self, handon: HandOn, tunnels: Any) -> None:
        self.handon = handon
        self.tunnels = tunnels
        self.tunnel: TunnelProtocol | None = None
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.dataReceived(data)
            return
        self._buffer += data
        try:
            parsed = parse_header(self._buffer)
        except ValueError as e:
            self.handon.log.warn("refused a hand-on connection: {reason}", reason=str(e))
            self.transport.abortConnection()
            return
        if parsed is None:
            return
        (host, port, exporter, tls), rest = parsed
        self._buffer = b""
        addr = (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)
        tunnel = self.tunnels.buildProtocol(addr, partial(HandedOnTunnelProtocol, exporter=exporter))
        if tunnel is None:
            # over a limit (logged by the factory)
            self.transport.loseConnection()
            return
        # the worker that handed it on checked the client certificate
        tunnel.check_client_identity = False
        self.handon.counts.received += 1
        self.tunnel = tunnel
        tunnel.makeConnection(_HandedOnTransport(self.transport, addr, tls))
        if rest:
            tunnel.dataReceived(rest)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.tunnel is not None:
            self.tunnel.connectionLost(reason)


class _ReceiverFactory(Factory):
    noisy = False

    def __init__(self, handon: HandOn, tunnels: Any) -> None:
        self.handon = handon
        self.tunnels = tunnels

    def buildProtocol(self, addr: Any) -> HandOnReceiver:
        return HandOnReceiver(self.handon, self.tunnels)


class _HandOnListener(Service):
    """
    This worker's hand-on socket (a file left by a worker before it is
    replaced).
    """

    log = Logger()

    def __init__(self, handon: HandOn, tunnels: Any) -> None:
        self.handon = handon
        self.tunnels = tunnels
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        path = socket_path(self.handon.directory, self.handon.ports.index)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log.error("cannot take hand-ons from the other workers at {path}: {error}", path=path, error=str(e))
            return
        try:
            self.port = self.handon.reactor.listenUNIX(
                path, _ReceiverFactory(self.handon, self.tunnels), mode=0o600, backlog=self.handon.backlog
            )
        except Exception as e:
            self.log.error("cannot take hand-ons from the other workers at {path}: {error}", path=path, error=str(e))
            return
        self.log.info("taking connections handed on by the other workers at {path}", path=path)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
