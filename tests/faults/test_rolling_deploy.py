"""A rolling deploy: workers of the old release and of the new one (NEW_CODE=1, which
registers the call name `newname`) dispatch side by side, then the old ones leave.

Calls of `newname` scheduled all along run exactly once, on new workers, and none is
parked; calls of `record` run once on either. A call whose name no live worker registers
(`ghost`) stays scheduled until it has been due for FUTURECALLS_UNKNOWN_NAME_GRACE
seconds, then is parked as 'failed' with a last_error that names the cause."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import timedelta

import asyncpg
import pytest

from fastapi_futurecalls import FutureCalls
from tests.apps.worker_app import Job, Record
from tests.processes import Uvicorn
from tests.support import RunLog, wait_for

pytestmark = pytest.mark.slow

SIDE_BY_SIDE = 20.0  # seconds both releases dispatch together
NEW_ONLY = 8.0  # seconds of scheduling after the old workers left
EVERY = 0.25  # seconds between scheduling rounds (one `record`, one `newname` each)
UNKNOWN_NAME_GRACE = 5.0
GHOST_EARLY_CHECK = 1.5  # seconds after the ghost is due: well inside its grace
RECORD, NEWNAME, GHOST = 0, 10_000, 99_999  # the n ranges of each name in the RunLog


async def ghost_row(dsn: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow(
            "SELECT state, last_error, attempts FROM future_calls WHERE name = 'ghost'"
        )
    finally:
        await conn.close()


async def test_a_name_only_the_new_release_has_is_never_parked_during_a_rolling_deploy(
    fault_dsn: str,
    serve: Callable[..., Uvicorn],
    runlog: RunLog,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv("NEW_CODE", raising=False)
    common = {
        "FUTURECALLS_POLL_INTERVAL": "1",
        "FUTURECALLS_SHUTDOWN_GRACE": "5",
        "FUTURECALLS_UNKNOWN_NAME_GRACE": str(UNKNOWN_NAME_GRACE),
    }
    old = serve(2, fault_dsn, **common)
    new = serve(2, fault_dsn, NEW_CODE="1", **common)
    new_pids = set(new.worker_pids())

    # The web side of the new release schedules all three names.
    web = FutureCalls(fault_dsn, execution_enabled=False)
    for name in ("record", "newname", "ghost"):
        web.register_future_call(Record(), name)
    rng = random.Random(9)
    records: list[int] = []
    newnames: list[int] = []
    ghost_early: asyncpg.Record | None = None
    async with web:
        session = web.session()
        started = time.monotonic()
        ghost_due: float | None = None
        old_left = False
        k = 0
        while time.monotonic() - started < SIDE_BY_SIDE + NEW_ONLY:
            delay = timedelta(milliseconds=rng.randrange(0, 1500))
            await session.future_call_with_delay("record", Job(n=RECORD + k), delay)
            await session.future_call_with_delay("newname", Job(n=NEWNAME + k), delay)
            records.append(RECORD + k)
            newnames.append(NEWNAME + k)
            k += 1
            elapsed = time.monotonic() - started
            if ghost_due is None and elapsed > 2:
                await session.future_call_with_delay("ghost", Job(n=GHOST), timedelta(0))
                ghost_due = time.monotonic()
            if (
                ghost_due
                and ghost_early is None
                and time.monotonic() - ghost_due > GHOST_EARLY_CHECK
            ):
                ghost_early = await ghost_row(fault_dsn)
            if not old_left and elapsed > SIDE_BY_SIDE:
                # The old release leaves (SIGTERM, in a task: scheduling goes on meanwhile).
                stopping = asyncio.create_task(asyncio.to_thread(old.stop))
                old_left = True
            await asyncio.sleep(EVERY)
    assert old_left and ghost_due is not None
    assert await stopping == 0

    async def settled() -> bool:
        conn = await asyncpg.connect(fault_dsn)
        try:
            busy = await conn.fetchval(
                "SELECT count(*) FROM future_calls"
                " WHERE name <> 'ghost' AND state IN ('scheduled', 'running')"
            )
        finally:
            await conn.close()
        return busy == 0

    await wait_for(settled, within=30, what="every record and newname call to finish")
    conn = await asyncpg.connect(fault_dsn)
    try:
        parked = await conn.fetch(
            "SELECT name, (payload->>'n')::int AS n, state, last_error FROM future_calls"
            " WHERE name <> 'ghost' ORDER BY n"
        )
    finally:
        await conn.close()
    runs = runlog.runs()
    pids = {n: pid for n, pid in runlog.events("done")}

    parked_newnames = [
        (r["n"], r["state"], r["last_error"]) for r in parked if r["name"] == "newname"
    ]
    assert not parked_newnames, (
        f"{len(parked_newnames)} of {len(newnames)} `newname` calls were parked during the "
        f"rolling deploy, e.g. {parked_newnames[:3]}"
    )
    assert not parked, [(r["n"], r["state"], r["last_error"]) for r in parked]
    twice = sorted(n for n, count in runs.items() if count > 1)
    assert not twice, f"calls ran twice: {twice}"
    assert set(newnames) <= set(runs), f"newname calls lost: {sorted(set(newnames) - set(runs))}"
    assert set(records) <= set(runs), f"record calls lost: {sorted(set(records) - set(runs))}"
    on_old = sorted(n for n in newnames if pids[n] not in new_pids)
    assert not on_old, f"newname calls ran on old workers: {on_old}"

    # The ghost: due for less than its grace, it was still waiting; then parked, once.
    assert ghost_early is not None
    assert ghost_early["state"] == "scheduled", (
        f"a call of a name no live worker registers was parked {GHOST_EARLY_CHECK}s after it "
        f"fell due, inside its {UNKNOWN_NAME_GRACE}s grace: {dict(ghost_early)}"
    )

    async def ghost_parked() -> bool:
        row = await ghost_row(fault_dsn)
        return row is not None and row["state"] != "scheduled"

    await wait_for(
        ghost_parked,
        within=max(0.0, ghost_due + UNKNOWN_NAME_GRACE + 15 - time.monotonic()),
        what="the ghost call to be parked once its grace was over",
    )
    ghost = await ghost_row(fault_dsn)
    assert ghost is not None
    assert ghost["state"] == "failed"
    assert "ghost" in ghost["last_error"] and "regist" in ghost["last_error"], ghost["last_error"]
    assert GHOST not in runs
    assert new.stop() == 0
