# -*- test-case-name: tests.integration.test_media_reader -*-
"""
Relay sockets read through one inner C{epoll}, past the reactor's
per-socket dispatch.

A call leg's relay socket carries about 50 datagrams a second, so each time
the reactor wakes for it there is one datagram to read. Through
C{reactor.listenUDP} every such datagram costs one reactor event (the
dispatch, its logging context), one C{recvfrom} and a second C{recvfrom}
that raises C{EAGAIN}: with a thousand relay sockets per half that is most
of the Python time of the media path (see C{docs/performance.md}).

L{EpollRelaySockets} owns the relay sockets of a media manager. They sit in
an C{epoll} of its own, whose one descriptor is registered with the reactor
as a reader: when it is readable, one non-blocking poll says which sockets
have a datagram, and each of them is read once (level-triggered: a socket
with more queued stays ready for the next round, so no read ends in
C{EAGAIN}).

A released socket can be I{kept} a while (C{keep_for}): still bound and
read, its datagrams dropped, so that a new call given the same port within
that time takes it over without a system call (a socket made, its buffer
set, bound and registered, then unregistered and closed: twelve system
calls per call and half, with its two sockets). The port allocator still
decides which port a call gets (round robin over the range, so a port's
last call is as long ago as before); a kept socket is one that port's
allocator returns to soon, as at a high call rate.

L{TwistedRelaySockets} does the same job with C{reactor.listenUDP}, for
reactors without file descriptors (tests) or platforms without C{epoll}.
"""

from __future__ import annotations

import errno
import select
import socket
from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger
from twisted.python.failure import Failure

from spwm.logthrottle import PowersOfTwo, ThrottledLog

#: C{SOCK_NONBLOCK} where the platform has it (Linux), else 0.
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)

#: Events one poll returns at most (the rest wait for the next round).
MAX_EVENTS = 1024

#: Polls of the inner epoll per reactor wake-up, at most.
ROUNDS = 4


def kept_budget() -> int:
    """
    The relay sockets a half keeps bound after their calls at most: a
    quarter of its soft limit of open descriptors (C{ulimit -n}, which the
    C{twistd} halves raise to the hard limit at start: 16,384 of the 65,536
    the systemd units set; 256 of a shell's usual 1,024 in a program that
    keeps it), so that the kept ones never take what tunnels and calls
    need.
    """
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 256
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 65536
    return soft // 4


class RelayPort:
    """
    One bound relay socket, as L{EpollRelaySockets.listen} returns it.

    @ivar socket: the socket.
    """

    def __init__(
        self, owner: EpollRelaySockets, sock: socket.socket, port: int = 0, interface: str = "", receive_buffer: int = 0
    ) -> None:
        self._owner = owner
        self.socket = sock
        # as bound (a kept socket is found again by them)
        self.port = port
        self.interface = interface
        self.receive_buffer = receive_buffer

    def getHandle(self) -> socket.socket:
        """
        @return: the socket.
        """
        return self.socket

    def getHost(self) -> IPv4Address | IPv6Address:
        """
        @return: the bound address, as C{listenUDP}'s ports give it.
        """
        host, port = self.socket.getsockname()[:2]
        if self.socket.family == socket.AF_INET6:
            return IPv6Address("UDP", host, port)
        return IPv4Address("UDP", host, port)

    def stopListening(self) -> None:
        """
        Stop reading the socket and close it (idempotent).
        """
        self._owner._remove(self)


