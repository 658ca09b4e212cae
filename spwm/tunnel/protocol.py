# -*- test-case-name: tests.test_tunnel_protocol -*-
"""
The Twisted adapter of the tunnel core, and the factories of both ends.

L{TunnelProtocol} feeds a L{TunnelConnection} with what the transport
receives, hands the events to an application object (L{TunnelApplication},
in the services L{spwm.tunnel.api.Router}) and each channel's events to the
channel's handler (L{spwm.tunnel.api.ChannelHandler}), writes what the core
has to send unless the transport has paused us, and keeps one timer per
connection for the core's deadlines.
"""

from __future__ import annotations

import secrets
import socket
import struct
from typing import TYPE_CHECKING, Any, Callable, Protocol as TypingProtocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spwm.addr import peer as peer_text
from spwm.limits import TunnelLimits
from spwm.logthrottle import Every, ThrottledLog
from spwm.tunnel import events as ev
from spwm.tunnel.api import ChannelHandler
from spwm.tunnel.connection import ChannelLimitError, Role, State, TunnelConnection, TunnelNotOpenError
from spwm.tunnel.cipher import SEAL_OVERHEAD, UserCipher
from spwm.tunnel.frames import FLAG_COMPONENT, FLAG_SEALED, FLAG_SEQ, ChannelKind, ErrorCode, FrameType
from spwm.tunnel.timers import SharedTimer, shared_timers

_DATAGRAM = int(FrameType.DATAGRAM)
_SEQ = struct.Struct("!I")
#: what numbering a SIP message adds to its frame's payload at most (the
#: number, and the seal's overhead when ciphering)
_SIP_NUMBERED_ROOM = _SEQ.size + SEAL_OVERHEAD
if TYPE_CHECKING:
    from spwm.session.carrier import PathFront


def _not_connected(data: bytes) -> object:
    raise RuntimeError("tunnel not connected")

def _gone_sink(channel_id: int, data: bytes, flags: int) -> None:
    # the datagram sink of a lost connection: no bound method or closure
    # of it, which would keep it in a reference cycle
    return None


_ABORT_CODES = frozenset({ErrorCode.HANDSHAKE_TIMEOUT, ErrorCode.KEEPALIVE_TIMEOUT, ErrorCode.QUEUE_OVERFLOW})

__all__ = [
    "ChannelLimitError",
    "TunnelApplication",
    "TunnelProtocol",
    "AgentTunnelFactory",
    "ContactTunnelFactory",
]


#: why a contact point with mutual TLS refuses a QUIC connection that
#: would open or resume a session (it can join one, L{TunnelProtocol})
NO_CERTIFICATE_OVER_QUIC = (
    "mutual TLS: QUIC carries no client certificate, so it only joins a session opened over TCP"
)


def client_identity_problem(transport: Any, agent_id: str) -> str | None:
    """
    With mutual TLS, check that the agent's certificate names its agent id
    (as a DNS name, with service-identity).

    @return: what is wrong, or C{None} if the identity matches.
    """
    from service_identity import VerificationError
    from service_identity.hazmat import DNS_ID, verify_service_identity
    from service_identity.pyopenssl import extract_patterns

    get = getattr(transport, "getPeerCertificate", None)
    cert = get() if get is not None else None
    if cert is None:
        return "no client certificate"
    try:
        verify_service_identity(extract_patterns(cert), [DNS_ID(agent_id)], [])
    except (VerificationError, ValueError):
        from spwm.tunnel.service import cert_names

        return f"client certificate for {cert_names(cert)} does not match agent id {agent_id!r}"
    return None


def find_socket(transport: Any) -> socket.socket | None:
    """
    The TCP socket under a transport, looking through TLS and other
    wrapping transports; C{None} for in-memory transports.
    """
    for _ in range(8):
        if transport is None:
            return None
        handle = getattr(transport, "getHandle", None)
        if handle is not None:
            try:
                candidate = handle()
            except Exception:
                candidate = None
            if isinstance(candidate, socket.socket) or (
                hasattr(candidate, "setsockopt") and hasattr(candidate, "getsockopt") and hasattr(candidate, "fileno")
            ):
                return candidate
        transport = getattr(transport, "transport", None)
    return None


#: the kernel's keepalive probes of an idle tunnel, after the first one
KEEPALIVE_PROBES = 3

#: the longest C{TCP_KEEPIDLE} and C{TCP_KEEPINTVL} Linux takes (seconds):
#: a longer --keepalive-interval or --keepalive-timeout probes at this
MAX_KEEPALIVE_SECONDS = 32767

#: the longest C{TCP_USER_TIMEOUT} a socket option (a C{int}) holds, in ms
MAX_USER_TIMEOUT_MS = 2**31 - 1


def set_tcp_keepalive(sock: Any, interval: float, timeout: float) -> bool:
    """
    Let the kernel keep the TCP connection of C{sock} alive: a probe once
    it has been idle for C{interval}, then L{KEEPALIVE_PROBES} more spread
    over the rest of C{timeout}, and the connection closed (C{ETIMEDOUT})
    when none is answered; C{TCP_USER_TIMEOUT} closes it too once data sent
    has gone unacknowledged for C{timeout}.

    @return: C{True} when every option was taken; C{False} for a socket
        that is not TCP or a platform without these options.
    """
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
            return False
        idle = min(max(1, int(interval)), MAX_KEEPALIVE_SECONDS)
        probe = min(max(1, int(max(timeout - idle, 0.0) / KEEPALIVE_PROBES)), MAX_KEEPALIVE_SECONDS)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, probe)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, min(int(timeout * 1000), MAX_USER_TIMEOUT_MS))
    except (OSError, AttributeError):
        return False
    return True


class TunnelApplication(TypingProtocol):
    """
    What a tunnel hands its events to (L{spwm.tunnel.api.Router} in the
    services).  See C{docs/architecture.md}.

    C{channel_requested} may return the channel's L{ChannelHandler}: the
    tunnel then gives that channel's events to it, as it does for a
    channel opened with a handler.  The channel events below reach the
    application only for a channel without a handler.
    """

    def tunnel_established(self, tunnel: TunnelProtocol) -> None: ...

    def tunnel_lost(self, tunnel: TunnelProtocol, reason: str) -> None: ...

    def sip_received(self, tunnel: TunnelProtocol, flow_id: int, data: bytes) -> None: ...

    def channel_requested(
        self, tunnel: TunnelProtocol, channel_id: int, kind: ChannelKind, meta: dict[str, Any]
    ) -> ChannelHandler | None: ...

    def datagram_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes, component: int) -> None: ...

    def stream_data_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes) -> None: ...

    def stream_ended(self, tunnel: TunnelProtocol, channel_id: int) -> None: ...

    def channel_closed(self, tunnel: TunnelProtocol, channel_id: int, code: int, reason: str) -> None: ...


