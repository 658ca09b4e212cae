# -*- test-case-name: tests.test_tap -*-
"""
Assembly helpers shared by both services: SIP listeners, the agent's stable
tunnel handle, the media hook adapter.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from spwm.addr import hostport
from spwm.errors import ListenError
from spwm.forward import set_receive_buffer
from spwm.sip.actions import CALL_LIMIT, NO_MEDIA_PORTS, TUNNEL_MEDIA_LIMIT, MediaRefusal, OperatorProxy
from spwm.sip.nexthop import proxy_text
from spwm.sip.errors import SipParseError
from spwm.sdp import SdpError
from spwm.sip.checks import NO_TUNNEL, unavailable
from spwm.sip.message import parse_message
from spwm.sip.transport import SipStreamFactory, SipUdpProtocol
from spwm.session.paths import not_taken


T = TypeVar("T")


class Later(Generic[T]):
    """
    One part that another part calls but that is built after it: the
    assembly's way to close a cycle (the SIP runner answers for the tunnel
    handle, the tunnel handle is built first) without assigning attributes
    after construction.  Bound once, by the assembly, before the service
    starts; calling it before then is a bug and says which part.

    @ivar what: the part, in words, for that error.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._value: T | None = None

    def bind(self, value: T) -> T:
        """
        Name the part, once.

        @return: C{value}.
        """
        if self._value is not None:
            raise RuntimeError(f"{self.what} is already bound")
        self._value = value
        return value

    def __call__(self) -> T:
        """
        The part.

        @raise RuntimeError: it is not bound yet.
        """
        if self._value is None:
            raise RuntimeError(f"{self.what} used before the assembly built it")
        return self._value


class OnDemand(Protocol):
    """
    What the tunnel handle asks of an on-demand tunnel.
    """

    def touch(self) -> None:
        """
        SIP went through: the tunnel is in use.
        """

    def want(self) -> bool:
        """
        A message waits for the tunnel: start it; C{False} if it cannot.
        """


class LaterOnDemand:
    """
    An L{OnDemand} built after the tunnel handle that calls it.
    """

    def __init__(self, later: Later[Any]) -> None:
        self._later = later

    def touch(self) -> None:
        self._later().touch()

    def want(self) -> bool:
        return bool(self._later().want())


class Hook(Service):
    """
    Runs start and stop callables with the service.
    """

    def __init__(self, start: Any, stop: Any) -> None:
        self._start, self._stop = start, stop

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> Any:
        super().stopService()
        return self._stop()


