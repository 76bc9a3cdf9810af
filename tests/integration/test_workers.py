"""Real `uvicorn --workers N` processes against one database."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from fastapi_futurecalls import FutureCalls
from tests.apps.worker_app import SETUP, Job, Record
from tests.processes import Uvicorn
from tests.support import wait_for

pytestmark = pytest.mark.slow
APP = "tests.apps.worker_app:app"


@pytest.fixture
async def executions(db: asyncpg.Connection) -> asyncpg.Connection:
    await db.execute(SETUP)
    return db


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Uvicorn]]:
    started: list[Uvicorn] = []
    yield started
    for server in started:
        server.kill()


async def schedule_jobs(dsn: str, jobs: list[Job], delay: timedelta = timedelta(0)) -> None:
    web = FutureCalls(dsn, execution_enabled=False)
    web.register_future_call(Record(), "record")
    async with web:
        session = web.session()
        for job in jobs:
            await session.future_call_with_delay("record", job, delay)


async def test_four_workers_drain_calls_due_at_one_instant_exactly_once(
    dsn: str, executions: asyncpg.Connection, servers: list[Uvicorn], tmp_path: Path
):
    total = 5000
    await schedule_jobs(dsn, [Job(n=n) for n in range(total)], delay=timedelta(seconds=8))
    server = Uvicorn(APP, dsn, 4, tmp_path / "uvicorn.log")
    servers.append(server)
    server.wait_ready()
    await wait_for(
        lambda: executions.fetchval("SELECT count(*) >= $1 FROM executions", total),
        within=120,
        what="every call to run",
    )
    await wait_for(lambda: executions.fetchval("SELECT count(*) = 0 FROM future_calls"))
    assert server.stop() == 0
    stats = await executions.fetchrow(
        "SELECT count(*) AS runs, count(DISTINCT n) AS calls, count(DISTINCT pid) AS pids "
        "FROM executions"
    )
    assert stats["runs"] == total, "a call ran twice"
    assert stats["calls"] == total, "a call was lost"
    assert stats["pids"] >= 2, "the work was not shared between workers"


async def test_scheduling_through_an_endpoint_runs_on_some_worker(
    dsn: str, executions: asyncpg.Connection, servers: list[Uvicorn], tmp_path: Path
):
    server = Uvicorn(APP, dsn, 2, tmp_path / "uvicorn.log")
    servers.append(server)
    server.wait_ready()
    async with httpx.AsyncClient(base_url=server.url) as client:
        for n in range(20):
            response = await client.post("/schedule", json={"n": n}, params={"delay_ms": 200})
            assert response.status_code == 200, response.text
    await wait_for(lambda: executions.fetchval("SELECT count(*) = 20 FROM executions"))
    assert server.stop() == 0
    assert await executions.fetchval("SELECT count(DISTINCT n) FROM executions") == 20


async def test_a_graceful_restart_loses_nothing_and_runs_nothing_twice(
    dsn: str, executions: asyncpg.Connection, servers: list[Uvicorn], tmp_path: Path
):
    total = 300
    await schedule_jobs(dsn, [Job(n=n, sleep=0.1) for n in range(total)])
    first = Uvicorn(APP, dsn, 2, tmp_path / "first.log")
    servers.append(first)
    first.wait_ready()
    await wait_for(lambda: executions.fetchval("SELECT count(*) > 20 FROM executions"))
    assert first.stop() == 0  # SIGTERM mid-drain: running calls finish, the rest wait
    done_by_first = await executions.fetchval("SELECT count(*) FROM executions")
    assert done_by_first < total
    assert (
        await executions.fetchval("SELECT count(*) FROM future_calls WHERE state <> 'scheduled'")
        == 0
    )

    second = Uvicorn(APP, dsn, 2, tmp_path / "second.log")
    servers.append(second)
    second.wait_ready()
    await wait_for(
        lambda: executions.fetchval("SELECT count(*) >= $1 FROM executions", total), within=60
    )
    await wait_for(lambda: executions.fetchval("SELECT count(*) = 0 FROM future_calls"))
    assert second.stop() == 0
    assert await executions.fetchval("SELECT count(*) FROM executions") == total
    assert await executions.fetchval("SELECT count(DISTINCT n) FROM executions") == total


async def test_a_killed_worker_s_calls_are_parked_as_interrupted_never_rerun(
    dsn: str, executions: asyncpg.Connection, servers: list[Uvicorn], tmp_path: Path
):
    server = Uvicorn(
        APP,
        dsn,
        2,
        tmp_path / "uvicorn.log",
        FUTURECALLS_POLL_INTERVAL="0.5",
        FUTURECALLS_SHUTDOWN_GRACE="0.5",
    )
    servers.append(server)
    server.wait_ready()
    await schedule_jobs(dsn, [Job(n=n, sleep=30) for n in range(6)])
    await wait_for(lambda: executions.fetchval("SELECT count(*) = 6 FROM started"), within=20)
    victim = await executions.fetchval("SELECT pid FROM started ORDER BY n LIMIT 1")
    victim_calls = {
        r["n"] for r in await executions.fetch("SELECT n FROM started WHERE pid=$1", victim)
    }
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    await wait_for(
        lambda: executions.fetchval(
            "SELECT count(*) = $1 FROM future_calls WHERE state = 'interrupted'", len(victim_calls)
        ),
        within=15,
        what="the victim's calls to be parked",
    )
    parked_after = time.monotonic() - t0
    await asyncio.sleep(1.5)  # more scans: nothing re-runs the parked calls
    assert await executions.fetchval("SELECT count(*) FROM started") == 6
    assert {
        r["n"]
        for r in await executions.fetch(
            "SELECT (payload->>'n')::int AS n FROM future_calls WHERE state='interrupted'"
        )
    } == victim_calls
    assert parked_after < 10
    server.stop()
    # The survivors' calls were cut short by the 0.5 s grace and parked too; none ran twice.
    assert await executions.fetchval("SELECT count(*) FROM executions") == 0
    assert (
        await executions.fetchval("SELECT count(*) FROM future_calls WHERE state='interrupted'")
        == 6
    )