class HelloHold:
    """
    The type of L{HOLD}.
    """

    def __repr__(self) -> str:
        return "HOLD"


#: L{HelloSeal.seal_hello}'s answer when the hello is to wait (the seal
#: releases it later, L{TunnelProtocol.release_hello})
HOLD = HelloHold()


class HelloSeal(TypingProtocol):
    """
    What decides an agent's hello once the connection's TLS handshake is
    done (the hello waits for it): a hello that resumes a session gets its
    proofs, bound to the new connection's TLS session (its exporter: no
    challenge to wait for, a round trip sooner; C{docs/protocol.md},
    "Resumption"). L{spwm.security.resume.AgentResumption} is one; with
    several connections, L{spwm.session.carrier.PathSessions.seal} lets
    one connection at a time send proofs, and turns a connection made to
    join the session into one that resumes it when the session's last
    connection was lost meanwhile.
    """

    def seal_hello(self, path: TunnelProtocol, hello: dict[str, Any]) -> dict[str, Any] | HelloHold | None:
        """
        The hello's extra fields for C{path}, whose TLS handshake is done,
        given those it was made with (C{hello}), or C{None}: those go; or
        L{HOLD}: the hello waits until the seal calls
        L{TunnelProtocol.release_hello}, and is decided again then.
        """

    def sent(self, path: TunnelProtocol) -> None:
        """
        C{path}'s hello carries bound proofs (C{resume.bound}).
        """


