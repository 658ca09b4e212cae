"""
Integration test of C{spwm-contact --workers 2} on loopback: the workers
share the tunnel port (SO_REUSEPORT), each names its own SIP port in the
Path of the REGISTERs it relays, and a call from the operator side sent to
that port reaches the phone behind the agent whose tunnel that worker
holds.  A worker killed is restarted by the supervisor; stopping the
supervisor stops every worker.  Each worker also listens on its own port
(the listen port + 1 + its index, by default): an agent's further
connection attaches, and its resumption after a cut resumes, at the
worker that holds its session every time; one sent to the wrong worker is
redirected there.  Agents behind an HTTP proxy that lets them reach only
the shared port resume and attach every time too: the wrong worker hands
the connection on to the right one (spwm.handon).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.task import deferLater
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from spwm.tap import agent
from spwm.tap.assembly import build_agent
from spwm.testing.phone import Phone, TransactionTimeout, build_sip, make_sdp, parse_sip, rtp_packet, sdp_audio_target, tag_of, uri_of
from spwm.testing.ports import free_port
from spwm.testing.procs import alive, children
from spwm.session.carrier import path_kind
from spwm.session.paths import PathKind
from spwm.testing.certs import TestCA
from spwm.testing.httpproxy import ConnectProxy
from tests.integration.test_resumption import DIGEST
from tests.integration.test_tunnel_loopback import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The kernel gives each new connection to the shared port to one of the
#: two workers by a hash of its addresses and ports: n agents all land on
#: one worker one time in 2 ** (n - 1).  Twelve did so in one CI run (in
#: the five tests that need both workers, about one run in 250); twenty
#: leave it at one run in 100,000.  Agent I takes media ports 44000 + 100 I
#: on, below the contact point's 46000.
MOST_AGENTS = 20


class Operator(DatagramProtocol):
    """
    The operator's proxy and registrar, as far as the test needs: answers
    REGISTER with 200 and keeps, per user, the Path and Contact and the
    address the REGISTER came from; records the responses it gets, and
    acknowledges each 200 to an INVITE as the caller would (without the
    ACK the contact point ends the call after 32 s, RFC 3261 13.3.1.4).
    An INVITE from a phone rings there (180, for ever) until its CANCEL,
    matched to it by the top C{Via} (RFC 3261 9.2: its branch and
    sent-by), is answered 200 and the INVITE 487.
    """

    def __init__(self) -> None:
        self.bindings: dict[str, tuple[str, str, tuple[str, int]]] = {}
        self.responses: list[tuple[Any, tuple[str, int]]] = []
        #: the BYEs it got (each answered 200)
        self.byes: list[Any] = []
        #: the INVITEs it got (each rings), the CANCELs and the ACKs
        self.invites: list[Any] = []
        self.cancels: list[Any] = []
        self.acks: list[Any] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_sip(data)
        if message.first.startswith("SIP/2.0"):
            self.responses.append((message, addr))
            if message.first.startswith("SIP/2.0 200") and (message.get("cseq") or "").endswith("INVITE"):
                self.acknowledge(message, addr)
            return
        if message.first.startswith("REGISTER"):
            user = uri_of(message.get("to") or "")
            self.bindings[user] = (message.get("path") or "", message.get("contact") or "", addr)
            headers = [(name, value) for name, value in message.headers if name.lower() in ("via", "from", "call-id", "cseq")]
            headers.append(("To", (message.get("to") or "") + ";tag=op"))
            headers.append(("Contact", (message.get("contact") or "") + ";expires=300"))
            self.transport.write(build_sip("SIP/2.0 200 OK", headers), addr)
        elif message.first.startswith("BYE"):
            self.byes.append(message)
            self.transport.write(self.answer(message, "200 OK"), addr)
        elif message.first.startswith("INVITE"):
            self.invites.append(message)
            self.transport.write(self.answer(message, "180 Ringing", "rb"), addr)
        elif message.first.startswith("CANCEL"):
            self.cancels.append(message)
            ringing = [m for m in self.invites if m.get("via") == message.get("via")]
            if not ringing:
                self.transport.write(self.answer(message, "481 Call/Transaction Does Not Exist"), addr)
                return
            self.transport.write(self.answer(message, "200 OK", "rb"), addr)
            self.transport.write(self.answer(ringing[0], "487 Request Terminated", "rb"), addr)
        elif message.first.startswith("ACK"):
            self.acks.append(message)

    @staticmethod
    def answer(request: Any, status: str, tag: str | None = None) -> bytes:
        """
        A response to C{request}: its Via, From, To (with C{tag}), Call-ID
        and CSeq.
        """
        headers = [(name, value) for name, value in request.headers if name.lower() in ("via", "from", "to", "call-id", "cseq")]
        if tag is not None:
            headers = [(name, value + f";tag={tag}" if name.lower() == "to" else value) for name, value in headers]
        return build_sip(f"SIP/2.0 {status}", headers)

    def acknowledge(self, ok: Any, addr: tuple[str, int]) -> None:
        """
        The ACK of a 200 to an INVITE: to the answer's Contact, through
        its Record-Route (reversed), sent back where the answer came from.
        """
        number = (ok.get("cseq") or "1").split()[0]
        port = self.transport.getHost().port
        tag = re.sub(r"[^A-Za-z0-9]", "", ok.get("call-id") or "")
        headers = [("Via", f"SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-ack-{number}-{tag}")]
        headers += [("Route", route) for route in reversed(ok.get_all("record-route"))]
        headers += [
            ("Max-Forwards", "70"),
            ("From", ok.get("from") or ""),
            ("To", ok.get("to") or ""),
            ("Call-ID", ok.get("call-id") or ""),
            ("CSeq", f"{number} ACK"),
        ]
        self.transport.write(build_sip(f"ACK {uri_of(ok.get('contact') or '')} SIP/2.0", headers), addr)


class WorkerProcess(protocol.ProcessProtocol):
    """
    The supervisor's process; its output kept.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


