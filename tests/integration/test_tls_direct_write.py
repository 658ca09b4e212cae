"""
L{spwm.tunnel.tlsread}'s writes straight to a socket (a socket pair, no
reactor).
"""

from __future__ import annotations

import socket

from OpenSSL import SSL
from twisted.internet import ssl, tcp
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from spwm.testing.certs import TestCA
from spwm.tunnel.service import server_tls_options
from spwm.tunnel.tlsread import TunnelTLSFactory
from tests.test_tunnel_tlsread import Recorder


class DirectWriteTests(SynchronousTestCase):
    """
    L{TunnelTLSProtocol}'s writes over Twisted's TCP connection: to the
    socket at once when nothing is buffered, through the transport's
    buffer otherwise.  A socket pair stands for the TCP connection; no
    reactor runs (the test moves the bytes).
    """

    def setUp(self) -> None:
        ca = TestCA(self.mktemp())
        files = ca.issue(["contact.example.test"], "server")
        with open(ca.ca_file, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        self.reactor = MemoryReactorClock()
        clock = Clock()
        self.client_app, self.server_app = Recorder(), Recorder()
        client = TLSMemoryBIOFactory(
            ssl.optionsForClientTLS("contact.example.test", trustRoot=trust),
            True,
            Factory.forProtocol(lambda: self.client_app),
            clock=clock,
        ).buildProtocol(None)
        server = TunnelTLSFactory(
            server_tls_options(files.cert, files.key), False, Factory.forProtocol(lambda: self.server_app), clock=clock
        ).buildProtocol(None)
        a, b = socket.socketpair()
        for s in (a, b):
            s.setblocking(False)
            self.addCleanup(s.close)
        self.client = tcp.Connection(a, client, self.reactor)
        self.server = tcp.Connection(b, server, self.reactor)
        self.server_tls = server
        self.client_tls = client
        self.clock = clock
        for transport, protocol in ((self.client, client), (self.server, server)):
            transport.connected = True
            protocol.makeConnection(transport)
        self.pump()

    def pump(self) -> None:
        """
        Read and write both ends until nothing moves.
        """
        for _ in range(10000):
            moved = False
            self.clock.advance(0)
            for transport in (self.client, self.server):
                if transport in self.reactor.getWriters():
                    before = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
                    transport.doWrite()
                    moved = moved or len(transport.dataBuffer) - transport.offset + transport._tempDataLen != before
                try:
                    data = transport.socket.recv(65536)
                except BlockingIOError:
                    continue
                transport.protocol.dataReceived(data)
                moved = True
            if not moved:
                return
        self.fail("the two ends never went quiet")

    def test_written_at_once(self) -> None:
        """
        A write with nothing buffered reaches the socket in the same
        reactor turn: the transport neither buffers it nor asks the
        reactor to watch for writing.
        """
        self.assertIsInstance(self.server_tls._tcp, tcp.Connection)
        self.server_tls.write(b"media frame")
        self.clock.advance(0)  # the aggregated writes of this turn
        self.assertNotIn(self.server, self.reactor.getWriters())
        self.assertEqual((self.server.dataBuffer, self.server._tempDataLen), (b"", 0))
        self.pump()
        self.assertEqual(b"".join(self.client_app.received), b"media frame")

    def test_socket_full(self) -> None:
        """
        What the socket does not take is buffered by the transport, and
        what is written after it waits behind it: everything arrives, in
        order.
        """
        chunks = [bytes([i % 251]) * 50000 for i in range(40)]
        for chunk in chunks:
            self.server_tls.write(chunk)
            self.clock.advance(0)
        self.assertIn(self.server, self.reactor.getWriters())
        self.pump()
        self.assertEqual(b"".join(self.client_app.received), b"".join(chunks))
        self.client_app.received.clear()
        self.server_tls.write(b"after")
        self.pump()
        self.assertEqual(b"".join(self.client_app.received), b"after")

    def test_abort_sends_nothing_more(self) -> None:
        """
        An abort sends no TLS close alert (as with Twisted's class: the
        alert waits in the transport's buffer, which the abort drops).
        """
        self.server_tls.abortConnection()
        with self.assertRaises(BlockingIOError):
            self.client.socket.recv(65536)

    def test_close_alert_on_lose(self) -> None:
        """
        A clean close still sends the TLS close alert, after the data
        written before it.
        """
        self.server_tls.write(b"bye")
        self.server_tls.loseConnection()
        self.pump()
        self.assertEqual(b"".join(self.client_app.received), b"bye")
        self.assertTrue(self.client_tls.getHandle().get_shutdown() & SSL.RECEIVED_SHUTDOWN)
