"""The asyncpg connection behind what callers pass as ``connection=``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .errors import ConfigurationError
from .sql import QUERIES

if TYPE_CHECKING:
    Executor = asyncpg.Connection | PoolConnectionProxy[Any]
else:
    Executor = asyncpg.Connection | PoolConnectionProxy

NOT_IN_TRANSACTION = (
    "connection= asks for the call to commit or roll back with the caller's transaction, "
    "but {what} is not inside a transaction{how}; leave connection= out to schedule on "
    "its own"
)


async def driver_connection(connection: object) -> Executor:
    """The asyncpg connection of ``connection``, inside the caller's transaction.

    Accepts an asyncpg connection (pooled or not) inside a transaction, or a SQLAlchemy
    ``AsyncConnection`` or ``AsyncSession`` on the asyncpg driver. SQLAlchemy's adapter
    sends ``BEGIN`` lazily, with its first statement; when scheduling comes first, one
    harmless statement sent through SQLAlchemy begins the caller's transaction (and, with
    a connection not yet begun, SQLAlchemy's autobegin: the caller commits it). Anything
    that leaves the driver outside a transaction (an asyncpg connection with none, an
    AUTOCOMMIT isolation level) is refused with :class:`ConfigurationError`: the call
    would otherwise commit on its own and survive the caller's rollback."""
    if isinstance(connection, asyncpg.Connection | PoolConnectionProxy):
        if not connection.is_in_transaction():
            raise ConfigurationError(
                NOT_IN_TRANSACTION.format(
                    what="this asyncpg connection", how=" (use `async with conn.transaction():`)"
                )
            )
        return connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if isinstance(connection, AsyncSession):
        connection = await connection.connection()
    if isinstance(connection, AsyncConnection):
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        if not isinstance(driver, asyncpg.Connection | PoolConnectionProxy):
            raise ConfigurationError(
                f"connection= runs on {type(driver).__name__}, not asyncpg: use the "
                "postgresql+asyncpg:// driver"
            )
        if not driver.is_in_transaction():
            await connection.exec_driver_sql(QUERIES["backend_pid"])
        if not driver.is_in_transaction():
            raise ConfigurationError(
                NOT_IN_TRANSACTION.format(
                    what="this SQLAlchemy connection", how=" (isolation_level AUTOCOMMIT?)"
                )
            )
        return driver
    raise ConfigurationError(
        "connection= takes an asyncpg connection or a SQLAlchemy AsyncConnection or "
        f"AsyncSession, not {type(connection).__name__}"
    )
