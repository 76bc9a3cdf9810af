"""The example's tests use fastapi-futurecalls' pytest plugin (its fixtures: futurecalls,
run_due, assert_scheduled, ...) on the project's per-test databases (tests/conftest.py)."""

import pytest

from example_app.app import futurecalls as app_futurecalls
from fastapi_futurecalls import FutureCalls
from tests.conftest import admin_dsn, db, dsn, template_db

__all__ = ["admin_dsn", "db", "dsn", "template_db"]


@pytest.fixture
def futurecalls_dsn(dsn: str) -> str:
    """The plugin's `futurecalls` starts on a migrated database of this test's own."""
    return dsn


@pytest.fixture
def futurecalls_app() -> FutureCalls:
    """The app's own FutureCalls, with its registered calls (started execution_enabled=False
    by the plugin: calls run only when a test says, with run_due)."""
    return app_futurecalls
