"""pytest fixtures for applications that use fastapi-futurecalls.

pytest loads this plugin by itself wherever the package is installed (entry point
``pytest11``: ``futurecalls``); a suite that requests none of its fixtures does not notice
it (loading it imports neither asyncpg nor FastAPI). ``-p no:futurecalls`` turns it off.

The fixtures, all function-scoped:

``futurecalls_dsn``
    The test database: ``FUTURECALLS_TEST_DSN``, else ``DATABASE_URL``. Override it with a
    fixture of your own (say, one that creates a database per test).
``futurecalls_app``
    The ``FutureCalls`` to start: the object named by the ``futurecalls_app`` ini option
    (``module:attribute``), else a fresh ``FutureCalls()``. Override it to return your
    app's instance.
``futurecalls_settings``
    Settings given to ``configure()`` before start: ``{"execution_enabled": False}``, so
    that calls run only when the test asks (``run_due``). Override to change.
``futurecalls``
    ``futurecalls_app``, configured with ``futurecalls_dsn`` and ``futurecalls_settings``
    and started for the test; stopped and given back its own settings afterwards.
``futurecalls_session``
    Its ``Session``.
``run_due``
    ``await run_due(within=timedelta(days=1))``: time travel
    (:func:`fastapi_futurecalls.testing.run_due` bound to ``futurecalls``).
``assert_scheduled`` / ``refute_scheduled`` / ``all_scheduled``
    The helpers of :mod:`fastapi_futurecalls.testing`, bound to ``futurecalls``:
    ``await assert_scheduled("sendMail", identifier="user-1", payload={"template": "welcome"})``.

The async fixtures need pytest-asyncio, and run on the test's event loop: use
``asyncio_mode = auto`` (or mark tests ``@pytest.mark.asyncio`` in strict mode), with the
default function-scoped loops.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .futurecalls import DueRun, FutureCalls
    from .records import FutureCallRecord
    from .session import Session

F = TypeVar("F", bound=Callable[..., Any])

INI_APP = "futurecalls_app"
DSN_VARIABLES = ("FUTURECALLS_TEST_DSN", "DATABASE_URL")


def async_fixture(function: F) -> F:
    """pytest-asyncio's fixture decorator (so the fixtures also work in strict mode), or
    pytest's without pytest-asyncio, which then says that async fixtures need a plugin."""
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - pytest-asyncio is in the dev extra
        return cast(F, pytest.fixture(function))
    return cast(F, pytest_asyncio.fixture(function))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        INI_APP,
        "module:attribute of the FutureCalls that the futurecalls fixture starts",
        default="",
    )


def load_futurecalls(target: str) -> FutureCalls:
    """Import ``module:attribute`` (from the current directory too) and check that it is a
    ``FutureCalls``."""
    from .futurecalls import FutureCalls

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise pytest.UsageError(f"{INI_APP} = {target!r} is not module:attribute")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise pytest.UsageError(f"{INI_APP}: cannot load {target!r}: {exc}") from exc
    if not isinstance(found, FutureCalls):
        raise pytest.UsageError(
            f"{INI_APP}: {target!r} is a {type(found).__name__}, not FutureCalls"
        )
    return found


@pytest.fixture
def futurecalls_dsn() -> str:
    """The test database's DSN: ``FUTURECALLS_TEST_DSN``, else ``DATABASE_URL``."""
    for variable in DSN_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    pytest.fail(
        "no test database for the futurecalls fixture: set FUTURECALLS_TEST_DSN (or "
        "DATABASE_URL) to a migrated database, or override the futurecalls_dsn fixture",
        pytrace=False,
    )


@pytest.fixture
def futurecalls_app(request: pytest.FixtureRequest) -> FutureCalls:
    """Your app's ``FutureCalls``: the ``futurecalls_app`` ini option, else a fresh one."""
    target = str(request.config.getini(INI_APP) or "").strip()
    if target:
        return load_futurecalls(target)
    from .futurecalls import FutureCalls

    return FutureCalls()


@pytest.fixture
def futurecalls_settings() -> dict[str, Any]:
    """What ``futurecalls`` gives ``configure()``: calls run only when the test asks."""
    return {"execution_enabled": False}


@async_fixture
async def futurecalls(
    futurecalls_app: FutureCalls, futurecalls_dsn: str, futurecalls_settings: dict[str, Any]
) -> AsyncIterator[FutureCalls]:
    """``futurecalls_app`` started on ``futurecalls_dsn`` for this test."""
    saved = futurecalls_app.settings
    futurecalls_app.configure(**{"dsn": futurecalls_dsn, **futurecalls_settings})
    try:
        async with futurecalls_app:
            yield futurecalls_app
    finally:
        futurecalls_app.settings = saved


@pytest.fixture
def futurecalls_session(futurecalls: FutureCalls) -> Session:
    """The started ``futurecalls``' Session."""
    return futurecalls.session()


@pytest.fixture
def run_due(futurecalls: FutureCalls) -> Callable[..., Awaitable[DueRun]]:
    """``await run_due(within=timedelta(...), concurrency=1)`` on ``futurecalls``."""
    from . import testing

    async def run(within: timedelta = timedelta(0), *, concurrency: int = 1) -> DueRun:
        return await testing.run_due(futurecalls, within, concurrency=concurrency)

    return run


@pytest.fixture
def assert_scheduled(futurecalls: FutureCalls) -> Callable[..., Awaitable[FutureCallRecord]]:
    """``await assert_scheduled(name, identifier=..., payload=..., due_within=...)``."""
    from . import testing

    async def check(
        name: str,
        *,
        identifier: str | None = None,
        payload: BaseModel | Mapping[str, Any] | None = None,
        due_within: timedelta | None = None,
    ) -> FutureCallRecord:
        __tracebackhide__ = True
        return await testing.assert_scheduled(
            futurecalls, name, identifier=identifier, payload=payload, due_within=due_within
        )

    return check


@pytest.fixture
def refute_scheduled(futurecalls: FutureCalls) -> Callable[..., Awaitable[None]]:
    """``await refute_scheduled(name, identifier=..., payload=..., due_within=...)``."""
    from . import testing

    async def check(
        name: str,
        *,
        identifier: str | None = None,
        payload: BaseModel | Mapping[str, Any] | None = None,
        due_within: timedelta | None = None,
    ) -> None:
        __tracebackhide__ = True
        await testing.refute_scheduled(
            futurecalls, name, identifier=identifier, payload=payload, due_within=due_within
        )

    return check


@pytest.fixture
def all_scheduled(futurecalls: FutureCalls) -> Callable[..., Awaitable[list[FutureCallRecord]]]:
    """``await all_scheduled(name=None, identifier=None)``: the pending calls, by due time."""
    from . import testing

    async def scheduled(
        name: str | None = None, *, identifier: str | None = None
    ) -> list[FutureCallRecord]:
        return await testing.all_scheduled(futurecalls, name, identifier=identifier)

    return scheduled
