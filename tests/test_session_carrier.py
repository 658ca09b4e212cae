"""
A session with several connections (L{spwm.session.carrier}): the attach
handshake, channels on every path, de-duplication, the carrier's move when
a path is lost or stops answering, and peers that do not speak C{paths}.
Real tunnel protocols on both halves, joined in memory (C{iosim}), with a
fake clock.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.internet.interfaces import ISSLTransport
from zope.interface import implementer

from spwm.limits import PathLimits
from spwm.session.carrier import ANNOUNCE_DELAY, HELLO_HOLD, PROBE_INTERVAL, PathFront, PathSessions, attach_proof
from spwm.tunnel.api import Router
from spwm.tunnel.frames import FLAG_SEQ, ChannelKind
from spwm.tunnel.protocol import AgentTunnelFactory, ContactTunnelFactory, TunnelProtocol
from tests import skip_if_compiled


class Observer:
    """
    The session logic's place: records what it is told, and with what.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def tunnel_established(self, tunnel: Any) -> None:
        self.calls.append(("established", tunnel))

    def tunnel_lost(self, tunnel: Any, reason: str) -> None:
        self.calls.append(("lost", tunnel))

    def control_received(self, tunnel: Any, message: dict[str, Any]) -> None:
        self.calls.append(("control", message))


class Sip:
    def __init__(self) -> None:
        self.received: list[tuple[Any, int, bytes]] = []

    def sip_received(self, tunnel: Any, flow_id: int, data: bytes) -> None:
        self.received.append((tunnel, flow_id, data))


class Media:
    """
    An acceptor and handler of media channels: datagrams it gets through
    its routes (the relay's fast path) are recorded per component.
    """

    def __init__(self) -> None:
        self.accepted: list[tuple[Any, int]] = []
        self.got: list[tuple[int, bytes]] = []

    def accept(self, tunnel: Any, channel_id: int, kind: Any, meta: Any) -> Media:
        self.accepted.append((tunnel, channel_id))
        tunnel.route_datagrams(channel_id, lambda d: self.got.append((0, d)), lambda d: self.got.append((1, d)))
        return self

    def datagram_received(self, tunnel: Any, channel_id: int, data: bytes, component: int) -> None:
        self.got.append((component, data))

    def stream_data_received(self, tunnel: Any, channel_id: int, data: bytes) -> None:
        pass

    def stream_ended(self, tunnel: Any, channel_id: int) -> None:
        pass

    def channel_closed(self, tunnel: Any, channel_id: int, code: int, reason: str) -> None:
        pass


class Half:
    def __init__(self, clock: Clock, agent: bool) -> None:
        self.observer = Observer()
        self.sip = Sip()
        self.media = Media()
        self.paths = PathSessions(clock, self.observer, agent=agent)  # type: ignore[arg-type]
        self.router = Router(self.sip, {"media": self.media}, self.paths)  # type: ignore[dict-item]


class Bed:
    """
    An agent and a contact point, each behind its paths layer, and the
    in-memory connections between them.
    """

    def __init__(self, contact_paths: bool = True, agent_paths: bool = True, ciphering: bool = False) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.agent = Half(self.clock, agent=True)
        self.contact = Half(self.clock, agent=False)
        hello = self.agent.paths.hello(lambda: {}) if agent_paths else None
        self.agent_factory = AgentTunnelFactory(self.agent.router, self.clock, "agent-1", hello=hello, user_ciphering=ciphering)
        observer = self.contact.paths if contact_paths else self.contact.observer
        router = Router(self.contact.sip, {"media": self.contact.media}, observer)  # type: ignore[arg-type]
        self.contact_factory = ContactTunnelFactory(router, self.clock, paths=contact_paths, user_ciphering=ciphering)
        self.pumps: list[tuple[iosim.IOPump, TunnelProtocol, TunnelProtocol]] = []
        self.stalled: set[int] = set()

    def connect(self, factory: Any = None) -> tuple[TunnelProtocol, TunnelProtocol]:
        server = self.contact_factory.buildProtocol(None)
        client = (factory or self.agent_factory).buildProtocol(None)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False),
            greet=False, clock=self.clock,
        )
        self.pumps.append((pump, client, server))
        self.flush()
        return client, server

    def flush(self) -> None:
        for _ in range(10):
            for index, (pump, _, _) in enumerate(self.pumps):
                if index not in self.stalled:
                    pump.flush()

    def advance(self, seconds: float, step: float = 0.01) -> None:
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)
            self.flush()

    def cut(self, index: int, lose_queued: bool = False) -> None:
        """
        Connection C{index} is lost at both ends (a reset); with
        C{lose_queued}, what either end had written and the other had not
        read yet is lost with it.
        """
        pump, client, server = self.pumps[index]
        if lose_queued:
            client.transport.stream.clear()
            server.transport.stream.clear()
        client.transport.abortConnection()
        server.transport.abortConnection()
        self.flush()


class HandshakingTransport(iosim.FakeTransport):
    """
    An in-memory transport that says when its (pretend) TLS handshake is
    done, as L{spwm.tunnel.tlsread.TunnelTLSProtocol} does: at
    L{handshake}.
    """

    _on_handshake: Any = None

    def when_handshake_done(self, callback: Any) -> bool:
        self._on_handshake = callback
        return True

    def handshake(self) -> None:
        callback, self._on_handshake = self._on_handshake, None
        callback()


class RecordingSeal:
    """
    A seal that gives every resuming hello empty proofs and records the
    connections told they went.
    """

    def __init__(self) -> None:
        self.told: list[Any] = []

    def seal_hello(self, path: Any, hello: dict[str, Any]) -> dict[str, Any]:
        return {**hello, "resume": {**hello["resume"], "bound": {"proofs": {}}}}

    def sent(self, path: Any) -> None:
        self.told.append(path)


@implementer(ISSLTransport)
class KeyedTransport(iosim.FakeTransport):
    """
    An in-memory transport with TLS keying material (what a TLS
    connection's exporter gives, L{binding}, the same at both ends).
    """

    binding = b"\x00" * 32

    def getHandle(self) -> Any:
        return self

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        return self.binding[:length]


class KeyedHandshakingTransport(KeyedTransport, HandshakingTransport):
    pass


def held_connection(
    bed: Bed, factory: AgentTunnelFactory, binding: tuple[bytes, bytes] | None = None
) -> tuple[TunnelProtocol, HandshakingTransport]:
    """
    A connection of C{factory}'s to the bed's contact point whose TLS
    handshake the test finishes (L{HandshakingTransport.handshake}).

    @param binding: the keying material the agent's end and the contact
        point's end export (the same on a real connection).
    """
    server = bed.contact_factory.buildProtocol(None)
    client = factory.buildProtocol(None)
    if binding is None:
        transport: HandshakingTransport = HandshakingTransport(client, False)
        server_transport = iosim.FakeTransport(server, True)
    else:
        transport = KeyedHandshakingTransport(client, False)
        transport.binding = binding[0]  # type: ignore[attr-defined]
        server_transport = KeyedTransport(server, True)
        server_transport.binding = binding[1]
    pump = iosim.connect(server, server_transport, client, transport, greet=False, clock=bed.clock)
    bed.pumps.append((pump, client, server))
    return client, transport


def _sealed_session() -> tuple[Bed, AgentTunnelFactory, Any, PathFront]:
    """
    A bed whose agent opened a session over TLS (a sealing connection
    factory): the factory for further connections, the first one and the
    agent's front.
    """
    bed = Bed()
    factory = AgentTunnelFactory(
        bed.agent.router, bed.clock, "agent-1", hello=bed.agent.paths.hello(lambda: {}),
        seal=bed.agent.paths.seal(RecordingSeal()),
    )
    a1, t1 = held_connection(bed, factory, (b"\x01" * 32, b"\x01" * 32))
    t1.handshake()
    bed.flush()
    front = bed.agent.paths.front
    assert front is not None
    return bed, factory, a1, front


class AttachTests(SynchronousTestCase):
    """
    A further connection joins the session it proves it belongs to.
    """

    def test_good_proof(self) -> None:
        """
        The second connection of an agent attaches to the session of the
        first: both halves' session logic hears of one session (a front)
        once; the front has two paths; the second connection takes the
        session's id.
        """
        bed = Bed()
        a1, c1 = bed.connect()
        [(what, agent_front)] = bed.agent.observer.calls
        [(_, contact_front)] = bed.contact.observer.calls
        self.assertEqual(what, "established")
        self.assertIsInstance(agent_front, PathFront)
        self.assertIsInstance(contact_front, PathFront)
        a2, c2 = bed.connect()
        self.assertEqual(len(bed.agent.observer.calls), 1)
        self.assertEqual(len(bed.contact.observer.calls), 1)
        self.assertEqual(agent_front.paths, [a1, a2])
        self.assertEqual(contact_front.paths, [c1, c2])
        self.assertEqual({a2.session_id, c2.session_id}, {c1.session_id})
        self.assertEqual(agent_front.session_id, contact_front.session_id)
        self.assertIs(a2.front, agent_front)

    def test_second_resumer_closed(self) -> None:
        """
        A connection made to resume (or start) the agent's session while
        it was down, up after another resumed it (a raced resumption), is
        closed: the session logic hears nothing of it, up or lost, and the
        session keeps its path.
        """
        bed = Bed()
        a1, _ = bed.connect()
        front = bed.agent.paths.front
        other = AgentTunnelFactory(
            bed.agent.router, bed.clock, "agent-1", hello={"paths": 1, "sip-seq": 1, "resume": {"session_id": "s"}}
        )
        a2, c2 = bed.connect(other)
        self.assertFalse(a2.is_open)
        self.assertEqual(a2.close_info.reason, "another connection resumed the session first")
        bed.advance(1)
        self.assertEqual(bed.agent.observer.calls, [("established", front)])
        self.assertIs(bed.agent.paths.front, front)
        self.assertEqual(front.paths, [a1])

    def _racing(self) -> tuple[Bed, list[Any], list[Any]]:
        """
        Two connections made to resume the agent's session, each
        holding its hello for its TLS handshake (done by the test), with
        a seal that gives proofs to any.

        @return: the bed, the two pairs of ends, the seal's C{sent}.
        """
        bed = Bed()
        seal = RecordingSeal()
        factory = AgentTunnelFactory(
            bed.agent.router,
            bed.clock,
            "agent-1",
            hello={"paths": 1, "sip-seq": 1, "resume": {"session_id": "s"}},
            seal=bed.agent.paths.seal(seal),
        )
        pairs = [held_connection(bed, factory) for _ in range(2)]
        return bed, pairs, seal.told

    def test_one_hello_with_proofs(self) -> None:
        """
        Of two connections made to resume the session, the first whose
        handshake is done sends the proofs in its hello; the other sends
        its hello without them and is closed at its welcome, before the
        session logic hears of it; the first carries the session.
        """
        bed, [(a1, t1), (a2, t2)], told = self._racing()
        bed.flush()
        self.assertEqual(bed.pumps[0][2].peer_hello, {})
        t2.handshake()
        t1.handshake()
        self.assertEqual(told, [a2])
        self.assertIn("bound", a2.local_hello["resume"])
        self.assertNotIn("bound", a1.local_hello["resume"])
        bed.flush()
        self.assertFalse(a1.is_open)
        self.assertEqual(a1.close_info.reason, "another connection is resuming the session")
        front = bed.agent.paths.front
        self.assertEqual(bed.agent.observer.calls, [("established", front)])
        self.assertEqual(front.paths, [a2])

    def test_the_other_goes_on_when_the_first_is_lost(self) -> None:
        """
        When the connection that sent the proofs is lost before its
        welcome, the other one (hello without proofs) carries the session.
        """
        bed, [(a1, t1), (a2, t2)], told = self._racing()
        t2.handshake()
        t1.handshake()
        bed.stalled.add(0)
        bed.cut(1, lose_queued=True)
        self.assertFalse(a2.is_open)
        bed.stalled.clear()
        bed.flush()
        self.assertTrue(a1.is_open)
        front = bed.agent.paths.front
        self.assertEqual(bed.agent.observer.calls, [("established", front)])
        self.assertEqual(front.paths, [a1])

    def test_a_joining_connection_resumes(self) -> None:
        """
        A connection made to join the session (its hello says C{attach})
        whose TLS handshake is done after the session's last connection
        was lost resumes the session instead: its hello offers the
        resumption, with the proofs, and it carries the session.
        """
        bed = Bed()
        a1, _ = bed.connect()
        seal = RecordingSeal()
        factory = AgentTunnelFactory(
            bed.agent.router,
            bed.clock,
            "agent-1",
            hello=bed.agent.paths.hello(lambda: {"resume": {"session_id": a1.session_id}}),
            seal=bed.agent.paths.seal(seal),
        )
        a2, transport = held_connection(bed, factory)
        server = bed.pumps[-1][2]
        told = seal.told
        self.assertEqual(a2.local_hello.get("attach"), {"session_id": a1.session_id})
        self.assertTrue(a2.hello_held)
        bed.cut(0)
        self.assertIsNone(bed.agent.paths.front)
        transport.handshake()
        self.assertEqual(told, [a2])
        self.assertNotIn("attach", a2.local_hello)
        self.assertEqual(a2.local_hello["resume"], {"session_id": a1.session_id, "bound": {"proofs": {}}})
        bed.flush()
        self.assertEqual(server.peer_hello["resume"]["bound"], {"proofs": {}})
        front = bed.agent.paths.front
        self.assertIsNotNone(front)
        self.assertEqual(front.paths, [a2])
        self.assertEqual(bed.agent.observer.calls[-1], ("established", front))

    def test_attach_proof_in_the_hello(self) -> None:
        """
        Over TLS a further connection's hello carries its attach proof,
        bound to its TLS session: the contact point attaches it on the
        hello, the agent sends no C{attach}; a proof bound to other
        keying material (a copy of another connection's hello) is
        refused.
        """
        bed, factory, a1, front = _sealed_session()
        a2, t2 = held_connection(bed, factory, (b"\x02" * 32, b"\x02" * 32))
        t2.handshake()
        self.assertEqual(
            a2.local_hello["attach"],
            {"session_id": front.session_id, "proof": attach_proof(front.attach_key, b"\x02" * 32, front.session_id, bound=True)},
        )
        bed.flush()
        self.assertEqual(front.paths, [a1, a2])
        self.assertEqual((bed.agent.paths.attach_bound, bed.contact.paths.attach_bound), (1, 1))
        a3, t3 = held_connection(bed, factory, (b"\x03" * 32, b"\x04" * 32))
        with capturedLogs():
            t3.handshake()
            bed.flush()
        self.assertFalse(a3.is_open)
        self.assertEqual(a3.close_info.reason, "attach refused: wrong proof")
        self.assertEqual(front.paths, [a1, a2])

    def test_attach_proof_to_an_older_contact_point(self) -> None:
        """
        A contact point whose welcome does not say C{attach_bound} (an
        older one, which does not read a proof in the hello) challenges
        the further connection, and the agent answers the challenge.
        """
        from spwm.session import carrier

        skip_if_compiled(carrier, "stands an older contact point in by replacing a method of its session logic")
        bed, factory, a1, front = _sealed_session()
        check = bed.contact.paths._check_attach
        bed.contact.paths._check_attach = lambda path, message, bound=False: None if bound else check(path, message)  # type: ignore[method-assign]
        a4, t4 = held_connection(bed, factory, (b"\x05" * 32, b"\x05" * 32))
        bed.pumps[-1][2].connection._hello_extra.pop("attach_bound")
        t4.handshake()
        bed.flush()
        self.assertEqual(front.paths, [a1, a4])
        self.assertEqual((bed.agent.paths.attach_bound, bed.contact.paths.attach_bound), (0, 0))

    def test_wrong_proof(self) -> None:
        """
        A connection whose proof is wrong is refused with C{attach-failed}
        and closed, logged on both halves; the session keeps its one path.
        """
        bed = Bed()
        bed.connect()
        front = bed.agent.paths.front
        assert front is not None
        front.attach_key = b"\x00" * 32
        a2, c2 = bed.connect()
        self.assertFalse(a2.is_open)
        self.assertEqual(bed.contact.paths.attach_refused, 1)
        self.assertEqual(bed.agent.paths.attach_refused, 1)
        self.assertEqual(len(bed.contact.paths.fronts[0].paths), 1)
        self.assertEqual(len(front.paths), 1)
        self.assertEqual(len(bed.contact.observer.calls), 1)

    def test_session_full(self) -> None:
        """
        A connection beyond the contact point's C{max_paths} for the
        session (an agent that wants more than it takes) is refused with
        C{attach-failed} and closed, with one line; the session keeps the
        paths it has.
        """
        bed = Bed()
        bed.connect()
        contact_front = bed.contact.paths.fronts[0]
        contact_front.scheduler.limits = PathLimits(max_paths=2)
        a2, _ = bed.connect()
        self.assertTrue(a2.is_open)
        a3, _ = bed.connect()
        self.assertFalse(a3.is_open)
        self.assertEqual(bed.contact.paths.attach_refused, 1)
        self.assertEqual(len(contact_front.paths), 2)
        front = bed.agent.paths.front
        assert front is not None
        self.assertEqual(len(front.paths), 2)
        self.assertEqual(len(bed.contact.observer.calls), 1)

    def test_unknown_session(self) -> None:
        """
        An attach naming a session the contact point does not have is
        refused; its session logic hears nothing of it.
        """
        bed = Bed()
        bed.connect()
        app = Observer()
        other = AgentTunnelFactory(
            Router(None, {}, app), bed.clock, "agent-1", hello={"paths": 1, "attach": {"session_id": "nope"}}  # type: ignore[arg-type]
        )
        a2, c2 = bed.connect(other)
        a2.send_control({"op": "attach", "session_id": "nope", "proof": "00" * 32})
        bed.flush()
        self.assertIn(("control", {"op": "attach-failed", "reason": "no live session by that name"}), app.calls)
        self.assertFalse(a2.is_open)
        self.assertEqual(bed.contact.paths.attach_refused, 1)
        self.assertEqual(len(bed.contact.observer.calls), 1)

    def raw_attacher(self, bed: Bed) -> tuple[TunnelProtocol, TunnelProtocol]:
        """
        A connection whose hello says C{attach} (to the live session) but
        that is no path layer's: it does what the test makes it do.
        """
        session_id = bed.contact.paths.fronts[0].session_id
        other = AgentTunnelFactory(
            Router(None, {}, Observer()), bed.clock, "agent-1",  # type: ignore[arg-type]
            hello={"paths": 1, "attach": {"session_id": session_id}},
        )
        return bed.connect(other)

    def test_nothing_before_attached(self) -> None:
        """
        SIP on a connection that has said C{attach} but is not attached yet
        is a protocol error: the contact point closes it, and its SIP part
        gets nothing.
        """
        bed = Bed()
        bed.connect()
        a2, c2 = self.raw_attacher(bed)
        self.assertTrue(a2.is_open)
        a2.send_sip(1, b"REGISTER sip:x SIP/2.0\r\n\r\n")
        bed.flush()
        self.assertFalse(c2.is_open)
        self.assertEqual(c2.close_info.reason, "SIP before the connection was attached")
        self.assertEqual(bed.contact.sip.received, [])
        self.assertEqual(len(bed.contact.observer.calls), 1)

    def test_attach_in_time(self) -> None:
        """
        A connection that says C{attach} and then proves nothing is closed
        after C{ATTACH_TIMEOUT}.
        """
        from spwm.session.carrier import ATTACH_TIMEOUT

        bed = Bed()
        bed.connect()
        a2, c2 = self.raw_attacher(bed)
        bed.advance(ATTACH_TIMEOUT - 1, step=0.5)
        self.assertTrue(c2.is_open)
        bed.advance(2, step=0.5)
        self.assertFalse(c2.is_open)
        self.assertEqual(bed.contact.paths._timers, {})
        self.assertEqual(len(bed.contact.observer.calls), 1)

    def test_old_contact_point(self) -> None:
        """
        A contact point whose welcome does not say C{paths}: the agent's
        session logic gets the connection itself, as before, and nothing
        is attached.
        """
        bed = Bed(contact_paths=False)
        a1, c1 = bed.connect()
        self.assertEqual(bed.agent.observer.calls, [("established", a1)])
        self.assertEqual(bed.contact.observer.calls, [("established", c1)])
        self.assertFalse(a1.connection.paths)
        self.assertIsNone(bed.agent.paths.front)
        self.assertNotIn("attach_key", a1.peer_hello)

    def test_old_agent(self) -> None:
        """
        An agent whose hello does not say C{paths}: the contact point's
        session logic gets the connection itself; datagrams carry no
        sequence number.
        """
        bed = Bed(agent_paths=False)
        a1, c1 = bed.connect()
        self.assertEqual(bed.contact.observer.calls, [("established", c1)])
        self.assertEqual(bed.agent.observer.calls, [("established", a1)])
        cid = a1.open_channel(ChannelKind.DATAGRAM, {"use": "media"})
        bed.flush()
        a1.send_datagram(cid, b"rtp")
        bed.flush()
        self.assertEqual(bed.contact.media.got, [(0, b"rtp")])


