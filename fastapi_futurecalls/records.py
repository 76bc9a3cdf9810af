"""What inspection returns: one typed record per stored call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from pydantic import BaseModel

CallState = Literal["scheduled", "running", "interrupted", "failed"]
CALL_STATES: frozenset[str] = frozenset(get_args(CallState))


@dataclass(frozen=True, slots=True)
class FutureCallRecord:
    """A stored call. ``payload`` is the call's model (None for no data, or when the
    name is not registered here or the JSON no longer validates: see ``payload_json``)."""

    id: int
    name: str
    state: CallState
    due_at: datetime
    identifier: str | None
    attempts: int
    max_attempts: int
    last_error: str | None
    payload: BaseModel | None
    payload_json: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cron: str | None = None
    every: timedelta | None = None
    timezone: str | None = None

    @property
    def recurring(self) -> bool:
        """Whether this row is a recurring chain (each occurrence runs as its own call)."""
        return self.cron is not None or self.every is not None

    @classmethod
    def from_row(cls, row: Any, payload: BaseModel | None) -> FutureCallRecord:
        return cls(
            id=row["id"],
            name=row["name"],
            state=row["state"],
            due_at=row["due_at"],
            identifier=row["identifier"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            last_error=row["last_error"],
            payload=payload,
            payload_json=row["payload"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            cron=row["cron"],
            every=row["every"],
            timezone=row["timezone"],
        )
