# -*- test-case-name: tests.test_tap -*-
"""
C{twistd spwm-agent}: the LAN half of SPWM.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import IService, MultiService, Service

from spwm.config import (
    ConfigError,
    Option,
    SpwmOptions,
    host_port,
    host_port_string,
    optional_string,
    readable_file,
    udp_forward,
)
from spwm.forward import USE as FORWARD_USE, AgentForwarder
from spwm.tap.common import TUNNEL_LIMIT_OPTIONS, limits_from
from spwm.tunnel.protocol import AgentTunnelFactory, ApplicationMux
from spwm.tunnel.service import AgentTunnelService, agent_endpoint, backoff

OPTIONS = (
    Option("contact", "localhost:443", host_port_string, "The contact point, HOST:PORT (DNS name, IPv4 or [IPv6])."),
    Option("server-name", None, optional_string, "Name the contact point's certificate must match (default: the host in --contact)."),
    Option("ca", None, readable_file, "PEM file of the certificates to trust (default: the system's store)."),
    Option("plaintext", False, bool, "Plain TCP instead of TLS (tests, or TLS terminated elsewhere).", flag=True),
    Option("http-proxy", None, host_port_string, "Connect through this HTTP CONNECT proxy, HOST:PORT."),
    Option("agent-id", None, optional_string, "This agent's identity (default: the host name)."),
    Option("forward-udp", (), udp_forward, "Forward UDP: [ADDR:]LOCAL_PORT=HOST:PORT (ADDR defaults to 127.0.0.1).", repeat=True),
    Option("reconnect-max", 60.0, float, "Longest wait between reconnection attempts, in seconds."),
    *TUNNEL_LIMIT_OPTIONS,
)


class Options(SpwmOptions.build("spwm-agent", OPTIONS)):
    """
    Options of C{twistd spwm-agent}.
    """

    def validate(self) -> None:
        if self["reconnect-max"] <= 0:
            raise ConfigError("reconnect-max", "must be greater than 0")
        host_port(self["contact"])


class _Hook(Service):
    """
    Runs start/stop callables with the service.
    """

    def __init__(self, start: Any, stop: Any) -> None:
        self._start, self._stop = start, stop

    def startService(self) -> None:
        super().startService()
        self._start()

    def stopService(self) -> None:
        super().stopService()
        self._stop()


def makeService(options: dict, reactor: Any = None) -> IService:
    """
    Assemble the agent: the tunnel client and the parts that use it.
    """
    if reactor is None:
        from twisted.internet import reactor
    top = MultiService()
    host, port = host_port(options["contact"])
    limits = limits_from(options)
    mux = ApplicationMux()
    forwarder = AgentForwarder(reactor, list(options["forward-udp"]), receive_buffer=options["udp-buffer"])
    forwarder.mux = mux
    mux.parts[FORWARD_USE] = forwarder
    agent_id = options["agent-id"] or socket.gethostname()
    factory = AgentTunnelFactory(mux, reactor, agent_id, limits)
    endpoint, tls = agent_endpoint(
        reactor,
        host,
        port,
        plaintext=bool(options["plaintext"]),
        server_name=options["server-name"],
        ca_file=options["ca"],
        http_proxy=host_port(options["http-proxy"]) if options["http-proxy"] else None,
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
    _Hook(forwarder.start, forwarder.stop).setServiceParent(top)
    top.tunnel_service = tunnel  # type: ignore[attr-defined]
    top.mux = mux  # type: ignore[attr-defined]
    return top
