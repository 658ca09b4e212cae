# -*- test-case-name: tests.test_media_tcp -*-
"""
TCP media (RFC 4145: C{a=setup}, C{a=connection}; MSRP, RFC 4975/6135)
relayed through a tunnel stream channel.

A L{TcpMediaEndpoint} is one TCP m-line of one dialog on one half: a
listening port on our media address (we are I{passive} towards our side)
or an outgoing connection from it (we are I{active}), and at most one TCP
connection to the endpoint on our side, bridged to one stream channel of
the tunnel:

  - bytes from the TCP connection go to C{tunnel.send_stream_data}; the
    endpoint is registered with the tunnel as a producer of stream data
    (C{register_stream_producer}): while the tunnel's stream queue is over
    its limit the tunnel pauses it, and the TCP transport is paused; when
    the tunnel has written the queue down below half its limit it resumes
    its producers (round-robin), and the TCP transport is resumed;
  - bytes from the tunnel are written to the TCP connection; before it is
    connected they wait in a buffer of at most C{max_buffer} bytes; while
    the TCP transport tells us (as its producer) that its own buffer is
    full, at most C{max_buffer} more bytes are accepted, then the stream is
    given up ("receiver too slow"): the tunnel has no per-channel flow
    control, so pausing the whole tunnel for one slow TCP receiver would
    stall every call on it;
  - a half-close from our side (FIN) becomes C{end_stream}; the end of the
    stream from the tunnel becomes a half-close towards our side; the TCP
    connection closing (or failing to connect) ends the endpoint, and the
    manager then closes the channel (after the data already queued).

See C{docs/media.md}, "TCP media".
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spwm.media.relay import AllowPolicy, normalise_host

#: Bytes from the tunnel we keep for a TCP side that is not connected yet
#: or that does not read (per stream).
DEFAULT_MAX_BUFFER = 1024 * 1024

#: Seconds an outgoing TCP media connection may take.
DEFAULT_CONNECT_TIMEOUT = 10.0


@implementer(IPushProducer)
class _IntoTunnel:
    """
    The endpoint as a producer of stream data, registered with the tunnel:
    the tunnel pauses it while its stream queue is full and resumes it once
    the queue has drained.  (The endpoint itself is the producer its TCP
    transport pauses, for the other direction.)
    """

    def __init__(self, endpoint: TcpMediaEndpoint) -> None:
        self.endpoint = endpoint

    def pauseProducing(self) -> None:
        self.endpoint._pause_side()

    def resumeProducing(self) -> None:
        self.endpoint._resume_side()

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class _SideProtocol(Protocol):
    """
    The TCP connection to the endpoint on our side.
    """

    # a TCP transport (ITCPTransport, IConsumer, IPushProducer), set by
    # the reactor before any event
    transport: Any

    def __init__(self, endpoint: TcpMediaEndpoint) -> None:
        self.endpoint = endpoint

    def connectionMade(self) -> None:
        self.endpoint._made(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            self.endpoint._received(data)
        except Exception:
            self.endpoint.log.failure("unexpected error relaying TCP media")
            self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        self.endpoint._read_ended()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.endpoint._lost(self, reason)


class _ListenFactory(Factory):
    noisy = False

    def __init__(self, endpoint: TcpMediaEndpoint) -> None:
        self.endpoint = endpoint

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if not self.endpoint._accepts(addr):
            return None
        return _SideProtocol(self.endpoint)


class _ConnectFactory(ClientFactory):
    noisy = False

    def __init__(self, endpoint: TcpMediaEndpoint) -> None:
        self.endpoint = endpoint

    def buildProtocol(self, addr: Any) -> Protocol:
        return _SideProtocol(self.endpoint)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.endpoint._connect_failed(reason)


@implementer(IPushProducer)
class TcpMediaEndpoint:
    """
    One TCP media stream on our side, bridged to a tunnel stream channel.

    The manager creates it, calls L{listen} or L{connect} as the SDP roles
    require, L{attach}es the channel, and feeds it what the tunnel delivers
    (L{write}, L{end_from_tunnel}). The endpoint calls C{on_finished(self,
    reason)} once when its TCP side is over (closed, refused, failed, too
    slow); the manager then releases the stream. L{close} tears it down
    without calling back.

    @ivar role: C{"passive"} (we listen), C{"active"} (we connect) or
        C{None} before L{listen}/L{connect}.
    @ivar listening_port: the port we listen on, or C{None}.
    @ivar connected: a TCP connection to our side is up.
    @ivar ever_connected: a TCP connection was made at some point.
    @ivar bytes_in: bytes from our side sent into the tunnel.
    @ivar bytes_out: bytes from the tunnel written to our side.
    @ivar refused_connections: incoming connections refused (wrong host, a
        second connection).
    @ivar pauses: times the TCP side was paused because the tunnel's stream
        queue was full (the tunnel paused us).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        address: str,
        policy: AllowPolicy | None = None,
        clock: Any = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        on_finished: Callable[[TcpMediaEndpoint, str], None] | None = None,
    ) -> None:
        """
        @param reactor: provides C{IReactorTCP}.
        @param address: our media address (listen and bind on it).
        @param policy: which hosts we may connect to or accept from.
        @param clock: the manager's clock; C{reactor} if C{None} (the
            endpoint sets no timers of its own).
        @param max_buffer: bytes from the tunnel kept for our side before it
            connects, and written beyond what a congested TCP side accepts.
        @param on_finished: told once that the TCP side is over.
        """
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.address = address
        self.policy = policy if policy is not None else AllowPolicy(block_special=False)
        self.max_buffer = max_buffer
        self.connect_timeout = connect_timeout
        self.on_finished = on_finished
        self.role: str | None = None
        self.listening_port: int | None = None
        self.connected = False
        self.ever_connected = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.refused_connections = 0
        self.pauses = 0
        self._expected_host: str | None = None
        self._listener: Any = None
        self._connector: Any = None
        self._protocol: _SideProtocol | None = None
        self._tunnel: Any = None
        self._channel_id: int | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._early_in: list[bytes] = []
        self._early_bytes = 0
        self._tunnel_ended = False
        self._side_ended = False
        self._side_paused = False
        self._congested = False
        self._congested_bytes = 0
        self._into_tunnel = _IntoTunnel(self)
        self._finished = False

    # what the manager does

    @property
    def sockets(self) -> int:
        """
        Sockets this endpoint holds: its listener, its connection or
        pending connection attempt.
        """
        count = 1 if self._listener is not None else 0
        if self._protocol is not None or self._connector is not None:
            count += 1
        return count

    def expect(self, host: str | None) -> None:
        """
        Accept connections only from C{host} (the address the endpoint's
        SDP gave); C{None} or a host name: any host the policy permits.
        """
        self._expected_host = None if host is None else normalise_host(host)

    def listen(self, port: int) -> None:
        """
        Listen on C{port} of our media address for the one connection of
        our side's endpoint.

        @raise twisted.internet.error.CannotListenError: the port is taken.
        """
        self._listener = self.reactor.listenTCP(
            port, _ListenFactory(self), backlog=4, interface=self.address
        )
        self.role = "passive"
        self.listening_port = port

    def stop_listening(self) -> None:
        """
        Close the listening socket (the connection, if any, stays).
        """
        listener, self._listener = self._listener, None
        self.listening_port = None
        if listener is not None:
            listener.stopListening()

    def connect(self, host: str, port: int) -> bool:
        """
        Become active: stop listening and connect from our media address to
        our side's endpoint at C{host}:C{port}.

        @return: C{False} (and nothing done) if the policy refuses the host
            or the port is not usable; the caller gives the stream up.
        """
        self.stop_listening()
        self.role = "active"
        normal = normalise_host(host)
        if normal is None or not 0 < port < 65536 or not self.policy.permits(normal):
            return False
        self._expected_host = normal
        self._connector = self.reactor.connectTCP(
            normal,
            port,
            _ConnectFactory(self),
            timeout=self.connect_timeout,
            bindAddress=(self.address, 0),
        )
        return True

    def attach(self, tunnel: Any, channel_id: int) -> None:
        """
        Carry the bytes of our side on stream channel C{channel_id}, paused
        by the tunnel while its stream queue is full.  Bytes our side sent
        before are sent now.
        """
        self._unregister()
        self._tunnel = tunnel
        self._channel_id = channel_id
        tunnel.register_stream_producer(self._into_tunnel)
        early, self._early_in = self._early_in, []
        self._early_bytes = 0
        for data in early:
            self._to_tunnel(data)
        if self._side_ended and self._protocol is not None:
            self._end_tunnel()

    def write(self, data: bytes) -> None:
        """
        Bytes from the tunnel for our side: write them, or keep them until
        our side is connected.
        """
        if self._finished or not data:
            return
        protocol = self._protocol
        if protocol is None or not self.connected:
            if self._pending_bytes + len(data) > self.max_buffer:
                self._finish("too much data before the TCP media connection")
                return
            self._pending.append(data)
            self._pending_bytes += len(data)
            return
        if self._congested:
            self._congested_bytes += len(data)
            if self._congested_bytes > self.max_buffer:
                self._finish("TCP media receiver too slow")
                return
        self.bytes_out += len(data)
        protocol.transport.write(data)

    def end_from_tunnel(self) -> None:
        """
        The peer ended its direction of the stream: half-close towards our
        side once everything before it is written.
        """
        self._tunnel_ended = True
        if self._protocol is not None and self.connected and not self._pending:
            self._half_close()

    def close(self) -> None:
        """
        Tear down everything (listener, connection, attempt) without
        telling C{on_finished}.
        """
        self._finished = True
        self._teardown()

    # IPushProducer: the TCP transport tells us its write buffer is full

    def pauseProducing(self) -> None:
        self._congested = True

    def resumeProducing(self) -> None:
        self._congested = False
        self._congested_bytes = 0

    def stopProducing(self) -> None:
        pass

    # the TCP side (called by _SideProtocol and the factories)

    def _accepts(self, addr: Any) -> bool:
        host = getattr(addr, "host", None)
        ok = (
            not self._finished
            and self._protocol is None
            and isinstance(host, str)
            and (self._expected_host is None or normalise_host(host) == self._expected_host)
            and self.policy.permits(host)
        )
        if not ok:
            self.refused_connections += 1
        return ok

    def _made(self, protocol: _SideProtocol) -> None:
        if self._finished or (self._protocol is not None and self._protocol is not protocol):
            self.refused_connections += 1
            protocol.transport.abortConnection()
            return
        self._protocol = protocol
        self._connector = None
        self.connected = True
        self.ever_connected = True
        # one connection: stop accepting others
        self.stop_listening()
        transport = protocol.transport
        transport.registerProducer(self, True)
        if self._side_paused:
            # The tunnel's stream queue was full before our side connected.
            transport.pauseProducing()
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        for data in pending:
            self.bytes_out += len(data)
            transport.write(data)
        if self._tunnel_ended:
            self._half_close()

    def _received(self, data: bytes) -> None:
        if self._finished:
            return
        if self._channel_id is None:
            if self._early_bytes + len(data) > self.max_buffer:
                self._finish("too much data before the tunnel channel")
                return
            self._early_in.append(data)
            self._early_bytes += len(data)
            return
        self._to_tunnel(data)

    def _to_tunnel(self, data: bytes) -> None:
        self.bytes_in += len(data)
        try:
            # A full queue pauses us through _IntoTunnel: the answer is not needed.
            self._tunnel.send_stream_data(self._channel_id, data)
        except (ValueError, RuntimeError):
            self._finish("tunnel channel gone")

    def _read_ended(self) -> None:
        self._side_ended = True
        if self._channel_id is not None:
            self._end_tunnel()

    def _end_tunnel(self) -> None:
        try:
            self._tunnel.end_stream(self._channel_id)
        except (ValueError, RuntimeError):
            pass

    def _lost(self, protocol: _SideProtocol, reason: Failure | None) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self.connected = False
        self._finish("TCP media connection closed")

    def _connect_failed(self, reason: Failure) -> None:
        self._connector = None
        self._finish("TCP media connection failed")

    # internals

    def _half_close(self) -> None:
        assert self._protocol is not None
        transport = self._protocol.transport
        lose_write = getattr(transport, "loseWriteConnection", None)
        if lose_write is not None:
            lose_write()
        else:
            transport.loseConnection()

    def _pause_side(self) -> None:
        if self._side_paused or self._finished:
            return
        self._side_paused = True
        self.pauses += 1
        if self._protocol is not None:
            self._protocol.transport.pauseProducing()

    def _resume_side(self) -> None:
        if not self._side_paused:
            return
        self._side_paused = False
        if self._protocol is not None and not self._finished:
            self._protocol.transport.resumeProducing()

    def _unregister(self) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.unregister_stream_producer(self._into_tunnel)

    def _finish(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        self._teardown()
        if self.on_finished is not None:
            self.on_finished(self, reason)

    def _teardown(self) -> None:
        self._unregister()
        self.stop_listening()
        self._pending = []
        self._pending_bytes = 0
        self._early_in = []
        self._early_bytes = 0
        connector, self._connector = self._connector, None
        if connector is not None and _attempting(connector):
            connector.stopConnecting()
        protocol, self._protocol = self._protocol, None
        self.connected = False
        if protocol is not None:
            transport = protocol.transport
            try:
                transport.unregisterProducer()
            except RuntimeError:
                pass
            # Twisted writes out what is buffered before it closes.
            transport.loseConnection()


def _attempting(connector: Any) -> bool:
    return getattr(connector, "state", "connecting") == "connecting"
