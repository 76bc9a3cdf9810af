"""Delivery policy (max_attempts, retry_backoff, timeout) and inspection through Session."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from fastapi_futurecalls import FutureCall, FutureCallRecord, InvalidScheduleError, Session
from tests.support import Item, Recorder, wait_for


class Flaky(FutureCall[Item]):
    """Fails until its n-th attempt."""

    max_attempts = 4
    retry_backoff = timedelta(milliseconds=100)

    def __init__(self) -> None:
        self.attempts: list[float] = []

    async def invoke(self, session: Session, object: Item | None) -> None:
        assert object is not None
        self.attempts.append(asyncio.get_running_loop().time())
        if len(self.attempts) < object.n:
            raise ConnectionError(f"attempt {len(self.attempts)} failed")


class Slow(FutureCall[Item]):
    timeout = timedelta(milliseconds=200)

    async def invoke(self, session: Session, object: Item | None) -> None:
        await asyncio.sleep(30)


class OwnTimeout(FutureCall[Item]):
    async def invoke(self, session: Session, object: Item | None) -> None:
        await asyncio.wait_for(asyncio.sleep(30), timeout=0.01)


async def state_of(db: asyncpg.Connection, call_id: int) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM future_calls WHERE id = $1", call_id)


async def test_retries_until_success_with_growing_backoff(make_futurecalls, db):
    flaky = Flaky()
    fc = make_futurecalls()
    fc.register_future_call(flaky, "flaky")
    async with fc:
        call_id = await fc.session().future_call_with_delay("flaky", Item(n=3), timedelta(0))
        await wait_for(lambda: len(flaky.attempts) == 3, within=10)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM future_calls"))
    first, second = (b - a for a, b in zip(flaky.attempts, flaky.attempts[1:], strict=False))
    assert first >= 0.075  # 100 ms, jitter down to 75 %
    assert second >= 0.15  # doubled
    assert await state_of(db, call_id) is None


async def test_after_the_last_attempt_the_call_is_parked_failed(make_futurecalls, db):
    flaky = Flaky()
    fc = make_futurecalls()
    fc.register_future_call(flaky, "flaky")
    async with fc:
        call_id = await fc.session().future_call_with_delay("flaky", Item(n=99), timedelta(0))
        await wait_for(
            lambda: db.fetchval("SELECT state = 'failed' FROM future_calls WHERE id = $1", call_id),
            within=15,
        )
        await asyncio.sleep(0.5)
    row = await state_of(db, call_id)
    assert row is not None
    assert (row["state"], row["attempts"], len(flaky.attempts)) == ("failed", 4, 4)
    assert row["last_error"] == "ConnectionError: attempt 4 failed"


async def test_timeout_cancels_invoke_and_counts_as_a_failed_attempt(make_futurecalls, db):
    fc = make_futurecalls()
    fc.register_future_call(Slow(), "slow")
    fc.register_future_call(OwnTimeout(), "own")
    async with fc:
        slow = await fc.session().future_call_with_delay("slow", None, timedelta(0))
        own = await fc.session().future_call_with_delay("own", None, timedelta(0))
        await wait_for(
            lambda: db.fetchval("SELECT count(*) = 2 FROM future_calls WHERE state = 'failed'"),
            within=10,
        )
    slow_row, own_row = await state_of(db, slow), await state_of(db, own)
    assert slow_row is not None and own_row is not None
    assert slow_row["last_error"] == "timed out after 0:00:00.200000"
    assert own_row["last_error"].startswith("TimeoutError")  # raised by invoke, not ours


async def test_list_get_reschedule_and_delete(make_futurecalls, db):
    recorder = Recorder()
    fc = make_futurecalls(execution_enabled=False)
    fc.register_future_call(recorder, "record")
    async with fc:
        session = fc.session()
        later = await session.future_call_with_delay("record", Item(n=1), timedelta(days=1), "u1")
        parked = await session.future_call_with_delay("record", Item(n=2), timedelta(days=2), "u1")
        await session.future_call_with_delay("record", None, timedelta(days=3), "u2")
        await db.execute(
            "UPDATE future_calls SET state = 'failed', last_error = 'boom', attempts = 1 "
            "WHERE id = $1",
            parked,
        )
        records = await session.list_future_calls(identifier="u1")
        assert [r.id for r in records] == [later, parked]
        assert all(isinstance(r, FutureCallRecord) for r in records)
        assert records[0].payload == Item(n=1) and records[0].state == "scheduled"
        (failed,) = await session.list_future_calls(state="failed")
        assert (failed.id, failed.last_error, failed.attempts) == (parked, "boom", 1)
        assert len(await session.list_future_calls(name="record", limit=2)) == 2
        assert await session.list_future_calls(name="nope") == []
        with pytest.raises(ValueError, match="state must be one of"):
            await session.list_future_calls(state="done")

        record = await session.get_future_call(later)
        assert record is not None and record.due_at > datetime.now(UTC) + timedelta(hours=23)
        assert await session.get_future_call(10**12) is None

        assert await session.reschedule_future_call(later) is False  # not parked
        assert await session.reschedule_future_call(parked, delay=timedelta(0)) is True
        moved = await session.get_future_call(parked)
        assert moved is not None
        assert (moved.state, moved.attempts, moved.max_attempts) == ("scheduled", 1, 2)
        with pytest.raises(InvalidScheduleError):
            await session.reschedule_future_call(parked, when=datetime.now(UTC), delay=timedelta(0))

        assert await session.delete_future_call(later) is True
        assert await session.delete_future_call(later) is False
    ids = {r["id"] for r in await db.fetch("SELECT id FROM future_calls")}
    assert later not in ids and parked in ids


async def test_a_rescheduled_parked_call_runs(make_futurecalls, db):
    recorder = Recorder()
    fc = make_futurecalls()
    fc.register_future_call(recorder, "record")
    call_id = await db.fetchval(
        "INSERT INTO future_calls (name, payload, due_at, state, attempts, last_error) "
        "VALUES ('record', '{\"n\": 5}', now(), 'interrupted', 1, 'x') RETURNING id"
    )
    async with fc:
        await asyncio.sleep(0.3)
        assert recorder.calls == []  # parked calls never run by themselves
        assert await fc.session().reschedule_future_call(call_id)
        await wait_for(lambda: recorder.calls == [Item(n=5)])


async def test_data_that_does_not_survive_json_is_refused(make_futurecalls, db):
    from pydantic import BaseModel

    class Reading(BaseModel):
        value: float

    class Sensor(FutureCall[Reading]):
        async def invoke(self, session: Session, object: Reading | None) -> None:
            pass

    fc = make_futurecalls(execution_enabled=False)
    fc.register_future_call(Sensor(), "sensor")
    async with fc:
        for bad in (math.nan, math.inf):
            with pytest.raises(InvalidScheduleError, match="round trip"):
                await fc.session().future_call_with_delay(
                    "sensor", Reading(value=bad), timedelta(0)
                )
        await fc.session().future_call_with_delay("sensor", Reading(value=0.1), timedelta(0))
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 1
