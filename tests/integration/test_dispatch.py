"""Running calls: payloads, order, concurrency, failures, wake-ups, restarts, shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from fastapi_futurecalls import FutureCall, FutureCalls, Session
from tests.support import Item, Recorder, Rich, wait_for


class RichRecorder(FutureCall[Rich]):
    def __init__(self) -> None:
        self.calls: list[Rich | None] = []

    async def invoke(self, session: Session, object: Rich | None) -> None:
        self.calls.append(object)


class Boom(FutureCall[Item]):
    async def invoke(self, session: Session, object: Item | None) -> None:
        raise RuntimeError("boom")


class DbClock(FutureCall[Item]):
    """Records the database clock when it starts (the judge of 'never early')."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.clock: list[datetime] = []

    async def invoke(self, session: Session, object: Item | None) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            self.clock.append(await conn.fetchval("SELECT clock_timestamp()"))
        finally:
            await conn.close()


class FollowUp(FutureCall[Item]):
    """Schedules the next step from inside invoke, through the session it is given."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def invoke(self, session: Session, object: Item | None) -> None:
        assert object is not None
        self.seen.append(object.n)
        if object.n < 3:
            await session.future_call_with_delay("follow", Item(n=object.n + 1), timedelta(0))


async def rows(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM future_calls ORDER BY id")


async def test_payload_round_trips_exactly(make_futurecalls: Callable[..., FutureCalls], db):
    recorder = RichRecorder()
    fc = make_futurecalls()
    fc.register_future_call(recorder, "rich")
    payload = Rich(
        when=datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=UTC),
        amount=Decimal("12345678901234567890.000000001"),
        nested={"a": [{"x": 1, "y": None}], "ü": []},
        tags=["", "naïve", "日本語", "emoji 🎉", 'quote " and \\ backslash', "nul \x00 char"],
        text="line\nbreak\ttab",
    )
    async with fc:
        await fc.session().future_call_with_delay("rich", payload, timedelta(0))
        await fc.session().future_call_with_delay("rich", None, timedelta(0))
        await wait_for(lambda: len(recorder.calls) == 2, what="both calls")
    assert payload in recorder.calls and None in recorder.calls
    assert await rows(db) == []  # a completed call leaves the table


async def test_due_calls_run_oldest_first(make_futurecalls, db):
    scheduler = make_futurecalls(execution_enabled=False)
    scheduler.register_future_call(Recorder(), "record")
    now = datetime.now(UTC)
    async with scheduler:
        for n in (3, 1, 4, 0, 2):
            await scheduler.session().future_call_at_time(
                "record", Item(n=n), now - timedelta(minutes=10 - n)
            )
    recorder = Recorder()
    worker = make_futurecalls(concurrency_limit=1)
    worker.register_future_call(recorder, "record")
    async with worker:
        await wait_for(lambda: len(recorder.calls) == 5)
    assert [c.n for c in recorder.calls if c] == [0, 1, 2, 3, 4]


async def test_at_most_concurrency_limit_run_at_once(make_futurecalls, db):
    recorder = Recorder(sleep=0.2)
    fc = make_futurecalls(concurrency_limit=3)
    fc.register_future_call(recorder, "record")
    async with fc:
        for n in range(12):
            await fc.session().future_call_with_delay("record", Item(n=n), timedelta(0))
        await wait_for(lambda: len(recorder.calls) == 12 and recorder.active == 0)
    assert recorder.max_active == 3


async def test_calls_sharing_an_identifier_each_run(make_futurecalls, db):
    recorder = Recorder()
    fc = make_futurecalls()
    fc.register_future_call(recorder, "record")
    async with fc:
        for n in range(3):
            await fc.session().future_call_with_delay("record", Item(n=n), timedelta(0), "same")
        await wait_for(lambda: len(recorder.calls) == 3)
    assert sorted(c.n for c in recorder.calls if c) == [0, 1, 2]


async def test_a_call_that_raises_is_logged_parked_and_dispatch_goes_on(
    make_futurecalls, db, caplog: pytest.LogCaptureFixture
):
    recorder = Recorder()
    fc = make_futurecalls()
    fc.register_future_call(Boom(), "boom")
    fc.register_future_call(recorder, "record")
    caplog.set_level(logging.ERROR, logger="fastapi_futurecalls")
    async with fc:
        boom_id = await fc.session().future_call_with_delay("boom", Item(n=0), timedelta(0))
        await fc.session().future_call_with_delay("record", Item(n=1), timedelta(0))
        await wait_for(lambda: len(recorder.calls) == 1)
        await wait_for(
            lambda: db.fetchval("SELECT state = 'failed' FROM future_calls WHERE id=$1", boom_id)
        )
    (row,) = await rows(db)
    assert (row["id"], row["state"], row["attempts"]) == (boom_id, "failed", 1)
    assert "RuntimeError: boom" in row["last_error"]
    records = [r for r in caplog.records if getattr(r, "future_call_id", None) == boom_id]
    assert len(records) == 1
    assert records[0].future_call_name == "boom"  # type: ignore[attr-defined]
    assert "'boom'" in records[0].getMessage() and str(boom_id) in records[0].getMessage()
    assert records[0].exc_info is not None


async def test_invoke_can_schedule_follow_ups(make_futurecalls, db):
    follow = FollowUp()
    fc = make_futurecalls()
    fc.register_future_call(follow, "follow")
    async with fc:
        await fc.session().future_call_with_delay("follow", Item(n=1), timedelta(0))
        await wait_for(lambda: follow.seen == [1, 2, 3])


async def test_never_starts_before_its_due_time_by_the_database_clock(
    make_futurecalls, db, dsn: str
):
    clock = DbClock(dsn)
    fc = make_futurecalls()
    fc.register_future_call(clock, "clock")
    async with fc:
        ids = [
            await fc.session().future_call_with_delay("clock", None, timedelta(milliseconds=ms))
            for ms in (50, 300, 700)
        ]
        due = [await db.fetchval("SELECT due_at FROM future_calls WHERE id=$1", i) for i in ids]
        await wait_for(lambda: len(clock.clock) == 3)
    assert all(started >= due_at for started, due_at in zip(clock.clock, due, strict=True))


async def test_notify_wakes_an_idle_dispatcher_long_before_its_poll(make_futurecalls, db):
    recorder = Recorder()
    fc = make_futurecalls(poll_interval=60)
    fc.register_future_call(recorder, "record")
    async with fc:
        await asyncio.sleep(0.5)  # idle: the next scan is a minute away
        t0 = time.monotonic()
        await fc.session().future_call_with_delay("record", Item(n=0), timedelta(0))
        await fc.session().future_call_with_delay("record", Item(n=1), timedelta(seconds=1))
        await wait_for(lambda: len(recorder.calls) == 2, within=10)
    assert recorder.started[0] - t0 < 5
    assert 1.0 <= recorder.started[1] - t0 < 6


async def test_calls_survive_a_restart_and_overdue_ones_start_promptly(make_futurecalls, db):
    web = make_futurecalls(execution_enabled=False)
    web.register_future_call(Recorder(), "record")
    async with web:
        await web.session().future_call_with_delay("record", Item(n=1), timedelta(0))
        await web.session().future_call_with_delay("record", Item(n=2), timedelta(days=1))
    await asyncio.sleep(0.3)
    assert len(await rows(db)) == 2  # nothing ran them

    recorder = Recorder()
    worker = make_futurecalls(poll_interval=60)
    worker.register_future_call(recorder, "record")
    t0 = time.monotonic()
    async with worker:
        await wait_for(lambda: len(recorder.calls) == 1, within=10)
        assert recorder.started[0] - t0 < 5
    assert [c.n for c in recorder.calls if c] == [1]
    assert [(r["state"], r["attempts"]) for r in await rows(db)] == [("scheduled", 0)]


async def test_shutdown_lets_running_calls_finish_within_the_grace(make_futurecalls, db):
    recorder = Recorder(sleep=0.5)
    fc = make_futurecalls(shutdown_grace=10)
    fc.register_future_call(recorder, "record")
    async with fc:
        await fc.session().future_call_with_delay("record", Item(n=1), timedelta(0))
        await wait_for(lambda: recorder.active == 1)
    assert recorder.active == 0 and len(recorder.calls) == 1
    assert await rows(db) == []


async def test_shutdown_parks_calls_still_running_after_the_grace(make_futurecalls, db):
    recorder = Recorder(sleep=60)
    fc = make_futurecalls(shutdown_grace=0.3)
    fc.register_future_call(recorder, "record")
    async with fc:
        call_id = await fc.session().future_call_with_delay("record", Item(n=1), timedelta(0))
        await wait_for(lambda: recorder.active == 1)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 5
    (row,) = await rows(db)
    assert (row["id"], row["state"], row["owner"]) == (call_id, "interrupted", None)
    assert "shutdown" in row["last_error"]


async def test_unknown_name_and_stale_payload_rows_are_parked_once(
    make_futurecalls, db, caplog: pytest.LogCaptureFixture
):
    await db.execute(
        "INSERT INTO future_calls (name, payload, due_at) VALUES "
        "('removed', NULL, now()), ('record', '{\"n\": \"not a number\"}', now())"
    )
    recorder = Recorder()
    fc = make_futurecalls(poll_interval=0.2, unknown_name_grace=0.5)
    fc.register_future_call(recorder, "record")
    caplog.set_level(logging.ERROR, logger="fastapi_futurecalls")
    async with fc:
        await wait_for(
            lambda: db.fetchval("SELECT count(*) = 2 FROM future_calls WHERE state='failed'")
        )
        await asyncio.sleep(1)  # several more scans: nothing is logged or retried again
    parked = {r["name"]: r for r in await rows(db)}
    # No live worker runs 'removed': never claimed, parked by the sweep after the grace.
    error = parked["removed"]["last_error"]
    assert "no live worker registers future calls named 'removed'" in error
    assert parked["removed"]["attempts"] == 0
    assert "payload does not fit Recorder" in parked["record"]["last_error"]
    assert parked["record"]["attempts"] == 1
    assert recorder.calls == []
    assert len([r for r in caplog.records if hasattr(r, "future_call_id")]) == 2
