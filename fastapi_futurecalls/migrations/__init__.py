"""The alembic revisions that create this library's tables, shipped in the wheel.

An application with its own alembic setup includes them by adding
``fastapi_futurecalls:migrations/versions`` to ``version_locations`` in its alembic.ini
and running ``alembic upgrade heads`` (see the README, Migrations). With
``FUTURECALLS_SCHEMA`` set, the revisions create their objects in that schema.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import op

from ..settings import Settings
from ..sql import quote_ident

BRANCH = "futurecalls"
SAVED = "futurecalls.saved_search_path"


def sqlalchemy_url(dsn: str) -> str:
    """The SQLAlchemy URL, with the asyncpg driver, for a libpq-style ``postgresql://`` DSN."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+asyncpg://" + dsn[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {dsn.split('@')[-1]!r}")


def schema_from_environment() -> str | None:
    """The schema named by ``FUTURECALLS_SCHEMA`` (validated like the setting), or None."""
    return Settings(schema=os.environ.get("FUTURECALLS_SCHEMA") or None).schema


def _ident(schema: str) -> str:
    # Alembic runs strings as SQLAlchemy text(), which reads ":name" as a bind parameter.
    return quote_ident(schema).replace(":", r"\:")


def create_schema(schema: str) -> str:
    """The statement that creates ``schema`` if missing, for ``op.execute``."""
    return f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}"


@contextmanager
def in_schema() -> Iterator[None]:
    """Run a revision's statements in the schema named by ``FUTURECALLS_SCHEMA``, created
    if missing: it goes first on the search_path, which is restored afterwards. Unset, the
    objects go wherever the search_path puts them."""
    schema = schema_from_environment()
    if schema is None:
        yield
        return
    quoted = _ident(schema)
    op.execute(create_schema(schema))
    op.execute(f"SELECT set_config('{SAVED}', current_setting('search_path'), true)")
    op.execute(f"SET LOCAL search_path TO {quoted}")
    yield
    op.execute(f"SELECT set_config('search_path', current_setting('{SAVED}'), true)")
