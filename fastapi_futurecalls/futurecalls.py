"""The :class:`FutureCalls` plugin: registry, settings, start and stop, FastAPI glue."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .calls import FutureCall, Registry
from .dispatcher import Dispatcher
from .errors import ConfigurationError, DatabaseUnavailableError
from .session import Session, awaitable
from .settings import Settings
from .store import Store
from .telemetry import Telemetry

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI
    from fastapi.params import Depends

    from .tracing import Tracing

logger = logging.getLogger("fastapi_futurecalls")
# Pauses between attempts to start against a database that refuses connections; the last
# one repeats until connect_timeout has passed.
START_RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.0)


@dataclass(frozen=True, slots=True)
class DueRun:
    """What :meth:`FutureCalls.run_due` ran: ``ids`` in the order they finished;
    ``failed`` counts every run that did not complete (parked or to be retried)."""

    completed: int
    failed: int
    ids: list[int]

    @property
    def ok(self) -> bool:
        """Whether every run completed (``failed == 0``)."""
        return self.failed == 0


class FutureCalls:
    """Future calls for one application.

    Arguments left as ``None`` come from the environment (``FUTURECALLS_*``, the DSN also
    from ``DATABASE_URL``), then from the defaults: see docs/reference/configuration.md,
    and :class:`Settings` for the fields.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        concurrency_limit: int | None = None,
        execution_enabled: bool | None = None,
        poll_interval: float | None = None,
        shutdown_grace: float | None = None,
        liveness_grace: float | None = None,
        unknown_name_grace: float | None = None,
        retention: float | None = None,
        statement_timeout: float | None = None,
        connect_timeout: float | None = None,
        pool_size: int | None = None,
        statement_cache_size: int | None = None,
        max_payload_bytes: int | None = None,
        schema: str | None = None,
        tracing: bool | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self.settings = Settings.load(
            {
                "dsn": dsn,
                "concurrency_limit": concurrency_limit,
                "execution_enabled": execution_enabled,
                "poll_interval": poll_interval,
                "shutdown_grace": shutdown_grace,
                "liveness_grace": liveness_grace,
                "unknown_name_grace": unknown_name_grace,
                "retention": retention,
                "statement_timeout": statement_timeout,
                "connect_timeout": connect_timeout,
                "pool_size": pool_size,
                "statement_cache_size": statement_cache_size,
                "max_payload_bytes": max_payload_bytes,
                "schema": schema,
                "tracing": tracing,
            }
        )
        self._registry = Registry()
        self._store: Store | None = None
        self._session: Session | None = None  # stateless: one serves every endpoint and call
        self._dispatcher: Dispatcher | None = None
        self._telemetry = Telemetry()
        self._tracer_provider = tracer_provider  # None: OpenTelemetry's global one

    def configure(self, **overrides: Any) -> None:
        """Change settings before start, e.g. ``configure(dsn=test_dsn)`` in a test suite
        that imports the app's FutureCalls. Takes the settings (the constructor's keyword
        arguments but ``tracer_provider``)."""
        if self._store is not None:
            raise ConfigurationError("configure() must be called before FutureCalls starts")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(Settings)}
        if unknown:
            raise ConfigurationError(f"unknown settings: {', '.join(sorted(unknown))}")
        self.settings = dataclasses.replace(self.settings, **overrides)

    def register_future_call(self, call: FutureCall[Any], name: str) -> None:
        """Make ``call`` schedulable and runnable under ``name`` (unique per app)."""
        self._registry.register(call, name)

    @property
    def started(self) -> bool:
        """Whether it is connected (between :meth:`start` and :meth:`stop`)."""
        return self._store is not None

    @property
    def worker_id(self) -> int | None:
        """This process's worker number while it dispatches (see docs/design.md)."""
        return self._dispatcher.worker_id if self._dispatcher else None

    @awaitable
    def session(self) -> Session:
        """A :class:`Session`; use as ``Depends(futurecalls.session)``, which FastAPI
        resolves on the event loop, with no threadpool hop (``session`` is marked as a
        coroutine function, and a Session awaits to itself)."""
        if self._session is None:
            raise ConfigurationError(
                "FutureCalls is not started: use FastAPI(lifespan=futurecalls.lifespan), "
                "futurecalls.include(app), or `async with futurecalls:`"
            )
        return self._session

    def metrics_router(
        self, *, dependencies: Sequence[Depends] | None = None, path: str = "/metrics"
    ) -> APIRouter:
        """A router serving Prometheus metrics at ``path`` (``app.include_router(...)``);
        building it turns the counters and histograms on. Needs prometheus-client
        (``pip install fastapi-futurecalls[metrics]``); see docs/how-to/metrics-traces.md
        for ``uvicorn --workers N``."""
        try:
            from . import metrics
        except ImportError as exc:
            raise ConfigurationError(
                "metrics need prometheus-client: pip install 'fastapi-futurecalls[metrics]'"
            ) from exc
        if self._telemetry.metrics is None:
            self._telemetry.metrics = metrics.Metrics()

        async def read_gauges() -> dict[str, float | None]:
            if self._store is None:
                raise ConfigurationError("FutureCalls is not started")
            return await self._store.gauges()

        return metrics.router(
            self._telemetry.metrics, read_gauges, dependencies=dependencies, path=path
        )

    async def start(self) -> None:
        """Connect, check the schema and, if execution is enabled, start dispatching. A
        database that refuses connections (restarting, failing over) is retried until
        ``connect_timeout`` has passed; then :class:`DatabaseUnavailableError`."""
        if self._store is not None:
            raise ConfigurationError("FutureCalls is already started")
        if not self.settings.dsn:
            raise ConfigurationError("no database: pass FutureCalls(dsn=...) or set DATABASE_URL")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.connect_timeout
        for delay in itertools.chain(START_RETRY_DELAYS, itertools.repeat(START_RETRY_DELAYS[-1])):
            try:
                await self._start_once()
                return
            except DatabaseUnavailableError:
                if loop.time() + delay >= deadline:
                    raise
                logger.warning("database unavailable at start; retrying in %.2fs", delay)
                await asyncio.sleep(delay)

    async def _start_once(self) -> None:
        self._store = await Store.open(self.settings)
        self._telemetry.tracing = _tracing(self._tracer_provider) if self.settings.tracing else None
        self._session = Session(self._store, self._registry, self.settings, self._telemetry)
        if self.settings.execution_enabled:
            dispatcher = Dispatcher(
                self.settings, self._registry, self.session, self._store, self._telemetry
            )
            try:
                await dispatcher.start()
            except BaseException:
                await self._close_store()
                raise
            self._dispatcher = dispatcher

    async def stop(self) -> None:
        """Stop claiming, wait up to ``shutdown_grace`` for running calls (recording each as
        it ends), disconnect: within ``shutdown_grace`` and two seconds, whatever the
        database does."""
        dispatcher, self._dispatcher = self._dispatcher, None
        try:
            if dispatcher is not None:
                await dispatcher.stop()
        finally:
            await self._close_store()

    async def run_due(
        self, within: timedelta = timedelta(0), *, concurrency: int | None = None
    ) -> DueRun:
        """Run every call due now (or within ``within``) once, wait for them all, and say
        how they ended: for serverless deployments (``fastapi-futurecalls run-due``) and
        tests (``fastapi_futurecalls.testing``). Needs a started FutureCalls."""
        self.session()  # raises if not started
        assert self._store is not None
        settings = self.settings
        if concurrency is not None:
            settings = dataclasses.replace(settings, concurrency_limit=concurrency)
        dispatcher = Dispatcher(
            settings, self._registry, self.session, self._store, self._telemetry
        )
        outcomes = await dispatcher.run_due(within)
        return DueRun(
            completed=sum(o.state == "done" for o in outcomes),
            failed=sum(o.state != "done" for o in outcomes),
            ids=[o.call.id for o in outcomes],
        )

    async def _close_store(self) -> None:
        store, self._store = self._store, None
        self._session = None
        if store is not None:
            await store.close()

    async def __aenter__(self) -> FutureCalls:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """Use as ``FastAPI(lifespan=futurecalls.lifespan)``."""
        async with self:
            yield

    def include(self, app: FastAPI) -> None:
        """Start and stop with ``app``, around the lifespan it already has: future calls
        are ready during the app's own startup and still there during its shutdown."""
        inner = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            async with self:
                context: AbstractAsyncContextManager[Any] = inner(app)
                async with context as state:
                    yield state

        app.router.lifespan_context = lifespan

    def dashboard(
        self, dependencies: Sequence[Depends] | None = None, *, allow_anonymous: bool = False
    ) -> APIRouter:
        """The operator dashboard, an APIRouter to mount with
        ``app.include_router(router, prefix="/futurecalls")``. Every route carries
        ``dependencies`` (say, ``[Depends(require_admin)]``); without any it refuses to be
        built (:class:`ConfigurationError`) unless ``allow_anonymous=True``."""
        from .dashboard import build_router  # Jinja2 and the templates load only when used

        return build_router(
            self, self._started_store, dependencies, allow_anonymous=allow_anonymous
        )

    def _started_store(self) -> Store:
        self.session()  # raises ConfigurationError before start
        assert self._store is not None
        return self._store


def _tracing(provider: Any) -> Tracing | None:
    """OpenTelemetry spans when opentelemetry-api is installed; else none."""
    try:
        from .tracing import Tracing
    except ImportError:
        return None
    return Tracing(provider)
