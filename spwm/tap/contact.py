# -*- test-case-name: tests.test_tap -*-
"""
C{twistd spwm-contact}: the operator half of SPWM.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString

from spwm.config import (
    ConfigError,
    Option,
    SpwmOptions,
    ip_literal_port,
    positive_float,
    readable_file,
    string,
)
from spwm.forward import USE as FORWARD_USE, ContactForwarder
from spwm.tap.common import TUNNEL_LIMIT_OPTIONS, limits_from
from spwm.tunnel.protocol import ApplicationMux, ContactTunnelFactory
from spwm.tunnel.service import ContactListenService, server_tls_factory

OPTIONS = (
    Option("listen", "tcp:443", string, "Where tunnels connect: a Twisted server endpoint description."),
    Option("cert", None, readable_file, "PEM certificate (and chain) of the contact point."),
    Option("key", None, readable_file, "PEM private key of the contact point."),
    Option("plaintext", False, bool, "Plain TCP instead of TLS (tests, or TLS terminated elsewhere).", flag=True),
    Option("allow-forward", (), ip_literal_port, "Allow UDP forwards to this IP:PORT (none by default).", repeat=True),
    Option("drain-time", 5.0, positive_float, "Seconds tunnels get to move after go-away when the contact point stops."),
    *TUNNEL_LIMIT_OPTIONS,
)


class Options(SpwmOptions.build("spwm-contact", OPTIONS)):
    """
    Options of C{twistd spwm-contact}.
    """

    def validate(self) -> None:
        if not self["plaintext"] and not (self["cert"] and self["key"]):
            raise ConfigError("cert", "TLS needs --cert and --key (or ask for --plaintext by name)")
        if self["plaintext"] and (self["cert"] or self["key"]):
            raise ConfigError("plaintext", "--plaintext and --cert/--key exclude each other")


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
    factory = ContactTunnelFactory(mux, reactor, limits)
    tls_factory = None
    if not options["plaintext"]:
        try:
            tls_factory = server_tls_factory(options["cert"], options["key"], factory)
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
    top.listener = listener  # type: ignore[attr-defined]
    top.factory = factory  # type: ignore[attr-defined]
    top.mux = mux  # type: ignore[attr-defined]
    top.forwarder = forwarder  # type: ignore[attr-defined]
    return top