@implementer(IPushProducer)
class TunnelProtocol(Protocol):
    """
    One tunnel connection, either end.

    @ivar connection: the L{TunnelConnection} core.
    @ivar app: the application it reports to.
    """

    # Slots: an idle contact point holds thousands of these (issue 15's
    # memory per idle tunnel); attributes set from outside still go into
    # a __dict__, made only when one is.
    __slots__ = ("_abort_timer", "_agent_id", "_clock", "_close_waiters", "_closing", "_established", "_face", "_go_away_waiters", "_handlers", "_handon_state", "_hello_on_hold", "_limits", "_lost", "_lost_reason", "_paused", "_registry", "_role", "_routes", "_seal", "_session_id", "_sink", "_stream_producers", "_streams_paused", "_timer", "_timer_at", "_waiters", "_want_ciphering", "_write", "app", "check_client_identity", "cipher", "close_info", "connected_at", "connection", "duplicates", "front", "go_away_info", "local_hello", "peer", "peer_hello", "ping_srtt", "refused_sealed", "source_host")

    log = Logger()
    #: TCP or TLS (the TLS protocol's transport); C{None} before the connection
    transport: Any
    #: C{--workers}: what the hand-on subclasses keep (L{spwm.handon});
    #: never set on a plain tunnel
    _handon_state: Any

    def __init__(
        self,
        role: Role,
        app: TunnelApplication,
        clock: IReactorTime,
        limits: TunnelLimits,
        *,
        agent_id: str = "",
        session_id: str = "",
        hello: dict[str, Any] | None = None,
        registry: set[TunnelProtocol] | None = None,
        want_ciphering: bool = False,
        seal: HelloSeal | None = None,
    ) -> None:
        """
        @param registry: a set that holds this protocol while it is connected.
        @param seal: agent: decides the hello when the TLS handshake is
            done (the hello waits for it): a resumption's or an attach's
            proofs, bound to this connection's TLS session.
        """
        self._seal = seal
        self._hello_on_hold = False
        self._role = role
        self._registry = registry
        #: the source address the contact point counts this tunnel under
        self.source_host: str | None = None
        #: contact point with mutual TLS: the agent's certificate must name its agent id
        self.check_client_identity = False
        self.app = app
        self._clock = clock
        self._limits = limits
        self._agent_id, self._session_id = agent_id, session_id
        #: the extra fields of the hello (agent) or welcome (contact point) we send
        self.local_hello: dict[str, Any] = dict(hello or {})
        self.connection: TunnelConnection | None = None
        self._waiters: list[Deferred[TunnelProtocol]] = []
        self._lost_reason: Failure | None = None
        self.peer = "?"
        #: when the connection was made (the clock's seconds), for the status
        self.connected_at: float | None = None
        self._paused = False
        self._timer: SharedTimer | None = None
        self._timer_at: float | None = None
        self._established = False
        self._lost = False
        self._closing = False
        self._abort_timer: IDelayedCall | None = None
        self.go_away_info: ev.PeerWentAway | None = None
        self.close_info: ev.TunnelClosed | None = None
        #: the peer's hello (agent) or welcome (contact point) message
        self.peer_hello: dict[str, Any] = {}
        self._close_waiters: list[Deferred[TunnelProtocol]] = []
        self._go_away_waiters: list[Deferred[TunnelProtocol]] = []
        # Sources of stream data (IPushProducer), resumed round-robin once
        # the stream queue has drained below its low-water mark.
        self._stream_producers: list[IPushProducer] = []
        self._streams_paused = False
        self._write: Callable[[bytes], object] = _not_connected
        self.refused_sealed = 0

        self._routes: dict[int, Any] = {}
        #: channel id -> its handler (L{open_channel}, or the application's
        #: answer to the peer's open)
        self._handlers: dict[int, ChannelHandler] = {}
        #: the session this connection is a path of (L{use_front}), or C{None}
        self.front: PathFront | None = None
        #: what the application and the channel handlers are told the
        #: tunnel is: this connection, or its session's front
        self._face: Any = self
        self.duplicates = 0
        #: the smoothed round trip of this connection's timed pings
        #: (seconds, RFC 6298 weights), or C{None} before the first
        self.ping_srtt: float | None = None
        #: the per-user ciphering of this tunnel (L{UserCipher}), or C{None}
        self.cipher: UserCipher | None = None
        self._want_ciphering = want_ciphering
        self._sink: Callable[[int, bytes, int], None] = self._first_datagram

    def when_established(self) -> Deferred[TunnelProtocol]:
        """
        A L{Deferred} that fires with this protocol once the handshake has
        completed, or fails with the reason if the connection is lost first.
        """
        if self._established:
            return succeed(self)
        if self._lost_reason is not None:
            return fail(self._lost_reason)
        d: Deferred[TunnelProtocol] = Deferred()
        self._waiters.append(d)
        return d

    def when_closed(self) -> Deferred[TunnelProtocol]:
        """
        A L{Deferred} that fires with this protocol once the connection is
        lost, established or not (L{lost_reason} then says why); it never
        fails.
        """
        if self._lost_reason is not None:
            return succeed(self)
        d: Deferred[TunnelProtocol] = Deferred()
        self._close_waiters.append(d)
        return d

    def when_going_away(self) -> Deferred[TunnelProtocol]:
        """
        A L{Deferred} that fires with this protocol when the peer sends
        go-away (L{go_away_info} then says why); it never fires for a
        tunnel that closes without one.
        """
        if self.go_away_info is not None:
            return succeed(self)
        d: Deferred[TunnelProtocol] = Deferred()
        self._go_away_waiters.append(d)
        return d

    @property
    def lost_reason(self) -> Failure | None:
        """
        Why the connection was lost, or C{None} while it is not.
        """
        return self._lost_reason

    @property
    def _core(self) -> TunnelConnection:
        connection = self.connection
        if connection is None:
            raise TunnelNotOpenError("tunnel not connected")
        return connection

    # -- identity ------------------------------------------------------------

    @property
    def session_id(self) -> str:
        """
        The contact point's name for this session.
        """
        return self.connection.session_id if self.connection else ""

    @property
    def agent_id(self) -> str:
        """
        The agent's identity.
        """
        return self.connection.agent_id if self.connection else ""

    # -- Protocol ----------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = peer_text(peer)
        self.connected_at = self._clock.seconds()
        self._write = self.transport.write
        if self._registry is not None:
            self._registry.add(self)
        if self._set_socket_options() and self._limits.tcp_keepalive:
            self.local_hello["tcp_keepalive"] = 1
        self.connection = TunnelConnection(
            self._role,
            self._clock.seconds(),
            limits=self._limits,
            agent_id=self._agent_id,
            session_id=self._session_id,
            hello=self.local_hello,
        )
        self.transport.registerProducer(self, True)
        if not self._hold_hello():
            self._flush()
        self._rearm()

    def _hold_hello(self) -> bool:
        """
        Agent with a seal, under TLS that says when its handshake is done
        (L{spwm.tunnel.tlsread}): hold the preface and the hello until
        then, when the seal decides the hello (L{HelloSeal}).

        @return: whether they are held.
        """
        if self._seal is None:
            return False
        when = getattr(self.transport, "when_handshake_done", None)
        if when is None or not when(self._tls_handshake_done):
            self._seal = None
            return False
        return True

    @property
    def hello_held(self) -> bool:
        """
        Whether the hello waits for the TLS handshake (L{HelloSeal}), or
        for its seal past it (L{HOLD}): what it says is decided then.
        """
        return self._seal is not None and self.connection is not None

    def _tls_handshake_done(self) -> None:
        """
        The TLS handshake is done: the hello held for it goes, as the
        seal decides it now (a resumption with its proofs bound to this
        connection), unless the seal holds it longer (L{HOLD}).
        """
        self._decide_hello()

    def release_hello(self) -> None:
        """
        The seal that held the hello past the TLS handshake (L{HOLD})
        decides it now.
        """
        if self._hello_on_hold:
            self._hello_on_hold = False
            self._decide_hello()

    def _decide_hello(self) -> None:
        seal = self._seal
        connection = self.connection
        if seal is None or connection is None or self._lost or connection.state is State.CLOSED:
            self._seal = None
            return
        try:
            hello = seal.seal_hello(self, dict(self.local_hello))
            if isinstance(hello, HelloHold):
                self._hello_on_hold = True
                return
            self._seal = None
            if hello is not None and connection.amend_hello(hello):
                self.local_hello = hello
                resume = hello.get("resume")
                if isinstance(resume, dict) and "bound" in resume:
                    seal.sent(self)
        except Exception:
            # the hello goes as it was made: a challenge is answered then
            self._seal = None
            self.log.failure("error deciding the hello for {peer}", peer=self.peer)
        self._flush()

    def _set_socket_options(self) -> bool:
        """
        Set up the TCP socket under the transport: no Nagle, a small
        kernel send queue, and (with C{limits.tcp_keepalive}) the kernel's
        keepalive, which probes the connection after C{keepalive_interval}
        without input and closes it once C{keepalive_timeout} has passed
        without an answer (C{TCP_USER_TIMEOUT} bounds unacknowledged data
        the same way).

        @return: whether the kernel's keepalive is set up (so the hello
            may offer C{tcp_keepalive}): C{False} without a TCP socket (in
            memory, QUIC) or when the options are refused.
        """
        # Keep the kernel's share of the send queue small, so that the media
        # deadline, not a deep socket buffer, decides what waits.  Under TLS
        # the transport's handle is the OpenSSL connection: walk down to the
        # TCP transport whose handle is the socket.
        sock = find_socket(self.transport)
        if sock is None:
            return False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            lowat = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
            sock.setsockopt(socket.IPPROTO_TCP, lowat, 16384)
        except OSError:
            pass
        if not self._limits.tcp_keepalive:
            return False
        return set_tcp_keepalive(sock, self._limits.keepalive_interval, self._limits.keepalive_timeout)

    def dataReceived(self, data: bytes) -> None:
        connection = self.connection
        if connection is None:
            return
        now = self._clock.seconds()
        if self.front is not None:
            self.front.path_received(self, now)
        try:
            events = connection.receive_data(data, now, self._sink)
            dispatch = _DISPATCH
            for event in events:
                dispatch[type(event)](self, event)
        except Exception:
            self.log.failure("unexpected error on tunnel from {peer}", peer=self.peer)
            closed = connection.close(ErrorCode.INTERNAL_ERROR, "internal error")
            if closed is not None:
                self._on_closed(closed)
        self._flush()
        self._rearm()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._abort_timer = None
        if self._registry is not None:
            self._registry.discard(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        why = self.close_info.reason if self.close_info else reason.getErrorMessage() if reason else "lost"
        self._lost_reason = reason or Failure(ConnectionError(why))
        self._go_away_waiters = []
        # The stream queue is gone with the connection: nothing waits any more.
        producers, self._stream_producers = self._stream_producers, []
        if self._streams_paused:
            self._streams_paused = False
            for producer in producers:
                producer.resumeProducing()
        # Close notifications first: whoever waits for the handshake then
        # finds the reason already told.
        closing, self._close_waiters = self._close_waiters, []
        for d in closing:
            d.callback(self)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(self._lost_reason)
        if self._established:
            self._established = False
            try:
                self.app.tunnel_lost(self, why)
            except Exception:
                self.log.failure("error in tunnel_lost for {peer}", peer=self.peer)
        # The channels are gone with the connection (a session's go on on
        # its other paths: its front decides).
        if self.front is None:
            self._handlers.clear()
        self._sink = _gone_sink

    # -- event handlers ----------------------------------------------------

    def _on_datagram(self, e: ev.DatagramReceived) -> None:
        self._sink(e.channel_id, e.data, e.component)

    def _on_channel_opened(self, e: ev.ChannelOpened) -> None:
        front = self.front
        if front is not None:
            # the other paths accept its frames from now on
            front.channel_registered(self, e.channel_id, e.kind, e.meta)
        handler = self.app.channel_requested(self._face, e.channel_id, e.kind, e.meta)
        if handler is not None:
            self._handlers[e.channel_id] = handler

    def _on_channel_closed(self, e: ev.ChannelClosed) -> None:
        self._routes.pop(e.channel_id, None)
        if self.cipher is not None:
            self.cipher.forget_channel(e.channel_id)
        if self.front is not None:
            self.front.channel_forgotten(self, e.channel_id)
        handler = self._handlers.pop(e.channel_id, None)
        if handler is not None:
            handler.channel_closed(self._face, e.channel_id, e.code, e.reason)
        else:
            self.app.channel_closed(self._face, e.channel_id, e.code, e.reason)

    def _on_stream_data(self, e: ev.StreamDataReceived) -> None:
        handler = self._handlers.get(e.channel_id)
        if handler is not None:
            handler.stream_data_received(self._face, e.channel_id, e.data)
        else:
            self.app.stream_data_received(self._face, e.channel_id, e.data)

    def _on_stream_ended(self, e: ev.StreamEnded) -> None:
        handler = self._handlers.get(e.channel_id)
        if handler is not None:
            handler.stream_ended(self._face, e.channel_id)
        else:
            self.app.stream_ended(self._face, e.channel_id)

    def _on_sip(self, e: ev.SipReceived) -> None:
        data = e.data
        cipher = self.cipher
        if cipher is not None:
            opened = cipher.open(cipher.flow_context(e.flow_id), FrameType.SIP, e.flow_id, data, e.sealed)
            if opened is None:
                return
            data = opened
        elif e.sealed:
            self.refused_sealed += 1
            return
        if e.numbered:
            # the session takes each message once, in order (a copy sent
            # again on this path after the carrier moved is dropped)
            if len(data) < 4:
                return
            front = self.front
            if front is not None and not front.sip_arrived(_SEQ.unpack_from(data)[0]):
                return
            data = data[4:]
        self.app.sip_received(self._face, e.flow_id, data)

    def _start_ciphering(self) -> None:
        self.cipher = UserCipher(0 if self._role is Role.AGENT else 1)
        self._sink = self._first_datagram

    def _first_datagram(self, channel_id: int, data: bytes, flags: int) -> None:
        # The sink is built on the first datagram after a change (start,
        # ciphering, joining a session) rather than at once: most of a
        # contact point's tunnels are idle and never need one.
        self._sink = sink = self._build_sink()
        sink(channel_id, data, flags)

    def _build_sink(self) -> Callable[[int, bytes, int], None]:
        """
        The datagram sink the core calls for each datagram (the media fast
        path), over this connection's (or its session's) routes and
        handlers, opening sealed datagrams when this tunnel ciphers and
        dropping the copies the session has had already (C{FLAG_SEQ}).
        """
        routes = self._routes
        handlers = self._handlers
        face = self._face
        app_datagram = self.app.datagram_received
        dedup = self.front.dedup if self.front is not None else None
        cipher = self.cipher

        def deliver(channel_id: int, data: bytes, flags: int) -> None:
            # The sink of a tunnel that does not cipher; the sealed sink
            # below calls it with what it opened, without FLAG_SEALED.
            if flags & FLAG_SEALED:
                # Sealed frames without ciphering on this tunnel are refused.
                self.refused_sealed += 1
                return
            if flags & FLAG_SEQ:
                if len(data) < 4:
                    return
                component = flags & FLAG_COMPONENT
                if dedup is not None and not dedup.accept(channel_id, component, _SEQ.unpack_from(data)[0]):
                    self.duplicates += 1
                    return
                data = data[4:]
                flags = component
            route = routes.get(channel_id)
            if route is not None:
                route[flags](data)
                return
            handler = handlers.get(channel_id)
            if handler is not None:
                handler.datagram_received(face, channel_id, data, flags)
            else:
                app_datagram(face, channel_id, data, flags)

        if cipher is None:
            return deliver
        channel_context = cipher.channel_context
        open_ = cipher.open

        def sealed_sink(channel_id: int, data: bytes, flags: int) -> None:
            plain = open_(channel_context(channel_id), _DATAGRAM, channel_id, data, bool(flags & FLAG_SEALED))
            if plain is None:
                return
            deliver(channel_id, plain, flags & (FLAG_COMPONENT | FLAG_SEQ))

        return sealed_sink

    def use_front(self, front: PathFront) -> None:
        """
        Make this connection a path of a session (C{front}): from now on
        the application and the channel handlers are told of C{front}, not
        of this connection; the channels' routes and handlers are the
        session's (shared by all its paths); datagrams stamped with a
        sequence number are given to the session's de-duplication; round
        trips and received frames are reported to C{front}; a ciphering
        connection seals and opens with the session's L{UserCipher}
        (C{front.cipher}).
        """
        front.routes.update(self._routes)
        front.handlers.update(self._handlers)
        if self.cipher is not None:
            # one cipher state per session: every path seals with the
            # session's counters (PathSessions only attaches a path whose
            # ciphering agrees with the session's)
            self.cipher = front.cipher
        self.front = front
        self._face = front
        self._routes = front.routes
        self._handlers = front.handlers
        self._sink = self._first_datagram

    def route_datagrams(self, channel_id: int, first: Any, second: Any) -> None:
        """
        Hand the datagrams of a channel straight to C{first(data)} (component
        0) and C{second(data)} (component 1), past the application's
        dispatch: the media relay's shortest path.
        """
        self._routes[channel_id] = (first, second)

    def unroute_datagrams(self, channel_id: int) -> None:
        """
        Give a channel's datagrams back to the application.
        """
        self._routes.pop(channel_id, None)

    def adopt_session(self, session_id: str) -> None:
        """
        Carry the session C{session_id} from now on (an input to the core,
        L{TunnelConnection.adopt_session}).
        """
        if self.connection is not None:
            self.connection.adopt_session(session_id)

    def bind_flow_key(self, flow_id: int, key: bytes) -> None:
        """
        Seal the SIP of flow C{flow_id} with a user's key, if this tunnel ciphers.
        """
        if self.cipher is not None:
            self.cipher.bind_flow(flow_id, key)

    def bind_channel_to_flow(self, channel_id: int, flow_id: int) -> None:
        """
        Seal channel C{channel_id} with the key of flow C{flow_id}, if this
        tunnel ciphers and the flow has a key.
        """
        if self.cipher is not None:
            self.cipher.bind_channel(channel_id, flow_id)

    def _on_handshake(self, e: ev.HandshakeCompleted) -> None:
        if self.check_client_identity:
            if getattr(self.transport, "client_certificates", True):
                problem = client_identity_problem(self.transport, e.agent_id)
            elif self.connection is not None and self.connection.attaching:
                # a further path of a live session (QUIC, no client
                # certificate): it carries nothing before it proves it
                # knows the session's attach key, which only the agent
                # the session's certificate names was given
                problem = None
            else:
                problem = NO_CERTIFICATE_OVER_QUIC
            if problem is not None:
                self.log.warn("refused tunnel from {peer}: {reason}", peer=self.peer, reason=problem)
                self.close(ErrorCode.REFUSED, problem)
                return
        self._established = True
        self.peer_hello = e.peer_hello
        if self._want_ciphering:
            if self._role is Role.CONTACT:
                agreed = "user-ciphering" in (e.peer_hello.get("capabilities") or [])
            else:
                agreed = e.peer_hello.get("user-ciphering") is True
            if agreed:
                self._start_ciphering()
            else:
                self.log.info("peer {peer} does not cipher per user; frames go unsealed", peer=self.peer)
        self.log.info(
            "tunnel up with {peer}: agent {agent_id}, session {session_id}, version {version}",
            peer=self.peer,
            agent_id=e.agent_id,
            session_id=e.session_id,
            version=e.version,
        )
        self.app.tunnel_established(self)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self)

    def _on_control(self, e: ev.ControlReceived) -> None:
        handler = getattr(self.app, "control_received", None)
        if handler is not None:
            handler(self, e.message)

    def _on_rtt(self, e: ev.RttSampled) -> None:
        srtt = self.ping_srtt
        self.ping_srtt = e.rtt if srtt is None else 0.875 * srtt + 0.125 * e.rtt
        if self.front is not None:
            self.front.rtt_sample(self, e.rtt)

    @property
    def rtt(self) -> float | None:
        """
        This connection's smoothed round trip in seconds, for the status
        (read when asked, never per frame): its timed pings' if it has
        sent any, else QUIC's estimate, else the kernel's TCP one
        (C{TCP_INFO}); C{None} where none is known.
        """
        if self.ping_srtt is not None:
            return self.ping_srtt
        quic = getattr(self.transport, "rtt", None)
        if isinstance(quic, tuple):
            return quic[0]
        from spwm.tunnel.info import tcp_rtt

        return tcp_rtt(find_socket(self.transport))

    def late_dropped(self, channel_id: int) -> int | None:
        """
        The datagrams of channel C{channel_id} this connection dropped in
        its media queue (past the media deadline, or the queue full), or
        C{None} for a channel that is not open on it.
        """
        connection = self.connection
        return None if connection is None else connection.media_dropped(channel_id)

    def announce_channel(self, channel_id: int) -> None:
        """
        Send the C{open} of a channel of the session opened on another
        connection (L{TunnelConnection.announce_channel}).
        """
        if self.connection is not None and not self._lost:
            self.connection.announce_channel(channel_id)
            self._flush()

    def ping(self) -> None:
        """
        Send a timed PING (its PONG gives the front a round-trip sample).
        """
        if self.connection is not None and not self._lost:
            self.connection.ping(self._clock.seconds())
            self._flush()

    def _on_goaway(self, e: ev.PeerWentAway) -> None:
        self.go_away_info = e
        self.log.info("peer {peer} is going away ({reason}); drain {drain} s", peer=self.peer, reason=e.reason, drain=e.drain)
        waiters, self._go_away_waiters = self._go_away_waiters, []
        for d in waiters:
            d.callback(self)

    def _on_closed(self, e: ev.TunnelClosed) -> None:
        self.close_info = e
        if e.code == ErrorCode.NO_ERROR or e.code == ErrorCode.GOING_AWAY:
            # GOING_AWAY: a drain's planned end (at once with a drain time
            # of 0), no fault
            self.log.info("tunnel with {peer} closed: {reason}", peer=self.peer, reason=e.reason)
        elif e.code == ErrorCode.HANDSHAKE_TIMEOUT and self._role is Role.AGENT and not e.by_peer:
            # the agent's own attempt: whoever made it (the tunnel
            # service, the QUIC prober) logs its failure with the reason,
            # in one line (twistd writes debug lines too)
            pass
        else:
            self.log.warn(
                "tunnel with {peer} closed {side}: {code} {reason}",
                peer=self.peer,
                side="by peer" if e.by_peer else "by us",
                code=ErrorCode(e.code).name if e.code in ErrorCode._value2member_map_ else e.code,
                reason=e.reason,
            )

    # -- application API ---------------------------------------------------

    def numbers_sip(self, size: int) -> bool:
        """
        Whether a SIP message of C{size} bytes goes numbered on this
        connection (L{send_sip} with a C{number}): it agreed C{sip-seq},
        and the message with its number still fits in a frame.
        """
        core = self._core
        return core.sip_seq and size + _SIP_NUMBERED_ROOM <= core.limits.max_frame_payload

    def send_sip(self, flow_id: int, data: bytes) -> bool:
        """
        Send one SIP message for application flow C{flow_id}.

        @return: C{False} if the tunnel is not open and the message was dropped.
        @raise ValueError: if the message is larger than a frame.
        """
        return self.send_numbered_sip(flow_id, data, None)

    def send_numbered_sip(self, flow_id: int, data: bytes, number: int | None) -> bool:
        """
        L{send_sip} with the message's number in its session (the front's
        L{spwm.session.paths.SipOrder}), sent with it (C{FLAG_SEQ}); only
        when L{numbers_sip} said so.  C{None}: as L{send_sip}.
        """
        if not self.is_open:
            return False
        core = self._core
        flags = 0
        if number is not None:
            data = _SEQ.pack(number & 0xFFFFFFFF) + data
            flags = FLAG_SEQ
        cipher = self.cipher
        context = cipher.flow_context(flow_id) if cipher is not None else None
        if context is not None:
            core.send_sip(flow_id, UserCipher.seal(context, FrameType.SIP, flow_id, data), FLAG_SEALED | flags)
        else:
            core.send_sip(flow_id, data, flags)
        self._flush()
        return True

    def send_control(self, message: dict[str, Any]) -> bool:
        """
        Send an application control message; C{False} if the tunnel is not open.
        """
        if not self.is_open:
            return False
        self._core.send_control(message)
        self._flush()
        return True

    def export_keying_material(self, label: bytes, length: int) -> bytes | None:
        """
        Keying material exported from this connection's TLS session (RFC
        5705), or C{None} for a plaintext tunnel.

        Under TLS our transport is Twisted's TLS protocol, an
        C{ISSLTransport} whose C{getHandle()} is the OpenSSL connection.
        """
        transport = self.transport
        if not ISSLTransport.providedBy(transport):
            return None
        handle: Any = transport
        export = getattr(handle.getHandle(), "export_keying_material", None)
        if export is None:
            return None
        try:
            return export(label, length)
        except Exception:
            return None

    def open_channel(self, kind: ChannelKind, meta: dict[str, Any], handler: ChannelHandler | None = None) -> int:
        """
        Open a channel; return its id.

        @param handler: gets the channel's events until it is closed
            (without one they go to the application).
        @raise ChannelLimitError: at the channel limit.
        """
        cid = self._core.open_channel(kind, meta)
        if handler is not None:
            self._handlers[cid] = handler
        self._flush()
        return cid

    def close_channel(self, channel_id: int, code: int = 0, reason: str = "") -> None:
        """
        Close a channel.
        """
        if self.connection is not None:
            self._routes.pop(channel_id, None)
            self._handlers.pop(channel_id, None)
            if self.cipher is not None:
                self.cipher.forget_channel(channel_id)
            self.connection.close_channel(channel_id, code, reason)
            self._flush()

    def send_datagram(self, channel_id: int, data: bytes, component: int = 0) -> None:
        """
        Send a datagram on a channel (the media hot path).
        """
        connection = self.connection
        assert connection is not None, "tunnel not connected"
        now = self._clock.seconds()
        cipher = self.cipher
        if cipher is not None:
            context = cipher.channel_context(channel_id)
            if context is not None:
                data = UserCipher.seal(context, _DATAGRAM, channel_id, data)
                component |= FLAG_SEALED
        if self._paused or self._lost:
            connection.send_datagram(channel_id, data, now, component)
            return
        frame = connection.datagram_frame(channel_id, data, now, component)
        if frame is None:
            # Queued ahead: the scheduler sends stream data too, so the
            # stream sources may resume (after the write, to keep order).
            frame = connection.data_to_send(now)
            if frame:
                self._write(frame)
            if self._streams_paused and connection.stream_queue_bytes <= connection.limits.max_stream_queue // 2:
                self._resume_streams()
            return
        self._write(frame)

    def send_stream_data(self, channel_id: int, data: bytes) -> bool:
        """
        Send stream bytes; C{False} means the stream queue is over its
        limit (the high-water mark): every registered stream producer has
        been paused, and is resumed once the queue drains.
        """
        connection = self._core
        more = connection.send_stream_data(channel_id, data)
        self._flush()
        # Still over the limit once the transport took what it could.
        if not more and not self._streams_paused and connection.stream_queue_bytes > connection.limits.max_stream_queue:
            self._pause_streams()
        return more

    def register_stream_producer(self, producer: IPushProducer) -> None:
        """
        Let the tunnel pause C{producer} (a source of stream data) while
        the stream queue is over its limit, and resume it once the queue
        has drained below half of it.  Producers are resumed round-robin,
        so the first one resumed changes from one drain to the next.
        """
        if self._lost or any(p is producer for p in self._stream_producers):
            return
        self._stream_producers.append(producer)
        if self._streams_paused:
            producer.pauseProducing()

    def unregister_stream_producer(self, producer: IPushProducer) -> None:
        """
        Forget a producer registered with L{register_stream_producer}.
        """
        self._stream_producers = [p for p in self._stream_producers if p is not producer]

    def _pause_streams(self) -> None:
        self._streams_paused = True
        for producer in list(self._stream_producers):
            producer.pauseProducing()

    def _resume_streams(self) -> None:
        # Below the low-water mark: resume every producer, starting one
        # further along each time, until one of them fills the queue again.
        self._streams_paused = False
        producers = self._stream_producers
        if not producers:
            return
        producers.append(producers.pop(0))
        for producer in list(producers):
            if self._streams_paused:
                break
            producer.resumeProducing()

    def end_stream(self, channel_id: int) -> None:
        """
        End our direction of a stream channel.
        """
        self._core.send_stream_data(channel_id, b"", fin=True)
        self._flush()

    def go_away(self, reason: str = "shutting down", drain: float | None = None) -> None:
        """
        Tell the peer we are draining.
        """
        if self.connection is not None:
            self.connection.go_away(self._clock.seconds(), reason, drain)
            self._flush()
            self._rearm()

    def close_for_good(self, reason: str) -> None:
        """
        The agent stops for good (its process ends, its keys with it):
        a peer that said C{"final-stop"} gets a go-away saying so
        (C{"final": true}, drain 0) before the close, so that it does
        not keep the session for a resumption that cannot come; an older
        peer gets the close alone, as before.
        """
        connection = self.connection
        if connection is not None and connection.final_stop and not self._lost:
            connection.go_away(self._clock.seconds(), reason, 0.0, final=True)
        self.close(ErrorCode.NO_ERROR, reason)

    @property
    def agent_stopped(self) -> bool:
        """
        Whether the peer said it stops for good (L{close_for_good}).
        """
        return self.go_away_info is not None and self.go_away_info.final

    def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "closed") -> None:
        """
        Close the tunnel with a reason.
        """
        if self.connection is None:
            self._close_transport()
            return
        closed = self.connection.close(code, reason)
        if closed is not None:
            self._on_closed(closed)
        self._flush()

    @property
    def is_open(self) -> bool:
        """
        Whether the handshake has completed and the tunnel is not closed.
        """
        return self.connection is not None and self.connection.state is State.OPEN

    @property
    def congested(self) -> bool:
        """
        Whether the tunnel's signalling backlog is over its high-water mark
        (L{TunnelConnection.congested}).
        """
        return self.connection is not None and self.connection.congested

    # -- output and timers -----------------------------------------------

    def _flush(self) -> None:
        connection = self.connection
        if connection is None or self._lost:
            return
        if not self._paused or connection.state is State.CLOSED:
            out = connection.data_to_send(self._clock.seconds())
            if out:
                self._write(out)
            if self._streams_paused and connection.stream_queue_bytes <= connection.limits.max_stream_queue // 2:
                self._resume_streams()
        else:
            closed = connection.check_queues()
            if closed is not None:
                self._on_closed(closed)
                out = connection.data_to_send(self._clock.seconds())
                if out:
                    self._write(out)
        if connection.state is State.CLOSED:
            self._close_transport()

    def _close_transport(self) -> None:
        # A TLS transport waits for its producer to go before it shuts down.
        if self._closing:
            return
        self._closing = True
        self.transport.unregisterProducer()
        code = self.close_info.code if self.close_info is not None else ErrorCode.NO_ERROR
        if code in _ABORT_CODES:
            # The peer is silent, stuck in its handshake or not reading:
            # do not wait for it to take our ERROR frame.
            self.transport.abortConnection()
            return
        # Let the ERROR frame (version mismatch, protocol error...) reach
        # the peer, but do not wait for ever: a TLS connection whose
        # handshake never finished would hold it, and so would a peer that
        # stops reading now.
        self.transport.loseConnection()
        grace = self._limits.keepalive_interval if self._established else 2.0
        self._abort_timer = self._clock.callLater(grace, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        if not self._lost:
            self.transport.abortConnection()

    def _rearm(self) -> None:
        if self.connection is None or self._lost:
            return
        deadline = self.connection.next_deadline()
        if self._timer is not None and self._timer.active() and deadline is not None:
            # The deadline moves later with every frame (it is computed from
            # the last-activity times): keep a timer that fires no later
            # than needed; it then finds nothing due and re-arms.  Only an
            # earlier deadline moves the timer.
            if self._timer_at is not None and self._timer_at <= deadline:
                return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self._clock.seconds())
            # one timer structure for all tunnels (spwm/tunnel/timers.py)
            self._timer = shared_timers(self._clock).call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            for event in self._core.handle_timer(self._clock.seconds()):
                _DISPATCH[type(event)](self, event)
        except Exception:
            self.log.failure("unexpected error in tunnel timer for {peer}", peer=self.peer)
            closed = self._core.close(ErrorCode.INTERNAL_ERROR, "internal error")
            if closed is not None:
                self._on_closed(closed)
        self._flush()
        self._rearm()

    # -- IPushProducer ---------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self._paused = True


