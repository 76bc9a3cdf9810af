"""The record that Session hands to Store: typed, frozen, and in the statements' order."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

import pytest

from fastapi_futurecalls.sql import QUERIES
from fastapi_futurecalls.store import CallRow


def parameters(statement: str) -> set[int]:
    return {int(n) for n in re.findall(r"\$(\d+)", statement)}


def test_arguments_follow_the_fields_and_fill_the_schedule_statements():
    row = CallRow("n", '{"a":1}', "i", None, timedelta(seconds=5), 3, timedelta(seconds=1))
    fields = [f.name for f in dataclasses.fields(CallRow)]
    assert row.arguments() == tuple(getattr(row, name) for name in fields)
    assert fields == [
        "name",
        "payload",
        "identifier",
        "at",
        "delay",
        "max_attempts",
        "retry_backoff",
        "priority",
        "limited",
    ]
    # The row's fields, then what the store adds: the notification window, the trace context.
    assert parameters(QUERIES["schedule"]) == set(range(1, len(fields) + 3))
    assert parameters(QUERIES["schedule_many"]) == set(range(1, len(fields) + 3))


def test_a_row_is_frozen():
    row = CallRow("n", None, None, None, timedelta(0), 1, timedelta(seconds=1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.name = "other"  # type: ignore[misc]
