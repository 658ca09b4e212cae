"""
The QUIC path's congestion control (L{spwm.tunnel.quiccc}): NewReno with a
window floor, alone and between two aioquic connections (SPWM's own
configurations) on a simulated lossy link with a fake clock.
"""

from __future__ import annotations

import heapq
import random

from aioquic.quic.congestion.base import create_congestion_control
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import DatagramFrameReceived
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.packet import QuicPacketType
from aioquic.tls import Epoch
from twisted.trial.unittest import SynchronousTestCase

from spwm.limits import QuicLimits
from spwm.testing.certs import TestCA
from spwm.tunnel.quic import client_configuration, server_configuration
from spwm.tunnel.quiccc import FlooredRenoCongestionControl, algorithm_name

SIZE = 1200


def sent(number: int, size: int = SIZE, at: float = 0.0) -> QuicSentPacket:
    """A sent 1-RTT packet of C{size} bytes that counts in flight."""
    return QuicSentPacket(
        epoch=Epoch.ONE_RTT, in_flight=True, is_ack_eliciting=True, is_crypto_packet=False,
        packet_number=number, packet_type=QuicPacketType.ONE_RTT, sent_time=at, sent_bytes=size,
    )


class FlooredRenoTests(SynchronousTestCase):
    """
    Losses shrink the window as NewReno does, but never below the floor.
    """

    def test_loss_stops_at_floor(self) -> None:
        """
        From its initial window (ten packets), each loss in a new recovery
        period halves the window down to the floor and no further; the
        floored count says how often the floor held.
        """
        cc = FlooredRenoCongestionControl(max_datagram_size=SIZE, floor=4 * SIZE)
        self.assertEqual(cc.congestion_window, 10 * SIZE)
        number = 0
        windows = []
        for round_ in range(4):
            number += 1
            packet = sent(number, at=round_ + 0.1)
            cc.on_packet_sent(packet=packet)
            cc.on_packets_lost(now=round_ + 0.5, packets=[packet])
            windows.append(cc.congestion_window)
        self.assertEqual(windows, [5 * SIZE, 4 * SIZE, 4 * SIZE, 4 * SIZE])
        self.assertEqual(cc.floored, 3)
        self.assertEqual(cc.ssthresh, 4 * SIZE)
        self.assertEqual(cc.bytes_in_flight, 0)

    def test_persistent_congestion_stops_at_floor(self) -> None:
        """
        Persistent congestion takes NewReno to two packets; the floor holds.
        """
        cc = FlooredRenoCongestionControl(max_datagram_size=SIZE, floor=20 * SIZE)
        self.assertEqual(cc.congestion_window, 20 * SIZE)
        cc.on_persistent_congestion()
        self.assertEqual(cc.congestion_window, 20 * SIZE)

    def test_grows_above_floor(self) -> None:
        """
        Acknowledgements grow the window above the floor (slow start).
        """
        cc = FlooredRenoCongestionControl(max_datagram_size=SIZE, floor=2 * SIZE)
        packet = sent(1, at=0.01)
        cc.on_packet_sent(packet=packet)
        cc.on_packet_acked(now=0.1, packet=packet)
        self.assertEqual(cc.congestion_window, 11 * SIZE)

    def test_registered(self) -> None:
        """
        L{algorithm_name} registers the floored NewReno with aioquic; a
        floor of 0 is aioquic's own NewReno; the default limits name a
        floor of 64 KiB and both SPWM configurations use it.
        """
        name = algorithm_name(8 * SIZE)
        cc = create_congestion_control(name, max_datagram_size=SIZE)
        self.assertIsInstance(cc, FlooredRenoCongestionControl)
        self.assertEqual(cc.congestion_window, 10 * SIZE)
        self.assertEqual(algorithm_name(0), "reno")
        limits = QuicLimits()
        self.assertEqual(limits.window_floor, 65536)
        ca = TestCA(self.mktemp())
        files = ca.issue(["contact.test"], "contact")
        server = server_configuration(files.cert, files.key, limits, 30.0)
        client = client_configuration("contact.test", ca.ca_file, limits, 30.0)
        self.assertEqual(server.congestion_control_algorithm, "spwm-reno-floor-65536")
        self.assertEqual(client.congestion_control_algorithm, "spwm-reno-floor-65536")


