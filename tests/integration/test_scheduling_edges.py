"""Edges of scheduling: connection= when scheduling is the caller's first statement, and
recurring schedules refused before anything is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fastapi_futurecalls import (
    ConfigurationError,
    FutureCalls,
    InvalidPayloadError,
    InvalidScheduleError,
)
from fastapi_futurecalls.migrations import sqlalchemy_url
from tests.support import Item, Recorder


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)


class Rollback(Exception):
    pass


@pytest.fixture
async def scheduler(make_futurecalls) -> AsyncIterator[FutureCalls]:
    fc: FutureCalls = make_futurecalls(execution_enabled=False)
    fc.register_future_call(Recorder(), "record")
    async with fc:
        yield fc


@pytest.fixture
async def engine(dsn: str, db: asyncpg.Connection) -> AsyncIterator[AsyncEngine]:
    await db.execute("CREATE TABLE users (id int PRIMARY KEY)")
    engine = create_async_engine(sqlalchemy_url(dsn))
    yield engine
    await engine.dispose()


async def stored(db: asyncpg.Connection) -> list[str | None]:
    return [r["identifier"] for r in await db.fetch("SELECT identifier FROM future_calls")]


IF_EXISTS = ["add", "skip", "replace"]


@pytest.mark.parametrize("if_exists", IF_EXISTS)
async def test_engine_begin_rolls_back_a_call_scheduled_first(
    scheduler: FutureCalls, engine: AsyncEngine, db, if_exists
):
    session = scheduler.session()
    with pytest.raises(Rollback):
        async with engine.begin() as conn:
            await session.future_call_with_delay(
                "record", Item(n=1), timedelta(0), "u", if_exists=if_exists, connection=conn
            )
            await conn.execute(text("INSERT INTO users VALUES (1)"))
            raise Rollback
    assert await stored(db) == []


@pytest.mark.parametrize("if_exists", IF_EXISTS)
async def test_connect_then_begin_rolls_back_a_call_scheduled_first(
    scheduler: FutureCalls, engine: AsyncEngine, db, if_exists
):
    session = scheduler.session()
    async with engine.connect() as conn:
        transaction = await conn.begin()
        await session.future_call_with_delay(
            "record", Item(n=1), timedelta(0), "u", if_exists=if_exists, connection=conn
        )
        await transaction.rollback()
    assert await stored(db) == []


async def test_connect_without_begin_leaves_the_commit_to_the_caller(
    scheduler: FutureCalls, engine: AsyncEngine, db
):
    """SQLAlchemy 2 begins on first use; the call is part of that transaction."""
    session = scheduler.session()
    async with engine.connect() as conn:
        await session.future_call_with_delay("record", None, timedelta(0), "gone", connection=conn)
    async with engine.connect() as conn:
        await session.future_call_with_delay("record", None, timedelta(0), "kept", connection=conn)
        await conn.commit()
    assert await stored(db) == ["kept"]


async def test_replace_inside_a_caller_transaction_is_a_savepoint(
    scheduler: FutureCalls, engine: AsyncEngine, db
):
    session = scheduler.session()
    kept = await session.future_call_with_delay("record", Item(n=1), timedelta(hours=1), "u")
    async with engine.connect() as conn:
        transaction = await conn.begin()
        await session.future_call_with_delay(
            "record", Item(n=2), timedelta(hours=1), "u", if_exists="replace", connection=conn
        )
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None and raw.is_in_transaction()  # the caller's, still open
        await transaction.rollback()
    assert [r["id"] for r in await db.fetch("SELECT id FROM future_calls")] == [kept]


@pytest.mark.parametrize("if_exists", IF_EXISTS)
async def test_orm_session_whose_flush_fails_rolls_back_a_call_scheduled_first(
    scheduler: FutureCalls, engine: AsyncEngine, db, if_exists
):
    await db.execute("INSERT INTO users VALUES (1)")
    session = scheduler.session()
    async with AsyncSession(engine) as orm:
        orm.add(User(id=1))  # unflushed: the flush at commit fails on the primary key
        await session.future_call_with_delay(
            "record", Item(n=1), timedelta(0), "u", if_exists=if_exists, connection=orm
        )
        with pytest.raises(IntegrityError):
            await orm.commit()
    assert await stored(db) == []


async def test_orm_session_recurring_and_cancel_roll_back(
    scheduler: FutureCalls, engine: AsyncEngine, db
):
    session = scheduler.session()
    await session.future_call_recurring("record", None, identifier="kept", every=timedelta(hours=1))
    async with AsyncSession(engine) as orm:
        await session.future_call_recurring(
            "record", None, identifier="chain", every=timedelta(hours=1), connection=orm
        )
        await session.cancel_future_call("kept", connection=orm)
        await orm.rollback()
    assert await stored(db) == ["kept"]


async def test_asyncpg_connection_outside_a_transaction_is_refused(
    scheduler: FutureCalls, dsn: str, db
):
    session = scheduler.session()
    conn = await asyncpg.connect(dsn)
    try:
        for if_exists in IF_EXISTS:
            with pytest.raises(ConfigurationError, match="not inside a transaction"):
                await session.future_call_with_delay(
                    "record", None, timedelta(0), "u", if_exists=if_exists, connection=conn
                )
        with pytest.raises(ConfigurationError, match="not inside a transaction"):
            await session.cancel_future_call("u", connection=conn)
    finally:
        await conn.close()
    assert await stored(db) == []


@pytest.mark.parametrize("if_exists", IF_EXISTS)
async def test_asyncpg_connection_inside_a_transaction_rolls_back(
    scheduler: FutureCalls, dsn: str, db, if_exists
):
    session = scheduler.session()
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(Rollback):
            async with conn.transaction():
                await session.future_call_with_delay(
                    "record", None, timedelta(0), "u", if_exists=if_exists, connection=conn
                )
                assert conn.is_in_transaction()
                raise Rollback
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            async with pool.acquire() as pooled:
                with pytest.raises(Rollback):
                    async with pooled.transaction():
                        await session.future_call_with_delay(
                            "record",
                            None,
                            timedelta(0),
                            "p",
                            if_exists=if_exists,
                            connection=pooled,
                        )
                        raise Rollback
        finally:
            await pool.close()
    finally:
        await conn.close()
    assert await stored(db) == []


async def test_asyncpg_transaction_begun_by_hand_is_refused_for_schedule_once(
    scheduler: FutureCalls, dsn: str, db
):
    session = scheduler.session()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("BEGIN")
        await session.future_call_with_delay("record", None, timedelta(0), "a", connection=conn)
        with pytest.raises(ConfigurationError, match=r"conn\.transaction"):
            await session.future_call_with_delay(
                "record", None, timedelta(0), "u", if_exists="skip", connection=conn
            )
        await conn.execute("ROLLBACK")
    finally:
        await conn.close()
    assert await stored(db) == []


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        ({"every": timedelta(days=3_000_000)}, "every"),
        ({"every": timedelta(days=3_000_000), "start": datetime.now(UTC)}, "every"),
        ({"every": timedelta(microseconds=10)}, "every"),
        ({"cron": "0 0 29 2 *", "start": datetime(9999, 3, 1, tzinfo=UTC)}, "cron"),
        ({"cron": "0 * * * *", "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ],
)
async def test_recurring_schedules_that_would_poison_the_chain_are_refused(
    scheduler: FutureCalls, db, schedule, match
):
    with pytest.raises(InvalidScheduleError, match=match):
        await scheduler.session().future_call_recurring(
            "record", None, identifier="poison", **schedule
        )
    assert await stored(db) == []


async def test_lone_surrogates_are_library_errors_and_store_nothing(scheduler: FutureCalls, db):
    session = scheduler.session()
    with pytest.raises(InvalidPayloadError):
        await session.future_call_with_delay("record", Item(n=1, label="\ud800"), timedelta(0))
    with pytest.raises(InvalidScheduleError, match="identifier"):
        await session.future_call_with_delay("record", None, timedelta(0), "user-\udc00")
    with pytest.raises(InvalidScheduleError, match="identifier"):
        await session.cancel_future_call("user-\udc00")
    assert await stored(db) == []
