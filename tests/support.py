"""Helpers shared by the tests: recording calls and waiting for conditions."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fastapi_futurecalls import FutureCall, FutureCalls, Session
from tests.apps.worker_app import Boom, Job, Limited, Record, Retried


class Item(BaseModel):
    n: int
    label: str = ""


class Rich(BaseModel):
    when: datetime
    amount: Decimal
    nested: dict[str, list[dict[str, int | None]]]
    tags: list[str]
    text: str


class Recorder(FutureCall[Item]):
    """Records each invocation: the payload and the loop time it started."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.calls: list[Item | None] = []
        self.started: list[float] = []
        self.sleep = sleep
        self.active = 0
        self.max_active = 0

    async def invoke(self, session: Session, object: Item | None) -> None:
        self.started.append(time.monotonic())
        self.calls.append(object)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.sleep:
                await asyncio.sleep(self.sleep)
        finally:
            self.active -= 1


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 30.0, what: str = ""
) -> None:
    """Poll ``condition`` until true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result: Any = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or condition}")
        await asyncio.sleep(0.02)


class RunLog:
    """Reads the `started/done <n> <pid> [<time>]` lines that tests/apps/worker_app.py
    appends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def events(self, kind: str) -> list[tuple[int, int]]:
        return [(n, pid) for n, pid, _ in self.timed(kind)]

    def timed(self, kind: str) -> list[tuple[int, int, float | None]]:
        """(n, pid, time or None) of each `kind` line, in the order they were written."""
        found = []
        for line in self.path.read_text().splitlines():
            event, n, pid, *more = line.split()
            if event == kind:
                found.append((int(n), int(pid), float(more[0]) if more else None))
        return found

    def count(self, kind: str = "done") -> int:
        return len(self.events(kind))

    def runs(self, kind: str = "done") -> Counter[int]:
        return Counter(n for n, _ in self.events(kind))


async def schedule_jobs(
    dsn: str, jobs: list[Job], delay: timedelta = timedelta(0), name: str = "record"
) -> None:
    """Schedule jobs of tests/apps/worker_app.py from a web-only FutureCalls."""
    web = FutureCalls(dsn, execution_enabled=False)
    web.register_future_call(Record(), "record")
    web.register_future_call(Retried(), "retried")
    web.register_future_call(Boom(), "boom")
    web.register_future_call(Limited(), "limited")
    async with web:
        session = web.session()
        for job in jobs:
            await session.future_call_with_delay(name, job, delay)


def alembic(cwd: Path, dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``alembic ARGS`` in ``cwd`` against ``dsn``; fail the test if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=cwd,
        env={**os.environ, "DATABASE_URL": dsn, **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def open_transports() -> list[asyncio.BaseTransport]:
    """The socket transports of the running event loop whose socket is still open (what
    the garbage collector would report as an unclosed transport): after
    ``FutureCalls.stop()`` in a test that opened nothing else, there must be none. A
    transport that is closing still counts: one waiting for a peer that never reads
    keeps its socket for ever."""
    loop = asyncio.get_running_loop()
    gc.collect()
    return [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, asyncio.BaseTransport)
        and getattr(obj, "_loop", None) is loop
        and getattr(obj, "_sock", None) is not None
    ]
