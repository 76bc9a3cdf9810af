"""Plan guards (as pgqueuer's query-plan regression tests): on a loaded table, the
dispatcher's statements, planned the way its connection plans them (generic plans),
reach the table through its indexes only, never by a sequential scan."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from fastapi_futurecalls.sql import QUERIES

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


@pytest.mark.parametrize("frontier", [(None, None), (datetime.now(UTC), 25_000)])
async def test_the_claim_and_its_look_ahead_use_the_indexes(
    loaded: asyncpg.Connection, frontier: tuple[datetime | None, int | None]
):
    empty: list[Any] = []
    plan = await plan_of(
        loaded,
        "claim",
        10,
        1,
        timedelta(0),
        empty,
        empty,
        empty,
        empty,
        empty,
        empty,
        ["record"],
        *frontier,
    )
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
        await plan_of(loaded, "behind_frontier", ["record"], datetime.now(UTC), 25_000)
    )
    assert behind and all(kind != "Seq Scan" for kind, _ in behind), behind
    assert {index for _, index in behind} == {"future_calls_due_idx"}
