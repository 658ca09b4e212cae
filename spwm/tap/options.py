# -*- test-case-name: tests.test_tap_config -*-
"""
The typed configuration of each half: L{AgentConfig} and L{ContactConfig}.

A configuration is built once, from the options that C{twistd} parsed
(C{Options.postOptions} keeps it as C{options.config}), from a mapping
written like the TOML file (L{AgentConfig.from_options}), or by keyword
with the same defaults as the options.  Every value in it is final: the
option tables' coercions return the parsed values (addresses as C{(host,
port)}, the operator proxy as an L{OperatorProxy}), and the limits are one
L{Limits} tree.  Checks of options against each other raise L{ConfigError}.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import attrs
from attrs import Factory, field, frozen

from spwm.addr import hostport
from spwm.config import Option, coerce_values, host_port
from spwm.errors import ConfigError
from spwm.limits import Limits, MediaLimits, SessionLimits, SipLimits, TunnelLimits
from spwm.sip.actions import OperatorProxy

Address = tuple[str, int]


def _contacts(value: Any) -> list[str]:
    """
    C{--contact}'s values: one (a string, as before it was repeatable) or
    several.

    @raise ConfigError: none.
    """
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise ConfigError("contact", "the agent needs a contact point")
    return names


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value)


@frozen
class StatusConfig:
    """
    Where the status of a half is served and how often it is logged.

    @ivar listen: a Twisted server endpoint description for C{/status} and
        C{/metrics}, or C{None}.
    @ivar interval: seconds between status lines in the log; 0: none.
    """

    listen: str | None = None
    interval: float = 300.0


def _limits(values: Mapping[str, Any], **tunnel: Any) -> Limits:
    """
    The L{Limits} tree from the options shared by both halves.
    """
    return Limits(
        tunnel=TunnelLimits(
            handshake_timeout=values["handshake-timeout"],
            keepalive_interval=values["keepalive-interval"],
            keepalive_timeout=values["keepalive-timeout"],
            media_deadline=values["media-deadline"],
            max_channels=values["max-channels"],
            max_priority_queue=values["max-signalling-queue"],
            max_media_queue=values["max-media-queue"],
            # through an HTTP proxy the kernel's probes reach the proxy only
            tcp_keepalive=not values["ping-keepalive"] and not values.get("http-proxy"),
            **tunnel,
        ),
        sip=SipLimits(
            max_message_size=min(values["max-sip-size"], 65535),
            udp_buffer=values["udp-buffer"],
            max_stream_connections=values["max-sip-connections"],
            **({"max_forward_senders": values["max-forward-senders"]} if "max-forward-senders" in values else {}),
            **(
                {
                    "registers_per_minute": values["max-registers-per-minute"],
                    "users_per_tunnel": values["max-users-per-tunnel"],
                }
                if "max-registers-per-minute" in values
                else {}
            ),
        ),
        media=MediaLimits(
            inactivity_timeout=values["media-timeout"],
            receive_buffer=values["media-buffer"],
            relay_keep=values["media-keep"],
        ),
        session=SessionLimits(resume_window=values["resume-window"]),
    )


def _defaults(options: Sequence[Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """
    Every option's value: C{given} (already coerced) over the defaults.
    """
    values = {o.name: (list(o.default) if o.repeat else o.default) for o in options}
    values.update(given)
    return values


@frozen
class AgentConfig:
    """
    Everything C{spwm-agent} is built from (L{spwm.tap.assembly.build_agent}).
    The names are the options' (C{docs/configuration.md}) with C{_} for C{-}.

    @ivar contact: the contact point, C{(host, port)}.
    @ivar contact_name: the contact point as the user wrote it, for the log.
    @ivar also_contact: a second contact point (C{--contact} given
        twice), C{((host, port), name)}, or nothing.
    @ivar agent_id: this agent's identity; C{None}: the host name.
    @ivar http_proxy_auth: C{USER:PASSWORD} for the HTTP proxy (from the
        file or the environment, never the command line).
    @ivar tunnel_connections: connections kept attached to the session
        (L{paths_range} says how many are used); C{None}: C{auto}.
    @ivar sip_listen: where the agent listens for SIP applications.
    @ivar limits: every limit, with the options' values.
    """

    contact: Address = ("localhost", 443)
    contact_name: str = field(default=Factory(lambda self: hostport(*self.contact), takes_self=True))
    also_contact: tuple[tuple[Address, str], ...] = field(default=(), converter=_tuple)
    server_name: str | None = None
    ca: str | None = None
    plaintext: bool = False
    client_cert: str | None = None
    client_key: str | None = None
    http_proxy: Address | None = None
    http_proxy_auth: str | None = None
    agent_id: str | None = None
    forward_udp: tuple[tuple[str, int, str, int], ...] = field(default=(), converter=_tuple)
    reconnect_max: float = 60.0
    state_file: str | None = None
    state_interval: float = 30.0
    tunnel: str = "always"
    tunnel_idle: float = 30.0
    udp_path: str = "auto"
    quic_port: int = 443
    tunnel_connections: int | None = None
    sip_listen: tuple[Address, ...] = field(default=(("127.0.0.1", 5060),), converter=_tuple)
    sip_tls_cert: str | None = None
    sip_tls_key: str | None = None
    sip_names: tuple[tuple[str, int | None], ...] = field(default=(), converter=_tuple)
    sip_trace: bool = False
    sip_trace_bodies: bool = False
    hep: Address | None = None
    log_level: str = "info"
    cdr_file: str | None = None
    media_address: str | None = None
    media_ports: tuple[int, int] = (40000, 40999)
    user_ciphering: bool = False
    bye_on_loss: bool = True
    status: StatusConfig = field(factory=StatusConfig)
    limits: Limits = field(factory=Limits)

    def __attrs_post_init__(self) -> None:
        """
        Check the values against each other.

        @raise ConfigError: naming the key and the problem.
        """
        if self.http_proxy_auth and not self.http_proxy:
            raise ConfigError("http-proxy-auth", "is for an HTTP proxy: give http-proxy too")
        if self.reconnect_max <= 0:
            raise ConfigError("reconnect-max", "must be greater than 0")
        if bool(self.client_cert) != bool(self.client_key):
            raise ConfigError("client-cert", "mutual TLS needs both --client-cert and --client-key")
        if bool(self.sip_tls_cert) != bool(self.sip_tls_key):
            raise ConfigError("sip-tls-cert", "SIP over TLS needs both --sip-tls-cert and --sip-tls-key")
        if self.tunnel not in ("always", "on-demand"):
            raise ConfigError("tunnel", f"must be always or on-demand, not {self.tunnel!r}")
        if not self.sip_listen:
            raise ConfigError("sip-listen", "the agent needs at least one address")
        if self.udp_path not in ("auto", "off", "only"):
            raise ConfigError("udp-path", f"must be auto, off or only, not {self.udp_path!r}")
        if self.udp_path == "only" and self.plaintext:
            raise ConfigError("udp-path", "QUIC is always TLS: --udp-path only excludes --plaintext")
        if self.udp_path == "only" and self.http_proxy:
            raise ConfigError("udp-path", "an HTTP proxy carries TCP only: --udp-path only excludes --http-proxy")
        if self.udp_path == "only" and self.client_cert:
            raise ConfigError(
                "udp-path",
                "QUIC carries no client certificate: with --client-cert use --udp-path auto "
                "(the session opens over TCP, media moves to QUIC)",
            )
        if self.quic_port != 443 and self.udp_path != "only":
            # a port given for nothing: with auto the contact point's
            # welcome names its QUIC port, with off there is no QUIC
            raise ConfigError(
                "quic-port",
                f"is for --udp-path only (with {self.udp_path}, "
                + ("the agent takes the QUIC port the contact point names)" if self.udp_path == "auto" else "there is no QUIC)"),
            )
        if self.tunnel_connections is not None and not 1 <= self.tunnel_connections <= 16:
            raise ConfigError("tunnel-connections", "must be auto or between 1 and 16")
        if len(self.also_contact) > 1:
            raise ConfigError("contact", "at most two contact points")
        if self.also_contact and self.tunnel == "on-demand":
            raise ConfigError("contact", "two contact points keep two tunnels up: not with --tunnel on-demand")

    def contact_configs(self) -> list[AgentConfig]:
        """
        @return: this configuration once per contact point, with that
            contact point as C{contact}: the first is this one.
        """
        return [self] + [
            attrs.evolve(self, contact=address, contact_name=name, also_contact=())
            for address, name in self.also_contact
        ]

    @property
    def paths_range(self) -> tuple[int, int]:
        """
        The connections actually kept, fewest and most: C{(N, N)} for a
        number, C{auto} between the limits' C{count_floor} and
        C{count_ceiling} (2 and 4: L{spwm.session.paths.PathCount}); but
        one with C{--tunnel on-demand} (the on-demand tunnel opens and
        closes one) and with
        C{--udp-path only} (the one QUIC connection; several QUIC paths
        are not made).
        """
        if self.tunnel == "on-demand" or self.udp_path == "only":
            return (1, 1)
        if self.tunnel_connections is None:
            paths = self.limits.paths
            return (paths.count_floor, min(paths.count_ceiling, paths.max_paths))
        return (self.tunnel_connections, self.tunnel_connections)

    @property
    def paths_wanted(self) -> int:
        """
        The connections kept to start with (the fewest of L{paths_range}).
        """
        return self.paths_range[0]

    @property
    def paths_layer(self) -> bool:
        """
        Whether the agent runs its tunnel through the paths layer
        (L{spwm.session.carrier.PathSessions}), even with one connection:
        its SIP is then numbered (C{sip-seq}) and what is in flight when
        the connection breaks goes again in the resumed session, a QUIC
        path may join, and more connections may.  Not with C{--tunnel
        on-demand} (its one connection opens and closes with the calls)
        nor C{--udp-path only} (the one QUIC connection): those keep the
        single tunnel without it.  The contact point must offer C{paths}
        as well; an older one gets the single tunnel all the same.
        """
        return self.tunnel != "on-demand" and self.udp_path != "only"

    @property
    def quic_probe(self) -> bool:
        """
        Whether the agent attaches a QUIC path to its session when the
        contact point offers one (C{--udp-path auto}): not over an HTTP
        proxy (a network that needs one lets no UDP out), not with
        C{--plaintext} (QUIC is always TLS), and not where the session
        keeps one connection only (C{--tunnel on-demand}: see
        L{paths_wanted}).  With C{--user-ciphering} every path seals with
        the session's one cipher state (L{spwm.tunnel.cipher}).
        """
        return (
            self.udp_path == "auto"
            and not self.http_proxy
            and not self.plaintext
            and self.tunnel != "on-demand"
        )

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> AgentConfig:
        """
        The configuration of C{values} written as in the TOML file (keys
        are the long option names, values strings, numbers, booleans or
        lists); options not given take their defaults.

        @raise ConfigError: a value or a combination is invalid.
        """
        from spwm.tap.agent import OPTIONS

        return cls.from_parsed(coerce_values(OPTIONS, values))

    @classmethod
    def from_parsed(cls, given: Mapping[str, Any], proxy_auth: str | None = None) -> AgentConfig:
        """
        The configuration of options already coerced (C{Options}, or
        L{spwm.config.coerce_values}).

        @param proxy_auth: the HTTP proxy's credentials from elsewhere than
            the options (the environment).
        """
        from spwm.tap.agent import OPTIONS, tunnel_connections

        v = _defaults(OPTIONS, given)
        return cls(
            # kept as written (the log names it so); validated by its option
            contact=host_port(_contacts(v["contact"])[0]),
            contact_name=_contacts(v["contact"])[0],
            also_contact=[(host_port(name), name) for name in _contacts(v["contact"])[1:]],
            server_name=v["server-name"],
            ca=v["ca"],
            plaintext=bool(v["plaintext"]),
            client_cert=v["client-cert"],
            client_key=v["client-key"],
            http_proxy=v["http-proxy"],
            http_proxy_auth=v["http-proxy-auth"] or proxy_auth,
            agent_id=v["agent-id"],
            forward_udp=v["forward-udp"],
            reconnect_max=v["reconnect-max"],
            state_file=v["state-file"],
            state_interval=v["state-interval"],
            tunnel=v["tunnel"],
            tunnel_idle=v["tunnel-idle"],
            udp_path=v["udp-path"],
            quic_port=v["quic-port"],
            # the default is the word "auto" (the help shows it)
            tunnel_connections=tunnel_connections(v["tunnel-connections"]),
            sip_listen=v["sip-listen"] or [("127.0.0.1", 5060)],
            sip_tls_cert=v["sip-tls-cert"],
            sip_tls_key=v["sip-tls-key"],
            sip_names=v["sip-name"],
            sip_trace=bool(v["sip-trace"]),
            sip_trace_bodies=bool(v["sip-trace-bodies"]),
            hep=v["hep"],
            log_level=v["log-level"],
            cdr_file=v["cdr-file"],
            media_address=v["media-address"],
            media_ports=v["media-ports"],
            user_ciphering=bool(v["user-ciphering"]),
            bye_on_loss=not v["no-bye-on-loss"],
            status=StatusConfig(v["status-listen"], v["status-interval"]),
            limits=_limits(v),
        )


@frozen
class ContactConfig:
    """
    Everything C{spwm-contact} is built from
    (L{spwm.tap.assembly.build_contact}).  The names are the options'
    (C{docs/configuration.md}) with C{_} for C{-}.

    @ivar sip_proxy: the operator proxy (as written: a name is resolved
        when the contact point is built), or C{None} for the embedded
        registrar.
    @ivar also_sip_proxy: the proxies after it (C{--sip-proxy} given more
        than once), in order of preference.
    @ivar sip_proxy_ping: seconds between two C{OPTIONS} to each proxy
        when there are several (L{spwm.sip.nexthop}); 0: none.
    @ivar sip_proxy_resolve: seconds between two resolutions of the
        C{--sip-proxy} names while running; 0: only at start.
    @ivar sip_address: the operator-side SIP address, C{(ip, port)}.
    @ivar workers: processes sharing the tunnel listener (C{spwm.workers});
        1: this one process.
    @ivar worker_ports: with C{workers} > 1, the first of the workers' own
        tunnel ports (worker I also listens on C{worker_ports + I});
        C{None}: the C{--listen} port + 1 (L{spwm.workers.worker_config}
        sets it in a worker's configuration).
    @ivar worker_index: this process's worker index (0 outside workers).
    @ivar handon_dir: a worker's: the supervisor's directory of the
        workers' hand-on sockets (L{spwm.handon}); C{None}: no hand-ons.
    @ivar listen_backlog: the tunnel listener's backlog; C{None}: the
        system's C{somaxconn} (L{spwm.listenqueue.system_backlog}).
    @ivar limits: every limit; C{limits.tunnel.drain_time} is C{--drain-time}.
    """

    listen: str = "tcp:443"
    quic_listen: Address | None = None
    listen_backlog: int | None = None
    workers: int = 1
    worker_ports: int | None = None
    worker_index: int = 0
    handon_dir: str | None = None
    cert: str | None = None
    key: str | None = None
    plaintext: bool = False
    client_ca: str | None = None
    allow_forward: tuple[Address, ...] = field(default=(), converter=_tuple)
    state_file: str | None = None
    state_interval: float = 30.0
    sip_proxy: OperatorProxy | None = None
    also_sip_proxy: tuple[OperatorProxy, ...] = field(default=(), converter=_tuple)
    sip_proxy_ping: float = 5.0
    sip_proxy_resolve: float = 60.0
    sip_address: Address = ("127.0.0.1", 5070)
    sip_names: tuple[tuple[str, int | None], ...] = field(default=(), converter=_tuple)
    domains: tuple[str, ...] = field(default=(), converter=_tuple)
    sip_trace: bool = False
    sip_trace_bodies: bool = False
    hep: Address | None = None
    log_level: str = "info"
    cdr_file: str | None = None
    allow_unregistered: bool = False
    contact_rewrite: bool = False
    media_address: str | None = None
    media_ports: tuple[int, int] = (50000, 50999)
    media_allow: tuple[str, ...] = field(default=(), converter=_tuple)
    max_calls: int | None = None
    max_media_per_tunnel: int | None = None
    user_ciphering: bool = False
    bye_on_loss: bool = True
    status: StatusConfig = field(factory=StatusConfig)
    limits: Limits = field(factory=lambda: Limits(tunnel=TunnelLimits(drain_time=5.0)))

    def __attrs_post_init__(self) -> None:
        """
        Check the values against each other.

        @raise ConfigError: naming the key and the problem.
        """
        if not self.plaintext and not (self.cert and self.key):
            raise ConfigError("cert", "TLS needs --cert and --key (or ask for --plaintext by name)")
        if self.plaintext and self.client_ca:
            raise ConfigError("client-ca", "mutual TLS needs TLS: drop --plaintext")
        if self.plaintext and (self.cert or self.key):
            raise ConfigError("plaintext", "--plaintext and --cert/--key exclude each other")
        if self.worker_ports is not None and self.workers <= 1:
            raise ConfigError("worker-ports", "is the first of the workers' own ports: give --workers 2 or more too")
        if self.worker_ports is not None and not 1 <= self.worker_ports <= 65535:
            raise ConfigError("worker-ports", f"{self.worker_ports} is not a port (1-65535)")
        if self.quic_listen and self.plaintext:
            raise ConfigError("quic-listen", "QUIC is always TLS: it needs --cert and --key, not --plaintext")
        proxies = [p for p in (self.sip_proxy, *self.also_sip_proxy) if p is not None]
        if len(set(proxies)) < len(proxies):
            raise ConfigError("sip-proxy", "a proxy is given twice: list each once, in order of preference")
        if self.domains and self.sip_proxy:
            raise ConfigError(
                "domain", "--domain is for the embedded registrar: the operator proxy decides its own domains"
            )

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> ContactConfig:
        """
        The configuration of C{values} written as in the TOML file (keys
        are the long option names); options not given take their defaults.

        @raise ConfigError: a value or a combination is invalid.
        """
        from spwm.tap.contact import OPTIONS

        return cls.from_parsed(coerce_values(OPTIONS, values))

    @classmethod
    def from_parsed(cls, given: Mapping[str, Any]) -> ContactConfig:
        """
        The configuration of options already coerced.
        """
        from spwm.tap.contact import OPTIONS

        v = _defaults(OPTIONS, given)
        return cls(
            listen=v["listen"],
            quic_listen=v["quic-listen"],
            listen_backlog=v["listen-backlog"],
            workers=v["workers"],
            worker_ports=v["worker-ports"],
            cert=v["cert"],
            key=v["key"],
            plaintext=bool(v["plaintext"]),
            client_ca=v["client-ca"],
            allow_forward=v["allow-forward"],
            state_file=v["state-file"],
            state_interval=v["state-interval"],
            # (a repeatable option: a list, the first and the rest)
            sip_proxy=v["sip-proxy"][0] if v["sip-proxy"] else None,
            also_sip_proxy=v["sip-proxy"][1:],
            sip_proxy_ping=v["sip-proxy-ping"],
            sip_proxy_resolve=v["sip-proxy-resolve"],
            sip_address=v["sip-address"],
            sip_names=v["sip-name"],
            domains=v["domain"],
            sip_trace=bool(v["sip-trace"]),
            sip_trace_bodies=bool(v["sip-trace-bodies"]),
            hep=v["hep"],
            log_level=v["log-level"],
            cdr_file=v["cdr-file"],
            allow_unregistered=bool(v["allow-unregistered"]),
            contact_rewrite=bool(v["contact-rewrite"]),
            media_address=v["media-address"],
            media_ports=v["media-ports"],
            media_allow=v["media-allow"],
            max_calls=v["max-calls"],
            max_media_per_tunnel=v["max-media-per-tunnel"],
            user_ciphering=bool(v["user-ciphering"]),
            bye_on_loss=not v["no-bye-on-loss"],
            status=StatusConfig(v["status-listen"], v["status-interval"]),
            limits=_limits(
                v,
                drain_time=v["drain-time"],
                max_tunnels=v["max-tunnels"],
                max_tunnels_per_address=v["max-tunnels-per-address"],
                max_handshaking=v["max-handshakes"],
            ),
        )

