# -*- test-case-name: tests.test_gcpolicy -*-
"""
When the garbage collector makes its full collections: on a timer, not
whenever allocations say so.

CPython's collector goes through every object that can hold references
in a full (generation 2) collection, and the process does nothing else
meanwhile: no datagram is relayed, no SIP message read.  What it goes
through grows with the calls in progress (each holds a few dozen such
objects on each half: its dialog, streams, relay endpoints, quality
figures) and it costs more here than the object count suggests (objects
spread over memory, a shared machine's small cache): with 1,500 calls in
progress a full collection stopped a half for 90-170 ms, and CPython made
one every few seconds while calls came and went, since it starts one
whenever the objects that survived two younger collections reach a
quarter of those it already holds (C{docs/performance.md}, "Full garbage
collections").  Every call's audio stopped as long, every time.

Nothing a call leaves behind needs the collector any more (its media
objects are freed by reference counting: C{tests/test_media_manager.py},
C{NoGarbageTests}).  So L{GcPolicy}, started by the C{twistd} plugins
(not by L{spwm.tap.assembly.build_agent} or C{build_contact}: a program
that embeds the protocols keeps its own policy):

  - once the reactor runs, collects everything and freezes what is left
    (C{gc.freeze}: the modules, classes and functions of start-up, about
    60,000 objects that are never garbage and no collection need look at
    again);
  - turns CPython's own full collections off, and collects the middle
    generation every 3 young collections rather than 10 (L{OLDER}: it
    holds the calls set up since its last collection, which survived a
    young one; with 10, up to 10-17 ms a pause in the same run, with 3 up
    to 6 ms);
  - makes a full collection itself every L{LONGEST} seconds, sooner when
    the last one found much garbage (halving the wait down to
    L{SHORTEST}, while some part of the program leaves cycles behind),
    and at once (but not twice within L{SHORTEST}) when the process has
    grown by half and L{GROWTH_MIN} bytes since the last one (many tunnel
    connections broken at once, each of which leaves a few hundred
    objects in cycles), so that memory stays bounded whatever leaves
    cycles.

Its figures are the status document's C{gc} section.
"""

from __future__ import annotations

import gc as _gc
import os
import time
from typing import Any, Callable

from twisted.application.service import Service
from twisted.logger import Logger

#: Seconds between two full collections while they find little garbage.
LONGEST = 600.0

#: The shortest wait between two full collections (much garbage found).
SHORTEST = 60.0

#: A full collection that frees this many objects or more halves the wait
#: before the next one; one that frees less than L{LITTLE} doubles it
#: (up to L{LONGEST}).
MUCH = 50_000
LITTLE = 5_000

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

#: Seconds between two looks at the process's size.
CHECK = 10.0

#: A process this many times its size after the last full collection, and
#: L{GROWTH_MIN} bytes larger, collects at once.
GROWTH = 1.5
GROWTH_MIN = 64 * 1024 * 1024

#: Young collections between two collections of the middle generation
#: (CPython's default: 10).
OLDER = 3

#: CPython's threshold for its own full collections, set so that they
#: never come (the C int's largest value: the count is of younger
#: collections since the last full one).
NEVER = 2**31 - 1



def resident_size() -> int | None:
    """
    This process's resident size in bytes (Linux's C{/proc/self/statm}),
    or C{None} where it cannot be read.
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class GcPolicy(Service):
    """
    Full garbage collections on a timer (see the module).

    @ivar full_collections: full collections made since the start.
    @ivar wait: seconds until the next one after the last one.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        gc: Any = _gc,
        timer: Callable[[], float] = time.perf_counter,
        size: Callable[[], int | None] = resident_size,
    ) -> None:
        """
        @param clock: provides C{IReactorTime}.
        @param gc: the collector (the C{gc} module; tests give another).
        @param timer: what the pauses are measured with.
        @param size: the process's resident size in bytes (C{None}: not
            known here).
        """
        self.clock = clock
        self.gc = gc
        self.timer = timer
        self.size = size
        self.wait = LONGEST
        self.full_collections = 0
        #: full collections made because the process grew
        self.for_growth = 0
        self._due = 0.0
        self._last_at = 0.0
        self._base: int | None = None
        self._saved: tuple[int, int, int] | None = None
        self._frozen = 0
        self._last: tuple[float, int] | None = None  # seconds, objects freed
        self._longest = 0.0
        self._call: Any = None

    def startService(self) -> None:
        super().startService()
        young, _, _ = self._saved = self.gc.get_threshold()
        self.gc.set_threshold(young, OLDER, NEVER)
        # on the first turn of the reactor: start-up is done by then
        self._call = self.clock.callLater(0, self._start)

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._saved is not None:
            self.gc.set_threshold(*self._saved)
            self._saved = None
        if self._frozen:
            self.gc.unfreeze()
            self._frozen = 0

    def _start(self) -> None:
        self._call = None
        self._collect()
        self.gc.freeze()
        self._frozen = self.gc.get_freeze_count()
        self._due = self._last_at + self.wait
        self.log.info(
            "garbage collector: {frozen} objects of start-up frozen; a full collection every"
            " {wait:g} s (sooner while it finds much garbage)",
            frozen=self._frozen,
            wait=self.wait,
        )
        self._schedule()

    def _schedule(self) -> None:
        self._call = self.clock.callLater(CHECK, self._check)

    def _check(self) -> None:
        now = self.clock.seconds()
        if now >= self._due:
            self._full()
            return
        size = self.size()
        base = self._base
        if (
            size is not None
            and base is not None
            and size > base * GROWTH
            and size - base >= GROWTH_MIN
            and now - self._last_at >= SHORTEST
        ):
            self.for_growth += 1
            self.log.info(
                "this process grew from {before} to {after} MB since the last full garbage collection:"
                " one now",
                before=base // 2**20,
                after=size // 2**20,
            )
            self._full()
            return
        self._schedule()

    def _full(self) -> None:
        self._call = None
        freed = self._collect()
        if freed >= MUCH:
            wait = max(SHORTEST, self.wait / 2)
            if wait < self.wait:
                self.log.warn(
                    "a full garbage collection freed {freed} objects held in reference cycles; the"
                    " next one in {wait:g} s",
                    freed=freed,
                    wait=wait,
                )
            self.wait = wait
        elif freed < LITTLE:
            self.wait = min(LONGEST, self.wait * 2)
        self._due = self._last_at + self.wait
        self._schedule()

    def _collect(self) -> int:
        started = self.timer()
        freed: int = self.gc.collect()
        took = self.timer() - started
        self.full_collections += 1
        self._last = (took, freed)
        self._longest = max(self._longest, took)
        self._last_at = self.clock.seconds()
        self._base = self.size()
        return freed

    def status(self) -> dict[str, Any]:
        """
        @return: the full collections made, the last one's pause (ms) and
            objects freed, the longest pause, the wait before the next
            one, the collections made because the process grew, and the
            objects frozen at start.
        """
        took, freed = self._last or (0.0, 0)
        return {
            "full_collections": self.full_collections,
            "last_full_ms": round(1000 * took, 1),
            "last_full_freed": freed,
            "longest_full_ms": round(1000 * self._longest, 1),
            "full_every_s": self.wait,
            "full_for_growth": self.for_growth,
            "frozen": self._frozen,
        }

