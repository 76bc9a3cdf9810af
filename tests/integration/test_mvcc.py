"""Under a transaction held open all along (vacuum cannot remove the dead rows of finished
calls), calls still run once and in due order, including calls scheduled behind what the
dispatcher already claimed and rows that arrive without a notification; cancel,
schedule-once and inspection keep working."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from fastapi_futurecalls import FutureCall, PlannedCall, Session
from fastapi_futurecalls.sql import QUERIES
from tests.support import Item, wait_for


class Ordered(FutureCall[Item]):
    def __init__(self) -> None:
        self.ran: list[int] = []

    async def invoke(self, session: Session, object: Item | None) -> None:
        assert object is not None
        self.ran.append(object.n)


@pytest.fixture
async def held(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A REPEATABLE READ transaction that took an xid, open for the whole test."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    await conn.fetchval("SELECT txid_current()")
    yield conn
    await conn.execute("ROLLBACK")
    await conn.close()


async def test_under_a_held_transaction_calls_run_once_in_due_order(make_futurecalls, db, held):
    web = make_futurecalls(execution_enabled=False)
    web.register_future_call(Ordered(), "ordered")
    ordered = Ordered()
    worker = make_futurecalls(poll_interval=0.5, concurrency_limit=1)
    worker.register_future_call(ordered, "ordered")
    base = datetime.now(UTC) - timedelta(hours=1)
    async with web:
        session = web.session()
        # Round 1, inserted out of order, due an hour ago and later: run in due order.
        await session.future_calls_batch(
            [PlannedCall("ordered", Item(n=n), at=base + timedelta(seconds=n)) for n in range(300)][
                ::-1
            ]
        )
        async with worker:
            await wait_for(lambda: len(ordered.ran) == 300, within=30)
            assert ordered.ran == list(range(300))
            # Round 2: due before everything round 1 claimed (scheduled in the past).
            await session.future_calls_batch(
                [
                    PlannedCall("ordered", Item(n=-1000 + n), at=base - timedelta(minutes=5 - n))
                    for n in range(3)
                ]
            )
            await wait_for(lambda: len(ordered.ran) == 303, within=10)
            assert ordered.ran[300:] == [-1000, -999, -998]
            # Round 3: a row that arrives without any notification, due long ago.
            await db.execute(
                "INSERT INTO future_calls (name, payload, due_at)"
                " VALUES ('ordered', '{\"n\": -5000}', now() - interval '1 day')"
            )
            began = time.monotonic()
            await wait_for(lambda: -5000 in ordered.ran, within=10)
            assert time.monotonic() - began < 10  # found by the periodic full scan
            # Schedule-once, cancel and inspection, while the dead rows pile up.
            first = await session.future_call_with_delay(
                "ordered", Item(n=1), timedelta(hours=1), "once", if_exists="skip"
            )
            again = await session.future_call_with_delay(
                "ordered", Item(n=2), timedelta(hours=1), "once", if_exists="skip"
            )
            assert first == again
            replaced = await session.future_call_with_delay(
                "ordered", Item(n=3), timedelta(hours=2), "once", if_exists="replace"
            )
            listed = await session.list_future_calls(identifier="once")
            assert [r.id for r in listed] == [replaced] and listed[0].payload == Item(n=3)
            assert await session.cancel_future_call("once") == 1
            assert await session.list_future_calls(identifier="once") == []
            await asyncio.sleep(1)  # more turns: nothing runs again
    assert len(ordered.ran) == len(set(ordered.ran)) == 304
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 0
    # The transaction was held all along (its xmin kept every dead row unvacuumable).
    state, xmin = await db.fetchrow(
        "SELECT state, backend_xmin FROM pg_stat_activity WHERE pid = $1", held.get_server_pid()
    )
    assert state == "idle in transaction" and xmin is not None


def _blocks_read_through(plan: dict[str, Any], index: str) -> int:
    """Buffers (hit or read) that the plan's scans of ``index`` touched."""
    own = (
        plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
        if plan.get("Index Name") == index
        else 0
    )
    return own + sum(_blocks_read_through(child, index) for child in plan.get("Plans", []))


