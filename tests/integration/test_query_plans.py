"""Plan guards (as pgqueuer's query-plan regression tests): on a loaded table, the
dispatcher's statements, planned the way its connection plans them (generic plans),
reach the table through its indexes only, never by a sequential scan."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from fastapi_futurecalls.settings import Settings
from fastapi_futurecalls.sql import QUERIES
from fastapi_futurecalls.store import Store

ROWS = 50_000


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def plan_of(db: asyncpg.Connection, name: str, *args: Any) -> list[dict[str, Any]]:
    raw = await db.fetchval("EXPLAIN (FORMAT JSON) " + QUERIES[name], *args)
    return list(nodes(json.loads(raw)[0]["Plan"]))


def scans_of_the_table(plan: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(node type, index) of every node reading the table or one of its indexes."""
    return [
        (node["Node Type"], node.get("Index Name"))
        for node in plan
        if node.get("Relation Name") == "future_calls"
        or str(node.get("Index Name", "")).startswith("future_calls")
    ]


@pytest.fixture
async def loaded(db: asyncpg.Connection) -> asyncpg.Connection:
    """Mostly calls due in the future, some due now, a few running, and chains."""
    await db.execute(
        "INSERT INTO future_calls (name, payload, due_at)"
        " SELECT 'record', '{\"n\": 1}', now() + g * interval '1 second'"
        " FROM generate_series(1, $1) AS g",
        ROWS,
    )
    await db.execute(
        "INSERT INTO future_calls (name, due_at) SELECT 'record', now() - interval '1 hour'"
        " FROM generate_series(1, 500)"
    )
    await db.execute(
        "INSERT INTO future_calls (name, due_at, state, owner, attempts, started_at)"
        " SELECT 'record', now(), 'running', g % 7, 1, now() FROM generate_series(1, 50) AS g"
    )
    await db.execute(
        "INSERT INTO future_calls (name, identifier, due_at, every)"
        " SELECT 'record', 'chain' || g, now() + interval '1 day', interval '1 hour'"
        " FROM generate_series(1, 100) AS g"
    )
    await db.execute("ANALYZE future_calls")
    await db.execute("SET plan_cache_mode = force_generic_plan")  # as the dispatcher does
    return db


def claim(
    frontier: tuple[datetime | None, int | None] = (None, None),
    limits: dict[str, int] | None = None,
    free: int = 10,
) -> tuple[str, tuple[Any, ...]]:
    """The claim statement and its parameters for a dispatcher of "record" (and of
    ``limits``'s names, which takes the variant with fleet limits)."""
    empty: list[Any] = []
    arguments = (free, 1, timedelta(0), *[empty] * 6, ["record"], *frontier, empty)
    if not limits:
        return "claim", arguments
    return "claim_fleet_limits", (*arguments, list(limits), list(limits.values()))


@pytest.mark.parametrize("frontier", [(None, None), (datetime.now(UTC), 25_000)])
@pytest.mark.parametrize("limits", [None, {"capped": 3}])
async def test_the_claim_and_its_look_ahead_use_the_indexes(
    loaded: asyncpg.Connection,
    frontier: tuple[datetime | None, int | None],
    limits: dict[str, int] | None,
):
    statement, arguments = claim(frontier, limits)
    plan = await plan_of(loaded, statement, *arguments)
    # The claim's scan starts at the frontier: a bound of the index scan, not a filter.
    claim_scans = [
        node
        for node in plan
        if node.get("Index Name") == "future_calls_due_idx"
        and "ROW(due_at, id)" in node.get("Index Cond", "")
    ]
    assert claim_scans, [(n.get("Index Name"), n.get("Index Cond")) for n in plan]
    scans = scans_of_the_table(plan)
    assert scans, plan
    assert all(kind != "Seq Scan" for kind, _ in scans), scans
    indexes = {index for _, index in scans}
    assert "future_calls_due_idx" in indexes  # the claim and the look-ahead
    assert "future_calls_chain_due_idx" in indexes  # the chains' look-ahead
    assert "future_calls_priority_idx" in indexes  # calls of priority above 0
    if limits:  # each limited name: its own due calls, and the slots its running calls hold
        assert {"future_calls_limited_due_idx", "future_calls_fleet_slot_key"} <= indexes


