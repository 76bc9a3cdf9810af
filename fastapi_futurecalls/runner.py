"""Runs one claimed call: decode its payload, invoke it, and say how it ended."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from .calls import DECODE_ERRORS, Registry
from .session import Session

logger = logging.getLogger("fastapi_futurecalls")

Parked = Literal["failed", "interrupted"]


@dataclass(frozen=True, slots=True)
class ClaimedCall:
    """A row this process owns: ``owner`` is the worker number that claimed it."""

    id: int
    name: str
    payload: str | None
    identifier: str | None
    due_at: datetime
    attempts: int
    owner: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended: ``parked`` is None when it completed (its row is deleted)."""

    call: ClaimedCall
    parked: Parked | None = None
    error: str | None = None


def _log_extra(call: ClaimedCall) -> dict[str, object]:
    return {"future_call_name": call.name, "future_call_id": call.id}


async def run_call(
    call: ClaimedCall, registry: Registry, session: Callable[[], Session]
) -> Outcome:
    """Never raises for the call's own errors: they become a parked outcome and a log record."""
    handler = registry.find(call.name)
    if handler is None:
        error = f"no future call is registered as {call.name!r} in this process"
        logger.error(
            "future call %r (id %d) not run: %s", call.name, call.id, error, extra=_log_extra(call)
        )
        return Outcome(call, "failed", error)
    try:
        data = handler.decode(call.payload)
    except DECODE_ERRORS as exc:
        error = f"payload does not fit {type(handler).__name__}'s model: {exc}"
        logger.error(
            "future call %r (id %d) not run: %s", call.name, call.id, error, extra=_log_extra(call)
        )
        return Outcome(call, "failed", error)
    try:
        await handler.invoke(session(), data)
    except asyncio.CancelledError:
        logger.warning(
            "future call %r (id %d) cancelled at shutdown, parked as interrupted",
            call.name,
            call.id,
            extra=_log_extra(call),
        )
        return Outcome(call, "interrupted", "cancelled at shutdown after the grace period")
    except Exception as exc:
        logger.exception(
            "future call %r (id %d) raised %s",
            call.name,
            call.id,
            type(exc).__name__,
            extra=_log_extra(call),
        )
        return Outcome(call, "failed", f"{type(exc).__name__}: {exc}")
    logger.debug("future call %r (id %d) done", call.name, call.id, extra=_log_extra(call))
    return Outcome(call)
