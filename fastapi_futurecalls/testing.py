"""Time travel for your test suite: run now what would be due within a span.

    from fastapi_futurecalls.testing import run_due

    async def test_drip_campaign(futurecalls):
        ...  # sign a user up
        result = await run_due(futurecalls, within=timedelta(days=7))
        assert result.completed == 3

Calls run against the real database, in due order (one at a time by default), as soon
as they are asked for: a week of a drip campaign takes milliseconds. Follow-up calls
they schedule within the span run too; recurring chains run once for each slot in it.
Due times are not changed: a call due in three days is run now and leaves the table.
"""

from __future__ import annotations

from datetime import timedelta

from .futurecalls import DueRun, FutureCalls

__all__ = ["run_due"]


async def run_due(
    futurecalls: FutureCalls, within: timedelta = timedelta(0), *, concurrency: int = 1
) -> DueRun:
    """Run every call of ``futurecalls`` (started) due now or within ``within``, wait for
    them, and return how they ended."""
    return await futurecalls.run_due(within, concurrency=concurrency)
