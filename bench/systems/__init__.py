"""One module per system measured; each has the same functions (see rawsql.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg


async def execute(dsn: str, *statements: str | tuple[Any, ...]) -> None:
    """Run set-up statements (a string, or a tuple of a statement and its arguments) on a
    fresh connection."""
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            if isinstance(statement, tuple):
                await conn.execute(*statement)
            else:
                await conn.execute(statement)
    finally:
        await conn.close()


async def one_at_a_time(
    n: int, coroutines: int, schedule: Callable[[int], Awaitable[Any]]
) -> float:
    """Seconds to run ``schedule(i)`` for i in 0..n-1, one call at a time in each of
    ``coroutines`` concurrent coroutines, as endpoints would."""

    async def share(first: int) -> None:
        for i in range(first, n, coroutines):
            await schedule(i)

    started = time.perf_counter()
    await asyncio.gather(*(share(k) for k in range(coroutines)))
    return time.perf_counter() - started


async def paced(
    first: int, rate: int, seconds: int, batch: Callable[[int, int], Awaitable[Any]]
) -> None:
    """Call ``batch(start, size)`` ten times a second, ``rate / 10`` calls each, for
    ``seconds``, on a fixed schedule (a slow batch is caught up, never skipped)."""
    size = max(1, rate // 10)
    started = time.perf_counter()
    for tick in range(seconds * 10):
        await batch(first + tick * size, size)
        pause = started + (tick + 1) / 10 - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
