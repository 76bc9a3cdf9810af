"""When a recurring call runs next: a cron expression (via cronsim) or a fixed interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import InvalidScheduleError


@dataclass(frozen=True, slots=True)
class Recurrence:
    """Exactly one of ``cron`` (5 fields, evaluated in ``timezone``) and ``every``."""

    cron: str | None = None
    every: timedelta | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise InvalidScheduleError("give exactly one of cron and every")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise InvalidScheduleError(f"unknown timezone {self.timezone!r}") from None
        if self.cron is not None:
            if not isinstance(self.cron, str) or len(self.cron.split()) != 5:
                raise InvalidScheduleError(
                    f"cron expression {self.cron!r} must have 5 fields: "
                    "minute hour day-of-month month day-of-week"
                )
            try:
                CronSim(self.cron, datetime.now(zone))
            except CronSimError as exc:
                raise InvalidScheduleError(f"bad cron expression {self.cron!r}: {exc}") from None
        elif not isinstance(self.every, timedelta) or self.every <= timedelta(0):
            raise InvalidScheduleError(f"every must be a positive timedelta, got {self.every!r}")

    def first(self, start: datetime | None, now: datetime) -> datetime:
        """The first occurrence: ``start`` itself for an interval (default: one interval
        from now), the first cron match at or after ``start`` (default: now)."""
        if self.every is not None:
            return start if start is not None else now + self.every
        return self._cron_after((start or now) - timedelta(microseconds=1))

    def next(self, due: datetime, now: datetime) -> datetime:
        """The occurrence after the one due at ``due``, and after ``now``: slots missed
        while nothing ran are skipped, so a late chain runs once, then keeps its rhythm."""
        if self.every is not None:
            steps = max(1, math.floor((now - due) / self.every) + 1)
            return due + steps * self.every
        return self._cron_after(max(due, now))

    def _cron_after(self, moment: datetime) -> datetime:
        assert self.cron is not None
        local = moment.astimezone(ZoneInfo(self.timezone))
        return next(CronSim(self.cron, local)).astimezone(UTC)
