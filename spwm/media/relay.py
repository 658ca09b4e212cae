# -*- test-case-name: tests.test_media_relay -*-
"""
The per-packet media path: one UDP socket per stream component.

A L{MediaRelayEndpoint} receives datagrams from the endpoint on its own side
(the LAN phone on the agent, the operator's media on the contact point) and
hands them to the tunnel; it writes datagrams that come out of the tunnel to
that endpoint. It latches (symmetric RTP) only onto the host that the SDP
negotiated or, on the agent's LAN leg, the host the endpoint's SIP came
from (its signalling host), and counts everything it drops instead of
logging per packet.
When a forked call has several early dialogs, one endpoint holds one
expectation (and one latch) per branch, keyed by the branch's tag.

See C{docs/media.md}.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any, Callable, Iterable

from twisted.internet.interfaces import IUDPTransport
from twisted.internet.protocol import DatagramProtocol

if TYPE_CHECKING:
    from spwm.media.quality import RtpStats

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

    def refusal(self, host: str) -> str | None:
        """
        Why media may not go to C{host}, with the option that would allow
        it (for the log; not on the per-packet path).

        @return: the reason, or C{None} when L{permits} allows C{host}.
        """
        if self.permits(host):
            return None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return "not an IP address (the SDP must name one)"
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address.is_unspecified:
            return "the unspecified address"
        if address.is_loopback:
            suggestion = "127.0.0.0/8" if address.version == 4 else "::1/128"
        else:
            suggestion = str(ipaddress.ip_network(address))
        if self.networks:
            return (
                "outside every --media-allow network ({networks}); add"
                " --media-allow {suggestion}".format(
                    networks=", ".join(str(n) for n in self.networks),
                    suggestion=suggestion,
                )
            )
        return (
            "loopback, link-local, multicast and reserved addresses need"
            " --media-allow {suggestion} (with --media-allow, media goes only"
            " to the networks listed)".format(suggestion=suggestion)
        )

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


@functools.lru_cache(maxsize=1024)
def normalise_host(host: str) -> str | None:
    """
    @return: the canonical text of an IP literal, or C{None} for a host name.
        Asked several times per call for the same few hosts: cached.
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


@functools.lru_cache(maxsize=256)
def is_local_address(host: str) -> bool:
    """
    Whether C{host} (an IP literal) is an address of this machine: one a
    socket can be bound to.  Asked only when a datagram from one of a
    relay's own ports would latch (L{MediaRelayEndpoint.own}): cached.
    """
    normal = normalise_host(host)
    if normal is None:
        return False
    family = socket.AF_INET6 if ":" in normal else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((normal, 0))
    except OSError:
        return False
    return True


class _Branch:
    """
    What the SDP of one branch (early dialog) negotiated for our side's
    endpoint, and where that branch latched.
    """

    __slots__ = ("host", "port", "source", "any_host", "held", "peer", "target")

    def __init__(self) -> None:
        self.host: str | None = None
        self.port: int | None = None
        # the signalling host (not strict only): may latch like host
        self.source: str | None = None
        self.any_host = False
        self.held = False
        self.peer: tuple[str, int] | None = None
        self.target: tuple[str, int] | None = None



def _dropped(channel_id: int, data: bytes, component: int) -> None:
    """
    What a disposed endpoint sends into the tunnel: nothing.
    """


def _closed(data: bytes, target: tuple[str, int]) -> None:
    """
    What a disposed endpoint sends to its side: nothing; as a closed socket.
    """
    raise OSError("relay socket closed")


