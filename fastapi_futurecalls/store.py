"""Runs the named queries with asyncpg and turns driver errors into library errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from .connections import Executor
from .errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    SchemaMissingError,
)
from .estimates import COUNT_CAP, TableEstimates
from .recurrence import Recurrence
from .settings import Settings
from .sql import QUERIES, queries_for
from .stats import MinuteStats

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    # Raised when the server ends the session in the middle of a statement.
    asyncpg.InternalClientError,
)

# Errors that CONNECTION_ERRORS would catch (asyncpg reports "connection is closed" as a
# bare InterfaceError) but that say nothing about the connection: check them first.
CLIENT_CONFIGURATION_ERRORS: tuple[type[BaseException], ...] = (asyncpg.ClientConfigurationError,)
CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    *CLIENT_CONFIGURATION_ERRORS,
    asyncpg.UnsupportedClientFeatureError,
    asyncpg.UnsupportedServerFeatureError,
    asyncpg.OutdatedSchemaCacheError,
)

# What closing a connection may meet: a silent peer, a dead one, a refusal.
CLOSE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)

# What the server rolls back to break a lock cycle, or on a serialization failure: nothing
# of the statement was written, and running it again is safe.
ROLLED_BACK: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


def rolled_back(exc: BaseException) -> bool:
    """Whether ``exc``, a library error, is a statement the server rolled back to break a
    lock cycle (or a serialization failure): it wrote nothing, and may run again."""
    return isinstance(exc.__cause__, ROLLED_BACK)


# What a transaction-pooling proxy does to asyncpg's named prepared statements: they stay
# on a server session after their client moved on, or are missing on the next one.
POOLER_SYMPTOMS: tuple[type[BaseException], ...] = (
    asyncpg.DuplicatePreparedStatementError,
    asyncpg.InvalidSQLStatementNameError,
)
POOLER_HINT = (
    "a transaction-pooling proxy such as pgbouncer in transaction mode? Scheduling through "
    "one needs statement_cache_size=0 (FUTURECALLS_STATEMENT_CACHE_SIZE=0); dispatchers "
    "need a direct connection or session pooling (docs/design.md, Known limits)"
)


def first_line(exc: BaseException) -> str:
    """asyncpg's messages for pooler symptoms go on for a page of advice."""
    return str(exc).partition("\n")[0]


@contextmanager
def database_errors(action: str) -> Iterator[None]:
    """Re-raise asyncpg and socket errors met while doing ``action`` as library errors:
    only a connection that cannot be made or was lost is :class:`DatabaseUnavailableError`;
    a value the server or the driver refuses (asyncpg's ``DataError``, SQLSTATE class 22)
    is a :class:`DatabaseError`, a bad client option a :class:`ConfigurationError`."""
    try:
        yield
    except asyncpg.UndefinedTableError as exc:
        raise SchemaMissingError(
            f"{action}: the future_calls table does not exist; run `fastapi-futurecalls "
            "migrate` (or `alembic upgrade head`)"
        ) from exc
    except POOLER_SYMPTOMS as exc:
        raise ConfigurationError(f"{action}: {first_line(exc)}: {POOLER_HINT}") from exc
    except CLIENT_CONFIGURATION_ERRORS as exc:
        raise ConfigurationError(f"{action}: {exc}") from exc
    except CLIENT_ERRORS as exc:
        raise DatabaseError(f"{action} failed: {exc}") from exc
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailableError(f"{action}: database unavailable: {exc!r}") from exc
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"{action} failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CallRow:
    """One call to store, already validated by the Session. It falls due at ``at``, or
    else ``delay`` after the database's ``now()`` (one of the two is set)."""

    name: str
    payload: str | None
    identifier: str | None
    at: datetime | None
    delay: timedelta | None
    max_attempts: int
    retry_backoff: timedelta
    priority: int = 0
    limited: bool = False  # its name has a fleet_limit

    def arguments(self) -> tuple[object, ...]:
        """The parameters $1 to $9 of the schedule statement (and the columns of
        schedule_many's arrays), in order."""
        return (
            self.name,
            self.payload,
            self.identifier,
            self.at,
            self.delay,
            self.max_attempts,
            self.retry_backoff,
            self.priority,
            self.limited,
        )


class _PoolConnection(asyncpg.Connection):
    """Pooled connections keep no session state (no LISTEN, no session locks: those live
    on the dispatcher's own connection), so releasing one needs no reset round trip."""

    def get_reset_query(self) -> str:
        return ""


