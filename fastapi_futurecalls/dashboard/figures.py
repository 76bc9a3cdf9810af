"""Figures the overview shows: counts that say whether they are exact, and throughput and
lateness per minute from the run statistics (future_calls_stats)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from ..stats import LATENESS_BUCKETS

CountKind = Literal["exact", "estimate", "at_least"]


@dataclass(frozen=True, slots=True)
class Count:
    """``value`` exactly, about ``value`` (PostgreSQL's statistics), or ``value`` or more."""

    value: int
    kind: CountKind = "exact"

    def __str__(self) -> str:
        if self.kind == "estimate":
            return f"≈ {approximately(self.value)}"
        if self.kind == "at_least":
            return f"{self.value:,}+"
        return f"{self.value:,}"


def approximately(n: int) -> str:
    """Two significant figures: 1,234,567 is "1.2M"."""
    for bound, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= bound:
            return f"{n / bound:.2g}{suffix}" if n < bound * 100 else f"{n / bound:.0f}{suffix}"
    return f"{n:,}"


@dataclass(frozen=True, slots=True)
class Minute:
    minute: datetime
    started: int
    succeeded: int
    failed: int
    interrupted: int


@dataclass(frozen=True, slots=True)
class Throughput:
    minutes: list[Minute]  # every minute of the window, oldest first, the current one last
    started: int
    succeeded: int
    failed: int
    interrupted: int
    p50: str | None  # the lateness bucket's bound, e.g. "≤ 50 ms"; None: no runs
    p99: str | None
    window_minutes: int

    @property
    def peak(self) -> int:
        return max((m.started for m in self.minutes), default=0)

    @property
    def per_second(self) -> float:
        return self.started / (self.window_minutes * 60)


def throughput(rows: list[dict[str, Any]], now: datetime, window: int) -> Throughput:
    """Sum the per-worker rows of the last ``window`` minutes into one row per minute,
    and the lateness buckets of them all into p50 and p99."""
    this_minute = now.replace(second=0, microsecond=0)
    per_minute = {this_minute - timedelta(minutes=i): [0, 0, 0, 0] for i in range(window)}
    buckets = [0] * len(LATENESS_BUCKETS)
    for row in rows:
        sums = per_minute.get(row["minute"])
        if sums is None:
            continue
        for i, column in enumerate(("started", "succeeded", "failed", "interrupted")):
            sums[i] += row[column]
        for i, n in enumerate(row["lateness"][: len(buckets)]):
            buckets[i] += n
    minutes = [Minute(m, *sums) for m, sums in sorted(per_minute.items())]
    return Throughput(
        minutes,
        started=sum(m.started for m in minutes),
        succeeded=sum(m.succeeded for m in minutes),
        failed=sum(m.failed for m in minutes),
        interrupted=sum(m.interrupted for m in minutes),
        p50=percentile(buckets, 0.50),
        p99=percentile(buckets, 0.99),
        window_minutes=window,
    )


def percentile(buckets: list[int], q: float) -> str | None:
    """The upper bound of the bucket that holds the ``q`` quantile, as "≤ 50 ms"."""
    total = sum(buckets)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank and n:
            return bound(i)
    return bound(len(buckets) - 1)


def bound(i: int) -> str:
    upper = LATENESS_BUCKETS[i]
    if math.isinf(upper):
        return f"> {seconds(LATENESS_BUCKETS[i - 1])}" if i else "any"
    return f"≤ {seconds(upper)}"


def seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:g} ms"
    if value < 60:
        return f"{value:g} s"
    return f"{value / 60:g} min"
