"""Failover to a promoted streaming standby (tests/replica.py), the application on a
multi-host DSN: live workers keep their running calls, nothing runs twice, nothing is
lost, and dispatch resumes on the new primary without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

import asyncpg
import pytest

from tests.apps.worker_app import Job
from tests.faults.conftest import Replicated
from tests.processes import Uvicorn
from tests.support import RunLog, schedule_jobs, wait_for

pytestmark = pytest.mark.slow

LONG = 12.0  # seconds each long call runs: across the stop, the promotion and the reconnect
# Between the primary's stop and the promotion, as a managed failover takes its time to
# notice and decide: the workers are then at different points of their reconnect backoff
# and come back one by one, as they do in production.
OUTAGE = 3.0
PER_WORKER = 4  # FUTURECALLS_CONCURRENCY_LIMIT, so that every worker holds long calls
WORKERS = 3


async def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def settle(
    dsn: str, runlog: RunLog, expected: set[int], within: float = 60
) -> dict[int, tuple[str, str | None]]:
    """Wait until each expected call completed (RunLog) or is parked in the table; return
    the parked ones, n -> (state, last_error)."""

    async def settled() -> bool:
        rows = await fetch(dsn, "SELECT state FROM future_calls")
        if any(r["state"] in ("scheduled", "running") for r in rows):
            return False
        return len(set(runlog.runs()) & expected) + len(rows) >= len(expected)

    await wait_for(settled, within=within, what="every call to complete or be parked")
    rows = await fetch(dsn, "SELECT (payload->>'n')::int AS n, state, last_error FROM future_calls")
    return {r["n"]: (r["state"], r["last_error"]) for r in rows}


async def test_the_pair_replicates_and_the_multi_host_dsn_follows_the_promotion(
    replica_pair: Replicated,
):
    """The infrastructure itself: a call scheduled on the primary is on the standby; after
    the primary stops and the standby is promoted, the same multi-host DSN connects to the
    standby, which takes writes."""
    pair = replica_pair.pair
    rows = await fetch(replica_pair.dsn, "SELECT inet_server_port() AS port")
    assert rows[0]["port"] == pair.primary.port
    await schedule_jobs(replica_pair.dsn, [Job(n=1)], timedelta(hours=1))
    pair.wait_caught_up()
    on_standby = await fetch(replica_pair.standby_dsn, "SELECT name FROM future_calls")
    assert [r["name"] for r in on_standby] == ["record"]

    pair.stop_primary("fast")
    assert not pair.primary.running()
    with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InternalClientError)):
        await fetch(replica_pair.dsn, "SELECT 1")  # the standby is read-only: refused
    pair.promote()
    rows = await fetch(replica_pair.dsn, "SELECT inet_server_port() AS port")
    assert rows[0]["port"] == pair.standby.port
    await schedule_jobs(replica_pair.dsn, [Job(n=2)], timedelta(hours=1))
    rows = await fetch(replica_pair.dsn, "SELECT (payload->>'n')::int AS n FROM future_calls")
    assert sorted(r["n"] for r in rows) == [1, 2]


async def test_failover_keeps_live_workers_calls_and_resumes_dispatch(
    replica_pair: Replicated, serve: Callable[..., Uvicorn], runlog: RunLog
):
    pair = replica_pair.pair
    server = serve(
        WORKERS,
        replica_pair.primary_dsn,  # DATABASE_URL, for the app's (unused) SQLAlchemy engine
        FUTURECALLS_DSN=replica_pair.dsn,
        FUTURECALLS_POLL_INTERVAL="1",
        FUTURECALLS_CONCURRENCY_LIMIT=str(PER_WORKER),
        FUTURECALLS_SHUTDOWN_GRACE="5",
    )
    children = set(server.worker_pids())  # the workers (and multiprocessing's helper)

    # Long calls on every worker: each takes at most PER_WORKER, so all three hold some.
    long_calls = set(range(WORKERS * PER_WORKER))
    await schedule_jobs(replica_pair.dsn, [Job(n=n, sleep=LONG) for n in sorted(long_calls)])
    try:
        await wait_for(
            lambda: (
                len(runlog.runs("started")) == len(long_calls)
                and len({pid for _, pid in runlog.events("started")}) == WORKERS
            ),
            within=LONG / 2,
            what="the long calls to run on every worker",
        )
    except AssertionError as exc:
        exc.add_note(f"started: {runlog.events('started')}\n{server.output()}")
        raise
    # Acknowledged before the stop, due while the primary is down or just after.
    later = set(range(100, 112))
    await schedule_jobs(replica_pair.dsn, [Job(n=n) for n in sorted(later)], timedelta(seconds=2))
    running = await fetch(
        replica_pair.primary_dsn,
        "SELECT (payload->>'n')::int AS n, owner FROM future_calls WHERE state = 'running'",
    )
    assert {r["n"] for r in running} == long_calls
    owners = {r["owner"] for r in running}
    assert len(owners) == WORKERS

    pair.wait_caught_up()  # asynchronous replication: nothing acknowledged is lost
    stopped = time.monotonic()
    pair.stop_primary("fast")
    await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))
    pair.promote()
    promoted = time.monotonic()
    assert promoted - stopped < OUTAGE + 3, "the failover itself took too long for this test"

    # Dispatch resumes on the new primary without a restart: new calls run.
    after = set(range(200, 212))
    await schedule_jobs(replica_pair.dsn, [Job(n=n) for n in sorted(after)])
    expected = long_calls | later | after
    parked = await settle(replica_pair.standby_dsn, runlog, expected)

    runs = runlog.runs()
    twice = sorted(n for n, count in runs.items() if count > 1)
    assert not twice, f"calls ran twice: {twice}"
    assert not set(parked) & set(runs), "a parked call also completed"
    assert set(runs) | set(parked) == expected, (
        f"calls lost: {sorted(expected - set(runs) - set(parked))}"
    )
    assert all(state == "interrupted" for state, _ in parked.values()), parked
    # Every worker was alive and reconnected within seconds: none of their running calls
    # may be swept (parked, or cancelled mid-run when the worker came back).
    swept = sorted(n for n in parked if n in long_calls)
    assert not swept, (
        f"live workers' running calls were swept after the failover: {swept}, parked as "
        f"{sorted({state for state, _ in parked.values()})} with "
        f"{sorted({error for _, error in parked.values()})} (the promoted standby's "
        f"pg_postmaster_start_time: {pair.postmaster_start_times().get('standby')})"
    )
    assert set(runs) == expected  # every call ran once, the long ones to their end
    assert set(server.worker_pids()) == children, "a worker was restarted"