async def connect(settings: Settings) -> asyncpg.Connection:
    """The dispatcher's own connection, outside any pool. It runs the same few statements
    over and over, written to plan well generically: planning them once per connection
    instead of once per turn triples the claim rate (docs/performance.md). The setting is
    a SET, not a startup parameter, which poolers such as pgbouncer refuse."""
    with database_errors("connecting"):
        async with asyncio.timeout(settings.connect_timeout):
            conn = await asyncpg.connect(settings.dsn, timeout=settings.connect_timeout)
            try:
                await conn.execute(QUERIES["tune_dispatcher_session"])
            except BaseException:
                conn.terminate()
                raise
            return conn


class Store:
    """Runs the scheduling, cancelling and inspection statements, on the pool or on a
    connection the caller passes (inside the caller's transaction)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._queries = queries_for(settings.schema)
        self._schema = settings.schema
        # Schedule-once locks take the second key space (see docs/design.md).
        self._identifier_locks = settings.lock_namespace  # None: the table's oid
        self._timeout = settings.statement_timeout
        # Calls due later than this are not notified: dispatchers' next tick finds them.
        self._notify_within = timedelta(seconds=2 * settings.poll_interval)

    @classmethod
    async def open(cls, settings: Settings) -> Store:
        with database_errors("connecting"):
            async with asyncio.timeout(settings.connect_timeout):
                pool = await asyncpg.create_pool(
                    settings.dsn,
                    min_size=1,
                    max_size=settings.pool_size,
                    timeout=settings.connect_timeout,
                    statement_cache_size=settings.statement_cache_size,
                    connection_class=_PoolConnection,
                    # A pooled connection that stopped answering (half-open) fails its
                    # statement after this long and is dropped on release, never reused.
                    command_timeout=settings.statement_timeout,
                )
        store = cls(pool, settings)
        try:
            await store.check_schema()
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self, within: float = 2.0) -> None:
        """Close the pool gracefully, or, past ``within`` seconds (a connection that stopped
        answering), drop its connections."""
        try:
            await asyncio.wait_for(self._pool.close(), timeout=within)
        except CLOSE_ERRORS:
            self._pool.terminate()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Executor]:
        """A pool connection for the read-only statements of the library's own tools
        (the dashboard), bounded like every pooled statement, planned as the dispatcher's
        are (see ``_reading``)."""
        with database_errors("reading future calls"):
            async with self._reading() as pooled:
                yield pooled

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[Executor]:
        """A pool connection in a transaction whose statements walk the table's indexes in
        order whatever the statistics say (``tune_pool_reads``): on statistics of an empty
        queue, reads that stop after a few rows would otherwise read and sort them all."""
        async with self._on(None) as pooled, pooled.transaction():
            await pooled.execute(self._queries["tune_pool_reads"])
            yield pooled

    async def backend_pid(self) -> int:
        """The server process that serves one of the pool's connections right now."""
        with database_errors("checking the connection"):
            async with self._on(None) as pooled:
                pid: int = await pooled.fetchval(self._queries["backend_pid"])
        return pid

    async def check_schema(self) -> None:
        with database_errors("checking the schema"):
            async with self._on(None) as pooled:
                present = await pooled.fetchval(self._queries["check_schema"])
        if not present:
            where = "" if self._schema is None else f" in schema {self._schema!r}"
            env = "" if self._schema is None else f"FUTURECALLS_SCHEMA={self._schema} "
            option = "" if self._schema is None else f" --schema {self._schema}"
            raise SchemaMissingError(
                f"the future_calls table does not exist{where}; run `fastapi-futurecalls "
                f"migrate{option}`, or `{env}alembic upgrade head` with your alembic set-up "
                "(see the README: Migrations)"
            )

    @asynccontextmanager
    async def _on(self, conn: Executor | None) -> AsyncIterator[Executor]:
        """``conn``, or a pool connection. A pooled statement that outlives
        ``statement_timeout`` (the pool's ``command_timeout``) drops its connection:
        releasing it would wait, unbounded, for a cancellation that a silent (half-open)
        peer never confirms."""
        if conn is not None:
            yield conn
            return
        async with self._pool.acquire() as pooled:
            try:
                yield pooled
            except TimeoutError:
                pooled.terminate()
                raise

    @asynccontextmanager
    async def _transaction(self, conn: Executor | None) -> AsyncIterator[Executor]:
        """A transaction on ``conn`` (a savepoint inside the caller's), or on the pool."""
        if conn is not None:
            savepoint = conn.transaction()
            try:
                await savepoint.start()
            except asyncpg.InterfaceError as exc:  # a transaction begun with a bare BEGIN
                raise ConfigurationError(
                    f"connection=: {exc}; begin the caller's transaction with "
                    "`async with conn.transaction():`"
                ) from exc
            try:
                yield conn
            except BaseException:
                await savepoint.rollback()
                raise
            await savepoint.commit()
            return
        async with self._on(None) as pooled, pooled.transaction():
            yield pooled

    async def schedule(
        self,
        row: CallRow,
        *,
        if_exists: str = "add",
        conn: Executor | None = None,
        trace_context: str | None = None,
    ) -> tuple[int, bool]:
        """Store ``row``; with ``if_exists`` "skip" or "replace", race-free per identifier.
        ``trace_context``: JSON of the span context it is scheduled in. Returns the call's
        id, and whether it was stored (False: "skip" kept the pending call of that id)."""
        arguments, identifier = row.arguments(), row.identifier
        with database_errors(f"scheduling {row.name!r}"):
            if if_exists == "add":
                async with self._on(conn) as executor:
                    stored = await executor.fetchval(
                        self._queries["schedule"], *arguments, self._notify_within, trace_context
                    )
                    return int(stored), True
            async with self._transaction(conn) as tx:
                # Serialises schedule-once for this identifier until the transaction ends.
                await tx.execute(
                    self._queries["lock_identifier"], self._identifier_locks, identifier
                )
                if if_exists == "skip":
                    kept = await tx.fetchval(self._queries["pending_one_off"], identifier)
                    if kept is not None:
                        return int(kept), False
                else:
                    await tx.execute(self._queries["cancel_one_offs"], identifier)
                stored = await tx.fetchval(
                    self._queries["schedule"], *arguments, self._notify_within, trace_context
                )
                return int(stored), True

    async def schedule_many(
        self, rows: list[CallRow], conn: Executor | None = None, trace_context: str | None = None
    ) -> list[int]:
        """Store ``rows`` in one statement; their ids, in order."""
        columns = [list(column) for column in zip(*(row.arguments() for row in rows), strict=True)]
        with database_errors(f"scheduling {len(rows)} calls"):
            async with self._on(conn) as executor:
                ids = await executor.fetchval(
                    self._queries["schedule_many"],
                    *columns,
                    self._notify_within,
                    trace_context,
                )
        return list(ids)

    async def schedule_recurring(
        self,
        row: CallRow,
        recurrence: Recurrence,
        conn: Executor | None = None,
        trace_context: str | None = None,
    ) -> int:
        """Create or update the chain of ``row.identifier``, first due at ``row.at``."""
        with database_errors(f"scheduling recurring {row.name!r}"):
            async with self._on(conn) as executor:
                chain_id = await executor.fetchval(
                    self._queries["schedule_recurring"],
                    row.name,
                    row.payload,
                    row.identifier,
                    row.at,
                    row.max_attempts,
                    row.retry_backoff,
                    recurrence.cron,
                    recurrence.every,
                    recurrence.timezone,
                    self._notify_within,
                    row.priority,
                    row.limited,
                    trace_context,
                )
        return int(chain_id)

    async def cancel(self, identifier: str, conn: Executor | None = None) -> int:
        """Two statements in one transaction: once the chain is locked, no slot of it can
        become a call that the DELETE's snapshot would miss."""
        with database_errors(f"cancelling {identifier!r}"):
            async with self._transaction(conn) as tx:
                await tx.execute(self._queries["lock_chain"], identifier)
                status = await tx.execute(self._queries["cancel"], identifier)
        return int(status.rsplit(" ", 1)[-1])

    async def pause(self, name: str) -> bool:
        """Pause ``name``; False if it was paused already."""
        with database_errors(f"pausing {name!r}"):
            async with self._on(None) as pooled:
                row = await pooled.fetchrow(self._queries["pause"], name)
        return bool(row is not None and row["changed"])

    async def resume(self, name: str) -> bool:
        """Resume ``name`` and wake the dispatchers; False if it was not paused."""
        with database_errors(f"resuming {name!r}"):
            async with self._on(None) as pooled:
                row = await pooled.fetchrow(self._queries["resume"], name, self._notify_within)
        return bool(row is not None and row["changed"])

    async def paused(self) -> list[str]:
        with database_errors("listing paused names"):
            async with self._on(None) as pooled:
                return [row["name"] for row in await pooled.fetch(self._queries["paused"])]

    async def mark_limited(self, names: list[str], batch: int) -> int:
        """Maintenance: bring calls of ``names`` scheduled without their fleet_limit
        under it; how many."""
        with database_errors("marking calls of limited names"):
            async with self._reading() as pooled:
                status = await pooled.execute(self._queries["mark_limited"], names, batch)
        return int(status.rsplit(" ", 1)[-1])

    async def prune(self, older_than: float, batch: int) -> int:
        """Delete up to ``batch`` parked calls that ended over ``older_than`` seconds ago."""
        with database_errors("pruning parked future calls"):
            async with self._reading() as pooled:
                return int(await pooled.fetchval(self._queries["prune"], older_than, batch))

    async def record_stats(self, worker: int, minutes: dict[int, MinuteStats]) -> None:
        """Add a process's run counts, by epoch minute, to worker ``worker``'s rows."""
        with database_errors("recording run statistics"):
            async with self._on(None) as pooled:
                await pooled.executemany(
                    self._queries["record_stats"],
                    [
                        (
                            m * 60,
                            worker,
                            s.started,
                            s.succeeded,
                            s.failed,
                            s.interrupted,
                            s.lateness,
                        )
                        for m, s in sorted(minutes.items())
                    ],
                )

    async def prune_stats(self, older_than: float) -> None:
        with database_errors("pruning run statistics"):
            async with self._on(None) as pooled:
                await pooled.execute(self._queries["prune_stats"], older_than)

    async def gauges(self, exact_up_to: int = COUNT_CAP) -> dict[str, float | None]:
        """The figures of the metrics gauges: calls by state (exact up to ``exact_up_to``
        each, PostgreSQL's estimate past that) and the age of the oldest due call."""
        with database_errors("reading the metrics gauges"):
            async with self._reading() as pooled:
                row = await pooled.fetchrow(self._queries["gauges"], exact_up_to)
                statistics = await pooled.fetchrow(self._queries["table_estimates"])
        assert row is not None and statistics is not None
        return gauge_values(row, TableEstimates.from_row(statistics), exact_up_to)

    async def park_orphans(self, namespace: int, grace: float, limit: int) -> list[asyncpg.Record]:
        """Maintenance: park pending calls of names no live worker registers."""
        with database_errors("parking calls of unknown names"):
            async with self._reading() as pooled:
                return await pooled.fetch(self._queries["park_orphans"], namespace, grace, limit)

    async def behind_frontier(
        self,
        names: list[str],
        frontier: tuple[datetime, int],
        since: tuple[datetime, int] | None = None,
    ) -> asyncpg.Record | None:
        """Maintenance: the earliest due call of ``names`` before ``frontier`` and at or
        after ``since`` (None: from the start), if any."""
        with database_errors("looking behind the frontier"):
            async with self._reading() as pooled:
                return await pooled.fetchrow(
                    self._queries["behind_frontier"],
                    names,
                    *frontier,
                    *(since if since is not None else (None, None)),
                )

    async def list(
        self, identifier: str | None, name: str | None, state: str | None, limit: int
    ) -> list[asyncpg.Record]:
        with database_errors("listing future calls"):
            async with self._on(None) as pooled:
                return await pooled.fetch(self._queries["list"], identifier, name, state, limit)

    async def get(self, call_id: int) -> asyncpg.Record | None:
        with database_errors(f"reading future call {call_id}"):
            async with self._on(None) as pooled:
                return await pooled.fetchrow(self._queries["get"], call_id)

    async def reschedule(self, call_id: int, at: datetime | None, delay: timedelta | None) -> bool:
        with database_errors(f"rescheduling future call {call_id}"):
            async with self._on(None) as pooled:
                row = await pooled.fetchrow(
                    self._queries["reschedule"], call_id, at, delay, self._notify_within
                )
        return row is not None

    async def delete(self, call_id: int) -> bool:
        with database_errors(f"deleting future call {call_id}"):
            async with self._on(None) as pooled:
                return await pooled.fetchval(self._queries["delete"], call_id) is not None


def gauge_values(
    row: asyncpg.Record, estimates: TableEstimates, exact_up_to: int
) -> dict[str, float | None]:
    """The gauges statement's row as figures: calls by state (a state counted to the cap
    estimated from the table's statistics) and the oldest due call's age."""
    values: dict[str, float | None] = {}
    for state in ("scheduled", "running", "failed", "interrupted", "recurring"):
        count = int(row[state])
        estimate = estimates.of_state(state) if count >= exact_up_to else None
        if estimate is not None and state == "scheduled" and row["recurring"] < exact_up_to:
            estimate -= row["recurring"]  # chains are 'scheduled' rows too
        values[state] = float(max(count, estimate or 0))
    values["oldest_due_age"] = max(row["oldest_due_age"] or 0.0, 0.0)
    return values
