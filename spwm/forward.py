# -*- test-case-name: tests.test_forward -*-
"""
Static UDP forwards through the tunnel.

On the agent, C{--forward-udp LOCAL_PORT=HOST:PORT} listens on a local UDP
port; each local sender gets its own datagram channel (so answers find their
way back), and the contact point sends the datagrams from a socket of its own
to C{HOST:PORT}, returning what that target answers.  The contact point only
forwards to targets named by C{--allow-forward}.

A sender's forward is a flow of the session, not of the connection: its
channel names it (C{"flow": N} in the channel's metadata), and on the
connection that resumes the session it gets the socket it had, so the
target goes on seeing the same source address (a target that answers
where the first datagram came from, as RTP peers do, keeps answering to
the right place). The contact point opens the flow's channel again
itself as it resumes the session, when the agent's hello said
C{"reopen-forwards": 1}, so what the target sends comes down a round trip
sooner than if it waited for the agent's open; an agent whose contact
point does not say so in its welcome opens its flows again itself.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime, IReactorUDP, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from spwm.addr import hostport
from spwm.errors import ListenError
from spwm.logthrottle import PowersOfTwo, ThrottledLog
from spwm.tunnel.api import Refusal
from spwm.tunnel.frames import ChannelKind, ErrorCode
from spwm.tunnel.connection import TunnelNotOpenError
from spwm.tunnel.protocol import ChannelLimitError, TunnelProtocol

USE = "forward-udp"


def set_receive_buffer(transport: Any, size: int) -> None:
    """
    Ask for a large receive buffer on a UDP socket (media and forwards).
    """
    try:
        transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except (OSError, AttributeError):
        pass


class _LocalPort(DatagramProtocol):
    """
    The agent's local socket of one forward.
    """

    transport: IUDPTransport  # set by the reactor before any event

    noisy = False

    def __init__(self, forwarder: AgentForwarder, target: str) -> None:
        self.forwarder = forwarder
        self.target = target
        # sender address -> channel id (on the current tunnel)
        self.channels: dict[tuple[str, int], int] = {}
        # sender address -> its flow number (kept across a lost tunnel)
        self.flows: dict[tuple[str, int], int] = {}
        # senders whose flow waits for the contact point to open it again
        # (a resumed session, "reopen-forwards"): kept if the tunnel is
        # lost before it does
        self.waiting: set[tuple[str, int]] = set()

    def startProtocol(self) -> None:
        set_receive_buffer(self.transport, self.forwarder.receive_buffer)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        tunnel = self.forwarder.tunnel
        if tunnel is None:
            self.forwarder.dropped_no_tunnel += 1
            return
        cid = self.channels.get(addr)
        if cid is None:
            cid = self.forwarder.open(self, addr)
            if cid is None:
                return
        tunnel.send_datagram(cid, data)


class AgentForwarder:
    """
    The agent's part for UDP forwards (a tunnel application part for the
    C{forward-udp} use).

    @ivar dropped_no_tunnel: datagrams dropped while no tunnel was up.
    @ivar dropped_no_channel: datagrams dropped because their sender got no
        channel (more than C{max_senders} on one forward, or the tunnel
        refused one).
    @ivar reopened: flows whose channel the contact point opened again on
        a resumed session.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorUDP,
        forwards: list[tuple[str, int, str, int]],
        *,
        receive_buffer: int = 4 * 1024 * 1024,
        max_senders: int = 256,
    ) -> None:
        self._reactor = reactor
        self._forwards = forwards
        self.receive_buffer = receive_buffer
        self.max_senders = max_senders
        self.tunnel: TunnelProtocol | None = None
        self.ports: list[Any] = []
        self._locals: list[_LocalPort] = []
        # channel id -> (local port, sender)
        self._by_channel: dict[int, tuple[_LocalPort, tuple[str, int]]] = {}
        self._next_flow = 1
        self.dropped_no_tunnel = 0
        self.dropped_no_channel = 0
        self.reopened = 0
        self._no_channel_log = ThrottledLog(self.log, None, PowersOfTwo())

    def start(self) -> None:
        """
        Bind every local forward port.

        @raise ListenError: one cannot be bound (those bound before it stay
            in C{ports}, for L{stop}).
        """
        for local_host, local_port, host, port in self._forwards:
            proto = _LocalPort(self, hostport(host, port))
            try:
                self.ports.append(self._reactor.listenUDP(local_port, proto, interface=local_host, maxPacketSize=8192))
            except CannotListenError as e:
                raise ListenError.from_exception(
                    "forward-udp", f"{hostport(local_host, local_port)}={proto.target}", e
                ) from None
            self._locals.append(proto)
            self.log.info(
                "forwarding UDP {local} through the tunnel to {target}",
                local=hostport(local_host, local_port),
                target=proto.target,
            )

    def stop(self) -> None:
        """
        Close every local forward port.
        """
        for port in self.ports:
            port.stopListening()
        self.ports = []

    def open(self, local: _LocalPort, sender: tuple[str, int]) -> int | None:
        """
        A channel for C{sender}'s datagrams on the current tunnel, for the
        sender's flow (a new one for a new sender).

        @return: its id, or C{None}: none (counted and logged).
        """
        opened = self._open(local, sender)
        if isinstance(opened, str):
            self._no_channel(local, sender, opened)
            return None
        return opened

    def _open(self, local: _LocalPort, sender: tuple[str, int]) -> int | str:
        tunnel = self.tunnel
        if tunnel is None:
            return "no tunnel"
        if len(local.channels) >= self.max_senders:
            return f"more than {self.max_senders} senders on this forward"
        flow = local.flows.get(sender)
        if flow is None:
            flow = self._next_flow
            self._next_flow += 1
        meta = {"use": USE, "target": local.target, "flow": flow}
        try:
            cid = tunnel.open_channel(ChannelKind.DATAGRAM, meta, self)
        except (ChannelLimitError, TunnelNotOpenError) as e:
            return str(e)
        local.channels[sender] = cid
        local.flows[sender] = flow
        local.waiting.discard(sender)
        self._by_channel[cid] = (local, sender)
        return cid

    def _no_channel(self, local: _LocalPort, sender: tuple[str, int], reason: str) -> None:
        # counted always, logged the 1st, 2nd, 4th, 8th... time
        self.dropped_no_channel += 1
        self._no_channel_log.warn(
            None,
            "UDP forward to {target}: no channel for sender {sender}: {reason}"
            " ({count} datagrams dropped so far)",
            target=local.target,
            sender=hostport(sender[0], sender[1]),
            reason=reason,
            count=self.dropped_no_channel,
        )

    # -- the tunnel's life (told by the session logic) ---------------------

    def tunnel_established(self, tunnel: TunnelProtocol) -> None:
        """
        Open the forwards' channels on C{tunnel} from now on, and at once
        for every sender whose channel went with the tunnel before: on a
        resumed session the contact point gives each its socket again,
        so what the target sends comes back before the sender's next
        datagram.

        When C{tunnel} resumes the session and its contact point said
        C{"reopen-forwards"}, it opens those channels itself as it resumes
        the session (L{accept}), half a round trip before ours would
        reach it: none is opened here. (A sender that sends before the
        contact point's channel comes gets one of ours; the contact
        point's replaces it.)
        """
        self.tunnel = tunnel
        if _reopened_by_peer(tunnel):
            for local in self._locals:
                local.waiting = {sender for sender in local.flows if sender not in local.channels}
            return
        for local in self._locals:
            for sender in list(local.flows):
                # (one that cannot be opened now is opened, or refused
                # and counted, at the sender's next datagram)
                if sender not in local.channels and isinstance(self._open(local, sender), str):
                    break

    def tunnel_lost(self, tunnel: TunnelProtocol, reason: str) -> None:
        """
        The forwards' channels are gone with C{tunnel}; the flows of the
        senders that had one, or waited for the contact point to open it
        again, are kept for the next tunnel (at most C{max_senders} per
        forward, those waiting the first to go: those of senders gone
        quiet before are dropped).
        """
        if self.tunnel is tunnel:
            self.tunnel = None
        for local in self._locals:
            waiting = [s for s in local.flows if s in local.waiting and s not in local.channels]
            waiting = waiting[max(0, len(waiting) + len(local.channels) - self.max_senders) :]
            kept = set(local.channels).union(waiting)
            local.flows = {sender: flow for sender, flow in local.flows.items() if sender in kept}
            local.waiting = set(waiting)
            local.channels.clear()
        self._by_channel.clear()

    # -- acceptor and handler of the forward-udp channels ----------------

    def accept(
        self, tunnel: TunnelProtocol, channel_id: int, kind: ChannelKind, meta: dict[str, Any]
    ) -> AgentForwarder | Refusal:
        """
        The contact point opened a forward channel: one of our flows,
        opened again as it resumed the session, goes on it from now on
        (a channel of ours for the same flow, opened before this one came,
        is given up: the contact point refuses it). The agent accepts no
        other forward.
        """
        number = meta.get("flow")
        target = meta.get("target")
        if tunnel is self.tunnel and kind is ChannelKind.DATAGRAM and isinstance(number, int) and not isinstance(number, bool):
            for local in self._locals:
                if local.target != target:
                    continue
                for sender, flow in local.flows.items():
                    if flow != number:
                        continue
                    own = local.channels.get(sender)
                    if own is not None:
                        del self._by_channel[own]
                    local.waiting.discard(sender)
                    local.channels[sender] = channel_id
                    self._by_channel[channel_id] = (local, sender)
                    self.reopened += 1
                    return self
            return Refusal("no such forward flow")
        return Refusal("the agent accepts no forwards")

    def datagram_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes, component: int) -> None:
        entry = self._by_channel.get(channel_id)
        if entry is not None:
            entry[0].transport.write(data, entry[1])

    def channel_closed(self, tunnel: TunnelProtocol, channel_id: int, code: int, reason: str) -> None:
        entry = self._by_channel.pop(channel_id, None)
        if entry is None:
            return
        local, sender = entry
        local.channels.pop(sender, None)
        local.flows.pop(sender, None)
        local.waiting.discard(sender)
        if code == ErrorCode.REFUSED:
            self.log.warn("contact point refused forward to {target}: {reason}", target=local.target, reason=reason)

    def stream_data_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes) -> None:
        pass

    def stream_ended(self, tunnel: TunnelProtocol, channel_id: int) -> None:
        pass


