"""The :class:`Session`: what endpoints and running calls use to schedule and cancel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from .calls import Registry, validate_name
from .errors import InvalidScheduleError
from .settings import Settings
from .store import Store


class Session:
    """Schedules and cancels future calls. Get one with ``Depends(futurecalls.session)``,
    or from ``futurecalls.session()`` inside ``async with futurecalls``; a running call
    receives one as the first argument of ``invoke``."""

    def __init__(self, store: Store, registry: Registry, settings: Settings) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings

    async def future_call_with_delay(
        self,
        name: str,
        data: BaseModel | None,
        delay: timedelta,
        identifier: str | None = None,
    ) -> int:
        """Run the call registered as ``name`` with ``data`` once ``delay`` has passed,
        measured from the database's clock. Returns the new call's id."""
        if not isinstance(delay, timedelta):
            raise InvalidScheduleError(f"delay must be a timedelta, got {type(delay).__name__}")
        if delay < timedelta(0):
            raise InvalidScheduleError(f"delay must not be negative, got {delay}")
        payload = self._prepare(name, data, identifier)
        return await self._store.schedule(name, payload, identifier, delay=delay)

    async def future_call_at_time(
        self,
        name: str,
        data: BaseModel | None,
        when: datetime,
        identifier: str | None = None,
    ) -> int:
        """Run the call registered as ``name`` with ``data`` at ``when``; a time in the
        past runs at once. A naive ``when`` is taken as UTC. Returns the new call's id."""
        if not isinstance(when, datetime):
            raise InvalidScheduleError(f"when must be a datetime, got {type(when).__name__}")
        if when.tzinfo is None or when.tzinfo.utcoffset(when) is None:
            when = when.replace(tzinfo=UTC)
        payload = self._prepare(name, data, identifier)
        return await self._store.schedule(name, payload, identifier, at=when)

    async def cancel_future_call(self, identifier: str) -> int:
        """Remove every pending call scheduled with ``identifier``; returns how many."""
        validate_name(identifier, "identifier")
        return await self._store.cancel(identifier)

    def _prepare(self, name: str, data: BaseModel | None, identifier: str | None) -> str | None:
        """Validate everything before anything is stored; returns the payload JSON."""
        validate_name(name)
        if identifier is not None:
            validate_name(identifier, "identifier")
        payload = self._registry.get(name).encode(data)
        if payload is not None and len(payload.encode()) > self._settings.max_payload_bytes:
            raise InvalidScheduleError(
                f"the payload of {name!r} is {len(payload.encode())} bytes, over the "
                f"limit of {self._settings.max_payload_bytes} (max_payload_bytes)"
            )
        return payload
