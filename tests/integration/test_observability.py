"""Traces (OpenTelemetry SDK, in-memory exporter), Prometheus metrics and the run
statistics, against a real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from fastapi_futurecalls import FutureCall, FutureCalls, PlannedCall, RetryLater, Session
from fastapi_futurecalls.stats import LATENESS_BUCKETS
from fastapi_futurecalls.testing import run_due
from tests.support import wait_for


class Note(BaseModel):
    text: str = ""


class Fine(FutureCall[Note]):
    async def invoke(self, session: Session, object: Note | None) -> None:
        tracer = PROVIDER.get_tracer("app")
        with tracer.start_as_current_span("inside"):
            pass


class Broken(FutureCall[Note]):
    async def invoke(self, session: Session, object: Note | None) -> None:
        raise ValueError("no such user")


class Flaky(FutureCall[Note]):
    max_attempts = 2
    retry_backoff = timedelta(milliseconds=10)

    async def invoke(self, session: Session, object: Note | None) -> None:
        if session.call.attempt == 1:
            raise RuntimeError("first attempt fails")


class Later(FutureCall[Note]):
    async def invoke(self, session: Session, object: Note | None) -> None:
        if session.call.attempt == 1:
            raise RetryLater(timedelta(0))


EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


def register(fc: FutureCalls) -> FutureCalls:
    fc.register_future_call(Fine(), "fine")
    fc.register_future_call(Broken(), "broken")
    fc.register_future_call(Flaky(), "flaky")
    fc.register_future_call(Later(), "later")
    return fc


@pytest.fixture
def spans() -> Callable[[], list[ReadableSpan]]:
    EXPORTER.clear()
    return lambda: list(EXPORTER.get_finished_spans())


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_a_run_a_week_later_links_to_the_span_that_scheduled_it(
    make_futurecalls, db: asyncpg.Connection, spans
):
    fc = register(make_futurecalls(execution_enabled=False, tracer_provider=PROVIDER))
    async with fc:
        with PROVIDER.get_tracer("app").start_as_current_span("POST /signup") as request:
            call_id = await fc.session().future_call_with_delay(
                "fine", Note(), timedelta(days=7), identifier="drip-1"
            )
        stored = json.loads(await db.fetchval("SELECT trace_context FROM future_calls"))
        assert set(stored) >= {"traceparent"}
        result = await run_due(fc, timedelta(days=8))
        assert result.completed == 1

    (send,) = named(spans(), "send fine")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert send.attributes is not None
    assert send.attributes["messaging.destination.name"] == "fine"
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.message.id"] == str(call_id)
    assert f"{send.context.span_id:016x}" in stored["traceparent"]

    (process,) = named(spans(), "process fine")
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is None  # a trace of its own, linked to the request's
    assert process.context.trace_id != send.context.trace_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == str(call_id)
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["futurecalls.identifier"] == "drip-1"
    assert process.status.status_code is StatusCode.UNSET
    (inside,) = named(spans(), "inside")  # what invoke does is part of the run's trace
    assert inside.parent is not None and inside.parent.span_id == process.context.span_id


async def test_failures_mark_the_run_span_and_retries_link_to_the_same_scheduling(
    make_futurecalls, spans
):
    fc = register(make_futurecalls(execution_enabled=False, tracer_provider=PROVIDER))
    async with fc:
        with PROVIDER.get_tracer("app").start_as_current_span("request"):
            await fc.session().future_call_with_delay("broken", Note(), timedelta(0))
            await fc.session().future_call_with_delay("flaky", Note(), timedelta(0))
        await run_due(fc, timedelta(seconds=5))

    (broken,) = named(spans(), "process broken")
    assert broken.status.status_code is StatusCode.ERROR
    assert broken.status.description == "ValueError: no such user"
    assert broken.attributes is not None and broken.attributes["error.type"] == "ValueError"
    first, second = sorted(
        named(spans(), "process flaky"),
        key=lambda span: span.attributes["futurecalls.attempt"],  # type: ignore[index]
    )
    assert first.status.status_code is StatusCode.ERROR
    assert second.status.status_code is StatusCode.UNSET
    (send,) = named(spans(), "send flaky")
    assert first.links[0].context.span_id == second.links[0].context.span_id
    assert first.links[0].context.span_id == send.context.span_id


async def test_a_batch_is_one_span_whose_context_every_call_of_it_keeps(
    make_futurecalls, db: asyncpg.Connection, spans
):
    fc = register(make_futurecalls(execution_enabled=False, tracer_provider=PROVIDER))
    async with fc:
        with PROVIDER.get_tracer("app").start_as_current_span("request"):
            await fc.session().future_calls_batch(
                [PlannedCall("fine", Note()), PlannedCall("broken", Note())]
            )
    (batch,) = named(spans(), "send batch")
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 2
    contexts = await db.fetch(
        "SELECT trace_context->>'traceparent' AS tp FROM future_calls WHERE trace_context "
        "IS NOT NULL"
    )
    assert len(contexts) == 2 and contexts[0]["tp"] == contexts[1]["tp"]


async def test_tracing_off_stores_no_context_and_makes_no_span(
    make_futurecalls, db: asyncpg.Connection, spans
):
    fc = register(
        make_futurecalls(execution_enabled=False, tracing=False, tracer_provider=PROVIDER)
    )
    async with fc:
        with PROVIDER.get_tracer("app").start_as_current_span("request"):
            await fc.session().future_call_with_delay("fine", Note(), timedelta(0))
        assert await db.fetchval("SELECT trace_context FROM future_calls") is None
        assert (await run_due(fc)).completed == 1
    assert [span.name for span in spans()] == ["request", "inside"]  # the app's own only


async def test_scheduled_total_counts_only_calls_stored(
    make_futurecalls, db: asyncpg.Connection, spans
):
    """A schedule-once call that keeps the pending one stores nothing, so it counts
    nothing (its span says so); one that replaces it stores a call, and counts."""
    fc = register(make_futurecalls(execution_enabled=False, tracer_provider=PROVIDER))
    app = FastAPI()
    app.include_router(fc.metrics_router())
    async with fc:
        session = fc.session()
        later = timedelta(days=1)
        first = await session.future_call_with_delay("fine", Note(), later, "once")
        kept = await session.future_call_with_delay("fine", Note(), later, "once", if_exists="skip")
        assert kept == first
        await session.future_call_with_delay("fine", Note(), later, "once", if_exists="replace")
        got = await scrape(app)
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 1
    assert got[("futurecalls_scheduled_total", (("name", "fine"),))] == 2
    sends = named(spans(), "send fine")
    assert [(span.attributes or {}).get("futurecalls.kept_pending") for span in sends] == [
        None,
        True,
        None,
    ]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def scrape(app: FastAPI, path: str = "/metrics") -> dict[Any, float]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_metrics_count_runs_by_name_and_read_the_gauges_from_the_database(
    make_futurecalls, db: asyncpg.Connection
):
    fc = register(make_futurecalls())
    app = FastAPI()
    app.include_router(fc.metrics_router())
    async with fc:
        session = fc.session()
        for name in ("fine", "fine", "broken", "flaky", "later"):
            await session.future_call_with_delay(name, Note(), timedelta(0))
        await session.future_call_with_delay("fine", Note(), timedelta(days=1))

        async def only_the_later_one_left() -> bool:
            left = await db.fetchval("SELECT count(*) FROM future_calls WHERE state <> 'failed'")
            return bool(left == 1)

        await wait_for(only_the_later_one_left)
        got = await scrape(app)

    def value(metric: str, **labels: str) -> float:
        return got.get((metric, tuple(sorted(labels.items()))), 0.0)

    assert value("futurecalls_scheduled_total", name="fine") == 3
    assert value("futurecalls_started_total", name="fine") == 2
    assert value("futurecalls_completed_total", name="fine") == 2
    assert value("futurecalls_failed_total", name="broken") == 1
    assert value("futurecalls_completed_total", name="broken") == 0
    assert value("futurecalls_started_total", name="flaky") == 2
    assert value("futurecalls_failed_total", name="flaky") == 1
    assert value("futurecalls_retried_total", name="flaky") == 1
    assert value("futurecalls_completed_total", name="flaky") == 1
    assert value("futurecalls_retried_total", name="later") == 1
    assert value("futurecalls_lateness_seconds_count", name="fine") == 2
    assert value("futurecalls_lateness_seconds_bucket", name="fine", le="+Inf") == 2
    assert value("futurecalls_invoke_duration_seconds_count", name="later") == 2
    assert value("futurecalls_calls", state="scheduled") == 1
    assert value("futurecalls_calls", state="failed") == 1
    assert value("futurecalls_calls", state="running") == 0
    assert value("futurecalls_oldest_due_age_seconds") == 0


async def test_the_oldest_due_age_is_of_calls_due_and_not_started_only(
    make_futurecalls, db: asyncpg.Connection
):
    fc = register(make_futurecalls(execution_enabled=False))
    app = FastAPI()
    app.include_router(fc.metrics_router(path="/internal/metrics"))
    async with fc:
        session = fc.session()
        await session.future_call_with_delay("fine", Note(), timedelta(days=30))
        await session.future_call_with_delay("fine", Note(), timedelta(0))
        await db.execute(
            "UPDATE future_calls SET due_at = now() - interval '90 seconds'"
            " WHERE due_at < now() + interval '1 day'"
        )
        age = (await scrape(app, "/internal/metrics"))["futurecalls_oldest_due_age_seconds", ()]
        assert 90 <= age < 120
        await session.pause_future_calls("fine")
        paused = await scrape(app, "/internal/metrics")
        assert paused["futurecalls_oldest_due_age_seconds", ()] == 0
        assert paused["futurecalls_calls", (("state", "scheduled"),)] == 2


async def test_runs_add_up_in_the_statistics_table(make_futurecalls, db: asyncpg.Connection):
    fc = register(make_futurecalls(poll_interval=0.2))
    async with fc:
        session = fc.session()
        await session.future_calls_batch(
            [PlannedCall("fine", Note()) for _ in range(20)] + [PlannedCall("broken", Note())]
        )

        async def all_recorded() -> bool:
            ended = await db.fetchval(
                "SELECT coalesce(sum(succeeded), 0) + coalesce(sum(failed), 0)"
                " FROM future_calls_stats"
            )
            return bool(ended == 21)

        await wait_for(all_recorded)
    row = await db.fetchrow(
        "SELECT sum(started) AS started, sum(succeeded) AS succeeded, sum(failed) AS failed,"
        " array_agg(lateness) AS lateness FROM future_calls_stats"
    )
    assert (row["started"], row["succeeded"], row["failed"]) == (21, 20, 1)
    buckets = [sum(column) for column in zip(*row["lateness"], strict=True)]
    assert len(buckets) == len(LATENESS_BUCKETS) and sum(buckets) == 21


async def test_each_occurrence_of_a_recurring_call_links_to_the_span_that_set_it_up(
    make_futurecalls, spans
):
    fc = register(make_futurecalls(execution_enabled=False, tracer_provider=PROVIDER))
    async with fc:
        with PROVIDER.get_tracer("app").start_as_current_span("startup"):
            await fc.session().future_call_recurring(
                "fine", Note(), identifier="hourly", every=timedelta(hours=1)
            )
        assert (await run_due(fc, timedelta(hours=3, minutes=1))).completed == 3
    (send,) = named(spans(), "send fine")
    runs = named(spans(), "process fine")
    assert len(runs) == 3
    assert all(
        [link.context.span_id for link in run.links] == [send.context.span_id] for run in runs
    )