def _reopened_by_peer(tunnel: Any) -> bool:
    """
    Whether C{tunnel}'s hello resumes a session and its contact point
    opens the session's forward flows again itself (C{"reopen-forwards"}
    in its welcome).
    """
    local = getattr(tunnel, "local_hello", None)
    peer = getattr(tunnel, "peer_hello", None)
    return (
        isinstance(local, dict)
        and isinstance(local.get("resume"), dict)
        and isinstance(peer, dict)
        and peer.get("reopen-forwards") == 1
    )


class _TargetSocket(DatagramProtocol):
    """
    The contact point's socket for one forwarded flow, connected to its
    target; its channel is C{tunnel}'s C{channel_id}, or none while the
    session waits to be resumed (C{tunnel} C{None}: what the target sends
    meanwhile is dropped).
    """

    transport: IUDPTransport  # set by the reactor before any event

    noisy = False

    def __init__(
        self, tunnel: TunnelProtocol, channel_id: int, owner: ContactForwarder, flow: tuple[str, int] | None
    ) -> None:
        self.tunnel: TunnelProtocol | None = tunnel
        self.channel_id = channel_id
        self.owner = owner
        #: (session id, the agent's flow number), or C{None}: an agent
        #: that names no flow (its socket goes with the connection)
        self.flow = flow
        #: the target as the agent named it (C{host:port})
        self.target = ""
        #: whether its channel is one the contact point opened (L{ContactForwarder.session_resumed})
        self.ours = False
        self.address: tuple[str, int] = ("", 0)
        self.last_active = 0.0
        self.port: Any = None
        self.timer: Any = None

    def startProtocol(self) -> None:
        set_receive_buffer(self.transport, self.owner.receive_buffer)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last_active = self.owner.clock.seconds()
        if self.tunnel is not None:
            self.tunnel.send_datagram(self.channel_id, data)

    def connectionRefused(self) -> None:
        pass