class HeldHelloTests(SynchronousTestCase):
    """
    A further connection whose TLS handshake is done after a path of its
    session was lost, while no path has been heard from since, holds its
    hello: it resumes the session if the last path goes (an address
    change), and attaches as soon as a path is heard from (a cut of one
    connection) or after L{HELLO_HOLD}.
    """

    def setUp(self) -> None:
        self.bed = Bed()
        for _ in range(3):
            self.bed.connect()
        front = self.bed.agent.paths.front
        assert front is not None
        self.front = front

    def joining(self) -> tuple[TunnelProtocol, HandshakingTransport, RecordingSeal]:
        """
        A connection made to join the session, its hello waiting for its
        TLS handshake (done by the test).
        """
        seal = RecordingSeal()
        session_id = self.front.session_id
        factory = AgentTunnelFactory(
            self.bed.agent.router,
            self.bed.clock,
            "agent-1",
            hello=self.bed.agent.paths.hello(lambda: {"resume": {"session_id": session_id}}),
            seal=self.bed.agent.paths.seal(seal),
        )
        path, transport = held_connection(self.bed, factory)
        self.assertEqual(path.local_hello.get("attach"), {"session_id": session_id})
        return path, transport, seal

    def with_channel(self) -> None:
        self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()

    def silent(self, *indices: int) -> None:
        """
        Connections C{indices} go silent both ways, what they had in
        flight lost (an address change: they are dead, not yet found so).
        """
        for index in indices:
            _, client, server = self.bed.pumps[index]
            client.transport.stream.clear()
            server.transport.stream.clear()
            self.bed.stalled.add(index)

    def found_dead(self, *indices: int) -> None:
        """
        The silent connections C{indices} are found dead (a reset each).
        """
        for index in indices:
            _, client, server = self.bed.pumps[index]
            client.transport.stream.clear()
            server.transport.stream.clear()
            client.transport.abortConnection()
            server.transport.abortConnection()
        self.bed.stalled.difference_update(indices)
        self.bed.flush()

    def test_resumes_when_every_path_is_gone(self) -> None:
        """
        After a path's loss, none heard from since: the hello waits;
        when the last path is found dead, the connection resumes the
        session (its hello offers the resumption, with the proofs) and
        carries it.
        """
        self.with_channel()
        self.silent(1, 2)
        self.bed.cut(0)
        self.bed.clock.advance(0.05)
        a4, transport, seal = self.joining()
        transport.handshake()
        self.bed.flush()
        server = self.bed.pumps[-1][2]
        self.assertTrue(a4.hello_held)
        self.assertEqual((server.peer_hello, self.front.hellos_held), ({}, 1))
        self.bed.clock.advance(0.1)
        self.found_dead(1, 2)
        self.assertEqual(seal.told, [a4])
        self.assertNotIn("attach", a4.local_hello)
        self.assertEqual(a4.local_hello["resume"], {"session_id": self.front.session_id, "bound": {"proofs": {}}})
        self.bed.flush()
        self.assertEqual(server.peer_hello["resume"]["bound"], {"proofs": {}})
        front = self.bed.agent.paths.front
        assert front is not None
        self.assertEqual(front.paths, [a4])

    def test_attaches_when_a_path_is_heard(self) -> None:
        """
        After a path's loss the others are alive (a cut of one): the hello
        waits only until one of them is heard from (the next ping's
        answer), then attaches; a connection whose handshake is done
        after that does not wait.
        """
        self.with_channel()
        self.bed.cut(0)
        a4, transport, _ = self.joining()
        transport.handshake()
        self.bed.flush()
        self.assertTrue(a4.hello_held)
        start = self.bed.clock.seconds()
        while a4.hello_held and self.bed.clock.seconds() - start < 1:
            self.bed.advance(0.01)
        self.assertLessEqual(self.bed.clock.seconds() - start, 0.11)
        self.assertIn("attach", a4.local_hello)
        self.bed.advance(0.05)
        self.assertIn(a4, self.front.paths)
        a5, transport5, _ = self.joining()
        transport5.handshake()
        self.assertFalse(a5.hello_held)
        self.assertEqual(self.front.hellos_held, 1)

    def test_attaches_after_the_hold(self) -> None:
        """
        Nothing heard and no further loss: the hello attaches after
        L{HELLO_HOLD}, and is not held again.
        """
        self.with_channel()
        self.silent(1, 2)
        self.bed.cut(0)
        a4, transport, _ = self.joining()
        transport.handshake()
        self.bed.clock.advance(HELLO_HOLD - 0.01)
        self.assertTrue(a4.hello_held)
        self.bed.clock.advance(0.01)
        self.assertFalse(a4.hello_held)
        self.assertIn("attach", a4.local_hello)
        self.bed.flush()
        self.assertIn(a4, self.front.paths)
        self.assertEqual(self.front.hellos_held, 1)

    def test_not_held_without_channels(self) -> None:
        """
        A session without channels (its paths are not pinged, silence
        says nothing) holds no hello.
        """
        self.bed.cut(0)
        a4, transport, _ = self.joining()
        transport.handshake()
        self.assertFalse(a4.hello_held)
        self.assertIn("attach", a4.local_hello)
        self.assertEqual(self.front.hellos_held, 0)


class TwoPaths(SynchronousTestCase):
    def setUp(self) -> None:
        self.bed = Bed()
        self.a1, self.c1 = self.bed.connect()
        self.a2, self.c2 = self.bed.connect()
        front = self.bed.agent.paths.front
        assert front is not None
        self.front = front
        self.contact_front = self.bed.contact.paths.fronts[0]


