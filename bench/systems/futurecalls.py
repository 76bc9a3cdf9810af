"""This project, through its public API."""

from __future__ import annotations

import asyncio
import multiprocessing.synchronize
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

from bench.counter import Counter
from bench.systems import execute, one_at_a_time, paced
from fastapi_futurecalls import FutureCall, FutureCalls, PlannedCall, Session

NAME = "fastapi-futurecalls"
ROOT = Path(__file__).resolve().parents[2]


class Job(BaseModel):
    i: int
    due: float = 0.0


def futurecalls(dsn: str, counter: Counter | None = None, **kwargs: object) -> FutureCalls:
    class Hit(FutureCall[Job]):
        async def invoke(self, session: Session, object: Job | None) -> None:
            assert object is not None and counter is not None
            counter.hit(object.i, object.due)

    fc = FutureCalls(dsn, **kwargs)  # type: ignore[arg-type]
    fc.register_future_call(Hit(), "hit")
    return fc


async def setup(dsn: str) -> None:
    env = {**os.environ, "DATABASE_URL": dsn}
    subprocess.run(  # noqa: ASYNC221 - once, before anything is timed
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    await execute(dsn, "TRUNCATE future_calls")


async def enqueue_due(dsn: str, n: int, trace_context: str | None = None) -> None:
    """n calls already due (a bulk insert: enqueueing is not what this step measures),
    each scheduled in ``trace_context`` if given."""
    await execute(
        dsn,
        (
            "INSERT INTO future_calls (name, payload, due_at, trace_context) "
            "SELECT 'hit', json_build_object('i', i), now() - interval '1 second', $2::jsonb "
            "FROM generate_series(0, $1 - 1) AS i",
            n,
            trace_context,
        ),
    )


async def enqueue_round(dsn: str, first: int, n: int) -> None:
    """Calls first..first+n-1, due now, through the batch API (the mvcc phase)."""
    async with futurecalls(dsn, execution_enabled=False) as fc:
        await fc.session().future_calls_batch(
            [PlannedCall("hit", Job(i=i)) for i in range(first, first + n)]
        )


async def schedule_steady(dsn: str, first: int, rate: int, seconds: int) -> None:
    """Calls first, first+1, ... due at once, ``rate`` a second for ``seconds``, in ten
    batches a second, each carrying the time it was scheduled (for lateness)."""
    async with futurecalls(dsn, execution_enabled=False) as fc:
        session = fc.session()

        async def batch(start: int, size: int) -> None:
            now = time.time()
            await session.future_calls_batch(
                [PlannedCall("hit", Job(i=i, due=now)) for i in range(start, start + size)]
            )

        await paced(first, rate, seconds, batch)


def worker(
    dsn: str,
    concurrency: int,
    counter: Counter,
    stop: multiprocessing.synchronize.Event,
    observed: str = "",
) -> None:
    """``observed``: "" (no metrics, no tracing), or "api" (metrics, and spans through
    the OpenTelemetry API with no SDK installed), or "sampled" (metrics, and the SDK
    sampling 1 % of the runs' traces), or "sdk" (metrics, and the SDK recording every
    span); the SDK hands its spans to a batch processor whose exporter drops them."""

    async def run() -> None:
        fc = futurecalls(
            dsn,
            counter,
            concurrency_limit=concurrency,
            shutdown_grace=5,
            tracing=bool(observed),
            tracer_provider=_provider(observed) if observed in ("sampled", "sdk") else None,
        )
        if observed:
            fc.metrics_router()
        async with fc:
            await asyncio.to_thread(stop.wait)

    asyncio.run(run())


def _provider(observed: str) -> object:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    class Dropped(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    sampler = ParentBased(TraceIdRatioBased(0.01)) if observed == "sampled" else ALWAYS_ON
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    return provider


async def schedule_one_at_a_time(dsn: str, n: int, coroutines: int) -> float:
    async with futurecalls(dsn, execution_enabled=False, pool_size=coroutines) as fc:
        session = fc.session()
        return await one_at_a_time(
            n,
            coroutines,
            lambda i: session.future_call_with_delay("hit", Job(i=i), timedelta(days=1)),
        )


async def schedule_batch(dsn: str, n: int) -> float:
    async with futurecalls(dsn, execution_enabled=False) as fc:
        started = time.perf_counter()
        await fc.session().future_calls_batch(
            [PlannedCall("hit", Job(i=i), delay=timedelta(days=1)) for i in range(n)]
        )
        return time.perf_counter() - started


async def schedule_ahead(dsn: str, n: int, ahead: float) -> None:
    """Schedule n calls one at a time, each due ``ahead`` seconds after it is scheduled."""
    async with futurecalls(dsn, execution_enabled=False) as fc:
        session = fc.session()
        for i in range(n):
            due = time.time() + ahead
            await session.future_call_at_time(
                "hit", Job(i=i, due=due), datetime.fromtimestamp(due, UTC)
            )
            await asyncio.sleep(0.02)


async def enqueue_far(dsn: str, n: int) -> None:
    """n calls pending a year ahead, ten per identifier."""
    await execute(
        dsn,
        (
            "INSERT INTO future_calls (name, payload, identifier, due_at) "
            "SELECT 'hit', json_build_object('i', i), 'far-' || (i / 10), "
            "now() + interval '365 days' FROM generate_series(0, $1 - 1) AS i",
            n,
        ),
        "VACUUM ANALYZE future_calls",  # a table that size is vacuumed in production
    )


async def time_cancel(dsn: str, times: int) -> float:
    """Median milliseconds of cancel_future_call for identifiers of ten calls each (or none)."""
    async with futurecalls(dsn, execution_enabled=False) as fc:
        session = fc.session()
        spent = []
        for k in range(times):
            started = time.perf_counter()
            await session.cancel_future_call(f"far-{k * 7}")
            spent.append((time.perf_counter() - started) * 1000)
    return sorted(spent)[len(spent) // 2]
