"""The dispatch loop of one process: wait, claim a batch, run it, record the outcomes.

One dedicated connection (never pooled) carries the worker's advisory lock, the LISTEN,
the claims and the outcome writes; only the loop task uses it, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg

from .calls import Registry
from .errors import ConfigurationError, DatabaseError, DatabaseUnavailableError
from .recurrence import Recurrence
from .runner import ClaimedCall, Outcome, describe, run_call, unsuccessful
from .session import Session
from .settings import Settings
from .sql import channel, queries_for
from .store import (
    CONNECTION_ERRORS,
    POOLER_HINT,
    POOLER_SYMPTOMS,
    Store,
    connect,
    first_line,
)

logger = logging.getLogger("fastapi_futurecalls")

RECONNECT_DELAYS = (0.25, 0.5, 1.0, 2.0, 5.0)
CHAIN_RETRY = 0.05  # seconds before looking again at a due chain another worker holds
CANCEL_GRACE = 5.0  # after shutdown_grace, how long cancelled calls get to unwind
NOT_SESSION_PINNED = (
    "the dispatcher's connection does not keep its server session between statements, "
    "so its advisory lock and LISTEN would be lost"
)
RECOVERABLE: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresError,
    DatabaseError,
)


class Dispatcher:
    """Claims due calls and runs at most ``concurrency_limit`` of them at once."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        session: Callable[[], Session],
        store: Store,
    ) -> None:
        self._settings = settings
        self._store = store
        self._queries = queries_for(settings.schema)
        self._channel = channel(settings.schema)
        self._registry = registry
        self._session = session
        self._conn: asyncpg.Connection | None = None
        self._worker_id: int | None = None
        self._running: dict[asyncio.Task[Outcome], ClaimedCall] = {}
        self._outcomes: list[Outcome] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        # Loop times: when the next call is believed due, and of the next safety-net tick.
        self._due_at = 0.0
        self._tick_at = 0.0
        # Earliest due time announced by NOTIFY while a claim was in flight.
        self._announced = math.inf
        # How far ahead counts as due: zero, but for testing.run_due's time travel.
        self._horizon = timedelta(0)
        # Whether a recurring chain may have a due slot to turn into a call.
        self._chains_due = True
        # Outcomes recorded so far, collected by run_due.
        self._recorded: list[Outcome] | None = None

    @property
    def worker_id(self) -> int | None:
        """The number under which this process's advisory lock is held."""
        return self._worker_id

    async def start(self) -> None:
        """Connect (raising if the database is unreachable) and start the loop."""
        await self._connect()
        self._task = asyncio.create_task(self._run(), name="fastapi_futurecalls.dispatcher")

    async def run_due(self, horizon: timedelta = timedelta(0)) -> list[Outcome]:
        """Burst mode: run every call due now (or within ``horizon``), including follow-ups
        they schedule within it, wait for all of them, and return how each ended."""
        self._horizon = horizon
        self._recorded = []
        await self._connect()
        try:
            while True:
                conn = self._connection()
                await self._flush(conn)
                free = self._settings.concurrency_limit - len(self._running)
                claimed = await self._claim(conn, free) if free > 0 else 0
                more_due = self._due_at <= self._loop.time()
                if not self._running and not claimed and not more_due:
                    break
                if self._running and not (claimed and more_due) and not self._outcomes:
                    self._wake.clear()
                    await self._wake.wait()
        finally:
            self._stopping = True
            await self._drain()
        return self._recorded

    async def stop(self) -> None:
        """Stop claiming, let running calls finish within the grace period, record them."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        if self._task is not None:
            await self._task

    # -- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._connect()
                await self._step()
                failures = 0
                continue
            except RECOVERABLE as exc:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                logger.warning("dispatcher lost the database (%r); retrying in %.2fs", exc, delay)
            except Exception:
                delay = RECONNECT_DELAYS[-1]
                failures += 1
                logger.exception("dispatcher failed unexpectedly; restarting in %.2fs", delay)
            await self._close()
            with contextlib.suppress(TimeoutError):  # only stopping cuts the backoff short
                await asyncio.wait_for(self._stopped.wait(), delay * random.uniform(0.8, 1.2))
        await self._drain()

    async def _step(self) -> None:
        conn = self._connection()
        if self._loop.time() >= self._tick_at:
            await self._tick(conn)
        free = self._settings.concurrency_limit - len(self._running)
        if free > 0 and self._loop.time() >= self._due_at and not self._stopping:
            await self._claim(conn, free)  # records finished calls in the same statement
        await self._flush(conn)
        await self._wait()

    async def _tick(self, conn: asyncpg.Connection) -> None:
        """Safety net: park calls of dead workers, and learn the next due time afresh."""
        self._tick_at = self._loop.time() + self._settings.poll_interval * random.uniform(0.9, 1.1)
        self._announced = math.inf
        row = await conn.fetchrow(
            self._queries["sweep"], self._settings.namespace, self._settings.restart_grace
        )
        assert row is not None
        for call_id, name, state in zip(
            row["dead_ids"], row["dead_names"], row["dead_states"], strict=True
        ):
            verdict = "rescheduled" if state == "scheduled" else f"parked as {state}"
            logger.error(
                "future call %r (id %d) %s: its worker died while it ran",
                name,
                call_id,
                verdict,
                extra={"future_call_name": name, "future_call_id": call_id},
            )
        self._set_due(row["next_due_in"])

    async def _claim(self, conn: asyncpg.Connection, free: int) -> int:
        """Claim and start up to ``free`` due calls; returns how many."""
        self._announced = math.inf
        owner = self._worker_id
        assert owner is not None
        tried, moved = self._chains_due, 0
        while self._chains_due and (chains := await self._materialize_chains(conn)):
            moved += chains  # every due slot is a one-off call now, claimed in due order
        if tried and not moved:
            self._chains_due = False  # none due, or held by another worker: the tail tells
        *rows, tail = await self._record(conn, owner, free)
        if tail["chain_due"] is not None:  # None: a full turn, which did not look
            self._chains_due = tail["chain_due"]
        calls = sorted(
            (
                ClaimedCall(
                    id=row["id"],
                    name=row["name"],
                    payload=row["payload"],
                    identifier=row["identifier"],
                    due_at=row["due_at"],
                    attempts=row["attempts"],
                    max_attempts=row["max_attempts"],
                    owner=owner,
                )
                for row in rows
            ),
            key=lambda c: (c.due_at, c.id),
        )
        for call in calls:
            task = asyncio.create_task(run_call(call, self._registry, self._session))
            self._running[task] = call
            task.add_done_callback(self._on_done)
        if self._chains_due:
            # A slot fell due: come back at once to turn it into a call, or shortly if
            # another worker holds that chain right now.
            self._due_at = self._loop.time() + (CHAIN_RETRY if tried and not moved else 0.0)
        elif len(rows) < free:
            # All that is due and free is ours now; sleep until the next one is due.
            self._set_due(tail["next_due_in"])
        return len(rows)

    async def _materialize_chains(self, conn: asyncpg.Connection) -> int:
        """Turn each due slot of a recurring chain into a one-off call, moving the chain
        to its next slot in the same transaction; returns how many chains moved."""
        async with conn.transaction():
            chains = await conn.fetch(
                self._queries["lock_due_chains"], self._settings.concurrency_limit, self._horizon
            )
            if not chains:
                return 0
            nexts = [
                Recurrence(row["cron"], row["every"], row["timezone"] or "UTC").next(
                    row["due_at"], row["db_now"]
                )
                for row in chains
            ]
            await conn.execute(
                self._queries["materialize_chains"], [r["id"] for r in chains], nexts
            )
        return len(chains)

    async def _flush(self, conn: asyncpg.Connection) -> None:
        """Record every finished call: the claim statement, claiming nothing."""
        for owner in {o.call.owner for o in self._outcomes}:
            await self._record(conn, owner, 0)

    async def _record(self, conn: asyncpg.Connection, owner: int, free: int) -> list[Any]:
        """Record ``owner``'s finished calls and claim up to ``free`` calls for it, in one
        statement; returns the claimed rows and, last, the tail row."""
        mine = [o for o in self._outcomes if o.call.owner == owner]
        self._outcomes = [o for o in self._outcomes if o.call.owner != owner]
        done = [o.call for o in mine if o.state == "done"]
        other = [o for o in mine if o.state != "done"]
        try:
            rows = await conn.fetch(
                self._queries["claim"],
                free,
                owner,
                self._horizon,
                [c.id for c in done],
                [c.attempts for c in done],
                [o.call.id for o in other],
                [o.call.attempts for o in other],
                [o.state for o in other],
                [o.error for o in other],
            )
        except BaseException:
            self._outcomes[:0] = mine  # recording is idempotent: retry them
            raise
        if self._recorded is not None:
            self._recorded.extend(mine)
        return rows

    async def _wait(self) -> None:
        if self._stopping:
            return
        now = self._loop.time()
        wake_at = self._tick_at
        if len(self._running) < self._settings.concurrency_limit:
            wake_at = min(wake_at, self._due_at)
        if self._outcomes or wake_at <= now:
            return
        self._wake.clear()
        try:
            async with asyncio.timeout(wake_at - now):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _drain(self) -> None:
        tasks = list(self._running)
        if tasks:
            logger.info(
                "waiting up to %.1fs for %d running future calls",
                self._settings.shutdown_grace,
                len(tasks),
            )
            _, pending = await asyncio.wait(tasks, timeout=self._settings.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=CANCEL_GRACE)
                for task in stuck:  # swallowed the cancellation: the sweep parks it later
                    call = self._running[task]
                    logger.error(
                        "future call %r (id %d) ignored cancellation; leaving it running",
                        call.name,
                        call.id,
                        extra={"future_call_name": call.name, "future_call_id": call.id},
                    )
            await asyncio.sleep(0)  # let the done callbacks collect the last outcomes
        try:
            if self._conn is None or self._conn.is_closed():
                await self._connect()
            await self._flush(self._connection())
        except RECOVERABLE as exc:
            logger.error(
                "could not record %d finished future calls at shutdown (%r); the next "
                "dispatcher parks them as interrupted",
                len(self._outcomes),
                exc,
            )
        await self._close()

    # -- helpers ----------------------------------------------------------------------

    def _set_due(self, seconds: float | None) -> None:
        due = math.inf if seconds is None else self._loop.time() + max(seconds, 0.0)
        self._due_at = min(due, self._announced)

    def _on_done(self, task: asyncio.Task[Outcome]) -> None:
        call = self._running.pop(task)
        if task.cancelled():  # before its first step (run_call never saw it), or disowned
            outcome = unsuccessful(call, "cancelled before it started", interrupted=True)
        elif (exc := task.exception()) is not None:
            logger.error(
                "future call %r (id %d) crashed the runner",
                call.name,
                call.id,
                exc_info=exc,
                extra={"future_call_name": call.name, "future_call_id": call.id},
            )
            outcome = unsuccessful(call, describe(exc))
        else:
            outcome = task.result()
        self._outcomes.append(outcome)
        self._wake.set()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            due = self._loop.time() + max(float(str(payload)), 0.0)
        except ValueError:
            due = self._loop.time()
        self._announced = min(self._announced, due)
        if due < self._due_at:
            self._due_at = due
            self._wake.set()

    def _on_terminated(self, _conn: Any) -> None:
        self._wake.set()

    def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            raise DatabaseUnavailableError("the dispatcher's connection is closed")
        return self._conn

    async def _connect(self) -> None:
        conn = await connect(self._settings)
        try:
            # A transaction pooler hands a session that is idle between statements to the
            # next client that asks (here: the scheduling pool's next statement): refuse
            # before taking a lock it would strand there.
            pid = await conn.fetchval(self._queries["backend_pid"])
            if await self._store.backend_pid() == pid:
                raise ConfigurationError(f"{NOT_SESSION_PINNED}: {POOLER_HINT}")
            namespace = self._settings.namespace
            relocked, pid = False, 0
            if self._worker_id is not None:
                row = await conn.fetchrow(
                    self._queries["relock_worker"], namespace, self._worker_id
                )
                assert row is not None
                relocked, pid = row["locked"], row["pid"]
            while not relocked:
                row = await conn.fetchrow(self._queries["register_worker"], namespace)
                assert row is not None
                if row["locked"]:
                    self._worker_id, pid = row["id"], row["pid"]
                    break
            await self._check_session(conn, pid)
            await conn.add_listener(self._channel, self._on_notify)
            conn.add_termination_listener(self._on_terminated)
            if relocked:
                await self._reconcile(conn)
        except POOLER_SYMPTOMS as exc:
            conn.terminate()
            raise ConfigurationError(
                f"{NOT_SESSION_PINNED} ({first_line(exc)}): {POOLER_HINT}"
            ) from exc
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._tick_at = 0.0  # sweep and rescan at once: notifications may have been missed
        logger.info("dispatcher connected as worker %d", self._worker_id)

    async def _check_session(self, conn: asyncpg.Connection, pid: int) -> None:
        """Refuse a connection that does not keep its server session: the advisory lock
        that proves this worker alive would be lost between statements."""
        row = await conn.fetchrow(
            self._queries["check_session"], self._settings.namespace, self._worker_id
        )
        assert row is not None
        if row["pid"] != pid or not row["holds_lock"]:
            raise ConfigurationError(f"{NOT_SESSION_PINNED}: {POOLER_HINT}")

    async def _reconcile(self, conn: asyncpg.Connection) -> None:
        """After a reconnect under the same worker number, make the table and this process
        agree: rows claimed whose claim never reached us go back in line, and local runs
        of calls another worker swept meanwhile stop, so a retry elsewhere never overlaps
        with them."""
        known = [c.id for c in self._running.values()] + [o.call.id for o in self._outcomes]
        for row in await conn.fetch(self._queries["requeue_untracked"], self._worker_id, known):
            logger.warning(
                "future call %r (id %d) was claimed as the connection dropped; back in line",
                row["name"],
                row["id"],
                extra={"future_call_name": row["name"], "future_call_id": row["id"]},
            )
        if not self._running:
            return
        calls = list(self._running.values())
        owned = {
            row["id"]
            for row in await conn.fetch(
                self._queries["still_owned"],
                self._worker_id,
                [c.id for c in calls],
                [c.attempts for c in calls],
            )
        }
        for task, call in list(self._running.items()):
            if call.id not in owned:
                logger.warning(
                    "future call %r (id %d) was swept while the database was unreachable; "
                    "stopping this run",
                    call.name,
                    call.id,
                    extra={"future_call_name": call.name, "future_call_id": call.id},
                )
                task.cancel()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=2)
            except RECOVERABLE:
                conn.terminate()
