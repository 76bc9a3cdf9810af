"""Fleet controls: priorities, per-name limits across the fleet (slots), pausing a name,
snoozed runs, and the index retention prunes by.

Revision ID: futurecalls_0005
Revises: futurecalls_0004
Create Date: 2026-12-01

Every column is added without a table rewrite (a constant default). The indexes are
built in the migration's transaction: the partial ones read the table once and hold
almost nothing; the per-name index holds every pending one-off call, and writes wait for
its build (about a second per million pending calls on a small machine).
"""

from __future__ import annotations

from alembic import op

from fastapi_futurecalls.migrations import in_schema

revision: str = "futurecalls_0005"
down_revision: str | None = "futurecalls_0004"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

PENDING_ONE_OFF = "state = 'scheduled' AND cron IS NULL AND every IS NULL"

UPGRADE = [
    # priority: higher starts first among due calls (0, the default, is the lowest).
    # fleet_slot: which of its name's fleet_limit slots a running call holds (NULL when
    # the name has no limit). snoozes: how often the call asked to be run later.
    "ALTER TABLE future_calls"
    " ADD COLUMN priority integer NOT NULL DEFAULT 0"
    " CONSTRAINT future_calls_priority_check CHECK (priority BETWEEN 0 AND 32767),"
    " ADD COLUMN fleet_slot integer,"
    " ADD COLUMN snoozes integer NOT NULL DEFAULT 0",
    # Calls of priority above 0 are claimed first, from their own small index.
    "CREATE INDEX future_calls_priority_idx ON future_calls (priority DESC, due_at, id)"
    f" WHERE {PENDING_ONE_OFF} AND priority > 0",
    # The due calls of one name, in claim order: for names with a fleet_limit, and to find
    # where a resumed name's calls start.
    "CREATE INDEX future_calls_name_due_idx ON future_calls (name, priority DESC, due_at, id)"
    f" WHERE {PENDING_ONE_OFF}",
    # No two running calls of a name hold the same slot: the database itself refuses one
    # call more than fleet_limit, whatever the timing of claims.
    "CREATE UNIQUE INDEX future_calls_fleet_slot_key ON future_calls (name, fleet_slot)"
    " WHERE state = 'running' AND fleet_slot IS NOT NULL",
    # Parked calls by age, for retention.
    "CREATE INDEX future_calls_parked_idx ON future_calls (finished_at)"
    " WHERE state IN ('failed', 'interrupted')",
    """
        CREATE TABLE future_calls_paused (
            name       text PRIMARY KEY,
            paused_at  timestamptz NOT NULL DEFAULT now()
        )
    """,
    "COMMENT ON TABLE future_calls_paused IS"
    " 'fastapi_futurecalls: call names no worker starts until they are resumed'",
]


def upgrade() -> None:
    with in_schema():
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    with in_schema():
        op.execute("DROP TABLE future_calls_paused")
        op.execute("DROP INDEX future_calls_parked_idx")
        op.execute("DROP INDEX future_calls_fleet_slot_key")
        op.execute("DROP INDEX future_calls_name_due_idx")
        op.execute("DROP INDEX future_calls_priority_idx")
        op.execute(
            "ALTER TABLE future_calls DROP COLUMN priority, DROP COLUMN fleet_slot,"
            " DROP COLUMN snoozes"
        )
