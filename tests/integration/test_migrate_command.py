"""`fastapi-futurecalls migrate`: the shipped revisions without an alembic set-up, beside an
application's own alembic (its version table apart), and refusing a table that another
alembic set-up manages."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from fastapi_futurecalls import FutureCalls, SchemaMissingError
from tests.conftest import ROOT, _admin, with_database
from tests.support import Item, Recorder, alembic

HEAD = "futurecalls_0006"


def migrate(
    dsn: str | None, *args: str, cwd: Path = ROOT, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FUTURECALLS_")}
    environ.pop("DATABASE_URL", None)
    if dsn is not None:
        environ["DATABASE_URL"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "fastapi_futurecalls", "migrate", *args],
        cwd=cwd,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def empty_dsn(admin_dsn: str) -> Iterator[str]:
    """A database of this test's own with nothing in it."""
    name = f"futurecalls_e_{uuid.uuid4().hex[:12]}"
    _admin(admin_dsn, f"CREATE DATABASE {name}")
    yield with_database(admin_dsn, name)
    _admin(admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def empty_db(empty_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(empty_dsn)
    yield conn
    await conn.close()


async def tables(db: asyncpg.Connection, schema: str = "public") -> set[str]:
    rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    return {r["tablename"] for r in rows}


async def version(db: asyncpg.Connection, table: str = "futurecalls_alembic_version") -> list[str]:
    return [r[0] for r in await db.fetch(f"SELECT version_num FROM {table}")]


async def test_migrate_creates_the_tables_then_schedules_and_runs(
    empty_dsn: str, empty_db: asyncpg.Connection
):
    assert await tables(empty_db) == set()
    with pytest.raises(SchemaMissingError, match="run `fastapi-futurecalls migrate`"):
        await FutureCalls(empty_dsn).start()  # the error says what to run
    done = await asyncio.to_thread(migrate, empty_dsn)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"upgraded from base (no tables) to {HEAD} (head)"
    assert {"future_calls", "futurecalls_alembic_version"} <= await tables(empty_db)
    assert "alembic_version" not in await tables(empty_db)
    assert await version(empty_db) == [HEAD]
    recorder = Recorder()
    futurecalls = FutureCalls(empty_dsn, execution_enabled=False)
    futurecalls.register_future_call(recorder, "record")
    async with futurecalls:  # the schema check passes
        await futurecalls.session().future_call_with_delay("record", Item(n=1), timedelta(hours=1))
        ran = await futurecalls.run_due(timedelta(hours=2))
    assert ran.completed == 1 and recorder.calls == [Item(n=1)]


async def test_migrate_again_does_nothing_and_base_drops_the_tables(
    empty_dsn: str, empty_db: asyncpg.Connection
):
    assert (await asyncio.to_thread(migrate, empty_dsn, "head")).returncode == 0
    again = await asyncio.to_thread(migrate, empty_dsn)
    assert (again.returncode, again.stdout.strip()) == (
        0,
        f"already at {HEAD} (head): nothing to do",
    )
    assert await version(empty_db) == [HEAD]

    down = await asyncio.to_thread(migrate, empty_dsn, "base")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == f"downgraded from {HEAD} (head) to base (no tables)"
    assert await tables(empty_db) == {"futurecalls_alembic_version"}
    assert await version(empty_db) == []
    twice = await asyncio.to_thread(migrate, empty_dsn, "base")
    assert (twice.returncode, twice.stdout.strip()) == (
        0,
        "already at base (no tables): nothing to do",
    )


async def test_a_revision_below_downgrades_and_above_upgrades(
    empty_dsn: str, empty_db: asyncpg.Connection
):
    up = await asyncio.to_thread(migrate, empty_dsn, "futurecalls_0003")
    assert up.stdout.strip() == "upgraded from base (no tables) to futurecalls_0003"
    assert await version(empty_db) == ["futurecalls_0003"]
    assert "future_calls_workers" not in await tables(empty_db)  # revision 0004 makes it
    steps = await asyncio.to_thread(migrate, empty_dsn, "+2")
    assert steps.stdout.strip() == "upgraded from futurecalls_0003 to futurecalls_0005"
    down = await asyncio.to_thread(migrate, empty_dsn, "futurecalls_0004")
    assert down.stdout.strip() == "downgraded from futurecalls_0005 to futurecalls_0004"
    back = await asyncio.to_thread(migrate, empty_dsn, "--", "-1")
    assert back.stdout.strip() == "downgraded from futurecalls_0004 to futurecalls_0003"
    assert await version(empty_db) == ["futurecalls_0003"]


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("nope", "'nope' is not a revision of fastapi-futurecalls"),
        ("+9", "cannot migrate to '+9'"),
        ("app:futurecalls", "looks like module:attribute"),
    ],
)
async def test_a_bad_target_is_exit_2_with_a_clear_message(
    empty_dsn: str, empty_db: asyncpg.Connection, target: str, says: str
):
    done = await asyncio.to_thread(migrate, empty_dsn, target)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert says in " ".join(done.stderr.split()) and "Traceback" not in done.stderr
    assert await tables(empty_db) == set()  # nothing was done


