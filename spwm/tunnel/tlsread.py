# -*- test-case-name: tests.test_tunnel_tlsread -*-
"""
TLS for the tunnel, cheaper per read and per write than Twisted's own.

Reads: Twisted's L{TLSMemoryBIOProtocol} calls the application's
C{dataReceived} once per C{SSL_read}, and OpenSSL returns at most one TLS
record per C{SSL_read}. A peer that writes its media as it comes (the
agent, a record for every datagram or two) thus made the tunnel protocol
run its whole per-read work (the clock, the session's path bookkeeping,
the frame decoder's call, the flush and the timer's check) once per
record, about once per datagram. Here the records of one socket read are
decrypted first and delivered together; the bytes and their order are
the same.

Writes: the TLS bytes go to the TCP transport, which buffers them, asks
the reactor to watch the socket for writing (an C{epoll_ctl}), writes them
when the reactor next finds it writable and stops watching (another
C{epoll_ctl}): two system calls and a reactor dispatch per write, that is
per reactor turn with media flowing. Here, when the transport has nothing
buffered, the bytes are written to the socket at once; what the socket
does not take is buffered by the transport as before.

Both override private methods of Twisted's class (C{_flushReceiveBIO},
C{_flushSendBIO}; Twisted 26.10); C{tests.test_tunnel_tlsread} checks the
results against Twisted's own class.

The application's writes of one reactor turn are gathered and encrypted
together, as in Twisted's class; but where the reactor says when its turn
ends (L{spwm.leanpoll.turn_end}: the C{twistd} halves) they go out then
(L{_TurnWrites}), instead of in a C{callLater(0)} scheduled in every turn
that wrote: a timer made, put in the reactor's heap and run, for each
write of SIP or media into the tunnel.
"""

from __future__ import annotations

from typing import Any, Callable

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from spwm import leanpoll

#: The most one C{SSL_read} or one read of the send BIO asks for
#: (Twisted's figure; a record holds at most 16 kB).
_READ_SIZE = 2**15


class _TurnWrites:
    """
    The application's writes of one reactor turn, gathered and written
    (encrypted) together at the turn's end, or at once when they pass
    L{MAX_BUFFER_SIZE}: Twisted's C{_AggregateSmallWrites} with the
    reactor's turn end for its C{callLater(0)}.

    L{flush} writes what waits now (the connection closes);
    L{close}, once the connection is lost, too, and nothing after.
    """

    #: (Twisted's figure)
    MAX_BUFFER_SIZE = 64_000

    def __init__(self, write: Callable[[bytes], object], turn_end: Callable[[Callable[[], None]], None]) -> None:
        self._write = write
        self._turn_end = turn_end
        self._buffer: list[bytes] = []
        self._left = self.MAX_BUFFER_SIZE
        #: a flush asked of the turn's end, not yet run
        self._asked = False

    def write(self, data: bytes) -> None:
        # (a copy of a mutable buffer, as Twisted's)
        self._buffer.append(data + b"")
        self._left -= len(data)
        if self._left < 0:
            self.flush()
        elif not self._asked:
            self._asked = True
            self._turn_end(self._at_turn_end)

    def _at_turn_end(self) -> None:
        if self._asked:
            self._asked = False
            self.flush()

    def flush(self) -> None:
        buffer = self._buffer
        if buffer:
            data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
            buffer.clear()
            self._left = self.MAX_BUFFER_SIZE
            self._write(data)

    def close(self) -> None:
        self._asked = False
        self.flush()


