"""The mvcc phase: how each system's drain holds up while a long transaction elsewhere in
the database keeps the dead rows of finished calls from being vacuumed.

Rounds: W worker processes are started and connected first; then, one round after
another, a batch of N due no-op calls is scheduled through the system's batch API and
drained. With ``hold``, a REPEATABLE READ transaction that took an xid stays open for the
whole run (as an analytics query, pg_dump or an idle-in-transaction session would).

Steady state: one idle-ready worker, a producer scheduling at a fixed rate for some
minutes while the transaction stays open; lateness p50/p99 per minute.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from types import ModuleType
from typing import Any

import asyncpg

from bench.counter import CTX, Counter


class HeldTransaction:
    """A REPEATABLE READ transaction holding an xid (and so the xmin horizon) open on a
    connection of its own, in a thread of its own, until closed."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._ready = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._hold()), daemon=True)

    async def _hold(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        try:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await conn.fetchval("SELECT txid_current()")  # takes an xid, pins the horizon
            self._ready.set()
            await asyncio.to_thread(self._done.wait)
            await conn.execute("ROLLBACK")
        finally:
            await conn.close()

    def __enter__(self) -> HeldTransaction:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("could not open the held transaction")
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(30)


def _start(system: ModuleType, dsn: str, workers: int, counter: Counter) -> tuple[Any, list[Any]]:
    stop = CTX.Event()
    procs = [
        CTX.Process(target=system.worker, args=(dsn, 10, counter, stop)) for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(3)  # connected and idle before the first round
    return stop, procs


def _stop(stop: Any, procs: list[Any]) -> None:
    stop.set()
    for proc in procs:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def rounds(
    systems: dict[str, ModuleType], dsn: str, n: int, count: int, timeout: float = 300
) -> list[dict[str, Any]]:
    """Every system, at W = 2 and 4, with and without a held transaction."""
    rows = []
    for system in systems.values():
        if not hasattr(system, "enqueue_round"):
            continue
        for workers in (2, 4):
            for hold in (True, False):
                asyncio.run(system.setup(dsn))
                asyncio.run(_vacuum(dsn))
                counter = Counter(n * count)
                stop, procs = _start(system, dsn, workers, counter)
                rates: list[float | None] = []
                try:
                    with HeldTransaction(dsn) if hold else _nothing():
                        for r in range(count):
                            asyncio.run(system.enqueue_round(dsn, r * n, n))
                            started = time.perf_counter()
                            if not counter.wait((r + 1) * n, timeout):
                                rates.append(None)
                                break
                            rates.append(n / (time.perf_counter() - started))
                finally:
                    time.sleep(0.5)  # stragglers show up as duplicates
                    _stop(stop, procs)
                first, last = rates[0], rates[-1] if len(rates) == count else None
                row = {
                    "system": system.NAME,
                    "workers": workers,
                    "held_transaction": hold,
                    "calls_per_round": n,
                    "rates": rates,
                    "last_over_first": last / first if first and last else None,
                    "trend_per_round": trend(rates),
                    "duplicates": counter.duplicates(),
                    "missing": counter.missing(),
                }
                rows.append(row)
                print(
                    f"  mvcc {system.NAME:20} W={workers} {'held' if hold else 'free'}: "
                    + " ".join(_fmt(rate) for rate in rates)
                    + f"  last/first {_fmt(row['last_over_first'], 2)}"
                    + f"  trend {pct(row['trend_per_round'])}/round"
                    + f"  dup {row['duplicates']} missing {row['missing']}",
                    file=sys.stderr,
                )
    return rows


def trend(rates: list[float | None]) -> float | None:
    """The least-squares slope of the rates over the rounds, as a fraction of their mean:
    a single round moves by 10 to 20 % on a busy 2-core machine, so last/first alone
    cannot tell noise from a drain that slows round after round (as dead rows pile up)."""
    if len(rates) < 2 or any(rate is None for rate in rates):
        return None
    values = [float(rate) for rate in rates if rate is not None]
    slope, _ = statistics.linear_regression(range(len(values)), values)
    return slope / statistics.mean(values)


def steady(
    systems: dict[str, ModuleType],
    dsn: str,
    rate: int,
    minutes: float,
    warm_up: int,
    hold: bool = True,
) -> list[dict[str, Any]]:
    """One worker. Idle lateness (10 calls/s for 20 s) without a held transaction; then,
    with one held: ``warm_up`` calls drained, idle lateness again, and a producer at
    ``rate`` calls/s for ``minutes``, with lateness per minute. ``hold=False`` runs the
    same without the transaction: the control that tells what the held transaction does
    from what checkpoints and autovacuum do anyway."""
    rows = []
    for system in systems.values():
        if not hasattr(system, "schedule_steady"):
            continue
        asyncio.run(system.setup(dsn))
        asyncio.run(_vacuum(dsn))
        seconds = int(minutes * 60)
        idle_calls = 10 * 20
        counter = Counter(2 * idle_calls + warm_up + rate * seconds)
        stop, procs = _start(system, dsn, 1, counter)
        try:
            asyncio.run(system.schedule_steady(dsn, 0, 10, 20))
            counter.wait(idle_calls, 60)
            free_idle = _lateness(counter, 0, idle_calls)
            with HeldTransaction(dsn) if hold else _nothing():
                base = idle_calls
                for first in range(0, warm_up, 20_000):
                    size = min(20_000, warm_up - first)
                    asyncio.run(system.enqueue_round(dsn, base + first, size))
                counter.wait(base + warm_up, 900)
                base += warm_up
                asyncio.run(system.schedule_steady(dsn, base, 10, 20))
                counter.wait(base + idle_calls, 60)
                held_idle = _lateness(counter, base, base + idle_calls)
                base += idle_calls
                asyncio.run(system.schedule_steady(dsn, base, rate, seconds))
                counter.wait(base + rate * seconds, 120)
        finally:
            _stop(stop, procs)
        end = base + rate * seconds  # a last part-minute counts as a minute of its own
        per_minute = [
            {
                "minute": m + 1,
                **_lateness(counter, base + m * 60 * rate, min(base + (m + 1) * 60 * rate, end)),
            }
            for m in range(-(-seconds // 60))
        ]
        rows.append(
            {
                "system": system.NAME,
                "held": hold,
                "warm_up_calls": warm_up,
                "idle_free": free_idle,
                "idle_held": held_idle,
                "rate": rate,
                "minutes": minutes,
                "per_minute": per_minute,
                "duplicates": counter.duplicates(),
                "missing": counter.missing(),
            }
        )
        label = "held" if hold else "free (control)"
        print(
            f"  steady {system.NAME:20} idle p50/p99 free {_fmt(free_idle['p50_ms'], 1)}/"
            f"{_fmt(free_idle['p99_ms'], 1)} ms, {label} after {warm_up:,} calls "
            f"{_fmt(held_idle['p50_ms'], 1)}/{_fmt(held_idle['p99_ms'], 1)} ms; "
            f"{rate}/s {label}, p99 per minute "
            + " ".join(_fmt(m["p99_ms"], 1) for m in per_minute)
            + f"  dup {counter.duplicates()} missing {counter.missing()}",
            file=sys.stderr,
        )
    return rows


def _lateness(counter: Counter, lo: int, hi: int) -> dict[str, Any]:
    late = sorted(counter.lateness[i] * 1000 for i in range(lo, hi) if counter.runs[i])
    return {
        "ran": len(late),
        "p50_ms": statistics.median(late) if late else None,
        "p99_ms": late[min(len(late) - 1, int(len(late) * 0.99))] if late else None,
    }


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def _vacuum(dsn: str) -> None:
    """Each configuration starts from a clean table: the previous one's dead rows gone."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM")
    finally:
        await conn.close()


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"
