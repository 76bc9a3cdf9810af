"""Prometheus metrics (needs ``prometheus-client``: ``pip install fastapi-futurecalls[metrics]``).

Counters and histograms count what this process did. Under ``uvicorn --workers N`` set
``PROMETHEUS_MULTIPROC_DIR`` (an empty directory, the same for every worker) before the
app starts: prometheus-client's multiprocess mode then keeps each process's figures in
files there, and a scrape, whichever worker answers it, sums them over the processes of
the host. The gauges come from the database at scrape time, so they are the fleet's.
"""

from __future__ import annotations

import os
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
    """The counters and histograms of one FutureCalls, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.counters = {
            kind: Counter(f"futurecalls_{kind}", text, ["name"], registry=self.registry)
            for kind, text in _COUNTERS.items()
        }
        self.lateness = Histogram(
            "futurecalls_lateness_seconds",
            "How late runs of future calls started: start minus due time",
            ["name"],
            buckets=LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "futurecalls_invoke_duration_seconds",
            "How long invoke ran",
            ["name"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], Any] = {}

    def count(self, kind: str, name: str, amount: int = 1) -> None:
        child = self._children.get((kind, name))
        if child is None:
            child = self._children[kind, name] = self.counters[kind].labels(name)
        child.inc(amount)

    def observe(self, histogram: str, name: str, seconds: float) -> None:
        child = self._children.get((histogram, name))
        if child is None:
            metric = self.lateness if histogram == "lateness" else self.duration
            child = self._children[histogram, name] = metric.labels(name)
        child.observe(seconds)


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
