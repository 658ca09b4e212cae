# -*- test-case-name: tests.test_testing_network -*-
"""
An in-memory network of hosts, segments and NAT boxes, for tests.

Every host has a fake reactor (L{FakeReactor}) that provides C{IReactorTime}
(one L{Clock} for the whole network), C{IReactorUDP}, C{IReactorTCP} and
C{IReactorPluggableNameResolver}, so real protocols, factories, endpoints
and services run on it unchanged.  Nothing is delivered while the test code
runs: sends are queued, and L{FakeNetwork.flush} (or L{FakeNetwork.advance},
which also moves the clock) delivers them in a bounded number of rounds.

Topology::

    network.internet (public segment)      lan = network.add_segment("lan")
       contact 203.0.113.10                   agent 192.0.2.10
       echo    203.0.113.40    <-- NAT -->    phone 192.0.2.20
                     nat public 198.51.100.2 (network.add_nat(..., inside=lan))

Routing is by IP address within a segment; a packet for an address that is
not in its segment leaves through the segment's NAT (if it has one), which
rewrites its source to the NAT's public address and a mapped port.  A packet
for a NAT's public address is translated back when the NAT has a mapping that
allows it, and dropped (and counted) otherwise.  TCP connections are routed
once at connection time, and each segment is checked against the NAT state
again, so an expired mapping makes a connection hang as it would in reality.

Simplifications (documented, on purpose): IPv4 only (C{"::"} binds like
C{"0.0.0.0"}); TCP is never lossy (a lost segment would only be resent) but
a segment that a NAT drops is never acknowledged, so it stays in the
sender's buffer; a link's C{rate} paces each TCP connection on its own.
"""

from __future__ import annotations

import errno
import heapq
import ipaddress
import random
from collections import Counter, deque
from enum import Enum
from typing import Any, Callable, Iterable, Literal, Sequence, cast

from attrs import define, field, frozen, validators
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConnector,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHostnameResolver,
    IHostResolution,
    IListeningPort,
    IPushProducer,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    ISystemHandle,
    ITCPTransport,
    IUDPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "OPEN",
    "STRICT",
    "Drop",
    "EgressPolicy",
    "FakeHost",
    "FakeNetwork",
    "FakeReactor",
    "FakeTCPTransport",
    "FakeUDPPort",
    "Filtering",
    "Link",
    "NatBox",
    "Segment",
]

UDP = "udp"
TCP = "tcp"
LOOPBACK = "127.0.0.1"
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
EPHEMERAL_FIRST = 49152
EPHEMERAL_LAST = 65535
#: the largest UDP payload over IPv4
MAX_UDP_PAYLOAD = 65507
#: TCP writes are cut into segments of at most this many bytes
MSS = 16384

Address = tuple[str, int]


