"""What each dashboard page reads, with the statements of queries.sql: every read bounded
(exact counts up to a cap, PostgreSQL's statistics past it; pages by keyset)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Literal

from .. import sql as library_sql
from ..connections import Executor
from ..estimates import COUNT_CAP, TableEstimates
from ..records import CALL_STATES
from ..sql import in_schema, load
from .figures import Count, Throughput, throughput

SCAN_LIMIT = 5_000  # rows one page of a listing reads at most
PAGE_SIZE = 50
STATS_MINUTES = 15
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

QUERIES = load(__package__)


@cache
def queries_for(schema: str | None) -> dict[str, str]:
    """The statements, naming the library's tables in ``schema`` (None: search_path)."""
    return in_schema(QUERIES, schema)


# -- the overview ------------------------------------------------------------------------

STATES = ("scheduled", "recurring", "running", "failed", "interrupted")


@dataclass(frozen=True, slots=True)
class NameRow:
    name: str
    counts: dict[str, Count]  # by state (of STATES), and "due_hour"
    paused: bool = False
    paused_at: datetime | None = None
    registered: bool = False  # by a live worker


@dataclass(frozen=True, slots=True)
class Overview:
    now: datetime
    states: dict[str, Count]
    overdue: Count
    due_hour: Count
    names: list[NameRow]
    due_next: list[dict[str, Any]]
    parked: list[dict[str, Any]]
    throughput: Throughput
    analyzed_at: datetime | None
    estimated: bool  # some figure is an estimate


@dataclass(slots=True)
class _Tally:
    """Exact counts read by overview_counts, per kind, state and name."""

    totals: dict[str, int] = field(default_factory=dict)  # per kind
    by_state: dict[str, int] = field(default_factory=dict)
    by_name: dict[tuple[str, str], int] = field(default_factory=dict)  # (state, name)
    due_hour: dict[str, int] = field(default_factory=dict)
    overdue: int = 0

    def capped(self, kind: str) -> bool:
        return self.totals.get(kind, 0) > COUNT_CAP


