# -*- test-case-name: tests.test_tunnel_api -*-
"""
One fake tunnel for the tests of the parts that use a tunnel: it records
what they send and open, and satisfies L{spwm.tunnel.api.TunnelHandle}
(checked by C{tests.test_tunnel_api}, which checks the real
L{spwm.tunnel.protocol.TunnelProtocol} against the same protocol).

Channels opened with a handler keep it in C{handlers}, as the real tunnel
does; a test delivers the peer's events with L{FakeTunnel.deliver_datagram}
and friends.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer

from spwm.tunnel.api import ChannelHandler, Meta
from spwm.tunnel.frames import ChannelKind

__all__ = ["FakeTunnel"]


class FakeTunnel:
    """
    A tunnel connection in memory.

    @ivar sip_sent: C{(flow_id, data)} for each L{send_sip}.
    @ivar controls: each control message sent.
    @ivar opened: C{(channel_id, kind, meta)} for each channel opened.
    @ivar closed: C{(channel_id, code, reason)} for each channel closed.
    @ivar datagrams: C{(channel_id, data, component)} for each datagram sent.
    @ivar stream_data: channel id -> the stream bytes sent on it.
    @ivar ended: the stream channels ended.
    @ivar bound: C{(flow_id, key)} for each flow key bound.
    @ivar routes: channel id -> C{(first, second)} of L{route_datagrams}.
    @ivar handlers: channel id -> its handler.
    @ivar open_error: raised by L{open_channel} when set.
    """

    def __init__(
        self, session_id: str = "s1", peer: str = "192.0.2.1:5000", agent_id: str = "agent", first_channel: int = 1
    ) -> None:
        """
        @param first_channel: the id of the first channel opened (the
            next ones are 2 apart, as the agent's or the contact point's).
        """
        self._session_id = session_id
        self._agent_id = agent_id
        self.peer = peer
        self.up = True
        self.congested = False
        self.sip_sent: list[tuple[int, bytes]] = []
        self.controls: list[dict[str, Any]] = []
        self.opened: list[tuple[int, ChannelKind, Meta]] = []
        self.closed: list[tuple[int, int, str]] = []
        self.datagrams: list[tuple[int, bytes, int]] = []
        self.stream_data: dict[int, bytes] = {}
        self.ended: list[int] = []
        self.bound: list[tuple[int, bytes]] = []
        self.routes: dict[int, tuple[Any, Any]] = {}
        self.handlers: dict[int, ChannelHandler] = {}
        self.producers: list[IPushProducer] = []
        self.open_error: Exception | None = None
        self._next_channel = first_channel
        #: what L{export_keying_material} gives (C{None}: plaintext)
        self.exported: bytes | None = None

    def __repr__(self) -> str:
        return f"<FakeTunnel {self._session_id}>"

    @property
    def session_id(self) -> str:
        return self._session_id

    def export_keying_material(self, label: bytes, length: int) -> bytes | None:
        """
        A plaintext tunnel's: none (L{exported} when a test sets it).
        """
        return self.exported

    @property
    def agent_id(self) -> str:
        return self._agent_id

    @property
    def is_open(self) -> bool:
        return self.up

    def send_sip(self, flow_id: int, data: bytes) -> bool:
        if not self.up:
            return False
        self.sip_sent.append((flow_id, data))
        return True

    def send_control(self, message: dict[str, Any]) -> bool:
        if not self.up:
            return False
        self.controls.append(message)
        return True

    def open_channel(self, kind: ChannelKind, meta: Meta, handler: ChannelHandler | None = None) -> int:
        if self.open_error is not None:
            raise self.open_error
        channel_id = self._next_channel
        self._next_channel += 2
        self.opened.append((channel_id, kind, meta))
        if handler is not None:
            self.handlers[channel_id] = handler
        return channel_id

    def close_channel(self, channel_id: int, code: int = 0, reason: str = "") -> None:
        self.routes.pop(channel_id, None)
        self.handlers.pop(channel_id, None)
        self.closed.append((channel_id, code, reason))

    def send_datagram(self, channel_id: int, data: bytes, component: int = 0) -> None:
        self.datagrams.append((channel_id, data, component))

    def send_stream_data(self, channel_id: int, data: bytes) -> bool:
        self.stream_data[channel_id] = self.stream_data.get(channel_id, b"") + data
        return True

    def end_stream(self, channel_id: int) -> None:
        self.ended.append(channel_id)

    def register_stream_producer(self, producer: IPushProducer) -> None:
        self.producers.append(producer)

    def unregister_stream_producer(self, producer: IPushProducer) -> None:
        self.producers = [p for p in self.producers if p is not producer]

    def route_datagrams(self, channel_id: int, first: Any, second: Any) -> None:
        self.routes[channel_id] = (first, second)

    def unroute_datagrams(self, channel_id: int) -> None:
        self.routes.pop(channel_id, None)

    def adopt_session(self, session_id: str) -> None:
        self._session_id = session_id

    def bind_flow_key(self, flow_id: int, key: bytes) -> None:
        self.bound.append((flow_id, key))

    def bind_channel_to_flow(self, channel_id: int, flow_id: int) -> None:
        pass

    # -- the peer's side, for the tests ------------------------------------

    def deliver_datagram(self, channel_id: int, data: bytes, component: int = 0) -> None:
        """
        A datagram from the peer, as the real tunnel hands it on: to the
        channel's route, else to its handler.
        """
        route = self.routes.get(channel_id)
        if route is not None:
            route[component & 1](data)
            return
        handler = self.handlers.get(channel_id)
        if handler is not None:
            handler.datagram_received(self, channel_id, data, component)  # type: ignore[arg-type]

    def deliver_close(self, channel_id: int, code: int = 0, reason: str = "") -> None:
        """
        The peer closed a channel.
        """
        self.routes.pop(channel_id, None)
        handler = self.handlers.pop(channel_id, None)
        if handler is not None:
            handler.channel_closed(self, channel_id, code, reason)  # type: ignore[arg-type]
