"""
The contact point's C{--max-calls} with real halves on loopback: a call
between two agents of one contact point is two call legs there; past the
limit a new call gets C{503 Service Unavailable (call limit reached)} while
the call in progress keeps its media, and once it ends calls go through
again.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from spwm.testing.phone import CallFailed
from tests.integration.test_resumption import _LoopbackPair
from tests.integration.test_tunnel_loopback import wait_until


class CallLimitTests(_LoopbackPair):
    """
    A contact point with C{--max-calls 2}.
    """

    contact_extra = ["--max-calls", "2"]

    @defer.inlineCallbacks
    def test_second_call_refused_first_keeps_media(self) -> Any:
        """
        alice calls bob (two legs at the contact point, one per agent):
        her second call is answered 503 (call limit reached) and counted,
        the first call's RTP goes on both ways; after its BYE a new call
        goes through.
        """
        alice, bob, a_call, b_call = yield self.call()
        self.assertEqual(self.contact.media.calls, 2)
        with self.assertRaises(CallFailed) as caught:
            yield alice.call("bob")
        self.assertIn("503 Service Unavailable (call limit reached)", str(caught.exception))
        self.assertEqual(self.contact.sip_core.core.counters["call limit reached"], 1)
        before = (a_call.rx.unique, b_call.rx.unique)
        yield wait_until(lambda: a_call.rx.unique - before[0] > 10 and b_call.rx.unique - before[1] > 10, timeout=10)
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        yield wait_until(lambda: self.contact.media.calls == 0)
        third = yield alice.call("bob")
        response = yield alice.hang_up(third)
        self.assertEqual(response.status, 200)
