"""Fleet controls against a real PostgreSQL: per-name limits, pause and resume,
priorities, what a running call knows about itself, RetryLater, and retention."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from fastapi_futurecalls import (
    CallContext,
    ConfigurationError,
    FutureCall,
    InvalidScheduleError,
    PlannedCall,
    RegistrationError,
    RetryLater,
    Session,
    current_call,
)
from tests.support import Item, Recorder, wait_for


class Serial(FutureCall[Item]):
    """fleet_limit 1: logs its start and end, shared by several dispatchers."""

    fleet_limit = 1

    def __init__(self) -> None:
        self.order: list[int] = []
        self.active = 0
        self.max_active = 0

    async def invoke(self, session: Session, object: Item | None) -> None:
        assert object is not None
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.order.append(object.n)
        await asyncio.sleep(0.01)
        self.active -= 1


async def test_fleet_limit_1_runs_calls_one_at_a_time_in_due_order(make_futurecalls):
    serial = Serial()
    dispatchers = []
    for _ in range(3):
        fc = make_futurecalls(concurrency_limit=5, poll_interval=0.5)
        fc.register_future_call(serial, "serial")
        dispatchers.append(fc)
    base = datetime.now(UTC) - timedelta(minutes=10)
    web = make_futurecalls(execution_enabled=False)
    web.register_future_call(serial, "serial")
    async with web:
        await web.session().future_calls_batch(
            [PlannedCall("serial", Item(n=n), at=base + timedelta(seconds=n)) for n in range(40)][
                ::-1
            ]
        )
        async with dispatchers[0], dispatchers[1], dispatchers[2]:
            await wait_for(lambda: len(serial.order) == 40, within=30)
    assert serial.order == list(range(40))
    assert serial.max_active == 1


async def test_a_fleet_limit_caps_calls_at_once_and_frees_slots_as_calls_end(make_futurecalls, db):
    class Capped(Recorder):
        fleet_limit = 2

    capped = Capped(sleep=0.2)
    first = make_futurecalls(concurrency_limit=10, poll_interval=30)
    second = make_futurecalls(concurrency_limit=10, poll_interval=30)
    first.register_future_call(capped, "capped")
    second.register_future_call(capped, "capped")
    async with first, second:
        began = time.monotonic()
        await first.session().future_calls_batch(
            [PlannedCall("capped", Item(n=n)) for n in range(8)]
        )
        await wait_for(lambda: len(capped.calls) == 8, within=20)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM future_calls"))
        took = time.monotonic() - began
    assert capped.max_active == 2
    # Four rounds of two 0.2 s calls: each freed slot is taken at once (woken by NOTIFY,
    # not by the 30 s poll).
    assert took < 10


async def test_calls_scheduled_without_the_limit_are_brought_under_it(make_futurecalls, db):
    """Calls of a name scheduled by code that had no fleet_limit for it (before the
    deploy that added one): the dispatchers' maintenance marks them, then they run under
    the limit."""

    class Capped(Recorder):
        fleet_limit = 1

    await db.execute(
        "INSERT INTO future_calls (name, payload, due_at)"
        " SELECT 'capped', json_build_object('n', g), now() FROM generate_series(1, 6) AS g"
    )
    capped = Capped(sleep=0.05)
    worker = make_futurecalls(concurrency_limit=10, poll_interval=0.2)
    worker.register_future_call(capped, "capped")
    async with worker:
        await wait_for(lambda: len(capped.calls) == 6, within=15)
    assert capped.max_active == 1


def test_fleet_limit_and_priority_are_checked_at_registration(make_futurecalls):
    fc = make_futurecalls()
    for attribute, value in [
        ("fleet_limit", 0),
        ("fleet_limit", 10_001),
        ("fleet_limit", True),
        ("priority", -1),
        ("priority", 40_000),
        ("priority", 1.5),
    ]:
        bad = type("Bad", (Recorder,), {attribute: value})
        with pytest.raises(RegistrationError, match=attribute):
            fc.register_future_call(bad(), f"bad-{attribute}-{value}")


async def test_a_paused_name_does_not_start_until_resumed_and_scheduling_goes_on(
    make_futurecalls, db
):
    recorder, other = Recorder(), Recorder()
    worker = make_futurecalls(poll_interval=30)
    worker.register_future_call(recorder, "mail")
    worker.register_future_call(other, "other")
    async with worker:
        session = worker.session()
        assert await session.pause_future_calls("mail") is True
        assert await session.pause_future_calls("mail") is False
        assert await session.paused_future_calls() == ["mail"]
        for n in range(5):
            await session.future_call_with_delay("mail", Item(n=n), timedelta(0), f"mail-{n}")
        await session.future_call_with_delay("other", Item(n=99), timedelta(0))
        await wait_for(lambda: len(other.calls) == 1, within=10)
        await asyncio.sleep(1.0)
        assert recorder.calls == []  # paused: scheduled, not started
        listed = await session.list_future_calls(name="mail")
        assert len(listed) == 5 and {r.state for r in listed} == {"scheduled"}
        assert await session.cancel_future_call("mail-4") == 1
        resumed_at = time.monotonic()
        assert await session.resume_future_calls("mail") is True
        await wait_for(lambda: len(recorder.calls) == 4, within=5)
        # Woken by the resume (NOTIFY), not by the 30 s poll.
        assert time.monotonic() - resumed_at < 5
        assert await session.resume_future_calls("mail") is False
        assert await session.paused_future_calls() == []
        with pytest.raises(InvalidScheduleError, match="name"):
            await session.pause_future_calls("")


async def test_a_pause_is_stored_it_holds_for_a_later_process(make_futurecalls):
    first = make_futurecalls(execution_enabled=False)
    first.register_future_call(Recorder(), "mail")
    async with first:
        await first.session().pause_future_calls("mail")
        await first.session().future_call_with_delay("mail", Item(n=1), timedelta(0))
    recorder = Recorder()
    later = make_futurecalls(poll_interval=0.2)
    later.register_future_call(recorder, "mail")
    async with later:
        assert await later.session().paused_future_calls() == ["mail"]
        await asyncio.sleep(1.0)  # several ticks and claims
        assert recorder.calls == []
        await later.session().resume_future_calls("mail")
        await wait_for(lambda: len(recorder.calls) == 1, within=5)


class Started(FutureCall[Item]):
    """Appends the payload's n to a list shared by its instances."""

    def __init__(self, started: list[int]) -> None:
        self.started = started

    async def invoke(self, session: Session, object: Item | None) -> None:
        assert object is not None
        self.started.append(object.n)


