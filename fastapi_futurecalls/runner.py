"""Runs one claimed call: decode its payload, invoke it, and say how it ended."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from .calls import DECODE_ERRORS, FutureCall, Registry
from .context import CallContext, running
from .errors import RetryLater
from .session import Session
from .telemetry import Telemetry

logger = logging.getLogger("fastapi_futurecalls")

NextState = Literal["done", "scheduled", "failed", "interrupted", "released", "snoozed"]


# Not frozen: a frozen dataclass costs three times as much to build, once per run.
@dataclass(slots=True)
class ClaimedCall:
    """A row this process owns: ``owner`` is the worker number that claimed it."""

    id: int
    name: str
    payload: str | None
    identifier: str | None
    due_at: datetime
    attempts: int
    max_attempts: int
    owner: int
    started_at: datetime | None = None
    snoozes: int = 0
    priority: int = 0
    trace_context: str | None = None  # JSON: the context the call was scheduled in
    _context: CallContext | None = field(default=None, repr=False, compare=False)

    def context(self) -> CallContext:
        """What the run knows of itself (built on first use, the same object after)."""
        if self._context is None:
            self._context = CallContext(
                id=self.id,
                name=self.name,
                identifier=self.identifier,
                attempt=self.attempts,
                max_attempts=self.max_attempts,
                due_at=self.due_at,
                started_at=self.started_at if self.started_at is not None else self.due_at,
                priority=self.priority,
            )
        return self._context


@dataclass(slots=True)
class Outcome:
    """How a run ended, and where its row goes: deleted ("done"), back in line for another
    attempt ("scheduled"), parked ("failed", "interrupted") with ``error``, back in line
    untouched ("released": claimed, but stopped before it started), or back in line
    ``delay`` seconds on, not counted as an attempt ("snoozed": it raised RetryLater)."""

    call: ClaimedCall
    state: NextState = "done"
    error: str | None = None
    delay: float | None = None


def retry_later(call: ClaimedCall, request: RetryLater) -> Outcome:
    """Back in line after the requested delay, up to RetryLater.MAX_TIMES times."""
    if call.snoozes >= RetryLater.MAX_TIMES:
        error = f"asked to retry later more than {RetryLater.MAX_TIMES} times (RetryLater)"
        logger.error("future call %r (id %d) %s", call.name, call.id, error, extra=_log_extra(call))
        return unsuccessful(call, error)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "future call %r (id %d) retries later, in %s",
            call.name,
            call.id,
            request.delay,
            extra=_log_extra(call),
        )
    return Outcome(call, "snoozed", delay=request.delay.total_seconds())


def unsuccessful(call: ClaimedCall, error: str, *, interrupted: bool = False) -> Outcome:
    """Retry while attempts are left; then park. At most once (the default) keeps
    "interrupted" apart from "failed"; with retries, running out is a failure."""
    if call.attempts < call.max_attempts:
        return Outcome(call, "scheduled", error)
    if interrupted and call.max_attempts == 1:
        return Outcome(call, "interrupted", error)
    return Outcome(call, "failed", error)


MAX_ERROR_LENGTH = 2000


def describe(exc: BaseException) -> str:
    """``Type: message`` for last_error: never raises, no NUL or lone surrogates (which
    PostgreSQL text refuses), at most MAX_ERROR_LENGTH characters."""
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__} whose message cannot be shown>"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    text = text.replace("\x00", "\\x00").encode("utf-8", "replace").decode("utf-8")
    return text[:MAX_ERROR_LENGTH]


def _log_extra(call: ClaimedCall) -> dict[str, object]:
    return {"future_call_name": call.name, "future_call_id": call.id}


async def run_call(
    call: ClaimedCall,
    registry: Registry,
    session: Callable[[], Session],
    telemetry: Telemetry | None = None,
) -> Outcome:
    """Never raises for the call's own errors: they become a parked outcome and a log record."""
    handler = registry.find(call.name)
    if handler is None:
        error = f"no future call is registered as {call.name!r} in this process"
        logger.error(
            "future call %r (id %d) not run: %s", call.name, call.id, error, extra=_log_extra(call)
        )
        return Outcome(call, "failed", error)  # bad data: another attempt cannot help
    try:
        data = handler.decode(call.payload)
    except DECODE_ERRORS as exc:
        error = f"payload does not fit {type(handler).__name__}'s model: {exc}"
        logger.error(
            "future call %r (id %d) not run: %s", call.name, call.id, error, extra=_log_extra(call)
        )
        return Outcome(call, "failed", error)
    running.set(call)  # in this task's own context: session.call reads it
    if telemetry is None:
        return await _invoke(call, handler, data, session)
    span = telemetry.start_run(call)
    started = time.perf_counter()
    try:
        outcome = await _invoke(call, handler, data, session)
    except BaseException:  # not the call's own errors (_invoke turns those into outcomes)
        telemetry.end_run(call, span, _BROKEN, time.perf_counter() - started)
        raise
    telemetry.end_run(call, span, outcome, time.perf_counter() - started)
    return outcome


_BROKEN = Outcome(
    ClaimedCall(0, "", None, None, datetime.min, 0, 0, 0),
    "interrupted",
    "the runner was interrupted",
)


async def _invoke(
    call: ClaimedCall,
    handler: FutureCall[Any],
    data: BaseModel | None,
    session: Callable[[], Session],
) -> Outcome:
    deadline = None if handler.timeout is None else asyncio.timeout(handler.timeout.total_seconds())
    try:
        if deadline is None:  # no timer to arm and disarm: a fifth of a no-op call's cost
            await handler.invoke(session(), data)
        else:
            async with deadline:
                await handler.invoke(session(), data)
    except RetryLater as later:
        return retry_later(call, later)
    except asyncio.CancelledError:
        logger.warning(
            "future call %r (id %d) cancelled at shutdown",
            call.name,
            call.id,
            extra=_log_extra(call),
        )
        return unsuccessful(call, "cancelled at shutdown after the grace period", interrupted=True)
    except Exception as exc:
        ours = deadline is not None and deadline.expired()  # not a TimeoutError of invoke's
        if isinstance(exc, TimeoutError) and ours:
            error = f"timed out after {handler.timeout}"
            logger.error(
                "future call %r (id %d) %s", call.name, call.id, error, extra=_log_extra(call)
            )
            return unsuccessful(call, error)
        logger.exception(
            "future call %r (id %d) raised %s",
            call.name,
            call.id,
            type(exc).__name__,
            extra=_log_extra(call),
        )
        return unsuccessful(call, describe(exc))
    if logger.isEnabledFor(logging.DEBUG):  # spares building the extra dict per call
        logger.debug("future call %r (id %d) done", call.name, call.id, extra=_log_extra(call))
    return Outcome(call)
