"""
The typed configuration (L{spwm.tap.options}), the L{spwm.limits.Limits}
tree and the assembly (L{spwm.tap.assembly}) on an in-memory reactor.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from spwm.errors import ConfigError
from spwm.limits import Limits, TunnelLimits
from spwm.sip.actions import OperatorProxy
from spwm.tap import agent, assembly, contact, parts
from spwm.tap.assembly import Agent, ContactPoint, agent_media_address, build_agent, build_contact
from spwm.tap.options import AgentConfig, ContactConfig
from spwm.tap.parts import Later


class ConfigTests(SynchronousTestCase):
    """
    One configuration object per half, each value coerced once.
    """

    def test_defaults_agree(self) -> None:
        """
        A configuration made by keyword has the options' defaults.
        """
        self.assertEqual(AgentConfig.from_options({}), AgentConfig())
        self.assertEqual(ContactConfig.from_options({"plaintext": True}), ContactConfig(plaintext=True))
        options = agent.Options()
        options.parseOptions([])
        self.assertEqual(options.config, AgentConfig())

    def test_final_values(self) -> None:
        """
        Options whose text names an address or a proxy arrive parsed.
        """
        options = contact.Options()
        options.parseOptions(
            ["--plaintext", "--sip-proxy", "198.51.100.7:5080;transport=tcp", "--sip-address", "192.0.2.1"]
        )
        self.assertEqual(options["sip-proxy"], [OperatorProxy("198.51.100.7", 5080, "tcp")])
        self.assertEqual(options.config.sip_proxy, OperatorProxy("198.51.100.7", 5080, "tcp"))
        self.assertEqual((options.config.also_sip_proxy, options.config.sip_proxy_ping), ((), 5.0))
        self.assertEqual(options.config.sip_address, ("192.0.2.1", 5060))
        # several proxies, in order of preference; the TOML file's list
        options = contact.Options()
        options.parseOptions(
            ["--plaintext", "--sip-proxy", "198.51.100.7", "--sip-proxy", "198.51.100.8:5070", "--sip-proxy-ping", "2"]
        )
        self.assertEqual(options.config.sip_proxy, OperatorProxy("198.51.100.7"))
        self.assertEqual(options.config.also_sip_proxy, (OperatorProxy("198.51.100.8", 5070),))
        self.assertEqual(options.config.sip_proxy_ping, 2.0)
        config = ContactConfig.from_options({"plaintext": True, "sip-proxy": ["198.51.100.7", "198.51.100.8"]})
        self.assertEqual((config.sip_proxy, config.also_sip_proxy), (OperatorProxy("198.51.100.7"), (OperatorProxy("198.51.100.8"),)))
        with self.assertRaises(ConfigError) as caught:
            ContactConfig.from_options({"plaintext": True, "sip-proxy": ["198.51.100.7", "198.51.100.7:5060"]})
        self.assertIn("given twice", str(caught.exception))
        config = ContactConfig.from_options({"plaintext": True, "sip-proxy": "198.51.100.7"})
        self.assertEqual((config.sip_proxy, config.also_sip_proxy), (OperatorProxy("198.51.100.7"), ()))
        config = AgentConfig.from_options({"contact": "[2001:db8::1]:8443", "http-proxy": "proxy.example.test:3128"})
        self.assertEqual(config.contact, ("2001:db8::1", 8443))
        self.assertEqual(config.contact_name, "[2001:db8::1]:8443")
        self.assertEqual(config.http_proxy, ("proxy.example.test", 3128))

    def test_proxy_intervals(self) -> None:
        """
        C{--sip-proxy-ping} and C{--sip-proxy-resolve}: 0 (off) or at least
        0.1 s; a smaller one would send OPTIONS or DNS queries without pause.
        """
        for name in ("sip-proxy-ping", "sip-proxy-resolve"):
            for good, expected in (("0", 0.0), ("0.1", 0.1), ("2", 2.0)):
                options = contact.Options()
                options.parseOptions(["--plaintext", "--sip-proxy", "198.51.100.7", f"--{name}", good])
                self.assertEqual(options[name], expected)
            with self.assertRaises(SystemExit) as caught:
                contact.Options().parseOptions(["--plaintext", f"--{name}", "0.001"])
            self.assertIn(f"--{name}: must be 0 (off) or at least 0.1, not '0.001'", str(caught.exception))

    def test_two_contact_points(self) -> None:
        """
        C{--contact} given twice: the first is the default, the second a
        further contact point; three, or two with an on-demand tunnel, are
        refused.  The built agent has a side per contact point, each with
        its tunnel service, under one SIP runner whose core fans out.
        """
        options = agent.Options()
        options.parseOptions(["--contact", "192.0.2.1:443", "--contact", "[2001:db8::2]:8443", "--plaintext"])
        config = options.config
        self.assertEqual((config.contact, config.contact_name), (("192.0.2.1", 443), "192.0.2.1:443"))
        self.assertEqual(config.also_contact, ((("2001:db8::2", 8443), "[2001:db8::2]:8443"),))
        second = config.contact_configs()[1]
        self.assertEqual((second.contact, second.contact_name, second.also_contact), (("2001:db8::2", 8443), "[2001:db8::2]:8443", ()))
        for values in [
            {"contact": ["a:1", "b:1", "c:1"]},
            {"contact": ["a:1", "b:1"], "tunnel": "on-demand"},
            {"contact": []},
        ]:
            with self.assertRaises(ConfigError) as caught:
                AgentConfig.from_options(values)
            self.assertEqual(caught.exception.key, "contact")
        from spwm.sip.fanout import FanoutCore

        built = build_agent(config, MemoryReactorClock())
        self.assertEqual(len(built.sides), 2)
        self.assertIsInstance(built.runner.core, FanoutCore)
        self.assertEqual([s.tunnel.description for s in built.sides], ["192.0.2.1:443", "[2001:db8::2]:8443"])
        self.assertIsNot(built.sides[0].handle, built.sides[1].handle)
        self.assertIs(built.sides[0].core.flows, built.sides[1].core.flows)
        document = built.status.document()
        self.assertIn("tunnel_2", document)
        self.assertIn("sessions_2", document)
        self.assertIn("paths_2", document)
        one = build_agent(AgentConfig.from_options({"contact": "192.0.2.1:443", "plaintext": True}), MemoryReactorClock())
        self.assertEqual(len(one.sides), 1)
        self.assertNotIsInstance(one.runner.core, FanoutCore)

    def test_limits_from_options(self) -> None:
        """
        The limit options land in their branch of the tree.
        """
        config = ContactConfig.from_options(
            {
                "plaintext": True,
                "keepalive-interval": 5,
                "max-tunnels": 7,
                "drain-time": 2,
                "max-sip-size": 100000,
                "max-users-per-tunnel": 3,
                "media-timeout": 9,
                "resume-window": 0,
            }
        )
        self.assertEqual(config.limits.tunnel.keepalive_interval, 5.0)
        self.assertEqual(config.limits.tunnel.max_tunnels, 7)
        self.assertEqual(config.limits.tunnel.drain_time, 2.0)
        self.assertEqual(config.limits.sip.max_message_size, 65535)
        self.assertEqual(config.limits.sip.users_per_tunnel, 3)
        self.assertEqual(config.limits.media.inactivity_timeout, 9.0)
        self.assertEqual(config.limits.session.resume_window, 0.0)

    def test_errors(self) -> None:
        """
        A bad value, an unknown key or a bad combination is a L{ConfigError}
        naming the key.
        """
        for values, key in [
            ({"contact": "no-port"}, "contact"),
            ({"colour": "red"}, "colour"),
            ({"client-cert": __file__}, "client-cert"),
            ({"tunnel": "sometimes"}, "tunnel"),
            ({"media-keep": -1}, "media-keep"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                AgentConfig.from_options(values)
            self.assertEqual(caught.exception.key, key)
        with self.assertRaises(ConfigError) as caught:
            ContactConfig()
        self.assertEqual(caught.exception.key, "cert")
        with self.assertRaises(ConfigError) as caught:
            ContactConfig(plaintext=True, domains=["example.org"], sip_proxy=OperatorProxy("192.0.2.9"))
        self.assertEqual(caught.exception.key, "domain")

    def test_quic_errors(self) -> None:
        """
        The QUIC options and what they exclude: QUIC is always TLS, an HTTP
        proxy carries TCP only, QUIC carries no client certificate (so an
        agent with one does not run the whole tunnel over QUIC; a contact
        point with mutual TLS takes QUIC paths all the same).
        """
        for values in [
            {"udp-path": "sometimes"},
            {"udp-path": "only", "plaintext": True},
            {"udp-path": "only", "http-proxy": "proxy.example:3128"},
            # QUIC carries no client certificate
            {"udp-path": "only", "client-cert": __file__, "client-key": __file__},
            {"quic-port": 0},
        ]:
            with self.assertRaises(ConfigError) as caught:
                AgentConfig.from_options(values)
            self.assertIn(caught.exception.key, ("udp-path", "quic-port"))
        config = AgentConfig.from_options({"udp-path": "only", "quic-port": 8443})
        self.assertEqual((config.udp_path, config.quic_port), ("only", 8443))
        # a QUIC port for nothing: auto takes the contact point's, off has none
        for path in ("auto", "off"):
            with self.assertRaises(ConfigError) as caught:
                AgentConfig.from_options({"udp-path": path, "quic-port": 8443})
            self.assertEqual(caught.exception.key, "quic-port")
            self.assertIn("is for --udp-path only", str(caught.exception))
        self.assertEqual(AgentConfig.from_options({}).udp_path, "auto")
        # auto with a client certificate: the session opens over TCP
        config = AgentConfig.from_options({"client-cert": __file__, "client-key": __file__})
        self.assertEqual(config.udp_path, "auto")
        with self.assertRaises(ConfigError) as caught:
            ContactConfig.from_options({"plaintext": True, "quic-listen": "127.0.0.1:443"})
        self.assertEqual(caught.exception.key, "quic-listen")
        # with mutual TLS, QUIC takes further paths of sessions (the tunnel decides)
        config = ContactConfig.from_options(
            {"cert": __file__, "key": __file__, "client-ca": __file__, "quic-listen": "127.0.0.1:443"}
        )
        self.assertEqual((config.client_ca, config.quic_listen), (__file__, ("127.0.0.1", 443)))
        with self.assertRaises(ConfigError) as caught:
            ContactConfig.from_options({"plaintext": True, "quic-listen": "localhost:443"})
        self.assertEqual(caught.exception.key, "quic-listen")
        self.assertIsNone(ContactConfig.from_options({"plaintext": True}).quic_listen)


class LimitsTests(SynchronousTestCase):
    """
    Every limit in one tree, with the values the parts had before.
    """

    def test_defaults(self) -> None:
        from spwm.media import manager
        from spwm.security import resume

        limits = Limits()
        self.assertEqual(limits.tunnel, TunnelLimits())
        self.assertEqual(limits.media.inactivity_timeout, manager.DEFAULT_INACTIVITY_TIMEOUT)
        self.assertEqual(limits.media.max_streams_per_dialog, manager.DEFAULT_MAX_STREAMS_PER_DIALOG)
        self.assertEqual(limits.media.max_pending_channels, manager.DEFAULT_MAX_PENDING_CHANNELS)
        self.assertEqual(limits.media.max_branches_per_stream, manager.DEFAULT_MAX_BRANCHES_PER_STREAM)
        self.assertEqual(limits.media.pending_timeout, manager.PENDING_TIMEOUT)
        self.assertEqual(limits.session.max_dormant, resume.MAX_DORMANT)
        tunnel = limits.tunnel
        self.assertEqual((tunnel.max_held, tunnel.hold_time, tunnel.retry_after_cap), (64, 10.0, 30))

    def test_validated(self) -> None:
        with self.assertRaises(ValueError):
            TunnelLimits(max_tunnels=0)

    def test_worker_ports_checked(self) -> None:
        """
        C{--worker-ports} is refused without C{--workers} 2 or more, and
        when it is not a port.
        """
        plain = {"plaintext": True}
        with self.assertRaises(ConfigError) as cm:
            ContactConfig.from_options({**plain, "worker-ports": 20000})
        self.assertEqual(cm.exception.key, "worker-ports")
        with self.assertRaises(ConfigError) as cm:
            ContactConfig.from_options({**plain, "workers": 2, "worker-ports": 70000})
        self.assertIn("not a port", str(cm.exception))
        self.assertEqual(ContactConfig.from_options({**plain, "workers": 2, "worker-ports": 20000}).worker_ports, 20000)

    def test_tcp_keepalive(self) -> None:
        """
        Both halves offer the kernel's keepalive by default; not with
        C{--ping-keepalive}, and not an agent behind an HTTP proxy (whose
        probes would reach the proxy only).
        """
        base = {"contact": "contact.example.test:443"}
        self.assertTrue(AgentConfig.from_options(base).limits.tunnel.tcp_keepalive)
        self.assertFalse(AgentConfig.from_options({**base, "ping-keepalive": True}).limits.tunnel.tcp_keepalive)
        proxied = {**base, "http-proxy": "proxy.example.test:3128"}
        self.assertFalse(AgentConfig.from_options(proxied).limits.tunnel.tcp_keepalive)
        plain = {"plaintext": True}
        self.assertTrue(ContactConfig.from_options(plain).limits.tunnel.tcp_keepalive)
        self.assertFalse(ContactConfig.from_options({**plain, "ping-keepalive": True}).limits.tunnel.tcp_keepalive)


class AssemblyTests(SynchronousTestCase):
    """
    L{build_agent} and L{build_contact} on a memory reactor.
    """

    def test_agent_record(self) -> None:
        """
        The record names the parts the service runs, and the limits reach
        them.
        """
        config = AgentConfig.from_options(
            {"plaintext": True, "agent-id": "a1", "max-forward-senders": 3, "sip-listen": ["127.0.0.1:5999"]}
        )
        built = build_agent(config, MemoryReactorClock())
        self.assertIsInstance(built, Agent)
        self.assertIn(built.tunnel_service, list(built.service))
        self.assertIn(built.sip_listeners, list(built.service))
        self.assertIsNone(built.on_demand)
        self.assertIs(built.router.sip, built.runner)
        self.assertEqual(built.forwarder.max_senders, 3)
        self.assertIs(built.factory.limits, config.limits.tunnel)
        self.assertEqual(built.handle.max_held, 64)
        self.assertEqual(built.handle.retry_after(), 1)

    def test_media_keep(self) -> None:
        """
        C{--media-keep} sets how long each half's relay sockets stay bound
        after their call; 0 closes them at once.
        """
        for given, kept in (({}, 10.0), ({"media-keep": 0}, 0.0), ({"media-keep": 2.5}, 2.5)):
            config = ContactConfig.from_options({"plaintext": True, "listen": "tcp:0", **given})
            self.assertEqual(build_contact(config, MemoryReactorClock()).media.sockets.keep_for, kept)
            config = AgentConfig.from_options({"plaintext": True, **given})
            self.assertEqual(build_agent(config, MemoryReactorClock()).media.sockets.keep_for, kept)

    def test_contact_record(self) -> None:
        config = ContactConfig.from_options(
            {"plaintext": True, "listen": "tcp:0", "max-tunnels-per-address": 2, "max-users-per-tunnel": 5}
        )
        built = build_contact(config, MemoryReactorClock())
        self.assertIsInstance(built, ContactPoint)
        # the first service closes the kept relay sockets (stopped last),
        # the listener comes next
        self.assertEqual(list(built.service)[1], built.listener)
        self.assertEqual(built.media.sockets.keep_for, Limits().media.relay_keep)
        list(built.service)[0].stopService()
        self.assertEqual(built.media.sockets.keep_for, 0.0)
        self.assertEqual(built.factory.max_per_host, 2)
        self.assertEqual(built.sip_core.max_users, 5)
        self.assertIsNone(built.state)
        self.assertIsNone(built.quic_listener)
        self.assertIsNone(built.media.max_calls)

    def test_operator_proxies_resolved(self) -> None:
        """
        Each C{--sip-proxy} is resolved once at start, in order: a name
        with several addresses of the C{--sip-address} family is that many
        proxies of the pool (in the resolver's order, each address once);
        another family's addresses are left out; a name without any is one
        line's error.
        """
        answers = {
            "pool.example.test": [
                (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("198.51.100.7", 0)),
                (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("198.51.100.8", 0)),
                (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("2001:db8::7", 0, 0, 0)),
            ],
            "v6only.example.test": [(socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("2001:db8::9", 0, 0, 0))],
        }

        def getaddrinfo(host: str, port: object, family: int = 0, type: int = 0) -> list:
            if host[0].isdigit():
                return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (host, 0))]
            return [a for a in answers[host] if family in (0, a[0])]

        self.patch(parts.socket, "getaddrinfo", getaddrinfo)
        # the names given without a port have no NAPTR or SRV records here
        looked_up: list[str] = []
        self.patch(parts, "lookup_srv", lambda name: looked_up.append(name) or [])
        self.patch(parts, "lookup_naptr", lambda name: looked_up.append("NAPTR " + name) or [])
        config = ContactConfig.from_options(
            {"plaintext": True, "sip-address": "192.0.2.1", "sip-proxy": ["pool.example.test", "198.51.100.8:5060", "192.0.2.9:5080"]}
        )
        self.assertEqual(
            assembly.operator_proxies(config),
            [OperatorProxy("198.51.100.7"), OperatorProxy("198.51.100.8"), OperatorProxy("192.0.2.9", 5080)],
        )
        built = build_contact(config, MemoryReactorClock())
        self.assertEqual(built.sip_core.core.proxies.proxies[:2], (OperatorProxy("198.51.100.7"), OperatorProxy("198.51.100.8")))
        config = ContactConfig.from_options({"plaintext": True, "sip-address": "192.0.2.1", "sip-proxy": "v6only.example.test"})
        with self.assertRaises(ConfigError) as caught:
            assembly.operator_proxies(config)
        self.assertEqual(str(caught.exception), "sip-proxy: cannot resolve v6only.example.test: no IPv4 address")
        # RFC 3263 4.1: no transport given, no NAPTR records: UDP's SRV
        # records, then TCP's, then the name's own addresses over UDP
        self.assertEqual(
            looked_up[:3], ["NAPTR pool.example.test", "_sip._udp.pool.example.test", "_sip._tcp.pool.example.test"]
        )

    def test_operator_proxies_by_srv(self) -> None:
        """
        A C{--sip-proxy} name without a port is looked up as RFC 3263 4.2
        says: its SRV records for the transport, by priority and then
        weight (highest first), each target's addresses with the record's
        port, a target that does not resolve skipped; with a port, or an
        address, no SRV lookup; a failed lookup is one line's error that
        says how to skip SRV.
        """
        records = {
            "_sip._tcp.example.test": [
                (20, 0, 5062, "c.example.test"),
                (10, 10, 5060, "a.example.test"),
                (10, 60, 5061, "b.example.test"),
                (10, 5, 5063, "gone.example.test"),
            ],
        }
        addresses = {"a.example.test": ["198.51.100.1"], "b.example.test": ["198.51.100.2"], "c.example.test": ["198.51.100.3"]}
        looked_up: list[str] = []

        def srv(name: str) -> list:
            looked_up.append(name)
            answer = records.get(name, [])
            if isinstance(answer, OSError):
                raise answer
            return answer

        def resolve(host: str, family: int) -> list[str]:
            if host not in addresses:
                raise OSError("Name or service not known")
            return addresses[host]

        self.patch(parts, "lookup_srv", srv)
        self.patch(parts, "lookup_naptr", lambda name: [])
        self.patch(parts, "resolve_all", resolve)
        config = ContactConfig.from_options(
            {"plaintext": True, "sip-address": "192.0.2.1", "sip-proxy": ["example.test;transport=tcp", "a.example.test:5070"]}
        )
        self.assertEqual(
            assembly.operator_proxies(config),
            [
                OperatorProxy("198.51.100.2", 5061, "tcp"),
                OperatorProxy("198.51.100.1", 5060, "tcp"),
                OperatorProxy("198.51.100.3", 5062, "tcp"),
                OperatorProxy("198.51.100.1", 5070),
            ],
        )
        self.assertEqual(looked_up, ["_sip._tcp.example.test"])
        records["_sip._udp.example.test"] = [(0, 0, 5060, ".")]
        config = ContactConfig.from_options({"plaintext": True, "sip-address": "192.0.2.1", "sip-proxy": "example.test"})
        with self.assertRaises(ConfigError) as caught:
            assembly.operator_proxies(config)
        self.assertEqual(str(caught.exception), "sip-proxy: cannot resolve example.test: its SRV records name no SIP server")
        records["_sip._udp.example.test"] = OSError("the SRV lookup of _sip._udp.example.test failed (timeout)")  # type: ignore[assignment]
        with self.assertRaises(ConfigError) as caught:
            assembly.operator_proxies(config)
        self.assertEqual(
            str(caught.exception),
            "sip-proxy: cannot resolve example.test: the SRV lookup of _sip._udp.example.test failed (timeout)"
            " (a port, example.test:5060, skips NAPTR and SRV)",
        )

    def test_operator_proxies_by_naptr(self) -> None:
        """
        A C{--sip-proxy} name without a port or a transport: its NAPTR
        records choose the transport (RFC 3263 4.1: C{SIP+D2T} is TCP,
        C{SIP+D2U} UDP, by order then preference; other services and flags
        are not ours) and name the SRV records; one whose SRV records are
        missing is passed over; without NAPTR records the first transport
        with SRV records is taken; a failed NAPTR lookup is one line's
        error.
        """
        naptr: dict[str, Any] = {
            "example.test": [
                (20, 10, "s", "SIP+D2U", "_sip._udp.example.test"),
                (10, 10, "s", "SIP+D2T", "_sip._tcp.example.test"),
                (5, 10, "s", "SIPS+D2T", "_sips._tcp.example.test"),
                (1, 10, "u", "E2U+sip", "."),
            ],
        }
        records: dict[str, list] = {
            "_sip._tcp.example.test": [(10, 0, 5070, "a.example.test")],
            "_sip._udp.example.test": [(10, 0, 5080, "a.example.test")],
            "_sips._tcp.example.test": [(10, 0, 5061, "a.example.test")],
        }
        looked_up: list[str] = []

        def lookup_naptr(name: str) -> list:
            looked_up.append("NAPTR " + name)
            answer = naptr.get(name, [])
            if isinstance(answer, OSError):
                raise answer
            return answer

        def lookup_srv(name: str) -> list:
            looked_up.append(name)
            return records.get(name, [])

        self.patch(parts, "lookup_naptr", lookup_naptr)
        self.patch(parts, "lookup_srv", lookup_srv)
        self.patch(parts, "resolve_all", lambda host, family: {"a.example.test": ["198.51.100.1"]}[host])

        def proxies() -> list[OperatorProxy]:
            looked_up.clear()
            config = ContactConfig.from_options({"plaintext": True, "sip-address": "192.0.2.1", "sip-proxy": "example.test"})
            return assembly.operator_proxies(config)

        self.assertEqual(proxies(), [OperatorProxy("198.51.100.1", 5070, "tcp")])
        self.assertEqual(looked_up, ["NAPTR example.test", "_sip._tcp.example.test"])
        # the TCP record's SRV records are gone: the next NAPTR record
        del records["_sip._tcp.example.test"]
        self.assertEqual(proxies(), [OperatorProxy("198.51.100.1", 5080, "udp")])
        self.assertEqual(looked_up, ["NAPTR example.test", "_sip._tcp.example.test", "_sip._udp.example.test"])
        # no NAPTR records: the SRV records that exist choose (TCP here)
        del naptr["example.test"]
        del records["_sip._udp.example.test"]
        records["_sip._tcp.example.test"] = [(10, 0, 5090, "a.example.test")]
        self.assertEqual(proxies(), [OperatorProxy("198.51.100.1", 5090, "tcp")])
        self.assertEqual(looked_up, ["NAPTR example.test", "_sip._udp.example.test", "_sip._tcp.example.test"])
        # with a transport given, no NAPTR lookup
        looked_up.clear()
        config = ContactConfig.from_options(
            {"plaintext": True, "sip-address": "192.0.2.1", "sip-proxy": "example.test;transport=tcp"}
        )
        self.assertEqual(assembly.operator_proxies(config), [OperatorProxy("198.51.100.1", 5090, "tcp")])
        self.assertEqual(looked_up, ["_sip._tcp.example.test"])
        naptr["example.test"] = OSError("the NAPTR lookup of example.test failed (timeout)")
        with self.assertRaises(ConfigError) as caught:
            proxies()
        self.assertEqual(
            str(caught.exception),
            "sip-proxy: cannot resolve example.test: the NAPTR lookup of example.test failed (timeout)"
            " (a port, example.test:5060, skips NAPTR and SRV)",
        )

    def test_max_calls(self) -> None:
        """
        C{--max-calls} reaches the contact point's media manager; it is a
        positive number.
        """
        config = ContactConfig.from_options({"plaintext": True, "listen": "tcp:0", "max-calls": 350})
        self.assertEqual(build_contact(config, MemoryReactorClock()).media.max_calls, 350)
        for bad in (0, -1, "many"):
            with self.assertRaises(ConfigError) as caught:
                ContactConfig.from_options({"plaintext": True, "max-calls": bad})
            self.assertEqual(caught.exception.key, "max-calls")

    def test_quic_records(self) -> None:
        """
        C{--quic-listen}: a second listen service over the same tunnel
        factory; C{--udp-path only}: the agent's service connects over QUIC.
        """
        from spwm.testing.certs import TestCA
        from spwm.tunnel.quic import QuicClientEndpoint, QuicServerEndpoint

        ca = TestCA(self.mktemp())
        cert = ca.issue(["contact.test"], "contact")
        config = ContactConfig.from_options(
            {"cert": cert.cert, "key": cert.key, "listen": "tcp:0", "quic-listen": "127.0.0.1:4433"}
        )
        built = build_contact(config, MemoryReactorClock())
        self.assertIsNotNone(built.quic_listener)
        self.assertIn(built.quic_listener, list(built.service))
        self.assertIs(built.quic_listener.factory, built.factory)
        self.assertIsInstance(built.quic_listener._endpoint, QuicServerEndpoint)
        agent_config = AgentConfig.from_options(
            {"udp-path": "only", "ca": ca.ca_file, "contact": "contact.test:443", "quic-port": 4433}
        )
        agent = build_agent(agent_config, MemoryReactorClock())
        self.assertIsInstance(agent.tunnel_service._reporting._inner, QuicClientEndpoint)
        self.assertIn("QUIC", agent.tunnel_service.description)

    def test_hep(self) -> None:
        """
        C{--hep} gives both halves one HEP sender (capture agent 1 for the
        agent, 2 for the contact point), used by the SIP trace hook (its
        lines stay off without C{--sip-trace}) and by the media manager,
        and started with the service; a name instead of an address is a
        configuration error.
        """
        agent = build_agent(
            AgentConfig.from_options({"plaintext": True, "hep": "192.0.2.9:9060"}), MemoryReactorClock()
        )
        contact = build_contact(
            ContactConfig.from_options({"plaintext": True, "listen": "tcp:0", "hep": "[2001:db8::9]:9060", "sip-trace": True}),
            MemoryReactorClock(),
        )
        for built, agent_id, target, lines in ((agent, 1, ("192.0.2.9", 9060), False), (contact, 2, ("2001:db8::9", 9060), True)):
            trace = built.runner.trace
            assert trace is not None
            self.assertIs(trace.hep, built.media.hep)
            self.assertEqual((trace.hep.agent_id, trace.hep.target, trace.lines), (agent_id, target, lines))
        self.assertIsNone(
            build_agent(AgentConfig.from_options({"plaintext": True}), MemoryReactorClock()).runner.trace
        )
        with self.assertRaises(ConfigError) as caught:
            AgentConfig.from_options({"plaintext": True, "hep": "homer.example.net:9060"})
        self.assertEqual(str(caught.exception), "hep: 'homer.example.net' is not an IP address")

    def test_build_error_is_config_error(self) -> None:
        """
        Problems found while building raise L{ConfigError}; C{makeService}
        turns it into the one-line exit.
        """
        config = ContactConfig(plaintext=True, listen="bogus:1")
        with self.assertRaises(ConfigError) as caught:
            build_contact(config, MemoryReactorClock())
        self.assertEqual(
            str(caught.exception),
            "listen: 'bogus:1': Unknown endpoint type: 'bogus'"
            " (give IP:PORT, PORT or a Twisted endpoint such as tcp:9090:interface=127.0.0.1)",
        )

    def test_later(self) -> None:
        """
        A L{Later} used before it is bound, or bound twice, says which part.
        """
        later: Later[int] = Later("the part")
        self.assertRaises(RuntimeError, later)
        self.assertEqual(later.bind(3), 3)
        self.assertEqual(later(), 3)
        error = self.assertRaises(RuntimeError, later.bind, 4)
        self.assertIn("the part", str(error))


class AgentMediaAddressTests(SynchronousTestCase):
    """
    L{agent_media_address}: the address phones are given in SDP when
    C{--media-address} is not set.
    """

    def test_first_listen_address(self) -> None:
        """
        A concrete first C{--sip-listen} address is the media address.
        """
        config = AgentConfig.from_options({"sip-listen": ["127.0.0.2:5060"]})
        self.assertEqual(agent_media_address(config), "127.0.0.2")

    def test_wildcard_takes_the_route_to_the_contact_point(self) -> None:
        """
        With C{--sip-listen 0.0.0.0:5060} the media address is the one this
        host reaches the contact point from, never C{0.0.0.0} (which an
        SDP reads as hold).
        """
        config = AgentConfig.from_options({"sip-listen": ["0.0.0.0:5060"], "contact": "127.0.0.1:443"})
        self.assertEqual(agent_media_address(config), "127.0.0.1")
        config = AgentConfig.from_options({"sip-listen": ["[::]:5060"], "contact": "[::1]:443"})
        self.assertEqual(agent_media_address(config), "::1")

    def test_wildcard_without_route(self) -> None:
        """
        When no route tells the address, building fails with one line that
        says to give C{--media-address}.
        """
        self.patch(assembly, "route_source", lambda host: None)
        config = AgentConfig.from_options({"sip-listen": ["0.0.0.0:5060"], "contact": "127.0.0.1:443"})
        error = self.assertRaises(ConfigError, agent_media_address, config)
        self.assertEqual(error.key, "media-address")
        self.assertIn("give --media-address", str(error))


class TunnelConnectionsTests(SynchronousTestCase):
    """
    C{--tunnel-connections}: the agent's paths layer is built only when
    more than one connection is wanted and can be used.
    """

    def build(self, **more: object) -> Agent:
        values = {"plaintext": True, "agent-id": "a1", "sip-listen": ["127.0.0.1:5999"], **more}
        return build_agent(AgentConfig.from_options(values), MemoryReactorClock())

    def test_default_two(self) -> None:
        """
        By default two connections: the paths layer is the tunnels'
        observer (behind the worker steering), in front of the session logic; the hello says C{paths};
        one further connection is kept.
        """
        built = self.build()
        self.assertEqual(built.config.paths_wanted, 2)
        assert built.paths is not None and built.paths.keeper is not None
        self.assertIs(built.router.observer.observer, built.paths)
        self.assertIs(built.paths.observer, built.resumption)
        self.assertEqual(built.paths.keeper.extra, 1)
        hello = built.factory.hello
        assert callable(hello)
        self.assertEqual(hello(), {"paths": 1, "sip-seq": 1, "stalls": 1, "session_key": 1, "final-stop": 1})

    def test_auto_is_the_default(self) -> None:
        """
        The default is C{auto}: from 2 up to 4 connections, a
        L{PathCount} shared by the keeper and the paths layer, its figures
        in the status; a number is a fixed count (no L{PathCount});
        anything else is refused naming the option.
        """
        from spwm.session.paths import PathCount
        from spwm.tap.agent import tunnel_connections

        built = self.build()
        self.assertIsNone(built.config.tunnel_connections)
        self.assertEqual(built.config.paths_range, (2, 4))
        assert built.paths is not None and built.paths.keeper is not None
        count = built.paths.count
        assert isinstance(count, PathCount)
        self.assertEqual((count.floor, count.ceiling, count.wanted), (2, 4, 2))
        self.assertIs(built.paths.keeper.count, count)  # type: ignore[union-attr]
        self.assertEqual(built.status.document()["paths"]["connections_wanted"], 2)
        # why it last changed: in the document, not a metric (text)
        self.assertEqual(built.status.document()["paths"]["connections_why"], "")
        body, _ = built.status.metrics.exposition(None)
        self.assertIn(b"spwm_paths_connections_wanted", body)
        self.assertNotIn(b"connections_why", body)
        fixed = self.build(**{"tunnel-connections": "3"})
        assert fixed.paths is not None and fixed.paths.keeper is not None
        self.assertEqual(fixed.config.paths_range, (3, 3))
        self.assertIsNone(fixed.paths.count)
        self.assertEqual(fixed.paths.keeper.extra, 2)  # type: ignore[union-attr]
        self.assertNotIn("connections_wanted", fixed.status.document()["paths"])
        # per-user ciphering keeps the paths: one cipher state per session
        self.assertEqual(self.build(**{"user-ciphering": True}).config.paths_range, (2, 4))
        self.assertEqual(self.build(**{"user-ciphering": True, "tunnel-connections": 3}).config.paths_range, (3, 3))
        self.assertIsNone(tunnel_connections("auto"))
        for bad in ("many", 0, 17, "2.5"):
            with self.assertRaises(ConfigError) as caught:
                AgentConfig.from_options({"tunnel-connections": bad})
            self.assertEqual(caught.exception.key, "tunnel-connections")
            self.assertIn("auto", str(caught.exception))

    def test_one_connection_keeps_the_paths_layer(self) -> None:
        """
        With 1 and no QUIC path (C{--udp-path off}, over an HTTP proxy, in
        plaintext) the paths layer is there all the same, with no further
        connection to keep: the hello says C{paths} and C{sip-seq} (the
        SIP is numbered, and carried into a resumption).  With C{--tunnel
        on-demand} and C{--udp-path only}, whatever the number, none: the
        session logic observes the connection (behind the worker steering)
        and the hello says nothing of paths.
        """
        for more in (
            {"tunnel-connections": 1, "udp-path": "off"},
            {"tunnel-connections": 1, "udp-path": "off", "user-ciphering": True},
            {"tunnel-connections": 1, "http-proxy": "192.0.2.1:3128"},
            {"tunnel-connections": 1, "plaintext": True},
        ):
            built = self.build(**more)
            self.assertTrue(built.config.paths_layer, more)
            assert built.paths is not None and built.paths.keeper is not None, more
            self.assertEqual(built.paths.keeper.extra, 0)
            self.assertIsNone(built.paths.count)
            self.assertIs(built.router.observer.observer, built.paths)
            hello = built.factory.hello
            assert callable(hello)
            self.assertEqual((hello()["paths"], hello()["sip-seq"]), (1, 1), more)
        for more in ({"tunnel": "on-demand"}, {"tunnel": "on-demand", "tunnel-connections": 3}, {"udp-path": "only", "plaintext": False}):
            built = self.build(**more)
            self.assertFalse(built.config.paths_layer, more)
            self.assertIsNone(built.paths, more)
            self.assertIs(built.router.observer.observer, built.resumption)
            hello = built.factory.hello
            assert callable(hello)
            self.assertNotIn("paths", hello())

    def test_udp_path_auto(self) -> None:
        """
        C{--udp-path auto} (the default) over TLS: the paths layer is
        there even with one TCP connection (a QUIC path joins the session
        as a further connection does), with the QUIC prober beside the
        keeper, with per-user ciphering too; C{off}, C{--plaintext},
        C{--http-proxy} and on-demand: no prober (the paths layer is
        there with one connection all the same, but not on demand).
        """
        from spwm.session.quicpath import Keepers, QuicProber

        for connections, ciphering in ((1, False), (2, False), (1, True), (2, True)):
            built = build_agent(
                AgentConfig.from_options(
                    {
                        "agent-id": "a1",
                        "sip-listen": ["127.0.0.1:5999"],
                        "tunnel-connections": connections,
                        "user-ciphering": ciphering,
                    }
                ),
                MemoryReactorClock(),
            )
            self.assertTrue(built.config.quic_probe)
            assert built.paths is not None
            self.assertIsInstance(built.quic, QuicProber)
            self.assertIsInstance(built.paths.keeper, Keepers)
            self.assertIs(built.router.observer.observer, built.paths)
            self.assertIn("udp_path", built.status.document()["paths"])
        for more in (
            {"udp-path": "off", "tunnel-connections": 1},
            {"plaintext": True, "tunnel-connections": 1},
            {"http-proxy": "192.0.2.1:3128", "tunnel-connections": 1},
            {"tunnel": "on-demand"},
        ):
            built = build_agent(
                AgentConfig.from_options({"agent-id": "a1", "sip-listen": ["127.0.0.1:5999"], **more}),
                MemoryReactorClock(),
            )
            self.assertFalse(built.config.quic_probe, more)
            self.assertIsNone(built.quic, more)
            self.assertEqual(built.paths is not None, more.get("tunnel") != "on-demand", more)

    def test_welcome_names_the_quic_port(self) -> None:
        """
        With C{--quic-listen} the welcome of every tunnel says the QUIC
        port (agents that speak C{paths} only); without, it does not.
        """
        from spwm.testing.certs import TestCA
        from spwm.tunnel.protocol import TunnelProtocol

        ca = TestCA(self.mktemp())
        cert = ca.issue(["contact.test"], "contact")
        for quic, port in (({"quic-listen": "127.0.0.1:4433"}, 4433), ({}, None)):
            config = ContactConfig.from_options({"cert": cert.cert, "key": cert.key, "listen": "tcp:0", **quic})
            built = build_contact(config, MemoryReactorClock())
            self.assertEqual(built.factory.quic_port, port)
            protocol = built.factory.buildProtocol(None)
            assert isinstance(protocol, TunnelProtocol)
            self.assertEqual(protocol.local_hello.get("quic_port"), port)

    def test_bounds(self) -> None:
        """
        0 and more than 16 (a contact point's C{max_paths}) are refused,
        naming the option; 16 is taken.
        """
        self.assertEqual(AgentConfig.from_options({"tunnel-connections": 16}).paths_range, (16, 16))
        for n in (0, 17):
            with self.assertRaises(ConfigError) as caught:
                AgentConfig.from_options({"tunnel-connections": n})
            self.assertEqual(caught.exception.key, "tunnel-connections")
