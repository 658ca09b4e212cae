# -*- test-case-name: tests.test_tunnel_tlsread -*-
"""
TLS for the tunnel that hands the application everything one read of the
socket decrypted, in one C{dataReceived} call.

Twisted's L{TLSMemoryBIOProtocol} calls the application's C{dataReceived}
once per C{SSL_read}, and OpenSSL returns at most one TLS record per
C{SSL_read}. A peer that writes its media as it comes (the agent, a record
for every datagram or two) thus made the tunnel protocol run its whole
per-read work (the clock, the session's path bookkeeping, the frame
decoder's call, the flush and the timer's check) once per record, about
once per datagram. Here the records of one socket read are decrypted first
and delivered together; the bytes and their order are the same.

This overrides Twisted's private C{_flushReceiveBIO}; its loop is kept as
it is, only the delivery moves after it (C{tests.test_tunnel_tlsread}
checks the result against Twisted's own class).
"""

from __future__ import annotations

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure

#: The most one C{SSL_read} is asked for (Twisted's figure; a record holds
#: at most 16 kB).
_READ_SIZE = 2**15


class ReadBatchingTLSProtocol(BufferingTLSTransport):
    """
    L{BufferingTLSTransport} (Twisted's TLS with its writes aggregated per
    reactor turn) whose application receives all the records that one
    read of the socket brought in one C{dataReceived} call.

    What changes against Twisted's class: when the application closes or
    aborts the connection in C{dataReceived}, the records read with the
    ones it was handling are delivered to it still (Twisted stops between
    two records); the tunnel's protocol refuses input once it has closed.
    """

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
                self._deliver(chunks)
                self._tlsShutdownFinished(failure)
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


class ReadBatchingTLSFactory(TLSMemoryBIOFactory):
    """
    L{TLSMemoryBIOFactory} whose connections are
    L{ReadBatchingTLSProtocol}s.
    """

    protocol = ReadBatchingTLSProtocol
