"""The dispatch loop of one process: wait, claim a batch, run it, record the outcomes, and
at shutdown drain within the grace period. It runs no SQL of its own: statements go
through the :class:`~fastapi_futurecalls.worker.WorkerConnection`, which alone decides
that the connection is lost, and recurring chains are :mod:`~fastapi_futurecalls.chains`'
job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from .calls import Registry
from .chains import materialize_due_chains
from .errors import ConfigurationError, DatabaseError, DatabaseUnavailableError
from .runner import ClaimedCall, Outcome, describe, run_call, unsuccessful
from .session import Session
from .settings import Settings
from .store import Store, rolled_back
from .telemetry import Telemetry
from .worker import Sweep, WorkerConnection

logger = logging.getLogger("fastapi_futurecalls")

RECONNECT_DELAYS = (0.25, 0.5, 1.0, 2.0, 5.0)
CHAIN_RETRY = 0.05  # seconds before looking again at a due chain another worker holds
# Seconds before looking again at a due call a claim skipped because another transaction
# held its row: usually a claim of another worker, committed by then; else a caller's
# cancel or replace, which may roll back and leave the call due with nothing to announce it.
SKIPPED_RETRY = 1.0
# Of the shutdown grace, the end kept for cancelling the calls still running and writing
# the last outcomes: at most this many seconds, at most a quarter of the grace.
STOP_RESERVE = 3.0
# Maintenance (calls of names no live worker runs; calls behind the frontier) runs every
# this many poll intervals, in the background on the pool, and never takes more than
# MAINTENANCE_SHARE of the time. Each run looks behind the frontier only where claims
# scanned since the last look (a call a full claim skipped lies there). What walks the
# old end of the due index (calls of names no live worker runs, the full look behind the
# frontier for rows that arrived without a notification, calls to bring under a fleet
# limit) meets there every dead entry a long transaction elsewhere keeps, so that part
# grows with the time that transaction stays open: it runs at most every
# MAINTENANCE_EVERY poll intervals and, once it takes longer than DEEP_MAINTENANCE_QUICK
# seconds, never more than DEEP_MAINTENANCE_SHARE of the time: each such run takes a
# server core from the claims for as long as it lasts.
MAINTENANCE_EVERY = 6
MAINTENANCE_SHARE = 0.02
DEEP_MAINTENANCE_QUICK = 0.05
DEEP_MAINTENANCE_SHARE = 0.002
ORPHANS_PER_RUN = 1000
# Retention deletes parked calls in batches of this many, at most this many per run.
PRUNE_BATCH = 1000
PRUNE_BATCHES_PER_RUN = 10
# Run statistics (the dashboard's throughput and lateness) are kept this many seconds.
STATS_KEPT = 2 * 86400.0
# Times in a row a claim statement the server rolled back to break a lock cycle runs again
# at once. Two claimers can wait on each other: SKIP LOCKED does not cover following a
# row's update chain (docs/performance.md).
ROLLED_BACK_RETRIES = 3


class Dispatcher:
    """Claims due calls and runs at most ``concurrency_limit`` of them at once."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        session: Callable[[], Session],
        store: Store,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._telemetry = telemetry if telemetry is not None else Telemetry()
        self._registry = registry
        self._session = session
        self._names = registry.names()
        # Names with a fleet_limit are claimed apart, a slot each, under a per-name lock,
        # by the claim statement's variant that knows them.
        self._limits = registry.fleet_limits()
        self._free_names = [name for name in self._names if name not in self._limits]
        self._claim_statement = "claim_fleet_limits" if self._limits else "claim"
        self._worker = WorkerConnection(
            settings, store, self._names, self._announce, self._pauses_changed
        )
        # The paused names, as the last sweep or paused statement read them; None: to be
        # read again before the next claim (a NOTIFY said they changed, or at start).
        # A read counts only if no such NOTIFY came while it ran (its snapshot may be
        # older than the change): _pause_news counts them.
        self._paused: frozenset[str] | None = None
        self._pause_news = 0
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
        # Where the next claim's index scan starts: the earliest (due time, id) of the
        # last batch, lowered by notifications of calls due before it; or None: from the
        # start of the index, as every tick does. And the earliest due time (database
        # epoch seconds) notified since the last claim began.
        self._frontier: tuple[datetime, int] | None = None
        self._notified = math.inf
        self._maintenance_at = 0.0
        self._deep_maintenance_at = 0.0
        self._maintenance: asyncio.Task[None] | None = None
        # Where the frontier scans since maintenance last looked behind the frontier began
        # (the lowest; None: at the start of the index), if any ran.
        self._scanned = False
        self._scanned_from: tuple[datetime, int] | None = None
        # How far ahead counts as due: zero, but for testing.run_due's time travel.
        self._horizon = timedelta(0)
        # Whether a recurring chain may have a due slot to turn into a call.
        self._chains_due = True
        # Outcomes recorded so far, collected by run_due.
        self._recorded: list[Outcome] | None = None

    @property
    def worker_id(self) -> int | None:
        """The number under which this process's advisory lock is held."""
        return self._worker.worker_id

    async def start(self) -> None:
        """Connect (raising if the database is unreachable) and start the loop."""
        await self._open()
        self._task = asyncio.create_task(self._run(), name="fastapi_futurecalls.dispatcher")

    async def run_due(self, horizon: timedelta = timedelta(0)) -> list[Outcome]:
        """Burst mode: sweep once, run every call due now (or within ``horizon``),
        including follow-ups they schedule within it, wait for all of them, and return how
        each ended."""
        self._horizon = horizon
        self._recorded = []
        await self._open()
        try:
            await self._tick()  # no long-lived dispatcher may be there to reconcile
            await self._maintain()
            while True:
                await self._flush()
                free = self._settings.concurrency_limit - len(self._running)
                claimed = await self._claim(free) if free > 0 else 0
                more_due = self._due_at <= self._loop.time()
                if not self._running and not claimed and not more_due:
                    break
                if self._running and not (claimed and more_due) and not self._outcomes:
                    self._wake.clear()
                    await self._wake.wait()
        finally:
            await self._drain(self._loop.time() + self._settings.shutdown_grace)
        return self._recorded

    async def stop(self) -> None:
        """Stop claiming; let running calls finish within ``shutdown_grace``, recording
        each as it ends; cancel the rest and record them, all within the grace."""
        if self._stopping:
            return
        self._stopping = True
        self._worker.deadline = self._loop.time() + self._settings.shutdown_grace
        self._stopped.set()
        self._wake.set()
        if self._task is not None:
            await self._task

    # -- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                if not self._worker.is_open:
                    await self._open()
                await self._step()
                failures = 0
                continue
            except DatabaseUnavailableError as exc:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                logger.warning("dispatcher lost the database (%s); retrying in %.2fs", exc, delay)
            except (DatabaseError, ConfigurationError) as exc:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                log = logger.warning if rolled_back(exc) else logger.error  # not ours
                log("dispatcher statement failed (%s); retrying in %.2fs", exc, delay)
            except Exception:
                delay = RECONNECT_DELAYS[-1]
                logger.exception("dispatcher failed unexpectedly; retrying in %.2fs", delay)
            failures += 1
            with contextlib.suppress(TimeoutError):  # only stopping cuts the backoff short
                await asyncio.wait_for(self._stopped.wait(), delay * random.uniform(0.8, 1.2))
        deadline = self._worker.deadline
        await self._drain(deadline if deadline is not None else self._loop.time())

    async def _step(self) -> None:
        now = self._loop.time()
        self._telemetry.tick(now)
        if now >= self._tick_at:
            await self._tick()
        free = self._settings.concurrency_limit - len(self._running)
        if free > 0 and self._loop.time() >= self._due_at and not self._stopping:
            await self._claim(free)  # records finished calls in the same statement
        await self._flush()
        await self._wait()

    async def _tick(self) -> None:
        """Safety net: sweep dead workers, take lost numbers back, and learn the next due
        time afresh."""
        poll = self._settings.poll_interval * random.uniform(0.9, 1.1)
        self._tick_at = self._loop.time() + poll
        self._announced = math.inf
        for number in await self._worker.retake_lost():
            await self._reconcile(number)
        await self._release_idle_numbers()
        news = self._pause_news
        sweep = await self._worker.sweep(self._frontier)
        if self._pause_news == news:
            self._paused = sweep.paused
        self._log_sweep(sweep)
        now = self._loop.time()
        idle = self._maintenance is None or self._maintenance.done()
        if now >= self._maintenance_at and idle and self._recorded is None:
            self._maintenance = asyncio.create_task(
                self._maintain(), name="fastapi_futurecalls.maintenance"
            )
        if sweep.missing:  # come back when the first of them may be judged
            soon = max(self._settings.liveness_grace / 2, 0.2)
            self._tick_at = min(self._tick_at, self._loop.time() + soon)
        self._set_due(sweep.next_due_in)
        await self._record_stats()

    async def _record_stats(self) -> None:
        """Add this process's run counts to the statistics table (kept for the next try
        if the database refuses them)."""
        worker = self._worker.worker_id
        minutes = self._telemetry.stats.take()
        if not minutes or worker is None:
            self._telemetry.stats.restore(minutes)
            return
        try:
            await self._store.record_stats(worker, minutes)
        except (DatabaseError, ConfigurationError) as exc:
            self._telemetry.stats.restore(minutes)
            logger.warning("could not record run statistics yet (%s)", exc)

    async def _claim(self, free: int) -> int:
        """Claim and start up to ``free`` due calls; returns how many."""
        if self._paused is None and not await self._read_paused():
            self._due_at = self._loop.time()  # pauses are changing: try again at once
            return 0
        self._announced = math.inf
        self._notified = math.inf
        owner = self._worker.worker_id
        assert owner is not None
        tried, moved = self._chains_due, 0
        while self._chains_due and (
            chains := await materialize_due_chains(
                self._worker, self._settings.concurrency_limit, self._horizon
            )
        ):
            # Every due slot is a one-off call now, claimed in due order: from before the
            # earliest, which may lie behind the frontier.
            moved += chains.count
            if chains.earliest is not None:
                self._lower_frontier(chains.earliest.timestamp())
        if tried and not moved:
            self._chains_due = False  # none due, or held by another worker: the tail tells
        *rows, tail = await self._record(owner, free)
        if tail["chain_due"] is not None:  # None: a full turn, which did not look
            self._chains_due = tail["chain_due"]
        if tail["frontier"] is not None:
            self._advance_frontier((tail["frontier"], tail["frontier_id"]))
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
                    started_at=row["started_at"],
                    snoozes=row["snoozes"],
                    priority=row["priority"],
                    trace_context=row["trace_context"],
                )
                for row in rows
            ),
            key=lambda c: (-c.priority, c.due_at, c.id),
        )
        if calls:
            self._telemetry.started(calls)
        telemetry = self._telemetry.per_run()
        for call in calls:
            task = asyncio.create_task(run_call(call, self._registry, self._session, telemetry))
            self._running[task] = call
            task.add_done_callback(self._on_done)
        if self._chains_due:
            # A slot fell due: come back at once to turn it into a call, or shortly if
            # another worker holds that chain right now.
            self._due_at = self._loop.time() + (CHAIN_RETRY if tried and not moved else 0.0)
        elif len(rows) < free:
            # All that is due and free is ours now; sleep until the next one is due.
            seconds = tail["next_due_in"]
            if tail["skipped_due"] and (seconds is None or seconds > SKIPPED_RETRY):
                seconds = SKIPPED_RETRY
            self._set_due(seconds)
        return len(rows)

    async def _flush(self) -> None:
        """Record every finished call: the claim statement, claiming nothing."""
        for owner in {o.call.owner for o in self._outcomes} & self._worker.owners:
            await self._record(owner, 0)

    async def _record(self, owner: int, free: int, rolled_back_before: int = 0) -> list[Any]:
        """Record ``owner``'s finished calls and claim up to ``free`` calls for it, in one
        statement; returns the claimed rows and, last, the tail row."""
        mine = [o for o in self._outcomes if o.call.owner == owner]
        self._outcomes = [o for o in self._outcomes if o.call.owner != owner]
        frontier = self._frontier if free and self._frontier else None
        if free:
            self._note_scan(frontier)
        locking = bool(free and self._limits)  # a claim of limited names: lock them first
        try:
            async with self._worker.transaction() if locking else contextlib.nullcontext():
                if locking:
                    await self._worker.execute(
                        "lock_fleet_names", self._settings.lock_namespace, list(self._limits)
                    )
                rows = await self._worker.fetch(
                    self._claim_statement, *self._claim_arguments(owner, free, mine, frontier)
                )
        except DatabaseUnavailableError:
            self._outcomes[:0] = mine  # recording is idempotent: retry them
            raise
        except DatabaseError as exc:
            if rolled_back(exc) and rolled_back_before < ROLLED_BACK_RETRIES:
                logger.warning("claim statement rolled back (%s); running it again", exc)
                self._outcomes[:0] = mine
                return await self._record(owner, free, rolled_back_before + 1)
            if not mine:
                raise
            await self._record_one_by_one(owner, mine)  # one of them breaks the statement
            return await self._record(owner, free)
        if mine:
            self._telemetry.ended(mine)
            if self._recorded is not None:
                self._recorded.extend(mine)
        return rows

    def _claim_arguments(
        self,
        owner: int,
        free: int,
        outcomes: list[Outcome],
        frontier: tuple[datetime, int] | None,
    ) -> tuple[Any, ...]:
        """The claim statement's parameters: $1 to $13, and $14, $15 for its variant
        with fleet limits."""
        columns, delays = _outcome_columns(outcomes)
        paused = self._paused or frozenset()
        arguments = (
            free,
            owner,
            self._horizon,
            *columns,
            [name for name in self._free_names if name not in paused],
            *(frontier if frontier is not None else (None, None)),
            delays,
        )
        if not self._limits:
            return arguments
        limits = {name: n for name, n in self._limits.items() if name not in paused}
        return (*arguments, list(limits), list(limits.values()))

    async def _record_one_by_one(self, owner: int, outcomes: list[Outcome]) -> None:
        """Record each outcome alone; one that the database refuses is recorded as a plain
        failure, or, if even that is refused, dropped with an error logged (the row stays
        running, and is swept when this worker's number is)."""
        for index, outcome in enumerate(outcomes):
            fallback = Outcome(outcome.call, "failed", "its outcome could not be recorded")
            for attempt in (outcome, fallback):
                try:
                    await self._worker.fetch(
                        self._claim_statement, *self._claim_arguments(owner, 0, [attempt], None)
                    )
                except DatabaseUnavailableError:
                    self._outcomes[:0] = outcomes[index:]
                    raise
                except DatabaseError as exc:
                    logger.error(
                        "could not record future call %r (id %d) as %s: %s",
                        outcome.call.name,
                        outcome.call.id,
                        attempt.state,
                        exc,
                    )
                    continue
                self._telemetry.ended([attempt])
                if self._recorded is not None:
                    self._recorded.append(attempt)
                break

    async def _wait(self) -> None:
        if self._stopping:
            return
        now = self._loop.time()
        wake_at = self._tick_at
        if len(self._running) < self._settings.concurrency_limit:
            wake_at = min(wake_at, self._due_at)
        if self._outcomes or wake_at <= now:
            return
        if not self._running:
            self._telemetry.flush()  # idle: hand the last counts over before sleeping
        self._wake.clear()
        try:
            async with asyncio.timeout(wake_at - now):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _drain(self, deadline: float) -> None:
        """Wait for running calls until ``deadline`` less the reserve, recording each as it
        ends; then cancel the rest, and write the last outcomes by ``deadline``."""
        self._stopping = True
        if self._maintenance is not None:
            self._maintenance.cancel()  # its statement's release is bounded by the pool
            await asyncio.wait([self._maintenance], timeout=1.0)
        self._worker.deadline = deadline
        grace = max(deadline - self._loop.time(), 0.0)
        cancel_at = deadline - min(STOP_RESERVE, grace / 4)
        if self._running:
            logger.info(
                "waiting up to %.1fs for %d running future calls", grace, len(self._running)
            )
        while self._running and (left := cancel_at - self._loop.time()) > 0:
            await asyncio.wait(list(self._running), timeout=left, return_when="FIRST_COMPLETED")
            await asyncio.sleep(0)  # let the done callbacks collect the outcomes
            await self._flush_at_stop()
        if self._running:
            for task in self._running:
                task.cancel()
            left = (deadline - self._loop.time()) / 2  # half to unwind, half to write
            _, stuck = await asyncio.wait(list(self._running), timeout=max(left, 0.01))
            for task in stuck:  # swallowed the cancellation: the sweep parks it later
                call = self._running[task]
                logger.error(
                    "future call %r (id %d) ignored cancellation; leaving it running",
                    call.name,
                    call.id,
                    extra={"future_call_name": call.name, "future_call_id": call.id},
                )
            await asyncio.sleep(0)
        await self._flush_at_stop()
        if self._outcomes:
            logger.error(
                "could not record %d finished future calls at shutdown; the sweep treats "
                "them as interrupted",
                len(self._outcomes),
            )
        self._telemetry.flush()
        if (left := deadline - self._loop.time()) > 0.1:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._record_stats(), timeout=min(left / 2, 1.0))
        await self._worker.close(within=deadline - self._loop.time())

    async def _flush_at_stop(self) -> None:
        if not self._outcomes:
            return
        try:
            if not self._worker.is_open:
                await self._open()
            await self._flush()
        except (DatabaseError, ConfigurationError, TimeoutError) as exc:
            logger.warning("could not record finished future calls yet (%s)", exc)

    # -- connecting and reconciling ----------------------------------------------------

    async def _open(self) -> None:
        deadline = self._worker.deadline
        timeout = None if deadline is None else max(deadline - self._loop.time(), 0.01)
        async with asyncio.timeout(timeout):
            relocked = await self._worker.open()
            for number in relocked:
                await self._reconcile(number)
        self._tick_at = 0.0  # sweep and rescan at once: notifications may have been missed
        self._chains_due = True
        self._frontier = None

    async def _reconcile(self, number: int) -> None:
        """After taking ``number`` back, make the table and this process agree: rows
        claimed whose claim never reached us go back in line, and local runs of calls
        another worker swept meanwhile stop, so a retry elsewhere never overlaps them."""
        known = [c.id for c in self._running.values() if c.owner == number]
        known += [o.call.id for o in self._outcomes if o.call.owner == number]
        for row in await self._worker.fetch("requeue_untracked", number, known):
            logger.warning(
                "future call %r (id %d) was claimed as the connection dropped; back in line",
                row["name"],
                row["id"],
                extra={"future_call_name": row["name"], "future_call_id": row["id"]},
            )
        calls = [c for c in self._running.values() if c.owner == number]
        if not calls:
            return
        rows = await self._worker.fetch(
            "still_owned", number, [c.id for c in calls], [c.attempts for c in calls]
        )
        owned = {row["id"] for row in rows}
        for task, call in list(self._running.items()):
            if call.owner == number and call.id not in owned:
                logger.warning(
                    "future call %r (id %d) was swept while this worker was unreachable; "
                    "stopping this run",
                    call.name,
                    call.id,
                    extra={"future_call_name": call.name, "future_call_id": call.id},
                )
                task.cancel()

    async def _release_idle_numbers(self) -> None:
        """Let go of earlier worker numbers that no running call or unrecorded outcome
        of this process needs any more."""
        busy = {c.owner for c in self._running.values()} | {o.call.owner for o in self._outcomes}
        for number in self._worker.owners - busy - {self._worker.worker_id}:
            await self._worker.release(number)
        for number in self._worker.lost_numbers - busy:
            self._worker.forget_lost(number)

    # -- helpers ----------------------------------------------------------------------

    def _log_sweep(self, sweep: Sweep) -> None:
        for call_id, name, state in sweep.changed:
            if state == "scheduled":
                why = "rescheduled: its worker died while it ran"
            else:
                why = f"parked as {state}: its worker died while it ran"
            logger.error(
                "future call %r (id %d) %s",
                name,
                call_id,
                why,
                extra={"future_call_name": name, "future_call_id": call_id},
            )

    def _set_due(self, seconds: float | None) -> None:
        due = math.inf if seconds is None else self._loop.time() + max(seconds, 0.0)
        self._due_at = min(due, self._announced)

    async def _maintain(self) -> None:
        """Delete parked calls past the retention; lower the frontier to a due call behind
        it that no notification announced; and, less often (the deep part), park calls of
        names no live worker registers. Never raises: the next run retries."""
        began = self._loop.time()
        every = MAINTENANCE_EVERY * self._settings.poll_interval
        deep = began >= self._deep_maintenance_at
        try:
            if deep:
                await self._park_orphans()
            deep_took = self._loop.time() - began
            if self._settings.retention > 0:
                for _ in range(PRUNE_BATCHES_PER_RUN):
                    pruned = await self._store.prune(self._settings.retention, PRUNE_BATCH)
                    if pruned < PRUNE_BATCH:
                        break
            await self._store.prune_stats(STATS_KEPT)
            deep_took += await self._look_behind_frontier(deep)
        except (DatabaseError, ConfigurationError) as exc:
            logger.warning("future calls maintenance failed (%s); retrying later", exc)
            self._scanned, self._scanned_from = True, None  # look everywhere next time
        else:
            if deep:
                share = DEEP_MAINTENANCE_SHARE if deep_took > DEEP_MAINTENANCE_QUICK else 1.0
                self._deep_maintenance_at = began + max(every, deep_took / share)
        ended = self._loop.time()
        self._maintenance_at = ended + max(every, (ended - began) / MAINTENANCE_SHARE)

    async def _park_orphans(self) -> None:
        """Park calls of names no live worker registers; bring due calls of names with a
        fleet_limit under it. Both walk the old end of the due index."""
        for row in await self._store.park_orphans(
            self._worker.namespace, self._settings.unknown_name_grace, ORPHANS_PER_RUN
        ):
            logger.error(
                "future call %r (id %d) parked as failed: no live worker registers its "
                "name (unknown_name_grace)",
                row["name"],
                row["id"],
                extra={"future_call_name": row["name"], "future_call_id": row["id"]},
            )
        if self._limits:
            await self._store.mark_limited(list(self._limits), ORPHANS_PER_RUN)

    async def _look_behind_frontier(self, everywhere: bool) -> float:
        """Lower the frontier to the earliest due call behind it that its claims take:
        ``everywhere`` from the start of the index, else only from where the frontier
        scans since the last look began. Returns the seconds a look from the start took
        (0 for the other)."""
        frontier = self._frontier
        if frontier is None or not (everywhere or self._scanned):
            return 0.0  # the next claim scans from the start; or none passed anything
        since = None if everywhere else self._scanned_from
        self._scanned = False  # claims from now on count for the next look
        paused = self._paused or frozenset()
        names = [name for name in self._free_names if name not in paused]
        began = self._loop.time()
        behind = await self._store.behind_frontier(names, frontier, since)
        if behind is not None:
            epoch = behind["due_at"].timestamp()
            self._announce(self._worker.loop_time(epoch), epoch)
        return self._loop.time() - began if since is None else 0.0

    def _note_scan(self, start: tuple[datetime, int] | None) -> None:
        """A claim's frontier scan begins at ``start`` (None: the start of the index)."""
        if not self._scanned:
            self._scanned, self._scanned_from = True, start
        elif self._scanned_from is not None:
            self._scanned_from = None if start is None else min(self._scanned_from, start)

    def _lower_frontier(self, db_epoch: float) -> None:
        """A call due at ``db_epoch`` may lie behind the frontier: start the next claim
        before it."""
        if self._frontier is not None:
            lowered = _before(db_epoch)
            self._frontier = None if lowered is None else min(self._frontier, lowered)

    def _advance_frontier(self, earliest: tuple[datetime, int]) -> None:
        """After a claim that took calls: start the next one at the batch's earliest
        (due time, id), but not past a call notified meanwhile."""
        if self._notified < math.inf:
            notified = _before(self._notified)
            self._frontier = None if notified is None else min(earliest, notified)
        else:
            self._frontier = earliest

    def _pauses_changed(self) -> None:
        """A NOTIFY: a name was paused or resumed; read them again before claiming."""
        self._paused = None
        self._pause_news += 1
        self._wake.set()

    async def _read_paused(self) -> bool:
        """Read the paused names; False if a pause or resume was announced meanwhile."""
        news = self._pause_news
        rows = await self._worker.fetch("paused")
        if self._pause_news != news:
            return False
        self._paused = frozenset(row["name"] for row in rows)
        return True

    def _announce(self, due: float, db_epoch: float | None = None) -> None:
        """A NOTIFY (or a dropped connection): something may be due at loop time ``due``
        (``db_epoch`` by the database clock, when a notification said so)."""
        if db_epoch is not None:
            self._notified = min(self._notified, db_epoch)
            self._lower_frontier(db_epoch)
        self._announced = min(self._announced, due)
        if due < self._due_at:
            self._due_at = due
            self._wake.set()

    def _on_done(self, task: asyncio.Task[Outcome]) -> None:
        call = self._running.pop(task)
        if task.cancelled():  # before its first step: it never ran, so back in line
            outcome = Outcome(call, "released")
            self._frontier = None  # its due time is behind the frontier
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


def _before(db_epoch: float) -> tuple[datetime, int] | None:
    """A frontier a millisecond before ``db_epoch`` (epoch seconds are floats), before
    every id; None (scan from the start) for a time no datetime holds."""
    try:
        return datetime.fromtimestamp(db_epoch - 0.001, UTC), 0
    except (OverflowError, OSError, ValueError):
        return None


def _outcome_columns(outcomes: list[Outcome]) -> tuple[tuple[list[Any], ...], list[Any]]:
    """The claim statement's outcome parameters for ``outcomes``: $4 to $9, and $13."""
    done = [o.call for o in outcomes if o.state == "done"]
    other = [o for o in outcomes if o.state != "done"]
    columns = (
        [c.id for c in done],
        [c.attempts for c in done],
        [o.call.id for o in other],
        [o.call.attempts for o in other],
        [o.state for o in other],
        [o.error for o in other],
    )
    return columns, [o.delay for o in other]
