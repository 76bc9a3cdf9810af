"""What a claim that PostgreSQL can write as a HOT update would cost: a probe, not a phase
(docs/performance.md, "What a HOT claim would buy").

In the floor phase's harness (bench/floor.py: W bare loops, batches of 10, server CPU
from /proc), three claims on a table like future_calls:

- ``ours``: this project's claim statement on its own table;
- ``hot``: a copy of the table with only its primary key and the due index, claimed by an
  update of columns no index reads (owner, start time, attempts), the previous batch
  deleted in the same statement; with ``--fillfactor`` (50 leaves room on every page for
  the claim's new row version, which a HOT update needs);
- ``delete``: our frontier scan on our table, deleting as it claims (one write per call,
  as the raw-SQL ceiling does).

    DATABASE_URL=... python -m bench.hot_claim [--fillfactor 50] [--calls 40000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import types
from typing import Any

import asyncpg

from bench import floor
from bench.systems import execute
from bench.systems import futurecalls as ours

SCAN = """
SELECT id FROM {table}
WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL AND priority = 0
  AND due_at <= now() AND name = ANY ($4::text[]) {unclaimed}
  AND (due_at, id) >= (coalesce($5::timestamptz, '-infinity'), coalesce($6::bigint, 0))
ORDER BY due_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
HOT_CLAIM = f"""
WITH done AS (
    DELETE FROM hot_calls AS c
    WHERE c.id = ANY ($2::bigint[]) AND c.owner IS NOT DISTINCT FROM $3
)
UPDATE hot_calls AS c SET owner = $3, started_at = now(), attempts = c.attempts + 1
WHERE c.id = ANY (ARRAY({SCAN.format(table="hot_calls", unclaimed="AND owner IS NULL")}))
RETURNING c.id, c.due_at, c.attempts
"""
DELETE_CLAIM = f"""
DELETE FROM future_calls AS c
WHERE c.id = ANY (ARRAY({SCAN.format(table="future_calls", unclaimed="")}))
  AND $2::bigint[] IS NOT NULL AND $3::integer IS NOT NULL
RETURNING c.id, c.due_at, c.attempts
"""


def hot_table(fillfactor: int) -> types.SimpleNamespace:
    async def setup(dsn: str) -> None:
        await ours.setup(dsn)  # future_calls migrated, for LIKE
        await execute(
            dsn,
            "DROP TABLE IF EXISTS hot_calls",
            "CREATE TABLE hot_calls (LIKE future_calls INCLUDING DEFAULTS INCLUDING IDENTITY)"
            f" WITH (fillfactor = {int(fillfactor)})",
            "ALTER TABLE hot_calls ADD PRIMARY KEY (id)",
            "CREATE INDEX ON hot_calls (due_at, id) WHERE state = 'scheduled'",
        )

    async def enqueue_due(dsn: str, n: int) -> None:
        await execute(
            dsn,
            (
                "INSERT INTO hot_calls (name, payload, due_at) SELECT 'hit', "
                "json_build_object('i', i), now() - interval '1 second' "
                "FROM generate_series(0, $1 - 1) AS i",
                n,
            ),
        )

    return types.SimpleNamespace(NAME="hot", setup=setup, enqueue_due=enqueue_due)


def bare_loop(statement: str) -> Any:
    async def loop(conn: asyncpg.Connection, owner: int) -> tuple[int, int]:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute("SET enable_sort = off; SET jit = off")  # as the dispatcher
        prepared = await conn.prepare(statement)

        async def claim(done: list[asyncpg.Record], frontier: tuple[Any, Any]) -> list[Any]:
            return await prepared.fetch(
                floor.BATCH, [row["id"] for row in done], owner, ["hit"], *frontier
            )

        return await floor._claim_until_empty(claim, (None, None))

    return loop


async def _loop_ours(conn: asyncpg.Connection, owner: int) -> tuple[int, int]:
    from fastapi_futurecalls.sql import QUERIES

    await conn.execute(QUERIES["tune_dispatcher_session"])
    return await floor.LOOPS["futurecalls"](conn, owner)


async def hot_updates(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'hot_calls'"
        )
        return (row["n_tup_upd"], row["n_tup_hot_upd"]) if row else (0, 0)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fillfactor", type=int, default=50)
    parser.add_argument("--calls", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    dsn = os.environ["DATABASE_URL"]
    ours_table = types.SimpleNamespace(NAME="ours", setup=ours.setup, enqueue_due=ours.enqueue_due)
    claims = {
        "ours": (ours_table, _loop_ours),
        "hot": (hot_table(args.fillfactor), bare_loop(HOT_CLAIM)),
        "delete": (ours_table, bare_loop(DELETE_CLAIM)),
    }
    for key, (table, loop) in claims.items():
        floor.LOOPS[key] = loop
        runs = [floor._once(table, key, dsn, args.calls, args.workers) for _ in range(args.runs)]
        rates = ", ".join(f"{run['calls_per_s']:,.0f}" for run in runs)
        cpu = ", ".join(f"{run['server_us_per_call'] or 0:.1f}" for run in runs)
        extra = ""
        if key == "hot":
            updates, hot = asyncio.run(hot_updates(dsn))
            extra = f", last run {hot:,} of {updates:,} updates HOT (fillfactor {args.fillfactor})"
        print(f"{key:7} W={args.workers}: {rates} calls/s; server {cpu} us/call{extra}")


if __name__ == "__main__":
    main()
