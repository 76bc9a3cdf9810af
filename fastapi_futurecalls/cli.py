"""The `fastapi-futurecalls` command: a thin layer over FutureCalls for operators.

Exit codes: 0 success; 1 run-due: at least one call did not complete; 2 bad usage;
3 the database is unreachable or the app's FutureCalls is misconfigured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, TypeVar

import asyncpg
import typer
from sqlalchemy.exc import SQLAlchemyError

from .errors import ConfigurationError, DatabaseError, InvalidScheduleError
from .futurecalls import FutureCalls
from .records import FutureCallRecord
from .settings import Settings

T = TypeVar("T")
EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3

app = typer.Typer(
    name="fastapi-futurecalls",
    help="Run and inspect the future calls of a FastAPI app. TARGET is the "
    "module:attribute of its FutureCalls, e.g. myapp.main:futurecalls. Exit codes: 0 ok, "
    "1 run-due had calls that did not complete, 2 bad usage, 3 database unreachable or "
    "misconfigured.",
    no_args_is_help=True,
    add_completion=False,
)
Target = Annotated[str, typer.Argument(help="module:attribute of your FutureCalls")]


def load(target: str) -> FutureCalls:
    """Import ``module:attribute`` (from the current directory too)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter(f"{target!r} is not module:attribute", param_hint="TARGET")
    sys.path.insert(0, "")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"cannot load {target!r}: {exc}", param_hint="TARGET") from exc
    if not isinstance(found, FutureCalls):
        raise typer.BadParameter(f"{target!r} is a {type(found).__name__}, not FutureCalls")
    return found


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; a value the library refuses is bad usage (exit 2, like a bad option),
    an unreachable or misconfigured database exit 3, each a message without a traceback."""
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except InvalidScheduleError as exc:
        raise typer.BadParameter(str(exc)) from None
    except (DatabaseError, ConfigurationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None


@app.command(
    help="Dispatch calls without serving HTTP, until SIGTERM or Ctrl-C (running calls get "
    "the shutdown grace). Pair it with web workers that have execution_enabled=False."
)
def worker(
    target: Target,
    concurrency: Annotated[
        int | None, typer.Option(help="calls at once (default: settings)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="logging level")] = "INFO",
) -> None:
    futurecalls = load(target)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    futurecalls.configure(
        execution_enabled=True,
        concurrency_limit=concurrency or futurecalls.settings.concurrency_limit,
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with futurecalls:
            await stop.wait()

    run(serve)


@app.command(
    "run-due",
    help="Run every call due now, wait for them, exit 0 if all completed and 1 if not: "
    "for serverless deployments, started by an outside cron.",
)
def run_due(
    target: Target,
    within: Annotated[float, typer.Option(help="also run calls due within this many seconds")] = 0,
) -> None:
    futurecalls = load(target)
    futurecalls.configure(execution_enabled=False)

    async def once() -> tuple[int, int]:
        async with futurecalls:
            result = await futurecalls.run_due(timedelta(seconds=within))
        return result.completed, result.failed

    completed, failed = run(once)
    typer.echo(f"{completed} completed, {failed} failed")
    if failed:
        raise typer.Exit(EXIT_FAILED)


@app.command("list")
def list_calls(
    target: Target,
    state: Annotated[
        str | None, typer.Option(help="scheduled, running, interrupted, failed")
    ] = None,
    identifier: Annotated[str | None, typer.Option()] = None,
    name: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 50,
) -> None:
    """Show stored calls, by due time."""
    futurecalls = load(target)
    futurecalls.configure(execution_enabled=False)

    async def fetch() -> list[FutureCallRecord]:
        async with futurecalls:
            return await futurecalls.session().list_future_calls(
                state=state, identifier=identifier, name=name, limit=limit
            )

    typer.echo(table(run(fetch)))


@app.command()
def cancel(target: Target, identifier: Annotated[str, typer.Argument()]) -> None:
    """Remove every pending call with IDENTIFIER (and stop its recurring chain)."""
    futurecalls = load(target)
    futurecalls.configure(execution_enabled=False)

    async def remove() -> int:
        async with futurecalls:
            return await futurecalls.session().cancel_future_call(identifier)

    typer.echo(f"cancelled {run(remove)}")


@app.command()
def pause(target: Target, name: Annotated[str, typer.Argument(help="the call name")]) -> None:
    """Stop every worker from starting calls of NAME (scheduling goes on) until resumed."""
    changed = _switch(target, name, pause=True)
    typer.echo(f"paused {name}" if changed else f"{name} was paused already")


@app.command()
def resume(target: Target, name: Annotated[str, typer.Argument(help="the call name")]) -> None:
    """Let workers start calls of NAME again."""
    changed = _switch(target, name, pause=False)
    typer.echo(f"resumed {name}" if changed else f"{name} was not paused")


def _switch(target: str, name: str, *, pause: bool) -> bool:
    futurecalls = load(target)
    futurecalls.configure(execution_enabled=False)

    async def act() -> bool:
        async with futurecalls:
            session = futurecalls.session()
            if pause:
                return await session.pause_future_calls(name)
            return await session.resume_future_calls(name)

    return run(act)


@app.command()
def paused(target: Target) -> None:
    """List the paused call names."""
    futurecalls = load(target)
    futurecalls.configure(execution_enabled=False)

    async def fetch() -> list[str]:
        async with futurecalls:
            return await futurecalls.session().paused_future_calls()

    names = run(fetch)
    typer.echo("\n".join(names) if names else "no paused names")


@app.command()
def prune(
    target: Target,
    older_than: Annotated[
        float | None,
        typer.Option(help="seconds since they were parked (default: the retention setting)"),
    ] = None,
) -> None:
    """Delete parked calls (failed, interrupted) parked longer than the retention."""
    futurecalls = load(target)
    futurecalls.configure(execution_enabled=False)
    seconds = futurecalls.settings.retention if older_than is None else older_than
    if older_than is None and seconds == 0:
        raise typer.BadParameter(
            "retention is 0 (parked calls are kept forever): give --older-than SECONDS"
        )
    try:
        age = timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        age = timedelta(-1)
    if not seconds >= 0 or age < timedelta(0):
        raise typer.BadParameter(f"--older-than must be 0 or more seconds, got {seconds}")

    async def remove() -> int:
        async with futurecalls:
            return await futurecalls.session().prune_future_calls(age)

    typer.echo(f"pruned {run(remove)}")


@app.command(
    help="Create or upgrade (or downgrade) this library's tables with the revisions that "
    "ship in the package, without an alembic set-up of your own. REVISION is head (the "
    "default), base (drop the tables and their calls), a revision such as futurecalls_0005 "
    "(or a unique prefix), or +N / -N steps. A revision below the current one downgrades. "
    "Idempotent: at the target already, nothing is done. The database is --dsn, else "
    "--app's FutureCalls, else FUTURECALLS_DSN, then DATABASE_URL. The version is kept in "
    "the table futurecalls_alembic_version (in --schema when given), apart from your own "
    "alembic's. Exit codes: 0 ok, 2 bad revision or usage, 3 database unreachable, "
    "misconfigured, or its table managed by another alembic set-up."
)
def migrate(
    revision: Annotated[
        str,
        typer.Argument(metavar="REVISION", help="head, base, a revision (or prefix), +N, or -- -N"),
    ] = "head",
    dsn: Annotated[
        str | None,
        typer.Option(help="the database (default: FUTURECALLS_DSN, then DATABASE_URL)"),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option(help="schema of the tables and version table (default: FUTURECALLS_SCHEMA)"),
    ] = None,
    app_target: Annotated[
        str | None,
        typer.Option("--app", help="module:attribute of your FutureCalls: use its dsn and schema"),
    ] = None,
) -> None:
    from .migrations.migrate import BadRevisionError, MigrateError
    from .migrations.migrate import migrate as run_migrations

    if ":" in revision:
        raise typer.BadParameter(
            f"{revision!r} looks like module:attribute; give it as --app {revision}",
            param_hint="REVISION",
        )
    try:
        if app_target is not None:
            settings = load(app_target).settings
            settings = dataclasses.replace(
                settings, dsn=dsn or settings.dsn, schema=schema or settings.schema
            )
        else:
            settings = Settings.load({"dsn": dsn, "schema": schema})
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    if not settings.dsn:
        typer.echo("error: no database: give --dsn, or set DATABASE_URL", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE)
    try:
        done = run_migrations(settings.dsn, revision, schema=settings.schema)
    except BadRevisionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except (MigrateError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except (OSError, SQLAlchemyError, asyncpg.PostgresError) as exc:
        cause = getattr(exc, "orig", None) or exc
        typer.echo(f"error: cannot migrate the database: {cause}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    typer.echo(done.describe())


def table(records: list[FutureCallRecord]) -> str:
    header = ("ID", "NAME", "STATE", "DUE (UTC)", "IDENTIFIER", "TRIES", "SCHEDULE", "LAST ERROR")
    rows = [header] + [
        (
            str(r.id),
            r.name,
            r.state,
            f"{r.due_at:%Y-%m-%d %H:%M:%S}",
            r.identifier or "",
            f"{r.attempts}/{r.max_attempts}",
            r.cron or (f"every {r.every}" if r.every else ""),
            (r.last_error or "")[:40],
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines) if records else "no future calls"


def main() -> None:
    app()
