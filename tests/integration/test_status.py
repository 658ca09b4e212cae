"""
The status page of a running pair on loopback: what it says during a call
and after it, over real HTTP.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor
from twisted.web.client import Agent, readBody

from tests.integration.test_resumption import _LoopbackPair
from tests.integration.test_tunnel_loopback import wait_until


class StatusPageTests(_LoopbackPair):
    """
    Both halves serve C{/status} and C{/metrics} on C{--status-listen}.
    """

    extra = ["--status-listen", "tcp:0:interface=127.0.0.1"]

    @defer.inlineCallbacks
    def get(self, service: Any, path: str) -> Any:
        port = service.status_http.port.getHost().port
        response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
        body = yield readBody(response)
        return response.code, body

    @defer.inlineCallbacks
    def test_during_and_after_a_call(self) -> Any:
        """
        During a call the contact point's page shows two tunnels, two
        registrations, the call's dialogs, streams and relayed packets, and
        the agent's its tunnel up and one stream; after the hang-up the
        streams are gone and the packet counts stay; C{/metrics} has the
        same numbers.
        """
        alice, bob, a_call, b_call = yield self.call()
        yield wait_until(lambda: self.contact.media.status()["packets_out"] > 10)
        code, body = yield self.get(self.contact, "/status")
        self.assertEqual(code, 200)
        doc = json.loads(body)
        self.assertEqual(doc["side"], "contact")
        self.assertEqual(doc["tunnels"]["open"], 2)
        self.assertEqual(doc["sessions"]["live"], 2)
        self.assertEqual(doc["sip"]["registrations"], 2)
        self.assertEqual(doc["sip"]["dialogs"], 2)
        self.assertEqual(doc["media"]["streams"], 2)
        self.assertGreater(doc["media"]["packets_out"], 10)
        code, body = yield self.get(self.agents[0], "/status")
        agent = json.loads(body)
        self.assertEqual((agent["side"], agent["tunnel"]["up"], agent["media"]["streams"]), ("agent", True, 1))
        self.assertEqual(agent["sessions"]["users"], 1)
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        yield wait_until(lambda: self.contact.media.streams == 0)
        code, body = yield self.get(self.contact, "/status")
        after = json.loads(body)["media"]
        self.assertEqual((after["streams"], after["relay_sockets"]), (0, 0))
        self.assertGreaterEqual(after["packets_out"], doc["media"]["packets_out"])
        code, body = yield self.get(self.contact, "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'spwm_sip_registrations{side="contact"} 2\n', body)
        self.assertIn(b'spwm_media_streams{side="contact"} 0\n', body)
        code, _ = yield self.get(self.contact, "/nothing")
        self.assertEqual(code, 404)
