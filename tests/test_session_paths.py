"""
Tests for L{spwm.session.paths}: the path table pair by pair, the
scheduler with fake time (stall and dead bounds from the RTT, failover,
carrier, recovery, the QUIC hold, duplication, deadlines), the
de-duplication and sequence numbers (hypothesis: any interleaving, copy
and loss delivers each datagram at most once), and the two socket helpers
on a real loopback TCP connection.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Callable

from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from spwm.limits import Limits, PathLimits
from spwm.session.paths import (
    SEQ_MODULUS,
    TRANSITIONS,
    CarrierChanged,
    Dedup,
    PathDead,
    PathEvent,
    PathInput,
    PathCount,
    PathKind,
    PathRecovered,
    PathScheduler,
    PathStalled,
    PathState,
    PingWanted,
    SeqStamper,
    SipOrder,
    TcpInfo,
    parse_tcp_info,
    read_tcp_info,
    set_notsent_lowat,
)

UP, STALLED, DEAD = PathState.UP, PathState.STALLED, PathState.DEAD
TCP, QUIC = PathKind.TCP, PathKind.QUIC
_STATE_EVENTS = (PathStalled, PathRecovered, PathDead)


def _state_events(events: list[PathEvent]) -> list[PathEvent]:
    return [e for e in events if isinstance(e, _STATE_EVENTS)]


def _scheduler(**limits: float) -> PathScheduler:
    """
    A scheduler with these limits; without the grace a path held up for
    want of the peer heard elsewhere waits once that is seen
    (C{stall_evidence_grace} 0 unless given: the tests of the bounds and
    the moves find a path stalled at its bound, the peer heard elsewhere;
    L{SchedulingTests.test_busy_peer_is_no_stall} and the tests beside it
    give the grace).
    """
    return PathScheduler(PathLimits(**{"stall_evidence_grace": 0.0, **limits}))  # type: ignore[arg-type]


class TableTests(SynchronousTestCase):
    """
    Every (state, input) pair of L{TRANSITIONS}, in the table and through a
    real scheduler.
    """

    def test_every_pair_is_in_the_table(self) -> None:
        """
        The table decides every pair; its events are those of the state it
        moves to (a stall, a death, a recovery), and nothing when the state
        stays.
        """
        expected_event = {UP: PathRecovered, STALLED: PathStalled, DEAD: PathDead}
        for state in PathState:
            for event_input in PathInput:
                new, event = TRANSITIONS[(state, event_input)]
                if new is state:
                    self.assertIsNone(event, (state, event_input))
                else:
                    self.assertIs(event, expected_event[new], (state, event_input))
        self.assertEqual(len(TRANSITIONS), len(PathState) * len(PathInput))

    def _in_state(self, state: PathState) -> tuple[PathScheduler, float]:
        """
        A scheduler with path 1 in C{state}, the time, and nothing
        unanswered on it.
        """
        sched = _scheduler()
        sched.add(1, TCP, 0.0)
        sched.tick(0.0)
        if state is UP:
            return sched, 0.0
        sched.sent(1, 100, 0.0)
        now = 0.8 if state is STALLED else 4.0  # initial RTT 0.2: bounds 0.8 and 4.0
        events = sched.tick(now)
        self.assertEqual(sched.state(1), state)
        self.assertTrue(_state_events(events))
        return sched, now

    def _feed(self, sched: PathScheduler, now: float, event_input: PathInput) -> list[PathEvent]:
        """
        Make the tick at the end of it find C{event_input} of path 1.
        """
        sched.received(1, now)  # nothing left unanswered
        if event_input is PathInput.ANSWERED:
            return sched.tick(now + 0.1)
        sched.sent(1, 100, now)
        after = 0.8 if event_input is PathInput.OVERDUE else 4.0
        return sched.tick(now + after)

    def test_every_pair_through_the_scheduler(self) -> None:
        """
        For each pair, a path in the state that L{PathScheduler.tick} finds
        in the input moves as the table says, with its event.
        """
        for (state, event_input), (new, event) in TRANSITIONS.items():
            sched, now = self._in_state(state)
            events = self._feed(sched, now, event_input)
            self.assertEqual(sched.state(1), new, (state, event_input))
            self.assertEqual(_state_events(events), [] if event is None else [event(1)], (state, event_input))


class BoundTests(SynchronousTestCase):
    """
    The stall and dead bounds follow the measured RTT.
    """

    def _stalled_at(self, rtts: list[float], **limits: float) -> float:
        """
        The earliest tick (in 1 ms steps) that finds path 1 stalled when it
        sent at 10.0 after the RTT samples C{rtts}.
        """
        sched = _scheduler(**limits)
        sched.add(1, TCP, 0.0)
        for n, rtt in enumerate(rtts):
            sched.rtt_sample(1, rtt, n * 0.01)
        sched.tick(5.0)
        sched.sent(1, 10, 10.0)
        for ms in range(1, 5000):
            now = 10.0 + ms / 1000
            if any(isinstance(e, PathStalled) for e in sched.tick(now)):
                return round(now - 10.0, 3)
        self.fail("never stalled")

    def test_bound_follows_rtt(self) -> None:
        """
        One sample R: srtt R, rttvar R/2, stall bound 2R + 4R/2 = 4R.
        """
        self.assertEqual(self._stalled_at([0.05]), 0.2)
        self.assertEqual(self._stalled_at([0.1]), 0.4)

    def test_smoothed(self) -> None:
        """
        Samples are smoothed as RFC 6298 says: after 0.1 then 0.1, rttvar
        is 0.75 * 0.05 and the bound 2 * 0.1 + 4 * 0.0375 = 0.35.
        """
        self.assertEqual(self._stalled_at([0.1, 0.1]), 0.35)

    def test_floor_and_ceiling(self) -> None:
        """
        A loopback RTT still waits the floor; a huge one the ceiling.
        """
        self.assertEqual(self._stalled_at([0.0001]), 0.04)
        self.assertEqual(self._stalled_at([0.0001], stall_floor=0.05), 0.05)
        self.assertEqual(self._stalled_at([2.0], stall_ceiling=1.5), 1.5)

    def test_dead_bound(self) -> None:
        """
        Dead after C{dead_factor} stall bounds, not before C{dead_floor}.
        """
        sched = _scheduler(dead_floor=0.5)
        sched.add(1, TCP, 0.0)
        sched.rtt_sample(1, 0.05, 0.0)  # stall bound 0.2, dead bound 1.0
        sched.sent(1, 10, 1.0)
        self.assertEqual(_state_events(sched.tick(1.2)), [PathStalled(1)])
        self.assertEqual(_state_events(sched.tick(1.999)), [])
        self.assertEqual(_state_events(sched.tick(2.0)), [PathDead(1)])
        sched.rtt_sample(1, 0.001, 3.0)  # an answer, too
        self.assertEqual(_state_events(sched.tick(3.0)), [PathRecovered(1)])
        fast = _scheduler(dead_floor=0.5)
        fast.add(1, TCP, 0.0)
        fast.rtt_sample(1, 0.001, 0.0)
        snapshot = fast.snapshot()["paths"][0]
        self.assertEqual((snapshot["stall_bound"], snapshot["dead_bound"]), (0.04, 0.5))

    def test_snapshot_bounds(self) -> None:
        """
        The snapshot shows each path's RTT and bounds.
        """
        sched = _scheduler()
        sched.add(3, QUIC, 0.0)
        sched.rtt_sample(3, 0.1, 0.0)
        (path,) = sched.snapshot()["paths"]
        self.assertEqual((path["path_id"], path["kind"], path["state"]), (3, "quic", "up"))
        self.assertAlmostEqual(path["stall_bound"], 0.4)
        self.assertAlmostEqual(path["dead_bound"], 2.0)
        self.assertEqual(path["srtt"], 0.1)

    def test_media_srtt_as_the_snapshot(self) -> None:
        """
        L{PathScheduler.media_srtt} gives the media paths and the shortest
        smoothed round trip among them, as the snapshot shows them;
        C{None} before any sample.
        """
        sched = _scheduler()
        sched.add(1, TCP, 0.0)
        sched.add(2, TCP, 0.0)
        sched.tick(0.0)
        self.assertEqual(sched.media_srtt(), (tuple(sched.snapshot()["media"]), None))
        sched.rtt_sample(1, 0.05, 0.0)
        sched.rtt_sample(2, 0.02, 0.0)
        sched.tick(0.0)
        snapshot = sched.snapshot()
        srtt = {p["path_id"]: p["srtt"] for p in snapshot["paths"]}
        media, rtt = sched.media_srtt()
        self.assertEqual(list(media), snapshot["media"])
        self.assertEqual(rtt, min(srtt[i] for i in media))


def _two_tcp(**limits: float) -> PathScheduler:
    sched = _scheduler(**limits)
    sched.add(1, TCP, 0.0)
    sched.add(2, TCP, 0.0)
    sched.rtt_sample(1, 0.02, 0.0)
    sched.rtt_sample(2, 0.02, 0.0)  # stall bound 0.08
    sched.tick(0.0)
    return sched


class SchedulingTests(SynchronousTestCase):
    """
    The carrier and the media paths, with fake time.
    """

    def test_first_path_is_carrier(self) -> None:
        """
        The first path added becomes the carrier, told at the next tick;
        another path does not take it.
        """
        sched = _scheduler()
        self.assertIsNone(sched.carrier())
        self.assertEqual(sched.media_paths(0.0), ())
        sched.add(5, TCP, 0.0)
        self.assertEqual(sched.next_deadline(), 0.0)
        self.assertEqual(sched.tick(0.0), [CarrierChanged(5)])
        sched.add(6, TCP, 0.1)
        self.assertEqual(sched.tick(0.1), [])
        self.assertEqual(sched.carrier(), 5)
        self.assertEqual(sched.media_paths(0.2), (5,))

    def test_failover(self) -> None:
        """
        The media moves off a stalled path at once (in the tick that finds
        it stalled) and is duplicated over what is still up; the carrier
        (SIP and control) follows once the path is overdue by
        C{carrier_floor}, at the deadline the scheduler hands out.
        """
        sched = _two_tcp()
        self.assertEqual((sched.carrier(), sched.media_paths(1.0)), (1, (1,)))
        sched.sent(1, 100, 1.0)
        sched.sent(2, 100, 1.0)
        sched.received(2, 1.02)
        self.assertEqual(sched.tick(1.079), [PingWanted(1)])
        self.assertEqual(sched.tick(1.08), [PathStalled(1)])
        self.assertEqual(sched.media_paths(1.08), (2,))
        self.assertEqual((sched.carrier(), sched.snapshot()["carrier_held"]), (1, True))
        self.assertEqual(sched.next_deadline(), 1.0 + 0.25)
        self.assertEqual(sched.tick(1.25), [CarrierChanged(2)])
        self.assertEqual((sched.carrier(), sched.snapshot()["carrier_held"]), (2, False))
        self.assertEqual(sched.media_paths(10.0), (2,))

    def test_failover_no_floor(self) -> None:
        """
        With C{carrier_floor} 0 the carrier moves with the media, in the
        tick that finds the path stalled.
        """
        sched = _two_tcp(carrier_floor=0.0)
        sched.sent(1, 100, 1.0)
        sched.received(2, 1.02)
        self.assertEqual(sched.tick(1.08), [PathStalled(1), PingWanted(1), CarrierChanged(2)])

    def test_carrier_stays_when_answered(self) -> None:
        """
        A carrier answered within C{carrier_floor} (a busy peer's late
        answer) keeps SIP and control: nothing moves that could reorder
        them.
        """
        sched = _two_tcp()
        sched.sent(1, 100, 1.0)
        sched.received(2, 1.02)  # the peer is heard on the other path
        self.assertEqual(sched.tick(1.08), [PathStalled(1), PingWanted(1)])
        self.assertTrue(sched.received(1, 1.2))
        self.assertEqual(sched.tick(1.2), [PathRecovered(1)])
        self.assertEqual((sched.carrier(), sched.carrier_changes), (1, 1))

    def test_carrier_leaves_kernel_stuck(self) -> None:
        """
        A carrier whose kernel retransmits after a timeout is a network's
        stall, not a busy peer: SIP leaves it with the media, even before
        the peer is heard on another path (which is pinged).
        """
        sched = _two_tcp()
        sched.sent(1, 100, 1.0)
        sched.tcp_info(1, TcpInfo(retransmits=1, rto_s=0.2), 1.05)
        self.assertEqual(sched.tick(1.05), [PathStalled(1), PingWanted(1), PingWanted(2), CarrierChanged(2)])

    def test_stall_without_media_is_not_copied_for(self) -> None:
        """
        A stall of a path that carries no media (a TCP path beside the
        media's, pinged late by a busy process) moves the carrier if it
        had it but leaves the media on its one path; a stall of the
        media's path copies the media on every path that is up.
        """
        sched = _two_tcp(carrier_floor=0.0)
        self.assertEqual(sched.media_paths(1.0), (1,))
        sched.sent(2, 100, 1.0)
        sched.received(1, 1.05)
        sched.tick(1.1)
        self.assertEqual(sched.state(2), PathState.STALLED)
        self.assertEqual(sched.media_paths(1.1), (1,))
        self.assertFalse(sched.snapshot()["duplicating"])
        sched.received(2, 1.2)
        sched.tick(1.2)
        sched.sent(1, 100, 1.3)
        sched.received(2, 1.35)
        sched.tick(1.4)
        self.assertEqual(sched.state(1), PathState.STALLED)
        self.assertTrue(sched.snapshot()["duplicating"])

    def test_busy_peer_is_no_stall(self) -> None:
        """
        The media's path overdue past its stall bound while nothing came on
        the other path either (the peer's process busy, or the network
        quiet) is held up, not stalled: the media stays on it, nothing is
        copied, the other path is pinged (its answer tells); once the peer
        is heard on the other path, L{received} says to tick and the path
        is found stalled.
        """
        sched = _two_tcp(stall_evidence_grace=0.01)
        self.assertEqual(sched.media_paths(1.0), (1,))
        sched.sent(1, 100, 1.0)
        # at ping_after: the overdue path and the other, not heard since
        self.assertEqual(sched.tick(1.04), [PingWanted(1), PingWanted(2)])
        sched.sent(2, 16, 1.04)
        self.assertEqual(_state_events(sched.tick(1.08)), [])
        self.assertEqual((sched.state(1), sched.media_paths(1.08)), (UP, (1,)))
        self.assertFalse(sched.snapshot()["duplicating"])
        self.assertEqual(sched.snapshot()["stalls_held"], 1)
        # no busy loop on the held path's deadline (past): the next one is
        # the ping's on path 2 (1.04 + 0.08)
        self.assertEqual(sched.next_deadline(), 1.12)
        self.assertEqual(_state_events(sched.tick(1.1)), [])
        self.assertEqual(sched.snapshot()["stalls_held"], 1)
        # the peer answers the other path's ping: path 1 stalls once it
        # stayed unanswered for the grace (10 ms) after that
        self.assertTrue(sched.received(2, 1.11))
        self.assertAlmostEqual(sched.next_deadline() or 0.0, 1.12)
        self.assertEqual(_state_events(sched.tick(1.115)), [])
        self.assertEqual(_state_events(sched.tick(1.12)), [PathStalled(1)])
        self.assertEqual(sched.media_paths(1.12), (2,))
        self.assertEqual(sched.snapshot()["stalls_held"], 1)

    def test_busy_peer_held_answered(self) -> None:
        """
        A held path that is answered itself (the peer's turn ended) was
        never stalled: nothing moved, no event, and L{received} does not
        ask for a tick.
        """
        sched = _two_tcp(stall_evidence_grace=0.01)
        sched.sent(1, 100, 1.0)
        sched.sent(2, 100, 1.0)
        self.assertEqual(_state_events(sched.tick(1.09)), [])
        self.assertTrue(sched.received(1, 1.1))  # 2 is still held: tick
        self.assertEqual(_state_events(sched.tick(1.1)), [])  # the grace
        self.assertFalse(sched.received(2, 1.105))  # 2's answer, in the grace
        self.assertEqual(_state_events(sched.tick(1.2)), [])
        self.assertEqual((sched.state(1), sched.state(2)), (UP, UP))
        self.assertEqual(sched.carrier_changes, 1)  # the first carrier only
        self.assertEqual(sched.media_switches, 0)

    def test_held_path_alone_once_the_other_dies(self) -> None:
        """
        A path held up for want of the peer heard on the other path, which
        dies in the same tick: it is a lone path now and stalls in that
        tick (no deadline left in the past).  Found by the state machine
        below.
        """
        sched = _two_tcp(stall_evidence_grace=0.01)
        sched.sent(2, 100, 0.0)  # dead at 1.0
        sched.sent(1, 100, 0.5)  # stall bound 0.08, dead at 1.5
        events = _state_events(sched.tick(1.0))
        self.assertEqual(sorted(events, key=repr), sorted([PathDead(2), PathStalled(1)], key=repr))
        self.assertEqual((sched.state(1), sched.state(2)), (STALLED, DEAD))
        deadline = sched.next_deadline()
        self.assertTrue(deadline is None or deadline > 1.0, deadline)

    def test_all_quiet_dies_by_the_dead_bound(self) -> None:
        """
        Held up paths that stay unanswered everywhere die by their dead
        bound, as before.
        """
        sched = _two_tcp()
        sched.sent(1, 100, 1.0)
        sched.sent(2, 100, 1.0)
        self.assertEqual(_state_events(sched.tick(1.5)), [])
        self.assertEqual(_state_events(sched.tick(2.0)), [PathDead(1), PathDead(2)])

    def test_recovery_keeps_carrier(self) -> None:
        """
        A stalled path that is answered again comes back (L{received} says
        to tick); the carrier stays where it went; media goes on every path
        that is up while the duplication window lasts, then on the one best.
        """
        sched = _two_tcp(carrier_floor=0.0)
        sched.sent(1, 100, 1.0)
        sched.received(2, 1.05)
        sched.tick(1.1)
        self.assertTrue(sched.received(1, 1.2))
        self.assertFalse(sched.received(1, 1.21))
        self.assertEqual(sched.next_deadline(), 1.21)  # due now
        self.assertEqual(sched.tick(1.21), [PathRecovered(1)])
        self.assertEqual(sched.carrier(), 2)
        self.assertEqual(sched.media_paths(1.3), (1, 2))
        self.assertEqual(sched.media_paths(1.1 + 2.0), (2,))

    def test_remove_carrier(self) -> None:
        """
        Removing the carrier moves it (told at the next tick); removing the
        last path leaves none.
        """
        sched = _two_tcp()
        sched.remove(1)
        sched.remove(7)  # unknown: nothing
        self.assertEqual(sched.tick(0.5), [CarrierChanged(2)])
        self.assertEqual(sched.media_paths(0.5), (2,))
        self.assertEqual(sched.media_switches, 1)
        sched.remove(2)
        self.assertEqual(sched.tick(0.6), [CarrierChanged(None)])
        self.assertEqual((sched.carrier(), sched.media_paths(0.6), len(sched)), (None, (), 0))

    def test_no_path_up(self) -> None:
        """
        When no path is up, media goes on every path that is not dead, and
        the carrier stays on its stalled path; when all are dead, on all;
        the carrier is never a dead path.
        """
        sched = _two_tcp(carrier_floor=0.0)
        sched.add(3, TCP, 0.0)
        sched.tick(0.0)
        sched.rtt_sample(3, 0.2, 0.0)  # stall bound 0.8
        for path_id in (1, 2):
            sched.sent(path_id, 10, 1.0)
        sched.received(3, 1.05)  # the peer is heard on 3
        sched.sent(3, 10, 1.06)
        sched.tick(1.1)
        self.assertEqual([sched.state(i) for i in (1, 2, 3)], [STALLED, STALLED, UP])
        self.assertEqual(sched.carrier(), 3)
        # 3's kernel retransmits after a timeout: stalled by its bound
        # though no other path is heard
        sched.tcp_info(3, TcpInfo(retransmits=1, rto_s=0.2), 1.8)
        events = sched.tick(1.86)
        self.assertEqual(events, [PathStalled(3), PingWanted(3)])
        self.assertEqual(sched.carrier(), 3)
        self.assertEqual(sched.media_paths(10.0), (1, 2, 3))
        sched.tick(2.0)  # 1 and 2 dead (bound 1.0)
        self.assertEqual([sched.state(i) for i in (1, 2, 3)], [DEAD, DEAD, STALLED])
        self.assertEqual(sched.media_paths(10.0), (3,))
        self.assertEqual(sched.tick(5.1), [PathDead(3), CarrierChanged(None)])
        self.assertEqual(sched.media_paths(10.0), (1, 2, 3))

    def test_duplication_window(self) -> None:
        """
        After a loss, media goes on every path that is up for
        C{duplicate_window}, then on the best one again; a later loss
        extends the window (here no loss counts as one that keeps coming:
        C{loss_memory} 0; see L{test_lossy_window}).
        """
        sched = _two_tcp(duplicate_window=1.0, loss_memory=0.0)
        sched.loss_seen(2, 5.0)
        self.assertEqual(sched.media_paths(5.0), (1, 2))
        self.assertEqual(sched.media_paths(5.999), (1, 2))
        self.assertEqual(sched.media_paths(6.0), (1,))
        sched.loss_seen(1, 5.5)
        sched.loss_seen(1, 5.2)  # an earlier loss does not shorten it
        self.assertEqual(sched.media_paths(6.4), (1, 2))
        self.assertEqual(sched.media_paths(6.5), (1,))
        self.assertEqual([p["losses"] for p in sched.snapshot()["paths"]], [2, 1])

    def test_lossy_window(self) -> None:
        """
        A loss within C{loss_memory} of the one before means the losses
        keep coming: media stays on every path for C{lossy_window} from
        it, and each further such loss extends it; a lone loss after a
        quiet C{loss_memory} gets C{duplicate_window} again.
        """
        sched = _two_tcp(duplicate_window=1.0, loss_memory=3.0, lossy_window=20.0)
        sched.loss_seen(1, 5.0)
        self.assertEqual(sched.media_paths(6.0), (1,))
        sched.loss_seen(2, 7.9)  # 2.9 s after the first: lossy
        self.assertEqual(sched.lossy_losses, 1)
        self.assertEqual(sched.media_paths(27.8), (1, 2))
        self.assertTrue(sched.snapshot()["duplicating"])
        sched.loss_seen(1, 20.0)  # 12.1 s later: not lossy, but inside the window
        self.assertEqual(sched.lossy_losses, 1)
        self.assertEqual(sched.media_paths(27.8), (1, 2))
        self.assertEqual(sched.media_paths(27.9), (1,))
        sched.loss_seen(1, 22.0)  # 2 s after the last: lossy again
        self.assertEqual(sched.media_paths(41.9), (1, 2))
        self.assertEqual(sched.media_paths(42.0), (1,))
        self.assertEqual(sched.snapshot()["lossy_losses"], 2)

    def test_lossy_window_never_shorter(self) -> None:
        """
        A C{lossy_window} below C{duplicate_window} does not shorten it.
        """
        sched = _two_tcp(duplicate_window=2.0, loss_memory=3.0, lossy_window=0.5)
        sched.loss_seen(1, 1.0)
        sched.loss_seen(1, 1.5)
        self.assertEqual(sched.media_paths(3.4), (1, 2))
        self.assertEqual(sched.media_paths(3.5), (1,))

    def test_start_copies_on_a_slow_link(self) -> None:
        """
        Media that starts after C{start_pause} without any, on a TCP path
        whose round trip is at least C{count_late_rtt}, goes on every path
        that is up for C{start_copies} at once, with no loss seen; media
        that goes on without such a pause does not open it again.
        """
        sched = _two_tcp(start_copies=2.0, start_pause=1.5, count_late_rtt=0.1, loss_memory=0.0, coalesce_rate=0.0)
        sched.tcp_info(1, TcpInfo(rtt_s=0.16, rttvar_s=0.02), 0.0)  # the kernel's round trip
        sent = {}
        for i in range(150):  # a datagram every 20 ms, alternately asked per datagram and per batch
            t = 10.0 + i / 50
            sent[t] = sched.media_now(t) if i % 2 else sched.media_paths(t)
        self.assertEqual({k: v for k, v in sent.items() if k < 12.0}, {k: (1, 2) for k in sent if k < 12.0})
        self.assertEqual({k: v for k, v in sent.items() if k >= 12.0}, {k: (1,) for k in sent if k >= 12.0})
        self.assertEqual(sched.starts_copied, 1)
        self.assertEqual(sched.snapshot()["starts_copied"], 1)
        # a talk spurt after 1.5 s of silence: copied again
        self.assertEqual(sched.media_now(14.5), (1, 2))
        self.assertEqual(sched.media_paths(15.5), (1, 2))
        self.assertEqual(sched.media_paths(16.49), (1, 2))
        self.assertEqual(sched.media_paths(16.5), (1,))
        self.assertEqual(sched.starts_copied, 2)
        self.assertEqual([p["losses"] for p in sched.snapshot()["paths"]], [0, 0])

    def test_no_start_copies_on_a_fast_or_unmeasured_link(self) -> None:
        """
        No start copies when the media's path has a round trip under
        C{count_late_rtt}, or none measured yet, or when C{start_copies}
        is 0; nor with one path up (nothing to copy on).
        """
        fast = _two_tcp(count_late_rtt=0.1)  # srtt 0.02
        self.assertEqual(fast.media_paths(10.0), (1,))
        unmeasured = _scheduler(count_late_rtt=0.1)
        unmeasured.add(1, TCP, 0.0)
        unmeasured.add(2, TCP, 0.0)
        unmeasured.tick(0.0)
        self.assertEqual(unmeasured.media_now(10.0), (1,))
        off = _two_tcp(start_copies=0.0)
        off.tcp_info(1, TcpInfo(rtt_s=0.3), 0.0)
        self.assertEqual(off.media_paths(10.0), (1,))
        alone = _scheduler(count_late_rtt=0.1)
        alone.add(1, TCP, 0.0)
        alone.rtt_sample(1, 0.3, 0.0)  # the first sample is the estimate
        alone.tick(0.0)
        self.assertEqual(alone.media_now(10.0), (1,))
        self.assertEqual(
            [fast.starts_copied, unmeasured.starts_copied, off.starts_copied, alone.starts_copied], [0, 0, 0, 0]
        )

    def test_start_copies_held_for_coalescing(self) -> None:
        """
        Copied from the start at a rate that coalesces: the rate is known
        C{rate_first} in, and from then the datagrams are held to go in
        pairs (as in any duplication window); sending the held ones does
        not count a second start.  A second start after a pause measures
        anew (the rate before it forgotten: the first datagrams go at once).
        """
        sched = _two_tcp(start_copies=2.0, count_late_rtt=0.1, coalesce_rate=40.0, rate_window=0.5, rate_first=0.1)
        sched.tcp_info(1, TcpInfo(rtt_s=0.2), 0.0)
        for start in (10.0, 20.0):
            held = []
            for i in range(40):  # 50 a second for 0.8 s
                t = start + i / 50
                paths = sched.media_now(t)
                if paths is None:
                    held.append(i)
                    self.assertEqual(sched.media_paths(t + 0.01), (1, 2))
                else:
                    self.assertEqual(paths, (1, 2))
            self.assertEqual(held[0], 6)  # the first after 0.1 s
            self.assertEqual(held, list(range(6, 40)))
        self.assertEqual(sched.starts_copied, 2)

    def test_media_paths_is_precomputed(self) -> None:
        """
        The per-packet answer is the same tuple object each time (nothing is
        built per datagram).
        """
        sched = _two_tcp()
        self.assertIs(sched.media_paths(1.0), sched.media_paths(1.01))
        sched.loss_seen(1, 1.0)
        self.assertIs(sched.media_paths(1.1), sched.media_paths(1.2))

    def test_add_refused(self) -> None:
        """
        A path id twice, or more than C{max_paths}, is a caller's bug.
        """
        sched = _scheduler(max_paths=2)
        sched.add(1, TCP, 0.0)
        self.assertRaises(ValueError, sched.add, 1, QUIC, 0.0)
        sched.add(2, TCP, 0.0)
        self.assertRaises(ValueError, sched.add, 3, TCP, 0.0)
        self.assertIn(1, sched)
        self.assertNotIn(3, sched)

    def test_unknown_path_inputs(self) -> None:
        """
        Inputs about a path that is not (or no longer) there are ignored.
        """
        sched = _two_tcp()
        self.assertFalse(sched.sent(9, 1, 1.0))
        self.assertFalse(sched.received(9, 1.0))
        sched.rtt_sample(9, 0.1, 1.0)
        sched.tcp_info(9, TcpInfo(rtt_s=0.1), 1.0)
        sched.loss_seen(9, 1.0)  # still a loss of the session
        self.assertEqual(sched.media_paths(1.0), (1, 2))


def _tcp_paths(n: int, **limits: float) -> PathScheduler:
    sched = _scheduler(**limits)
    for path_id in range(1, n + 1):
        sched.add(path_id, TCP, 0.0)
        sched.rtt_sample(path_id, 0.02, 0.0)
    sched.tick(0.0)
    return sched


def _feed_rate(sched: PathScheduler, rate: float, start: float, seconds: float) -> tuple[list[tuple[int, ...]], float]:
    """
    Ask for the media paths of C{rate} datagrams a second, evenly, from
    C{start} for C{seconds}.

    @return: the answers and the time after the last.
    """
    answers = []
    now = start
    for _ in range(round(rate * seconds)):
        answers.append(sched.media_paths(now))
        now += 1.0 / rate
    return answers, now


class SpreadTests(SynchronousTestCase):
    """
    A heavy load on a lossy link: the rate, spreading the copies over the
    paths in turn, and the coalescing delay.
    """

    def test_rate(self) -> None:
        """
        The rate is the datagrams asked for (batches counted by size) over
        the last full window; 0 before the first, which is C{rate_first}
        long; media after a pause of C{start_pause} starts it again.
        """
        sched = _tcp_paths(2, rate_window=0.5, rate_first=0.1, start_pause=2.0)
        sched.media_paths(1.0)
        self.assertEqual(sched.media_rate(), 0.0)
        sched.media_paths(1.05, count=10)
        self.assertEqual(sched.media_rate(), 0.0)
        sched.media_paths(1.1, count=10)  # the first window: 1.0 excluded, as each window's start
        self.assertAlmostEqual(sched.media_rate(), 200.0)
        sched.media_paths(1.35, count=100)
        self.assertAlmostEqual(sched.media_rate(), 200.0)
        sched.media_paths(1.6, count=50)
        self.assertAlmostEqual(sched.media_rate(), 300.0)
        sched.media_paths(3.5)  # after 1.9 s: no pause
        self.assertAlmostEqual(sched.media_rate(), 1 / 1.9)
        sched.media_paths(11.5)  # after 8 s: the rate before is forgotten
        self.assertEqual(sched.media_rate(), 0.0)
        _, now = _feed_rate(sched, 200.0, 12.0, 1.0)
        self.assertAlmostEqual(sched.media_rate(), 200.0, delta=2.0)
        self.assertAlmostEqual(sched.media_rate(now), 200.0, delta=2.0)
        # the media stopped: two windows later the rate asked at a time falls
        self.assertLess(sched.media_rate(now + 5.0), 20.0)

    def test_copies_spread_in_turn_above_the_rate(self) -> None:
        """
        While the media is copied at C{spread_rate} or more, each datagram
        goes on C{spread_copies} of the paths that are up, in turn, so each
        path carries C{spread_copies / n} of the datagrams; below the rate
        every path takes every datagram, and outside the copy window the
        best path alone.
        """
        sched = _tcp_paths(4, spread_rate=150.0, spread_copies=2, loss_memory=0.0, duplicate_window=100.0)
        sched.loss_seen(1, 0.0)
        slow, now = _feed_rate(sched, 100.0, 0.0, 2.0)
        self.assertEqual(set(slow), {(1, 2, 3, 4)})
        fast, now = _feed_rate(sched, 400.0, now, 2.0)
        spread = fast[-400:]
        self.assertEqual({len(paths) for paths in spread}, {2})
        per_path = {i: sum(i in paths for paths in spread) for i in (1, 2, 3, 4)}
        self.assertEqual(per_path, {1: 200, 2: 200, 3: 200, 4: 200})
        self.assertTrue(sched.snapshot()["spreading"])
        self.assertEqual(sched.media_paths(200.0), (1,))
        self.assertFalse(sched.snapshot()["spreading"])

    def test_no_copies_above_the_max_rate(self) -> None:
        """
        Above C{spread_max_rate} (a CPU's load) the paths take the
        datagrams one each in turn, without copies, however many there
        are; back below it, the copies again.
        """
        sched = _tcp_paths(4, spread_rate=150.0, spread_copies=2, spread_max_rate=1000.0, loss_memory=0.0, duplicate_window=100.0)
        sched.loss_seen(1, 0.0)
        heavy, now = _feed_rate(sched, 2000.0, 0.0, 2.0)
        turn = heavy[-2000:]
        self.assertEqual({len(paths) for paths in turn}, {1})
        self.assertEqual({i: sum(i in paths for paths in turn) for i in (1, 2, 3, 4)}, {1: 500, 2: 500, 3: 500, 4: 500})
        fast, now = _feed_rate(sched, 400.0, now, 2.0)
        self.assertEqual({len(paths) for paths in fast[-400:]}, {2})
        # with no more paths than spread_copies: copies below the max
        # rate, one path in turn above it
        two = _tcp_paths(2, spread_rate=150.0, spread_copies=2, spread_max_rate=1000.0, loss_memory=0.0, duplicate_window=100.0)
        two.loss_seen(1, 0.0)
        both, now = _feed_rate(two, 400.0, 0.0, 2.0)
        self.assertEqual(set(both[-400:]), {(1, 2)})
        self.assertFalse(two.snapshot()["spreading"])
        alone, _ = _feed_rate(two, 2000.0, now, 2.0)
        last = alone[-2000:]
        self.assertEqual(set(last), {(1,), (2,)})
        self.assertTrue(all(a != b for a, b in zip(last, last[1:])))  # in turn
        # the status says so (it read false with two paths: no copies to share)
        self.assertTrue(two.snapshot()["spreading"])

    def test_above_the_max_rate_on_the_quic_path(self) -> None:
        """
        Above C{spread_max_rate} with the media on a QUIC path, the
        datagrams stay on the QUIC path while the media is copied, not in
        turn over the TCP connections (they would wait there, arrive late
        and keep the copying going); below it, the copies as before.
        """
        sched = _scheduler(spread_rate=150.0, spread_copies=2, spread_max_rate=1000.0, loss_memory=0.0, duplicate_window=100.0, switch_hold=0.0)
        for path_id in (1, 2):
            sched.add(path_id, TCP, 0.0)
            sched.rtt_sample(path_id, 0.02, 0.0)
        sched.add(3, PathKind.QUIC, 0.0)
        sched.rtt_sample(3, 0.02, 0.0)
        sched.tick(0.0)
        self.assertTrue(sched.media_on_quic())
        sched.loss_seen(1, 0.0)
        heavy, now = _feed_rate(sched, 2000.0, 0.0, 2.0)
        self.assertEqual(set(heavy[-2000:]), {(3,)})
        fast, now = _feed_rate(sched, 400.0, now, 2.0)
        self.assertEqual({len(paths) for paths in fast[-400:]}, {2})

    def test_spread_skips_stalled(self) -> None:
        """
        A stalled path gets no share; with no more paths up than
        C{spread_copies}, every one that is up takes every datagram.
        """
        sched = _tcp_paths(3, spread_rate=10.0, spread_copies=2, loss_memory=0.0, duplicate_window=100.0)
        sched.loss_seen(1, 0.0)
        _feed_rate(sched, 100.0, 0.0, 1.0)
        sched.sent(3, 100, 1.0)
        sched.received(1, 1.1)
        sched.tick(1.2)
        self.assertEqual(sched.state(3), STALLED)
        answers, _ = _feed_rate(sched, 100.0, 1.2, 1.0)
        self.assertEqual(set(answers), {(1, 2)})

    def test_copies_in_turn_with_spares(self) -> None:
        """
        Below C{spread_rate}, while the media is copied, each datagram goes
        on C{max_copies} of the paths that are up, in turn, when more are
        up (the spares take their turn: each path carries C{max_copies /
        n} of them); a path lost leaves every datagram as many copies; with
        no more paths up than that, every one takes every datagram;
        C{max_copies} 0: every path, however many.
        """
        sched = _tcp_paths(6, max_copies=4, loss_memory=0.0, duplicate_window=100.0)
        sched.loss_seen(1, 0.0)
        answers, now = _feed_rate(sched, 50.0, 0.0, 2.4)
        self.assertEqual({len(set(paths)) for paths in answers}, {4})
        per_path = {i: sum(i in paths for paths in answers) for i in range(1, 7)}
        self.assertEqual(per_path, dict.fromkeys(range(1, 7), 80))
        # in turn: no two datagrams in a row on the same four
        self.assertTrue(all(a != b for a, b in zip(answers, answers[1:])))
        self.assertTrue(sched.snapshot()["copies_in_turn"])
        self.assertFalse(sched.snapshot()["spreading"])
        # one cut: five up, still four copies each
        sched.remove(3)
        sched.tick(now)
        cut, now = _feed_rate(sched, 50.0, now, 1.0)
        self.assertEqual({len(paths) for paths in cut}, {4})
        self.assertNotIn(3, {i for paths in cut for i in paths})
        # two more: three up, each takes every datagram
        sched.remove(5)
        sched.remove(6)
        sched.tick(now)
        four, now = _feed_rate(sched, 50.0, now, 1.0)
        self.assertEqual(set(four), {(1, 2, 4)})
        self.assertFalse(sched.snapshot()["copies_in_turn"])
        # outside the copy window: the best path alone
        self.assertEqual(len(sched.media_paths(200.0)), 1)
        every = _tcp_paths(6, max_copies=0, loss_memory=0.0, duplicate_window=100.0)
        every.loss_seen(1, 0.0)
        answers, _ = _feed_rate(every, 50.0, 0.0, 1.0)
        self.assertEqual(set(answers), {(1, 2, 3, 4, 5, 6)})

    def test_spread_off(self) -> None:
        """
        C{spread_rate} 0: every path that is up, whatever the rate.
        """
        sched = _tcp_paths(4, spread_rate=0.0, loss_memory=0.0, duplicate_window=100.0)
        sched.loss_seen(1, 0.0)
        answers, _ = _feed_rate(sched, 1000.0, 0.0, 1.0)
        self.assertEqual(set(answers), {(1, 2, 3, 4)})

    def test_network_lossy(self) -> None:
        """
        Only the kernel's retransmissions say the network loses packets
        (for C{lossy_window}); a loss seen otherwise (a gap, a stall)
        does not.
        """
        sched = _tcp_paths(2, lossy_window=30.0)
        sched.loss_seen(1, 1.0)
        self.assertFalse(sched.network_lossy(1.0))
        sched.tcp_info(1, TcpInfo(total_retrans=0), 2.0)
        self.assertFalse(sched.network_lossy(2.0))
        sched.tcp_info(1, TcpInfo(total_retrans=1), 3.0)
        self.assertTrue(sched.network_lossy(3.0))
        self.assertTrue(sched.network_lossy(33.0))
        self.assertFalse(sched.network_lossy(33.1))

    def test_coalesce_delay(self) -> None:
        """
        The adapter may hold datagrams only while the media is copied at
        C{coalesce_rate} or more.
        """
        sched = _tcp_paths(2, coalesce_rate=150.0, coalesce_delay=0.01, loss_memory=0.0, duplicate_window=5.0)
        _, now = _feed_rate(sched, 400.0, 0.0, 1.0)
        self.assertEqual(sched.coalesce_delay(now), 0.0)  # no loss: one path, no copies
        sched.loss_seen(1, now)
        self.assertEqual(sched.coalesce_delay(now), 0.01)
        self.assertEqual(sched.coalesce_delay(now + 5.0), 0.0)  # the window closed
        slow = _tcp_paths(2, coalesce_rate=150.0, loss_memory=0.0, duplicate_window=5.0)
        slow.loss_seen(1, 0.0)
        _, now = _feed_rate(slow, 100.0, 0.0, 1.0)
        self.assertEqual(slow.coalesce_delay(now), 0.0)
        off = _tcp_paths(2, coalesce_rate=0.0, loss_memory=0.0, duplicate_window=5.0)
        off.loss_seen(1, 0.0)
        _, now = _feed_rate(off, 400.0, 0.0, 1.0)
        self.assertEqual(off.coalesce_delay(now), 0.0)

    def test_coalesce_pairs_at_a_low_rate(self) -> None:
        """
        At a low rate the hold is C{coalesce_pair} intervals between two
        datagrams, so that two go together (one G.711 call, 50 a second:
        25 ms), at least C{coalesce_delay} (a high rate), at most
        C{coalesce_hold_max} (a slow stream is sent as it comes then);
        below C{coalesce_rate}, nothing is held.
        """
        def hold(rate: float) -> float:
            sched = _tcp_paths(2, loss_memory=0.0, duplicate_window=5.0)
            sched.loss_seen(1, 0.0)
            _, now = _feed_rate(sched, rate, 0.0, 1.0)
            return sched.coalesce_delay(now)

        self.assertAlmostEqual(hold(50.0), 0.025, places=3)
        self.assertAlmostEqual(hold(100.0), 0.0125, places=3)
        self.assertAlmostEqual(hold(500.0), 0.010, places=3)
        self.assertAlmostEqual(hold(41.0), 0.030, places=3)
        self.assertEqual(hold(30.0), 0.0)


class QuicHoldTests(SynchronousTestCase):
    """
    QUIC is preferred for media once it held up long enough; its stalls
    lengthen that hold, so a flapping path switches media a bounded number
    of times.
    """

    def test_quic_preferred_after_hold(self) -> None:
        """
        A QUIC path added beside TCP takes the media after C{switch_hold}
        (the tick at that time is asked for by L{next_deadline}); the
        carrier stays on TCP.
        """
        sched = _scheduler(switch_hold=1.0)
        sched.add(1, TCP, 0.0)
        sched.add(2, QUIC, 0.5)
        sched.tick(0.5)
        self.assertEqual(sched.snapshot()["media"], [1])
        self.assertEqual(sched.next_deadline(), 1.5)
        sched.tick(1.5)
        self.assertEqual(sched.snapshot()["media"], [2])
        self.assertEqual(sched.carrier(), 1)
        self.assertEqual(sched.media_switches, 1)

    def test_no_coalescing_on_quic(self) -> None:
        """
        While QUIC carries the media (copied on TCP too on a lossy link)
        nothing is held to coalesce: a QUIC datagram has no head-of-line
        blocking the pairs would save it from; back on TCP, the hold again.
        """
        sched = _scheduler(switch_hold=1.0, loss_memory=0.0, duplicate_window=100.0)
        sched.add(1, TCP, 0.0)
        sched.add(2, QUIC, 0.0)
        sched.loss_seen(1, 0.0)
        sched.tick(0.0)
        _, now = _feed_rate(sched, 50.0, 0.0, 1.0)
        self.assertAlmostEqual(sched.coalesce_delay(now), 0.025, places=3)  # media on TCP
        sched.tick(now)
        self.assertEqual(sched.snapshot()["media"], [2])
        self.assertEqual(sched.coalesce_delay(now), 0.0)
        sched.remove(2)
        sched.tick(now)
        self.assertAlmostEqual(sched.coalesce_delay(now), 0.025, places=3)

    def test_back_to_tcp_and_hold_doubles(self) -> None:
        """
        A stalled QUIC path loses the media at once; recovered, it gets it
        back after a hold doubled per stall.
        """
        sched = _scheduler(switch_hold=1.0)
        sched.add(1, TCP, 0.0)
        sched.add(2, QUIC, 0.0)
        sched.rtt_sample(2, 0.02, 0.0)
        sched.tick(1.0)
        self.assertEqual(sched.snapshot()["media"], [2])
        sched.sent(2, 10, 2.0)
        sched.received(1, 2.05)  # the peer is heard on the TCP path
        sched.tick(2.08)
        self.assertEqual(sched.snapshot()["media"], [1])  # 2 is stalled
        self.assertEqual(sched.media_paths(2.08), (1,))  # duplicated on what is up
        sched.received(2, 2.1)
        sched.tick(2.1)
        self.assertEqual(sched.state(2), UP)
        self.assertEqual(sched.media_paths(2.1), (1, 2))  # the duplication window
        self.assertEqual(sched.media_paths(4.08), (1,))
        sched.tick(4.0)
        self.assertEqual(sched.snapshot()["media"], [1])  # hold 2 s
        sched.tick(4.1)
        self.assertEqual(sched.snapshot()["media"], [2])
        self.assertEqual(sched.media_paths(4.1), (2,))

    def test_flapping_is_bounded(self) -> None:
        """
        A QUIC path that stalls every 1.5 s for a minute moves the media a
        handful of times, not at each flap.
        """
        sched = _scheduler(switch_hold=1.0, max_switch_hold=30.0, flap_memory=60.0)
        sched.add(1, TCP, 0.0)
        sched.add(2, QUIC, 0.0)
        sched.rtt_sample(2, 0.02, 0.0)
        stalls = 0
        now = 0.0
        while now < 60.0:
            sched.tick(now)
            sched.sent(2, 10, now + 0.4)
            sched.received(1, now + 0.5)
            stalls += len([e for e in sched.tick(now + 1.0) if isinstance(e, PathStalled)])
            sched.received(2, now + 1.4)
            sched.tick(now + 1.4)
            now += 1.5
        self.assertGreaterEqual(stalls, 39)
        self.assertLessEqual(sched.media_switches, 3)

    def test_unflapped_hold_comes_back(self) -> None:
        """
        Stalls older than C{flap_memory} no longer count.
        """
        sched = _scheduler(switch_hold=1.0, flap_memory=10.0)
        sched.add(1, TCP, 0.0)
        sched.add(2, QUIC, 0.0)
        sched.rtt_sample(2, 0.02, 0.0)
        sched.sent(2, 10, 0.0)
        sched.received(1, 0.05)
        sched.tick(0.1)
        sched.received(2, 0.2)
        sched.tick(0.2)
        sched.sent(2, 10, 0.3)
        sched.received(1, 0.35)
        sched.tick(0.4)
        sched.received(2, 20.0)
        sched.tick(20.0)
        self.assertEqual(sched.next_deadline(), 21.0)


class DeadlineTests(SynchronousTestCase):
    """
    L{PathScheduler.next_deadline} and the returns of L{sent} and
    L{received}, driven by an adapter with one Twisted timer.
    """

    def test_idle_has_no_deadline(self) -> None:
        """
        Paths with nothing unanswered and no media need no timer.
        """
        sched = _two_tcp()
        self.assertIsNone(sched.next_deadline())

    def test_sent_asks_for_timer(self) -> None:
        """
        The first unanswered frame asks for a timer at the ping time; later
        frames do not; the ping is asked for once.
        """
        sched = _two_tcp()
        self.assertIsNone(sched.next_deadline())
        self.assertTrue(sched.sent(1, 10, 1.0))
        self.assertFalse(sched.sent(1, 10, 1.01))
        self.assertAlmostEqual(sched.next_deadline() or 0.0, 1.0 + 0.5 * 0.08)
        self.assertFalse(sched.sent(2, 10, 1.01))  # later than the armed time
        self.assertEqual(sched.tick(1.0399), [])
        self.assertEqual(sched.tick(1.04), [PingWanted(1)])
        self.assertEqual(sched.tick(1.051), [PingWanted(2)])
        self.assertAlmostEqual(sched.next_deadline() or 0.0, 1.08)

    def test_one_timer_adapter(self) -> None:
        """
        An adapter with one timer, re-armed only when told to, detects a
        stall within the bound while media flows both ways, and ticks far
        less often than packets flow.
        """
        clock = Clock()
        sched = _two_tcp()
        adapter = _Adapter(sched, clock)
        adapter.rearm()
        stalled_at = None
        for n in range(500):  # 20 ms media both ways on path 1 for 10 s
            if n == 300:
                adapter.broken.add(1)  # from 6.0 s nothing on path 1 arrives
            for path_id in sched.media_paths(clock.seconds()):
                adapter.send(path_id)
            if n < 300:
                adapter.receive(1)
            clock.advance(0.02)
            if stalled_at is None and PathStalled(1) in adapter.events:
                stalled_at = clock.seconds()
            if n == 300:
                self.assertNotIn(PathStalled(1), adapter.events)
        self.assertIsNotNone(stalled_at)
        assert stalled_at is not None
        self.assertLessEqual(stalled_at - 6.0, 0.08 + 0.02 + 1e-9)
        self.assertIn(CarrierChanged(2), adapter.events)
        self.assertLess(adapter.ticks, 250)
        adapter.cancel()

    def test_tick_at_deadline_is_due(self) -> None:
        """
        A tick at the deadline handed out always finds it due (no tick that
        changes nothing and asks for the same time again).
        """
        sched = _two_tcp()
        sched.rtt_sample(1, 0.0123, 0.0)
        sched.sent(1, 10, 0.1)
        seen = []
        for _ in range(10):
            deadline = sched.next_deadline()
            if deadline is None:
                break
            seen.append(deadline)
            sched.tick(deadline)
        self.assertEqual(len(seen), len(set(seen)))
        self.assertEqual(sched.state(1), DEAD)

    def test_idle_path_probed_while_media_flows(self) -> None:
        """
        While media flows, a path that carries none is pinged every
        C{probe_interval}, so its death is known before media needs it;
        without media, it is not.
        """
        sched = _two_tcp(probe_interval=0.5)
        self.assertIsNone(sched.next_deadline())
        sched.media_paths(1.0)
        self.assertEqual(sched.next_deadline(), 0.5)  # nothing sent since 0: due
        self.assertEqual(sched.tick(1.0), [PingWanted(1), PingWanted(2)])
        for path_id in (1, 2):  # the pings, answered
            sched.sent(path_id, 10, 1.0)
            sched.received(path_id, 1.02)
        self.assertEqual(sched.media_paths(1.3), (1,))
        sched.sent(1, 10, 1.3)
        sched.received(1, 1.31)
        self.assertEqual(sched.next_deadline(), 1.5)
        self.assertEqual(sched.tick(1.5), [PingWanted(2)])
        self.assertEqual(sched.tick(2.5), [])  # no media for 1.2 s
        self.assertIsNone(sched.next_deadline())


class SchedulerMachine(RuleBasedStateMachine):
    """
    Random lives of a session's paths: attach, lose, send, answer, RTT
    samples, kernel reports, losses, media, time passing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sched = _scheduler(switch_hold=0.5, probe_interval=0.3, duplicate_window=0.5)
        self.now = 0.0
        self.next_id = 1

    def _ids(self) -> list[int]:
        return [p["path_id"] for p in self.sched.snapshot()["paths"]]

    @precondition(lambda self: len(self.sched) < 4)
    @rule(kind=st.sampled_from(PathKind))
    def add(self, kind: PathKind) -> None:
        self.sched.add(self.next_id, kind, self.now)
        self.next_id += 1

    @precondition(lambda self: len(self.sched) > 0)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        self.sched.remove(data.draw(st.sampled_from(self._ids())))

    @rule(path=st.integers(1, 5), what=st.sampled_from(["sent", "received", "rtt", "loss", "kernel-ok", "kernel-rto"]))
    def report(self, path: int, what: str) -> None:
        sched, now = self.sched, self.now
        if what == "sent":
            sched.sent(path, 100, now)
        elif what == "received":
            sched.received(path, now)
        elif what == "rtt":
            sched.rtt_sample(path, 0.03, now)
        elif what == "loss":
            sched.loss_seen(path, now)
        elif what == "kernel-ok":
            sched.tcp_info(path, TcpInfo(rtt_s=0.01, rttvar_s=0.005, ca_state=0, retransmits=0), now)
        else:
            sched.tcp_info(path, TcpInfo(ca_state=4, retransmits=1, rto_s=0.4), now)

    @rule(dt=st.floats(0.0, 3.0))
    def media(self, dt: float) -> None:
        self.now += dt
        paths = self.sched.media_paths(self.now)
        self.assertSubset(paths)
        if len(self.sched):
            assert paths, "media has a path while the session has one"
        for path in paths:
            self.sched.sent(path, 172, self.now)

    @rule(dt=st.floats(0.0, 3.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._tick()

    @rule()
    def deadline(self) -> None:
        deadline = self.sched.next_deadline()
        if deadline is not None and deadline > self.now:
            self.now = deadline
            self._tick()

    def _tick(self) -> None:
        self.sched.tick(self.now)
        deadline = self.sched.next_deadline()
        # no tick that leaves a deadline at or before its own time
        assert deadline is None or deadline > self.now, (deadline, self.now)
        states = {p["path_id"]: p["state"] for p in self.sched.snapshot()["paths"]}
        carrier = self.sched.carrier()
        if "up" in states.values():
            # or held on its stalled path for carrier_floor
            assert carrier is not None, states
            assert states[carrier] == "up" or self.sched.snapshot()["carrier_held"], (carrier, states)
        if carrier is not None:
            assert states[carrier] != "dead", states
        media = self.sched.snapshot()["media"]
        if "up" in states.values():
            assert len(media) == 1 and states[media[0]] == "up", (media, states)

    def assertSubset(self, paths: tuple[int, ...]) -> None:
        assert set(paths) <= set(self._ids()), (paths, self._ids())

    @invariant()
    def counters(self) -> None:
        snapshot = self.sched.snapshot()
        assert snapshot["carrier"] is None or snapshot["carrier"] in self._ids()


class SchedulerMachineTests(SynchronousTestCase):
    """
    The scheduler through random lives.
    """

    def test_machine(self) -> None:
        """
        Whatever happens: after a tick the next deadline is later (no busy
        loop); the carrier is up when a path is (or held on its stalled
        path for C{carrier_floor}), never dead; media goes on
        one path that is up when one is, and on paths of the session only.
        """
        run_state_machine_as_test(SchedulerMachine, settings=settings(max_examples=150, stateful_step_count=40))


class _Adapter:
    """
    The adapter pattern of L{PathScheduler}: one timer, re-armed when told.
    """

    def __init__(self, sched: PathScheduler, clock: Clock) -> None:
        self.sched = sched
        self.clock = clock
        self.timer: IDelayedCall | None = None
        self.events: list[PathEvent] = []
        self.ticks = 0
        self.broken: set[int] = set()

    def rearm(self) -> None:
        deadline = self.sched.next_deadline()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if deadline is not None:
            self.timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self.fire)

    def fire(self) -> None:
        self.timer = None
        self.ticks += 1
        now = self.clock.seconds()
        for event in self.sched.tick(now):
            self.events.append(event)
            if isinstance(event, PingWanted):
                self.send(event.path_id)
                if event.path_id not in self.broken:  # the PONG, 20 ms later
                    self.clock.callLater(0.02, self.receive, event.path_id)
        self.rearm()

    def send(self, path_id: int) -> None:
        if self.sched.sent(path_id, 172, self.clock.seconds()):
            self.rearm()

    def receive(self, path_id: int) -> None:
        if path_id in self.broken:
            return
        if self.sched.received(path_id, self.clock.seconds()):
            self.rearm()

    def cancel(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


class TcpInfoInputTests(SynchronousTestCase):
    """
    What the kernel says of a TCP path moves the scheduler.
    """

    def test_kernel_rtt(self) -> None:
        """
        The kernel's RTT replaces the estimate (and the bounds follow).
        """
        sched = _two_tcp()
        sched.tcp_info(1, TcpInfo(rtt_s=0.05, rttvar_s=0.01), 1.0)
        path = sched.snapshot()["paths"][0]
        self.assertEqual((path["srtt"], path["rttvar"]), (0.05, 0.01))
        self.assertAlmostEqual(path["stall_bound"], 0.14)

    def test_retransmission_timeout_stalls(self) -> None:
        """
        A retransmission timeout (or the loss state) stalls the path at the
        next tick, even while the peer's frames still arrive; it comes back
        when the kernel is out of it; it dies if it stays.
        """
        sched = _two_tcp()
        sched.tcp_info(1, TcpInfo(retransmits=1, rto_s=0.4), 1.0)
        sched.received(1, 1.0)
        self.assertEqual(sched.tick(1.0), [PathStalled(1), CarrierChanged(2)])
        self.assertTrue(sched.received(1, 1.1))
        self.assertEqual(sched.tick(1.1), [])  # the kernel still retransmits
        sched.tcp_info(1, TcpInfo(retransmits=0, ca_state=0), 1.2)
        self.assertEqual(sched.tick(1.2), [PathRecovered(1)])
        sched.tcp_info(1, TcpInfo(ca_state=4, rto_s=0.4), 2.0)  # overdue since 1.8
        sched.tcp_info(1, TcpInfo(ca_state=4, rto_s=0.8), 2.5)  # not moved
        self.assertEqual(sched.tick(2.5), [PathStalled(1)])
        self.assertEqual(sched.tick(2.8), [PathDead(1)])  # 1.8 + max(1.0, 5 * 0.08)

    def test_retransmissions_duplicate(self) -> None:
        """
        More retransmissions than last time, segments being retransmitted
        or a fast recovery count as a loss: media is duplicated.
        """
        for info in (TcpInfo(retrans=1), TcpInfo(ca_state=3)):
            sched = _two_tcp()
            sched.tcp_info(1, info, 1.0)
            self.assertEqual(sched.media_paths(1.0), (1, 2), info)
        sched = _two_tcp()
        sched.tcp_info(1, TcpInfo(total_retrans=3), 1.0)
        self.assertEqual(sched.media_paths(1.0), (1,))
        sched.tcp_info(1, TcpInfo(total_retrans=3), 1.1)
        self.assertEqual(sched.media_paths(1.1), (1,))
        sched.tcp_info(1, TcpInfo(total_retrans=4), 1.2)
        self.assertEqual(sched.media_paths(1.2), (1, 2))

    def test_one_recovery_is_one_loss(self) -> None:
        """
        A fast recovery read several times is one loss (not losses that
        keep coming); the next recovery is another.
        """
        sched = _two_tcp(duplicate_window=1.0, loss_memory=3.0, lossy_window=20.0)
        for at in (1.0, 1.1, 1.2, 1.3):
            sched.tcp_info(1, TcpInfo(ca_state=3, retrans=1), at)
        self.assertEqual(sched.snapshot()["paths"][0]["losses"], 1)
        self.assertEqual(sched.media_paths(2.0), (1,))
        sched.tcp_info(1, TcpInfo(ca_state=0, retrans=0), 1.4)
        sched.tcp_info(1, TcpInfo(ca_state=3, retrans=1), 1.5)
        self.assertEqual(sched.snapshot()["paths"][0]["losses"], 2)
        self.assertEqual(sched.media_paths(21.4), (1, 2))


class ExpectTests(SynchronousTestCase):
    """
    L{PathScheduler.expect}: the half that does not ping expects each path
    to be heard from as often as the peer pings.
    """

    def test_idle_path_between_pings_is_up(self) -> None:
        """
        A path the peer only pings (every 0.1 s), watched each time the
        other path brings media, is never overdue on a fast link: overdue
        from C{every} after the last frame it brought, not from the
        first look after it.
        """
        sched = _two_tcp(stall_floor=0.04)
        now = 0.0
        for step in range(1, 200):
            now = step * 0.02
            for path_id in (1, 2):
                sched.expect(path_id, 0.15, now)
            sched.received(1, now)  # media on path 1, every 20 ms
            if step % 5 == 0:
                sched.received(2, now)  # the peer's ping on path 2, every 0.1 s
            self.assertEqual(_state_events(sched.tick(now)), [], now)
        self.assertEqual(sched.media_paths(now), (1,))

    def test_silent_path_stalls_after_expected_and_bound(self) -> None:
        """
        A path not heard from stalls at its last frame + C{every} + its
        stall bound (0.08 here), and media leaves it.
        """
        sched = _two_tcp()
        sched.received(2, 1.0)
        sched.expect(2, 0.15, 1.01)
        sched.expect(2, 0.15, 1.1)  # already waited for: unchanged
        sched.received(1, 1.2)  # the peer is heard on path 1 (media)
        self.assertEqual(_state_events(sched.tick(1.229)), [])
        deadline = sched.next_deadline()
        assert deadline is not None
        self.assertAlmostEqual(deadline, 1.23)
        self.assertEqual(_state_events(sched.tick(deadline)), [PathStalled(2)])
        # a stall duplicates for a while: on the paths that are up
        self.assertEqual(sched.media_paths(deadline), (1,))
        self.assertTrue(sched.received(2, 1.3))
        self.assertEqual(_state_events(sched.tick(1.3)), [PathRecovered(2)])

    def test_expect_unknown_path(self) -> None:
        """
        An unknown path is ignored.
        """
        sched = _two_tcp()
        sched.expect(9, 0.15, 1.0)
        self.assertEqual(sched.tick(1.0), [])


class DedupTests(SynchronousTestCase):
    """
    L{Dedup} and L{SeqStamper}.
    """

    def test_copies_refused(self) -> None:
        """
        The first copy is accepted, the others refused; a late original in
        the window is accepted; one below the window is refused.
        """
        dedup = Dedup(PathLimits(dedup_window=8))
        self.assertTrue(dedup.accept(1, 0, 10))
        self.assertFalse(dedup.accept(1, 0, 10))
        self.assertTrue(dedup.accept(1, 0, 13))
        self.assertTrue(dedup.accept(1, 0, 11))
        self.assertFalse(dedup.accept(1, 0, 11))
        self.assertTrue(dedup.accept(1, 0, 6))  # 13 - 7: the window's last
        self.assertFalse(dedup.accept(1, 0, 5))
        self.assertTrue(dedup.accept(1, 1, 10))  # another component
        self.assertFalse(dedup.accept(1, 0x81, 10))  # only the component bit counts
        self.assertTrue(dedup.accept(2, 0, 10))  # another channel
        self.assertEqual(
            (dedup.accepted, dedup.duplicates, dedup.too_old, dedup.gaps, dedup.late), (6, 3, 1, 2, 2)
        )

    def test_jump_clears_window(self) -> None:
        """
        A jump ahead by more than the window forgets all below it.
        """
        dedup = Dedup(PathLimits(dedup_window=8))
        for seq in range(5):
            dedup.accept(1, 0, seq)
        self.assertTrue(dedup.accept(1, 0, 100))
        self.assertTrue(dedup.accept(1, 0, 95))
        self.assertFalse(dedup.accept(1, 0, 4))

    def test_wrap_around(self) -> None:
        """
        Across 2**32 - 1 -> 0 numbers stay in order: each accepted once,
        copies refused, an old one from before the wrap refused.
        """
        dedup = Dedup(PathLimits(dedup_window=16))
        stamper = SeqStamper(start=SEQ_MODULUS - 5)
        seqs = [stamper.next(7, 0) for _ in range(10)]
        self.assertEqual(seqs, [SEQ_MODULUS - 5 + i for i in range(5)] + [0, 1, 2, 3, 4])
        for seq in seqs:
            self.assertTrue(dedup.accept(7, 0, seq))
            self.assertFalse(dedup.accept(7, 0, seq))
        self.assertFalse(dedup.accept(7, 0, SEQ_MODULUS - 3))
        self.assertFalse(dedup.accept(7, 0, SEQ_MODULUS - 20))
        self.assertTrue(dedup.accept(7, 0, 5))
        self.assertEqual(dedup.gaps, 0)

    def test_stamper(self) -> None:
        """
        Each channel and component counts on its own; a forgotten channel
        starts again.
        """
        stamper = SeqStamper()
        self.assertEqual([stamper.next(1, 0), stamper.next(1, 0), stamper.next(1, 1), stamper.next(3, 0)], [0, 1, 0, 0])
        stamper.forget(1)
        stamper.forget(99)
        self.assertEqual((stamper.next(1, 0), len(stamper)), (0, 2))
        self.assertEqual((stamper.next(1, 0x81), stamper.next(1, 1)), (0, 1))

    def test_bounded_memory(self) -> None:
        """
        At most C{dedup_max_channels} channels are kept (the oldest goes),
        each with C{dedup_window / 8} bytes per component; a forgotten
        channel is gone.
        """
        dedup = Dedup(PathLimits(dedup_window=64, dedup_max_channels=4))
        for channel in range(10):
            dedup.accept(channel, 0, 1)
            dedup.accept(channel, 1, 1)
        self.assertEqual(len(dedup), 4)
        self.assertEqual(sorted(dedup._channels), [6, 7, 8, 9])
        self.assertTrue(all(len(w.bits) == 8 for ws in dedup._channels.values() for w in ws if w is not None))
        dedup.forget(9)
        dedup.forget(123)
        self.assertEqual(len(dedup), 3)
        self.assertTrue(dedup.accept(9, 0, 1))  # a new start
        for seq in range(2, 100000, 7):
            dedup.accept(6, 0, seq)
        self.assertEqual(len(dedup._channels[6][0].bits), 8)  # type: ignore[union-attr]

    def test_reordered_is_not_slow(self) -> None:
        """
        A skipped number that comes within C{dedup_slow} of the next one
        (datagrams spread over paths, reordered) is late but not slow; one
        that comes later, or is still missing that long after, is slow,
        counted once; the watch then takes the next number skipped.
        """
        dedup = Dedup(PathLimits(dedup_slow=0.02))
        dedup.watch(10.0)
        for seq in (0, 2):
            dedup.accept(1, 0, seq)
        dedup.watch(10.005)
        dedup.accept(1, 0, 1)  # 5 ms after 2: reordered
        self.assertEqual((dedup.gaps, dedup.late, dedup.slow), (1, 1, 0))
        self.assertFalse(dedup.watch(10.1))
        dedup.accept(1, 0, 4)  # 3 skipped at 10.1
        dedup.accept(1, 0, 6)  # 5 skipped too: not watched while 3 is
        self.assertFalse(dedup.watch(10.115))
        self.assertTrue(dedup.watch(10.125))  # 3 missing for 25 ms
        self.assertFalse(dedup.watch(10.2))  # counted once
        dedup.accept(1, 0, 3)  # late, and counted already
        dedup.accept(1, 0, 5)
        self.assertEqual((dedup.gaps, dedup.late, dedup.slow), (3, 3, 1))
        dedup.accept(1, 0, 8)  # 7 skipped at 10.2
        dedup.watch(10.25)
        dedup.accept(1, 0, 7)  # 50 ms late: slow
        self.assertEqual((dedup.gaps, dedup.late, dedup.slow), (4, 4, 2))
        dedup.accept(1, 0, 10)  # 9 skipped; the channel closes: no watch left
        dedup.forget(1)
        self.assertFalse(dedup.watch(11.0))
        self.assertEqual(dedup.slow, 2)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.tuples(st.integers(0, 40), st.floats(0.0, 0.1)), min_size=1, max_size=60),
        st.floats(0.001, 0.05),
    )
    def test_slow_only_past_the_bound(self, arrivals: list[tuple[int, float]], bound: float) -> None:
        """
        Any arrival order of one channel's numbers, each read at its own
        time: C{slow} never counts more numbers than were truly slow (filled
        C{bound} or more after they were skipped, or seen missing that long
        at a read), so a run in which every skipped number came within the
        bound counts none.
        """
        dedup = Dedup(PathLimits(dedup_slow=bound, dedup_window=64))
        now = 0.0
        skipped_at: dict[int, float] = {}
        filled: set[int] = set()
        truly_slow: set[int] = set()
        high: int | None = None
        for seq, step in arrivals:
            now += step
            dedup.watch(now)
            for missing, at in skipped_at.items():
                if missing not in filled and now - at >= bound:
                    truly_slow.add(missing)
            if high is not None and seq > high + 1:
                for missing in range(high + 1, seq):
                    skipped_at.setdefault(missing, now)
            if high is not None and seq < high and seq in skipped_at and seq not in filled:
                filled.add(seq)
                if now - skipped_at[seq] >= bound:
                    truly_slow.add(seq)
            if high is None or seq > high:
                high = seq
            dedup.accept(1, 0, seq)
        self.assertLessEqual(dedup.slow, len(truly_slow))
        self.assertLessEqual(dedup.slow, dedup.gaps)

    def test_window_must_be_power_of_two(self) -> None:
        """
        The window is a power of two from 8 to 65536.
        """
        for bad in (0, 4, 100, 1 << 17):
            self.assertRaises(ValueError, PathLimits, dedup_window=bad)
        self.assertEqual(PathLimits(dedup_window=8).dedup_window, 8)

    @settings(max_examples=300)
    @given(
        st.integers(min_value=1, max_value=120),
        st.sampled_from([0, SEQ_MODULUS - 40, SEQ_MODULUS - 1, 12345]),
        st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1), st.booleans()), min_size=120, max_size=120),
        st.randoms(use_true_random=False),
        st.sampled_from([8, 16, 64]),
    )
    def test_any_interleaving(self, count: int, start: int, copies: list[tuple[int, int, bool]], rnd: object, window: int) -> None:
        """
        Datagrams of two channels stamped in order, each sent on up to three
        paths (some copies lost), the paths' deliveries interleaved at
        random (a path in order, or shuffled like UDP): each datagram is
        accepted at most once, and exactly when a reference model says
        (first copy, not below the window of the highest seen then).
        """
        import random

        assert isinstance(rnd, random.Random)
        stamper = SeqStamper(start=start)
        paths: list[list[tuple[int, int]]] = [[], [], []]
        for n in range(count):
            channel = 1 + n % 2
            seq = stamper.next(channel, 0)
            extra, first_path, lose_first = copies[n]
            for k in range(extra + 1):
                if k == 0 and lose_first and extra:
                    continue
                paths[(first_path + k) % 3].append((channel, seq))
        rnd.shuffle(paths[2])  # a datagram path reorders
        arrivals = []
        cursors = [0, 0, 0]
        while any(cursors[i] < len(paths[i]) for i in range(3)):
            i = rnd.choice([i for i in range(3) if cursors[i] < len(paths[i])])
            arrivals.append(paths[i][cursors[i]])
            cursors[i] += 1
        dedup = Dedup(PathLimits(dedup_window=window))
        delivered: set[tuple[int, int]] = set()
        high: dict[int, int] = {}
        seen: set[tuple[int, int]] = set()
        for channel, seq in arrivals:
            offset = (seq - start) % SEQ_MODULUS  # the model's unwrapped number
            if channel not in high:
                expect = True
            elif (channel, offset) in seen:
                expect = False
            else:
                expect = offset > high[channel] or high[channel] - offset < window
            got = dedup.accept(channel, 0, seq)
            self.assertEqual(got, expect, (channel, seq, offset, high.get(channel)))
            seen.add((channel, offset))
            high[channel] = max(high.get(channel, offset), offset)
            if got:
                self.assertNotIn((channel, seq), delivered)
                delivered.add((channel, seq))
        self.assertEqual(dedup.accepted, len(delivered))

    def test_jump_too_far(self) -> None:
        """
        A number more than L{Dedup.MAX_AHEAD} above the highest is refused
        and counted: a jump of nearly 2**31 would otherwise make the
        numbers seen before it newer again (0 and 2 accepted twice).
        """
        dedup = Dedup(PathLimits(dedup_window=8))
        got = [dedup.accept(1, 0, seq) for seq in (0, 2, 2**31 + 1, 0, 2)]
        self.assertEqual(got, [True, True, False, False, False])
        self.assertEqual((dedup.too_far, dedup.duplicates, dedup.accepted), (1, 2, 2))
        self.assertTrue(dedup.accept(1, 0, 2 + Dedup.MAX_AHEAD))
        self.assertFalse(dedup.accept(1, 0, 3 + 2 * Dedup.MAX_AHEAD))

    @given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 1), st.integers(0, SEQ_MODULUS - 1)), max_size=200))
    def test_never_twice(self, arrivals: list[tuple[int, int, int]]) -> None:
        """
        Whatever arrives, in whatever order (sequence numbers anywhere in
        the u32 space), nothing is accepted twice.
        """
        dedup = Dedup(PathLimits(dedup_window=8))
        delivered: set[tuple[int, int, int]] = set()
        for arrival in arrivals:
            if dedup.accept(*arrival):
                self.assertNotIn(arrival, delivered)
                delivered.add(arrival)


