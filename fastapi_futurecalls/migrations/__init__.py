"""The alembic revisions that create this library's tables, shipped in the wheel.

An application with its own alembic setup includes them by adding
``fastapi_futurecalls:migrations/versions`` to ``version_locations`` in its alembic.ini
and running ``alembic upgrade heads`` (see the README, Migrations).
"""

from __future__ import annotations

BRANCH = "futurecalls"


def sqlalchemy_url(dsn: str) -> str:
    """The SQLAlchemy URL, with the asyncpg driver, for a libpq-style ``postgresql://`` DSN."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+asyncpg://" + dsn[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {dsn.split('@')[-1]!r}")
