"""Property: whatever is thrown at the scheduling API either round-trips exactly through
the database or is refused with a clear error, storing nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from fastapi_futurecalls import FutureCall, FutureCallError, FutureCalls, Session


class Payload(BaseModel):
    text: str
    number: int
    amount: Decimal
    ratio: float
    when: datetime
    items: list[dict[str, int | None]]
    nested: dict[str, list[str]]
    flag: bool = False


class Catch(FutureCall[Payload]):
    async def invoke(self, session: Session, object: Payload | None) -> None:
        pass


offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
payloads = st.builds(
    Payload,
    text=st.text(),
    number=st.integers(),
    amount=st.decimals(allow_nan=False, allow_infinity=False),
    ratio=st.floats(),
    when=st.datetimes(timezones=st.just(UTC) | offsets),
    items=st.lists(st.dictionaries(st.text(max_size=5), st.none() | st.integers()), max_size=3),
    nested=st.dictionaries(st.text(max_size=5), st.lists(st.text(max_size=5)), max_size=3),
    flag=st.booleans(),
)
times = st.datetimes(timezones=st.none() | st.just(UTC) | offsets)
identifiers = st.none() | st.text(max_size=600)


@pytest.fixture
async def started(make_futurecalls):
    fc: FutureCalls = make_futurecalls(execution_enabled=False)
    fc.register_future_call(Catch(), "catch")
    async with fc:
        yield fc


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.none() | payloads, identifier=identifiers, when=times)
async def test_schedule_round_trips_or_refuses(
    started: FutureCalls,
    db: asyncpg.Connection,
    data: Payload | None,
    identifier: str | None,
    when: datetime,
):
    before = await db.fetchval("SELECT count(*) FROM future_calls")
    session = started.session()
    try:
        call_id = await session.future_call_at_time("catch", data, when, identifier=identifier)
    except FutureCallError as exc:
        assert isinstance(exc, TypeError | ValueError) and str(exc)
        assert await db.fetchval("SELECT count(*) FROM future_calls") == before
        return
    record = await session.get_future_call(call_id)
    assert record is not None
    assert record.payload == data
    assert record.identifier == identifier
    expected = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    assert record.due_at == expected


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(delay=st.timedeltas())
async def test_any_delay_is_stored_or_refused(started: FutureCalls, db, delay: timedelta):
    before = datetime.now(UTC)
    try:
        call_id = await started.session().future_call_with_delay("catch", None, delay)
    except FutureCallError as exc:
        assert isinstance(exc, ValueError)
        assert delay < timedelta(0) or delay > timedelta(days=365 * 7000)
        return
    due = await db.fetchval("SELECT due_at FROM future_calls WHERE id = $1", call_id)
    assert before + delay - timedelta(seconds=5) <= due <= datetime.now(UTC) + delay
