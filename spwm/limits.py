# -*- test-case-name: tests.test_limits -*-
"""
Every limit of SPWM in one tree, with its default.

L{Limits} holds one branch per layer: L{TunnelLimits} (one tunnel and the
tunnels of a contact point), L{SipLimits}, L{MediaLimits},
L{SessionLimits}, L{PathLimits} (the paths of one session) and
L{QuicLimits}.  The assembly (L{spwm.tap.assembly}) builds the tree once
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
    @ivar tcp_keepalive: offer to keep the tunnel alive with the kernel's
        TCP keepalive (and C{TCP_USER_TIMEOUT}) instead of PING frames
        while it is idle; used when both ends offer it (C{tcp_keepalive}
        in the hello and the welcome).
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
    tcp_keepalive: bool = True


@frozen
class SipLimits:
    """
    Bounds of the SIP parts.

    @ivar max_message_size: largest SIP message accepted (at most 65535).
    @ivar udp_buffer: receive buffer of the SIP (and forward) UDP sockets.
    @ivar registers_per_minute: REGISTER requests one tunnel may send per
        minute for one address-of-record (contact point; more get C{503};
        in all, 4 x C{users_per_tunnel}: L{spwm.sip.authz}).
    @ivar users_per_tunnel: addresses-of-record one tunnel may register
        (contact point; one more gets C{403}).
    @ivar max_connections: outgoing TCP connections of the contact point's
        runner towards the operator network.
    @ivar max_queued: messages held per such connection while it opens.
    @ivar max_forward_senders: senders one agent UDP forward gives a channel.
    @ivar max_stream_connections: connections one SIP TCP or TLS listening
        socket holds at once (the agent's towards applications, the
        contact point's operator-side one); one more is closed at once.
    @ivar first_message_timeout: seconds an accepted SIP connection has to
        bring its first complete SIP message; one that has not is closed
        (a phone sends its REGISTER at once; a connection that carried SIP
        stays open however long it idles, RFC 5626).
    """

    max_message_size: int = field(default=65535, validator=[_pos, validators.le(65535)])
    udp_buffer: int = field(default=4 * 1024 * 1024, validator=_pos)
    registers_per_minute: int = field(default=30, validator=_pos)
    users_per_tunnel: int = field(default=64, validator=_pos)
    max_connections: int = field(default=64, validator=_pos)
    max_queued: int = field(default=64, validator=_pos)
    max_forward_senders: int = field(default=256, validator=_pos)
    max_stream_connections: int = field(default=1024, validator=_pos)
    first_message_timeout: float = field(default=30.0, validator=_pos_time)


@frozen
class MediaLimits:
    """
    Bounds of the media relay.

    @ivar inactivity_timeout: a stream without media (and not on hold) for
        this long is released.
    @ivar receive_buffer: receive buffer of each relay socket.
    @ivar max_streams_per_dialog: media streams one dialog may open.
    @ivar max_pending_channels: media channels one session's peer may
        open before the SDP that explains them (all sessions together: at
        most L{spwm.media.manager.MAX_PENDING_TOTAL}).
    @ivar max_branches_per_stream: early branches (forks) kept per stream.
    @ivar pending_timeout: seconds a channel the peer opened may wait for
        the SDP that explains it before it is closed.
    @ivar relay_keep: seconds a released relay socket stays bound (and
        read, its datagrams dropped) for the next call on its port
        (L{spwm.media.reader.EpollRelaySockets}); 0: closed at once.
    """

    inactivity_timeout: float = field(default=60.0, validator=_pos_time)
    receive_buffer: int = field(default=256 * 1024, validator=_pos)
    max_streams_per_dialog: int = field(default=16, validator=_pos)
    max_pending_channels: int = field(default=1024, validator=_pos)
    max_branches_per_stream: int = field(default=8, validator=_pos)
    pending_timeout: float = field(default=10.0, validator=_pos_time)
    relay_keep: float = field(default=10.0, validator=validators.ge(0.0))


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


def _power_of_two(instance: object, attribute: object, value: int) -> None:
    if value < 8 or value > 65536 or value & (value - 1):
        raise ValueError(f"dedup_window must be a power of two from 8 to 65536, not {value}")


@frozen
class PathLimits:
    """
    Bounds of the paths (connections) of one session and of their
    scheduler (L{spwm.session.paths.PathScheduler}).

    A path is I{stalled} when the oldest thing it sent that is not
    answered yet is older than its stall bound,
    C{min(stall_ceiling, max(stall_floor, stall_rtt_factor * srtt +
    stall_rttvar_factor * rttvar))}, and I{dead} when it is older than
    C{max(dead_floor, dead_factor * stall bound)}.

    @ivar stall_floor: the smallest stall bound, whatever the RTT.
    @ivar stall_rtt_factor: the smoothed RTT's share of the stall bound.
    @ivar stall_rttvar_factor: the RTT variation's share of the stall bound.
    @ivar stall_ceiling: the largest stall bound, whatever the RTT.
    @ivar stall_evidence_grace: a path overdue past its stall bound
        stalls only once the peer was heard on another path since its
        oldest unanswered frame went (without that, the peer's process or
        the whole network is quiet, and moving or copying the media gains
        nothing: it waits for its dead bound), and this long after the
        later of that frame and the end of the other path's last pause
        (C{stall_floor} / 2 without a frame: a peer back from a pause of
        its own answers every path in one turn, a few ms apart); not when
        its kernel retransmits after a timeout, nor for a lone path
        (L{spwm.session.paths.PathScheduler}).
    @ivar dead_factor: the dead bound in stall bounds.
    @ivar dead_floor: the smallest dead bound.
    @ivar initial_rtt: the RTT assumed of a path before its first sample
        (its variation is half of it).
    @ivar carrier_floor: SIP and control (the carrier) leave a stalled
        path only once it is overdue by this much (or by its stall bound
        when that is longer), unless its kernel retransmits after a
        timeout: media leaves at the stall bound, but a late answer of a
        busy peer is not helped by another connection to the same peer,
        and each move lets SIP on the new connection overtake SIP still
        queued on the old one (a BYE ahead of its ACK).
    @ivar ping_fraction: a path whose oldest unanswered data is older than
        this share of its stall bound asks for a ping (so that a path that
        only sends is answered before the bound).
    @ivar probe_interval: while media flows, a path that sent nothing for
        this long asks for a ping (so that an idle path's death is known
        before media needs it).
    @ivar duplicate_window: media is sent on every path that is up for this
        long after a loss or a stall was seen.
    @ivar loss_memory: a loss seen within this long of the one before it
        means the losses keep coming (a lossy link, not one accident); 0:
        never.
    @ivar lossy_window: after such a loss media is sent on every path that
        is up for this long (at least C{duplicate_window}): on a lossy link
        the duplication stays on while losses keep coming, instead of
        starting anew, one loss too late, each time.
    @ivar start_copies: media that starts after at least C{start_pause}
        without any (a call's first datagrams, a talk spurt after a long
        silence) is sent on every path that is up for this long, as after
        a loss, when the round trip of the path it would go on is known
        and at least C{count_late_rtt}: on such a link one loss holds a
        connection's media past the 150 ms a voice packet may take, and
        the first loss of a call would otherwise open the duplication a
        round trip too late, with the call's first words already held
        behind it (the losses seen before the pause are long forgotten
        between calls); 0: never.
    @ivar start_pause: see C{start_copies}.
    @ivar switch_hold: a QUIC path must be up this long before media moves
        to it from another path that is up; doubled for each stall of that
        path within C{flap_memory}, up to C{max_switch_hold}.
    @ivar max_switch_hold: the longest such hold.
    @ivar flap_memory: how long a path's stall counts against it.
    @ivar dedup_window: datagrams (sequence numbers) remembered per channel
        and component by the receiving session; a power of two.
    @ivar dedup_max_channels: channels the de-duplication remembers; past
        it, the oldest is forgotten.
    @ivar dedup_slow: a sequence number the receiving session skipped
        is a sign of loss (the media is then copied) only when it is
        still missing this long after the next one came, or comes this
        late: datagrams spread over several paths arrive out of order by
        less, and without the bound the reordering of the spread kept the
        copying (and so the spread) going on a clean network for good.
    @ivar max_paths: paths one session may hold.
    @ivar count_floor: C{--tunnel-connections auto}: the fewest
        connections the agent keeps (L{spwm.session.paths.PathCount}).
    @ivar count_ceiling: ... and the most.
    @ivar count_stall_gap: a pause at least this long in the media the
        session receives, ended by a burst, is a I{media stall}: every
        connection held the media back at once.
    @ivar count_stall_max: a longer pause is silence, not a stall.
    @ivar count_burst: datagrams that arrive within C{count_burst_window}
        of the end of such a pause make it a burst (held back, released
        together), not the next talk spurt.
    @ivar count_burst_window: see C{count_burst}.
    @ivar count_grow_stalls: media stalls within C{count_grow_window}
        that add a connection (one stall is a blip, not a bad link).
    @ivar count_grow_window: see C{count_grow_stalls}.
    @ivar count_covered_after: a stall counts towards a grow only when
        the media has been copied on every connection for this long (both
        halves copy by then): a stall before the copies asks for copies,
        not for connections.
    @ivar count_grow_step: connections added at once (2: from the floor
        of 2 straight to the ceiling of 4, which is what the C{bad}
        profile needs; each step costs the stalls that decide it and a
        connection's handshake).  Down it goes one at a time.
    @ivar count_grow_hold: the least time between two changes up (the
        new connection gets time to show whether it helps).
    @ivar count_late_rtt: on a connection whose smoothed round trip is at
        least this, a retransmitted segment arrives at least 1.5 round
        trips after it was sent, past the 150 ms a voice packet may take
        one way: every loss there is a late copy.  One retransmission the
        kernel reports on such a connection (the handshake's, the
        registration's, the first media's) adds connections as
        C{count_grow_stalls} media stalls do, before the media has to
        stall; 0: never.
    @ivar count_probe_for: a session whose connections' round trip is at
        least C{count_late_rtt} is pinged as during a call (every 100 ms
        on each connection) for this long from its start, media or not,
        while the count can still grow: the kernel's retransmissions of
        those pings show a lossy link before the first call; 0: not.
    @ivar count_quiet: a connection is dropped after this long without a
        media stall and without a change; doubled each time a connection
        must be added again within C{count_flap_memory} of a drop, up to
        C{count_quiet_max} (hysteresis: a link that needs more connections
        now and then keeps them).
    @ivar count_quiet_max: the longest such quiet spell.
    @ivar count_flap_memory: how long a drop counts as recent.
    @ivar count_spare: C{--tunnel-connections auto}: while the stall rules
        want C{count_ceiling} connections (the link needs every copy the
        count gives), this many more are kept, up to C{max_paths}: the
        copies go on C{max_copies} of them in turn (make before break: a
        connection cut or stalled has its replacement attached already);
        0: none.
    @ivar count_drain: a connection dropped carries nothing from us at
        once, and is closed this long after, when the peer has moved off it.
    @ivar rate_window: the media datagram rate one half sends is measured
        over this long (L{spwm.session.paths.PathScheduler.media_rate}).
    @ivar rate_first: ... and over this long first when media starts after
        C{start_pause} without any (the rate before the pause is
        forgotten): a call's datagrams are paired (C{coalesce_rate}) a
        tenth of a second into it rather than half a second.  Unpaired,
        the copies of one call in turn on six connections are 33 segments
        a second on each, more than a window that a loss at a call's
        start shrinks to 2-4 segments can carry on a 180 ms round trip
        (seen in C{ss}: bytes not sent queued behind it, the datagrams
        late); paired, half.
    @ivar spread_rate: at this many media datagrams per second or more,
        while losses keep the media copied, each datagram goes on
        C{spread_copies} of the paths that are up (in turn) instead of on
        every one: each TCP connection then carries a share of the load,
        not all of it (a copy on every connection adds load, not
        capacity); 0: never.
    @ivar spread_copies: see C{spread_rate}.
    @ivar max_copies: below C{spread_rate}, while the media is copied,
        each datagram goes on at most this many of the paths that are up,
        in turn when more are up: the connections beyond it are I{spares}
        (C{count_spare}), and a cut or a stall of one leaves the datagram
        as many copies as before; each connection also carries fewer
        segments, so loses fewer and holds the media back less often; 0:
        every path that is up.
    @ivar coalesce_rate: at this many media datagrams per second or more,
        while losses keep the media copied, the datagrams are held (see
        C{coalesce_delay} and C{coalesce_pair}; or until
        C{coalesce_bytes} are held) and written together, so that they
        leave in one TCP segment: fewer segments, fewer losses, fewer
        stalls for the same bytes; 0: never.
    @ivar coalesce_delay: see C{coalesce_rate}: the hold at a high rate
        (ten calls: about five datagrams a segment).
    @ivar coalesce_pair: at a low rate the hold is this many intervals
        between two datagrams (C{coalesce_pair / rate}), so that at least
        two go together (one G.711 call: 25 ms, every other datagram held
        that long), up to C{coalesce_hold_max}: each connection then
        carries half the segments, and is held up by a loss half as often.
        With every datagram copied on four connections that are each held
        up by a loss about a third of the time on a link of 5 % loss and
        80 ms (one call: 50 segments a second each), all four were late
        at once for 1-6 % of the datagrams; paired, 0-1.6 %.
    @ivar coalesce_hold_max: see C{coalesce_pair}.
    @ivar coalesce_bytes: see C{coalesce_rate} (about one segment's
        payload with the framing and TLS overhead).
    @ivar count_load_rate: C{--tunnel-connections auto}: media datagrams
        per second one connection should carry at most (copies counted)
        while the media is spread; the count grows to carry the load at
        that rate, up to C{count_load_ceiling}.
    @ivar count_load_ceiling: the most connections the load alone asks for.
    @ivar count_load_trend: the load asks for more connections only while
        its rate is not lower than this long before: a falling load (calls
        ending) needs no more connections than it has, and a rate passing
        through on its way down from a CPU's load asks for none (a soak at
        8,000 datagrams/s opened 16 connections in its last seconds so).
        A rising or steady load asks at once (holding it back 3 s cost ten
        calls on C{bad} 2-3 % more late packets).
    @ivar count_load_linger: the connections the load asked for stay this
        long after it last asked for them (the next calls find them up),
        then go together, back to what the stalls ask for.
    @ivar spread_max_rate: above this many media datagrams per second
        the load asks for no connections, and media goes on one connection
        in turn (no copies, however many connections there are): copies of
        that many would cost both halves more CPU than the link's losses
        cost the audio (500 calls on loopback, 25,000 datagrams/s, opened
        16 connections on the spurious retransmissions of a saturated
        machine, copied each datagram four times and lost 18-20 % of
        them); with the media on a QUIC path, on that path alone.
    """

    stall_floor: float = field(default=0.040, validator=_pos_time)
    stall_rtt_factor: float = field(default=2.0, validator=validators.ge(1.0))
    stall_rttvar_factor: float = field(default=4.0, validator=validators.ge(0.0))
    stall_ceiling: float = field(default=3.0, validator=_pos_time)
    stall_evidence_grace: float = field(default=0.010, validator=validators.ge(0.0))
    dead_factor: float = field(default=5.0, validator=validators.ge(1.0))
    dead_floor: float = field(default=1.0, validator=_pos_time)
    initial_rtt: float = field(default=0.2, validator=_pos_time)
    carrier_floor: float = field(default=0.25, validator=validators.ge(0.0))
    ping_fraction: float = field(default=0.5, validator=[validators.gt(0.0), validators.lt(1.0)])
    probe_interval: float = field(default=0.5, validator=_pos_time)
    duplicate_window: float = field(default=2.0, validator=validators.ge(0.0))
    loss_memory: float = field(default=10.0, validator=validators.ge(0.0))
    lossy_window: float = field(default=30.0, validator=validators.ge(0.0))
    start_copies: float = field(default=2.0, validator=validators.ge(0.0))
    start_pause: float = field(default=2.0, validator=_pos_time)
    switch_hold: float = field(default=1.0, validator=validators.ge(0.0))
    max_switch_hold: float = field(default=30.0, validator=validators.ge(0.0))
    flap_memory: float = field(default=60.0, validator=validators.ge(0.0))
    dedup_window: int = field(default=1024, validator=_power_of_two)
    dedup_max_channels: int = field(default=4096, validator=_pos)
    dedup_slow: float = field(default=0.020, validator=validators.ge(0.0))
    max_paths: int = field(default=16, validator=_pos)
    count_floor: int = field(default=2, validator=_pos)
    count_ceiling: int = field(default=4, validator=_pos)
    count_stall_gap: float = field(default=0.08, validator=_pos_time)
    count_stall_max: float = field(default=2.0, validator=_pos_time)
    count_burst: int = field(default=3, validator=_pos)
    count_burst_window: float = field(default=0.005, validator=validators.ge(0.0))
    count_grow_stalls: int = field(default=3, validator=_pos)
    count_grow_window: float = field(default=5.0, validator=_pos_time)
    count_grow_step: int = field(default=2, validator=_pos)
    count_covered_after: float = field(default=1.0, validator=validators.ge(0.0))
    count_grow_hold: float = field(default=2.0, validator=validators.ge(0.0))
    count_late_rtt: float = field(default=0.1, validator=validators.ge(0.0))
    count_probe_for: float = field(default=10.0, validator=validators.ge(0.0))
    count_quiet: float = field(default=60.0, validator=_pos_time)
    count_quiet_max: float = field(default=960.0, validator=_pos_time)
    count_flap_memory: float = field(default=600.0, validator=validators.ge(0.0))
    count_drain: float = field(default=2.0, validator=validators.ge(0.0))
    rate_window: float = field(default=0.5, validator=_pos_time)
    rate_first: float = field(default=0.1, validator=_pos_time)
    spread_rate: float = field(default=150.0, validator=validators.ge(0.0))
    spread_copies: int = field(default=4, validator=_pos)
    max_copies: int = field(default=4, validator=validators.ge(0))
    count_spare: int = field(default=2, validator=validators.ge(0))
    coalesce_rate: float = field(default=40.0, validator=validators.ge(0.0))
    coalesce_delay: float = field(default=0.010, validator=validators.ge(0.0))
    coalesce_pair: float = field(default=1.25, validator=validators.ge(0.0))
    coalesce_hold_max: float = field(default=0.030, validator=validators.ge(0.0))
    coalesce_bytes: int = field(default=1200, validator=_pos)
    count_load_rate: float = field(default=125.0, validator=_pos_time)
    count_load_ceiling: int = field(default=16, validator=_pos)
    count_load_trend: float = field(default=2.0, validator=validators.ge(0.0))
    count_load_linger: float = field(default=60.0, validator=validators.ge(0.0))
    spread_max_rate: float = field(default=2000.0, validator=validators.ge(0.0))

    def __attrs_post_init__(self) -> None:
        if self.stall_ceiling < self.stall_floor:
            raise ValueError(f"stall_ceiling {self.stall_ceiling} is below stall_floor {self.stall_floor}")
        if self.max_switch_hold < self.switch_hold:
            raise ValueError(f"max_switch_hold {self.max_switch_hold} is below switch_hold {self.switch_hold}")
        if self.count_ceiling < self.count_floor:
            raise ValueError(f"count_ceiling {self.count_ceiling} is below count_floor {self.count_floor}")
        if self.count_quiet_max < self.count_quiet:
            raise ValueError(f"count_quiet_max {self.count_quiet_max} is below count_quiet {self.count_quiet}")


@frozen
class QuicLimits:
    """
    Bounds of the tunnel over QUIC (L{spwm.tunnel.quic}).

    @ivar packet_size: the largest UDP payload QUIC sends (aioquic's
        C{max_datagram_size}); 1200 is the size every QUIC path must carry,
        so a tunnel DATAGRAM frame larger than this minus the packet's
        overhead (48) goes on the stream instead.
    @ivar max_pending_datagrams: media frames waiting for QUIC's congestion
        window; more are dropped and counted (fresh media matters, not old).
    @ivar window_floor: the smallest congestion window, in bytes: random
        loss never holds back less than this per round trip (media cannot
        slow down; see L{spwm.tunnel.quiccc}); 0: aioquic's NewReno as it
        is (two packets at least).
    @ivar stream_high_water: unacknowledged bytes on the tunnel's stream
        above which the tunnel stops writing to it (its own queues and
        their limits then apply, as with a TCP socket that is full); it
        writes again below a quarter of this.
    @ivar socket_buffer: the receive and send buffers asked for the UDP
        socket of the QUIC listener and of each agent's QUIC connection
        (C{SO_RCVBUF}/C{SO_SNDBUF}; the kernel grants at most
        C{net.core.rmem_max}/C{wmem_max}): one listener socket takes every
        session's media, and the default 208 KiB held a tenth of a second
        of 180 calls, lost in each hiccup of a busy process.
    """

    packet_size: int = field(default=1200, validator=[validators.ge(1200), validators.le(65527)])
    max_pending_datagrams: int = field(default=256, validator=_pos)
    window_floor: int = field(default=64 * 1024, validator=validators.ge(0))
    stream_high_water: int = field(default=256 * 1024, validator=_pos)
    socket_buffer: int = field(default=4 << 20, validator=_pos)


@frozen
class Limits:
    """
    Every limit of one half, by layer.
    """

    tunnel: TunnelLimits = field(factory=TunnelLimits)
    sip: SipLimits = field(factory=SipLimits)
    media: MediaLimits = field(factory=MediaLimits)
    session: SessionLimits = field(factory=SessionLimits)
    paths: PathLimits = field(factory=PathLimits)
    quic: QuicLimits = field(factory=QuicLimits)