class _Workers(TestCase):
    """
    A supervisor of two workers on loopback, agents added one by one.
    """

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.operator = Operator()
        self.operator_port = reactor.listenUDP(0, self.operator, interface="127.0.0.1")
        self.addCleanup(self.operator_port.stopListening)
        # the shared port and, after it, the workers' own (the default)
        self.tunnel_port = free_port(following=2)
        self.worker_ports = (self.tunnel_port + 1, self.tunnel_port + 2)
        self.sip_port = free_port(following=3, away_from=range(self.tunnel_port, self.tunnel_port + 3))
        self.process = WorkerProcess()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("SPWM_WORKER", None)
        args = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "spwm-contact", "--workers", "2", *self.contact_security(),
            "--listen", f"tcp:{self.tunnel_port}:interface=127.0.0.1",
            "--sip-address", f"127.0.0.1:{self.sip_port}",
            "--sip-proxy", f"127.0.0.1:{self.operator_port.getHost().port}",
            "--media-ports", "46000-46099", "--media-allow", "127.0.0.0/8",
            "--drain-time", "0.2", "--status-interval", "0", *self.contact_extra(),
        ]  # fmt: skip
        self.agents: list[Any] = []
        self.phones: list[Phone] = []
        self.transport = reactor.spawnProcess(self.process, sys.executable, args, env=env, path=ROOT)
        self.addCleanup(self.stop_supervisor)
        yield wait_until(lambda: self.listening() >= 2, timeout=30)
        yield wait_until(lambda: self.process.text().count("(this worker's own port)") >= 2, timeout=30)

    def contact_security(self) -> list[str]:
        return ["--plaintext"]

    def contact_extra(self) -> list[str]:
        return []

    def agent_security(self) -> list[str]:
        return ["--plaintext"]

    def listening(self) -> int:
        """
        How many times a worker said it listens on the shared port.
        """
        return self.process.text().count(f"listening for tunnels on tcp:{self.tunnel_port}:")

    @defer.inlineCallbacks
    def stop_supervisor(self) -> Any:
        for phone in self.phones:
            yield phone.stop()
        for built in self.agents:
            yield built.service.stopService()
        pid = self.transport.pid
        workers = children(pid) if pid else []
        if pid and not self.process.ended.called:
            os.kill(pid, signal.SIGTERM)
        try:
            yield wait_until(lambda: self.process.ended.called, timeout=20)
        finally:
            if not self.process.ended.called and self.transport.pid:
                os.kill(self.transport.pid, signal.SIGKILL)
        # the workers went with the supervisor
        yield wait_until(lambda: not any(alive(w) for w in workers), timeout=10)

    @defer.inlineCallbacks
    def add_agent(self, index: int) -> Any:
        sip = free_port(following=1)
        options = agent.Options()
        options.parseOptions(
            ["--contact", f"127.0.0.1:{self.tunnel_port}", *self.agent_security(), "--agent-id", f"agent{index}",
             "--sip-listen", f"127.0.0.1:{sip}", "--media-ports", f"{44000 + 100 * index}-{44099 + 100 * index}",
             "--status-interval", "0"]
        )  # fmt: skip
        built = build_agent(options.config, reactor)
        built.service.startService()
        self.agents.append(built)
        yield wait_until(lambda: built.tunnel_service.tunnel is not None, timeout=10)
        phone = Phone(reactor, f"u{index}", "example.test", ("127.0.0.1", sip))
        phone.start()
        self.phones.append(phone)
        # digest credentials: the session gets a key, so it can be resumed
        try:
            response = yield phone.register(authorization=DIGEST.format(user=f"u{index}"))
        except TransactionTimeout as e:
            # say where the REGISTER may have stopped: the agent's tunnel
            # and SIP counters, what the workers logged
            document = built.status.document()
            self.fail(
                f"agent{index}: {e}; its tunnel {document.get('tunnel')}, paths {document.get('paths')},"
                f" SIP held {document.get('no_tunnel')}, SIP {document.get('sip')};"
                f" the operator has {sorted(self.operator.bindings)}; the workers said:\n{self.process.text()[-6000:]}"
            )
        self.assertTrue(response.first.startswith("SIP/2.0 200"), response.first)
        return phone

    def worker_port(self, user: str) -> int:
        path = self.operator.bindings[user][0]
        match = re.search(r"@?127\.0\.0\.1:(\d+)", path)
        assert match is not None, path
        return int(match.group(1))

    def worker_of(self, built: Any) -> int:
        """
        The index of the worker that holds an agent's session, from the
        session id (it ends in C{-wINDEX}).
        """
        session_id = built.resumption.session_id or ""
        match = re.search(r"-w(\d+)$", session_id)
        assert match is not None, session_id
        return int(match.group(1))

    @defer.inlineCallbacks
    def agents_on_both_workers(self, least: int = 4) -> Any:
        """
        At least C{least} agents with a registered phone each, and on
        both workers (bounded: at most L{MOST_AGENTS}).
        """
        workers: set[int] = set()
        for index in range(MOST_AGENTS):
            yield self.add_agent(index)
            built = self.agents[-1]
            yield wait_until(lambda: built.resumption.session_id is not None, timeout=10)
            workers.add(self.worker_of(built))
            if len(workers) == 2 and len(self.agents) >= least:
                break
        self.assertEqual(workers, {0, 1}, f"{MOST_AGENTS} agents all on one worker")

    @defer.inlineCallbacks
    def call_phone(self, phone: Phone, rtp_port: int) -> Any:
        """
        The operator calls C{phone} through the worker its Path names, with
        its media at C{rtp_port}: the 200 and where it came from, once
        answered.
        """
        call_id, _, _ = self.invite_phone(phone, rtp_port)

        def answers() -> list[tuple[Any, tuple[str, int]]]:
            return [(m, a) for m, a in self.operator.responses if m.first.startswith("SIP/2.0 200") and m.get("call-id") == call_id]

        yield wait_until(lambda: bool(answers()), timeout=10)
        return answers()[0]

    def invite_phone(self, phone: Phone, rtp_port: int) -> tuple[str, bytes, int]:
        """
        Send the operator's INVITE to C{phone} (see L{call_phone}).

        @return: its Call-ID, its bytes, the worker's port it went to.
        """
        path, contact, _ = self.operator.bindings[phone.aor]
        port = self.worker_port(phone.aor)
        op_port = self.operator_port.getHost().port
        call_id = f"op-{port}-{rtp_port}@127.0.0.1"
        invite = build_sip(
            f"INVITE {uri_of(contact)} SIP/2.0",
            [
                ("Via", f"SIP/2.0/UDP 127.0.0.1:{op_port};branch=z9hG4bK-{port}-{rtp_port}"),
                ("Route", path),
                ("Max-Forwards", "70"),
                ("From", f"<sip:operator@example.test>;tag=o{port}"),
                ("To", f"<{phone.aor}>"),
                ("Call-ID", call_id),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:operator@127.0.0.1:{op_port}>"),
                ("Content-Type", "application/sdp"),
            ],
            make_sdp("operator", "127.0.0.1", rtp_port, 1),
        )
        self.operator.transport.write(invite, ("127.0.0.1", port))
        return call_id, invite, port

    @defer.inlineCallbacks
    def two_paths(self, built: Any) -> Any:
        """
        The agent's session has its two connections (or more: with media
        that stalls, as across a cut, C{--tunnel-connections auto} opens
        up to four).
        """

        def both() -> bool:
            front = built.paths.front
            return front is not None and sum(1 for p in front.paths if path_kind(p) is PathKind.TCP) >= 2

        yield wait_until(both, timeout=15)

    @defer.inlineCallbacks
    def resumed(self, built: Any) -> Any:
        """
        The agent's session is live again after a resumption (one more
        than when asked).
        """
        resumed = built.resumption.resumed
        yield wait_until(
            lambda: built.resumption.resumed > resumed and built.resumption.state.value == "live", timeout=20
        )