class MediaRelayEndpoint(DatagramProtocol):
    """
    One UDP socket of one media stream component (RTP, or RTCP when it is
    not multiplexed).

    Inbound (from our side's endpoint): a datagram from the latched address
    goes to C{send_datagram(channel_id, data, component)} of the tunnel at
    once. A datagram from elsewhere latches if its host is the one the SDP
    negotiated (and, in strict mode, its port too), or, when not strict,
    if its host is the signalling host given to L{expect} (the source of
    the SIP flow that carried the SDP), and the allow policy permits it;
    otherwise it is dropped and counted. Latching onto an address the SDP
    did not name calls C{on_latch} once per endpoint.

    Outbound (from the tunnel, L{send}): written to the latched address, or
    before latching to the address the SDP negotiated; dropped and counted
    when there is none (hold, unknown host, refused by the policy).

    Branches (forking, C{docs/media.md} "Forking and early media"): each
    L{expect} names a branch by its tag (C{None}: the one branch of a call
    that did not fork). Every branch has its own negotiated address, hold
    state and latch; a datagram from any branch's latched address is
    accepted, and L{send} writes one copy to every branch that is not held.
    L{forget} and L{retain} drop branches (a branch that refused the
    stream, the losers once one branch answered).

    @ivar component: 0 for RTP (or anything muxed), 1 for RTCP.
    @ivar strict: require the negotiated port as well as the host.
    @ivar peer: the latched address of the first latched branch, or
        C{None} (the fast path of L{datagramReceived}).
    @ivar target: where L{send} writes first, or C{None} when there is
        nowhere to write.
    @ivar packets_in: datagrams accepted from our side.
    @ivar bytes_in: their bytes.
    @ivar packets_out: datagrams written to our side (one per copy when
        several branches receive).
    @ivar bytes_out: their bytes.
    @ivar dropped_source: datagrams from a source that may not latch.
    @ivar dropped_no_channel: accepted datagrams with no tunnel channel yet.
    @ivar dropped_no_target: datagrams from the tunnel with nowhere to go.
    @ivar latches: times the endpoint latched onto a (new) address.
    @ivar on_latch: C{on_latch(address, named)} is called the first time
        the endpoint latches onto an address the SDP did not name
        (C{named}: the host:port the SDP gave, or C{None}); or C{None}.
    @ivar last_activity: the time of the last traffic, kept by the manager's
        sweep (not per packet), or C{None}.
    @ivar quality_in: the figures of the leg on our side
        (L{spwm.media.quality.RtpStats}), fed every accepted datagram from
        our side; or C{None}.
    @ivar quality_out: the figures of the tunnel leg, fed every datagram
        out of the tunnel; or C{None}.
    """

    transport: IUDPTransport  # set by the reactor before any event

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
        #: the socket's port (L{spwm.media.reader.RelayPort}, or Twisted's
        #: through C{TwistedRelaySockets}), C{None} until bound
        self.port: Any = None
        self._branches: dict[str | None, _Branch] = {}
        # the other branches' targets and every branch's latched address
        self._extra: tuple[tuple[str, int], ...] = ()
        self._peers: dict[tuple[str, int], _Branch] = {}
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
        self.on_latch: Callable[[tuple[str, int], tuple[str, int] | None], None] | None = None
        #: C{own(address)}: whether C{address} is one of this half's own
        #: relay sockets, which latch only where an SDP named them exactly
        #: (a phone that sends from the signalling host's other ports
        #: latches, but one of ours that does would make two relay
        #: sockets send each other's media: a loop)
        self.own: Callable[[tuple[str, int]], bool] | None = None
        #: the port this socket is bound to (set by its owner), for L{own}
        self.local_port: int | None = None
        self._told = False
        self.quality_in: RtpStats | None = None
        self.quality_out: RtpStats | None = None

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
        A datagram from our side: forward it from a latched address,
        otherwise try to latch a branch onto it.
        """
        if addr == self.peer or addr in self._peers:
            self.packets_in += 1
            self.bytes_in += len(data)
            self._send(self._channel_id, data, self.component)
            quality = self.quality_in
            if quality is not None:
                # after the send: the measure adds no delay
                quality.received(data, _monotonic())
            return
        branch = self._latchable(addr)
        if branch is not None:
            branch.peer = addr
            if not branch.held:
                branch.target = addr
            self._refresh()
            self.latches += 1
            self.packets_in += 1
            self.bytes_in += len(data)
            self._send(self._channel_id, data, self.component)
            if self.quality_in is not None:
                self.quality_in.received(data, _monotonic())
            if not self._told and self.on_latch is not None:
                self._report(branch, addr)
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

    def dispose(self) -> None:
        """
        The endpoint is done: its socket is closed (or was never bound) and
        nothing reads its counters any more.  Drop every reference back to
        it (its own bound methods) and to its stream (the callbacks, the
        quality figures), so that reference counting frees it at once: a
        call's objects then never wait for the garbage collector, whose
        full collections stop the process for longer the more calls are
        in progress (C{spwm.gcpolicy}).
        """
        self._send = _dropped
        self._sendto = _closed
        self._channel_id = 0
        self.on_latch = None
        self.own = None
        self.quality_in = self.quality_out = None

    def expect(
        self,
        host: str | None,
        port: int | None,
        held: bool = False,
        tag: str | None = None,
        source: str | None = None,
    ) -> None:
        """
        Set what the SDP of one branch negotiated for our side's endpoint.

        @param host: the endpoint's connection address from its SDP: an IP
            literal, a host name (latch on any host unless strict), or
            C{None} when the SDP gives none (hold address: keep what we knew).
        @param port: the port for this component from the SDP.
        @param held: the endpoint asked not to receive (hold address): send
            nothing to this branch until it gives an address again.
        @param tag: the branch (the tag of our side's endpoint in that
            early dialog); C{None} for a call with one branch. The caller
            bounds the number of branches (the manager's
            C{max_branches_per_stream}).
        @param source: the endpoint's signalling host (where the SIP that
            carried the SDP came from), which may latch like the SDP's host
            (symmetric RTP for endpoints that do not send from the address
            they advertise); ignored in strict mode; C{None} keeps what
            was given before.
        """
        branch = self._branches.get(tag)
        if branch is None:
            branch = self._branches[tag] = _Branch()
        branch.held = held
        if source is not None and not self.strict:
            branch.source = normalise_host(source)
        if host is not None:
            normal = normalise_host(host)
            changed = normal != branch.host or (self.strict and port != branch.port)
            branch.host = normal
            branch.port = port
            branch.any_host = normal is None and not self.strict
            if changed and branch.peer is not None:
                if (
                    branch.peer[0] != normal and branch.peer[0] != branch.source
                ) or (self.strict and branch.peer[1] != port):
                    branch.peer = None
        if held:
            branch.target = None
        elif branch.peer is not None:
            branch.target = branch.peer
        elif branch.host is not None and branch.port and self.policy.permits(branch.host):
            branch.target = (branch.host, branch.port)
        else:
            branch.target = None
        self._refresh()

    def forget(self, tag: str | None) -> None:
        """
        Drop one branch: nothing more is sent to it, nothing accepted from
        it (unless another branch negotiated the same address).
        """
        if self._branches.pop(tag, None) is not None:
            self._refresh()

    def retain(self, tags: Iterable[str | None]) -> None:
        """
        Keep only the branches named in C{tags} (the winner once a branch
        answered); drop the others as L{forget} does.
        """
        keep = set(tags)
        for tag in [t for t in self._branches if t not in keep]:
            del self._branches[tag]
        self._refresh()

    @property
    def branches(self) -> tuple[str | None, ...]:
        """
        The tags of the branches the endpoint expects, oldest first.
        """
        return tuple(self._branches)

    def send(self, data: bytes) -> None:
        """
        A datagram from the tunnel: write it to our side's endpoint (to
        every branch that is not held).
        """
        target = self.target
        if target is None:
            self.dropped_no_target += 1
            if self.quality_out is not None:
                self.quality_out.received(data, _monotonic())
            return
        self.packets_out += 1
        self.bytes_out += len(data)
        try:
            self._sendto(data, target)
        except OSError:
            self.dropped_send += 1
        quality = self.quality_out
        if quality is not None:
            # after the write: the measure adds no delay
            quality.received(data, _monotonic())
        if self._extra:
            for target in self._extra:
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

    def _refresh(self) -> None:
        """
        Recompute what the per-packet paths read from the branches: the
        latched addresses, the first target and the other targets.
        """
        peers: dict[tuple[str, int], _Branch] = {}
        targets: list[tuple[str, int]] = []
        for branch in self._branches.values():
            if branch.peer is not None:
                peers.setdefault(branch.peer, branch)
            if branch.target is not None and branch.target not in targets:
                targets.append(branch.target)
        self._peers = peers
        self.peer = next(iter(peers), None)
        self.target = targets[0] if targets else None
        self._extra = tuple(targets[1:])

    def _report(self, branch: _Branch, addr: tuple[str, int]) -> None:
        """
        Call C{on_latch} if C{addr} is not the address the SDP named.
        """
        named = None
        if branch.host is not None and branch.port:
            named = (branch.host, branch.port)
        if named is None or normalise_host(addr[0]) != named[0] or addr[1] != named[1]:
            self._told = True
            assert self.on_latch is not None
            self.on_latch(addr, named)

    def _latchable(self, addr: tuple[str, int]) -> _Branch | None:
        """
        @return: the branch that may latch onto C{addr} (one not latched
            yet first), or C{None}.
        """
        found = None
        normal: str | None = None
        host, port = addr
        for branch in self._branches.values():
            if not branch.any_host:
                if branch.host is None:
                    continue
                if normal is None:
                    normal = normalise_host(host) or ""
                if normal != branch.host:
                    if normal != branch.source:
                        continue
                elif self.strict and port != branch.port:
                    continue
            if branch.peer is None:
                found = branch
                break
            if found is None:
                found = branch
        if found is None or not self.policy.permits(host):
            return None
        own = self.own
        if own is not None and own(addr):
            if port == self.local_port:
                # this very socket (an SDP that named a port the half then
                # took for this stream): what it sends would come back to it
                return None
            # one of our own sockets latches only where an SDP named it
            # exactly (a call between two phones of this half: each leg's
            # SDP names the other leg's socket)
            if normal is None:
                normal = normalise_host(host) or ""
            named = next((b for b in self._branches.values() if b.host == normal and b.port == port), None)
            return named
        return found
