"""The FastAPI glue: lifespan=, include(app) around an app's own lifespan, Depends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
from fastapi import Depends, FastAPI

from fastapi_futurecalls import FutureCalls, Session
from tests.support import Item, Recorder, wait_for


async def test_lifespan_starts_dispatching_and_depends_gives_a_session(make_futurecalls, db):
    recorder = Recorder()
    futurecalls = make_futurecalls()
    futurecalls.register_future_call(recorder, "record")
    app = FastAPI(lifespan=futurecalls.lifespan)

    @app.post("/signup/{n}")
    async def signup(n: int, session: Session = Depends(futurecalls.session)) -> dict[str, int]:
        call_id = await session.future_call_with_delay(
            "record", Item(n=n), timedelta(0), identifier=f"user-{n}"
        )
        return {"id": call_id}

    async with app.router.lifespan_context(app):
        assert futurecalls.started and futurecalls.worker_id is not None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.post("/signup/7")
        assert response.status_code == 200
        await wait_for(lambda: len(recorder.calls) == 1)
    assert recorder.calls == [Item(n=7)]
    assert not futurecalls.started


async def test_include_wraps_the_app_s_own_lifespan(make_futurecalls, db):
    events: list[str] = []
    recorder = Recorder()
    futurecalls: FutureCalls = make_futurecalls()
    futurecalls.register_future_call(recorder, "record")

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append("app startup")
        # Future calls are usable during the app's own startup...
        await futurecalls.session().future_call_with_delay("record", Item(n=1), timedelta(0))
        yield {"greeting": "hello"}
        assert futurecalls.started  # ...and still there during its shutdown.
        events.append("app shutdown")

    app = FastAPI(lifespan=own)
    futurecalls.include(app)
    async with app.router.lifespan_context(app) as state:
        assert state == {"greeting": "hello"}
        await wait_for(lambda: len(recorder.calls) == 1)
    assert events == ["app startup", "app shutdown"]
    assert not futurecalls.started


async def test_web_tier_with_execution_disabled_never_runs_calls(make_futurecalls, db):
    recorder = Recorder()
    web = make_futurecalls(execution_enabled=False, poll_interval=0.1)
    web.register_future_call(recorder, "record")
    async with web:
        assert web.worker_id is None
        await web.session().future_call_with_delay("record", Item(n=1), timedelta(0))
        await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM future_calls"))
        import asyncio

        await asyncio.sleep(0.5)
    assert recorder.calls == []
    assert await db.fetchval("SELECT state FROM future_calls") == "scheduled"
