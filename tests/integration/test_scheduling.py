"""Scheduling and cancelling through Session, against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from pydantic import BaseModel

from fastapi_futurecalls import (
    ConfigurationError,
    DatabaseUnavailableError,
    FutureCallError,
    FutureCalls,
    InvalidPayloadError,
    InvalidScheduleError,
    NotRegisteredError,
    PlannedCall,
    SchemaMissingError,
)
from tests.support import Item, Recorder


class Other(BaseModel):
    n: int


@pytest.fixture
async def scheduler(make_futurecalls: Callable[..., FutureCalls]):
    fc = make_futurecalls(execution_enabled=False)
    fc.register_future_call(Recorder(), "record")
    async with fc:
        yield fc


async def count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM future_calls"))


async def test_schedule_stores_a_pending_row(scheduler: FutureCalls, db: asyncpg.Connection):
    call_id = await scheduler.session().future_call_with_delay(
        "record", Item(n=1), timedelta(hours=1), identifier="user-1"
    )
    row = await db.fetchrow("SELECT *, due_at - now() AS wait FROM future_calls")
    assert row["id"] == call_id
    assert (row["name"], row["identifier"], row["state"]) == ("record", "user-1", "scheduled")
    assert timedelta(minutes=59) < row["wait"] <= timedelta(hours=1)


@pytest.mark.parametrize("data", [Other(n=1), {"n": 1}, 1, "x"])
async def test_wrong_data_type_is_a_type_error_and_stores_nothing(
    scheduler: FutureCalls, db: asyncpg.Connection, data: object
):
    with pytest.raises(TypeError, match="Item"):
        await scheduler.session().future_call_with_delay("record", data, timedelta(0))  # type: ignore[arg-type]
    with pytest.raises(InvalidPayloadError):
        await scheduler.session().future_call_at_time("record", data, datetime.now(UTC))  # type: ignore[arg-type]
    assert await count(db) == 0


async def test_unregistered_name_is_named_in_the_error(scheduler: FutureCalls, db):
    with pytest.raises(NotRegisteredError, match="'nope'"):
        await scheduler.session().future_call_with_delay("nope", None, timedelta(0))
    assert await count(db) == 0


async def test_negative_delay_is_a_value_error(scheduler: FutureCalls, db):
    with pytest.raises(ValueError, match="negative"):
        await scheduler.session().future_call_with_delay("record", None, timedelta(seconds=-1))
    assert await count(db) == 0


@pytest.mark.parametrize("identifier", ["", "x" * 501, "a\x00b"])
async def test_bad_identifier_is_refused(scheduler: FutureCalls, db, identifier: str):
    with pytest.raises(InvalidScheduleError, match="identifier"):
        await scheduler.session().future_call_with_delay(
            "record", None, timedelta(0), identifier=identifier
        )
    assert await count(db) == 0


async def test_payload_over_the_limit_is_refused(make_futurecalls, db):
    fc = make_futurecalls(execution_enabled=False, max_payload_bytes=100)
    fc.register_future_call(Recorder(), "record")
    async with fc:
        with pytest.raises(InvalidScheduleError, match="max_payload_bytes"):
            await fc.session().future_call_with_delay(
                "record", Item(n=1, label="x" * 200), timedelta(0)
            )
        await fc.session().future_call_with_delay("record", Item(n=1), timedelta(0))
    assert await count(db) == 1


async def test_aware_and_naive_times(scheduler: FutureCalls, db: asyncpg.Connection):
    aware = datetime(2030, 1, 1, 12, tzinfo=UTC) + timedelta(microseconds=123)
    naive = datetime(2030, 6, 1, 8, 30)
    a = await scheduler.session().future_call_at_time("record", None, aware)
    n = await scheduler.session().future_call_at_time("record", None, naive)
    due = dict(await db.fetch("SELECT id, due_at FROM future_calls"))
    assert due[a] == aware
    assert due[n] == naive.replace(tzinfo=UTC)  # naive means UTC


async def test_cancel_removes_every_pending_call_with_the_identifier(
    scheduler: FutureCalls, db: asyncpg.Connection
):
    session = scheduler.session()
    for _ in range(3):
        await session.future_call_with_delay("record", None, timedelta(days=1), identifier="u1")
    await session.future_call_with_delay("record", None, timedelta(days=1), identifier="u2")
    await session.future_call_with_delay("record", None, timedelta(days=1))
    assert await session.cancel_future_call("u1") == 3
    assert await session.cancel_future_call("u1") == 0
    assert await session.cancel_future_call("unknown") == 0
    assert sorted(await db.fetch("SELECT identifier FROM future_calls"), key=str) == sorted(
        [("u2",), (None,)], key=str
    )


async def test_session_before_start_is_a_clear_error(make_futurecalls):
    fc = make_futurecalls()
    with pytest.raises(ConfigurationError, match="not started"):
        fc.session()


async def test_no_dsn_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("FUTURECALLS_DSN", raising=False)
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        await FutureCalls().start()


async def test_unreachable_database_fails_fast(unused_tcp_port: int):
    fc = FutureCalls(f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/x", connect_timeout=2)
    loop_time = __import__("time").monotonic
    started = loop_time()
    with pytest.raises(DatabaseUnavailableError) as info:
        await fc.start()
    assert isinstance(info.value, FutureCallError)
    assert loop_time() - started < 10
    assert not fc.started


async def test_missing_table_says_to_migrate(admin_dsn: str):
    fc = FutureCalls(admin_dsn.rsplit("/", 1)[0] + "/postgres")
    with pytest.raises(SchemaMissingError, match="alembic upgrade head"):
        await fc.start()


async def test_batch_schedules_all_in_order_or_nothing(
    scheduler: FutureCalls, db: asyncpg.Connection
):
    session = scheduler.session()
    when = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    ids = await session.future_calls_batch(
        [
            PlannedCall("record", Item(n=0), delay=timedelta(hours=1), identifier="a"),
            PlannedCall("record", None, at=when),
            *(PlannedCall("record", Item(n=n)) for n in range(2, 500)),
        ]
    )
    assert len(ids) == 500 and ids == sorted(ids)
    first, second, third = [await session.get_future_call(i) for i in ids[:3]]
    assert first and (first.payload, first.identifier) == (Item(n=0), "a")
    assert second and (second.payload, second.due_at) == (None, when)
    assert third and third.payload == Item(n=2)
    assert await session.future_calls_batch([]) == []

    with pytest.raises(InvalidPayloadError):
        await session.future_calls_batch(
            [PlannedCall("record", Item(n=1)), PlannedCall("record", Other(n=2))]  # type: ignore[arg-type]
        )
    with pytest.raises(NotRegisteredError):
        await session.future_calls_batch([PlannedCall("record"), PlannedCall("ghost")])
    assert await count(db) == 500
