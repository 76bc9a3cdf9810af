"""OpenTelemetry spans (needs ``opentelemetry-api``: ``pip install fastapi-futurecalls[otel]``).

A span per scheduling call (kind PRODUCER, ``send <name>``) and per run (kind CONSUMER,
``process <name>``), attributed after OpenTelemetry's messaging semantic conventions.
The producer span's context is stored with the call (the ``trace_context`` column), so
the run, however much later, carries a link back to the request that asked for it.
The run starts a trace of its own: a call that runs a week later is not part of the
request's trace, only linked to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from .runner import ClaimedCall, Outcome

SYSTEM = "fastapi_futurecalls"


class Tracing:
    """The spans of one FutureCalls, from the tracer provider set globally (none: the
    API's no-op spans, which cost next to nothing)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(
            SYSTEM, version("fastapi-futurecalls"), tracer_provider=provider
        )

    @contextmanager
    def scheduling(self, name: str, count: int = 1) -> Iterator[Scheduling]:
        """The span of storing ``count`` calls of ``name`` (a batch may mix names: then
        ``name`` is ``"batch"``)."""
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": name,
        }
        if count != 1:
            attributes["messaging.batch.message_count"] = count
        with self._tracer.start_as_current_span(
            f"send {name}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            yield Scheduling(span)

    @contextmanager
    def running(self, call: ClaimedCall) -> Iterator[Running]:
        """The span of one run of ``call``: current while ``invoke`` runs, so the spans of
        what it does are its children."""
        links = []
        stored = None if call.trace_context is None else _extract(call.trace_context)
        if stored is not None:
            linked = trace.get_current_span(stored).get_span_context()
            if linked.is_valid:
                links.append(Link(linked))
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": call.name,
            "messaging.message.id": str(call.id),
            "futurecalls.attempt": call.attempts,
        }
        if call.identifier is not None:
            attributes["futurecalls.identifier"] = call.identifier
        with self._tracer.start_as_current_span(
            f"process {call.name}",
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # a trace of its own
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,  # run_call turns the call's errors into an outcome
            set_status_on_exception=False,
        ) as span:
            yield Running(span)


class Scheduling:
    """The span of a scheduling call, while it stores its rows."""

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def context(self) -> str | None:
        """The trace context to store with the calls (JSON), or None when not tracing."""
        if not self._span.get_span_context().is_valid:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return json.dumps(carrier) if carrier else None

    def stored(self, ids: list[int]) -> None:
        if len(ids) == 1 and self._span.is_recording():
            self._span.set_attribute("messaging.message.id", str(ids[0]))


class Running:
    """The span of a run, told how it ended."""

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def ended(self, outcome: Outcome) -> None:
        if outcome.state in ("done", "snoozed", "released"):
            return
        self._span.set_status(Status(StatusCode.ERROR, outcome.error))
        if self._span.is_recording():
            self._span.set_attribute("error.type", _error_type(outcome.error))
            self._span.set_attribute("futurecalls.next_state", outcome.state)


def _extract(stored: str) -> Any:
    try:
        carrier = json.loads(stored)
    except ValueError:
        return None
    return propagate.extract(carrier) if isinstance(carrier, dict) else None


def _error_type(error: str | None) -> str:
    """The exception's type name at the head of ``Type: message`` (or the whole text)."""
    if not error:
        return "_OTHER"
    head = error.partition(":")[0]
    return head if head.isidentifier() else "_OTHER"
