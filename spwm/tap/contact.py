# -*- test-case-name: tests.test_tap -*-
"""
C{twistd spwm-contact}: the operator half of SPWM.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString

import os

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint

from spwm.config import (
    ConfigError,
    Option,
    SpwmOptions,
    host_port,
    ip_address,
    ip_literal_port,
    network,
    optional_string,
    port_range,
    positive_float,
    positive_int,
    readable_file,
    string,
)
from spwm.media.manager import MediaManager
from spwm.media.reader import relay_sockets_for
from spwm.sip.authz import AuthorizingContactProxy, MediaGate
from spwm.sip.names import ProxyNames, sip_domain, sip_name
from spwm.sip.registrar import EmbeddedRegistrar
from spwm.sip.proxy import ContactSipProxy, OperatorProxy
from spwm.sip.transport import ContactSipRunner, SipTrace
from spwm.security.resume import ContactResumption
from spwm.tap.parts import Hook, MediaHookAdapter, SipListeners, SipOnly, resolve_ip
from spwm.forward import USE as FORWARD_USE, ContactForwarder
from spwm.state import ContactState
from spwm.status import Status
from spwm.tap.common import STATUS_OPTIONS, TUNNEL_LIMIT_OPTIONS, add_status, limits_from
from spwm.tunnel.protocol import ApplicationMux, ContactTunnelFactory
from spwm.tunnel.service import ContactListenService, server_tls_factory

OPTIONS = (
    Option("listen", "tcp:443", string, "Where tunnels connect: a Twisted server endpoint description."),
    Option("cert", None, readable_file, "PEM certificate (and chain) of the contact point."),
    Option("key", None, readable_file, "PEM private key of the contact point."),
    Option("plaintext", False, bool, "Plain TCP instead of TLS (tests, or TLS terminated elsewhere).", flag=True),
    Option("client-ca", None, readable_file, "Mutual TLS: agents must present a certificate from these CAs (PEM) that names their --agent-id."),
    Option("allow-forward", (), ip_literal_port, "Allow UDP forwards to this IP:PORT (none by default).", repeat=True),
    Option("drain-time", 5.0, positive_float, "Seconds tunnels get to move after go-away when the contact point stops."),
    Option("state-file", None, optional_string, "Keep the flow token key and the registrations of sessions with keys in this file across a restart (written at stop, mode 0600; read at start): agents resume their registrations in the next process (default: none, a restart loses them)."),
    Option("max-tunnels", 10000, positive_int, "Tunnels (handshaking ones included) the contact point accepts in total."),
    Option("max-tunnels-per-address", 100, positive_int, "Tunnels accepted from one source address."),
    Option("sip-proxy", None, lambda v: parse_sip_proxy(v) and v, "Operator proxy HOST[:PORT][;transport=udp|tcp] (default: the embedded registrar)."),
    Option("sip-address", "127.0.0.1:5070", lambda v: sip_address(v) and v, "Operator-side SIP address ADDR[:PORT] of the contact point (UDP and TCP)."),
    Option("sip-name", (), sip_name, "Another name of this contact point in a Route or Request-URI: a DNS name or address, NAME[:PORT] (without a port: the --sip-address port).", repeat=True),
    Option("domain", (), sip_domain, "A domain the embedded registrar serves (repeatable; default: any); a REGISTER for another domain gets 403.", repeat=True),
    Option("sip-trace", False, bool, "Log every SIP message received and sent (start line and headers).", flag=True),
    Option("sip-trace-bodies", False, bool, "With --sip-trace, log message bodies (SDP) too.", flag=True),
    Option("allow-unregistered", False, bool, "Let tunnels send any request and open media before a registration succeeded (trunks, tests).", flag=True),
    Option("max-users-per-tunnel", 64, positive_int, "Addresses-of-record one tunnel may register; a REGISTER for one more gets 403."),
    Option("max-registers-per-minute", 30, positive_int, "REGISTER requests a tunnel may send per minute; more get 503."),
    Option("contact-rewrite", False, bool, "Rewrite Contact to our address for registrars without Path support.", flag=True),
    Option("media-address", None, ip_address, "Operator-side address of the relay sockets (default: the --sip-address address)."),
    Option("media-ports", (50000, 50999), port_range, "UDP port range LOW-HIGH for media towards the operator network."),
    Option("media-allow", (), network, "Send media only to this network (CIDR, repeatable; default: anywhere but loopback, link-local, multicast).", repeat=True),
    Option("media-timeout", 60.0, positive_float, "Seconds without media after which a stream that is not on hold is released."),
    *TUNNEL_LIMIT_OPTIONS,
    *STATUS_OPTIONS,
)


def parse_sip_proxy(value: object) -> OperatorProxy:
    """
    C{HOST[:PORT][;transport=udp|tcp]} of the operator proxy.
    """
    text = string(value)
    target, _, params = text.partition(";")
    transport = "udp"
    if params:
        key, _, val = params.partition("=")
        if key.strip().lower() != "transport" or val.strip().lower() not in ("udp", "tcp"):
            raise ValueError(f"{text!r}: only ;transport=udp or ;transport=tcp is understood")
        transport = val.strip().lower()
    host, port = host_port(target, 5060)
    return OperatorProxy(host, port, transport)


def sip_address(value: object) -> tuple[str, int]:
    """
    C{ADDR[:PORT]} with an IP address literal.
    """
    host, port = host_port(string(value), 5060)
    ip_address(host)
    return host, port


class Options(SpwmOptions.build("spwm-contact", OPTIONS)):
    """
    Options of C{twistd spwm-contact}.
    """

    def validate(self) -> None:
        if not self["plaintext"] and not (self["cert"] and self["key"]):
            raise ConfigError("cert", "TLS needs --cert and --key (or ask for --plaintext by name)")
        if self["plaintext"] and self["client-ca"]:
            raise ConfigError("client-ca", "mutual TLS needs TLS: drop --plaintext")
        if self["plaintext"] and (self["cert"] or self["key"]):
            raise ConfigError("plaintext", "--plaintext and --cert/--key exclude each other")
        if self["domain"] and self["sip-proxy"]:
            raise ConfigError("domain", "--domain is for the embedded registrar: the operator proxy decides its own domains")


def makeService(options: dict, reactor: Any = None) -> IService:
    """
    Assemble the contact point: the tunnel listener and the parts behind it.
    """
    if reactor is None:
        from twisted.internet import reactor
    top = MultiService()
    limits = limits_from(options)
    mux = ApplicationMux()
    forwarder = ContactForwarder(reactor, list(options["allow-forward"]), receive_buffer=options["udp-buffer"])
    mux.parts[FORWARD_USE] = forwarder

    sip_host, sip_port = sip_address(options["sip-address"])
    operator = None
    if options["sip-proxy"]:
        operator = parse_sip_proxy(options["sip-proxy"])
        try:
            operator = OperatorProxy(resolve_ip(operator.host), operator.port, operator.transport)
        except OSError as e:
            raise SystemExit(f"spwm-contact: invalid configuration: sip-proxy: cannot resolve {operator.host}: {e}") from None
    media = MediaManager(
        reactor,
        "contact",
        options["media-address"] or sip_host,
        options["media-ports"],
        allow=list(options["media-allow"]),
        inactivity_timeout=options["media-timeout"],
        receive_buffer=options["media-buffer"],
        router=mux,
        sockets=relay_sockets_for(reactor),
    )
    state = ContactState(options["state-file"], reactor) if options["state-file"] else None
    saved = state.load() if state is not None else None
    secret = (state.secret(saved) if state is not None else None) or os.urandom(32)
    registrar = None
    if operator is None:
        registrar = EmbeddedRegistrar(domains=list(options.get("domain", ())) or None)
    core = ContactSipProxy(
        (sip_host, sip_port),
        secret,
        operator=operator,
        registrar=registrar,
        names=ProxyNames([(sip_host, sip_port)], list(options.get("sip-name", ()))),
        contact_rewrite=bool(options["contact-rewrite"]),
        media_hook=MediaHookAdapter(media),
        max_message_size=min(options["max-sip-size"], 65535),
    )
    core = AuthorizingContactProxy(
        core,
        require_registration=not options["allow-unregistered"],
        register_limit=options["max-registers-per-minute"],
        max_users=options["max-users-per-tunnel"],
    )
    gate = mux.parts["media"] = MediaGate(media, core, mux)

    def connect(addr: tuple[str, int], f: object) -> object:
        endpoint = TCP6ClientEndpoint if ":" in addr[0] else TCP4ClientEndpoint
        return endpoint(reactor, addr[0], addr[1], timeout=10, bindAddress=(sip_host, 0)).connect(f)

    def send_to_tunnel(tunnel: Any, flow_id: int, data: bytes) -> None:
        tunnel.send_sip(flow_id, data)
        resumption.flush_bindings()

    trace = SipTrace(bodies=bool(options.get("sip-trace-bodies"))) if options.get("sip-trace") else None
    runner = ContactSipRunner(core, reactor, connect=connect, send_to_tunnel=send_to_tunnel, trace=trace)
    resumption = ContactResumption(reactor, options["resume-window"], media, runner)
    core.observer = resumption
    mux.sip = SipOnly(runner)
    mux.observers.append(resumption)
    factory = ContactTunnelFactory(
        mux,
        reactor,
        limits,
        max_tunnels=options["max-tunnels"],
        max_per_host=options["max-tunnels-per-address"],
        check_client_identity=bool(options["client-ca"]),
        user_ciphering=bool(options["user-ciphering"]),
    )
    tls_factory = None
    if not options["plaintext"]:
        try:
            tls_factory = server_tls_factory(options["cert"], options["key"], factory, client_ca=options["client-ca"])
        except Exception as e:
            raise SystemExit(f"spwm-contact: invalid configuration: cert: cannot load certificate/key: {e}") from None
    listener = ContactListenService(
        serverFromString(reactor, options["listen"]),
        factory,
        reactor,
        tls_factory=tls_factory,
        drain=options["drain-time"],
        description=options["listen"],
    )
    listener.setServiceParent(top)
    SipListeners(
        reactor,
        runner,
        [(sip_host, sip_port)],
        receive_buffer=options["udp-buffer"],
        max_size=min(options["max-sip-size"], 65535),
    ).setServiceParent(top)
    Hook(lambda: None, resumption.stop).setServiceParent(top)
    status = Status("contact", reactor)
    status.add("tunnels", lambda: {"open": len(factory.tunnels), "refused": factory.refused})
    status.add("sessions", resumption.status)
    status.add("sip", core.status)
    status.add("media", lambda: {**media.status(), "refused_unregistered": gate.refused})
    status.add("forwards", lambda: {"open": forwarder.open_count, "refused": forwarder.refused})
    top.status_http = add_status(top, status, options, reactor)  # type: ignore[attr-defined]
    if state is not None:
        if saved is not None:
            state.restore(saved, core, resumption)
        # Added last, so stopped first: saved while the sessions are live,
        # before the drain closes their tunnels.
        Hook(lambda: None, lambda: state.save(core, resumption)).setServiceParent(top)
    top.status = status  # type: ignore[attr-defined]
    top.listener = listener  # type: ignore[attr-defined]
    top.factory = factory  # type: ignore[attr-defined]
    top.mux = mux  # type: ignore[attr-defined]
    top.forwarder = forwarder  # type: ignore[attr-defined]
    top.media = media  # type: ignore[attr-defined]
    top.sip_core = core  # type: ignore[attr-defined]
    top.resumption = resumption  # type: ignore[attr-defined]
    return top
