"""
Call quality and HEP on a running pair on loopback: the figures of a real
call through both halves, its call detail records, and the HEP copies a
collector receives.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol

from tests.integration.test_resumption import _LoopbackPair
from tests.integration.test_tunnel_loopback import wait_until
from tests.test_hep import decode_hep3


class _Collector(DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[dict[int, Any]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.packets.append(decode_hep3(data))


class QualityLoopbackTests(_LoopbackPair):
    """
    alice (agent a1) calls bob (agent a2) through the contact point, with
    C{--hep} to a collector of the test's.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.collector = _Collector()
        port = reactor.listenUDP(0, self.collector, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.extra = ["--hep", f"127.0.0.1:{port.getHost().port}"]
        # --cdr-file: the contact point's own file; the two agents share one
        self.contact_cdrs = self.mktemp()
        self.agent_cdrs = self.mktemp()
        self.contact_extra = ["--cdr-file", self.contact_cdrs]
        self.agent_extra = [*self.agent_extra, "--cdr-file", self.agent_cdrs]
        yield super().setUp()

    @defer.inlineCallbacks
    def test_call_figures_records_and_hep(self) -> Any:
        alice, bob, a_call, b_call = yield self.call()
        agent = self.agents[0].media
        yield wait_until(
            lambda: any(
                s["quality"]["legs"]["tunnel"]["packets"] > 20 and s["quality"]["legs"]["lan"]["packets"] > 20
                for call in agent.live_calls()
                for s in call["streams"]
            )
        )
        (live,) = list(agent.live_calls())
        legs = live["streams"][0]["quality"]["legs"]
        self.assertIsNone(legs["operator"])
        self.assertEqual((legs["lan"]["lost"], legs["tunnel"]["lost"]), (0, 0))
        self.assertEqual((legs["lan"]["duplicates"], legs["tunnel"]["duplicates"]), (0, 0))
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        yield wait_until(lambda: len(self.contact.media.cdrs) == 2 and len(agent.cdrs) == 1)
        (record,) = agent.cdrs
        self.assertEqual(record["side"], "agent")
        self.assertIn("alice", record["from"] or "")
        self.assertIn("bob", record["to"] or "")
        (stream,) = record["streams"]
        self.assertGreater(stream["legs"]["lan"]["packets"], 20)
        self.assertGreater(stream["legs"]["tunnel"]["packets"], 20)
        self.assertEqual(stream["legs"]["lan"]["lost"], 0)
        # what alice sent arrives at the contact point on alice's leg's
        # tunnel leg; the contact point has one record per leg
        contact_records = list(self.contact.media.cdrs)
        self.assertEqual({r["side"] for r in contact_records}, {"contact"})
        self.assertTrue(all(r["streams"][0]["legs"]["lan"] is None for r in contact_records))
        # each leg names the agent it went through
        self.assertEqual({r["agent"] for r in contact_records}, {a.config.agent_id for a in self.agents})
        self.assertEqual(record["agent"], self.agents[0].config.agent_id)
        # --cdr-file: the same records, one JSON line each; bob's agent
        # writes its record when bob's phone sees the BYE
        yield wait_until(lambda: len(self.agents[1].media.cdrs) == 1)
        with open(self.contact_cdrs, encoding="utf-8") as f:
            self.assertEqual([json.loads(line) for line in f], contact_records)
        with open(self.agent_cdrs, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(
            sorted(json.loads(line)["dialog"] for line in lines),
            sorted(r["dialog"] for r in [*agent.cdrs, *self.agents[1].media.cdrs]),
        )
        self.assertEqual(self.contact.status.document()["cdr_file"]["written"], 2)
        # HEP: SIP copies from both halves (capture agents 1 and 2)
        yield wait_until(lambda: {p[12] for p in self.collector.packets} == {1, 2})
        sip = [p for p in self.collector.packets if p[11] == 1]
        self.assertTrue(any(p[15].startswith(b"INVITE ") and p[12] == 1 for p in sip))
        self.assertTrue(any(p[15].startswith(b"INVITE ") and p[12] == 2 for p in sip))
        self.assertTrue(any(p[15].startswith(b"BYE ") for p in sip))
        # a message from alice's phone has her address and port as source
        phone = alice.sip_port
        self.assertTrue(any(p[12] == 1 and p[7] == phone and p[3] == "127.0.0.1" for p in sip))
        # a message through the tunnel has the tunnel connection's ends
        # (both halves, both directions), never the unspecified address
        self.assertEqual([p for p in sip if "0.0.0.0" in (p[3], p[4]) or 0 in (p[7], p[8])], [])
        self.assertTrue(any(p[12] == 1 and p[15].startswith(b"INVITE ") and p[7] != phone for p in sip))
        # every packet's timestamp is now-ish
        now = reactor.seconds()  # type: ignore[attr-defined]
        self.assertTrue(all(abs(p[9] - now) < 60 for p in self.collector.packets))
