"""The floor phase: each claim statement in a bare loop, without the library around it (no
dispatcher, no task per call, nothing done with the rows), in W processes: the rate the
database side allows on its own. It tells what a claim statement costs from what the
Python around it costs.

Two statements: this project's claim, recording the previous batch as done in the same
statement as its dispatcher does (two writes per call: claimed as running, then deleted),
and the raw-SQL ceiling's frontier DELETE (one write per call, and a crash loses the
batch). Batches of 10, as in the drain phase. Server CPU is read from /proc, so it is
there only for a server on this machine.
"""

from __future__ import annotations

import asyncio
import multiprocessing.synchronize
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg

from bench.counter import CTX

BATCH = 10


def server_cpu_seconds() -> float | None:
    """CPU time of every postgres process on this machine so far, or None if none."""
    ticks, found = 0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if not text[text.index("(") + 1 : text.rindex(")")].startswith("postgres"):
            continue
        fields = text[text.rindex(")") + 2 :].split()
        ticks += sum(int(field) for field in fields[11:15])  # utime stime cutime cstime
        found = True
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


Claim = Callable[[list[asyncpg.Record], tuple[Any, Any]], Awaitable[list[asyncpg.Record]]]


async def _claim_until_empty(claim: Claim, frontier: tuple[Any, Any]) -> tuple[int, int]:
    """Claim batches (handing each claim the previous batch and the frontier, the earliest
    (due time, id) of that batch) until three claims in a row find nothing; returns the
    calls claimed and the deadlocks met (nothing was written: the same claim again)."""
    done: list[asyncpg.Record] = []
    claimed = deadlocks = empty = 0
    while empty < 3:
        try:
            rows = await claim(done, frontier)
        except asyncpg.DeadlockDetectedError:
            deadlocks += 1
            continue
        done = [row for row in rows if row["id"] is not None]  # ours ends with a tail row
        claimed += len(done)
        if done:
            frontier, empty = min((row["due_at"], row["id"]) for row in done), 0
        else:
            empty += 1
            await asyncio.sleep(0.005)
    return claimed, deadlocks


async def _futurecalls_loop(conn: asyncpg.Connection, owner: int) -> tuple[int, int]:
    from fastapi_futurecalls.sql import QUERIES

    await conn.execute("SET plan_cache_mode = force_generic_plan")  # as the dispatcher
    statement = await conn.prepare(QUERIES["claim"])

    async def claim(done: list[asyncpg.Record], frontier: tuple[Any, Any]) -> list[Any]:
        ids, attempts = [row["id"] for row in done], [row["attempts"] for row in done]
        no_others: list[Any] = []  # no call ended otherwise than done
        return await statement.fetch(
            BATCH, owner, timedelta(0), ids, attempts, *[no_others] * 4, ["hit"], *frontier, []
        )

    return await _claim_until_empty(claim, (None, None))


async def _rawsql_loop(conn: asyncpg.Connection, owner: int) -> tuple[int, int]:
    from bench.systems.rawsql import CLAIM, EARLIEST

    await conn.execute("SET plan_cache_mode = force_custom_plan")  # as its worker
    statement = await conn.prepare(CLAIM)

    async def claim(done: list[asyncpg.Record], frontier: tuple[Any, Any]) -> list[Any]:
        return await statement.fetch(BATCH, *frontier)

    return await _claim_until_empty(claim, EARLIEST)


LOOPS = {"futurecalls": _futurecalls_loop, "rawsql": _rawsql_loop}


def _claimer(
    dsn: str,
    system: str,
    owner: int,
    go: multiprocessing.synchronize.Event,
    read: multiprocessing.synchronize.Event,
    out: Any,
) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            go.wait()
            out.put(await LOOPS[system](conn, owner))
            # Connected until the server's CPU is read: an ended backend's time is
            # counted only once the postmaster has reaped it.
            await asyncio.to_thread(read.wait, 60)
        finally:
            await conn.close()

    asyncio.run(run())


def _once(system: ModuleType, key: str, dsn: str, n: int, workers: int) -> dict[str, Any]:
    asyncio.run(system.setup(dsn))
    asyncio.run(system.enqueue_due(dsn, n))
    go, read, out = CTX.Event(), CTX.Event(), CTX.Queue()
    procs = [
        CTX.Process(target=_claimer, args=(dsn, key, owner, go, read, out))
        for owner in range(1, workers + 1)
    ]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # connected and prepared before the clock starts
    cpu, started = server_cpu_seconds(), time.perf_counter()
    go.set()
    results = [out.get(timeout=300) for _ in procs]
    elapsed = time.perf_counter() - started
    cpu_after = server_cpu_seconds()
    read.set()
    for proc in procs:
        proc.join(30)
    claimed = sum(r[0] for r in results)
    return {
        "claimed": claimed,
        # The loops stop after three empty claims: the last few ms are not claiming.
        "calls_per_s": claimed / elapsed,
        "server_us_per_call": (cpu_after - cpu) / claimed * 1e6
        if cpu is not None and cpu_after is not None and claimed
        else None,
        "deadlocks": sum(r[1] for r in results),
    }


def floors(systems: dict[str, ModuleType], dsn: str, n: int, repeats: int) -> list[Any]:
    """Each system with a bare loop, at W = 1 and W = 4, ``repeats`` times in turns;
    medians."""
    chosen = {key: module for key, module in systems.items() if key in LOOPS}
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(repeats):
        for key, module in chosen.items():
            for workers in (1, 4):
                run = _once(module, key, dsn, n, workers)
                runs.setdefault((key, workers), []).append(run)
                print(
                    f"  floor {module.NAME:20} W={workers}: {run['calls_per_s']:,.0f} calls/s"
                    f" (deadlocks {run['deadlocks']})",
                    file=sys.stderr,
                )
    rows = []
    for (key, workers), done in runs.items():
        cpu = [r["server_us_per_call"] for r in done if r["server_us_per_call"] is not None]
        rows.append(
            {
                "system": chosen[key].NAME,
                "workers": workers,
                "calls": n,
                "rates": [r["calls_per_s"] for r in done],
                "median_calls_per_s": statistics.median(r["calls_per_s"] for r in done),
                "server_us_per_call": statistics.median(cpu) if cpu else None,
                "lost": sum(n - r["claimed"] for r in done),
                "deadlocks": sum(r["deadlocks"] for r in done),
            }
        )
    return rows