class SipOrderTests(SynchronousTestCase):
    """
    Tests for L{SipOrder}: SIP numbered, kept until acknowledged, sent
    again on a new carrier, and taken once, in order.
    """

    def test_numbers_kept_until_acked(self) -> None:
        """
        Each message gets the next number and stays kept until a C{next}
        above it is acknowledged; a C{next} that is not a whole number is
        ignored.
        """
        order = SipOrder()
        self.assertEqual([order.number(1, b"m%d" % n) for n in range(3)], [0, 1, 2])
        for bad in (None, "2", 1.5, True):
            order.acked(bad)
            self.assertEqual(order.kept, 3)
        order.acked(2)
        self.assertEqual(order.unacked(), [(2, 1, b"m2")])
        self.assertEqual(order.resent, 1)
        order.acked(3)
        self.assertEqual((order.kept, order.unacked()), (0, []))

    def test_bounded(self) -> None:
        """
        At most C{max_kept} messages and about C{max_bytes} are kept: past
        either the oldest are given up (counted); the newest is always kept.
        """
        order = SipOrder(max_kept=4, max_bytes=100)
        for n in range(10):
            order.number(1, b"x")
        self.assertEqual(([m[0] for m in order.unacked()], order.given_up), ([6, 7, 8, 9], 6))
        order.number(1, b"y" * 500)
        self.assertEqual(([m[0] for m in order.unacked()], order.given_up), ([10], 10))

    def test_arrived(self) -> None:
        """
        The receiver takes the next number, refuses a copy below it, takes
        one above it counting the gap, and acknowledges once per change;
        numbers wrap at 2**32.
        """
        order = SipOrder()
        self.assertEqual([order.arrived(n) for n in (0, 1, 0, 1, 2)], [True, True, False, False, True])
        self.assertEqual(order.ack_due(), 3)
        self.assertIsNone(order.ack_due())
        self.assertTrue(order.arrived(5))
        self.assertEqual((order.skipped, order.copies, order.ack_due()), (2, 2, 6))
        wrapping = SipOrder()
        wrapping._expected = SEQ_MODULUS - 1
        self.assertTrue(wrapping.arrived(SEQ_MODULUS - 1))
        self.assertTrue(wrapping.arrived(0))
        self.assertFalse(wrapping.arrived(SEQ_MODULUS - 1))
        self.assertEqual(wrapping.ack_due(), SEQ_MODULUS + 1)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["send", "read0", "read1", "ack", "move", "cut"]), st.integers(0, 3)), max_size=80))
    def test_any_moves_and_interleavings(self, steps: list[tuple[str, int]]) -> None:
        """
        Whatever the moves of the carrier between two connections, the
        cuts (what a connection had not delivered is lost, then it comes
        back empty), the acknowledgements and the order in which the
        receiver reads the two connections: it takes every message once,
        in the order sent, with nothing skipped, once the last carrier
        has delivered.
        """
        sender, receiver = SipOrder(), SipOrder()
        wires: list[list[int]] = [[], []]
        carrier = 0
        sent = 0
        taken: list[int] = []
        acked_next = 0

        def read(path: int, count: int) -> None:
            for _ in range(min(count + 1, len(wires[path]))):
                number = wires[path].pop(0)
                if receiver.arrived(number & (SEQ_MODULUS - 1)):
                    taken.append(number)

        for what, n in steps:
            if what == "send":
                for _ in range(n + 1):
                    wires[carrier].append(sender.number(1, b"m"))
                    sent += 1
            elif what in ("read0", "read1"):
                read(int(what[-1]), n)
            elif what == "ack":
                due = receiver.ack_due()
                if due is not None:
                    acked_next = due
                sender.acked(acked_next)
            elif what in ("move", "cut"):
                if what == "cut":
                    wires[carrier].clear()
                carrier = 1 - carrier
                wires[carrier].extend(number for number, _, _ in sender.unacked())
        read(1 - carrier, 1 << 20)
        read(carrier, 1 << 20)
        self.assertEqual(taken, list(range(sent)))
        self.assertEqual(receiver.skipped, 0)


