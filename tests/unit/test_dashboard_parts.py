"""The dashboard's pure parts: figures, filters, cursors, and its SQL per schema."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from fastapi_futurecalls.dashboard.figures import Count, approximately, percentile
from fastapi_futurecalls.dashboard.queries import BadInput, Cursor, Filters, queries_for
from fastapi_futurecalls.stats import LATENESS_BUCKETS


def test_counts_say_whether_they_are_exact():
    assert str(Count(1234)) == "1,234"
    assert str(Count(10_000, "at_least")) == "10,000+"
    assert str(Count(1_234_567, "estimate")) == "≈ 1.2M"
    assert approximately(905_000) == "905k" and approximately(42) == "42"


def test_percentiles_are_the_bounds_of_their_buckets():
    buckets = [0] * len(LATENESS_BUCKETS)
    assert percentile(buckets, 0.5) is None
    buckets[3], buckets[-1] = 98, 2  # 98 runs within 50 ms, 2 later than the last bound
    assert percentile(buckets, 0.5) == "≤ 50 ms"
    assert percentile(buckets, 0.99) == "> 5 min"


def test_filters_name_what_is_wrong():
    assert Filters.parse("", " ", None) == Filters()
    assert Filters.parse("failed", "sendMail", "user-1").source == "identifier"
    assert Filters.parse("interrupted", None, None).source == "parked"
    with pytest.raises(BadInput, match="state must be one of failed, interrupted, running"):
        Filters.parse("done", None, None)
    with pytest.raises(BadInput, match="name must be 1 to 200"):
        Filters.parse(None, "x" * 201, None)


def test_cursors_round_trip_exactly():
    at = datetime(2026, 12, 1, 11, 30, 5, 123456, tzinfo=UTC)
    text = Cursor(at, 42).text()
    assert Cursor.parse(text, timed=True) == Cursor(at, 42)
    assert Cursor.parse("42", timed=False) == Cursor(None, 42)
    assert Cursor.parse(None, timed=True) == Cursor(None, None)
    for bad, timed in (("x", True), ("1_x", True), ("-1", False), ("9" * 30 + "_1", True)):
        with pytest.raises(BadInput, match="after must be a cursor"):
            Cursor.parse(bad, timed=timed)


def test_every_table_is_named_in_the_schema():
    for name, sql in queries_for("tenant a").items():
        bare = re.findall(r'(?<!"tenant a"\.)\bfuture_calls\w*', sql)
        assert not bare, (name, bare)
