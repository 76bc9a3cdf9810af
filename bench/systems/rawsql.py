"""The ceiling: plain SQL on the same PostgreSQL, no library at all.

The claim deletes the oldest due rows, with its index scan starting at a remembered
frontier (the earliest (due time, id) of the worker's last batch) instead of at the head
of the index, which dead entries crowd while a long transaction holds back vacuum. It
ignores all that makes a scheduler hard (calls scheduled behind the frontier, retries,
several kinds of work): a ceiling, not a design.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing.synchronize
import time
from datetime import UTC, datetime

import asyncpg

from bench.counter import Counter
from bench.systems import execute, one_at_a_time, paced

NAME = "raw SQL"

CLAIM = """
DELETE FROM raw_jobs WHERE id IN (
    SELECT id FROM raw_jobs WHERE due_at <= now() AND (due_at, id) >= ($2, $3)
    ORDER BY due_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
) RETURNING id, payload, due_at
"""
EARLIEST = (datetime(1, 1, 2, tzinfo=UTC), 0)


async def setup(dsn: str) -> None:
    await execute(
        dsn,
        "DROP TABLE IF EXISTS raw_jobs; CREATE TABLE raw_jobs "
        "(id bigserial PRIMARY KEY, due_at timestamptz NOT NULL, payload json);"
        "CREATE INDEX ON raw_jobs (due_at, id)",
    )


async def enqueue_due(dsn: str, n: int) -> None:
    await execute(
        dsn,
        (
            "INSERT INTO raw_jobs (due_at, payload) SELECT now() - interval '1 second', "
            "json_build_object('i', i) FROM generate_series(0, $1 - 1) AS i",
            n,
        ),
    )


async def enqueue_round(dsn: str, first: int, n: int) -> None:
    await execute(
        dsn,
        (
            "INSERT INTO raw_jobs (due_at, payload) SELECT now(), json_build_object('i', i) "
            f"FROM generate_series({int(first)}, {int(first)} + $1 - 1) AS i",
            n,
        ),
    )


async def schedule_steady(dsn: str, first: int, rate: int, seconds: int) -> None:
    """Calls first, first+1, ... due at once, ``rate`` a second for ``seconds``, in ten
    batches a second, each carrying the time it was scheduled (for lateness)."""
    conn = await asyncpg.connect(dsn)
    try:

        async def batch(start: int, size: int) -> None:
            await conn.execute(
                "INSERT INTO raw_jobs (due_at, payload) SELECT now(), json_build_object("
                "'i', i, 'due', extract(epoch FROM clock_timestamp()))"
                " FROM generate_series($1::bigint, $1::bigint + $2 - 1) AS i",
                start,
                size,
            )

        await paced(first, rate, seconds, batch)
    finally:
        await conn.close()


def worker(
    dsn: str, concurrency: int, counter: Counter, stop: multiprocessing.synchronize.Event
) -> None:
    async def run() -> None:
        # Planned for the frontier's value at every claim: a generic plan of the row
        # comparison may sort the whole table instead of scanning the index from it.
        conn = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": "force_custom_plan"})
        frontier = EARLIEST
        try:
            while not stop.is_set():
                rows = await conn.fetch(CLAIM, concurrency, *frontier)
                if not rows:
                    await asyncio.sleep(0.01)
                else:
                    frontier = min((row["due_at"], row["id"]) for row in rows)
                for row in rows:
                    data = json.loads(row["payload"])
                    counter.hit(int(data["i"]), float(data.get("due", 0.0)))
        finally:
            await conn.close()

    asyncio.run(run())


async def schedule_one_at_a_time(dsn: str, n: int, coroutines: int) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=coroutines, max_size=coroutines)
    try:
        return await one_at_a_time(
            n,
            coroutines,
            lambda i: pool.execute(
                "INSERT INTO raw_jobs (due_at, payload) VALUES (now() + interval '1 day', $1)",
                f'{{"i": {i}}}',
            ),
        )
    finally:
        await pool.close()


async def schedule_batch(dsn: str, n: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.executemany(
            "INSERT INTO raw_jobs (due_at, payload) VALUES (now() + interval '1 day', $1)",
            [(f'{{"i": {i}}}',) for i in range(n)],
        )
        return time.perf_counter() - started
    finally:
        await conn.close()
