# -*- test-case-name: tests.test_forward -*-
"""
Static UDP forwards through the tunnel.

On the agent, C{--forward-udp LOCAL_PORT=HOST:PORT} listens on a local UDP
port; each local sender gets its own datagram channel (so answers find their
way back), and the contact point sends the datagrams from a socket of its own
to C{HOST:PORT}, returning what that target answers.  The contact point only
forwards to targets named by C{--allow-forward}.
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
        self.dropped_no_tunnel = 0
        self.dropped_no_channel = 0
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
        tunnel = self.tunnel
        if tunnel is None:
            return None
        if len(local.channels) >= self.max_senders:
            self._no_channel(local, sender, f"more than {self.max_senders} senders on this forward")
            return None
        try:
            cid = tunnel.open_channel(ChannelKind.DATAGRAM, {"use": USE, "target": local.target}, self)
        except (ChannelLimitError, TunnelNotOpenError) as e:
            self._no_channel(local, sender, str(e))
            return None
        local.channels[sender] = cid
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
        Open the forwards' channels on C{tunnel} from now on.
        """
        self.tunnel = tunnel

    def tunnel_lost(self, tunnel: TunnelProtocol, reason: str) -> None:
        """
        The forwards' channels are gone with C{tunnel}.
        """
        if self.tunnel is tunnel:
            self.tunnel = None
        for local in self._locals:
            local.channels.clear()
        self._by_channel.clear()

    # -- acceptor and handler of the forward-udp channels ----------------

    def accept(self, tunnel: TunnelProtocol, channel_id: int, kind: ChannelKind, meta: dict[str, Any]) -> Refusal:
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
        if code == ErrorCode.REFUSED:
            self.log.warn("contact point refused forward to {target}: {reason}", target=local.target, reason=reason)

    def stream_data_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes) -> None:
        pass

    def stream_ended(self, tunnel: TunnelProtocol, channel_id: int) -> None:
        pass


class _TargetSocket(DatagramProtocol):
    """
    The contact point's socket for one forwarded channel, connected to its target.
    """

    transport: IUDPTransport  # set by the reactor before any event

    noisy = False

    def __init__(self, tunnel: TunnelProtocol, channel_id: int, owner: ContactForwarder) -> None:
        self.tunnel = tunnel
        self.channel_id = channel_id
        self.owner = owner
        self.last_active = 0.0

    def startProtocol(self) -> None:
        set_receive_buffer(self.transport, self.owner.receive_buffer)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last_active = self.owner.clock.seconds()
        self.tunnel.send_datagram(self.channel_id, data)

    def connectionRefused(self) -> None:
        pass


class ContactForwarder:
    """
    The contact point's part for UDP forwards: checks the target against the
    allow list and relays.

    @ivar refused: how many forward channels were refused.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        allowed: list[tuple[str, int]],
        *,
        idle_timeout: float = 120.0,
        receive_buffer: int = 4 * 1024 * 1024,
    ) -> None:
        self._reactor = reactor
        self.clock: IReactorTime = reactor
        self.allowed = {hostport(h, p): (h, p) for h, p in allowed}
        self.idle_timeout = idle_timeout
        self.receive_buffer = receive_buffer
        self.refused = 0
        # (tunnel, channel) -> [socket protocol, port, idle timer]
        self._sockets: dict[tuple[int, int], list[Any]] = {}

    @property
    def open_count(self) -> int:
        """
        The number of forward sockets open now.
        """
        return len(self._sockets)

    def tunnel_lost(self, tunnel: TunnelProtocol, reason: str) -> None:
        """
        Close the forward sockets of a lost tunnel (told by the session
        logic).
        """
        for key in [k for k in self._sockets if k[0] == id(tunnel)]:
            self._close(key)

    def accept(
        self, tunnel: TunnelProtocol, channel_id: int, kind: ChannelKind, meta: dict[str, Any]
    ) -> ContactForwarder | Refusal:
        """
        A forward channel from the agent: allowed targets get a socket.
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
        proto = _TargetSocket(tunnel, channel_id, self)
        proto.last_active = self.clock.seconds()
        port = self._reactor.listenUDP(0, proto, interface="::" if ":" in address[0] else "0.0.0.0")
        proto.transport.connect(*address)
        timer = self._reactor.callLater(self.idle_timeout, self._check_idle, tunnel, channel_id)
        self._sockets[id(tunnel), channel_id] = [proto, port, timer]
        return self

    def _check_idle(self, tunnel: TunnelProtocol, channel_id: int) -> None:
        entry = self._sockets.get((id(tunnel), channel_id))
        if entry is None:
            return
        idle = self.clock.seconds() - entry[0].last_active
        if idle >= self.idle_timeout:
            self._close((id(tunnel), channel_id))
            tunnel.close_channel(channel_id, ErrorCode.NO_ERROR, "idle")
        else:
            entry[2] = self._reactor.callLater(self.idle_timeout - idle, self._check_idle, tunnel, channel_id)

    def datagram_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes, component: int) -> None:
        entry = self._sockets.get((id(tunnel), channel_id))
        if entry is not None:
            proto = entry[0]
            proto.last_active = self.clock.seconds()
            proto.transport.write(data)

    def channel_closed(self, tunnel: TunnelProtocol, channel_id: int, code: int, reason: str) -> None:
        self._close((id(tunnel), channel_id))

    def _close(self, key: tuple[int, int]) -> None:
        entry = self._sockets.pop(key, None)
        if entry is not None:
            entry[1].stopListening()
            if entry[2].active():
                entry[2].cancel()

    def stream_data_received(self, tunnel: TunnelProtocol, channel_id: int, data: bytes) -> None:
        pass

    def stream_ended(self, tunnel: TunnelProtocol, channel_id: int) -> None:
        pass
