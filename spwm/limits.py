# -*- test-case-name: tests.test_limits -*-
"""
Every limit of SPWM in one tree, with its default.

L{Limits} holds one branch per layer: L{TunnelLimits} (one tunnel and the
tunnels of a contact point), L{SipLimits}, L{MediaLimits} and
L{SessionLimits}.  The assembly (L{spwm.tap.assembly}) builds the tree once
from the configuration and hands each part its branch's values; the
parts' constructor defaults are the same values (C{tests.test_tap_config}
checks those still kept as module constants).  Times are in seconds, sizes
in bytes.
"""

from __future__ import annotations

from attrs import field, frozen, validators

from spwm.tunnel.frames import MAX_PAYLOAD

_pos = validators.gt(0)
_pos_time = validators.gt(0.0)


@frozen
class TunnelLimits:
    """
    Bounds on one tunnel, and on the tunnels of one half.

    @ivar max_frame_payload: largest frame payload accepted.
    @ivar handshake_timeout: time for the SPWM handshake to complete.
    @ivar keepalive_interval: send a ping when nothing was sent or nothing
        arrived for this long (at most one per interval).
    @ivar keepalive_timeout: declare the peer dead when nothing arrived for
        this long (counted from the last bytes received).
    @ivar media_deadline: a queued media datagram older than this is dropped.
    @ivar max_priority_queue: bytes of control and SIP frames waiting; past a
        quarter of it new SIP requests are refused with 503, past it the
        peer is not reading and the tunnel is closed.
    @ivar max_media_queue: bytes of media waiting; past it new datagrams are dropped.
    @ivar max_stream_queue: bytes of stream data waiting per tunnel.
    @ivar max_channels: open channels per tunnel.
    @ivar drain_time: how long a going-away tunnel lives on.
    @ivar max_tunnels: tunnels (handshaking ones included) a contact point
        accepts in total.
    @ivar max_tunnels_per_address: tunnels a contact point accepts from one
        source address.
    @ivar max_handshaking: tunnels a contact point lets handshake at once;
        while that many are, it stops accepting.
    @ivar retry_after_cap: the largest C{Retry-After} (seconds) of the
        agent's C{503} while no tunnel is up.
    @ivar max_held: SIP messages an agent with an on-demand tunnel holds
        while the tunnel comes up; more are answered as if no tunnel.
    @ivar hold_time: seconds those messages wait for the tunnel.
    """

    max_frame_payload: int = field(default=MAX_PAYLOAD, validator=[_pos, validators.le(MAX_PAYLOAD)])
    handshake_timeout: float = field(default=10.0, validator=_pos_time)
    keepalive_interval: float = field(default=15.0, validator=_pos_time)
    keepalive_timeout: float = field(default=45.0, validator=_pos_time)
    media_deadline: float = field(default=0.060, validator=_pos_time)
    max_priority_queue: int = field(default=4 * 1024 * 1024, validator=_pos)
    max_media_queue: int = field(default=1024 * 1024, validator=_pos)
    max_stream_queue: int = field(default=1024 * 1024, validator=_pos)
    max_channels: int = field(default=4096, validator=_pos)
    drain_time: float = field(default=30.0, validator=validators.ge(0.0))
    max_tunnels: int = field(default=10000, validator=_pos)
    max_tunnels_per_address: int = field(default=100, validator=_pos)
    max_handshaking: int = field(default=256, validator=_pos)
    retry_after_cap: int = field(default=30, validator=_pos)
    max_held: int = field(default=64, validator=_pos)
    hold_time: float = field(default=10.0, validator=_pos_time)


@frozen
class SipLimits:
    """
    Bounds of the SIP parts.

    @ivar max_message_size: largest SIP message accepted (at most 65535).
    @ivar udp_buffer: receive buffer of the SIP (and forward) UDP sockets.
    @ivar registers_per_minute: REGISTER requests one tunnel may send per
        minute (contact point; more get C{503}).
    @ivar users_per_tunnel: addresses-of-record one tunnel may register
        (contact point; one more gets C{403}).
    @ivar max_connections: outgoing TCP connections of the contact point's
        runner towards the operator network.
    @ivar max_queued: messages held per such connection while it opens.
    @ivar max_forward_senders: senders one agent UDP forward gives a channel.
    """

    max_message_size: int = field(default=65535, validator=[_pos, validators.le(65535)])
    udp_buffer: int = field(default=4 * 1024 * 1024, validator=_pos)
    registers_per_minute: int = field(default=30, validator=_pos)
    users_per_tunnel: int = field(default=64, validator=_pos)
    max_connections: int = field(default=64, validator=_pos)
    max_queued: int = field(default=64, validator=_pos)
    max_forward_senders: int = field(default=256, validator=_pos)


@frozen
class MediaLimits:
    """
    Bounds of the media relay.

    @ivar inactivity_timeout: a stream without media (and not on hold) for
        this long is released.
    @ivar receive_buffer: receive buffer of each relay socket.
    @ivar max_streams_per_dialog: media streams one dialog may open.
    @ivar max_pending_channels: media channels opened by the peer before
        the SDP that explains them.
    @ivar max_branches_per_stream: early branches (forks) kept per stream.
    """

    inactivity_timeout: float = field(default=60.0, validator=_pos_time)
    receive_buffer: int = field(default=256 * 1024, validator=_pos)
    max_streams_per_dialog: int = field(default=16, validator=_pos)
    max_pending_channels: int = field(default=256, validator=_pos)
    max_branches_per_stream: int = field(default=8, validator=_pos)


@frozen
class SessionLimits:
    """
    Bounds of the sessions that outlive a tunnel.

    @ivar resume_window: seconds a broken tunnel's calls and media wait to
        be resumed; 0: never suspend.
    @ivar max_dormant: dormant sessions (registrations without a tunnel)
        a contact point keeps; beyond, the oldest goes.
    """

    resume_window: float = field(default=60.0, validator=validators.ge(0.0))
    max_dormant: int = field(default=10000, validator=_pos)


@frozen
class Limits:
    """
    Every limit of one half, by layer.
    """

    tunnel: TunnelLimits = field(factory=TunnelLimits)
    sip: SipLimits = field(factory=SipLimits)
    media: MediaLimits = field(factory=MediaLimits)
    session: SessionLimits = field(factory=SessionLimits)