class Queries:
    """The dashboard's reads, for the tables in ``schema`` and the workers' lock
    namespace (None: the table's oid, as the dispatchers take it)."""

    def __init__(self, schema: str | None, lock_namespace: int | None) -> None:
        self.sql = queries_for(schema)
        self.estimates_sql = library_sql.queries_for(schema)["table_estimates"]
        self.namespace = lock_namespace

    async def overview(self, conn: Executor) -> Overview:
        tally = await self._tally(conn)
        stats = await conn.fetchrow(self.estimates_sql)
        assert stats is not None
        estimates = TableEstimates.from_row(stats)
        states = {state: _state_count(state, tally, estimates) for state in STATES}
        names = await self._names(conn, tally, estimates)
        due_next = [dict(r) for r in await conn.fetch(self.sql["due_next"], 10)]
        parked = [dict(r) for r in await conn.fetch(self.sql["parked_recent"], 10)]
        minutes = await conn.fetch(self.sql["stats_recent"], STATS_MINUTES)
        now = await conn.fetchval(self.sql["db_now"])
        figures = [*states.values(), *(c for row in names for c in row.counts.values())]
        return Overview(
            now=now,
            states=states,
            overdue=_capped(tally.overdue),
            due_hour=_capped(sum(tally.due_hour.values())),
            names=names,
            due_next=due_next,
            parked=parked,
            throughput=throughput([dict(r) for r in minutes], now, STATS_MINUTES),
            analyzed_at=estimates.analyzed_at,
            estimated=any(c.kind == "estimate" for c in figures),
        )

    async def _tally(self, conn: Executor) -> _Tally:
        tally = _Tally()
        for row in await conn.fetch(self.sql["overview_counts"], COUNT_CAP + 1):
            kind, state, name, n = row["kind"], row["state"], row["name"], row["n"]
            tally.totals[kind] = tally.totals.get(kind, 0) + n
            if kind == "due_hour":
                tally.due_hour[name] = n
                continue
            if kind == "scheduled":
                tally.overdue += row["overdue"]
            tally.by_state[state] = tally.by_state.get(state, 0) + n
            tally.by_name[state, name] = n
        return tally

    async def _names(
        self, conn: Executor, tally: _Tally, estimates: TableEstimates
    ) -> list[NameRow]:
        paused: dict[str, datetime] = {}
        registered: set[str] = set()
        for row in await conn.fetch(self.sql["names"], self.namespace):
            if row["paused"]:
                paused[row["name"]] = row["paused_at"]
            else:
                registered.add(row["name"])
        seen = {name for _, name in tally.by_name} | set(tally.due_hour)
        if tally.capped("scheduled"):
            seen |= set(estimates.names)
        rows = []
        for name in sorted(seen | set(paused) | registered):
            counts = {state: _name_count(state, name, tally, estimates) for state in STATES}
            counts["due_hour"] = _capped(tally.due_hour.get(name, 0), tally.capped("due_hour"))
            rows.append(NameRow(name, counts, name in paused, paused.get(name), name in registered))
        return rows

    # -- listings --------------------------------------------------------------------------

    async def calls(self, conn: Executor, filters: Filters, cursor: str | None) -> Listing:
        """One page of calls matching ``filters``, after ``cursor`` (None: the first)."""
        source = filters.source
        key = Cursor.parse(cursor, timed=source in TIMED_SOURCES)
        filters_args = (filters.name, None if source in EXACT_STATE else filters.state)
        if source == "identifier":
            args: tuple[Any, ...] = (key.id, SCAN_LIMIT, PAGE_SIZE + 1, *filters_args)
            args = (*args, filters.identifier)
        elif source in TIMED_SOURCES:
            args = (key.at, key.id, SCAN_LIMIT, PAGE_SIZE + 1, *filters_args, filters.identifier)
        else:
            args = (key.id, SCAN_LIMIT, PAGE_SIZE + 1, *filters_args, filters.identifier)
        rows = await conn.fetch(self.sql[f"calls_{source}"], *args)
        calls = [dict(r) for r in rows if r["id"] is not None]
        ending = rows[0]  # one row at least: the scan's end, with or without hits
        after = None
        if len(calls) > PAGE_SIZE:
            del calls[PAGE_SIZE:]
            time = TIMED_SOURCES.get(source)
            after = Cursor(calls[-1][time] if time else None, calls[-1]["id"]).text()
        elif ending["scanned"] == SCAN_LIMIT:
            after = Cursor(ending["end_at"], ending["end_id"]).text()
        window = after is not None and len(calls) < PAGE_SIZE
        return Listing(calls, after, scanned=ending["scanned"], window=window)

    async def chains(self, conn: Executor, cursor: str | None) -> Listing:
        key = Cursor.parse(cursor, timed=True)
        chains = await conn.fetch(self.sql["chains"], key.at, key.id, PAGE_SIZE + 1)
        rows = [dict(r) for r in chains[:PAGE_SIZE]]
        after = None
        if len(chains) > PAGE_SIZE:
            after = Cursor(rows[-1]["due_at"], rows[-1]["id"]).text()
        return Listing(rows, after, scanned=len(rows), window=False)

    async def call(self, conn: Executor, call_id: int) -> dict[str, Any] | None:
        row = await conn.fetchrow(self.sql["call"], call_id)
        if row is None:
            return None
        call = dict(row)
        call["payload_pretty"] = _pretty(call["payload"])
        return call

    async def workers(self, conn: Executor) -> tuple[datetime, list[dict[str, Any]]]:
        rows = [dict(r) for r in await conn.fetch(self.sql["workers"], self.namespace)]
        return await conn.fetchval(self.sql["db_now"]), rows


# -- filters and cursors ---------------------------------------------------------------------

Source = Literal["all", "scheduled", "running", "parked", "identifier"]
# Listings in order of a time (then id), and which column that time is.
TIMED_SOURCES: dict[str, str] = {"scheduled": "due_at", "parked": "finished_at"}
# Sources whose index already selects exactly the state filtered by.
EXACT_STATE = frozenset({"scheduled", "running"})
FILTER_STATES = tuple(sorted(CALL_STATES))


