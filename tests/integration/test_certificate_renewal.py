"""
A renewed certificate taken by a running contact point on loopback: the
tunnels open before keep going on the old one, new tunnels (TLS over TCP
and QUIC) get the new one, and files that do not load change nothing.
"""

from __future__ import annotations

import os
from typing import Any

from cryptography import x509
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from spwm.tap import agent, contact
from spwm.tap.assembly import build_agent, build_contact
from spwm.testing.certs import CertFiles, TestCA
from spwm.testing.ports import free_port
from tests.integration.test_tunnel_loopback import Echo, LoopbackBase, wait_until


def serial(path: str) -> int:
    """
    The serial number of the certificate in the PEM file C{path}.
    """
    with open(path, "rb") as f:
        return int(x509.load_pem_x509_certificate(f.read()).serial_number)


def renew(ca: TestCA, into: CertFiles, *names: str, client: bool = False) -> int:
    """
    A new certificate for C{names} (default: the contact point's) over
    C{into}'s files, moved into place as an ACME client does.

    @return: its serial number.
    """
    fresh = ca.issue(list(names) or ["contact.spwm.test", "127.0.0.1"], "renewed", client=client)
    os.replace(fresh.key, into.key)
    os.replace(fresh.cert, into.cert)
    return serial(into.cert)


def tls_serial(built: Any) -> int:
    """
    The serial number of the certificate the agent's TLS tunnel got.
    """
    return int(built.tunnel_service.tunnel.transport.getPeerCertificate().get_serial_number())


class TlsRenewalTests(LoopbackBase):
    @defer.inlineCallbacks
    def test_new_tunnels_get_the_renewed_certificate(self) -> Any:
        """
        After the files are renewed and the watch looks at them, the tunnel
        that was open stays open and carries data; an agent that connects
        now is shown the new certificate.
        """
        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        first, local = self.start_agent(port, extra=["--tunnel-connections", "1"])
        yield wait_until(lambda: first.tunnel_service.tunnel is not None)
        old_tunnel = first.tunnel_service.tunnel
        self.assertEqual(tls_serial(first), serial(self.cert.cert))

        new_serial = renew(self.ca, self.cert)
        self.assertTrue(service.certificates.check())
        self.assertEqual(service.status.document()["certificate"]["reloads"], 1)

        second, local2 = self.start_agent(port, extra=["--tunnel-connections", "1"])
        yield wait_until(lambda: second.tunnel_service.tunnel is not None)
        self.assertEqual(tls_serial(second), new_serial)
        self.assertIs(first.tunnel_service.tunnel, old_tunnel)
        self.assertNotEqual(tls_serial(first), new_serial)
        got = yield self.exchange(local, b"old")
        self.assertEqual(got, b"echo:old")
        got = yield self.exchange(local2, b"new")
        self.assertEqual(got, b"echo:new")

    @defer.inlineCallbacks
    def test_files_that_do_not_load_change_nothing(self) -> Any:
        """
        A certificate whose key is not in place yet: the watch refuses it
        and new agents still get the certificate in use.
        """
        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        old_serial = serial(self.cert.cert)
        fresh = self.ca.issue(["contact.spwm.test", "127.0.0.1"], "half")
        os.replace(fresh.cert, self.cert.cert)
        self.assertFalse(service.certificates.check())
        built, local = self.start_agent(port, extra=["--tunnel-connections", "1"])
        yield wait_until(lambda: built.tunnel_service.tunnel is not None)
        self.assertEqual(tls_serial(built), old_serial)
        self.assertIn("does not belong", service.status.document()["certificate"]["error"])


class QuicRenewalTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_quic_tunnels_get_the_renewed_certificate(self) -> Any:
        """
        With C{--quic-listen}, the QUIC listener takes the renewed
        certificate too: an agent on the QUIC path that connects after it
        is shown the new one, the one connected before keeps its tunnel.
        """
        self.ca = TestCA(self.mktemp())
        self.cert = self.ca.issue(["contact.spwm.test", "127.0.0.1"], "contact")
        tcp_port, quic_port = free_port(), free_port()
        echo = reactor.listenUDP(0, Echo(), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        options = contact.Options()
        options.parseOptions(
            ["--listen", f"tcp:{tcp_port}:interface=127.0.0.1", "--quic-listen", f"127.0.0.1:{quic_port}",
             "--cert", self.cert.cert, "--key", self.cert.key, "--sip-address", f"127.0.0.1:{free_port()}",
             "--drain-time", "0.2"]
        )  # fmt: skip
        built = build_contact(options.config, reactor)
        built.service.startService()
        self.addCleanup(built.service.stopService)
        yield built.listener.listening
        yield built.quic_listener.listening

        def quic_agent() -> Any:
            options = agent.Options()
            options.parseOptions(
                ["--contact", f"127.0.0.1:{tcp_port}", "--udp-path", "only", "--quic-port", str(quic_port),
                 "--server-name", "contact.spwm.test", "--ca", self.ca.ca_file,
                 "--sip-listen", f"127.0.0.1:{free_port()}", "--reconnect-max", "0.5"]
            )  # fmt: skip
            a = build_agent(options.config, reactor)
            a.service.startService()
            self.addCleanup(a.service.stopService)
            return a

        def quic_serial(a: Any) -> int:
            return int(a.tunnel_service.tunnel.transport.quic.tls._peer_certificate.serial_number)

        first = quic_agent()
        yield wait_until(lambda: first.tunnel_service.tunnel is not None)
        old_tunnel = first.tunnel_service.tunnel
        self.assertEqual(quic_serial(first), serial(self.cert.cert))
        new_serial = renew(self.ca, self.cert)
        self.assertTrue(built.certificates.check())
        second = quic_agent()
        yield wait_until(lambda: second.tunnel_service.tunnel is not None)
        self.assertEqual(quic_serial(second), new_serial)
        self.assertIs(first.tunnel_service.tunnel, old_tunnel)


class AgentClientCertificateTests(LoopbackBase):
    """
    Mutual TLS: the agent's renewed client certificate is used by its next
    connection, without a restart.
    """

    @defer.inlineCallbacks
    def test_next_connection_uses_the_renewed_client_certificate(self) -> Any:
        """
        The agent's C{--client-cert} and C{--client-key} files renewed, its
        connection cut: the contact point sees the new certificate on the
        agent's new connection, and data flows again.
        """
        service, port = yield self.start_contact(extra=["--client-ca", self.ca.ca_file])
        self.addCleanup(service.service.stopService)
        files = self.ca.issue(["agent-1"], "client-agent-1", client=True)
        built, local = self.start_agent(
            port,
            extra=["--agent-id", "agent-1", "--client-cert", files.cert, "--client-key", files.key,
                   "--tunnel-connections", "1"],
        )  # fmt: skip
        yield wait_until(lambda: built.tunnel_service.tunnel is not None and len(service.factory.tunnels) == 1)

        def seen() -> int:
            [tunnel] = service.factory.tunnels
            return int(tunnel.transport.getPeerCertificate().get_serial_number())

        self.assertEqual(seen(), serial(files.cert))
        fresh = self.ca.issue(["agent-1"], "renewed-agent-1", client=True)
        os.replace(fresh.key, files.key)
        os.replace(fresh.cert, files.cert)
        first = built.tunnel_service.tunnel
        first.transport.abortConnection()
        yield wait_until(
            lambda: built.tunnel_service.tunnel not in (None, first) and len(service.factory.tunnels) == 1
        )
        self.assertEqual(seen(), serial(files.cert))
        got = yield self.exchange(local, b"renewed")
        self.assertEqual(got, b"echo:renewed")
        # the agent's status says which certificate it uses now
        section = built.status.document()["client_certificate"]
        self.assertEqual((section["subject"], section["reloads"], section["error"]), ("agent-1", 1, None))
        self.assertEqual(section["file"], files.cert)


class AgentSipTlsTests(LoopbackBase):
    """
    The agent's C{--sip-tls-cert} for SIP over TLS from phones.
    """

    @defer.inlineCallbacks
    def test_new_sip_connections_get_the_renewed_certificate(self) -> Any:
        """
        Renewed files: after the watch looks, a phone's new TLS connection
        to the agent's SIP port is shown the new certificate; the status
        document's C{certificate} section says it was loaded again.
        """
        from twisted.internet.threads import deferToThread

        from tests.integration.test_reload_signal import served_serial

        service, port = yield self.start_contact()
        self.addCleanup(service.service.stopService)
        sip = self.ca.issue(["agent.spwm.test", "127.0.0.1"], "sip")
        built, _ = self.start_agent(port, extra=["--sip-tls-cert", sip.cert, "--sip-tls-key", sip.key])
        tls_port = built.config.sip_listen[0][1] + 1
        got = yield deferToThread(served_serial, tls_port)
        self.assertEqual(got, serial(sip.cert))
        fresh = self.ca.issue(["agent.spwm.test", "127.0.0.1"], "sip-renewed")
        os.replace(fresh.key, sip.key)
        os.replace(fresh.cert, sip.cert)
        self.assertTrue(built.sip_certificates.check())
        got = yield deferToThread(served_serial, tls_port)
        self.assertEqual(got, serial(sip.cert))
        self.assertEqual(built.status.document()["certificate"]["reloads"], 1)