class SipListeners(Service):
    """
    UDP and TCP SIP sockets on concrete addresses, feeding a runner.

    @ivar ports: the listening ports (for tests and status).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        runner: Any,
        addresses: list[tuple[str, int]],
        tls: Any = None,
        receive_buffer: int = 4 * 1024 * 1024,
        max_size: int = 65535,
        option: str = "sip-listen",
        max_connections: int = 1024,
        first_message_timeout: float = 30.0,
        after: Callable[[], Any] | None = None,
    ) -> None:
        """
        @param option: the option that names C{addresses}, for the line that
            says one cannot be bound.
        @param after: at stop, the sockets stay open (and the runner
            running, C{draining}) until the Deferred this returns fires:
            the contact point's tunnel listener's drain (the calls that end
            then are ended for the operator side with BYEs, which need the
            socket).
        @param max_connections: connections each TCP or TLS listening
            socket holds at once (L{SipStreamFactory}).
        @param first_message_timeout: seconds a connection has to bring its
            first SIP message.
        """
        self._reactor = reactor
        self._option = option
        self._runner = runner
        self._addresses = addresses
        self._tls = tls
        self._receive_buffer = receive_buffer
        self._max_size = max_size
        self._max_connections = max_connections
        self._first_message_timeout = first_message_timeout
        self._after = after
        self.ports: list[Any] = []

    def startService(self) -> None:
        """
        Bind every address.

        @raise ListenError: one cannot be bound (the ports bound before it
            stay in L{ports}, for L{stopService}).
        """
        super().startService()
        for host, port in self._addresses:
            udp = self._listen("udp", host, port, lambda: self._reactor.listenUDP(
                port, SipUdpProtocol(self._runner, (host, port)), interface=host
            ))
            # A burst of SIP (a registration storm) waits in the kernel
            # rather than being dropped there.
            set_receive_buffer(udp, self._receive_buffer)
            factory = self._stream_factory("tcp")
            self._listen("tcp", host, port, lambda: self._reactor.listenTCP(port, factory, interface=host))
            self.log.info("SIP on udp and tcp {address}", address=hostport(host, port))
            if self._tls is not None:
                from twisted.protocols.tls import TLSMemoryBIOFactory

                tls_port = port + 1
                wrapped = TLSMemoryBIOFactory(self._tls, False, self._stream_factory("tls"))
                self._listen("tls", host, tls_port, lambda: self._reactor.listenTCP(tls_port, wrapped, interface=host))
                self.log.info("SIP on tls {address}", address=hostport(host, tls_port))

    def _stream_factory(self, transport: str) -> SipStreamFactory:
        return SipStreamFactory(
            self._runner,
            transport,
            self._max_size,
            self._max_connections,
            self._first_message_timeout,
            clock=self._reactor,
        )

    def _listen(self, transport: str, host: str, port: int, listen: Any) -> Any:
        try:
            bound = listen()
        except CannotListenError as e:
            raise ListenError.from_exception(self._option, f"{transport} {hostport(host, port)}", e) from None
        self.ports.append(bound)
        return bound

    def stopService(self) -> Any:
        super().stopService()
        from twisted.internet.defer import maybeDeferred

        if self._after is None:
            return self._close()
        self._runner.draining = True
        return maybeDeferred(self._after).addBoth(lambda _: self._close())

    def _close(self) -> Any:
        from twisted.internet.defer import gatherResults, maybeDeferred

        ports, self.ports = self.ports, []
        self._runner.stop()
        return gatherResults([maybeDeferred(p.stopListening) for p in ports])


def until(clock: Any, done: Callable[[], bool], limit: float, step: float = 0.05) -> Deferred[bool]:
    """
    Wait until C{done()} is true, asking every C{step} seconds, for at most
    C{limit} seconds.

    @return: a Deferred that fires with C{done()}'s last answer.
    """
    waiting: Deferred[bool] = Deferred()
    end = clock.seconds() + limit

    def ask() -> None:
        if done():
            waiting.callback(True)
        elif clock.seconds() >= end:
            waiting.callback(False)
        else:
            clock.callLater(step, ask)

    ask()
    return waiting


class AgentTunnelHandle:
    """
    The agent's one stable name for "the tunnel", whichever connection
    carries it now.  The SIP core sends through it.

    While no tunnel is up, a new request from an application is answered
    at once with C{503 Service Unavailable} and a C{Retry-After} (fed back
    into the SIP core as if the contact point had sent it, so the core
    forgets the transaction as usual); an ACK is never answered, and
    responses are dropped; all three are counted.  With an on-demand
    tunnel (L{spwm.tunnel.service.OnDemandTunnel}) a request that arrives
    while no tunnel is up starts one and waits (at most C{max_held}
    messages, at most C{hold_time} seconds) to be sent once it is up.
    While the session that was lost is being resumed (C{resuming()}: its
    connection broke and the agent reconnects within the resumption
    window) every message waits the same way, for at most
    C{resume_hold} seconds and C{resume_max_held} messages (more than for
    an on-demand tunnel: an agent busy with calls has many in flight): a cut of a fraction of a second costs a
    phone nothing (a BYE answered 503 would leave its call up at the
    other end).

    The SIP the session's last connection took with it (sent, not yet
    acknowledged by the contact point: C{sip-seq}) is I{carried}
    (L{carry}): it goes again on the resumed session only when the
    contact point resumed it with its calls (L{resume_settled}), first,
    and what the phones sent meanwhile waits for that answer behind it;
    it waits for the answer also when nothing was carried, so that a new
    connection that breaks before the answer takes none of it along.
    A contact point that restarted, or kept only the registrations, has
    no calls for it: there it is dropped.

    @ivar current: the open L{TunnelProtocol}, or C{None}.
    @ivar dropped: messages not sent (refused, dropped or held too long).
    @ivar counters: C{refused_no_tunnel} (requests answered 503),
        C{responses_dropped}, C{acks_dropped}, C{held} (messages that
        waited for an on-demand tunnel), C{held_overflow}.
    @ivar answer: C{answer(flow_id, data)} hands a response to the SIP core
        as if it came from the tunnel.
    @ivar retry_after: returns the seconds for C{Retry-After}.
    @ivar on_demand: the L{OnDemandTunnel} (or an L{OnDemand} that reaches
        it), or C{None} (tunnel always up).
    @ivar resuming: C{resuming()}: whether the lost session is being
        resumed (messages wait); C{None}: never.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any = None,
        *,
        max_held: int = 64,
        hold_time: float = 10.0,
        answer: Callable[[int, bytes], None] | None = None,
        retry_after: Callable[[], int] = lambda: 5,
        on_demand: OnDemand | None = None,
        resume_hold: float = 4.0,
        resume_max_held: int = 1024,
    ) -> None:
        self.current: Any = None
        self.dropped = 0
        self.counters = {
            "refused_no_tunnel": 0,
            "responses_dropped": 0,
            "acks_dropped": 0,
            "held": 0,
            "held_overflow": 0,
            "held_resuming": 0,
            "held_duplicates": 0,
            "held_carried": 0,
            "carried_dropped": 0,
            "carried_taken": 0,
        }
        self.answer = answer
        self.retry_after = retry_after
        self.on_demand = on_demand
        self.max_held = max_held
        self.hold_time = hold_time
        self.resume_hold = resume_hold
        self.resume_max_held = resume_max_held
        self.resuming: Callable[[], bool] | None = None
        self._clock = clock
        self._held: deque[tuple[int, bytes]] = deque()
        self._held_set: set[tuple[int, bytes]] = set()
        self._hold_timer: Any = None
        self._told = False
        #: SIP the session's last connection took with it, for the
        #: resumed session (L{carry})
        self._carried: list[tuple[int, int, bytes]] = []
        #: the next number the agent expected from the contact point on
        #: the session's lost connection (what it took of the carried
        #: SIP's other direction), while a resumption is awaited
        self.carried_next: int | None = None
        #: a connection is up and the held SIP waits behind the carried
        #: for the resumption's answer
        self._answer_due = False

    def send_sip(self, flow_id: int, data: bytes) -> None:
        tunnel = self.current
        on_demand = self.on_demand
        if tunnel is not None and not self._held and not self._answer_due and tunnel.send_sip(flow_id, data):
            if on_demand is not None:
                on_demand.touch()
            return
        if on_demand is not None and on_demand.want():
            self._hold(flow_id, data, self.hold_time, self.max_held)
            return
        if self._answer_due or (tunnel is None and self.resuming is not None and self.resuming()):
            self.counters["held_resuming"] += 1
            self._hold(flow_id, data, self.resume_hold, self.resume_max_held)
            return
        self.unavailable(flow_id, data)

    def carry(self, messages: list[tuple[int, int, bytes]], taken: int) -> None:
        """
        The session lost its last connection with these SIP messages sent
        and not acknowledged by the contact point (C{sip-seq}; number, flow
        id and bytes, oldest first): they were in flight, and a phone over
        TCP does not send them again.  C{taken}: the next number the agent
        expected from the contact point there (the resumption offer's
        C{sip_next}, L{carried_next}).  While the session is being resumed
        they are kept (at most C{resume_max_held}) for L{resume_settled};
        otherwise (the session is gone) they are dropped.  Only the first
        loss counts until the resumption is settled: a connection that
        breaks before the answer carried a fresh session's numbers.
        """
        if self.carried_next is not None or self.current is not None:
            return
        if self.resuming is None or not self.resuming():
            return
        self.carried_next = taken
        for message in messages[: self.resume_max_held]:
            self._carried.append(message)
            self.counters["held_carried"] += 1
        self.counters["carried_dropped"] += max(0, len(messages) - self.resume_max_held)

    def resume_settled(self, resumed: bool, peer_next: object = None) -> None:
        """
        The resumption is decided: C{resumed}, the contact point resumed
        the session with its calls, so the carried SIP it had not taken
        (numbered from C{peer_next} on, its answer's C{sip_next}; without
        one, all) goes now, before the SIP held meanwhile; otherwise
        (registrations only, refused, the window over, the agent
        stopping) the calls it belongs to are gone at the contact point
        and it is dropped.
        """
        carried, self._carried = self._carried, []
        self.carried_next = None
        if resumed:
            left = not_taken(carried, peer_next)
            self.counters["carried_taken"] += len(carried) - len(left)
            carried = left
        if carried and not resumed:
            self.counters["carried_dropped"] += len(carried)
            carried = []
        waiting, self._answer_due = self._answer_due, False
        if self.current is not None and (carried or waiting):
            self._send_held(self.current, [(flow_id, data) for _, flow_id, data in carried])

    def _hold(self, flow_id: int, data: bytes, seconds: float, limit: int) -> None:
        if (flow_id, data) in self._held_set:
            # a retransmission of a message that waits already: the
            # original goes, and a UAS that gets both back to back may
            # not take the second for a retransmission
            self.counters["held_duplicates"] += 1
            return
        if len(self._held) >= limit:
            self.counters["held_overflow"] += 1
            self.unavailable(flow_id, data)
            return
        self.counters["held"] += 1
        self._held.append((flow_id, data))
        self._held_set.add((flow_id, data))
        if self._hold_timer is None and self._clock is not None:
            self._hold_timer = self._clock.callLater(seconds, self.release_held)

    def release_held(self) -> None:
        """
        The tunnel did not come up (in time), or the resumption was not
        answered: answer what waited, drop what was carried.
        """
        self._cancel_hold()
        self._answer_due = False
        self.carried_next = None
        if self._carried:
            self.counters["carried_dropped"] += len(self._carried)
            self._carried = []
        held, self._held = self._held, deque()
        self._held_set.clear()
        for flow_id, data in held:
            self.unavailable(flow_id, data)

    def _cancel_hold(self) -> None:
        if self._hold_timer is not None and self._hold_timer.active():
            self._hold_timer.cancel()
        self._hold_timer = None

    def unavailable_for(self) -> int | None:
        """
        Whether a new request from an application is refused now, for the
        agent's own answers (an C{OPTIONS} to the agent).

        @return: C{None} while a request can go: a tunnel is up, or an
            on-demand tunnel would be started for it (its idle state is
            no outage, and a keepalive must not start it), or the lost
            session is being resumed; otherwise the C{Retry-After} seconds
            a request is refused with (C{503}).
        """
        if self.current is not None or self.on_demand is not None:
            return None
        if self.resuming is not None and self.resuming():
            return None
        return int(self.retry_after())

    def unavailable(self, flow_id: int, data: bytes) -> None:
        """
        No tunnel for this message: answer a request with C{503} and
        C{Retry-After}, drop an ACK or a response; count them.
        """
        self.dropped += 1
        try:
            msg = parse_message(data)
        except SipParseError:
            return
        if not msg.is_request:
            self.counters["responses_dropped"] += 1
            return
        if msg.method == "ACK":
            self.counters["acks_dropped"] += 1
            return
        self.counters["refused_no_tunnel"] += 1
        retry = int(self.retry_after())
        if not self._told:
            self._told = True
            self.log.info(
                "no tunnel to the contact point: new SIP requests from applications"
                " are answered 503 (Retry-After {retry_after} s) until it is up",
                retry_after=retry,
            )
        if self.answer is None:
            return
        self.answer(flow_id, unavailable(msg, NO_TUNNEL, retry, tagged=True))

    @property
    def congested(self) -> bool:
        """
        Whether the current tunnel's signalling backlog is over its
        high-water mark (new SIP requests get C{503}).
        """
        tunnel = self.current
        return tunnel is not None and tunnel.congested

    def status(self) -> dict[str, int]:
        """
        For the status page: what was refused or dropped without a tunnel.
        """
        return dict(self.counters, held_now=len(self._held), carried_now=len(self._carried))

    # tunnel application part: keep track of the connection
    def tunnel_established(self, tunnel: Any) -> None:
        self.current = tunnel
        self._told = False
        self._cancel_hold()
        if self._carried or self.carried_next is not None:
            # a resumption of a session whose SIP is numbered: its answer
            # decides whether the carried SIP goes, and what the phones
            # sent meanwhile waits behind it (not longer than SIP waits
            # for a resumption), also when nothing was carried: SIP sent
            # on this connection before the answer would carry the fresh
            # session's numbers and be lost with it if it broke first
            self._answer_due = True
            if self._held and self._clock is not None:
                self._hold_timer = self._clock.callLater(self.resume_hold, self.release_held)
            return
        self._send_held(tunnel, [])

    def _send_held(self, tunnel: Any, first: list[tuple[int, bytes]]) -> None:
        self._cancel_hold()
        held, self._held = self._held, deque()
        self._held_set.clear()
        for flow_id, data in [*first, *held]:
            if not tunnel.send_sip(flow_id, data):
                self.unavailable(flow_id, data)
        if held and self.on_demand is not None:
            self.on_demand.touch()

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        if self.current is tunnel:
            self.current = None
            # the held SIP waits for the next connection
            self._answer_due = False


