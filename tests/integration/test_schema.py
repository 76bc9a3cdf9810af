"""The `schema` setting: the library's table in a schema of its own, named however its
owner likes (quoted, never formatted in), apart from the calls of any other schema."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from fastapi_futurecalls import FutureCalls, SchemaMissingError
from tests.conftest import ROOT
from tests.support import Item, Recorder, alembic, wait_for

# Every character that could break SQL that formatted the name in.
SCHEMA = 'Tenant "B": it\'s; DROP'


async def tables_in(db: asyncpg.Connection, schema: str) -> set[str]:
    rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    return {r["tablename"] for r in rows}


async def test_two_schemas_in_one_database_keep_their_calls_apart(dsn: str, db):
    alembic(ROOT, dsn, "upgrade", "head", FUTURECALLS_SCHEMA=SCHEMA)
    assert {"future_calls", "alembic_version"} <= await tables_in(db, SCHEMA)

    tenant, default = Recorder(), Recorder()
    in_schema = FutureCalls(dsn, schema=SCHEMA, poll_interval=60)  # woken by NOTIFY only
    in_public = FutureCalls(dsn, poll_interval=60)
    in_schema.register_future_call(tenant, "record")
    in_public.register_future_call(default, "record")
    async with in_schema, in_public:
        namespaces = await db.fetch(
            "SELECT DISTINCT classid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
        )
        assert len(namespaces) == 2  # each table's workers lock under the table's own oid
        session = in_schema.session()
        for n in range(20):
            await session.future_call_with_delay("record", Item(n=n), timedelta(0))
        await session.future_call_recurring(
            "record", Item(n=100), identifier="chain", every=timedelta(hours=1)
        )
        await session.future_call_with_delay("record", Item(n=200), timedelta(days=1), "later")
        await in_public.session().future_call_with_delay("record", Item(n=-1), timedelta(0))
        # Within seconds, not the minute's poll: NOTIFY on the schema's own channel.
        await wait_for(lambda: len(tenant.calls) == 20 and len(default.calls) == 1)
        listed = await session.list_future_calls()
        assert sorted(r.identifier or "" for r in listed) == ["chain", "later"]
        assert await session.cancel_future_call("later") == 1
        assert await in_public.session().list_future_calls() == []
    assert sorted(c.n for c in tenant.calls if c) == list(range(20))
    assert [c.n for c in default.calls if c] == [-1]
    quoted = '"' + SCHEMA.replace('"', '""') + '"'
    assert await db.fetchval(f"SELECT count(*) FROM {quoted}.future_calls") == 1  # the chain
    assert await db.fetchval("SELECT count(*) FROM public.future_calls") == 0
    # Each process's run statistics (written as its dispatcher stops) go to its own schema.
    started = "SELECT coalesce(sum(started), 0) FROM {}.future_calls_stats"
    assert await db.fetchval(started.format(quoted)) == 20
    assert await db.fetchval(started.format("public")) == 1

    alembic(ROOT, dsn, "downgrade", "base", FUTURECALLS_SCHEMA=SCHEMA)
    assert "future_calls" not in await tables_in(db, SCHEMA)
    assert "future_calls" in await tables_in(db, "public")  # the other schema's, untouched


async def test_a_schema_not_migrated_is_a_clear_error(dsn: str):
    fc = FutureCalls(dsn, schema="nowhere")
    with pytest.raises(SchemaMissingError, match=r"in schema 'nowhere'.*FUTURECALLS_SCHEMA"):
        async with fc:
            pass
