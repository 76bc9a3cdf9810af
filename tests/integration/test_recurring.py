"""Recurring calls: cron or interval chains, one per identifier, never lost or doubled."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from fastapi_futurecalls import FutureCalls, InvalidScheduleError
from fastapi_futurecalls.recurrence import Recurrence
from tests.support import Item, Recorder, wait_for


async def chains(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM future_calls WHERE cron IS NOT NULL OR every IS NOT NULL")


async def test_an_interval_chain_runs_each_slot_once(make_futurecalls, db):
    recorder = Recorder()
    fc: FutureCalls = make_futurecalls()
    fc.register_future_call(recorder, "record")
    async with fc:
        scheduled = time.monotonic()
        chain = await fc.session().future_call_recurring(
            "record", Item(n=1), identifier="tick", every=timedelta(milliseconds=300)
        )
        await wait_for(lambda: len(recorder.calls) >= 4, within=10)
    assert all(c == Item(n=1) for c in recorder.calls)
    # Slots fall 300 ms apart from the scheduling: the k-th run can be late, never early,
    # so two runs of one slot (or a burst) would start before their slot.
    offsets = [started - scheduled for started in recorder.started]
    assert all(offset >= 0.3 * (k + 1) - 0.02 for k, offset in enumerate(offsets)), offsets
    (row,) = await chains(db)
    assert row["id"] == chain and row["state"] == "scheduled"


async def test_scheduling_the_same_chain_again_keeps_one_and_updates_it(make_futurecalls, db):
    fc: FutureCalls = make_futurecalls(execution_enabled=False)
    fc.register_future_call(Recorder(), "record")
    async with fc:
        session = fc.session()
        ids = await asyncio.gather(
            *(
                session.future_call_recurring(
                    "record", Item(n=n), identifier="daily", cron="0 9 * * *"
                )
                for n in range(8)
            )
        )
        assert len(set(ids)) == 1
        (before,) = await chains(db)
        await session.future_call_recurring(
            "record", Item(n=99), identifier="daily", cron="0 9 * * *"
        )
        (same,) = await chains(db)
        assert same["due_at"] == before["due_at"] and '"n":99' in same["payload"]
        await session.future_call_recurring(
            "record", Item(n=99), identifier="daily", cron="30 18 * * *", timezone="Europe/Paris"
        )
        (changed,) = await chains(db)
        assert changed["cron"] == "30 18 * * *" and changed["due_at"] != before["due_at"]
        assert (
            changed["due_at"].astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris")).hour == 18
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "bad cron expression '61 \\* \\* \\* \\*'"),
        ({"cron": "* * *"}, "5 fields"),
        ({}, "exactly one of cron and every"),
        ({"cron": "* * * * *", "every": timedelta(hours=1)}, "exactly one"),
        ({"every": timedelta(0)}, "every must be"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "unknown timezone"),
    ],
)
async def test_bad_schedules_are_value_errors_and_store_nothing(
    make_futurecalls, db, kwargs, message
):
    fc: FutureCalls = make_futurecalls(execution_enabled=False)
    fc.register_future_call(Recorder(), "record")
    async with fc:
        with pytest.raises(ValueError, match=message):
            await fc.session().future_call_recurring("record", None, identifier="x", **kwargs)
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 0


async def test_missed_slots_give_one_catch_up_run_then_the_rhythm(make_futurecalls, db):
    recorder = Recorder()
    web: FutureCalls = make_futurecalls(execution_enabled=False)
    web.register_future_call(recorder, "record")
    async with web:
        await web.session().future_call_recurring(
            "record",
            None,
            identifier="hourly",
            every=timedelta(hours=1),
            start=datetime.now(UTC) - timedelta(hours=10, minutes=30),
        )
    worker: FutureCalls = make_futurecalls()
    worker.register_future_call(recorder, "record")
    async with worker:
        await wait_for(lambda: len(recorder.calls) == 1)
        await asyncio.sleep(0.5)
    assert len(recorder.calls) == 1  # not eleven
    (chain,) = await chains(db)
    ahead = chain["due_at"] - datetime.now(UTC)
    assert timedelta(minutes=25) < ahead < timedelta(minutes=31)  # back on the :xx rhythm


async def test_cancel_stops_the_chain_even_while_an_occurrence_runs(make_futurecalls, db):
    recorder = Recorder(sleep=1.0)
    fc: FutureCalls = make_futurecalls()
    fc.register_future_call(recorder, "record")
    async with fc:
        session = fc.session()
        await session.future_call_recurring(
            "record",
            None,
            identifier="c",
            every=timedelta(milliseconds=200),
            start=datetime.now(UTC),
        )
        await wait_for(lambda: recorder.active == 1)
        assert await session.cancel_future_call("c") >= 1
        await wait_for(lambda: recorder.active == 0, within=15)
        await asyncio.sleep(0.6)
    assert len(recorder.calls) == 1  # the running one finished; no new ones
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 0


def test_cron_follows_the_timezone_across_daylight_saving() -> None:
    paris = Recurrence(cron="30 2 * * *", timezone="Europe/Paris")
    # 2027-03-28: clocks jump from 02:00 to 03:00 in Paris; 02:30 does not exist that day.
    before = datetime(2027, 3, 27, 12, tzinfo=UTC)
    first = paris.next(before, before)
    second = paris.next(first, first)
    assert first == datetime(
        2027, 3, 28, 1, 0, tzinfo=UTC
    )  # 03:00 CEST, the first minute after the gap
    assert second == datetime(2027, 3, 29, 0, 30, tzinfo=UTC)  # 02:30 CEST
    every = Recurrence(every=timedelta(minutes=10))
    due = datetime(2030, 1, 1, tzinfo=UTC)
    assert every.next(due, due + timedelta(minutes=35)) == due + timedelta(minutes=40)
    assert every.first(None, due) == due + timedelta(minutes=10)
    with pytest.raises(InvalidScheduleError):
        Recurrence(cron="not a cron at all")


async def test_a_slot_due_behind_the_frontier_runs_at_once(make_futurecalls, db):
    """A chain's slot becomes a one-off call due at the slot's time, which may lie behind
    where the dispatcher's next claim would start (the earliest of its last batch): the
    dispatcher starts that claim before the slot, so the call runs at once, not when
    maintenance or the next poll looks behind the frontier."""
    recorder = Recorder()
    fc: FutureCalls = make_futurecalls(poll_interval=60)
    fc.register_future_call(recorder, "record")
    async with fc:
        session = fc.session()
        await session.future_call_with_delay("record", Item(n=1), timedelta(0))
        await wait_for(lambda: len(recorder.calls) == 1, within=10)  # the frontier is set
        # A chain that arrives without a notification (as a slot the dispatcher finds by
        # itself would), its slot ten minutes ago; then a call that wakes the dispatcher.
        await db.execute(
            "INSERT INTO future_calls (name, payload, identifier, due_at, every)"
            " VALUES ('record', '{\"n\": 2}', 'behind', now() - interval '10 minutes',"
            " interval '1 day')"
        )
        await session.future_call_with_delay("record", Item(n=3), timedelta(0))
        await wait_for(lambda: len(recorder.calls) == 3, within=15)
    assert sorted(c.n for c in recorder.calls) == [1, 2, 3]