class MediaHookAdapter:
    """
    Between a SIP core and a L{spwm.media.manager.MediaManager}: maps the
    core's tunnel key to the tunnel connection (the agent has a stable
    handle), and turns malformed SDP into a logged pass-through instead of
    an exception in the SIP path. On the agent it also tells the manager
    each dialog's signalling host (where the phone's SIP flow comes from),
    which may latch media (C{docs/media.md}, "Latching").

    @ivar source: C{source(dialog_key)}: the signalling host of our side's
        endpoint in that dialog, or C{None}; see L{flow_source}.
    """

    log = Logger()

    def __init__(self, manager: Any, resolve: Any = None, source: Any = None) -> None:
        self._manager = manager
        # None: the key is the tunnel (the contact point), read in place
        # rather than through an identity function, ten times per call
        self._resolve: Callable[[Any], Any] | None = resolve
        self.source = source
        self.sdp_errors = 0

    def sdp_into_tunnel(
        self,
        key: Any,
        dialog_key: str,
        content_type: str,
        body: bytes,
        tag: str | None = None,
        offer: tuple[int, str] | None = None,
    ) -> None:
        self._show(self._manager.sdp_into_tunnel, key, dialog_key, content_type, body, tag, offer)

    def sdp_out_of_tunnel(
        self,
        key: Any,
        dialog_key: str,
        content_type: str,
        body: bytes,
        tag: str | None = None,
        offer: tuple[int, str] | None = None,
    ) -> bytes:
        out = self._show(self._manager.sdp_out_of_tunnel, key, dialog_key, content_type, body, tag, offer)
        return body if out is None else out

    def _show(
        self,
        show: Callable[..., Any],
        key: Any,
        dialog_key: str,
        content_type: str,
        body: bytes,
        tag: str | None,
        offer: tuple[int, str] | None,
    ) -> Any:
        """
        Show one SDP body to the manager (C{show}: its C{sdp_into_tunnel}
        or C{sdp_out_of_tunnel}) with the dialog's signalling host.

        @return: what C{show} returns, or C{None} when the tunnel is gone
            or the SDP is malformed (logged and counted).
        """
        tunnel = key if self._resolve is None else self._resolve(key)
        if tunnel is None:
            return None
        source = None if self.source is None else self.source(dialog_key)
        try:
            return show(tunnel, dialog_key, content_type, body, tag=tag, source=source, offer=offer)
        except SdpError as e:
            self.sdp_errors += 1
            self.log.warn("malformed SDP in dialog {dialog}: {reason}", dialog=dialog_key, reason=str(e))
            return None

    def media_full(self, key: Any = None) -> MediaRefusal | None:
        """
        Why the manager can take no new call now: every media port pair is
        in use, it relays its C{--max-calls} call legs, or the session of
        the tunnel C{key} holds its share of the pairs; the SIP cores
        refuse new INVITEs with 503 then (L{spwm.sip.actions.media_full}).
        """
        manager = self._manager
        if manager.ports.full:
            return NO_MEDIA_PORTS
        if manager.at_call_limit:
            return CALL_LIMIT
        tunnel = key if key is None or self._resolve is None else self._resolve(key)
        if tunnel is not None and manager.session_full(tunnel.session_id):
            return TUNNEL_MEDIA_LIMIT
        return None

    def dialog_answered(
        self, key: Any, dialog_key: str, tag: str | None, ours: bool = True
    ) -> None:
        tunnel = key if self._resolve is None else self._resolve(key)
        if tunnel is not None:
            self._manager.dialog_answered(tunnel, dialog_key, tag, ours=ours)

    def offer_settled(
        self, key: Any, dialog_key: str, ours: bool, cseq: tuple[int, str], accepted: bool
    ) -> None:
        tunnel = key if self._resolve is None else self._resolve(key)
        if tunnel is not None:
            self._manager.offer_settled(tunnel, dialog_key, ours, cseq, accepted)

    def dialog_invited(self, key: Any, dialog_key: str) -> None:
        tunnel = key if self._resolve is None else self._resolve(key)
        if tunnel is not None:
            self._manager.dialog_invited(tunnel, dialog_key)

    def dialog_heard(self, key: Any, dialog_key: str) -> None:
        tunnel = key if self._resolve is None else self._resolve(key)
        if tunnel is not None:
            self._manager.dialog_heard(tunnel, dialog_key)

    def dialog_ended(self, key: Any, dialog_key: str, challenged: bool = False, reason: str = "dialog ended") -> None:
        tunnel = key if self._resolve is None else self._resolve(key)
        if tunnel is not None:
            self._manager.dialog_ended(tunnel, dialog_key, challenged, reason)

    def call_parties(self, key: Any, dialog_key: str, from_uri: object, to_uri: object) -> None:
        """
        The From and To URIs of a call leg, for the call detail record
        (made text only by the manager, for the first naming it keeps).
        """
        tunnel = key if self._resolve is None else self._resolve(key)
        if tunnel is not None:
            self._manager.call_parties(tunnel, dialog_key, from_uri, to_uri)


