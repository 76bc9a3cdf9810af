"""The README's quickstart app, under real uvicorn workers."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx

from tests.processes import Uvicorn
from tests.support import wait_for


async def test_drip_campaign_sends_welcome_and_unsubscribe_cancels_the_rest(
    dsn: str, db: asyncpg.Connection, tmp_path: Path
):
    server = Uvicorn("example_app.app:app", dsn, 2, tmp_path / "example.log")
    try:
        server.wait_ready()
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post(
                "/signup", json={"user_id": 42, "email": "ada@example.com", "name": "Ada"}
            )
            assert response.status_code == 200, response.text
            assert set(response.json()["scheduled"]) == {
                "welcome",
                "getting-started tips",
                "how is it going?",
            }
            bad = await client.post("/signup", json={"user_id": "x"})
            assert bad.status_code == 422
            await wait_for(
                lambda: "mail 'welcome' to Ada <ada@example.com>" in server.output(),
                within=20,
                what="the welcome mail",
            )
            response = await client.post("/unsubscribe/42")
            assert response.json() == {"cancelled": 2}
            assert (await client.post("/unsubscribe/42")).json() == {"cancelled": 0}
        assert (
            await db.fetchval("SELECT count(*) FROM future_calls WHERE identifier = 'user-42'") == 0
        )
        # Both workers declared the daily digest at startup: one chain.
        assert (
            await db.fetchval(
                "SELECT count(*) FROM future_calls"
                " WHERE identifier = 'daily-digest' AND cron IS NOT NULL"
            )
            == 1
        )
        assert server.output().count("mail 'welcome'") == 1
    finally:
        assert server.stop() == 0
