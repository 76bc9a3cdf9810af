"""Schedule-once (if_exists) and transactional scheduling (connection=)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from fastapi_futurecalls import ConfigurationError, FutureCalls, InvalidScheduleError
from fastapi_futurecalls.migrations import sqlalchemy_url
from tests.support import Item, Recorder, wait_for


@pytest.fixture
async def scheduler(make_futurecalls):
    fc: FutureCalls = make_futurecalls(execution_enabled=False)
    fc.register_future_call(Recorder(), "record")
    async with fc:
        yield fc


async def pending(db: asyncpg.Connection, identifier: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT id, payload FROM future_calls WHERE identifier = $1 ORDER BY id", identifier
    )


async def test_skip_keeps_the_pending_call_and_returns_its_id(scheduler: FutureCalls, db):
    session = scheduler.session()
    first = await session.future_call_with_delay("record", Item(n=1), timedelta(hours=1), "u")
    kept = await session.future_call_with_delay(
        "record", Item(n=2), timedelta(hours=2), "u", if_exists="skip"
    )
    assert kept == first
    assert [r["id"] for r in await pending(db, "u")] == [first]


async def test_replace_swaps_the_pending_call(scheduler: FutureCalls, db):
    session = scheduler.session()
    for n in range(3):
        await session.future_call_with_delay("record", Item(n=n), timedelta(hours=1), "u")
    new = await session.future_call_with_delay(
        "record", Item(n=9), timedelta(hours=2), "u", if_exists="replace"
    )
    rows = await pending(db, "u")
    assert [r["id"] for r in rows] == [new] and '"n":9' in rows[0]["payload"]


async def test_add_is_the_default_and_bad_if_exists_is_refused(scheduler: FutureCalls, db):
    session = scheduler.session()
    a = await session.future_call_with_delay("record", None, timedelta(hours=1), "u")
    b = await session.future_call_with_delay("record", None, timedelta(hours=1), "u")
    assert a != b and len(await pending(db, "u")) == 2
    with pytest.raises(InvalidScheduleError, match="needs an identifier"):
        await session.future_call_with_delay("record", None, timedelta(0), if_exists="skip")
    with pytest.raises(InvalidScheduleError, match="if_exists"):
        await session.future_call_with_delay("record", None, timedelta(0), "u", if_exists="merge")  # type: ignore[arg-type]


@pytest.mark.parametrize("if_exists", ["skip", "replace"])
async def test_concurrent_schedule_once_leaves_exactly_one(make_futurecalls, db, if_exists):
    sessions = []
    for _ in range(4):  # four apps, four pools, as four workers would have
        fc: FutureCalls = make_futurecalls(execution_enabled=False)
        fc.register_future_call(Recorder(), "record")
        await fc.start()
        sessions.append(fc)
    try:
        await asyncio.gather(
            *(
                fc.session().future_call_with_delay(
                    "record", Item(n=n), timedelta(hours=1), "once", if_exists=if_exists
                )
                for n, fc in enumerate(sessions * 10)
            )
        )
    finally:
        for fc in sessions:
            await fc.stop()
    assert len(await pending(db, "once")) == 1


async def test_asyncpg_connection_commits_and_rolls_back_with_the_caller(
    make_futurecalls, db, dsn: str
):
    recorder = Recorder()
    fc: FutureCalls = make_futurecalls()
    fc.register_future_call(recorder, "record")
    await db.execute("CREATE TABLE users (id int PRIMARY KEY)")
    conn = await asyncpg.connect(dsn)
    async with fc:
        session = fc.session()
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute("INSERT INTO users VALUES (1)")
                await session.future_call_with_delay(
                    "record", Item(n=1), timedelta(0), connection=conn
                )
                raise RuntimeError("the signup failed")
        async with conn.transaction():
            await conn.execute("INSERT INTO users VALUES (2)")
            await session.future_call_with_delay(
                "record", Item(n=2), timedelta(0), "u2", if_exists="replace", connection=conn
            )
            await asyncio.sleep(0.3)
            assert recorder.calls == []  # not committed yet: invisible to the dispatcher
        await wait_for(lambda: recorder.calls == [Item(n=2)])
        await asyncio.sleep(0.3)
    await conn.close()
    assert [r["id"] for r in await db.fetch("SELECT id FROM users")] == [2]
    assert recorder.calls == [Item(n=2)]


async def test_sqlalchemy_connection_and_session(make_futurecalls, db, dsn: str):
    fc: FutureCalls = make_futurecalls(execution_enabled=False)
    fc.register_future_call(Recorder(), "record")
    await db.execute("CREATE TABLE users (id int PRIMARY KEY)")
    engine = create_async_engine(sqlalchemy_url(dsn))
    try:
        async with fc:
            session = fc.session()
            with pytest.raises(RuntimeError):
                async with engine.begin() as conn:
                    await conn.execute(text("INSERT INTO users VALUES (1)"))
                    await session.future_call_with_delay(
                        "record", Item(n=1), timedelta(0), connection=conn
                    )
                    raise RuntimeError("rolled back")
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO users VALUES (2)"))
                await session.future_call_with_delay(
                    "record", Item(n=2), timedelta(0), connection=conn
                )
            async with AsyncSession(engine) as orm:
                await orm.execute(text("INSERT INTO users VALUES (3)"))
                await session.future_call_recurring(
                    "record", Item(n=3), identifier="r3", every=timedelta(hours=1), connection=orm
                )
                await orm.rollback()
            async with AsyncSession(engine) as orm, orm.begin():
                await orm.execute(text("INSERT INTO users VALUES (4)"))
                await session.future_call_with_delay(
                    "record", Item(n=4), timedelta(0), connection=orm
                )
            with pytest.raises(ConfigurationError, match="connection= takes"):
                await session.future_call_with_delay(
                    "record", None, timedelta(0), connection=object()
                )
    finally:
        await engine.dispose()
    assert [r["id"] for r in await db.fetch("SELECT id FROM users ORDER BY id")] == [2, 4]
    payloads = [
        r["payload"] for r in await db.fetch("SELECT payload FROM future_calls ORDER BY id")
    ]
    assert payloads == ['{"n":2,"label":""}', '{"n":4,"label":""}']
