"""
Resumption on loopback: a live call's media goes on after the agent's tunnel
breaks and the agent reconnects, without new SIP and without a new REGISTER;
a forged resumption gets nothing.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from spwm.tap import agent, contact
from spwm.tap.assembly import build_agent, build_contact
from spwm.testing.certs import TestCA
from spwm.sip.byes import BYE_ANSWERED, BYE_SENT
from spwm.testing.phone import CallFailed, Phone, tag_of
from tests import skip_if_compiled
from tests.integration.test_sip_loopback import free_port
from tests.integration.test_tunnel_loopback import wait_until

#: RTP packets each way that show the media flows again (0.6 s of it at
#: 50 a second); waited for, at most L{WAIT} seconds: a busy reactor sends
#: fewer than 50 a second (the test phone skips the turns it missed).
FLOWING = 30

#: Longest wait for anything these tests wait for (a loaded host is
#: slow, not wrong; what is broken still fails).
WAIT = 30.0

#: Half the resumption window of these tests (10 s): what happens "at
#: once" rather than at the window's end happens within it, also on a
#: busy host.
WINDOW_HALF = 5.0


DIGEST = 'Digest username="{user}", realm="example.test", nonce="n0nce", uri="sip:example.test", response="0123456789abcdef0123456789abcdef", cnonce="c1", nc=00000001, qop=auth'


class _LoopbackPair(TestCase):
    """
    A contact point with the embedded registrar, two agents, two phones.
    """

    timeout = 180
    #: more options for every half
    extra: list[str] = []
    #: more options for the contact point
    contact_extra: list[str] = []
    # the agents' own options: one connection each (resumption is what
    # happens when a session's last connection is lost)
    agent_extra: list[str] = ["--tunnel-connections", "1"]
    #: the phones' REGISTER credentials (C{None}: none, as for a
    #: registrar that does not authenticate)
    digest: str | None = DIGEST

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        ca = TestCA(self.mktemp())
        cert = ca.issue(["contact.spwm.test"], "contact")
        port = free_port()
        self.contact_argv = [
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--cert", cert.cert, "--key", cert.key,
            "--sip-address", f"127.0.0.1:{free_port()}", "--media-ports", "42000-42099",
            "--media-allow", "127.0.0.0/8", "--drain-time", "0.2", "--resume-window", "10",
            *self.extra, *self.contact_extra, *self.contact_options(ca),
        ]
        self.contact = yield self.start_contact()
        self.agents = []
        for name, media in (("a1", "42100-42199"), ("a2", "42200-42299")):
            options = agent.Options()
            options.parseOptions(
                ["--contact", f"127.0.0.1:{port}", "--server-name", "contact.spwm.test", "--ca", ca.ca_file,
                 "--agent-id", name, "--sip-listen", f"127.0.0.1:{free_port()}", "--media-ports", media,
                 "--reconnect-max", "0.3", "--resume-window", "10", *self.extra, *self.agent_extra,
                 *self.agent_options(name, ca)]
            )
            service = build_agent(options.config, reactor)
            service.service.startService()
            self.addCleanup(service.service.stopService)
            self.agents.append(service)
        yield wait_until(lambda: all(a.tunnel_service.tunnel is not None for a in self.agents))

    def contact_options(self, ca: TestCA) -> list[str]:
        """
        More options for the contact point, made with the test CA.
        """
        return []

    def agent_options(self, name: str, ca: TestCA) -> list[str]:
        """
        More options for agent C{name}, made with the test CA.
        """
        return []

    @defer.inlineCallbacks
    def call(self) -> Any:
        answered: defer.Deferred[Any] = defer.Deferred()
        alice = Phone(reactor, "alice", "example.test", self.agents[0].config.sip_listen[0])
        bob = Phone(reactor, "bob", "example.test", self.agents[1].config.sip_listen[0])
        bob.on_incoming = lambda c: answered.called or answered.callback(c)
        for phone in (alice, bob):
            phone.start()
            self.addCleanup(phone.stop)
        digest = self.digest
        response = yield alice.register(authorization=digest and digest.format(user="alice"))
        self.assertEqual(response.status, 200)
        response = yield bob.register(authorization=digest and digest.format(user="bob"))
        self.assertEqual(response.status, 200)
        a_call = yield alice.call("bob")
        b_call = yield answered
        yield b_call.established
        a_call.start_media()
        b_call.start_media()
        return alice, bob, a_call, b_call

    @defer.inlineCallbacks
    def calls_both_ways(self, alice: Any, bob: Any) -> Any:
        """
        bob calls alice (she answers), then alice calls bob; both calls
        are hung up with 200.
        """
        answered: defer.Deferred[Any] = defer.Deferred()
        alice.on_incoming = lambda c: answered.called or answered.callback(c)
        second = yield bob.call("alice")
        yield answered
        response = yield bob.hang_up(second)
        self.assertEqual(response.status, 200)
        third = yield alice.call("bob")
        response = yield alice.hang_up(third)
        self.assertEqual(response.status, 200)

    def cut_all(self, agent: Any) -> None:
        """
        Reset every connection of C{agent}'s session at once.
        """
        front = agent.paths.front if agent.paths is not None else None
        if front is not None:
            for path in list(front.paths):
                path.transport.abortConnection()
        else:
            agent.tunnel_service.tunnel.transport.abortConnection()

    @defer.inlineCallbacks
    def flowing(self, *calls: Any, since: tuple[int, ...] | None = None) -> Any:
        """
        Wait (at most L{WAIT}) until each of C{calls} has received more than
        L{FLOWING} RTP packets since the counts C{since} (none: since its
        start), then assert it.
        """
        start = since or (0,) * len(calls)
        yield wait_until(lambda: all(c.rx.unique - n > FLOWING for c, n in zip(calls, start)), WAIT).addErrback(
            lambda f: None
        )
        for call, n in zip(calls, start):
            self.assertGreater(call.rx.unique - n, FLOWING, f"call {call.call_id}")

    @defer.inlineCallbacks
    def cut_and_resume(self, alice: Any, bob: Any, a_call: Any, b_call: Any) -> Any:
        """
        Cut the first agent's tunnel during a call: its agent resumes the
        session on a new connection, RTP flows both ways again (L{FLOWING}
        packets each way after the resumption), and no SIP crossed the
        contact point for it.
        """
        agent1 = self.agents[0]
        # the session's tunnel, whichever connection carries it: on a busy
        # host the path keeper's attempt may win the resumption's race
        # (a lossy link, by the pings' timeouts), and the tunnel service's
        # own connection attaches beside it later
        old = agent1.handle.current
        session = old.session_id
        yield task.deferLater(reactor, 0.5, lambda: None)
        sip_before = dict(alice.sent), dict(bob.received)
        self.cut_all(agent1)
        yield wait_until(lambda: agent1.resumption.resumed == 1, timeout=WAIT)
        new = agent1.handle.current
        self.assertIsNotNone(new)
        self.assertIsNot(new, old)
        self.assertEqual(new.session_id, session)
        resumed_at = (a_call.rx.unique, b_call.rx.unique)
        yield self.flowing(a_call, b_call, since=resumed_at)
        self.assertEqual((dict(alice.sent), dict(bob.received)), sip_before)
        self.assertEqual(self.contact.resumption.resumed, 1)
        # in TLS, the proofs went in the hello (no challenge answered)
        self.assertEqual((agent1.resumption.bound_taken, self.contact.resumption.resumed_bound), (1, 1))

    @defer.inlineCallbacks
    def start_contact(self) -> Any:
        """
        Start a contact point with C{contact_argv} (stopped at cleanup if
        still running).
        """
        options = contact.Options()
        options.parseOptions(self.contact_argv)
        service = build_contact(options.config, reactor)
        service.service.startService()
        self.addCleanup(lambda: service.service.stopService() if service.service.running else None)
        yield service.listener.listening
        return service


class ResumptionTests(_LoopbackPair):
    """
    Resumption within the window.
    """

    @defer.inlineCallbacks
    def test_media_resumes_after_reconnect(self) -> Any:
        """
        Both halves derived the same key for alice; when alice's tunnel is
        cut, her agent reconnects and resumes; RTP flows both ways again
        on the new tunnel, and no SIP crossed the contact point for it.
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        old = agent1.tunnel_service.tunnel
        session = old.session_id
        self.assertEqual(set(agent1.resumption.keys), {"alice@example.test"})
        self.assertEqual(agent1.resumption.keys, self.contact.resumption.keys[session])
        yield self.cut_and_resume(alice, bob, a_call, b_call)
        # the session is still registered and usable: hang up cleanly
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        yield wait_until(lambda: self.contact.media.open_sockets == 0 and agent1.media.open_sockets == 0)

    @defer.inlineCallbacks
    def test_forged_resumption_refused(self) -> Any:
        """
        A resume with a wrong proof is refused and logged; the suspended
        session stays suspended, nothing is attached.
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        session = agent1.tunnel_service.tunnel.session_id
        # Spoil the agent's key: its proof will be wrong.
        agent1.resumption.keys["alice@example.test"] = b"\0" * 32
        agent1.tunnel_service.tunnel.transport.abortConnection()
        yield wait_until(lambda: self.contact.resumption.refused == 1, timeout=WAIT)
        self.assertEqual(self.contact.resumption.resumed, 0)
        # (the refusal follows the welcome at once, the proofs being in
        # the hello: the agent may not have read either yet)
        yield wait_until(lambda: agent1.tunnel_service.tunnel is not None, timeout=WAIT)
        new = agent1.tunnel_service.tunnel
        self.assertNotEqual(new.session_id, session)
        # The agent gave up its old session at once.
        yield wait_until(lambda: agent1.media.open_sockets == 0)
        a_call.stop_media()
        b_call.stop_media()


class KeylessResumptionTests(_LoopbackPair):
    """
    Resumption of a session whose registrations carried no digest
    credentials (a registrar that does not authenticate: here the
    embedded one), by the session's own key.
    """

    digest = None

    @defer.inlineCallbacks
    def test_media_resumes_after_reconnect(self) -> Any:
        """
        No per-user key, but both halves made the same session key; when
        alice's tunnel is cut her agent resumes the session with it: RTP
        flows both ways again, no SIP crossed the contact
        point for it, and both phones can still call each other (their
        registrations went on with the session).
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        old = agent1.tunnel_service.tunnel
        session = old.session_id
        self.assertEqual((agent1.resumption.keys, self.contact.resumption.keys.get(session)), ({}, None))
        own = agent1.resumption.session.session_key
        self.assertIsNotNone(own)
        self.assertEqual(own, self.contact.resumption.sessions[session].session_key)
        yield self.cut_and_resume(alice, bob, a_call, b_call)
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        yield self.calls_both_ways(alice, bob)
        yield wait_until(lambda: self.contact.media.open_sockets == 0 and agent1.media.open_sockets == 0)

    @defer.inlineCallbacks
    def test_hang_up_during_the_cut(self) -> Any:
        """
        A BYE sent the moment the tunnel is cut waits for the resumption
        (it is not answered 503): the call ends with 200 on both sides,
        and both halves release its media at once (not at the media
        timeout).
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        self.cut_all(agent1)
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        self.assertEqual(agent1.resumption.resumed, 1)
        self.assertEqual(agent1.handle.counters["refused_no_tunnel"], 0)
        yield wait_until(
            lambda: (self.contact.media.calls, agent1.media.calls, agent1.media.open_sockets) == (0, 0, 0), timeout=WAIT
        )

    @defer.inlineCallbacks
    def test_hang_up_before_the_answer(self) -> Any:
        """
        A BYE the phone sends once the new connection is up, after the
        resumption's offer but before the contact point's answer reached
        the agent, ends the call's media on the agent at once, as the
        resumed session's (not as the new connection's fresh one), and
        waits on the agent for the answer (the session's SIP is numbered:
        sent before the answer it would carry the fresh session's numbers
        and be lost if this connection broke too); it goes then, and the
        call ends with 200.
        """
        from spwm.security import resume

        skip_if_compiled(resume, "holds the contact point's answer back by replacing a method of the resumption")
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        resumption = agent1.resumption
        answer = resumption.control_received
        # the contact point's control messages (its answer) are held on
        # their way to the agent until the test lets them go
        waiting: list[tuple[Any, Any]] = []
        resumption.control_received = lambda tunnel, message: waiting.append((tunnel, message))
        # the call's SIP acknowledged (with it in flight at the cut the
        # BYE would wait behind it for the answer: test_paths)
        order = getattr(agent1.handle.current, "sip_order", None)
        yield wait_until(lambda: order is None or order.kept == 0, timeout=WAIT)
        self.cut_all(agent1)
        yield wait_until(lambda: agent1.handle.current is not None and resumption.resuming, timeout=WAIT)
        a_call.stop_media()
        b_call.stop_media()
        held = agent1.handle.counters["held_resuming"]
        bye = alice.hang_up(a_call)
        yield wait_until(lambda: agent1.handle.counters["held_resuming"] > held, timeout=WAIT)
        self.assertEqual((resumption.resumed, agent1.media.calls, agent1.media.open_sockets), (0, 0, 0))
        # the answer reaches the agent now
        resumption.control_received = answer
        for tunnel, message in waiting:
            answer(tunnel, message)
        response = yield bye
        self.assertEqual((response.status, resumption.resumed), (200, 1))
        yield wait_until(lambda: self.contact.media.calls == 0, timeout=WAIT)

    @defer.inlineCallbacks
    def test_far_end_hangs_up_during_the_cut(self) -> Any:
        """
        The far end's BYE that reaches the contact point while alice's
        session waits for its agent waits with it (not dropped): alice
        answers it on the resumed session, at once.
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        a_call.stop_media()
        b_call.stop_media()
        # bob sends his BYE once: no retransmission (the first would be
        # at 0.5 s) may make up for one the contact point dropped
        bob._retransmit = lambda key, interval: None
        byes = bob.sent.get("BYE", 0)
        self.cut_all(agent1)
        response = yield bob.hang_up(b_call).addTimeout(WAIT, reactor)
        self.assertEqual(response.status, 200)
        self.assertEqual(bob.sent["BYE"], byes + 1)
        self.assertGreaterEqual(self.contact.runner.held_counts["resume_held_sent"], 1)
        yield wait_until(
            lambda: (self.contact.media.calls, agent1.media.calls, agent1.media.open_sockets) == (0, 0, 0), timeout=WAIT
        )

    @defer.inlineCallbacks
    def test_call_during_the_cut(self) -> Any:
        """
        A call placed the moment the tunnel is cut waits for the
        resumption and is set up on the resumed session, with RTP both
        ways.
        """
        alice, bob, a_call, b_call = yield self.call()
        a_call.stop_media()
        b_call.stop_media()
        response = yield alice.hang_up(a_call)
        self.assertEqual(response.status, 200)
        agent1 = self.agents[0]
        answered: defer.Deferred[Any] = defer.Deferred()
        bob.on_incoming = lambda c: answered.called or answered.callback(c)
        self.cut_all(agent1)
        second = yield alice.call("bob")
        incoming = yield answered
        yield incoming.established
        second.start_media()
        incoming.start_media()
        yield self.flowing(second, incoming)
        self.assertEqual(agent1.resumption.resumed, 1)
        second.stop_media()
        incoming.stop_media()
        response = yield alice.hang_up(second)
        self.assertEqual(response.status, 200)
        yield wait_until(
            lambda: (self.contact.media.calls, agent1.media.calls, agent1.media.open_sockets) == (0, 0, 0), timeout=WAIT
        )

    @defer.inlineCallbacks
    def test_forged_resumption_refused(self) -> Any:
        """
        A resume with a wrong session proof is refused and logged; the
        agent goes on with a fresh session (and a session key of its own).
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        session = agent1.tunnel_service.tunnel.session_id
        agent1.resumption.session.session_key = b"\0" * 32
        self.cut_all(agent1)
        yield wait_until(lambda: self.contact.resumption.refused == 1, timeout=WAIT)
        self.assertEqual(self.contact.resumption.resumed, 0)
        # (the refusal follows the welcome at once, the proofs being in
        # the hello: the agent may not have read either yet)
        yield wait_until(lambda: agent1.tunnel_service.tunnel is not None, timeout=WAIT)
        new = agent1.tunnel_service.tunnel
        self.assertNotEqual(new.session_id, session)
        yield wait_until(lambda: agent1.media.open_sockets == 0)
        self.assertEqual(
            agent1.resumption.session.session_key, self.contact.resumption.sessions[new.session_id].session_key
        )
        a_call.stop_media()
        b_call.stop_media()


class KeylessPathsResumptionTests(KeylessResumptionTests):
    """
    The same with the agents' default connections (C{auto}: two), every
    one of them cut at once.
    """

    agent_extra: list[str] = []


class CipheredResumptionTests(ResumptionTests):
    """
    The same with per-user ciphering on every half: a registered user's
    SIP and media frames are sealed with the user's key, also after the
    resumption.
    """

    extra = ["--user-ciphering"]

    @defer.inlineCallbacks
    def test_media_resumes_after_reconnect(self) -> Any:
        """
        As without ciphering, and the resumed tunnel seals alice's media:
        her channels have sealing contexts on both ends and nothing was
        refused.
        """
        yield ResumptionTests.test_media_resumes_after_reconnect(self)

    @defer.inlineCallbacks
    def test_call_media_is_sealed(self) -> Any:
        """
        During a call the media channels of both users are sealed on both
        ends of their tunnels, and media flows.
        """
        alice, bob, a_call, b_call = yield self.call()
        yield wait_until(lambda: a_call.rx.unique > 10 and b_call.rx.unique > 10, WAIT)
        for service in self.agents:
            tunnel = service.tunnel_service.tunnel
            self.assertIsNotNone(tunnel.cipher)
            self.assertTrue(tunnel.cipher._channels)
            self.assertEqual(tunnel.cipher.refused, 0)
        for tunnel in self.contact.factory.tunnels:
            self.assertTrue(tunnel.cipher._channels)
            self.assertEqual(tunnel.cipher.refused, 0)
        self.assertGreater(a_call.rx.unique, 10)
        self.assertGreater(b_call.rx.unique, 10)
        a_call.stop_media()
        b_call.stop_media()


class DormantResumptionTests(_LoopbackPair):
    """
    An agent that stays away for longer than the resumption window.
    """

    extra = ["--resume-window", "1"]

    @defer.inlineCallbacks
    def test_registrations_resumed_after_window(self) -> Any:
        """
        alice's agent comes back only after the window: her call's media is
        released on both halves at the window's end, and the call ended
        for both phones (each gets a BYE), her registration is
        kept (dormant) on the contact point, and the new connection resumes
        it: bob reaches her with a new call and she calls him, without her
        registering again and without C{430} or C{403}.
        """
        alice, bob, a_call, b_call = yield self.call()
        agent1 = self.agents[0]
        old = agent1.tunnel_service.tunnel
        session = old.session_id
        before = self.contact.media.open_sockets
        registers = alice.sent.get("REGISTER")
        # Keep the agent away for longer than the window (its tunnel is
        # young: without the prompt attempts a young tunnel may make): 6 s
        # against the window's 1 s, so that the contact point's timer,
        # late on a busy host, still runs out first
        agent1.tunnel_service.policy = lambda attempt: 6.0
        agent1.tunnel_service._retry.prompt = lambda at: False
        old.transport.abortConnection()
        yield wait_until(lambda: self.contact.resumption.dormant == 1, timeout=WAIT)
        self.assertTrue(agent1.resumption.dormant)
        self.assertEqual(agent1.media.open_sockets, 0)
        # alice's leg's sockets, and bob's: the contact point ended the
        # call for him with a BYE of its own (through his tunnel), as her
        # agent did for her
        self.assertEqual(self.contact.media.open_sockets, before - 4)
        yield wait_until(lambda: a_call.ended.called and b_call.ended.called, timeout=WAIT)
        self.assertEqual(
            [b.get("reason") for b in alice.byes + bob.byes], ['SIP;cause=503;text="tunnel lost"'] * 2
        )
        self.assertEqual(
            [r.aor for r in self.contact.sip_core.registrations(session)], ["sip:alice@example.test"]
        )
        yield wait_until(lambda: agent1.resumption.resumed == 1, timeout=WAIT)
        # (the session's tunnel: the path keeper's attempt may have won)
        self.assertEqual(agent1.handle.current.session_id, session)
        self.assertEqual((self.contact.resumption.dormant, agent1.resumption.dormant), (0, False))
        a_call.stop_media()
        b_call.stop_media()
        yield self.calls_both_ways(alice, bob)
        self.assertEqual(alice.sent.get("REGISTER"), registers)


class CipheredDormantResumptionTests(DormantResumptionTests):
    """
    The same with per-user ciphering: the resumed registration's flow is
    sealed again with alice's key on both ends.
    """

    extra = ["--resume-window", "1", "--user-ciphering"]


class AgentStopTests(_LoopbackPair):
    """
    An agent that stops (a restart, an upgrade) says so: the contact
    point releases its session at once instead of keeping it for the
    window (10 s here).
    """

    #: the agent's connections when it stops
    expected_connections = 1

    def connections(self, agent: Any) -> int:
        front = agent.paths.front if agent.paths is not None else None
        return 1 if front is None else len(front.paths)

    @defer.inlineCallbacks
    def test_callers_answered_at_once(self) -> Any:
        """
        alice's agent stops during a call: at once the contact point
        releases the call's media and keeps her registration dormant, and
        bob's call to her is answered C{480} (the embedded registrar's
        answer for a dormant session) within a second, not after the
        window.
        """
        alice, bob, a_call, b_call = yield self.call()
        a_call.stop_media()
        b_call.stop_media()
        agent1 = self.agents[0]
        session = agent1.tunnel_service.tunnel.session_id
        yield wait_until(lambda: self.connections(agent1) == self.expected_connections)
        before = self.contact.media.open_sockets
        yield agent1.service.stopService()
        # at once: well before the window (10 s) would have ended
        yield wait_until(lambda: self.contact.resumption.dormant == 1, timeout=WINDOW_HALF)
        self.assertEqual(self.contact.resumption.status()["suspended"], 0)
        self.assertEqual(
            [r.aor for r in self.contact.sip_core.registrations(session)], ["sip:alice@example.test"]
        )
        # alice's leg of the call, and bob's, which the contact point's
        # BYE ended: their relay sockets
        self.assertEqual(self.contact.media.open_sockets, before - 4)
        started = reactor.seconds()
        with self.assertRaises(CallFailed) as failed:
            yield bob.call("alice")
        self.assertEqual(str(failed.exception), "INVITE answered 480 Temporarily Unavailable")
        # not after the window: at once (a tenth of a second on a quiet host)
        self.assertLess(reactor.seconds() - started, WINDOW_HALF)


    @defer.inlineCallbacks
    def stop_during_call(self) -> Any:
        """
        alice calls bob; alice's agent stops once it has its connections.

        @return: C{self.call()}'s phones and calls.
        """
        phones_and_calls = yield self.call()
        agent1 = self.agents[0]
        yield wait_until(lambda: self.connections(agent1) == self.expected_connections)
        yield agent1.service.stopService()
        return phones_and_calls

    @defer.inlineCallbacks
    def one_bye(self, phone: Any, call: Any, other: Any) -> Any:
        """
        C{call} of C{phone} ends with one BYE, in the name of the party of
        C{other} (the call's tags), with the C{tunnel lost} Reason.

        @return: the BYE.
        """
        yield wait_until(lambda: call.ended.called, timeout=WINDOW_HALF)
        (bye,) = phone.byes
        self.assertEqual(bye.get("call-id"), call.call_id)
        self.assertEqual((tag_of(bye.get("from") or ""), tag_of(bye.get("to") or "")), (other.local_tag, call.local_tag))
        self.assertEqual(bye.get("reason"), 'SIP;cause=503;text="tunnel lost"')
        return bye

    @defer.inlineCallbacks
    def test_far_party_told(self) -> Any:
        """
        alice's agent stops during a call: the contact point, which ends
        her leg's media at once (C{tunnel lost}), ends the call for bob
        with a BYE of its own in alice's name, through bob's tunnel (his
        agent passes it on as any BYE), with the Reason; bob's answer
        stays at the contact point; bob's leg ends as by any BYE, and
        the call record of alice's leg says that a BYE went.
        """
        alice, bob, a_call, b_call = yield self.stop_during_call()
        bye = yield self.one_bye(bob, b_call, a_call)
        self.assertEqual(bye.cseq, (a_call.cseq + 1, "BYE"))
        events = self.contact.sip_core.core.status()["events"]
        yield wait_until(lambda: events.get(BYE_ANSWERED) == 1)
        self.assertEqual(events[BYE_SENT], 1)
        records = {c["session"]: (c["reason"], c["bye_sent"]) for c in self.contact.media.cdrs}
        self.assertEqual(sorted(records.values()), [("dialog ended", []), ("tunnel lost", ["far party"])])
        self.assertEqual([c["reason"] for c in self.agents[1].media.cdrs], ["dialog ended"])
        # bob's phone sent nothing to alice: no second BYE either way
        self.assertEqual((bob.received.get("BYE"), alice.received.get("BYE", 0) <= 1), (1, True))

    @defer.inlineCallbacks
    def test_phone_told(self) -> Any:
        """
        alice's agent stops during a call: before its SIP sockets close,
        it ends the call for alice's phone with a BYE of its own in bob's
        name (tags, the Reason), once; its call record says so.
        """
        alice, bob, a_call, b_call = yield self.stop_during_call()
        yield self.one_bye(alice, a_call, b_call)
        self.assertEqual([(c["reason"], c["bye_sent"]) for c in self.agents[0].media.cdrs], [("tunnel lost", ["phone"])])


class ContactStopTests(_LoopbackPair):
    """
    The contact point stops (its drain 0.2 s) during a call from a phone on
    its network side (carol, no agent: the embedded registrar's network)
    to alice behind an agent.
    """

    @defer.inlineCallbacks
    def alice_and_carol(self, on_incoming: Any, ring_seconds: float = 0.0) -> Any:
        """
        alice registered behind the agent (her incoming calls to
        C{on_incoming}, rung C{ring_seconds} before her answer) and carol
        on the contact point's network side.

        @return: carol's phone.
        """
        alice = Phone(reactor, "alice", "example.test", self.agents[0].config.sip_listen[0], ring_seconds=ring_seconds)
        alice.on_incoming = on_incoming
        carol = Phone(reactor, "carol", "example.test", self.contact.config.sip_address)
        for phone in (alice, carol):
            phone.start()
            self.addCleanup(phone.stop)
        response = yield alice.register(authorization=DIGEST.format(user="alice"))
        self.assertEqual(response.status, 200)
        return carol

    @defer.inlineCallbacks
    def test_network_party_told(self) -> Any:
        """
        The call's leg ends as its tunnel goes (C{tunnel lost}) while the
        contact point's SIP socket is still open (it closes after the
        drain): carol gets a BYE in alice's name (tags, CSeq 1: alice sent
        no request, the Reason), the call record says so.
        """
        answered: defer.Deferred[Any] = defer.Deferred()
        carol = yield self.alice_and_carol(lambda c: answered.called or answered.callback(c))
        c_call = yield carol.call("alice")
        a_call = yield answered
        yield self.contact.service.stopService()
        yield wait_until(lambda: c_call.ended.called, timeout=WINDOW_HALF)
        (bye,) = carol.byes
        self.assertEqual(bye.get("call-id"), c_call.call_id)
        self.assertEqual((tag_of(bye.get("from") or ""), tag_of(bye.get("to") or "")), (a_call.local_tag, c_call.local_tag))
        self.assertEqual(bye.cseq, (1, "BYE"))
        self.assertEqual(bye.get("reason"), 'SIP;cause=503;text="tunnel lost"')
        self.assertEqual(
            [(c["reason"], c["bye_sent"]) for c in self.contact.media.cdrs], [("tunnel lost", ["far party"])]
        )

    @defer.inlineCallbacks
    def test_ringing_network_caller_told(self) -> Any:
        """
        A call from carol that still rings at alice's phone: carol gets
        the contact point's 480 before its SIP socket closes; the call
        record says so (C{tests.integration.test_ringing_lost}).
        """
        carol = yield self.alice_and_carol(lambda c: None, ring_seconds=120.0)
        outcome = carol.call("alice")
        outcome.addErrback(lambda f: f.value)
        yield wait_until(lambda: carol.received.get("180", 0) >= 1, timeout=WAIT)
        yield self.contact.service.stopService()
        failed = yield outcome
        self.assertEqual(str(failed), "INVITE answered 480 Temporarily Unavailable")
        self.assertEqual(
            [(c["reason"], c["bye_sent"]) for c in self.contact.media.cdrs], [("tunnel lost", ["far party (480)"])]
        )

    @defer.inlineCallbacks
    def test_socket_open_until_every_bye_went(self) -> Any:
        """
        With two calls and the BYEs paced one a second, the stop keeps the
        SIP socket open until the second BYE has gone too (it closed once
        the tunnels' losses were handled, and the queue's later BYEs never
        went).
        """
        answered: list[Any] = []
        carol = yield self.alice_and_carol(answered.append)
        calls = []
        for _ in range(2):
            calls.append((yield carol.call("alice")))
        # alice has the ACKs (none of her 200s is sent again into the stop)
        yield wait_until(lambda: len(answered) == 2 and all(c.established.called for c in answered))
        byes = self.contact.sip_core.core._byes
        byes.batch, byes.spacing = 1, 1.0
        yield self.contact.service.stopService()
        yield wait_until(lambda: all(c.ended.called for c in calls), timeout=WINDOW_HALF)
        self.assertEqual(sorted(b.get("call-id") for b in carol.byes), sorted(c.call_id for c in calls))
        self.assertEqual(byes.unsent(), 0)


class AgentRestartTests(_LoopbackPair):
    """
    The agents run with C{--state-file}: alice's agent is stopped (an
    upgrade) and started again with the same options.
    """

    def agent_options(self, name: str, ca: TestCA) -> list[str]:
        return ["--state-file", os.path.abspath(self.mktemp())]

    @defer.inlineCallbacks
    def restart_first_agent(self) -> Any:
        """
        Stop the first agent and start a new one with its configuration
        (its state file); wait until its tunnel is up.

        @return: the new agent.
        """
        old = self.agents[0]
        yield old.service.stopService()
        new = build_agent(old.config, reactor)
        new.service.startService()
        self.addCleanup(new.service.stopService)
        self.agents[0] = new
        yield wait_until(lambda: new.tunnel_service.tunnel is not None, timeout=WAIT)
        return new

    @defer.inlineCallbacks
    def test_phone_on_udp_reachable_after_a_restart(self) -> Any:
        """
        During a call, alice's agent restarts: the call ends for both
        (as at any agent stop); the new process reads its state file and
        resumes the session at the contact point (its registrations: the
        contact point had kept them dormant), so bob's call to alice, on
        UDP, reaches her phone through the flow of before, and alice has
        not registered again.  (Without the file the new agent had a
        fresh session: bob's call got 480 until alice's next REGISTER.)
        """
        alice, bob, a_call, b_call = yield self.call()
        registers = alice.sent.get("REGISTER")
        new = yield self.restart_first_agent()
        yield wait_until(lambda: a_call.ended.called and b_call.ended.called, timeout=WAIT)
        yield wait_until(lambda: new.resumption.resumed == 1, timeout=WAIT)
        self.assertEqual(self.contact.resumption.resumed, 1)
        a_call.stop_media()
        b_call.stop_media()
        yield self.calls_both_ways(alice, bob)
        self.assertEqual(alice.sent.get("REGISTER"), registers)
        # what the status listing shows of her registration came back too
        self.assertEqual([b["aor"] for b in new.sip_core.registration_list()], ["sip:alice@example.test"])


class PathsAgentStopTests(AgentStopTests):
    """
    The same with two connections per session.
    """

    agent_extra = ["--tunnel-connections", "2"]
    expected_connections = 2


class RestartTests(_LoopbackPair):
    """
    The contact point restarts (stop with drain, start again) with
    C{--state-file}.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.state_file = os.path.abspath(self.mktemp())
        self.contact_extra = ["--state-file", self.state_file]
        yield _LoopbackPair.setUp(self)

    @defer.inlineCallbacks
    def test_registrations_survive_restart(self) -> Any:
        """
        Both agents resume their sessions (registrations only) in the new
        process, whose state came from the file (mode 0600); bob reaches
        alice and alice reaches bob without registering again; the call
        that was up when the contact point stopped is released on the
        agents.
        """
        alice, bob, a_call, b_call = yield self.call()
        sessions = sorted(a.tunnel_service.tunnel.session_id for a in self.agents)
        registers = alice.sent.get("REGISTER"), bob.sent.get("REGISTER")
        yield self.contact.service.stopService()
        self.assertEqual(os.stat(self.state_file).st_mode & 0o777, 0o600)
        self.contact = yield self.start_contact()
        self.assertEqual(self.contact.resumption.dormant, 2)
        yield wait_until(lambda: all(a.resumption.resumed == 1 for a in self.agents), timeout=15)
        # (the sessions' tunnels: a path keeper's attempt may have won)
        self.assertEqual(sorted(a.handle.current.session_id for a in self.agents), sessions)
        self.assertEqual(self.contact.resumption.dormant, 0)
        yield wait_until(lambda: all(a.media.streams == 0 for a in self.agents))
        # each agent ended the call for its phone: a BYE of its own, in
        # the far party's name, with the Reason
        yield wait_until(lambda: a_call.ended.called and b_call.ended.called)
        for phone, call in ((alice, a_call), (bob, b_call)):
            (bye,) = phone.byes
            self.assertEqual(bye.get("call-id"), call.call_id)
            self.assertEqual((tag_of(bye.get("to") or ""), tag_of(bye.get("from") or "")), (call.local_tag, call.remote_tag))
            self.assertEqual(bye.get("reason"), 'SIP;cause=503;text="tunnel lost"')
        self.assertEqual([[c["bye_sent"] for c in a.media.cdrs] for a in self.agents], [[["phone"]], [["phone"]]])
        a_call.stop_media()
        b_call.stop_media()
        yield self.calls_both_ways(alice, bob)
        self.assertEqual((alice.sent.get("REGISTER"), bob.sent.get("REGISTER")), registers)

    @defer.inlineCallbacks
    def test_unusable_file_is_a_fresh_start(self) -> Any:
        """
        A state file that is not JSON is logged and ignored: the contact
        point starts without sessions, the agents' resumptions are refused
        and they go on with fresh sessions.
        """
        yield self.call()
        yield self.contact.service.stopService()
        with open(self.state_file, "w") as f:
            f.write("{not json")
        self.contact = yield self.start_contact()
        self.assertEqual(self.contact.resumption.dormant, 0)
        yield wait_until(lambda: self.contact.resumption.refused == 2, timeout=15)
