"""Fleet controls: priorities, per-name limits across the fleet (slots), pausing a name,
snoozed runs, and the index retention prunes by.

Revision ID: futurecalls_0005
Revises: futurecalls_0004
Create Date: 2026-12-01

Every column is added without a table rewrite (a constant default). The indexes are
partial and start empty (no existing row has a priority, a slot or, but for parked
calls, is in them): each build reads the table once while writes wait, well under a
second per million rows.
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
    # fleet_slot: NULL for a call of a name without a fleet_limit; for one with, 0 while
    # it waits and, while it runs, which of the name's slots (1 to the limit) it holds.
    # snoozes: how often the call asked to be run later.
    "ALTER TABLE future_calls"
    " ADD COLUMN priority integer NOT NULL DEFAULT 0"
    " CONSTRAINT future_calls_priority_check CHECK (priority BETWEEN 0 AND 32767),"
    " ADD COLUMN fleet_slot integer,"
    " ADD COLUMN snoozes integer NOT NULL DEFAULT 0",
    # Calls of priority above 0 are claimed first, from their own small index.
    "CREATE INDEX future_calls_priority_idx ON future_calls (priority DESC, due_at, id)"
    f" WHERE {PENDING_ONE_OFF} AND priority > 0",
    # The pending calls of names with a fleet_limit, per name in claim order. Only those:
    # an index of every pending call by name would make every schedule pay for it.
    "CREATE INDEX future_calls_limited_due_idx"
    " ON future_calls (name, priority DESC, due_at, id)"
    f" WHERE {PENDING_ONE_OFF} AND fleet_slot IS NOT NULL",
    # No two running calls of a name hold the same slot: the database itself refuses one
    # call more than fleet_limit, whatever the timing of claims.
    "CREATE UNIQUE INDEX future_calls_fleet_slot_key ON future_calls (name, fleet_slot)"
    " WHERE state = 'running' AND fleet_slot > 0",
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
        op.execute("DROP INDEX future_calls_limited_due_idx")
        op.execute("DROP INDEX future_calls_priority_idx")
        op.execute(
            "ALTER TABLE future_calls DROP COLUMN priority, DROP COLUMN fleet_slot,"
            " DROP COLUMN snoozes"
        )