class ChannelTests(TwoPaths):
    """
    Channels belong to the session: usable on every path.
    """

    def test_channel_on_every_path(self) -> None:
        """
        A channel opened through the front (on the carrier) is accepted by
        the peer once, through its front, and its datagrams arrive when
        sent on either path; a channel closed is forgotten on every path.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        self.assertEqual(self.bed.contact.media.accepted, [(self.contact_front, cid)])
        for path in (self.a1, self.a2):
            path.send_datagram(cid, b"plain-" + str(self.front.path_id(path)).encode())
        self.bed.flush()
        self.assertEqual(self.bed.contact.media.got, [(0, b"plain-0"), (0, b"plain-1")])
        for path in (self.c1, self.c2):
            self.assertTrue(path.connection.is_open_channel(cid))
        self.front.close_channel(cid)
        self.bed.flush()
        for path in (self.a1, self.a2, self.c1, self.c2):
            self.assertFalse(path.connection.is_open_channel(cid))

    def test_rtt_and_late_dropped_for_the_quality(self) -> None:
        """
        The front's C{rtt} is the smoothed round trip of the path the
        scheduler has the media on (none known: C{None}); its
        C{late_dropped} of a channel sums the paths' per-channel drops.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        self.assertIsNone(self.front.rtt)
        self.front.rtt_sample(self.a1, 0.050)
        self.front.rtt_sample(self.a2, 0.200)
        snapshot = self.front.scheduler.snapshot()
        by_id = {p["path_id"]: p["srtt"] for p in snapshot["paths"]}
        self.assertEqual(self.front.rtt, min(by_id[i] for i in snapshot["media"]))
        self.assertEqual(self.front.late_dropped(cid), 0)
        self.a1.connection._channels[cid].media_dropped = 2
        self.a2.connection._channels[cid].media_dropped = 3
        self.assertEqual(self.front.late_dropped(cid), 5)
        self.assertIsNone(self.front.late_dropped(cid + 100))

    def test_peer_channel_on_every_path(self) -> None:
        """
        A channel the contact point opens is registered on both of the
        agent's paths; the agent's route gets datagrams from both.
        """
        cid = self.contact_front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.contact.media)
        self.bed.flush()
        self.assertEqual(self.bed.agent.media.accepted, [(self.front, cid)])
        self.assertTrue(self.a1.connection.is_open_channel(cid))
        self.assertTrue(self.a2.connection.is_open_channel(cid))
        self.c2.send_datagram(cid, b"x")
        self.bed.flush()
        self.assertEqual(self.bed.agent.media.got, [(0, b"x")])

    def test_duplicates_dropped(self) -> None:
        """
        While the scheduler duplicates media, each datagram goes on both
        paths with one sequence number, and the peer delivers it once.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        self.front.scheduler.loss_seen(1, self.bed.clock.seconds())
        self.assertEqual(len(self.front.scheduler.media_paths(self.bed.clock.seconds())), 2)
        for n in range(5):
            self.front.send_datagram(cid, b"rtp%d" % n)
            self.front.send_datagram(cid, b"rtcp%d" % n, 1)
        self.bed.flush()
        got = self.bed.contact.media.got
        self.assertEqual(sorted(got), sorted([(0, b"rtp%d" % n) for n in range(5)] + [(1, b"rtcp%d" % n) for n in range(5)]))
        self.assertEqual(self.c1.duplicates + self.c2.duplicates, 10)

    def test_call_start_copied_on_a_slow_link(self) -> None:
        """
        On paths whose kernel round trip is 160 ms, no loss seen: a call's
        first datagrams go on both paths both ways (each delivered once),
        for C{start_copies}; then on one path each; a talk spurt after a
        silence of C{start_pause} is copied again.  On a 20 ms round trip
        nothing is copied.
        """
        from spwm.session.paths import TcpInfo

        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        agent_dedup, contact_dedup = self.front.dedup, self.contact_front.dedup
        limits = self.front.scheduler.limits

        def rtt(seconds: float) -> None:
            now = self.bed.clock.seconds()
            for front in (self.front, self.contact_front):
                for path_id in range(len(front.paths)):
                    front.scheduler.tcp_info(path_id, TcpInfo(rtt_s=seconds, rttvar_s=0.01), now)

        def exchange(seconds: float) -> tuple[int, int]:
            # datagrams 20 ms apart both ways: the copies each half dropped
            before = (contact_dedup.duplicates, agent_dedup.duplicates)
            for n in range(round(seconds * 50)):
                self.front.send_datagram(cid, b"up%d" % n)
                self.contact_front.send_datagram(cid, b"down%d" % n)
                self.bed.advance(0.02)
            self.bed.advance(0.1)
            return (contact_dedup.duplicates - before[0], agent_dedup.duplicates - before[1])

        rtt(0.02)
        self.assertEqual(exchange(1.0), (0, 0))
        self.bed.advance(limits.start_pause)
        rtt(0.16)
        # copied for start_copies; paired once the rate is known (a tenth
        # of a second in), so the pair held at the window's end may go
        # on one path
        up, down = exchange(limits.start_copies)
        self.assertTrue(50 * limits.start_copies - 2 <= up <= 50 * limits.start_copies, up)
        self.assertTrue(50 * limits.start_copies - 2 <= down <= 50 * limits.start_copies, down)
        # the agent's copies stop; the contact point's follow them for its
        # duplication window after the last one it saw (peer_copies)
        self.assertEqual(exchange(limits.duplicate_window)[0], 0)
        self.assertEqual(exchange(1.0), (0, 0))
        sent = round(50 * (2 + limits.start_copies + limits.duplicate_window))
        self.assertEqual((len(self.bed.contact.media.got), len(self.bed.agent.media.got)), (sent, sent))
        self.bed.advance(limits.start_pause)
        rtt(0.16)  # the kernel's again (the in-memory pings' round trips are nothing)
        self.assertEqual(exchange(0.5), (25, 25))
        self.assertEqual(
            (self.front.scheduler.starts_copied, self.contact_front.scheduler.starts_copied), (2, 2)
        )

    def test_kernel_round_trip_known_at_attach(self) -> None:
        """
        A path over a real TCP socket has the kernel's round trip in the
        scheduler from its attachment on (the start copies go by it before
        any frame of a call has made either half read the kernel).
        """
        import spwm.tunnel.protocol as tunnel_protocol
        from spwm.session.paths import read_tcp_info
        from tests.test_session_paths import loopback_tcp

        client, accepted = loopback_tcp(self)
        client.sendall(b"x")
        self.assertEqual(accepted.recv(1), b"x")
        accepted.sendall(b"y")
        self.assertEqual(client.recv(1), b"y")
        kernel = read_tcp_info(client)
        assert kernel is not None and kernel.rtt_s
        self.patch(tunnel_protocol, "find_socket", lambda transport: client)
        self.bed.connect()
        for front in (self.front, self.contact_front):
            srtt = {p["path_id"]: p["srtt"] for p in front.scheduler.snapshot()["paths"]}
            self.assertAlmostEqual(srtt[2], kernel.rtt_s, delta=0.001)
            self.assertIsNone(srtt[0])  # in memory: no socket, nothing known

    def test_four_copies_in_turn_over_six_paths(self) -> None:
        """
        Six paths (four and two spares), the media copied both ways: each
        datagram goes on four of them, in turn, and is delivered once;
        every path carries its share; one path cut, each datagram still
        has its four copies on the five left, both ways.
        """
        for _ in range(4):
            self.bed.connect()
        self.assertEqual(len(self.front.paths), 6)
        self.assertEqual(len(self.contact_front.paths), 6)
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        agent_dedup, contact_dedup = self.front.dedup, self.contact_front.dedup

        def exchange(count: int) -> tuple[int, int]:
            # both halves copy (a loss seen); datagrams 20 ms apart
            before = (contact_dedup.duplicates, agent_dedup.duplicates)
            for n in range(count):
                now = self.bed.clock.seconds()
                self.front.scheduler.loss_seen(0, now)
                self.contact_front.scheduler.loss_seen(0, now)
                self.front.send_datagram(cid, b"up%d" % n)
                self.contact_front.send_datagram(cid, b"down%d" % n)
                self.bed.advance(0.02)
            self.bed.advance(0.1)
            return (contact_dedup.duplicates - before[0], agent_dedup.duplicates - before[1])

        shares = [p.connection.stats.frames_in for p in self.bed.contact.paths.fronts[0].paths]
        self.assertEqual(exchange(60), (3 * 60, 3 * 60))
        self.assertEqual(len(self.bed.contact.media.got), 60)
        self.assertEqual(len(self.bed.agent.media.got), 60)
        carried = [p.connection.stats.frames_in - n for p, n in zip(self.contact_front.paths, shares)]
        # each path took its turns (pings aside): four of six, about 40 each
        self.assertTrue(all(30 <= c for c in carried), carried)
        self.bed.cut(2)
        self.assertEqual((len(self.front.paths), len(self.contact_front.paths)), (5, 5))
        self.assertEqual(exchange(50), (3 * 50, 3 * 50))
        self.assertEqual(len(self.bed.contact.media.got), 110)
        self.assertEqual(len(self.bed.agent.media.got), 110)

    def _other_path_frames(self) -> int:
        """
        Frames the agent wrote on its second path other than its pings.
        """
        stats = self.a2.connection.stats
        return stats.frames_out - stats.pings_sent

    def test_short_channel_not_copied(self) -> None:
        """
        A channel closed within L{ANNOUNCE_DELAY} of its open costs the
        other path nothing: neither the copy of its open nor of its close
        is written there, and both of the contact point's paths forget it.
        """
        self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        before = self._other_path_frames()
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.advance(ANNOUNCE_DELAY / 2)
        self.front.close_channel(cid)
        self.bed.advance(ANNOUNCE_DELAY * 2)
        self.assertEqual(self._other_path_frames(), before + 1)  # the first channel's open only
        for path in (self.a1, self.a2, self.c1, self.c2):
            self.assertFalse(path.connection.is_open_channel(cid))

    def test_copy_after_the_delay(self) -> None:
        """
        A channel still open after L{ANNOUNCE_DELAY} has its open copied
        on the other path, once; its close is copied there too.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        before = self._other_path_frames()
        self.bed.advance(ANNOUNCE_DELAY * 0.9)
        self.assertEqual(self._other_path_frames(), before)
        self.bed.advance(ANNOUNCE_DELAY * 0.2)
        self.assertEqual(self._other_path_frames(), before + 1)
        self.bed.advance(ANNOUNCE_DELAY * 2)
        self.assertEqual(self._other_path_frames(), before + 1)
        self.front.close_channel(cid)
        self.bed.flush()
        self.assertEqual(self._other_path_frames(), before + 2)
        self.assertFalse(self.c2.connection.is_open_channel(cid))

    def test_copy_before_media_on_the_other_path(self) -> None:
        """
        Media the scheduler sends on the other path at once takes the
        copy of the open with it, ahead of the datagram.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        before = self._other_path_frames()
        self.front.scheduler.loss_seen(1, self.bed.clock.seconds())
        self.assertEqual(len(self.front.scheduler.media_paths(self.bed.clock.seconds())), 2)
        self.front.send_datagram(cid, b"rtp")
        self.assertEqual(self._other_path_frames(), before + 2)
        self.bed.flush()
        self.assertEqual(self.bed.contact.media.got, [(0, b"rtp")])
        self.assertEqual(self.c2.connection.stats.datagrams_before_open, 0)

    def test_sip_on_the_carrier(self) -> None:
        """
        SIP goes on the carrier and reaches the peer's SIP part with the
        front as its tunnel.
        """
        self.assertTrue(self.front.send_sip(3, b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
        self.bed.flush()
        self.assertEqual(self.bed.contact.sip.received, [(self.contact_front, 3, b"OPTIONS sip:x SIP/2.0\r\n\r\n")])


class CipheringTests(SynchronousTestCase):
    """
    Per-user ciphering on a session with two connections: one cipher
    state per session, shared by both paths.
    """

    KEY = bytes(range(32))

    def setUp(self) -> None:
        self.bed = Bed(ciphering=True)
        self.a1, self.c1 = self.bed.connect()
        self.a2, self.c2 = self.bed.connect()
        front = self.bed.agent.paths.front
        assert front is not None
        self.front = front
        self.contact_front = self.bed.contact.paths.fronts[0]
        self.front.bind_flow_key(5, self.KEY)
        self.contact_front.bind_flow_key(5, self.KEY)
        self.cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.front.bind_channel_to_flow(self.cid, 5)
        self.bed.flush()
        self.contact_front.bind_channel_to_flow(self.cid, 5)

    def test_one_cipher_per_session(self) -> None:
        """
        Both paths of each half seal and open with the session's cipher.
        """
        self.assertEqual(len(self.front.paths), 2)
        self.assertIsNotNone(self.front.cipher)
        self.assertIsNotNone(self.contact_front.cipher)
        self.assertTrue(self.a1.cipher is self.a2.cipher is self.front.cipher)
        self.assertTrue(self.c1.cipher is self.c2.cipher is self.contact_front.cipher)

    def test_copies_sealed_opened_once(self) -> None:
        """
        Media copied on both paths: each copy sealed with its own counter
        of the one send counter (no nonce twice), every copy opens (none
        counted as a refused replay), the copies are dropped by sequence
        number after opening, each datagram is delivered once; nothing of
        the plaintext is on either wire.
        """
        written: list[bytes] = []
        for path in (self.a1, self.a2):
            original = path._write
            path._write = lambda data, original=original: (written.append(data), original(data))  # type: ignore[method-assign]
        context = self.front.cipher.channel_context(self.cid)  # type: ignore[union-attr]
        assert context is not None
        start = context.send.counter
        now = self.bed.clock.seconds()
        self.front.scheduler.loss_seen(1, now)
        self.assertEqual(len(self.front.scheduler.media_paths(now)), 2)
        for n in range(5):
            self.front.send_datagram(self.cid, b"secret-rtp%d" % n)
        self.bed.flush()
        self.assertEqual(sorted(self.bed.contact.media.got), [(0, b"secret-rtp%d" % n) for n in range(5)])
        self.assertNotIn(b"secret", b"".join(written))
        agent, contact = self.front.cipher, self.contact_front.cipher
        assert agent is not None and contact is not None
        self.assertEqual(agent.sealed, 10)
        context = agent.channel_context(self.cid)
        assert context is not None
        self.assertEqual(context.send.counter - start, 10)
        self.assertEqual((contact.opened, contact.refused, contact.unknown), (10, 0, 0))
        self.assertEqual(self.c1.duplicates + self.c2.duplicates, 5)
        self.assertEqual(self.contact_front.status()["sealed"]["opened"], 10)

    def test_out_of_order_across_paths(self) -> None:
        """
        Frames sealed in one order and delivered in another (one path
        slower than the other) all open: SIP too, when the carrier moves.
        """
        self.bed.stalled.add(0)
        self.assertIs(self.front.carrier, self.a1)
        self.front.send_sip(5, b"MESSAGE one")
        self.a1.send_datagram(self.cid, b"\x00\x00\x00\x01early", 0)
        self.bed.flush()
        self.a2.send_datagram(self.cid, b"\x00\x00\x00\x02later", 0)
        self.a2.send_sip(5, b"MESSAGE two")
        self.bed.flush()
        self.bed.stalled.clear()
        self.bed.flush()
        contact = self.contact_front.cipher
        assert contact is not None
        self.assertEqual(contact.refused, 0)
        self.assertEqual([d for _, _, d in self.bed.contact.sip.received], [b"MESSAGE two", b"MESSAGE one"])
        self.assertEqual([d for _, d in self.bed.contact.media.got], [b"\x00\x00\x00\x02later", b"\x00\x00\x00\x01early"])

    def test_replay_on_the_other_path_refused(self) -> None:
        """
        A sealed frame read off one path and written again onto the other
        is refused by the session's window and counted.
        """
        written: list[bytes] = []
        original = self.a1._write
        self.a1._write = lambda data: (written.append(data), original(data))  # type: ignore[method-assign]
        self.front.send_sip(5, b"MESSAGE once")
        self.bed.flush()
        self.assertEqual(len(self.bed.contact.sip.received), 1)
        self.c2.dataReceived(b"".join(written))
        contact = self.contact_front.cipher
        assert contact is not None
        self.assertEqual(len(self.bed.contact.sip.received), 1)
        self.assertEqual(contact.refused, 1)

    def test_cut_one_path_media_goes_on(self) -> None:
        """
        The carrier's connection is reset: sealed SIP and media go on on
        the other path, still sealed, both ways.
        """
        self.bed.cut(0)
        self.assertEqual(self.front.paths, [self.a2])
        self.front.send_datagram(self.cid, b"after")
        self.front.send_sip(5, b"BYE")
        self.contact_front.send_datagram(self.cid, b"down")
        self.bed.flush()
        self.assertEqual(self.bed.contact.media.got, [(0, b"after")])
        self.assertEqual(self.bed.agent.media.got, [(0, b"down")])
        self.assertEqual([d for _, _, d in self.bed.contact.sip.received], [b"BYE"])
        agent, contact = self.front.cipher, self.contact_front.cipher
        assert agent is not None and contact is not None
        self.assertEqual((agent.opened, agent.refused, contact.opened, contact.refused), (1, 0, 2, 0))

    def test_older_contact_point_one_connection(self) -> None:
        """
        A contact point whose welcome agrees per-user ciphering and
        C{paths} but does not say C{user-ciphering-paths} (older: it kept
        a ciphering connection out of the paths layer): the agent's
        session logic gets the connection itself, no front, nothing to
        attach; sealed SIP crosses.
        """
        bed = Bed(ciphering=True)
        build = bed.contact_factory.buildProtocol

        def older(addr: Any) -> Any:
            protocol = build(addr)
            protocol.local_hello.pop("user-ciphering-paths")
            return protocol

        bed.contact_factory.buildProtocol = older  # type: ignore[method-assign]
        a1, c1 = bed.connect()
        self.assertIsNotNone(a1.cipher)
        self.assertEqual(bed.agent.observer.calls, [("established", a1)])
        self.assertIsNone(bed.agent.paths.front)
        a1.bind_flow_key(5, self.KEY)
        c1.bind_flow_key(5, self.KEY)
        a1.send_sip(5, b"MESSAGE sealed")
        bed.flush()
        self.assertEqual([d for _, _, d in bed.contact.sip.received], [b"MESSAGE sealed"])
        self.assertEqual(c1.cipher.opened, 1)  # type: ignore[union-attr]

    def test_attach_without_ciphering_refused(self) -> None:
        """
        A further connection on which per-user ciphering was not agreed
        cannot join a ciphering session: C{attach-failed}, closed, the
        session keeps its paths.
        """
        plain = AgentTunnelFactory(
            self.bed.agent.router, self.bed.clock, "agent-1", hello=self.bed.agent.paths.hello(lambda: {})
        )
        a3, c3 = self.bed.connect(plain)
        self.assertIsNone(a3.cipher)
        self.assertFalse(a3.is_open)
        self.assertEqual(self.bed.contact.paths.attach_refused, 1)
        self.assertEqual(len(self.contact_front.paths), 2)
        self.assertEqual(len(self.front.paths), 2)


class CoalesceTests(TwoPaths):
    """
    A heavy load on a lossy link: the front holds media datagrams to write
    them together (L{PathFront.flush_media}), each once at the peer.
    """

    def setUp(self) -> None:
        super().setUp()
        self.cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        self.front.scheduler.limits = PathLimits(
            rate_window=0.1, coalesce_rate=200.0, coalesce_delay=0.01, coalesce_bytes=300, spread_rate=0.0
        )
        self.front.scheduler.loss_seen(0, self.bed.clock.seconds())
        self.got = self.bed.contact.media.got

    def _load(self, per_10ms: int) -> None:
        """
        C{per_10ms} datagrams each 10 ms for 0.2 s, each step flushed.
        """
        for step in range(20):
            for i in range(per_10ms):
                self.front.send_datagram(self.cid, b"load-%d-%d" % (step, i))
            self.bed.advance(0.01)

    def test_held_until_the_delay(self) -> None:
        """
        Above the rate, a datagram is held for C{coalesce_delay} with those
        that follow it, then all go at once, each delivered once.
        """
        self._load(3)  # 300/s
        self.assertEqual(self.front.scheduler.coalesce_delay(self.bed.clock.seconds()), 0.01)
        before = len(self.got)
        self.front.send_datagram(self.cid, b"a")
        self.front.send_datagram(self.cid, b"b")
        self.bed.flush()
        self.assertEqual(len(self.got), before)
        self.bed.clock.advance(0.009)
        self.bed.flush()
        self.assertEqual(len(self.got), before)
        self.bed.clock.advance(0.001)
        self.bed.flush()
        self.assertEqual(self.got[before:], [(0, b"a"), (0, b"b")])
        # each of the 62 went on both paths and was delivered once
        self.assertEqual(len(self.got), 62)
        self.assertEqual(self.c1.duplicates + self.c2.duplicates, 62)

    def test_held_until_the_bytes(self) -> None:
        """
        Held datagrams go as soon as C{coalesce_bytes} are held (with the
        frame and record overhead each), before the delay.
        """
        self._load(3)
        before = len(self.got)
        for i in range(5):
            self.front.send_datagram(self.cid, b"x" * 36 + b"%d" % i)  # 36 + 1 + 4 + 30 = 71 each
        self.bed.flush()
        self.assertEqual([d for _, d in self.got[before:]], [b"x" * 36 + b"%d" % i for i in range(5)])

    def test_slow_media_not_held(self) -> None:
        """
        Below the rate each datagram goes at once.
        """
        self._load(1)  # 100/s
        self.assertEqual(self.front.scheduler.coalesce_delay(self.bed.clock.seconds()), 0.0)
        before = len(self.got)
        self.front.send_datagram(self.cid, b"now")
        self.bed.flush()
        self.assertEqual(self.got[before:], [(0, b"now")])

    def test_close_sends_what_is_held_first(self) -> None:
        """
        A channel closed while some of its datagrams are held: they go
        before its close, and arrive.
        """
        self._load(3)
        before = len(self.got)
        self.front.send_datagram(self.cid, b"last")
        self.front.close_channel(self.cid)
        self.bed.flush()
        self.assertEqual(self.got[before:], [(0, b"last")])
        self.bed.advance(0.05)
        self.assertEqual(self.got[before:], [(0, b"last")])


    def test_held_dropped_with_the_last_path(self) -> None:
        """
        The session's last path goes while datagrams are held: they are
        dropped and their timer with them (nothing is left to run).
        """
        self._load(3)
        self.front.send_datagram(self.cid, b"held")
        held = [c for c in self.bed.clock.getDelayedCalls() if "_batch_due" in repr(c.func)]
        self.assertEqual(len(held), 1)
        self.front.remove_path(self.a1)
        self.assertTrue(held[0].active())  # one path left: still held
        self.front.remove_path(self.a2)
        self.assertFalse(held[0].active())
        self.front.flush_media()
        self.assertNotIn((0, b"held"), self.got)


class PingWithMediaTests(TwoPaths):
    """
    The agent pings a path that carries media in the same reactor turn as
    a datagram on it (so in the same TCP segment), a little early, and
    pings alone only the paths that carry none; every path is pinged at
    least every L{PROBE_INTERVAL}.
    """

    def test_pings_beside_the_media(self) -> None:
        """
        A call's media both ways on one path for 2 s: each of that path's
        pings is written by the call that writes a datagram to it, 70 to
        100 ms apart; the other path is pinged alone, every 100 ms.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        clock = self.bed.clock
        # per path: (when, whether written by the front's send_datagram) of each ping
        pings: dict[Any, list[tuple[float, bool]]] = {self.a1: [], self.a2: []}
        carried: dict[Any, int] = {self.a1: 0, self.a2: 0}
        sending = [False]
        for path in (self.a1, self.a2):

            def ping(path: Any = path, original: Any = path.ping) -> None:
                pings[path].append((clock.seconds(), sending[0]))
                original()

            def send(channel_id: int, data: bytes, component: int = 0, path: Any = path, original: Any = path.send_datagram) -> None:
                carried[path] += 1
                original(channel_id, data, component)

            path.ping = ping  # type: ignore[method-assign]
            path.send_datagram = send  # type: ignore[method-assign]
        start = clock.seconds()
        while clock.seconds() - start < 2.0:
            sending[0] = True
            self.front.send_datagram(cid, b"rtp")
            sending[0] = False
            self.contact_front.send_datagram(cid, b"back")
            self.bed.advance(0.02, step=0.02)
        [busy] = [path for path in (self.a1, self.a2) if carried[path]]
        [idle] = [path for path in (self.a1, self.a2) if path is not busy]
        self.assertGreaterEqual(len(pings[busy]), 20)
        self.assertEqual([beside for _, beside in pings[busy]], [True] * len(pings[busy]))
        self.assertGreaterEqual(len(pings[idle]), 19)
        self.assertEqual([beside for _, beside in pings[idle]], [False] * len(pings[idle]))
        for path, shortest in ((busy, PROBE_INTERVAL - 0.03), (idle, PROBE_INTERVAL)):
            gaps = [b[0] - a[0] for a, b in zip(pings[path], pings[path][1:])]
            self.assertLessEqual(max(gaps), PROBE_INTERVAL + 1e-6)
            self.assertGreaterEqual(min(gaps), shortest - 1e-6)