async def test_the_claim_uses_the_indexes_on_statistics_taken_mid_drain(db: asyncpg.Connection):
    """Statistics taken while a drain is under way (as autovacuum's analyse does) once led
    the check for due calls a claim skipped to read the whole table: a plan free to read
    it in any order guessed it would find one at once. Under a held transaction that
    read every dead row of every call run since it began, on every idle claim."""
    calls, analysed_at = 20_000, 4_000
    await db.execute("ALTER TABLE future_calls SET (autovacuum_enabled = false)")
    try:
        await db.execute(
            "INSERT INTO future_calls (name, payload, due_at)"
            " SELECT 'record', '{\"n\": 1}', now() FROM generate_series(1, $1)",
            calls,
        )
        await db.execute("SET plan_cache_mode = force_generic_plan")
        statement = await db.prepare(QUERIES["claim"])
        done: list[asyncpg.Record] = []
        frontier: tuple[Any, Any] = (None, None)
        claimed = 0
        while True:  # claim every call, recording the previous batch as done
            _, arguments = claim(frontier)
            ids, attempts = [r["id"] for r in done], [r["attempts"] for r in done]
            rows = await statement.fetch(*arguments[:3], ids, attempts, *arguments[5:])
            done = [row for row in rows if row["id"] is not None]
            if not done:
                break
            claimed += len(done)
            frontier = min((row["due_at"], row["id"]) for row in done)
            if claimed == analysed_at:
                await db.execute("ANALYZE future_calls")
        assert claimed == calls
        name, arguments = claim(frontier)
        plan = await plan_of(db, name, *arguments)
    finally:
        await db.execute("ALTER TABLE future_calls RESET (autovacuum_enabled)")
    scans = scans_of_the_table(plan)
    assert scans and all(kind != "Seq Scan" for kind, _ in scans), scans
    from_the_frontier = [
        node
        for node in plan
        if node.get("Index Name") == "future_calls_due_idx"
        and "ROW(due_at, id)" in node.get("Index Cond", "")
    ]
    assert len(from_the_frontier) == 2, scans  # the claim, and its check for skipped calls


BURST = 3_000


@pytest.fixture
async def analysed_while_empty(db: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """Autovacuum's analyse often runs while the queue is empty: it then records no live
    rows, though the table still holds pages. Then a burst of BURST due calls."""
    insert = (
        "INSERT INTO future_calls (name, payload, due_at)"
        " SELECT 'record', '{\"n\": 1}', now() FROM generate_series(1, $1)"
    )
    await db.execute("ALTER TABLE future_calls SET (autovacuum_enabled = false)")
    try:
        await db.execute(insert, BURST)
        await db.execute("ANALYZE future_calls")  # while calls were pending
        await db.execute("UPDATE future_calls SET state = 'running', owner = 1")
        await db.execute("DELETE FROM future_calls")  # run and done: the pages stay
        await db.execute("ANALYZE future_calls")
        assert await db.fetchval(
            "SELECT reltuples = 0 AND relpages > 0 FROM pg_class WHERE relname = 'future_calls'"
        )
        await db.execute(insert, BURST)
        yield db
    finally:
        await db.execute("ALTER TABLE future_calls RESET (autovacuum_enabled)")


def rows_read(plan: list[dict[str, Any]]) -> int:
    """Rows (index entries included) that the plan's scans of the table returned."""
    return sum(
        node["Actual Rows"] * node["Actual Loops"]
        for node in plan
        if node.get("Relation Name") == "future_calls"
        or str(node.get("Index Name", "")).startswith("future_calls")
    )


async def test_the_claim_reads_in_due_order_on_statistics_taken_when_no_call_was_pending(
    analysed_while_empty: asyncpg.Connection,
):
    """Planned on such statistics, the claim once read every pending call of the burst
    through a bitmap and sorted them to take ten (a burst of 20,000 drained at a fifth of
    its rate); on the dispatcher's session it walks the due index in order."""
    db = analysed_while_empty
    await db.execute(QUERIES["tune_dispatcher_session"])
    # Planned as the dispatcher's prepared statement is: generically (EXPLAIN with
    # parameters would plan for their values). EXECUTE takes literals only.
    await db.execute("PREPARE claim_once AS " + QUERIES["claim"])
    no_others = ", ".join(["'{}'"] * 6)
    raw = await db.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim_once"
        f"(10, 1, '0 s', {no_others}, '{{record}}', NULL, NULL, '{{}}')"
    )
    plan = list(nodes(json.loads(raw)[0]["Plan"]))
    read = max(
        node["Actual Rows"] for node in plan if node.get("Index Name") == "future_calls_due_idx"
    )
    assert read <= 50, f"the claim read {read} due calls to take 10: {scans_of_the_table(plan)}"
    assert await db.fetchval("SELECT count(*) FROM future_calls WHERE state = 'running'") == 10