class BadInput(ValueError):
    """A query parameter or form field the dashboard cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Filters:
    state: str | None = None
    name: str | None = None
    identifier: str | None = None

    @classmethod
    def parse(cls, state: str | None, name: str | None, identifier: str | None) -> Filters:
        state, name, identifier = (_blank(state), _blank(name), _blank(identifier))
        if state is not None and state not in CALL_STATES:
            raise BadInput(
                f"state must be one of {', '.join(FILTER_STATES)} (or empty for any), "
                f"got {state!r:.80}"
            )
        for what, value, limit in (("name", name, 200), ("identifier", identifier, 500)):
            if value is not None and (len(value) > limit or "\x00" in value):
                raise BadInput(f"{what} must be 1 to {limit} characters without NUL")
        return cls(state, name, identifier)

    @property
    def source(self) -> Source:
        """The index a page of these filters is read through."""
        if self.identifier is not None:
            return "identifier"
        if self.state in ("failed", "interrupted"):
            return "parked"
        if self.state == "scheduled":
            return "scheduled"
        if self.state == "running":
            return "running"
        return "all"

    def query(self) -> dict[str, str]:
        values = {"state": self.state, "name": self.name, "identifier": self.identifier}
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ends: (time, id) for listings in time order, else an id alone."""

    at: datetime | None
    id: int | None

    def text(self) -> str:
        if self.at is None:
            return str(self.id)
        micros = (self.at - EPOCH) // timedelta(microseconds=1)
        return f"{micros}_{self.id}"

    @classmethod
    def parse(cls, text: str | None, *, timed: bool) -> Cursor:
        if not text:
            return cls(None, None)
        try:
            if timed:
                micros, _, call_id = text.partition("_")
                return cls(EPOCH + timedelta(microseconds=int(micros)), _id(call_id))
            return cls(None, _id(text))
        except (ValueError, OverflowError):
            shape = "<microseconds>_<id>" if timed else "<id>"
            raise BadInput(
                f"after must be a cursor of the form {shape} as the Next link gives, "
                f"got {text!r:.80}"
            ) from None


@dataclass(frozen=True, slots=True)
class Listing:
    rows: list[dict[str, Any]]
    after: str | None  # the next page's cursor; None: this is the last page
    scanned: int
    window: bool  # the page ended where its scan ended, with fewer rows than a page


def _id(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 2**63 - 1:
        raise ValueError(text)
    return value


def _blank(value: str | None) -> str | None:
    return None if value is None or value.strip() == "" else value.strip()


def _capped(n: int, capped: bool | None = None) -> Count:
    if capped is None:
        capped = n > COUNT_CAP
    return Count(COUNT_CAP if capped else n, "at_least" if capped else "exact")


def _state_count(state: str, tally: _Tally, estimates: TableEstimates) -> Count:
    kind = {"failed": "parked", "interrupted": "parked"}.get(state, state)
    exact = tally.by_state.get(state, 0)
    if not tally.capped(kind):
        return Count(exact, "exact")
    estimate = estimates.of_state("scheduled" if state == "recurring" else state)
    if estimate is not None and state == "scheduled" and not tally.capped("recurring"):
        estimate -= tally.by_state.get("recurring", 0)  # chains are 'scheduled' rows too
    if estimate is None or estimate <= exact:
        return Count(exact, "at_least")
    return Count(estimate, "estimate")


def _name_count(state: str, name: str, tally: _Tally, estimates: TableEstimates) -> Count:
    kind = {"failed": "parked", "interrupted": "parked"}.get(state, state)
    exact = tally.by_name.get((state, name), 0)
    if not tally.capped(kind):
        return Count(exact, "exact")
    estimate = estimates.of_name(name) if state == "scheduled" else None
    if estimate is not None:
        # The name's rows of every state, less those counted exactly in the others.
        for other in STATES:
            other_kind = {"failed": "parked", "interrupted": "parked"}.get(other, other)
            if other != state and not tally.capped(other_kind):
                estimate -= tally.by_name.get((other, name), 0)
    if estimate is None or estimate <= exact:
        return Count(exact, "at_least")
    return Count(estimate, "estimate")


def _pretty(payload: str | None) -> str | None:
    if payload is None:
        return None
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except ValueError:
        return payload