class FailoverTests(TwoPaths):
    """
    Make-before-break: a path lost while another is attached changes
    nothing for the session logic.
    """

    def advance_until(self, condition: Any, bound: float) -> None:
        """
        Let time pass in 10 ms steps until C{condition()}, at most C{bound}
        seconds (the scheduler's bounds are its own).
        """
        for _ in range(int(bound / 0.01)):
            if condition():
                return
            self.bed.advance(0.01)
        self.assertTrue(condition(), f"not within {bound} s")

    def test_carrier_lost(self) -> None:
        """
        When the carrier's connection is reset, the carrier moves to the
        other path at once: no loss is told to either half's session logic,
        SIP and media go on on the survivor, each datagram delivered once.
        When the last path goes too, the session logic hears of the front's
        loss (and only then).
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        self.assertIs(self.front.carrier, self.a1)
        self.front.send_datagram(cid, b"before")
        self.bed.flush()
        self.bed.cut(0)
        self.assertEqual([c[0] for c in self.bed.agent.observer.calls], ["established"])
        self.assertEqual([c[0] for c in self.bed.contact.observer.calls], ["established"])
        self.assertIs(self.front.carrier, self.a2)
        self.assertIs(self.contact_front.carrier, self.c2)
        self.assertEqual(self.front.switches, 1)
        self.front.send_datagram(cid, b"after")
        self.front.send_sip(1, b"BYE")
        self.bed.flush()
        self.assertEqual(self.bed.contact.media.got, [(0, b"before"), (0, b"after")])
        self.assertEqual(self.bed.contact.sip.received, [(self.contact_front, 1, b"BYE")])
        # the contact point's media goes back on the survivor
        self.contact_front.send_datagram(cid, b"down")
        self.bed.flush()
        self.assertEqual(self.bed.agent.media.got, [(0, b"down")])
        self.bed.cut(1)
        self.assertEqual(self.bed.agent.observer.calls[-1], ("lost", self.front))
        self.assertEqual(self.bed.contact.observer.calls[-1], ("lost", self.contact_front))

    def test_gone_line_counts_live_connections(self) -> None:
        """
        The line for a lost connection counts the connections still alive:
        it waits a moment for the losses of those that went with it (a
        contact point that died closes every connection at once; their
        losses are told one by one), and one whose socket already holds
        the peer's close is not one to go on on.
        """
        import socket

        def gone_lines(events: list[dict], bed: Bed) -> list[str]:
            # the agent's (the contact point's knows no sockets here)
            return [
                formatEvent(e).split("; ", 1)[1]
                for e in events
                if e.get("log_source") is bed.agent.paths and " gone (" in formatEvent(e)
            ]

        with capturedLogs() as events:
            self.bed.cut(0)
            self.assertEqual(gone_lines(events, self.bed), [])
            self.bed.advance(0.05)
        self.assertEqual(gone_lines(events, self.bed), ["going on on the other connection"])
        bed = Bed()
        bed.connect()
        bed.connect()
        with capturedLogs() as events:
            bed.cut(0)
            bed.advance(0.02)
            bed.cut(1)
        lines = [formatEvent(e) for e in events if e.get("log_source") is bed.agent.paths and " gone (" in formatEvent(e)]
        self.assertEqual(len(lines), 1)
        self.assertIn("2 connections are gone (", lines[0])
        self.assertTrue(lines[0].endswith("; none left"))
        bed = Bed()
        bed.connect()
        bed.connect()
        front = bed.agent.paths.front
        assert front is not None
        mine, theirs = socket.socketpair()
        self.addCleanup(mine.close)
        theirs.close()
        front._sockets[front.path_id(front.paths[1])] = mine
        with capturedLogs() as events:
            bed.cut(0)
            bed.advance(0.05)
        self.assertEqual(gone_lines(events, bed), ["none left"])

    def test_stop_without_drain(self) -> None:
        """
        A contact point that stops with a drain time of 0 closes every
        path at once: no warning (the drain's end is no fault), and no
        carrier move to a path that is closed too.
        """
        with capturedLogs() as events:
            self.bed.contact_factory.go_away_all("contact point shutting down", 0)
            self.bed.advance(0.1)
        self.assertFalse(self.c1.is_open or self.c2.is_open)
        self.assertEqual([formatEvent(e) for e in events if e["log_level"].name in ("warn", "error", "critical")], [])
        self.assertEqual([e for e in events if "carrier moves" in e.get("log_format", "")], [])
        closed = [formatEvent(e) for e in events if "closed: {reason}" in e.get("log_format", "")]
        self.assertIn("drain time over", " ".join(closed))

    def test_probes_only_with_channels(self) -> None:
        """
        Without a channel the agent pings no path (the keepalive watches
        them); with one it pings each, and gets round-trip samples; the
        contact point pings none.
        """
        self.bed.advance(1.0)
        self.assertEqual([p.connection.stats.pings_sent for p in (self.a1, self.a2)], [0, 0])
        self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.advance(1.0)
        self.assertGreaterEqual(min(p.connection.stats.pings_sent for p in (self.a1, self.a2)), 9)
        self.assertEqual([p.connection.stats.pings_sent for p in (self.c1, self.c2)], [0, 0])
        self.assertGreaterEqual(self.front.rtt_samples, 18)

    def test_quiet_link_no_duplication(self) -> None:
        """
        On a link without loss, media each 20 ms on one path and the
        agent's pings each 100 ms on the other: neither half finds a path
        stalled or duplicates (the contact point expects a path between
        two pings to be quiet).
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        # the round trip the kernel gives on a LAN (1 ms): stall bounds of 40 ms
        for front in (self.front, self.contact_front):
            for path_id in (0, 1):
                front.scheduler.rtt_sample(path_id, 0.001, self.bed.clock.seconds())
        for n in range(100):
            self.front.send_datagram(cid, b"up%d" % n)
            self.contact_front.send_datagram(cid, b"down%d" % n)
            self.bed.advance(0.02)
        for front in (self.front, self.contact_front):
            snapshot = front.scheduler.snapshot()
            self.assertFalse(snapshot["duplicating"], front)
            self.assertEqual([p["stalls"] for p in snapshot["paths"]], [0, 0], front)
        self.assertEqual(len(self.bed.contact.media.got), 100)
        self.assertEqual(len(self.bed.agent.media.got), 100)
        self.assertEqual(self.c1.duplicates + self.c2.duplicates + self.a1.duplicates + self.a2.duplicates, 0)

    def test_silent_path_stalls_at_contact_point(self) -> None:
        """
        The contact point finds a path the agent's pings no longer come
        through stalled (media each 20 ms on the other path shows the
        session is alive); it carried none of the contact point's media,
        so that media stays on its one path, not copied.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        self.bed.stalled.add(1)
        # no round trips here (no sockets): stall bound 0.8 s of the
        # initial RTT, after 0.15 s without the expected ping
        for n in range(60):
            self.front.send_datagram(cid, b"up%d" % n)
            self.bed.advance(0.02)
        snapshot = self.contact_front.scheduler.snapshot()
        self.assertEqual([p["state"] for p in snapshot["paths"]], ["up", "stalled"])
        self.assertFalse(snapshot["duplicating"])
        self.assertEqual(len(self.bed.contact.media.got), 60)

    def test_dedup_gap_is_a_loss(self) -> None:
        """
        A datagram that never came (a sequence number skipped) is a loss
        for the receiving half once it is still missing C{dedup_slow}
        (20 ms) after the next one came: from the datagram after that on it
        duplicates what it sends.  Before then it may be a copy reordered
        among paths.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        self.front.send_datagram(cid, b"one")
        self.bed.flush()
        self.front.stamper.next(cid, 0)  # number 1 is lost on the way
        self.front.send_datagram(cid, b"three")
        self.bed.flush()
        self.bed.clock.advance(0.01)
        self.front.send_datagram(cid, b"four")
        self.bed.flush()
        self.assertFalse(self.contact_front.scheduler.snapshot()["duplicating"])
        self.bed.clock.advance(0.015)
        self.front.send_datagram(cid, b"five")
        self.bed.flush()
        snapshot = self.contact_front.scheduler.snapshot()
        self.assertTrue(snapshot["duplicating"])
        self.assertEqual(sum(p["losses"] for p in snapshot["paths"]), 1)
        self.assertEqual((self.contact_front.dedup.gaps, self.contact_front.dedup.slow), (1, 1))

    def reordered(self, late_by: float) -> None:
        """
        Media numbered 1, 0, 3, 2, 5, 4, ... (each pair swapped, as
        datagrams spread over paths arrive), the odd ones on one path and
        the even ones on the other, each even one C{late_by} after the odd
        one it should have preceded; 50 datagrams.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        first, second = list(self.front.paths)
        for n in range(0, 50, 2):
            second.send_datagram(cid, struct.pack("!I", n + 1) + b"rtp", FLAG_SEQ)
            self.bed.flush()
            self.bed.clock.advance(late_by)
            first.send_datagram(cid, struct.pack("!I", n) + b"rtp", FLAG_SEQ)
            self.bed.flush()
            self.bed.clock.advance(0.02)

    def test_reordering_is_no_loss(self) -> None:
        """
        Datagrams reordered among paths by a few milliseconds (media
        spread over several paths, or copies, or a QUIC path beside TCP)
        are late but no loss: the receiving half does not start copying
        what it sends; each is delivered once.
        """
        self.reordered(0.003)
        dedup = self.contact_front.dedup
        self.assertEqual((dedup.gaps, dedup.late, dedup.slow), (24, 25, 0))
        snapshot = self.contact_front.scheduler.snapshot()
        self.assertFalse(snapshot["duplicating"])
        self.assertEqual(sum(p["losses"] for p in snapshot["paths"]), 0)
        self.assertEqual(len(self.bed.contact.media.got), 50)

    def test_slow_datagrams_are_a_loss(self) -> None:
        """
        The same, each swapped datagram 25 ms late (held up on its path
        past C{dedup_slow}): losses for the receiving half, which copies
        what it sends.
        """
        self.reordered(0.025)
        dedup = self.contact_front.dedup
        self.assertEqual((dedup.gaps, dedup.late), (24, 25))
        self.assertGreaterEqual(dedup.slow, 20)
        snapshot = self.contact_front.scheduler.snapshot()
        self.assertTrue(snapshot["duplicating"])
        self.assertGreaterEqual(sum(p["losses"] for p in snapshot["paths"]), 20)
        self.assertEqual(len(self.bed.contact.media.got), 50)

    def test_contact_point_copies_when_the_agent_does(self) -> None:
        """
        The contact point copies what it sends once the agent's copies
        come (the agent found the link lossy; the contact point has seen
        no loss of its own): from the read after the first copy, for the
        duplication window, without counting a loss.  The agent does not
        follow the contact point's copies (the two would keep each other
        copying).
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        now = self.bed.clock.seconds()
        self.front.scheduler.loss_seen(0, now)
        for n in range(3):
            self.front.send_datagram(cid, b"up%d" % n)
            self.bed.flush()
        snapshot = self.contact_front.scheduler.snapshot()
        self.assertTrue(snapshot["duplicating"])
        self.assertEqual(sum(p["losses"] for p in snapshot["paths"]), 0)
        self.assertGreater(snapshot["peer_copy_signs"], 0)
        self.assertEqual(len(self.bed.contact.media.got), 3)
        # its own datagrams now go on both paths: the agent takes one
        self.contact_front.send_datagram(cid, b"down")
        self.bed.flush()
        self.assertEqual(self.bed.agent.media.got, [(0, b"down")])
        self.assertEqual(self.front.dedup.duplicates, 1)
        # the window ends (it ran from the read after the last copy, the
        # next ping's); the agent, copied to, did not start copying
        self.bed.advance(self.contact_front.scheduler.limits.duplicate_window + 0.2)
        self.assertFalse(self.contact_front.scheduler.snapshot()["duplicating"])

    def test_agent_does_not_follow_copies(self) -> None:
        """
        The contact point's copies do not make the agent copy.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        self.contact_front.scheduler.loss_seen(0, self.bed.clock.seconds())
        for n in range(3):
            self.contact_front.send_datagram(cid, b"down%d" % n)
            self.bed.flush()
        self.assertEqual(self.front.dedup.duplicates, 3)
        snapshot = self.front.scheduler.snapshot()
        self.assertFalse(snapshot["duplicating"])
        self.assertEqual(snapshot["peer_copy_signs"], 0)

    def test_idle_session_left_alone(self) -> None:
        """
        Without channels a path that carries nothing is no stalled path:
        while SIP goes on the carrier for seconds, neither half closes the
        quiet one or moves its carrier.
        """
        self.bed.stalled.add(1)
        for _ in range(50):
            self.front.send_sip(1, b"OPTIONS sip:x SIP/2.0\r\n\r\n")
            self.bed.advance(0.1)
        self.assertEqual(len(self.bed.contact.sip.received), 50)
        self.assertEqual((self.front.paths, self.contact_front.paths), ([self.a1, self.a2], [self.c1, self.c2]))
        self.assertTrue(self.a2.is_open and self.c2.is_open)
        self.assertEqual((self.front.switches, self.contact_front.switches), (0, 0))

    def test_open_lost_with_the_carrier(self) -> None:
        """
        A channel opened just before the carrier breaks, its C{open} lost
        with it, is known to the peer all the same (a copy went on the
        other path): its datagrams go through there, and a close reaches
        the peer once.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.cut(0, lose_queued=True)
        self.assertEqual(self.bed.contact.media.accepted, [(self.contact_front, cid)])
        self.front.send_datagram(cid, b"through")
        self.bed.flush()
        self.assertEqual(self.bed.contact.media.got, [(0, b"through")])
        self.front.close_channel(cid)
        self.bed.flush()
        self.assertFalse(self.c2.connection.is_open_channel(cid))
        self.assertEqual([c[0] for c in self.bed.contact.observer.calls], ["established"])

    def test_sip_lost_with_the_carrier_sent_again(self) -> None:
        """
        SIP lost with the carrier (written, never read: a reset) is sent
        again on the new carrier, before what follows: the peer takes
        each message once, in order; the session logic hears nothing.
        """
        self.front.send_sip(1, b"INVITE")
        self.front.send_sip(1, b"CANCEL")
        self.bed.cut(0, lose_queued=True)
        self.front.send_sip(1, b"BYE")
        self.bed.flush()
        got = [data for _, _, data in self.bed.contact.sip.received]
        self.assertEqual(got, [b"INVITE", b"CANCEL", b"BYE"])
        self.assertEqual(self.front.sip_order.resent, 2)
        self.assertEqual([c[0] for c in self.bed.contact.observer.calls], ["established"])

    def test_sip_acknowledged_not_sent_again(self) -> None:
        """
        The peer acknowledges the SIP it took within L{SipOrder.ACK_DELAY}:
        what it acknowledged is not kept, and not sent again when the
        carrier moves; both directions.
        """
        self.front.send_sip(1, b"REGISTER")
        self.contact_front.send_sip(1, b"SIP/2.0 200 OK")
        self.bed.flush()
        self.assertEqual((self.front.sip_order.kept, self.contact_front.sip_order.kept), (1, 1))
        self.bed.advance(0.1)
        self.assertEqual((self.front.sip_order.kept, self.contact_front.sip_order.kept), (0, 0))
        self.bed.cut(0)
        self.front.send_sip(1, b"INVITE")
        self.bed.flush()
        self.assertEqual([d for _, _, d in self.bed.contact.sip.received], [b"REGISTER", b"INVITE"])
        self.assertEqual(self.front.sip_order.resent, 0)
        self.assertEqual(self.bed.contact.paths.status()["sip_order"]["sip_copies"], 0)

    def test_sip_too_large_to_number(self) -> None:
        """
        A SIP message too large to carry its number in one frame goes
        unnumbered, is taken as it comes, and is neither kept nor sent
        again; the numbered ones around it keep their order.
        """
        large = b"MESSAGE " + b"x" * 65500
        self.front.send_sip(1, b"INVITE")
        self.front.send_sip(1, large)
        self.front.send_sip(1, b"BYE")
        self.assertEqual(self.front.sip_order.kept, 2)
        self.bed.cut(0, lose_queued=True)
        self.bed.flush()
        self.assertEqual([d for _, _, d in self.bed.contact.sip.received], [b"INVITE", b"BYE"])

    def test_sip_held_on_a_stalled_carrier(self) -> None:
        """
        SIP queued on a carrier that stalls goes again on the path the
        carrier moves to, before the SIP that follows; when the stalled
        path delivers its copy late, the peer drops it: the ACK sent after
        the move does not overtake the INVITE retransmission sent before.
        """
        # a call's channel: the agent probes its paths
        self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.advance(0.5)  # round-trip samples on both paths
        self.bed.stalled.add(0)
        self.front.send_sip(1, b"INVITE again")
        self.advance_until(lambda: self.front.carrier is self.a2, 2.0)
        self.front.send_sip(1, b"ACK")
        self.bed.flush()
        self.bed.stalled.discard(0)
        self.bed.flush()
        self.assertEqual([d for _, _, d in self.bed.contact.sip.received], [b"INVITE again", b"ACK"])
        self.assertEqual(self.bed.contact.paths.status()["sip_order"]["sip_copies"], 1)

    def test_busy_peer_moves_nothing(self) -> None:
        """
        Nothing arrives on either path for 150 ms (the peer's process
        busy: a long turn, a garbage collection), past the stall bound of
        the path that carries the media: it is held up, not stalled, on
        both halves; the media and the carrier stay, nothing is copied;
        then everything comes in one go and the session goes on as before.
        A path that alone stops answering still stalls (the test below).
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.advance(0.5)  # round-trip samples on both paths
        for front in (self.front, self.contact_front):
            self.assertEqual(front.scheduler.media_paths(self.bed.clock.seconds()), (0,))
        self.bed.stalled = {0, 1}
        for _ in range(15):
            self.front.send_datagram(cid, b"held")
            self.contact_front.send_datagram(cid, b"held")
            self.bed.clock.advance(0.01)
        self.bed.stalled = set()
        self.bed.advance(0.3)
        for front in (self.front, self.contact_front):
            snapshot = front.scheduler.snapshot()
            self.assertEqual([p["stalls"] for p in snapshot["paths"]], [0, 0], front)
            self.assertFalse(snapshot["duplicating"], front)
            self.assertEqual(snapshot["media_switches"], 0, front)
        self.assertGreaterEqual(self.front.scheduler.stalls_held, 1)
        self.assertIs(self.front.carrier, self.a1)
        self.assertEqual(self.bed.agent.paths.status()["stalls_held"], self.front.scheduler.stalls_held)
        self.assertEqual(self.bed.agent.paths.status()["path_stalls"], 0)

    def test_silent_path_closed(self) -> None:
        """
        A path that stops answering (nothing arrives: a stall that does not
        end) is left by the carrier and media once the scheduler finds it
        stalled, and closed once it is found dead; the session logic hears
        nothing.
        """
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.advance(0.5)  # round-trip samples on both paths
        self.bed.stalled.add(0)
        self.advance_until(lambda: self.front.carrier is self.a2, 1.0)
        # the contact point, which does not probe and has no round-trip
        # time of its own here, follows what it hears a little later
        self.advance_until(lambda: self.contact_front.carrier is self.c2, 1.0)
        self.assertEqual(self.front.scheduler.media_paths(self.bed.clock.seconds()), (1,))
        self.front.send_datagram(cid, b"on-the-survivor")
        self.bed.flush()
        self.assertIn((0, b"on-the-survivor"), self.bed.contact.media.got)
        self.advance_until(lambda: not self.a1.is_open, 10.0)
        self.assertEqual(self.front.paths, [self.a2])
        self.assertEqual([c[0] for c in self.bed.agent.observer.calls], ["established"])


class _Conn:
    """
    What the keeper sees of a connection it opened.
    """

    def __init__(self) -> None:
        self.front: Any = None
        self.closed: list[str] = []
        self._closed: Any = None

    def when_closed(self) -> Any:
        from twisted.internet.defer import Deferred

        self._closed = Deferred()
        return self._closed

    def lose(self) -> None:
        self._closed.callback(self)

    def close(self, code: int = 0, reason: str = "") -> None:
        self.closed.append(reason)

    def close_for_good(self, reason: str) -> None:
        self.closed.append(reason)


class KeeperTests(SynchronousTestCase):
    """
    L{PathKeeper}: the agent's further connections, kept while the session
    is up and replaced in the background.
    """

    def setUp(self) -> None:
        from twisted.internet.defer import Deferred

        from spwm.session.carrier import PathKeeper

        self.clock = Clock()
        self.attempts: list[Deferred[Any]] = []

        def connect() -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.attempts.append(d)
            return d

        self.keeper = PathKeeper(self.clock, connect, 2, retry_cap=4.0)

    def test_fill_and_replace(self) -> None:
        """
        Up: as many attempts as connections wanted, no more; a lost
        attached connection is replaced at once, one that never attached
        after a growing delay (at most the cap); nothing while the session
        is down.
        """
        self.assertEqual(self.attempts, [])
        self.keeper.session_up()
        self.assertEqual(len(self.attempts), 2)
        first, second = _Conn(), _Conn()
        first.front = object()
        self.attempts[0].callback(first)
        self.attempts[1].callback(second)
        self.keeper.session_up()
        self.assertEqual(len(self.attempts), 2)
        first.lose()
        self.clock.advance(0)
        self.assertEqual(len(self.attempts), 3)
        second.lose()  # never attached: a failure
        self.clock.advance(0.4)
        self.assertEqual(len(self.attempts), 3)
        self.clock.advance(0.1)
        self.assertEqual(len(self.attempts), 4)
        for _ in range(10):
            self.attempts[-1].errback(ConnectionError("refused"))
            self.clock.advance(4.0)
        self.assertEqual(len(self.attempts), 14)
        self.keeper.session_down()
        self.attempts[-1].errback(ConnectionError("refused"))
        self.clock.advance(60)
        self.assertEqual(len(self.attempts), 14)

    def test_failure_told_once_per_reason(self) -> None:
        """
        Further connections that fail the same way, retried after a
        growing delay: one info line, and one more for another reason;
        again after one attached.
        """
        self.keeper = type(self.keeper)(self.clock, self.keeper._connect, 1, retry_cap=4.0)

        def failures() -> list[str]:
            return [formatEvent(e) for e in events if "another connection" in e.get("log_format", "")]

        with capturedLogs() as events:
            self.keeper.session_up()
            for why in ("refused", "refused", "refused", "timed out", "timed out"):
                self.attempts[-1].errback(ConnectionError(why))
                self.clock.advance(4.0)
            self.assertEqual(
                [line.split(";")[0] for line in failures()],
                [
                    "another connection to the contact point failed: refused",
                    "another connection to the contact point failed: timed out",
                ],
            )
            attached = _Conn()
            attached.front = object()
            self.attempts[-1].callback(attached)
            self.keeper.attached(attached)
            attached.lose()
            self.clock.advance(0)
            self.attempts[-1].errback(ConnectionError("timed out"))
            self.assertEqual(len(failures()), 3)

    def test_cut_before_handshake_told_once(self) -> None:
        """
        A further connection the contact point closes as it takes it (over
        its --max-tunnels): one info line for the first of a row, not one
        per retry; again after one attached; none for a connection
        refused in the handshake (told with its reason elsewhere).
        """
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.keeper = type(self.keeper)(self.clock, self.keeper._connect, 1, retry_cap=4.0)
        with capturedLogs() as events:
            self.keeper.session_up()
            for _ in range(5):
                conn = _Conn()
                conn.lost_reason = Failure(ConnectionDone())
                self.attempts[-1].callback(conn)
                conn.lose()
                self.clock.advance(4.0)
            lines = [formatEvent(e) for e in events if e["log_level"].name != "debug"]
            self.assertEqual(len(lines), 1)
            self.assertIn("closed a further connection before its handshake (Connection was closed cleanly.)", lines[0])
            self.assertIn("--max-tunnels", lines[0])
            self.assertEqual(events[0]["log_level"].name, "info")
            attached = _Conn()
            attached.front = object()
            self.attempts[-1].callback(attached)
            self.keeper.attached(attached)
            refused = _Conn()
            refused.close_info = object()
            attached.lose()
            self.clock.advance(0)
            self.attempts[-1].callback(refused)
            refused.lose()
            self.clock.advance(4.0)
            self.assertEqual(len([e for e in events if "further connection" in e.get("log_format", "")]), 1)
            cut = _Conn()
            self.attempts[-1].callback(cut)
            cut.lose()
        self.assertEqual(len([e for e in events if "further connection" in e.get("log_format", "")]), 2)

    def test_lost_young_again_and_again(self) -> None:
        """
        A connection of ours lost a second after it attached (a middlebox
        that kills every further connection soon) is replaced at once
        L{PROMPT_BURST} times in a row, then after 0.5, 1, 2 s...; one that
        lasts L{STEADY_UP} is replaced at once again, and the waits start
        over.
        """
        from spwm.tunnel.retry import PROMPT_BURST, STEADY_UP

        keeper = self.keeper
        keeper.extra = 1
        keeper.session_up()

        def attach_and_lose(after: float) -> None:
            conn = _Conn()
            conn.front = object()
            self.attempts[-1].callback(conn)
            keeper.attached(conn)
            self.clock.advance(after)
            conn.lose()

        for _ in range(PROMPT_BURST):
            n = len(self.attempts)
            attach_and_lose(1.0)
            self.clock.advance(0)
            self.assertEqual(len(self.attempts), n + 1)
        for wait in (0.5, 1.0, 2.0):
            n = len(self.attempts)
            attach_and_lose(1.0)
            self.clock.advance(wait - 0.01)
            self.assertEqual(len(self.attempts), n, wait)
            self.clock.advance(0.02)
            self.assertEqual(len(self.attempts), n + 1, wait)
        n = len(self.attempts)
        attach_and_lose(STEADY_UP)
        self.clock.advance(0)
        self.assertEqual(len(self.attempts), n + 1)
        # the waits start over (and the bucket has filled meanwhile)
        n = len(self.attempts)
        attach_and_lose(1.0)
        self.clock.advance(0)
        self.assertEqual(len(self.attempts), n + 1)

    def _lossy_front(self, paths: int = 1) -> _Front:
        """
        A session front whose link loses packets (the kernel retransmitted
        on its first path), with C{paths} paths, given to the keeper.
        """
        from spwm.session.paths import PathKind

        front = _Front()
        self._lossy_scheduler(front.scheduler)
        for path_id in range(1, paths):
            front.scheduler.add(path_id, PathKind.TCP, self.clock.seconds())
        self.keeper._front = lambda: front
        return front

    def _attached(self, attempt: int) -> _Conn:
        conn = _Conn()
        self.attempts[attempt].callback(conn)
        conn.front = object()
        self.keeper.attached(conn)
        return conn

    def test_replacement_raced_on_a_lossy_link(self) -> None:
        """
        On a link that loses packets, an attached connection of ours that
        is lost is replaced by two attempts at once: the first to attach
        is kept, the other is closed (not counted as a failure, not
        replaced); one still connecting then is closed as it connects.
        """
        self._lossy_front(paths=3)
        self.keeper.session_up()
        first, second = self._attached(0), self._attached(1)
        first.lose()
        self.clock.advance(0)
        self.assertEqual(len(self.attempts), 4)
        self.assertEqual((self.keeper.raced, self.keeper.race_losers), (1, 0))
        slow, fast = _Conn(), _Conn()
        self.attempts[2].callback(slow)
        self.attempts[3].callback(fast)
        fast.front = object()
        self.keeper.attached(fast)
        self.assertEqual(slow.closed, ["another connection attached first"])
        self.assertEqual((fast.closed, second.closed), ([], []))
        self.assertEqual(self.keeper.race_losers, 1)
        slow.lose()  # its loss is ours: nothing more is opened
        self.clock.advance(20)
        self.assertEqual(len(self.attempts), 4)
        # again, the winner's TCP connection first: the other is closed as it connects
        fast.lose()
        self.clock.advance(0)
        self.assertEqual(len(self.attempts), 6)
        self._attached(4)
        late = _Conn()
        self.attempts[5].callback(late)
        self.assertEqual(late.closed, ["not wanted any more"])
        self.assertEqual((self.keeper.raced, self.keeper.race_losers), (2, 1))

    def _resumer(self, attempt: int) -> _Conn:
        conn = _Conn()
        conn.local_hello = {"paths": 1, "resume": {"session_id": "s1"}}  # type: ignore[attr-defined]
        self.attempts[attempt].callback(conn)
        return conn

    def test_resumption_raced_ours_first(self) -> None:
        """
        The session's last path broke on a lossy link: one attempt of
        ours races the tunnel service's resumption.  Up first, it resumes
        the session and is one of ours from then on: the keeper opens the
        rest, and when the service's own next connection attaches, one of
        ours is drained.
        """
        front = self._lossy_front(paths=3)
        self.keeper.session_up()
        first, second = self._attached(0), self._attached(1)
        self.keeper.session_down()
        self.keeper.race_resumption()
        self.assertEqual((len(self.attempts), self.keeper.resumptions_raced), (3, 1))
        first.lose()
        second.lose()
        self.clock.advance(5)
        self.assertEqual(len(self.attempts), 3)
        ours = self._resumer(2)
        self.assertEqual(ours.closed, [])
        ours.front = front
        front.paths = [ours]
        front.attached = [ours]
        self.keeper.session_up()
        self.assertEqual((self.keeper.resumptions_won, len(self.attempts)), (1, 5))
        more = [self._attached(3), self._attached(4)]
        service = _Conn()
        service.front = front
        self.keeper.attached(service)
        self.assertEqual((self.keeper.drained, self.keeper.extra), (1, 2))
        self.clock.advance(self.limits_drain())
        closed = [c for c in (ours, *more) if c.closed]
        self.assertEqual([c.closed for c in closed], [["fewer connections wanted"]])

    def test_resumption_raced_service_first(self) -> None:
        """
        The tunnel service's connection resumes the session first: our
        attempt is closed (a race loser, not replaced).  One under way
        when the session went down races rather than a new one.
        """
        self._lossy_front(paths=3)
        self.keeper.session_up()
        first = self._attached(0)
        self.keeper.session_down()
        self.keeper.race_resumption()
        first.lose()
        self.assertEqual(len(self.attempts), 2)  # the one under way races
        ours = self._resumer(1)
        front = self._lossy_front(paths=1)
        front.paths = [_Conn()]
        self.keeper.session_up()
        self.assertEqual(ours.closed, ["another connection resumed the session first"])
        self.assertEqual((self.keeper.resumptions_won, self.keeper.race_losers), (0, 1))
        ours.lose()
        self.clock.advance(0)
        self.assertEqual(len(self.attempts), 4)  # the two wanted, nothing for the loser

    def test_resumption_not_raced(self) -> None:
        """
        Without a race (a clean link), an attempt up while the session is
        down is closed, as is a second one of a race.
        """
        self.keeper.session_up()
        self.keeper.session_down()
        self.assertEqual(self._resumer(0).closed, ["the session is gone"])
        self.assertEqual(self._resumer(1).closed, ["the session is gone"])

    def test_joining_attempts_closed_with_the_session(self) -> None:
        """
        Connections of ours still in their handshakes when the session's
        last path goes (made to attach to it) are closed at once, their
        transport aborted; attached ones are left to their own loss.
        """

        class Transport:
            aborted = False

            def abortConnection(self) -> None:
                self.aborted = True

        self.keeper.session_up()
        attached = self._attached(0)
        joining = _Conn()
        joining.transport = Transport()  # type: ignore[attr-defined]
        self.attempts[1].callback(joining)
        self.keeper.session_down()
        self.assertEqual(joining.closed, ["the session it was to join is gone"])
        self.assertTrue(joining.transport.aborted)  # type: ignore[attr-defined]
        self.assertEqual(attached.closed, [])
        joining.lose()
        self.keeper.session_up()
        self.assertEqual(len(self.attempts), 3)  # one to replace the one closed

    def test_joining_attempt_in_its_tls_handshake_resumes(self) -> None:
        """
        Of our connections still in their handshakes when the session's
        last path goes, one whose hello still waits for its TLS handshake
        is kept (it will resume the session, PathSessions.seal); the
        others are closed; no further attempt races the resumption, and
        once up the kept one is one of ours.
        """
        self.keeper.session_up()
        held, other = _Conn(), _Conn()
        held.hello_held = True  # type: ignore[attr-defined]
        other.hello_held = True  # type: ignore[attr-defined]
        self.attempts[0].callback(held)
        self.attempts[1].callback(other)
        self.keeper.session_down()
        self.assertEqual((held.closed, other.closed), ([], ["the session it was to join is gone"]))
        self.keeper.race_resumption()
        self.assertEqual((len(self.attempts), self.keeper.resumptions_raced), (2, 1))
        front = self._lossy_front(paths=1)
        held.front = front
        front.paths = [held]
        self.keeper.session_up()
        self.assertEqual((self.keeper.resumptions_won, held.closed), (1, []))
        other.lose()
        self.clock.advance(0)
        # the other one wanted, and the one beside the service's next
        self.assertEqual(len(self.attempts), 4)

    def test_attempt_connecting_at_the_loss_resumes(self) -> None:
        """
        An attempt of ours still connecting when the session's last path
        goes, on a clean link, whose hello waits for its TLS handshake:
        it races the resumption (its hello is decided at the handshake);
        a second such is closed.
        """
        self.keeper.session_up()
        self.keeper.session_down()
        first, second = _Conn(), _Conn()
        for conn in (first, second):
            conn.hello_held = True  # type: ignore[attr-defined]
            conn.local_hello = {"paths": 1, "resume": {"session_id": "s1"}}  # type: ignore[attr-defined]
        self.attempts[0].callback(first)
        self.attempts[1].callback(second)
        self.assertEqual((first.closed, second.closed), ([], ["the session is gone"]))
        self.assertEqual(self.keeper.resumptions_raced, 1)
        front = self._lossy_front(paths=1)
        first.front = front
        front.paths = [first]
        self.keeper.session_up()
        self.assertEqual((self.keeper.resumptions_won, first.closed), (1, []))

    def test_no_race_after_stop(self) -> None:
        """
        The agent stopping closes the last path: no attempt is made.
        """
        self.keeper.session_up()
        self.keeper.stop()
        self.keeper.race_resumption()
        self.assertEqual((len(self.attempts), self.keeper.resumptions_raced), (2, 0))

    def test_one_attempt_races(self) -> None:
        """
        Of the attempts under way when the session went down, the first
        up races the resumption; the others are closed.
        """
        self.keeper.session_up()
        self.keeper.session_down()
        self.keeper.race_resumption()
        self.assertEqual(len(self.attempts), 2)
        self.assertEqual(self._resumer(1).closed, [])
        self.assertEqual(self._resumer(0).closed, ["the session is gone"])

    def test_service_connection_raced(self) -> None:
        """
        On a lossy link the tunnel service's own connection, attached, is
        lost while the session goes on: one of ours races the service's
        next connection.  If the service's attaches first, ours (not
        attached yet) is closed; if ours attaches first it carries the
        session's share until the service's attaches, and is then drained
        (out of the session at once, closed later).  Nothing with the
        session down, nor for the service's connection lost in its
        handshake (never attached).
        """
        front = self._lossy_front(paths=3)
        self.keeper.session_up()
        self._attached(0)
        self._attached(1)
        service = _Conn()  # the service's: PathSessions tells the keeper of its loss
        service.front = object()
        self.keeper.lost(service)
        self.clock.advance(0)
        self.assertEqual((len(self.attempts), self.keeper.raced), (3, 1))
        # the service's next connection attaches first: ours is closed
        raced = _Conn()
        self.attempts[2].callback(raced)
        again = _Conn()
        again.front = object()
        self.keeper.attached(again)
        self.assertEqual(raced.closed, ["another connection attached first"])
        self.assertEqual(self.keeper.race_losers, 1)
        # again, ours first: it stays until the service's attaches, then drains
        self.keeper.lost(again)
        self.clock.advance(0)
        self.assertEqual((len(self.attempts), self.keeper.raced), (4, 2))
        ours = self._attached(3)
        front.attached.append(ours)
        self.clock.advance(5)
        self.assertEqual((ours.closed, len(self.attempts)), ([], 4))
        third = _Conn()
        third.front = object()
        self.keeper.attached(third)
        self.assertEqual(front.removed, [ours])
        self.assertEqual((self.keeper.drained, self.keeper.race_losers), (1, 2))
        self.clock.advance(self.limits_drain())
        self.assertEqual(ours.closed, ["fewer connections wanted"])
        # never attached, or the session down: no race
        handshake = _Conn()
        self.keeper.lost(handshake)
        self.keeper.session_down()
        self.keeper.lost(third)
        self.clock.advance(10)
        self.assertEqual((len(self.attempts), self.keeper.raced), (4, 2))

    def limits_drain(self) -> float:
        from spwm.limits import PathLimits

        return PathLimits().count_drain

    def test_no_race_on_a_clean_link_or_without_room(self) -> None:
        """
        One attempt for a replacement on a link that lost nothing lately,
        for a connection that never attached (a failure: the growing delay
        applies), when a raced attempt failed (the other goes on alone),
        and when one more connection than wanted would not fit in the
        contact point's C{max_paths}.
        """
        from spwm.limits import PathLimits
        from spwm.session.paths import PathScheduler
        from spwm.tunnel.retry import STEADY_UP

        front = _Front()
        self.keeper._front = lambda: front
        self.keeper.session_up()
        kept = self._attached(0)
        self._attached(1).lose()
        self.clock.advance(0)
        self.assertEqual((len(self.attempts), self.keeper.raced), (3, 0))
        # a lossy link, the loss of one that never attached
        self._lossy_front()
        never = _Conn()
        self.attempts[2].callback(never)
        never.lose()
        self.clock.advance(1.0)
        self.assertEqual((len(self.attempts), self.keeper.raced), (4, 0))
        # raced, and one of the two fails: the other goes on alone
        other = self._attached(3)
        kept.lose()
        self.clock.advance(0)
        self.assertEqual((len(self.attempts), self.keeper.raced), (6, 1))
        self.attempts[4].errback(ConnectionError("refused"))
        self.clock.advance(1.0)
        self.assertEqual(len(self.attempts), 6)
        self._attached(5)
        # no room: max_paths 3 holds the service's connection and our two
        front = self._lossy_front()
        front.scheduler = PathScheduler(PathLimits(max_paths=3))
        self._lossy_scheduler(front.scheduler)
        other.lose()
        self.clock.advance(1.0)
        self.assertEqual((len(self.attempts), self.keeper.raced), (7, 1))
        # with room, the same loss is raced
        steady = self._attached(6)
        self.clock.advance(STEADY_UP)
        front.scheduler = PathScheduler(PathLimits(max_paths=4))
        self._lossy_scheduler(front.scheduler)
        steady.lose()
        self.clock.advance(0)
        self.assertEqual((len(self.attempts), self.keeper.raced), (9, 2))

    def _lossy_scheduler(self, scheduler: Any) -> None:
        from spwm.session.paths import PathKind, TcpInfo

        scheduler.add(0, PathKind.TCP, self.clock.seconds())
        scheduler.tcp_info(0, TcpInfo(total_retrans=0), self.clock.seconds())
        scheduler.tcp_info(0, TcpInfo(total_retrans=1), self.clock.seconds())

    def test_late_connection_closed(self) -> None:
        """
        A connection that comes up after the session went down is closed;
        stopping closes the keeper's connections.
        """
        self.keeper.session_up()
        kept = self._attached(0)
        self.keeper.session_down()
        late = _Conn()
        self.attempts[1].callback(late)
        self.assertEqual(late.closed, ["the session is gone"])
        self.keeper.stop()
        self.assertEqual(kept.closed, ["agent stopping"])

    def test_stop_cancels_attempts(self) -> None:
        """
        Stopping cancels the attempts under way (they would go on
        connecting, and leave their timers, after the agent stopped),
        quietly: no failed attempt is logged or counted.
        """
        from twisted.internet.defer import Deferred

        from spwm.session.carrier import PathKeeper

        cancelled: list[Deferred[Any]] = []
        attempts: list[Deferred[Any]] = []

        def connect() -> Deferred[Any]:
            d: Deferred[Any] = Deferred(cancelled.append)
            attempts.append(d)
            return d

        keeper = PathKeeper(self.clock, connect, 2, retry_cap=4.0)
        keeper.session_up()
        self.assertEqual(len(attempts), 2)
        done = _Conn()
        attempts[0].callback(done)
        with capturedLogs() as events:
            keeper.stop()
        self.assertEqual(cancelled, [attempts[1]])
        self.assertEqual(done.closed, ["agent stopping"])
        self.assertEqual((events, self.clock.getDelayedCalls()), ([], []))
        # up again later: the next attempt goes at once (no failure counted)
        keeper.session_up()
        self.assertEqual(len(attempts), 3)


class _Front:
    """
    What the keeper sees of the session's front when it drains a connection.
    """

    session_id = "s1"

    def __init__(self) -> None:
        from spwm.session.paths import PathScheduler

        self.carrier: Any = None
        self.attached: list[Any] = []
        self.removed: list[Any] = []
        #: its paths, the first the one it was made with
        self.paths: list[Any] = []
        #: its media rate and copies are the load the keeper feeds the count
        self.scheduler = PathScheduler()
        self.watched: list[float] = []

    def path_id(self, path: Any) -> int | None:
        return self.attached.index(path) if path in self.attached else None

    def remove_path(self, path: Any) -> bool:
        self.attached.remove(path)
        self.removed.append(path)
        return bool(self.attached)

    def watch_link(self, now: float) -> None:
        self.watched.append(now)

    def live_paths(self) -> int:
        return len(self.attached)


class AdaptiveKeeperTests(SynchronousTestCase):
    """
    L{PathKeeper} with a L{PathCount} (C{--tunnel-connections auto}): it
    opens a connection when the count wants more and drains one of its
    own when it wants fewer.
    """

    def setUp(self) -> None:
        from twisted.internet.defer import Deferred

        from spwm.limits import PathLimits
        from spwm.session.carrier import PathKeeper
        from spwm.session.paths import PathCount

        self.clock = Clock()
        self.limits = PathLimits()
        self.count = PathCount(2, 4, self.limits)
        self.front = _Front()
        self.attempts: list[Deferred[Any]] = []

        def connect() -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.attempts.append(d)
            return d

        self.keeper = PathKeeper(self.clock, connect, 5, count=self.count, front=lambda: self.front)  # type: ignore[arg-type,return-value]

    def connect_all(self) -> list[_Conn]:
        made = []
        for d in self.attempts:
            if not d.called:
                conn = _Conn()
                conn.front = self.front
                self.front.attached.append(conn)
                d.callback(conn)
                self.keeper.attached(conn)
                made.append(conn)
        return made

    def stalls(self, seconds: float) -> None:
        """Media that stalls every half second, for C{seconds}."""
        for _ in range(int(seconds / 0.5)):
            for _ in range(20):
                self.clock.advance(0.02)
                self.count.arrivals(self.clock.seconds())
            self.clock.advance(0.1)
            self.count.arrivals(self.clock.seconds(), 5)
            self.connect_all()

    def test_late_loss_grows_before_media(self) -> None:
        """
        The keeper has the front read the kernel's retransmissions before
        it asks the count: a late loss found there opens the connections
        in that same tick, without any media.
        """
        self.keeper.session_up()
        self.connect_all()
        self.front.watch_link = lambda now: self.count.late_loss(now)  # type: ignore[method-assign]
        with capturedLogs() as events:
            self.clock.advance(0.5)
        self.assertEqual((self.count.wanted, self.keeper.extra), (6, 5))
        self.assertEqual(len(self.attempts), 5)
        # four more: the ceiling's two and its two spares
        lines = [formatEvent(e) for e in events if "wanted" in formatEvent(e)]
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].endswith("; opening 4 more (6 wanted, 2 of them spare)"), lines[0])

    def test_link_watched_every_tick(self) -> None:
        """
        Every count interval while the session is up, none once it is down.
        """
        self.keeper.session_up()
        self.clock.pump([0.5, 0.5])
        self.assertEqual(self.front.watched, [0.5, 1.0])
        self.keeper.session_down()
        self.clock.pump([0.5, 0.5])
        self.assertEqual(len(self.front.watched), 2)

    def test_grow_then_drain(self) -> None:
        """
        From the count's floor (one connection besides the tunnel
        service's), stalls that keep coming open more up to the ceiling
        (two at once by default) and its two spares; after the quiet spell
        one below the ceiling and the spares are drained: out of the
        session at once, not the carrier, closed C{count_drain} later, not
        replaced.
        """
        self.assertEqual(self.keeper.extra, 1)
        self.keeper.session_up()
        self.assertEqual(len(self.attempts), 1)
        first = self.connect_all()[0]
        self.stalls(20.0)
        self.assertEqual(len(self.attempts), 5)
        self.assertEqual((self.keeper.extra, self.count.wanted, self.count.spare), (5, 6, 2))
        self.stalls(10.0)
        self.assertEqual(len(self.attempts), 5)
        self.front.carrier = self.front.attached[-1]
        self.clock.pump([1.0] * int(self.limits.count_quiet))
        self.assertEqual((self.keeper.extra, self.keeper.drained, self.count.spare), (2, 3, 0))
        drained = self.front.removed[0]
        self.assertIsNot(drained, self.front.carrier)
        self.assertEqual(drained.closed, [])
        self.clock.advance(self.limits.count_drain)
        self.assertEqual(drained.closed, ["fewer connections wanted"])
        drained.lose()
        self.clock.advance(1.0)
        self.assertEqual(len(self.attempts), 5)
        # down to the floor, and no further
        self.clock.pump([1.0] * int(10 * self.limits.count_quiet))
        self.assertEqual((self.keeper.extra, self.keeper.drained, self.count.wanted), (1, 4, 2))
        self.assertIn(first, self.front.attached + self.front.removed)
        self.assertEqual(len(self.front.attached), 1)

    def test_grow_with_the_load(self) -> None:
        """
        Media sent at 500 datagrams/s while losses keep it copied: only
        once the kernel retransmits (the network loses packets, not a busy
        process) the keeper opens, at the next decision, connections up to
        what the load asks for (16 in all: 4 copies of each at 125 a
        connection), without a media stall; when the media stops, they
        drain together C{count_load_linger} later.
        """
        from spwm.session.paths import PathKind, TcpInfo

        scheduler = self.front.scheduler
        scheduler.add(0, PathKind.TCP, 0.0)
        self.keeper.session_up()
        self.connect_all()
        scheduler.loss_seen(0, self.clock.seconds())
        scheduler.loss_seen(0, self.clock.seconds())  # losses that keep coming
        for _ in range(100):  # 1 s at 500/s
            self.clock.advance(0.01)
            scheduler.media_paths(self.clock.seconds(), count=5)
        self.clock.advance(0.5)
        self.assertEqual((self.count.wanted, len(self.attempts)), (2, 1))
        scheduler.tcp_info(0, TcpInfo(total_retrans=0), self.clock.seconds())
        scheduler.tcp_info(0, TcpInfo(total_retrans=3), self.clock.seconds())
        for _ in range(150):  # the media goes on
            self.clock.advance(0.01)
            scheduler.media_paths(self.clock.seconds(), count=5)
        self.assertEqual((self.count.wanted, self.keeper.extra), (16, 15))
        self.assertEqual(len(self.attempts), 15)
        self.assertEqual(self.count.media_stalls, 0)
        self.connect_all()
        self.clock.pump([1.0] * int(self.limits.count_load_linger - 2))
        self.assertEqual((self.count.wanted, self.keeper.drained), (16, 0))
        self.clock.pump([1.0] * 4)
        self.assertEqual((self.count.wanted, self.keeper.extra, self.keeper.drained), (2, 1, 14))

    def test_load_with_a_quic_path(self) -> None:
        """
        The same load with a QUIC path in the session: while the media goes
        on the QUIC path, neither its load nor media stalls open TCP
        connections (they would carry none of it); once it is back on TCP
        the load does, up to 15 in all with the QUIC path, the most the
        contact point takes in a session (C{max_paths}, 16).
        """
        from spwm.session.paths import PathKind, TcpInfo

        scheduler = self.front.scheduler
        scheduler.add(0, PathKind.TCP, 0.0)
        scheduler.add(1, PathKind.QUIC, 0.0)
        self.keeper.session_up()
        self.connect_all()

        def media(seconds: float) -> None:
            for _ in range(int(seconds / 0.01)):
                self.clock.advance(0.01)
                scheduler.tick(self.clock.seconds())
                scheduler.received(0, self.clock.seconds())
                scheduler.received(1, self.clock.seconds())
                scheduler.media_paths(self.clock.seconds(), count=5)

        media(1.5)  # past the QUIC path's hold
        self.assertTrue(scheduler.media_on_quic())
        scheduler.loss_seen(0, self.clock.seconds())
        scheduler.loss_seen(0, self.clock.seconds())
        scheduler.tcp_info(0, TcpInfo(total_retrans=0), self.clock.seconds())
        scheduler.tcp_info(0, TcpInfo(total_retrans=3), self.clock.seconds())
        media(1.5)
        self.stalls(10.0)
        self.assertEqual((self.count.wanted, self.keeper.extra, len(self.attempts)), (2, 1, 1))
        # UDP stops: the QUIC path goes, the media is on TCP again
        scheduler.remove(1)
        scheduler.add(1, PathKind.QUIC, self.clock.seconds())  # back, not yet past its hold
        scheduler.loss_seen(0, self.clock.seconds())
        scheduler.loss_seen(0, self.clock.seconds())
        scheduler.tcp_info(0, TcpInfo(total_retrans=6), self.clock.seconds())
        for _ in range(150):
            self.clock.advance(0.01)
            scheduler.media_paths(self.clock.seconds(), count=5)
        self.assertFalse(scheduler.media_on_quic())
        self.assertEqual((self.count.wanted, self.keeper.extra), (16, 14))

    def test_stop_and_down(self) -> None:
        """
        Down, the keeper asks the count no more; stopping closes what is
        draining too; a connection that comes up when fewer are wanted is
        closed.
        """
        self.keeper.session_up()
        self.connect_all()
        for _ in range(3):
            self.count.stall(self.clock.seconds())
        self.clock.advance(0.5)
        self.assertEqual(len(self.attempts), 5)
        self.keeper.extra = 1  # as if the count had gone down meanwhile
        for d in self.attempts[1:]:
            late = _Conn()
            d.callback(late)
            self.assertEqual(late.closed, ["not wanted any more"])
        self.keeper.session_down()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.keeper.session_up()
        self.keeper.extra = 0
        self.keeper._drain(self.front)  # type: ignore[arg-type]
        self.keeper.stop()
        self.assertEqual(self.front.removed[0].closed, ["agent stopping"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CountFedTests(TwoPaths):
    """
    The agent's front feeds its L{PathCount} the first copies of the
    media it receives; a drained path goes without a loss.
    """

    def test_fed_by_arrivals(self) -> None:
        """
        Media from the contact point, in time and then held back and
        released together: one media stall, seen from the reads; the copies
        count once.
        """
        from spwm.session.paths import PathCount

        count = PathCount(2, 4)
        self.front.count = count
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        self.contact_front.scheduler.loss_seen(0, self.bed.clock.seconds())  # copies on both paths
        for i in range(10):
            self.contact_front.send_datagram(cid, b"%d" % i)
            self.bed.advance(0.02, step=0.02)
        self.assertEqual(count.media_stalls, 0)
        self.bed.stalled = {0, 1}
        for i in range(10, 16):
            self.contact_front.send_datagram(cid, b"%d" % i)
            self.bed.clock.advance(0.02)
        self.bed.stalled = set()
        self.bed.flush()
        self.contact_front.send_datagram(cid, b"next")
        self.bed.advance(0.02, step=0.02)
        self.assertEqual(count.media_stalls, 1)
        self.assertEqual(len(self.bed.agent.media.got), 17)

    def test_contact_reports_stalls(self) -> None:
        """
        An agent that adapts says C{stalls} in its hello; its contact
        point counts the stalls of the media it receives and tells the
        agent, whose count takes them as its own (once each).
        """
        from spwm.session.paths import PathCount

        bed = Bed()
        count = PathCount(2, 4)
        bed.agent.paths.count = count
        a1, c1 = bed.connect()
        bed.connect()
        front = bed.agent.paths.front
        assert front is not None
        contact_front = bed.contact.paths.fronts[0]
        self.assertEqual(c1.peer_hello.get("stalls"), 1)
        self.assertTrue(contact_front.report_stalls)
        cid = front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, bed.agent.media)
        bed.flush()
        for i in range(10):
            front.send_datagram(cid, b"%d" % i)
            bed.advance(0.02, step=0.02)
        bed.stalled = {0, 1}
        for i in range(10, 16):
            front.send_datagram(cid, b"%d" % i)
            bed.clock.advance(0.02)
        bed.stalled = set()
        bed.flush()
        for i in range(3):
            front.send_datagram(cid, b"after %d" % i)
            bed.advance(0.02, step=0.02)
        assert contact_front.count is not None
        self.assertEqual(contact_front.count.media_stalls, 1)
        self.assertEqual((count.media_stalls, front.peer_stalls), (1, 1))
        # a fixed count says nothing of stalls
        plain = Bed()
        _, c = plain.connect()
        self.assertNotIn("stalls", c.peer_hello)
        self.assertFalse(plain.contact.paths.fronts[0].report_stalls)

    def test_watch_link_late_losses(self) -> None:
        """
        L{PathFront.watch_link} reads each TCP path's C{TCP_INFO}: a
        retransmission since the last look (the first look counts those
        since the connection started) on a path whose round trip is at
        least C{count_late_rtt} is a late loss; one on a faster path, or
        no new one, is not; without a count it reads nothing.
        """
        import struct

        from spwm.session.paths import PathCount

        class Sock:
            def __init__(self, rtt: float, retrans: int) -> None:
                self.rtt, self.retrans, self.reads = rtt, retrans, 0

            def getsockopt(self, level: int, option: int, size: int) -> bytes:
                self.reads += 1
                raw = bytearray(104)
                struct.pack_into("=II", raw, 68, int(self.rtt * 1e6), int(self.rtt * 5e5))
                struct.pack_into("=I", raw, 100, self.retrans)
                return bytes(raw)

        slow, fast = Sock(0.16, 1), Sock(0.04, 3)
        self.front._sockets = {0: slow, 1: fast}  # type: ignore[dict-item]
        self.front.watch_link(1.0)
        self.assertEqual(slow.reads, 0)
        count = PathCount(2, 4)
        self.front.count = count
        self.front.watch_link(1.0)
        self.assertEqual(count.late_losses, 1)
        self.front.watch_link(1.5)
        self.assertEqual(count.late_losses, 1)
        slow.retrans, fast.retrans = 2, 7
        self.front.watch_link(2.0)
        self.assertEqual(count.late_losses, 2)
        # the ceiling and its spares
        self.assertEqual(count.decide(2.0), 6)

    def test_young_slow_session_probed(self) -> None:
        """
        A session on a slow link (a path's round trip at least
        C{count_late_rtt}) is pinged every L{PROBE_INTERVAL} from the
        first L{PathFront.watch_link} without any channel, until
        C{count_probe_for} after its start; not on a fast link, not once
        the count is at its ceiling.
        """
        import struct

        from spwm.session.carrier import PROBE_INTERVAL
        from spwm.session.paths import PathCount

        class Sock:
            rtt = 0.16

            def getsockopt(self, level: int, option: int, size: int) -> bytes:
                raw = bytearray(104)
                struct.pack_into("=II", raw, 68, int(self.rtt * 1e6), int(self.rtt * 5e5))
                return bytes(raw)

        pings: list[float] = []
        for path in self.front.paths:
            path.ping = lambda: pings.append(self.bed.clock.seconds())  # type: ignore[method-assign]
        sock = Sock()
        self.front._sockets = {0: sock}  # type: ignore[dict-item]
        count = PathCount(2, 4)
        self.front.count = count
        limits = count.limits
        sock.rtt = 0.04
        self.front.watch_link(self.bed.clock.seconds())
        self.bed.advance(1.0, step=PROBE_INTERVAL)
        self.assertEqual(pings, [])
        sock.rtt = 0.16
        self.front.watch_link(self.bed.clock.seconds())
        self.bed.advance(1.0, step=PROBE_INTERVAL)
        self.assertGreaterEqual(len(pings), 2 * 9)
        self.bed.advance(limits.count_probe_for, step=0.5)
        pings.clear()
        self.bed.advance(2.0, step=PROBE_INTERVAL)
        self.assertEqual(pings, [])
        # at the ceiling there is nothing to learn
        fresh = Bed()
        fresh.connect()
        fresh.connect()
        front = fresh.agent.paths.front
        assert front is not None
        front._sockets = {0: sock}  # type: ignore[dict-item]
        grown = PathCount(2, 4)
        grown.wanted = 4
        front.count = grown
        front.watch_link(fresh.clock.seconds())
        self.assertFalse(front._watched)

    def test_lost_all_told_session_age(self) -> None:
        """
        Agent: when the session's last path is gone, C{lost_all} hears
        how long the session was up (not when one of several goes).
        """
        told: list[float] = []
        self.bed.agent.paths._lost_all = told.append
        self.bed.advance(12.0, step=0.5)
        self.bed.cut(0)
        self.assertEqual(told, [])
        self.bed.cut(1)
        self.assertEqual(len(told), 1)
        self.assertAlmostEqual(told[0], 12.0, delta=0.5)

    def test_attach_after_loss_tells_again(self) -> None:
        """
        A connection made to join the session while it was still up (the
        tunnel service's, after its own connection broke first) comes up
        after the session's last path is gone: it is closed, and
        C{lost_all} is told again (its next attempt resumes at once); once
        a new session is up, a late one is closed without a word.
        """
        told: list[float] = []
        bed = self.bed
        bed.agent.paths._lost_all = told.append
        bed.advance(12.0, step=0.5)
        early = bed.agent_factory.buildProtocol(None)
        later = bed.agent_factory.buildProtocol(None)
        self.assertIn("attach", early.local_hello)
        bed.cut(0)
        bed.cut(1)
        self.assertEqual(len(told), 1)

        def join(client: TunnelProtocol) -> None:
            server = bed.contact_factory.buildProtocol(None)
            pump = iosim.connect(
                server, iosim.FakeTransport(server, True), client, iosim.FakeTransport(client, False),
                greet=False, clock=bed.clock,
            )
            bed.pumps.append((pump, client, server))
            bed.flush()

        join(early)
        self.assertFalse(early.is_open)
        self.assertEqual(told, [told[0], told[0]])
        bed.connect()
        self.assertIsNotNone(bed.agent.paths.front)
        join(later)
        self.assertFalse(later.is_open)
        self.assertEqual(len(told), 2)

    def test_drained_path_loses_nothing(self) -> None:
        """
        A path drained by the keeper: SIP and media go on on the other,
        what the contact point sent on the drained one meanwhile is
        delivered once, neither half's session logic hears of anything.
        """
        from spwm.session.carrier import PathKeeper
        from spwm.session.paths import PathCount

        count = PathCount(1, 2)
        count.wanted = 2
        keeper = PathKeeper(self.bed.clock, lambda: None, 1, count=count, front=lambda: self.front)  # type: ignore[arg-type,return-value]
        keeper._mine[id(self.a1)] = self.a1
        cid = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        self.assertIs(self.front.carrier, self.a1)
        keeper.extra = 0
        self.assertTrue(keeper._drain(self.front))
        self.assertEqual(self.front.paths, [self.a2])
        self.assertIs(self.front.carrier, self.a2)
        self.front.send_sip(1, b"INVITE")
        self.front.send_datagram(cid, b"up")
        # the contact point still uses both until it finds the drained one stalled
        self.contact_front.scheduler.loss_seen(0, self.bed.clock.seconds())
        self.contact_front.send_datagram(cid, b"down")
        self.bed.flush()
        self.bed.advance(count.limits.count_drain + 0.5)
        self.assertFalse(self.a1.is_open)
        self.bed.flush()
        self.contact_front.send_datagram(cid, b"down after")
        self.bed.flush()
        self.assertEqual(self.bed.contact.sip.received[-1][2], b"INVITE")
        self.assertEqual([d for _, d in self.bed.contact.media.got], [b"up"])
        self.assertEqual([d for _, d in self.bed.agent.media.got], [b"down", b"down after"])
        self.assertEqual([c[0] for c in self.bed.agent.observer.calls], ["established"])
        self.assertEqual([c[0] for c in self.bed.contact.observer.calls], ["established"])
        self.assertEqual(self.contact_front.paths, [self.c2])


class PathsMachine(RuleBasedStateMachine):
    """
    Any mix of media both ways, duplication, stalls, resets and further
    connections, while at least one connection is left: every datagram is
    delivered at most once on each half, the session logic of either half
    hears of nothing after the first connection, and both halves agree on
    the session's paths once the bytes have moved.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bed = Bed()
        self.bed.connect()
        self.bed.connect()
        front = self.bed.agent.paths.front
        assert front is not None
        self.front = front
        self.contact_front = self.bed.contact.paths.fronts[0]
        self.up = self.front.open_channel(ChannelKind.DATAGRAM, {"use": "media"}, self.bed.agent.media)
        self.bed.flush()
        self.down = self.up
        self.n = 0

    def _live_pumps(self) -> list[int]:
        return [i for i, (_, client, _) in enumerate(self.bed.pumps) if client in self.front.paths]

    @rule(count=st.integers(1, 5), rtcp=st.booleans())
    def media_up(self, count: int, rtcp: bool) -> None:
        for _ in range(count):
            self.n += 1
            self.front.send_datagram(self.up, b"u%d" % self.n, int(rtcp))
        self.bed.flush()

    @rule(count=st.integers(1, 5))
    def media_down(self, count: int) -> None:
        for _ in range(count):
            self.n += 1
            self.contact_front.send_datagram(self.down, b"d%d" % self.n)
        self.bed.flush()

    @rule(agent=st.booleans())
    def duplicate(self, agent: bool) -> None:
        front = self.front if agent else self.contact_front
        path_id = front.path_id(front.paths[0])
        assert path_id is not None
        front.scheduler.loss_seen(path_id, self.bed.clock.seconds())

    @precondition(lambda self: len(self._live_pumps()) > 1)
    @rule(data=st.data())
    def reset_one(self, data: Any) -> None:
        index = data.draw(st.sampled_from(self._live_pumps()))
        self.bed.stalled.discard(index)
        self.bed.cut(index)

    @precondition(lambda self: len(self._live_pumps()) > 1)
    @rule(data=st.data())
    def stall_one(self, data: Any) -> None:
        live = [i for i in self._live_pumps() if i not in self.bed.stalled]
        if len(live) > 1:
            self.bed.stalled.add(data.draw(st.sampled_from(live)))

    @rule()
    def unstall(self) -> None:
        self.bed.stalled.clear()
        self.bed.flush()

    @precondition(lambda self: len(self.front.paths) < 4)
    @rule()
    def attach(self) -> None:
        self.bed.connect()

    @rule(seconds=st.sampled_from([0.05, 0.2, 1.0, 3.0]))
    def wait(self, seconds: float) -> None:
        self.bed.advance(seconds, step=0.05)

    @invariant()
    def at_most_once(self) -> None:
        for media in (self.bed.agent.media, self.bed.contact.media):
            payloads = [data for _, data in media.got]
            assert len(payloads) == len(set(payloads)), payloads

    @invariant()
    def session_logic_undisturbed(self) -> None:
        assert [c[0] for c in self.bed.agent.observer.calls] == ["established"]
        assert [c[0] for c in self.bed.contact.observer.calls] == ["established"]

    def teardown(self) -> None:
        # with the bytes moved, both halves agree on the session's paths
        self.bed.stalled.clear()
        self.bed.flush()
        agent_sides = {id(server) for _, client, server in self.bed.pumps if client in self.front.paths}
        contact_sides = {id(p) for p in self.contact_front.paths}
        assert agent_sides == contact_sides, (self.front, self.contact_front)
        assert self.front.paths and all(p.is_open for p in self.front.paths)


class PathsMachineTests(SynchronousTestCase):
    """
    L{PathsMachine} under trial.
    """

    def test_machine(self) -> None:
        run_state_machine_as_test(
            PathsMachine, settings=settings(max_examples=40, stateful_step_count=25, deadline=None)
        )
