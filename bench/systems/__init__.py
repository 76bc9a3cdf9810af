"""One module per system measured; each has the same functions (see rawsql.py)."""

from __future__ import annotations

from typing import Any

import asyncpg


async def execute(dsn: str, *statements: str | tuple[str, Any]) -> None:
    """Run set-up statements (a string, or a (statement, argument) pair) on a fresh
    connection."""
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            if isinstance(statement, tuple):
                await conn.execute(statement[0], statement[1])
            else:
                await conn.execute(statement)
    finally:
        await conn.close()
