"""
A contact point with two operator proxies (C{--sip-proxy} twice) on
loopback: it pings both with OPTIONS, sends a phone's REGISTER to the
first; the first stops answering (its socket closed): the contact point
says so in one log line and the next REGISTER goes to the second, whose
answer reaches the phone; the first comes back: requests go to it again.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import globalLogPublisher

from spwm.testing.phone import Phone, build_sip, parse_sip, uri_of
from spwm.testing.ports import free_port
from tests.integration.test_resumption import DIGEST, _LoopbackPair
from tests.integration.test_tunnel_loopback import wait_until


class Proxy(DatagramProtocol):
    """
    An operator proxy as far as the test needs: answers OPTIONS and
    REGISTER with 200 (the REGISTER's Contact with an expiry), and counts
    what it got by method.
    """

    def __init__(self) -> None:
        self.got: dict[str, int] = {}

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.answer(data, lambda out: self.transport.write(out, addr))

    def answer(self, data: bytes, send: Any) -> None:
        message = parse_sip(data)
        method = message.first.split(" ", 1)[0]
        self.got[method] = self.got.get(method, 0) + 1
        if method not in ("OPTIONS", "REGISTER"):
            return
        headers = [(name, value) for name, value in message.headers if name.lower() in ("via", "from", "call-id", "cseq")]
        headers.append(("To", (message.get("to") or "") + ";tag=op"))
        if method == "REGISTER":
            headers.append(("Contact", (message.get("contact") or "") + ";expires=300"))
        send(build_sip("SIP/2.0 200 OK", headers))


@defer.inlineCallbacks
def registered_alice(test: Any) -> Any:
    """
    Alice's phone behind the test's first agent, registered (200).
    """
    alice = Phone(reactor, "alice", "example.test", test.agents[0].config.sip_listen[0])
    alice.start()
    test.addCleanup(alice.stop)
    response = yield alice.register(authorization=DIGEST.format(user="alice"))
    test.assertEqual(response.status, 200)
    return alice


class TcpProxy(Protocol):
    """
    L{Proxy} over TCP: one connection of it (messages without bodies).
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            message, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.proxy.answer(message + b"\r\n\r\n", self.transport.write)


class ProxyFailoverTests(_LoopbackPair):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.ports = [free_port(), free_port()]
        self.proxies = [Proxy(), Proxy()]
        self.listening = [self.listen(i) for i in (0, 1)]
        self.contact_extra = [
            "--sip-proxy", self.proxy_name(0), "--sip-proxy", self.proxy_name(1),
            "--sip-proxy-ping", "0.3",
        ]  # fmt: skip
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "operator proxy" in str(event.get("log_format", "")):
                from twisted.logger import formatEvent

                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        yield super().setUp()

    def listen(self, index: int) -> Any:
        port = reactor.listenUDP(self.ports[index], self.proxies[index], interface="127.0.0.1")
        self.addCleanup(lambda: port.stopListening() if port.connected else None)
        return port

    def proxy_name(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index]};transport=udp"

    def stop(self, index: int) -> Any:
        """
        The proxy goes away.
        """
        return self.listening[index].stopListening()

    def proxies_up(self) -> dict[str, bool]:
        return self.contact.status.document()["sip"]["proxies"]

    @defer.inlineCallbacks
    def test_failover_and_back(self) -> Any:
        """
        Both proxies are pinged; the REGISTER goes to the first; the first
        stops: one warning, and the refresh goes to the second and is
        answered; the first comes back: one line, and the next refresh
        goes to it.
        """
        first, second = self.proxies
        yield wait_until(lambda: first.got.get("OPTIONS", 0) >= 2 and second.got.get("OPTIONS", 0) >= 2, timeout=10)
        alice = yield registered_alice(self)
        self.assertEqual((first.got.get("REGISTER"), second.got.get("REGISTER")), (1, None))
        # the first proxy goes away
        yield self.stop(0)
        yield wait_until(lambda: not self.proxies_up()[self.proxy_name(0)], timeout=10)
        (down,) = self.lines
        self.assertIn(f"operator proxy {self.proxy_name(0)} does not answer", down)
        self.assertIn(f"requests go to {self.proxy_name(1)}", down)
        response = yield alice.register(authorization=DIGEST.format(user="alice"))
        self.assertEqual(response.status, 200)
        self.assertEqual((first.got.get("REGISTER"), second.got.get("REGISTER")), (1, 1))
        self.assertEqual(self.contact.status.document()["sip"]["proxy"], self.proxy_name(1))
        metrics = self.contact.status.metrics.exposition()[0].decode()
        for index, value in ((0, "0.0"), (1, "1.0")):
            self.assertIn(f'spwm_sip_proxies{{key="{self.proxy_name(index)}",side="contact"}} {value}\n', metrics)
        # it comes back
        self.listening[0] = self.listen(0)
        yield wait_until(lambda: all(self.proxies_up().values()), timeout=10)
        self.assertEqual(len(self.lines), 2)
        self.assertIn("answers again", self.lines[1])
        response = yield alice.register(authorization=DIGEST.format(user="alice"))
        self.assertEqual(response.status, 200)
        self.assertEqual((first.got.get("REGISTER"), second.got.get("REGISTER")), (2, 1))
        self.assertEqual(uri_of(response.get("to") or ""), alice.aor)

    @defer.inlineCallbacks
    def test_none_answers(self) -> Any:
        """
        Both proxies stop: the phone's REGISTER is answered C{503} with
        C{Retry-After} at once (not after its transaction's 32 s) and
        reaches neither; one comes back: the next REGISTER goes to it.
        """
        first, second = self.proxies
        alice = yield registered_alice(self)
        yield self.stop(0)
        yield self.stop(1)
        yield wait_until(lambda: not any(self.proxies_up().values()), timeout=10)
        self.assertIn("requests go to none: new requests are answered 503 until one answers", self.lines[-1])
        asked = reactor.seconds()
        response = yield alice.register(authorization=DIGEST.format(user="alice"))
        self.assertEqual(
            (response.status, response.first, response.get("retry-after")),
            (503, "SIP/2.0 503 Service Unavailable (no operator proxy answers)", "10"),
        )
        self.assertLess(reactor.seconds() - asked, 5)
        self.assertEqual((first.got.get("REGISTER"), second.got.get("REGISTER")), (1, None))
        self.assertEqual(self.contact.status.document()["sip"]["events"]["no operator proxy answers"], 1)
        self.listening[1] = self.listen(1)
        yield wait_until(lambda: self.proxies_up()[self.proxy_name(1)], timeout=10)
        response = yield alice.register(authorization=DIGEST.format(user="alice"))
        self.assertEqual(response.status, 200)
        self.assertEqual((first.got.get("REGISTER"), second.got.get("REGISTER")), (1, 1))


