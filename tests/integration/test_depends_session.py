"""Depends(futurecalls.session) resolves on the event loop, without a threadpool hop."""

from __future__ import annotations

import threading
from datetime import timedelta

import httpx
import pytest
from fastapi import Depends, FastAPI

from fastapi_futurecalls import ConfigurationError, FutureCalls, Session
from tests.support import Item, Recorder


class Probe(FutureCalls):
    """Notes the thread that reads the started Session, i.e. the thread session() runs in."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.threads: list[int] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    @property  # type: ignore[override]
    def _session(self) -> Session | None:
        self.threads.append(threading.get_ident())
        return self.__dict__["probed_session"]

    @_session.setter
    def _session(self, value: Session | None) -> None:
        self.__dict__["probed_session"] = value


async def test_depends_session_runs_in_the_event_loop_thread(dsn: str, db):
    futurecalls = Probe(dsn, execution_enabled=False)
    futurecalls.register_future_call(Recorder(), "record")
    app = FastAPI()

    @app.post("/schedule/{n}")
    async def schedule(n: int, session: Session = Depends(futurecalls.session)) -> dict[str, int]:
        return {"id": await session.future_call_with_delay("record", Item(n=n), timedelta(1))}

    async with futurecalls:
        futurecalls.threads.clear()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for n in range(3):
                assert (await client.post(f"/schedule/{n}")).status_code == 200
        assert futurecalls.threads and set(futurecalls.threads) == {threading.get_ident()}
        # Called directly, it still gives the Session at once; awaited, the same one.
        session = futurecalls.session()
        assert isinstance(session, Session)
        assert await futurecalls.session() is session
        await session.future_call_with_delay("record", None, timedelta(1))
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 4
    with pytest.raises(ConfigurationError, match="not started"):
        futurecalls.session()