def flow_source(flows: Any, clock: Any) -> Any:
    """
    For the agent's L{MediaHookAdapter}: the signalling host of a dialog,
    read from the agent proxy's L{spwm.sip.flows.FlowTable} by the flow
    id in the dialog key (C{FLOW/CALL-ID}, L{spwm.sip.actions.dialog_key}).

    @param flows: the agent proxy's C{flows}.
    @param clock: provides C{seconds()}.
    @return: C{source(dialog_key) -> str | None}.
    """

    def source(dialog_key: str) -> str | None:
        flow_id, _, _ = dialog_key.partition("/")
        if not flow_id.isdigit():
            return None
        flow = flows.lookup(int(flow_id), clock.seconds())
        return None if flow is None else flow.remote[0]

    return source


#: (priority, weight, port, target)
SrvRecord = tuple[int, int, int, str]
#: (order, preference, flags, service, replacement)
NaptrRecord = tuple[int, int, str, str, str]


def resolve_proxies(
    proxies: list[OperatorProxy],
    family: int,
    resolve: Callable[[str, int], list[str]] | None = None,
    srv: Callable[[str], list[SrvRecord]] | None = None,
    naptr: Callable[[str], list[NaptrRecord]] | None = None,
) -> list[OperatorProxy]:
    """
    The C{--sip-proxy} entries with their hosts resolved, in order: a name
    with several addresses (of C{family}) is that many proxies, in the
    resolver's order (RFC 3263 4.2: try them in turn), each address once.

    @raise OSError: a name does not resolve, or not in that family (its
        message starts with the name).
    """
    return _flat(resolve_groups(proxies, family, resolve, srv, naptr))