class TunnelTLSProtocol(BufferingTLSTransport):
    """
    L{BufferingTLSTransport} (Twisted's TLS with its writes aggregated per
    reactor turn) whose application receives all the records that one
    read of the socket brought in one C{dataReceived} call, and whose
    writes go to the socket at once when nothing waits before them.

    What changes against Twisted's class: when the application closes or
    aborts the connection in C{dataReceived}, the records read with the
    ones it was handling are delivered to it still (Twisted stops between
    two records); the tunnel's protocol refuses input once it has closed.
    And bytes written leave sooner: an abort drops what the transport
    still buffers (the TLS close alert with it), as before, but not what
    was written to the socket at once.

    And the application can ask to hear when the handshake is done
    (L{when_handshake_done}), whichever protocols wrap it: the agent
    sends a resumption proof bound to the connection's keying material
    in its hello (L{spwm.tunnel.protocol.TunnelProtocol}).

    @ivar _tcp: the transport when it is Twisted's TCP connection (whose
        buffer can be seen to be empty), else C{None}: writes then go
        through the transport's C{write} only.
    """

    _tcp: tcp.Connection | None = None
    _on_handshake: Callable[[], None] | None = None

    def __init__(self, factory: TLSMemoryBIOFactory, wrappedProtocol: IProtocol, _connectWrapped: bool = True) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        turn_end = leanpoll.turn_end(factory._clock)
        if turn_end is not None:
            # (Twisted's class writes self._aggregator.write as self.write)
            self._aggregator = _TurnWrites(  # type: ignore[assignment]
                super(BufferingTLSTransport, self).write, turn_end
            )
            self.write = self._aggregator.write  # type: ignore[method-assign]

    def when_handshake_done(self, callback: Callable[[], None]) -> bool:
        """
        Call C{callback} once the TLS handshake is done, before any of
        the application's bytes written until then leave and before it
        reads any (one callback: a second replaces the first).

        @return: C{False} when the handshake is done already or the
            connection is gone (C{callback} is not called).
        """
        if self._handshakeDone or self._lostTLSConnection or self._aborted:
            return False
        self._on_handshake = callback
        return True

    def _checkHandshakeStatus(self) -> None:
        super()._checkHandshakeStatus()
        callback = self._on_handshake
        if callback is not None and self._handshakeDone:
            self._on_handshake = None
            callback()

    def makeConnection(self, transport: Any) -> None:
        if isinstance(transport, tcp.Connection):
            self._tcp = transport
        super().makeConnection(transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        # Twisted drops the wrapped protocol and the TLS connection here,
        # not the producer (the wrapped protocol, through its membrane)
        # that the protocol did not unregister before the loss: the two
        # would stay in a reference cycle until a full garbage
        # collection (spwm.gcpolicy), with all they hold.
        self._producer = None
        self._on_handshake = None

    def _flushReceiveBIO(self) -> None:
        # Twisted's loop (twisted.protocols.tls, 26.10), with the delivery
        # of the records gathered and done once, before anything that ends
        # the connection.
        chunks: list[bytes] = []
        recv = self._tlsConnection.recv
        while not self._lostTLSConnection:
            try:
                chunks.append(recv(_READ_SIZE))
            except WantReadError:
                break
            except ZeroReturnError:
                self._deliver(chunks)
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                failure = Failure()
                try:
                    self._deliver(chunks)
                    self._tlsShutdownFinished(failure)
                finally:
                    # its traceback holds this frame: kept here, the two
                    # (and the connection) would wait for a full
                    # garbage collection (spwm.gcpolicy)
                    del failure
        self._deliver(chunks)
        self._flushSendBIO()

    def _deliver(self, chunks: list[bytes]) -> None:
        """
        Hand the records gathered to the application (unless the
        connection was aborted) and empty C{chunks}.
        """
        if not chunks:
            return
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if not self._aborted:
            self.wrappedProtocol.dataReceived(data)

    def _flushSendBIO(self) -> None:
        try:
            data = self._tlsConnection.bio_read(_READ_SIZE)
        except WantReadError:
            # nothing in the send BIO right now
            return
        transport = self._tcp
        if (
            transport is None
            or self.disconnecting
            or transport.dataBuffer
            or transport._tempDataLen
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnecting
        ):
            # something waits before these bytes, or the connection is
            # going: the transport's own way (an abort then drops the TLS
            # close alert with the rest, as with Twisted's class)
            self.transport.write(data)  # type: ignore[union-attr]
            return
        sent = transport.writeSomeData(data)
        if isinstance(sent, BaseException):
            # the connection is lost: the transport's next write finds it
            transport.write(data)
        elif sent < len(data):
            transport.write(data[sent:])


class TunnelTLSFactory(TLSMemoryBIOFactory):
    """
    L{TLSMemoryBIOFactory} whose connections are L{TunnelTLSProtocol}s.
    """

    protocol = TunnelTLSProtocol


@implementer(IStreamClientEndpoint)
class TunnelTLSClientEndpoint:
    """
    C{wrapClientTLS} with L{TunnelTLSProtocol}: connects through
    C{endpoint} in TLS with C{creator}'s options, and gives the
    application's protocol.
    """

    def __init__(self, creator: Any, endpoint: IStreamClientEndpoint) -> None:
        self._creator = creator
        self._endpoint = endpoint

    def connect(self, protocol_factory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = TunnelTLSFactory(self._creator, True, protocol_factory)
        return self._endpoint.connect(factory).addCallback(_unwrap)


def _unwrap(protocol: Any) -> IProtocol:
    # the endpoint's protocol is the TLS layer: the application's is inside
    wrapped: IProtocol = protocol.wrappedProtocol
    return wrapped