def _probability(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, not {value!r}")


def _non_negative(instance: Any, attribute: Any, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


@frozen
class Link:
    """
    The properties of a host's or a NAT's attachment to its segment; they
    apply to every packet that crosses it, either way.

    @ivar loss: probability that a UDP datagram is lost on this link.
    @ivar delay: one-way latency in seconds.
    @ivar rate: bytes per second for TCP (each connection paced alone), or
        C{None} for no limit.
    """

    loss: float = field(default=0.0, validator=_probability)
    delay: float = field(default=0.0, validator=_non_negative)
    rate: float | None = field(
        default=None, validator=validators.optional(validators.gt(0))
    )


@frozen
class EgressPolicy:
    """
    What a NAT lets out from its inside.

    @ivar udp: whether UDP may leave.
    @ivar tcp_ports: the destination ports new TCP connections may go to,
        or C{None} for any.
    """

    udp: bool = True
    tcp_ports: frozenset[int] | None = None

    def allows(self, proto: str, port: int) -> bool:
        """
        Whether a new flow of C{proto} to destination C{port} may leave.
        """
        if proto == UDP:
            return self.udp
        return self.tcp_ports is None or port in self.tcp_ports


#: everything may leave
OPEN = EgressPolicy()
#: only TCP to port 443 may leave (a corporate firewall)
STRICT = EgressPolicy(udp=False, tcp_ports=frozenset({443}))


class Filtering(Enum):
    """
    Which inbound packets a NAT mapping lets in (RFC 4787 section 5).
    """

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS = "address"
    ADDRESS_AND_PORT = "address-and-port"


@frozen
class Drop:
    """
    A packet or connection attempt that a NAT dropped.

    @ivar reason: C{"unsolicited"}, C{"egress"} or C{"no-mapping"}.
    @ivar proto: C{"udp"} or C{"tcp"}.
    @ivar src: the source address as the NAT saw it.
    @ivar dst: the destination address as the NAT saw it.
    @ivar time: the clock's time.
    """

    reason: str
    proto: str
    src: Address
    dst: Address
    time: float


@define
class _Mapping:
    proto: str
    inside: Address
    public_port: int
    last_used: float
    remotes: set[Address] = field(factory=set)
    static: bool = False


class NatBox:
    """
    A NAT (and firewall) between an inside segment and an outside segment.

    Mappings are endpoint-independent (one public port per inside address and
    port) unless C{symmetric}; filtering is address-and-port dependent by
    default.  UDP mappings expire after C{udp_timeout} seconds without an
    outbound packet (inbound packets refresh only with C{inbound_refresh}),
    TCP mappings after C{tcp_timeout} seconds idle or when their connection
    has closed.  Inbound TCP connection attempts are always dropped unless a
    static port forward (L{forward_port}) says otherwise.

    @ivar counters: C{translated_out}, C{translated_in}, C{dropped_unsolicited_udp},
        C{dropped_unsolicited_tcp}, C{dropped_egress_udp}, C{dropped_egress_tcp},
        C{dropped_no_mapping}, C{expired}.
    @ivar drops: the latest drops (L{Drop}), oldest first (bounded).
    """

    def __init__(
        self,
        network: FakeNetwork,
        name: str,
        inside: Segment,
        outside: Segment,
        public_address: str,
        *,
        policy: EgressPolicy = OPEN,
        udp_timeout: float = 30.0,
        tcp_timeout: float = 7440.0,
        filtering: Filtering = Filtering.ADDRESS_AND_PORT,
        symmetric: bool = False,
        inbound_refresh: bool = False,
        first_port: int = 20000,
        link: Link = Link(),
    ) -> None:
        self.network = network
        self.name = name
        self.inside = inside
        self.outside = outside
        self.public_address = public_address
        self.policy = policy
        self.udp_timeout = udp_timeout
        self.tcp_timeout = tcp_timeout
        self.filtering = filtering
        self.symmetric = symmetric
        self.inbound_refresh = inbound_refresh
        self.link = link
        self.counters: Counter[str] = Counter()
        self.drops: deque[Drop] = deque(maxlen=1000)
        self._next_port = first_port
        self._first_port = first_port
        self._by_key: dict[tuple[Any, ...], _Mapping] = {}
        self._by_public: dict[tuple[str, int], _Mapping] = {}

    def __repr__(self) -> str:
        return f"<NatBox {self.name} {self.public_address}>"

    # -- configuration ----------------------------------------------------

    def forward_port(
        self, proto: str, public_port: int, inside_address: str, inside_port: int
    ) -> None:
        """
        Add a static port forward (DNAT): C{proto} packets and connections to
        C{public_port} go to the inside address and port, whatever their
        source and whatever the egress policy.
        """
        if (proto, public_port) in self._by_public:
            raise ValueError(f"{proto} port {public_port} of {self.name} is in use")
        mapping = _Mapping(
            proto, (inside_address, inside_port), public_port, 0.0, static=True
        )
        self._by_key[proto, (inside_address, inside_port)] = mapping
        self._by_public[proto, public_port] = mapping

    # -- inspection -------------------------------------------------------

    def mappings(self, proto: str | None = None) -> dict[Address, Address]:
        """
        The live dynamic mappings after expiring stale ones: inside address
        to public address.
        """
        self.expire()
        return {
            m.inside: (self.public_address, m.public_port)
            for m in self._by_key.values()
            if not m.static and (proto is None or m.proto == proto)
        }

    def expire(self) -> int:
        """
        Remove every mapping idle for longer than its timeout.

        @return: how many were removed.
        """
        now = self.network.clock.seconds()
        stale = [k for k, m in self._by_key.items() if self._stale(m, now)]
        for key in stale:
            self._remove(key)
        return len(stale)

    # -- translation ----------------------------------------------------

    def _stale(self, mapping: _Mapping, now: float) -> bool:
        if mapping.static:
            return False
        timeout = self.udp_timeout if mapping.proto == UDP else self.tcp_timeout
        return now - mapping.last_used > timeout

    def _remove(self, key: tuple[Any, ...]) -> None:
        mapping = self._by_key.pop(key)
        del self._by_public[mapping.proto, mapping.public_port]
        self.counters["expired"] += 1

    def _drop(
        self, reason: str, proto: str, src: Address, dst: Address, now: float
    ) -> None:
        self.counters[
            f"dropped_{reason.replace('-', '_')}"
            + ("" if reason == "no-mapping" else f"_{proto}")
        ] += 1
        self.drops.append(Drop(reason, proto, src, dst, now))

    def _allocate(self, proto: str) -> int:
        for _ in range(EPHEMERAL_LAST - self._first_port + 1):
            port = self._next_port
            self._next_port = port + 1 if port < EPHEMERAL_LAST else self._first_port
            if (proto, port) not in self._by_public:
                return port
        raise RuntimeError(f"{self.name} has no free {proto} port")

    def outbound(
        self, proto: str, src: Address, dst: Address, now: float, new_flow: bool
    ) -> Address | None:
        """
        Translate a packet from the inside: the public source address, or
        C{None} when it is dropped.
        """
        key: tuple[Any, ...] = (proto, src)
        mapping = self._by_key.get(key)
        if self.symmetric and (mapping is None or not mapping.static):
            key = (proto, src, dst)
            mapping = self._by_key.get(key)
        if mapping is not None and self._stale(mapping, now):
            self._remove(key)
            mapping = None
        if (
            new_flow
            and (mapping is None or not mapping.static)
            and not self.policy.allows(proto, dst[1])
        ):
            self._drop("egress", proto, src, dst, now)
            return None
        if mapping is None:
            if not new_flow:
                self._drop("no-mapping", proto, src, dst, now)
                return None
            mapping = _Mapping(proto, src, self._allocate(proto), now)
            self._by_key[key] = mapping
            self._by_public[proto, mapping.public_port] = mapping
        mapping.last_used = now
        mapping.remotes.add(dst)
        self.counters["translated_out"] += 1
        return (self.public_address, mapping.public_port)

    def inbound(
        self, proto: str, src: Address, dst: Address, now: float, new_flow: bool
    ) -> Address | None:
        """
        Translate a packet for the NAT's public address: the inside
        destination, or C{None} when it is dropped.
        """
        mapping = self._by_public.get((proto, dst[1]))
        if mapping is not None and self._stale(mapping, now):
            self._remove(next(k for k, m in self._by_key.items() if m is mapping))
            mapping = None
        if mapping is None:
            # A segment of a connection whose mapping is gone is not an attempt.
            self._drop(
                "no-mapping" if proto == TCP and not new_flow else "unsolicited",
                proto,
                src,
                dst,
                now,
            )
            return None
        if not mapping.static:
            if proto == TCP and new_flow:
                self._drop("unsolicited", proto, src, dst, now)
                return None
            if self.filtering is Filtering.ADDRESS_AND_PORT:
                allowed = src in mapping.remotes
            elif self.filtering is Filtering.ADDRESS:
                allowed = any(r[0] == src[0] for r in mapping.remotes)
            else:
                allowed = True
            if not allowed:
                self._drop("unsolicited", proto, src, dst, now)
                return None
            if self.inbound_refresh or proto == TCP:
                mapping.last_used = now
        self.counters["translated_in"] += 1
        return mapping.inside

    def release(self, proto: str, inside: Address) -> None:
        """
        Forget the dynamic mapping of C{inside} (its connection closed).
        """
        for key, mapping in list(self._by_key.items()):
            if (
                mapping.proto == proto
                and mapping.inside == inside
                and not mapping.static
            ):
                del self._by_key[key]
                del self._by_public[proto, mapping.public_port]


class Segment:
    """
    A broadcast domain: hosts that reach each other by address, and at most
    one NAT (C{uplink}) towards the outside.

    @ivar hosts: address to host.
    @ivar nats: public address to the NAT boxes whose outside is this segment.
    """

    def __init__(self, network: FakeNetwork, name: str) -> None:
        self.network = network
        self.name = name
        self.hosts: dict[str, FakeHost] = {}
        self.nats: dict[str, NatBox] = {}
        self.uplink: NatBox | None = None

    def __repr__(self) -> str:
        return f"<Segment {self.name}>"


@frozen
class _Hop:
    """
    One NAT on a connection's path.  C{forward} tells whether the
    connection's initiator sits on the NAT's inside.
    """

    nat: NatBox
    forward: bool
    inside: Address
    public: Address
    remote: Address

    def check(self, from_initiator: bool, now: float) -> bool:
        if from_initiator == self.forward:
            return (
                self.nat.outbound(TCP, self.inside, self.remote, now, False) is not None
            )
        return self.nat.inbound(TCP, self.remote, self.public, now, False) is not None


@frozen
class _Route:
    host: FakeHost
    src: Address  # the source as the destination sees it
    dst: Address  # the destination address on the destination host
    hops: tuple[_Hop, ...]
    links: tuple[Link, ...]


class _FakeSocket:
    """
    What C{getHandle()} returns: records socket options.
    """

    def __init__(self) -> None:
        self.options: dict[tuple[int, int], Any] = {}

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self.options[level, option] = value

    def getsockopt(self, level: int, option: int, *args: Any) -> Any:
        return self.options.get((level, option), 0)

    def fileno(self) -> int:
        return -1


class FakeHost:
    """
    A host on a segment, with its own bindings and fake reactor.

    @ivar reactor: the L{FakeReactor} to give to the code under test.
    @ivar link: the L{Link} of this host (assign a new one to change it).
    """

    def __init__(
        self, network: FakeNetwork, name: str, address: str, segment: Segment
    ) -> None:
        self.network = network
        self.name = name
        self.address = address
        self.segment = segment
        self.link = Link()
        self.udp_ports: dict[tuple[str, int], FakeUDPPort] = {}
        self.tcp_listeners: dict[tuple[str, int], FakeTCPListeningPort] = {}
        self._tcp_used: set[int] = set()
        self._next_ephemeral = {UDP: EPHEMERAL_FIRST, TCP: EPHEMERAL_FIRST}
        self.reactor = FakeReactor(self)

    def __repr__(self) -> str:
        return f"<FakeHost {self.name} {self.address}>"

    def owns(self, address: str) -> bool:
        """
        Whether C{address} is this host's (its address or loopback).
        """
        return address == self.address or address == LOOPBACK

    def _check_interface(self, interface: str, port: int) -> str:
        if interface in WILDCARDS:
            return ""
        if not self.owns(interface):
            raise error.CannotListenError(
                interface, port, OSError(errno.EADDRNOTAVAIL, "address not available")
            )
        return interface

    def _in_use(
        self, table: Iterable[tuple[str, int]], interface: str, port: int
    ) -> bool:
        return any(
            p == port and (i == interface or i == "" or interface == "")
            for i, p in table
        )

    def _ephemeral(self, proto: str, used: Callable[[int], bool]) -> int:
        for _ in range(EPHEMERAL_LAST - EPHEMERAL_FIRST + 1):
            port = self._next_ephemeral[proto]
            self._next_ephemeral[proto] = (
                port + 1 if port < EPHEMERAL_LAST else EPHEMERAL_FIRST
            )
            if not used(port):
                return port
        raise error.CannotListenError(
            "", 0, OSError(errno.EADDRINUSE, "no free ephemeral port")
        )

    def _bind_udp(self, port: int, interface: str) -> tuple[str, int]:
        interface = self._check_interface(interface, port)
        if port == 0:
            port = self._ephemeral(
                UDP, lambda p: self._in_use(self.udp_ports, interface, p)
            )
        elif self._in_use(self.udp_ports, interface, port):
            raise error.CannotListenError(
                interface, port, OSError(errno.EADDRINUSE, "address already in use")
            )
        return interface, port

    def _bind_tcp(self, port: int, interface: str) -> tuple[str, int]:
        interface = self._check_interface(interface, port)

        def used(p: int) -> bool:
            return p in self._tcp_used or self._in_use(self.tcp_listeners, interface, p)

        if port == 0:
            port = self._ephemeral(TCP, used)
        elif self._in_use(self.tcp_listeners, interface, port):
            raise error.CannotListenError(
                interface, port, OSError(errno.EADDRINUSE, "address already in use")
            )
        return interface, port

    def _find(self, table: dict[tuple[str, int], Any], address: Address) -> Any:
        found = table.get(address)
        if found is None:
            found = table.get(("", address[1]))
        return found


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _FakeResolver:
    """
    Resolves IPv4 literals and the names given to L{FakeNetwork.add_name},
    at once.
    """

    def __init__(self, network: FakeNetwork) -> None:
        self._network = network

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        address = self._network.resolve(hostName)
        if address is not None:
            resolutionReceiver.addressResolved(
                IPv4Address(cast(Literal["TCP", "UDP"], transportSemantics), address, portNumber)
            )
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer(IReactorTime, IReactorUDP, IReactorTCP, IReactorPluggableNameResolver)
class FakeReactor:
    """
    The reactor of one L{FakeHost}: time from the network's clock, UDP and
    TCP on the fake network, names from the network's table.
    """

    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self._network = host.network
        self._clock = host.network.clock
        self.nameResolver: IHostnameResolver = _FakeResolver(host.network)

    def __repr__(self) -> str:
        return f"<FakeReactor of {self.host.name}>"

    # -- IReactorTime ---------------------------------------------------

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> Any:
        return self._clock.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return self._clock.getDelayedCalls()

    # -- IReactorPluggableNameResolver --------------------------------------

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        old, self.nameResolver = self.nameResolver, resolver
        return old

    # -- IReactorUDP ------------------------------------------------------

    def listenUDP(
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPPort:
        """
        Bind a UDP port.

        @raise CannotListenError: the port is in use or the interface is not
            one of this host's addresses.
        """
        interface, port = self.host._bind_udp(port, interface)
        udp = FakeUDPPort(self.host, protocol, interface, port, maxPacketSize)
        self.host.udp_ports[interface, port] = udp
        protocol.makeConnection(udp)
        return udp

    # -- IReactorTCP ------------------------------------------------------

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> FakeTCPListeningPort:
        """
        Listen for TCP connections.

        @raise CannotListenError: the port is in use or the interface is not
            one of this host's addresses.
        """
        interface, port = self.host._bind_tcp(port, interface)
        listener = FakeTCPListeningPort(self.host, factory, interface, port)
        self.host.tcp_listeners[interface, port] = listener
        factory.doStart()
        return listener

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30,
        bindAddress: Address | None = None,
    ) -> FakeConnector:
        """
        Start a TCP connection; the outcome arrives through the network.
        """
        connector = FakeConnector(self.host, host, port, factory, timeout, bindAddress)
        connector.connect()
        return connector


@implementer(IUDPTransport, IListeningPort, ISystemHandle)
class FakeUDPPort:
    """
    A bound UDP socket.

    @ivar written: C{(datagram, addr)} for every datagram written (bounded).
    @ivar received: C{(datagram, addr)} for every datagram delivered (bounded).
    """

    def __init__(
        self,
        host: FakeHost,
        protocol: Any,
        interface: str,
        port: int,
        max_packet_size: int,
    ) -> None:
        self.host = host
        self.protocol = protocol
        self.interface = interface
        self.port = port
        self.max_packet_size = max_packet_size
        self.connected_address: Address | None = None
        self.listening = True
        self.written: deque[tuple[bytes, Address]] = deque(maxlen=10000)
        self.received: deque[tuple[bytes, Address]] = deque(maxlen=10000)
        self._broadcast = False
        self._socket = _FakeSocket()

    def __repr__(self) -> str:
        return (
            f"<FakeUDPPort {self.host.name} {self.interface or '0.0.0.0'}:{self.port}>"
        )

    def _source(self, dst: str) -> str:
        if self.interface:
            return self.interface
        return LOOPBACK if dst == LOOPBACK else self.host.address

    def write(self, datagram: bytes, addr: Address | None = None) -> None:
        """
        Send a datagram (to C{addr}, or to the connected address).

        @raise MessageLengthError: it is larger than a UDP datagram can be.
        @raise InvalidAddressError: C{addr} is not an IPv4 address.
        """
        if not isinstance(datagram, bytes):
            raise TypeError(f"datagram must be bytes, not {type(datagram).__name__}")
        if self.connected_address is not None:
            if addr not in (None, self.connected_address):
                raise AssertionError(
                    f"connected to {self.connected_address}, cannot write to {addr}"
                )
            addr = self.connected_address
        if addr is None:
            raise TypeError("write() needs an address on an unconnected port")
        if not _is_ipv4(addr[0]):
            raise error.InvalidAddressError(
                addr[0], "write() only accepts IP addresses, not hostnames"
            )
        if len(datagram) > MAX_UDP_PAYLOAD:
            raise error.MessageLengthError("message too long")
        if not self.listening:
            return
        self.written.append((datagram, addr))
        self.host.network._send_udp(self, datagram, (addr[0], addr[1]))

    def writeSequence(self, seq: Iterable[bytes], addr: Address | None = None) -> None:
        self.write(b"".join(seq), addr)

    def connect(self, host: str, port: int) -> None:
        """
        Connect: writes go to C{(host, port)} and only its datagrams arrive.
        """
        if self.connected_address is not None:
            raise RuntimeError(
                "already connected, reconnecting is not currently supported"
            )
        if not _is_ipv4(host):
            raise error.InvalidAddressError(host, "not an IPv4 or IPv6 address.")
        self.connected_address = (host, port)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        """
        Unbind and stop the protocol (at once).
        """
        if self.listening:
            self.listening = False
            self.host.udp_ports.pop((self.interface, self.port), None)
            self.protocol.doStop()
        return succeed(None)

    loseConnection = stopListening

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self._broadcast = bool(enabled)

    def getBroadcastAllowed(self) -> bool:
        return self._broadcast

    def getHandle(self) -> _FakeSocket:
        return self._socket

    def _deliver(self, datagram: bytes, src: Address) -> None:
        if self.connected_address is not None and src != self.connected_address:
            self.host.network.counters["udp_filtered_by_connect"] += 1
            return
        datagram = datagram[: self.max_packet_size]
        self.received.append((datagram, src))
        try:
            self.protocol.datagramReceived(datagram, src)
        except Exception:
            FakeNetwork.log.failure(
                "unhandled error in datagramReceived of {port}", port=self
            )


@implementer(IListeningPort)
class FakeTCPListeningPort:
    """
    A listening TCP port.
    """

    def __init__(self, host: FakeHost, factory: Any, interface: str, port: int) -> None:
        self.host = host
        self.factory = factory
        self.interface = interface
        self.port = port
        self.listening = True

    def __repr__(self) -> str:
        return f"<FakeTCPListeningPort {self.host.name} {self.interface or '0.0.0.0'}:{self.port}>"

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        """
        Stop accepting connections; those accepted stay.
        """
        if self.listening:
            self.listening = False
            del self.host.tcp_listeners[self.interface, self.port]
            self.factory.doStop()
        return succeed(None)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.interface or "0.0.0.0", self.port)


@implementer(IConnector)
class FakeConnector:
    """
    An outgoing TCP connection attempt.

    @ivar state: C{"disconnected"}, C{"connecting"} or C{"connected"}.
    """

    def __init__(
        self,
        host: FakeHost,
        dst_host: str,
        dst_port: int,
        factory: Any,
        timeout: float,
        bind: Address | None,
    ) -> None:
        self.host = host
        self.dst_host = dst_host
        self.dst_port = dst_port
        self.factory = factory
        self.timeout = timeout
        self.bind = bind
        self.state = "disconnected"
        self.transport: FakeTCPTransport | None = None
        self._factory_started = False
        self._timer: Any = None
        self._attempt = 0
        self._local_port: int | None = None

    def __repr__(self) -> str:
        return f"<FakeConnector {self.host.name} -> {self.dst_host}:{self.dst_port}>"

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", self.dst_host, self.dst_port)

    def connect(self) -> None:
        """
        Start (or restart) connecting.
        """
        if self.state != "disconnected":
            raise RuntimeError("can't connect in this state")
        self.state = "connecting"
        self._attempt += 1
        if not self._factory_started:
            self.factory.doStart()
            self._factory_started = True
        self.factory.startedConnecting(self)
        network = self.host.network
        address = network.resolve(self.dst_host)
        if address is None:
            network._later(
                0.0, self._failed, self._attempt, error.DNSLookupError(self.dst_host)
            )
            return
        interface = self.bind[0] if self.bind else ""
        try:
            interface, port = self.host._bind_tcp(
                self.bind[1] if self.bind else 0, interface
            )
        except error.CannotListenError as e:
            network._later(
                0.0, self._failed, self._attempt, error.ConnectBindError(e.socketError)
            )
            return
        self._local_port = port
        self.host._tcp_used.add(port)
        src_ip = interface or (LOOPBACK if address == LOOPBACK else self.host.address)
        self._timer = network.clock.callLater(
            self.timeout, self._timed_out, self._attempt
        )
        network._send_syn(self, (src_ip, port), (address, self.dst_port), self._attempt)

    def stopConnecting(self) -> None:
        """
        Give up the attempt in progress.

        @raise NotConnectingError: there is none.
        """
        if self.state != "connecting":
            raise error.NotConnectingError()
        self._fail_now(error.UserError())

    def disconnect(self) -> None:
        """
        Stop connecting, or close the connection.
        """
        if self.state == "connecting":
            self.stopConnecting()
        elif self.state == "connected" and self.transport is not None:
            self.transport.loseConnection()

    def _timed_out(self, attempt: int) -> None:
        self._timer = None
        if attempt == self._attempt and self.state == "connecting":
            self._fail_now(error.TimeoutError())

    def _failed(self, attempt: int, reason: Exception) -> None:
        if attempt == self._attempt and self.state == "connecting":
            self._fail_now(reason)

    def _fail_now(self, reason: Exception) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.host._tcp_used.discard(self._local_port)
        self.state = "disconnected"
        self._attempt += 1  # late answers to this attempt are ignored
        self.factory.clientConnectionFailed(self, Failure(reason))
        if self.state == "disconnected":
            self._factory_started = False
            self.factory.doStop()

    def _connected(self, attempt: int, transport: FakeTCPTransport) -> bool:
        if attempt != self._attempt or self.state != "connecting":
            return False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.state = "connected"
        self.transport = transport
        protocol = self.factory.buildProtocol(transport.getPeer())
        if protocol is None:
            protocol = Protocol()
            transport.protocol = protocol
            protocol.makeConnection(transport)
            transport.loseConnection()
        else:
            transport.protocol = protocol
            protocol.makeConnection(transport)
        return True

    def _lost(self, reason: Failure) -> None:
        self.host._tcp_used.discard(self._local_port)
        self.state = "disconnected"
        self.transport = None
        self.factory.clientConnectionLost(self, reason)
        if self.state == "disconnected":
            self._factory_started = False
            self.factory.doStop()


class _Connection:
    """
    Both ends of a TCP connection and the path between them.  End 0 is the
    initiator.
    """

    def __init__(self, network: FakeNetwork, route: _Route) -> None:
        self.network = network
        self.hops = route.hops
        self.links = route.links
        self.delay = sum(link.delay for link in route.links)
        rates = [link.rate for link in route.links if link.rate is not None]
        self.rate = min(rates) if rates else None
        self.ends: list[FakeTCPTransport] = []
        self.busy_until = [0.0, 0.0]
        self.last_at = [0.0, 0.0]

    def schedule(self, sender: int, size: int) -> float:
        """
        When a segment of C{size} bytes that leaves end C{sender} now arrives.
        """
        now = self.network.clock.seconds()
        if self.rate is None:
            at = now + self.delay
        else:
            start = max(now, self.busy_until[sender])
            self.busy_until[sender] = start + size / self.rate
            at = self.busy_until[sender] + self.delay
        at = max(at, self.last_at[sender])
        self.last_at[sender] = at
        return at

    def passes(self, sender: int) -> bool:
        """
        Whether every NAT on the path lets a segment from end C{sender} pass now.
        """
        now = self.network.clock.seconds()
        hops = self.hops if sender == 0 else reversed(self.hops)
        return all(hop.check(sender == 0, now) for hop in hops)

    def closed(self) -> None:
        if all(end.disconnected for end in self.ends):
            for hop in self.hops:
                hop.nat.release(TCP, hop.inside)


_FIN = object()
_RST = object()


@implementer(ITCPTransport, IConsumer, IPushProducer, ISystemHandle)
class FakeTCPTransport:
    """
    One end of a TCP connection on the fake network.

    Writes are queued on the network at once; the bytes count as buffered
    until the peer's protocol has received them (or forever, when a NAT
    dropped them).  A registered streaming producer is paused when more than
    the network's C{tcp_buffer} bytes are buffered and resumed when half of
    that is left; a pull producer is asked for more whenever the buffer
    drains.  L{pauseProducing} stops delivering to our protocol.

    @ivar buffered: bytes written and not yet received by the peer's protocol.
    """

    def __init__(
        self,
        connection: _Connection,
        side: int,
        host: FakeHost,
        local: Address,
        peer: Address,
    ) -> None:
        self._conn = connection
        self._side = side
        self.host = host
        self.local = local
        self.peer = peer
        self.protocol: Any = None
        self.connector: FakeConnector | None = None
        self.connected = True
        self.disconnecting = False
        self.disconnected = False
        self._write_closed = False
        self._fin_sent = False
        self.buffered = 0
        self.producer: Any = None
        self.streaming = False
        self.producer_paused = False
        self.reading_paused = False
        self._inbox: deque[Any] = deque()
        self._socket = _FakeSocket()
        self._nodelay = False
        self._keepalive = False

    def __repr__(self) -> str:
        return f"<FakeTCPTransport {self.local[0]}:{self.local[1]} -> {self.peer[0]}:{self.peer[1]}>"

    @property
    def _network(self) -> FakeNetwork:
        return self._conn.network

    @property
    def _other(self) -> FakeTCPTransport:
        return self._conn.ends[1 - self._side]

    # -- ITransport -------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if not data or self.disconnecting or self.disconnected or self._write_closed:
            return
        for start in range(0, len(data), MSS):
            self._send(data[start : start + MSS])
        self._check_pause()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Close after what was written: the peer gets the bytes, then the end.
        """
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        if not self._fin_sent:
            self._send(_FIN)
        self._network._later(0.0, self._close, Failure(error.ConnectionDone()))

    def abortConnection(self) -> None:
        """
        Close at once; the peer sees a reset.
        """
        if self.disconnected:
            return
        self.disconnecting = True
        self._fin_sent = True
        self._send(_RST)
        self._network._later(0.0, self._close, Failure(error.ConnectionAborted()))

    def loseWriteConnection(self) -> None:
        """
        Half-close: the peer reads the end of our stream.
        """
        if self._write_closed or self.disconnecting or self.disconnected:
            return
        self._write_closed = True
        self._send(_FIN)

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", *self.peer)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", *self.local)

    def getTcpNoDelay(self) -> bool:
        return self._nodelay

    def setTcpNoDelay(self, enabled: bool) -> None:
        self._nodelay = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self._keepalive

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self._keepalive = bool(enabled)

    def getHandle(self) -> _FakeSocket:
        return self._socket

    # -- IConsumer --------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}, because producer {self.producer} was never unregistered."
            )
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streaming = bool(streaming)
        self.producer_paused = False
        if not streaming:
            self._network._later(0.0, self._pull)
        else:
            self._check_pause()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.producer_paused = False

    # -- IPushProducer (reading) --------------------------------------------

    def pauseProducing(self) -> None:
        """
        Stop delivering received bytes to our protocol (they wait here, and
        count against the peer's buffer).
        """
        self.reading_paused = True

    def resumeProducing(self) -> None:
        """
        Deliver again, starting with what waited.
        """
        if self.reading_paused:
            self.reading_paused = False
            self._network._later(0.0, self._drain_inbox)

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- internals --------------------------------------------------------

    def _send(self, item: Any) -> None:
        if item is _FIN:
            self._fin_sent = True
        conn = self._conn
        size = len(item) if isinstance(item, bytes) else 0
        self.buffered += size
        if not conn.passes(self._side):
            # Never acknowledged: the bytes stay in our buffer.
            self._network.counters["tcp_segments_dropped"] += 1
            return
        at = conn.schedule(self._side, size)
        self._network._at(at, self._other._arrive, item, size)

    def _check_pause(self) -> None:
        if (
            self.producer is not None
            and self.streaming
            and not self.producer_paused
            and self.buffered > self._network.tcp_buffer
        ):
            self.producer_paused = True
            self.producer.pauseProducing()

    def _acked(self, size: int) -> None:
        self.buffered -= size
        if self.producer is None or self.disconnected:
            return
        if self.streaming:
            if self.producer_paused and self.buffered <= self._network.tcp_buffer // 2:
                self.producer_paused = False
                self.producer.resumeProducing()
        elif self.buffered == 0:
            self._pull()

    def _pull(self) -> None:
        if self.producer is not None and not self.streaming and not self.disconnected:
            self.producer.resumeProducing()

    def _arrive(self, item: Any, size: int) -> None:
        if self.disconnected:
            return
        self._inbox.append((item, size))
        if not self.reading_paused and len(self._inbox) == 1:
            self._drain_inbox()

    def _drain_inbox(self) -> None:
        while self._inbox and not self.reading_paused and not self.disconnected:
            item, size = self._inbox.popleft()
            if item is _FIN:
                if (
                    IHalfCloseableProtocol.providedBy(self.protocol)
                    and not self.disconnecting
                ):
                    try:
                        self.protocol.readConnectionLost()
                    except Exception:
                        FakeNetwork.log.failure(
                            "unhandled error in readConnectionLost of {t}", t=self
                        )
                        self._close(Failure())
                else:
                    self._close(Failure(error.ConnectionDone()))
                continue
            if item is _RST:
                self._close(Failure(error.ConnectionLost()))
                continue
            self._other._acked(size)
            if self.disconnecting:
                continue
            try:
                self.protocol.dataReceived(item)
            except Exception:
                FakeNetwork.log.failure(
                    "unhandled error in dataReceived of {t}", t=self
                )
                self.abortConnection()

    def _close(self, reason: Failure) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        self.connected = False
        self.disconnecting = True
        if self.producer is not None:
            producer, self.producer = self.producer, None
            producer.stopProducing()
        if not self._fin_sent:
            # Closed because the peer's end arrived: our end goes back.
            self._send(_FIN)
        try:
            self.protocol.connectionLost(reason)
        except Exception:
            FakeNetwork.log.failure("unhandled error in connectionLost of {t}", t=self)
        if self.connector is not None:
            self.connector._lost(reason)
        self._conn.closed()


def _is_ipv4(text: Any) -> bool:
    try:
        return isinstance(text, str) and isinstance(
            ipaddress.ip_address(text), ipaddress.IPv4Address
        )
    except ValueError:
        return False


class FakeNetwork:
    """
    Hosts, segments and NAT boxes sharing one clock.

    @ivar clock: the L{Clock} of every host's reactor.
    @ivar internet: the public segment.
    @ivar random: the seeded C{random.Random} that decides losses.
    @ivar tcp_buffer: the send buffer size (bytes) that pauses producers.
    @ivar counters: C{udp_delivered}, C{udp_lost}, C{udp_unroutable},
        C{udp_port_unreachable}, C{tcp_unroutable}, C{tcp_refused},
        C{tcp_segments_dropped}, C{udp_filtered_by_connect}.
    """

    log = Logger()

    def __init__(
        self, clock: Clock | None = None, seed: int = 0, tcp_buffer: int = 65536
    ) -> None:
        self.clock = clock if clock is not None else Clock()
        self.random = random.Random(seed)
        self.tcp_buffer = tcp_buffer
        self.counters: Counter[str] = Counter()
        self.internet = Segment(self, "internet")
        self.segments: dict[str, Segment] = {"internet": self.internet}
        self.hosts: dict[str, FakeHost] = {}
        self.nats: dict[str, NatBox] = {}
        self.names: dict[str, str] = {}
        self._queue: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0

    # -- building ---------------------------------------------------------

    def add_segment(self, name: str) -> Segment:
        """
        Add a segment (a LAN), to be put behind a NAT with L{add_nat}.
        """
        if name in self.segments:
            raise ValueError(f"segment {name!r} exists")
        segment = self.segments[name] = Segment(self, name)
        return segment

    def add_host(
        self, name: str, address: str, segment: Segment | None = None
    ) -> FakeHost:
        """
        Add a host with an IPv4 address on C{segment} (default: the internet).
        """
        segment = segment or self.internet
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        if not _is_ipv4(address) or address == LOOPBACK:
            raise ValueError(f"{address!r} is not a usable IPv4 address")
        if address in segment.hosts or address in segment.nats:
            raise ValueError(f"{address} is in use on {segment.name}")
        host = FakeHost(self, name, address, segment)
        self.hosts[name] = host
        segment.hosts[address] = host
        return host

    def add_nat(
        self,
        name: str,
        inside: Segment,
        public_address: str,
        *,
        outside: Segment | None = None,
        policy: EgressPolicy = OPEN,
        udp_timeout: float = 30.0,
        tcp_timeout: float = 7440.0,
        filtering: Filtering = Filtering.ADDRESS_AND_PORT,
        symmetric: bool = False,
        inbound_refresh: bool = False,
        link: Link = Link(),
    ) -> NatBox:
        """
        Put C{inside} behind a NAT whose public address is on C{outside}
        (default: the internet).
        """
        outside = outside or self.internet
        if inside.uplink is not None:
            raise ValueError(f"{inside.name} already has a NAT")
        if inside is outside:
            raise ValueError("a NAT needs two different segments")
        if public_address in outside.hosts or public_address in outside.nats:
            raise ValueError(f"{public_address} is in use on {outside.name}")
        nat = NatBox(
            self,
            name,
            inside,
            outside,
            public_address,
            policy=policy,
            udp_timeout=udp_timeout,
            tcp_timeout=tcp_timeout,
            filtering=filtering,
            symmetric=symmetric,
            inbound_refresh=inbound_refresh,
            link=link,
        )
        inside.uplink = nat
        outside.nats[public_address] = nat
        self.nats[name] = nat
        return nat

    def add_name(self, name: str, address: str) -> None:
        """
        Let every host's resolver answer C{address} for C{name}.
        """
        self.names[name.lower()] = address

    def resolve(self, name: str) -> str | None:
        """
        An IPv4 literal, or the address given to C{name}, or C{None}.
        """
        if _is_ipv4(name):
            return name
        return self.names.get(name.lower().rstrip("."))

    # -- running ------------------------------------------------------------

    def _at(self, when: float, f: Callable[..., Any], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, f, args))

    def _later(self, delay: float, f: Callable[..., Any], *args: Any) -> None:
        self._at(self.clock.seconds() + delay, f, *args)

    @property
    def pending(self) -> int:
        """
        How many deliveries are queued (due now or later).
        """
        return len(self._queue)

    def _next_call(self) -> float | None:
        calls = self.clock.getDelayedCalls()
        return min(c.getTime() for c in calls) if calls else None

    def flush(self, max_rounds: int = 1000) -> int:
        """
        Deliver everything due now, and run the clock's calls due now, round
        after round until nothing is due.

        @return: how many deliveries were made.
        @raise AssertionError: it did not settle within C{max_rounds}.
        """
        delivered = 0
        for _ in range(max_rounds):
            now = self.clock.seconds()
            call = self._next_call()
            ran_calls = call is not None and call <= now
            if ran_calls:
                self.clock.advance(0)
            due = []
            while self._queue and self._queue[0][0] <= now:
                due.append(heapq.heappop(self._queue))
            if not due and not ran_calls:
                return delivered
            for _when, _seq, f, args in due:
                f(*args)
                delivered += 1
        raise AssertionError(f"the network did not settle within {max_rounds} rounds")

    def advance(self, seconds: float, max_steps: int = 100000) -> None:
        """
        Move the clock forward by C{seconds}, stopping at every delivery and
        timer on the way, and flush at each stop.

        @raise AssertionError: more than C{max_steps} stops.
        """
        target = self.clock.seconds() + seconds
        self.flush()
        for _ in range(max_steps):
            times = [
                t
                for t in (self._next_call(), self._queue[0][0] if self._queue else None)
                if t is not None
            ]
            nxt = min(times) if times else None
            if nxt is None or nxt > target:
                break
            self.clock.advance(max(0.0, nxt - self.clock.seconds()))
            self.flush()
        else:
            raise AssertionError(f"more than {max_steps} steps in {seconds} s")
        self.clock.advance(max(0.0, target - self.clock.seconds()))
        self.flush()

    # -- routing ----------------------------------------------------------

    def _route(
        self, proto: str, host: FakeHost, src: Address, dst: Address, new_flow: bool
    ) -> _Route | None:
        """
        Find where a packet from C{host} goes, through the NATs on the way
        (which may drop it: then C{None}).
        """
        now = self.clock.seconds()
        if host.owns(dst[0]):
            return _Route(
                host, (LOOPBACK if dst[0] == LOOPBACK else src[0], src[1]), dst, (), ()
            )
        segment = host.segment
        links = [host.link]
        hops: list[_Hop] = []
        for _ in range(16):
            target = segment.hosts.get(dst[0])
            if target is not None:
                links.append(target.link)
                return _Route(target, src, dst, tuple(hops), tuple(links))
            nat = segment.nats.get(dst[0])
            if nat is not None:
                inside = nat.inbound(proto, src, dst, now, new_flow)
                if inside is None:
                    return None
                hops.append(_Hop(nat, False, inside, dst, src))
                links.append(nat.link)
                dst = inside
                segment = nat.inside
                continue
            nat = segment.uplink
            if nat is not None:
                public = nat.outbound(proto, src, dst, now, new_flow)
                if public is None:
                    return None
                hops.append(_Hop(nat, True, src, public, dst))
                links.append(nat.link)
                src = public
                segment = nat.outside
                continue
            break
        self.counters[f"{proto}_unroutable"] += 1
        return None

    def _send_udp(self, port: FakeUDPPort, datagram: bytes, dst: Address) -> None:
        src = (port._source(dst[0]), port.port)
        route = self._route(UDP, port.host, src, dst, True)
        if route is None:
            return
        delay = 0.0
        for link in route.links:
            if link.loss and self.random.random() < link.loss:
                self.counters["udp_lost"] += 1
                return
            delay += link.delay
        self._later(delay, self._deliver_udp, route, datagram, port, dst)

    def _deliver_udp(
        self, route: _Route, datagram: bytes, sender: FakeUDPPort, addressed: Address
    ) -> None:
        target = route.host._find(route.host.udp_ports, route.dst)
        if target is None:
            self.counters["udp_port_unreachable"] += 1
            if sender.listening and sender.connected_address == addressed:
                sender.protocol.connectionRefused()
            return
        self.counters["udp_delivered"] += 1
        target._deliver(datagram, route.src)

    def _send_syn(
        self, connector: FakeConnector, src: Address, dst: Address, attempt: int
    ) -> None:
        route = self._route(TCP, connector.host, src, dst, True)
        if route is None:
            return
        delay = sum(link.delay for link in route.links)
        self._later(delay, self._deliver_syn, connector, route, src, dst, attempt)

    def _deliver_syn(
        self,
        connector: FakeConnector,
        route: _Route,
        src: Address,
        dst: Address,
        attempt: int,
    ) -> None:
        listener = route.host._find(route.host.tcp_listeners, route.dst)
        delay = sum(link.delay for link in route.links)
        if listener is None:
            self.counters["tcp_refused"] += 1
            self._later(
                delay, connector._failed, attempt, error.ConnectionRefusedError()
            )
            return
        conn = _Connection(self, route)
        client = FakeTCPTransport(conn, 0, connector.host, src, dst)
        server = FakeTCPTransport(conn, 1, route.host, route.dst, route.src)
        conn.ends = [client, server]
        client.connector = connector
        protocol = listener.factory.buildProtocol(IPv4Address("TCP", *route.src))
        if protocol is None:
            self.counters["tcp_refused"] += 1
            self._later(
                delay, connector._failed, attempt, error.ConnectionRefusedError()
            )
            return
        server.protocol = protocol
        # The client learns first (SYN-ACK); the server's first bytes follow it.
        conn.last_at[1] = self.clock.seconds() + delay
        self._at(
            conn.last_at[1], self._deliver_synack, connector, attempt, client, server
        )
        protocol.makeConnection(server)

    def _deliver_synack(
        self,
        connector: FakeConnector,
        attempt: int,
        client: FakeTCPTransport,
        server: FakeTCPTransport,
    ) -> None:
        if not connector._connected(attempt, client):
            # Nobody waits any more: reset the server's end.
            client.disconnected = True
            client.protocol = Protocol()
            server._arrive(_RST, 0)
