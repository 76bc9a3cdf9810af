"""The worker connection: one dispatcher's own server session, and everything run on it.

It holds the advisory lock that tells the fleet this worker is alive, the LISTEN, and the
claims and outcome writes; it takes its worker number back after a reconnect, and runs
the sweep for dead workers. It is the only place that decides the connection is lost:
a statement that fails because of what a row or an argument holds raises
:class:`DatabaseError` and leaves the connection (and so the lock) in place; a broken,
closed or silent connection (every statement is bounded by ``statement_timeout``) is
closed here and raises :class:`DatabaseUnavailableError`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from .errors import ConfigurationError, DatabaseError, DatabaseUnavailableError
from .settings import Settings
from .sql import channel, queries_for
from .store import (
    CONNECTION_ERRORS,
    POOLER_HINT,
    POOLER_SYMPTOMS,
    Store,
    connect,
    database_errors,
    first_line,
)

logger = logging.getLogger("fastapi_futurecalls")

NOT_SESSION_PINNED = (
    "the dispatcher's connection does not keep its server session between statements, "
    "so its advisory lock and LISTEN would be lost"
)
# Taking a number back: a sweep may hold it for the length of its transaction, and a
# half-open earlier session of ours until we end it.
RELOCK_TRIES = 20
RELOCK_PAUSE = 0.1
# What means the connection is gone (or silent past its statement timeout) ...
LOST: tuple[type[BaseException], ...] = (TimeoutError, *CONNECTION_ERRORS)
# ... and what, around a transaction's start and end, is treated the same way.
LOST_OR_FAILED: tuple[type[BaseException], ...] = (*LOST, asyncpg.PostgresError)


@dataclass(frozen=True, slots=True)
class Sweep:
    """What one sweep changed, and what it found."""

    changed: list[tuple[int, str, str]]  # (id, name, new state or "orphaned")
    missing: list[int]  # worker numbers seen missing, not judged dead yet
    next_due_in: float | None
    paused: frozenset[str] = frozenset()  # the paused call names


@dataclass(slots=True)
class _Numbers:
    """The worker numbers this process answers for: its own, and earlier ones it lost
    with a connection that died on our side only (half-open) and that still own calls."""

    current: int | None = None
    pid: int = 0  # the server process of the session that holds ``current``
    lost: set[int] = field(default_factory=set)  # not locked by us (yet)
    adopted: set[int] = field(default_factory=set)  # locked again, held until recorded


class WorkerConnection:
    """A dispatcher's dedicated, unpooled connection and its worker numbers."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        names: Sequence[str],
        on_due: Callable[[float, float | None], None],
        on_paused: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._store = store
        self._names = list(names)
        self._on_due = on_due
        self._on_paused = on_paused
        self._queries = queries_for(settings.schema)
        self._channel = channel(settings.schema)
        self._loop = asyncio.get_running_loop()
        self._conn: asyncpg.Connection | None = None
        self._numbers = _Numbers()
        self._clock_offset = 0.0  # database epoch seconds minus loop time
        self.namespace = settings.lock_namespace or 0
        # Loop time by which every statement must end (set while stopping), or None.
        self.deadline: float | None = None

    @property
    def worker_id(self) -> int | None:
        return self._numbers.current

    @property
    def owners(self) -> set[int]:
        """Every worker number whose calls this process may record."""
        current = self._numbers.current
        return self._numbers.adopted | ({current} if current is not None else set())

    @property
    def is_open(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    # -- opening and closing -------------------------------------------------------------

    async def open(self) -> list[int]:
        """Connect, take this worker's number (back), LISTEN. Returns the numbers taken
        back from an earlier connection: their calls need reconciling."""
        conn = await connect(self._settings)
        try:
            relocked = await self._take_numbers(conn)
            await conn.add_listener(self._channel, self._on_notify)
            conn.add_termination_listener(self._on_terminated)
        except POOLER_SYMPTOMS as exc:
            conn.terminate()
            raise ConfigurationError(
                f"{NOT_SESSION_PINNED} ({first_line(exc)}): {POOLER_HINT}"
            ) from exc
        except LOST_OR_FAILED as exc:
            conn.terminate()
            raise DatabaseUnavailableError(f"opening the worker connection: {exc!r}") from exc
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        logger.info("dispatcher connected as worker %d", self._numbers.current)
        return relocked

    async def _take_numbers(self, conn: asyncpg.Connection) -> list[int]:
        async with asyncio.timeout(self._settings.connect_timeout):
            t0 = self._loop.time()
            row = await conn.fetchrow(self._queries["table_namespace"])
            assert row is not None
            self._clock_offset = row["db_epoch"] - (t0 + self._loop.time()) / 2
            if self._settings.lock_namespace is None:
                self.namespace = row["namespace"]
            # A transaction pooler hands a session that is idle between statements to the
            # next client that asks (here: the scheduling pool's next statement): refuse
            # before taking a lock it would strand there.
            pid = await conn.fetchval(self._queries["backend_pid"])
            if await self._store.backend_pid() == pid:
                raise ConfigurationError(f"{NOT_SESSION_PINNED}: {POOLER_HINT}")
            numbers, relocked = self._numbers, []
            if numbers.current is not None:
                if await self._relock(conn, numbers.current, numbers.pid):
                    relocked.append(numbers.current)
                else:
                    logger.warning(
                        "worker %d could not take its number back; its calls are reconciled "
                        "once it can",
                        numbers.current,
                    )
                    numbers.lost.add(numbers.current)
                    numbers.current = None
            while numbers.current is None:
                row = await conn.fetchrow(self._queries["register_worker"], self.namespace)
                assert row is not None
                if row["locked"]:
                    numbers.current = row["id"]
            numbers.pid = pid
            await self._check_session(conn, pid)
            await conn.execute(
                self._queries["announce_worker"],
                numbers.current,
                self._names,
                socket.gethostname(),
                os.getpid(),
            )
        return relocked

    async def _relock(self, conn: asyncpg.Connection, number: int, old_pid: int) -> bool:
        """Lock ``number`` on ``conn``; end our own earlier session if it still holds it."""
        for _ in range(RELOCK_TRIES):
            row = await conn.fetchrow(self._queries["relock_worker"], self.namespace, number)
            assert row is not None
            if row["locked"]:
                return True
            if old_pid and row["holder"] == old_pid:
                logger.warning(
                    "worker %d: its earlier server session %d is still open (a half-open "
                    "connection); ending it",
                    number,
                    old_pid,
                )
                await conn.execute(
                    self._queries["terminate_backend"], old_pid, self.namespace, number
                )
            await asyncio.sleep(RELOCK_PAUSE)
        return False

    async def _check_session(self, conn: asyncpg.Connection, pid: int) -> None:
        """Refuse a connection that does not keep its server session: the advisory lock
        that proves this worker alive would be lost between statements."""
        row = await conn.fetchrow(
            self._queries["check_session"], self.namespace, self._numbers.current
        )
        assert row is not None
        if row["pid"] != pid or not row["holds_lock"]:
            raise ConfigurationError(f"{NOT_SESSION_PINNED}: {POOLER_HINT}")

    async def retake_lost(self) -> list[int]:
        """Try to lock the numbers lost with a dead connection again; returns those taken,
        which the caller reconciles and later releases with :meth:`release`."""
        taken = []
        for number in sorted(self._numbers.lost):
            row = await self.fetchrow("relock_worker", self.namespace, number)
            if row is not None and row["locked"]:
                self._numbers.lost.discard(number)
                self._numbers.adopted.add(number)
                taken.append(number)
        return taken

    async def release(self, number: int) -> None:
        """Let go of an adopted number: nothing of it is left to record."""
        if number in self._numbers.adopted:
            await self.fetchval("unlock_worker", self.namespace, number)
            self._numbers.adopted.discard(number)

    def forget_lost(self, number: int) -> None:
        self._numbers.lost.discard(number)

    @property
    def lost_numbers(self) -> set[int]:
        return set(self._numbers.lost)

    async def close(self, within: float = 2.0) -> None:
        """Say goodbye (the workers table forgets this number) and close, within
        ``within`` seconds, else drop the connection."""
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            async with asyncio.timeout(max(within, 0.01)):
                if self._numbers.current is not None:
                    await conn.execute(self._queries["retire_worker"], self._numbers.current)
                await conn.close()
        except LOST_OR_FAILED:
            conn.terminate()

    def _lose(self, exc: BaseException) -> DatabaseUnavailableError:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
        # Adopted numbers die with this session; they are ours to take back again.
        self._numbers.lost |= self._numbers.adopted
        self._numbers.adopted.clear()
        return DatabaseUnavailableError(f"the dispatcher lost the database: {exc!r}")

    # -- statements ------------------------------------------------------------------------

    def _timeout(self) -> float:
        timeout = self._settings.statement_timeout
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - self._loop.time())
        return max(timeout, 0.001)

    async def _run(self, method: str, name: str, *args: Any) -> Any:
        conn = self._conn
        if conn is None or conn.is_closed():
            raise self._lose(ConnectionError("the connection is closed"))
        try:
            async with asyncio.timeout(self._timeout()):
                with database_errors(f"dispatcher statement {name}"):  # the store's mapping
                    return await getattr(conn, method)(self._queries[name], *args)
        except (TimeoutError, DatabaseUnavailableError) as exc:
            raise self._lose(exc) from exc
        except DatabaseError as exc:
            if conn.is_closed():  # the server ended the session (e.g. terminated)
                raise self._lose(exc) from exc
            raise

    async def fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._run("fetch", name, *args)
        return rows

    async def fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._run("fetchrow", name, *args)
        return row

    async def fetchval(self, name: str, *args: Any) -> Any:
        return await self._run("fetchval", name, *args)

    async def execute(self, name: str, *args: Any) -> str:
        status: str = await self._run("execute", name, *args)
        return status

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """A transaction on this connection, with the same error policy."""
        conn = self._conn
        if conn is None or conn.is_closed():
            raise self._lose(ConnectionError("the connection is closed"))
        tx = conn.transaction()
        try:
            async with asyncio.timeout(self._timeout()):
                await tx.start()
        except LOST_OR_FAILED as exc:
            raise self._lose(exc) from exc
        try:
            yield
        except BaseException:
            if self.is_open:
                try:
                    async with asyncio.timeout(self._timeout()):
                        await tx.rollback()
                except LOST_OR_FAILED as exc:
                    raise self._lose(exc) from exc
            raise
        try:
            async with asyncio.timeout(self._timeout()):
                await tx.commit()
        except LOST as exc:
            raise self._lose(exc) from exc
        except asyncpg.PostgresError as exc:
            if conn.is_closed():
                raise self._lose(exc) from exc
            raise DatabaseError(f"commit failed: {first_line(exc)}") from exc

    # -- the sweep -------------------------------------------------------------------------

    async def sweep(self, frontier: tuple[datetime, int] | None) -> Sweep:
        """Note missing workers; sweep those missing for ``liveness_grace``; learn the
        next due time at or after ``frontier``."""
        after, after_id = frontier if frontier is not None else (None, None)
        row = await self.fetchrow(
            "sweep", self.namespace, self._settings.liveness_grace, after, after_id
        )
        assert row is not None
        changed = list(
            zip(row["changed_ids"], row["changed_names"], row["changed_states"], strict=True)
        )
        return Sweep(changed, list(row["missing"]), row["next_due_in"], frozenset(row["paused"]))

    # -- notifications ---------------------------------------------------------------------

    def loop_time(self, db_epoch: float) -> float:
        """The loop time at which the database's clock shows ``db_epoch``."""
        return db_epoch - self._clock_offset

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if payload == "paused":  # a name was paused or resumed
            self._on_paused()
            return
        try:
            epoch = float(str(payload))
        except ValueError:
            epoch = math.nan
        if math.isnan(epoch):
            self._on_due(self._loop.time(), None)
        else:
            self._on_due(self.loop_time(epoch), epoch)

    def _on_terminated(self, _conn: Any) -> None:
        self._on_due(self._loop.time(), None)
