# -*- test-case-name: tests.test_session_carrier -*-
"""
A session with several connections (issue 12; the shared design
C{paths-design.md}): the connections attached to one session are its
I{paths}; one of them, the I{carrier}, carries SIP, control and channel
open/close at a time; media datagrams go on the paths the scheduler
(L{spwm.session.paths.PathScheduler}) names, stamped with a sequence
number, and the receiving half drops the copies.

- L{PathFront} is the session's tunnel handle (L{spwm.tunnel.api.TunnelHandle}):
  the SIP runner, the media manager and the session logic see it instead
  of a connection, so the loss of one path while another is attached
  changes nothing for them (make-before-break: the carrier moves at once,
  nothing is suspended, re-keyed or told to the phones).
- L{PathSessions} is the one tunnel observer of a half that speaks
  C{paths}: it makes a front for each new session, attaches further
  connections to it (the C{attach} handshake), and tells the session
  logic (its own observer: L{spwm.security.resume.AgentResumption} or
  L{spwm.session.manager.SessionManager}) only of fronts: established
  when the first path is up, lost when the last one is gone.
- L{PathKeeper} (agent) keeps the wanted number of further connections
  open while the session is up, replacing a lost one in the background.

With one connection (C{--tunnel-connections 1}, or a peer that does not
say C{paths}) none of this is used: the session logic sees the
connection itself, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence
from weakref import WeakSet

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from spwm._mypyc import instance_logger
from spwm.security.keys import EXPORTER_LABEL, KEY_LENGTH
from spwm.session.paths import (
    CarrierChanged,
    Dedup,
    PathCount,
    PathDead,
    PathKind,
    PathLimits,
    PathScheduler,
    PingWanted,
    SeqStamper,
    SipOrder,
    TcpInfo,
    read_tcp_info,
    set_notsent_lowat,
)
from spwm.tunnel.frames import FLAG_SEQ, ChannelKind, ErrorCode
from spwm.tunnel.protocol import HOLD, HelloHold
from spwm.tunnel.retry import STEADY_UP, PromptBucket

if TYPE_CHECKING:
    from spwm.session.quicpath import Keepers
    from spwm.tunnel.api import ChannelHandler, TunnelObserver
    from spwm.tunnel.cipher import UserCipher
    from spwm.tunnel.protocol import HelloSeal, TunnelProtocol

__all__ = ["PathFront", "PathKeeper", "PathSessions", "attach_proof", "path_kind"]

_SEQ = struct.Struct("!I")

#: how often the agent pings each path while the session has channels (s)
PROBE_INTERVAL = 0.1
#: a path that carries media is pinged with it, in the same write, once
#: this long has passed since its last ping (s): its next ping due within
#: 30 ms goes early, beside the datagram, rather than alone in a TCP
#: segment of its own at the round
PING_WITH_MEDIA_AFTER = PROBE_INTERVAL - 0.03
#: the contact point runs its scheduler at most this often (s)
PASSIVE_TICK = 0.04
#: the contact point expects to hear from each path at least this often
#: (the agent's pings, with room for a late timer) (s)
PASSIVE_EXPECT = 1.5 * PROBE_INTERVAL
#: a connection that joins a session must be attached within this (s)
ATTACH_TIMEOUT = 10.0
#: the agent's scheduler timer never runs sooner than this after the last run (s)
MIN_TICK = 0.005
#: how often the agent's keeper asks its L{PathCount} (s)
COUNT_INTERVAL = 0.5
#: L{PathKeeper}'s races: two attempts of its own for one it lost, or one
#: beside the tunnel service's own connection
_OURS = 1
_SERVICE = 2
#: how long the copies of a new channel's C{open} wait before they go on
#: the paths other than the carrier, batched (s): a channel closed before
#: then needs neither its copy nor a copy of its close there (a short
#: call's two control frames and socket writes per other path).  They go
#: at once when the carrier moves or is lost, and on a path before a
#: datagram of the session does.
ANNOUNCE_DELAY = 0.5
#: agent: the longest a further connection's hello waits, after its TLS
#: handshake, to learn whether its session's other connections are alive
#: (L{PathFront.hold_hello}) (s)
HELLO_HOLD = 0.4
#: bytes a held media datagram adds to its payload on the wire when it is
#: coalesced (the frame header and a TLS record's), counted towards
#: C{coalesce_bytes}
BATCH_OVERHEAD = 30


def path_kind(path: Any) -> PathKind:
    """
    What a connection runs on, for the scheduler: its transport says
    (L{spwm.tunnel.quic.QuicTunnelTransport} has C{path_kind} QUIC), else TCP.
    """
    kind = getattr(getattr(path, "transport", None), "path_kind", None)
    return kind if isinstance(kind, PathKind) else PathKind.TCP


def attach_proof(key: bytes, challenge: bytes, session_id: str, *, bound: bool = False) -> str:
    """
    The proof that a new connection belongs to session C{session_id}:
    HMAC-SHA256 with the session's attach key over the fresh challenge of
    the new connection's welcome, bound to the session; hex text.

    @param bound: C{challenge} is the new connection's own TLS keying
        material (L{EXPORTER_LABEL}): the proof goes in its hello.
    """
    label = b"spwm/1 attach-bound\x00" if bound else b"spwm/1 attach\x00"
    message = label + challenge + b"\x00" + session_id.encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def check_attach_proof(key: bytes, challenge: bytes, session_id: str, proof: object, *, bound: bool = False) -> bool:
    """
    Whether C{proof} is L{attach_proof} (constant time).
    """
    if not isinstance(proof, str):
        return False
    expected = attach_proof(key, challenge, session_id, bound=bound).encode("ascii")
    return hmac.compare_digest(expected, proof.encode("utf-8", "surrogateescape"))

#: Unsent bytes a path's kernel send queue may hold (TCP_NOTSENT_LOWAT):
#: about 20 G.711 datagrams, 0.4 s of one call or 40 ms of ten, so what
#: is steered away from a stalled path (or dropped by the media deadline
#: in the tunnel's own queue) is not already stuck in the kernel.  A lone
#: connection keeps the tunnel's 16 kB.
NOTSENT_LOWAT = 4096


#: the line for a lost connection of a session that has others waits this
#: long (s) for the losses of those that went with it
GONE_LINE_WAIT = 0.05


def _peer_closed(sock: Any) -> bool:
    """
    Whether a TCP socket holds the peer's close or a reset that was not
    read yet (C{None}, no socket known: no).
    """
    if sock is None:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


class PathFront:
    """
    The tunnel handle of a session whose connections said C{paths}: one
    stable object over the paths attached to it.

    @ivar routes: channel id -> the relay's two send functions; shared by
        every path (L{TunnelProtocol.use_front}), so a route set once
        works on all of them.
    @ivar handlers: channel id -> its handler; shared the same way.
    @ivar dedup: drops the copies of a datagram that came on several paths.
    @ivar stamper: numbers the datagrams we send, per channel and component.
    @ivar scheduler: which path is the carrier, which paths media goes on.
    @ivar attach_key: what a further connection proves it knows.
    @ivar switches: how often the carrier moved to another path.
    @ivar attached: paths attached so far (the first included).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        first: TunnelProtocol,
        attach_key: bytes,
        limits: PathLimits | None = None,
        *,
        on_dead: Callable[[TunnelProtocol], None] | None = None,
        probe: bool = True,
    ) -> None:
        """
        @param first: the connection that made the session.
        @param on_dead: told of a path the scheduler found dead (it is
            closed; its loss follows).
        @param probe: ping every path while the session has channels (the
            agent).  Without (the contact point, which would otherwise
            ping every path of every session), the front keeps no timer:
            the peer's pings and media show which paths are heard from,
            and the scheduler runs when something arrives.
        """
        self.log = instance_logger(self)  # compiled, the class attribute is not bound
        self.clock = clock
        self.routes: dict[int, Any] = {}
        self.handlers: dict[int, ChannelHandler] = {}
        self.dedup = Dedup()
        self.stamper = SeqStamper()
        self.scheduler = PathScheduler(limits or PathLimits())
        self.attach_key = attach_key
        #: when the session got its first path (this front was made)
        self.since = clock.seconds()
        self.switches = 0
        self.attached = 0
        #: agent: further connections whose hello waited (L{hold_hello})
        self.hellos_held = 0
        #: round-trip samples taken (timed pings answered)
        self.rtt_samples = 0
        self._paths: dict[int, TunnelProtocol] = {}
        self._sockets: dict[int, Any] = {}
        #: QUIC paths' transports (their RTT estimate feeds the scheduler)
        self._quic: dict[int, Any] = {}
        self._pinged_at = float("-inf")
        #: agent: path id -> when it was last pinged (alone, or beside media)
        self._pinged: dict[int, float] = {}
        self._ids: dict[int, int] = {}
        self._next_id = 0
        self._last: TunnelProtocol = first
        # one of its connections said the agent stops for good
        self._agent_stopped = False
        self._carrier_id: int | None = None
        self._producers: list[IPushProducer] = []
        self._timer: IDelayedCall | None = None
        #: path id -> the channels (in the order opened, values unused)
        #: whose C{open} that path has not carried yet (L{ANNOUNCE_DELAY})
        self._unannounced: dict[int, dict[int, None]] = {}
        self._announce_timer: IDelayedCall | None = None
        #: media datagrams held to be written together (coalescing)
        self._batch: list[tuple[int, bytes, int]] = []
        self._batch_bytes = 0
        self._batch_timer: IDelayedCall | None = None
        self._on_dead = on_dead
        self._probing = probe
        self._ticked = 0.0
        self._tcp_info_at = 0.0
        self._dedup_seen = 0
        self._copies_seen = 0
        #: path id -> the kernel's retransmissions on it as L{watch_link} last read them
        self._retrans_seen: dict[int, int] = {}
        #: agent: the paths are probed until then, channels or not (L{watch_link})
        self._probe_until = float("-inf")
        #: the agent's connection count (C{--tunnel-connections auto}): fed
        #: the first copies of the media as they arrive
        self.count: PathCount | None = None
        #: contact point: tell the agent of the media stalls its count sees
        #: (the agent said C{stalls} in its hello)
        self.report_stalls = False
        #: when a path of the session last read something, and when one
        #: was last lost (agent: L{hold_hello})
        self.heard_at = float("-inf")
        self.lost_at = float("-inf")
        #: agent: further connections whose hello waits (L{hold_hello})
        self._held_hellos: list[TunnelProtocol] = []
        self._hellos_released: WeakSet[TunnelProtocol] = WeakSet()
        self._hold_timer: IDelayedCall | None = None
        self._stalls_told = 0
        #: agent: the contact point's last C{media-stalls} total
        self.peer_stalls = 0
        self._accepted_seen = 0
        self._read_at = 0.0
        # The user keys are derived from the first connection's TLS
        # exporter on both halves, whichever path carries the 2xx.
        self._exported = first.export_keying_material(EXPORTER_LABEL, KEY_LENGTH)
        #: the session's per-user ciphering (the first connection's, shared
        #: by every path from now on: one send counter per key for all
        #: paths), or C{None}
        self.cipher: UserCipher | None = getattr(first, "cipher", None)
        self.local_hello = first.local_hello
        self.peer_hello = first.peer_hello
        self._session_id = first.session_id
        self._agent_id = first.agent_id
        #: the session's SIP numbered, kept until acknowledged and sent
        #: again when the carrier moves (both halves said C{sip-seq}), or
        #: C{None}
        self.sip_order: SipOrder | None = (
            SipOrder() if getattr(first.connection, "sip_seq", False) else None
        )
        #: the path the last SIP went on (the kept SIP goes again when
        #: the carrier is another)
        self._sip_path: TunnelProtocol | None = None
        self._sip_ack_timer: IDelayedCall | None = None
        self.add_path(first, path_kind(first))

    # -- the paths -----------------------------------------------------------

    @property
    def paths(self) -> list[TunnelProtocol]:
        """
        The attached paths, in the order they were attached.
        """
        return list(self._paths.values())

    def live_paths(self) -> int:
        """
        The attached paths not known to be gone: one closed already whose
        loss is not told yet does not count, nor a TCP path whose socket
        already holds the peer's close (or a reset) its protocol has not
        read yet does not count (a contact point that dies closes every
        connection at once, and their losses are told one by one).
        """
        return sum(
            1 for path_id, path in self._paths.items() if path.is_open and not _peer_closed(self._sockets.get(path_id))
        )

    def path_id(self, path: TunnelProtocol) -> int | None:
        """
        C{path}'s number in this session, or C{None}.
        """
        return self._ids.get(id(path))

    @property
    def carrier(self) -> TunnelProtocol | None:
        """
        The path that carries SIP, control and channel open/close now.
        """
        chosen = self.scheduler.carrier()
        path = self._paths.get(chosen) if chosen is not None else None
        if path is not None and path.is_open:
            return path
        for other in self._paths.values():
            if other.is_open:
                return other
        return path

    def add_path(self, path: TunnelProtocol, kind: PathKind = PathKind.TCP) -> int:
        """
        Attach a connection: it accepts every open channel of the session
        from now on and becomes one the scheduler may choose.

        What a path must offer (a QUIC path too): the L{TunnelHandle}
        methods, C{send_numbered_sip} and C{numbers_sip},
        C{is_open}, C{peer}, C{session_id}, C{agent_id},
        C{adopt_session}, C{ping()}, C{announce_channel(channel_id)},
        C{close(code, reason)}, C{duplicates},
        C{use_front(front)} (from then on its channel routes and handlers
        are the front's dictionaries, datagrams with C{FLAG_SEQ} go through
        C{front.dedup}, and it calls C{front.path_received},
        C{front.rtt_sample}, C{front.channel_registered} and
        C{front.channel_forgotten}), and a C{connection} core with
        C{register_channel}, C{forget_channel} and C{open_channels}
        (L{spwm.tunnel.connection.TunnelConnection}).

        @param kind: what the scheduler knows it as.
        @return: its path id.
        """
        path_id = self._next_id
        self._next_id += 1
        if self._paths:
            path.adopt_session(self._session_id)
        carrier = self.carrier
        if carrier is not None and carrier.connection is not None and path.connection is not None:
            for channel_id, channel_kind, meta in carrier.connection.open_channels():
                path.connection.register_channel(channel_id, channel_kind, meta)
        self._paths[path_id] = path
        self._ids[id(path)] = path_id
        self.attached += 1
        path.use_front(self)
        now = self.clock.seconds()
        self.scheduler.add(path_id, kind, now)
        # the scheduler may prefer the new path (a QUIC one)
        self._carrier_moved()
        from spwm.tunnel.protocol import find_socket

        transport = getattr(path, "transport", None)
        sock = find_socket(transport)
        if sock is not None:
            # a small kernel send queue, so that what is steered away from
            # a stalled path is not already stuck in it
            set_notsent_lowat(sock, NOTSENT_LOWAT)
            self._sockets[path_id] = sock
            info = read_tcp_info(sock)
            if info is not None and info.rtt_s:
                # the kernel's round trip from the handshakes: known before
                # the first media (the copies at a media start on a slow
                # link go by it; the contact point reads the kernel only
                # once a call's frames come)
                self.scheduler.tcp_info(path_id, TcpInfo(rtt_s=info.rtt_s, rttvar_s=info.rttvar_s), now)
        elif kind is PathKind.QUIC and hasattr(transport, "rtt"):
            self._quic[path_id] = transport
        self._arm()
        return path_id

    def remove_path(self, path: TunnelProtocol) -> bool:
        """
        Detach a lost connection; the carrier moves at once if it was it.

        @return: whether the session has another path.
        """
        path_id = self._ids.pop(id(path), None)
        if path_id is None:
            return bool(self._paths)
        del self._paths[path_id]
        self.lost_at = self.clock.seconds()
        self._pinged.pop(path_id, None)
        self._sockets.pop(path_id, None)
        self._retrans_seen.pop(path_id, None)
        self._quic.pop(path_id, None)
        self._unannounced.pop(path_id, None)
        self._last = path
        self._agent_stopped = self._agent_stopped or path.agent_stopped
        self.scheduler.remove(path_id)
        self._carrier_moved()
        if not self._paths:
            self._cancel()
            self._announce_all()
            self._drop_held()
            timer, self._sip_ack_timer = self._sip_ack_timer, None
            if timer is not None and timer.active():
                timer.cancel()
        return bool(self._paths)

    def _take_held(self) -> list[tuple[int, bytes, int]]:
        """
        The media datagrams held to coalesce them, no longer held (their
        timer cancelled).
        """
        batch, self._batch = self._batch, []
        self._batch_bytes = 0
        timer, self._batch_timer = self._batch_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        return batch

    def _drop_held(self) -> None:
        """
        The last path is gone: the media datagrams held to coalesce them
        have nowhere to go (and are stale by a resumption).
        """
        self._take_held()

    def _carrier_moved(self) -> None:
        new = self.scheduler.carrier()
        if new == self._carrier_id:
            return
        old, self._carrier_id = self._carrier_id, new
        # what the old carrier held back goes on every path now (the
        # survivors learn of the channels whose open may be lost with it)
        self._announce_all()
        if new is None:
            return
        self._sip_follows()
        carrier = self._paths[new]
        for producer in self._producers:
            carrier.register_stream_producer(producer)
        if old is None:
            return
        self.switches += 1
        if not carrier.is_open:
            # closed too, its loss not told yet (a stop closes every path):
            # no move to tell of
            return
        self.log.info(
            "session {session_id}: the carrier moves from path {old} to path {new} ({peer})",
            session_id=self.session_id,
            old=old,
            new=new,
            peer=carrier.peer,
        )

    # -- further connections' hellos (agent) ---------------------------------

    def hold_hello(self, path: TunnelProtocol) -> bool:
        """
        Agent: whether the hello of C{path}, made to join this session and
        through its TLS handshake, is to wait (L{HOLD}): a path of the
        session was lost, none has read anything since, and the session
        has channels (its paths are heard from every ping while it does).
        Then every path may be dead (an address change breaks them all,
        each found as it next sends): an attach would be refused once the
        last is found, and the session resumed on a connection made
        later. The hello waits until a path is heard from (it attaches),
        the last path is lost (it resumes the session,
        L{PathSessions.tunnel_lost}), or L{HELLO_HOLD} has passed (it
        attaches).
        """
        if self.heard_at > self.lost_at or not self._paths or not self._watched or path in self._hellos_released:
            return False
        if self.clock.seconds() - self.lost_at >= HELLO_HOLD + PROBE_INTERVAL:
            return False
        self._held_hellos.append(path)
        if self._hold_timer is None:
            self._hold_timer = self.clock.callLater(HELLO_HOLD, self.release_hellos)
        self.hellos_held += 1
        return True

    def release_hellos(self) -> None:
        """
        The hellos L{hold_hello} held are decided now.
        """
        timer, self._hold_timer = self._hold_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        held, self._held_hellos = self._held_hellos, []
        for path in held:
            self._hellos_released.add(path)
            path.release_hello()

    # -- what the paths tell it (TunnelProtocol) -------------------------------

    def path_received(self, path: TunnelProtocol, now: float) -> None:
        self.heard_at = now
        if self._held_hellos:
            # a path is alive: the connections waiting to join go on
            self.release_hellos()
        count = self.count
        if count is not None:
            # called before each read is processed: what the read before
            # brought (datagrams accepted by the de-duplication) came then
            accepted = self.dedup.accepted
            if accepted != self._accepted_seen:
                count.arrivals(self._read_at, accepted - self._accepted_seen, self._covered(self._read_at))
                self._accepted_seen = accepted
                if self.report_stalls and count.media_stalls != self._stalls_told:
                    # the agent decides; it sees only the media it receives
                    self._stalls_told = count.media_stalls
                    self.send_control({"op": "media-stalls", "total": count.media_stalls})
            self._read_at = now
        path_id = self._ids.get(id(path))
        if path_id is None:
            return
        scheduler = self.scheduler
        if (
            not self._probing
            and len(self._paths) > 1
            and now - self._ticked >= PASSIVE_TICK
            and self._watched
        ):
            # Passive: every path is expected to be heard from at least
            # every PROBE_INTERVAL (the peer pings them while it has
            # channels); one that is not is overdue from then on and
            # stalls by its bound, while this one is heard.
            if now - self._ticked > 2 * PROBE_INTERVAL:
                # the watch starts again (the peer pings while it has
                # channels): earlier silence does not count
                for other in self._paths:
                    scheduler.received(other, now)
            self._ticked = now
            if now - self._tcp_info_at >= PROBE_INTERVAL:
                # round trips, retransmissions and timeouts from the
                # kernel, since this end does not ping: as often as the
                # peer pings
                self._tcp_info_at = now
                self._read_tcp_info(now)
            self._dedup_losses(path_id, now)
            for other in self._paths:
                # heard from at least every ping of the peer's: overdue
                # from then, not between two pings
                scheduler.expect(other, PASSIVE_EXPECT, now)
            scheduler.received(path_id, now)
            self.tick()
            return
        if scheduler.received(path_id, now) and self._probing:
            # a path held up while no other was heard (the peer busy) may
            # stall now that the peer is heard on this one, after the
            # grace; or this stalled one comes back: the timer at the
            # scheduler's deadline, not at the next ping round
            self._rearm()
        self._dedup_losses(path_id, now)

    def _covered(self, now: float) -> bool:
        """
        Whether the media has been copied on every path long enough for a
        stall to mean too few paths (L{PathCount.arrivals}).
        """
        since = self.scheduler.copies_since(now)
        limits = self.count.limits if self.count is not None else self.scheduler.limits
        return since is not None and now - since >= limits.count_covered_after and len(self._paths) > 1

    def _dedup_losses(self, path_id: int, now: float) -> None:
        """
        The receiving half's sign of loss: a sequence number the
        de-duplication skipped was still missing C{dedup_slow} after the
        next one came, or came that late (L{Dedup.slow}: lost, or held up
        on the path that carried it, not reordered among paths) since the
        last look: a loss for the scheduler, so this half duplicates what
        it sends too.  On the contact point also the agent's copies
        (duplicates dropped): L{PathScheduler.peer_copies}.
        """
        dedup = self.dedup
        dedup.watch(now)
        seen = dedup.slow
        if seen != self._dedup_seen:
            self._dedup_seen = seen
            self.scheduler.loss_seen(path_id, now)
        if not self._probing and dedup.duplicates != self._copies_seen:
            # The contact point: the agent copies what it sends (it found
            # the link lossy, or a path stalled), so this half copies too,
            # from the first copy on: its own sign (a retransmission it
            # reads once the call's first channel is watched) comes only
            # after a loss has held up media on one path.  Not the agent:
            # the two would keep each other copying.
            self._copies_seen = dedup.duplicates
            self.scheduler.peer_copies(now)

    def rtt_sample(self, path: TunnelProtocol, rtt: float) -> None:
        path_id = self._ids.get(id(path))
        if path_id is not None:
            self.rtt_samples += 1
            self.scheduler.rtt_sample(path_id, rtt, self.clock.seconds())

    def channel_registered(self, path: TunnelProtocol, channel_id: int, kind: ChannelKind, meta: dict[str, Any]) -> None:
        """
        The peer opened a channel on C{path}: every other path accepts it.
        """
        for other in self._paths.values():
            if other is not path and other.connection is not None:
                other.connection.register_channel(channel_id, kind, meta)
        self._arm()

    def channel_forgotten(self, path: TunnelProtocol, channel_id: int) -> None:
        """
        The peer closed a channel on C{path}: every other path forgets it.
        """
        for other in self._paths.values():
            if other is not path and other.connection is not None:
                other.connection.forget_channel(channel_id)
        for held in self._unannounced.values():
            held.pop(channel_id, None)
        self._forget_numbers(channel_id)

    def _forget_numbers(self, channel_id: int) -> None:
        """
        A closed channel's sequence numbers and de-duplication window go
        (channel ids are not reused).  The shared design names no
        C{SeqStamper.forget}: one without it keeps its counters.
        """
        forget = getattr(self.stamper, "forget", None)
        if forget is not None:
            forget(channel_id)
        self.dedup.forget(channel_id)

    # -- time: probes and the scheduler ------------------------------------------

    @property
    def _watched(self) -> bool:
        """
        Whether the paths are watched now: while the session has channels
        (without, nothing a stall would hurt at once; the tunnel's
        keepalive watches the paths meanwhile), and on the agent while a
        young session's slow link is probed (L{watch_link}).
        """
        return bool(self.routes or self.handlers) or self.clock.seconds() < self._probe_until

    def _arm(self, fresh: bool = True) -> None:
        if not self._probing or self._timer is not None and self._timer.active() or not self._paths:
            return
        if not self._watched:
            return
        now = self.clock.seconds()
        if fresh:
            # the watch starts again: what was unanswered before it does not count
            for path_id in self._paths:
                self.scheduler.received(path_id, now)
        # the next ping a path is due (those that carry media are pinged
        # with it, sooner), or sooner what the scheduler must see (a stall
        # bound running out, a ping it wants)
        if fresh:
            delay = PROBE_INTERVAL
        else:
            pinged = self._pinged
            last = min(pinged.get(path_id, self._pinged_at) for path_id in self._paths)
            delay = max(0.0, last + PROBE_INTERVAL - now)
        deadline = self.scheduler.next_deadline()
        if deadline is not None:
            delay = min(delay, max(MIN_TICK, deadline - now))
        self._timer = self.clock.callLater(delay, self._probe)

    def _rearm(self) -> None:
        """
        Agent: the scheduler wants to run sooner than the timer (a wait
        that started with a datagram sent).
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._arm(fresh=False)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _probe(self) -> None:
        """
        Ping every path (its PONG is a round-trip sample and shows the path
        alive), then act on what the scheduler found since.
        """
        self._timer = None
        now = self.clock.seconds()
        pinged = self._pinged
        for path_id, path in list(self._paths.items()):
            if now >= pinged.get(path_id, self._pinged_at) + PROBE_INTERVAL - MIN_TICK:
                pinged[path_id] = now
                path.ping()
                self.scheduler.sent(path_id, 16, now)
        if now >= self._pinged_at + PROBE_INTERVAL - MIN_TICK:
            self._pinged_at = now
            self._read_tcp_info(now)
        self.tick()
        self._arm(fresh=False)

    def _read_tcp_info(self, now: float) -> None:
        for path_id, sock in self._sockets.items():
            info = read_tcp_info(sock)
            if info is not None:
                self.scheduler.tcp_info(path_id, info, now)
        for path_id, transport in self._quic.items():
            # QUIC measures its round trips on every acknowledgement: its
            # estimate replaces ours as the kernel's does for TCP (only the
            # RTT fields: no retransmission state)
            rtt = transport.rtt
            if rtt is not None:
                self.scheduler.tcp_info(path_id, TcpInfo(rtt_s=rtt[0], rttvar_s=rtt[1]), now)

    def watch_link(self, now: float) -> None:
        """
        Agent, C{--tunnel-connections auto}: tell the count of the
        retransmissions the kernel made since the last look (from each
        connection's start: a handshake's count) on each TCP path whose
        round trip is at least C{count_late_rtt} (L{PathCount.late_loss}).
        The keeper calls it before it asks the count, with or without media.
        On such a slow link, a session younger than C{count_probe_for}
        whose count can still grow is probed until then as during a call
        (pings every L{PROBE_INTERVAL} on each path), channels or not: the
        pings' retransmissions show a lossy link before the first call.
        """
        count = self.count
        if count is None or count.limits.count_late_rtt <= 0:
            return
        limits = count.limits
        slow = False
        for path_id, sock in self._sockets.items():
            info = read_tcp_info(sock)
            if info is None or info.total_retrans is None:
                continue
            seen = self._retrans_seen.get(path_id, 0)
            self._retrans_seen[path_id] = info.total_retrans
            if info.rtt_s is not None and info.rtt_s >= limits.count_late_rtt:
                slow = True
                if info.total_retrans > seen:
                    count.late_loss(now)
        if slow and count.wanted < count.ceiling and now < self.since + limits.count_probe_for:
            if now >= self._probe_until:
                # a young session on a slow link: ping as during a call,
                # so that a lossy link shows before the first call
                self._probe_until = self.since + limits.count_probe_for
                self._arm()

    def tick(self) -> None:
        """
        Run the scheduler: a path found dead is closed (its loss removes
        it); the carrier moves off a stalled or dead path at once.
        """
        for event in self.scheduler.tick(self.clock.seconds()):
            if isinstance(event, PathDead):
                path = self._paths.get(event.path_id)
                # The last path is left to the tunnel's own keepalive; the
                # contact point (passive) only stops using a TCP path:
                # closing one is for the agent, which probes, and its close
                # arrives.  A QUIC path it closes too: the agent's close of
                # a path whose UDP is blocked never arrives, and the path
                # would stay until the tunnel's keepalive timeout.  (Passive,
                # a path is found dead only while another is heard.)
                if path is None or len(self._paths) <= 1:
                    continue
                if self._probing:
                    self.log.warn(
                        "session {session_id}: path {path_id} ({peer}) answers nothing; closing it",
                        session_id=self.session_id,
                        path_id=event.path_id,
                        peer=path.peer,
                    )
                elif event.path_id in self._quic:
                    self.log.info(
                        "session {session_id}: QUIC path {path_id} ({peer}) silent while the others are heard; closing it",
                        session_id=self.session_id,
                        path_id=event.path_id,
                        peer=path.peer,
                    )
                else:
                    continue
                if self._on_dead is not None:
                    self._on_dead(path)
                # detached now: its transport's loss may come later
                self.remove_path(path)
                path.close(ErrorCode.KEEPALIVE_TIMEOUT, "path answers nothing")
            elif isinstance(event, CarrierChanged):
                self._carrier_moved()
            elif isinstance(event, PingWanted) and self._probing:
                # something it sent is unanswered (media one way): ask
                # before its stall bound runs out
                wanted = self._paths.get(event.path_id)
                if wanted is not None:
                    wanted.ping()
                    self.scheduler.sent(event.path_id, 16, self.clock.seconds())
        if not self._probing and self.scheduler.held() and (self._timer is None or not self._timer.active()):
            # The contact point runs the scheduler as it reads: a path held
            # up (the agent quiet on every path) may stall when the grace
            # after the agent is heard elsewhere ends, which no read may
            # follow soon; a timer then, only while one is held.
            deadline = self.scheduler.next_deadline()
            if deadline is not None:
                self._timer = self.clock.callLater(max(MIN_TICK, deadline - self.clock.seconds()), self._held_due)

    def _held_due(self) -> None:
        self._timer = None
        self.tick()

    def media_kind(self) -> str | None:
        """
        What carries the session's media now: C{"quic"}, C{"tcp"}, C{"tcp+quic"}
        (duplicated on both), or C{None} (no path).
        """
        snapshot = self.scheduler.snapshot()
        ids = snapshot["media"]
        if snapshot.get("duplicating"):
            ids = [p["path_id"] for p in snapshot["paths"] if p["state"] == "up"] or ids
        kinds = sorted({path_kind(self._paths[i]).value for i in ids if i in self._paths}, reverse=True)
        return "+".join(kinds) or None

    @property
    def rtt(self) -> float | None:
        """
        The smoothed round trip (seconds) of the path that carries the
        media now (the shortest of them while it is duplicated), from the
        scheduler's samples, else that path's own estimate; C{None} where
        none is known.  Read for the status, never per packet.
        """
        media, srtt = self.scheduler.media_srtt()
        if srtt is not None:
            return srtt
        paths = [self._paths[i] for i in media if i in self._paths] or list(self._paths.values())
        known = [r for r in (getattr(p, "rtt", None) for p in paths) if isinstance(r, float)]
        return min(known) if known else None

    def late_dropped(self, channel_id: int) -> int | None:
        """
        The datagrams of channel C{channel_id} the paths dropped in their
        media queues (the sum over the paths it is open on), or C{None}
        where it is open on none.
        """
        counts = [
            n
            for n in (getattr(p, "late_dropped", lambda _: None)(channel_id) for p in self._paths.values())
            if isinstance(n, int)
        ]
        return sum(counts) if counts else None

    def summary(self) -> dict[str, Any]:
        """
        One session's line for the status page: which path carries the
        media and the SIP, how often each moved.
        """
        carrier = self.scheduler.carrier()
        return {
            "session": self.session_id,
            "paths": sorted(path_kind(p).value for p in self._paths.values()),
            "media_on": self.media_kind(),
            "carrier_on": path_kind(self._paths[carrier]).value if carrier in self._paths else None,
            "media_switches": self.scheduler.media_switches,
            "carrier_switches": self.switches,
        }

    def status(self) -> dict[str, Any]:
        """
        For the status page.
        """
        return {
            "paths": len(self._paths),
            "carrier_switches": self.switches,
            "duplicates_dropped": sum(p.duplicates for p in self._paths.values()),
            **({"sealed": self.cipher.snapshot()} if self.cipher is not None else {}),
            **self.scheduler.snapshot(),
        }

    # -- TunnelHandle -------------------------------------------------------------

    @property
    def peer(self) -> str:
        carrier = self.carrier
        return (carrier or self._last).peer

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def agent_id(self) -> str:
        return self._agent_id

    @property
    def is_open(self) -> bool:
        return any(p.is_open for p in self._paths.values())

    @property
    def congested(self) -> bool:
        carrier = self.carrier
        return carrier is not None and carrier.congested

    @property
    def go_away_info(self) -> Any:
        return (self.carrier or self._last).go_away_info

    @property
    def close_info(self) -> Any:
        return (self.carrier or self._last).close_info

    @property
    def agent_stopped(self) -> bool:
        """
        Whether a connection of the session, lost, said that the agent
        stops for good (L{TunnelProtocol.close_for_good}).
        """
        return self._agent_stopped or (self.carrier or self._last).agent_stopped

    def send_sip(self, flow_id: int, data: bytes) -> bool:
        order = self.sip_order
        if order is None:
            carrier = self.carrier
            return carrier is not None and carrier.send_sip(flow_id, data)
        carrier = self._sip_follows()
        if carrier is None:
            return False
        if not carrier.numbers_sip(len(data)):
            # too large to number in one frame (or a path that did not
            # agree sip-seq): it goes as it is, taken as it comes
            return carrier.send_sip(flow_id, data)
        return carrier.send_numbered_sip(flow_id, data, order.number(flow_id, data))

    def _sip_follows(self) -> TunnelProtocol | None:
        """
        The SIP goes on the carrier: when that is another path than the
        last SIP took, the messages the peer has not acknowledged go
        there first (those in flight on a path that broke, or still queued
        on a stalled one: the peer takes each once, in order).

        @return: the carrier.
        """
        carrier = self.carrier
        order = self.sip_order
        if order is None or carrier is None or carrier is self._sip_path:
            return carrier
        before, self._sip_path = self._sip_path, carrier
        if before is not None and order.kept:
            unacked = order.unacked()
            for number, flow_id, data in unacked:
                if carrier.numbers_sip(len(data)):
                    carrier.send_numbered_sip(flow_id, data, number)
            self.log.info(
                "session {session_id}: {count} SIP message(s) not acknowledged sent again on path {path_id}",
                session_id=self.session_id,
                count=len(unacked),
                path_id=self.path_id(carrier),
            )
        return carrier

    def sip_arrived(self, number: int) -> bool:
        """
        A numbered SIP message arrived on one of the paths
        (L{SipOrder.arrived}); its acknowledgement goes within
        L{SipOrder.ACK_DELAY}.

        @return: whether to take it (C{False}: a copy).
        """
        order = self.sip_order
        if order is None:
            # numbered by a peer whose first connection did not agree:
            # taken as it comes
            return True
        if not order.arrived(number):
            return False
        if self._sip_ack_timer is None:
            self._sip_ack_timer = self.clock.callLater(SipOrder.ACK_DELAY, self._sip_ack)
        return True

    def _sip_ack(self) -> None:
        self._sip_ack_timer = None
        order = self.sip_order
        due = order.ack_due() if order is not None else None
        if due is not None:
            self.send_control({"op": "sip-ack", "next": due})

    def sip_acked(self, next_expected: object) -> None:
        """
        The peer's C{sip-ack}: it took every message numbered below
        C{next_expected}.
        """
        if self.sip_order is not None:
            self.sip_order.acked(next_expected)

    def send_control(self, message: dict[str, Any]) -> bool:
        carrier = self.carrier
        return carrier is not None and carrier.send_control(message)

    def open_channel(self, kind: ChannelKind, meta: dict[str, Any], handler: ChannelHandler | None = None) -> int:
        """
        Open a channel on the carrier; every other path accepts it too.
        """
        carrier = self.carrier
        if carrier is None:
            from spwm.tunnel.connection import TunnelNotOpenError

            raise TunnelNotOpenError("the session has no open connection")
        channel_id = carrier.open_channel(kind, meta, handler)
        self.channel_registered(carrier, channel_id, kind, meta)
        # A copy on every other path, after the carrier's (which keeps its
        # order with the SIP that refers to the channel): the channel is
        # known to the peer even if the carrier breaks with it queued.
        # The copies wait (ANNOUNCE_DELAY), batched; a carrier lost or
        # moved sends them at once.
        for path_id, other in self._paths.items():
            if other is not carrier:
                self._unannounced.setdefault(path_id, {})[channel_id] = None
        if self._unannounced and self._announce_timer is None:
            self._announce_timer = self.clock.callLater(ANNOUNCE_DELAY, self._announce_due)
        return channel_id

    def _announce_due(self) -> None:
        self._announce_timer = None
        self._announce_all()

    def _announce_all(self) -> None:
        """
        Send every copy of an C{open} held back, on every path.
        """
        if self._announce_timer is not None:
            if self._announce_timer.active():
                self._announce_timer.cancel()
            self._announce_timer = None
        for path_id in list(self._unannounced):
            self._announce(path_id)

    def _announce(self, path_id: int) -> None:
        """
        Send the copies of the C{open}s path C{path_id} has not carried.
        """
        channels = self._unannounced.pop(path_id, None)
        path = self._paths.get(path_id)
        if channels and path is not None:
            for channel_id in channels:
                path.announce_channel(channel_id)

    def close_channel(self, channel_id: int, code: int = 0, reason: str = "") -> None:
        """
        Close a channel on the carrier, and on every other path too (the
        peer takes the first close it reads; the others are late frames).
        """
        # what is held of it goes before its close
        self.flush_media()
        carrier = self.carrier
        if carrier is None:
            self.routes.pop(channel_id, None)
            self.handlers.pop(channel_id, None)
            return
        carrier_id = self._ids.get(id(carrier))
        if carrier_id in self._unannounced and channel_id in self._unannounced[carrier_id]:
            # the carrier moved to a path that has not carried the open yet
            self._announce(carrier_id)
        carrier.close_channel(channel_id, code, reason)
        for path_id, other in self._paths.items():
            if other is carrier:
                continue
            held = self._unannounced.get(path_id)
            if held is not None and channel_id in held:
                # its open never went on this path: nothing to close there
                del held[channel_id]
                if other.connection is not None:
                    other.connection.forget_channel(channel_id)
                continue
            other.close_channel(channel_id, code, reason)
        self._forget_numbers(channel_id)

    def send_datagram(self, channel_id: int, data: bytes, component: int = 0) -> None:
        """
        Send a media datagram on the paths the scheduler names, each copy
        with the same sequence number; or hold it to write it with the
        next ones when the scheduler says to coalesce (a heavy load on a
        lossy link), until C{coalesce_delay} has passed since the first
        held or C{coalesce_bytes} are held.
        """
        now = self.clock.seconds()
        seq = self.stamper.next(channel_id, component & 1)
        payload = _SEQ.pack(seq) + data
        flags = component | FLAG_SEQ
        batch = self._batch
        if batch:
            batch.append((channel_id, payload, flags))
            self._batch_bytes += len(payload) + BATCH_OVERHEAD
            if self._batch_bytes >= self.scheduler.limits.coalesce_bytes:
                self.flush_media()
            return
        scheduler = self.scheduler
        path_ids = scheduler.media_now(now)
        if path_ids is None:
            self._batch = [(channel_id, payload, flags)]
            self._batch_bytes = len(payload) + BATCH_OVERHEAD
            self._batch_timer = self.clock.callLater(scheduler.coalesce_delay(now), self._batch_due)
            return
        # _send_media() for this one datagram, inlined (the media hot path:
        # no tuple of items, one call less)
        paths = self._paths
        unannounced = self._unannounced
        rearm = False
        probing = self._probing
        # a path last pinged at or before this is pinged beside the datagram
        pinged, unpinged, due = self._pinged, self._pinged_at, now - PING_WITH_MEDIA_AFTER
        for path_id in path_ids:
            path = paths.get(path_id)
            if path is not None:
                if unannounced and path_id in unannounced:
                    self._announce(path_id)
                if probing and pinged.get(path_id, unpinged) <= due:
                    self._ping_with_media(path_id, path, now)
                path.send_datagram(channel_id, payload, flags)
                if probing and scheduler.sent(path_id, len(payload), now):
                    rearm = True
        if rearm:
            self._rearm()

    def _ping_with_media(self, path_id: int, path: TunnelProtocol, now: float) -> None:
        """
        Agent: ping C{path} now, in the reactor turn that writes it a
        media datagram, so that the ping leaves in the same TCP segment
        (the transport writes a turn's bytes together) instead of one of
        its own at the next round: on a copied call about a third fewer
        segments upstream, and so fewer losses to hold the path up.
        """
        self._pinged[path_id] = now
        path.ping()
        self.scheduler.sent(path_id, 16, now)

    def _batch_due(self) -> None:
        self._batch_timer = None
        self.flush_media()

    def flush_media(self) -> None:
        """
        Write the media datagrams held to coalesce them now (all on the
        same paths, so that each path's share leaves in one write).
        """
        if not self._batch:
            return
        self._send_media(self.clock.seconds(), self._take_held())

    def _send_media(self, now: float, items: Sequence[tuple[int, bytes, int]]) -> None:
        paths = self._paths
        scheduler = self.scheduler
        rearm = False
        unannounced = self._unannounced
        probing = self._probing
        pinged, unpinged, due = self._pinged, self._pinged_at, now - PING_WITH_MEDIA_AFTER
        for path_id in scheduler.media_paths(now, len(items)):
            path = paths.get(path_id)
            if path is not None:
                if unannounced and path_id in unannounced:
                    # the opens it has not carried go before the media
                    self._announce(path_id)
                if probing and pinged.get(path_id, unpinged) <= due:
                    self._ping_with_media(path_id, path, now)
                nbytes = 0
                for channel_id, payload, flags in items:
                    path.send_datagram(channel_id, payload, flags)
                    nbytes += len(payload)
                # the agent watches what it sends: a path that carries
                # media one way is pinged before its stall bound runs out
                if self._probing and scheduler.sent(path_id, nbytes, now):
                    rearm = True
        if rearm:
            self._rearm()

    def send_stream_data(self, channel_id: int, data: bytes) -> bool:
        carrier = self.carrier
        return carrier is not None and carrier.send_stream_data(channel_id, data)

    def end_stream(self, channel_id: int) -> None:
        carrier = self.carrier
        if carrier is not None:
            carrier.end_stream(channel_id)

    def register_stream_producer(self, producer: IPushProducer) -> None:
        if any(p is producer for p in self._producers):
            return
        self._producers.append(producer)
        carrier = self.carrier
        if carrier is not None:
            carrier.register_stream_producer(producer)

    def unregister_stream_producer(self, producer: IPushProducer) -> None:
        self._producers = [p for p in self._producers if p is not producer]
        for path in self._paths.values():
            path.unregister_stream_producer(producer)

    def adopt_session(self, session_id: str) -> None:
        self._session_id = session_id
        for path in self._paths.values():
            path.adopt_session(session_id)

    def route_datagrams(self, channel_id: int, first: Any, second: Any) -> None:
        self.routes[channel_id] = (first, second)
        self._arm()

    def unroute_datagrams(self, channel_id: int) -> None:
        self.routes.pop(channel_id, None)

    def bind_flow_key(self, flow_id: int, key: bytes) -> None:
        # The session's one cipher state: every path seals with it.
        if self.cipher is not None:
            self.cipher.bind_flow(flow_id, key)

    def bind_channel_to_flow(self, channel_id: int, flow_id: int) -> None:
        if self.cipher is not None:
            self.cipher.bind_channel(channel_id, flow_id)

    def export_keying_material(self, label: bytes, length: int) -> bytes | None:
        if label == EXPORTER_LABEL and length == KEY_LENGTH:
            return self._exported
        carrier = self.carrier
        return None if carrier is None else carrier.export_keying_material(label, length)

    def go_away(self, reason: str = "shutting down", drain: float | None = None) -> None:
        for path in list(self._paths.values()):
            path.go_away(reason, drain)

    def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "closed") -> None:
        self.flush_media()
        for path in list(self._paths.values()):
            path.close(code, reason)

    def __repr__(self) -> str:
        return f"<PathFront {self.session_id} paths={sorted(self._paths)} carrier={self._carrier_id}>"


def _bound_attach(path: TunnelProtocol) -> bool:
    """
    Agent: whether C{path}'s hello carried its attach proof and the
    contact point's welcome says it checks such proofs.
    """
    attach = path.local_hello.get("attach")
    return isinstance(attach, dict) and "proof" in attach and path.peer_hello.get("attach_bound") == 1


class _OneResumer:
    """
    L{PathSessions.seal}: the hello of each connection as its TLS
    handshake is done.
    """

    def __init__(self, sessions: PathSessions, inner: HelloSeal) -> None:
        self._sessions = sessions
        self._inner = inner

    def seal_hello(self, path: TunnelProtocol, hello: dict[str, Any]) -> dict[str, Any] | HelloHold | None:
        sessions = self._sessions
        front = sessions.front
        if front is not None and front.is_open:
            if "attach" in hello and front.hold_hello(path):
                sessions.hellos_held += 1
                return HOLD
            return self._attach_proof(path, hello, front)
        if "attach" in hello:
            # made to join the session, whose last connection was lost
            # since (an address change breaks them one by one, as each
            # sends): it resumes the session instead, a handshake sooner
            # than a connection made anew
            now = sessions.made_hello() if sessions.made_hello is not None else {}
            if "resume" not in now:
                return None  # nothing to resume: refused as an attach
            hello = {key: value for key, value in hello.items() if key != "attach"}
            hello.update(now)
            return self._resume_proofs(path, hello) or hello
        return self._resume_proofs(path, hello) if "resume" in hello else None

    @staticmethod
    def _attach_proof(path: TunnelProtocol, hello: dict[str, Any], front: PathFront) -> dict[str, Any] | None:
        """
        A joining hello with its proof, bound to the connection's TLS
        session: no challenge to wait for.
        """
        attach = hello.get("attach")
        if not isinstance(attach, dict) or attach.get("session_id") != front.session_id:
            return None
        binding = path.export_keying_material(EXPORTER_LABEL, KEY_LENGTH)
        if binding is None:
            return None
        return {**hello, "attach": {**attach, "proof": attach_proof(front.attach_key, binding, front.session_id, bound=True)}}

    def _resume_proofs(self, path: TunnelProtocol, hello: dict[str, Any]) -> dict[str, Any] | None:
        """
        A resuming hello with the resumption's proofs, unless another
        connection's hello carries them.
        """
        if self._sessions._resumer not in (None, path):
            return None
        sealed = self._inner.seal_hello(path, hello)
        # (the session's resumption holds no hello)
        return None if isinstance(sealed, HelloHold) else sealed

    def sent(self, path: TunnelProtocol) -> None:
        self._sessions._resuming(path)
        self._inner.sent(path)


class PathSessions:
    """
    The tunnel observer of a half that speaks C{paths}: connections in,
    session fronts out (see the module's docstring).

    @ivar fronts: the live fronts (the agent has at most one).
    @ivar attach_refused: attachments refused (contact point) or refused
        to us (agent).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        observer: TunnelObserver,
        *,
        agent: bool,
        limits: PathLimits | None = None,
        keeper: PathKeeper | Keepers | None = None,
        moving: Callable[[], None] | None = None,
        count: PathCount | None = None,
        elsewhere: Callable[[object], int | None] | None = None,
        lost_all: Callable[[float], None] | None = None,
        orphaned: Callable[[str, list[tuple[int, int, bytes]], int], None] | None = None,
    ) -> None:
        """
        @param orphaned: called, once the session logic has heard that a
            session lost its last path, with its id, the SIP messages the
            peer had not acknowledged (number, flow id and bytes, oldest
            first) and the next number this half expected from the peer:
            the messages go after the resumption, those the peer says it
            took (the resumption's C{sip_next}) left out
            (L{spwm.tap.parts.AgentTunnelHandle.carry},
            L{spwm.sip.transport.ContactSipRunner.carry}).
        @param lost_all: agent: called with the seconds the session was up
            when its last path is gone (every path broke: the tunnel
            service then tries again at once,
            L{spwm.tunnel.service.AgentTunnelService.session_lost}).
        @param count: agent, C{--tunnel-connections auto}: the session's
            front feeds it the media it receives (the keeper decides with
            it).
        @param elsewhere: contact point with C{--workers}: the own port of
            the worker that holds a session id, when another worker does
            (L{spwm.workers.WorkerPorts.redirect}); an attach to such a
            session is refused with that port (C{redirect}).
        @param moving: agent: called when the contact point sends go-away
            on a path of the session (the tunnel service reconnects at
            once); the session's other paths are closed, so the session
            moves as a whole (its last path's loss suspends it, the new
            connection resumes it).
        """
        self.log = instance_logger(self)  # compiled, the class attribute is not bound
        self.clock = clock
        self.observer = observer
        self.agent = agent
        self.limits = limits
        self.keeper = keeper
        self._moving = moving
        self.count = count
        self.elsewhere = elsewhere
        self._lost_all = lost_all
        self._orphaned = orphaned
        #: agent: how long the session lost last had been up, until the next one is made
        self._lost_up_for: float | None = None
        self.fronts: list[PathFront] = []
        self.attach_refused = 0
        #: agent: further connections whose hello waited to see whether
        #: the session was alive (L{PathFront.hold_hello})
        self.hellos_held = 0
        self.attach_redirected = 0
        #: attachments whose proof came in the hello, bound to the
        #: connection's TLS session (no challenge answered)
        self.attach_bound = 0
        self._pending: dict[int, TunnelProtocol] = {}
        self._timers: dict[int, IDelayedCall] = {}
        # per session (its front's id): the line of a lost connection
        # held back (the first's reason, connections gone, its timer)
        self._gone: dict[int, tuple[str, int, IDelayedCall]] = {}
        #: agent: the connection whose hello carries the resumption's
        #: proofs (L{seal}) until its welcome or its loss
        self._resumer: TunnelProtocol | None = None
        #: agent: what L{hello} made, the hello of a new connection now
        self.made_hello: Callable[[], dict[str, Any]] | None = None

    @property
    def front(self) -> PathFront | None:
        """
        The agent's live front, or C{None}.
        """
        return self.fronts[0] if self.fronts else None

    def hello(self, resume: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        """
        The agent's hello for each new connection: C{attach} to the live
        session if there is one, else what C{resume()} says (a fresh or a
        resumed session), always with C{paths}.
        """

        def hello() -> dict[str, Any]:
            front = self.front
            stalls = {"stalls": 1} if self.count is not None else {}
            if front is not None and front.is_open:
                # "final-stop" on every connection: whichever the contact
                # point loses last says that the agent stopped for good
                return {"paths": 1, "sip-seq": 1, "final-stop": 1, **stalls, "attach": {"session_id": front.session_id}}
            return {**resume(), "paths": 1, "sip-seq": 1, **stalls}

        self.made_hello = hello
        return hello

    def seal(self, inner: HelloSeal) -> HelloSeal:
        """
        Agent: the hello's bound resumption proofs (C{inner}'s, the
        session's resumption) for one connection at a time. The contact
        point resumes the session on the hello that carries them, so two
        such hellos (the tunnel service's and the path keeper's raced
        attempt, L{PathKeeper.race_resumption}) would take the session
        over from each other: the first connection whose TLS handshake
        is done sends them; a connection whose handshake is done while
        that one waits for its welcome, or after the session is resumed,
        sends its hello without them, and is closed at its welcome
        unless the first was lost by then (it then answers the
        challenge, as without bound proofs).

        A connection made to join the live session gets its attach proof
        in the hello, bound to its TLS session (the contact point attaches
        it on the hello, a round trip sooner). One made to join the
        session (its hello says C{attach}) whose handshake is done after
        the session's last connection was lost resumes the session instead (the path keeper keeps one such
        connection for that, L{PathKeeper.session_down}): an address
        change breaks the session's connections one by one, as each next
        sends, and the first loss starts a replacement of it.
        """
        return _OneResumer(self, inner)

    def _resuming(self, path: TunnelProtocol) -> None:
        """
        C{path}'s hello carries the resumption's proofs.
        """
        self._resumer = path

        def gone(_: object) -> None:
            if self._resumer is path:
                self._resumer = None

        path.when_closed().addCallback(gone)

    def _hold(self, path: TunnelProtocol) -> None:
        """
        A connection waits for its attachment (or, refused, for its end):
        it is closed if it is still waiting after L{ATTACH_TIMEOUT}.
        """
        self._pending[id(path)] = path
        if id(path) not in self._timers:
            self._timers[id(path)] = self.clock.callLater(ATTACH_TIMEOUT, self._too_late, path)

    def _release(self, path: TunnelProtocol) -> bool:
        """
        The connection waits no more.

        @return: whether it was waiting.
        """
        timer = self._timers.pop(id(path), None)
        if timer is not None and timer.active():
            timer.cancel()
        return self._pending.pop(id(path), None) is not None

    def _too_late(self, path: TunnelProtocol) -> None:
        self._timers.pop(id(path), None)
        if id(path) in self._pending:
            path.close(ErrorCode.HANDSHAKE_TIMEOUT, f"not attached within {ATTACH_TIMEOUT:g} s")

    def _new_front(self, path: TunnelProtocol, key: str) -> PathFront:
        self._lost_up_for = None
        front = PathFront(self.clock, path, bytes.fromhex(key), self.limits, probe=self.agent)
        if self.agent:
            front.count = self.count
        elif path.peer_hello.get("stalls") == 1:
            # the agent adapts its connection count: it hears of the
            # stalls of the media it sends from here
            front.count = PathCount(1, 1, self.limits)
            front.report_stalls = True
        self.fronts.append(front)
        self._watch(path)
        return front

    def _watch(self, path: TunnelProtocol) -> None:
        if self.agent:
            path.when_going_away().addCallback(self._went_away)

    def _went_away(self, path: TunnelProtocol) -> None:
        """
        Agent: the contact point is draining: the session leaves all its
        paths, not one.
        """
        front = path.front
        if front is None:
            return
        if self._moving is not None:
            self._moving()
        for other in front.paths:
            if other is not path:
                other.close(0, "moving after go-away")
        path.close(0, "moving after go-away")

    # -- TunnelObserver -------------------------------------------------------

    def tunnel_established(self, path: TunnelProtocol) -> None:
        connection = path.connection
        if connection is None or not connection.paths:
            self.observer.tunnel_established(path)
            return
        if self.agent:
            attach = path.local_hello.get("attach")
            if attach is not None:
                self._attach(path, attach)
                return
            key = path.peer_hello.get("attach_key")
            if path.cipher is not None and path.peer_hello.get("user-ciphering-paths") is not True:
                # an older contact point: it ciphers on one connection
                # only (it would take a further one for a new session)
                self.observer.tunnel_established(path)
                return
        else:
            attach = path.peer_hello.get("attach")
            if attach is not None:
                # it proves which session it belongs to next, or did in
                # its hello, bound to its TLS session
                self._hold(path)
                if isinstance(attach, dict) and "proof" in attach:
                    self._check_attach(path, attach, bound=True)
                return
            key = path.local_hello.get("attach_key")
        if not _is_key(key):
            self.observer.tunnel_established(path)
            return
        assert isinstance(key, str)
        if self.agent and self._resumer is not None:
            if self._resumer is not path:
                # made to resume the session while it was down, and
                # another connection's hello carries the proofs (seal):
                # the contact point resumes the session on it
                self._hold(path)
                path.close(0, "another connection is resuming the session")
                return
            self._resumer = None
        if self.agent and self.front is not None and self.front.is_open:
            # made to resume the session while it was down, and another
            # connection resumed it first (a raced resumption,
            # PathKeeper.race_resumption): a second would take the
            # session over from the first
            self._hold(path)
            path.close(0, "another connection resumed the session first")
            return
        front = self._new_front(path, key)
        self.observer.tunnel_established(front)  # type: ignore[arg-type]
        if self.agent and self.keeper is not None:
            self.keeper.session_up()

    def _attach(self, path: TunnelProtocol, attach: Any) -> None:
        """
        Agent: prove the new connection belongs to our session.
        """
        front = self.front
        challenge = path.peer_hello.get("challenge")
        session_id = attach.get("session_id") if isinstance(attach, dict) else None
        # until it is attached, its loss is no loss of the session's
        self._hold(path)
        bound = _bound_attach(path)
        connected_at = getattr(path, "connected_at", None)
        # (a proof in the hello was made with the front of the session
        # then, at the connection's TLS handshake: checked as it is)
        made_before = not bound and front is not None and connected_at is not None and front.since > connected_at
        if made_before:
            # made to join the session's earlier front (every path of it
            # broke, the session resumed meanwhile): the contact point may
            # not have the resumed session under that name yet
            path.close(0, "no session to attach to any more")
            return
        if front is None or not front.is_open or front.session_id != session_id or not isinstance(challenge, str):
            if self.front is None and self._lost_all is not None and self._lost_up_for is not None:
                # made to join the session while it was still up (its
                # other paths broke meanwhile): if it is the tunnel
                # service's, its next attempt (a resumption) goes at once
                self._lost_all(self._lost_up_for)
            path.close(0, "no session to attach to any more")
            return
        if bound:
            return  # the contact point checked the hello's proof: its answer comes
        try:
            raw = bytes.fromhex(challenge)
        except ValueError:
            path.close(ErrorCode.BAD_CONTROL, "bad challenge")
            return
        path.send_control(
            {"op": "attach", "session_id": session_id, "proof": attach_proof(front.attach_key, raw, session_id)}
        )

    def control_received(self, path: TunnelProtocol, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "attach" and not self.agent and id(path) in self._pending:
            self._check_attach(path, message)
            return
        if op == "attached" and self.agent and id(path) in self._pending:
            front = self.front
            if front is None or not front.is_open:
                path.close(0, "no session to attach to any more")
                return
            if (getattr(path, "cipher", None) is None) != (front.cipher is None):
                self.attach_refused += 1
                self.log.warn(
                    "session {session_id}: a connection not agreeing on per-user ciphering as the session did is closed",
                    session_id=front.session_id,
                )
                path.close(ErrorCode.REFUSED, "per-user ciphering not agreed on this connection")
                return
            self._release(path)
            self.attach_bound += _bound_attach(path)
            path_id = front.add_path(path, path_kind(path))
            self._watch(path)
            self.log.info(
                "session {session_id}: connection {path_id} attached ({peer}); {count} paths",
                session_id=front.session_id,
                path_id=path_id,
                peer=path.peer,
                count=len(front.paths),
            )
            if self.keeper is not None:
                self.keeper.attached(path)
            return
        if op == "attach-failed" and self.agent and id(path) in self._pending:
            self.attach_refused += 1
            reason = str(message.get("reason", "refused"))
            self.log.warn(
                "the contact point refused another connection to the session: {reason}", reason=reason
            )
            path.close(0, f"attach refused: {reason}")
            return
        if id(path) in self._pending:
            return  # nothing else before the attachment
        if op == "media-stalls" and self.agent:
            self._peer_stalls(path.front, message.get("total"))
            return
        if op == "sip-ack" and path.front is not None:
            path.front.sip_acked(message.get("next"))
            return
        self.observer.control_received(path.front or path, message)  # type: ignore[arg-type]

    def _peer_stalls(self, front: PathFront | None, total: object) -> None:
        """
        Agent: the contact point saw media stalls in what we send (its
        running C{total}): they count as ours (at most ten a message).
        """
        count = self.count
        if front is None or count is None or not isinstance(total, int) or isinstance(total, bool):
            return
        new = total - front.peer_stalls if total >= front.peer_stalls else total
        front.peer_stalls = total
        now = self.clock.seconds()
        covered = front._covered(now)
        for _ in range(max(0, min(new, 10))):
            count.stall(now, covered)

    def _check_attach(self, path: TunnelProtocol, message: dict[str, Any], bound: bool = False) -> None:
        """
        Contact point: a connection proves it belongs to a live session
        (refused, it stays pending until its loss, which is nobody else's).

        @param bound: the proof came in the hello (C{message} is its
            C{attach}), over the connection's TLS keying material.
        """
        session_id = message.get("session_id")
        if bound:
            raw = path.export_keying_material(EXPORTER_LABEL, KEY_LENGTH)
        else:
            challenge = path.local_hello.get("challenge")
            raw = bytes.fromhex(challenge) if isinstance(challenge, str) else None
        front = next((f for f in self.fronts if f.session_id == session_id and f.is_open), None)
        problem = None
        redirect = self.elsewhere(session_id) if front is None and self.elsewhere is not None else None
        if redirect is not None:
            # another worker's session: the agent is told where it is
            self.attach_redirected += 1
            self.log.info(
                "another connection to session {session_id} from {peer}: held by the worker on port {port}; agent sent there",
                session_id=session_id,
                peer=path.peer,
                port=redirect,
            )
            path.send_control({"op": "attach-failed", "reason": "session held by another worker", "redirect": redirect})
            path.close(ErrorCode.REFUSED, "attach: session held by another worker")
            return
        if not isinstance(session_id, str) or front is None:
            problem = "no live session by that name"
        elif raw is None:
            problem = "bound proof without TLS keying material" if bound else "no challenge was sent"
        elif front.agent_id != path.agent_id:
            problem = "another agent's session"
        elif not check_attach_proof(front.attach_key, raw, session_id, message.get("proof"), bound=bound):
            problem = "wrong proof"
        elif (getattr(path, "cipher", None) is None) != (front.cipher is None):
            problem = "per-user ciphering not agreed on this connection as on the session"
        elif len(front.scheduler) >= front.scheduler.limits.max_paths:
            problem = f"the session has {len(front.scheduler)} connections, the most this contact point takes"
        if problem is not None or front is None or not isinstance(session_id, str):
            self.attach_refused += 1
            self.log.warn(
                "refused another connection to session {session_id} from {peer}: {reason}",
                session_id=session_id,
                peer=path.peer,
                reason=problem,
            )
            path.send_control({"op": "attach-failed", "reason": problem})
            path.close(ErrorCode.REFUSED, f"attach refused: {problem}")
            return
        self._release(path)
        self.attach_bound += bound
        path.adopt_session(session_id)
        path_id = front.add_path(path, path_kind(path))
        path.send_control({"op": "attached", "session_id": session_id, "path_id": path_id})
        self.log.info(
            "session {session_id}: connection {path_id} attached from {peer}; {count} paths",
            session_id=session_id,
            path_id=path_id,
            peer=path.peer,
            count=len(front.paths),
        )

    def tunnel_lost(self, path: TunnelProtocol, reason: str) -> None:
        if self._release(path):
            if self.keeper is not None:
                self.keeper.lost(path)
            return
        front = path.front
        if front is None:
            if self.keeper is not None:
                self.keeper.lost(path)
            self.observer.tunnel_lost(path, reason)
            return
        if front.remove_path(path):
            self._gone_line(front, reason)
            if self.keeper is not None:
                self.keeper.lost(path)
            return
        self.fronts = [f for f in self.fronts if f is not front]
        self._say_gone(front, also=1)
        if self.keeper is not None:
            self.keeper.session_down()
            if self.agent and front.scheduler.network_lossy(self.clock.seconds()):
                self.keeper.race_resumption()
            self.keeper.lost(path)
        if self._lost_all is not None:
            self._lost_up_for = self.clock.seconds() - front.since
            self._lost_all(self._lost_up_for)
        self.observer.tunnel_lost(front, reason)  # type: ignore[arg-type]
        order = front.sip_order
        if self._orphaned is not None and order is not None:
            self._orphaned(front.session_id, order.unacked() if order.kept else [], order.expected)
        # the hellos that waited to see whether the session was alive:
        # one resumes it now (_OneResumer)
        front.release_hellos()

    def _gone_line(self, front: PathFront, reason: str) -> None:
        """
        A connection of C{front}'s session is gone and others are left:
        the line waits L{GONE_LINE_WAIT} for the losses of those that go
        with it (a contact point that dies closes them all within
        moments, and each loss is told alone), so that it counts only the
        connections still alive.
        """
        pending = self._gone.get(id(front))
        if pending is not None:
            self._gone[id(front)] = (pending[0], pending[1] + 1, pending[2])
            return
        timer = self.clock.callLater(GONE_LINE_WAIT, self._say_gone, front)
        self._gone[id(front)] = (reason, 1, timer)

    def _say_gone(self, front: PathFront, also: int = 0) -> None:
        """
        Log the line L{_gone_line} held for C{front}, if any, with
        C{also} more connections gone (its last, when its session is lost).
        """
        pending = self._gone.pop(id(front), None)
        if pending is None:
            return
        reason, count, timer = pending
        if timer.active():
            timer.cancel()
        count += also
        left = front.live_paths() if not also else 0
        if left == 0:
            # closed too, their losses not told yet (a stop), or gone:
            # the session's own loss line follows
            rest = "none left"
        elif left == 1:
            rest = "going on on the other connection"
        else:
            rest = f"going on on the {left} others"
        self.log.info(
            "session {session_id}: {what} ({reason}); {rest}",
            session_id=front.session_id,
            what="a connection is gone" if count == 1 else f"{count} connections are gone",
            reason=reason,
            rest=rest,
        )

    def status(self) -> dict[str, Any]:
        """
        For the status page: paths per live session, carrier moves.
        """
        media_on: dict[str, int] = {}
        quic_paths = 0
        for front in self.fronts:
            kind = front.media_kind() or "none"
            media_on[kind] = media_on.get(kind, 0) + 1
            quic_paths += sum(1 for p in front.paths if path_kind(p) is PathKind.QUIC)
        status: dict[str, Any] = {
            "sessions_with_paths": len(self.fronts),
            "paths": sum(len(f.paths) for f in self.fronts),
            "quic_paths": quic_paths,
            "carrier_switches": sum(f.switches for f in self.fronts),
            "media_switches": sum(f.scheduler.media_switches for f in self.fronts),
            "path_stalls": sum(f.scheduler.stalls for f in self.fronts),
            "stalls_held": sum(f.scheduler.stalls_held for f in self.fronts),
            "media_on": media_on,
            "attach_refused": self.attach_refused,
            "attach_redirected": self.attach_redirected,
            "attach_bound": self.attach_bound,
        }
        orders = [f.sip_order.snapshot() for f in self.fronts if f.sip_order is not None]
        if orders:
            # SIP numbered across the paths (sip-seq), summed over the live sessions
            status["sip_order"] = {k: sum(o[k] for o in orders) for k in orders[0]}
        ciphers = [f.cipher.snapshot() for f in self.fronts if f.cipher is not None]
        if ciphers:
            # per-user ciphering, summed over the live sessions' cipher states
            status["ciphering"] = {k: sum(c[k] for c in ciphers) for k in ciphers[0]}
        if self.agent:
            live = self.front
            status["session"] = live.summary() if live is not None else None
            if self.count is not None:
                status.update(self.count.snapshot())
            for keeper in getattr(self.keeper, "parts", (self.keeper,)):
                if isinstance(keeper, PathKeeper):
                    # replacements raced on a lossy link, and their losers
                    status["replacements_raced"] = keeper.raced
                    status["race_losers"] = keeper.race_losers
                    # resumptions raced, and those made on our attempt
                    status["resumptions_raced"] = keeper.resumptions_raced
                    status["resumptions_won"] = keeper.resumptions_won
            status["hellos_held"] = self.hellos_held
        return status


def _is_key(value: object) -> bool:
    if not isinstance(value, str) or not 32 <= len(value) <= 128:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


class KeptFront(Protocol):
    """
    What a L{PathKeeper} uses of its session's front: a L{PathFront}, or
    what stands for one in a test (compiled code checks a declared class
    at run time, not an interface).
    """

    @property
    def session_id(self) -> str: ...

    @property
    def carrier(self) -> TunnelProtocol | None: ...

    @property
    def paths(self) -> list[TunnelProtocol]: ...

    @property
    def scheduler(self) -> PathScheduler: ...

    def live_paths(self) -> int: ...

    def path_id(self, path: TunnelProtocol) -> int | None: ...

    def remove_path(self, path: TunnelProtocol) -> bool: ...

    def watch_link(self, now: float) -> None: ...


class PathKeeper:
    """
    Agent: keeps C{extra} connections besides the tunnel service's own
    attached to the session while it is up, each replaced in the
    background when lost (at once, then with a growing delay while
    attempts fail).  One lost sooner than L{STEADY_UP} after it attached
    (a middlebox that kills every further connection a moment after it is
    up) is replaced at once from a L{PromptBucket}, past it after a delay
    that grows with each such loss in a row, until one lasts.

    With a L{PathCount} (C{--tunnel-connections auto}) C{extra} follows
    it: every L{COUNT_INTERVAL} while the session is up the keeper asks it,
    opens one more connection when it wants more, and I{drains} one of
    its own when it wants fewer: the connection leaves the session at once
    (the carrier and the media move off it, as off a lost path), still
    delivers what the peer sends on it, and is closed C{count_drain}
    later, when the peer has stopped using it (it is no longer pinged, so
    the peer finds it stalled).

    On a link that loses packets (the kernel retransmitted on a path
    lately: L{PathScheduler.network_lossy}) the replacement of an attached
    connection of ours is I{raced}: two attempts at once, the first to
    attach is kept and the other closed; when the tunnel service's own
    connection is lost while the session goes on (the service makes
    another), one of ours races it, and is drained if both attach.  A lost segment of a new
    connection's handshakes (TCP, TLS, the tunnel's hello and attach: some
    eight segments) costs a retransmission timeout of half a second or
    more on such a link, so one attempt in three or four takes that much
    longer; while the replacement is not there the media has one copy
    fewer.  Only with room for both under the contact point's C{max_paths}.

    When the session's last path breaks on such a link (an address change
    breaks every connection at once), one attempt of ours races the tunnel
    service's resumption (L{race_resumption}): whichever is up first
    resumes the session (L{PathSessions} closes the other when it is up);
    ours, if first, is one of ours from then on, and the service's own
    next connection attaches beside it (one of ours is drained then).

    @ivar opened: connections it opened.
    @ivar drained: connections it closed because fewer were wanted.
    @ivar raced: replacements raced (two attempts at once).
    @ivar race_losers: attempts closed because the other attached first.
    @ivar resumptions_raced: resumptions raced (one attempt of ours beside
        the tunnel service's).
    @ivar resumptions_won: of them, resumed on ours.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        connect: Callable[[], Deferred[Any]],
        extra: int,
        *,
        retry_cap: float = 30.0,
        count: PathCount | None = None,
        front: Callable[[], KeptFront | None] | None = None,
    ) -> None:
        """
        @param connect: opens one more connection (the agent's endpoint and
            tunnel factory); fires with its protocol.
        @param count: decides C{extra} (its C{wanted} less the tunnel
            service's own connection).
        @param front: the live session's front (to drain a connection from).
        """
        self.log = instance_logger(self)  # compiled, the class attribute is not bound
        self.clock = clock
        self._connect = connect
        self.count = count
        self.extra = extra if count is None else count.wanted - 1
        self.retry_cap = retry_cap
        self.opened = 0
        self.drained = 0
        self.raced = 0
        self.race_losers = 0
        self.resumptions_raced = 0
        self.resumptions_won = 0
        #: the session's last path broke on a lossy link: an attempt of
        #: ours whose hello offers the resumption is kept (L{_resumers})
        self._resume_race = False
        self._resumers: dict[int, Any] = {}
        self._stopped = False
        #: one attempt more than C{extra} is wanted now, a raced
        #: replacement: L{_OURS} (two of ours, the first to attach wins),
        #: L{_SERVICE}'s (one of ours beside the tunnel service's own next
        #: connection; drained once that one attached), or 0
        self._race = 0
        #: the connections it made (the tunnel service's own are not)
        self._made: WeakSet[Any] = WeakSet()
        self._front = front or (lambda: None)
        self._mine: dict[int, Any] = {}
        self._draining: dict[int, tuple[Any, IDelayedCall]] = {}
        self._connecting = 0
        # the attempts under way, cancelled when the agent stops
        self._attempts: set[Deferred[Any]] = set()
        self._failures = 0
        # connections of ours lost young in a row past the bucket, and
        # when each of ours attached
        self._young = 0
        self._prompt = PromptBucket()
        self._attached_at: dict[int, float] = {}
        self._redirected: set[int] = set()
        self._up = False
        self._timer: IDelayedCall | None = None
        self._adapt_timer: IDelayedCall | None = None
        # a further connection cut before its handshake was told of since
        # the last one attached
        self._cut_told = False
        # the reason of the last further connection that failed, told
        # since the last one attached (the same is not told again)
        self._failure_told: str | None = None

    def session_up(self) -> None:
        """
        The session is up: open what is missing.  A resumption raced: if
        our attempt resumed the session it is one of ours from now on
        (the tunnel service's own next connection attaches beside it, and
        one of ours is drained then); our other attempts are closed.
        """
        self._up = True
        self._failures = 0
        if self._resume_race:
            self._resume_race = False
            front = self._front()
            first = front.paths[0] if front is not None and front.paths else None
            for key, protocol in list(self._resumers.items()):
                del self._resumers[key]
                if protocol is first:
                    self.resumptions_won += 1
                    self._mine[key] = protocol
                    self._attached_at[key] = self.clock.seconds()
                    self._race = _SERVICE
                else:
                    self.race_losers += 1
                    protocol.close(0, "another connection resumed the session first")
        self._fill()
        if self.count is not None and self._adapt_timer is None:
            self._adapt_timer = self.clock.callLater(COUNT_INTERVAL, self._adapt)

    def session_down(self) -> None:
        """
        The session's last path is gone: open nothing until it is up
        again.  Our connections still in their handshakes were made to
        join it (their hello says C{attach}) and would be refused once
        through them: they are closed now, which spares the link their
        TLS handshakes while the session is being resumed.
        """
        self._up = False
        self._race = 0
        self._resume_race = False
        for key, protocol in [] if self._stopped else list(self._mine.items()):
            if key not in self._attached_at:
                del self._mine[key]
                if getattr(protocol, "hello_held", False) and not self._resumers:
                    # its hello waits for its TLS handshake: it resumes
                    # the session instead (PathSessions.seal), racing the
                    # tunnel service's next connection
                    self._resume_race = True
                    self.resumptions_raced += 1
                    self._resumers[key] = protocol
                    continue
                protocol.close(0, "the session it was to join is gone")
                transport = getattr(protocol, "transport", None)
                if transport is not None:
                    transport.abortConnection()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._adapt_timer is not None and self._adapt_timer.active():
            self._adapt_timer.cancel()
        self._adapt_timer = None

    def race_resumption(self) -> None:
        """
        The session's last path broke on a lossy link (just after
        L{session_down}): an attempt of ours races the tunnel service's
        resumption, one of those under way if any (its hello, made as it
        connects, offers the resumption), else a new one.
        """
        if self._stopped or self._resumers:
            return  # the agent stopping closed the last path; or one of ours races already
        self._resume_race = True
        self.resumptions_raced += 1
        if not self._connecting:
            self._attempt()

    def attached(self, path: Any) -> None:
        self._failures = 0
        self._cut_told = False
        self._failure_told = None
        ours = id(path) in self._mine
        if ours:
            self._attached_at[id(path)] = self.clock.seconds()
        if self._race == _OURS and ours or self._race == _SERVICE and not ours:
            self._race_won()

    def _race_won(self) -> None:
        """
        A raced replacement attached (one of our two attempts, or the
        tunnel service's own connection that one of ours raced): our
        attempts not attached yet beyond C{extra} are closed (one still
        connecting is closed as it connects: more are not wanted); one of
        ours that attached first, beside the service's, is drained.
        """
        self._race = 0
        for key, protocol in list(self._mine.items()):
            if len(self._mine) <= self.extra:
                return
            if key not in self._attached_at:
                del self._mine[key]
                self.race_losers += 1
                protocol.close(0, "another connection attached first")
        while len(self._mine) > self.extra and self._drain(self._front()):
            self.race_losers += 1

    def redirected(self, path: Any) -> None:
        """
        The contact point sent this connection to another of its workers
        (L{spwm.session.workerroute.WorkerSteering}): its loss is no failed
        attempt, the next one goes at once.
        """
        self._redirected.add(id(path))

    def lost(self, path: Any) -> None:
        """
        A connection is gone: if it was one of ours, replace it.
        """
        if self._resumers.pop(id(path), None) is not None:
            return  # raced a resumption and did not make it
        draining = self._draining.pop(id(path), None)
        if draining is not None and draining[1].active():
            draining[1].cancel()
        redirected = id(path) in self._redirected
        self._redirected.discard(id(path))
        attached_at = self._attached_at.pop(id(path), None)
        if self._mine.pop(id(path), None) is None:
            if self._up and path not in self._made and getattr(path, "front", None) is not None:
                # the tunnel service's own connection, attached, is gone
                # while the session goes on: the service makes another; on
                # a lossy link one of ours races it
                now = self.clock.seconds()
                if not self._race and self._lossy_room(now):
                    self._race = _SERVICE
                    self.raced += 1
                    self._later()
            return
        if not self._up:
            return
        if path.front is None and not redirected:
            # never attached: wait before the next attempt
            self._failures += 1
            if self._race == _OURS:
                self._race = 0
            self._tell_cut(path)
        elif attached_at is not None and draining is None and not redirected:
            now = self.clock.seconds()
            if now - attached_at >= STEADY_UP:
                self._young = 0
            elif not self._prompt.take(now):
                # lost young again and again: wait, longer each time
                self._young += 1
            if not self._race and not self._young and self._lossy_room(now):
                self._race = _OURS
                self.raced += 1
        self._later()

    def _lossy_room(self, now: float) -> bool:
        """
        @return: whether a replacement is to be raced now: the link loses
            packets, and the session has room for one more attempt than
            wanted under the contact point's C{max_paths}.
        """
        front = self._front()
        if front is None:
            return False
        scheduler = front.scheduler
        wanted = 1 + self.extra + scheduler.quic_paths()
        return wanted < scheduler.limits.max_paths and scheduler.network_lossy(now)

    def _tell_cut(self, path: Any) -> None:
        """
        One line (the first of a row, not per retry) for a further
        connection the contact point closed before its handshake: over
        its C{--max-tunnels} or C{--max-tunnels-per-address} it closes a
        connection as it takes it, without a word.  (One it refused in the
        handshake was told with its reason: it has C{close_info}.)
        """
        if self._cut_told or getattr(path, "close_info", None) is not None:
            return
        self._cut_told = True
        lost = getattr(path, "lost_reason", None)
        front = self._front()
        self.log.info(
            "the contact point closed a further connection before its handshake ({reason}): it does so over"
            " its --max-tunnels or --max-tunnels-per-address limit (its log says); the session goes on on"
            " {count} connection(s), another is tried after a growing delay",
            reason=lost.getErrorMessage() if lost is not None else "closed",
            count=front.live_paths() if front is not None else 0,
        )

    def _later(self) -> None:
        if self._timer is not None and self._timer.active():
            return
        waits = self._failures + self._young
        delay = 0.0 if waits == 0 else min(self.retry_cap, 0.5 * 2 ** min(waits - 1, 16))
        self._timer = self.clock.callLater(delay, self._fill)

    def _fill(self) -> None:
        self._timer = None
        while self._up and len(self._mine) + self._connecting < self.extra + bool(self._race):
            self._attempt()

    def _attempt(self) -> None:
        self._connecting += 1
        self.opened += 1
        d = self._connect()
        self._attempts.add(d)
        d.addBoth(self._attempt_over, d)
        d.addCallbacks(self._connected, self._failed)

    def _attempt_over(self, result: Any, d: Deferred[Any]) -> Any:
        self._attempts.discard(d)
        return result

    def _connected(self, protocol: Any) -> None:
        self._connecting -= 1
        hello = getattr(protocol, "local_hello", None)
        if not self._up or (isinstance(hello, dict) and "attach" not in hello):
            held = getattr(protocol, "hello_held", False)
            racing = (self._resume_race or held) and not self._up and not self._resumers and not self._stopped
            if racing and isinstance(hello, dict) and ("resume" in hello or held):
                # it races the tunnel service's resumption: the first up
                # resumes, PathSessions closes the other (on a lossy
                # link, or over TLS, where its hello, decided at its
                # handshake, carries the proofs if it is first: it was
                # made when the first connection broke, ahead of the
                # service's)
                if not self._resume_race:
                    self._resume_race = True
                    self.resumptions_raced += 1
                self._resumers[id(protocol)] = protocol
                self._made.add(protocol)
                protocol.when_closed().addCallback(self.lost)
                return
            # The session's last connection went while this one was made:
            # its hello (made as it connected) offers to resume the
            # session or start one, which is the tunnel service's
            # connection's to do (but for one raced on a lossy link,
            # above); two would resume it twice (the second taking it
            # over from the first) or, with --workers, at a worker
            # chosen for the attach.
            protocol.close(0, "the session is gone")
            return
        if len(self._mine) >= self.extra + bool(self._race):
            protocol.close(0, "not wanted any more")
            return
        self._mine[id(protocol)] = protocol
        self._made.add(protocol)
        # a connection whose handshake fails is no tunnel the observer hears of
        protocol.when_closed().addCallback(self.lost)

    def _failed(self, reason: Failure) -> None:
        self._connecting -= 1
        if reason.check(CancelledError) and not self._up:
            return  # stop() cancelled it
        self._failures += 1
        if self._race == _OURS:
            self._race = 0
        why = reason.getErrorMessage()
        if why != self._failure_told:
            # one line per reason until a further connection attaches:
            # the retries come after a growing delay, for as long as the
            # failure lasts
            self._failure_told = why
            self.log.info(
                "another connection to the contact point failed: {reason}; tried again after a growing"
                " delay (the same failure is not logged again)",
                reason=why,
            )
        if self._up:
            self._later()

    # -- --tunnel-connections auto ---------------------------------------------

    def _adapt(self) -> None:
        """
        Ask the count; open or drain one connection when it changed.
        """
        self._adapt_timer = None
        count = self.count
        if count is None or not self._up:
            return
        self._adapt_timer = self.clock.callLater(COUNT_INTERVAL, self._adapt)
        now = self.clock.seconds()
        front = self._front()
        on_quic = False
        cap = count.limits.max_paths - 1
        if front is not None:
            front.watch_link(now)
            scheduler = front.scheduler
            # the media on a QUIC path: TCP connections carry none of it,
            # so neither its load nor its stalls ask for more of them
            on_quic = scheduler.media_on_quic()
            # a link the kernel retransmits on, not a stall of a busy
            # process: more connections would not help that
            copied = scheduler.copies_since(now) is not None and scheduler.network_lossy(now)
            count.load(0.0 if on_quic else scheduler.media_rate(now), copied and not on_quic)
            # the contact point takes max_paths paths a session, the
            # QUIC path among them
            cap -= scheduler.quic_paths()
        extra = min(count.decide(now, grow=not on_quic) - 1, max(0, cap))
        if extra == self.extra:
            return
        session = front.session_id if front is not None else None
        if extra > self.extra:
            before, self.extra = self.extra, extra
            if count.for_load == count.wanted:
                self.log.info(
                    "session {session_id}: {rate:.0f} media datagrams/s on a lossy link;"
                    " spreading them over {wanted} connections",
                    session_id=session,
                    rate=front.scheduler.media_rate(now) if front is not None else 0.0,
                    wanted=count.wanted,
                )
            else:
                more = extra - before
                self.log.info(
                    "session {session_id}: {why}; opening {what} ({wanted} wanted{spare})",
                    session_id=session,
                    why=count.why,
                    what="another" if more == 1 else f"{more} more",
                    wanted=count.wanted,
                    spare=f", {count.spare} of them spare" if count.spare else "",
                )
            self._fill()
            return
        fewer = self.extra - extra
        self.extra = extra
        self.log.info(
            "session {session_id}: {why}; dropping {what} ({wanted} wanted)",
            session_id=session,
            why=count.why,
            what="a connection" if fewer == 1 else f"{fewer} connections",
            wanted=count.wanted,
        )
        while len(self._mine) > self.extra:
            if not self._drain(front):
                break

    def _drain(self, front: KeptFront | None) -> bool:
        """
        Take one of our connections out of the session now and close it
        C{count_drain} later; not the carrier while another can be.

        @return: whether there was one to drain.
        """
        if not self._mine:
            return False
        carrier = front.carrier if front is not None else None
        mine = list(self._mine.values())
        # (mine[::-1], not reversed(mine): mypyc fails on the latter here)
        path = next((p for p in mine[::-1] if p is not carrier), mine[-1])
        del self._mine[id(path)]
        self.drained += 1
        if front is not None and front.path_id(path) is not None:
            front.remove_path(path)
        limits = self.count.limits if self.count is not None else front.scheduler.limits if front else PathLimits()
        delay = limits.count_drain
        self._draining[id(path)] = (path, self.clock.callLater(delay, self._drained, path))
        return True

    def _drained(self, path: Any) -> None:
        self._draining.pop(id(path), None)
        path.close(0, "fewer connections wanted")

    def stop(self) -> None:
        self._stopped = True
        self.session_down()
        for d in list(self._attempts):
            # an attempt under way would go on connecting after the stop
            d.cancel()
        for protocol in [*self._mine.values(), *self._resumers.values()]:
            protocol.close_for_good("agent stopping")
        for path, timer in list(self._draining.values()):
            if timer.active():
                timer.cancel()
            path.close_for_good("agent stopping")
        self._draining.clear()