class WorkersTests(_Workers):
    @defer.inlineCallbacks
    def test_calls_reach_the_right_worker(self) -> Any:
        """
        Agents land on both workers; each REGISTER's Path names the SIP
        port of the worker that relayed it (and came from it); an INVITE
        from the operator side sent there reaches the phone.
        """
        by_worker: dict[int, Phone] = {}
        for index in range(MOST_AGENTS):
            phone = yield self.add_agent(index)
            port = self.worker_port(phone.aor)
            self.assertIn(port, (self.sip_port, self.sip_port + 1))
            # the REGISTER came from the worker its Path names
            self.assertEqual(self.operator.bindings[phone.aor][2][1], port)
            by_worker.setdefault(port, phone)
            if len(by_worker) == 2:
                break
        self.assertEqual(set(by_worker), {self.sip_port, self.sip_port + 1}, f"{MOST_AGENTS} agents all on one worker")
        for port, phone in by_worker.items():
            ok, source = yield self.call_phone(phone, 45000)
            self.assertEqual(source, ("127.0.0.1", port))
            self.assertEqual([c.call_id for c in phone.calls], [ok.get("call-id")])

    @defer.inlineCallbacks
    def test_attach_and_resume_at_the_right_worker(self) -> Any:
        """
        Every agent learns its worker's own port from the welcome; its
        second connection attaches there (never refused); cut, each
        resumes its session (same id, registrations and all) at that
        worker, and attaches its second connection again, with no
        redirect needed.
        """
        yield self.agents_on_both_workers()
        for built in self.agents:
            route = built.sides[0].route
            self.assertEqual(route.resume_port, self.worker_ports[self.worker_of(built)])
            yield self.two_paths(built)
            self.assertEqual(built.paths.attach_refused, 0)
        for built in self.agents:
            before = built.resumption.session_id
            front = built.paths.front
            for path in list(front.paths):
                path.transport.abortConnection()
            yield self.resumed(built)
            self.assertEqual(built.resumption.session_id, before)
            yield self.two_paths(built)
            self.assertEqual(built.paths.attach_refused, 0)
            self.assertEqual(built.sides[0].route.redirects, 0)
        self.assertNotIn("refused resumption", self.process.text())
        self.assertNotIn("refused another connection", self.process.text())

    @defer.inlineCallbacks
    def test_wrong_worker_redirects(self) -> Any:
        """
        An agent made to resume, and to attach, at the other worker's port
        (as an agent that ignores the port, or a NAT that maps it, would)
        is answered with its worker's port and follows it once: resumed,
        two connections again.
        """
        yield self.agents_on_both_workers(least=2)
        for built in self.agents[:2]:
            yield self.two_paths(built)
            route = built.sides[0].route
            right = self.worker_ports[self.worker_of(built)]
            wrong = self.worker_ports[1 - self.worker_of(built)]
            # the resumption goes to the wrong worker
            route.resume_port = wrong
            before = built.resumption.session_id
            for path in list(built.paths.front.paths):
                path.transport.abortConnection()
            yield self.resumed(built)
            self.assertEqual(built.resumption.session_id, before)
            self.assertGreaterEqual(route.redirects, 1)
            self.assertEqual(route.resume_port, right)
            yield self.two_paths(built)
            # the further connection goes to the wrong worker
            redirects = route.redirects
            route.settled()
            route.resume_port = wrong
            front = built.paths.front
            front.paths[1].transport.abortConnection()
            yield wait_until(lambda: route.redirects > redirects, timeout=20)
            yield self.two_paths(built)
            self.assertIs(built.paths.front, front)
            self.assertEqual(route.resume_port, right)
            self.assertEqual(built.paths.attach_refused, 0)
            self.assertEqual(built.status.document()["sessions"]["worker_redirects"], route.redirects)
        text = self.process.text()
        self.assertIn("agent sent there", text)
        self.assertNotIn("refused resumption", text)

    @defer.inlineCallbacks
    def test_crashed_worker_restarted(self) -> Any:
        """
        A worker killed is started again, with one line saying so; the
        shared port keeps taking tunnels meanwhile.
        """
        workers = children(self.transport.pid)
        self.assertEqual(len(workers), 2)
        os.kill(workers[1], signal.SIGKILL)
        yield wait_until(lambda: "exited with signal 9; restarting it" in self.process.text(), timeout=10)
        yield wait_until(lambda: self.listening() >= 3, timeout=30)
        now = children(self.transport.pid)
        self.assertEqual(len(now), 2)
        self.assertNotIn(workers[1], now)
        phone = yield self.add_agent(0)
        self.assertIn(self.worker_port(phone.aor), (self.sip_port, self.sip_port + 1))

    @defer.inlineCallbacks
    def test_group_stop_is_clean(self) -> Any:
        """
        A stop signal to the supervisor and its workers at once (systemd's
        cgroup kill, Ctrl-C in a terminal), then the supervisor's own
        SIGTERM to the workers: everything ends with no traceback.
        """
        # tunnels to drain keep the workers stopping for a while
        for index in range(3):
            yield self.add_agent(index)
        pid = self.transport.pid
        workers = children(pid)
        self.assertEqual(len(workers), 2)
        for worker in workers:
            os.kill(worker, signal.SIGTERM)
        os.kill(pid, signal.SIGTERM)
        yield deferLater(reactor, 0.05, lambda: None)
        for worker in workers:
            if alive(worker):
                os.kill(worker, signal.SIGTERM)
        yield wait_until(lambda: self.process.ended.called, timeout=20)
        text = self.process.text()
        self.assertNotIn("Traceback", text)
        self.assertNotIn("ReactorNotRunning", text)
        self.assertFalse(any(alive(w) for w in workers))


