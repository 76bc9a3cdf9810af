"""The dashboard over HTTP (in process) on a real database: dependencies on every route,
pages with real rows, keyset pages, bad input, CSRF-checked actions that change rows."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request

from fastapi_futurecalls import ConfigurationError, FutureCalls
from fastapi_futurecalls.dashboard import queries
from tests.conftest import ROOT
from tests.support import Item, Recorder, alembic

BASE = "http://test/futurecalls"


def require_admin(request: Request) -> None:
    if request.headers.get("x-admin") != "yes":
        raise HTTPException(401, "admins only")


@pytest.fixture
async def dashboard(
    make_futurecalls: Callable[..., FutureCalls],
) -> AsyncIterator[tuple[httpx.AsyncClient, FutureCalls]]:
    fc = make_futurecalls(execution_enabled=False)
    fc.register_future_call(Recorder(), "record")
    fc.register_future_call(Recorder(), "other")
    app = FastAPI()
    app.include_router(fc.dashboard([Depends(require_admin)]), prefix="/futurecalls")
    async with fc:
        transport = httpx.ASGITransport(app=app)
        headers = {"x-admin": "yes"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers
        ) as client:
            yield client, fc


def csrf_token(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text[:2000]
    return match[1]


async def park(db: asyncpg.Connection, name: str = "record", state: str = "failed") -> int:
    return await db.fetchval(
        "INSERT INTO future_calls (name, due_at, state, attempts, finished_at, last_error)"
        " VALUES ($1, now() - interval '1 hour', $2, 1, now(), 'RuntimeError: boom')"
        " RETURNING id",
        name,
        state,
    )


def test_the_dashboard_refuses_to_be_built_without_dependencies():
    fc = FutureCalls("postgresql://localhost/unused")
    for dependencies in (None, []):
        with pytest.raises(ConfigurationError, match="allow_anonymous=True"):
            fc.dashboard(dependencies)
    assert fc.dashboard(allow_anonymous=True).routes


async def test_every_route_carries_the_dependencies(dashboard, db):
    client, _ = dashboard
    call_id = await park(db)
    anonymous = {"x-admin": "no"}
    for path in ("/", "/calls", f"/calls/{call_id}", "/chains", "/workers", "/static/htmx.min.js"):
        assert (await client.get(BASE + path, headers=anonymous)).status_code == 401, path
    page = await client.get(BASE + "/")
    token = csrf_token(page)
    for path in (f"/calls/{call_id}/retry", f"/calls/{call_id}/delete", "/pause", "/cancel"):
        response = await client.post(
            BASE + path, data={"csrf_token": token, "name": "record"}, headers=anonymous
        )
        assert response.status_code == 401, path
    assert await db.fetchval("SELECT state FROM future_calls WHERE id = $1", call_id) == "failed"
    assert await db.fetchval("SELECT count(*) FROM future_calls_paused") == 0


async def test_the_overview_shows_the_rows(dashboard, db):
    client, fc = dashboard
    session = fc.session()
    for n in range(3):
        await session.future_call_with_delay("record", Item(n=n), timedelta(minutes=10))
    await session.future_call_with_delay("other", Item(n=9), timedelta(days=2), "later-9")
    await session.future_call_recurring("other", Item(n=0), identifier="nightly", cron="0 3 * * *")
    failed = await park(db)
    await db.execute(
        "INSERT INTO future_calls_stats (minute, worker, started, succeeded, failed,"
        " interrupted, lateness) VALUES (date_trunc('minute', now()), 1, 100, 99, 1, 0, $1)",
        [0, 0, 40, 50, 9, 1] + [0] * 9,
    )
    page = await client.get(BASE + "/")
    assert page.status_code == 200
    html = page.text
    assert 'hx-trigger="every 5s"' in html and "htmx.min.js" in html
    assert f"#{failed}" in html and "RuntimeError: boom" in html
    assert "record" in html and "other" in html
    assert "≤ 50 ms" in html and "≤ 100 ms" in html  # p50 in the 4th bucket, p99 in the 5th
    counts = dict(
        re.findall(
            r'c-(\w+)[^"]*" href[^>]*>\s*<span class="label">[^<]*</span>\s*'
            r'<span class="value"><span[^>]*>([^<]*)</span>',
            html,
        )
    )
    assert counts == {
        "scheduled": "4",
        "running": "0",
        "failed": "1",
        "interrupted": "0",
        "recurring": "1",
    }, counts
    live = await client.get(BASE + "/", params={"fragment": "live"})
    assert live.text.lstrip().startswith('<div id="live"') and "<html" not in live.text
    assert page.cookies.get("futurecalls_csrf") or client.cookies.get("futurecalls_csrf")


async def test_the_calls_table_filters_and_pages_by_keyset(dashboard, db, monkeypatch):
    client, _ = dashboard
    await db.execute(
        "INSERT INTO future_calls (name, due_at, identifier)"
        " SELECT CASE WHEN g % 3 = 0 THEN 'other' ELSE 'record' END,"
        "        now() + g * interval '1 minute', 'id-' || (g % 5)"
        " FROM generate_series(1, 260) AS g"
    )
    expected = await db.fetch(
        "SELECT id FROM future_calls WHERE name = 'other' AND state = 'scheduled'"
        " ORDER BY due_at, id"
    )

    async def walk(**params: Any) -> list[int]:
        seen: list[int] = []
        after = None
        for _ in range(100):
            response = await client.get(BASE + "/calls", params={**params, "after": after or ""})
            assert response.status_code == 200, response.text
            seen += [int(i) for i in re.findall(r'href="/futurecalls/calls/(\d+)"', response.text)]
            match = re.search(r'rel="next" href="[^"]*after=([\d_]+)', response.text)
            if not match:
                return seen
            after = match[1]
        raise AssertionError("no last page")

    assert await walk(state="scheduled", name="other") == [r["id"] for r in expected]
    monkeypatch.setattr(queries, "SCAN_LIMIT", 7)  # pages that end where their scan ends
    assert await walk(state="scheduled", name="other") == [r["id"] for r in expected]
    everything = await walk()
    assert everything == sorted(everything, reverse=True) and len(everything) == 260
    by_identifier = await walk(identifier="id-2", name="record")
    assert len(by_identifier) == await db.fetchval(
        "SELECT count(*) FROM future_calls WHERE identifier = 'id-2' AND name = 'record'"
    )
    page = await client.get(BASE + "/calls", params={"name": "nobody"})
    assert "No match among the 7 calls read for this page" in page.text and "Next" in page.text


async def test_the_detail_page_and_bad_input(dashboard, db):
    client, fc = dashboard
    call_id = await fc.session().future_call_with_delay(
        "record", Item(n=7, label="<script>x</script>"), timedelta(hours=1), "user-7"
    )
    page = await client.get(f"{BASE}/calls/{call_id}")
    assert page.status_code == 200
    assert "user-7" in page.text and "&lt;script&gt;x&lt;/script&gt;" in page.text
    assert "<script>x</script>" not in page.text  # autoescaped
    missing = await client.get(f"{BASE}/calls/999999")
    assert missing.status_code == 404 and "No call 999999" in missing.text
    bad_id = await client.get(f"{BASE}/calls/abc")
    assert bad_id.status_code == 422 and "call_id" in bad_id.text and "integer" in bad_id.text
    bad_state = await client.get(f"{BASE}/calls", params={"state": "sleeping"})
    assert bad_state.status_code == 400
    assert "state must be one of failed, interrupted, running, scheduled" in bad_state.text
    bad_cursor = await client.get(f"{BASE}/calls", params={"state": "scheduled", "after": "x"})
    assert bad_cursor.status_code == 400 and "after must be a cursor" in bad_cursor.text


async def test_actions_change_the_rows_and_need_the_csrf_token(dashboard, db):
    client, fc = dashboard
    failed = await park(db)
    interrupted = await park(db, state="interrupted")
    token = csrf_token(await client.get(BASE + "/"))

    # No token, a wrong one, or a token without its cookie: refused, nothing changed.
    refused = await client.post(f"{BASE}/calls/{failed}/retry", data={})
    assert refused.status_code == 403 and "CSRF" in refused.text
    wrong = await client.post(f"{BASE}/calls/{failed}/retry", data={"csrf_token": "x" * 43})
    assert wrong.status_code == 403
    async with httpx.AsyncClient(
        transport=client._transport, base_url="http://test", headers={"x-admin": "yes"}
    ) as cookieless:
        alone = await cookieless.post(f"{BASE}/calls/{failed}/retry", data={"csrf_token": token})
        assert alone.status_code == 403
    assert await db.fetchval("SELECT state FROM future_calls WHERE id = $1", failed) == "failed"

    # A plain form POST: 303 back to the page it names, with a flash message there.
    done = await client.post(
        f"{BASE}/calls/{failed}/retry",
        data={"csrf_token": token, "next": f"/futurecalls/calls/{failed}"},
    )
    assert done.status_code == 303 and done.headers["location"] == f"/futurecalls/calls/{failed}"
    row = await db.fetchrow(
        "SELECT state, due_at <= now() AS due FROM future_calls WHERE id = $1", failed
    )
    assert row["state"] == "scheduled" and row["due"]
    shown = await client.get(f"{BASE}/calls/{failed}")
    assert f"Call {failed} is scheduled again" in shown.text
    assert (
        f"Call {failed} is scheduled again" not in (await client.get(f"{BASE}/calls/{failed}")).text
    )
    again = await client.post(f"{BASE}/calls/{failed}/retry", data={"csrf_token": token})
    assert again.status_code == 303 and again.headers["location"] == "/futurecalls/"
    assert "is not parked" in (await client.get(BASE + "/")).text

    # htmx sends the token in a header; an offsite `next` is not followed.
    deleted = await client.post(
        f"{BASE}/calls/{interrupted}/delete",
        data={"next": "https://evil.example/"},
        headers={"X-CSRF-Token": token, "HX-Request": "true"},
    )
    assert deleted.status_code == 303 and deleted.headers["location"] == "/futurecalls/calls"
    for offsite in ("/futurecalls/../admin", "/futurecalls//evil.example", "/elsewhere"):
        response = await client.post(
            f"{BASE}/resume", data={"csrf_token": token, "name": "x", "next": offsite}
        )
        assert response.headers["location"] == "/futurecalls/", offsite
    assert await db.fetchval("SELECT count(*) FROM future_calls WHERE id = $1", interrupted) == 0

    await client.post(f"{BASE}/pause", data={"csrf_token": token, "name": "record"})
    assert await fc.session().paused_future_calls() == ["record"]
    assert "paused" in (await client.get(BASE + "/")).text
    await client.post(f"{BASE}/resume", data={"csrf_token": token, "name": "record"})
    assert await fc.session().paused_future_calls() == []

    session = fc.session()
    for n in range(2):
        await session.future_call_with_delay("record", Item(n=n), timedelta(hours=1), "user-1")
    cancelled = await client.post(
        f"{BASE}/cancel", data={"csrf_token": token, "identifier": "user-1"}
    )
    assert cancelled.status_code == 303
    assert "Cancelled 2 pending call(s)" in (await client.get(BASE + "/")).text
    assert await db.fetchval("SELECT count(*) FROM future_calls WHERE identifier = 'user-1'") == 0

    empty = await client.post(f"{BASE}/cancel", data={"csrf_token": token, "identifier": ""})
    assert empty.status_code == 400 and "identifier" in empty.text


@pytest.mark.parametrize("lock_namespace", [None, 4242])  # the table's oid, or the setting
async def test_the_workers_page_tells_live_from_gone(dsn, db, make_futurecalls, lock_namespace):
    worker = make_futurecalls()
    worker.configure(lock_namespace=lock_namespace)
    worker.register_future_call(Recorder(), "record")
    app = FastAPI()
    app.include_router(worker.dashboard(allow_anonymous=True), prefix="/futurecalls")
    async with worker:
        await db.execute(
            "INSERT INTO future_calls_workers (id, names, host, pid, missing_since)"
            " VALUES (424242, '{record}', 'lost-host', 4242, now())"
        )
        await db.execute(
            "INSERT INTO future_calls (name, due_at, state, owner, attempts, started_at)"
            " VALUES ('record', now(), 'running', 424242, 1, now())"
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            page = (await client.get(BASE + "/workers")).text
    live, _, gone = page.partition("Gone")
    assert f'<td class="num">{worker_id(page)}</td>' in live
    assert "lost-host" in gone and "lost-host" not in live


def worker_id(page: str) -> int:
    match = re.search(r'<td class="num">(\d+)</td>\s*<td class="mono">', page)
    assert match
    return int(match[1])


async def test_the_chains_page(dashboard):
    client, fc = dashboard
    session = fc.session()
    await session.future_call_recurring(
        "record", Item(n=1), identifier="nightly", cron="30 2 * * *", timezone="Europe/Paris"
    )
    await session.future_call_recurring(
        "other", Item(n=2), identifier="often", every=timedelta(minutes=5)
    )
    page = (await client.get(BASE + "/chains")).text
    assert "30 2 * * *" in page and "Europe/Paris" in page and "every 5 min" in page


async def test_a_dashboard_of_a_stopped_futurecalls_says_so():
    fc = FutureCalls("postgresql://localhost/unused")
    app = FastAPI()
    app.include_router(fc.dashboard(allow_anonymous=True), prefix="/futurecalls")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        page = await client.get(BASE + "/")
    assert page.status_code == 503 and "FutureCalls is not started" in page.text


async def test_large_kinds_show_estimates_labelled_as_such(dashboard, db, monkeypatch):
    client, _ = dashboard
    await db.execute(
        "INSERT INTO future_calls (name, due_at) SELECT 'record', now() + g * interval '1 s'"
        " FROM generate_series(1, 500) AS g"
    )
    await park(db)
    await db.execute("ANALYZE future_calls")
    monkeypatch.setattr(queries, "COUNT_CAP", 100)  # as if the table held millions
    html = (await client.get(BASE + "/")).text
    assert 'title="estimate from PostgreSQL\'s statistics">≈ 500</span>' in html
    assert "marks estimates from PostgreSQL's statistics" in html
    assert ">100+</span> due within 1 h" in html  # no estimate for it: a lower bound
    assert '<span class="">1</span>' in html  # the one parked call: exact


async def test_the_dashboard_of_calls_in_a_schema_of_their_own(dsn, db, make_futurecalls):
    schema = 'Ops "x"'
    alembic(ROOT, dsn, "upgrade", "head", FUTURECALLS_SCHEMA=schema)
    fc = make_futurecalls(schema=schema)
    fc.register_future_call(Recorder(), "record")
    app = FastAPI()
    app.include_router(fc.dashboard(allow_anonymous=True), prefix="/futurecalls")
    async with fc:
        await fc.session().future_call_with_delay("record", Item(n=1), timedelta(hours=1), "x-1")
        await db.execute('ANALYZE "Ops ""x""".future_calls')
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            pages = {p: await client.get(BASE + p) for p in ("/", "/calls", "/workers", "/chains")}
    assert all(page.status_code == 200 for page in pages.values()), pages
    assert "x-1" in pages["/calls"].text and "registered" in pages["/"].text
