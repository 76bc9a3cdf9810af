"""The asyncpg connection behind what callers pass as ``connection=``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .errors import ConfigurationError

if TYPE_CHECKING:
    Executor = asyncpg.Connection | PoolConnectionProxy[Any]
else:
    Executor = asyncpg.Connection | PoolConnectionProxy


async def driver_connection(connection: object) -> Executor:
    """Accepts an asyncpg connection (pooled or not), or a SQLAlchemy ``AsyncConnection``
    or ``AsyncSession`` on the asyncpg driver; statements sent through the result run in
    the caller's transaction."""
    if isinstance(connection, asyncpg.Connection | PoolConnectionProxy):
        return connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if isinstance(connection, AsyncSession):
        connection = await connection.connection()
    if isinstance(connection, AsyncConnection):
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        if isinstance(driver, asyncpg.Connection | PoolConnectionProxy):
            return driver
        raise ConfigurationError(
            f"connection= runs on {type(driver).__name__}, not asyncpg: use the "
            "postgresql+asyncpg:// driver"
        )
    raise ConfigurationError(
        "connection= takes an asyncpg connection or a SQLAlchemy AsyncConnection or "
        f"AsyncSession, not {type(connection).__name__}"
    )
