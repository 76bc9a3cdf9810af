"""PgQueuer (asyncpg), through its documented API.

Schema: ``Queries.install()`` / ``Queries.uninstall()`` (what ``pgq install`` /
``pgq uninstall`` run). Enqueue: ``Queries.enqueue`` with lists for a batch,
``execute_after`` (a timedelta added to the server's ``now()``) to schedule. Worker:
``QueueManager`` with one ``entrypoint`` and ``QueueManager.run``, stopped by setting
``QueueManager.shutdown``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing.synchronize
import time
from datetime import timedelta

import asyncpg
from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, Job, Queries, QueueManager

from bench.counter import Counter
from bench.systems import one_at_a_time, paced

NAME = "pgqueuer"
ENTRYPOINT = "hit"
LATER = timedelta(days=1)


def payload(i: int, due: float = 0.0) -> bytes:
    return json.dumps({"i": i, "due": due}).encode()


async def setup(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.uninstall()  # pgqueuer's own objects only, each DROP ... IF EXISTS
        await queries.install()
    finally:
        await conn.close()


async def enqueue_due(dsn: str, n: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).enqueue(
            [ENTRYPOINT] * n, [payload(i) for i in range(n)], [0] * n
        )
    finally:
        await conn.close()


async def enqueue_round(dsn: str, first: int, n: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).enqueue(
            [ENTRYPOINT] * n, [payload(i) for i in range(first, first + n)], [0] * n
        )
    finally:
        await conn.close()


async def schedule_steady(dsn: str, first: int, rate: int, seconds: int) -> None:
    """Calls first, first+1, ... due at once, ``rate`` a second for ``seconds``, in ten
    batches a second, each carrying the time it was scheduled (for lateness)."""
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))

        async def batch(start: int, size: int) -> None:
            now = time.time()
            await queries.enqueue(
                [ENTRYPOINT] * size,
                [payload(i, now) for i in range(start, start + size)],
                [0] * size,
            )

        await paced(first, rate, seconds, batch)
    finally:
        await conn.close()


def worker(
    dsn: str, concurrency: int, counter: Counter, stop: multiprocessing.synchronize.Event
) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            # A QueueManager alone, as `pgq run` accepts: PgQueuer would add a cron
            # SchedulerManager that polls its (here empty) schedule table every second.
            qm = QueueManager(Queries(AsyncpgDriver(conn)))

            @qm.entrypoint(ENTRYPOINT)
            async def hit(job: Job) -> None:
                data = json.loads(job.payload or b"{}")
                counter.hit(data["i"], data.get("due", 0.0))

            # Its default batch of `concurrency` (10) jobs per fetch. The per-worker cap is
            # `max_concurrent_tasks` (an entrypoint's `concurrency_limit` is fleet-wide),
            # which pgqueuer requires to be at least twice the batch: 20, the closest it
            # allows to 10 concurrent jobs. A cap of 10 would force batches of 5, slower.
            task = asyncio.create_task(
                qm.run(batch_size=concurrency, max_concurrent_tasks=2 * concurrency)
            )
            await asyncio.wait(
                (task, asyncio.ensure_future(asyncio.to_thread(stop.wait))),
                return_when=asyncio.FIRST_COMPLETED,
            )
            qm.shutdown.set()  # graceful: in-flight jobs finish, buffered statuses flush
            await task
        finally:
            await conn.close()

    asyncio.run(run())


async def schedule_one_at_a_time(dsn: str, n: int, coroutines: int) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=coroutines, max_size=coroutines)
    try:
        queries = Queries(AsyncpgPoolDriver(pool))
        return await one_at_a_time(
            n, coroutines, lambda i: queries.enqueue(ENTRYPOINT, payload(i), execute_after=LATER)
        )
    finally:
        await pool.close()


async def schedule_batch(dsn: str, n: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await Queries(AsyncpgDriver(conn)).enqueue(
            [ENTRYPOINT] * n, [payload(i) for i in range(n)], [0] * n, [LATER] * n
        )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def schedule_ahead(dsn: str, n: int, ahead: float) -> None:
    """Schedule n calls one at a time, each due ``ahead`` seconds after it is scheduled."""
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        for i in range(n):
            due = time.time() + ahead
            # execute_after is relative to the server's now(), at microsecond precision.
            await queries.enqueue(
                ENTRYPOINT, payload(i, due), execute_after=timedelta(seconds=ahead)
            )
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