#: the handler of each tunnel event, called as C{handler(protocol, event)}:
#: one table for every tunnel rather than a dict of bound methods each
_DISPATCH: dict[type, Callable[[TunnelProtocol, Any], None]] = {
    ev.DatagramReceived: TunnelProtocol._on_datagram,
    ev.HandshakeCompleted: TunnelProtocol._on_handshake,
    ev.SipReceived: TunnelProtocol._on_sip,
    ev.ChannelOpened: TunnelProtocol._on_channel_opened,
    ev.ChannelClosed: TunnelProtocol._on_channel_closed,
    ev.StreamDataReceived: TunnelProtocol._on_stream_data,
    ev.StreamEnded: TunnelProtocol._on_stream_ended,
    ev.PeerWentAway: TunnelProtocol._on_goaway,
    ev.ControlReceived: TunnelProtocol._on_control,
    ev.TunnelClosed: TunnelProtocol._on_closed,
    ev.RttSampled: TunnelProtocol._on_rtt,
}


class _TunnelFactory(Factory):
    noisy = False
    log = Logger()

    def __init__(self, app: TunnelApplication, clock: IReactorTime, limits: TunnelLimits | None = None) -> None:
        self.app = app
        self.clock = clock
        self.limits = limits or TunnelLimits()


class AgentTunnelFactory(_TunnelFactory):
    """
    Builds the agent's end of a tunnel.

    @ivar agent_id: the agent's identity, sent in the hello.
    @ivar hello: extra hello fields (capabilities, resumption data), or a
        callable returning them at connection time.
    """

    def __init__(
        self,
        app: TunnelApplication,
        clock: IReactorTime,
        agent_id: str,
        limits: TunnelLimits | None = None,
        hello: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
        user_ciphering: bool = False,
        seal: HelloSeal | None = None,
    ) -> None:
        super().__init__(app, clock, limits)
        self.agent_id = agent_id
        self.hello = hello
        self.user_ciphering = user_ciphering
        self.seal = seal

    def buildProtocol(self, addr: Any) -> TunnelProtocol:
        hello = dict((self.hello() if callable(self.hello) else self.hello) or {})
        if self.user_ciphering:
            hello["capabilities"] = sorted(set(hello.get("capabilities", [])) | {"user-ciphering"})
        return TunnelProtocol(
            Role.AGENT,
            self.app,
            self.clock,
            self.limits,
            agent_id=self.agent_id,
            hello=hello,
            want_ciphering=self.user_ciphering,
            seal=self.seal,
        )


