"""Recurring chains: each due slot becomes a one-off call, and the chain moves on.

A chain whose next slot cannot be computed (a hand-edited row, a time zone this machine
lacks, an interval past the calendar's end) is parked as ``failed``, alone and once; the
other chains of the turn move on, and the dispatch loop never sees the error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import DatabaseError, DatabaseUnavailableError
from .recurrence import Recurrence
from .runner import describe
from .worker import WorkerConnection

logger = logging.getLogger("fastapi_futurecalls")


@dataclass
class Materialized:
    """What a turn of ``materialize_due_chains`` did: how many chains moved or were
    parked, and the due time of the earliest call it made (None: none made)."""

    count: int = 0
    earliest: datetime | None = None

    def __bool__(self) -> bool:
        return self.count > 0

    def add(self, other: Materialized) -> None:
        self.count += other.count
        if self.earliest is None or (other.earliest and other.earliest < self.earliest):
            self.earliest = other.earliest


def next_slot(row: Any) -> datetime:
    """The slot after the one due now, for a row of ``lock_due_chains``; raises if the row
    cannot be followed."""
    if row["due_at"] is None:
        raise ValueError("the chain's due time is infinite")
    every = row["every_seconds"]
    recurrence = Recurrence(
        row["cron"],
        None if every is None else timedelta(seconds=every),
        row["timezone"] or "UTC",
    )
    following = recurrence.next(row["due_at"], row["db_now"])
    if not following > row["due_at"]:
        raise ValueError(f"the next slot {following} is not after {row['due_at']}")
    return following


async def materialize_due_chains(
    worker: WorkerConnection, limit: int, horizon: timedelta
) -> Materialized:
    """Turn each due slot of up to ``limit`` chains into a one-off call, moving each chain
    to its next slot in the same transaction; returns how many chains moved or were
    parked (none: none was due, or another worker holds them), and the earliest call made."""
    locked: list[int] = []
    try:
        return await _materialize(worker, limit, horizon, locked)
    except DatabaseUnavailableError:
        raise
    except DatabaseError as exc:
        logger.warning("recurring chains: %s; moving them one at a time", exc)
    # A row broke the statement itself: go one chain at a time, parking the one that fails.
    done = Materialized()
    for _ in range(limit):
        locked.clear()
        try:
            moved = await _materialize(worker, 1, horizon, locked)
        except DatabaseUnavailableError:
            raise
        except DatabaseError as exc:
            if not locked:
                raise
            error = f"bad recurring chain: {describe(exc)}"
            async with worker.transaction():
                await worker.execute("park_chains", locked, [error])
            _log_parked([(locked[0], error)])
            moved = Materialized(1)
        if not moved:
            break
        done.add(moved)
    return done


async def _materialize(
    worker: WorkerConnection, limit: int, horizon: timedelta, locked: list[int]
) -> Materialized:
    async with worker.transaction():
        rows = await worker.fetch("lock_due_chains", limit, horizon)
        locked.extend(row["id"] for row in rows)
        moved: list[tuple[int, datetime, datetime]] = []  # id, next slot, slot made a call
        bad: list[tuple[int, str]] = []
        for row in rows:
            try:
                moved.append((row["id"], next_slot(row), row["due_at"]))
            except Exception as exc:  # any bad row is parked, never raised into the loop
                bad.append((row["id"], f"bad recurring chain: {describe(exc)}"))
        if moved:
            ids, nexts, _ = zip(*moved, strict=True)
            await worker.execute("materialize_chains", list(ids), list(nexts))
        if bad:
            ids, errors = zip(*bad, strict=True)
            await worker.execute("park_chains", list(ids), list(errors))
    _log_parked(bad)
    return Materialized(len(rows), min((due for _, _, due in moved), default=None))


def _log_parked(bad: list[tuple[int, str]]) -> None:
    for chain_id, error in bad:
        logger.error(
            "recurring future call chain (id %d) parked as failed: %s",
            chain_id,
            error,
            extra={"future_call_id": chain_id},
        )
