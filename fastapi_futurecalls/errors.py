"""Every error this library raises derives from :class:`FutureCallError`.

FutureCallError
├── ConfigurationError            bad settings, FutureCalls used before it started
├── RegistrationError             a name registered twice, or not valid as a name
├── NotRegisteredError            scheduling a name nobody registered   (also LookupError)
├── InvalidPayloadError           data: not the call's model, not JSON  (also TypeError)
├── InvalidScheduleError          negative delay, bad identifier, ...   (also ValueError)
└── DatabaseError                 the database refused or failed a statement
    ├── DatabaseUnavailableError  the database cannot be reached (in time)
    └── SchemaMissingError        the table is missing: run the migrations
"""

from __future__ import annotations


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
