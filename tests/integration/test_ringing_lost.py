"""
A call lost with a tunnel while it rings, on loopback (the embedded
registrar, alice and bob behind two agents; the contact point's stop:
C{test_resumption.ContactStopTests}): the phone that rings gets a CANCEL of the halves' own (its
487 ACKed), the caller a 480, both with C{Reason: SIP;cause=503;text="tunnel
lost"}; a call answered, or cancelled by its caller, gets none of these.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor

from spwm.sip.ringing import CANCEL_ANSWERED, CANCEL_SENT, FINAL_SENT
from spwm.testing.phone import CallFailed, Phone
from tests.integration.test_resumption import DIGEST, WAIT, WINDOW_HALF, _LoopbackPair
from tests.integration.test_tunnel_loopback import wait_until

REASON = 'SIP;cause=503;text="tunnel lost"'

#: how long a phone that rings rings (longer than any test waits)
LONG_RING = 120.0


class _RingingBed(_LoopbackPair):
    """
    alice's agent stays away past the resumption window (1 s) while a call
    rings.
    """

    extra = ["--resume-window", "1"]

    #: whether the calls of a test offer SDP in their INVITE
    offer = True

    @defer.inlineCallbacks
    def registered(self) -> Any:
        """
        Alice's phone behind the first agent and bob's behind the second,
        registered; both ring L{LONG_RING} before answering.
        """
        phones = []
        for agent, user in zip(self.agents, ("alice", "bob")):
            phone = Phone(
                reactor, user, "example.test", agent.config.sip_listen[0], ring_seconds=LONG_RING,
                rings_without_offer=not self.offer,
            )  # fmt: skip
            phone.start()
            self.addCleanup(phone.stop)
            response = yield phone.register(authorization=DIGEST.format(user=user))
            self.assertEqual(response.status, 200)
            phones.append(phone)
        return phones

    @defer.inlineCallbacks
    def ringing(self, caller: Phone, callee: Phone, user: str) -> Any:
        """
        C{caller} calls C{user} (at C{callee}), until it rings there.

        @return: the caller's call (a Deferred, its failure caught) and the
            callee's L{Call}.
        """
        outcome = caller.call(user, offer=self.offer)
        outcome.addErrback(lambda f: f.value)
        yield wait_until(lambda: caller.received.get("180", 0) >= 1, timeout=WAIT)
        return outcome, callee.calls[-1]

    @defer.inlineCallbacks
    def away(self) -> Any:
        """
        alice's agent loses its tunnel and comes back only after the window
        (as in L{DormantResumptionTests}): its calls end as C{tunnel lost}
        on both halves.
        """
        agent1 = self.agents[0]
        agent1.tunnel_service.policy = lambda attempt: 6.0
        agent1.tunnel_service._retry.prompt = lambda at: False
        agent1.tunnel_service.tunnel.transport.abortConnection()
        yield wait_until(lambda: self.contact.resumption.dormant == 1, timeout=WAIT)

    @defer.inlineCallbacks
    def lost_while_ringing(self, alice_calls: bool) -> Any:
        """
        alice calls bob (C{alice_calls}) or bob alice; while it rings,
        alice's tunnel is lost (L{away}); the caller's call fails with 480.

        @return: alice, bob and the callee's L{Call}.
        """
        alice, bob = yield self.registered()
        caller, callee, user = (alice, bob, "bob") if alice_calls else (bob, alice, "alice")
        outcome, call = yield self.ringing(caller, callee, user)
        yield self.away()
        failed = yield outcome
        self.assertIsInstance(failed, CallFailed)
        self.assertEqual(str(failed), "INVITE answered 480 Temporarily Unavailable")
        yield wait_until(lambda: call.final_acks >= 1, timeout=WINDOW_HALF)
        return alice, bob, call

    def records(self, half: Any) -> list[tuple[str, list[str]]]:
        return sorted((c["reason"], c["bye_sent"]) for c in half.media.cdrs)



class RingingLostTests(_RingingBed):
    """
    Calls with SDP in their INVITE (a media stream each).
    """

    @defer.inlineCallbacks
    def test_caller_lost(self) -> Any:
        """
        alice's call rings at bob's phone when her tunnel is lost: her
        agent answers her phone 480 (her ACK stays there); the contact
        point CANCELs the INVITE toward bob (through his tunnel, with the
        Reason), and ACKs his 487; the call records say what went.
        """
        alice, bob, b_call = yield self.lost_while_ringing(alice_calls=True)
        (cancel,) = bob.cancels
        self.assertEqual((cancel.get("call-id"), cancel.get("reason")), (b_call.call_id, REASON))
        self.assertEqual(cancel.cseq, (1, "CANCEL"))
        self.assertEqual(b_call.ended.result, 487)
        self.assertEqual(self.records(self.agents[0]), [("tunnel lost", ["phone (480)"])])
        self.assertIn(("tunnel lost", ["far party (CANCEL)"]), self.records(self.contact))
        events = self.contact.sip_core.core.status()["events"]
        yield wait_until(lambda: events.get(CANCEL_ANSWERED) == 1)
        self.assertEqual(events[CANCEL_SENT], 1)
        # alice's ACK of her 480 went no further: bob got none
        self.assertEqual(bob.received.get("ACK", 0), b_call.final_acks)
        self.assertEqual((alice.cancels, bob.byes, alice.byes), ([], [], []))

    @defer.inlineCallbacks
    def test_callee_lost(self) -> Any:
        """
        bob's call rings at alice's phone when her tunnel is lost: her
        agent CANCELs it (the Reason) and ACKs her 487; the contact point
        answers bob 480 through his tunnel.
        """
        alice, bob, a_call = yield self.lost_while_ringing(alice_calls=False)
        (cancel,) = alice.cancels
        self.assertEqual((cancel.get("call-id"), cancel.get("reason")), (a_call.call_id, REASON))
        self.assertEqual(self.records(self.agents[0]), [("tunnel lost", ["phone (CANCEL)"])])
        self.assertIn(("tunnel lost", ["far party (480)"]), self.records(self.contact))
        self.assertEqual(self.contact.sip_core.core.status()["events"][FINAL_SENT], 1)
        self.assertEqual((bob.cancels, bob.byes, alice.byes), ([], [], []))

    @defer.inlineCallbacks
    def test_answered_or_cancelled_gets_none(self) -> Any:
        """
        A call answered (it gets the BYEs) and one its caller CANCELled
        (answered 487) get no CANCEL or 480 of the halves' own when the
        tunnel is lost later.
        """
        alice, bob = yield self.registered()
        outcome, b_call = yield self.ringing(alice, bob, "bob")
        yield alice.cancel(alice.calls[-1])
        failed = yield outcome
        self.assertEqual(str(failed), "INVITE answered 487 Request Terminated")
        bob.ring_seconds = 0
        answered: defer.Deferred[Any] = defer.Deferred()
        bob.on_incoming = lambda c: answered.called or answered.callback(c)
        a_call = yield alice.call("bob")
        b_call = yield answered
        yield b_call.established
        yield self.away()
        yield wait_until(lambda: a_call.ended.called and b_call.ended.called, timeout=WAIT)
        self.assertEqual([c.get("reason") for c in bob.cancels], [None])
        self.assertEqual((alice.received.get("480"), alice.cancels), (None, []))
        for half in (self.contact, self.agents[0]):
            told = [whom for _, bye_sent in self.records(half) for whom in bye_sent]
            self.assertEqual([whom for whom in told if "(" in whom], [])


class LateOfferRingingLostTests(_RingingBed):
    """
    The same with INVITEs without SDP (a late offer): such a call rings
    with no media stream, so no half's media ends a leg for it; the halves
    end it when the session is lost for good (the SIP cores'
    C{ringing_lost}), with no call record.
    """

    offer = False

    def records(self, half: Any) -> list[tuple[str, list[str]]]:
        # no media stream, no call record: what was sent is in the counters
        return []

    @defer.inlineCallbacks
    def test_caller_lost(self) -> Any:
        """
        alice's late-offer call rings at bob when her tunnel is lost: her
        agent answers her 480; the contact point CANCELs toward bob (the
        Reason) and ACKs his 487.
        """
        alice, bob, b_call = yield self.lost_while_ringing(alice_calls=True)
        (cancel,) = bob.cancels
        self.assertEqual((cancel.get("call-id"), cancel.get("reason")), (b_call.call_id, REASON))
        self.assertEqual(b_call.ended.result, 487)
        events = self.contact.sip_core.core.status()["events"]
        yield wait_until(lambda: events.get(CANCEL_ANSWERED) == 1)
        self.assertEqual(self.agents[0].sip_core.core.status()["events"][FINAL_SENT], 1)

    @defer.inlineCallbacks
    def test_callee_lost(self) -> Any:
        """
        bob's late-offer call rings at alice when her tunnel is lost: her
        agent CANCELs it; the contact point answers bob 480.
        """
        alice, bob, a_call = yield self.lost_while_ringing(alice_calls=False)
        (cancel,) = alice.cancels
        self.assertEqual((cancel.get("call-id"), cancel.get("reason")), (a_call.call_id, REASON))
        self.assertEqual(self.contact.sip_core.core.status()["events"][FINAL_SENT], 1)
        self.assertEqual(self.agents[0].sip_core.core.status()["events"][CANCEL_SENT], 1)