async def test_statements_planned_on_an_empty_table_never_read_it_sequentially(
    db: asyncpg.Connection,
):
    """A dispatcher that connects to an empty, freshly vacuumed table (a new install, a
    queue emptied by TRUNCATE) plans its statements there, once, and on a table of no
    pages reading it whole is cheapest. The plans stay when a burst arrives: recording
    each batch then read the whole table (200,000 calls under a held transaction drained
    at 260 calls/s, each claim reading 7,200 pages, until autovacuum's analyse replanned
    it: bench/results/steady-2026-12-03-1325-warm-up.log)."""
    await db.execute("ALTER TABLE future_calls SET (autovacuum_enabled = false)")
    try:
        await db.execute("VACUUM ANALYZE future_calls")
        await db.execute(QUERIES["tune_dispatcher_session"])
        await db.execute("PREPARE claim_once AS " + QUERIES["claim"])
        await db.execute("PREPARE sweep_once AS " + QUERIES["sweep"])
        # The first execution plans them (generically, as the dispatcher's session does).
        nothing = ", ".join(["'{}'"] * 6)
        await db.execute(
            f"EXECUTE claim_once(10, 1, '0 s', {nothing}, '{{record}}', NULL, NULL, '{{}}')"
        )
        await db.execute("EXECUTE sweep_once(12345, 20.0, NULL, NULL)")
        await db.execute(
            "INSERT INTO future_calls (name, payload, due_at)"
            " SELECT 'record', '{\"n\": 1}', now() FROM generate_series(1, 20000)"
        )
        done = await db.fetch(
            "UPDATE future_calls SET state = 'running', owner = 1, attempts = 1"
            " WHERE id IN (SELECT id FROM future_calls ORDER BY id LIMIT 10) RETURNING id"
        )
        ids = ",".join(str(row["id"]) for row in done)
        claim = await db.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim_once"
            f"(10, 1, '0 s', '{{{ids}}}', '{{{','.join(['1'] * 10)}}}', '{{}}', '{{}}', '{{}}',"
            " '{}', '{record}', NULL, NULL, '{}')"
        )
        sweep = await db.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE sweep_once(12345, 20.0, NULL, NULL)"
        )
    finally:
        await db.execute("ALTER TABLE future_calls RESET (autovacuum_enabled)")
    for raw in (claim, sweep):
        plan = list(nodes(json.loads(raw)[0]["Plan"]))
        scans = scans_of_the_table(plan)
        assert all(kind != "Seq Scan" for kind, _ in scans), scans
        assert rows_read(plan) <= 100, scans
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 20000 - 10


@pytest.mark.parametrize(
    ("statement", "arguments"),
    [
        ("gauges", (100,)),
        ("behind_frontier", (["record"], datetime.now(UTC) + timedelta(hours=1), 0, None, None)),
    ],
)
async def test_the_pool_s_reads_stay_bounded_on_statistics_taken_when_no_call_was_pending(
    analysed_while_empty: asyncpg.Connection, dsn: str, statement: str, arguments: tuple[Any, ...]
):
    """The metrics gauges (counting up to a cap, on every scrape) and the maintenance's look
    behind the frontier run on the scheduling pool, as the dashboard's reads do (on its
    ``connection()``): each reads about what it returns, not the whole burst."""
    store = await Store.open(Settings(dsn=dsn))
    try:
        async with store.connection() as conn:
            raw = await conn.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES[statement], *arguments
            )
    finally:
        await store.close()
    plan = list(nodes(json.loads(raw)[0]["Plan"]))
    assert rows_read(plan) <= 300, scans_of_the_table(plan)


async def test_the_chain_lock_and_the_sweep_use_the_indexes(loaded: asyncpg.Connection):
    chains = scans_of_the_table(await plan_of(loaded, "lock_due_chains", 10, timedelta(0)))
    assert chains and all(kind != "Seq Scan" for kind, _ in chains), chains
    for frontier in ((None, None), (datetime.now(UTC), 25_000)):
        sweep = scans_of_the_table(await plan_of(loaded, "sweep", 12345, 20.0, *frontier))
        assert sweep and all(kind != "Seq Scan" for kind, _ in sweep), sweep
        assert "future_calls_due_idx" in {index for _, index in sweep}


