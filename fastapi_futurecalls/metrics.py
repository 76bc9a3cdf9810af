"""Prometheus metrics (needs ``prometheus-client``: ``pip install fastapi-futurecalls[metrics]``).

Counters and histograms count what this process did. Under ``uvicorn --workers N`` set
``PROMETHEUS_MULTIPROC_DIR`` (an empty directory, the same for every worker) before the
app starts: prometheus-client's multiprocess mode then keeps each process's figures in
files there, and a scrape, whichever worker answers it, sums them over the processes of
the host. The gauges come from the database at scrape time, so they are the fleet's.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from fastapi import APIRouter, Response
from fastapi.params import Depends
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .stats import LATENESS_BUCKETS

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

_COUNTERS = {
    "scheduled": "Future calls scheduled",
    "started": "Runs of future calls started",
    "completed": "Runs of future calls that returned",
    "failed": "Runs of future calls that failed (retried or parked as failed)",
    "interrupted": "Runs of future calls interrupted (parked as interrupted)",
    "retried": "Runs of future calls put back in line for another run (a retry, RetryLater)",
}


class Metrics:
    """The counters and histograms of one FutureCalls, in a registry of their own.

    Runs are counted into plain dicts first and handed to prometheus-client by
    :meth:`flush` (about once a second, and before each scrape): an update of a
    prometheus-client metric costs microseconds, too much to pay several times per run.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.counters = {
            kind: Counter(f"futurecalls_{kind}", text, ["name"], registry=self.registry)
            for kind, text in _COUNTERS.items()
        }
        self.histograms = {
            "lateness": Histogram(
                "futurecalls_lateness_seconds",
                "How late runs of future calls started: start minus due time",
                ["name"],
                buckets=LATENESS_BUCKETS,
                registry=self.registry,
            ),
            "duration": Histogram(
                "futurecalls_invoke_duration_seconds",
                "How long invoke ran",
                ["name"],
                buckets=DURATION_BUCKETS,
                registry=self.registry,
            ),
        }
        self._figures: dict[str, Figures] = {}

    def figures(self, name: str) -> Figures:
        """What is counted for ``name`` until the next flush (one lookup per run)."""
        figures = self._figures.get(name)
        if figures is None:
            figures = self._figures[name] = Figures()
        return figures

    def count_now(self, kind: str, name: str, amount: int = 1) -> None:
        """Count straight into prometheus-client (for what is counted rarely)."""
        self.counters[kind].labels(name).inc(amount)

    def flush(self) -> None:
        """Add what was counted since the last flush to the prometheus-client metrics."""
        figures, self._figures = self._figures, {}
        for name, seen in figures.items():
            for kind, amount in seen.counts.items():
                if amount:
                    self.counters[kind].labels(name).inc(amount)
            for histogram, observed in (("lateness", seen.lateness), ("duration", seen.duration)):
                if any(observed.buckets):
                    _add(self.histograms[histogram].labels(name), observed)


class Figures:
    """One call name's runs since the last flush: counts by kind, and two histograms."""

    __slots__ = ("counts", "duration", "lateness")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(("started", "completed", "failed", "interrupted", "retried"), 0)
        self.lateness = _Observed(LATENESS_BUCKETS)
        self.duration = _Observed((*DURATION_BUCKETS, math.inf))


class _Observed:
    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * len(bounds)
        self.sum = 0.0

    def add(self, seconds: float) -> None:
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds


def _add(child: Any, seen: _Observed) -> None:
    """Add many observations to a histogram at once. prometheus-client has no public call
    for it; its histograms keep a value per bucket (``_buckets``) and the ``_sum``, which
    is what ``observe`` adds to. Without them, observe each bucket's bound instead."""
    buckets, total = getattr(child, "_buckets", None), getattr(child, "_sum", None)
    if buckets is None or total is None or len(buckets) != len(seen.buckets):
        for bound, count in zip(seen.bounds, seen.buckets, strict=True):
            for _ in range(count):
                child.observe(bound)
        return
    for value, count in zip(buckets, seen.buckets, strict=True):
        if count:
            value.inc(count)
    total.inc(seen.sum)


class DatabaseGauges(Collector):
    """The fleet's figures, read from the database by :meth:`refresh` before a scrape."""

    def __init__(self) -> None:
        self.values: dict[str, float | None] = {}

    def collect(self) -> Iterable[Metric]:
        calls = GaugeMetricFamily(
            "futurecalls_calls",
            "Stored future calls by state (scheduled: one-off calls; over 10,000 of them, "
            "PostgreSQL's estimate), and recurring chains",
            labels=["state"],
        )
        for state in ("scheduled", "running", "failed", "interrupted", "recurring"):
            value = self.values.get(state)
            if value is not None:
                calls.add_metric([state], value)
        yield calls
        age = self.values.get("oldest_due_age")
        yield GaugeMetricFamily(
            "futurecalls_oldest_due_age_seconds",
            "Age of the oldest call that is due and has not started (0: none; calls of "
            "paused names left out)",
            value=age or 0.0,
        )


def router(
    metrics: Metrics,
    read_gauges: Callable[[], Awaitable[dict[str, float | None]]],
    *,
    dependencies: Sequence[Depends] | None,
    path: str,
) -> APIRouter:
    gauges = DatabaseGauges()
    api = APIRouter(dependencies=list(dependencies or ()))

    @api.get(path, include_in_schema=False)
    async def scrape() -> Response:
        gauges.values = await read_gauges()
        metrics.flush()
        return Response(generate_latest(_registry(metrics, gauges)), media_type=CONTENT_TYPE_LATEST)

    return api


def _registry(metrics: Metrics, gauges: DatabaseGauges) -> CollectorRegistry:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        registry.register(_Own(metrics.registry))
    else:  # every process's counters and histograms, from the shared directory
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(gauges)
    return registry


class _Own(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()
