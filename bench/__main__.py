"""`make bench`: every system on the same PostgreSQL, in one run, side by side.

Prints a table, writes bench/results/latest.json. Options: --quick (smaller N),
--systems a,b (default: all installed), --phases a,b (default: all), --out PATH;
the steady phase (the mvcc phase's steady state): --steady-systems, --steady-minutes,
--steady-rate, --steady-free (the same without the held transaction: the control).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench import floor, mvcc
from bench.counter import CTX, Counter

SYSTEMS = ["futurecalls", "pgqueuer", "procrastinate", "rawsql"]
PHASES = [
    "idle",
    "drain",
    "floor",
    "schedule",
    "lateness",
    "scale",
    "observability",
    "mvcc",
    "steady",
]
RESULTS = Path(__file__).resolve().parent / "results"


def load(names: list[str]) -> dict[str, ModuleType]:
    systems = {}
    for name in names:
        try:
            systems[name] = importlib.import_module(f"bench.systems.{name}")
        except ImportError as exc:
            print(f"skipping {name}: {exc} (pip install -e '.[bench]')", file=sys.stderr)
    return systems


def bench_dsn(admin_dsn: str) -> str:
    async def create() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute("DROP DATABASE IF EXISTS futurecalls_bench WITH (FORCE)")
            await conn.execute("CREATE DATABASE futurecalls_bench")
        finally:
            await conn.close()

    asyncio.run(create())
    return urlunsplit(urlsplit(admin_dsn)._replace(path="/futurecalls_bench"))


def run_workers(
    system: ModuleType,
    dsn: str,
    workers: int,
    counter: Counter,
    until: int,
    timeout: float = 300,
    *extra: object,
) -> float | None:
    """Start `workers` processes, wait until `until` calls ran; returns the seconds taken.
    ``extra``: more arguments for the system's worker."""
    stop = CTX.Event()
    started = time.perf_counter()
    procs = [
        CTX.Process(target=system.worker, args=(dsn, 10, counter, stop, *extra))
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    finished = counter.wait(until, timeout)
    elapsed = time.perf_counter() - started
    time.sleep(0.5)  # let stragglers show up as duplicates
    stop.set()
    for proc in procs:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return elapsed if finished else None


def drain(systems: dict[str, ModuleType], dsn: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for system in systems.values():
        for workers in (1, 2, 4):
            asyncio.run(system.setup(dsn))
            asyncio.run(system.enqueue_due(dsn, n))
            counter = Counter(n)
            elapsed = run_workers(system, dsn, workers, counter, n)
            rows.append(
                {
                    "system": system.NAME,
                    "workers": workers,
                    "calls": n,
                    "seconds": elapsed,
                    "calls_per_s": n / elapsed if elapsed else None,
                    "duplicates": counter.duplicates(),
                    "missing": counter.missing(),
                }
            )
            print(
                f"  drain {system.NAME:20} W={workers}: "
                f"{_fmt(rows[-1]['calls_per_s'])} calls/s, dup {rows[-1]['duplicates']}",
                file=sys.stderr,
            )
    return rows


def schedule(systems: dict[str, ModuleType], dsn: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for system in systems.values():
        for mode, fn, args in (
            ("one at a time (50 coroutines)", "schedule_one_at_a_time", (n, 50)),
            ("batch", "schedule_batch", (n,)),
        ):
            if not hasattr(system, fn):
                continue
            asyncio.run(system.setup(dsn))
            started = time.perf_counter()
            timed = asyncio.run(getattr(system, fn)(dsn, *args))
            # A system times its scheduling itself (leaving out connecting), if it can.
            rate = n / (timed if isinstance(timed, float) else time.perf_counter() - started)
            rows.append({"system": system.NAME, "mode": mode, "calls": n, "calls_per_s": rate})
            print(f"  schedule {system.NAME:20} {mode}: {rate:,.0f} calls/s", file=sys.stderr)
    return rows


def lateness(systems: dict[str, ModuleType], dsn: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for system in systems.values():
        if not hasattr(system, "schedule_ahead"):
            continue
        for ahead in (0.3, 0.0):
            asyncio.run(system.setup(dsn))
            counter = Counter(n)
            stop = CTX.Event()
            proc = CTX.Process(target=system.worker, args=(dsn, 10, counter, stop))
            proc.start()
            time.sleep(2)  # idle worker, connected and waiting
            asyncio.run(system.schedule_ahead(dsn, n, ahead))
            complete = counter.wait(n, 60)
            stop.set()
            proc.join(30)
            late = sorted(counter.lateness[i] * 1000 for i in range(n) if counter.runs[i])
            rows.append(
                {
                    "system": system.NAME,
                    "ahead_ms": ahead * 1000,
                    "calls": n,
                    "complete": complete,
                    "p50_ms": statistics.median(late) if late else None,
                    "p99_ms": late[min(len(late) - 1, int(len(late) * 0.99))] if late else None,
                    "max_ms": late[-1] if late else None,
                }
            )
            print(
                f"  lateness {system.NAME:20} +{ahead * 1000:.0f} ms: "
                f"p50 {_fmt(rows[-1]['p50_ms'], 1)} ms, p99 {_fmt(rows[-1]['p99_ms'], 1)} ms",
                file=sys.stderr,
            )
    return rows


def idle(systems: dict[str, ModuleType], dsn: str, seconds: float) -> list[dict[str, Any]]:
    async def commits() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(
                await conn.fetchval(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            )
        finally:
            await conn.close()

    rows = []
    for system in systems.values():
        if not hasattr(system, "schedule_ahead"):
            continue
        asyncio.run(system.setup(dsn))
        stop = CTX.Event()
        counter = Counter(1)
        procs = [CTX.Process(target=system.worker, args=(dsn, 10, counter, stop)) for _ in range(4)]
        for proc in procs:
            proc.start()
        # Backends report statistics when idle, rate-limited to one report per second and
        # otherwise up to 10 s late: wait until the start-up transactions are all counted.
        time.sleep(12)
        before = asyncio.run(commits())
        time.sleep(seconds)
        stop.set()  # exiting backends report at once; shutting down runs no statement
        for proc in procs:
            proc.join(30)
        time.sleep(1)
        after = asyncio.run(commits())
        tps = max(0, after - before - 1) / seconds  # less the `before` look-up itself
        rows.append({"system": system.NAME, "workers": 4, "seconds": seconds, "tps": tps})
        print(f"  idle {system.NAME:20}: {tps:.2f} transactions/s", file=sys.stderr)
    return rows


def scale(systems: dict[str, ModuleType], dsn: str, n: int, pending: int) -> dict[str, Any]:
    """This project only: the drain at W=4 and cancel-by-identifier, with `pending` calls
    waiting far in the future, against the same on an empty table."""
    system = systems["futurecalls"]
    figures: dict[str, Any] = {"pending": pending, "calls": n}
    for label, far in (("empty", 0), ("loaded", pending)):
        asyncio.run(system.setup(dsn))
        if far:
            asyncio.run(system.enqueue_far(dsn, far))
        asyncio.run(system.enqueue_due(dsn, n))
        counter = Counter(n)
        elapsed = run_workers(system, dsn, 4, counter, n)
        figures[f"drain_{label}_calls_per_s"] = n / elapsed if elapsed else None
        figures[f"drain_{label}_duplicates"] = counter.duplicates()
        figures[f"cancel_{label}_ms"] = asyncio.run(system.time_cancel(dsn, 50))
        print(
            f"  scale {label:6}: drain {_fmt(figures[f'drain_{label}_calls_per_s'])} calls/s, "
            f"cancel p50 {figures[f'cancel_{label}_ms']:.2f} ms",
            file=sys.stderr,
        )
    return figures


OBSERVED = {
    "": "off",
    "api": "metrics + OTel API, no SDK",
    "sampled": "metrics + OTel SDK, 1% sampled",
    "sdk": "metrics + OTel SDK, all recorded",
}
TRACEPARENT = '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'


def observability(systems: dict[str, ModuleType], dsn: str, n: int, repeats: int) -> list[Any]:
    """This project only: the drain at W=4 with metrics and tracing off, and on in three
    ways (see bench/systems/futurecalls.py), in turns. The rate is from the first call's
    start to the last's: the workers' start-up (importing prometheus-client and
    OpenTelemetry, say) is reported apart."""
    system = systems["futurecalls"]
    # Imported once here, before the workers fork, as an app imports them at start-up.
    importlib.import_module("fastapi_futurecalls.metrics")
    importlib.import_module("fastapi_futurecalls.tracing")
    importlib.import_module("opentelemetry.sdk.trace")
    runs: dict[str, list[float]] = {mode: [] for mode in OBSERVED}
    startups: dict[str, list[float]] = {mode: [] for mode in OBSERVED}
    for _ in range(repeats):
        for mode in OBSERVED:
            asyncio.run(system.setup(dsn))
            # Calls carry a stored trace context only where an SDK was there to record
            # the span that scheduled them (without one, nothing valid is stored).
            traced = mode in ("sampled", "sdk")
            asyncio.run(system.enqueue_due(dsn, n, TRACEPARENT if traced else None))
            counter = Counter(n)
            began = time.time()
            elapsed = run_workers(system, dsn, 4, counter, n, 300, mode)
            seconds = counter.running_seconds
            if elapsed and seconds and not counter.duplicates():
                runs[mode].append(n / seconds)
                startups[mode].append(counter.first.value - began)
            print(
                f"  observability {OBSERVED[mode]:32}: "
                f"{_fmt(n / seconds if elapsed and seconds else None)} calls/s",
                file=sys.stderr,
            )
    off = statistics.median(runs[""]) if runs[""] else None
    rows = []
    for mode, rates in runs.items():
        median = statistics.median(rates) if rates else None
        rows.append(
            {
                "mode": OBSERVED[mode],
                "workers": 4,
                "calls": n,
                "rates": rates,
                "median_calls_per_s": median,
                "vs_off": median / off if median and off else None,
                "startup_s": statistics.median(startups[mode]) if startups[mode] else None,
            }
        )
    return rows


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.2), dpi=110)
    for name in dict.fromkeys(row["system"] for row in results.get("drain", [])):
        rows = [r for r in results["drain"] if r["system"] == name and r["calls_per_s"]]
        axes.plot(
            [r["workers"] for r in rows], [r["calls_per_s"] for r in rows], marker="o", label=name
        )
    axes.set(
        xlabel="worker processes (10 concurrent calls each)",
        ylabel="calls/s",
        title=f"Drain of {results['calls']:,} due calls, {results['machine']}",
        xticks=[1, 2, 4],
        yscale="log",
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def report(results: dict[str, Any]) -> str:
    lines = [f"# bench {results['when']} on {results['machine']}", "", "drain (calls/s)"]
    for row in results.get("drain", []):
        lines.append(
            f"  {row['system']:22} W={row['workers']}  {_fmt(row['calls_per_s']):>9}"
            f"  duplicates {row['duplicates']}  missing {row['missing']}"
        )
    for row in results.get("floor", []):
        if row is results["floor"][0]:
            lines.append("floor: the claim statement alone in a bare loop (calls/s, median)")
        lines.append(
            f"  {row['system']:22} W={row['workers']}  {_fmt(row['median_calls_per_s']):>9}"
            f"  server {_fmt(row['server_us_per_call'], 1)} us/call"
            f"  deadlocks {row['deadlocks']}"
        )
    lines.append("schedule (calls/s)")
    for row in results.get("schedule", []):
        lines.append(f"  {row['system']:22} {row['mode']:30} {_fmt(row['calls_per_s']):>9}")
    lines.append("lateness past due (ms)")
    for row in results.get("lateness", []):
        lines.append(
            f"  {row['system']:22} +{row['ahead_ms']:.0f} ms  p50 {_fmt(row['p50_ms'], 1):>7}"
            f"  p99 {_fmt(row['p99_ms'], 1):>7}  max {_fmt(row['max_ms'], 1):>7}"
        )
    lines.append("idle cost (transactions/s, 4 workers)")
    for row in results.get("idle", []):
        lines.append(f"  {row['system']:22} {row['tps']:.2f}")
    if results.get("scale"):
        sc = results["scale"]
        lines.append(f"scale ({sc['pending']:,} calls pending far ahead, W=4)")
        lines.append(
            f"  drain empty {_fmt(sc['drain_empty_calls_per_s'])} calls/s, loaded "
            f"{_fmt(sc['drain_loaded_calls_per_s'])} calls/s; cancel by identifier "
            f"p50 {sc['cancel_empty_ms']:.2f} ms empty, {sc['cancel_loaded_ms']:.2f} ms loaded"
        )
    for row in results.get("observability", []):
        if row is results["observability"][0]:
            lines.append("observability: drain at W=4 (calls/s, median of the runs)")
        lines.append(
            f"  {row['mode']:30} {_fmt(row['median_calls_per_s']):>9}  vs off "
            f"{_fmt(row['vs_off'], 3)}  first call after {_fmt(row['startup_s'], 2)} s  runs "
            + " ".join(_fmt(rate) for rate in row["rates"])
        )
    for row in results.get("mvcc", []):
        if row is results["mvcc"][0]:
            lines.append("mvcc: drain per round (calls/s), held = a transaction open all along")
        held = "held" if row["held_transaction"] else "free"
        lines.append(
            f"  {row['system']:22} W={row['workers']} {held}: "
            + " ".join(_fmt(rate) for rate in row["rates"])
            + f"  last/first {_fmt(row['last_over_first'], 2)}"
            f"  trend {mvcc.pct(row.get('trend_per_round'))}/round  duplicates {row['duplicates']}"
            f"  missing {row['missing']}"
        )
    for row in results.get("steady", []):
        idle_free, idle_held = row["idle_free"], row["idle_held"]
        label = "held" if row.get("held", True) else "free (control)"
        p99s = [m["p99_ms"] for m in row["per_minute"]]
        lines.append(
            f"steady ({row['system']}): idle lateness p50/p99 {_fmt(idle_free['p50_ms'], 1)}/"
            f"{_fmt(idle_free['p99_ms'], 1)} ms free, {_fmt(idle_held['p50_ms'], 1)}/"
            f"{_fmt(idle_held['p99_ms'], 1)} ms {label} after {row['warm_up_calls']:,} calls; "
            f"{row['rate']}/s {label}, p99 per minute (ms): "
            + " ".join(_fmt(p99, 1) for p99 in p99s)
            + f"  trend {mvcc.pct(mvcc.trend(p99s))}/minute"
        )
    return "\n".join(lines)


def mvcc_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = results["mvcc"]
    systems = list(dict.fromkeys(row["system"] for row in rows))  # one colour each
    figure, panes = pyplot.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    for pane, workers in zip(panes, (2, 4), strict=True):
        for row in (r for r in rows if r["workers"] == workers):
            rates = [rate or 0 for rate in row["rates"]]
            pane.plot(
                range(1, len(rates) + 1),
                rates,
                marker="o",
                color=f"C{systems.index(row['system'])}",
                linestyle="-" if row["held_transaction"] else ":",
                label=f"{row['system']} ({'held' if row['held_transaction'] else 'free'})",
            )
        pane.set(
            xlabel="round", title=f"W = {workers}: {rows[0]['calls_per_round']:,} calls a round"
        )
        pane.grid(True, alpha=0.3)
    panes[0].set(ylabel="calls/s", yscale="log")
    panes[0].legend(fontsize=7)
    figure.suptitle("Drain per round, with (solid) and without (dotted) a held transaction")
    figure.tight_layout()
    figure.savefig(path)


def _minutes(text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of minutes is needed, not {text!r}") from None
    if not minutes * 60 >= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"at least a second (0.017) is needed, not {text}")
    return minutes


def _rate(text: str) -> int:
    try:
        rate = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a whole number of calls/s is needed, not {text!r}"
        ) from None
    if rate < 1:
        raise argparse.ArgumentTypeError(f"at least 1 call/s is needed, not {text}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N=5,000 instead of 20,000")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--steady-systems", default="futurecalls")
    parser.add_argument("--steady-minutes", type=_minutes, default=None, help="10, quick 1")
    parser.add_argument("--steady-rate", type=_rate, default=3000)
    parser.add_argument(
        "--steady-free",
        action="store_true",
        help="the steady phase without the held transaction (the control run)",
    )
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    admin = os.environ.get("DATABASE_URL")
    if not admin:
        sys.exit("DATABASE_URL is not set (make bench sets it)")
    n = 5_000 if args.quick else 20_000
    systems = load(args.systems.split(","))
    dsn = bench_dsn(admin)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "calls": n,
    }
    # Idle first: later phases leave autovacuum work whose transactions would count.
    if "idle" in phases:
        results["idle"] = idle(systems, dsn, 10 if args.quick else 30)
    if "drain" in phases:
        results["drain"] = drain(systems, dsn, n)
    if "floor" in phases:
        results["floor"] = floor.floors(systems, dsn, 2 * n, 1 if args.quick else 3)
    if "schedule" in phases:
        results["schedule"] = schedule(systems, dsn, 5_000 if args.quick else 10_000)
    if "lateness" in phases:
        results["lateness"] = lateness(systems, dsn, 200)
    if "scale" in phases and "futurecalls" in systems:
        results["scale"] = scale(systems, dsn, n, 100_000 if args.quick else 1_000_000)
    if "observability" in phases and "futurecalls" in systems:
        results["observability"] = observability(systems, dsn, 2 * n, 2 if args.quick else 7)
    if "mvcc" in phases:
        results["mvcc"] = mvcc.rounds(systems, dsn, n, 4 if args.quick else 8)
    if "steady" in phases:
        chosen = {k: v for k, v in systems.items() if k in args.steady_systems.split(",")}
        minutes = args.steady_minutes or (1.0 if args.quick else 10.0)
        warm_up = 50_000 if args.quick else 200_000
        results["steady"] = mvcc.steady(
            chosen, dsn, args.steady_rate, minutes, warm_up, hold=not args.steady_free
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    with contextlib.suppress(ImportError):
        if results.get("drain"):
            chart(results, args.out.with_suffix(".png"))
        if results.get("mvcc"):
            mvcc_chart(results, args.out.with_name(args.out.stem + "-mvcc.png"))
    print(report(results))


if __name__ == "__main__":
    main()
