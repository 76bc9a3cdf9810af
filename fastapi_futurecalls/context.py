"""What a running call knows about itself: :class:`CallContext`, read through
``session.call`` or :func:`current_call` inside ``invoke``."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from .errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class CallContext:
    """The run of a future call that is executing now.

    ``attempt`` counts this call's runs, this one included (1 on the first run); it is
    ``max_attempts`` on the last run its delivery policy allows (each RetryLater adds one
    to both). ``id`` names the call across its runs; ``key`` (``"id:attempt"``) names
    this run: an idempotency key for what one run sends elsewhere.
    """

    id: int
    name: str
    identifier: str | None
    attempt: int
    max_attempts: int
    due_at: datetime
    started_at: datetime
    priority: int = 0

    @property
    def key(self) -> str:
        """``"id:attempt"``: the same for one run, different for each retry."""
        return f"{self.id}:{self.attempt}"


class _Run(Protocol):
    def context(self) -> CallContext: ...


# The run executing in this task. Its CallContext is built when asked for: most calls
# never ask, and building one for each run is a measurable share of a short call's cost.
running: ContextVar[_Run | None] = ContextVar("fastapi_futurecalls.call", default=None)


def current_call() -> CallContext:
    """The call whose ``invoke`` is running in this task (or in code it awaits); raises
    :class:`ConfigurationError` outside of one."""
    run = running.get()
    if run is None:
        raise ConfigurationError("current_call() is only known inside a future call's invoke")
    return run.context()
