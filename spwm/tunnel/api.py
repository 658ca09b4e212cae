# -*- test-case-name: tests.test_tunnel_api -*-
"""
The tunnel's application seam: what the parts of an agent or a contact
point may call on a tunnel, and what a tunnel calls on them.

Shaped like Conch's connection service: a channel has one handler, given
when the channel is opened (L{TunnelHandle.open_channel}) or returned by
the acceptor of its use when the peer opens it (L{ChannelAcceptor}); the
tunnel keeps the channel's handler and drops it when the channel or the
tunnel closes.  Nothing is broadcast: the life of a tunnel goes to
exactly one L{TunnelObserver}, which drives the parts by explicit calls.

One handler object serves many channels (the media manager handles every
media channel of every tunnel), so a handler's methods name the tunnel and
the channel: Conch's C{SSHChannel} minus the transport, plus the two
arguments that spare an object per channel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from attrs import frozen
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger

from spwm.tunnel.frames import ChannelKind, ErrorCode

if TYPE_CHECKING:
    from spwm.tunnel.protocol import TunnelProtocol

__all__ = [
    "ChannelAcceptor",
    "ChannelHandler",
    "Meta",
    "Refusal",
    "Router",
    "SipSink",
    "TunnelHandle",
    "TunnelObserver",
]

#: a channel's metadata: a small JSON-serialisable dict; C{meta["use"]} names its acceptor
Meta = dict[str, Any]


@runtime_checkable
class TunnelHandle(Protocol):
    """
    What the parts may call on a tunnel connection
    (L{spwm.tunnel.protocol.TunnelProtocol} is the real one,
    L{spwm.testing.tunnel.FakeTunnel} the tests' one).
    """

    peer: str

    @property
    def session_id(self) -> str: ...

    @property
    def agent_id(self) -> str: ...

    @property
    def is_open(self) -> bool: ...

    @property
    def congested(self) -> bool: ...

    def send_sip(self, flow_id: int, data: bytes) -> bool: ...

    def send_control(self, message: dict[str, Any]) -> bool: ...

    def open_channel(self, kind: ChannelKind, meta: Meta, handler: ChannelHandler | None = None) -> int: ...

    def close_channel(self, channel_id: int, code: int = 0, reason: str = "") -> None: ...

    def send_datagram(self, channel_id: int, data: bytes, component: int = 0) -> None: ...

    def send_stream_data(self, channel_id: int, data: bytes) -> bool: ...

    def end_stream(self, channel_id: int) -> None: ...

    def register_stream_producer(self, producer: IPushProducer) -> None: ...

    def unregister_stream_producer(self, producer: IPushProducer) -> None: ...

    def adopt_session(self, session_id: str) -> None: ...

    def route_datagrams(self, channel_id: int, first: Any, second: Any) -> None: ...

    def unroute_datagrams(self, channel_id: int) -> None: ...


class ChannelHandler(Protocol):
    """
    The events of the channels given to it.
    """

    def datagram_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes, component: int) -> None: ...

    def stream_data_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes) -> None: ...

    def stream_ended(self, tunnel: TunnelProtocol, channel_id: int) -> None: ...

    def channel_closed(self, tunnel: TunnelProtocol, channel_id: int, code: int, reason: str) -> None: ...


@frozen
class Refusal:
    """
    An acceptor's no: the channel is closed with C{REFUSED} and C{reason}.
    """

    reason: str


class ChannelAcceptor(Protocol):
    """
    Decides on the channels the peer opens for one use.
    """

    def accept(
        self, tunnel: TunnelProtocol, channel_id: int, kind: ChannelKind, meta: Meta
    ) -> ChannelHandler | Refusal: ...


class TunnelObserver(Protocol):
    """
    The one object that hears of a tunnel's life (the session logic).
    """

    def tunnel_established(self, tunnel: TunnelProtocol) -> None: ...

    def tunnel_lost(self, tunnel: TunnelProtocol, reason: str) -> None: ...

    def control_received(self, tunnel: TunnelProtocol, message: dict[str, Any]) -> None: ...


class SipSink(Protocol):
    """
    Where the SIP that comes out of a tunnel goes (a SIP runner).
    """

    def sip_received(self, tunnel: Any, flow_id: int, data: bytes) -> None: ...


class Router:
    """
    The tunnel application of an agent or a contact point: SIP to C{sip},
    a channel the peer opens to the acceptor of its C{meta["use"]}, the
    tunnel's life and control messages to the one C{observer}.

    The tunnel keeps each channel's handler, so the router has no table
    and no part needs a reference to it.
    """

    log = Logger()

    def __init__(self, sip: SipSink | None, acceptors: dict[str, ChannelAcceptor], observer: TunnelObserver | None) -> None:
        self.sip = sip
        self.acceptors = dict(acceptors)
        self.observer = observer

    def tunnel_established(self, tunnel: TunnelProtocol) -> None:
        if self.observer is not None:
            self.observer.tunnel_established(tunnel)

    def tunnel_lost(self, tunnel: TunnelProtocol, reason: str) -> None:
        if self.observer is not None:
            self.observer.tunnel_lost(tunnel, reason)

    def control_received(self, tunnel: TunnelProtocol, message: dict[str, Any]) -> None:
        if self.observer is not None:
            self.observer.control_received(tunnel, message)

    def sip_received(self, tunnel: TunnelProtocol, flow_id: int, data: bytes) -> None:
        if self.sip is not None:
            self.sip.sip_received(tunnel, flow_id, data)

    def channel_requested(
        self, tunnel: TunnelProtocol, channel_id: int, kind: ChannelKind, meta: Meta
    ) -> ChannelHandler | None:
        """
        @return: the channel's handler, or C{None} if it was refused (and
            closed).
        """
        use = meta.get("use")
        acceptor = self.acceptors.get(use) if isinstance(use, str) else None
        if acceptor is None:
            self.log.warn(
                "refusing channel {channel_id} from {peer}: no handler for use {use!r}",
                channel_id=channel_id,
                peer=tunnel.peer,
                use=use,
            )
            tunnel.close_channel(channel_id, ErrorCode.REFUSED, f"unknown channel use {use!r}")
            return None
        answer = acceptor.accept(tunnel, channel_id, kind, meta)
        if isinstance(answer, Refusal):
            tunnel.close_channel(channel_id, ErrorCode.REFUSED, answer.reason)
            return None
        return answer

    # Events of channels without a handler (none, unless a part refused
    # one that is still closing): dropped.
    def datagram_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes, component: int) -> None:
        pass

    def stream_data_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes) -> None:
        pass

    def stream_ended(self, tunnel: TunnelProtocol, channel_id: int) -> None:
        pass

    def channel_closed(self, tunnel: TunnelProtocol, channel_id: int, code: int, reason: str) -> None:
        pass
