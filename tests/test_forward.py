"""
Tests for L{spwm.forward}: the agent's UDP forwards and their limits.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from spwm.forward import AgentForwarder
from spwm.testing.tunnel import FakeTunnel
from spwm.tunnel.connection import ChannelLimitError, TunnelNotOpenError

from .test_media_relay import FakeUdpReactor


class SenderLimitTests(SynchronousTestCase):
    """
    One forward gives a channel to at most C{max_senders} senders.
    """

    def setUp(self) -> None:
        self.reactor = FakeUdpReactor()
        self.forwarder = AgentForwarder(
            self.reactor, [("127.0.0.1", 6000, "192.0.2.9", 7000)], max_senders=2
        )
        self.forwarder.start()
        self.tunnel = FakeTunnel(first_channel=3)
        self.forwarder.tunnel_established(self.tunnel)
        self.port = self.reactor.udp["127.0.0.1", 6000]

    def test_senders_beyond_the_limit_dropped_and_counted(self) -> None:
        """
        The first C{max_senders} senders get a channel each and their
        datagrams go through; a further sender's are dropped, counted as
        "no channel" (not "no tunnel"), and logged once, not per datagram.
        """
        with capturedLogs() as events:
            for sender in (("192.0.2.1", 1), ("192.0.2.1", 2), ("192.0.2.1", 3)):
                self.port.receive(b"x", sender)
            self.port.receive(b"y", ("192.0.2.1", 3))
            self.port.receive(b"z", ("192.0.2.1", 1))
        self.assertEqual(len(self.tunnel.opened), 2)
        self.assertEqual([(c, d) for c, d, _ in self.tunnel.datagrams], [(3, b"x"), (5, b"x"), (3, b"z")])
        self.assertEqual((self.forwarder.dropped_no_channel, self.forwarder.dropped_no_tunnel), (2, 0))
        warnings = [e for e in events if "no channel for sender" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 2)  # the 1st and 2nd; then the 4th, 8th...

    def test_tunnel_refuses_channel(self) -> None:
        """
        A tunnel at its channel limit, or closing, refuses the channel: the
        datagram is dropped and counted, nothing raises.
        """
        for error in (ChannelLimitError("limit"), TunnelNotOpenError("closed")):
            self.tunnel.open_error = error
            self.port.receive(b"x", ("192.0.2.1", 9))
        self.assertEqual(([(c, d) for c, d, _ in self.tunnel.datagrams], self.forwarder.dropped_no_channel), ([], 2))
