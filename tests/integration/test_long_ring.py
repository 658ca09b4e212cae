"""
A call that rings for longer than the media timeout before it is answered
(no early media) keeps its media on both halves: the answer finds its
ports and channel, and RTP flows both ways.  A call whose INVITE nothing
answers ends on every half once its caller has given up (Timer B).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from spwm.media import manager
from spwm.sip import dialogs
from spwm.sip.agent_proxy import BYE_ANSWERED, BYE_SENT
from spwm.testing.phone import Phone, TransactionTimeout, tag_of
from tests.integration.test_resumption import DIGEST, _LoopbackPair
from tests.integration.test_tunnel_loopback import wait_until


class LongRingTests(_LoopbackPair):
    """
    Both halves with a 2 s media timeout (sweeps every second); bob's phone
    rings 4 s before it answers.
    """

    extra = ["--media-timeout", "2"]

    @defer.inlineCallbacks
    def registered(self, ring_seconds: float = 0.0) -> Any:
        """
        Alice's phone behind the first agent and bob's behind the second,
        both registered; bob's rings C{ring_seconds} before answering.
        """
        alice = Phone(reactor, "alice", "example.test", self.agents[0].config.sip_listen[0])
        bob = Phone(reactor, "bob", "example.test", self.agents[1].config.sip_listen[0], ring_seconds=ring_seconds)
        for phone in (alice, bob):
            phone.start()
            self.addCleanup(phone.stop)
        for phone, user in ((alice, "alice"), (bob, "bob")):
            response = yield phone.register(authorization=DIGEST.format(user=user))
            self.assertEqual(response.status, 200)
        return alice, bob

    @defer.inlineCallbacks
    def test_answer_after_the_media_timeout(self) -> Any:
        """
        The call rings twice the media timeout and is answered: RTP flows
        both ways, and the answered call's streams fall back to the media
        timeout once they go silent; with its media gone the call leg ends
        on every half without a BYE, and the late BYE still goes through.
        """
        answered: defer.Deferred[Any] = defer.Deferred()
        alice, bob = yield self.registered(ring_seconds=4.0)
        bob.on_incoming = lambda c: answered.called or answered.callback(c)
        started = reactor.seconds()
        a_call = yield alice.call("bob")
        b_call = yield answered
        yield b_call.established
        self.assertGreaterEqual(reactor.seconds() - started, 4.0)
        a_call.start_media()
        b_call.start_media()
        # 50 packets a second each way: 30 in either direction is media
        # through both halves (bounded, not timed: a busy machine is slower)
        yield wait_until(lambda: a_call.rx.unique > 30 and b_call.rx.unique > 30, timeout=10)
        a_call.stop_media()
        b_call.stop_media()
        # silent now: the media timeout releases the answered call's media
        yield wait_until(lambda: self.contact.media.streams == 0 and self.agents[0].media.streams == 0, timeout=10)
        # and with no media left the call legs end on every half, though
        # no BYE came: they count no more as calls
        halves = [self.contact, *self.agents]
        yield wait_until(lambda: all(half.media.calls == 0 for half in halves), timeout=10)
        self.assertEqual(self.contact.status.document()["calls"]["in_progress"], 0)
        # (the contact point relays both legs: alice's and bob's agent)
        reasons = [[c["reason"] for c in half.media.ended_calls()] for half in halves]
        self.assertEqual(reasons, [["media inactivity"] * 2, ["media inactivity"], ["media inactivity"]])
        # each agent ended the call for its phone with a BYE of its own:
        # in the far party's name, with the Reason, answered 200
        yield wait_until(lambda: a_call.ended.called and b_call.ended.called, timeout=10)
        (to_alice,), (to_bob,) = alice.byes, bob.byes
        for bye, call, cseq in ((to_alice, a_call, 1), (to_bob, b_call, a_call.cseq + 1)):
            self.assertEqual(bye.get("call-id"), call.call_id)
            self.assertEqual(tag_of(bye.get("to") or ""), call.local_tag)
            self.assertEqual(tag_of(bye.get("from") or ""), call.remote_tag)
            self.assertEqual(bye.cseq, (cseq, "BYE"))
            self.assertEqual(bye.get("reason"), 'SIP;cause=408;text="media inactivity"')
        self.assertEqual(
            [[c["bye_sent"] for c in half.media.cdrs] for half in halves], [[[], []], [["phone"]], [["phone"]]]
        )
        yield wait_until(lambda: all(a.sip_core.status()["events"].get(BYE_ANSWERED) == 1 for a in self.agents), timeout=10)
        self.assertEqual([a.sip_core.status()["events"][BYE_SENT] for a in self.agents], [1, 1])
        # nothing more: no second BYE, nothing forwarded
        self.assertEqual((alice.byes, bob.byes), ([to_alice], [to_bob]))
        self.assertEqual((alice.received.get("BYE"), bob.received.get("BYE")), (1, 1))

    @defer.inlineCallbacks
    def test_hung_up_call_gets_no_bye_of_ours(self) -> Any:
        """
        A call that its caller hangs up (its BYE ended it on every half)
        gets no BYE of the halves' own, also after the media timeout:
        only alice's reaches bob.
        """
        alice, bob = yield self.registered()
        answered: defer.Deferred[Any] = defer.Deferred()
        bob.on_incoming = lambda c: answered.called or answered.callback(c)
        a_call = yield alice.call("bob")
        yield answered
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        halves = [self.contact, *self.agents]
        yield wait_until(lambda: all(half.media.calls == 0 for half in halves), timeout=10)
        # past the media timeout (2 s) twice
        yield deferLater(reactor, 4.0, lambda: None)
        self.assertEqual((len(alice.byes), len(bob.byes)), (0, 1))
        self.assertIsNone(bob.byes[0].get("reason"))
        self.assertEqual([a.sip_core.status()["events"].get(BYE_SENT) for a in self.agents], [None, None])

    @defer.inlineCallbacks
    def test_invite_nobody_answers(self) -> Any:
        """
        Bob's phone is gone (registered, then switched off): alice's
        INVITE reaches nobody and no response comes back.  Once the caller
        has given up (Timer B; 2 s here instead of 32) the call's legs end
        on all three halves with the call record reason "no response",
        their ports free, though no final response or CANCEL ever came;
        alice's retransmissions make no media state again.
        """
        self.patch(manager, "NO_RESPONSE_TIMEOUT", 2.0)
        alice, bob = yield self.registered()
        yield bob.stop()
        halves = [self.contact, *self.agents]
        calling = alice.call("bob")
        yield wait_until(lambda: all(half.media.calls > 0 for half in halves), timeout=10)
        yield wait_until(lambda: all(half.media.calls == 0 for half in halves), timeout=10)
        reasons = [[c["reason"] for c in half.media.ended_calls()] for half in halves]
        self.assertEqual(reasons, [["no response"] * 2, ["no response"], ["no response"]])
        self.assertEqual([half.media.ports_in_use for half in halves], [0, 0, 0])
        # alice gives up herself (the test phone's own timeout, 8 s); her
        # retransmissions until then made no leg again
        yield self.assertFailure(calling, TransactionTimeout)
        self.assertEqual([half.media.calls for half in halves], [0, 0, 0])

    @defer.inlineCallbacks
    def test_answer_never_acknowledged(self) -> Any:
        """
        Bob answers, but alice's phone never sends the ACK (a caller that
        vanished, or ACKs lost on their way): once the ACK wait is over
        (2 s here instead of 32) the call's legs end on all three halves,
        though their audio flows, with the call record reason "answer
        never acknowledged", their ports free.
        """
        self.patch(dialogs, "ACK_WAIT", 2.0)
        alice, bob = yield self.registered()
        self.patch(alice, "_send_ack", lambda call, response: None)
        halves = [self.contact, *self.agents]
        a_call = yield alice.call("bob")  # answered (200)
        self.assertEqual([half.media.calls for half in halves], [2, 1, 1])
        # audio both ways: the media timeout (2 s here) ends nothing
        (b_call,) = bob.calls
        a_call.start_media()
        b_call.start_media()
        self.addCleanup(a_call.stop_media)
        self.addCleanup(b_call.stop_media)
        yield wait_until(lambda: all(half.media.calls == 0 for half in halves), timeout=10)
        reasons = [[c["reason"] for c in half.media.ended_calls()] for half in halves]
        self.assertEqual(
            reasons,
            [["answer never acknowledged"] * 2, ["answer never acknowledged"], ["answer never acknowledged"]],
        )
        self.assertEqual([half.media.ports_in_use for half in halves], [0, 0, 0])
