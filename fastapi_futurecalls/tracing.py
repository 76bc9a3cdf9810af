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
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

if TYPE_CHECKING:
    from .runner import ClaimedCall, Outcome

SYSTEM = "fastapi_futurecalls"
VERSION = version("fastapi-futurecalls")


class Tracing:
    """The spans of one FutureCalls, from ``provider`` or else the global tracer
    provider. While that is the API's own (no SDK installed or set up), no span would be
    recorded: runs then skip the span work entirely, and scheduling only stores the
    context a caller may already be in."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._provider = provider
        self._tracer = trace.get_tracer(SYSTEM, VERSION, tracer_provider=provider)

    @property
    def recording(self) -> bool:
        """Whether spans are recorded (an SDK's provider is in use)."""
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        return not isinstance(provider, _NOT_RECORDING)

    @contextmanager
    def scheduling(self, name: str, count: int = 1) -> Iterator[Scheduling]:
        """The span of storing ``count`` calls of ``name`` (a batch may mix names: then
        ``name`` is ``"batch"``)."""
        if not self.recording:
            yield Scheduling(trace.get_current_span())
            return
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

    def start_run(self, call: ClaimedCall) -> Running:
        """Start the span of one run of ``call``, current until :meth:`Running.end`, so
        the spans of what ``invoke`` does are its children. (Not a context manager: this
        runs for every call, and a generator-based one costs more than the span.) The
        span starts with the attributes a sampler may look at; the others and the link
        to the scheduling span are added only if it is sampled, which spares most of the
        cost of the runs a sampler leaves out."""
        span = self._tracer.start_span(
            f"process {call.name}",
            context=_ROOT,  # a trace of its own, linked to the one that scheduled it
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.destination.name": call.name,
            },
        )
        if span.is_recording():
            span.set_attributes(
                {
                    "messaging.operation.name": "process",
                    "messaging.message.id": str(call.id),
                    "futurecalls.attempt": call.attempts,
                }
            )
            if call.identifier is not None:
                span.set_attribute("futurecalls.identifier", call.identifier)
            linked = None if call.trace_context is None else _linked(call.trace_context)
            if linked is not None:
                span.add_link(linked)
        return Running(span, otel_context.attach(trace.set_span_in_context(span)))


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

    def stored(self, ids: list[int], *, kept: bool = False) -> None:
        """The ids stored; ``kept``: schedule-once kept the pending call, storing nothing."""
        if len(ids) == 1 and self._span.is_recording():
            self._span.set_attribute("messaging.message.id", str(ids[0]))
            if kept:
                self._span.set_attribute("futurecalls.kept_pending", True)


class Running:
    """The span of a run, current until it is told how the run ended."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span, token: object) -> None:
        self._span = span
        self._token = token

    def end(self, outcome: Outcome) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        span = self._span
        if outcome.state not in ("done", "snoozed", "released"):
            span.set_status(Status(StatusCode.ERROR, outcome.error))
            span.set_attribute("error.type", _error_type(outcome.error))
            span.set_attribute("futurecalls.next_state", outcome.state)
        span.end()


_NOT_RECORDING = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_ROOT = otel_context.Context()
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _linked(stored: str) -> SpanContext | None:
    """The span context stored with a call: its W3C traceparent, parsed here rather than
    through the propagators, at a fraction of their cost per run."""
    try:
        carrier = json.loads(stored)
        match = _TRACEPARENT.match(carrier["traceparent"])
    except (ValueError, TypeError, KeyError):
        return None
    if match is None or match[1] == "ff":
        return None
    context = SpanContext(
        trace_id=int(match[2], 16),
        span_id=int(match[3], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(match[4], 16) & 1),
    )
    return context if context.is_valid else None


def _error_type(error: str | None) -> str:
    """The exception's type name at the head of ``Type: message`` (or the whole text)."""
    if not error:
        return "_OTHER"
    head = error.partition(":")[0]
    return head if head.isidentifier() else "_OTHER"