class CrashedWorkersStateTests(_Workers):
    """
    With C{--state-file}, written every second while the workers run: a
    worker killed (SIGKILL: no stop, so no write at its stop) leaves what
    it wrote last, and its restarted process gives its agents their
    sessions back.
    """

    def contact_extra(self) -> list[str]:
        self.state_file = os.path.abspath(self.mktemp())
        os.makedirs(os.path.dirname(self.state_file), exist_ok=True)
        return ["--state-file", self.state_file, "--state-interval", "1"]

    def saved_sessions(self, index: int) -> set[str]:
        try:
            with open(f"{self.state_file}.{index}") as f:
                return set(json.load(f)["sessions"])
        except (OSError, ValueError, KeyError):
            return set()

    @defer.inlineCallbacks
    def kill_workers(self) -> Any:
        """
        Once every agent's session is in its worker's file, kill both
        workers (SIGKILL); wait until they are restarted and every agent
        has resumed its session.
        """
        for built in self.agents:
            session = built.resumption.session_id
            worker = self.worker_of(built)
            yield wait_until(lambda: session in self.saved_sessions(worker), timeout=10)
        resumed = [built.resumption.resumed for built in self.agents]
        for pid in children(self.transport.pid):
            os.kill(pid, signal.SIGKILL)
        yield wait_until(lambda: self.process.text().count("exited with signal 9; restarting it") == 2, timeout=10)
        yield wait_until(lambda: self.listening() >= 4, timeout=30)
        yield wait_until(
            lambda: all(
                b.resumption.resumed > r and b.resumption.state.value == "live" for b, r in zip(self.agents, resumed)
            ),
            timeout=30,
        )

    @defer.inlineCallbacks
    def test_far_party_told_after_a_crash(self) -> Any:
        """
        The operator calls a phone; both workers are killed during the
        call: the restarted worker resumes the agent's session with
        C{calls_ended: false} (its process before died with the call), so
        the agent ends the call for both parties: its phone gets a BYE,
        and the operator a BYE in the phone's name (its tags, the Reason)
        through the restarted worker, whose token in the route set is
        still good.  (Without it, the operator stayed in the call.)
        """
        phone = yield self.add_agent(0)
        ok, _ = yield self.call_phone(phone, 45000)
        (call,) = phone.calls
        yield wait_until(lambda: call.established.called, timeout=10)
        yield self.kill_workers()
        yield wait_until(lambda: bool(self.operator.byes) and call.ended.called, timeout=10)
        (bye,) = self.operator.byes
        self.assertEqual(bye.get("call-id"), ok.get("call-id"))
        self.assertEqual(
            (tag_of(bye.get("from") or ""), tag_of(bye.get("to") or "")),
            (tag_of(ok.get("to") or ""), tag_of(ok.get("from") or "")),
        )
        self.assertEqual(bye.get("reason"), 'SIP;cause=503;text="tunnel lost"')
        built = self.agents[0]
        yield wait_until(lambda: built.media.cdrs and built.media.cdrs[-1]["bye_sent"] != [], timeout=5)
        self.assertEqual(sorted(built.media.cdrs[-1]["bye_sent"]), ["far party", "phone"])

    @defer.inlineCallbacks
    def test_ringing_far_party_cancelled_after_a_crash(self) -> Any:
        """
        A phone calls the operator side, where the call rings (180), and
        both workers are killed: once the session is resumed with
        C{calls_ended: false}, the phone gets its agent's 480, and the
        operator a CANCEL through the restarted worker with the top Via of
        the INVITE it got (the same branch: the new process has the token
        key), so it matches the INVITE; its 200 and the INVITE's 487 stay
        at the agent, which ACKs the 487 with that Via too.  (Without it,
        the operator's INVITE rang on until its own timer.)
        """
        phone = yield self.add_agent(0)
        calling = phone.call("bob")
        failed: list[str] = []
        calling.addErrback(lambda f: failed.append(str(f.value)))
        yield wait_until(lambda: phone.received.get("180") == 1, timeout=10)
        (invite,) = self.operator.invites
        yield self.kill_workers()
        yield wait_until(lambda: bool(failed) and bool(self.operator.acks), timeout=10)
        self.assertEqual(failed, ["INVITE answered 480 Temporarily Unavailable"])
        (cancel,) = self.operator.cancels
        self.assertEqual(
            [cancel.uri, cancel.get_all("via"), cancel.get("call-id"), cancel.cseq],
            [invite.uri, invite.get_all("via"), invite.get("call-id"), (invite.cseq[0], "CANCEL")],
        )
        self.assertEqual((cancel.get("from"), cancel.get("to")), (invite.get("from"), invite.get("to")))
        self.assertEqual(cancel.get("reason"), 'SIP;cause=503;text="tunnel lost"')
        (ack,) = self.operator.acks
        self.assertEqual([ack.get_all("via"), ack.cseq, tag_of(ack.get("to") or "")], [invite.get_all("via"), (invite.cseq[0], "ACK"), "rb"])
        built = self.agents[0]
        yield wait_until(lambda: built.media.cdrs and built.media.cdrs[-1]["bye_sent"] != [], timeout=5)
        self.assertEqual(built.media.cdrs[-1]["bye_sent"], ["phone (480)", "far party (CANCEL)"])
        # the phone got neither of the far party's answers (its one 200: the REGISTER's)
        self.assertEqual([phone.received.get("487"), phone.received.get("200")], [None, 1])

    @defer.inlineCallbacks
    def test_ringing_far_caller_answered_after_a_crash(self) -> Any:
        """
        The operator calls a phone, which rings (180, no answer), and both
        workers are killed: once the session is resumed with
        C{calls_ended: false}, the phone gets its agent's CANCEL, and the
        operator the agent's 480 for its INVITE through the restarted
        worker (its own Via, the INVITE's branch: the new process knows
        the worker's Via of before by its token key, and pops it), with
        the phone's tag and the Reason; the operator's ACK of the 480
        goes back through the worker and stays at the agent: the phone
        gets only the agent's ACK of its 487.  (Without it, the
        operator's INVITE rang on until its own timer.)
        """
        phone = yield self.add_agent(0)
        phone.ring_seconds = 60.0
        call_id, sent, port = self.invite_phone(phone, 45000)
        invite = parse_sip(sent)

        def responses(status: str) -> list[Any]:
            got = self.operator.responses
            return [m for m, _ in got if m.first.startswith("SIP/2.0 " + status) and m.get("call-id") == call_id]

        yield wait_until(lambda: bool(responses("180")), timeout=10)
        (ringing,) = responses("180")
        (call,) = phone.calls
        yield self.kill_workers()
        yield wait_until(lambda: bool(responses("480")) and call.cancelled, timeout=10)
        (final,) = responses("480")
        self.assertEqual(
            [final.get_all("via"), final.get("call-id"), final.cseq, final.get("from")],
            [invite.get_all("via"), call_id, invite.cseq, invite.get("from")],
        )
        self.assertEqual(tag_of(final.get("to") or ""), tag_of(ringing.get("to") or ""))
        self.assertEqual(final.get("reason"), 'SIP;cause=503;text="tunnel lost"')
        # the ACK of a non-2xx final response: the INVITE's Via, Route, Request-URI (RFC 3261 17.1.1.3)
        kept = ("via", "route", "max-forwards", "from", "call-id")
        headers = [(name, value) for name, value in invite.headers if name.lower() in kept]
        headers += [("To", final.get("to") or ""), ("CSeq", f"{invite.cseq[0]} ACK")]
        self.operator.transport.write(build_sip(invite.first.replace("INVITE", "ACK", 1), headers), ("127.0.0.1", port))
        built = self.agents[0]
        yield wait_until(lambda: built.media.cdrs and built.media.cdrs[-1]["bye_sent"] != [], timeout=5)
        self.assertEqual(built.media.cdrs[-1]["bye_sent"], ["phone (CANCEL)", "far party (480)"])
        # (time for the ACK to come through, were it passed on)
        yield deferLater(reactor, 1.0, lambda: None)
        self.assertEqual([phone.received.get("ACK"), call.final_acks, len(phone.cancels)], [1, 1, 1])

    @defer.inlineCallbacks
    def test_sessions_back_after_a_crash(self) -> Any:
        """
        Agents on both workers, each with a phone registered with digest
        credentials; both workers are killed: the supervisor restarts
        them, each reads the sessions its killed process wrote, and every
        agent resumes its session (its registrations) there; the
        operator's call to each phone through the Path of before reaches
        it, and no phone registered again.  (Before the periodic write a
        killed worker left no file: every resumption was refused, and the
        new processes' token keys made the operator's Paths void.)
        """
        yield self.agents_on_both_workers(least=2)
        registers = [phone.sent.get("REGISTER") for phone in self.phones]
        yield self.kill_workers()
        self.assertEqual(self.process.text().count("(registrations only)"), len(self.agents))
        self.assertNotIn("refused resumption", self.process.text())
        for n, phone in enumerate(self.phones):
            ok, _ = yield self.call_phone(phone, 45000 + 2 * n)
            self.assertIn(ok.get("call-id"), [c.call_id for c in phone.calls])
        self.assertEqual([phone.sent.get("REGISTER") for phone in self.phones], registers)


