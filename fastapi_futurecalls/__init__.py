"""Durable future calls for FastAPI: scheduled in PostgreSQL, run once across workers.

The public names load on first use (PEP 562), so that importing a submodule, such as the
pytest plugin that pytest loads in every suite of an environment with this package, does
not import asyncpg, FastAPI and the rest.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Each public name, and the submodule that defines it.
_WHERE = {
    "FutureCall": "calls",
    "CallContext": "context",
    "current_call": "context",
    **dict.fromkeys(
        [
            "ConfigurationError",
            "DatabaseError",
            "DatabaseUnavailableError",
            "FutureCallError",
            "InvalidPayloadError",
            "InvalidScheduleError",
            "NotRegisteredError",
            "RegistrationError",
            "RetryLater",
            "SchemaMissingError",
        ],
        "errors",
    ),
    "DueRun": "futurecalls",
    "FutureCalls": "futurecalls",
    "CallState": "records",
    "FutureCallRecord": "records",
    "IfExists": "session",
    "PlannedCall": "session",
    "Session": "session",
    "Settings": "settings",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    """The public names, the submodules loaded so far, and the module's own dunders."""
    loaded = [name for name, value in globals().items() if isinstance(value, ModuleType)]
    dunders = [name for name in globals() if name.startswith("__")]
    return sorted({*__all__, *loaded, *dunders})
