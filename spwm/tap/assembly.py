# -*- test-case-name: tests.test_tap_config -*-
"""
Building each half from its typed configuration, in dependency order.

L{build_agent} and L{build_contact} return a record of the parts
(L{Agent}, L{ContactPoint}) whose C{service} is the one L{MultiService} to
start: C{twistd} (C{makeService}) and programs that embed SPWM
(C{docs/embedding.md}) add it to their service tree.  Every part is
constructed with what it needs; where two parts call each other (the
tunnel application routes SIP to the runner, the runner's parts open
channels through the tunnel application), the one built first gets a typed
L{Later} that the assembly binds as soon as the other exists, before the
service starts.  No attribute is set on a part after it is built.

Problems found while building (a certificate that does not load, an
endpoint description Twisted does not understand, a proxy name that does
not resolve) raise L{ConfigError}.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, cast

import attrs
from attrs import frozen
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, TCP6ClientEndpoint, TCP6ServerEndpoint
from twisted.logger import Logger

from spwm.addr import hostport, is_ip_address, is_wildcard, route_source
from spwm.errors import ConfigError
from spwm.hep import HepSender
from spwm.forward import USE as FORWARD_USE, AgentForwarder, ContactForwarder
from spwm.listenqueue import HandshakeGate, ListenQueueWatch, system_backlog, with_backlog
from spwm.looplag import LoopLag
from spwm.media.manager import MediaManager, session_share
from spwm.media.ports import PortAllocator
from spwm.media.reader import relay_sockets_for
from spwm.security.resume import AgentResumption
from spwm.session.carrier import PathKeeper, PathSessions
from spwm.session.paths import PathCount
from spwm.session.workerroute import SteeredEndpoint, WorkerRoute, WorkerSteering
from spwm.session.manager import SessionManager
from spwm.session.quicpath import Keepers, QuicProber
from spwm.sip.authz import AuthorizingContactProxy, MediaAcceptor
from spwm.sip.flows import FlowTable
from spwm.sip.names import ProxyNames
from spwm.sip.actions import OperatorProxy
from spwm.sip.nexthop import ProxyPool
from spwm.sip.agent_proxy import AgentSipProxy
from spwm.sip.contact_proxy import ContactSipProxy
from spwm.sip.fanout import FanoutCore
from spwm.cdrfile import CdrFile
from spwm.security.certwatch import CertificateWatch, Loader, ReloadableServerTLS
from spwm.sip.registrar import EmbeddedRegistrar
from spwm.sip.transport import SLICE as SIP_SLICE, AgentSipRunner, ContactSipRunner, SipTrace
from spwm.state import AgentState, ContactState
from spwm.status import Status, StatusHTTPService, StatusLogService, add_agent_lists, add_contact_lists
from spwm.tap.common import (
    MediaRangeCheck,
    StartupService,
    load_certificates,
    load_tls,
    server_endpoint,
)
from spwm.tap.options import AgentConfig, ContactConfig, StatusConfig
from spwm.tap.parts import (
    AgentTunnelHandle,
    Hook,
    Later,
    LaterOnDemand,
    MediaHookAdapter,
    SipListeners,
    ProxyNameWatch,
    flow_source,
    resolve_proxies,
    until,
)
from spwm.tunnel.api import Router
from spwm.tunnel.protocol import AgentTunnelFactory, ContactTunnelFactory
from spwm.tunnel.service import (
    AgentTunnelService,
    ContactListenService,
    OnDemandTunnel,
    agent_endpoint,
    backoff,
    client_certificate,
    client_options,
    server_tls_options,
)
from spwm.tunnel.tlsread import TunnelTLSFactory
from spwm.handon import HandOn
from spwm.workers import ReusePortEndpoint, WorkerPorts, listen_address, worker_ports_base

#: C{observer(direction, peer, data)}: see L{SipTrace}.
SipObserver = Callable[[str, str, bytes], None]


@frozen
class Agent:
    """
    The parts of one agent, as L{build_agent} joined them.

    @ivar config: what it was built from.
    @ivar router: the tunnel application: SIP to the runner, channels to
        their acceptors, the tunnels' life to the session logic.
    @ivar handle: the stable tunnel handle the SIP core sends through.
    @ivar forwarder: the UDP forwards.
    @ivar media: the media relay.
    @ivar resumption: keys and session resumption.
    @ivar paths: the layer that joins the connections into the session
        (L{PathSessions}), one or several; C{None} with C{--tunnel
        on-demand} and C{--udp-path only} (L{AgentConfig.paths_layer}).
    @ivar sip_core: the SIP core (the agent proxy, watched by C{resumption}).
    @ivar runner: the SIP runner (sockets to applications, the tunnel).
    @ivar factory: builds each tunnel connection.
    @ivar tunnel_service: keeps the tunnel connected (or, on demand, is
        started by C{on_demand}).
    @ivar on_demand: with C{--tunnel on-demand}, the part that starts and
        stops C{tunnel_service}; else C{None}.
    @ivar sip_listeners: the SIP sockets towards applications.
    @ivar status: the status document.
    @ivar status_http: serves it, if asked for.
    @ivar service: the one service to start; its children in start order.
    @ivar quic: with C{--udp-path auto}, what attaches a QUIC path to the
        session when the contact point offers one; else C{None}.
    @ivar sides: each contact point's parts (C{--contact} given twice:
        two, the first one's are also the fields above).
    @ivar sip_certificates: with C{--sip-tls-cert}, loads its files again
        when they change; else C{None}.
    @ivar tls_files: with C{--client-cert} or C{--ca}, loads the tunnel's
        TLS files again when they change; else C{None}.
    @ivar cdr: with C{--cdr-file}, writes the ended calls' records there.
    """

    config: AgentConfig
    router: Router
    handle: AgentTunnelHandle
    forwarder: AgentForwarder
    media: MediaManager
    resumption: AgentResumption
    paths: PathSessions | None
    sip_core: Any
    runner: AgentSipRunner
    factory: AgentTunnelFactory
    tunnel_service: AgentTunnelService
    on_demand: OnDemandTunnel | None
    sip_listeners: SipListeners
    status: Status
    status_http: StatusHTTPService | None
    service: MultiService
    quic: QuicProber | None = None
    sides: tuple[AgentSide, ...] = ()
    sip_certificates: CertificateWatch | None = None
    tls_files: CertificateWatch | None = None
    cdr: CdrFile | None = None


@frozen
class ContactPoint:
    """
    The parts of one contact point, as L{build_contact} joined them.

    @ivar config: what it was built from.
    @ivar router: the tunnel application.
    @ivar forwarder: the UDP forwards agents ask for.
    @ivar media: the media relay.
    @ivar sip_core: the SIP core (authorisation over the contact proxy).
    @ivar runner: the SIP runner (sockets to the operator, the tunnels).
    @ivar resumption: sessions, their keys and resumption.
    @ivar paths: joins an agent's further connections to its session.
    @ivar factory: builds and counts the tunnel connections.
    @ivar listener: accepts the tunnels.
    @ivar sip_listeners: the operator-side SIP sockets.
    @ivar state: the state file, or C{None}.
    @ivar status: the status document.
    @ivar status_http: serves it, if asked for.
    @ivar quic_listener: accepts the tunnels over QUIC (C{--quic-listen}), if asked for.
    @ivar worker_listener: C{--workers}: this worker's own tunnel port
        (the welcome's C{resume_port}).
    @ivar certificates: loads the certificate files again when they
        change (C{None} with C{--plaintext}).
    @ivar cdr: with C{--cdr-file}, writes the ended calls' records there.
    @ivar service: the one service to start; its children in start order.
    """

    config: ContactConfig
    router: Router
    forwarder: ContactForwarder
    media: MediaManager
    sip_core: AuthorizingContactProxy
    runner: ContactSipRunner
    resumption: SessionManager
    paths: PathSessions
    factory: ContactTunnelFactory
    listener: ContactListenService
    sip_listeners: SipListeners
    state: ContactState | None
    status: Status
    status_http: StatusHTTPService | None
    service: MultiService
    quic_listener: ContactListenService | None = None
    worker_listener: ContactListenService | None = None
    certificates: CertificateWatch | None = None
    cdr: CdrFile | None = None


def sip_trace(
    trace: bool, bodies: bool, hep: HepSender | None = None, observer: SipObserver | None = None
) -> SipTrace | None:
    """
    The runner's trace for C{--sip-trace}, C{--hep} and an embedding
    program's observer (C{None} without any).
    """
    if not trace and hep is None and observer is None:
        return None
    return SipTrace(bodies=bodies, lines=trace, hep=hep, observer=observer)


#: The HEP capture agent id of each half (Homer shows it per packet).
HEP_AGENT_ID = {"agent": 1, "contact": 2}

#: Seconds a stopping contact point keeps its SIP socket open, after its
#: tunnels' drain, for the BYEs of the calls that ended with them to go
#: out (1,000 a second, L{spwm.sip.byes.ByeSender}: 5,000 of them; the
#: workers' supervisor kills a worker 10 s after the drain).
BYE_FLUSH = 5.0


def hep_sender(target: tuple[str, int] | None, reactor: Any, side: str) -> HepSender | None:
    """
    The C{--hep} sender (C{None} without the option); L{hep_service}
    starts and stops it.
    """
    if target is None:
        return None
    return HepSender(reactor, target, agent_id=HEP_AGENT_ID[side])


def relay_keep_service(top: MultiService, sockets: Any) -> None:
    """
    The released relay sockets kept for the next call on their port are
    closed when the half stops (its first service, so stopped last); the
    calls that drain keep their own.
    """
    stop = getattr(sockets, "stop_keeping", None)
    if stop is not None:
        Hook(lambda: None, stop).setServiceParent(top)


def hep_service(top: MultiService, hep: HepSender | None) -> None:
    """
    Start the HEP sender's socket with C{top}, before the listeners.
    """
    if hep is not None:
        Hook(hep.start, hep.stop).setServiceParent(top)


def agent_names(addresses: list[tuple[str, int]], tls: bool, names: Any) -> ProxyNames:
    """
    What names the agent in a Route or Request-URI: every listening
    address and port (UDP and TCP; the TLS port, port + 1, with
    C{--sip-tls-cert}) and the C{--sip-name}s.
    """
    listening = list(addresses)
    if tls:
        listening += [(host, port + 1) for host, port in addresses]
    return ProxyNames(listening, list(names))


def cdr_file(path: str | None, reactor: Any, media: MediaManager, status: Status) -> CdrFile | None:
    """
    C{--cdr-file}: the file every ended call's record is appended to, fed
    by C{media}, with its C{cdr_file} status section; C{None} without the
    option.

    @raise ConfigError: the file cannot be opened for appending.
    """
    if path is None:
        return None
    cdr = CdrFile(path, reactor)
    media.call_observers.append(cdr.call_event)
    status.add("cdr_file", cdr.status)
    return cdr


def status_services(
    top: MultiService, status: Status, config: StatusConfig, reactor: Any
) -> StatusHTTPService | None:
    """
    Serve C{status} on C{--status-listen} and log it every
    C{--status-interval}, as children of C{top}.

    @return: the HTTP service, if one was asked for.
    """
    service = None
    if config.listen:
        endpoint = server_endpoint(reactor, "status-listen", config.listen)
        service = StatusHTTPService(endpoint, status, description=config.listen)
        service.setServiceParent(top)
    if config.interval > 0:
        StatusLogService(status, config.interval, reactor).setServiceParent(top)
    return service


def agent_tunnel_endpoint(
    config: AgentConfig,
    reactor: Any,
    port: int | None = None,
    tls: Any = None,
    files: CertificateWatch | None = None,
) -> tuple[Any, Any]:
    """
    The endpoint every tunnel connection of the agent is made with (the
    contact point, the proxy, TLS and its checks), and its TLS reporter.

    @param port: another port of the contact point (a worker's own) than
        C{--contact}'s, with the TLS options C{tls} made for that one.
    @param files: L{agent_tls_watch}: the TLS options are built again from
        the files when they change (checked before each connection too).
    """
    if config.ca and tls is None:
        load_certificates("ca", config.ca)
    host, contact_port = config.contact
    endpoint, tls = agent_endpoint(
        reactor,
        host,
        contact_port if port is None else port,
        tls=tls,
        plaintext=config.plaintext,
        server_name=config.server_name,
        ca_file=config.ca,
        http_proxy=config.http_proxy,
        http_proxy_auth=config.http_proxy_auth,
        client_cert=(
            load_tls("client-cert", client_certificate, config.client_cert, config.client_key)
            if config.client_cert and tls is None
            else None
        ),
    )
    if tls is not None and port is None and files is not None:
        server_name = config.server_name or host

        def build() -> Any:
            cert = None
            if config.client_cert:
                cert = load_tls("client-cert", client_certificate, config.client_cert, config.client_key)
            if config.ca:
                load_certificates("ca", config.ca)
            return client_options(server_name, config.ca, cert)

        files.add(Loader(build, tls.use))
        tls.refresh = files.check
    return endpoint, tls


def agent_tls_watch(config: AgentConfig, reactor: Any) -> CertificateWatch | None:
    """
    The agent's C{--ca}, C{--client-cert} and C{--client-key} files, loaded
    again when they change (a renewed client certificate, a CA file with a
    new CA): looked at before each tunnel connection, every 60 s and on
    C{SIGHUP}; it warns before C{--client-cert} expires (a contact point
    with C{--client-ca} refuses an expired one).  C{None} without such
    files or with C{--plaintext}.  Each contact point's TLS options join
    it as a loader (L{agent_tunnel_endpoint}).
    """
    if config.plaintext or not (config.ca or config.client_cert):
        return None
    option = ", --".join(name for name, path in (("ca", config.ca), ("client-cert", config.client_cert)) if path)
    return CertificateWatch(
        reactor,
        option,
        config.client_cert,
        [p for p in (config.ca, config.client_cert, config.client_key) if p],
        [],
        users="tunnel connections",
        refused="a contact point that checks client certificates (--client-ca) refuses this agent",
    )


def agent_sip_tls(config: AgentConfig, reactor: Any) -> tuple[ReloadableServerTLS, CertificateWatch]:
    """
    C{--sip-tls-cert}: the TLS options of the agent's SIP over TLS
    listeners, and the watch that loads the files again when they change
    (every 60 s, and on C{SIGHUP}).

    @raise ConfigError: the certificate or key does not load.
    """
    cert, key = config.sip_tls_cert, config.sip_tls_key
    assert cert is not None and key is not None

    def build() -> Any:
        return load_tls("sip-tls-cert", server_tls_options, cert, key)

    tls = ReloadableServerTLS(build())
    watch = CertificateWatch(
        reactor,
        "sip-tls-cert",
        cert,
        [cert, key],
        [Loader(build, tls.use)],
        users="SIP over TLS connections",
        refused="phones that check it refuse the agent's SIP over TLS",
    )
    return tls, watch


def agent_tunnel_service(
    config: AgentConfig,
    factory: AgentTunnelFactory,
    reactor: Any,
    attempt_failed: Any,
    endpoint: tuple[Any, Any] | None = None,
) -> AgentTunnelService:
    """
    The service that keeps the agent's tunnel connected.

    @param attempt_failed: called when an attempt fails (on-demand).
    @param endpoint: L{agent_tunnel_endpoint}'s answer, if made already.
    """
    if config.udp_path == "only":
        return quic_tunnel_service(config, factory, reactor, attempt_failed)
    client, tls = endpoint or agent_tunnel_endpoint(config, reactor)
    service = AgentTunnelService(
        client,
        factory,
        reactor,
        description=config.contact_name,
        tls=tls,
        policy=backoff(cap=config.reconnect_max),
        attempt_failed=attempt_failed,
    )
    return service


_log = Logger()


def agent_media_address(config: AgentConfig) -> str:
    """
    The agent's media address when C{--media-address} is not given: the
    first C{--sip-listen} address; when that is a wildcard (C{0.0.0.0},
    C{::}), the address this host reaches the contact point (or the HTTP
    proxy) from, since phones need a concrete address in the SDP.

    @raise ConfigError: a wildcard with no route to tell the address by.
    """
    first = config.sip_listen[0][0]
    if not is_wildcard(first):
        return first
    toward = config.http_proxy or config.contact
    found = None
    try:
        infos = socket.getaddrinfo(toward[0], toward[1], type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        infos = []
    v6 = ":" in first
    for family, _, _, _, address in sorted(infos, key=lambda i: (i[0] == socket.AF_INET6) != v6):
        found = route_source(str(address[0]))
        if found is not None:
            break
    if found is None:
        raise ConfigError(
            "media-address",
            f"--sip-listen {hostport(*config.sip_listen[0])} is every address and no route to "
            f"{hostport(*toward)} tells which one phones reach: give --media-address",
        )
    _log.info(
        "media address {address} (the address towards {toward}; --media-address sets another)",
        address=found,
        toward=hostport(*toward),
    )
    return found
def quic_tunnel_service(
    config: AgentConfig, factory: AgentTunnelFactory, reactor: Any, attempt_failed: Any
) -> AgentTunnelService:
    """
    C{--udp-path only}: the agent's tunnel over QUIC to the host of
    C{--contact} and C{--quic-port}, with the TLS/TCP tunnel's checks
    (server name, C{--ca} or the system's trust store).
    """
    from spwm.tunnel.quic import QuicClientEndpoint, QuicClientReport, client_configuration

    host, _ = config.contact
    limits = config.limits
    client_cert = (config.client_cert, config.client_key) if config.client_cert and config.client_key else None
    if client_cert is not None:
        load_tls("client-cert", client_certificate, config.client_cert, config.client_key)

    def configuration() -> Any:
        return client_configuration(
            config.server_name or host, config.ca, limits.quic, limits.tunnel.keepalive_timeout, client_cert
        )

    report = QuicClientReport()
    endpoint = QuicClientEndpoint(reactor, host, config.quic_port, configuration, limits=limits.quic, report=report)
    return AgentTunnelService(
        endpoint,
        factory,
        reactor,
        description=f"{config.contact_name} (QUIC, UDP port {config.quic_port})",
        tls=cast(Any, report),
        policy=backoff(cap=config.reconnect_max),
        attempt_failed=attempt_failed,
    )


def agent_quic_prober(
    config: AgentConfig, reactor: Any, front: Any, factory: Later[AgentTunnelFactory]
) -> QuicProber:
    """
    C{--udp-path auto}: the part that attaches a QUIC path to the session
    when the contact point's welcome offers one (C{quic_port}), to the host
    of C{--contact}, with the TLS/TCP tunnel's checks (server name, C{--ca}
    or the system's trust store, C{--client-cert}).
    """
    from spwm.tunnel.quic import client_configuration, connect_quic_tunnel

    host, _ = config.contact
    limits = config.limits
    client_cert = (config.client_cert, config.client_key) if config.client_cert and config.client_key else None

    def configuration() -> Any:
        return client_configuration(
            config.server_name or host, config.ca, limits.quic, limits.tunnel.keepalive_timeout, client_cert
        )

    def connect(port: int) -> Deferred[Any]:
        return connect_quic_tunnel(reactor, host, port, configuration, factory(), limits=limits.quic)

    return QuicProber(reactor, front, connect, description=host)


def build_agent(config: AgentConfig, reactor: Any = None, *, sip_observer: SipObserver | None = None) -> Agent:
    """
    Build an agent: the tunnel client and the parts that use it.

    @param sip_observer: told of every SIP message the agent receives and
        sends, as it is on the wire: C{sip_observer(direction, peer,
        data)} (L{SipTrace}).

    @raise ConfigError: a certificate, key or endpoint of C{config} does
        not load.
    """
    if reactor is None:
        from twisted.internet import reactor
    limits = config.limits
    agent_id = config.agent_id or socket.gethostname()
    sip_addresses = list(config.sip_listen)
    later_runner: Later[AgentSipRunner] = Later("the SIP runner")
    later_on_demand: Later[OnDemandTunnel] = Later("the on-demand tunnel")
    forwarder = AgentForwarder(
        reactor,
        list(config.forward_udp),
        receive_buffer=limits.sip.udp_buffer,
        max_senders=limits.sip.max_forward_senders,
    )
    media_address = config.media_address or agent_media_address(config)
    hep = hep_sender(config.hep, reactor, "agent")
    media = MediaManager(
        reactor,
        "agent",
        media_address,
        config.media_ports,
        inactivity_timeout=limits.media.inactivity_timeout,
        receive_buffer=limits.media.receive_buffer,
        max_streams_per_dialog=limits.media.max_streams_per_dialog,
        max_pending_channels=limits.media.max_pending_channels,
        max_branches_per_stream=limits.media.max_branches_per_stream,
        pending_timeout=limits.media.pending_timeout,
        sockets=relay_sockets_for(reactor, keep_for=limits.media.relay_keep),
        hep=hep,
        call_lines=config.log_level == "debug",
    )
    flows = FlowTable()
    names = agent_names(sip_addresses, bool(config.sip_tls_cert), config.sip_names)
    # --ca, --client-cert: one watch for every contact point's TLS options
    tls_files = agent_tls_watch(config, reactor)
    # One tunnel side per contact point (docs/operations.md, "Two
    # contact points"): the first is the default one; the SIP runner, the
    # media relay and the UDP forwards are shared.
    sides = [
        _agent_side(
            side_config, reactor, agent_id, k, media, flows, names, later_runner,
            forwarder if k == 0 else None, later_on_demand if k == 0 else None,
        )
        for k, side_config in enumerate(config.contact_configs())
    ]
    handle, resumption = sides[0].handle, sides[0].resumption
    # --state-file: each side's session (dormant: the first tunnel offers
    # its resumption) and its phones' UDP flows, before anything starts
    agent_state = None
    state_sides = [(side.resumption, side.core.core) for side in sides]
    if config.state_file:
        check_state_directory(config.state_file)
        agent_state = AgentState(config.state_file, reactor)
        agent_state.restore(agent_state.load_own(agent=True), state_sides)
    core: Any = sides[0].core
    if len(sides) > 1:
        core = FanoutCore(
            [side.core for side in sides],
            lambda k: sides[k].handle.current is not None,
            max_message_size=limits.sip.max_message_size,
        )
    runner = later_runner.bind(
        AgentSipRunner(
            core,
            reactor,
            trace=sip_trace(config.sip_trace, config.sip_trace_bodies, hep, sip_observer),
            slice_seconds=SIP_SLICE,
        )
    )
    # a call that ends here without a BYE: the phone is told (docs/sip-proxy.md)
    media.leg_lost = runner.leg_lost
    media.session_lost = runner.ringing_lost
    for k, side in enumerate(sides):
        sip_part: AgentSipRunner | TouchingSip | SideSip = runner
        if len(sides) > 1:
            sip_part = SideSip(runner, k)
        elif config.tunnel == "on-demand":
            sip_part = TouchingSip(runner, LaterOnDemand(later_on_demand))
        _agent_side_tunnel(side, reactor, agent_id, sip_part, forwarder, media, tls_files)
    router, factory, paths, quic = sides[0].router, sides[0].factory, sides[0].paths, sides[0].quic
    tunnel = sides[0].tunnel
    sip_tls = None
    sip_certificates = None
    if config.sip_tls_cert and config.sip_tls_key:
        sip_tls, sip_certificates = agent_sip_tls(config, reactor)
    on_demand = None
    if config.tunnel == "on-demand":
        on_demand = later_on_demand.bind(
            OnDemandTunnel(tunnel, reactor, core.busy, config.tunnel_idle, before_close=resumption.end_session)
        )

    top = StartupService("agent")
    relay_keep_service(top, media.sockets)
    hep_service(top, hep)
    (on_demand if on_demand is not None else tunnel).setServiceParent(top)
    for side in sides[1:]:
        side.tunnel.setServiceParent(top)
    Hook(forwarder.start, forwarder.stop).setServiceParent(top)
    listeners = SipListeners(
        reactor,
        runner,
        sip_addresses,
        sip_tls,
        limits.sip.udp_buffer,
        limits.sip.max_message_size,
        max_connections=limits.sip.max_stream_connections,
        first_message_timeout=limits.sip.first_message_timeout,
        # open, at the stop, until the session's calls have ended with its
        # tunnel and their phones' BYEs have gone out (docs/sip-proxy.md),
        # at most BYE_FLUSH seconds
        after=lambda: until(reactor, lambda: media.streams == 0 and core.byes_unsent() == 0, BYE_FLUSH),
    )
    listeners.setServiceParent(top)
    # after the SIP listeners: the media address is by default the first
    # --sip-listen host, and a host that is not ours is that option's error
    MediaRangeCheck(media_address, config.media_ports).setServiceParent(top)
    if sip_certificates is not None:
        sip_certificates.setServiceParent(top)
    if tls_files is not None:
        tls_files.setServiceParent(top)
    for side in sides:
        Hook(lambda: None, side.resumption.stop).setServiceParent(top)
        if side.paths is not None and side.paths.keeper is not None:
            Hook(lambda: None, side.paths.keeper.stop).setServiceParent(top)
    if agent_state is not None:
        # added after the resumptions' hooks, so stopped before them: the
        # sessions are saved with their keys, then released
        kept_state = agent_state
        Hook(
            lambda: kept_state.start(state_sides, config.state_interval) if config.state_interval else None,
            lambda: kept_state.stop_and_save(state_sides),
        ).setServiceParent(top)
    status = Status("agent", reactor)
    if agent_state is not None:
        status.add("state_file", agent_state.status)
    if on_demand is not None:
        demand = on_demand
        status.add("tunnel", lambda: dict(tunnel.status(), **demand.status()))
    else:
        status.add("tunnel", tunnel.status)
    status.add("no_tunnel", handle.status)
    route = sides[0].route
    assert route is not None
    status.add(
        "sessions",
        lambda: {
            **resumption.status(),
            "worker_redirects": route.redirects,
            "worker_fallbacks": route.fallbacks,
            "worker_avoided": route.avoided,
        },
    )
    for k, side in enumerate(sides[1:], 2):
        # the second contact point's tunnel and session
        status.add(f"tunnel_{k}", side.tunnel.status)
        status.add(f"sessions_{k}", side.resumption.status)
        if side.paths is not None:
            status.add(f"paths_{k}", side.paths.status)
    if paths is not None:
        paths_now = paths
        if quic is not None:
            prober = quic
            status.add("paths", lambda: {**paths_now.status(), "udp_path": prober.status()})
        else:
            status.add("paths", paths_now.status)
    status.add("sip", lambda: {**core.status(), **runner.slice_status()})
    status.add("media", media.status)
    if sip_certificates is not None:
        status.add("certificate", sip_certificates.status)
    if tls_files is not None and tls_files.facts is not None:
        status.add("client_certificate", tls_files.status)
    cdr = cdr_file(config.cdr_file, reactor, media, status)
    status.add(
        "forwards",
        lambda: {
            "dropped_no_tunnel": forwarder.dropped_no_tunnel,
            "dropped_no_channel": forwarder.dropped_no_channel,
            "reopened": forwarder.reopened,
        },
    )
    # every contact point's tunnel (--contact given twice: both)
    add_agent_lists(status, agent_id, lambda: [side.tunnel.tunnel for side in sides], core, media)
    status_http = status_services(top, status, config.status, reactor)
    return Agent(
        config=config,
        router=router,
        handle=handle,
        forwarder=forwarder,
        media=media,
        resumption=resumption,
        paths=paths,
        sip_core=core,
        runner=runner,
        factory=factory,
        tunnel_service=tunnel,
        on_demand=on_demand,
        sip_listeners=listeners,
        status=status,
        status_http=status_http,
        service=top,
        quic=quic,
        sides=tuple(sides),
        sip_certificates=sip_certificates,
        tls_files=tls_files,
        cdr=cdr,
    )


@attrs.define
class AgentSide:
    """
    The parts of an agent for one contact point (C{--contact}): its tunnel
    handle, session logic, SIP proxy and, once L{_agent_side_tunnel} has
    run, its tunnel.

    @ivar config: the agent's configuration with this contact point as
        C{contact}.
    @ivar core: the side's SIP proxy, watched by C{resumption}.
    @ivar route: which port of the contact point the side's connections go
        to (a worker's own, for those of the session).
    """

    config: AgentConfig
    handle: AgentTunnelHandle
    resumption: AgentResumption
    core: Any
    later_tunnel: Later[AgentTunnelService]
    later_on_demand: Later[OnDemandTunnel] | None
    router: Any = None
    factory: Any = None
    paths: PathSessions | None = None
    quic: QuicProber | None = None
    tunnel: Any = None
    route: WorkerRoute | None = None


def _agent_side(
    config: AgentConfig,
    reactor: Any,
    agent_id: str,
    side: int,
    media: MediaManager,
    flows: FlowTable,
    names: ProxyNames,
    later_runner: Later[AgentSipRunner],
    forwarder: AgentForwarder | None,
    later_on_demand: Later[OnDemandTunnel] | None,
) -> AgentSide:
    """
    The first half of an agent's side for one contact point: the tunnel
    handle, the session logic and the SIP proxy (the flows, the media
    relay and the runner are shared by the sides).

    @param forwarder: the UDP forwards, for the first side only.
    @param later_on_demand: C{--tunnel on-demand}'s part, for the first
        (and then only) side.
    """
    limits = config.limits
    later_tunnel: Later[AgentTunnelService] = Later("the tunnel service")

    def answer(flow_id: int, data: bytes) -> None:
        if side == 0:
            later_runner().sip_received(None, flow_id, data)
        else:
            later_runner().sip_received(None, flow_id, data, side=side)

    handle = AgentTunnelHandle(
        reactor,
        max_held=limits.tunnel.max_held,
        hold_time=limits.tunnel.hold_time,
        answer=answer,
        retry_after=lambda: later_tunnel().retry_after(limits.tunnel.retry_after_cap),
        on_demand=LaterOnDemand(later_on_demand) if later_on_demand is not None and config.tunnel == "on-demand" else None,
    )
    resumption = AgentResumption(
        reactor,
        limits.session.resume_window,
        media,
        handle,
        session_lost=lambda flows: later_runner().close_stream_flows(flows),
        forwarder=forwarder,
    )
    # a cut of the session's connection: SIP waits for the resumption
    handle.resuming = lambda: resumption.resuming
    proxy = AgentSipProxy(
        handle,
        agent_id,
        # media from the phone's signalling host latches (docs/media.md)
        # until the session whose connection was lost is resumed, its
        # media is the suspended session's: the SIP that waits meanwhile,
        # and what comes on the new connection before the contact point's
        # answer, starts and ends calls of that session
        media_hook=MediaHookAdapter(
            media,
            lambda key: resumption.session.suspended if resumption.resuming else key.current,
            flow_source(flows, reactor),
        ),
        max_message_size=limits.sip.max_message_size,
        names=names,
        flows=flows,
        bye_on_loss=config.bye_on_loss,
    )
    return AgentSide(config, handle, resumption, resumption.wrap(proxy), later_tunnel, later_on_demand)


def _agent_side_tunnel(
    side: AgentSide,
    reactor: Any,
    agent_id: str,
    sip_part: Any,
    forwarder: AgentForwarder,
    media: MediaManager,
    tls_files: CertificateWatch | None = None,
) -> None:
    """
    The second half of an agent's side: its paths, tunnel application,
    tunnel factory and tunnel service (into C{side}).
    """
    config = side.config
    resumption = side.resumption
    # The session logic is the tunnels' one observer; it tells the
    # handle and the forwards.  With several connections the paths layer
    # comes first: the session logic sees the session's front.
    # --workers at the contact point: the connections that resume or join
    # the session go to its worker's own port (spwm.session.workerroute)
    route = WorkerRoute(reactor.seconds)
    default_endpoint, tls = agent_tunnel_endpoint(config, reactor, files=tls_files)

    def to_port(port: int | None) -> Any:
        return default_endpoint if port is None else agent_tunnel_endpoint(config, reactor, port, tls)[0]

    def to_session() -> bool:
        return bool({"resume", "attach"} & set(hello()))

    endpoint = (SteeredEndpoint(to_port, route, to_session), tls)
    paths = None
    quic = None
    keeper = None
    observer: Any = resumption
    hello: Any = resumption.hello
    seal: Any = resumption
    # The paths layer is there even with one TCP connection (over an HTTP
    # proxy, in plaintext, with --udp-path off): its SIP is numbered, so
    # what is in flight when the connection breaks goes again in the
    # resumed session; with --udp-path auto a QUIC path joins the session
    # as a further connection does
    if config.paths_layer:
        later_factory: Later[AgentTunnelFactory] = Later("the tunnel factory")
        raw_endpoint = SteeredEndpoint(to_port, route, lambda: True)
        fewest, most = config.paths_range
        # --tunnel-connections auto: the count follows the media's stalls
        count = PathCount(fewest, most, config.limits.paths) if most > fewest else None
        keeper = PathKeeper(
            reactor,
            lambda: raw_endpoint.connect(later_factory()),
            fewest - 1,
            retry_cap=config.reconnect_max,
            count=count,
            front=lambda: paths.front if paths is not None else None,
        )
        keepers: PathKeeper | Keepers = keeper
        if config.quic_probe:
            quic = agent_quic_prober(config, reactor, lambda: paths.front if paths is not None else None, later_factory)
            keepers = Keepers(keeper, quic)
        paths = PathSessions(
            reactor,
            resumption,
            agent=True,
            keeper=keepers,
            moving=lambda: side.later_tunnel().reconnect_now(),
            count=count,
            lost_all=lambda up_for: side.later_tunnel().session_lost(up_for),
            # the SIP in flight when the last connection broke goes again
            # after the resumption
            orphaned=lambda session, messages, taken: (
                side.handle.carry(messages, taken) if session == resumption.session_id else None
            ),
        )
        observer, hello, seal = paths, paths.hello(resumption.hello), paths.seal(resumption)
    observer = WorkerSteering(
        observer,
        route,
        reconnect=lambda: side.later_tunnel().reconnect_now(),
        reattach=keeper.redirected if keeper is not None else None,
    )
    router = Router(sip_part, {FORWARD_USE: forwarder, "media": media}, observer)
    factory = AgentTunnelFactory(
        router, reactor, agent_id, config.limits.tunnel, hello=hello, user_ciphering=config.user_ciphering, seal=seal
    )
    if paths is not None:
        later_factory.bind(factory)
    on_demand = side.later_on_demand is not None and config.tunnel == "on-demand"
    side.tunnel = side.later_tunnel.bind(
        agent_tunnel_service(config, factory, reactor, side.handle.release_held if on_demand else None, endpoint)
    )
    side.router, side.factory, side.paths, side.quic = router, factory, paths, quic
    side.route = route


class SideSip:
    """
    The SIP part of the tunnel application of one of several contact
    points: SIP from its tunnel goes to the runner's L{FanoutCore} with
    the side's number.
    """

    def __init__(self, runner: AgentSipRunner, side: int) -> None:
        self.runner = runner
        self.side = side

    @property
    def trace(self) -> SipTrace | None:
        """
        The runner's trace.
        """
        return self.runner.trace

    def sip_received(self, tunnel: Any, flow_id: int, data: bytes) -> None:
        self.runner.sip_received(tunnel, flow_id, data, side=self.side)


class TouchingSip:
    """
    The SIP part of the tunnel application with an on-demand tunnel: SIP
    from the tunnel counts as activity too (an incoming call keeps the
    tunnel up).
    """

    def __init__(self, runner: AgentSipRunner, on_demand: LaterOnDemand) -> None:
        self.runner = runner
        self._on_demand = on_demand

    @property
    def trace(self) -> SipTrace | None:
        """
        The runner's trace.
        """
        return self.runner.trace

    def sip_received(self, tunnel: Any, flow_id: int, data: bytes) -> None:
        self._on_demand.touch()
        self.runner.sip_received(tunnel, flow_id, data)


def check_state_directory(path: str) -> None:
    """
    The state file is written while running and at stop: refuse at start
    a directory it could not be written to, rather than lose the state
    then.

    @raise ConfigError: it could not.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError("state-file", f"no directory {directory!r}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError("state-file", f"cannot write in {directory!r}")


def operator_proxies(config: ContactConfig) -> list[OperatorProxy]:
    """
    Every C{--sip-proxy} with its host resolved, in order
    (L{resolve_proxies}): a name with several addresses (of the family of
    C{--sip-address}) is that many proxies.  Resolved again while the
    contact point runs (L{proxy_name_watch}).

    @raise ConfigError: a name does not resolve, or not in that family.
    """
    try:
        return resolve_proxies(configured_proxies(config), sip_family(config))
    except OSError as e:
        raise ConfigError("sip-proxy", f"cannot resolve {e}") from None


def configured_proxies(config: ContactConfig) -> list[OperatorProxy]:
    """
    The C{--sip-proxy} entries as given (names unresolved).
    """
    return [p for p in (config.sip_proxy, *config.also_sip_proxy) if p is not None]


def sip_family(config: ContactConfig) -> int:
    """
    The address family of C{--sip-address} (the operator proxies').
    """
    return socket.AF_INET6 if ":" in config.sip_address[0] else socket.AF_INET


def proxy_name_watch(config: ContactConfig, reactor: Any, runner: ContactSipRunner) -> ProxyNameWatch | None:
    """
    The service that resolves the C{--sip-proxy} names again every
    C{--sip-proxy-resolve} seconds; C{None} when every entry is an
    address, or with C{--sip-proxy-resolve 0}.
    """
    entries = configured_proxies(config)
    if not config.sip_proxy_resolve or all(is_ip_address(p.host) for p in entries):
        return None
    pool = runner.core.proxies
    assert pool is not None
    return ProxyNameWatch(
        reactor,
        entries,
        sip_family(config),
        lambda: pool.proxies,
        runner.use_proxies,
        config.sip_proxy_resolve,
    )


def listen_backlog(config: ContactConfig) -> int:
    """
    The tunnel listener's backlog: C{--listen-backlog}, else the system's
    C{somaxconn}.
    """
    return config.listen_backlog or system_backlog()


def contact_tls(config: ContactConfig) -> ReloadableServerTLS | None:
    """
    The TLS options of the tunnel listeners, in the holder the certificate
    watch swaps them in (L{spwm.security.certwatch}), or C{None} with
    C{--plaintext}.

    @raise ConfigError: the certificate, key or client CA does not load.
    """
    if config.plaintext:
        return None
    return ReloadableServerTLS(contact_tls_options(config))


def contact_tls_options(config: ContactConfig) -> Any:
    """
    The tunnel listeners' TLS options from the C{--cert}, C{--key} and
    C{--client-ca} files as they are now.

    @raise ConfigError: they do not load.
    """
    assert config.cert is not None and config.key is not None
    if config.client_ca:
        load_certificates("client-ca", config.client_ca)
    return load_tls("cert", server_tls_options, config.cert, config.key, config.client_ca)


def contact_tls_factory(tls: ReloadableServerTLS | None, factory: ContactTunnelFactory, reactor: Any) -> Any:
    """
    The TLS wrapper of a tunnel listener, or C{None} with C{--plaintext}.
    """
    if tls is None:
        return None
    return TunnelTLSFactory(tls, False, factory, clock=reactor)


def worker_listen_service(
    config: ContactConfig, factory: ContactTunnelFactory, reactor: Any, port: int, tls: ReloadableServerTLS | None
) -> ContactListenService:
    """
    C{--workers}: this worker's own tunnel listener (L{WorkerPorts.own}),
    on the C{--listen} address, for the resumptions and further
    connections of its sessions (the welcome names it).
    """
    family, interface, _ = listen_address(config.listen)
    endpoint: Any = (
        TCP6ServerEndpoint(reactor, port, listen_backlog(config), interface)
        if family == socket.AF_INET6
        else TCP4ServerEndpoint(reactor, port, listen_backlog(config), interface)
    )
    return ContactListenService(
        endpoint,
        factory,
        reactor,
        tls_factory=contact_tls_factory(tls, factory, reactor),
        drain=config.limits.tunnel.drain_time,
        description=f"{'tcp6' if family == socket.AF_INET6 else 'tcp'}:{port}:interface={interface} (this worker's own port)",
        option="worker-ports",
    )


def contact_listen_service(
    config: ContactConfig, factory: ContactTunnelFactory, reactor: Any, tls: ReloadableServerTLS | None
) -> ContactListenService:
    """
    The service that accepts the agents' tunnels.
    """
    tls_factory = contact_tls_factory(tls, factory, reactor)
    if config.workers > 1:
        # one of several workers: a listener shared with SO_REUSEPORT
        endpoint: Any = ReusePortEndpoint(reactor, *listen_address(config.listen), listen_backlog(config))
    else:
        endpoint = server_endpoint(reactor, "listen", with_backlog(config.listen, listen_backlog(config)))
    return ContactListenService(
        endpoint,
        factory,
        reactor,
        tls_factory=tls_factory,
        drain=config.limits.tunnel.drain_time,
        description=config.listen,
    )


def quic_configuration(config: ContactConfig) -> Any:
    """
    The QUIC listener's configuration from the C{--cert} and C{--key}
    files as they are now.

    @raise ConfigError: they do not load.
    """
    from spwm.tunnel.quic import server_configuration

    limits = config.limits
    return load_tls("cert", server_configuration, config.cert, config.key, limits.quic, limits.tunnel.keepalive_timeout)


def quic_listen_service(
    config: ContactConfig, factory: ContactTunnelFactory, reactor: Any
) -> tuple[ContactListenService, Any] | None:
    """
    C{--quic-listen}: the service that accepts tunnels over QUIC, with the
    same certificate, the same tunnel factory and so the same admission
    and session manager as the TCP listener, and its endpoint (the
    certificate watch gives it renewed certificates); C{None} without the
    option.
    """
    if config.quic_listen is None:
        return None
    from spwm.tunnel.quic import QuicServerEndpoint

    host, port = config.quic_listen
    limits = config.limits
    endpoint = QuicServerEndpoint(reactor, host, port, quic_configuration(config), limits=limits.quic)
    service = ContactListenService(
        endpoint,
        factory,
        reactor,
        drain=limits.tunnel.drain_time,
        description=f"udp:{hostport(host, port)}",
        option="quic-listen",
    )
    return service, endpoint


def certificate_watch(
    config: ContactConfig, reactor: Any, tls: ReloadableServerTLS | None, quic_endpoint: Any
) -> CertificateWatch | None:
    """
    The watch that loads the C{--cert}, C{--key} and C{--client-ca} files
    again when they change (a renewed certificate) and installs them in
    the TLS and QUIC listeners; C{None} with C{--plaintext}.
    """
    if tls is None or config.cert is None:
        return None
    loaders = [Loader(lambda: contact_tls_options(config), tls.use)]
    if quic_endpoint is not None:
        loaders.append(Loader(lambda: quic_configuration(config), quic_endpoint.use_configuration))
    paths = [p for p in (config.cert, config.key, config.client_ca) if p]
    return CertificateWatch(reactor, "cert", config.cert, paths, loaders)


def build_contact(
    config: ContactConfig, reactor: Any = None, *, sip_observer: SipObserver | None = None
) -> ContactPoint:
    """
    Build a contact point: the tunnel listener and the parts behind it.

    @param sip_observer: as for L{build_agent}.

    @raise ConfigError: a certificate, key, endpoint, proxy name or state
        directory of C{config} is not usable.
    """
    if reactor is None:
        from twisted.internet import reactor
    limits = config.limits
    later_resumption: Later[SessionManager] = Later("the session resumption")

    forwarder = ContactForwarder(reactor, list(config.allow_forward), receive_buffer=limits.sip.udp_buffer)
    sip_host, sip_port = config.sip_address
    resolved = operator_proxies(config)
    proxies = ProxyPool(resolved, (sip_host, sip_port), interval=config.sip_proxy_ping) if resolved else None
    media_address = config.media_address or sip_host
    hep = hep_sender(config.hep, reactor, "contact")
    media = MediaManager(
        reactor,
        "contact",
        media_address,
        config.media_ports,
        allow=list(config.media_allow),
        inactivity_timeout=limits.media.inactivity_timeout,
        receive_buffer=limits.media.receive_buffer,
        max_streams_per_dialog=limits.media.max_streams_per_dialog,
        max_pending_channels=limits.media.max_pending_channels,
        max_branches_per_stream=limits.media.max_branches_per_stream,
        pending_timeout=limits.media.pending_timeout,
        sockets=relay_sockets_for(reactor, keep_for=limits.media.relay_keep),
        hep=hep,
        call_lines=config.log_level == "debug",
        max_calls=config.max_calls,
        max_pairs_per_session=config.max_media_per_tunnel or session_share(PortAllocator(*config.media_ports).capacity),
    )
    state = None
    if config.state_file:
        check_state_directory(config.state_file)
        state = ContactState(config.state_file, reactor)
    saved = state.load_own(agent=False) if state is not None else None
    secret = (state.secret(saved) if state is not None else None) or os.urandom(32)
    registrar = None if proxies is not None else EmbeddedRegistrar(domains=list(config.domains) or None)
    proxy = ContactSipProxy(
            (sip_host, sip_port),
            secret,
            proxies=proxies,
            registrar=registrar,
            names=ProxyNames([(sip_host, sip_port)], list(config.sip_names)),
            contact_rewrite=config.contact_rewrite,
            media_hook=MediaHookAdapter(media),
            max_message_size=limits.sip.max_message_size,
            bye_on_loss=config.bye_on_loss,
        )
    core = AuthorizingContactProxy(
        proxy,
        require_registration=not config.allow_unregistered,
        register_limit=limits.sip.registers_per_minute,
        max_users=limits.sip.users_per_tunnel,
        observer=ResumptionObserver(later_resumption),
    )

    def connect(addr: tuple[str, int], f: Any) -> Deferred[Any]:
        endpoint = TCP6ClientEndpoint if ":" in addr[0] else TCP4ClientEndpoint
        return endpoint(reactor, addr[0], addr[1], timeout=10, bindAddress=(sip_host, 0)).connect(f)

    def send_to_tunnel(tunnel: Any, flow_id: int, data: bytes) -> bool:
        # False: the tunnel is not open (the runner answers 430)
        sent = bool(tunnel.send_sip(flow_id, data))
        later_resumption().flush_bindings()
        return sent

    runner = ContactSipRunner(
        core,
        reactor,
        connect=connect,
        send_to_tunnel=send_to_tunnel,
        max_connections=limits.sip.max_connections,
        max_queued=limits.sip.max_queued,
        trace=sip_trace(config.sip_trace, config.sip_trace_bodies, hep, sip_observer),
        slice_seconds=SIP_SLICE,
    )
    # a call that ends here without a BYE: the far party is told (docs/sip-proxy.md)
    media.leg_lost = runner.leg_lost
    media.session_lost = runner.ringing_lost
    # --workers: this worker's own port, and where the others' sessions are
    worker_ports = (
        WorkerPorts(
            config.worker_ports if config.worker_ports is not None else worker_ports_base(config),
            config.worker_index,
            config.workers,
        )
        if config.workers > 1
        else None
    )
    elsewhere = worker_ports.redirect if worker_ports is not None else None
    resumption = later_resumption.bind(
        SessionManager(
            reactor,
            limits.session.resume_window,
            media,
            runner,
            max_dormant=limits.session.max_dormant,
            forwarder=forwarder,
            elsewhere=elsewhere,
        )
    )
    # SIP for a session whose agent is reconnecting waits for it
    runner.resuming = resumption.resuming
    gate = MediaAcceptor(media, core)
    # Connections of agents that say "paths" join their session here; the
    # session manager sees the sessions' fronts (or, for other agents, the
    # connections themselves).
    # the SIP in flight when a session's last connection broke goes first
    # on the resumed one
    paths = PathSessions(reactor, resumption, agent=False, elsewhere=elsewhere, orphaned=runner.carry)
    router = Router(runner, {FORWARD_USE: forwarder, "media": gate}, paths)
    handshakes = HandshakeGate(limits.tunnel.max_handshaking)
    factory = ContactTunnelFactory(
        router,
        reactor,
        limits.tunnel,
        max_tunnels=limits.tunnel.max_tunnels,
        max_per_host=limits.tunnel.max_tunnels_per_address,
        check_client_identity=bool(config.client_ca),
        user_ciphering=config.user_ciphering,
        on_connection=handshakes.connection,
    )
    factory.worker_ports = worker_ports
    # --workers: a resumption or attach on the shared port for another
    # worker's session goes on to that worker (spwm.handon)
    handon = (
        HandOn(
            reactor,
            config.handon_dir,
            worker_ports,
            listen_address(config.listen)[2],
            limits.tunnel.max_tunnels,
            listen_backlog(config),
        )
        if worker_ports is not None and config.handon_dir
        else None
    )
    if handon is not None:
        factory.tunnel_class = handon.tunnel_class
    tls = contact_tls(config)
    listener = contact_listen_service(config, factory, reactor, tls)
    own_listener = (
        worker_listen_service(config, factory, reactor, worker_ports.own, tls) if worker_ports is not None else None
    )
    quic = quic_listen_service(config, factory, reactor)
    quic_listener = quic[0] if quic is not None else None
    certificates = certificate_watch(config, reactor, tls, quic[1] if quic is not None else None)
    if quic_listener is not None and config.quic_listen is not None:
        # the welcome tells agents of the QUIC port (--udp-path auto); the
        # port bound, if --quic-listen asked for any (0)
        factory.quic_port = config.quic_listen[1] or None

    top = StartupService("contact")
    relay_keep_service(top, media.sockets)
    hep_service(top, hep)
    listener.setServiceParent(top)
    if own_listener is not None:
        own_listener.setServiceParent(top)
    if handon is not None:
        handon.service(factory).setServiceParent(top)
    if quic_listener is not None:
        quic_listener.setServiceParent(top)
        quic_service = quic_listener

        def announce() -> None:
            if quic_service.listening is not None:
                quic_service.listening.addCallback(lambda port: announce_quic_port(factory, port))

        Hook(announce, lambda: None).setServiceParent(top)
    if certificates is not None:
        certificates.setServiceParent(top)
    # after the listener: it watches only while the listener runs
    listen_watch = ListenQueueWatch(reactor, config.listen, listen_backlog(config))
    listen_watch.setServiceParent(top)
    # the gate pauses the listening port while --max-handshakes handshake
    def gate_port() -> None:
        if listener.listening is not None:
            listener.listening.addCallback(handshakes.set_port)
        # --workers: the worker's own port (resumptions in a storm) too
        if own_listener is not None and own_listener.listening is not None:
            own_listener.listening.addCallback(handshakes.set_port)

    Hook(gate_port, handshakes.release).setServiceParent(top)
    listeners = SipListeners(
        reactor,
        runner,
        [(sip_host, sip_port)],
        receive_buffer=limits.sip.udp_buffer,
        max_size=limits.sip.max_message_size,
        option="sip-address",
        max_connections=limits.sip.max_stream_connections,
        first_message_timeout=limits.sip.first_message_timeout,
        # open until the tunnels' drain is over: the calls that end then
        # are ended for the operator side with BYEs (docs/sip-proxy.md)
        # and until the BYEs of those calls have gone out (paced, 1,000 a
        # second), at most BYE_FLUSH seconds more
        after=lambda: listener.when_stopped().addCallback(
            lambda _: until(reactor, lambda: proxy.byes_unsent() == 0, BYE_FLUSH)
        ),
    )
    listeners.setServiceParent(top)
    # after the SIP listener: the media address is by default the
    # --sip-address host, and a host that is not ours is that option's error
    MediaRangeCheck(media_address, config.media_ports).setServiceParent(top)
    names = proxy_name_watch(config, reactor, runner)
    if names is not None:
        names.setServiceParent(top)
    def stop_sessions() -> None:
        # the calls that end from now on get no BYE into a tunnel: every
        # tunnel goes, and each agent ends its calls for its phones
        runner.draining = True
        resumption.stop()

    Hook(lambda: None, stop_sessions).setServiceParent(top)
    status = Status("contact", reactor)
    status.add(
        "tunnels",
        lambda: {
            "open": len(factory.tunnels),
            "refused": factory.refused,
            **handshakes.status(),
            **listen_watch.status(),
            **(handon.status() if handon is not None else {}),
        },
    )
    if handon is None:
        status.add("sessions", resumption.status)
        status.add("paths", paths.status)
    else:
        counts = handon.counts
        status.add("sessions", lambda: {**resumption.status(), "resume_handed_on": counts.resumes})
        status.add("paths", lambda: {**paths.status(), "attach_handed_on": counts.attaches})
    status.add("sip", lambda: {**core.status(), **runner.slice_status(), **runner.held_status()})
    status.add("media", lambda: {**media.status(), "refused_unregistered": gate.refused})
    status.add(
        "forwards",
        lambda: {
            "open": forwarder.open_count,
            "refused": forwarder.refused,
            "reopened": forwarder.reopened,
            "crossed": forwarder.crossed,
        },
    )
    add_contact_lists(status, factory.tunnels, resumption, core, media)
    # the contact point's only: an agent carries a few calls, and a
    # laptop's agent should not wake ten times a second for it
    loop = LoopLag(reactor)
    loop.setServiceParent(top)
    status.add("loop", loop.status)
    if quic_listener is not None:
        status.add("quic", quic_status(quic_listener))
    if certificates is not None:
        status.add("certificate", certificates.status)
    cdr = cdr_file(config.cdr_file, reactor, media, status)
    status_http = status_services(top, status, config.status, reactor)
    if state is not None:
        status.add("state_file", state.status)
        kept = state
        if saved is not None:
            kept.restore(saved, core, resumption)
        # Written every SAVE_INTERVAL while running (a crash loses at most
        # that much); added last, so stopped first: the periodic write
        # under way finishes, then the last one is made while the
        # sessions are live, before the drain closes their tunnels.
        Hook(
            lambda: kept.start(core, resumption, config.state_interval) if config.state_interval else None,
            lambda: kept.stop_and_save(core, resumption),
        ).setServiceParent(top)
    return ContactPoint(
        config=config,
        router=router,
        forwarder=forwarder,
        media=media,
        sip_core=core,
        runner=runner,
        resumption=resumption,
        paths=paths,
        factory=factory,
        listener=listener,
        sip_listeners=listeners,
        state=state,
        status=status,
        status_http=status_http,
        service=top,
        quic_listener=quic_listener,
        worker_listener=own_listener,
        certificates=certificates,
        cdr=cdr,
    )


def announce_quic_port(factory: ContactTunnelFactory, port: Any) -> Any:
    """
    The QUIC listener listens: its bound port goes in the welcome.
    """
    try:
        factory.quic_port = int(port.getHost().port)
    except (AttributeError, TypeError, ValueError):
        pass
    return port


def quic_status(service: ContactListenService) -> Any:
    """
    The QUIC listener's counters for the status page (none before it listens).
    """
    endpoint = service._endpoint

    def status() -> dict[str, Any]:
        listener = getattr(endpoint, "listener", None)
        return listener.status() if listener is not None else {}

    return status


class ResumptionObserver:
    """
    The contact core's observer (REGISTER traffic of the tunnels), for
    the session resumption, which is built after the core.
    """

    def __init__(self, later: Later[SessionManager]) -> None:
        self._later = later

    def request_from_tunnel(self, tunnel_key: Any, session_id: Any, data: bytes) -> None:
        self._later().request_from_tunnel(tunnel_key, session_id, data)

    def response_to_tunnel(self, tunnel_key: Any, flow_id: int, data: bytes) -> None:
        self._later().response_to_tunnel(tunnel_key, flow_id, data)
