"""Run statistics that the dashboard reads: how many calls each dispatcher started and
how they ended, per minute, and how late they started (start minus due time)."""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

LATENESS_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    math.inf,
)
"""Upper bounds, in seconds, of the lateness buckets (the last one takes the rest)."""


@dataclass(slots=True)
class MinuteStats:
    """What one process saw in one minute: runs started and how they ended, and how late
    each started (counts per LATENESS_BUCKETS bucket)."""

    started: int = 0
    succeeded: int = 0
    failed: int = 0
    interrupted: int = 0
    lateness: list[int] = field(default_factory=lambda: [0] * len(LATENESS_BUCKETS))

    def add(self, other: MinuteStats) -> None:
        self.started += other.started
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.interrupted += other.interrupted
        self.lateness = [a + b for a, b in zip(self.lateness, other.lateness, strict=True)]


class RunStats:
    """Counts runs per minute in this process until :meth:`take` hands them over to be
    added to the future_calls_stats table (the dashboard's throughput and lateness)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._minutes: dict[int, MinuteStats] = {}

    def _now(self) -> MinuteStats:
        minute = int(self._clock() // 60)
        stats = self._minutes.get(minute)
        if stats is None:
            stats = self._minutes[minute] = MinuteStats()
        return stats

    def started(self, lateness: Iterable[float]) -> None:
        """Runs that started now, each ``lateness`` seconds after it fell due."""
        stats = self._now()
        buckets = stats.lateness
        for seconds in lateness:
            buckets[bisect_left(LATENESS_BUCKETS, seconds)] += 1
            stats.started += 1

    def ended(self, succeeded: int = 0, failed: int = 0, interrupted: int = 0) -> None:
        stats = self._now()
        stats.succeeded += succeeded
        stats.failed += failed
        stats.interrupted += interrupted

    def take(self) -> dict[int, MinuteStats]:
        """The counts so far by minute (epoch minutes), which this object forgets; give
        them back with :meth:`restore` if they could not be stored."""
        minutes, self._minutes = self._minutes, {}
        return minutes

    def restore(self, minutes: dict[int, MinuteStats]) -> None:
        for minute, stats in minutes.items():
            mine = self._minutes.get(minute)
            if mine is None:
                self._minutes[minute] = stats
            else:
                mine.add(stats)


def percentile(lateness: Sequence[int], fraction: float) -> float | None:
    """The upper bound (seconds) of the bucket holding the ``fraction`` quantile of the
    counts ``lateness`` (per LATENESS_BUCKETS); None when there are none."""
    total = sum(lateness)
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for bound, count in zip(LATENESS_BUCKETS, lateness, strict=False):
        seen += count
        if seen >= rank:
            return bound
    return LATENESS_BUCKETS[-1]
