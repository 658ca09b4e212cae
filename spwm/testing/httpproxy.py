"""
An HTTP proxy for tests and benchmarks that lets C{CONNECT} through to a
set of ports only (as many let it through to 443 only), and can cut every
connection it carries (a network change, for the agents behind it).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol

__all__ = ["ConnectProxy"]


class _ConnectTunnel(protocol.Protocol):
    """
    The proxy's connection to the CONNECT target: what it sends goes to
    the client.
    """

    transport: Any

    def __init__(self, client: _ConnectClient) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.client.target_up(self)

    def dataReceived(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.client.transport.loseConnection()


class _ConnectClient(protocol.Protocol):
    """
    One client of L{ConnectProxy}: its CONNECT, then its bytes.
    """

    transport: Any

    def __init__(self, proxy: ConnectProxy) -> None:
        self.proxy = proxy
        self.target: _ConnectTunnel | None = None
        self._head = b""

    def connectionMade(self) -> None:
        self.proxy.clients.append(self)

    def dataReceived(self, data: bytes) -> None:
        if self.target is not None:
            self.target.transport.write(data)
            return
        self._head += data
        if b"\r\n\r\n" not in self._head:
            return
        request, self._head = self._head.split(b"\r\n\r\n", 1)
        host, _, port = request.split(b"\r\n")[0].split(b" ")[1].rpartition(b":")
        if int(port) not in self.proxy.allowed:
            self.proxy.forbidden += 1
            self.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()
            return
        self.transport.pauseProducing()
        creator = protocol.ClientCreator(self.proxy.reactor, _ConnectTunnel, self)
        creator.connectTCP(host.decode(), int(port)).addErrback(lambda failure: self.transport.loseConnection())

    def target_up(self, target: _ConnectTunnel) -> None:
        self.target = target
        self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if self._head:
            target.transport.write(self._head)
        self._head = b""
        # each side stops reading while the other's send buffer is full
        target.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(target.transport, True)
        self.transport.resumeProducing()

    def connectionLost(self, reason: Any = None) -> None:
        self.proxy.clients.remove(self)
        if self.target is not None:
            self.target.transport.loseConnection()


class ConnectProxy(protocol.Factory):
    """
    An HTTP proxy that lets CONNECT through to the C{allowed} ports only
    (as many let it through to 443 only).
    """

    def __init__(self, reactor: Any, allowed: set[int] | None = None) -> None:
        self.reactor = reactor
        self.allowed: set[int] = set(allowed or ())
        #: CONNECTs refused (to a port not allowed)
        self.forbidden = 0
        self.clients: list[_ConnectClient] = []

    def cut(self) -> int:
        """
        Abort every connection carried now.

        @return: how many.
        """
        clients = list(self.clients)
        for client in clients:
            client.transport.abortConnection()
        return len(clients)

    def buildProtocol(self, addr: Any) -> _ConnectClient:
        return _ConnectClient(self)