async def test_higher_priority_starts_first_within_a_priority_oldest_first(make_futurecalls, db):
    class Urgent(Started):
        priority = 7

    started: list[int] = []
    web = make_futurecalls(execution_enabled=False)
    worker = make_futurecalls(concurrency_limit=1)
    for fc in (web, worker):
        fc.register_future_call(Started(started), "plain")
        fc.register_future_call(Urgent(started), "urgent")
    base = datetime.now(UTC) - timedelta(hours=1)

    async with web:
        session = web.session()
        await session.future_calls_batch(
            [PlannedCall("plain", Item(n=n), at=base + timedelta(seconds=n)) for n in range(5)]
            + [
                PlannedCall("plain", Item(n=100), at=base + timedelta(minutes=30), priority=3),
                PlannedCall("urgent", Item(n=200), at=base + timedelta(minutes=50)),
                PlannedCall("urgent", Item(n=201), at=base + timedelta(minutes=40), priority=0),
            ]
        )
        await session.future_call_at_time(
            "plain", Item(n=101), base + timedelta(minutes=20), priority=3
        )
        records = {r.payload.n: r for r in await session.list_future_calls() if r.payload}
        assert records[100].priority == 3 and records[200].priority == 7
        assert records[201].priority == 0 and records[0].priority == 0
        with pytest.raises(InvalidScheduleError, match="priority"):
            await session.future_call_with_delay("plain", Item(n=1), timedelta(0), priority=-1)
        with pytest.raises(InvalidScheduleError, match="priority"):
            await session.future_calls_batch([PlannedCall("plain", Item(n=1), priority=99_999)])
        async with worker:
            await wait_for(lambda: len(started) == 9, within=15)
    assert started == [200, 101, 100, 0, 1, 2, 3, 4, 201]


class Introspective(FutureCall[Item]):
    max_attempts = 3
    retry_backoff = timedelta(milliseconds=10)

    def __init__(self) -> None:
        self.seen: list[CallContext] = []

    async def invoke(self, session: Session, object: Item | None) -> None:
        assert session.call is current_call()
        self.seen.append(session.call)
        if session.call.attempt < 2:
            raise RuntimeError("first attempt fails")


async def test_a_running_call_knows_its_id_attempt_and_times(make_futurecalls):
    introspective = Introspective()
    fc = make_futurecalls(poll_interval=0.5)
    fc.register_future_call(introspective, "introspective")
    async with fc:
        due = datetime.now(UTC) - timedelta(seconds=5)
        call_id = await fc.session().future_call_at_time(
            "introspective", Item(n=1), due, "the-identifier"
        )
        await wait_for(lambda: len(introspective.seen) == 2, within=10)
        with pytest.raises(ConfigurationError, match="invoke"):
            fc.session().call  # noqa: B018 - outside a running call
    first, second = introspective.seen
    assert (first.id, first.name, first.identifier) == (call_id, "introspective", "the-identifier")
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.max_attempts == second.max_attempts == 3
    assert abs((first.due_at - due).total_seconds()) < 0.001
    assert first.started_at >= first.due_at and second.started_at > first.started_at
    assert second.due_at > first.due_at  # the retry's own due time
    assert (first.key, second.key) == (f"{call_id}:1", f"{call_id}:2")