def loopback_tcp(case: SynchronousTestCase) -> tuple[socket.socket, socket.socket]:
    """
    A connected loopback TCP pair (client, accepted), closed at the end
    of C{case}.
    """
    server = socket.create_server(("127.0.0.1", 0))
    case.addCleanup(server.close)
    client = socket.create_connection(server.getsockname(), timeout=5)
    case.addCleanup(client.close)
    accepted, _ = server.accept()
    case.addCleanup(accepted.close)
    return client, accepted


class TcpInfoSocketTests(SynchronousTestCase):
    """
    L{read_tcp_info} and L{set_notsent_lowat} on a real loopback TCP
    connection (Linux).
    """

    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            raise SkipTest("TCP_INFO as parsed here is Linux's")
        self.client, self.accepted = loopback_tcp(self)

    def test_read(self) -> None:
        """
        After a round trip the kernel gives an RTT, no retransmission,
        nothing unacknowledged and the bytes not sent (kernel 4.6 and later).
        """
        self.client.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            chunk = self.accepted.recv(4096)
            self.assertTrue(chunk)
            got += chunk
        self.accepted.sendall(b"y")
        self.assertEqual(self.client.recv(1), b"y")
        info = read_tcp_info(self.client)
        assert info is not None
        assert info.rtt_s is not None
        self.assertGreater(info.rtt_s, 0.0)
        self.assertLess(info.rtt_s, 1.0)
        self.assertEqual((info.retrans, info.total_retrans, info.retransmits, info.ca_state), (0, 0, 0, 0))
        self.assertEqual(info.notsent_bytes, 0)
        self.assertGreaterEqual(info.rto_s or 0.0, 0.2)

    def test_not_tcp(self) -> None:
        """
        A UDP socket, or a closed one, gives no C{TCP_INFO}; nor does a
        socket-like object whose C{getsockopt} answers a number (an
        emulated socket, as the NAT tests' is).
        """
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(udp.close)
        self.assertIsNone(read_tcp_info(udp))
        closed = socket.socket()
        closed.close()
        self.assertIsNone(read_tcp_info(closed))

        class Emulated:
            def getsockopt(self, *args: object) -> int:
                return 0

        self.assertIsNone(read_tcp_info(Emulated()))  # type: ignore[arg-type]

    def test_notsent_lowat(self) -> None:
        """
        The option is set on a TCP socket (and reads back), refused on a
        closed one.
        """
        self.assertTrue(set_notsent_lowat(self.client, 16384))
        self.assertEqual(self.client.getsockopt(socket.IPPROTO_TCP, 25), 16384)
        closed = socket.socket()
        closed.close()
        self.assertFalse(set_notsent_lowat(closed, 16384))


