"""A FastAPI app run by the multi-process tests under real `uvicorn --workers N`.

Calls append `started <n> <pid>` and `done <n> <pid>` lines to the file named by
$FUTURECALLS_TEST_LOG (O_APPEND writes of one short line are atomic), so the tests can
count runs without depending on the database being up. `record` runs at most once;
`retried` has three attempts.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from fastapi_futurecalls import DatabaseUnavailableError, FutureCall, FutureCalls, Session


class Job(BaseModel):
    n: int
    sleep: float = 0.0


def log(event: str, n: int) -> None:
    fd = os.open(os.environ["FUTURECALLS_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event} {n} {os.getpid()}\n".encode())
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


futurecalls = FutureCalls()
futurecalls.register_future_call(Record(), "record")
futurecalls.register_future_call(Retried(), "retried")
app = FastAPI()
futurecalls.include(app)


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
    session: Session = Depends(futurecalls.session),
) -> dict[str, int]:
    call_id = await session.future_call_with_delay(name, job, timedelta(milliseconds=delay_ms))
    return {"id": call_id}
