"""``fastapi-futurecalls migrate``: the shipped revisions, run without an alembic set-up.

The alembic configuration is built here, with the script location inside the installed
package (``env.py`` beside this module). Its version table is ``futurecalls_alembic_version``,
not ``alembic_version``: an application's own alembic set-up keeps its table to itself,
and neither sees the other's revisions. (An application that includes the revisions in
its own alembic set-up instead, as the README explains, keeps using ``alembic upgrade
heads``; this command then refuses to touch the table it finds unrecorded.)

The whole migration is one transaction, under a transaction-scoped advisory lock, so that
several processes migrating at once (say, every pod's init container) take turns.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import ConfigurationError
from . import sqlalchemy_url

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "futurecalls_alembic_version"
# First key of pg_advisory_xact_lock while migrating: "fcmi" in ASCII.
LOCK_KEY = 0x66636D69

Direction = Literal["upgrade", "downgrade", "none"]


class MigrateError(Exception):
    """A database this command must not touch (or cannot migrate)."""


class BadRevisionError(MigrateError):
    """A target that does not name a revision of the package (or is out of range)."""


@dataclass(frozen=True, slots=True)
class Migrated:
    """What :func:`migrate` did: the revision before and after (None: none applied)."""

    before: str | None
    after: str | None
    direction: Direction
    head: str

    def describe(self) -> str:
        def label(revision: str | None) -> str:
            if revision is None:
                return "base (no tables)"
            return f"{revision} (head)" if revision == self.head else revision

        if self.direction == "none":
            return f"already at {label(self.after)}: nothing to do"
        return f"{self.direction}d from {label(self.before)} to {label(self.after)}"


def alembic_config(schema: str | None = None) -> Config:
    """An alembic Config for the package's revisions, with no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("version_locations", str(HERE / "versions"))
    config.attributes["futurecalls_schema"] = schema
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def migrate(dsn: str, target: str = "head", *, schema: str | None = None) -> Migrated:
    """Move the database at ``dsn`` to ``target`` (``head``, ``base``, a revision or a
    unique prefix of one, ``+N``/``-N``), upgrading or downgrading as needed."""
    if not target or not target.strip():
        raise BadRevisionError("the target revision is empty: give head, base or a revision")
    url = sqlalchemy_url(dsn)
    with _schema_variable(schema):
        return asyncio.run(_migrate(url, target.strip(), schema))


async def _migrate(url: str, target: str, schema: str | None) -> Migrated:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_migrate_on, target, schema)
    finally:
        await engine.dispose()


def _migrate_on(connection: Connection, target: str, schema: str | None) -> Migrated:
    config = alembic_config(schema)
    config.attributes["connection"] = connection
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert head is not None
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    before = _current(connection, schema)
    direction = _direction(script, before, target)
    if direction == "upgrade" and before is None:
        _refuse_unrecorded_table(connection, schema)
    try:
        if direction == "upgrade":
            command.upgrade(config, target)
        elif direction == "downgrade":
            command.downgrade(config, target)
    except (CommandError, RevisionError) as exc:
        raise BadRevisionError(f"cannot migrate to {target!r}: {exc}") from None
    after = _current(connection, schema)
    connection.commit()
    if before == after:
        direction = "none"
    return Migrated(before, after, direction, head)


def _current(connection: Connection, schema: str | None) -> str | None:
    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    )
    heads = context.get_current_heads()
    if len(heads) > 1:
        raise MigrateError(f"{VERSION_TABLE} holds several revisions: {', '.join(heads)}")
    return heads[0] if heads else None


def _direction(script: ScriptDirectory, current: str | None, target: str) -> Direction:
    if target in ("head", "heads"):
        return "upgrade"
    if target == "base" or target.startswith("-"):
        return "downgrade" if current is not None else "none"
    if target.startswith("+"):
        return "upgrade"
    try:
        wanted = script.get_revision(target)
    except (CommandError, RevisionError) as exc:
        known = ", ".join(r.revision for r in reversed(list(script.walk_revisions())))
        raise BadRevisionError(
            f"{target!r} is not a revision of fastapi-futurecalls ({exc}); "
            f"give head, base or one of: {known}"
        ) from None
    if wanted is None:
        raise BadRevisionError(f"{target!r} is not a revision: give head, base or a revision")
    if current is None:
        return "upgrade"
    if wanted.revision == current:
        return "none"
    below = {r.revision for r in script.iterate_revisions(current, "base")}
    return "downgrade" if wanted.revision in below else "upgrade"


def _refuse_unrecorded_table(connection: Connection, schema: str | None) -> None:
    """The table exists, yet this command's version table knows nothing of it: another
    alembic set-up (the application's, including the package's revisions) manages it."""
    name = (
        "future_calls"
        if schema is None
        else f'"{schema.replace(chr(34), chr(34) * 2)}".future_calls'
    )
    exists = connection.execute(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name})
    if exists.scalar():
        raise MigrateError(
            f"future_calls exists but is not recorded in {VERSION_TABLE}: its migrations "
            "are run by another alembic set-up (an application's alembic including "
            "fastapi_futurecalls:migrations/versions, in alembic_version). Keep running "
            "`alembic upgrade heads` there, or drop the table to let this command create it."
        )


@contextmanager
def _schema_variable(schema: str | None) -> Iterator[None]:
    """The revisions read the schema from ``FUTURECALLS_SCHEMA``: set it while they run."""
    saved = os.environ.get("FUTURECALLS_SCHEMA")
    if schema is None:
        os.environ.pop("FUTURECALLS_SCHEMA", None)
    else:
        os.environ["FUTURECALLS_SCHEMA"] = schema
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("FUTURECALLS_SCHEMA", None)
        else:
            os.environ["FUTURECALLS_SCHEMA"] = saved


def run_environment() -> None:
    """The body of ``env.py``: run alembic's migrations on the connection :func:`migrate`
    handed over (the caller commits)."""
    from alembic import context

    from . import create_schema

    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        raise ConfigurationError(
            "this alembic environment is run by `fastapi-futurecalls migrate`; an "
            "application's own alembic set-up includes the revisions instead (README)"
        )
    schema = config.attributes.get("futurecalls_schema")
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if schema is not None:  # before alembic creates its version table there
            context.execute(create_schema(schema))
        context.run_migrations()


__all__ = [
    "VERSION_TABLE",
    "BadRevisionError",
    "MigrateError",
    "Migrated",
    "alembic_config",
    "migrate",
]
