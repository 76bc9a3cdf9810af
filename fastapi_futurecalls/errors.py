"""Every error this library raises derives from :class:`FutureCallError`.

FutureCallError
├── ConfigurationError            bad settings, FutureCalls used before it started
├── RegistrationError             a name registered twice, or not valid as a name
├── NotRegisteredError            scheduling a name nobody registered   (also LookupError)
├── InvalidPayloadError           data: not the call's model, not JSON  (also TypeError)
├── InvalidScheduleError          negative delay, bad identifier, ...   (also ValueError)
├── DatabaseError                 the database refused or failed a statement
│   ├── DatabaseUnavailableError  the database cannot be reached (in time)
│   └── SchemaMissingError        the table is missing: run the migrations
└── RetryLater                    raised by invoke: run me again later, not a failure
"""

from __future__ import annotations

from datetime import timedelta

MAX_RETRY_LATER_DELAY = timedelta(days=30)


class FutureCallError(Exception):
    """Base class of every error raised by fastapi_futurecalls."""


class ConfigurationError(FutureCallError):
    """The settings are invalid, or FutureCalls is used before it was started."""


class RegistrationError(FutureCallError):
    """A future call could not be registered (duplicate or invalid name)."""


class NotRegisteredError(FutureCallError, LookupError):
    """No future call is registered under the given name."""


class InvalidPayloadError(FutureCallError, TypeError):
    """The data passed when scheduling is not an instance of the call's model, or cannot
    be serialized to JSON."""


class InvalidScheduleError(FutureCallError, ValueError):
    """A scheduling argument is out of range (negative delay, identifier too long, ...)."""


class DatabaseError(FutureCallError):
    """A database statement failed; the original asyncpg error is the ``__cause__``."""


class DatabaseUnavailableError(DatabaseError):
    """The database could not be reached, or not within the connect timeout."""


class SchemaMissingError(DatabaseError):
    """The future_calls table does not exist: run ``alembic upgrade head``."""


class RetryLater(FutureCallError):
    """Raise from ``invoke`` to be run again after ``delay`` (a timedelta, or seconds)
    without it counting as a failed attempt: the attempt budget grows by one, and the
    attempt number goes on counting runs. A call may retry later at most
    ``MAX_TIMES`` times; the next request counts as a failure. ``delay`` must be from 0 to
    30 days (a wrong one is an :class:`InvalidScheduleError`, raised from the ``raise``
    and so recorded as the run's failure)."""

    MAX_TIMES = 1000

    def __init__(self, delay: timedelta | float) -> None:
        if isinstance(delay, bool) or not isinstance(delay, (timedelta, int, float)):
            raise InvalidScheduleError(
                f"RetryLater takes a timedelta or seconds, not {type(delay).__name__}"
            )
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if not 0 <= seconds <= MAX_RETRY_LATER_DELAY.total_seconds():  # NaN too
            raise InvalidScheduleError(
                f"RetryLater delay must be from 0 to {MAX_RETRY_LATER_DELAY.days} days, "
                f"got {delay!r}"
            )
        self.delay = delay if isinstance(delay, timedelta) else timedelta(seconds=seconds)
        super().__init__(f"retry later, in {self.delay}")
