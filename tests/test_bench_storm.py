"""
Tests for the reconnect-storm bench (C{bench/storm.py}): the state it
gives the contact point to restart from is what the contact point itself
writes and restores, so its agents' sessions are there to resume.  (The
storm itself is a benchmark: C{python3 bench/storm.py}.)
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bench.storm import make_plan, state_documents
from spwm.security.keys import check_proof, resumption_proof
from spwm.state import ContactState
from tests.test_state import Wall, _half


class StateTests(SynchronousTestCase):
    def test_plan_spreads_over_workers(self) -> None:
        """
        Sessions go to the workers in turn, each id ending in its worker's
        C{-wINDEX} (one worker: no suffix), every id and user distinct.
        """
        plan = make_plan(6, 2)
        self.assertEqual([p["worker"] for p in plan], [0, 1, 0, 1, 0, 1])
        self.assertTrue(all(p["session_id"].endswith(f"-w{p['worker']}") for p in plan))
        self.assertEqual(len({p["session_id"] for p in plan}), 6)
        self.assertEqual(len({p["user"] for p in plan}), 6)
        self.assertNotIn("-w", make_plan(1, 1)[0]["session_id"])

    def test_restored_by_the_contact_point(self) -> None:
        """
        Each worker's document restores that worker's sessions, dormant,
        with the plan's keys: the proof a client makes from the plan is
        the one the contact point accepts.
        """
        plan = make_plan(5, 2)
        wall = Wall(1_700_000_000.0)
        docs = state_documents(plan, 2, wall.now - 30)
        for worker, doc in enumerate(docs):
            clock = Clock()
            core, resumption = _half(clock)
            state = ContactState(self.mktemp(), clock, wall)
            mine = [p for p in plan if p["worker"] == worker]
            self.assertEqual(state.restore(doc, core, resumption), len(mine))
            self.assertEqual(resumption.dormant, len(mine))
            for p in mine:
                key = resumption.keys[p["session_id"]][p["user"]]
                proof = resumption_proof(bytes.fromhex(p["key"]), b"c" * 16, p["session_id"])
                self.assertTrue(check_proof(key, b"c" * 16, p["session_id"], proof))
                [reg] = core.registrations(p["session_id"])
                self.assertEqual((reg.flow_id, reg.expires), (p["flow"], 3570.0))