class Snoozing(FutureCall[Item]):
    def __init__(self, times: int, delay: object = 0.2) -> None:
        self.times = times
        self.delay = delay
        self.runs: list[tuple[int, int, float]] = []

    async def invoke(self, session: Session, object: Item | None) -> None:
        self.runs.append((session.call.attempt, session.call.max_attempts, time.monotonic()))
        if len(self.runs) <= self.times:
            raise RetryLater(self.delay)  # type: ignore[arg-type]


async def test_retry_later_runs_again_after_the_delay_without_counting_as_a_failure(
    make_futurecalls, db
):
    snoozing = Snoozing(times=2)
    fc = make_futurecalls(poll_interval=30)
    fc.register_future_call(snoozing, "snoozing")  # max_attempts 1: at most once
    async with fc:
        await fc.session().future_call_with_delay("snoozing", Item(n=1), timedelta(0))
        await wait_for(lambda: len(snoozing.runs) == 3, within=10)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM future_calls"))
    assert [(a, m) for a, m, _ in snoozing.runs] == [(1, 1), (2, 2), (3, 3)]
    gaps = [b[2] - a[2] for a, b in zip(snoozing.runs, snoozing.runs[1:], strict=False)]
    assert all(0.15 < gap < 5 for gap in gaps), gaps  # after the delay, woken without a poll


async def test_retry_later_is_bounded_and_a_bad_delay_is_a_failure(
    make_futurecalls, db, monkeypatch
):
    monkeypatch.setattr(RetryLater, "MAX_TIMES", 2)
    endless, bad = Snoozing(times=10, delay=0), Snoozing(times=1, delay=-5)
    fc = make_futurecalls(poll_interval=0.5)
    fc.register_future_call(endless, "endless")
    fc.register_future_call(bad, "bad")
    async with fc:
        await fc.session().future_call_with_delay("endless", Item(n=1), timedelta(0))
        await fc.session().future_call_with_delay("bad", Item(n=2), timedelta(0))
        await wait_for(
            lambda: db.fetchval("SELECT count(*) = 2 FROM future_calls WHERE state = 'failed'"),
            within=10,
        )
    errors = dict(await db.fetch("SELECT name, last_error FROM future_calls"))
    assert len(endless.runs) == 3  # two requests granted, the third is a failure
    assert "retry later more than 2 times" in errors["endless"]
    assert "RetryLater delay must be from 0 to 30 days" in errors["bad"]
    assert len(bad.runs) == 1


async def test_parked_calls_are_pruned_after_the_retention(
    make_futurecalls, db: asyncpg.Connection
):
    await db.execute(
        "INSERT INTO future_calls (name, due_at, state, finished_at, last_error)"
        " SELECT 'gone', now() - interval '20 days', s, now() - age, 'x'"
        " FROM unnest(ARRAY['failed', 'interrupted', 'failed'],"
        "             ARRAY[interval '15 days', interval '15 days', interval '1 day']) AS t(s, age)"
    )
    await db.execute(
        "INSERT INTO future_calls (name, identifier, due_at, state, finished_at, every)"
        " VALUES ('gone', 'chain', now(), 'failed', now() - interval '30 days', interval '1 hour')"
    )
    keeping = make_futurecalls(poll_interval=0.1, retention=0)
    keeping.register_future_call(Recorder(), "gone")
    async with keeping:
        await asyncio.sleep(1.0)  # several maintenance runs: retention 0 keeps everything
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 4
    pruning = make_futurecalls(poll_interval=0.1)  # the default: 14 days
    pruning.register_future_call(Recorder(), "gone")
    async with pruning:
        await wait_for(lambda: db.fetchval("SELECT count(*) = 2 FROM future_calls"), within=10)
        kept = await db.fetch(
            "SELECT finished_at > now() - interval '2 days' AS recent, every"
            " FROM future_calls ORDER BY id"
        )
        assert [(r["recent"], r["every"] is not None) for r in kept] == [
            (True, False),
            (False, True),
        ]
        assert await pruning.session().prune_future_calls(timedelta(hours=1)) == 1
        assert await pruning.session().prune_future_calls(timedelta(hours=1)) == 0
        with pytest.raises(InvalidScheduleError, match="older_than"):
            await pruning.session().prune_future_calls(timedelta(-1))
