"""What inspection returns: one typed record per stored call."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from pydantic import BaseModel

CallState = Literal["scheduled", "running", "interrupted", "failed"]
"""A stored call's state: ``"scheduled"`` (pending, or a recurring chain), ``"running"``
(claimed by a live worker), or parked: ``"failed"`` (no attempts left, or a row that can
no longer run) and ``"interrupted"`` (its worker died, or shutdown cancelled it). A
completed call is deleted, so it has no state."""
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
    priority: int = 0

    @property
    def recurring(self) -> bool:
        """Whether this row is a recurring chain (each occurrence runs as its own call)."""
        return self.cron is not None or self.every is not None

    @classmethod
    def from_row(cls, row: Any, payload: BaseModel | None) -> FutureCallRecord:
        """From a row of the list/get statements, whose columns carry the field names
        (the stored JSON is the ``payload`` column)."""
        columns = {name: row[name] for name in _COLUMNS}
        return cls(**columns, payload=payload, payload_json=row["payload"])


_COLUMNS = tuple(
    f.name for f in fields(FutureCallRecord) if f.name not in ("payload", "payload_json")
)