class ParseTests(SynchronousTestCase):
    """
    L{parse_tcp_info} on made-up bytes.
    """

    def test_old_kernel(self) -> None:
        """
        104 bytes (a kernel before 4.6): no C{notsent_bytes}; fewer: nothing.
        """
        raw = bytearray(104)
        raw[1], raw[2] = 4, 2
        struct.pack_into("=I", raw, 8, 400000)
        struct.pack_into("=I", raw, 24, 7)
        struct.pack_into("=I", raw, 36, 3)
        struct.pack_into("=II", raw, 68, 25000, 5000)
        struct.pack_into("=I", raw, 100, 9)
        self.assertEqual(
            parse_tcp_info(bytes(raw)),
            TcpInfo(
                rtt_s=0.025, rttvar_s=0.005, unacked=7, retrans=3, total_retrans=9,
                notsent_bytes=None, ca_state=4, retransmits=2, rto_s=0.4,
            ),
        )
        self.assertIsNone(parse_tcp_info(bytes(103)))
        longer = bytes(raw) + bytes(40) + struct.pack("=I", 512) + bytes(4)
        info = parse_tcp_info(longer)
        assert info is not None
        self.assertEqual(info.notsent_bytes, 512)


class LimitsTests(SynchronousTestCase):
    """
    L{PathLimits} in the L{Limits} tree, checked.
    """

    def test_in_tree(self) -> None:
        """
        The tree has a C{paths} branch with the defaults.
        """
        self.assertEqual(Limits().paths, PathLimits())
        self.assertEqual(PathLimits().stall_floor, 0.04)

    def test_checked(self) -> None:
        """
        Bounds that contradict each other are refused.
        """
        checks: list[Callable[[], object]] = [
            lambda: PathLimits(stall_floor=0.5, stall_ceiling=0.1),
            lambda: PathLimits(switch_hold=5.0, max_switch_hold=1.0),
            lambda: PathLimits(ping_fraction=1.0),
            lambda: PathLimits(stall_rtt_factor=0.5),
            lambda: PathLimits(count_floor=3, count_ceiling=2),
            lambda: PathLimits(count_quiet=100.0, count_quiet_max=50.0),
        ]
        for check in checks:
            self.assertRaises(ValueError, check)


