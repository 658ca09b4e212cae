# -*- test-case-name: tests.test_tap -*-
"""
C{twistd spwm-agent}: the LAN half of SPWM.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import IService, MultiService

from spwm.config import (
    ConfigError,
    Option,
    SpwmOptions,
    host_port,
    host_port_string,
    ip_address,
    ip_literal_port,
    optional_string,
    port_range,
    positive_float,
    positive_int,
    readable_file,
    udp_forward,
)
from spwm.media.manager import MediaManager
from spwm.media.reader import relay_sockets_for
from spwm.security.resume import AgentResumption
from spwm.sip.authz import MediaGate
from spwm.sip.names import ProxyNames, sip_name
from spwm.sip.proxy import AgentSipProxy
from spwm.sip.transport import AgentSipRunner, SipTrace
from spwm.tap.parts import AgentTunnelHandle, Hook, MediaHookAdapter, SipListeners, flow_source
from spwm.forward import USE as FORWARD_USE, AgentForwarder
from spwm.status import Status
from spwm.tap.common import STATUS_OPTIONS, TUNNEL_LIMIT_OPTIONS, add_status, limits_from
from spwm.tunnel.protocol import AgentTunnelFactory, ApplicationMux
from spwm.tunnel.service import AgentTunnelService, agent_endpoint, backoff, client_certificate

OPTIONS = (
    Option("contact", "localhost:443", host_port_string, "The contact point, HOST:PORT (DNS name, IPv4 or [IPv6])."),
    Option("server-name", None, optional_string, "Name the contact point's certificate must match (default: the host in --contact)."),
    Option("ca", None, readable_file, "PEM file of the certificates to trust (default: the system's store)."),
    Option("plaintext", False, bool, "Plain TCP instead of TLS (tests, or TLS terminated elsewhere).", flag=True),
    Option("client-cert", None, readable_file, "Mutual TLS: this agent's certificate (PEM), naming its --agent-id."),
    Option("client-key", None, readable_file, "Mutual TLS: the key of --client-cert (PEM)."),
    Option("http-proxy", None, host_port_string, "Connect through this HTTP CONNECT proxy, HOST:PORT."),
    Option("agent-id", None, optional_string, "This agent's identity (default: the host name)."),
    Option("forward-udp", (), udp_forward, "Forward UDP: [ADDR:]LOCAL_PORT=HOST:PORT (ADDR defaults to 127.0.0.1).", repeat=True),
    Option("max-forward-senders", 256, positive_int, "Senders (source addresses) one UDP forward gives a tunnel channel each; datagrams from more are dropped and counted."),
    Option("reconnect-max", 60.0, float, "Longest wait between reconnection attempts, in seconds."),
    Option("sip-listen", (), ip_literal_port, "Listen for SIP applications on IP:PORT, UDP and TCP (default 127.0.0.1:5060).", repeat=True),
    Option("sip-tls-cert", None, readable_file, "PEM certificate for SIP over TLS towards applications (port + 1)."),
    Option("sip-tls-key", None, readable_file, "PEM key for SIP over TLS towards applications."),
    Option("sip-name", (), sip_name, "Another name of this agent in a Route or Request-URI: a DNS name or address, NAME[:PORT] (without a port: every port the agent listens on).", repeat=True),
    Option("sip-trace", False, bool, "Log every SIP message received and sent (start line and headers).", flag=True),
    Option("sip-trace-bodies", False, bool, "With --sip-trace, log message bodies (SDP) too.", flag=True),
    Option("media-address", None, ip_address, "Address of the relay sockets that applications send media to (default: the first --sip-listen address)."),
    Option("media-ports", (40000, 40999), port_range, "UDP port range LOW-HIGH for media towards applications."),
    Option("media-timeout", 60.0, positive_float, "Seconds without media after which a stream that is not on hold is released."),
    *TUNNEL_LIMIT_OPTIONS,
    *STATUS_OPTIONS,
)


class Options(SpwmOptions.build("spwm-agent", OPTIONS)):
    """
    Options of C{twistd spwm-agent}.
    """

    def validate(self) -> None:
        if self["reconnect-max"] <= 0:
            raise ConfigError("reconnect-max", "must be greater than 0")
        host_port(self["contact"])
        if bool(self["client-cert"]) != bool(self["client-key"]):
            raise ConfigError("client-cert", "mutual TLS needs both --client-cert and --client-key")
        if bool(self["sip-tls-cert"]) != bool(self["sip-tls-key"]):
            raise ConfigError("sip-tls-cert", "SIP over TLS needs both --sip-tls-cert and --sip-tls-key")

    def sip_addresses(self) -> list[tuple[str, int]]:
        """
        Where the agent listens for SIP: loopback unless addresses are named.
        """
        return list(self["sip-listen"]) or [("127.0.0.1", 5060)]


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


def sip_trace(options: Any) -> SipTrace | None:
    """
    The runner's trace for C{--sip-trace} (C{None} without it).
    """
    if not options.get("sip-trace"):
        return None
    return SipTrace(bodies=bool(options.get("sip-trace-bodies")))


def makeService(options: dict, reactor: Any = None) -> IService:
    """
    Assemble the agent: the tunnel client and the parts that use it.
    """
    if reactor is None:
        from twisted.internet import reactor
    top = MultiService()
    host, port = host_port(options["contact"])
    limits = limits_from(options)
    agent_id = options["agent-id"] or socket.gethostname()
    handle = AgentTunnelHandle()
    mux = ApplicationMux(observers=[handle])
    forwarder = AgentForwarder(
        reactor,
        list(options["forward-udp"]),
        receive_buffer=options["udp-buffer"],
        max_senders=options["max-forward-senders"],
    )
    forwarder.mux = mux
    mux.parts[FORWARD_USE] = forwarder

    sip_addresses = options.sip_addresses() if hasattr(options, "sip_addresses") else [("127.0.0.1", 5060)]
    media = MediaManager(
        reactor,
        "agent",
        options["media-address"] or sip_addresses[0][0],
        options["media-ports"],
        inactivity_timeout=options["media-timeout"],
        receive_buffer=options["media-buffer"],
        router=mux,
        sockets=relay_sockets_for(reactor),
    )
    resumption = AgentResumption(reactor, options["resume-window"], media, handle)
    mux.observers.append(resumption)
    mux.parts["media"] = MediaGate(media, None, mux)
    media_hook = MediaHookAdapter(media, lambda key: key.current)
    proxy = AgentSipProxy(
        handle,
        agent_id,
        media_hook=media_hook,
        max_message_size=min(options["max-sip-size"], 65535),
        names=agent_names(sip_addresses, bool(options["sip-tls-cert"]), options.get("sip-name", ())),
    )
    # media from the phone's signalling host latches (docs/media.md)
    media_hook.source = flow_source(proxy.flows, reactor)
    core = resumption.wrap(proxy)
    runner = AgentSipRunner(core, reactor, trace=sip_trace(options))
    resumption.session_lost = runner.close_stream_flows
    mux.sip = runner
    sip_tls = None
    if options["sip-tls-cert"]:
        from spwm.tunnel.service import server_tls_options

        sip_tls = server_tls_options(options["sip-tls-cert"], options["sip-tls-key"])
    factory = AgentTunnelFactory(
        mux, reactor, agent_id, limits, hello=resumption.hello, user_ciphering=bool(options["user-ciphering"])
    )
    endpoint, tls = agent_endpoint(
        reactor,
        host,
        port,
        plaintext=bool(options["plaintext"]),
        server_name=options["server-name"],
        ca_file=options["ca"],
        http_proxy=host_port(options["http-proxy"]) if options["http-proxy"] else None,
        client_cert=client_certificate(options["client-cert"], options["client-key"]) if options["client-cert"] else None,
    )
    tunnel = AgentTunnelService(
        endpoint,
        factory,
        reactor,
        description=options["contact"],
        tls=tls,
        policy=backoff(cap=options["reconnect-max"]),
    )
    tunnel.setServiceParent(top)
    Hook(forwarder.start, forwarder.stop).setServiceParent(top)
    SipListeners(
        reactor, runner, sip_addresses, sip_tls, options["udp-buffer"], min(options["max-sip-size"], 65535)
    ).setServiceParent(top)
    Hook(lambda: None, resumption.stop).setServiceParent(top)
    status = Status("agent", reactor)
    status.add("tunnel", tunnel.status)
    status.add("sessions", resumption.status)
    status.add("sip", core.status)
    status.add("media", media.status)
    status.add(
        "forwards",
        lambda: {"dropped_no_tunnel": forwarder.dropped_no_tunnel, "dropped_no_channel": forwarder.dropped_no_channel},
    )
    top.status_http = add_status(top, status, options, reactor)  # type: ignore[attr-defined]
    top.status = status  # type: ignore[attr-defined]
    top.tunnel_service = tunnel  # type: ignore[attr-defined]
    top.mux = mux  # type: ignore[attr-defined]
    top.media = media  # type: ignore[attr-defined]
    top.sip_core = core  # type: ignore[attr-defined]
    top.handle = handle  # type: ignore[attr-defined]
    top.resumption = resumption  # type: ignore[attr-defined]
    return top