def resolve_groups(
    proxies: list[OperatorProxy],
    family: int,
    resolve: Callable[[str, int], list[str]] | None = None,
    srv: Callable[[str], list[SrvRecord]] | None = None,
    naptr: Callable[[str], list[NaptrRecord]] | None = None,
) -> list[list[OperatorProxy]]:
    """
    As L{resolve_proxies}, the proxies of each entry apart.  An entry
    given as a name without a port (C{srv}) is looked up as RFC 3263 says:
    without C{;transport=}, its NAPTR records choose the transport and
    name the SRV records (4.1: C{SIP+D2U} for UDP, C{SIP+D2T} for TCP, in
    order and preference), and without NAPTR records the first of
    C{_sip._udp.NAME} and C{_sip._tcp.NAME} that exists does; with a
    transport, its SRV records.  The SRV records are taken in order of
    priority, then of weight (highest first: the pool fails over, it does
    not share the load), each target's addresses with the record's port;
    a name without any of these records is its own addresses, port 5060,
    over the transport given (UDP when none is).

    @param srv: C{srv(name)} gives the SRV records of C{name} as
        C{(priority, weight, port, target)}, C{[]} when it has none
        (default: L{lookup_srv}).
    @param naptr: C{naptr(name)} gives the NAPTR records of C{name} as
        C{(order, preference, flags, service, replacement)}, C{[]} when it
        has none (default: L{lookup_naptr}).
    """
    resolve = resolve or resolve_all
    srv = srv or lookup_srv
    naptr = naptr or lookup_naptr
    groups: list[list[OperatorProxy]] = []
    for proxy in proxies:
        if proxy.srv:
            try:
                found = _service_records(proxy, srv, naptr)
            except OSError as e:
                skips = "NAPTR and SRV" if proxy.any_transport else "SRV"
                raise OSError(f"{proxy.host}: {e} (a port, {proxy.host}:{proxy.port}, skips {skips})") from None
            if found is not None:
                transport, records = found
                groups.append(_srv_group(proxy, transport, records, family, resolve))
                continue
        try:
            addresses = resolve(proxy.host, family)
        except OSError as e:
            raise OSError(f"{proxy.host}: {e.strerror or e}") from None
        groups.append([OperatorProxy(address, proxy.port, proxy.transport) for address in addresses])
    return groups