class ContactForwarder:
    """
    The contact point's part for UDP forwards: checks the target against the
    allow list and relays.

    A forward whose channel names its flow outlives the connection: when
    the connection goes and the session may be resumed, the socket stays
    (without a channel) until the agent opens the flow again on the
    resumed session, the session ends (L{session_ended}), or it has been
    idle for C{idle_timeout}.

    @ivar refused: how many forward channels were refused.
    @ivar reopened: flows whose channel this side opened again on a
        resumed session (L{session_resumed}).
    @ivar crossed: channels the agent opened for such a flow before it
        saw ours, refused (ours goes on; the agent takes it).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        allowed: list[tuple[str, int]],
        *,
        idle_timeout: float = 120.0,
        receive_buffer: int = 4 * 1024 * 1024,
        max_session_flows: int = 1024,
    ) -> None:
        self._reactor = reactor
        self.clock: IReactorTime = reactor
        self.allowed = {hostport(h, p): (h, p) for h, p in allowed}
        self.idle_timeout = idle_timeout
        self.receive_buffer = receive_buffer
        self.max_session_flows = max_session_flows
        self.refused = 0
        self.reopened = 0
        self.crossed = 0
        # (tunnel, channel) -> its socket
        self._sockets: dict[tuple[int, int], _TargetSocket] = {}
        # (session id, flow) -> its socket, with a channel or not
        self._flows: dict[tuple[str, int], _TargetSocket] = {}
        # session id -> its flows' sockets (insertion order: oldest first)
        self._by_session: dict[str, dict[_TargetSocket, None]] = {}

    @property
    def open_count(self) -> int:
        """
        The number of forward sockets open now (those waiting for a
        resumed session's channel too).
        """
        return len(self._sockets) + sum(1 for proto in self._flows.values() if proto.tunnel is None)

    def tunnel_lost(self, tunnel: TunnelProtocol, reason: str, resumable: bool = False) -> None:
        """
        A lost tunnel's forwards (told by the session logic): those of
        flows wait for the session's resumption when C{resumable}; the
        rest are closed.
        """
        for key in [k for k in self._sockets if k[0] == id(tunnel)]:
            proto = self._sockets.pop(key)
            if resumable and proto.flow is not None:
                proto.tunnel = None
            else:
                self._close(proto)

    def session_resumed(self, session_id: str, tunnel: TunnelProtocol) -> None:
        """
        The session goes on on C{tunnel} (resumed, or taken over from a
        connection that died silently), and its agent said
        C{"reopen-forwards"}: each flow's channel is opened again on it
        now, so what the target sends goes down at once rather than after
        the agent's open. The agent takes each by its flow number (or
        refuses one it forgot: the socket closes). A flow whose channel
        cannot be opened now waits for the agent's, as before.
        """
        for proto in list(self._by_session.get(session_id, ())):
            if proto.tunnel is tunnel:
                continue
            assert proto.flow is not None
            meta = {"use": USE, "target": proto.target, "flow": proto.flow[1]}
            try:
                channel_id = tunnel.open_channel(ChannelKind.DATAGRAM, meta, self)
            except (ChannelLimitError, TunnelNotOpenError):
                continue
            self._move(proto, tunnel, channel_id)
            proto.ours = True
            self.reopened += 1

    def session_ended(self, session_id: str) -> None:
        """
        The session ended (or was released without being resumed): its
        forwards' sockets close, with a channel or without.
        """
        for proto in list(self._by_session.get(session_id, ())):
            self._close(proto, close_channel=True)

    def accept(
        self, tunnel: TunnelProtocol, channel_id: int, kind: ChannelKind, meta: dict[str, Any]
    ) -> ContactForwarder | Refusal:
        """
        A forward channel from the agent: allowed targets get a socket,
        or the flow's socket again.
        """
        target = meta.get("target")
        address = self.allowed.get(target) if isinstance(target, str) else None
        if kind is not ChannelKind.DATAGRAM or address is None:
            self.refused += 1
            self.log.warn(
                "refused UDP forward from {peer} to {target}: not allowed",
                peer=tunnel.peer,
                target=target,
            )
            return Refusal(f"forward to {target} not allowed")
        number = meta.get("flow")
        flow = None
        if isinstance(number, int) and not isinstance(number, bool) and 0 < number < 2**32:
            flow = (tunnel.session_id, number)
            proto = self._flows.get(flow)
            if proto is not None and proto.address == address:
                if proto.ours and proto.tunnel is tunnel:
                    # the agent opened the flow before it read ours
                    # (session_resumed): it takes ours, so this refusal is
                    # the protocol, not a fault
                    self.crossed += 1
                    return Refusal("the flow has the contact point's channel")
                self._move(proto, tunnel, channel_id)
                proto.ours = False
                return self
            if proto is not None:
                self._close(proto, close_channel=True)
            if not self._room(tunnel.session_id):
                self.refused += 1
                return Refusal(f"more than {self.max_session_flows} forwards in this session")
        proto = _TargetSocket(tunnel, channel_id, self, flow)
        assert isinstance(target, str)  # (an allowed one)
        proto.target = target
        proto.address = address
        proto.last_active = self.clock.seconds()
        proto.port = self._reactor.listenUDP(0, proto, interface="::" if ":" in address[0] else "0.0.0.0")
        proto.transport.connect(*address)
        proto.timer = self._reactor.callLater(self.idle_timeout, self._check_idle, proto)
        self._sockets[id(tunnel), channel_id] = proto
        if flow is not None:
            self._flows[flow] = proto
            self._by_session.setdefault(flow[0], {})[proto] = None
        return self

    def _move(self, proto: _TargetSocket, tunnel: TunnelProtocol, channel_id: int) -> None:
        """
        A flow's socket goes on on C{tunnel}'s C{channel_id}; the channel
        it had, if any, is forgotten (it was on a connection of the session
        being taken over, which the session logic closes).
        """
        if proto.tunnel is not None:
            del self._sockets[id(proto.tunnel), proto.channel_id]
        proto.tunnel = tunnel
        proto.channel_id = channel_id
        proto.last_active = self.clock.seconds()
        self._sockets[id(tunnel), channel_id] = proto

    def _room(self, session_id: str) -> bool:
        """
        Whether the session may have one more flow: at the limit, its
        oldest flow without a channel makes room.
        """
        flows = self._by_session.get(session_id, {})
        if len(flows) < self.max_session_flows:
            return True
        for proto in flows:
            if proto.tunnel is None:
                self._close(proto)
                return True
        return False

    def _check_idle(self, proto: _TargetSocket) -> None:
        idle = self.clock.seconds() - proto.last_active
        if idle >= self.idle_timeout:
            self._close(proto, close_channel=True, reason="idle")
        else:
            proto.timer = self._reactor.callLater(self.idle_timeout - idle, self._check_idle, proto)

    def datagram_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes, component: int) -> None:
        proto = self._sockets.get((id(tunnel), channel_id))
        if proto is not None:
            proto.last_active = self.clock.seconds()
            proto.transport.write(data)  # type: ignore[call-arg]  # (connected: no address)

    def channel_closed(self, tunnel: TunnelProtocol, channel_id: int, code: int, reason: str) -> None:
        proto = self._sockets.get((id(tunnel), channel_id))
        if proto is not None:
            self._close(proto)

    def _close(self, proto: _TargetSocket, close_channel: bool = False, reason: str = "forward closed") -> None:
        """
        Close a forward's socket (and, when asked, its channel).
        """
        if proto.tunnel is not None:
            self._sockets.pop((id(proto.tunnel), proto.channel_id), None)
            if close_channel:
                proto.tunnel.close_channel(proto.channel_id, ErrorCode.NO_ERROR, reason)
            proto.tunnel = None
        if proto.flow is not None and self._flows.get(proto.flow) is proto:
            del self._flows[proto.flow]
            flows = self._by_session[proto.flow[0]]
            del flows[proto]
            if not flows:
                del self._by_session[proto.flow[0]]
        if proto.port is not None:
            proto.port.stopListening()
            proto.port = None
        if proto.timer is not None and proto.timer.active():
            proto.timer.cancel()

    def stream_data_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes) -> None:
        pass

    def stream_ended(self, tunnel: TunnelProtocol, channel_id: int) -> None:
        pass
