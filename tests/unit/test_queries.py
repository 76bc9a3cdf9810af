"""queries.sql rendered for a schema: every reference to the library's objects is
qualified with the quoted schema name, and notifications go to the schema's channel."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from fastapi_futurecalls.dashboard import queries as dashboard
from fastapi_futurecalls.sql import QUERIES, channel, queries_for


def test_without_a_schema_the_statements_are_as_written() -> None:
    assert queries_for(None) == QUERIES
    assert channel(None) == "future_calls"


@pytest.mark.parametrize(
    ("statements", "render"),
    [(QUERIES, queries_for), (dashboard.QUERIES, dashboard.queries_for)],
    ids=["library", "dashboard"],
)
def test_every_statement_names_the_schema_s_objects(
    statements: dict[str, str], render: Callable[[str | None], dict[str, str]]
) -> None:
    schema = 'a "b"; c'
    prefix = '"a ""b""; c".'
    rendered = render(schema)
    assert rendered.keys() == statements.keys()
    for name, sql in rendered.items():
        # Any of the library's tables and sequences (future_calls_stats too), bare or
        # in a literal, and nothing else that starts so (an index name, say) is there.
        for match in re.finditer(r"\bfuture_calls\w*", sql):
            before = sql[: match.start()]
            assert before.endswith((prefix, "pg_notify('")), (name, match[0])
        if "pg_notify(" in sql:
            assert "pg_notify('future_calls.a \"b\"; c'" in sql, name


def test_a_quote_in_the_schema_name_is_doubled_inside_literals() -> None:
    sql = queries_for("it's")["check_schema"]
    assert "to_regclass('\"it''s\".future_calls')" in sql


def test_the_claim_comes_in_two_variants_one_without_the_fleet_limits() -> None:
    plain, limited = QUERIES["claim"], QUERIES["claim_fleet_limits"]
    assert "limited_due" not in plain and "$14" not in plain and "fleet_slot = (SELECT" not in plain
    assert "limited_due" in limited and "$15" in limited and "fleet_slot = (SELECT" in limited
    assert "fleet_limits" not in plain + limited  # no marker left behind
    # Apart from the variant's lines, the two are the same statement.
    assert set(plain.splitlines()) <= set(limited.splitlines())
    assert '"s".future_calls_paused' in queries_for("s")["paused"]
