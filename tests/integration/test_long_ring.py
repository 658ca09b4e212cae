"""
A call that rings for longer than the media timeout before it is answered
(no early media) keeps its media on both halves: the answer finds its
ports and channel, and RTP flows both ways.  A call whose INVITE nothing
answers ends on every half once its caller has given up (Timer B).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor

from spwm.media import manager
from spwm.sip import dialogs
from spwm.testing.phone import Phone, TransactionTimeout
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
        # no BYE came (yet): they count no more as calls
        halves = [self.contact, *self.agents]
        yield wait_until(lambda: all(half.media.calls == 0 for half in halves), timeout=10)
        self.assertEqual(self.contact.status.document()["calls"]["in_progress"], 0)
        # (the contact point relays both legs: alice's and bob's agent)
        reasons = [[c["reason"] for c in half.media.ended_calls()] for half in halves]
        self.assertEqual(reasons, [["media inactivity"] * 2, ["media inactivity"], ["media inactivity"]])
        # the BYE still goes through, and ends nothing twice
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        self.assertEqual([len(half.media.ended_calls()) for half in halves], [2, 1, 1])

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
