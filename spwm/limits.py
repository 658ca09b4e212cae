# -*- test-case-name: tests.test_tunnel_connection -*-
"""
Every limit of the tunnel in one place, with its default.
"""

from __future__ import annotations

from attrs import field, frozen, validators

from spwm.tunnel.frames import MAX_PAYLOAD

_pos = validators.gt(0)


@frozen
class Limits:
    """
    Bounds on one tunnel.  Times are in seconds, sizes in bytes.

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
    @ivar max_pending_preface: bytes accepted before the preface is complete.
    """

    max_frame_payload: int = field(default=MAX_PAYLOAD, validator=[_pos, validators.le(MAX_PAYLOAD)])
    handshake_timeout: float = field(default=10.0, validator=_pos)
    keepalive_interval: float = field(default=15.0, validator=_pos)
    keepalive_timeout: float = field(default=45.0, validator=_pos)
    media_deadline: float = field(default=0.060, validator=_pos)
    max_priority_queue: int = field(default=4 * 1024 * 1024, validator=_pos)
    max_media_queue: int = field(default=1024 * 1024, validator=_pos)
    max_stream_queue: int = field(default=1024 * 1024, validator=_pos)
    max_channels: int = field(default=4096, validator=_pos)
    drain_time: float = field(default=30.0, validator=validators.ge(0))
