"""Recurring calls: a chain row carries a cron expression or an interval.

Revision ID: futurecalls_0003
Revises: futurecalls_0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

from fastapi_futurecalls.migrations import in_schema

revision: str = "futurecalls_0003"
down_revision: str | None = "futurecalls_0002"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

CHAIN = "(cron IS NOT NULL OR every IS NOT NULL)"

UPGRADE = [
    "ALTER TABLE future_calls ADD COLUMN cron text, ADD COLUMN every interval,"
    " ADD COLUMN timezone text,"
    " ADD CONSTRAINT future_calls_one_recurrence CHECK (cron IS NULL OR every IS NULL),"
    f" ADD CONSTRAINT future_calls_chain_is_pending CHECK (NOT {CHAIN} OR"
    " (state = 'scheduled' AND identifier IS NOT NULL))",
    # One-off calls and chains are claimed by different paths: index them apart.
    "DROP INDEX future_calls_due_idx",
    "CREATE INDEX future_calls_due_idx ON future_calls (due_at, id)"
    " WHERE state = 'scheduled' AND cron IS NULL AND every IS NULL",
    f"CREATE INDEX future_calls_chain_due_idx ON future_calls (due_at) WHERE {CHAIN}",
    # At most one chain per identifier: scheduling it again on every start keeps one.
    "CREATE UNIQUE INDEX future_calls_chain_identifier_key ON future_calls (identifier)"
    f" WHERE {CHAIN}",
]


def upgrade() -> None:
    with in_schema():
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    with in_schema():
        op.execute(f"DELETE FROM future_calls WHERE {CHAIN}")
        op.execute("DROP INDEX future_calls_chain_identifier_key")
        op.execute("DROP INDEX future_calls_chain_due_idx")
        op.execute("DROP INDEX future_calls_due_idx")
        op.execute(
            "CREATE INDEX future_calls_due_idx ON future_calls (due_at, id)"
            " WHERE state = 'scheduled'"
        )
        op.execute(
            "ALTER TABLE future_calls DROP CONSTRAINT future_calls_one_recurrence,"
            " DROP CONSTRAINT future_calls_chain_is_pending,"
            " DROP COLUMN cron, DROP COLUMN every, DROP COLUMN timezone"
        )
