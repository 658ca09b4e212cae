"""
Tests for L{spwm.tap}: how both halves start, and how they refuse to start
when a listener cannot be bound.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv6Address
from twisted.internet.defer import fail
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from spwm.addr import hostport, peer
from spwm.errors import ListenError
from spwm.forward import AgentForwarder
from spwm.limits import TunnelLimits
from spwm.media.ports import check_range
from spwm.tap import agent, contact
from spwm.tap.common import OPEN_FILES_MAX, MediaRangeCheck, StartupExit, StartupService, raise_open_files, stop_signals_once
from spwm.tap.parts import SipListeners, until
from spwm.tunnel.api import Router
from spwm.tunnel.protocol import ContactTunnelFactory
from spwm.tunnel.service import ContactListenService


def in_use() -> OSError:
    return OSError(errno.EADDRINUSE, "Address already in use")


class BusyReactor(MemoryReactor):
    """
    A L{MemoryReactor} on which some ports are taken by another program.

    @ivar busy: C{(transport, port)} pairs that refuse to be bound.
    """

    def __init__(self, busy: set[tuple[str, int]]) -> None:
        super().__init__()
        self.busy = busy
        self.stopped: list[Any] = []

    def _refuse(self, transport: str, port: int, interface: str) -> None:
        if (transport, port) in self.busy:
            raise CannotListenError(interface, port, in_use())

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        self._refuse("udp", port, interface)
        return _Port(self, "udp", port)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        self._refuse("tcp", port, interface)
        listening = super().listenTCP(port, factory, backlog, interface)
        listening.stopListening = lambda: self.stopped.append(("tcp", port))
        return listening


class _Port:
    """
    A bound UDP port of L{BusyReactor}: records its closing.
    """

    def __init__(self, reactor: BusyReactor, transport: str, port: int) -> None:
        self.reactor, self.transport, self.port = reactor, transport, port

    def stopListening(self) -> None:
        self.reactor.stopped.append((self.transport, self.port))


class FakeRunner:
    """
    What L{SipListeners} needs of a SIP runner.
    """

    stopped = False

    def stop(self) -> None:
        self.stopped = True


class ListenErrorTests(SynchronousTestCase):
    """
    L{ListenError} reads as one line a person can act on.
    """

    def test_line(self) -> None:
        """
        The line names the option, the address and the problem, with the
        common bind errors in plain words.
        """
        cases = [
            (errno.EADDRINUSE, "address already in use"),
            (errno.EADDRNOTAVAIL, "not an address of this host"),
            (errno.EACCES, "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"),
            (errno.ENODEV, "no such device"),
        ]
        for code, words in cases:
            error = CannotListenError("127.0.0.1", 443, OSError(code, "No such device"))
            self.assertEqual(str(ListenError.from_exception("listen", "tcp:443", error)), f"--listen tcp:443: {words}")


class UntilTests(SynchronousTestCase):
    """
    L{until}: what a stopping contact point's SIP socket waits for (its
    BYEs of the calls that ended with the tunnels), bounded.
    """

    def test_done_later(self) -> None:
        """
        It fires with C{True} at the first step that finds it done, not
        before.
        """
        clock, left = Clock(), [3]
        fired: list[bool] = []
        until(clock, lambda: left[0] == 0, 5.0).addCallback(fired.append)
        clock.advance(0.05)
        self.assertEqual(fired, [])
        left[0] = 0
        clock.advance(0.05)
        self.assertEqual(fired, [True])

    def test_limit(self) -> None:
        """
        Never done: it fires with C{False} at its limit, not before.
        """
        clock = Clock()
        fired: list[bool] = []
        until(clock, lambda: False, 1.0).addCallback(fired.append)
        clock.pump([0.05] * 19)
        self.assertEqual(fired, [])
        clock.pump([0.05] * 2)
        self.assertEqual(fired, [False])

    def test_sockets_open_until_after(self) -> None:
        """
        L{SipListeners} with C{after}: its sockets close once what C{after}
        waits for is done (the BYEs sent), not at the stop.
        """
        reactor, clock, unsent = BusyReactor(set()), Clock(), [120]
        runner = FakeRunner()
        listeners = SipListeners(
            reactor, runner, [("127.0.0.1", 5060)], after=lambda: until(clock, lambda: unsent[0] == 0, 5.0)
        )
        listeners.startService()
        listeners.stopService()
        clock.advance(1.0)
        self.assertEqual((reactor.stopped, runner.stopped), ([], False))
        unsent[0] = 0
        clock.advance(0.05)
        self.assertTrue(runner.stopped)
        self.assertIn(("udp", 5060), reactor.stopped)


class SipListenersTests(SynchronousTestCase):
    """
    L{SipListeners} binds UDP, TCP and (with TLS) TLS on each address, and
    names the option and the address when one cannot be bound.
    """

    def test_udp_in_use(self) -> None:
        """
        A UDP port in use stops the start with L{ListenError} naming
        C{--sip-listen} (the default option) and the address.
        """
        reactor = BusyReactor({("udp", 5060)})
        listeners = SipListeners(reactor, FakeRunner(), [("127.0.0.1", 5060)])
        error = self.assertRaises(ListenError, listeners.startService)
        self.assertEqual(str(error), "--sip-listen udp 127.0.0.1:5060: address already in use")

    def test_tcp_in_use_after_udp(self) -> None:
        """
        When TCP fails after UDP was bound, the UDP port is kept for
        C{stopService}, which closes it: nothing stays bound.
        """
        reactor = BusyReactor({("tcp", 5070)})
        listeners = SipListeners(reactor, FakeRunner(), [("2001:db8::1", 5070)], option="sip-address")
        error = self.assertRaises(ListenError, listeners.startService)
        self.assertEqual(str(error), "--sip-address tcp [2001:db8::1]:5070: address already in use")
        listeners.stopService()
        self.assertEqual(reactor.stopped, [("udp", 5070)])

    def test_tls_in_use(self) -> None:
        """
        SIP over TLS listens on port + 1; that port in use names C{tls} and
        it.
        """
        from spwm.testing.certs import self_signed
        from spwm.tunnel.service import server_tls_options

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        files = self_signed(directory, ["agent.example.test"])
        reactor = BusyReactor({("tcp", 5061)})
        listeners = SipListeners(
            reactor, FakeRunner(), [("192.0.2.10", 5060)], server_tls_options(files.cert, files.key)
        )
        error = self.assertRaises(ListenError, listeners.startService)
        self.assertEqual(str(error), "--sip-listen tls 192.0.2.10:5061: address already in use")

    def test_ipv6_in_brackets_in_the_log(self) -> None:
        """
        The line that says where SIP listens brackets an IPv6 address.
        """
        reactor = BusyReactor(set())
        listeners = SipListeners(reactor, FakeRunner(), [("2001:db8::10", 5060)])
        with capturedLogs() as events:
            listeners.startService()
        lines = [e["log_format"].format(**e) for e in events if "address" in e]
        self.assertEqual(lines, ["SIP on udp and tcp [2001:db8::10]:5060"])


class ForwardTests(SynchronousTestCase):
    """
    A local forward port that cannot be bound stops the start.
    """

    def test_in_use(self) -> None:
        """
        L{AgentForwarder.start} raises L{ListenError} naming C{--forward-udp}
        and the forward as written; the ports bound before stay for
        C{stop}.
        """
        reactor = BusyReactor({("udp", 6001)})
        forwarder = AgentForwarder(
            reactor, [("127.0.0.1", 6000, "192.0.2.9", 7000), ("::1", 6001, "2001:db8::9", 7001)]
        )
        error = self.assertRaises(ListenError, forwarder.start)
        self.assertEqual(str(error), "--forward-udp [::1]:6001=[2001:db8::9]:7001: address already in use")
        forwarder.stop()
        self.assertEqual(reactor.stopped, [("udp", 6000)])

    def test_ipv6_target_in_brackets(self) -> None:
        """
        An IPv6 target is written in brackets in the log and in the channel
        request, which is how the contact point's allow list spells it.
        """
        forwarder = AgentForwarder(BusyReactor(set()), [("::1", 6000, "2001:db8::9", 7000)])
        with capturedLogs() as events:
            forwarder.start()
        self.assertEqual(
            [e["log_format"].format(**e) for e in events if "target" in e],
            ["forwarding UDP [::1]:6000 through the tunnel to [2001:db8::9]:7000"],
        )


class ContactListenTests(SynchronousTestCase):
    """
    The tunnel listener refuses to start on an address it cannot bind.
    """

    def test_in_use(self) -> None:
        """
        An endpoint that fails at once makes C{startService} raise
        L{ListenError} naming C{--listen}, with nothing logged as a failure.
        """

        class Refusing:
            def listen(self, factory: Any) -> Any:
                return fail(CannotListenError("", 443, in_use()))

        factory = ContactTunnelFactory(Router(None, {}, None), MemoryReactorClock(), TunnelLimits())
        service = ContactListenService(Refusing(), factory, MemoryReactorClock(), description="tcp:443")
        with capturedLogs() as events:
            error = self.assertRaises(ListenError, service.startService)
        self.assertEqual(str(error), "--listen tcp:443: address already in use")
        self.assertEqual([e for e in events if "log_failure" in e], [])

    def test_quic_in_use(self) -> None:
        """
        The QUIC listener's line names C{--quic-listen}.
        """

        class Refusing:
            def listen(self, factory: Any) -> Any:
                return fail(CannotListenError("", 443, in_use()))

        factory = ContactTunnelFactory(Router(None, {}, None), MemoryReactorClock(), TunnelLimits())
        service = ContactListenService(
            Refusing(), factory, MemoryReactorClock(), description="udp:127.0.0.1:443", option="quic-listen"
        )
        error = self.assertRaises(ListenError, service.startService)
        self.assertEqual(str(error), "--quic-listen udp:127.0.0.1:443: address already in use")


class MediaRangeTests(SynchronousTestCase):
    """
    At start, at least one pair of the media port range must be bindable.
    """

    def binder(self, refuse: dict[int, int]) -> Any:
        tried: list[int] = []

        def bind(address: str, port: int) -> None:
            tried.append(port)
            if port in refuse:
                raise OSError(refuse[port], "refused")

        bind.tried = tried  # type: ignore[attr-defined]
        return bind

    def test_first_free_pair(self) -> None:
        """
        Pairs in use are skipped; the first pair whose two ports bind is the
        answer.
        """
        bind = self.binder({40000: errno.EADDRINUSE, 40003: errno.EADDRINUSE})
        self.assertEqual(check_range("127.0.0.1", 40000, 40999, bind), 40004)
        self.assertEqual(bind.tried, [40000, 40002, 40003, 40004, 40005])

    def test_all_in_use(self) -> None:
        """
        A range whose every pair is in use stops the start, naming
        C{--media-ports}, the range and the address.
        """
        bind = self.binder({p: errno.EADDRINUSE for p in range(40000, 40004)})
        check = MediaRangeCheck("::1", (40000, 40003), bind)
        error = self.assertRaises(ListenError, check.startService)
        self.assertEqual(str(error), "--media-ports 40000-40003 on [::1]: every port pair is in use")

    def test_foreign_address(self) -> None:
        """
        An address that is not this host's is the answer at the first try:
        the other pairs would meet it too.
        """
        bind = self.binder({p: errno.EADDRNOTAVAIL for p in range(40000, 41000)})
        check = MediaRangeCheck("192.0.2.7", (40000, 40999), bind)
        error = self.assertRaises(ListenError, check.startService)
        self.assertEqual(str(error), "--media-ports 40000-40999 on 192.0.2.7: not an address of this host")
        self.assertEqual(bind.tried, [40000])


class _ForeignReactor(MemoryReactorClock):
    """
    A memory reactor on a host that has no address C{192.0.2.10}.
    """

    def _refuse(self, port: int, interface: str) -> None:
        if interface == "192.0.2.10":
            raise CannotListenError(interface, port, OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"))

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        self._refuse(port, interface)
        return _Port(BusyReactor(set()), "udp", port)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        self._refuse(port, interface)
        return super().listenTCP(port, factory, backlog, interface)


class ForeignSipAddressTests(SynchronousTestCase):
    """
    A SIP address that is not this host's is said as such, naming the SIP
    option, although the media address (by default that same host) could
    not be bound either.
    """

    def start(self, built: Any) -> str:
        """
        Start C{built}'s service, whose media range check finds the host
        without C{192.0.2.10}.

        @return: the line of the failed start.
        """

        def bind(address: str, port: int) -> None:
            if address == "192.0.2.10":
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

        for child in built.service:
            if isinstance(child, MediaRangeCheck):
                child.bind = bind
        error = self.assertRaises(StartupExit, built.service.startService)
        return str(error.code)

    def test_agent(self) -> None:
        """
        C{spwm-agent --sip-listen 192.0.2.10:15160} without
        C{--media-ports}: the line names C{--sip-listen}.
        """
        from spwm.tap.assembly import build_agent
        from spwm.tap.options import AgentConfig

        config = AgentConfig.from_options(
            {"plaintext": True, "contact": "127.0.0.1:14443", "sip-listen": "192.0.2.10:15160"}
        )
        self.assertEqual(
            self.start(build_agent(config, _ForeignReactor())),
            "spwm-agent: --sip-listen udp 192.0.2.10:15160: not an address of this host",
        )

    def test_contact(self) -> None:
        """
        So with the contact point's C{--sip-address}.
        """
        from spwm.tap.assembly import build_contact
        from spwm.tap.options import ContactConfig

        config = ContactConfig.from_options(
            {"plaintext": True, "listen": "tcp:14443:interface=127.0.0.1", "sip-address": "192.0.2.10:15070"}
        )
        self.assertEqual(
            self.start(build_contact(config, _ForeignReactor())),
            "spwm-contact: --sip-address udp 192.0.2.10:15070: not an address of this host",
        )


class StartupServiceTests(SynchronousTestCase):
    """
    The top service turns a L{ListenError} of a child into one line and an
    exit, after stopping the children already started.
    """

    def test_exit_with_one_line(self) -> None:
        """
        L{StartupExit} carries C{spwm-SIDE: } and the child's line; the
        children started before are stopped; the process would exit 1.
        """

        class Failing(Service):
            def startService(self) -> None:
                super().startService()
                raise ListenError("status-listen", "tcp:9090", "address already in use")

        top = StartupService("agent")
        first = Service()
        first.setServiceParent(top)
        Failing().setServiceParent(top)
        last = Service()
        last.setServiceParent(top)
        error = self.assertRaises(StartupExit, top.startService)
        self.assertEqual(error.code, "spwm-agent: --status-listen tcp:9090: address already in use")
        self.assertIsInstance(error, SystemExit)
        self.assertFalse(first.running)
        self.assertFalse(last.running)
        self.assertFalse(top.running)


class OptionsTests(SynchronousTestCase):
    """
    C{--version} and C{--help} of both halves.
    """

    def run_option(self, options: Any, argv: list[str]) -> tuple[int | None, str]:
        out = io.StringIO()
        saved, sys.stdout = sys.stdout, out
        try:
            with self.assertRaises(SystemExit) as cm:
                options.parseOptions(argv)
        finally:
            sys.stdout = saved
        return cm.exception.code, out.getvalue()

    def test_version(self) -> None:
        """
        C{--version} prints SPWM's version (not Twisted's alone) and exits 0.
        """
        import spwm

        for module, name in ((agent, "spwm-agent"), (contact, "spwm-contact")):
            code, text = self.run_option(module.Options(), ["--version"])
            self.assertIn(code, (0, None))
            self.assertTrue(text.startswith(f"{name} {spwm.__version__} (Twisted "), text)

    def test_help_defaults_as_typed(self) -> None:
        """
        C{--help} shows defaults as a user types them: a port range as
        C{LOW-HIGH}, whole seconds without C{.0}, and no C{None} or C{()}.
        """
        for module, ports in ((agent, "40000-40999"), (contact, "50000-50999")):
            text = " ".join(module.Options().getUsage(width=200).split())
            self.assertIn(f"[default: {ports}]", text)
            self.assertIn("[default: 15]", text)
            self.assertIn("[default: 0.06]", text)
            for wrong in ("None", "()", "[]", "(40000", "(50000", "[default: 0]", "[default: False]"):
                self.assertNotIn(wrong, text)


class AddressTests(SynchronousTestCase):
    """
    L{hostport} and L{peer}: IPv6 literals in brackets, as in URIs.
    """

    def test_hostport(self) -> None:
        """
        IPv6 literals get brackets, once; IPv4 and names do not.
        """
        self.assertEqual(hostport("2001:db8::10", 443), "[2001:db8::10]:443")
        self.assertEqual(hostport("[2001:db8::10]", 443), "[2001:db8::10]:443")
        self.assertEqual(hostport("fe80::1%eth0", 5060), "[fe80::1%eth0]:5060")
        self.assertEqual(hostport("192.0.2.1", 5060), "192.0.2.1:5060")
        self.assertEqual(hostport("contact.example.net", 443), "contact.example.net:443")
        self.assertEqual(hostport("2001:db8::10"), "[2001:db8::10]")

    def test_peer(self) -> None:
        """
        Twisted addresses and address tuples read like L{hostport}; other
        addresses as their C{str}.
        """
        self.assertEqual(peer(IPv6Address("TCP", "2001:db8::10", 443)), "[2001:db8::10]:443")
        self.assertEqual(peer(("2001:db8::10", 443, 0, 0)), "[2001:db8::10]:443")
        self.assertEqual(peer("/run/spwm.sock"), "/run/spwm.sock")

    def test_tunnel_peer_in_log(self) -> None:
        """
        A tunnel from an IPv6 peer names it in brackets in its log lines.
        """
        reactor = MemoryReactorClock()
        factory = ContactTunnelFactory(Router(None, {}, None), reactor, TunnelLimits())
        protocol = factory.buildProtocol(IPv6Address("TCP", "2001:db8::10", 443))
        transport = StringTransport(peerAddress=IPv6Address("TCP", "2001:db8::10", 443))
        protocol.makeConnection(transport)
        self.assertEqual(protocol.peer, "[2001:db8::10]:443")
        with capturedLogs() as events:
            protocol.dataReceived(b"\xff" * 64)
        lines = [e["log_format"].format(**e) for e in events if e.get("peer")]
        self.assertTrue(lines, events)
        for line in lines:
            self.assertIn("[2001:db8::10]:443", line)


class TlsMaterialTests(SynchronousTestCase):
    """
    Certificates, keys and CA files that exist but do not load stop the
    assembly with one line naming the option.
    """

    def setUp(self) -> None:
        from spwm.testing.certs import self_signed

        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.files = self_signed(self.dir, ["contact.example.test"])
        self.other = self_signed(self.dir, ["other.example.test"], "other")
        self.text = os.path.join(self.dir, "text.pem")
        with open(self.text, "w") as f:
            f.write("not a certificate\n")

    def refused(self, module: Any, argv: list[str]) -> str:
        options = module.Options()
        options.parseOptions(argv)
        with self.assertRaises(SystemExit) as cm:
            module.makeService(options, MemoryReactorClock())
        self.assertNotIsInstance(cm.exception, StartupExit)
        return cm.exception.code

    def test_contact_key_of_another_certificate(self) -> None:
        """
        A key that does not belong to the certificate: C{cert}.
        """
        self.assertEqual(
            self.refused(contact, ["--cert", self.files.cert, "--key", self.other.key]),
            "spwm-contact: invalid configuration: cert: cannot load certificate/key: "
            "the key does not belong to the certificate",
        )

    def test_contact_client_ca_without_certificate(self) -> None:
        """
        A C{--client-ca} file with no certificate in it.
        """
        self.assertEqual(
            self.refused(contact, ["--cert", self.files.cert, "--key", self.files.key, "--client-ca", self.text]),
            f"spwm-contact: invalid configuration: client-ca: no PEM certificate in {self.text!r}",
        )

    def test_agent_ca_without_certificate(self) -> None:
        """
        A C{--ca} file with no certificate in it (it would trust nothing,
        and every connection would fail later).
        """
        self.assertEqual(
            self.refused(agent, ["--ca", self.text]),
            f"spwm-agent: invalid configuration: ca: no PEM certificate in {self.text!r}",
        )

    def test_agent_sip_tls_and_client_cert(self) -> None:
        """
        C{--sip-tls-cert} and C{--client-cert} that do not load.
        """
        self.assertEqual(
            self.refused(agent, ["--plaintext", "--sip-tls-cert", self.text, "--sip-tls-key", self.files.key]),
            f"spwm-agent: invalid configuration: sip-tls-cert: cannot load certificate/key: no certificate in {self.text}",
        )
        self.assertEqual(
            self.refused(agent, ["--client-cert", self.files.cert, "--client-key", self.text]),
            "spwm-agent: invalid configuration: client-cert: cannot load certificate/key: not a PEM certificate and key",
        )


class StateFileTests(SynchronousTestCase):
    """
    The directory of C{--state-file} is checked at start, not when the
    state is written at stop.
    """

    def test_no_directory(self) -> None:
        """
        A state file in a directory that does not exist: one line.
        """
        options = contact.Options()
        options.parseOptions(["--plaintext", "--state-file", "/nonexistent/spwm/contact.state"])
        with self.assertRaises(SystemExit) as cm:
            contact.makeService(options, MemoryReactorClock())
        self.assertEqual(
            cm.exception.code, "spwm-contact: invalid configuration: state-file: no directory '/nonexistent/spwm'"
        )


    def test_the_other_halfs_file(self) -> None:
        """
        Each half refuses the other half's state file with one line, not
        overwrite it at its start (an agent's keys, a contact point's
        sessions and token key would be lost).
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump({"version": 1, "saved_at": 0, "token_secret": "00" * 32, "sessions": {}}, f)
        options = agent.Options()
        options.parseOptions(["--plaintext", "--state-file", path])
        with self.assertRaises(SystemExit) as cm:
            agent.makeService(options, MemoryReactorClock())
        self.assertEqual(
            cm.exception.code,
            f"spwm-agent: invalid configuration: state-file: {path} is a contact point's state file, not an agent's:"
            " give each its own",
        )
        with open(path, "w") as f:
            json.dump({"version": 1, "agent": True, "sides": []}, f)
        options = contact.Options()
        options.parseOptions(["--plaintext", "--state-file", path])
        with self.assertRaises(SystemExit) as cm:
            contact.makeService(options, MemoryReactorClock())
        self.assertEqual(
            cm.exception.code,
            f"spwm-contact: invalid configuration: state-file: {path} is an agent's state file, not a contact"
            " point's: give each its own",
        )
        with open(path) as f:
            self.assertEqual(json.load(f)["agent"], True)


