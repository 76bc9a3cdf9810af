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
    from .tracing import Running, Tracing

# Outcome states by the metrics they count in. "scheduled": an attempt failed and is
# retried.
_COUNTED_AS: dict[str, tuple[str, ...]] = {
    "done": ("completed",),
    "scheduled": ("failed", "retried"),
    "failed": ("failed",),
    "interrupted": ("interrupted",),
    "snoozed": ("retried",),
    "released": (),
}


class Telemetry:
    """One FutureCalls' reporting: the dispatcher tells it of batches started and
    ended, the runner of each run (when :meth:`per_run` asks for it), the Session of
    calls scheduled."""

    def __init__(self) -> None:
        self.stats = RunStats()
        self.metrics: Metrics | None = None
        self.tracing: Tracing | None = None
        self._recording: Tracing | None = None
        self._flush_at = 0.0

    def per_run(self) -> Telemetry | None:
        """Self if each run is to be timed or traced, else None (the runner then skips
        both). Asked once per claimed batch: an SDK may be set up after start."""
        tracing = self.tracing
        self._recording = tracing if tracing is not None and tracing.recording else None
        if self.metrics is not None or self._recording is not None:
            return self
        return None

    def tick(self, now: float) -> None:
        """Hand counted runs to prometheus-client, about once a second."""
        if self.metrics is not None and now >= self._flush_at:
            self._flush_at = now + 1.0
            self.metrics.flush()

    def flush(self) -> None:
        if self.metrics is not None:
            self.metrics.flush()

    def scheduled(self, names: list[str]) -> None:
        if self.metrics is not None:  # at once: a web-only process has no loop to flush
            for name, count in Counter(names).items():
                self.metrics.count_now("scheduled", name, count)

    def started(self, calls: list[ClaimedCall]) -> None:
        # Never below 0: time travel (testing.run_due) starts calls before they are due.
        lateness = [
            max((call.started_at - call.due_at).total_seconds(), 0.0) if call.started_at else 0.0
            for call in calls
        ]
        self.stats.started(lateness)
        metrics = self.metrics
        if metrics is not None:
            for call, seconds in zip(calls, lateness, strict=True):
                figures = metrics.figures(call.name)
                figures.counts["started"] += 1
                figures.lateness.add(seconds)

    def ended(self, outcomes: list[Outcome]) -> None:
        succeeded = failed = interrupted = 0
        for outcome in outcomes:
            state = outcome.state
            if state == "done":
                succeeded += 1
            elif state == "scheduled" or state == "failed":  # "scheduled": to be retried
                failed += 1
            elif state == "interrupted":
                interrupted += 1
        self.stats.ended(succeeded, failed, interrupted)
        metrics = self.metrics
        if metrics is not None:
            for outcome in outcomes:
                counts = metrics.figures(outcome.call.name).counts
                for kind in _COUNTED_AS[outcome.state]:
                    counts[kind] += 1

    def start_run(self, call: ClaimedCall) -> Running | None:
        tracing = self._recording  # as per_run found it for this call's batch
        return tracing.start_run(call) if tracing is not None else None

    def end_run(
        self, call: ClaimedCall, span: Running | None, outcome: Outcome, seconds: float
    ) -> None:
        if span is not None:
            span.end(outcome)
        if self.metrics is not None:
            self.metrics.figures(call.name).duration.add(seconds)
