"""The named SQL statements of queries.sql, loaded once and rendered per schema."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_BLOCK = re.compile(r"^-- name: (\w+)\n(.*?)(?=^-- name: |\Z)", re.MULTILINE | re.DOTALL)
# The library's objects as queries.sql names them: the table and the worker sequence.
_OBJECT = re.compile(r"\bfuture_calls(?:_worker_seq)?\b")
TABLE = "future_calls"
SEQUENCE = "future_calls_worker_seq"


def _load() -> dict[str, str]:
    text = files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
    queries = {}
    for name, body in _BLOCK.findall(text):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip()
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


@cache
def queries_for(schema: str | None) -> dict[str, str]:
    """Every statement, naming the table and sequence in ``schema`` (quoted; None: found
    through the connection's search_path, unqualified) and notifying its channel."""
    literals = {  # rendered after the identifiers, so that those never touch them
        f"'{SEQUENCE}'": quote_literal(qualified(SEQUENCE, schema)),
        f"'{TABLE}'": quote_literal(qualified(TABLE, schema)),
        f"pg_notify('{TABLE}'": f"pg_notify({quote_literal(channel(schema))}",
    }
    rendered = {}
    for name, sql in QUERIES.items():
        held: list[str] = []
        for literal, replacement in sorted(literals.items(), key=lambda item: -len(item[0])):
            if literal in sql:
                sql = sql.replace(literal, f"\x00{len(held)}\x00")
                held.append(replacement)
        sql = _OBJECT.sub(lambda match: qualified(match.group(), schema), sql)
        for index, replacement in enumerate(held):
            sql = sql.replace(f"\x00{index}\x00", replacement)
        rendered[name] = sql
    return rendered


QUERIES: dict[str, str] = _load()
