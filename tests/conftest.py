"""Test set-up: a real PostgreSQL (DATABASE_URL, or the local dev cluster started on
demand), a template database migrated once with alembic, and a fresh clone per test."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from fastapi_futurecalls import FutureCalls
from tests.processes import Uvicorn
from tests.support import RunLog

ROOT = Path(__file__).resolve().parent.parent
WORKER_APP = "tests.apps.worker_app:app"
sys.path.insert(0, str(ROOT / "scripts"))


def pytest_configure(config: pytest.Config) -> None:
    # FUTURECALLS_TRACE_LEAKS=12: an unclosed socket's ResourceWarning then says where it
    # was opened, 12 frames deep. Off by default: tracing allocations slows the suite
    # about threefold, and timing-sensitive tests with it.
    frames = int(os.environ.get("FUTURECALLS_TRACE_LEAKS") or 0)
    if frames and not tracemalloc.is_tracing():
        tracemalloc.start(frames)


@pytest.fixture(autouse=True)
def _collect_garbage_after() -> Iterator[None]:
    """Collect garbage as each test ends. Set up before the test's own fixtures, this
    runs after their teardown and before pytest gathers unraisable exceptions: a socket
    or transport the test left open is reported under that test (pyproject.toml's
    filterwarnings), not under whichever later test the collector happens to run in."""
    yield
    gc.collect()


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def admin_dsn() -> str:
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        import devdb

        dsn = devdb.ensure()
    return dsn


def _admin(admin_dsn: str, *statements: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def template_db(admin_dsn: str) -> Iterator[str]:
    name = f"futurecalls_tpl_{os.getpid()}"
    _admin(admin_dsn, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
    env = {**os.environ, "DATABASE_URL": with_database(admin_dsn, name)}
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    yield name
    _admin(admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def dsn(admin_dsn: str, template_db: str) -> Iterator[str]:
    """A migrated database of this test's own."""
    name = f"futurecalls_t_{uuid.uuid4().hex[:12]}"
    _admin(admin_dsn, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield with_database(admin_dsn, name)
    _admin(admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's database, for looking at the table."""
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture
def make_futurecalls(dsn: str) -> Callable[..., FutureCalls]:
    """FutureCalls on the test database; fast polling unless the test says otherwise."""

    def make(**kwargs: Any) -> FutureCalls:
        kwargs.setdefault("poll_interval", 1.0)
        kwargs.setdefault("shutdown_grace", 5.0)
        return FutureCalls(dsn, **kwargs)

    return make


@pytest.fixture
def runlog(tmp_path: Path) -> RunLog:
    return RunLog(tmp_path / "runs.log")


@pytest.fixture
def serve(runlog: RunLog, tmp_path: Path) -> Iterator[Callable[..., Uvicorn]]:
    """serve(workers, dsn, **env) starts tests/apps/worker_app.py under uvicorn and waits
    until it answers; every server is killed at the end of the test."""
    started: list[Uvicorn] = []

    def start(workers: int, dsn: str, **env: str) -> Uvicorn:
        log = tmp_path / f"uvicorn-{len(started)}.log"
        server = Uvicorn(
            WORKER_APP, dsn, workers, log, FUTURECALLS_TEST_LOG=str(runlog.path), **env
        )
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.kill()
