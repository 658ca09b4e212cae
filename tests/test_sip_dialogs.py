"""
Tests for L{spwm.sip.dialogs}: the one dialog tracker of both proxy halves.
(Through the cores it is exercised by L{tests.test_sip_proxy}.)
"""

from __future__ import annotations

import dataclasses
from twisted.trial.unittest import SynchronousTestCase

from spwm.sip.dialogs import ACK_WAIT, Dialog, DialogTable, MovedLegs, Parties, Party, RemoteTarget


def _target(n: int) -> RemoteTarget:
    """
    @return: the remote target of a party at 198.51.100.C{n}.
    """
    return RemoteTarget(f"sip:u@198.51.100.{n}", f"198.51.100.{n}")


class DialogTableTests(SynchronousTestCase):
    """
    L{DialogTable}: scopes, forked dialogs, expiry and the bound.
    """

    def test_forked_dialogs_end_one_by_one(self) -> None:
        """
        Two dialogs of one call (a forked INVITE answered twice): removing
        one leaves the call established; removing the last ends it.  Tags
        name a dialog either way round.
        """
        t = DialogTable(100.0)
        t.answered("s", "c", 1, "a", "b1", 0.0)
        t.answered("s", "c", 1, "a", "b2", 0.0)
        self.assertEqual(len(t), 2)
        self.assertTrue(t.others("s", "c", 1, "a", "b1"))
        self.assertFalse(t.remove("s", "c", "b1", "a"))
        self.assertFalse(t.others("s", "c", 1, "a", "b2"))
        self.assertTrue(t.remove("s", "c", "a", "b2"))
        self.assertFalse(t.has("s", "c"))
        self.assertTrue(t.remove("s", "c", "a", "b2"))  # nothing left: still "none"
        self.assertEqual(len(t), 0)

    def test_answered_again_replaces(self) -> None:
        """
        A 2xx again for the same tags on the same flow (a retransmission, a
        re-INVITE's) replaces the dialog with a fresh expiry; on another
        flow it is a second leg of the dialog (two phones behind one agent
        calling each other), which a BYE's tags remove together.
        """
        t = DialogTable(100.0)
        t.answered("s", "c", 1, "a", "b", 0.0)
        t.answered("s", "c", 1, "a", "b", 5.0)
        self.assertEqual(t.of("s"), [Dialog("c", "a", "b", 1, 105.0)])
        t.answered("s", "c", 2, "b", "a", 6.0)
        self.assertEqual(len(t), 2)
        self.assertTrue(t.remove("s", "c", "a", "b"))
        self.assertEqual(len(t), 0)

    def test_ack_wait(self) -> None:
        """
        A new dialog's answer waits L{ACK_WAIT} for its ACK: an ACK from
        any scope confirms it (by Call-ID and tags), a 2xx again does not
        restart the wait, and what falls due is handed out once, oldest
        first, at most C{limit} at a time, with every leg that holds it.
        """
        t = DialogTable(1000.0)
        t.answered("s", "c1", 1, "a", "b", 0.0)
        t.answered("s", "c2", 1, "a", "b", 1.0)
        t.answered("s", "c3", 1, "a", "b", 2.0)
        t.answered("s", "c3", 2, "a", "b", 2.5)
        t.answered("s", "c1", 1, "a", "b", 3.0)
        self.assertEqual(t.next_ack_deadline, ACK_WAIT)
        t.acked("elsewhere", "c2", "b", "a")
        self.assertEqual(t.unacknowledged(ACK_WAIT - 0.1), [])
        self.assertEqual([(sc, d.call_id) for sc, d in t.unacknowledged(100.0, limit=1)], [("s", "c1")])
        self.assertEqual(t.next_ack_deadline, 2.0 + ACK_WAIT)
        self.assertEqual(sorted(d.flow_id for _, d in t.unacknowledged(100.0)), [1, 2])
        self.assertEqual((t.unacknowledged(200.0), t.next_ack_deadline), ([], None))
        self.assertEqual(len(t), 4)  # handed out, not removed (c1 answered twice is one)
        t.answered("s", "c4", 1, "a", "b", 300.0)
        t.remove("s", "c4", "a", "b")
        self.assertIsNone(t.next_ack_deadline)

    def test_scopes_and_flows(self) -> None:
        """
        Scopes are apart; C{has} and C{touch} can be limited to a flow;
        C{forget} drops a whole scope.
        """
        t = DialogTable(100.0)
        t.answered("s1", "c", 1, "a", "b", 0.0)
        t.answered("s1", "c", 2, "a", "x", 0.0)
        t.answered("s2", "c", 1, "a", "b", 0.0)
        self.assertTrue(t.has("s1", "c", 2))
        self.assertFalse(t.has("s1", "c", 3))
        t.touch("s1", "c", 50.0, flow_id=2)
        self.assertEqual(sorted(d.expires for d in t.of("s1")), [100.0, 150.0])
        t.forget("s1")
        self.assertEqual(t.of("s1"), [])
        self.assertEqual(len(t), 1)
        self.assertEqual(len(list(t)), 1)

    def test_expiry(self) -> None:
        """
        A dialog goes when its lifetime ends, each on its own.
        """
        t = DialogTable(100.0)
        t.answered("s", "c", 1, "a", "b1", 0.0)
        t.answered("s", "c", 1, "a", "b2", 50.0)
        t.expire(100.0)
        self.assertEqual([d.to_tag for d in t.of("s")], ["b2"])
        t.expire(150.0)
        self.assertEqual((t.of("s"), len(t)), ([], 0))

    def test_bound(self) -> None:
        """
        Past C{limit} calls, the call answered longest ago goes; answering
        a call again makes it the newest.
        """
        t = DialogTable(100.0, limit=2)
        t.answered(1, "c1", 1, "a", "b", 0.0)
        t.answered(2, "c2", 2, "a", "b", 0.0)
        t.answered(1, "c1", 1, "a", "b", 1.0)
        t.answered(3, "c3", 3, "a", "b", 2.0)
        self.assertEqual(
            (t.has(1, "c1"), t.has(2, "c2"), t.has(3, "c3"), len(t)), (True, False, True, 2)
        )
        self.assertEqual(t.of(2), [])
        self.assertEqual(t.dropped, 1)

    def test_scope_bound(self) -> None:
        """
        Past C{scope_limit} calls in one scope, that scope's call first
        answered goes; other scopes keep theirs, and answering a call
        again does not count twice.
        """
        t = DialogTable(100.0, scope_limit=2)
        t.answered("other", "o1", 9, "a", "b", 0.0)
        t.answered("s", "c1", 1, "a", "b", 0.0)
        t.answered("s", "c1", 1, "a", "b", 0.5)
        t.answered("s", "c2", 1, "a", "b", 1.0)
        self.assertEqual((len(t), t.dropped), (3, 0))
        t.answered("s", "c3", 1, "a", "b", 2.0)
        self.assertEqual(
            ([d.call_id for d in t.of("s")], [d.call_id for d in t.of("other")], len(t)),
            (["c2", "c3"], ["o1"], 3),
        )
        self.assertEqual(t.dropped, 1)
        # the dropped call's answer no longer waits for its ACK
        self.assertEqual([d.call_id for _, d in t.unacknowledged(1000.0)], ["o1", "c2", "c3"])

    def test_remote_target(self) -> None:
        """
        The target L{DialogTable.offered} for a call's INVITE becomes the
        target of the dialogs its 2xx makes (for that From-tag only, in
        that scope only); it survives a 2xx again, a touch and a BYE, and
        L{DialogTable.retarget} changes it.
        """
        t = DialogTable(100.0)
        t.offered("s", "c", "a", _target(1))
        t.answered("s", "c", 1, "a", "b", 0.0)
        t.answered("s", "c", 1, "a", "b", 1.0)
        t.touch("s", "c", 2.0)
        t.ending("s", "c", "b", "a", 3.0)
        self.assertEqual(t.target("s", "c", "b", "a"), _target(1))
        self.assertIsNone(t.target("s", "c", "a", "x"))
        self.assertIsNone(t.target("other", "c", "a", "b"))
        t.retarget("s", "c", "b", "a", _target(2))
        self.assertEqual(t.target("s", "c", "a", "b"), _target(2))
        t.retarget("s", "nothing", "a", "b", _target(3))
        self.assertEqual(len(t), 1)
        # an INVITE from the other side (another From-tag) has no target here
        t.offered("s", "d", "a", _target(1))
        t.answered("s", "d", 1, "z", "b", 0.0)
        self.assertIsNone(t.target("s", "d", "z", "b"))

    def test_offered_bound(self) -> None:
        """
        Past C{offer_limit} INVITEs not answered, the oldest's target is
        forgotten; a call that ends forgets its own.
        """
        t = DialogTable(100.0, offer_limit=2)
        for n in range(3):
            t.offered("s", f"c{n}", "a", _target(n))
        for n in range(3):
            t.answered("s", f"c{n}", 1, "a", "b", 0.0)
        self.assertEqual(
            [t.target("s", f"c{n}", "a", "b") for n in range(3)],
            [None, _target(1), _target(2)],
        )
        self.assertEqual(len(t._offered), 2)
        t.remove("s", "c1", "a", "b")
        t.forget("s")
        self.assertEqual(len(t._offered), 0)

    def test_lasting_is_replace(self) -> None:
        """
        L{Dialog.lasting} changes C{expires} and C{ending} and keeps every
        other field, as C{dataclasses.replace} does. Each field is given a
        value of its own; a field added to the class fails here until this
        test (and C{lasting}) knows it.
        """
        parties = Parties(Party("<sip:a@192.0.2.1>;tag=f", "f", None), Party("<sip:b@192.0.2.2>;tag=t", "t", None), (), True)
        d = Dialog("call", "f", "t", 3, 1.0, _target(1), parties, False)
        self.assertEqual(
            [f.name for f in dataclasses.fields(Dialog)],
            ["call_id", "from_tag", "to_tag", "flow_id", "expires", "target", "parties", "ending"],
        )
        for ending in (False, True):
            self.assertEqual(d.lasting(7.5, ending), dataclasses.replace(d, expires=7.5, ending=ending))
        self.assertIs(d.lasting(7.5, True).parties, parties)



