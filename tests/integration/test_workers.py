"""Real `uvicorn --workers N` processes against one database."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import timedelta

import asyncpg
import httpx
import pytest

from tests.apps.worker_app import Job
from tests.support import RunLog, schedule_jobs, wait_for

pytestmark = pytest.mark.slow


async def test_four_workers_drain_calls_due_at_one_instant_exactly_once(
    dsn: str, db: asyncpg.Connection, serve, runlog: RunLog
):
    total = 5000
    await schedule_jobs(dsn, [Job(n=n) for n in range(total)], delay=timedelta(seconds=8))
    server = serve(4, dsn)
    await wait_for(lambda: runlog.count() >= total, within=120, what="every call to run")
    await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM future_calls"))
    assert server.stop() == 0
    runs = runlog.runs()
    assert max(runs.values()) == 1, "a call ran twice"
    assert set(runs) == set(range(total)), "a call was lost"
    assert len({pid for _, pid in runlog.events("done")}) >= 2, "the work was not shared"


async def test_scheduling_through_an_endpoint_runs_on_some_worker(dsn: str, serve, runlog: RunLog):
    server = serve(2, dsn)
    async with httpx.AsyncClient(base_url=server.url) as client:
        for n in range(20):
            response = await client.post("/schedule", json={"n": n}, params={"delay_ms": 200})
            assert response.status_code == 200, response.text
    await wait_for(lambda: runlog.count() == 20)
    assert server.stop() == 0
    assert set(runlog.runs()) == set(range(20))


async def test_a_graceful_restart_loses_nothing_and_runs_nothing_twice(
    dsn: str, db: asyncpg.Connection, serve, runlog: RunLog
):
    total = 300
    await schedule_jobs(dsn, [Job(n=n, sleep=0.1) for n in range(total)])
    first = serve(2, dsn)
    await wait_for(lambda: runlog.count() > 20)
    assert first.stop() == 0  # SIGTERM mid-drain: running calls finish, the rest wait
    assert runlog.count("done") == runlog.count("started") < total  # all it started, it finished
    assert await db.fetchval("SELECT count(*) FROM future_calls WHERE state <> 'scheduled'") == 0

    second = serve(2, dsn)
    await wait_for(lambda: runlog.count() >= total, within=60)
    await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM future_calls"))
    assert second.stop() == 0
    runs = runlog.runs()
    assert set(runs) == set(range(total)) and max(runs.values()) == 1


async def kill_one_worker_mid_call(db: asyncpg.Connection, runlog: RunLog, calls: int) -> set[int]:
    await wait_for(lambda: runlog.count("started") >= calls, within=20)
    victim = runlog.events("started")[0][1]
    os.kill(victim, signal.SIGKILL)
    return {n for n, pid in runlog.events("started") if pid == victim}


async def test_a_killed_worker_s_calls_are_parked_as_interrupted_never_rerun(
    dsn: str, db: asyncpg.Connection, serve, runlog: RunLog
):
    server = serve(
        2,
        dsn,
        FUTURECALLS_POLL_INTERVAL="0.5",
        FUTURECALLS_SHUTDOWN_GRACE="0.5",
        FUTURECALLS_LIVENESS_GRACE="2",
    )
    await schedule_jobs(dsn, [Job(n=n, sleep=30) for n in range(6)])
    victim_calls = await kill_one_worker_mid_call(db, runlog, 6)
    t0 = time.monotonic()
    await wait_for(
        lambda: db.fetchval(
            "SELECT count(*) = $1 FROM future_calls WHERE state = 'interrupted'", len(victim_calls)
        ),
        within=15,
        what="the victim's calls to be parked",
    )
    assert time.monotonic() - t0 < 10
    await asyncio.sleep(1.5)  # more scans: nothing re-runs the parked calls
    assert runlog.count("started") == 6
    parked = await db.fetch(
        "SELECT (payload->>'n')::int AS n, last_error FROM future_calls WHERE state='interrupted'"
    )
    assert {r["n"] for r in parked} == victim_calls
    assert all("worker" in r["last_error"] for r in parked)
    server.stop()
    # The survivors' calls were cut short by the 0.5 s grace and parked too; none ran twice.
    assert runlog.count("done") == 0
    assert await db.fetchval("SELECT count(*) FROM future_calls WHERE state='interrupted'") == 6


async def test_with_retries_a_killed_worker_s_calls_run_to_completion_elsewhere(
    dsn: str, db: asyncpg.Connection, serve, runlog: RunLog
):
    serve(2, dsn, FUTURECALLS_POLL_INTERVAL="0.5", FUTURECALLS_LIVENESS_GRACE="2")
    await schedule_jobs(dsn, [Job(n=n, sleep=2) for n in range(6)], name="retried")
    victim_calls = await kill_one_worker_mid_call(db, runlog, 6)
    await wait_for(lambda: runlog.count("done") >= 6, within=30, what="every call to complete")
    await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM future_calls"))
    runs = runlog.runs()
    assert set(runs) == set(range(6)) and max(runs.values()) == 1
    started = runlog.runs("started")
    assert all(started[n] == 2 for n in victim_calls)  # the killed run, then the retry
    assert all(started[n] == 1 for n in set(range(6)) - victim_calls)  # others untouched
