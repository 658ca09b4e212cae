"""
Tests for L{spwm.gcpolicy}: full garbage collections on a timer, with a
fake collector and a fake clock; and that the C{twistd} plugins' halves
run it and the embedded ones do not.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from spwm.gcpolicy import CHECK, GROWTH_MIN, LITTLE, LONGEST, MUCH, NEVER, OLDER, SHORTEST, GcPolicy, resident_size


class FakeGc:
    """
    The C{gc} module's calls that the policy makes, recorded; each
    C{collect()} frees the next number of C{freed} (0 when none is left)
    and takes C{pause} seconds of C{now}.
    """

    def __init__(self) -> None:
        self.threshold = (700, 10, 10)
        self.calls: list[str] = []
        self.freed: list[int] = []
        self.frozen = 0
        self.now = 0.0
        self.pause = 0.0

    def get_threshold(self) -> tuple[int, int, int]:
        return self.threshold

    def set_threshold(self, *threshold: int) -> None:
        self.calls.append(f"set_threshold{threshold}")
        self.threshold = threshold  # type: ignore[assignment]

    def collect(self) -> int:
        self.calls.append("collect")
        self.now += self.pause
        return self.freed.pop(0) if self.freed else 0

    def freeze(self) -> None:
        self.calls.append("freeze")
        self.frozen = 42_000

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")
        self.frozen = 0

    def get_freeze_count(self) -> int:
        return self.frozen


def _run(clock: Clock, seconds: float) -> None:
    """
    Advance C{clock} by C{seconds} in steps of L{CHECK} (a L{Clock} runs a
    timer that a call due within one C{advance} sets from the advance's
    end, not from its own time).
    """
    for _ in range(int(seconds // CHECK)):
        clock.advance(CHECK)
    clock.advance(seconds % CHECK)


def _started(size: list[int | None] | None = None) -> tuple[Clock, FakeGc, GcPolicy]:
    clock = Clock()
    fake = FakeGc()
    sizes = size if size is not None else [None]
    policy = GcPolicy(clock, gc=fake, timer=lambda: fake.now, size=lambda: sizes[0])
    policy.startService()
    return clock, fake, policy


class GcPolicyTests(SynchronousTestCase):
    def test_start(self) -> None:
        """
        At start CPython's own full collections are turned off and the
        middle generation collected every L{OLDER} young collections (the
        young threshold kept); on the reactor's first turn one
        collection, then what is left is frozen; the next comes
        L{LONGEST} seconds later.
        """
        clock, fake, policy = _started()
        self.assertEqual(fake.calls, [f"set_threshold{(700, OLDER, NEVER)}"])
        with capturedLogs() as events:
            clock.advance(0)
        self.assertEqual(fake.calls[1:], ["collect", "freeze"])
        self.assertEqual(
            [formatEvent(e) for e in events],
            [f"garbage collector: 42000 objects of start-up frozen; a full collection every {LONGEST:g} s (sooner while it finds much garbage)"],
        )
        _run(clock, LONGEST - 1)
        self.assertEqual(fake.calls.count("collect"), 1)
        _run(clock, 1)
        self.assertEqual(fake.calls.count("collect"), 2)
        self.assertEqual(policy.status()["full_collections"], 2)

    def test_stop_restores(self) -> None:
        """
        A stop cancels the timer, gives CPython its thresholds back and
        unfreezes what was frozen (tests and embedders keep their process
        as it was).
        """
        clock, fake, policy = _started()
        clock.advance(0)
        policy.stopService()
        self.assertEqual(fake.threshold, (700, 10, 10))
        self.assertEqual(fake.calls[-1], "unfreeze")
        self.assertEqual(clock.getDelayedCalls(), [])
        # stopped before the first turn: nothing frozen, nothing to undo
        clock, fake, policy = _started()
        policy.stopService()
        self.assertEqual((fake.calls[-1], clock.getDelayedCalls()), ("set_threshold(700, 10, 10)", []))

    def test_much_garbage_sooner(self) -> None:
        """
        A full collection that frees L{MUCH} objects or more halves the
        wait (one warning each time, down to L{SHORTEST}, then no more
        lines); one that frees less than L{LITTLE} doubles it back up to
        L{LONGEST}; in between it stays.
        """
        clock, fake, policy = _started()
        clock.advance(0)
        fake.freed = [MUCH] * 6 + [LITTLE, LITTLE - 1, 0, 0, 0, 0]
        waits, apart = [], []
        with capturedLogs() as events:
            for _ in range(12):
                done, before = policy.full_collections, clock.seconds()
                while policy.full_collections == done:
                    clock.advance(CHECK)
                apart.append(clock.seconds() - before)
                waits.append(policy.wait)
        self.assertEqual(waits, [300, 150, 75, 60, 60, 60, 60, 120, 240, 480, 600, 600])
        # each comes at the first look at or after its time
        self.assertEqual(apart, [600, 300, 150, 80, 60, 60, 60, 60, 120, 240, 480, 600])
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                f"a full garbage collection freed {MUCH} objects held in reference cycles; the next one in {w:g} s"
                for w in (300, 150, 75, SHORTEST)
            ],
        )

    def test_growth(self) -> None:
        """
        A process half as large again and L{GROWTH_MIN} larger than after
        the last full collection makes one at the next look (one line
        says so), not within L{SHORTEST} of the last; growing less, or
        with its size unknown, it waits for the timer.
        """
        mb = 2**20
        size: list[int | None] = [100 * mb]
        clock, fake, policy = _started(size)
        clock.advance(0)
        size[0] = 160 * mb  # 1.6 times, but only 60 MB more
        _run(clock, SHORTEST)
        self.assertEqual(policy.full_collections, 1)
        size[0] = 165 * mb
        with capturedLogs() as events:
            clock.advance(CHECK)
        self.assertEqual((policy.full_collections, policy.for_growth), (2, 1))
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["this process grew from 100 to 165 MB since the last full garbage collection: one now"],
        )
        size[0] = 400 * mb  # at once again: not within SHORTEST
        _run(clock, SHORTEST - CHECK)
        self.assertEqual(policy.full_collections, 2)
        clock.advance(CHECK)
        self.assertEqual(policy.full_collections, 3)
        size[0] = None
        _run(clock, LONGEST - CHECK)
        self.assertEqual(policy.full_collections, 3)
        clock.advance(CHECK)
        self.assertEqual((policy.full_collections, policy.for_growth), (4, 2))
        self.assertGreater(resident_size() or 0, 10 * mb)

    def test_status(self) -> None:
        """
        The status section: collections made, the last pause and what it
        freed, the longest pause, the wait, the objects frozen.
        """
        clock, fake, policy = _started()
        self.assertEqual(
            policy.status(),
            {"full_collections": 0, "last_full_ms": 0.0, "last_full_freed": 0, "longest_full_ms": 0.0, "full_every_s": LONGEST,
             "full_for_growth": 0, "frozen": 0},
        )
        fake.pause = 0.120
        clock.advance(0)
        fake.pause = 0.0304
        fake.freed = [17]
        _run(clock, LONGEST)
        self.assertEqual(
            policy.status(),
            {"full_collections": 2, "last_full_ms": 30.4, "last_full_freed": 17, "longest_full_ms": 120.0, "full_every_s": LONGEST,
             "full_for_growth": 0, "frozen": 42_000},
        )

    def test_real_collector(self) -> None:
        """
        With the real C{gc} module: CPython's full collections are off
        while it runs, start-up objects are frozen, and a stop leaves the
        process as it was.
        """
        before = gc.get_threshold()
        clock = Clock()
        policy = GcPolicy(clock)
        policy.startService()
        try:
            self.assertEqual(gc.get_threshold(), (before[0], OLDER, NEVER))
            clock.advance(0)
            self.assertGreater(gc.get_freeze_count(), 1000)
            self.assertGreater(policy.status()["frozen"], 1000)
        finally:
            policy.stopService()
        self.assertEqual((gc.get_threshold(), gc.get_freeze_count()), (before, 0))


class PluginTests(SynchronousTestCase):
    """
    The C{twistd} plugins' halves run the policy and show its section; a
    program that builds a half itself keeps its own collector.
    """

    def _service(self, module: Any, argv: list[str]) -> Any:
        options = module.Options()
        options.parseOptions(argv)
        return module.makeService(options, MemoryReactorClock())

    def test_plugins(self) -> None:
        """
        C{spwm-contact} and C{spwm-agent} each have one policy among their
        services.
        """
        from spwm.tap import agent, contact

        for module, argv in (
            (contact, ["--plaintext", "--listen", "tcp:0:interface=127.0.0.1", "--status-interval", "0"]),
            (agent, ["--plaintext", "--contact", "127.0.0.1:9", "--sip-listen", "127.0.0.1:15060", "--status-interval", "0"]),
        ):
            service = self._service(module, argv)
            self.assertIsInstance(service, MultiService)
            policies = [s for s in service if isinstance(s, GcPolicy)]
            self.assertEqual(len(policies), 1)

    def test_embedded(self) -> None:
        """
        L{spwm.tap.assembly.build_agent} (what the demo and embedders call)
        adds no policy.
        """
        from spwm.tap import agent
        from spwm.tap.assembly import build_agent

        options = agent.Options()
        options.parseOptions(["--plaintext", "--contact", "127.0.0.1:9", "--sip-listen", "127.0.0.1:15060", "--status-interval", "0"])
        built = build_agent(options.config, MemoryReactorClock())
        self.assertFalse([s for s in built.service if isinstance(s, GcPolicy)])
        self.assertNotIn("gc", built.status.document())
