"""
Tests for L{spwm.tunnel.cipher} and per-user ciphering in the adapter.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from spwm.tunnel.cipher import FLAG_SEALED, WINDOW, UserCipher
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
        self.assertEqual(self.contact.refused, 3)
        # a sealed frame for a flow without a key here: dropped, counted
        # apart (a late copy of a closed channel's datagram is one)
        self.assertEqual(self.contact.unknown, 1)
        self.assertEqual((self.agent.sealed, self.contact.opened), (1, 1))

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


class ReplayWindowTests(SynchronousTestCase):
    """
    The receiver's sliding replay window: frames that crossed different
    paths arrive out of order and open; a counter opens at most once.
    """

    def seal_many(self, count: int) -> list[bytes]:
        agent = UserCipher(0)
        agent.bind_flow(5, KEY)
        context = agent.flow_context(5)
        assert context is not None
        return [UserCipher.seal(context, FrameType.SIP, 5, b"m%d" % n) for n in range(count)]

    def open_(self, contact: UserCipher, sealed: bytes) -> bytes | None:
        return contact.open(contact.flow_context(5), FrameType.SIP, 5, sealed, True)

    def test_reordered_within_the_window(self) -> None:
        """
        Counters below the highest opened, within the window and not
        opened yet, open; each only once.
        """
        frames = self.seal_many(WINDOW + 10)
        contact = UserCipher(1)
        contact.bind_flow(5, KEY)
        self.assertEqual(self.open_(contact, frames[WINDOW - 1]), b"m%d" % (WINDOW - 1))
        self.assertEqual(self.open_(contact, frames[0]), b"m0")
        self.assertEqual(self.open_(contact, frames[5]), b"m5")
        self.assertIsNone(self.open_(contact, frames[5]))
        self.assertIsNone(self.open_(contact, frames[0]))
        self.assertEqual(contact.refused, 2)

    def test_older_than_the_window(self) -> None:
        """
        A counter the window has passed is refused even if never opened.
        """
        frames = self.seal_many(WINDOW + 10)
        contact = UserCipher(1)
        contact.bind_flow(5, KEY)
        self.assertIsNotNone(self.open_(contact, frames[WINDOW + 5]))
        self.assertIsNotNone(self.open_(contact, frames[6]))
        self.assertIsNone(self.open_(contact, frames[5]))
        self.assertEqual(contact.refused, 1)

    def test_bad_tag_does_not_move_the_window(self) -> None:
        """
        A forged frame with a high counter is refused and leaves the
        window as it was: the genuine frames still open.
        """
        frames = self.seal_many(3)
        contact = UserCipher(1)
        contact.bind_flow(5, KEY)
        forged = (10**6).to_bytes(8, "big") + frames[0][8:]
        self.assertIsNone(self.open_(contact, forged))
        self.assertEqual([self.open_(contact, f) for f in frames], [b"m0", b"m1", b"m2"])

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_any_interleaving(self, data: st.DataObject) -> None:
        """
        Whatever order and duplication the frames arrive in: each counter
        opens at most once; a counter arriving (first) no further than the
        window behind the highest opened so far opens; every refusal is a
        duplicate or a counter older than the window.
        """
        window = 16  # a small one, so that many arrivals fall behind it
        count = data.draw(st.integers(1, 3 * window))
        frames = self.seal_many(count)
        order = data.draw(st.lists(st.integers(0, count - 1), max_size=4 * count))
        contact = UserCipher(1, window=window)
        contact.bind_flow(5, KEY)
        opened: set[int] = set()
        highest = -1
        for n in order:
            plain = self.open_(contact, frames[n])
            should = n not in opened and n > highest - window
            self.assertEqual(plain is not None, should, (n, highest))
            if plain is not None:
                self.assertEqual(plain, b"m%d" % n)
                opened.add(n)
                highest = max(highest, n)
        self.assertEqual(contact.opened, len(opened))
        self.assertEqual(contact.refused, len(order) - len(opened))


class NonceTests(SynchronousTestCase):
    """
    No nonce twice under a key.
    """

    def counter(self, sealed: bytes) -> int:
        return int.from_bytes(sealed[:8], "big")

    def test_one_sequence_per_key(self) -> None:
        """
        A flow's SIP and its channels take their counters from one
        sequence: all different; each context's own counters still grow
        (so a receiver that wants growing counters per context, as older
        versions do, opens them all in order).
        """
        agent, contact = UserCipher(0), UserCipher(1)
        for cipher in (agent, contact):
            cipher.bind_flow(5, KEY)
            cipher.bind_channel(3, 5)
            cipher.bind_channel(4, 5)
        sealed = []
        for n in range(30):
            ftype, channel = [(FrameType.SIP, 5), (FrameType.DATAGRAM, 3), (FrameType.DATAGRAM, 4)][n % 3]
            context = agent.flow_context(5) if ftype == FrameType.SIP else agent.channel_context(channel)
            sealed.append((ftype, channel, UserCipher.seal(context, ftype, channel, b"x%d" % n)))
        counters = [self.counter(s) for _, _, s in sealed]
        self.assertEqual(len(set(counters)), 30)
        self.assertEqual(counters, sorted(counters))
        for ftype, channel, data in sealed:
            context = contact.flow_context(5) if ftype == FrameType.SIP else contact.channel_context(channel)
            self.assertIsNotNone(contact.open(context, ftype, channel, data, True))
        self.assertEqual((contact.opened, contact.refused), (30, 0))

    def test_random_start_per_binding(self) -> None:
        """
        The same key bound by a new cipher state (a resumed session, a
        restarted contact point) starts its counters elsewhere, not at 0
        again; the receiver's first frame may have any counter.
        """
        starts = set()
        for _ in range(5):
            agent = UserCipher(0)
            agent.bind_flow(5, KEY)
            first = UserCipher.seal(agent.flow_context(5), FrameType.SIP, 5, b"x")
            starts.add(self.counter(first))
            contact = UserCipher(1)
            contact.bind_flow(5, KEY)
            self.assertEqual(contact.open(contact.flow_context(5), FrameType.SIP, 5, first, True), b"x")
        self.assertEqual(len(starts), 5)
        self.assertTrue(all(0 < c < 1 << 62 for c in starts))


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
