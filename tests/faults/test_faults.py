"""Faults inflicted for real: database restarts and outages, unreachable databases,
SIGTERM with calls in flight. Each ends with every call accounted for."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import timedelta

import asyncpg
import httpx
import pytest

from fastapi_futurecalls import DatabaseUnavailableError, FutureCalls
from tests.apps.worker_app import Job, Record
from tests.conftest import ROOT, WORKER_APP
from tests.faults.conftest import Cluster
from tests.processes import Uvicorn
from tests.support import RunLog, schedule_jobs, wait_for

pytestmark = pytest.mark.slow


@asynccontextmanager
async def keep_asking(url: str) -> AsyncIterator[list[int]]:
    """Ask /health every 50 ms while the block runs; yields the status codes seen."""
    statuses: list[int] = []

    async def ask() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=2) as client:
            while True:
                try:
                    statuses.append((await client.get("/health")).status_code)
                except httpx.HTTPError:
                    statuses.append(0)
                await asyncio.sleep(0.05)

    task = asyncio.create_task(ask())
    try:
        yield statuses
    finally:
        # Awaited, not just cancelled: the client closes its connections now, on this
        # loop, instead of leaving them to the garbage collector in a later test.
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def accounted(dsn: str, runlog: RunLog, total: int) -> tuple[int, int]:
    """(completed once, parked) once every call is one or the other; fails on a duplicate."""

    async def settled() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            parked = await conn.fetchval(
                "SELECT count(*) FROM future_calls WHERE state IN ('failed', 'interrupted')"
            )
            pending = await conn.fetchval("SELECT count(*) FROM future_calls")
        finally:
            await conn.close()
        return pending == parked and runlog.count() + parked >= total

    await wait_for(settled, within=90, what="every call to complete or be parked")
    runs = runlog.runs()
    assert max(runs.values(), default=1) == 1, "a call ran twice"
    conn = await asyncpg.connect(dsn)
    try:
        parked = {
            r["n"] for r in await conn.fetch("SELECT (payload->>'n')::int AS n FROM future_calls")
        }
    finally:
        await conn.close()
    assert not parked & set(runs), "a parked call also completed"
    assert set(runs) | parked == set(range(total)), "a call was lost"
    return len(runs), len(parked)


async def test_database_restart_while_workers_dispatch(
    fault_dsn: str, cluster: Cluster, serve: Callable[..., Uvicorn], runlog: RunLog
):
    total = 600
    server = serve(2, fault_dsn, FUTURECALLS_POLL_INTERVAL="1")
    # Due over the next six seconds; each runs for 50 ms.
    web = FutureCalls(fault_dsn, execution_enabled=False)
    web.register_future_call(Record(), "record")
    async with web:
        for n in range(total):
            await web.session().future_call_with_delay(
                "record", Job(n=n, sleep=0.05), timedelta(milliseconds=10 * n)
            )
    async with keep_asking(server.url) as statuses:
        await wait_for(lambda: runlog.count() > 100)
        cluster.restart()
        done, parked = await accounted(fault_dsn, runlog, total)
    assert (done, parked) == (total, 0)  # live workers took their calls back
    assert statuses and set(statuses) == {200}, "the web app stopped answering"
    assert server.stop() == 0
    assert "dispatcher lost the database" in server.output(tail=None)


async def test_database_unreachable_for_ten_seconds(
    fault_dsn: str, cluster: Cluster, serve: Callable[..., Uvicorn], runlog: RunLog
):
    total = 200
    server = serve(2, fault_dsn, FUTURECALLS_POLL_INTERVAL="1")
    await schedule_jobs(fault_dsn, [Job(n=n) for n in range(total // 2)])
    # Due well after the first half has run (a slow machine included), and before the
    # ten-second outage below is over.
    await schedule_jobs(
        fault_dsn, [Job(n=n) for n in range(total // 2, total)], timedelta(seconds=8)
    )
    await wait_for(lambda: runlog.count() >= total // 2, within=5)
    async with (
        keep_asking(server.url) as statuses,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        cluster.stop()
        outage = time.monotonic()
        response = await client.post("/schedule", json={"n": 10_000})
        assert response.status_code == 503
        assert "database unavailable" in response.json()["detail"]
        with pytest.raises(DatabaseUnavailableError):
            await schedule_jobs(fault_dsn, [Job(n=10_001)])
        await asyncio.sleep(10 - (time.monotonic() - outage))
        assert runlog.count() == total // 2  # the second half fell due during the outage
        cluster.start()
        done, parked = await accounted(fault_dsn, runlog, total)
    assert (done, parked) == (total, 0)
    assert set(statuses) == {200}
    assert 10_000 not in runlog.runs() and 10_001 not in runlog.runs()  # nothing half-stored
    assert server.stop() == 0


def test_unreachable_database_at_start_is_a_clear_error_not_a_hang() -> None:
    with socket.socket() as silent:  # accepts TCP connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        for dsn in (
            f"postgresql://postgres@127.0.0.1:{port}/x",
            "postgresql://postgres@127.0.0.1:1/x",
        ):
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "uvicorn", WORKER_APP, "--workers", "2", "--port", "0"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                env={
                    "PATH": "/usr/bin:/bin",
                    "DATABASE_URL": dsn,
                    "FUTURECALLS_CONNECT_TIMEOUT": "2",
                    "FUTURECALLS_TEST_LOG": "/dev/null",
                },
            )
            assert time.monotonic() - started < 30
            assert "DatabaseUnavailableError" in done.stderr
            assert "database unavailable" in done.stderr


async def test_sigterm_lets_calls_in_flight_finish_within_the_grace(
    fault_dsn: str, serve: Callable[..., Uvicorn], runlog: RunLog
):
    server = serve(1, fault_dsn, FUTURECALLS_SHUTDOWN_GRACE="10")
    await schedule_jobs(fault_dsn, [Job(n=n, sleep=1.5) for n in range(30)])
    await wait_for(lambda: runlog.count("started") >= 10)
    started = time.monotonic()
    # A single uvicorn process re-raises SIGTERM after a clean shutdown.
    assert server.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in server.output()
    assert time.monotonic() - started < 10
    in_flight = runlog.runs("started")
    assert set(runlog.runs("done")) == set(in_flight)  # every started call finished
    conn = await asyncpg.connect(fault_dsn)
    try:
        rows = await conn.fetch("SELECT state, (payload->>'n')::int AS n FROM future_calls")
    finally:
        await conn.close()
    assert {r["state"] for r in rows} == {"scheduled"}  # the rest wait, none claimed
    assert {r["n"] for r in rows} | set(in_flight) == set(range(30))


async def test_a_start_during_a_short_outage_waits_for_the_database(
    fault_dsn: str, cluster: Cluster
):
    """A worker (re)started while the database restarts or fails over comes up once the
    database is back, within connect_timeout, instead of failing the app's startup."""
    cluster.stop()
    futurecalls = FutureCalls(fault_dsn, connect_timeout=20, poll_interval=1)
    futurecalls.register_future_call(Record(), "record")
    starting = asyncio.create_task(futurecalls.start())
    await asyncio.sleep(2)
    assert not starting.done()  # still trying, not failed
    await asyncio.to_thread(cluster.start)
    await asyncio.wait_for(starting, 20)
    try:
        assert futurecalls.worker_id is not None
    finally:
        await futurecalls.stop()
