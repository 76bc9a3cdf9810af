"""Create the future_calls table, its indexes and the worker number sequence.

Revision ID: futurecalls_0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

from fastapi_futurecalls.migrations import in_schema

revision: str = "futurecalls_0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = ("futurecalls",)
depends_on: str | None = None


UPGRADE = [
    "CREATE SEQUENCE future_calls_worker_seq AS integer CYCLE",
    """
        CREATE TABLE future_calls (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name        text NOT NULL,
            payload     json,
            identifier  text,
            due_at      timestamptz NOT NULL,
            state       text NOT NULL DEFAULT 'scheduled'
                        CHECK (state IN ('scheduled', 'running', 'interrupted', 'failed')),
            attempts    integer NOT NULL DEFAULT 0,
            owner       integer,
            last_error  text,
            created_at  timestamptz NOT NULL DEFAULT now(),
            started_at  timestamptz,
            finished_at timestamptz,
            CONSTRAINT future_calls_owner_iff_running
                CHECK ((state = 'running') = (owner IS NOT NULL))
        )
    """,
    "COMMENT ON TABLE future_calls IS 'fastapi_futurecalls: calls scheduled to run later'",
    # Claiming and the next-due look-up read only pending rows, in due order.
    "CREATE INDEX future_calls_due_idx ON future_calls (due_at, id) WHERE state = 'scheduled'",
    "CREATE INDEX future_calls_identifier_idx ON future_calls (identifier)"
    " WHERE identifier IS NOT NULL",
    # The sweep for dead workers reads only running rows.
    "CREATE INDEX future_calls_running_idx ON future_calls (owner) WHERE state = 'running'",
]


def upgrade() -> None:
    with in_schema():
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    with in_schema():
        op.execute("DROP TABLE future_calls")
        op.execute("DROP SEQUENCE future_calls_worker_seq")
