"""
A session's connections go to the contact point's worker that holds it
(L{spwm.session.workerroute}, L{spwm.workers.WorkerPorts}): the route the
agent keeps, the endpoint that follows it, the steering of redirects, and
the contact point's answers (a resume or an attach of another worker's
session names that worker's port).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError, TimeoutError as ConnectTimeout
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from spwm.security.keys import resumption_proof
from spwm.session.carrier import PathKeeper
from spwm.session.manager import SessionManager
from spwm.session.workerroute import AVOID_FOR, SteeredEndpoint, WorkerRoute, WorkerSteering, port_of
from spwm.tunnel.api import Router
from spwm.tunnel.protocol import AgentTunnelFactory
from spwm.workers import WorkerPorts
from tests.test_security_resume import CHALLENGE, KEY, USER, FakeMedia, FakeSip, FakeTunnel
from tests.test_session_carrier import Bed, Observer


class WorkerPortsTests(SynchronousTestCase):
    """
    The contact point's side: session ids name their worker, and any
    worker knows another's port.
    """

    def test_session_ids_name_the_worker(self) -> None:
        ports = WorkerPorts(7000, 1, 3)
        self.assertEqual(ports.own, 7001)
        ids = {ports.new_session_id() for _ in range(20)}
        self.assertEqual(len(ids), 20)
        for session_id in ids:
            self.assertTrue(session_id.endswith("-w1"), session_id)
            # not here: this worker's
            self.assertIsNone(ports.redirect(session_id))
            # from worker 0 and 2 it is here
            self.assertEqual(WorkerPorts(7000, 0, 3).redirect(session_id), 7001)
            self.assertEqual(WorkerPorts(7000, 2, 3).redirect(session_id), 7001)

    def test_unknown_ids_are_not_redirected(self) -> None:
        """
        An id no worker of this contact point made (one process before,
        more workers before, a forgery, not a string) is simply unknown.
        """
        ports = WorkerPorts(7000, 0, 2)
        for session_id in ("0123456789abcdef", "abc-w2", "abc-w", "abc-wx", "abc-w12345", None, 5, "-w1x"):
            self.assertIsNone(ports.redirect(session_id), session_id)
        self.assertEqual(ports.redirect("anything-w1"), 7001)


class WorkerRouteTests(SynchronousTestCase):
    """
    The agent's route: learned from welcomes, moved by a redirect (once),
    dropped when the worker's port cannot be reached.
    """

    def test_port_of(self) -> None:
        self.assertEqual(port_of(443), 443)
        for bad in (0, 65536, -1, "443", True, None, 4.0):
            self.assertIsNone(port_of(bad), bad)

    def test_learn(self) -> None:
        route = WorkerRoute()
        self.assertIsNone(route.port_for(True))
        route.learn({"resume_port": 7001})
        self.assertEqual(route.port_for(True), 7001)
        # a new session goes to the shared port
        self.assertIsNone(route.port_for(False))
        # a contact point of one process says nothing
        route.learn({})
        self.assertIsNone(route.port_for(True))
        route.learn({"resume_port": "7001"})
        self.assertIsNone(route.port_for(True))

    def test_redirect_once(self) -> None:
        """
        A redirect is followed once; the next only after the session is
        back (resumed, attached, or a new one started), unless it names
        the same port.
        """
        route = WorkerRoute()
        route.learn({"resume_port": 7000})
        self.assertTrue(route.redirect(7001))
        self.assertEqual(route.port_for(True), 7001)
        self.assertFalse(route.redirect(7000))
        self.assertEqual(route.port_for(True), 7001)
        # one more answer naming the port followed (an attach that crossed
        # the resumption): the same worker, followed
        self.assertTrue(route.redirect(7001))
        self.assertEqual(route.port_for(True), 7001)
        route.settled()
        self.assertTrue(route.redirect(7000))
        self.assertEqual(route.redirects, 3)
        self.assertFalse(WorkerRoute().redirect("7001"))

    def test_unreachable(self) -> None:
        route = WorkerRoute()
        route.learn({"resume_port": 7001})
        route.unreachable(7002)
        self.assertEqual(route.port_for(True), 7001)
        route.unreachable(7001)
        self.assertIsNone(route.port_for(True))
        self.assertEqual(route.status(), {"resume_port": None, "redirects": 0, "fallbacks": 1, "avoided": 0})

    def test_timed_out_avoided(self) -> None:
        """
        A worker's port that timed out (a firewall that drops it) is not
        tried for L{AVOID_FOR}, though every welcome names it: the
        session's connections go to the shared port; after that, once
        more.  One that refused is tried at the next welcome.
        """
        clock = Clock()
        route = WorkerRoute(clock.seconds)
        route.learn({"resume_port": 7001})
        route.unreachable(7001, timed_out=True)
        route.learn({"resume_port": 7001})
        self.assertIsNone(route.port_for(True))
        clock.advance(AVOID_FOR - 1)
        route.learn({"resume_port": 7001})
        self.assertIsNone(route.port_for(True))
        self.assertEqual((route.fallbacks, route.avoided), (1, 2))
        clock.advance(1)
        route.learn({"resume_port": 7001})
        self.assertEqual(route.port_for(True), 7001)
        route.unreachable(7001)
        route.learn({"resume_port": 7001})
        self.assertEqual(route.port_for(True), 7001)


class FakeEndpoint:
    def __init__(self, port: int | None, result: Any = "connected") -> None:
        self.port = port
        self.result = result
        self.connects = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        self.connects += 1
        if isinstance(self.result, Exception):
            return fail(self.result)
        return succeed(self.result)


class SteeredEndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.route = WorkerRoute()
        self.made: dict[int | None, FakeEndpoint] = {}
        self.to_session = False
        self.refuse: set[int] = set()
        self.drop: set[int] = set()

        def make(port: int | None) -> Any:
            result: Any = ConnectionRefusedError() if port in self.refuse else "connected"
            if port in self.drop:
                result = ConnectTimeout()
            endpoint = self.made[port] = FakeEndpoint(port, result)
            return endpoint

        self.endpoint = SteeredEndpoint(make, self.route, lambda: self.to_session)

    def test_where(self) -> None:
        """
        A new session's connection goes to the configured port; one that
        resumes or joins the session to its worker's, once known; one
        endpoint per port.
        """
        self.successResultOf(self.endpoint.connect(None))  # type: ignore[arg-type]
        self.to_session = True
        self.successResultOf(self.endpoint.connect(None))  # type: ignore[arg-type]
        self.assertEqual(list(self.made), [None])
        self.route.learn({"resume_port": 7001})
        self.successResultOf(self.endpoint.connect(None))  # type: ignore[arg-type]
        self.successResultOf(self.endpoint.connect(None))  # type: ignore[arg-type]
        self.assertEqual(self.made[7001].connects, 2)
        self.assertEqual(self.made[None].connects, 2)

    def test_timeout_avoided(self) -> None:
        """
        A worker's port whose connection timed out: the next connections
        to the session go to the configured port, though the welcomes
        name the worker's again.
        """
        self.to_session = True
        self.drop.add(7001)
        self.route.learn({"resume_port": 7001})
        self.failureResultOf(self.endpoint.connect(None), ConnectTimeout)  # type: ignore[arg-type]
        self.route.learn({"resume_port": 7001})
        self.successResultOf(self.endpoint.connect(None))  # type: ignore[arg-type]
        self.assertEqual((self.made[7001].connects, self.made[None].connects), (1, 1))
        self.assertEqual(self.route.avoided, 1)

    def test_unreachable_falls_back(self) -> None:
        """
        A worker's port that refuses: the attempt fails as it would, and
        the next goes to the configured port.
        """
        self.to_session = True
        self.refuse.add(7001)
        self.route.learn({"resume_port": 7001})
        self.failureResultOf(self.endpoint.connect(None), ConnectionRefusedError)  # type: ignore[arg-type]
        self.successResultOf(self.endpoint.connect(None))  # type: ignore[arg-type]
        self.assertEqual(self.made[None].connects, 1)
        self.assertEqual(self.route.fallbacks, 1)


class Reconnects:
    def __init__(self) -> None:
        self.reconnects = 0
        self.reattached: list[Any] = []

    def reconnect(self) -> None:
        self.reconnects += 1

    def reattach(self, path: Any) -> None:
        self.reattached.append(path)


class SteeringTests(SynchronousTestCase):
    """
    L{WorkerSteering} in front of the session logic, with fake tunnels.
    """

    def setUp(self) -> None:
        self.observer = Observer()
        self.route = WorkerRoute()
        self.calls = Reconnects()
        self.steering = WorkerSteering(
            self.observer, self.route, reconnect=self.calls.reconnect, reattach=self.calls.reattach
        )

    def tunnel(self, local: dict[str, Any], peer: dict[str, Any]) -> FakeTunnel:
        tunnel = FakeTunnel("s", peer)
        tunnel.local_hello = local
        return tunnel

    def test_learns_from_session_connections_only(self) -> None:
        self.steering.tunnel_established(self.tunnel({}, {"resume_port": 7000}))
        self.assertEqual(self.route.resume_port, 7000)
        # a further connection's welcome names the worker it reached: not learned
        self.steering.tunnel_established(self.tunnel({"attach": {"session_id": "s"}}, {"resume_port": 7001}))
        self.assertEqual(self.route.resume_port, 7000)
        self.assertEqual([c for c, _ in self.observer.calls], ["established", "established"])

    def test_resume_redirect_followed_once(self) -> None:
        """
        C{resume-failed} with C{redirect}: the connection is closed, the
        service reconnects at once to that port, the session logic hears
        of no refusal; a second redirect before the session is back goes
        to the session logic (which gives the session up, as before).
        """
        first = self.tunnel({"resume": {"session_id": "s-w1"}}, {"resume_port": 7000})
        self.steering.tunnel_established(first)
        answer = {"op": "resume-failed", "reason": "session held by another worker", "redirect": 7001}
        self.steering.control_received(first, answer)
        self.assertEqual(first.closes, [(0, "session held by another worker")])
        self.assertEqual(self.calls.reconnects, 1)
        self.assertEqual(self.route.port_for(True), 7001)
        self.assertNotIn(("control", answer), self.observer.calls)
        second = self.tunnel({"resume": {"session_id": "s-w1"}}, {"resume_port": 7001})
        self.steering.tunnel_established(second)
        self.steering.control_received(second, dict(answer, redirect=7000))
        self.assertEqual(second.closes, [])
        self.assertEqual(self.calls.reconnects, 1)
        self.assertIn(("control", dict(answer, redirect=7000)), self.observer.calls)

    def test_resumed_settles(self) -> None:
        self.assertTrue(self.route.redirect(7001))
        tunnel = self.tunnel({"resume": {"session_id": "s-w1"}}, {"resume_port": 7001})
        self.steering.control_received(tunnel, {"op": "resumed", "session_id": "s-w1", "users": []})
        self.assertTrue(self.route.redirect(7000))

    def test_attach_redirect(self) -> None:
        """
        C{attach-failed} with C{redirect}: the keeper replaces the
        connection at once, to that port.
        """
        path = self.tunnel({"attach": {"session_id": "s-w1"}}, {"resume_port": 7000})
        self.steering.control_received(path, {"op": "attach-failed", "reason": "x", "redirect": 7001})
        self.assertEqual(self.calls.reattached, [path])
        self.assertEqual(path.closes, [(0, "session held by another worker")])
        self.assertEqual(self.route.resume_port, 7001)
        self.assertEqual(self.observer.calls, [])

    def test_failures_without_redirect_pass(self) -> None:
        tunnel = self.tunnel({}, {})
        for message in (
            {"op": "resume-failed", "reason": "wrong proof for alice"},
            {"op": "attach-failed", "reason": "wrong proof"},
            {"op": "resume-failed", "reason": "x", "redirect": "7001"},
        ):
            self.steering.control_received(tunnel, message)
            self.assertIn(("control", message), self.observer.calls)
        self.assertEqual(tunnel.closes, [])
        self.assertEqual(self.calls.reconnects, 0)


class KeeperRedirectTests(SynchronousTestCase):
    def test_redirected_is_no_failure(self) -> None:
        """
        A connection sent to another worker is replaced at once; one
        refused is replaced after a delay.
        """
        clock = Clock()
        opened: list[Any] = []

        class Path:
            front = None

            def __init__(self) -> None:
                self.closed: Deferred[Any] = Deferred()

            def when_closed(self) -> Deferred[Any]:
                return self.closed

        def connect() -> Deferred[Any]:
            opened.append(Path())
            return succeed(opened[-1])

        keeper = PathKeeper(clock, connect, 1)
        keeper.session_up()
        self.assertEqual(len(opened), 1)
        keeper.redirected(opened[0])
        keeper.lost(opened[0])
        clock.advance(0)
        self.assertEqual(len(opened), 2)
        keeper.lost(opened[1])
        clock.advance(0)
        self.assertEqual(len(opened), 2)
        clock.advance(0.5)
        self.assertEqual(len(opened), 3)


class KeeperResumeTests(SynchronousTestCase):
    def test_no_resume_from_the_keeper(self) -> None:
        """
        A further connection whose hello was made after the session's last
        connection went (it says C{resume}, not C{attach}) is closed at
        once: resuming is the tunnel service's connection's to do.
        """
        clock = Clock()
        opened: list[Any] = []

        class Conn:
            front = None

            def __init__(self, hello: dict[str, Any]) -> None:
                self.local_hello = hello
                self.closes: list[Any] = []
                self.closed: Deferred[Any] = Deferred()

            def when_closed(self) -> Deferred[Any]:
                return self.closed

            def close(self, code: int, reason: str) -> None:
                self.closes.append(reason)

        hellos = [{"paths": 1, "attach": {"session_id": "s"}}, {"paths": 1, "resume": {"session_id": "s"}}]
        attempts: list[Deferred[Any]] = []

        def connect() -> Deferred[Any]:
            attempts.append(Deferred())
            return attempts[-1]

        keeper = PathKeeper(clock, connect, 2)
        keeper.session_up()
        self.assertEqual(len(attempts), 2)
        for d, hello in zip(attempts, hellos):
            opened.append(Conn(hello))
            d.callback(opened[-1])
        self.assertEqual([c.closes for c in opened], [[], ["the session is gone"]])
        # nothing more until the keeper is told of the session again
        clock.advance(60)
        self.assertEqual(len(attempts), 2)


class ContactRedirectTests(SynchronousTestCase):
    """
    The contact point's answers to a resume or an attach of a session
    another worker holds.
    """

    def test_resume_redirected(self) -> None:
        clock = Clock()
        media, sip = FakeMedia(), FakeSip()
        manager = SessionManager(clock, 60.0, media, sip, elsewhere=WorkerPorts(7000, 0, 2).redirect)
        new = FakeTunnel("fresh-w0")
        manager.tunnel_established(new)
        proof = resumption_proof(KEY, CHALLENGE, "old-w1")
        manager.control_received(new, {"op": "resume", "session_id": "old-w1", "proofs": {USER: proof}})
        self.assertEqual(
            new.controls, [{"op": "resume-failed", "reason": "session held by another worker", "redirect": 7001}]
        )
        self.assertEqual(manager.status()["resume_redirected"], 1)
        self.assertEqual(manager.refused, 0)
        # its own unknown session: refused as ever
        manager.control_received(new, {"op": "resume", "session_id": "gone-w0", "proofs": {USER: proof}})
        self.assertEqual(new.controls[-1], {"op": "resume-failed", "reason": "no suspended session by that name"})
        self.assertEqual(manager.refused, 1)

    def test_attach_redirected(self) -> None:
        """
        Worker 0 (a contact point with worker ports) gets an attach for
        worker 1's session: C{attach-failed} with worker 1's port, the
        connection closed; the welcome said worker 0's port and its
        session ids name it.
        """
        bed = Bed()
        ports = WorkerPorts(7000, 0, 2)
        bed.contact_factory.worker_ports = ports
        bed.contact.paths.elsewhere = ports.redirect
        a1, c1 = bed.connect()
        self.assertTrue(c1.session_id.endswith("-w0"))
        self.assertEqual(a1.peer_hello.get("resume_port"), 7000)
        app = Observer()
        other = AgentTunnelFactory(
            Router(None, {}, app), bed.clock, "agent-1", hello={"paths": 1, "attach": {"session_id": "elsewhere-w1"}}  # type: ignore[arg-type]
        )
        a2, c2 = bed.connect(other)
        a2.send_control({"op": "attach", "session_id": "elsewhere-w1", "proof": "00" * 32})
        bed.flush()
        self.assertIn(
            ("control", {"op": "attach-failed", "reason": "session held by another worker", "redirect": 7001}), app.calls
        )
        self.assertFalse(a2.is_open)
        self.assertEqual(bed.contact.paths.attach_redirected, 1)
        self.assertEqual(bed.contact.paths.attach_refused, 0)
