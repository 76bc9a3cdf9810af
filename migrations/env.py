"""Alembic environment: runs the package's revisions against DATABASE_URL with asyncpg."""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from fastapi_futurecalls.migrations import create_schema, schema_from_environment, sqlalchemy_url

config = context.config
if config.config_file_name is not None and config.file_config.has_section("loggers"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set: export it, e.g. postgresql://user@host/db")
    return sqlalchemy_url(url)


# FUTURECALLS_SCHEMA: the library's objects, and this environment's version table, live
# in that schema, so that each schema of a database is migrated on its own.
SCHEMA = schema_from_environment()


def _migrate() -> None:
    with context.begin_transaction():
        if SCHEMA is not None:  # before alembic creates its version table there
            context.execute(create_schema(SCHEMA))
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, version_table_schema=SCHEMA)
    _migrate()


async def _run_online() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), literal_binds=True, version_table_schema=SCHEMA)
    _migrate()
else:
    asyncio.run(_run_online())