class EpollRelaySockets:
    """
    Binds relay sockets and reads all of them through one inner C{epoll}.

    @ivar max_datagram: the largest datagram read (longer ones are cut, as
        with C{listenUDP}'s C{maxPacketSize}).
    @ivar read_errors: reads or deliveries that failed (logged, rate
        limited by counting only).
    """

    log = Logger()

    def __init__(
        self, reactor: Any, max_datagram: int = 65535, keep_for: float = 0.0, max_kept: int | None = None
    ) -> None:
        """
        @param reactor: provides C{IReactorFDSet} and C{IReactorTime}.
        @param keep_for: seconds a released socket stays bound for a new
            call on its port (L{kept}); 0: closed at once.
        @param max_kept: sockets kept at most (default: a quarter of the
            process's descriptor limit, L{kept_budget}); a socket released
            beyond them is closed at once.
        """
        self.reactor = reactor
        self.max_datagram = max_datagram
        self.keep_for = keep_for
        self.max_kept = kept_budget() if max_kept is None else max_kept
        self.read_errors = 0
        #: datagrams that reached a kept socket (a far end still sending
        #: to a call that ended), dropped
        self.kept_dropped = 0
        #: sockets taken over from L{kept} by a new call
        self.reused = 0
        # port -> (the released socket's port, released at), oldest
        # release first
        self._kept: dict[int, tuple[RelayPort, float]] = {}
        self._sweep: Any = None
        self._error_log = ThrottledLog(self.log, None, PowersOfTwo())
        self._epoll: select.epoll | None = None
        self._entries: dict[int, tuple[Callable[[int], tuple[bytes, Any]], Callable[[bytes, Any], None]]] = {}
        self._ports: dict[int, RelayPort] = {}
        self._reading = False

    @property
    def open_sockets(self) -> int:
        """
        Sockets currently bound for a call (not counting L{kept}).
        """
        return len(self._ports)

    @property
    def kept(self) -> int:
        """
        Released sockets kept bound for a new call on their port.
        """
        return len(self._kept)

    def listen(
        self,
        port: int,
        protocol: Any,
        interface: str,
        receive_buffer: int = 0,
    ) -> RelayPort:
        """
        Bind a UDP socket on C{interface:port} whose datagrams go to
        C{protocol.datagramReceived(data, (host, port))}.

        C{protocol.socket_bound(port)} is called once the socket exists (the
        endpoint takes its C{sendto} from it).

        @raise CannotListenError: the address is in use or not ours.
        """
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        kept = self._kept.pop(port, None)
        if kept is not None and (kept[0].interface, kept[0].receive_buffer) == (interface, receive_buffer):
            # bound and registered already: only its delivery changes
            sock = kept[0].socket
            self.reused += 1
            registered = True
        else:
            if kept is not None:
                self._close_socket(kept[0].socket)
            try:
                sock = self._bind(family, port, interface, receive_buffer)
            except CannotListenError as e:
                if getattr(e.socketError, "errno", None) not in (errno.EMFILE, errno.ENFILE) or not self._kept:
                    raise
                # out of descriptors: the kept sockets hold some of them
                self._drop_kept()
                sock = self._bind(family, port, interface, receive_buffer)
            registered = False
        relay_port = RelayPort(self, sock, port, interface, receive_buffer)
        deliver = protocol.datagramReceived
        if family == socket.AF_INET6:
            # the scope and flow fields are not part of an endpoint's address
            six = deliver

            def deliver(data: bytes, addr: Any) -> None:
                six(data, addr[:2])

        fd = sock.fileno()
        self._entries[fd] = (sock.recvfrom, deliver)
        self._ports[fd] = relay_port
        if self._epoll is None:
            self._epoll = select.epoll()
        if not registered:
            self._epoll.register(fd, select.EPOLLIN)
        if not self._reading:
            self._reading = True
            self.reactor.addReader(self)
        bound = getattr(protocol, "socket_bound", None)
        if bound is not None:
            bound(relay_port)
        return relay_port

    @staticmethod
    def _bind(family: int, port: int, interface: str, receive_buffer: int) -> socket.socket:
        # non-blocking from its creation: no ioctl of its own
        sock = socket.socket(family, socket.SOCK_DGRAM | _NONBLOCK)
        try:
            if not _NONBLOCK:
                sock.setblocking(False)
            if receive_buffer:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
                except OSError:
                    pass
            sock.bind((interface, port))
        except OSError as e:
            sock.close()
            raise CannotListenError(interface, port, e) from None
        return sock

    def stop_keeping(self) -> None:
        """
        Close the kept sockets, and from now on close a released socket at
        once (the service stops; the calls that drain keep theirs).
        """
        self.keep_for = 0.0
        self._drop_kept()

    def _drop_kept(self) -> None:
        """
        Close every kept socket now.
        """
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        while self._kept:
            self._close_socket(self._kept.popitem()[1][0].socket)
        self._leave_if_idle()

    # IReadDescriptor

    def fileno(self) -> int:
        """
        @return: the inner C{epoll}'s descriptor (-1 once closed).
        """
        return -1 if self._epoll is None else self._epoll.fileno()

    def logPrefix(self) -> str:
        return "EpollRelaySockets"

    def doRead(self) -> None:
        """
        Read one datagram from every relay socket that has one; again, up to
        L{ROUNDS} times while some socket has more (a video stream or a burst
        may queue several between two reactor iterations).

        One datagram per socket per round keeps the sockets fair: a flooded
        socket gets no more turns than a quiet one.
        """
        epoll = self._epoll
        if epoll is None:
            return
        entries = self._entries
        size = self.max_datagram
        for _ in range(ROUNDS):
            try:
                ready = epoll.poll(0, MAX_EVENTS)
            except InterruptedError:
                return
            if not ready:
                return
            for fd, _ in ready:
                entry = entries.get(fd)
                if entry is None:
                    continue
                try:
                    data, addr = entry[0](size)
                    entry[1](data, addr)
                except BlockingIOError:
                    pass
                except Exception as e:
                    self._read_failed(fd, e)

    def close(self) -> None:
        """
        Close every socket (the kept ones too) and leave the reactor.
        """
        self.stop_keeping()
        for relay_port in list(self._ports.values()):
            self._remove(relay_port)

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor dropped us (shutdown): close every socket.
        """
        self._reading = False
        self.stop_keeping()
        for relay_port in list(self._ports.values()):
            self._remove(relay_port)

    # internals

    def _read_failed(self, fd: int, error: Exception) -> None:
        self.read_errors += 1
        if isinstance(error, OSError) and error.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
            # an ICMP error queued on the socket: nothing to deliver
            return
        if self._error_log.hit(None, self.read_errors) is not None:
            # the 1st, 2nd, 4th, 8th... failure: logged, not every one
            self.log.failure(
                "relay socket {fd}: datagram not delivered ({count} so far)",
                Failure(error),
                fd=fd,
                count=self.read_errors,
            )

    def _remove(self, relay_port: RelayPort) -> None:
        sock = relay_port.socket
        fd = sock.fileno()
        if fd < 0 or self._ports.get(fd) is not relay_port:
            return
        del self._ports[fd]
        if self.keep_for > 0 and relay_port.port and len(self._kept) < self.max_kept:
            # still read (a far end that goes on sending fills no buffer,
            # and the next call on the port reads none of it), dropped
            self._entries[fd] = (sock.recvfrom, self._drop)
            self._kept[relay_port.port] = (relay_port, self.reactor.seconds())
            if self._sweep is None:
                self._sweep = self.reactor.callLater(self.keep_for, self._expire)
            return
        self._close_socket(sock)
        self._leave_if_idle()

    def _drop(self, data: bytes, addr: Any) -> None:
        self.kept_dropped += 1

    def _close_socket(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd < 0:
            return
        self._entries.pop(fd, None)
        if self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass
        sock.close()

    def _leave_if_idle(self) -> None:
        if not self._ports and not self._kept and self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def _expire(self) -> None:
        """
        Close the sockets kept for L{keep_for}; again at the next one's
        time (one timer for all of them).
        """
        self._sweep = None
        until = self.reactor.seconds() - self.keep_for
        kept = self._kept
        while kept:
            port = next(iter(kept))
            relay_port, released = kept[port]
            if released > until:
                self._sweep = self.reactor.callLater(released - until, self._expire)
                break
            del kept[port]
            self._close_socket(relay_port.socket)
        self._leave_if_idle()


class TwistedRelaySockets:
    """
    Relay sockets through C{reactor.listenUDP}: one reactor reader each.
    """

    def __init__(self, reactor: Any, max_datagram: int = 65535) -> None:
        self.reactor = reactor
        self.max_datagram = max_datagram

    def listen(self, port: int, protocol: Any, interface: str, receive_buffer: int = 0) -> Any:
        """
        As L{EpollRelaySockets.listen}; the protocol's C{startProtocol} sets
        its receive buffer.

        @raise CannotListenError: the address is in use or not ours.
        """
        return self.reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=self.max_datagram)


def relay_sockets_for(
    reactor: Any, max_datagram: int = 65535, keep_for: float = 0.0
) -> EpollRelaySockets | TwistedRelaySockets:
    """
    The fastest way this reactor can read relay sockets: one inner C{epoll}
    when the platform has it and the reactor takes file descriptors
    (released sockets kept C{keep_for} seconds), otherwise C{listenUDP}.
    """
    if hasattr(select, "epoll") and IReactorFDSet.providedBy(reactor):
        return EpollRelaySockets(reactor, max_datagram, keep_for)
    return TwistedRelaySockets(reactor, max_datagram)