def lossy_link(floor: int, loss: float, one_way: float, interval: float, seconds: float) -> tuple[int, int, list[float]]:
    """
    An SPWM QUIC client and server (their real configurations, with
    C{floor}) on a simulated link: every UDP datagram after the handshake
    is lost with probability C{loss} (seeded), the others arrive
    C{one_way} seconds later.  The client sends a 172-byte media datagram
    every C{interval} seconds for C{seconds}.

    @return: datagrams sent, received, and the delays of those received,
        sorted.
    """
    rnd = random.Random(7)
    ca = TestCA(FlooredRenoTests("test_registered").mktemp())
    files = ca.issue(["contact.test"], "contact")
    limits = QuicLimits(window_floor=floor)
    client = QuicConnection(configuration=client_configuration("contact.test", ca.ca_file, limits, 60.0))
    server = QuicConnection(
        configuration=server_configuration(files.cert, files.key, limits, 60.0),
        original_destination_connection_id=client.original_destination_connection_id,
    )
    peer = ("192.0.2.1", 443)
    now = 0.0
    client.connect(peer, now=now)
    wire: list[tuple[float, int, bool, bytes]] = []
    counter = 0
    sent_at: dict[int, float] = {}
    got: dict[int, float] = {}

    def transmit(conn: QuicConnection, to_server: bool, start: float) -> None:
        nonlocal counter
        for data, _ in conn.datagrams_to_send(now=now):
            counter += 1
            if start and rnd.random() < loss:
                continue
            heapq.heappush(wire, (now + one_way, counter, to_server, data))

    start = 0.0
    next_media: float | None = None
    end = None
    steps = 0
    heard = False  # the server has a peer once it got the first packet
    while end is None or now < end:
        steps += 1
        assert steps < 2_000_000, "the simulation does not advance"
        candidates = [t for t in (next_media, client.get_timer(), server.get_timer()) if t is not None]
        if wire:
            candidates.append(wire[0][0])
        # aioquic may keep a timer that is due now (rounding): step past it
        now = max(min(candidates), now + 1e-6)
        while wire and wire[0][0] <= now:
            _, _, to_server, data = heapq.heappop(wire)
            conn = server if to_server else client
            conn.receive_datagram(data, peer, now=now)
            heard = heard or to_server
            while (event := conn.next_event()) is not None:
                if isinstance(event, DatagramFrameReceived) and to_server:
                    got.setdefault(int.from_bytes(event.data[:4], "big"), now)
        for conn in (client, server):
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now=now)
        if next_media is None and client._handshake_complete and server._handshake_complete:
            # the handshake is done: the lossy call begins
            start = next_media = now
            end = now + seconds
        if next_media is not None and now >= next_media:
            client.send_datagram_frame(len(sent_at).to_bytes(4, "big") + bytes(168))
            sent_at[len(sent_at)] = now
            next_media += interval
        transmit(client, True, start)
        if heard:
            transmit(server, False, start)
    delays = sorted(got[k] - sent_at[k] for k in got)
    return len(sent_at), len(got), delays


class LossyLinkTests(SynchronousTestCase):
    """
    Five calls' media (250 datagrams a second) on a link that loses 5 % of
    the packets each way with 80 ms one way (the impairment bench's C{bad}
    without its jitter).
    """

    def test_floor_passes_loss_through_as_loss(self) -> None:
        """
        With the default floor the media loses what the link loses (5 %,
        give or take the draw) and no datagram waits: every delay is the
        link's 80 ms.
        """
        sent_, received, delays = lossy_link(QuicLimits().window_floor, 0.05, 0.080, 0.004, 6.0)
        lost = 1 - received / sent_
        self.assertGreater(sent_, 1400)
        self.assertLess(lost, 0.08, (sent_, received))
        # the last ones are still on the wire when the run ends
        self.assertLess(delays[-1], 0.085, delays[-5:])

    def test_without_floor_media_waits(self) -> None:
        """
        The control, NewReno as aioquic has it (floor 0): random loss keeps
        the window at two packets, the media waits for it (seconds, not
        milliseconds), and much more of it is lost than the link lost.
        """
        sent_, received, delays = lossy_link(0, 0.05, 0.080, 0.004, 6.0)
        self.assertGreater(delays[len(delays) // 2], 0.5)
        self.assertLess(received / sent_, 0.85, (sent_, received))