async def test_the_maintenance_statements_use_the_indexes(loaded: asyncpg.Connection):
    orphans = scans_of_the_table(await plan_of(loaded, "park_orphans", 12345, 600.0, 1000))
    assert orphans and all(kind != "Seq Scan" for kind, _ in orphans), orphans
    behind = scans_of_the_table(
        await plan_of(loaded, "behind_frontier", ["record"], datetime.now(UTC), 25_000, None, None)
    )
    assert behind and all(kind != "Seq Scan" for kind, _ in behind), behind
    assert {index for _, index in behind} == {"future_calls_due_idx"}
    marked = scans_of_the_table(await plan_of(loaded, "mark_limited", ["capped"], 1000))
    assert marked and all(kind != "Seq Scan" for kind, _ in marked), marked
    pruned = scans_of_the_table(await plan_of(loaded, "prune", 86400.0, 1000))
    assert {index for _, index in pruned} >= {"future_calls_parked_idx"}, pruned
    assert all(kind != "Seq Scan" for kind, _ in pruned), pruned
    resumed = scans_of_the_table(await plan_of(loaded, "resume", "record", timedelta(0)))
    assert resumed and all(kind != "Seq Scan" for kind, _ in resumed), resumed


async def test_the_claim_stays_bounded_with_a_million_pending_calls(db: asyncpg.Connection):
    """1,000,000 calls due later, 20,000 due now (of priority 0, of a paused name and of
    a limited name whose slots are all taken): a claim reads a few pages, not the table."""
    await db.execute(
        "INSERT INTO future_calls (name, due_at)"
        " SELECT 'record', now() + g * interval '1 second' FROM generate_series(1, 1000000) AS g"
    )
    await db.execute(
        "INSERT INTO future_calls (name, due_at, priority, fleet_slot)"
        " SELECT n, now() - interval '1 hour' + g * interval '1 ms', g % 2,"
        "        CASE WHEN n = 'capped' THEN 0 END"
        " FROM generate_series(1, 10000) AS g, unnest(ARRAY['capped', 'record']) AS n"
    )
    await db.execute(
        "INSERT INTO future_calls (name, due_at, state, owner, attempts, fleet_slot)"
        " SELECT 'capped', now(), 'running', 1, 1, s FROM generate_series(1, 3) AS s"
    )
    await db.execute("VACUUM ANALYZE future_calls")
    await db.execute("SET plan_cache_mode = force_generic_plan")
    statement, arguments = claim(limits={"capped": 3})
    raw = await db.fetchval(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERIES[statement], *arguments
    )
    plan = json.loads(raw)[0]
    buffers = plan["Plan"]["Shared Hit Blocks"] + plan["Plan"].get("Shared Read Blocks", 0)
    claimed = await db.fetchval(
        "SELECT count(*) FROM future_calls"
        " WHERE state = 'running' AND owner = 1 AND fleet_slot IS NULL"
    )
    assert claimed == 10  # priority 1 first, capped's slots all taken
    assert (
        await db.fetchval("SELECT count(*) FROM future_calls WHERE owner = 1 AND priority = 1")
        == 10
    )
    assert buffers < 500, f"the claim read {buffers} pages"


async def test_idle_look_aheads_stay_bounded_on_statistics_taken_when_no_call_was_pending(
    analysed_while_empty: asyncpg.Connection,
):
    """A turn that drains what is due, and every tick's sweep, look up the next due time.
    On such statistics with the burst due later, each reads about one row: written as
    min(), each read the whole burst (6,000 and 12,000 rows and index entries): every
    idle turn and every tick would read all the calls scheduled ahead."""
    db = analysed_while_empty
    await db.execute("UPDATE future_calls SET due_at = now() + interval '1 hour'")
    await db.execute(QUERIES["tune_dispatcher_session"])
    await db.execute("PREPARE claim_once AS " + QUERIES["claim"])
    await db.execute("PREPARE sweep_once AS " + QUERIES["sweep"])
    no_others = ", ".join(["'{}'"] * 6)
    for execute in (
        f"claim_once(10, 1, '0 s', {no_others}, '{{record}}', NULL, NULL, '{{}}')",
        "sweep_once(12345, 20.0, NULL, NULL)",
    ):
        raw = await db.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE " + execute)
        plan = list(nodes(json.loads(raw)[0]["Plan"]))
        assert rows_read(plan) <= 50, (execute, scans_of_the_table(plan))