class FlowOfTests(SynchronousTestCase):
    """
    L{DialogTable.flow_of}: the flow whose leg a message inside a dialog
    belongs to; L{MovedLegs}: the responses to such messages.
    """

    def test_flow_of(self) -> None:
        """
        The arrival flow when a dialog of the tags is on it or on none;
        the one other flow that has one; the arrival flow again when two
        do (two legs of one dialog: two phones behind one agent).  With a
        scope, only that scope is looked in.
        """
        table = DialogTable(60.0)
        table.answered(1, "c", 1, "a", "b", 0.0)
        self.assertEqual(table.flow_of("c", "a", "b", 1), 1)
        self.assertEqual(table.flow_of("c", "b", "a", 9), 1)
        self.assertEqual(table.flow_of("c", "a", "x", 9), 9)
        self.assertEqual(table.flow_of("other", "a", "b", 9), 9)
        self.assertEqual(table.flow_of("c", "a", "b", 9, scope=2), 9)
        table.answered(2, "c", 2, "a", "b", 0.0)
        self.assertEqual(table.flow_of("c", "a", "b", 9), 9)
        self.assertEqual(table.flow_of("c", "a", "b", 2), 2)
        self.assertEqual(table.flow_of("c", "a", "b", 9, scope=2), 2)
        table.remove(1, "c", "a", "b")
        table.remove(2, "c", "a", "b")
        self.assertEqual(table.flow_of("c", "a", "b", 9), 9)
        self.assertEqual(table._call_scopes, {})

    def test_moved_legs(self) -> None:
        """
        A moved request's provisional responses find its leg, its final
        one too and forgets it; at most C{limit} are kept, oldest first
        out.
        """
        moved = MovedLegs(limit=2)
        self.assertEqual(moved.leg("c", 2, 9, 9, final=False), 9)
        moved.moved("c", 2, 9, 1)
        self.assertEqual(moved.leg("c", 2, 9, 9, final=False), 1)
        self.assertEqual(moved.leg("c", 2, 8, 8, final=False), 8)
        self.assertEqual(moved.leg("c", 2, 9, 9, final=True), 1)
        self.assertEqual((moved.leg("c", 2, 9, 9, final=True), len(moved)), (9, 0))
        for cseq in (3, 4, 5):
            moved.moved("c", cseq, 9, 1)
        self.assertEqual([moved.leg("c", n, 9, 9, final=True) for n in (3, 4, 5)], [9, 1, 1])