class _Media:
    """
    One G.711 stream arriving at a L{PathCount}: a datagram every 20 ms,
    the first copies only (what the de-duplication accepts).
    """

    def __init__(self, count: PathCount, now: float = 0.0) -> None:
        self.count = count
        self.now = now

    def flow(self, seconds: float) -> None:
        """Datagrams in time, one per 20 ms."""
        for _ in range(round(seconds / 0.02)):
            self.now += 0.02
            self.count.arrivals(self.now)

    def stall(self, held: float = 0.2) -> None:
        """Every connection holds the media back C{held} s; then it all comes at once."""
        n = round(held / 0.02)
        self.now += held
        for _ in range(n):
            self.count.arrivals(self.now)

    def stalls(self, n: int, every: float) -> None:
        """C{n} stalls, one per C{every} s of media, asking for a decision after each."""
        for _ in range(n):
            self.flow(every)
            self.stall()
            self.count.decide(self.now)


class PathCountTests(SynchronousTestCase):
    """
    L{PathCount}: the agent's connection count under
    C{--tunnel-connections auto}, with a fake clock (the times given).
    """

    def test_starts_at_floor(self) -> None:
        """
        It starts at the floor; a clean stream changes nothing.
        """
        count = PathCount(2, 4)
        media = _Media(count)
        media.flow(120.0)
        self.assertEqual(count.decide(media.now), 2)
        self.assertEqual(count.media_stalls, 0)
        self.assertRaises(ValueError, PathCount, 0, 4)
        self.assertRaises(ValueError, PathCount, 3, 2)

    def test_stall_is_pause_and_burst(self) -> None:
        """
        A pause ended by a burst is a media stall; a pause ended by one
        datagram then the next 20 ms later (a talk spurt after silence),
        a pause too short, or one too long (silence) is not.
        """
        count = PathCount(2, 4)
        media = _Media(count)
        media.flow(1.0)
        media.stall(0.2)
        self.assertEqual(count.media_stalls, 1)
        # a talk spurt after 1 s of silence
        media.now += 1.0
        media.flow(1.0)
        # a pause of 60 ms, released at once: under count_stall_gap
        media.stall(0.06)
        # 3 s of silence, then a burst (a new call's first datagrams)
        media.now += 3.0
        for _ in range(5):
            count.arrivals(media.now)
        self.assertEqual(count.media_stalls, 1)
        # a burst spread over several reads within the burst window counts
        media.flow(1.0)
        media.now += 0.1
        count.arrivals(media.now)
        count.arrivals(media.now + 0.001, 1)
        count.arrivals(media.now + 0.002, 2)
        self.assertEqual(count.media_stalls, 2)

    def test_one_blip_no_grow(self) -> None:
        """
        One stall, or stalls further apart than the grow window allows,
        add no connection.
        """
        count = PathCount(2, 4)
        media = _Media(count)
        media.flow(1.0)
        media.stall()
        self.assertEqual(count.decide(media.now), 2)
        media.stalls(10, every=3.0)
        self.assertEqual(count.wanted, 2)
        self.assertEqual(count.media_stalls, 11)

    def test_uncovered_stalls_no_grow(self) -> None:
        """
        Stalls while the media is not copied on every connection are
        counted and keep the count from shrinking, but add no connection.
        """
        limits = PathLimits(count_spare=0, count_grow_step=1)
        count = PathCount(2, 3, limits)
        now = 0.0
        for _ in range(5):
            count.stall(now)
            now += 0.5
        self.assertEqual(count.decide(now), 3)
        for _ in range(200):
            count.stall(now, covered=False)
            now += 0.5
            self.assertEqual(count.decide(now), 3)
        self.assertEqual(count.media_stalls, 205)
        count = PathCount(2, 3, limits)
        for _ in range(20):
            count.arrivals(now)
            now += 0.2
            count.arrivals(now, 5, covered=False)
            self.assertEqual(count.decide(now), 2)
        self.assertEqual(count.media_stalls, 20)

    def test_copies_since(self) -> None:
        """
        L{PathScheduler.copies_since}: when the duplication that is on now
        started; a loss inside the window does not move it; C{None} when
        it is off.
        """
        sched = _scheduler()
        sched.add(0, TCP, 0.0)
        sched.add(1, TCP, 0.0)
        self.assertIsNone(sched.copies_since(1.0))
        sched.loss_seen(0, 1.0)
        self.assertEqual(sched.copies_since(1.5), 1.0)
        sched.loss_seen(0, 2.0)
        self.assertEqual(sched.copies_since(2.5), 1.0)
        self.assertIsNone(sched.copies_since(100.0))
        sched.loss_seen(1, 100.0)
        self.assertEqual(sched.copies_since(100.0), 100.0)

    def test_grows_on_sustained_stalls_up_to_ceiling(self) -> None:
        """
        Stalls that keep coming add connections, C{count_grow_step} at a
        time (here one), at most once per grow hold, never past the
        ceiling; by default from the floor straight to the ceiling.
        """
        default = PathCount(2, 4, PathLimits(count_spare=0))
        media = _Media(default)
        media.stalls(3, every=0.5)
        self.assertEqual((default.wanted, default.grows), (4, 1))
        media.stalls(30, every=0.5)
        self.assertEqual((default.wanted, default.grows), (4, 1))
        count = PathCount(2, 4, PathLimits(count_spare=0, count_grow_step=1))
        media = _Media(count)
        seen = []
        for _ in range(40):
            media.flow(0.5)
            media.stall()
            seen.append(count.decide(media.now))
        self.assertEqual(seen[-1], 4)
        self.assertEqual(count.grows, 2)
        self.assertEqual(sorted(set(seen)), [2, 3, 4])
        self.assertEqual(seen, sorted(seen))
        # 3 stalls to the first grow, at least 2 s and 3 fresh stalls to the next
        self.assertEqual(seen.index(3), 2)
        self.assertGreaterEqual(seen.index(4) - seen.index(3), 3)

    def test_late_loss_grows_at_once(self) -> None:
        """
        One late loss (a retransmission on a connection whose round trip
        leaves no time for it) grows the count as three media stalls do,
        at the next decision and without media; it is forgotten after the
        grow window, counts once, and keeps no grow hold from applying.
        """
        limits = PathLimits(count_spare=0)
        count = PathCount(2, 4, limits)
        count.late_loss(10.0)
        self.assertEqual(count.late_losses, 1)
        self.assertEqual(count.decide(10.5), 4)
        self.assertEqual((count.grows, count.media_stalls), (1, 0))
        self.assertIn("retransmits", count.why)
        self.assertEqual(count.snapshot()["late_losses"], 1)
        # one too old to count
        stale = PathCount(2, 4, limits)
        stale.late_loss(10.0)
        self.assertEqual(stale.decide(10.0 + limits.count_grow_window + 0.1), 2)
        # the grow hold: a late loss right after a change waits for it
        held = PathCount(2, 4, PathLimits(count_spare=0, count_grow_step=1))
        held.late_loss(0.0)
        self.assertEqual(held.decide(0.0), 3)
        held.late_loss(0.5)
        self.assertEqual(held.decide(0.5), 3)
        self.assertEqual(held.decide(held.limits.count_grow_hold), 4)

    def test_spares_at_the_ceiling(self) -> None:
        """
        While the stall rules want the ceiling, C{count_spare} connections
        more are wanted (make before break), never past C{max_paths}, and
        not while the count may not grow (the media on a QUIC path); they
        go with the ceiling, at the first drop; C{count_spare} 0: none.
        """
        limits = PathLimits(count_grow_hold=0.0, count_grow_step=1)
        count = PathCount(2, 4, limits)
        media = _Media(count)
        media.stalls(3, every=0.5)
        self.assertEqual((count.wanted, count.spare), (3, 0))
        media.stalls(3, every=0.5)
        self.assertEqual((count.wanted, count.spare), (6, 2))
        self.assertEqual(count.snapshot()["connections_spare"], 2)
        # the media moved to a QUIC path: no spares, the ceiling stays
        self.assertEqual(count.decide(media.now + 0.5, grow=False), 4)
        self.assertEqual(count.why, "the media goes on a QUIC path: no spares")
        self.assertEqual(count.decide(media.now + 1.0), 6)
        # the quiet spell: the ceiling and its spares go together
        media.flow(limits.count_quiet + 1.5)
        self.assertEqual((count.decide(media.now), count.spare), (3, 0))
        capped = PathCount(2, 4, PathLimits(max_paths=5))
        capped.late_loss(0.0)
        self.assertEqual(capped.decide(0.0), 5)
        none = PathCount(2, 4, PathLimits(count_spare=0))
        none.late_loss(0.0)
        self.assertEqual((none.decide(0.0), none.spare), (4, 0))

    def test_late_loss_keeps_no_connection(self) -> None:
        """
        Late losses do not keep the count from shrinking (only media
        stalls do): after the quiet spell one connection goes even while
        they keep coming, and the next one grows it again, with the
        hysteresis of a grow soon after a shrink.
        """
        limits = PathLimits(count_spare=0)
        count = PathCount(2, 4, limits)
        count.late_loss(0.0)
        self.assertEqual(count.decide(0.0), 4)
        now = 0.0
        seen = []
        while now < limits.count_quiet + limits.count_grow_hold:
            now += 0.5
            count.late_loss(now)
            seen.append(count.decide(now))
        self.assertEqual(seen.index(3), round(limits.count_quiet / 0.5) - 1)
        self.assertEqual(seen.count(3), round(limits.count_grow_hold / 0.5))
        self.assertEqual((count.shrinks, count.grows, count.wanted), (1, 2, 4))
        self.assertEqual(count.quiet, 2 * limits.count_quiet)

    def test_shrinks_after_quiet(self) -> None:
        """
        After the quiet spell without stalls one connection goes, one per
        spell, down to the floor and no further.
        """
        limits = PathLimits(count_spare=0, count_grow_hold=0.0)
        count = PathCount(2, 4, limits)
        media = _Media(count)
        media.stalls(9, every=0.5)
        self.assertEqual(count.wanted, 4)
        grown = media.now
        media.flow(limits.count_quiet - 1.0)
        self.assertEqual(count.decide(media.now), 4)
        media.flow(1.0)
        self.assertEqual(count.decide(media.now), 3)
        self.assertEqual(count.decide(media.now + 1.0), 3)
        self.assertEqual(count.decide(grown + 2 * limits.count_quiet + 1.0), 2)
        self.assertEqual(count.decide(grown + 10 * limits.count_quiet), 2)
        self.assertEqual(count.shrinks, 2)

    def test_hysteresis_bounds_flapping(self) -> None:
        """
        A link bad for a while every so often: each grow soon after a
        shrink doubles the quiet spell, so the count stays up; changes down
        are far fewer than the bad spells.
        """
        limits = PathLimits(count_grow_hold=0.0)
        count = PathCount(2, 4, limits)
        media = _Media(count)
        changes = 0
        last = count.wanted
        for _ in range(20):
            media.stalls(9, every=0.5)
            # quiet, asking every second
            for _ in range(90):
                media.flow(1.0)
                if count.decide(media.now) != last:
                    changes += 1
                    last = count.wanted
        # without hysteresis: a shrink every 60 s of each 90 s quiet (20)
        self.assertLessEqual(count.shrinks, 4)
        self.assertEqual(count.quiet, limits.count_quiet * 2 ** min(4, count.shrinks))
        self.assertLessEqual(count.quiet, limits.count_quiet_max)
        self.assertGreaterEqual(count.wanted, 3)

    def test_quiet_resets_after_flap_memory(self) -> None:
        """
        A grow long after the last shrink sets the quiet spell back.
        """
        limits = PathLimits(count_spare=0, count_grow_hold=0.0)
        count = PathCount(2, 3, limits)
        media = _Media(count)
        media.stalls(3, every=0.5)
        self.assertEqual(count.wanted, 3)
        media.flow(61.0)
        self.assertEqual(count.decide(media.now), 2)
        media.stalls(3, every=0.5)
        self.assertEqual((count.wanted, count.quiet), (3, 120.0))
        media.flow(125.0)
        self.assertEqual(count.decide(media.now), 2)
        media.now += limits.count_flap_memory + 1
        media.stalls(3, every=0.5)
        self.assertEqual((count.wanted, count.quiet), (3, limits.count_quiet))

    @given(st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(0, 12), st.booleans()), max_size=200))
    @settings(max_examples=200, deadline=None)
    def test_never_out_of_bounds(self, steps: list[tuple[float, int, bool]]) -> None:
        """
        Whatever arrives when, with late losses between, the count stays
        between the floor and the ceiling with its spares, goes up by at
        most the grow step (and the spares, at the ceiling) and down by at
        most one (and the spares, from the ceiling) per decision, and
        changes up at most once per grow hold; the spares are there only
        at the ceiling.
        """
        limits = PathLimits()
        count = PathCount(2, 5, limits)
        now = 0.0
        ups: list[float] = []
        for advance, n, ask in steps:
            now += advance
            count.arrivals(now, n)
            if n == 0:
                count.late_loss(now)
            if ask:
                before = count.wanted
                after = count.decide(now)
                spare = limits.count_spare
                self.assertTrue(2 <= after <= 5 + spare)
                self.assertTrue(-1 - spare <= after - before <= limits.count_grow_step + spare)
                self.assertEqual(count.spare, spare if after >= 5 + spare else 0)
                if after > before:
                    ups.append(now)
        for a, b in zip(ups, ups[1:]):
            self.assertGreaterEqual(b - a, limits.count_grow_hold)


