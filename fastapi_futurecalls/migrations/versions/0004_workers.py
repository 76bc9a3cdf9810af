"""The workers table: which names each live dispatcher runs, and when a dead one was first
seen missing.

Revision ID: futurecalls_0004
Revises: futurecalls_0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

from fastapi_futurecalls.migrations import in_schema

revision: str = "futurecalls_0004"
down_revision: str | None = "futurecalls_0003"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

CHAIN = "(cron IS NOT NULL OR every IS NOT NULL)"

UPGRADE = [
    # A row per worker number: written when a dispatcher takes its number, and by sweeps,
    # which note when a number's advisory lock was first seen missing. Liveness itself is
    # the lock; this table only remembers what the lock cannot say.
    """
        CREATE TABLE future_calls_workers (
            id             integer PRIMARY KEY,
            names          text[] NOT NULL DEFAULT '{}',
            host           text,
            pid            integer,
            started_at     timestamptz NOT NULL DEFAULT now(),
            missing_since  timestamptz
        )
    """,
    # Calls claimed before the upgrade: their owners get rows, so sweeps can judge them.
    "INSERT INTO future_calls_workers (id)"
    " SELECT DISTINCT owner FROM future_calls WHERE state = 'running'",
    "COMMENT ON TABLE future_calls_workers IS"
    " 'fastapi_futurecalls: dispatchers, the call names they run, when seen gone'",
    # A chain whose next slot cannot be computed is parked as failed, where it shows.
    "ALTER TABLE future_calls DROP CONSTRAINT future_calls_chain_is_pending,"
    f" ADD CONSTRAINT future_calls_chain_is_pending CHECK (NOT {CHAIN} OR"
    " (state IN ('scheduled', 'failed') AND identifier IS NOT NULL))",
]


def upgrade() -> None:
    with in_schema():
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    with in_schema():
        op.execute(f"DELETE FROM future_calls WHERE {CHAIN} AND state = 'failed'")
        op.execute(
            "ALTER TABLE future_calls DROP CONSTRAINT future_calls_chain_is_pending,"
            f" ADD CONSTRAINT future_calls_chain_is_pending CHECK (NOT {CHAIN} OR"
            " (state = 'scheduled' AND identifier IS NOT NULL))"
        )
        op.execute("DROP TABLE future_calls_workers")