class TcpProxyFailoverTests(ProxyFailoverTests):
    """
    The same with the first proxy over TCP (C{;transport=tcp}): its pings
    and the REGISTER go on the contact point's connection to it, and their
    responses come back on it.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.connections: list[TcpProxy] = []

        def closed() -> bool:
            return all(c.transport is None or not c.transport.connected for c in self.connections)

        # (runs last) the contact point closed its connections when it
        # stopped: wait until they are gone
        self.addCleanup(wait_until, closed, 5)
        yield super().setUp()

    def listen(self, index: int) -> Any:
        if index:
            return super().listen(index)

        def made() -> TcpProxy:
            connection = TcpProxy(self.proxies[0])
            self.connections.append(connection)
            return connection

        port = reactor.listenTCP(self.ports[0], Factory.forProtocol(made), interface="127.0.0.1")
        self.addCleanup(lambda: port.stopListening() if port.connected else None)
        return port

    def stop(self, index: int) -> Any:
        # its connections go with it
        for connection in self.connections if index == 0 else ():
            if connection.transport is not None:
                connection.transport.abortConnection()
        return super().stop(index)

    def proxy_name(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index]};transport={'tcp' if index == 0 else 'udp'}"


class ProxyNameTests(_LoopbackPair):
    """
    C{--sip-proxy NAME:PORT} whose name the operator moves to another
    address while the contact point runs (the resolver patched: a name of
    the test's own, first 127.0.0.1, then 127.0.0.2).
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        from spwm.tap import parts

        self.port = free_port()
        self.proxies = [Proxy(), Proxy()]
        for index, host in enumerate(("127.0.0.1", "127.0.0.2")):
            port = reactor.listenUDP(self.port, self.proxies[index], interface=host)
            self.addCleanup(port.stopListening)
        self.addresses: list[str] | OSError = ["127.0.0.1"]

        def resolve(host: str, family: int) -> list[str]:
            if host != "operator.spwm.test":
                raise OSError(f"unexpected name {host}")
            if isinstance(self.addresses, OSError):
                raise self.addresses
            return list(self.addresses)

        self.patch(parts, "resolve_all", resolve)
        self.contact_extra = ["--sip-proxy", f"operator.spwm.test:{self.port}", "--sip-proxy-resolve", "0.2"]
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "--sip-proxy" in str(event.get("log_format", "")) or "operator proxies now" in str(
                event.get("log_format", "")
            ):
                from twisted.logger import formatEvent

                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        yield super().setUp()

    @defer.inlineCallbacks
    def test_requests_follow_the_name(self) -> Any:
        """
        The REGISTER goes to the name's address; the name moves: one line,
        and the next REGISTER goes to the new address and is answered; the
        name stops resolving: one warning, the address stays in use, one
        line when it resolves again.
        """
        first, second = self.proxies
        alice = yield registered_alice(self)
        self.assertEqual((first.got.get("REGISTER"), second.got.get("REGISTER")), (1, None))
        self.assertEqual(self.lines, [])
        self.addresses = ["127.0.0.2"]
        yield wait_until(lambda: len(self.lines) >= 1, timeout=10)
        moved = f"127.0.0.2:{self.port};transport=udp"
        self.assertEqual(
            self.lines,
            [
                f"operator proxies now {moved} (the --sip-proxy names resolve to other addresses);"
                f" requests go to {moved}"
            ],
        )
        pool = self.contact.runner.core.proxies
        self.assertEqual([(p.host, p.port) for p in pool.proxies], [("127.0.0.2", self.port)])
        response = yield alice.register(authorization=DIGEST.format(user="alice"))
        self.assertEqual(response.status, 200)
        self.assertEqual((first.got.get("REGISTER"), second.got.get("REGISTER")), (1, 1))
        # the name stops resolving: the address in use stays
        self.addresses = OSError("Name or service not known")
        yield wait_until(lambda: len(self.lines) >= 2, timeout=10)
        self.assertEqual(
            self.lines[1],
            f"--sip-proxy: cannot resolve operator.spwm.test: Name or service not known; keeping {moved}"
            " until it resolves again",
        )
        response = yield alice.register(authorization=DIGEST.format(user="alice"))
        self.assertEqual(response.status, 200)
        self.assertEqual(second.got.get("REGISTER"), 2)
        self.addresses = ["127.0.0.2"]
        yield wait_until(lambda: len(self.lines) >= 3, timeout=10)
        self.assertEqual(self.lines[2], "--sip-proxy: operator.spwm.test resolves again")
        self.assertEqual(len(self.lines), 3)
