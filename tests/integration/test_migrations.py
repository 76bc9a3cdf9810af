"""The migrations: this repo's `alembic upgrade head`/downgrade, and an application's own
alembic setup including the package's revisions with the two documented lines."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import asyncpg

from tests.conftest import ROOT
from tests.support import alembic


async def tables(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_downgrade_and_upgrade_again(dsn: str, db: asyncpg.Connection):
    alembic(ROOT, dsn, "downgrade", "base")
    assert "future_calls" not in await tables(db)
    alembic(ROOT, dsn, "upgrade", "head")
    assert "future_calls" in await tables(db)
    indexes = {
        r["indexname"]
        for r in await db.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'future_calls'")
    }
    assert {"future_calls_due_idx", "future_calls_identifier_idx"} <= indexes


async def test_an_application_s_own_alembic_includes_the_package_revisions(
    dsn: str, db: asyncpg.Connection, tmp_path: Path
):
    alembic(ROOT, dsn, "downgrade", "base")
    (tmp_path / "alembic" / "versions").mkdir(parents=True)
    (tmp_path / "alembic.ini").write_text(
        textwrap.dedent("""
        [alembic]
        script_location = %(here)s/alembic
        path_separator = space
        version_locations = %(here)s/alembic/versions fastapi_futurecalls:migrations/versions
    """)
    )
    (tmp_path / "alembic" / "env.py").write_text((ROOT / "migrations" / "env.py").read_text())
    (tmp_path / "alembic" / "versions" / "0001_users.py").write_text(
        textwrap.dedent("""
        from alembic import op
        revision = "app_0001"
        down_revision = None
        branch_labels = ("app",)
        depends_on = None
        def upgrade():
            op.execute("CREATE TABLE users (id serial PRIMARY KEY)")
        def downgrade():
            op.execute("DROP TABLE users")
    """)
    )
    alembic(tmp_path, dsn, "upgrade", "heads")
    assert {"users", "future_calls"} <= await tables(db)
    heads = alembic(tmp_path, dsn, "current").stdout
    assert "app_0001 (head)" in heads and re.search(r"futurecalls_\d{4} \(head\)", heads)


async def test_upgrading_a_table_with_calls_to_the_fleet_controls_keeps_them(
    dsn: str, db: asyncpg.Connection
):
    alembic(ROOT, dsn, "downgrade", "futurecalls_0004")
    await db.execute(
        "INSERT INTO future_calls (name, due_at)"
        " SELECT 'record', now() FROM generate_series(1, 100)"
    )
    await db.execute(
        "INSERT INTO future_calls (name, due_at, state, owner, attempts)"
        " VALUES ('record', now(), 'running', 7, 1)"
    )
    alembic(ROOT, dsn, "upgrade", "head")
    rows = await db.fetch("SELECT state, priority, fleet_slot, snoozes FROM future_calls")
    assert len(rows) == 101
    assert {(r["priority"], r["fleet_slot"], r["snoozes"]) for r in rows} == {(0, None, 0)}
    assert "future_calls_paused" in await tables(db)
    indexes = {
        r["indexname"]
        for r in await db.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'future_calls'")
    }
    assert {
        "future_calls_priority_idx",
        "future_calls_limited_due_idx",
        "future_calls_fleet_slot_key",
        "future_calls_parked_idx",
    } <= indexes
    alembic(ROOT, dsn, "downgrade", "futurecalls_0004")
    assert "future_calls_paused" not in await tables(db)
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 101
