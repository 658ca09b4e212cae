"""
The agent's state file (C{spwm-agent --state-file}): what its SIP core,
flow table and session give and take back, and the file itself.  (A real
restart: tests/integration/test_resumption.py, C{AgentRestartTests}.)
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from spwm.security.resume import AgentResumption
from spwm.session.state import SessionState
from spwm.sip.actions import ToApp, ToTunnel
from spwm.sip.agent_proxy import AgentSipProxy
from spwm.sip.flows import Flow, FlowTable
from spwm.state import AgentState
from tests.test_security_resume import KEY, USER, FakeHandle, FakeMedia, RingingRecorded
from tests.test_sip_proxy import FLOW_A, FLOW_B, answer, only, register
from tests.test_state import Wall

SESSION_KEY = b"k" * 32


def registered_agent(now: float = 0.0) -> tuple[AgentSipProxy, int]:
    """
    An agent core through which alice's phone (FLOW_A, UDP) registered for
    600 s, and a phone on TCP for as long.

    @return: the core and alice's flow id.
    """
    core = AgentSipProxy(object(), "agent-1")
    up = only(core.from_app(FLOW_A, register(), now), ToTunnel)
    only(core.from_tunnel(up.flow_id, answer(up.data, 200, extra=(("Contact", "<sip:alice@192.0.2.10:5062>;expires=600"),)), now), ToApp)
    tcp = Flow("tcp", FLOW_A.local, ("192.0.2.11", 40000), conn_id=4)
    up2 = only(core.from_app(tcp, register("bob", "sip:bob@192.0.2.11:5062;transport=tcp", branch="z9hG4bKreg2"), now), ToTunnel)
    core.from_tunnel(up2.flow_id, answer(up2.data, 200, extra=(("Contact", "<sip:bob@192.0.2.11:5062;transport=tcp>;expires=600"),)), now)
    return core, up.flow_id


class SipCoreStateTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """
        A new core takes back the UDP flow with its id and lifetime, the
        binding (the status listing's) and the registration's expiry (the
        tunnel is busy); the phone on TCP is not kept (its connection
        ends with the process), and a new flow gets an id above.
        """
        core, fid = registered_agent()
        data = json.loads(json.dumps(core.export_state(100.0)))
        self.assertEqual([f["flow_id"] for f in data["flows"]], [fid])
        new = AgentSipProxy(object(), "agent-1")
        self.assertEqual(new.import_state(data, 5.0), 1)
        self.assertEqual(new.flows.lookup(fid, 5.0), FLOW_A)
        self.assertEqual([(b["aor"], b["flow"]) for b in new.registration_list()], [("sip:alice@example.org", fid)])
        self.assertTrue(new.busy(5.0))
        self.assertGreater(new.flows.use(FLOW_B, 6.0), fid)
        # an incoming request for the flow reaches the phone
        options = (
            b"OPTIONS sip:alice@192.0.2.10:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKx\r\n"
            b"From: <sip:carol@example.org>;tag=c\r\nTo: <sip:alice@example.org>\r\nCall-ID: o@x\r\n"
            b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(only(new.from_tunnel(fid, options, 7.0), ToApp).flow, FLOW_A)
        # registered for 600 s at 0, exported at 100: 500 s (+ the margin) left
        self.assertFalse(new.busy(5.0 + 501.0))
        self.assertIsNotNone(new.flows.lookup(fid, 5.0 + 500.0))
        self.assertIsNone(new.flows.lookup(fid, 5.0 + 500.0 + new.registration_margin + 1))

    def test_garbage_skipped(self) -> None:
        """
        Malformed, expired or clashing entries are skipped, never raised.
        """
        table = FlowTable()
        table.use(FLOW_B, 0.0)
        entries: Any = [
            {"flow_id": 1, "local": ["192.0.2.1", 5060], "remote": ["192.0.2.12", 5060], "ttl": 10},  # id taken
            {"flow_id": 7, "local": ["192.0.2.1", 5060], "remote": list(FLOW_B.remote), "ttl": 10},  # flow taken
            {"flow_id": 8, "local": ["192.0.2.1"], "remote": ["192.0.2.12", 5060], "ttl": 10},
            {"flow_id": 9, "local": ["192.0.2.1", 5060], "remote": ["192.0.2.12", 5060], "ttl": -1},
            {"flow_id": "10", "local": ["192.0.2.1", 5060], "remote": ["192.0.2.12", 5060], "ttl": 10},
            {"flow_id": 11, "local": ["192.0.2.1", 99999], "remote": ["192.0.2.12", 5060], "ttl": 10},
            None,
            {"flow_id": 12, "local": ["192.0.2.1", 5060], "remote": ["192.0.2.12", 5060], "ttl": 10},
        ]
        self.assertEqual(table.restore_udp(entries, 0.0), 1)
        self.assertEqual(table.restore_udp("x", 0.0), 0)
        # an empty table: ids 1 and 7 are free, 12 is 1's flow again
        core = AgentSipProxy(object(), "agent-1")
        self.assertEqual(core.import_state({"flows": entries, "bindings": [None, {"flow_id": 12}], "registered": [[12], "x", [99, 5]]}, 0.0), 2)
        self.assertEqual((core.registration_list(), core.busy(0.0)), ([], False))
        self.assertEqual(core.import_state("garbage", 0.0), 0)


class SessionStateTests(SynchronousTestCase):
    def agent(self) -> AgentResumption:
        return AgentResumption(Clock(), 60.0, FakeMedia(), FakeHandle())

    def test_round_trip(self) -> None:
        """
        A session with a key is exported with its id; a new agent takes it
        dormant, and its first hello offers the resumption.
        """
        old = self.agent()
        self.assertIsNone(old.export_session())
        old.keys[USER] = KEY
        old.flows[USER] = 3
        old.session.session_key = SESSION_KEY
        old.session_id = "s1"
        old.session.state = SessionState.LIVE
        entry = json.loads(json.dumps(old.export_session()))
        new = self.agent()
        self.assertTrue(new.import_session(entry))
        self.assertEqual((new.state, new.session_id, new.keys, new.flows), (SessionState.DORMANT, "s1", {USER: KEY}, {USER: 3}))
        self.assertEqual(new.session.session_key, SESSION_KEY)
        self.assertEqual(new.hello()["resume"], {"session_id": "s1", "users": [USER]})

    def test_refused(self) -> None:
        """
        Malformed entries (a short key, no id, users without flows) are
        not taken; nor one over a session the agent has already.
        """
        good = {"session_id": "s1", "keys": {USER: KEY.hex()}, "flows": {USER: 3}}
        for bad in (
            {**good, "keys": {USER: "00"}},
            {**good, "session_id": None},
            {**good, "flows": {}},
            {**good, "keys": "x"},
            {**good, "flows": {USER: 2**40}},
            None,
        ):
            agent = self.agent()
            self.assertFalse(agent.import_session(bad), bad)
            self.assertEqual(agent.state, SessionState.ENDED)
        agent = self.agent()
        self.assertTrue(agent.import_session(good))
        self.assertFalse(agent.import_session({**good, "session_id": "s2"}))


class AgentStateFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.wall = Wall(1_700_000_000.0)

    def sides(self) -> tuple[AgentResumption, AgentSipProxy, int]:
        resumption = AgentResumption(self.clock, 60.0, FakeMedia(), FakeHandle())
        resumption.keys[USER] = KEY
        resumption.flows[USER] = 3
        resumption.session_id = "s1"
        resumption.session.state = SessionState.LIVE
        core, fid = registered_agent(self.clock.seconds())
        return resumption, core, fid

    def test_saved_and_restored_minus_downtime(self) -> None:
        """
        Written at the stop (mode 0600) and read by a new process 100 s
        later: the session dormant, the flow with 100 s less to live.
        """
        resumption, core, fid = self.sides()
        state = AgentState(self.path, self.clock, self.wall)
        self.successResultOf(state.stop_and_save([(resumption, core)]))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.wall.now += 100
        clock = Clock()
        new_state = AgentState(self.path, clock, self.wall)
        new_resumption = AgentResumption(clock, 60.0, FakeMedia(), FakeHandle())
        new_core = AgentSipProxy(object(), "agent-1")
        with capturedLogs() as events:
            self.assertEqual(new_state.restore(new_state.load(), [(new_resumption, new_core)]), 1)
        self.assertIn("1 sessions and 1 phone flows restored", formatEvent(events[-1]))
        self.assertEqual(new_resumption.state, SessionState.DORMANT)
        self.assertIsNotNone(new_core.flows.lookup(fid, 499.0))
        self.assertIsNone(new_core.flows.lookup(fid, 500.0 + new_core.registration_margin + 1))

    def test_written_while_running(self) -> None:
        """
        Written at start and every interval (a crash loses at most that),
        with the keys of then.
        """
        resumption, core, fid = self.sides()
        state = AgentState(self.path, self.clock, self.wall)
        state.start([(resumption, core)], 10.0)
        with open(self.path) as f:
            self.assertEqual(json.load(f)["sides"][0]["session"]["session_id"], "s1")
        resumption.session_id = "s2"
        self.clock.advance(10.0)
        with open(self.path) as f:
            self.assertEqual(json.load(f)["sides"][0]["session"]["session_id"], "s2")
        self.assertEqual(state.writes, 2)
        state.stop()

    def test_a_contact_points_file_ignored(self) -> None:
        """
        A file that is not an agent's (a contact point's, say) is one line
        and nothing restored.
        """
        with open(self.path, "w") as f:
            json.dump({"version": 1, "sessions": {}}, f)
        state = AgentState(self.path, self.clock, self.wall)
        resumption = AgentResumption(self.clock, 60.0, FakeMedia(), FakeHandle())
        with capturedLogs() as events:
            self.assertEqual(state.restore(state.load(), [(resumption, AgentSipProxy(object(), "a"))]), 0)
        self.assertEqual([formatEvent(e) for e in events], [f"state file {self.path} ignored: not an agent's"])
        self.assertEqual(resumption.state, SessionState.ENDED)


def _odd() -> Any:
    return st.one_of(
        st.sampled_from([float("inf"), float("-inf"), float("nan"), 2**40, -1, 0, 1.5, 600, "x", "", None, True, [], {}]),
        st.integers(-(2**70), 2**70),
        st.text(max_size=8),
        st.lists(st.integers(-5, 70000) | st.text(max_size=4), max_size=3),
    )


def _agent_document() -> Any:
    """
    Documents shaped like an agent's state file, with any values in the
    places (so the checks of the values are reached).
    """
    odd = _odd()
    flow = st.fixed_dictionaries({"flow_id": odd, "local": odd, "remote": odd, "ttl": odd})
    binding = st.fixed_dictionaries({"flow_id": odd, "aor": odd, "contact": odd, "ttl": odd, "expires": odd})
    session = st.fixed_dictionaries(
        {
            "session_id": odd | st.just("s1"),
            "keys": st.dictionaries(st.text(max_size=4), st.sampled_from([KEY.hex(), "zz"]) | odd, max_size=2) | odd,
            "flows": st.dictionaries(st.text(max_size=4), odd, max_size=2) | odd,
            "session_key": odd | st.just(SESSION_KEY.hex()),
        }
    )
    sip = st.fixed_dictionaries(
        {"flows": st.lists(flow, max_size=3) | odd, "bindings": st.lists(binding, max_size=3) | odd,
         "registered": st.lists(st.lists(odd, max_size=3), max_size=3) | odd}
    )  # fmt: skip
    side = st.fixed_dictionaries({"session": session | odd, "sip": sip | odd})
    return st.fixed_dictionaries(
        {"version": st.just(1), "agent": st.just(True), "saved_at": odd, "sides": st.lists(side | odd, max_size=2) | odd}
    )


class AgentGarbageTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(_agent_document())
    def test_restore_never_raises(self, doc: dict) -> None:
        """
        Whatever an agent's state file of the right version holds, taking
        it back logs what it cannot use and never raises: a bad file must
        not keep the agent from starting.
        """
        clock = Clock()
        state = AgentState("/nonexistent", clock, Wall(1_700_000_000.0))
        side = (AgentResumption(clock, 60.0, FakeMedia(), FakeHandle()), AgentSipProxy(object(), "agent-1"))
        with capturedLogs():
            state.restore(doc, [side])


class RingingLostScopeTests(SynchronousTestCase):
    def test_only_the_sides_session(self) -> None:
        """
        The agent's core, as its resumption watches it, ends its ringing
        calls for its own session only (with two contact points, each
        side's core has its own), or for any while it knows none.
        """
        calls: list[str] = []

        resumption = AgentResumption(Clock(), 60.0, FakeMedia(), FakeHandle())
        wrapped = resumption.wrap(RingingRecorded(lambda session_id, far: calls.append(session_id)))
        wrapped.ringing_lost("s9", 0.0)
        resumption.session_id = "s1"
        wrapped.ringing_lost("s2", 0.0)
        wrapped.ringing_lost("s1", 0.0)
        self.assertEqual(calls, ["s9", "s1"])