#: NAPTR services (RFC 3263 4.1) of the transports the contact point
#: speaks to its operator proxies
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp"}


def _service_records(
    proxy: OperatorProxy,
    srv: Callable[[str], list[SrvRecord]],
    naptr: Callable[[str], list[NaptrRecord]],
) -> tuple[str, list[SrvRecord]] | None:
    """
    The transport and SRV records of an entry given as a name without a
    port (RFC 3263 4.1, 4.2), or C{None} when it has none.
    """
    if not proxy.any_transport:
        records = srv(f"_sip._{proxy.transport}.{proxy.host}")
        return (proxy.transport, records) if records else None
    usable = sorted(
        (order, preference, NAPTR_SERVICES[service.upper()], replacement)
        for order, preference, flags, service, replacement in naptr(proxy.host)
        if flags.lower() == "s" and service.upper() in NAPTR_SERVICES and replacement not in ("", ".")
    )
    for _, _, transport, name in usable:
        records = srv(name)
        if records:
            return transport, records
    for transport in ("udp", "tcp"):
        records = srv(f"_sip._{transport}.{proxy.host}")
        if records:
            return transport, records
    return None


def _srv_group(
    proxy: OperatorProxy,
    transport: str,
    records: list[SrvRecord],
    family: int,
    resolve: Callable[[str, int], list[str]],
) -> list[OperatorProxy]:
    """
    The proxies of an entry's SRV records; a target that does not resolve
    is skipped (the next is tried, RFC 3263 4.2).

    @raise OSError: none resolves, or the records say there is no SIP
        service (a target of C{.}, RFC 2782).
    """
    group: list[OperatorProxy] = []
    error = "its SRV records name no SIP server"
    for _, _, port, target in sorted(records, key=lambda r: (r[0], -r[1], r[3])):
        if target in ("", "."):
            continue
        try:
            addresses = resolve(target, family)
        except OSError as e:
            error = f"{target}: {e.strerror or e}"
            continue
        group.extend(OperatorProxy(address, port, transport) for address in addresses)
    if not group:
        raise OSError(f"{proxy.host}: {error}")
    return group


