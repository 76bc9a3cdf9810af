"""Settings' repr keeps the DSN's password out of logs and tracebacks."""

from __future__ import annotations

import pytest

from fastapi_futurecalls.settings import Settings


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            "postgresql://app:s3cret@db.internal:5432/orders",
            "postgresql://app:***@db.internal:5432/orders",
        ),
        (
            "postgres://app:p%40ss:w0rd@db/orders?sslmode=require",
            "postgres://app:***@db/orders?sslmode=require",
        ),
        (
            "postgresql://app:s3cret@h1:5432,h2:5433/orders?target_session_attrs=read-write",
            "postgresql://app:***@h1:5432,h2:5433/orders?target_session_attrs=read-write",
        ),
        (
            "postgresql://app@db/orders?password=s3cret&sslmode=require",
            "postgresql://app@db/orders?password=***&sslmode=require",
        ),
        ("postgresql://app@db/orders", "postgresql://app@db/orders"),
    ],
)
def test_repr_masks_the_password_and_keeps_the_rest(dsn: str, shown: str):
    settings = Settings(dsn=dsn, pool_size=3)
    for text in (repr(settings), str(settings), repr([settings])):
        assert "s3cret" not in text and "w0rd" not in text
        assert f"dsn={shown!r}" in text
    assert "pool_size=3" in repr(settings) and repr(settings).startswith("Settings(")
    assert settings.dsn == dsn  # the value itself is untouched


def test_repr_without_a_dsn_or_with_one_that_is_not_a_url():
    assert "dsn=None" in repr(Settings())
    assert "s3cret" not in repr(Settings(dsn="host=db user=app password=s3cret"))
