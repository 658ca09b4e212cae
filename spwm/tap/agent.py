# -*- test-case-name: tests.test_tap -*-
"""
C{twistd spwm-agent}: the LAN half of SPWM.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from spwm.config import (
    ConfigError,
    ConfigExit,
    Option,
    SpwmOptions,
    host_port_pair,
    host_port_string,
    ip_address,
    ip_literal_port,
    optional_string,
    parse_port,
    port_range,
    positive_float,
    positive_int,
    readable_file,
    state_interval,
    udp_forward,
)
from spwm.security.certwatch import reload_on_hangup as hangup
from spwm.sip.names import sip_name
from spwm.tap.assembly import agent_names, build_agent
from spwm.tap.common import HEP_OPTIONS, LOG_OPTIONS, STATUS_OPTIONS, TUNNEL_LIMIT_OPTIONS, build_service, guard_stop_signals
from spwm.tap.options import AgentConfig

__all__ = ["OPTIONS", "Options", "makeService", "agent_names", "proxy_credentials", "tunnel_connections", "tunnel_mode", "udp_path", "udp_port"]


def tunnel_mode(value: Any) -> str:
    """
    C{always} or C{on-demand}.
    """
    if value not in ("always", "on-demand"):
        raise ValueError(f"must be always or on-demand, not {value!r}")
    return str(value)


def udp_path(value: Any) -> str:
    """
    C{auto}, C{off} or C{only}.
    """
    if value not in ("auto", "off", "only"):
        raise ValueError(f"must be auto, off or only, not {value!r}")
    return str(value)


def tunnel_connections(value: Any) -> int | None:
    """
    C{auto} (C{None}) or a number of connections, 1-8.
    """
    if value == "auto" or value is None:
        return None
    try:
        number = positive_int(value)
    except ValueError:
        raise ValueError(f"must be auto or a number of connections, not {value!r}") from None
    if number > 16:
        raise ValueError(f"must be auto or between 1 and 16, not {value!r}")
    return number


def udp_port(value: Any) -> int:
    """
    A port number, 1-65535.
    """
    return parse_port(str(value))


#: the environment variable with the HTTP proxy's USER:PASSWORD
PROXY_AUTH_ENV = "SPWM_HTTP_PROXY_AUTH"


def proxy_credentials(value: Any) -> str:
    """
    C{user:password} for Basic proxy authentication (RFC 7617: the user
    has no colon, the password may).
    """
    if not isinstance(value, str) or ":" not in value or value.startswith(":"):
        raise ValueError("must be USER:PASSWORD")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


OPTIONS = (
    Option("contact", ("localhost:443",), host_port_string, "The contact point, HOST:PORT (DNS name, IPv4 or [IPv6]); given twice, two contact points (RFC 5626 flows through both).", repeat=True),
    Option("server-name", None, optional_string, "Name the contact point's certificate must match (default: the host in --contact)."),
    Option("ca", None, readable_file, "PEM file of the certificates to trust (default: the system's store); loaded again when it changes (looked at before each connection, every 60 s and on SIGHUP)."),
    Option("plaintext", False, bool, "Plain TCP instead of TLS (tests, or TLS terminated elsewhere).", flag=True),
    Option("client-cert", None, readable_file, "Mutual TLS: this agent's certificate (PEM), naming its --agent-id; loaded again (with --client-key) when it changes (looked at before each connection, every 60 s and on SIGHUP); warned of from 14 days before it expires."),
    Option("client-key", None, readable_file, "Mutual TLS: the key of --client-cert (PEM)."),
    Option("http-proxy", None, host_port_pair, "Connect through this HTTP CONNECT proxy, HOST:PORT."),
    Option("http-proxy-auth", None, proxy_credentials, "USER:PASSWORD for --http-proxy (Basic); only in the --config file or the SPWM_HTTP_PROXY_AUTH environment variable, never on the command line."),
    Option("udp-path", "auto", udp_path, "only: the whole tunnel over QUIC (UDP) to the host of --contact and --quic-port; off: TLS over TCP only; auto: start on TLS over TCP and, when the contact point's welcome names its QUIC port, attach a QUIC path to the session in the background and send media on it while it works (SIP stays on TCP; back to TCP within the stall bound when UDP stops; probed again after 5 s, doubling to 60 s); not over --http-proxy, with --plaintext or --tunnel on-demand."),
    Option("quic-port", 443, udp_port, "UDP port of the contact point's QUIC listener (its --quic-listen), for --udp-path only (auto takes the port the contact point names; another port with auto or off is refused)."),
    Option("agent-id", None, optional_string, "This agent's identity (default: the host name)."),
    Option("forward-udp", (), udp_forward, "Forward UDP: [ADDR:]LOCAL_PORT=HOST:PORT (ADDR defaults to 127.0.0.1).", repeat=True),
    Option("max-forward-senders", 256, positive_int, "Senders (source addresses) one UDP forward gives a tunnel channel each; datagrams from more are dropped and counted."),
    Option("reconnect-max", 60.0, positive_float, "Longest wait between reconnection attempts, in seconds."),
    Option("state-file", None, optional_string, "Keep the session (its keys) and the phones' UDP flows in this file across a restart (written at start, every --state-interval seconds and at stop, mode 0600; read at start): the agent resumes its registrations at the contact point, so phones on UDP are reachable again at once, with no REGISTER (default: none, they wait for their next REGISTER)."),
    Option("state-interval", 30.0, state_interval, "With --state-file: seconds between two writes of the file while running (a crash loses at most the keys of this long); 0: written at stop only; else at least 1."),
    Option("tunnel", "always", tunnel_mode, "always: keep the tunnel up; on-demand: connect at the first SIP message from an application, close when none needs it."),
    Option("tunnel-connections", "auto", tunnel_connections, "TLS connections to keep attached to the one session (media goes on the healthy ones and moves at once when one stalls or breaks): auto (2, up to 4 while the media keeps stalling on the ones there are, and 2 spares beside those 4: each datagram's copies go on 4 of them in turn; up to 16 while many calls' media is spread over them on a lossy link), or a number up to 16; 1: one connection, as a proxy that allows only one needs. 1 with --tunnel on-demand or --udp-path only. With --udp-path auto a QUIC path joins these when the contact point offers it."),
    Option("tunnel-idle", 30.0, positive_float, "With --tunnel on-demand: seconds after the last registration and dialog have ended (and the last SIP) before the tunnel closes."),
    Option("sip-listen", (("127.0.0.1", 5060),), ip_literal_port, "Listen for SIP applications on IP:PORT, UDP and TCP.", repeat=True),
    Option("sip-tls-cert", None, readable_file, "PEM certificate for SIP over TLS towards applications (port + 1); loaded again when the file changes (within 60 s, or on SIGHUP), for new connections."),
    Option("sip-tls-key", None, readable_file, "PEM key for SIP over TLS towards applications."),
    Option("sip-name", (), sip_name, "Another name of this agent in a Route or Request-URI: a DNS name or address, NAME[:PORT] (without a port: every port the agent listens on).", repeat=True),
    Option("sip-trace", False, bool, "Log every SIP message received and sent (start line and headers).", flag=True),
    Option("sip-trace-bodies", False, bool, "With --sip-trace, log message bodies (SDP) too.", flag=True),
    Option("media-address", None, ip_address, "Address of the relay sockets that applications send media to (default: the first --sip-listen address; for 0.0.0.0 or ::, the address this host reaches the contact point from)."),
    Option("media-ports", (40000, 40999), port_range, "UDP port range LOW-HIGH for media towards applications."),
    Option("media-timeout", 60.0, positive_float, "Seconds without media after which a stream of an answered call that is not on hold is released (a call not answered yet may ring for minutes without media: 200 s, or this if longer)."),
    *TUNNEL_LIMIT_OPTIONS,
    *STATUS_OPTIONS,
    *HEP_OPTIONS,
    *LOG_OPTIONS,
)


class Options(SpwmOptions, name="spwm-agent", options=OPTIONS):
    """
    Options of C{twistd spwm-agent}.
    """

    def parseOptions(self, options: Any = None) -> None:
        """
        Refuse proxy credentials on the command line, where C{ps} shows them.
        """
        import sys

        argv = sys.argv[1:] if options is None else list(options)
        try:
            given = self._given(argv)
        except usage.UsageError:
            given = set()  # the parse below says what is wrong
        if "http-proxy-auth" in given:
            raise ConfigExit(
                "spwm-agent: invalid configuration: --http-proxy-auth: not on the command line (every"
                ' user sees it with ps): put http-proxy-auth = "user:password" in the --config file'
                f" or set {PROXY_AUTH_ENV}"
            )
        super().parseOptions(options)

    def proxy_auth(self) -> str | None:
        """
        The HTTP proxy's credentials: from the file, else the environment.
        """
        return self["http-proxy-auth"] or os.environ.get(PROXY_AUTH_ENV) or None

    def validate(self) -> None:
        env = os.environ.get(PROXY_AUTH_ENV)
        if env and not self["http-proxy-auth"]:
            try:
                proxy_credentials(env)
            except ValueError as e:
                raise ConfigError(PROXY_AUTH_ENV, str(e)) from None

    def build_config(self) -> AgentConfig:
        """
        The agent's typed configuration (the HTTP proxy's credentials from
        the file, else the environment).
        """
        return AgentConfig.from_parsed(self, proxy_auth=self.proxy_auth())

    def sip_addresses(self) -> list[tuple[str, int]]:
        """
        Where the agent listens for SIP: loopback unless addresses are named.
        """
        return list(self["sip-listen"]) or [("127.0.0.1", 5060)]


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    The agent of C{options.config} (L{build_agent}).
    """
    return build_service("agent", lambda: build_agent_for_twistd(options.config, reactor), reactor)


def on_a_terminal() -> bool:
    """
    Whether this process's standard input, output or error is a terminal.
    """
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return True
        except OSError:
            continue
    return False


def build_agent_for_twistd(config: AgentConfig, reactor: Any = None) -> Any:
    """
    L{build_agent}, and C{SIGHUP} loads its certificate files again
    (C{--sip-tls-cert}, C{--client-cert}, C{--ca}) and reopens its
    C{--cdr-file} instead of ending the process, unless it runs on a
    terminal: an agent started in a shell ends when the terminal hangs up,
    as a program there should.  A stop signal after the first is one
    info line (L{guard_stop_signals}).
    """
    agent = build_agent(config, reactor)
    guard_stop_signals(reactor)
    if on_a_terminal():
        return agent
    if reactor is None:
        from twisted.internet import reactor
    hangup(
        reactor,
        [agent.sip_certificates, agent.tls_files, agent.cdr],
        "nothing to load again (no --sip-tls-cert, --client-cert, --ca or --cdr-file)",
    )
    return agent
