"""Fleet limits and priorities with real `uvicorn --workers N` processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import timedelta

import asyncpg
import pytest

from fastapi_futurecalls import FutureCalls
from tests.apps.worker_app import Job, Limited, Record
from tests.support import RunLog, schedule_jobs, wait_for

pytestmark = pytest.mark.slow


def most_at_once(runlog: RunLog) -> int:
    """The largest number of `limited` runs between their start and end at one time
    (the clock of one machine, shared by the worker processes)."""
    edges = [(t, 1) for _, _, t in runlog.timed("started")]
    edges += [(t, -1) for _, _, t in runlog.timed("done")]
    at_once = most = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):  # ends first on ties
        at_once += step
        most = max(most, at_once)
    return most


async def test_a_fleet_limit_holds_across_four_workers_and_a_killed_worker_s_slot_comes_back(
    dsn: str, db: asyncpg.Connection, serve, runlog: RunLog
):
    server = serve(
        4,
        dsn,
        FUTURECALLS_POLL_INTERVAL="0.5",
        FUTURECALLS_LIVENESS_GRACE="2",
        FUTURECALLS_SHUTDOWN_GRACE="1",
    )
    total = 500
    await schedule_jobs(dsn, [Job(n=n, sleep=0.02) for n in range(total)], name="limited")
    await wait_for(lambda: runlog.count("done") >= total, within=120, what="every call to run")
    runs = runlog.runs("done")
    assert set(runs) == set(range(total)) and max(runs.values()) == 1
    assert runlog.count("started") == total
    assert most_at_once(runlog) == 3  # never more, and the limit is used, not serialised
    assert len({pid for _, pid in runlog.events("started")}) >= 2, "the work was not shared"

    # Three long calls take the three slots; the worker running one of them is killed.
    await schedule_jobs(dsn, [Job(n=1000 + n, sleep=60) for n in range(3)], name="limited")
    await wait_for(lambda: runlog.count("started") == total + 3, within=20)
    victim_n, victim, _ = runlog.timed("started")[total]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    await schedule_jobs(dsn, [Job(n=2000, sleep=0)], name="limited")
    await wait_for(lambda: 2000 in runlog.runs("done"), within=30, what="the freed slot")
    (_, _, started_at), *_ = [e for e in runlog.timed("started") if e[0] == 2000]
    assert started_at is not None and started_at > killed_at  # not before the slot was freed
    assert (
        await db.fetchval(
            "SELECT state FROM future_calls WHERE (payload->>'n')::int = $1", victim_n
        )
        == "interrupted"
    )
    others = {n for n, pid, _ in runlog.timed("started")[total : total + 3] if pid != victim}
    running = await db.fetch(
        "SELECT (payload->>'n')::int AS n FROM future_calls WHERE state = 'running'"
    )
    assert {r["n"] for r in running} == others  # the two long calls of live workers go on
    server.kill()


async def test_a_high_priority_call_starts_ahead_of_a_backlog_of_200_000(
    dsn: str, db: asyncpg.Connection, serve, runlog: RunLog
):
    backlog = 200_000
    await db.execute(
        "INSERT INTO future_calls (name, payload, due_at)"
        " SELECT 'record', json_build_object('n', g), now() - interval '1 minute'"
        " FROM generate_series(1, $1) AS g",
        backlog,
    )
    server = serve(2, dsn)
    await wait_for(lambda: runlog.count("done") >= 2000, within=60, what="the backlog to drain")
    web = FutureCalls(dsn, execution_enabled=False)
    web.register_future_call(Record(), "record")
    web.register_future_call(Limited(), "limited")
    async with web:
        before = runlog.path.stat().st_size
        scheduled = time.monotonic()
        await web.session().future_call_with_delay("record", Job(n=0), timedelta(0), priority=10)
        committed = runlog.path.stat().st_size  # what started before it could be seen

        def urgent_ran() -> bool:  # reads only what was appended since it was scheduled
            with runlog.path.open("rb") as log:
                log.seek(before)
                return any(line.split()[1] == b"0" for line in log.read().splitlines())

        await wait_for(urgent_ran, within=30, what="the urgent call")
        waited = time.monotonic() - scheduled
    server.kill()
    log = runlog.path.read_bytes()
    urgent_at = log.index(b"done 0 ", before)
    ahead = log[committed:urgent_at].count(b"\n") if urgent_at > committed else 0
    remaining = await db.fetchval("SELECT count(*) FROM future_calls")
    print(f"urgent call: {ahead} backlog calls started ahead of it, {waited * 1000:.0f} ms")
    assert remaining > backlog / 2, "the backlog drained before the check could mean anything"
    # One claim turn: each of the two workers may start the batch it holds and the one
    # its claim in flight takes (10 calls each), then takes the urgent call first.
    assert ahead <= 2 * 2 * 10, f"{ahead} calls of priority 0 started ahead of it"


async def test_a_pause_holds_on_every_worker_and_a_resume_reaches_them_at_once(
    dsn: str, db: asyncpg.Connection, serve, runlog: RunLog
):
    serve(2, dsn, FUTURECALLS_POLL_INTERVAL="30")  # no tick comes to the rescue
    web = FutureCalls(dsn, execution_enabled=False)
    web.register_future_call(Record(), "record")
    async with web:
        session = web.session()
        assert await session.pause_future_calls("record")
        await schedule_jobs(dsn, [Job(n=n) for n in range(20)])
        await asyncio.sleep(1.5)
        assert runlog.count("done") == 0, "a worker started a call of a paused name"
        assert (
            await db.fetchval("SELECT count(*) FROM future_calls WHERE state = 'scheduled'") == 20
        )
        resumed = time.monotonic()
        assert await session.resume_future_calls("record")
        await wait_for(lambda: runlog.count("done") == 20, within=10, what="every call to run")
        assert time.monotonic() - resumed < 10
    runs = runlog.runs()
    assert set(runs) == set(range(20)) and max(runs.values()) == 1
