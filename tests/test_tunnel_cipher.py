"""
Tests for L{spwm.tunnel.cipher} and per-user ciphering in the adapter.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from spwm.tunnel.cipher import FLAG_SEALED, UserCipher
from spwm.tunnel.frames import ChannelKind, FrameType
from spwm.tunnel.protocol import AgentTunnelFactory, ContactTunnelFactory
from tests.test_tunnel_protocol import RecordingApp
from twisted.test import iosim

KEY = bytes(range(32))


class CipherTests(SynchronousTestCase):
    """
    Sealing and opening.
    """

    def setUp(self) -> None:
        self.agent, self.contact = UserCipher(0), UserCipher(1)
        self.agent.bind_flow(5, KEY)
        self.contact.bind_flow(5, KEY)

    def test_round_trip_and_binding(self) -> None:
        """
        What one side seals for a flow the other opens; the plaintext does
        not appear in the sealed payload; the frame's channel is bound in.
        """
        sealed = UserCipher.seal(self.agent.flow_context(5), FrameType.SIP, 5, b"INVITE secret")
        self.assertNotIn(b"secret", sealed)
        self.assertEqual(self.contact.open(self.contact.flow_context(5), FrameType.SIP, 5, sealed, True), b"INVITE secret")
        again = UserCipher.seal(self.agent.flow_context(5), FrameType.SIP, 5, b"x")
        self.assertIsNone(self.contact.open(self.contact.flow_context(5), FrameType.SIP, 6, again, True))

    def test_forgery_replay_and_downgrade(self) -> None:
        """
        A changed byte, a replayed frame, and (once sealed frames have come)
        an unsealed frame are all refused and counted.
        """
        ctx = self.contact.flow_context(5)
        first = UserCipher.seal(self.agent.flow_context(5), FrameType.SIP, 5, b"one")
        self.assertEqual(self.contact.open(ctx, FrameType.SIP, 5, b"plain before", False), b"plain before")
        forged = first[:-1] + bytes([first[-1] ^ 1])
        self.assertIsNone(self.contact.open(ctx, FrameType.SIP, 5, forged, True))
        self.assertEqual(self.contact.open(ctx, FrameType.SIP, 5, first, True), b"one")
        self.assertIsNone(self.contact.open(ctx, FrameType.SIP, 5, first, True))
        self.assertIsNone(self.contact.open(ctx, FrameType.SIP, 5, b"plain after", False))
        self.assertIsNone(self.contact.open(None, FrameType.SIP, 9, first, True))
        self.assertEqual(self.contact.refused, 4)

    def test_directions_do_not_mix(self) -> None:
        """
        A frame sealed by one side cannot be reflected back to it.
        """
        sealed = UserCipher.seal(self.agent.flow_context(5), FrameType.SIP, 5, b"x")
        self.assertIsNone(self.agent.open(self.agent.flow_context(5), FrameType.SIP, 5, sealed, True))

    def test_channels_take_their_flow_key(self) -> None:
        """
        A channel bound to a flow with a key is sealed with it; a flow
        without a key binds nothing.
        """
        self.assertTrue(self.agent.bind_channel(3, 5))
        self.assertTrue(self.contact.bind_channel(3, 5))
        self.assertFalse(self.agent.bind_channel(7, 99))
        sealed = UserCipher.seal(self.agent.channel_context(3), FrameType.DATAGRAM, 3, b"rtp")
        self.assertEqual(self.contact.open(self.contact.channel_context(3), FrameType.DATAGRAM, 3, sealed, True), b"rtp")
        self.contact.forget_channel(3)
        self.assertIsNone(self.contact.channel_context(3))


class AdapterCipheringTests(SynchronousTestCase):
    """
    Two tunnel ends that both ask for per-user ciphering.
    """

    def connect(self, agent_wants: bool = True, contact_wants: bool = True) -> tuple:
        clock = Clock()
        agent_app, contact_app = RecordingApp(), RecordingApp()
        server = ContactTunnelFactory(contact_app, clock, user_ciphering=contact_wants).buildProtocol(None)
        client = AgentTunnelFactory(agent_app, clock, "a", user_ciphering=agent_wants).buildProtocol(None)
        pump = iosim.connect(server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False), greet=False, clock=clock)
        pump.flush()
        return client, server, agent_app, contact_app, pump

    def test_sealed_on_the_wire(self) -> None:
        """
        SIP of a flow with a key and datagrams of its channels are sealed on
        the wire and arrive in clear at the application.
        """
        client, server, agent_app, contact_app, pump = self.connect()
        self.assertIsNotNone(client.cipher)
        self.assertIsNotNone(server.cipher)
        client.bind_flow_key(5, KEY)
        server.bind_flow_key(5, KEY)
        cid = client.open_channel(ChannelKind.DATAGRAM, {"use": "media"})
        client.bind_channel_to_flow(cid, 5)
        pump.flush()
        server.bind_channel_to_flow(cid, 5)
        client.send_sip(5, b"MESSAGE confidential")
        client.send_datagram(cid, b"rtp-payload-xyz", 1)
        pump.flush()
        self.assertIn(("sip", 5, b"MESSAGE confidential"), contact_app.calls)
        self.assertIn(("datagram", cid, b"rtp-payload-xyz", 1), contact_app.calls)
        self.assertEqual(server.cipher.refused, 0)

    def test_plaintext_wire_bytes(self) -> None:
        """
        The bytes written to the transport do not contain the plaintext.
        """
        client, server, agent_app, contact_app, pump = self.connect()
        client.bind_flow_key(5, KEY)
        server.bind_flow_key(5, KEY)
        written: list[bytes] = []
        original = client._write
        client._write = lambda data: (written.append(data), original(data))
        client.send_sip(5, b"MESSAGE confidential")
        pump.flush()
        self.assertTrue(written)
        self.assertNotIn(b"confidential", b"".join(written))
        self.assertEqual(written[0][1] & FLAG_SEALED, FLAG_SEALED)
        self.assertIn(("sip", 5, b"MESSAGE confidential"), contact_app.calls)

    def test_only_when_both_ask(self) -> None:
        """
        If one end does not ask, nothing is sealed, and sealed frames are
        refused by an end that does not cipher.
        """
        client, server, agent_app, contact_app, pump = self.connect(contact_wants=False)
        self.assertIsNone(client.cipher)
        self.assertIsNone(server.cipher)
        client.send_sip(5, b"plain")
        pump.flush()
        self.assertIn(("sip", 5, b"plain"), contact_app.calls)
