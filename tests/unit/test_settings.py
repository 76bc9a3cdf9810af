"""Settings: arguments over environment over defaults, and clear errors."""

from __future__ import annotations

import pytest

from fastapi_futurecalls import ConfigurationError, Settings


def test_defaults() -> None:
    settings = Settings.load(environ={})
    assert settings.dsn is None
    assert (settings.concurrency_limit, settings.execution_enabled) == (10, True)
    assert (settings.poll_interval, settings.shutdown_grace) == (10.0, 20.0)


def test_environment_then_arguments() -> None:
    env = {
        "DATABASE_URL": "postgresql://a/b",
        "FUTURECALLS_CONCURRENCY_LIMIT": "4",
        "FUTURECALLS_EXECUTION_ENABLED": "false",
        "FUTURECALLS_POLL_INTERVAL": "2.5",
        "FUTURECALLS_STATEMENT_CACHE_SIZE": "0",
    }
    settings = Settings.load({"concurrency_limit": 7, "poll_interval": None}, environ=env)
    assert settings.dsn == "postgresql://a/b"
    assert settings.concurrency_limit == 7
    assert settings.execution_enabled is False
    assert settings.poll_interval == 2.5
    assert settings.statement_cache_size == 0
    override = {"FUTURECALLS_DSN": "postgresql://c/d", "DATABASE_URL": "postgresql://a/b"}
    assert Settings.load(environ=override).dsn == "postgresql://c/d"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FUTURECALLS_CONCURRENCY_LIMIT": "many"}, "FUTURECALLS_CONCURRENCY_LIMIT='many'"),
        ({"FUTURECALLS_EXECUTION_ENABLED": "maybe"}, "FUTURECALLS_EXECUTION_ENABLED"),
        ({"FUTURECALLS_CONCURRENCY_LIMIT": "0"}, "concurrency_limit must be at least 1"),
        ({"FUTURECALLS_POLL_INTERVAL": "-1"}, "poll_interval must be positive"),
        ({"FUTURECALLS_STATEMENT_CACHE_SIZE": "-1"}, "statement_cache_size must not be neg"),
        ({"FUTURECALLS_SCHEMA": "x" * 51}, "schema must be a name of 1 to 50 bytes"),
        ({"FUTURECALLS_SCHEMA": "a\x00b"}, "without NUL characters"),
        ({"FUTURECALLS_SCHEMA": "pg_calls"}, "reserved by PostgreSQL"),
        ({"FUTURECALLS_LOCK_NAMESPACE": "-5"}, "lock_namespace must be from 0"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        Settings.load(environ=env)


def test_a_lock_namespace_can_be_given_and_is_unset_by_default() -> None:
    """Unset, the workers' lock namespace is the table's oid, read at start: unique per
    table in the database, so two schemas never share one (tests/integration/test_schema)."""
    assert Settings.load(environ={}).lock_namespace is None
    given = Settings.load(environ={"FUTURECALLS_SCHEMA": "a", "FUTURECALLS_LOCK_NAMESPACE": "0x10"})
    assert given.lock_namespace == 16
