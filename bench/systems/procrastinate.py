"""Procrastinate (psycopg 3), through its documented API.

Schema: ``App.schema_manager.apply_schema_async()``; procrastinate has no uninstall, so
setup drops the ``procrastinate_*`` objects itself first. Enqueue: ``Task.defer_async``
and ``Task.batch_defer_async``, scheduled with ``Task.configure(schedule_at=...)``.
Worker: ``App.run_worker_async(concurrency=..., wait=True)``, stopped by cancelling it
(the worker turns that into its graceful stop: running jobs finish, it unregisters).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing.synchronize
import time
from datetime import UTC, datetime, timedelta

import psycopg
from procrastinate import App, PsycopgConnector
from procrastinate.types import JSONDict

from bench.counter import Counter
from bench.systems import one_at_a_time, paced

NAME = "procrastinate"

DROP = """
DO $$
DECLARE r record;
BEGIN
    DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers,
        procrastinate_jobs, procrastinate_workers CASCADE;
    FOR r IN SELECT oid::regprocedure AS fn FROM pg_proc
            WHERE starts_with(proname, 'procrastinate_')
                AND pronamespace = current_schema()::regnamespace
    LOOP
        EXECUTE 'DROP FUNCTION ' || r.fn || ' CASCADE';
    END LOOP;
    DROP TYPE IF EXISTS procrastinate_job_status, procrastinate_job_event_type,
        procrastinate_job_to_defer_v1 CASCADE;
END $$
"""


def app(dsn: str, counter: Counter | None = None, pool_size: int = 4) -> App:
    # pool_size 4 is psycopg_pool's default (min_size=4, max_size=min_size).
    connector = PsycopgConnector(conninfo=dsn, min_size=pool_size, max_size=pool_size)
    application = App(connector=connector)

    @application.task(name="hit")
    async def hit(i: int, due: float = 0.0) -> None:
        assert counter is not None
        counter.hit(i, due)

    return application


async def setup(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(DROP)
    async with app(dsn).open_async() as application:
        await application.schema_manager.apply_schema_async()


async def enqueue_due(dsn: str, n: int) -> None:
    async with app(dsn).open_async() as application:
        jobs: list[JSONDict] = [{"i": i} for i in range(n)]
        await application.tasks["hit"].batch_defer_async(*jobs)


async def enqueue_round(dsn: str, first: int, n: int) -> None:
    async with app(dsn).open_async() as application:
        jobs: list[JSONDict] = [{"i": i} for i in range(first, first + n)]
        await application.tasks["hit"].batch_defer_async(*jobs)


async def schedule_steady(dsn: str, first: int, rate: int, seconds: int) -> None:
    """Calls first, first+1, ... due at once, ``rate`` a second for ``seconds``, in ten
    batches a second, each carrying the time it was scheduled (for lateness)."""
    async with app(dsn).open_async() as application:
        hit = application.tasks["hit"]

        async def batch(start: int, size: int) -> None:
            now = time.time()
            jobs: list[JSONDict] = [{"i": i, "due": now} for i in range(start, start + size)]
            await hit.batch_defer_async(*jobs)

        await paced(first, rate, seconds, batch)


def worker(
    dsn: str, concurrency: int, counter: Counter, stop: multiprocessing.synchronize.Event
) -> None:
    async def run() -> None:
        async with app(dsn, counter).open_async() as application:
            task = asyncio.create_task(
                application.run_worker_async(concurrency=concurrency, wait=True)
            )
            await asyncio.wait(
                (task, asyncio.ensure_future(asyncio.to_thread(stop.wait))),
                return_when=asyncio.FIRST_COMPLETED,
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(run())


async def schedule_one_at_a_time(dsn: str, n: int, coroutines: int) -> float:
    # Non-default: one connection per coroutine, as the other systems' pools have (the
    # psycopg pool's default is 4).
    async with app(dsn, pool_size=coroutines).open_async() as application:
        hit = application.tasks["hit"]
        return await one_at_a_time(
            n, coroutines, lambda i: hit.configure(schedule_in={"days": 1}).defer_async(i=i)
        )


async def schedule_batch(dsn: str, n: int) -> float:
    async with app(dsn).open_async() as application:
        started = time.perf_counter()
        later = datetime.now(UTC) + timedelta(days=1)
        jobs: list[JSONDict] = [{"i": i} for i in range(n)]
        await application.tasks["hit"].configure(schedule_at=later).batch_defer_async(*jobs)
        return time.perf_counter() - started


async def schedule_ahead(dsn: str, n: int, ahead: float) -> None:
    """Schedule n calls one at a time, each due ``ahead`` seconds after it is scheduled."""
    async with app(dsn).open_async() as application:
        hit = application.tasks["hit"]
        for i in range(n):
            due = time.time() + ahead
            # scheduled_at is a timestamptz, at microsecond precision.
            await hit.configure(schedule_at=datetime.fromtimestamp(due, UTC)).defer_async(
                i=i, due=due
            )
            await asyncio.sleep(0.02)
