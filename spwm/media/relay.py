# -*- test-case-name: tests.test_media_relay -*-
"""
The per-packet media path: one UDP socket per stream component.

A L{MediaRelayEndpoint} receives datagrams from the endpoint on its own side
(the LAN phone on the agent, the operator's media on the contact point) and
hands them to the tunnel; it writes datagrams that come out of the tunnel to
that endpoint. It latches (symmetric RTP) only onto the host that the SDP
negotiated, and counts everything it drops instead of logging per packet.

See C{docs/media.md}.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Callable, Iterable

from twisted.internet.protocol import DatagramProtocol

#: The default receive buffer of every media socket (SO_RCVBUF).
DEFAULT_RECEIVE_BUFFER = 4 * 1024 * 1024

#: The largest datagram a media socket reads.
MAX_DATAGRAM = 65535


class AllowPolicy:
    """
    Which hosts a relay endpoint may send media to (and latch onto).

    Never allowed: anything that is not an IP literal, and the unspecified
    address. With C{block_special} (the contact point): loopback,
    link-local, multicast, reserved (240/4, broadcast) ranges are refused,
    unless an operator network in C{networks} covers them explicitly. When
    C{networks} is not empty, only hosts inside one of them are allowed.

    @ivar networks: the operator's C{--media-allow} networks.
    @ivar block_special: refuse the special ranges above.
    """

    def __init__(
        self,
        networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        block_special: bool = True,
    ) -> None:
        """
        @raise ValueError: a network is not valid CIDR.
        """
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self.block_special = block_special
        self._cache: dict[str, bool] = {}

    def permits(self, host: str) -> bool:
        """
        @return: C{True} if media may go to C{host}.
        """
        verdict = self._cache.get(host)
        if verdict is None:
            verdict = self._decide(host)
            if len(self._cache) < 4096:
                self._cache[host] = verdict
        return verdict

    def _decide(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address.is_unspecified:
            return False
        if self.networks:
            return any(address in n for n in self.networks)
        if self.block_special and (
            address.is_loopback
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
        ):
            return False
        return True


def normalise_host(host: str) -> str | None:
    """
    @return: the canonical text of an IP literal, or C{None} for a host name.
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class MediaRelayEndpoint(DatagramProtocol):
    """
    One UDP socket of one media stream component (RTP, or RTCP when it is
    not multiplexed).

    Inbound (from our side's endpoint): a datagram from the latched address
    goes to C{send_datagram(channel_id, data, component)} of the tunnel at
    once. A datagram from elsewhere latches if its host is the one the SDP
    negotiated (and, in strict mode, its port too) and the allow policy
    permits it; otherwise it is dropped and counted.

    Outbound (from the tunnel, L{send}): written to the latched address, or
    before latching to the address the SDP negotiated; dropped and counted
    when there is none (hold, unknown host, refused by the policy).

    @ivar component: 0 for RTP (or anything muxed), 1 for RTCP.
    @ivar strict: require the negotiated port as well as the host.
    @ivar peer: the latched address, or C{None}.
    @ivar target: where L{send} writes, or C{None}.
    @ivar packets_in: datagrams accepted from our side.
    @ivar bytes_in: their bytes.
    @ivar packets_out: datagrams written to our side.
    @ivar bytes_out: their bytes.
    @ivar dropped_source: datagrams from a source that may not latch.
    @ivar dropped_no_channel: accepted datagrams with no tunnel channel yet.
    @ivar dropped_no_target: datagrams from the tunnel with nowhere to go.
    @ivar latches: times the endpoint latched onto a (new) address.
    @ivar last_activity: the time of the last traffic, kept by the manager's
        sweep (not per packet), or C{None}.
    """

    noisy = False

    def __init__(
        self,
        component: int = 0,
        strict: bool = False,
        policy: AllowPolicy | None = None,
        receive_buffer: int = DEFAULT_RECEIVE_BUFFER,
    ) -> None:
        self.component = component
        self.strict = strict
        self.policy = policy if policy is not None else AllowPolicy(block_special=False)
        self.receive_buffer = receive_buffer
        self.peer: tuple[str, int] | None = None
        self.target: tuple[str, int] | None = None
        self.port = None
        self._expected_host: str | None = None
        self._expected_port: int | None = None
        self._any_host = False
        self._held = False
        self._channel_id = 0
        self._send: Callable[[int, bytes, int], None] = self._no_channel
        # The media hot path: the target is an IP address we checked when
        # it was latched or negotiated, so the socket's own sendto is called,
        # past Twisted's per-datagram address checks.
        self._sendto: Callable[[bytes, tuple[str, int]], Any] = self._unbound
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.dropped_source = 0
        self.dropped_no_channel = 0
        self.dropped_no_target = 0
        self.dropped_send = 0
        self.latches = 0
        self.last_activity: float | None = None

    # Twisted glue

    def startProtocol(self) -> None:
        """
        Through C{listenUDP}: take the socket's C{sendto} and enlarge the
        receive buffer.
        """
        self._sendto = self.transport.write
        handle = getattr(self.transport, "getHandle", None)
        sock = handle() if handle else None
        if isinstance(sock, socket.socket):
            self._sendto = sock.sendto
        setsockopt = getattr(sock, "setsockopt", None)
        if setsockopt is not None and self.receive_buffer:
            try:
                setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            except OSError:
                pass

    def socket_bound(self, port: Any) -> None:
        """
        Through L{spwm.media.reader.EpollRelaySockets}: take the socket's
        C{sendto} (the reader set the receive buffer).
        """
        self._sendto = port.getHandle().sendto

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        """
        A datagram from our side: forward it from the latched address,
        otherwise try to latch.
        """
        if addr == self.peer:
            self.packets_in += 1
            self.bytes_in += len(data)
            self._send(self._channel_id, data, self.component)
            return
        if self._may_latch(addr):
            self.peer = addr
            if not self._held:
                self.target = addr
            self.latches += 1
            self.packets_in += 1
            self.bytes_in += len(data)
            self._send(self._channel_id, data, self.component)
        else:
            self.dropped_source += 1

    # the manager's API

    @property
    def total_packets(self) -> int:
        """
        Datagrams relayed in both directions so far.
        """
        return self.packets_in + self.packets_out

    def attach(self, send_datagram: Callable[[int, bytes, int], None], channel_id: int) -> None:
        """
        Send what our side sends into the tunnel channel C{channel_id}.

        @param send_datagram: the tunnel's C{send_datagram}, bound once here.
        """
        self._send = send_datagram
        self._channel_id = channel_id

    def detach(self) -> None:
        """
        Stop sending into the tunnel (the channel is closed).
        """
        self._send = self._no_channel
        self._channel_id = 0

    def expect(self, host: str | None, port: int | None, held: bool = False) -> None:
        """
        Set what the SDP negotiated for our side's endpoint.

        @param host: the endpoint's connection address from its SDP: an IP
            literal, a host name (latch on any host unless strict), or
            C{None} when the SDP gives none (hold address: keep what we knew).
        @param port: the port for this component from the SDP.
        @param held: the endpoint asked not to receive (hold address): send
            nothing until it gives an address again.
        """
        self._held = held
        if host is not None:
            normal = normalise_host(host)
            changed = normal != self._expected_host or (
                self.strict and port != self._expected_port
            )
            self._expected_host = normal
            self._expected_port = port
            self._any_host = normal is None and not self.strict
            if changed and self.peer is not None:
                if self.peer[0] != normal or (self.strict and self.peer[1] != port):
                    self.peer = None
        if held:
            self.target = None
        elif self.peer is not None:
            self.target = self.peer
        elif (
            self._expected_host is not None
            and self._expected_port
            and self.policy.permits(self._expected_host)
        ):
            self.target = (self._expected_host, self._expected_port)
        else:
            self.target = None

    def send(self, data: bytes) -> None:
        """
        A datagram from the tunnel: write it to our side's endpoint.
        """
        target = self.target
        if target is None:
            self.dropped_no_target += 1
            return
        self.packets_out += 1
        self.bytes_out += len(data)
        try:
            self._sendto(data, target)
        except OSError:
            self.dropped_send += 1

    def counters(self) -> dict[str, int | float | None]:
        """
        @return: the endpoint's counters by name.
        """
        return {
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "dropped_source": self.dropped_source,
            "dropped_no_channel": self.dropped_no_channel,
            "dropped_no_target": self.dropped_no_target,
            "dropped_send": self.dropped_send,
            "latches": self.latches,
            "last_activity": self.last_activity,
        }

    # internals

    def _unbound(self, data: bytes, target: tuple[str, int]) -> None:
        raise OSError("relay socket not bound")

    def _no_channel(self, channel_id: int, data: bytes, component: int) -> None:
        self.dropped_no_channel += 1

    def _may_latch(self, addr: tuple[str, int]) -> bool:
        host, port = addr
        if self._any_host:
            return self.policy.permits(host)
        expected = self._expected_host
        if expected is None or normalise_host(host) != expected:
            return False
        if self.strict and port != self._expected_port:
            return False
        return self.policy.permits(host)
