"""
The contact point's state file: what is written, what a new process gets
back, and what it refuses.  (A real restart: tests/integration/
test_resumption.py, C{RestartTests}.)
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import given, strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from spwm.session.manager import SessionManager
from spwm.session.session import Session
from spwm.sip.contact_proxy import ContactSipProxy
from spwm.state import SAVE_SLICE, VERSION, ContactState, write_file
from tests.test_security_resume import KEY, USER, FakeMedia

SECRET = b"s" * 32
SIP = {
    "registrations": [
        {"aor": "sip:alice@example.test", "contact": "sip:alice@192.0.2.9:5060", "flow_id": 3, "ttl": 600.0},
        {"aor": "sip:alice@example.test", "contact": "sip:alice@192.0.2.9:5062", "flow_id": 4, "ttl": 50.0},
    ],
    "rewritten": [[3, "0a0b0c0d", "sip:alice@192.0.2.9:5060"]],
}


class Wall:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RunnerView:
    """
    The SIP runner as the resumption logic sees it: registrations.
    """

    def __init__(self, core: ContactSipProxy) -> None:
        self.core = core

    def registrations(self, session_id: str) -> list[Any]:
        return self.core.registrations(session_id)

    def forget_session(self, session_id: str) -> None:
        self.core.forget_session(session_id)


def _half(clock: Clock, secret: bytes = SECRET) -> tuple[ContactSipProxy, SessionManager]:
    core = ContactSipProxy(("198.51.100.1", 5060), secret)
    return core, SessionManager(clock, 60.0, FakeMedia(), RunnerView(core))


class StateFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(1000)
        self.wall = Wall(1_700_000_000.0)

    def _saved(self) -> tuple[ContactSipProxy, dict]:
        """
        A contact point with one session (alice's key, two registrations)
        and an embedded registrar binding, saved.
        """
        core, resumption = _half(self.clock)
        core.import_registrations("s1", SIP, self.clock.seconds())
        resumption.sessions["s1"] = Session("s1", keys={USER: KEY}, flows={USER: 3})
        core.registrar.import_bindings(
            [{"aor": "alice@example.test", "key": "k", "contact": "sip:alice@192.0.2.9:5060",
              "path": ["<sip:tok@198.51.100.1;lr>"], "ttl": 600.0, "params": [["+sip.instance", "\"<urn:x>\""]], "age": 5.0}],
            self.clock.seconds(),
        )
        ContactState(self.path, self.clock, self.wall).save(core, resumption)
        with open(self.path) as f:
            return core, json.load(f)

    def test_written(self) -> None:
        """
        The file is mode 0600, no temporary file is left, and it holds the
        version, the token key, the session's keys, flows, registrations
        and rewritten contacts, and the registrar's bindings.
        """
        core, doc = self._saved()
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertFalse(os.path.exists(self.path + ".tmp"))
        self.assertEqual((doc["version"], doc["saved_at"], doc["token_secret"]), (VERSION, self.wall.now, SECRET.hex()))
        entry = doc["sessions"]["s1"]
        self.assertEqual((entry["keys"], entry["flows"]), ({USER: KEY.hex()}, {USER: 3}))
        self.assertEqual(sorted(r["ttl"] for r in entry["sip"]["registrations"]), [50.0, 600.0])
        self.assertEqual(entry["sip"]["rewritten"], SIP["rewritten"])
        [binding] = doc["registrar"]
        self.assertEqual((binding["path"], binding["ttl"], binding["age"]), (["<sip:tok@198.51.100.1;lr>"], 600.0, 5.0))

    def test_restored_minus_downtime(self) -> None:
        """
        A new process gets the token key, the session dormant with its
        keys, and the registrations and bindings that outlive the time it
        was down (100 s: the 50 s one is gone).
        """
        self._saved()
        clock = Clock()
        clock.advance(5)
        self.wall.now += 100
        state = ContactState(self.path, clock, self.wall)
        doc = state.load()
        secret = state.secret(doc)
        self.assertEqual(secret, SECRET)
        core, resumption = _half(clock, secret)
        self.assertEqual(state.restore(doc, core, resumption), 1)
        [reg] = core.registrations("s1")
        self.assertEqual((reg.contact, reg.flow_id, reg.expires), ("sip:alice@192.0.2.9:5060", 3, 505.0))
        self.assertEqual((resumption.dormant, resumption.keys, resumption.flows), (1, {"s1": {USER: KEY}}, {"s1": {USER: 3}}))
        [binding] = core.registrar.bindings("sip:alice@example.test", clock.seconds())
        self.assertEqual((binding.expires, binding.path), (505.0, ("<sip:tok@198.51.100.1;lr>",)))
        self.assertEqual(core.export_registrations("s1", clock.seconds())["rewritten"], SIP["rewritten"])
        # the stop's file: that process ended its calls itself
        self.assertEqual(resumption.calls_unended, set())
        clock.advance(501)
        self.assertEqual(resumption.dormant, 0)

    def test_session_key_only(self) -> None:
        """
        A session with no per-user key but a key of its own (registrations
        without digest credentials) is saved with it and restored dormant
        with it; an entry without one (a file of an older version) is read
        as without.
        """
        core, resumption = _half(self.clock)
        core.import_registrations("s1", SIP, self.clock.seconds())
        resumption.sessions["s1"] = Session("s1", session_key=KEY)
        ContactState(self.path, self.clock, self.wall).save(core, resumption)
        state = ContactState(self.path, Clock(), self.wall)
        doc = state.load()
        self.assertEqual({k: v for k, v in doc["sessions"]["s1"].items() if k != "sip"}, {"keys": {}, "flows": {}, "session_key": KEY.hex()})
        core, resumption = _half(Clock(), state.secret(doc))
        self.assertEqual(state.restore(doc, core, resumption), 1)
        self.assertEqual((resumption.dormant, resumption.sessions["s1"].session_key), (1, KEY))
        del doc["sessions"]["s1"]["session_key"]
        core, resumption = _half(Clock(), state.secret(doc))
        self.assertEqual(state.restore(doc, core, resumption), 0)
        self.assertEqual(core.registrations("s1"), [])

    def test_agent_name(self) -> None:
        """
        The agent's name goes with its session through a restart, so the
        sessions listing names the agent of a dormant session; a file
        without it (an older version) is read as without, one with a name
        that is no agent's is not read.
        """
        core, resumption = _half(self.clock)
        core.import_registrations("s1", SIP, self.clock.seconds())
        session = Session("s1", session_key=KEY)
        session.use_tunnel(type("Tunnel", (), {"agent_id": "branch-7"})())
        resumption.sessions["s1"] = session
        ContactState(self.path, self.clock, self.wall).save(core, resumption)
        state = ContactState(self.path, Clock(), self.wall)
        doc = state.load()
        self.assertEqual(doc["sessions"]["s1"]["agent"], "branch-7")
        core, resumption = _half(Clock(), state.secret(doc))
        self.assertEqual(state.restore(doc, core, resumption), 1)
        [listed] = resumption.session_list()
        self.assertEqual((listed["state"], listed["agent"], listed["connections"]), ("dormant", "branch-7", []))
        del doc["sessions"]["s1"]["agent"]
        core, resumption = _half(Clock(), state.secret(doc))
        self.assertEqual(state.restore(doc, core, resumption), 1)
        self.assertEqual(resumption.session_list()[0]["agent"], "")
        doc["sessions"]["s1"]["agent"] = "x" * 257
        core, resumption = _half(Clock(), state.secret(doc))
        self.assertEqual(state.restore(doc, core, resumption), 0)

    def test_keys_read_once(self) -> None:
        """
        Restoring many sessions asks the resumption logic for its sessions
        with keys once, not once per session (that set is built anew on
        each call: per session, 10,000 sessions took 17 s to restore).
        """
        reads = []

        class Counting(SessionManager):
            def resumable_ids(self) -> set[str]:
                reads.append(1)
                return super().resumable_ids()

        core = ContactSipProxy(("198.51.100.1", 5060), SECRET)
        resumption = Counting(self.clock, 60.0, FakeMedia(), RunnerView(core))
        sessions = {f"s{n}": {"keys": {USER: KEY.hex()}, "flows": {USER: 3}, "sip": SIP} for n in range(50)}
        doc = {"version": VERSION, "saved_at": self.wall.now, "token_secret": SECRET.hex(), "sessions": sessions}
        self.assertEqual(ContactState(self.path, self.clock, self.wall).restore(doc, core, resumption), 50)
        self.assertEqual((len(reads), resumption.dormant), (1, 50))

    def test_forget_one_session(self) -> None:
        """
        A session forgotten takes its registrations and rewritten contacts
        with it and leaves another session's alone.
        """
        core, _ = _half(self.clock)
        now = self.clock.seconds()
        for sid in ("s1", "s2"):
            core.import_registrations(sid, SIP, now)
        core.forget_session("s1")
        self.assertEqual(core.export_registrations("s1", now), {"registrations": [], "rewritten": []})
        kept = core.export_registrations("s2", now)
        self.assertEqual((len(kept["registrations"]), kept["rewritten"]), (2, SIP["rewritten"]))

    def test_unusable(self) -> None:
        """
        No file: nothing, silently. Not JSON, another version, a bad key or
        malformed sessions: logged, and nothing (or only what is usable)
        restored; nothing raises.
        """
        state = ContactState(self.path, self.clock, self.wall)
        with capturedLogs() as events:
            self.assertIsNone(state.load())
        self.assertEqual(events, [])
        for text in ("{not json", json.dumps({"version": VERSION + 1}), json.dumps([1])):
            with open(self.path, "w") as f:
                f.write(text)
            with capturedLogs() as events:
                self.assertIsNone(state.load())
            self.assertEqual(len(events), 1)
        with capturedLogs() as events:
            self.assertIsNone(state.secret({"token_secret": "zz"}))
            self.assertIsNone(state.secret({"token_secret": "00"}))
        core, resumption = _half(self.clock)
        bad = {
            "version": VERSION,
            "saved_at": "yesterday",
            "registrar": [{"aor": 1}],
            "sessions": {
                "s1": {"keys": {USER: KEY.hex()}, "flows": {USER: 3}, "sip": {"registrations": [{"ttl": 5}]}},
                "s2": "nonsense",
                "s3": {"keys": {USER: KEY.hex()}, "flows": {USER: 3}, "sip": SIP},
                "s4": {"keys": {USER: "00"}, "flows": {USER: 3}, "sip": SIP},
                "s5": {"keys": {USER: KEY.hex()}, "flows": {USER: 2**40}, "sip": SIP},
            },
        }
        with capturedLogs() as events:
            self.assertEqual(state.restore(bad, core, resumption), 1)
        self.assertEqual(core.registrations("s1"), [])
        self.assertEqual(len(core.registrations("s3")), 2)
        self.assertEqual((core.registrations("s4"), core.registrations("s5")), ([], []))
        self.assertEqual(sorted(resumption.keys), ["s3"])
        self.assertTrue(any("malformed" in str(e.get("reason", "")) for e in events))

    def test_write_failure_logged(self) -> None:
        """
        A state file in a directory that does not exist is not written; the
        error is logged and nothing raises.
        """
        core, resumption = _half(self.clock)
        state = ContactState(os.path.join(self.path, "missing", "state.json"), self.clock, self.wall)
        with capturedLogs() as events:
            state.save(core, resumption)
        self.assertEqual([e["log_level"].name for e in events], ["error"])


class Writes:
    """
    The periodic writes' thread, held: each call waits until the test
    lets it run (L{finish}).
    """

    def __init__(self) -> None:
        self.waiting: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append((d, f, args))
        return d

    def finish(self) -> None:
        d, f, args = self.waiting.pop(0)
        try:
            result = f(*args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)


class PeriodicWriteTests(SynchronousTestCase):
    """
    While the contact point runs, the state is written every interval (a
    crash loses at most that much), in slices, with the disk work left to
    a thread; the stop's own write comes after the one under way.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(1000)
        self.wall = Wall(1_700_000_000.0)
        self.core, self.resumption = _half(self.clock)

    def add_session(self, name: str, flow: int = 3) -> None:
        sip = {"registrations": [{**SIP["registrations"][0], "flow_id": flow}], "rewritten": []}
        self.core.import_registrations(name, sip, self.clock.seconds())
        self.resumption.sessions[name] = Session(name, keys={USER: KEY}, flows={USER: flow})

    def saved(self) -> dict:
        with open(self.path) as f:
            return dict(json.load(f))

    def test_written_at_start_and_every_interval(self) -> None:
        """
        Started, the file is written at once (the token key, before any
        session: a worker that dies before its first stop keeps its
        tokens valid), then every interval with the sessions of then; a
        session made after a write is in the next one, a session gone is
        gone from it.
        """
        state = ContactState(self.path, self.clock, self.wall)
        state.start(self.core, self.resumption, 10.0)
        doc = self.saved()
        self.assertEqual((doc["token_secret"], doc["sessions"], state.writes), (SECRET.hex(), {}, 1))
        self.add_session("s1")
        self.clock.advance(9.9)
        self.assertEqual(self.saved()["sessions"], {})
        self.clock.advance(0.1)
        entry = self.saved()["sessions"]["s1"]
        self.assertEqual((entry["keys"], entry["flows"]), ({USER: KEY.hex()}, {USER: 3}))
        self.assertEqual([r["ttl"] for r in entry["sip"]["registrations"]], [590.0])
        del self.resumption.sessions["s1"]
        self.clock.advance(10.0)
        self.assertEqual((self.saved()["sessions"], state.writes), ({}, 3))
        self.assertFalse(os.path.exists(self.path + ".tmp"))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)

    def test_read_back_as_after_a_stop(self) -> None:
        """
        What a periodic write leaves is what a new process restores, as
        from the stop's write (the process that wrote it never stopped).
        """
        self.add_session("s1")
        ContactState(self.path, self.clock, self.wall).start(self.core, self.resumption, 10.0)
        clock = Clock()
        self.wall.now += 100
        state = ContactState(self.path, clock, self.wall)
        doc = state.load()
        core, resumption = _half(clock, state.secret(doc) or b"")
        self.assertEqual(state.restore(doc or {}, core, resumption), 1)
        [reg] = core.registrations("s1")
        self.assertEqual((reg.flow_id, reg.expires), (3, 500.0))
        self.assertEqual(resumption.keys, {"s1": {USER: KEY}})
        # written while running: the process died with its calls, which
        # its agents' resumptions are told (calls_ended: false)
        self.assertEqual((doc or {}).get("running"), True)
        self.assertEqual(resumption.calls_unended, {"s1"})

    def test_in_slices(self) -> None:
        """
        More sessions than a slice are taken over several reactor turns;
        the file is written once, with all of them, after the last.
        """
        count = 2 * SAVE_SLICE + 1
        for n in range(count):
            self.add_session(f"s{n:04}", n + 1)
        state = ContactState(self.path, self.clock, self.wall)
        state.start(self.core, self.resumption, 10.0)
        # the first slice, and the next waiting for the next turn
        self.assertFalse(os.path.exists(self.path))
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [self.clock.seconds()])
        self.clock.advance(0)
        self.assertEqual(len(self.saved()["sessions"]), count)
        self.assertEqual(state.writes, 1)

    def test_stop_waits_for_the_write_under_way(self) -> None:
        """
        The stop's result fires only once the disk write under way is
        over (so that the stop's own write is the last), and no write
        follows the stop.
        """
        writes = Writes()
        state = ContactState(self.path, self.clock, self.wall, writes)
        state.start(self.core, self.resumption, 10.0)
        self.assertEqual(len(writes.waiting), 1)
        stopped = state.stop()
        self.assertNoResult(stopped)
        writes.finish()
        self.successResultOf(stopped)
        self.clock.advance(60.0)
        self.assertEqual((writes.waiting, state.writes, self.clock.getDelayedCalls()), ([], 1, []))

    def test_failure_said_once(self) -> None:
        """
        A file that cannot be written is one error line, not one per
        interval; a line again when writing works again.
        """
        missing = os.path.join(self.path, "missing")
        state = ContactState(os.path.join(missing, "state.json"), self.clock, self.wall)
        with capturedLogs() as events:
            state.start(self.core, self.resumption, 10.0)
            self.clock.advance(10.0)
            self.clock.advance(10.0)
            os.makedirs(missing)
            self.clock.advance(10.0)
        self.assertEqual((state.failures, state.writes), (3, 1))
        self.assertEqual([e["log_level"].name for e in events], ["error", "info"])
        state.stop()

    def test_a_bug_said_not_hung(self) -> None:
        """
        A write that raises (a bug, not the disk) is one error line and a
        failure; the next interval tries again, and the stop does not wait
        for it.
        """
        self.add_session("s1")
        state = ContactState(self.path, self.clock, self.wall)
        broken = [True]
        export = self.resumption.export_session

        def export_session(session_id: str, sip: Any = None) -> Any:
            if broken[0]:
                raise RuntimeError("broken")
            return export(session_id, sip)

        self.resumption.export_session = export_session  # type: ignore[method-assign]
        with capturedLogs() as events:
            state.start(self.core, self.resumption, 10.0)
            self.assertEqual((state.failures, state.writes), (1, 0))
            broken[0] = False
            self.clock.advance(10.0)
        self.assertEqual((state.failures, state.writes), (1, 1))
        self.assertEqual([e["log_level"].name for e in events], ["error", "info"])
        self.successResultOf(state.stop())

    def test_write_file(self) -> None:
        """
        The disk work: the text, mode 0600, no temporary file left.
        """
        write_file(self.path, "{}")
        with open(self.path) as f:
            self.assertEqual(f.read(), "{}")
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertFalse(os.path.exists(self.path + ".tmp"))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _shaped(values: Any) -> Any:
    """
    Documents shaped like a state file (every field present, so the checks
    of the values are reached), with any values in the places: numbers
    (infinities and NaN too), text, nothing, nested garbage.
    """
    odd = st.one_of(
        st.sampled_from([float("inf"), float("-inf"), float("nan"), 2**40, -1, 0, 1.5, 600, "x", "", None, True]),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True),
        st.text(max_size=8),
        values,
    )
    registration = st.fixed_dictionaries({"aor": odd, "contact": odd, "flow_id": odd, "ttl": odd})
    binding = st.fixed_dictionaries(
        {"aor": odd, "key": odd, "contact": odd, "path": st.lists(odd, max_size=2) | odd, "ttl": odd,
         "params": st.lists(st.lists(odd, max_size=3), max_size=2) | odd, "age": odd}
    )
    session = st.fixed_dictionaries(
        {
            "keys": st.dictionaries(st.text(max_size=8), st.sampled_from([KEY.hex(), "zz", ""]) | odd, max_size=2) | odd,
            "flows": st.dictionaries(st.text(max_size=8), odd, max_size=2) | odd,
            "sip": st.fixed_dictionaries(
                {"registrations": st.lists(registration, max_size=3) | odd,
                 "rewritten": st.lists(st.lists(odd, max_size=4), max_size=2) | odd}
            ) | odd,
        }
    )
    return st.fixed_dictionaries(
        {
            "version": st.just(VERSION),
            "saved_at": odd,
            "token_secret": st.sampled_from([SECRET.hex(), "00", "zz"]) | odd,
            "registrar": st.lists(binding, max_size=3) | odd,
            "sessions": st.dictionaries(st.text(max_size=8), session | odd, max_size=3),
        }
    )


class GarbageTests(SynchronousTestCase):
    @given(_shaped(_json))
    def test_restore_never_raises(self, doc: dict) -> None:
        """
        Whatever a state file of the right version holds, restoring it logs
        what it cannot use and never raises: a bad file must not keep the
        contact point from starting.
        """
        clock = Clock()
        core, resumption = _half(clock)
        state = ContactState("/nonexistent", clock, Wall(1_700_000_000.0))
        with capturedLogs():
            state.secret(doc)
            state.restore(doc, core, resumption)
