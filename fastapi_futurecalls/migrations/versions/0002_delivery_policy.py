"""Per-call delivery policy: attempts allowed and the first retry delay.

Revision ID: futurecalls_0002
Revises: futurecalls_0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

from fastapi_futurecalls.migrations import in_schema

revision: str = "futurecalls_0002"
down_revision: str | None = "futurecalls_0001"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None


def upgrade() -> None:
    with in_schema():
        # Captured from the FutureCall class when the call is scheduled, so that the sweep
        # (plain SQL, in any worker) applies the policy the call was scheduled with.
        op.execute(
            "ALTER TABLE future_calls"
            " ADD COLUMN max_attempts integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),"
            " ADD COLUMN retry_backoff interval NOT NULL DEFAULT '1 second'"
        )


def downgrade() -> None:
    with in_schema():
        op.execute("ALTER TABLE future_calls DROP COLUMN max_attempts, DROP COLUMN retry_backoff")
