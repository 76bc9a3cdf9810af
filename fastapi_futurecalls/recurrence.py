"""When a recurring call runs next: a cron expression (via cronsim) or a fixed interval."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim

from .errors import InvalidScheduleError

# Due times must read back as Python datetimes, in UTC, from anywhere in the world.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
# Each slot of a chain becomes a call of its own: a shorter interval would flood the
# table and keep the dispatcher materialising.
MIN_EVERY = timedelta(milliseconds=100)


@dataclass(frozen=True, slots=True)
class Recurrence:
    """Exactly one of ``cron`` (5 fields, evaluated in ``timezone``) and ``every`` (at
    least :data:`MIN_EVERY`).

    The constructor, :meth:`first` and :meth:`next` raise :class:`InvalidScheduleError`
    and nothing else, whatever they are given (a row edited by hand, a timezone this
    image lacks, a slot past :data:`LATEST`): one ``except`` parks a bad chain.
    """

    cron: str | None = None
    every: timedelta | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise InvalidScheduleError("give exactly one of cron and every")
        self._zone()
        if self.cron is not None:
            if not isinstance(self.cron, str) or len(self.cron.split()) != 5:
                raise InvalidScheduleError(
                    f"cron expression {self.cron!r} must have 5 fields: "
                    "minute hour day-of-month month day-of-week"
                )
            try:
                CronSim(self.cron, datetime.now(UTC))
            except Exception as exc:  # CronSimError, and whatever else cronsim raises
                raise InvalidScheduleError(f"bad cron expression {self.cron!r}: {exc}") from None
        elif not isinstance(self.every, timedelta) or self.every < MIN_EVERY:
            raise InvalidScheduleError(
                f"every must be a timedelta of at least {MIN_EVERY.total_seconds()} s, "
                f"got {self.every!r}"
            )

    def first(self, start: datetime | None, now: datetime) -> datetime:
        """The first occurrence: ``start`` itself for an interval (default: one interval
        from now), the first cron match at or after ``start`` (default: now). The
        occurrence after it must be computable too, or the chain is refused now rather
        than parked later."""
        if self.every is not None:
            every = self.every
            first = self._guard(lambda: start if start is not None else now + every)
        else:
            first = self._cron_after((start or now) - timedelta(microseconds=1))
        self.next(first, max(first, now))
        return first

    def next(self, due: datetime, now: datetime) -> datetime:
        """The occurrence after the one due at ``due``, and after ``now``: slots missed
        while nothing ran are skipped, so a late chain runs once, then keeps its rhythm.
        Raises only :class:`InvalidScheduleError`, e.g. when that occurrence would fall
        after :data:`LATEST`."""
        if self.every is not None:
            every = self.every
            return self._guard(lambda: due + max(1, (now - due) // every + 1) * every)
        return self._cron_after(max(due, now))

    def _cron_after(self, moment: datetime) -> datetime:
        cron, zone = str(self.cron), self._zone()
        return self._guard(lambda: next(CronSim(cron, moment.astimezone(zone))).astimezone(UTC))

    def _zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.timezone)
        except Exception:  # ZoneInfoNotFoundError, ValueError, TypeError, OSError, ...
            raise InvalidScheduleError(f"unknown timezone {self.timezone!r}") from None

    def _guard(self, compute: Callable[[], datetime]) -> datetime:
        """``compute()``, a slot no later than LATEST, or InvalidScheduleError naming the
        schedule; cronsim and datetime arithmetic raise many kinds of errors."""
        what = (
            f"cron expression {self.cron!r}" if self.cron is not None else f"every={self.every!r}"
        )
        try:
            slot = compute()
            late = slot > LATEST
        except Exception as exc:
            raise InvalidScheduleError(f"{what}: no next occurrence ({exc})") from None
        if late:
            raise InvalidScheduleError(f"{what}: the next occurrence falls after {LATEST:%Y-%m-%d}")
        return slot
