# -*- test-case-name: tests.test_tap -*-
"""
C{twistd spwm-contact}: the operator half of SPWM.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

from spwm.config import (
    Option,
    SpwmOptions,
    host_port,
    ip_address,
    ip_literal_port,
    listen_description,
    network,
    non_negative_float,
    optional_string,
    port_range,
    positive_float,
    positive_int,
    readable_file,
    string,
    state_interval,
    zero_or_at_least,
)
from spwm.sip.names import sip_domain, sip_name
from spwm.sip.actions import OperatorProxy
from spwm.sip.nexthop import DEFAULT_PING_INTERVAL
from spwm.addr import is_ip_address
from spwm.cdrfile import CdrFile
from spwm.security.certwatch import install_reload_signal
from spwm.security.certwatch import reload_on_hangup as hangup
from spwm.tap.assembly import ContactPoint, build_contact
from spwm.tap.common import HEP_OPTIONS, LOG_OPTIONS, STATUS_OPTIONS, TUNNEL_LIMIT_OPTIONS, build_service, guard_stop_signals
from spwm.tap.options import ContactConfig
from spwm.workers import WorkerSpec, build_workers, die_with_parent, parse_workers, report_started, worker_config

__all__ = ["OPTIONS", "Options", "makeService", "parse_sip_proxy", "sip_address"]

#: C{--sip-proxy-ping} and C{--sip-proxy-resolve}: 0 (off) or at least 0.1 s
proxy_interval = zero_or_at_least(0.1, "off")


def parse_sip_proxy(value: object) -> OperatorProxy:
    """
    C{HOST[:PORT][;transport=udp|tcp]} of the operator proxy.
    """
    text = string(value)
    target, _, params = text.partition(";")
    transport = "udp"
    given = bool(params)
    if params:
        key, _, val = params.partition("=")
        if key.strip().lower() != "transport" or val.strip().lower() not in ("udp", "tcp"):
            raise ValueError(f"{text!r}: only ;transport=udp or ;transport=tcp is understood")
        transport = val.strip().lower()
    host, port = host_port(target, 5060)
    # a name without a port: its SRV records first (RFC 3263 4.2), and
    # without a transport its NAPTR records before them (4.1)
    srv = ":" not in target and not is_ip_address(host)
    return OperatorProxy(host, port, transport, srv=srv, any_transport=srv and not given)


def sip_address(value: object) -> tuple[str, int]:
    """
    C{ADDR[:PORT]} with an IP address literal.
    """
    host, port = host_port(string(value), 5060)
    ip_address(host)
    return host, port


OPTIONS = (
    Option("listen", "tcp:443", listen_description, "Where tunnels connect: IP:PORT, PORT (every address) or a Twisted server endpoint description (tcp:443, tcp6:443:interface=\\:\\:)."),
    Option("listen-backlog", None, positive_int, "Length of the tunnel listener's accept queue (the listen backlog; default: the system's net.core.somaxconn, 4096 if unreadable); a backlog= in --listen wins."),
    Option("cert", None, readable_file, "PEM certificate (and chain) of the contact point; loaded again when the file changes (within 60 s) or on SIGHUP, for new tunnels."),
    Option("key", None, readable_file, "PEM private key of the contact point (loaded again with --cert)."),
    Option("plaintext", False, bool, "Plain TCP instead of TLS (tests, or TLS terminated elsewhere).", flag=True),
    Option("quic-listen", None, ip_literal_port, "Also take tunnels over QUIC (UDP) on IP:PORT, with --cert/--key (default: off; see docs/security.md); with --client-ca only as further paths of sessions opened over TCP."),
    Option("client-ca", None, readable_file, "Mutual TLS: agents must present a certificate from these CAs (PEM) that names their --agent-id."),
    Option("allow-forward", (), ip_literal_port, "Allow UDP forwards to this IP:PORT (none by default).", repeat=True),
    Option("workers", 1, parse_workers, "Processes of this contact point (a number up to 256, or auto: one per CPU): they share the --listen port (SO_REUSEPORT), each has its own SIP port (--sip-address port + its index), a slice of --media-ports, its own --state-file (+ .INDEX) and --status-listen port (+ index); a supervisor restarts a worker that dies."),
    Option("worker-ports", None, positive_int, "With --workers N: worker I also takes tunnels on its own port, this + I (default: the --listen port + 1), on the --listen address; the welcome names it, so a reconnecting agent resumes (and attaches further connections) at the worker that holds its session. These ports must be reachable like --listen."),
    Option("drain-time", 5.0, non_negative_float, "Seconds tunnels get to move after go-away when the contact point stops; 0: no drain, every tunnel is closed at once."),
    Option("state-file", None, optional_string, "Keep the flow token key and the registrations of sessions with keys in this file across a restart (written at stop and every --state-interval seconds, mode 0600; read at start): agents resume their registrations in the next process, also after a crash (default: none, a restart loses them)."),
    Option("state-interval", 30.0, state_interval, "With --state-file: seconds between two writes of the file while running (a crash loses at most the sessions and keys of this long); 0: written at stop only; else at least 1."),
    Option("max-tunnels", 10000, positive_int, "Tunnels (handshaking ones included) the contact point accepts in total."),
    Option("max-tunnels-per-address", 100, positive_int, "Tunnels accepted from one source address."),
    Option("max-handshakes", 256, positive_int, "Tunnels in their handshake (TLS and hello) at once; while that many are, the contact point accepts no more (the kernel's queue holds them), so a reconnect storm is worked through in order instead of every handshake timing out."),
    Option("sip-proxy", (), parse_sip_proxy, "Operator proxy HOST[:PORT][;transport=udp|tcp] (default: the embedded registrar); a name without a port is looked up by its DNS NAPTR (without ;transport) and SRV records first (RFC 3263); given more than once, the proxies in order of preference: each is sent OPTIONS every --sip-proxy-ping seconds, and requests go to the first that answers.", repeat=True),
    Option("sip-proxy-resolve", 60.0, proxy_interval, "Seconds between two resolutions of the --sip-proxy names while running (addresses are not resolved): when a name gives other addresses, requests follow them without a restart; a name that stops resolving keeps its addresses. 0: only at start; else at least 0.1."),
    Option("sip-proxy-ping", DEFAULT_PING_INTERVAL, proxy_interval, "With --sip-proxy given more than once: seconds between two OPTIONS to each proxy; a proxy that misses two in a row (no response within this, or a 5xx) is skipped until it answers again. 0: no pings, always the first; else at least 0.1."),
    Option("sip-address", ("127.0.0.1", 5070), sip_address, "Operator-side SIP address ADDR[:PORT] of the contact point (UDP and TCP)."),
    Option("sip-name", (), sip_name, "Another name of this contact point in a Route or Request-URI: a DNS name or address, NAME[:PORT] (without a port: the --sip-address port).", repeat=True),
    Option("domain", (), sip_domain, "A domain the embedded registrar serves (repeatable; default: any); a REGISTER for another domain gets 403.", repeat=True),
    Option("sip-trace", False, bool, "Log every SIP message received and sent (start line and headers).", flag=True),
    Option("sip-trace-bodies", False, bool, "With --sip-trace, log message bodies (SDP) too.", flag=True),
    Option("allow-unregistered", False, bool, "Let tunnels send any request and open media before a registration succeeded (trunks, tests).", flag=True),
    Option("max-users-per-tunnel", 64, positive_int, "Addresses-of-record one tunnel may register; a REGISTER for one more gets 403."),
    Option("max-registers-per-minute", 30, positive_int, "REGISTER requests a tunnel may send per minute for one address-of-record; more get 503 (in all: 4 x --max-users-per-tunnel)."),
    Option("contact-rewrite", False, bool, "Rewrite Contact to our address for registrars without Path support.", flag=True),
    Option("media-address", None, ip_address, "Operator-side address of the relay sockets (default: the --sip-address address)."),
    Option("media-ports", (50000, 50999), port_range, "UDP port range LOW-HIGH for media towards the operator network."),
    Option("media-allow", (), network, "Send media only to this network (CIDR, repeatable; default: anywhere but loopback, link-local, multicast).", repeat=True),
    Option("media-timeout", 60.0, positive_float, "Seconds without media after which a stream of an answered call that is not on hold is released (a call not answered yet may ring for minutes without media: 200 s, or this if longer)."),
    Option("max-media-per-tunnel", None, positive_int, "Media port pairs (one per stream) the calls of one tunnel may hold once a quarter or less of --media-ports is free: a new INVITE through a tunnel at this many is then answered 503 (media port limit of this tunnel reached), and a further stream of its calls gets port 0, each with a warning; while more is free a busy agent takes what it needs; so one agent can take at most three quarters of the range and the others always find pairs (default: a quarter of the --media-ports pairs, at least 16)."),
    Option("max-calls", None, positive_int, "Call legs with media the contact point relays at once (each worker, with --workers; a call between two agents of this contact point is two legs): a new INVITE beyond them, either way, is answered 503 with Retry-After, so that the calls in progress keep their audio (default: no limit but --media-ports; one worker on one core of the project's machine carries about 300-350 calls: docs/operations.md, \"Capacity\")."),
    *TUNNEL_LIMIT_OPTIONS,
    *STATUS_OPTIONS,
    *HEP_OPTIONS,
    *LOG_OPTIONS,
)


class Options(SpwmOptions, name="spwm-contact", options=OPTIONS):
    """
    Options of C{twistd spwm-contact}.
    """

    def build_config(self) -> ContactConfig:
        """
        The contact point's typed configuration.
        """
        return ContactConfig.from_parsed(self)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    The contact point of C{options.config} (L{build_contact}).
    """
    return build_service("contact", lambda: build_contact_or_workers(options.config, reactor), reactor)


