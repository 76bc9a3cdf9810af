"""A blip: one worker's dispatcher connection ends (pg_terminate_backend, as an
idle_session_timeout, a proxy's reset or a DBA would end it) while that worker runs
calls, and reconnecting takes a moment. The worker takes its lock back; its peers must
not sweep its running calls meanwhile. The calls finish once, none is parked or
cancelled.

The workers reach PostgreSQL through tests/tcpproxy.py, which holds new connections for
HOLD seconds around each termination (the network hiccup that dropped the connection):
today's dispatcher notices the termination at once and reconnects within milliseconds,
so without the hold a peer's sweep would have to land in that gap, by luck. The
existing connections of the peer keep flowing, and it sweeps every POLL_INTERVAL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.apps.worker_app import Job
from tests.processes import Uvicorn
from tests.support import RunLog, schedule_jobs, wait_for
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.slow

PER_WORKER = 4  # FUTURECALLS_CONCURRENCY_LIMIT: both workers hold running calls
LONG = 10.0  # seconds each call runs, across both blips
BLIPS = 2  # one per worker
HOLD = 2.0  # seconds the blipped worker cannot reconnect: ten of its peer's sweeps
POLL_INTERVAL = "0.2"

# The dispatchers' session advisory locks (objsubid = 2: the two-key form; objid = the
# worker number, which is the owner column of the rows it runs), held by a backend with
# calls of that owner running.
DISPATCHERS = """
SELECT DISTINCT l.pid, l.objid::bigint AS owner
FROM pg_locks AS l
JOIN future_calls AS c ON c.owner = l.objid::bigint AND c.state = 'running'
WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid <> pg_backend_pid()
ORDER BY owner
"""


async def dispatchers(dsn: str) -> dict[int, int]:
    """owner (worker number) -> backend pid of its dispatcher's connection."""
    conn = await asyncpg.connect(dsn)
    try:
        return {r["owner"]: r["pid"] for r in await conn.fetch(DISPATCHERS)}
    finally:
        await conn.close()


async def terminate(dsn: str, pid: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    finally:
        await conn.close()


async def test_a_blip_of_one_dispatcher_connection_sweeps_nothing(
    fault_dsn: str,
    serve: Callable[..., Uvicorn],
    runlog: RunLog,
    tcp_proxy: Callable[[int], TcpProxy],
):
    parts = urlsplit(fault_dsn)
    assert parts.port is not None
    proxy = tcp_proxy(parts.port)
    server = serve(
        2,
        proxy.dsn(parts.path.lstrip("/")),
        FUTURECALLS_POLL_INTERVAL=POLL_INTERVAL,
        FUTURECALLS_CONCURRENCY_LIMIT=str(PER_WORKER),
    )
    calls = set(range(2 * PER_WORKER))
    await schedule_jobs(fault_dsn, [Job(n=n, sleep=LONG) for n in sorted(calls)])
    await wait_for(
        lambda: (
            set(runlog.runs("started")) == calls
            and len({pid for _, pid in runlog.events("started")}) == 2
        ),
        within=LONG / 4,
        what="every call to run, on both workers",
    )
    before = await dispatchers(fault_dsn)
    assert len(before) == 2, f"expected two dispatchers with running calls: {before}"

    blipped: list[tuple[int, int]] = []
    owners = sorted(before)
    for k in range(BLIPS):
        owner = owners[k % 2]
        pid = (await dispatchers(fault_dsn)).get(owner)
        if pid is None:  # today: swept by its peer, so its calls are no longer running
            break
        proxy.hold()
        try:
            await terminate(fault_dsn, pid)
            blipped.append((owner, pid))
            await asyncio.sleep(HOLD)
        finally:
            proxy.release()

        async def relocked(owner: int = owner, pid: int = pid) -> bool:
            conn = await asyncpg.connect(fault_dsn)
            try:
                return bool(
                    await conn.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                        " AND objsubid = 2 AND granted AND objid::bigint = $1 AND pid <> $2)",
                        owner,
                        pid,
                    )
                )
            finally:
                await conn.close()

        await wait_for(relocked, within=10, what=f"worker {owner} to take its lock back")
        await asyncio.sleep(0.5)
    assert blipped, "no dispatcher connection was ended"

    async def settled() -> bool:
        conn = await asyncpg.connect(fault_dsn)
        try:
            busy = await conn.fetchval(
                "SELECT count(*) FROM future_calls WHERE state IN ('scheduled', 'running')"
            )
        finally:
            await conn.close()
        return busy == 0

    await wait_for(settled, within=LONG + 30, what="every call to finish or be parked")
    conn = await asyncpg.connect(fault_dsn)
    try:
        left = await conn.fetch(
            "SELECT (payload->>'n')::int AS n, state, last_error FROM future_calls ORDER BY 1"
        )
    finally:
        await conn.close()
    runs = runlog.runs()
    assert max(runs.values(), default=1) == 1, f"a call ran twice: {runs}"
    assert not left, (
        f"blips of dispatcher connections {blipped} parked or cancelled calls of live "
        f"workers: {[(r['n'], r['state'], r['last_error']) for r in left]}"
    )
    assert set(runs) == calls, f"not completed: {sorted(calls - set(runs))}"
    assert server.process.poll() is None