class WorkersTlsQuicTests(_Workers):
    """
    The same with TLS, and QUIC (C{--quic-listen}; agents with
    C{--udp-path auto}): each worker takes QUIC on its own port and names
    it in the welcome, so every agent's QUIC path attaches to the worker
    that holds its session; the TCP connections to a worker's own port
    pass the same certificate checks.
    """

    def contact_security(self) -> list[str]:
        self.ca = TestCA(os.path.abspath(self.mktemp()))
        cert = self.ca.issue(["contact.spwm.test"], "contact")
        self.quic_port = free_port()
        return ["--cert", cert.cert, "--key", cert.key, "--quic-listen", f"127.0.0.1:{self.quic_port}"]

    def agent_security(self) -> list[str]:
        return ["--server-name", "contact.spwm.test", "--ca", self.ca.ca_file]

    @defer.inlineCallbacks
    def test_quic_path_at_the_right_worker(self) -> Any:
        yield self.agents_on_both_workers()
        for built in self.agents:
            worker = self.worker_of(built)
            yield self.two_paths(built)

            def on_quic() -> bool:
                front = built.paths.front
                return front is not None and any(path_kind(p) is PathKind.QUIC for p in front.paths)

            yield wait_until(on_quic, timeout=15)
            front = built.paths.front
            self.assertEqual(front.peer_hello.get("quic_port"), self.quic_port + worker)
            self.assertEqual(built.paths.attach_refused, 0)
        self.assertNotIn("refused another connection", self.process.text())


