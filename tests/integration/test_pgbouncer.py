"""Through a real pgbouncer: dispatchers refuse transaction pooling with a clear error and
work behind session pooling; scheduling works through either (docs/design.md, Known
limits)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta

import asyncpg
import pytest

from fastapi_futurecalls import ConfigurationError, FutureCalls
from tests.pgbouncer import PgBouncer
from tests.support import Item, Recorder, wait_for


@pytest.fixture
def pgbouncer(dsn: str) -> Iterator[Callable[[str], PgBouncer]]:
    started: list[PgBouncer] = []

    def start(mode: str) -> PgBouncer:
        started.append(PgBouncer(dsn, mode))
        return started[-1]

    yield start
    for bouncer in started:
        bouncer.close()


async def library_locks(db: asyncpg.Connection) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM pg_locks JOIN pg_database AS d ON d.oid = database "
        "WHERE d.datname = current_database() AND locktype = 'advisory' AND objsubid = 2"
        " AND classid = 'future_calls'::regclass::oid"
    )


@pytest.mark.parametrize("statement_cache_size", [100, 0])
async def test_a_dispatcher_refuses_transaction_pooling_at_start(
    pgbouncer, db: asyncpg.Connection, statement_cache_size: int
):
    bouncer = pgbouncer("transaction")
    for _ in range(3):  # every start, not just a lucky one
        fc = FutureCalls(bouncer.dsn, statement_cache_size=statement_cache_size)
        fc.register_future_call(Recorder(), "record")
        with pytest.raises(ConfigurationError, match="pgbouncer in transaction mode") as err:
            async with fc:
                pass
        assert "session pooling" in str(err.value)
    assert await library_locks(db) == 0  # the refused dispatcher left no worker lock


async def test_scheduling_works_through_transaction_pooling(pgbouncer, dsn: str, db):
    bouncer = pgbouncer("transaction")
    web = FutureCalls(bouncer.dsn, execution_enabled=False, statement_cache_size=0)
    web.register_future_call(Recorder(), "record")
    async with web:
        session = web.session()
        ids = await asyncio.gather(
            *(session.future_call_with_delay("record", Item(n=n), timedelta(0)) for n in range(200))
        )
        assert len(set(ids)) == 200
        assert len(await session.list_future_calls(limit=500)) == 200
        await session.future_call_with_delay("record", Item(n=-1), timedelta(days=1), "later")
        assert await session.cancel_future_call("later") == 1

    recorder = Recorder()
    worker = FutureCalls(dsn, poll_interval=1)  # direct, as dispatchers must be
    worker.register_future_call(recorder, "record")
    async with worker:
        await wait_for(lambda: len(recorder.calls) == 200)
    assert sorted(c.n for c in recorder.calls if c) == list(range(200))


async def test_a_dispatcher_runs_calls_behind_session_pooling(pgbouncer, db):
    bouncer = pgbouncer("session")
    recorder = Recorder()
    fc = FutureCalls(bouncer.dsn, poll_interval=1)
    fc.register_future_call(recorder, "record")
    async with fc:
        assert await library_locks(db) == 1  # its worker lock, held through the pooler
        session = fc.session()
        for n in range(50):
            await session.future_call_with_delay("record", Item(n=n), timedelta(milliseconds=n))
        await wait_for(lambda: len(recorder.calls) == 50)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM future_calls"))
    assert sorted(c.n for c in recorder.calls if c) == list(range(50))
