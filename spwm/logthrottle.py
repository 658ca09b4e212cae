# -*- test-case-name: tests.test_logthrottle -*-
"""
One throttle for log lines that a peer (or an overload) can cause at any
rate: a flood of bad SIP, refused tunnels, refused media, datagrams without
a channel.  Each such line is counted always and written only when its
policy says so:

  - L{Every}C{(seconds)}: the first time, then at most once per C{seconds};
    the line says how many were suppressed since the last one (a closing
    clause naming C{{suppressed}}, such as C{" ({suppressed} more since
    the last such line)"}, is left out of a line when none were:
    L{without_none_suppressed});
  - L{PowersOfTwo}: the 1st, 2nd, 4th, 8th... time (the line carries the
    count so far);
  - C{Every(60.0) | PowersOfTwo()}: whichever comes first.

Lines are throttled per key (a reason, a Route, a kind of refusal).  The
key table is bounded (C{max_keys}); when it is full the key whose last line
is oldest is forgotten, so a flood of distinct keys costs a bounded table
and, at worst, one more line per forgotten key.

Time comes from the injected clock, so tests use a
L{twisted.internet.task.Clock}; a throttle whose policy does not look at
time (L{PowersOfTwo}) needs none.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: the default bound of a throttle's key table
MAX_KEYS = 1024

#: how the closing clause that counts the suppressed lines begins
_SUPPRESSED_CLAUSE = " ({suppressed}"


def without_none_suppressed(format: str, suppressed: int) -> str:
    """
    C{format} without its closing clause about the lines suppressed since
    the last one (C{" ({suppressed} ...)"} at its end) when C{suppressed}
    is 0: the first line of a kind, or one after a quiet while, does not
    say "0 more".
    """
    if suppressed or not format.endswith(")"):
        return format
    at = format.rfind(_SUPPRESSED_CLAUSE)
    return format if at < 0 else format[:at]


class Policy:
    """
    When a throttled line is due.  Combine two policies with C{|}: the line
    is due when either says so.
    """

    #: whether L{due} looks at the time (a throttle then needs a clock)
    timed = False

    def due(self, count: int, last: float | None, now: float) -> bool:
        """
        Whether the C{count}th occurrence of a key, at C{now}, gets a line;
        C{last} is when its previous line was written (C{None}: never).
        """
        raise NotImplementedError

    def __or__(self, other: Policy) -> Policy:
        return AnyOf((self, other))


@frozen
class Every(Policy):
    """
    The first occurrence, then at most one line per C{interval} seconds.
    """

    interval: float
    timed = True

    def due(self, count: int, last: float | None, now: float) -> bool:
        return last is None or now - last >= self.interval


@frozen
class PowersOfTwo(Policy):
    """
    The 1st, 2nd, 4th, 8th... occurrence.
    """

    def due(self, count: int, last: float | None, now: float) -> bool:
        return count > 0 and count & (count - 1) == 0


@frozen
class AnyOf(Policy):
    """
    Due when any of C{policies} is.
    """

    policies: tuple[Policy, ...]

    @property
    def timed(self) -> bool:  # type: ignore[override]
        return any(p.timed for p in self.policies)

    def due(self, count: int, last: float | None, now: float) -> bool:
        return any(p.due(count, last, now) for p in self.policies)


@frozen
class Tally:
    """
    What a due line may say.

    @ivar count: occurrences of its key so far (this one included), or the
        caller's own counter when it passed one.
    @ivar suppressed: occurrences since the previous line that got none.
    """

    count: int
    suppressed: int


class _Key:
    __slots__ = ("count", "suppressed", "last")

    def __init__(self) -> None:
        self.count = 0
        self.suppressed = 0
        self.last: float | None = None


class ThrottledLog:
    """
    Throttled log lines of one L{Logger}.

    L{hit} records one occurrence and says whether a line is due (for
    callers that write the line themselves, e.g. with C{log.failure});
    L{warn} and L{info} do both, adding the fields C{count} and
    C{suppressed} (unless the caller passes fields of those names) for the
    format to use.
    """

    def __init__(
        self,
        log: Logger,
        clock: IReactorTime | None,
        policy: Policy,
        *,
        max_keys: int = MAX_KEYS,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        if clock is None and policy.timed:
            raise ValueError(f"{policy!r} needs a clock")
        self.log = log
        self.clock = clock
        self.policy = policy
        self.max_keys = max_keys
        self._keys: dict[Hashable, _Key] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def hit(self, key: Hashable = None, count: int | None = None) -> Tally | None:
        """
        Record one occurrence of C{key}.

        @param count: the caller's own count of these occurrences (a
            counter it exports anyway); the policy then judges that count
            instead of the throttle's own.
        @return: a L{Tally} when a line is due now, else C{None}.
        """
        entry = self._keys.get(key)
        if entry is None:
            if len(self._keys) >= self.max_keys:
                # forget the key whose last line is oldest (kept first)
                del self._keys[next(iter(self._keys))]
            entry = self._keys[key] = _Key()
        entry.count += 1
        if count is None:
            count = entry.count
        now = 0.0 if self.clock is None else self.clock.seconds()
        if not self.policy.due(count, entry.last, now):
            entry.suppressed += 1
            return None
        tally = Tally(count, entry.suppressed)
        entry.suppressed = 0
        entry.last = now
        # keep the table ordered by last line, oldest first
        del self._keys[key]
        self._keys[key] = entry
        return tally

    def warn(self, key: Hashable, format: str, **fields: Any) -> bool:
        """
        Record one occurrence of C{key} and log C{format} as a warning if
        due.  @return: whether a line was written.
        """
        tally = self.hit(key)
        if tally is None:
            return False
        fields.setdefault("count", tally.count)
        fields.setdefault("suppressed", tally.suppressed)
        self.log.warn(without_none_suppressed(format, fields["suppressed"]), **fields)
        return True

    def info(self, key: Hashable, format: str, **fields: Any) -> bool:
        """
        Like L{warn}, at the info level.
        """
        tally = self.hit(key)
        if tally is None:
            return False
        fields.setdefault("count", tally.count)
        fields.setdefault("suppressed", tally.suppressed)
        self.log.info(without_none_suppressed(format, fields["suppressed"]), **fields)
        return True
