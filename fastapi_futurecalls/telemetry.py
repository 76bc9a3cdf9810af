"""Where a FutureCalls reports what its calls do: run statistics for the dashboard (always
on: a few integer additions per batch), Prometheus metrics and OpenTelemetry spans when
they are enabled."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .stats import RunStats

if TYPE_CHECKING:
    from .metrics import Metrics
    from .runner import ClaimedCall, Outcome
    from .tracing import Tracing

# Outcome states by what they count as.
_FAILED = frozenset({"scheduled", "failed"})  # an attempt failed: retried, or parked
_RETRIED = frozenset({"scheduled", "snoozed"})


class Telemetry:
    def __init__(self) -> None:
        self.stats = RunStats()
        self.metrics: Metrics | None = None
        self.tracing: Tracing | None = None

    @property
    def per_run(self) -> bool:
        """Whether each run is timed or traced (else the runner skips both)."""
        return self.metrics is not None or self.tracing is not None

    def scheduled(self, names: list[str]) -> None:
        if self.metrics is not None:
            for name, count in Counter(names).items():
                self.metrics.count("scheduled", name, count)

    def started(self, calls: list[ClaimedCall]) -> None:
        lateness = [
            (call.started_at - call.due_at).total_seconds() if call.started_at else 0.0
            for call in calls
        ]
        self.stats.started(lateness)
        metrics = self.metrics
        if metrics is not None:
            for call, seconds in zip(calls, lateness, strict=True):
                metrics.count("started", call.name)
                metrics.observe("lateness", call.name, seconds)

    def ended(self, outcomes: list[Outcome]) -> None:
        succeeded = failed = interrupted = 0
        for outcome in outcomes:
            state = outcome.state
            if state == "done":
                succeeded += 1
            elif state in _FAILED:
                failed += 1
            elif state == "interrupted":
                interrupted += 1
        self.stats.ended(succeeded, failed, interrupted)
        metrics = self.metrics
        if metrics is not None:
            for outcome in outcomes:
                state, name = outcome.state, outcome.call.name
                if state == "done":
                    metrics.count("completed", name)
                elif state == "interrupted":
                    metrics.count("interrupted", name)
                elif state in _FAILED:
                    metrics.count("failed", name)
                if state in _RETRIED:
                    metrics.count("retried", name)

    def invoked(self, call: ClaimedCall, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe("duration", call.name, seconds)