class PathCountLoadTests(SynchronousTestCase):
    """
    L{PathCount.load}: a heavy media load on a lossy link that does not
    fall asks for connections at once, whatever the stalls, and keeps
    them for C{count_load_linger} after it last asked; the stall rules
    count apart from it; no load, no change.
    """

    def test_grows_to_the_load(self) -> None:
        """
        500 datagrams/s copied, 2 copies each, 125 a connection:
        C{ceil(500 * 2 / 125)} = 8 connections at the next decision,
        beyond the stall ceiling (4) but within C{count_load_ceiling} and
        C{max_paths}; a load that is not copied (a clean link) or below
        C{spread_rate} or above C{spread_max_rate} asks for nothing.
        """
        limits = PathLimits(
            spread_copies=2,
            count_load_rate=125.0,
            count_load_ceiling=10,
            max_paths=12,
            spread_max_rate=6000.0,
            count_load_trend=0.0,
            count_load_linger=0.0,
        )
        count = PathCount(2, 4, limits)
        count.load(500.0, copied=False)
        self.assertEqual(count.decide(0.0), 2)
        count.load(140.0, copied=True)
        self.assertEqual(count.decide(1.0), 2)
        count.load(500.0, copied=True)
        self.assertEqual(count.decide(2.0), 8)
        self.assertEqual(count.for_load, 8)
        self.assertEqual(count.snapshot()["connections_load_grown"], 1)
        self.assertEqual(count.why, "the media load on a lossy link needs more connections")
        count.load(5000.0, copied=True)
        self.assertEqual(count.decide(3.0), 10)
        count.load(6001.0, copied=True)
        count.decide(4.0)
        self.assertEqual(count.for_load, 0)
        small = PathCount(2, 4, PathLimits(count_load_ceiling=10, max_paths=6, spread_max_rate=6000.0))
        small.load(5000.0, copied=True)
        self.assertEqual(small.decide(0.0), 6)
        # the defaults: ten G.711 calls (500/s) want 16
        default = PathCount(2, 4)
        default.load(500.0, copied=True)
        self.assertEqual(default.decide(0.0), 16)
        # ... and 500 calls (25,000/s) none: the CPU, not the link, is the
        # limit there
        heavy = PathCount(2, 4)
        heavy.load(25000.0, copied=True)
        self.assertEqual((heavy.decide(0.0), heavy.for_load), (2, 0))

    def test_a_falling_load_asks_for_nothing(self) -> None:
        """
        The calls of a CPU's load ending: 8,000 datagrams/s down to none
        over 8 s, copied all along (a spurious retransmission on a
        saturated machine), decided every half second.  On the way down
        the rate is within C{spread_rate} .. C{spread_max_rate} but lower
        than C{count_load_trend} before: no connection more (without the
        rule it asked for 16).  Ten calls starting one a second, and ten
        calls whose rate wobbles around 500/s, ask at once; 30 calls
        ending (1,500/s down to none) keep what they had.
        """

        def run(rates: list[float], trend: float | None = None) -> list[int]:
            limits = PathLimits() if trend is None else PathLimits(count_load_trend=trend)
            count = PathCount(2, 4, limits)
            wanted = []
            for k, rate in enumerate(rates):
                count.load(rate, copied=True)
                wanted.append(count.decide(k / 2))
            return wanted

        down = [max(0.0, 8000.0 - 1000.0 * k / 2) for k in range(20)]
        self.assertEqual(max(run(down)), 2)
        self.assertEqual(max(run(down, trend=0.0)), 16)
        up = [min(500.0, 25.0 * k) for k in range(24)]  # a call a second
        self.assertEqual(run(up)[5:9], [2, 5, 6, 7])  # from 150/s (three calls) on: at once
        self.assertEqual(run(up)[-1], 16)
        wobble = [500.0 + (10.0 if k % 3 else -10.0) for k in range(10)]
        self.assertEqual(run(wobble)[0], 16)
        ending = [1500.0] * 4 + [1500.0 - 100.0 * k for k in range(16)]
        self.assertEqual(run(ending), [16] * 20)

    @given(
        st.floats(2001.0, 30000.0),
        st.lists(st.tuples(st.floats(0.01, 0.5), st.floats(0.1, 3000.0)), min_size=1, max_size=120),
    )
    @settings(max_examples=200, deadline=None)
    def test_a_falling_load_never_grows(self, start: float, steps: list[tuple[float, float]]) -> None:
        """
        Whatever the pace: a rate that falls at every decision from above
        C{spread_max_rate}, copied all along, opens no connection.
        """
        count = PathCount(2, 4)
        now, rate = 0.0, start
        count.load(rate, copied=True)
        self.assertEqual(count.decide(now), 2)
        for advance, drop in steps:
            now += advance
            rate = max(0.0, rate - drop)
            count.load(rate, copied=True)
            self.assertEqual(count.decide(now), 2)
            if rate == 0.0:
                break

    @given(st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 3000.0), st.booleans()), max_size=150))
    @settings(max_examples=200, deadline=None)
    def test_load_within_bounds_and_gone_after_the_linger(self, steps: list[tuple[float, float, bool]]) -> None:
        """
        Whatever the load does: the count stays between the floor and the
        load's ceiling, and exceeds the stall ceiling only within
        C{count_load_linger} of a decision at which the load could ask
        (copied, within C{spread_rate} .. C{spread_max_rate}).
        """
        limits = PathLimits()
        count = PathCount(2, 4, limits)
        now = 0.0
        could_ask = float("-inf")
        for advance, rate, copied in steps:
            now += advance
            count.load(rate, copied)
            if copied and limits.spread_rate <= rate <= limits.spread_max_rate:
                could_ask = now
            wanted = count.decide(now)
            self.assertTrue(2 <= wanted <= limits.count_load_ceiling)
            if wanted > 4:
                self.assertLessEqual(now - could_ask, limits.count_load_linger)

    def test_load_connections_linger_then_go_together(self) -> None:
        """
        While the load asks, quiet spells drop none of its connections;
        they stay for C{count_load_linger} after it last asked for them
        (a smaller load keeps the larger count meanwhile), then go at
        once, down to what the stall rules want (the floor here).
        """
        limits = PathLimits(count_quiet=10.0, spread_copies=2, count_load_rate=125.0, count_load_linger=10.0)
        count = PathCount(2, 4, limits)
        count.load(300.0, copied=True)  # 5 connections
        self.assertEqual(count.decide(0.0), 5)
        self.assertEqual(count.decide(100.0), 5)
        count.load(200.0, copied=True)  # 4
        self.assertEqual(count.decide(105.0), 5)
        self.assertEqual(count.decide(110.0), 5)
        self.assertEqual(count.decide(110.5), 4)
        count.load(0.0, copied=False)
        self.assertEqual(count.decide(115.0), 4)
        self.assertEqual(count.decide(120.5), 4)
        self.assertEqual(count.decide(121.0), 2)
        self.assertEqual(count.why, "the media load that wanted them is gone")
        snapshot = count.snapshot()
        self.assertEqual(
            (snapshot["connections_shrunk"], snapshot["connections_why"], snapshot["connections_for_load"]),
            (2, "the media load that wanted them is gone", 0),
        )
        self.assertEqual(count.decide(1000.0), 2)

    def test_stalls_count_apart_from_the_load(self) -> None:
        """
        Stalls that grew the count to 4 before the load came keep it at 4
        when the load's 8 connections go; the quiet spell then drops one
        at a time, as without a load.
        """
        limits = PathLimits(count_spare=0, 
            count_quiet=10.0, count_grow_step=2, count_load_linger=5.0, count_covered_after=0.0
        )
        count = PathCount(2, 4, limits)
        for t in (0.0, 0.5, 1.0):
            count.stall(t)
        self.assertEqual(count.decide(1.0), 4)
        count.load(250.0, copied=True)  # ceil(250 * 4 / 125) = 8
        self.assertEqual(count.decide(2.0), 8)
        count.load(0.0, copied=False)
        self.assertEqual(count.decide(7.0), 8)
        self.assertEqual(count.decide(7.5), 4)
        self.assertEqual(count.decide(11.0), 4)
        self.assertEqual(count.decide(12.0), 3)
        self.assertEqual(count.why, "no media stall for 10 s")
        self.assertEqual(count.decide(22.0), 2)
        self.assertEqual(count.decide(40.0), 2)