def build_contact_or_workers(config: ContactConfig, reactor: Any = None) -> Any:
    """
    The contact point of C{config}; with C{--workers N} the supervisor of
    N workers (L{spwm.workers}); in a worker's process (its environment
    says so), that worker's contact point.  In each, a stop signal
    after the first is one info line (L{guard_stop_signals}).
    """
    spec = WorkerSpec.from_environment()
    built: Any
    if spec is not None:
        die_with_parent(spec.parent)
        built = build_contact(worker_config(config, spec), reactor)
        reload_on_hangup(built, reactor)
        # the reactor runs only once every service has started (a listener
        # that cannot bind ends the process before): tell the supervisor
        (reactor or _reactor()).callWhenRunning(report_started)
    elif config.workers > 1:
        if config.cdr_file is not None:
            # the workers append to it: one line at start if they cannot
            CdrFile(config.cdr_file).close()
        built = build_workers(config, reactor)
        install_reload_signal(reactor or _reactor(), built.supervisor.reload)
    else:
        built = build_contact(config, reactor)
        reload_on_hangup(built, reactor)
    guard_stop_signals(reactor)
    return built


def reload_on_hangup(contact: ContactPoint, reactor: Any = None) -> None:
    """
    C{SIGHUP} loads the certificate files again (C{kill -HUP}, systemd's
    C{ExecReload}); with C{--plaintext} there are none, and the signal
    says so in one line instead of ending the process.
    """
    hangup(
        reactor or _reactor(), [contact.certificates, contact.cdr], "nothing to load again (--plaintext: no certificate)"
    )


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor
