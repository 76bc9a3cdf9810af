"""The named SQL statements of queries.sql, loaded once and rendered per schema."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_BLOCK = re.compile(r"^-- name: (\w+)\n(.*?)(?=^-- name: |\Z)", re.MULTILINE | re.DOTALL)
TABLE = "future_calls"
# Every object the migrations create in the library's schema: its tables and sequence.
OBJECTS = (
    TABLE,
    "future_calls_worker_seq",
    "future_calls_workers",
    "future_calls_paused",
    "future_calls_stats",
)
# How the statements name them, bare or in a string literal, and the NOTIFY channel.
_OBJECT = "|".join(sorted(OBJECTS, key=len, reverse=True))
_NAMES = re.compile(
    rf"(?P<channel>pg_notify\('{TABLE}')|'(?P<literal>{_OBJECT})'|\b(?:{_OBJECT})\b"
)


# A block may hold two statements: the lines between "-- [variant" and "-- variant]"
# belong only to the statement named "<name>_<variant>".
_VARIANT = re.compile(r"^\s*-- \[(\w+)\n(.*?)^\s*-- \1\]\n", re.MULTILINE | re.DOTALL)


def _statement(body: str) -> str:
    lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def _keep(variant: str, body: str) -> str:
    """``body`` with the lines of ``variant`` kept and those of any other dropped."""

    def choose(match: re.Match[str]) -> str:
        return match[2] if match[1] == variant else ""

    return _VARIANT.sub(choose, body)


def load(package: str) -> dict[str, str]:
    """The named statements of ``package``'s queries.sql."""
    text = files(package).joinpath("queries.sql").read_text(encoding="utf-8")
    queries = {}
    for name, body in _BLOCK.findall(text):
        queries[name] = _statement(_VARIANT.sub("", body))
        for variant in {found for found, _ in _VARIANT.findall(body)}:
            queries[f"{name}_{variant}"] = _statement(_keep(variant, body))
    return queries


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier, whatever characters it holds."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as an SQL string literal (standard_conforming_strings, PostgreSQL's default)."""
    return "'" + text.replace("'", "''") + "'"


def channel(schema: str | None) -> str:
    """The NOTIFY channel of the calls in ``schema``: dispatchers hear only their own."""
    return TABLE if schema is None else f"{TABLE}.{schema}"


def qualified(name: str, schema: str | None) -> str:
    return name if schema is None else f"{quote_ident(schema)}.{name}"


def in_schema(queries: dict[str, str], schema: str | None) -> dict[str, str]:
    """``queries`` naming the library's objects in ``schema`` (quoted; None: found through
    the connection's search_path, unqualified) and notifying its channel."""

    def render(match: re.Match[str]) -> str:
        if match["channel"]:
            return f"pg_notify({quote_literal(channel(schema))}"
        if match["literal"]:  # to_regclass('future_calls'), nextval('future_calls_worker_seq')
            return quote_literal(qualified(match["literal"], schema))
        return qualified(match[0], schema)

    return {name: _NAMES.sub(render, sql) for name, sql in queries.items()}


@cache
def queries_for(schema: str | None) -> dict[str, str]:
    """Every statement of queries.sql, in ``schema`` (see ``in_schema``)."""
    return in_schema(QUERIES, schema)


QUERIES: dict[str, str] = load(__package__)
