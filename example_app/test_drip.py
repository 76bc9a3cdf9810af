"""How to test an app's future calls with fastapi-futurecalls' pytest plugin.

The app's endpoints schedule calls for days ahead. The plugin's fixtures (see conftest.py
for the two this app overrides) start the app's FutureCalls on a test database with
execution off; `assert_scheduled` checks what is waiting, and `run_due(within=...)` runs
everything that would fall due in that span right now, in due order, against the real
database (time travel).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import httpx
import pytest

from example_app.app import app
from fastapi_futurecalls import FutureCalls

ADA = {"user_id": 1, "email": "ada@example.com", "name": "Ada"}


@pytest.fixture
async def client(futurecalls: FutureCalls):
    """The app over HTTP, with its FutureCalls started by the plugin's `futurecalls`."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        yield client


def mails(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "example_app.mail"]


async def test_a_week_of_drip_campaign_runs_in_order(
    client: httpx.AsyncClient, caplog, run_due, assert_scheduled, refute_scheduled
):
    caplog.set_level(logging.INFO, logger="example_app.mail")
    assert (await client.post("/signup", json=ADA)).status_code == 200
    welcome = await assert_scheduled(
        "sendMail",
        identifier="user-1",
        payload={"template": "welcome", "email": "ada@example.com"},
        due_within=timedelta(minutes=1),
    )
    await assert_scheduled(
        "sendMail", identifier="user-1", payload={"template": "how is it going?"}
    )
    await refute_scheduled(
        "sendMail", payload={"template": "how is it going?"}, due_within=timedelta(days=6)
    )

    first_day = await run_due(within=timedelta(hours=1))
    assert first_day.completed == 1 and mails(caplog) == ["mail 'welcome' to Ada <ada@example.com>"]
    assert first_day.ids == [welcome.id]

    week = await run_due(within=timedelta(days=7, minutes=1))
    assert week.ok and week.completed == 2
    assert [m.split("'")[1] for m in mails(caplog)] == [
        "welcome",
        "getting-started tips",
        "how is it going?",
    ]
    await refute_scheduled("sendMail", identifier="user-1")
    assert (await client.post("/unsubscribe/1")).json() == {"cancelled": 0}


async def test_activity_keeps_one_reminder_and_unsubscribe_cancels_it(
    client, caplog, run_due, all_scheduled, refute_scheduled
):
    caplog.set_level(logging.INFO, logger="example_app.mail")
    for _ in range(3):
        await client.post("/activity", json=ADA)
    reminders = await all_scheduled("sendMail", identifier="idle-1")
    assert len(reminders) == 1 and reminders[0].due_at - reminders[0].created_at > timedelta(
        days=2, hours=23
    )
    assert (await client.post("/unsubscribe/1")).json() == {"cancelled": 1}
    await refute_scheduled("sendMail", identifier="idle-1")
    assert (await run_due(within=timedelta(days=30))).completed == 0
    assert mails(caplog) == []


async def test_a_password_reset_goes_ahead_and_a_paused_mail_waits(client, caplog, run_due):
    caplog.set_level(logging.INFO, logger="example_app.mail")
    assert (await client.post("/admin/mail/pause")).json() == {"paused": ["sendMail"]}
    for user_id in range(2, 5):
        await client.post("/signup", json={**ADA, "user_id": user_id})
    await asyncio.sleep(2.1)  # the welcome mails fall due, before the reset is asked for
    await client.post("/password-reset", json=ADA)
    assert (await run_due(within=timedelta(minutes=1))).completed == 0
    assert mails(caplog) == []  # paused: scheduled, not sent
    assert (await client.post("/admin/mail/resume")).json() == {"paused": []}
    sent = await run_due(within=timedelta(minutes=1))
    assert sent.ok and sent.completed == 4
    # The reset was scheduled last and is due last of these, yet goes first: priority 10.
    assert [m.split("'")[1] for m in mails(caplog)] == ["password reset"] + ["welcome"] * 3


async def test_the_dashboard_needs_the_admin_login(client: httpx.AsyncClient):
    assert (await client.post("/signup", json=ADA)).status_code == 200
    assert (await client.get("/futurecalls/")).status_code == 401
    assert (await client.get("/futurecalls/", auth=("admin", "wrong"))).status_code == 401
    page = await client.get("/futurecalls/calls", auth=("admin", "admin"))
    assert page.status_code == 200 and "user-1" in page.text and "sendMail" in page.text


async def test_the_metrics_need_the_admin_login_and_count_the_mails(
    client: httpx.AsyncClient, run_due
):
    def sent(page: httpx.Response) -> float:
        assert page.status_code == 200
        line = 'futurecalls_completed_total{name="sendMail"} '
        found = [row for row in page.text.splitlines() if row.startswith(line)]
        return float(found[0].removeprefix(line)) if found else 0.0

    assert (await client.get("/metrics")).status_code == 401
    before = sent(await client.get("/metrics", auth=("admin", "admin")))
    assert (await client.post("/signup", json=ADA)).status_code == 200
    assert (await run_due(within=timedelta(minutes=1))).completed == 1
    page = await client.get("/metrics", auth=("admin", "admin"))
    assert sent(page) == before + 1  # the app's FutureCalls counts across these tests
    assert 'futurecalls_calls{state="scheduled"} 2.0' in page.text  # the two follow-ups
