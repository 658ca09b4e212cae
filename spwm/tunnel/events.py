# -*- test-case-name: tests.test_tunnel_connection -*-
"""
What a L{spwm.tunnel.connection.TunnelConnection} reports.  Every event is a
fact that has happened; the adapter dispatches on the event's class.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from attrs import frozen

from spwm.tunnel.frames import ChannelKind


@frozen
class HandshakeCompleted:
    """
    The handshake has finished: the tunnel is open.

    @ivar version: the protocol version in use.
    @ivar session_id: the session identity the contact point assigned.
    @ivar agent_id: the agent's identity.
    @ivar peer_hello: the peer's whole hello (agent) or welcome (contact)
        message, for capabilities and resumption data.
    """

    version: int
    session_id: str
    agent_id: str
    peer_hello: dict[str, Any]


@frozen
class SipReceived:
    """
    One SIP message arrived for application flow C{flow_id}; C{sealed}
    when its payload is sealed with a user's key (the adapter opens it).
    """

    flow_id: int
    data: bytes
    sealed: bool = False
    #: the payload starts with the message's number in its session
    #: (C{FLAG_SEQ}: both hellos said C{"sip-seq"})
    numbered: bool = False


@frozen
class ChannelOpened:
    """
    The peer opened a channel.
    """

    channel_id: int
    kind: ChannelKind
    meta: dict[str, Any]


@frozen
class ChannelClosed:
    """
    The peer closed (or refused) a channel.
    """

    channel_id: int
    code: int
    reason: str


class DatagramReceived(NamedTuple):
    """
    A datagram arrived on a channel.  A named tuple, not an attrs class: one
    of these is made per media packet.  C{component} holds the frame's
    component and sealed flag bits.
    """

    channel_id: int
    data: bytes
    component: int


@frozen
class StreamDataReceived:
    """
    Bytes arrived on a stream channel.
    """

    channel_id: int
    data: bytes


@frozen
class StreamEnded:
    """
    The peer ended its direction of a stream channel.
    """

    channel_id: int


@frozen
class PeerWentAway:
    """
    The peer is draining: it will close the tunnel after C{drain} seconds.

    @ivar final: the peer (an agent) stops for good and will not resume
        its session (C{"final": true}, only between peers that both said
        C{"final-stop"}).
    """

    code: int
    reason: str
    drain: float
    final: bool = False


@frozen
class TunnelClosed:
    """
    The tunnel is over; the adapter closes the transport after the last flush.

    @ivar by_peer: C{True} if the peer ended it with an ERROR frame.
    """

    code: int
    reason: str
    by_peer: bool


@frozen
class ControlReceived:
    """
    A control message with an op the tunnel core does not handle itself
    (resumption and later extensions); the application decides.
    """

    message: dict[str, Any]


@frozen
class RttSampled:
    """
    A PONG answered one of our timed PINGs (L{TunnelConnection.ping}).

    @ivar rtt: the round trip, in seconds.
    """

    rtt: float
