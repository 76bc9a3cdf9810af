"""The :class:`Session`: what endpoints and running calls use to schedule and cancel."""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel

from .calls import DECODE_ERRORS, Registry, check_priority, validate_name
from .connections import Executor, driver_connection
from .context import CallContext, current_call
from .errors import InvalidScheduleError
from .records import CALL_STATES, FutureCallRecord
from .recurrence import EARLIEST, LATEST, Recurrence
from .settings import Settings
from .store import CallRow, Store
from .telemetry import Telemetry


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One call of a batch for :meth:`Session.future_calls_batch`: due at ``at``, or after
    ``delay`` (default: now); ``priority`` None takes the FutureCall's."""

    name: str
    data: BaseModel | None = None
    delay: timedelta | None = None
    at: datetime | None = None
    identifier: str | None = None
    priority: int | None = None


IfExists = Literal["add", "skip", "replace"]
"""What scheduling does when pending one-off calls with the same identifier exist:
``"add"`` (the default) schedules another, ``"skip"`` keeps the pending call and returns
its id, ``"replace"`` removes them and schedules this one. Race-free across workers."""
IF_EXISTS: frozenset[str] = frozenset(get_args(IfExists))


class Session:
    """Schedules, cancels and inspects future calls. Get one with
    ``Depends(futurecalls.session)``, or from ``futurecalls.session()`` inside
    ``async with futurecalls``; a running call receives one as the first argument of
    ``invoke``."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Settings,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings
        self._telemetry = telemetry if telemetry is not None else Telemetry()

    def __await__(self) -> Generator[Any, None, Session]:
        """Awaiting a Session gives the Session itself, at once: this is what lets FastAPI
        await ``Depends(futurecalls.session)`` on the event loop (see :func:`awaitable`)."""
        yield from ()
        return self

    async def future_call_with_delay(
        self,
        name: str,
        data: BaseModel | None,
        delay: timedelta,
        identifier: str | None = None,
        *,
        if_exists: IfExists = "add",
        priority: int | None = None,
        connection: object = None,
    ) -> int:
        """Run the call registered as ``name`` with ``data`` once ``delay`` has passed,
        measured from the database's clock. Returns the new call's id (with
        ``if_exists="skip"``, the kept call's). See :meth:`future_call_at_time`."""
        _check_delay(delay)
        return await self._schedule(
            name,
            data,
            identifier,
            (None, delay),
            if_exists=if_exists,
            priority=priority,
            connection=connection,
        )

    async def future_call_at_time(
        self,
        name: str,
        data: BaseModel | None,
        when: datetime,
        identifier: str | None = None,
        *,
        if_exists: IfExists = "add",
        priority: int | None = None,
        connection: object = None,
    ) -> int:
        """Run the call registered as ``name`` with ``data`` at ``when``; a time in the
        past runs at once. A naive ``when`` is taken as UTC. Returns the new call's id.

        ``priority`` (0 to 32767; default: the FutureCall's ``priority``): among calls
        that are due, higher priority starts first.

        ``if_exists`` decides, per identifier and race-free, what happens when a one-off
        call with the same identifier is pending: ``"add"`` another (default), ``"skip"``
        (keep it, return its id), ``"replace"`` it. ``connection`` (an asyncpg connection,
        or a SQLAlchemy ``AsyncConnection``/``AsyncSession`` on asyncpg) stores the call
        in the caller's transaction: it commits or rolls back with the caller's writes."""
        return await self._schedule(
            name,
            data,
            identifier,
            (_aware(when), None),
            if_exists=if_exists,
            priority=priority,
            connection=connection,
        )

    async def future_calls_batch(
        self, calls: Iterable[PlannedCall], *, connection: object = None
    ) -> list[int]:
        """Schedule many calls in one round trip, all or none; returns their ids in order.
        Every call is validated before anything is stored."""
        rows = []
        for planned in calls:
            if planned.at is not None and planned.delay is not None:
                raise InvalidScheduleError(f"{planned.name!r}: give at or delay, not both")
            delay = planned.delay if planned.delay is not None else timedelta(0)
            _check_delay(delay)
            at = _aware(planned.at) if planned.at is not None else None
            rows.append(
                self._row(
                    planned.name,
                    planned.data,
                    planned.identifier,
                    (at, None if at else delay),
                    planned.priority,
                )
            )
        if not rows:
            return []
        conn = await _executor(connection)
        names = [row.name for row in rows]
        tracing = self._telemetry.tracing
        if tracing is None:
            ids = await self._store.schedule_many(rows, conn)
        else:
            kinds = set(names)
            with tracing.scheduling(kinds.pop() if len(kinds) == 1 else "batch", len(rows)) as span:
                ids = await self._store.schedule_many(rows, conn, span.context())
        self._telemetry.scheduled(names)
        return ids

    async def future_call_recurring(
        self,
        name: str,
        data: BaseModel | None,
        *,
        identifier: str,
        cron: str | None = None,
        every: timedelta | None = None,
        start: datetime | None = None,
        timezone: str = "UTC",
        priority: int | None = None,
        connection: object = None,
    ) -> int:
        """Run the call registered as ``name`` with ``data`` on a schedule: ``cron`` (five
        fields, evaluated in ``timezone``) or ``every`` (an interval), from ``start``.
        There is at most one chain per ``identifier``: calling this again (every worker
        does at startup) keeps that chain, updated to these arguments. Each occurrence
        runs as a call of its own; ``cancel_future_call(identifier)`` stops the chain.
        Returns the chain's id."""
        validate_name(identifier, "identifier")
        recurrence = Recurrence(cron, every, timezone)
        first = recurrence.first(_aware(start) if start is not None else None, datetime.now(UTC))
        row = self._row(name, data, identifier, (first, None), priority)
        conn = await _executor(connection)
        tracing = self._telemetry.tracing
        if tracing is None:
            return await self._store.schedule_recurring(row, recurrence, conn)
        with tracing.scheduling(name) as span:
            chain = await self._store.schedule_recurring(row, recurrence, conn, span.context())
            span.stored([chain])
        return chain

    async def cancel_future_call(self, identifier: str, *, connection: object = None) -> int:
        """Remove every pending call scheduled with ``identifier``, and stop the recurring
        chain with it; returns how many rows were removed. Running calls finish."""
        validate_name(identifier, "identifier")
        return await self._store.cancel(identifier, await _executor(connection))

    async def list_future_calls(
        self,
        *,
        identifier: str | None = None,
        name: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[FutureCallRecord]:
        """Stored calls matching every filter given, by due time, at most ``limit``."""
        if state is not None and state not in CALL_STATES:
            raise InvalidScheduleError(
                f"state must be one of {', '.join(sorted(CALL_STATES))}, got {state!r}"
            )
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_INT:
            raise InvalidScheduleError(f"limit must be a positive int, got {limit!r:.60}")
        if identifier is not None:
            validate_name(identifier, "identifier")
        if name is not None:
            validate_name(name)
        rows = await self._store.list(identifier, name, state, limit)
        return [self._record(row) for row in rows]

    async def get_future_call(self, call_id: int) -> FutureCallRecord | None:
        """The stored call with this id, or None (completed calls are not kept)."""
        _check_call_id(call_id)
        row = await self._store.get(call_id)
        return None if row is None else self._record(row)

    async def reschedule_future_call(
        self, call_id: int, *, when: datetime | None = None, delay: timedelta | None = None
    ) -> bool:
        """Put a parked (``failed`` or ``interrupted``) call back in line, due at ``when``
        or after ``delay`` (default: now), with a fresh attempt budget. Returns False if
        no parked call has this id."""
        _check_call_id(call_id)
        if when is not None and delay is not None:
            raise InvalidScheduleError("give when or delay, not both")
        if delay is not None:
            _check_delay(delay)
        at = _aware(when) if when is not None else None
        return await self._store.reschedule(call_id, at, delay if at is None else None)

    async def delete_future_call(self, call_id: int) -> bool:
        """Remove a call that is not running (pending or parked); False if there is none."""
        _check_call_id(call_id)
        return await self._store.delete(call_id)

    async def pause_future_calls(self, name: str) -> bool:
        """Stop every worker from starting calls of ``name`` until it is resumed; calls
        already running finish, and scheduling, cancelling and inspection go on. Stored in
        the database: it holds for every worker, at its next claim, and across restarts.
        Returns False if ``name`` was paused already."""
        return await self._store.pause(validate_name(name))

    async def resume_future_calls(self, name: str) -> bool:
        """Let workers start calls of ``name`` again; the dispatchers are woken at once
        (NOTIFY). Returns False if ``name`` was not paused."""
        return await self._store.resume(validate_name(name))

    async def paused_future_calls(self) -> list[str]:
        """The paused call names, sorted."""
        return await self._store.paused()

    async def prune_future_calls(self, older_than: timedelta) -> int:
        """Delete the parked one-off calls (``failed``, ``interrupted``) that ended more
        than ``older_than`` ago, in batches; returns how many. Dispatchers do this on
        their own after the ``retention`` setting."""
        _check_delay(older_than, "older_than")
        pruned = 0
        while count := await self._store.prune(older_than.total_seconds(), PRUNE_BATCH):
            pruned += count
            if count < PRUNE_BATCH:
                break
        return pruned

    @property
    def call(self) -> CallContext:
        """Inside ``invoke``: the running call's id, name, identifier, attempt number,
        ``max_attempts``, due and start times (see :class:`CallContext`). Raises
        :class:`ConfigurationError` outside of a running call."""
        return current_call()

    async def _schedule(
        self,
        name: str,
        data: BaseModel | None,
        identifier: str | None,
        due: tuple[datetime | None, timedelta | None],
        *,
        if_exists: IfExists,
        priority: int | None,
        connection: object,
    ) -> int:
        if if_exists not in IF_EXISTS:
            raise InvalidScheduleError(f"if_exists must be add, skip or replace, not {if_exists!r}")
        if if_exists != "add" and identifier is None:
            raise InvalidScheduleError(f"if_exists={if_exists!r} needs an identifier")
        row = self._row(name, data, identifier, due, priority)
        conn = await _executor(connection)
        tracing = self._telemetry.tracing
        if tracing is None:
            call_id, stored = await self._store.schedule(row, if_exists=if_exists, conn=conn)
        else:
            with tracing.scheduling(name) as span:
                call_id, stored = await self._store.schedule(
                    row, if_exists=if_exists, conn=conn, trace_context=span.context()
                )
                span.stored([call_id], kept=not stored)
        if stored:  # "skip" that kept the pending call scheduled nothing
            self._telemetry.scheduled([name])
        return call_id

    def _row(
        self,
        name: str,
        data: BaseModel | None,
        identifier: str | None,
        due: tuple[datetime | None, timedelta | None],
        priority: int | None = None,
    ) -> CallRow:
        """Validate everything before anything is stored: the row to store, or a clear
        error."""
        validate_name(name)
        if identifier is not None:
            validate_name(identifier, "identifier")
        call = self._registry.get(name)
        priority = call.priority if priority is None else check_priority(priority)
        payload = call.encode(data)
        size = 0 if payload is None else len(payload.encode())
        if size > self._settings.max_payload_bytes:
            raise InvalidScheduleError(
                f"the payload of {name!r} is {size} bytes, over the "
                f"limit of {self._settings.max_payload_bytes} (max_payload_bytes)"
            )
        at, delay = due
        return CallRow(
            name,
            payload,
            identifier,
            at,
            delay,
            call.max_attempts,
            call.retry_backoff,
            priority,
            limited=call.fleet_limit is not None,
        )

    def _record(self, row: Any) -> FutureCallRecord:
        call = self._registry.find(row["name"])
        payload = None
        if call is not None and row["payload"] is not None:
            try:
                payload = call.decode(row["payload"])
            except DECODE_ERRORS:
                payload = None
        return FutureCallRecord.from_row(row, payload)


GetSession = TypeVar("GetSession", bound=Callable[..., Session])


def awaitable(get_session: GetSession) -> GetSession:
    """Mark ``get_session``, a plain function returning a :class:`Session`, as a coroutine
    function. FastAPI then awaits its result (a Session awaits to itself) on the event loop
    instead of calling it in a worker thread on every request, while a direct call still
    returns the Session. Python 3.12 has a public marker; FastAPI on 3.11 reads asyncio's."""
    if sys.version_info >= (3, 12):
        return inspect.markcoroutinefunction(get_session)
    vars(get_session)["_is_coroutine"] = vars(asyncio.coroutines)["_is_coroutine"]
    return get_session


async def _executor(connection: object) -> Executor | None:
    return None if connection is None else await driver_connection(connection)


SAFE_DELAY = timedelta(days=365 * 7000)  # shorter delays cannot pass LATEST before 2999


MAX_INT = 2**63 - 1  # ids are bigint; so is LIMIT
PRUNE_BATCH = 1000


def _check_call_id(call_id: object) -> None:
    if not isinstance(call_id, int) or isinstance(call_id, bool) or abs(call_id) > MAX_INT:
        raise InvalidScheduleError(
            f"call_id must be an int, a stored call's id, got {call_id!r:.60}"
        )


def _check_delay(delay: object, what: str = "delay") -> None:
    if not isinstance(delay, timedelta):
        raise InvalidScheduleError(f"{what} must be a timedelta, got {type(delay).__name__}")
    if delay < timedelta(0):
        raise InvalidScheduleError(f"{what} must not be negative, got {delay}")
    if delay > SAFE_DELAY and delay > LATEST - datetime.now(UTC):
        raise InvalidScheduleError(f"{what} {delay} would fall due after {LATEST:%Y-%m-%d}")


def _aware(when: object) -> datetime:
    if not isinstance(when, datetime):
        raise InvalidScheduleError(f"when must be a datetime, got {type(when).__name__}")
    if when.tzinfo is None or when.tzinfo.utcoffset(when) is None:
        when = when.replace(tzinfo=UTC)
    try:
        in_range = EARLIEST <= when.astimezone(UTC) <= LATEST
    except OverflowError:
        in_range = False
    if not in_range:
        raise InvalidScheduleError(
            f"when must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} UTC, got {when}"
        )
    return when
