"""
C{--user-ciphering} on a session with several paths, on loopback (issue
13): agents with the default C{--tunnel-connections} (two TLS connections)
and C{--udp-path auto}, a contact point with C{--quic-listen}. A registered
user's call carries sealed media on the QUIC path and on TCP; every path of
a session seals and opens with the session's one cipher state; cutting a
connection, then UDP, keeps the media flowing, sealed, with nothing
refused.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from spwm.session.carrier import PathFront, path_kind
from spwm.session.paths import PathKind
from spwm.tunnel.quic import QuicTunnelTransport
from tests.integration.test_tunnel_loopback import wait_until
from tests.integration.test_udp_auto import _UdpAutoPair, quic_path


class CipheringPathsTests(_UdpAutoPair):
    """
    Per-user ciphering with two TCP connections and a QUIC path.
    """

    extra = ["--user-ciphering"]
    agent_extra: list[str] = []

    def sealed(self, front: PathFront) -> dict[str, int]:
        cipher = front.cipher
        assert cipher is not None
        return cipher.snapshot()

    @defer.inlineCallbacks
    def flowing(self, a_call: Any, b_call: Any, front: PathFront, contact_front: PathFront) -> Any:
        """
        In 0.5 s, RTP arrives both ways and both halves seal and open
        datagrams of the call; nothing is refused.
        """
        got = a_call.rx.unique, b_call.rx.unique
        sealed = self.sealed(front), self.sealed(contact_front)
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertGreater(a_call.rx.unique - got[0], 10)
        self.assertGreater(b_call.rx.unique - got[1], 10)
        for before, half in zip(sealed, (front, contact_front)):
            now = self.sealed(half)
            self.assertGreater(now["sealed"] - before["sealed"], 10, now)
            self.assertGreater(now["opened"] - before["opened"], 10, now)
            self.assertEqual(now["refused"], 0, now)

    @defer.inlineCallbacks
    def test_sealed_on_every_path(self) -> Any:
        """
        The session has two TCP connections and a QUIC path on both
        halves, all with the session's cipher; the call's media moves to
        QUIC, sealed; the SIP carrier's connection is reset: media goes on;
        UDP is cut: media back on TCP, sealed; UDP back: on QUIC again;
        nothing refused at any time; the call hangs up.
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        assert agent1.paths is not None and agent1.quic is not None
        self.assertEqual(agent1.config.paths_range, (2, 4))
        yield wait_until(lambda: agent1.paths.front is not None, timeout=10)
        front = agent1.paths.front
        assert front is not None
        contact_front = next(f for f in self.contact.paths.fronts if f.session_id == front.session_id)
        yield wait_until(
            lambda: front.media_kind() == "quic"
            and contact_front.media_kind() == "quic"
            and len(front.paths) == 3
            and len(contact_front.paths) == 3,
            timeout=20,
        )
        self.assertEqual(sorted(path_kind(p).value for p in front.paths), ["quic", "tcp", "tcp"])
        for half in (front, contact_front):
            self.assertIsNotNone(half.cipher)
            for path in half.paths:
                self.assertIs(path.cipher, half.cipher)
        path = quic_path(front)
        transport = path.transport
        self.assertIsInstance(transport, QuicTunnelTransport)
        quic_sent = transport.stats.datagrams_sent
        yield self.flowing(a_call, b_call, front, contact_front)
        self.assertGreater(transport.stats.datagrams_sent - quic_sent, 10)
        sip_before = self.sip_counts(alice, bob)

        # the SIP carrier's TCP connection is reset
        carrier = front.carrier
        assert carrier is not None
        self.assertEqual(path_kind(carrier), PathKind.TCP)
        carrier.transport.abortConnection()
        yield wait_until(lambda: carrier not in front.paths, timeout=5)
        yield self.flowing(a_call, b_call, front, contact_front)

        # UDP cut: media back on TCP, still sealed
        transport.blackhole = True
        yield wait_until(lambda: front.media_kind() == "tcp" and contact_front.media_kind() == "tcp", timeout=5)
        yield self.flowing(a_call, b_call, front, contact_front)
        self.assertEqual(self.sip_counts(alice, bob), sip_before)
        # UDP back: media on QUIC again (and the QUIC connection can end
        # cleanly at the cleanup)
        transport.blackhole = False
        yield wait_until(lambda: front.media_kind() == "quic" and contact_front.media_kind() == "quic", timeout=40)
        yield self.flowing(a_call, b_call, front, contact_front)
        self.assertEqual(self.sip_counts(alice, bob), sip_before)
        for service in (self.contact, agent1):
            ciphering = service.status.document()["paths"]["ciphering"]
            self.assertGreater(ciphering["sealed"], 50, ciphering)
            self.assertGreater(ciphering["opened"], 50, ciphering)
            self.assertEqual(ciphering["refused"], 0, ciphering)
        from prometheus_client.exposition import generate_latest

        metrics = generate_latest(self.contact.status.metrics.registry).decode()
        self.assertIn('spwm_paths_ciphering{key="refused",side="contact"} 0.0', metrics)
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        for half in (front, contact_front):
            self.assertEqual(self.sealed(half)["refused"], 0)