#: Seconds an SRV or NAPTR lookup may take in all (the resolver's tries
#: included).
SRV_LIFETIME = 3.0


def _dns_lookup(name: str, rdtype: str, resolver: Any) -> Any:
    """
    The records of C{rdtype} of C{name} (dnspython), C{[]} when there are
    none or the name does not exist.

    @raise OSError: the lookup failed.
    """
    import dns.exception
    import dns.resolver

    try:
        return (resolver or dns.resolver).resolve(name, rdtype, lifetime=SRV_LIFETIME, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as e:
        raise OSError(f"the {rdtype} lookup of {name} failed ({e})") from None


def _target(name: Any) -> str:
    import dns.name

    return "." if name == dns.name.root else str(name.to_text(True))


def lookup_srv(name: str, resolver: Any = None) -> list[SrvRecord]:
    """
    The SRV records of C{name} with the system's resolver configuration
    (dnspython), C{[]} when the name has none or does not exist.

    @param resolver: a C{dns.resolver.Resolver} (default: the system's).
    @raise OSError: the lookup failed (no answer from any server, a
        server failure).
    """
    return [(int(r.priority), int(r.weight), int(r.port), _target(r.target)) for r in _dns_lookup(name, "SRV", resolver)]


def lookup_naptr(name: str, resolver: Any = None) -> list[NaptrRecord]:
    """
    The NAPTR records of C{name} as L{lookup_srv} gives SRV records:
    C{(order, preference, flags, service, replacement)}.
    """
    return [
        (
            int(r.order),
            int(r.preference),
            r.flags.decode("ascii", "replace"),
            r.service.decode("ascii", "replace"),
            _target(r.replacement),
        )
        for r in _dns_lookup(name, "NAPTR", resolver)
    ]


def merge_proxies(groups: list[list[OperatorProxy]], before: Sequence[OperatorProxy]) -> list[OperatorProxy]:
    """
    The proxies of a new resolution (one group per entry, in the entries'
    order), each group's proxies that were in use before in their old
    order, then its new ones in the resolver's: a name served round robin
    (its addresses in another order at each query) changes nothing, and a
    proxy added to a name comes after those that stayed.
    """
    rank = {p: i for i, p in enumerate(before)}
    ordered = []
    for group in groups:
        kept = sorted((p for p in group if p in rank), key=rank.__getitem__)
        ordered.append(kept + [p for p in group if p not in rank])
    return _flat(ordered)


def _flat(groups: list[list[OperatorProxy]]) -> list[OperatorProxy]:
    out: list[OperatorProxy] = []
    for group in groups:
        for proxy in group:
            if proxy not in out:
                out.append(proxy)
    return out


class ProxyNameWatch(TimerService):
    """
    While running, resolves the C{--sip-proxy} names again every
    C{interval} seconds (in a thread: the system's resolver blocks) and,
    when they give other addresses, hands the new list to C{use} (the
    contact point's SIP runner, L{spwm.sip.transport.ContactSipRunner.use_proxies}):
    an operator that moves its proxy to another address by DNS needs no
    restart of the contact point.  A name that stops resolving keeps the
    addresses it had (one warning, and one line when it resolves again).
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        proxies: list[OperatorProxy],
        family: int,
        current: Callable[[], tuple[OperatorProxy, ...]],
        use: Callable[[list[OperatorProxy], str], None],
        interval: float,
        *,
        run: Callable[[Callable[[], Any]], Any] | None = None,
        resolve: Callable[[str, int], list[str]] | None = None,
        srv: Callable[[str], list[SrvRecord]] | None = None,
        naptr: Callable[[str], list[NaptrRecord]] | None = None,
    ) -> None:
        """
        @param proxies: the entries as configured (names and ports).
        @param current: the addresses in use now.
        @param run: runs a blocking call and gives a L{Deferred} of its
            result (default: the reactor's thread pool).
        """
        super().__init__(interval, self.check)
        self.clock = clock
        self.proxies = list(proxies)
        self.family = family
        self.current = current
        self.use = use
        self.interval = interval
        self.resolve = resolve
        self.srv = srv
        self.naptr = naptr
        self._run = run
        self.failing: str | None = None

    def check(self) -> Any:
        """
        Resolve the names now; use the new addresses if they changed.

        @return: a L{Deferred} that fires when done (never fails).
        """
        run = self._run
        if run is None:
            from twisted.internet.threads import deferToThreadPool

            from spwm.lookups import lookup_pool

            d = deferToThreadPool(self.clock, lookup_pool(), self._resolve)
        else:
            d = run(self._resolve)
        d.addCallbacks(self._resolved, self._failed)
        return d

    def _resolve(self) -> list[list[OperatorProxy]]:
        return resolve_groups(self.proxies, self.family, self.resolve, self.srv, self.naptr)

    def _resolved(self, groups: list[list[OperatorProxy]]) -> None:
        if not self.running:
            return
        if self.failing is not None:
            self.log.info("--sip-proxy: {name} resolves again", name=self.failing)
            self.failing = None
        before = self.current()
        proxies = merge_proxies(groups, before)
        if tuple(proxies) == tuple(before):
            return
        self.use(proxies, "the --sip-proxy names resolve to other addresses")

    def _failed(self, reason: Any) -> None:
        if not self.running:
            return
        why = reason.getErrorMessage()
        if self.failing is None:
            self.log.warn(
                "--sip-proxy: cannot resolve {why}; keeping {proxies} until it resolves again",
                why=why,
                proxies=", ".join(proxy_text(p) for p in self.current()),
            )
        self.failing = why.split(":", 1)[0]



def resolve_all(host: str, family: int) -> list[str]:
    """
    Every address of C{host} in C{family} (C{socket.AF_INET} or
    C{AF_INET6}), in the resolver's order, each once (an IP literal is
    itself).  Called once at start-up.

    @raise OSError: the name does not resolve, or not in C{family}.
    """
    found: list[str] = []
    for info in socket.getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM):
        address = str(info[4][0])
        if address not in found:
            found.append(address)
    if not found:
        raise OSError(f"no {'IPv6' if family == socket.AF_INET6 else 'IPv4'} address")
    return found
