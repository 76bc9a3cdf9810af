"""Counts too large to take on every refresh, estimated from PostgreSQL's own statistics
of the table (kept by ANALYZE and autovacuum): for the dashboard and the metrics gauges,
which count each kind of row exactly up to a cap and estimate past it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

COUNT_CAP = 10_000  # rows counted exactly per kind of row, on every read


@dataclass(frozen=True, slots=True)
class TableEstimates:
    """The table_estimates statement's row: the table's row count (negative: never
    analyzed) and the frequencies of its most common states and names."""

    rows: float
    states: Mapping[str, float]
    names: Mapping[str, float]
    analyzed_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record | Mapping[str, Any]) -> TableEstimates:
        def frequencies(values: str, freqs: str) -> dict[str, float]:
            return dict(zip(row[values] or (), row[freqs] or (), strict=True))

        return cls(
            rows=float(row["rows"]),
            states=frequencies("state_values", "state_freqs"),
            names=frequencies("name_values", "name_freqs"),
            analyzed_at=row["analyzed_at"],
        )

    def of_state(self, state: str) -> int | None:
        """Rows in ``state`` (recurring chains are 'scheduled' rows too), or None."""
        if self.rows < 0 or state not in self.states:
            return None
        return round(self.rows * self.states[state])

    def of_name(self, name: str) -> int | None:
        """Rows of call name ``name``, in any state, or None."""
        if self.rows < 0 or name not in self.names:
            return None
        return round(self.rows * self.names[name])