class OperatorMedia(DatagramProtocol):
    """
    The operator side's end of a call's media: counts the RTP it gets and
    sends RTP to C{target} (the contact point's media port in the 200).
    """

    def __init__(self) -> None:
        self.received = 0
        self.target: tuple[str, int] | None = None
        self._seq = 0

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1

    def send(self) -> None:
        if self.target is not None and self.transport is not None:
            self._seq += 1
            self.transport.write(rtp_packet(self._seq & 0xFFFF, 160 * self._seq, 0x5157, time.time()), self.target)


class WorkersBehindProxyTests(_Workers):
    """
    Agents behind an HTTP proxy that lets them reach only the shared port
    (TLS): a resumption or a further connection that the kernel gives to
    the wrong worker is handed on to the right one (spwm.handon), so every
    session resumes, with its call's media, after every cut, and its
    second connection attaches.
    """

    timeout = 240

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.proxy = ConnectProxy(reactor)
        proxy_port = reactor.listenTCP(0, self.proxy, interface="127.0.0.1")
        self.proxy_port = proxy_port.getHost().port

        def stop_proxy() -> Any:
            self.proxy.cut()
            return proxy_port.stopListening()

        self.addCleanup(stop_proxy)
        yield super().setUp()
        self.proxy.allowed = {self.tunnel_port}

    def contact_security(self) -> list[str]:
        self.ca = TestCA(os.path.abspath(self.mktemp()))
        cert = self.ca.issue(["contact.spwm.test"], "contact")
        return ["--cert", cert.cert, "--key", cert.key]

    def agent_security(self) -> list[str]:
        return ["--server-name", "contact.spwm.test", "--ca", self.ca.ca_file, "--http-proxy", f"127.0.0.1:{self.proxy_port}"]

    def contact_extra(self) -> list[str]:
        # worker I serves its status on this port + I
        self.status_port = free_port(following=1)
        return ["--status-listen", f"tcp:{self.status_port}:interface=127.0.0.1"]

    @defer.inlineCallbacks
    def worker_status(self, index: int) -> Any:
        url = f"http://127.0.0.1:{self.status_port + index}/status"
        response = yield Agent(reactor).request(b"GET", url.encode())
        body = yield readBody(response)
        return json.loads(body)

    @defer.inlineCallbacks
    def media_call(self, phone: Phone) -> Any:
        """
        The operator calls C{phone}; media both ways from then on: the
        phone's call and the operator's end (L{OperatorMedia}).
        """
        media = OperatorMedia()
        rtp = reactor.listenUDP(0, media, interface="127.0.0.1")
        self.addCleanup(rtp.stopListening)
        ok, _ = yield self.call_phone(phone, rtp.getHost().port)
        media.target = sdp_audio_target(ok.body)
        sending = task.LoopingCall(media.send)
        sending.start(0.02)
        self.addCleanup(sending.stop)
        (call,) = phone.calls
        # the operator's ACK reached the phone: the call is set up
        yield wait_until(lambda: call.established.called, timeout=10)
        call.start_media()
        self.addCleanup(call.stop_media)
        return call, media

    @defer.inlineCallbacks
    def media_flows(self, call: Any, media: OperatorMedia) -> Any:
        """
        RTP arrives at both ends (20 packets more each than when asked).
        """
        phone_had, operator_had = call.rx.unique, media.received
        try:
            yield wait_until(lambda: call.rx.unique > phone_had + 20 and media.received > operator_had + 20, timeout=10)
        except AssertionError:
            # say which way stopped, and what the workers said
            self.fail(
                f"media did not flow within 10 s: the phone got {call.rx.unique - phone_had} more,"
                f" the operator {media.received - operator_had} more; the workers said:\n{self.process.text()[-6000:]}"
            )

    @defer.inlineCallbacks
    def test_resume_and_attach_handed_on(self) -> Any:
        """
        Each agent's second connection attaches; a call to its phone has
        media both ways; cut three times, each session resumes (same id),
        attaches its second connection again and its call's media flows
        again; at least one resumption or attach was handed on (the kernel
        gave it to the wrong worker), none was refused.
        """
        yield self.agents_on_both_workers(least=2)
        calls = []
        for built, phone in zip(self.agents, self.phones):
            yield self.two_paths(built)
            call, media = yield self.media_call(phone)
            yield self.media_flows(call, media)
            calls.append((call, media))
        for cut in range(3):
            for built, (call, media) in zip(self.agents, calls):
                before = built.resumption.session_id
                for path in list(built.paths.front.paths):
                    path.transport.abortConnection()
                yield self.resumed(built)
                self.assertEqual(built.resumption.session_id, before)
                yield self.media_flows(call, media)
                yield self.two_paths(built)
                self.assertEqual(built.paths.attach_refused, 0)
        text = self.process.text()
        self.assertGreater(self.proxy.forbidden, 0)
        self.assertIn("handed on to worker", text)
        self.assertNotIn("agent sent there", text)
        self.assertNotIn("could not hand", text)
        self.assertNotIn("refused resumption", text)
        self.assertNotIn("refused another connection", text)
        # every resumption took its proofs from the hello, also those
        # handed on (the worker that took it over checks them with the
        # connection's keying material from the hand-on)
        resumed = [built.resumption.resumed for built in self.agents]
        self.assertEqual([built.resumption.bound_taken for built in self.agents], resumed)
        # the status counts them: each worker those it made and took
        made = taken = bound = bound_attached = 0
        for index in (0, 1):
            status = yield self.worker_status(index)
            made += status["sessions"]["resume_handed_on"] + status["paths"]["attach_handed_on"]
            taken += status["tunnels"]["handed_on_in"]
            bound += status["sessions"]["resumed_bound"]
            bound_attached += status["paths"]["attach_bound"]
            self.assertEqual(status["tunnels"]["handon_failed"], 0)
        self.assertEqual(made, text.count("handed on to worker"))
        self.assertEqual(bound, sum(resumed))
        # and every further connection's attach proof came in its hello
        self.assertGreater(sum(built.paths.attach_bound for built in self.agents), 0)
        self.assertGreaterEqual(bound_attached, sum(built.paths.attach_bound for built in self.agents))
        self.assertEqual(taken, made)
        self.assertNotIn("Traceback", text)