class _ThreadCallReactor(MemoryReactorClock):
    """
    A memory reactor whose C{callFromThread} calls at once.
    """

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class StopSignalTests(SynchronousTestCase):
    """
    Only the first SIGTERM or SIGINT reaches Twisted's handler, which
    stops the reactor; a later one, while the half stops (the contact
    point's drain), is one info line instead of a C{ReactorNotRunning}
    traceback.
    """

    def setUp(self) -> None:
        self.calls: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))

    def twisted_handlers(self) -> None:
        """
        Handlers standing for those Twisted installs when the reactor
        starts.
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, frame: self.calls.append(number))

    def test_only_the_first(self) -> None:
        """
        Only the first stop signal reaches the handler that signal had;
        each later one goes to C{again}.
        """
        again: list[int] = []
        previous = {signal.SIGTERM: lambda signum, frame: self.calls.append(-signum)}
        previous[signal.SIGINT] = lambda signum, frame: self.calls.append(signum)
        once = stop_signals_once(previous, again.append)
        once(signal.SIGINT, None)
        once(signal.SIGTERM, None)
        once(signal.SIGINT, None)
        self.assertEqual(self.calls, [signal.SIGINT])
        self.assertEqual(again, [signal.SIGTERM, signal.SIGINT])

    def stopped_twice(self, module: Any, argv: list[str]) -> list[str]:
        """
        Build C{module}'s service, start the reactor (Twisted's handlers
        first, then the hooks) and send it SIGTERM, SIGTERM and SIGINT.

        @return: the log lines of the later signals.
        """
        reactor = _ThreadCallReactor()
        options = module.Options()
        options.parseOptions(argv)
        module.makeService(options, reactor)
        self.twisted_handlers()
        with capturedLogs() as events:
            reactor.run()
            for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
                signal.getsignal(signum)(signum, None)
        self.assertEqual(self.calls, [signal.SIGTERM])
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in events if e.get("log_namespace") == "spwm.tap.common"]

    def test_single_contact_point(self) -> None:
        """
        A contact point of one process (no C{--workers}) passes only the
        first stop signal on.
        """
        self.assertEqual(
            self.stopped_twice(contact, ["--plaintext"]),
            ["SIGTERM: the stop is already under way", "SIGINT: the stop is already under way"],
        )

    def test_agent(self) -> None:
        """
        So does the agent.
        """
        self.assertEqual(
            self.stopped_twice(agent, ["--plaintext", "--contact", "127.0.0.1:14443", "--sip-listen", "127.0.0.1:15160"]),
            ["SIGTERM: the stop is already under way", "SIGINT: the stop is already under way"],
        )


class _Limits:
    """
    A C{resource} module with one open-file limit, which records what is set.
    """

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limit = (soft, hard)
        self.refuse = refuse
        self.set: list[tuple[int, int]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limit

    def setrlimit(self, which: int, limit: tuple[int, int]) -> None:
        if self.refuse:
            raise ValueError("not allowed")
        self.set.append(limit)
        self.limit = limit


class RaiseOpenFilesTests(SynchronousTestCase):
    """
    L{raise_open_files}: a half's soft limit of open descriptors goes up
    to its hard limit.
    """

    def test_raised_to_the_hard_limit(self) -> None:
        limits = _Limits(1024, 524288)
        self.assertEqual(raise_open_files(limits), (1024, 524288))
        self.assertEqual(limits.set, [(524288, 524288)])

    def test_unlimited_hard_limit_capped(self) -> None:
        limits = _Limits(1024, _Limits.RLIM_INFINITY)
        self.assertEqual(raise_open_files(limits), (1024, OPEN_FILES_MAX))
        self.assertEqual(limits.set, [(OPEN_FILES_MAX, _Limits.RLIM_INFINITY)])

    def test_nothing_to_raise(self) -> None:
        for soft, hard in ((65536, 65536), (_Limits.RLIM_INFINITY, _Limits.RLIM_INFINITY), (OPEN_FILES_MAX, 4 * OPEN_FILES_MAX)):
            limits = _Limits(soft, hard)
            self.assertIsNone(raise_open_files(limits))
            self.assertEqual(limits.set, [])

    def test_refused(self) -> None:
        limits = _Limits(1024, 4096, refuse=True)
        self.assertIsNone(raise_open_files(limits))
        self.assertEqual(limits.limit, (1024, 4096))

    def test_this_process(self) -> None:
        """
        The real module: after the call the soft limit is the hard one
        (or L{OPEN_FILES_MAX}).
        """
        import resource

        before = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, before)
        raise_open_files()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertEqual(soft, OPEN_FILES_MAX if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_MAX))
