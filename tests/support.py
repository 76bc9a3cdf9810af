"""Helpers shared by the tests: recording calls and waiting for conditions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from fastapi_futurecalls import FutureCall, Session


class Item(BaseModel):
    n: int
    label: str = ""


class Rich(BaseModel):
    when: datetime
    amount: Decimal
    nested: dict[str, list[dict[str, int | None]]]
    tags: list[str]
    text: str


class Recorder(FutureCall[Item]):
    """Records each invocation: the payload and the loop time it started."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.calls: list[Item | None] = []
        self.started: list[float] = []
        self.sleep = sleep
        self.active = 0
        self.max_active = 0

    async def invoke(self, session: Session, object: Item | None) -> None:
        self.started.append(time.monotonic())
        self.calls.append(object)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.sleep:
                await asyncio.sleep(self.sleep)
        finally:
            self.active -= 1


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 10.0, what: str = ""
) -> None:
    """Poll ``condition`` until true; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result: Any = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or condition}")
        await asyncio.sleep(0.02)
