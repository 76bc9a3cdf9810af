"""The ceiling: plain SQL on the same PostgreSQL, no library at all."""

from __future__ import annotations

import asyncio
import json
import multiprocessing.synchronize
import time

import asyncpg

from bench.counter import Counter
from bench.systems import execute, one_at_a_time

NAME = "raw SQL"

CLAIM = """
DELETE FROM raw_jobs WHERE id IN (
    SELECT id FROM raw_jobs WHERE due_at <= now() ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED
) RETURNING id, payload
"""


async def setup(dsn: str) -> None:
    await execute(
        dsn,
        "DROP TABLE IF EXISTS raw_jobs; CREATE TABLE raw_jobs "
        "(id bigserial PRIMARY KEY, due_at timestamptz NOT NULL, payload json);"
        "CREATE INDEX ON raw_jobs (due_at)",
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


def worker(
    dsn: str, concurrency: int, counter: Counter, stop: multiprocessing.synchronize.Event
) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while not stop.is_set():
                rows = await conn.fetch(CLAIM, concurrency)
                if not rows:
                    await asyncio.sleep(0.01)
                for row in rows:
                    counter.hit(int(json.loads(row["payload"])["i"]))
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