class _Registry(set):
    """
    The set of connected tunnels, counting them per source host.
    """

    def __init__(self) -> None:
        super().__init__()
        self.per_host: dict[str, int] = {}

    def discard(self, protocol: Any) -> None:
        if protocol in self:
            super().discard(protocol)
            host = getattr(protocol, "source_host", None)
            if host is not None:
                left = self.per_host.get(host, 0) - 1
                if left > 0:
                    self.per_host[host] = left
                else:
                    self.per_host.pop(host, None)


class AdmissionFactory(Factory):
    """
    Applies the contact point's tunnel limits before another wrapper (TLS)
    builds anything, so a refused connection is closed at once instead of
    being wrapped around nothing.
    """

    noisy = False

    def __init__(self, tunnels: ContactTunnelFactory, wrapped: Factory) -> None:
        self._tunnels = tunnels
        self._wrapped = wrapped

    def buildProtocol(self, addr: Any) -> Any:
        if not self._tunnels.admits(addr):
            return None
        return self._wrapped.buildProtocol(addr)

    def doStart(self) -> None:
        self._wrapped.doStart()

    def doStop(self) -> None:
        self._wrapped.doStop()


class ContactTunnelFactory(_TunnelFactory):
    """
    Builds the contact point's end of each tunnel and tracks the open ones
    (handshaking ones included).  Refuses connections past C{max_tunnels}
    in total or C{max_per_host} from one source address, with a
    rate-limited log line.

    @ivar tunnels: the protocols of every connected tunnel.
    @ivar refused: connections refused by these limits.
    """

    def __init__(
        self,
        app: TunnelApplication,
        clock: IReactorTime,
        limits: TunnelLimits | None = None,
        *,
        max_tunnels: int = 10000,
        max_per_host: int = 100,
        check_client_identity: bool = False,
        user_ciphering: bool = False,
        paths: bool = True,
        on_connection: Callable[[TunnelProtocol], None] | None = None,
    ) -> None:
        """
        @param paths: offer several connections per session (the welcome
            says C{paths} and carries the attach key); C{False} is a
            contact point as before it (tests of the old protocol).
        @param on_connection: told of each connection accepted (the
            handshake gate, L{spwm.listenqueue.HandshakeGate}).
        """
        super().__init__(app, clock, limits)
        self.on_connection = on_connection
        self.check_client_identity = check_client_identity
        self.user_ciphering = user_ciphering
        self.paths = paths
        #: the UDP port of the contact point's QUIC listener (C{--quic-listen}),
        #: said in the welcome to agents that speak C{paths} (they may then
        #: attach a QUIC path to their session); C{None}: none
        self.quic_port: int | None = None
        #: C{--workers}: this worker's ports (L{spwm.workers.WorkerPorts}):
        #: its session ids name it, and the welcome says its own port
        #: (C{resume_port}) to every agent; C{None}: one process
        self.worker_ports: Any = None
        #: what a connection is built as: C{--workers} with hand-ons, one
        #: that reads the agent's hello first (L{spwm.handon.HandOn})
        self.tunnel_class: Callable[..., TunnelProtocol] = TunnelProtocol
        self.tunnels: _Registry = _Registry()
        self.max_tunnels = max_tunnels
        self.max_per_host = max_per_host
        self.refused = 0
        self._refusal_log = ThrottledLog(self.log, clock, Every(10.0))

    def admits(self, addr: Any) -> bool:
        """
        Whether a connection from C{addr} is within the tunnel limits (with
        a rate-limited log line when not).
        """
        host = getattr(addr, "host", None)
        if len(self.tunnels) >= self.max_tunnels:
            self.refused += 1
            self._warn_refused(
                "refused tunnel from {peer}: {count} tunnels open, limit {limit}",
                peer=host,
                count=len(self.tunnels),
                limit=self.max_tunnels,
            )
            return False
        if host is not None and self.tunnels.per_host.get(host, 0) >= self.max_per_host:
            self.refused += 1
            self._warn_refused(
                "refused tunnel from {peer}: {limit} tunnels from that address already",
                peer=host,
                limit=self.max_per_host,
            )
            return False
        return True

    def _warn_refused(self, format: str, **fields: Any) -> None:
        # at most one line per format per 10 s, saying how many were
        # suppressed in between (when any were)
        self._refusal_log.warn(format, format + " ({suppressed} more since the last such line)", **fields)

    def buildProtocol(self, addr: Any, kind: Callable[..., TunnelProtocol] | None = None) -> TunnelProtocol | None:
        """
        @param kind: what to build (a connection another worker handed on,
            L{spwm.handon}); C{None}: L{tunnel_class}.
        """
        host = getattr(addr, "host", None)
        if not self.admits(addr):
            return None
        protocol = (kind or self.tunnel_class)(
            Role.CONTACT,
            self.app,
            self.clock,
            self.limits,
            session_id=secrets.token_hex(8) if self.worker_ports is None else self.worker_ports.new_session_id(),
            hello={
                "challenge": secrets.token_hex(16),
                # a resuming hello's proofs bound to its connection
                # ("resume": {"bound": ...}) are checked and answered
                # without the challenge (spwm.session.manager)
                "resume_bound": 1,
                # this contact point makes a session key for an agent that
                # makes one too (spwm.security.keys): resumable without
                # per-user keys
                "session_key": 1,
                # an agent that stops for good says so (its go-away's
                # "final"): its session is not kept for a resumption
                "final-stop": 1,
                # a resumed session's forward flows are opened again from
                # here, for an agent whose hello says so too (spwm.forward)
                "reopen-forwards": 1,
                # several connections per session: the key a further
                # connection proves it knows (spwm.session.carrier)
                # ... whose SIP is numbered, acknowledged and sent again
                # when the carrier moves (spwm.session.paths.SipOrder)
                # ... and a further connection's attach proof in its
                # hello, bound to its TLS session, is checked at once
                **({"paths": 1, "attach_key": secrets.token_hex(32), "sip-seq": 1, "attach_bound": 1} if self.paths else {}),
                **({"quic_port": self.quic_port} if self.paths and self.quic_port else {}),
                # where this session is resumed and attached to (--workers)
                **({"resume_port": self.worker_ports.own} if self.worker_ports is not None else {}),
                **({"user-ciphering": True} if self.user_ciphering else {}),
                # per-user ciphering on every path of a session (one cipher
                # state per session): an older contact point kept a
                # ciphering agent to one connection
                **({"user-ciphering-paths": True} if self.paths and self.user_ciphering else {}),
            },
            registry=self.tunnels,
            want_ciphering=self.user_ciphering,
        )
        protocol.check_client_identity = self.check_client_identity
        if host is not None:
            protocol.source_host = host
            self.tunnels.per_host[host] = self.tunnels.per_host.get(host, 0) + 1
        if self.on_connection is not None:
            self.on_connection(protocol)
        return protocol

    def go_away_all(self, reason: str = "shutting down", drain: float | None = None) -> None:
        """
        Send go-away on every tunnel.
        """
        for tunnel in list(self.tunnels):
            tunnel.go_away(reason, drain)