async def test_the_sweep_does_not_walk_the_runs_a_held_transaction_keeps(
    make_futurecalls, db, held
):
    """Every claimed call leaves an entry in the index of running rows that vacuum cannot
    remove while a transaction is held; the sweep runs every tick on the claim loop's
    connection, so it must not walk them when no worker is dead."""
    worker = make_futurecalls(poll_interval=60, concurrency_limit=100)
    ordered = Ordered()
    worker.register_future_call(ordered, "ordered")
    async with worker:
        await worker.session().future_calls_batch(
            [PlannedCall("ordered", Item(n=n)) for n in range(3000)]
        )
        await wait_for(lambda: len(ordered.ran) == 3000, within=60)
        namespace = await db.fetchval(QUERIES["table_namespace"].split(";")[0])
        await db.execute("ANALYZE future_calls")  # as autovacuum does
        await db.execute("SET plan_cache_mode = force_generic_plan")  # as the dispatcher does
        raw = await db.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERIES["sweep"],
            namespace,
            20.0,
            datetime.now(UTC),
            0,
        )
    touched = _blocks_read_through(json.loads(raw)[0]["Plan"], "future_calls_running_idx")
    # Walking the 3,000 dead entries and their heap rows touches hundreds of pages.
    assert touched < 10, f"the sweep touched {touched} pages through the running index"


async def test_the_look_behind_the_frontier_reads_only_what_claims_passed_since(
    make_futurecalls, db, held
):
    """Maintenance looks behind each dispatcher's frontier for a call no notification
    announced. From the start of the index, that look walks the dead entry of every call
    run since the held transaction began; its regular look starts where the claims since
    the last one began, so it costs what the calls run meanwhile left, however long the
    transaction has been open."""
    worker = make_futurecalls(poll_interval=60, concurrency_limit=100)
    ordered = Ordered()
    worker.register_future_call(ordered, "ordered")
    base = datetime.now(UTC) - timedelta(hours=1)
    due = [base + timedelta(milliseconds=n) for n in range(3000)]
    async with worker:
        ids = await worker.session().future_calls_batch(
            [PlannedCall("ordered", Item(n=n), at=at) for n, at in enumerate(due)]
        )
        await wait_for(lambda: len(ordered.ran) == 3000, within=60)
    await db.execute("SET plan_cache_mode = force_generic_plan")  # as the pool's reads plan

    async def look(since: tuple[datetime, int] | None) -> int:
        raw = await db.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERIES["behind_frontier"],
            ["ordered"],
            due[-1],
            ids[-1],
            *(since or (None, None)),
        )
        return _blocks_read_through(json.loads(raw)[0]["Plan"], "future_calls_due_idx")

    everywhere, since_the_last_batches = await look(None), await look((due[-200], ids[-200]))
    # 3,000 dead entries and their heap rows against the 200 of the last batches.
    assert everywhere > 40, everywhere
    assert since_the_last_batches * 5 < everywhere, (since_the_last_batches, everywhere)


async def test_a_call_a_full_claim_skipped_runs_once_its_row_is_free_again(
    make_futurecalls, dsn, held, monkeypatch
):
    """A full claim skips a due row another transaction holds locked and moves its
    frontier past it; no notification comes when that transaction rolls back. The look
    behind the frontier finds it within a few poll intervals, the full look from the start
    of the index (pushed far off here) aside."""
    monkeypatch.setattr("fastapi_futurecalls.dispatcher.DEEP_MAINTENANCE_QUICK", 0.0)
    monkeypatch.setattr("fastapi_futurecalls.dispatcher.DEEP_MAINTENANCE_SHARE", 1e-9)
    worker = make_futurecalls(poll_interval=0.5, concurrency_limit=5)
    ordered = Ordered()
    worker.register_future_call(ordered, "ordered")
    other = await asyncpg.connect(dsn)
    try:
        async with worker:
            session = worker.session()
            await session.future_calls_batch([PlannedCall("ordered", Item(n=n)) for n in range(20)])
            await wait_for(lambda: len(ordered.ran) == 20, within=20)  # the frontier is set
            later = datetime.now(UTC) + timedelta(seconds=3)
            ids = await session.future_calls_batch(
                [
                    PlannedCall("ordered", Item(n=100 + n), at=later + timedelta(milliseconds=n))
                    for n in range(40)
                ]
            )
            locked = other.transaction()
            await locked.start()
            await other.execute("SELECT 1 FROM future_calls WHERE id = $1 FOR UPDATE", ids[0])
            await wait_for(lambda: len(ordered.ran) == 59, within=30)  # full claims, past it
            await asyncio.sleep(1)
            assert 100 not in ordered.ran
            await locked.rollback()
            released = time.monotonic()
            await wait_for(lambda: 100 in ordered.ran, within=30)
            assert time.monotonic() - released < 20  # maintenance runs every 3 s here
            await asyncio.sleep(1)
    finally:
        await other.close()
    assert sorted(ordered.ran) == sorted([*range(20), *range(100, 140)])
    assert ordered.ran[20:59] == list(range(101, 140))
