"""Observability: the trace context a call was scheduled under, and per-minute run
statistics that every dispatcher adds to (the dashboard's throughput and lateness).

Revision ID: futurecalls_0006
Revises: futurecalls_0005
Create Date: 2026-12-01

The column is added without a table rewrite (no default); the table is new.
"""

from __future__ import annotations

from alembic import op

from fastapi_futurecalls.migrations import in_schema

revision: str = "futurecalls_0006"
down_revision: str | None = "futurecalls_0005"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

UPGRADE = [
    # W3C trace context (traceparent, and tracestate when there is one) of the span that
    # scheduled the call, so its run links back to it however much later it runs.
    "ALTER TABLE future_calls ADD COLUMN trace_context jsonb",
    # One row per minute and worker number, added to by that dispatcher every few
    # seconds. lateness: counts of runs per bucket of start minus due time (the bucket
    # bounds are fastapi_futurecalls.stats.LATENESS_BUCKETS).
    """
        CREATE TABLE future_calls_stats (
            minute       timestamptz NOT NULL,
            worker       integer NOT NULL,
            started      bigint NOT NULL DEFAULT 0,
            succeeded    bigint NOT NULL DEFAULT 0,
            failed       bigint NOT NULL DEFAULT 0,
            interrupted  bigint NOT NULL DEFAULT 0,
            lateness     bigint[] NOT NULL,
            PRIMARY KEY (minute, worker)
        )
    """,
    "COMMENT ON TABLE future_calls_stats IS"
    " 'fastapi_futurecalls: runs per minute and worker, and their lateness'",
]


def upgrade() -> None:
    with in_schema():
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    with in_schema():
        op.execute("DROP TABLE future_calls_stats")
        op.execute("ALTER TABLE future_calls DROP COLUMN trace_context")
