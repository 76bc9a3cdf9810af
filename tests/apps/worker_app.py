"""A FastAPI app run by the multi-process tests under real `uvicorn --workers N`.

Calls append `started <n> <pid>` and `done <n> <pid>` lines to the file named by
$FUTURECALLS_TEST_LOG (O_APPEND writes of one short line are atomic), so the tests can
count runs without depending on the database being up. `record` runs at most once;
`retried` has three attempts; `limited` has a fleet_limit of 3 and logs `started` and
`done` with the time. With NEW_CODE=1 the app also registers `newname` (a `record` under
a name only the new release has). With METRICS=1 it serves Prometheus metrics at
/metrics.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from fastapi_futurecalls import (
    DatabaseUnavailableError,
    FutureCall,
    FutureCalls,
    IfExists,
    Session,
)
from fastapi_futurecalls.migrations import sqlalchemy_url


class Job(BaseModel):
    n: int
    sleep: float = 0.0


def log(event: str, n: int, *more: object) -> None:
    fd = os.open(os.environ["FUTURECALLS_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, " ".join(map(str, (event, n, os.getpid(), *more))).encode() + b"\n")
    finally:
        os.close(fd)


class Record(FutureCall[Job]):
    async def invoke(self, session: Session, object: Job | None) -> None:
        assert object is not None
        if object.sleep:
            log("started", object.n)
            await asyncio.sleep(object.sleep)
        log("done", object.n)


class Retried(Record):
    max_attempts = 3
    retry_backoff = timedelta(milliseconds=100)


class Limited(FutureCall[Job]):
    """At most 3 at once across the fleet; logs its start and end with the time."""

    fleet_limit = 3

    async def invoke(self, session: Session, object: Job | None) -> None:
        assert object is not None
        log("started", object.n, time.time())
        await asyncio.sleep(object.sleep)
        log("done", object.n, time.time())


class Boom(FutureCall[Job]):
    async def invoke(self, session: Session, object: Job | None) -> None:
        raise RuntimeError("boom")


futurecalls = FutureCalls()
futurecalls.register_future_call(Boom(), "boom")
futurecalls.register_future_call(Record(), "record")
futurecalls.register_future_call(Retried(), "retried")
futurecalls.register_future_call(Limited(), "limited")
if os.environ.get("NEW_CODE") == "1":
    # The next release of this app, in the rolling-deploy test: it adds a call name that
    # the workers still running the old code do not know.
    futurecalls.register_future_call(Record(), "newname")
engine = create_async_engine(sqlalchemy_url(os.environ.get("DATABASE_URL", "postgresql://x/x")))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Every worker declares the same recurring chain at startup, as apps do on deploy.
    if every := os.environ.get("HEARTBEAT_MS"):
        await futurecalls.session().future_call_recurring(
            "record", Job(n=-1), identifier="heartbeat", every=timedelta(milliseconds=int(every))
        )
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)
futurecalls.include(app)
if os.environ.get("METRICS") == "1":
    app.include_router(futurecalls.metrics_router())


@app.exception_handler(DatabaseUnavailableError)
async def database_unavailable(request: Request, exc: DatabaseUnavailableError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


@app.get("/health")
async def health() -> dict[str, object]:
    return {"pid": os.getpid(), "worker": futurecalls.worker_id}


@app.post("/schedule")
async def schedule(
    job: Job,
    delay_ms: int = 0,
    name: str = "record",
    identifier: str | None = None,
    if_exists: IfExists = "add",
    priority: int | None = None,
    session: Session = Depends(futurecalls.session),
) -> dict[str, int]:
    call_id = await session.future_call_with_delay(
        name,
        job,
        timedelta(milliseconds=delay_ms),
        identifier,
        if_exists=if_exists,
        priority=priority,
    )
    return {"id": call_id}


@app.post("/signup/{user_id}")
async def signup(
    user_id: int, fail: bool = False, session: Session = Depends(futurecalls.session)
) -> dict[str, int]:
    """Creates the user and schedules its call in one SQLAlchemy transaction."""
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO users (id) VALUES (:id)"), {"id": user_id})
        call_id = await session.future_call_with_delay(
            "record", Job(n=user_id), timedelta(0), connection=conn
        )
        if fail:
            raise HTTPException(409, "rolled back after scheduling")
    return {"id": call_id}
