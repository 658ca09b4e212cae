"""
Tests for L{spwm.tunnel.api}: the tunnel handle protocol, checked against
the real tunnel and the tests' fake, and the router.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from spwm.limits import TunnelLimits
from spwm.testing.tunnel import FakeTunnel
from spwm.tunnel.api import Refusal, Router, TunnelHandle
from spwm.tunnel.connection import Role
from spwm.tunnel.frames import ChannelKind, ErrorCode
from spwm.tunnel.protocol import TunnelProtocol
from spwm.session.carrier import PathFront

_MEMBERS = [
    name
    for name in dir(TunnelHandle)
    if not name.startswith("_") and callable(getattr(TunnelHandle, name, None))
]


class HandleTests(SynchronousTestCase):
    """
    The real tunnel and the fake one both are L{TunnelHandle}s, with the
    same signatures.
    """

    def _real(self) -> TunnelProtocol:
        return TunnelProtocol(Role.AGENT, Router(None, {}, None), Clock(), TunnelLimits())

    def test_isinstance(self) -> None:
        """
        Both have every member of the protocol.
        """
        self.assertIsInstance(self._real(), TunnelHandle)
        self.assertIsInstance(FakeTunnel(), TunnelHandle)
        self.assertIsInstance(PathFront(Clock(), self._real(), b"k" * 32), TunnelHandle)
        self.assertNotIsInstance(object(), TunnelHandle)

    def test_quic_tunnel(self) -> None:
        """
        A tunnel over QUIC is the same L{TunnelProtocol} on a
        L{spwm.tunnel.quic.QuicTunnelTransport}: the parts get the very
        class they get over TLS/TCP, open and sending.
        """
        from aioquic.quic.connection import QuicConnection
        from twisted.internet.address import IPv4Address

        from spwm.limits import QuicLimits
        from spwm.tunnel.quic import QuicTunnelTransport, client_configuration

        clock = Clock()
        sent: list[bytes] = []
        quic = QuicConnection(configuration=client_configuration("contact.test", None, QuicLimits(), 45.0))
        transport = QuicTunnelTransport(
            quic, clock, lambda data, addr: sent.append(data), ("192.0.2.1", 443), IPv4Address("UDP", "192.0.2.2", 1)
        )
        quic.connect(("192.0.2.1", 443), now=clock.seconds())
        tunnel = self._real()
        transport.attach(tunnel)
        self.assertIs(type(tunnel), TunnelProtocol)
        self.assertIsInstance(tunnel, TunnelHandle)
        self.assertIs(tunnel.transport, transport)
        self.assertEqual(tunnel.peer, "192.0.2.1:443")
        self.assertTrue(sent)  # the QUIC Initial went out

    def test_signatures(self) -> None:
        """
        Every method takes the protocol's parameters, by name and default.
        """
        self.assertIn("open_channel", _MEMBERS)
        for name in _MEMBERS:
            want = [(p.name, p.default) for p in inspect.signature(getattr(TunnelHandle, name)).parameters.values()]
            for impl in (TunnelProtocol, FakeTunnel, PathFront):
                got = [(p.name, p.default) for p in inspect.signature(getattr(impl, name)).parameters.values()]
                self.assertEqual(got, want, f"{impl.__name__}.{name}")


class Recorder:
    """
    An acceptor, channel handler, observer and SIP sink that records.
    """

    def __init__(self, answer: Any = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.answer = self if answer is None else answer

    def accept(self, tunnel: Any, channel_id: int, kind: ChannelKind, meta: dict) -> Any:
        self.calls.append(("accept", channel_id))
        return self.answer

    def datagram_received(self, tunnel: Any, channel_id: int, data: bytes, component: int) -> None:
        self.calls.append(("datagram", channel_id, data, component))

    def stream_data_received(self, tunnel: Any, channel_id: int, data: bytes) -> None:
        self.calls.append(("stream", channel_id, data))

    def stream_ended(self, tunnel: Any, channel_id: int) -> None:
        self.calls.append(("end", channel_id))

    def channel_closed(self, tunnel: Any, channel_id: int, code: int, reason: str) -> None:
        self.calls.append(("closed", channel_id, code, reason))

    def tunnel_established(self, tunnel: Any) -> None:
        self.calls.append(("established",))

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        self.calls.append(("lost", reason))

    def control_received(self, tunnel: Any, message: dict) -> None:
        self.calls.append(("control", message))

    def sip_received(self, tunnel: Any, flow_id: int, data: bytes) -> None:
        self.calls.append(("sip", flow_id, data))


class RouterTests(SynchronousTestCase):
    """
    L{Router}: SIP to the sink, channels to their acceptor, life to the
    one observer and nobody else.
    """

    def test_accept_refuse_unknown(self) -> None:
        """
        The acceptor's handler is returned; a L{Refusal} and an unknown use
        close the channel with C{REFUSED}.
        """
        tunnel = FakeTunnel()
        good, bad = Recorder(), Recorder(Refusal("no thanks"))
        router = Router(None, {"good": good, "bad": bad}, None)
        self.assertIs(router.channel_requested(tunnel, 2, ChannelKind.DATAGRAM, {"use": "good"}), good)
        self.assertIsNone(router.channel_requested(tunnel, 4, ChannelKind.DATAGRAM, {"use": "bad"}))
        self.assertIsNone(router.channel_requested(tunnel, 6, ChannelKind.DATAGRAM, {"use": "nope"}))
        self.assertIsNone(router.channel_requested(tunnel, 8, ChannelKind.DATAGRAM, {}))
        self.assertEqual(
            tunnel.closed,
            [
                (4, ErrorCode.REFUSED, "no thanks"),
                (6, ErrorCode.REFUSED, "unknown channel use 'nope'"),
                (8, ErrorCode.REFUSED, "unknown channel use None"),
            ],
        )

    def test_lifecycle_to_the_observer_only(self) -> None:
        """
        A part that is a SIP sink and an acceptor hears no lifecycle: only
        the observer does.
        """
        tunnel = FakeTunnel()
        part, observer = Recorder(), Recorder()
        router = Router(part, {"media": part}, observer)
        router.tunnel_established(tunnel)
        router.sip_received(tunnel, 3, b"x")
        router.control_received(tunnel, {"op": "resume"})
        router.tunnel_lost(tunnel, "gone")
        self.assertEqual(part.calls, [("sip", 3, b"x")])
        self.assertEqual(observer.calls, [("established",), ("control", {"op": "resume"}), ("lost", "gone")])


class FakeTunnelTests(SynchronousTestCase):
    """
    The fake keeps handlers and routes as the real tunnel does.
    """

    def test_handler_and_route(self) -> None:
        """
        A datagram goes to the route if there is one, else to the handler;
        closing drops both.
        """
        tunnel = FakeTunnel()
        handler = Recorder()
        cid = tunnel.open_channel(ChannelKind.DATAGRAM, {"use": "x"}, handler)
        tunnel.deliver_datagram(cid, b"a", 1)
        got: list[bytes] = []
        tunnel.route_datagrams(cid, got.append, got.append)
        tunnel.deliver_datagram(cid, b"b")
        tunnel.deliver_close(cid, 0, "bye")
        tunnel.deliver_datagram(cid, b"c")
        self.assertEqual(handler.calls, [("datagram", cid, b"a", 1), ("closed", cid, 0, "bye")])
        self.assertEqual(got, [b"b"])
