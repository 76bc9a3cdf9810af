"""Durable future calls for FastAPI: scheduled in PostgreSQL, run once across workers."""

from .calls import FutureCall
from .context import CallContext, current_call
from .errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    FutureCallError,
    InvalidPayloadError,
    InvalidScheduleError,
    NotRegisteredError,
    RegistrationError,
    RetryLater,
    SchemaMissingError,
)
from .futurecalls import DueRun, FutureCalls
from .records import CallState, FutureCallRecord
from .session import IfExists, PlannedCall, Session
from .settings import Settings

__all__ = [
    "CallContext",
    "CallState",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DueRun",
    "FutureCall",
    "FutureCallError",
    "FutureCallRecord",
    "FutureCalls",
    "IfExists",
    "InvalidPayloadError",
    "InvalidScheduleError",
    "NotRegisteredError",
    "PlannedCall",
    "RegistrationError",
    "RetryLater",
    "SchemaMissingError",
    "Session",
    "Settings",
    "current_call",
]
