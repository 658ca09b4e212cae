"""
The embedding API (C{spwm.embed}, C{docs/embedding.md}) on loopback: a
contact point built from a L{ContactConfig}, and two copies of
C{examples/embedded_agent.py} (a SIP application with its agent in its own
service tree) that register and call each other through it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from spwm.embed import ConfigError, ContactConfig, build_contact
from spwm.testing.phone import call_with_media
from spwm.testing.ports import free_port
from tests.integration.test_tunnel_loopback import wait_until

_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)

import embedded_agent  # noqa: E402


class EmbeddingTests(TestCase):
    """
    Another Twisted program builds a half from a configuration object and
    runs its service in its own tree.
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        config = ContactConfig.from_options(
            {
                "plaintext": True,
                "listen": "tcp:0:interface=127.0.0.1",
                "sip-address": f"127.0.0.1:{free_port()}",
                "media-address": "127.0.0.1",
                "media-ports": "43000-43099",
                "media-allow": ["127.0.0.0/8"],
                "allow-unregistered": True,
                "drain-time": 0.2,
                "status-interval": 0,
            }
        )
        self.contact = build_contact(config, reactor)
        self.contact.service.startService()
        self.addCleanup(self.contact.service.stopService)
        listening = yield self.contact.listener.listening
        self.contact_address = f"127.0.0.1:{listening.getHost().port}"

    def application(self, name: str, media: str) -> Any:
        config = embedded_agent.agent_config(
            self.contact_address, name, plaintext=True, **{"media-ports": media, "resume-window": 0, "tunnel-connections": 1}
        )
        top, agent, phone = embedded_agent.application(reactor, config, name)
        top.startService()
        self.addCleanup(top.stopService)
        return agent, phone

    @defer.inlineCallbacks
    def test_register_and_call(self) -> Any:
        """
        Two applications with their agents in-process register through one
        contact point and call each other; media flows through the tunnels.
        """
        alice_agent, alice = self.application("alice", "43100-43199")
        bob_agent, bob = self.application("bob", "43200-43299")
        self.assertIn(alice_agent.service, list(alice_agent.service.parent))
        yield embedded_agent.tunnel_up(reactor, alice_agent)
        yield embedded_agent.tunnel_up(reactor, bob_agent)
        self.assertEqual(len(self.contact.factory.tunnels), 2)
        for phone in (alice, bob):
            response = yield phone.register()
            self.assertEqual(response.status, 200)
        call, b_call = yield call_with_media(alice, bob)
        yield wait_until(lambda: call.rx.unique >= 10 and b_call.rx.unique >= 10, timeout=10)
        response = yield alice.hang_up(call)
        self.assertEqual(response.status, 200)
        self.assertEqual(self.contact.status.document()["tunnels"]["open"], 2)

    def test_bad_configuration(self) -> None:
        """
        A bad value is a L{ConfigError} naming the key, before anything is
        built.
        """
        with self.assertRaises(ConfigError) as caught:
            embedded_agent.agent_config("no-port-here", "carol")
        self.assertEqual(caught.exception.key, "contact")