async def test_the_bad_revision_message_lists_the_revisions(empty_dsn: str):
    done = await asyncio.to_thread(migrate, empty_dsn, "futurecalls_9")
    assert done.returncode == 2
    assert "futurecalls_0001, futurecalls_0002" in done.stderr and HEAD in done.stderr


async def test_an_unreachable_or_missing_database_is_exit_3(admin_dsn: str):
    missing = await asyncio.to_thread(migrate, with_database(admin_dsn, "no_such_db_here"))
    assert missing.returncode == 3 and 'database "no_such_db_here" does not exist' in missing.stderr
    nothing = await asyncio.to_thread(migrate, None)
    assert nothing.returncode == 3 and "no database" in nothing.stderr
    assert "Traceback" not in missing.stderr + nothing.stderr


async def test_beside_an_application_s_own_alembic(
    empty_dsn: str, empty_db: asyncpg.Connection, tmp_path: Path
):
    """The app's alembic keeps alembic_version; migrate keeps its own version table."""
    (tmp_path / "alembic" / "versions").mkdir(parents=True)
    (tmp_path / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/alembic\npath_separator = space\n"
    )
    (tmp_path / "alembic" / "env.py").write_text((ROOT / "migrations" / "env.py").read_text())
    (tmp_path / "alembic" / "versions" / "0001_users.py").write_text(
        textwrap.dedent("""
        from alembic import op
        revision = "app_0001"
        down_revision = None
        branch_labels = None
        depends_on = None
        def upgrade():
            op.execute("CREATE TABLE users (id serial PRIMARY KEY)")
        def downgrade():
            op.execute("DROP TABLE users")
    """)
    )
    alembic(tmp_path, empty_dsn, "upgrade", "head")
    done = await asyncio.to_thread(migrate, empty_dsn, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {"users", "alembic_version", "future_calls"} <= await tables(empty_db)
    assert await version(empty_db, "alembic_version") == ["app_0001"]
    assert await version(empty_db) == [HEAD]
    assert "app_0001 (head)" in alembic(tmp_path, empty_dsn, "current").stdout
    alembic(tmp_path, empty_dsn, "downgrade", "base")  # the app's alembic still works
    assert "users" not in await tables(empty_db) and "future_calls" in await tables(empty_db)


async def test_refuses_a_table_that_the_app_s_alembic_manages(dsn: str, db: asyncpg.Connection):
    """The per-test database was migrated with alembic (alembic_version): the README's way
    of including the revisions in an app's alembic. migrate leaves it alone."""
    before = await version(db, "alembic_version")
    done = await asyncio.to_thread(migrate, dsn)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "future_calls exists but is not recorded in futurecalls_alembic_version" in " ".join(
        done.stderr.split()
    )
    assert "alembic upgrade heads" in done.stderr
    assert await version(db, "alembic_version") == before
    assert await db.fetchval("SELECT to_regclass('futurecalls_alembic_version')") is None


async def test_schema_and_app_options(empty_dsn: str, empty_db: asyncpg.Connection, tmp_path: Path):
    done = await asyncio.to_thread(migrate, empty_dsn, "--schema", "calls")
    assert done.returncode == 0, done.stderr
    assert {"future_calls", "futurecalls_alembic_version"} <= await tables(empty_db, "calls")
    assert await tables(empty_db) == set()
    (tmp_path / "my_app.py").write_text(
        "from fastapi_futurecalls import FutureCalls\n"
        f"futurecalls = FutureCalls({empty_dsn!r}, schema='other')\n"
    )
    by_app = await asyncio.to_thread(
        migrate, "postgresql://nobody@127.0.0.1:1/x", "--app", "my_app:futurecalls", cwd=tmp_path
    )
    assert by_app.returncode == 0, by_app.stderr
    assert "future_calls" in await tables(empty_db, "other")
    async with FutureCalls(empty_dsn, schema="other", execution_enabled=False) as futurecalls:
        assert await futurecalls.session().list_future_calls() == []
