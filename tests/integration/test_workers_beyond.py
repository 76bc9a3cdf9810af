"""Recurring chains, schedule-once and transactional scheduling across real uvicorn workers,
and the fastapi-futurecalls command."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta

import asyncpg
import httpx
import pytest

from tests.apps.worker_app import Job
from tests.conftest import ROOT
from tests.processes import Uvicorn
from tests.support import RunLog, schedule_jobs, wait_for

pytestmark = pytest.mark.slow
TARGET = "tests.apps.worker_app:futurecalls"


async def test_four_workers_declaring_a_chain_at_startup_keep_one(
    dsn: str, db: asyncpg.Connection, serve: Callable[..., Uvicorn], runlog: RunLog
):
    up = 0.0  # seconds any worker of either deploy could have been running the chain
    for _ in range(2):  # a deploy: every worker declares the chain again
        started = time.monotonic()
        server = serve(4, dsn, HEARTBEAT_MS="250")
        await asyncio.sleep(3)
        assert server.stop() == 0
        up += time.monotonic() - started
        chains = await db.fetchval("SELECT count(*) FROM future_calls WHERE every IS NOT NULL")
        assert chains == 1
    runs = runlog.runs()[-1]
    # At most one run per 250 ms slot while servers were up (plus a boundary slot for each
    # deploy); four workers each running the chain would make about four times as many.
    assert 6 <= runs <= up / 0.25 + 2 * 2


async def test_schedule_once_over_http_across_four_workers(
    dsn: str, db: asyncpg.Connection, serve: Callable[..., Uvicorn]
):
    server = serve(4, dsn)
    async with httpx.AsyncClient(base_url=server.url) as client:
        for if_exists in ("skip", "replace"):
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/schedule",
                        json={"n": n},
                        params={
                            "delay_ms": 3_600_000,
                            "identifier": if_exists,
                            "if_exists": if_exists,
                        },
                    )
                    for n in range(40)
                )
            )
            assert {r.status_code for r in responses} == {200}
            ids = {r.json()["id"] for r in responses}
            rows = await db.fetch("SELECT id FROM future_calls WHERE identifier = $1", if_exists)
            assert len(rows) == 1
            if if_exists == "skip":
                assert ids == {rows[0]["id"]}  # everybody was told the one kept id
    assert server.stop() == 0


async def test_transactional_scheduling_in_real_workers(
    dsn: str, db: asyncpg.Connection, serve: Callable[..., Uvicorn], runlog: RunLog
):
    await db.execute("CREATE TABLE users (id int PRIMARY KEY)")
    server = serve(2, dsn)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.post("/signup/1", params={"fail": True})).status_code == 409
        assert (await client.post("/signup/2")).status_code == 200
    await wait_for(lambda: runlog.count() == 1)
    await asyncio.sleep(0.5)
    assert server.stop() == 0
    assert [r["id"] for r in await db.fetch("SELECT id FROM users")] == [2]
    assert runlog.runs() == {2: 1}  # the rolled-back signup's call never existed


def cli(dsn: str, *args: str, runlog: RunLog | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "FUTURECALLS_TEST_LOG": str(runlog.path) if runlog else "/dev/null",
    }
    return subprocess.run(
        [sys.executable, "-m", "fastapi_futurecalls", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_run_due_list_cancel_and_exit_codes(dsn: str, db, runlog: RunLog):
    await schedule_jobs(dsn, [Job(n=n) for n in range(3)])
    await schedule_jobs(dsn, [Job(n=7)], delay=timedelta(days=1))
    ok = await asyncio.to_thread(cli, dsn, "run-due", TARGET, runlog=runlog)
    assert (ok.returncode, ok.stdout.strip()) == (0, "3 completed, 0 failed")
    assert set(runlog.runs()) == {0, 1, 2}

    await schedule_jobs(dsn, [Job(n=9)], name="boom")
    failed = await asyncio.to_thread(cli, dsn, "run-due", TARGET, runlog=runlog)
    assert (failed.returncode, failed.stdout.strip()) == (1, "0 completed, 1 failed")

    listing = await asyncio.to_thread(cli, dsn, "list", TARGET)
    assert listing.returncode == 0
    header, *lines = listing.stdout.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "STATE"]
    assert sorted(line.split()[2] for line in lines) == ["failed", "scheduled"]
    only_failed = await asyncio.to_thread(cli, dsn, "list", TARGET, "--state", "failed")
    assert "RuntimeError: boom" in only_failed.stdout and "scheduled" not in only_failed.stdout

    await db.execute("UPDATE future_calls SET identifier = 'later' WHERE state = 'scheduled'")
    cancelled = await asyncio.to_thread(cli, dsn, "cancel", TARGET, "later")
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, "cancelled 1")

    down = await asyncio.to_thread(cli, "postgresql://postgres@127.0.0.1:1/x", "list", TARGET)
    assert down.returncode == 3 and "database unavailable" in down.stderr
    usage = await asyncio.to_thread(cli, dsn, "list", "no_such_module:thing")
    assert usage.returncode == 2 and "cannot load" in usage.stderr
    helped = await asyncio.to_thread(cli, dsn, "--help")
    assert all(word in helped.stdout for word in ("worker", "run-due", "list", "cancel"))


async def test_cli_worker_dispatches_until_sigterm(dsn: str, runlog: RunLog):
    env = {**os.environ, "DATABASE_URL": dsn, "FUTURECALLS_TEST_LOG": str(runlog.path)}
    worker = subprocess.Popen(  # noqa: ASYNC220 - started once, awaited in a thread
        [sys.executable, "-m", "fastapi_futurecalls", "worker", TARGET, "--concurrency", "4"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        await schedule_jobs(dsn, [Job(n=n) for n in range(50)])
        await wait_for(lambda: runlog.count() == 50, within=30)
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        output, _ = worker.communicate()
    assert "dispatcher connected" in output
    assert max(runlog.runs().values()) == 1
