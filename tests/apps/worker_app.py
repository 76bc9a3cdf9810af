"""A FastAPI app run by the multi-process tests under real `uvicorn --workers N`.

Each run of the `record` call inserts (n, pid) into `executions`; the table has no unique
key, so a call that ran twice shows up as a duplicate row. `started` records starts.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import asyncpg
from fastapi import Depends, FastAPI
from pydantic import BaseModel

from fastapi_futurecalls import FutureCall, FutureCalls, Session

SETUP = """
CREATE TABLE IF NOT EXISTS executions (n integer NOT NULL, pid integer NOT NULL);
CREATE TABLE IF NOT EXISTS started (n integer NOT NULL, pid integer NOT NULL);
"""


class Job(BaseModel):
    n: int
    sleep: float = 0.0


class Record(FutureCall[Job]):
    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    os.environ["DATABASE_URL"], min_size=1, max_size=4
                )
        return self._pool

    async def invoke(self, session: Session, object: Job | None) -> None:
        assert object is not None
        pool = await self.pool()
        if object.sleep:
            await pool.execute("INSERT INTO started VALUES ($1, $2)", object.n, os.getpid())
            await asyncio.sleep(object.sleep)
        await pool.execute("INSERT INTO executions VALUES ($1, $2)", object.n, os.getpid())


futurecalls = FutureCalls()
futurecalls.register_future_call(Record(), "record")
app = FastAPI()
futurecalls.include(app)


@app.get("/health")
async def health() -> dict[str, object]:
    return {"pid": os.getpid(), "worker": futurecalls.worker_id}


@app.post("/schedule")
async def schedule(
    job: Job, delay_ms: int = 0, session: Session = Depends(futurecalls.session)
) -> dict[str, int]:
    call_id = await session.future_call_with_delay("record", job, timedelta(milliseconds=delay_ms))
    return {"id": call_id}
