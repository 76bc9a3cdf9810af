"""Driver errors reach callers as the library error that names the cause: a bad value
is never reported as an unreachable database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from fastapi_futurecalls import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    FutureCalls,
    InvalidScheduleError,
)
from fastapi_futurecalls.store import database_errors
from tests.support import Recorder


@pytest.fixture
async def scheduler(make_futurecalls) -> AsyncIterator[FutureCalls]:
    fc: FutureCalls = make_futurecalls(execution_enabled=False)
    fc.register_future_call(Recorder(), "record")
    async with fc:
        yield fc


@pytest.mark.parametrize("call_id", ["abc", 2**63, -(2**63) - 1, 1.5, True, None])
async def test_a_bad_call_id_is_the_caller_s_value_error(scheduler: FutureCalls, call_id):
    session = scheduler.session()
    for operation in (
        lambda: session.get_future_call(call_id),
        lambda: session.delete_future_call(call_id),
        lambda: session.reschedule_future_call(call_id),
    ):
        with pytest.raises(InvalidScheduleError, match="call_id"):
            await operation()


@pytest.mark.parametrize("field", ["identifier", "name"])
@pytest.mark.parametrize("value", [5, b"x", "a\x00b"])
async def test_a_bad_list_filter_is_the_caller_s_value_error(scheduler: FutureCalls, field, value):
    with pytest.raises(InvalidScheduleError, match=field):
        await scheduler.session().list_future_calls(**{field: value})


async def test_a_data_error_from_the_driver_is_a_database_error(dsn: str):
    conn = await asyncpg.connect(dsn)
    try:
        for statement, argument in (
            ("SELECT $1::bigint", "abc"),  # refused by asyncpg while encoding the argument
            ("SELECT $1::bigint", 2**63),
            ("SELECT $1::text", "\ud800"),
            ("SELECT $1::text", "a\x00b"),  # refused by the server: SQLSTATE class 22
            ("SELECT 1 / $1::int", 0),
        ):
            with pytest.raises(DatabaseError, match="failed") as raised, database_errors("reading"):
                await conn.fetchval(statement, argument)
            assert not isinstance(raised.value, DatabaseUnavailableError), statement
            assert isinstance(raised.value.__cause__, asyncpg.DataError)
    finally:
        await conn.close()


async def test_a_closed_connection_is_still_unavailable(dsn: str):
    conn = await asyncpg.connect(dsn)
    await conn.close()
    with pytest.raises(DatabaseUnavailableError), database_errors("reading"):
        await conn.fetchval("SELECT 1")


async def test_a_bad_client_option_is_a_configuration_error(make_futurecalls, dsn: str):
    fc: FutureCalls = make_futurecalls(execution_enabled=False)
    fc.configure(dsn=dsn + ("&" if "?" in dsn else "?") + "sslmode=sometimes")
    with pytest.raises(ConfigurationError, match="sslmode"):
        await fc.start()
    assert not fc.started


async def test_scheduling_still_works_after_a_refused_value(scheduler: FutureCalls):
    session = scheduler.session()
    with pytest.raises(InvalidScheduleError):
        await session.get_future_call("abc")  # type: ignore[arg-type]
    call_id = await session.future_call_with_delay("record", None, timedelta(hours=1))
    record = await session.get_future_call(call_id)
    assert record is not None and record.id == call_id
