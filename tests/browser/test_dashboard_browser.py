"""The dashboard in a real headless Chromium (Debian's chromium and chromium-driver, see
`make chromium`), served by a real uvicorn over a migrated database with real rows and a
live dispatcher: the overview shows the rows, a filter narrows the calls table, running a
parked call again and pausing a name change the database, and a POST without the CSRF
token is refused. Saves screenshots of the overview and the calls table (to
$FUTURECALLS_SCREENSHOTS, e.g. docs/images, else the test's temporary directory)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.processes import Uvicorn

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APP = "tests.apps.dashboard_app:app"

pytestmark = pytest.mark.slow


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromedriver are missing: run `make chromium` (as root)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


async def seed(db: asyncpg.Connection) -> None:
    """Calls an app of the README's kind would have: mails, charges, syncs and webhooks due
    over the next days, a few parked, a daily digest, and a quarter hour of runs."""
    await db.execute(
        "INSERT INTO future_calls (name, payload, identifier, due_at, priority)"
        " SELECT n, json_build_object('user_id', g, 'email', 'user' || g || '@example.com',"
        "                             'template', 'welcome'),"
        "        'user-' || g, now() + interval '3 minutes' + g * interval '47 seconds',"
        "        CASE WHEN g % 17 = 0 THEN 10 ELSE 0 END"
        " FROM generate_series(1, 240) AS g,"
        "      LATERAL (SELECT (ARRAY['sendMail', 'sendMail', 'syncCrm', 'webhook'])[1 + g % 4]"
        "               AS n) AS names"
    )
    await db.execute(
        "INSERT INTO future_calls (name, payload, identifier, due_at, state, attempts,"
        "                          max_attempts, started_at, finished_at, last_error)"
        " SELECT 'chargeCard', json_build_object('order', 1000 + g, 'amount_cents', 4900),"
        "        'order-' || (1000 + g), now() - g * interval '9 minutes', 'failed', 1, 1,"
        "        now() - g * interval '9 minutes',"
        "        now() - g * interval '9 minutes' + interval '1 s',"
        "        'RuntimeError: CardDeclined: the card ending 4242 was declined'"
        " FROM generate_series(1, 3) AS g"
    )
    await db.execute(
        "INSERT INTO future_calls (name, payload, identifier, due_at, state, attempts,"
        "                          started_at, finished_at, last_error)"
        " SELECT 'syncCrm', json_build_object('account', g), 'account-' || g,"
        "        now() - interval '1 hour', 'interrupted', 1, now() - interval '50 minutes',"
        "        now() - interval '49 minutes',"
        "        'interrupted: its worker''s database session ended while it ran'"
        " FROM generate_series(1, 2) AS g"
    )
    await db.execute(
        "INSERT INTO future_calls (name, identifier, due_at, cron, timezone)"
        " VALUES ('sendDigest', 'daily-digest',"
        "         date_trunc('day', now()) + interval '1 day 8 hours',"
        "         '0 8 * * *', 'Europe/Paris')"
    )
    await db.execute(
        "INSERT INTO future_calls_stats (minute, worker, started, succeeded, failed,"
        "                                interrupted, lateness)"
        " SELECT date_trunc('minute', now()) - m * interval '1 minute', 1,"
        "        s, s - (m % 5 = 2)::int, (m % 5 = 2)::int, 0,"
        "        ARRAY[s * 6 / 10, s * 3 / 10, s - s * 6 / 10 - s * 3 / 10 - 1, 1,"
        "              0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"
        " FROM generate_series(1, 14) AS m,"
        "      LATERAL (SELECT 120 + ((m * 37) % 90) AS s) AS t"
    )


def wait(driver: webdriver.Chrome, condition: object, within: float = 15) -> object:
    return WebDriverWait(driver, within).until(condition)  # type: ignore[arg-type]


def shoot(driver: webdriver.Chrome, path: Path, height: int) -> None:
    """A screenshot of the page's top ``height`` pixels (less, if the page is shorter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = driver.execute_script("return document.documentElement.scrollHeight")
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    driver.set_window_size(1280, min(content, height) + chrome)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.execute_script("document.documentElement.style.overflow = 'hidden'")  # no scrollbar
    try:
        assert driver.save_screenshot(str(path)), path
    finally:
        driver.execute_script("document.documentElement.style.overflow = ''")
        driver.set_window_size(1280, 900)


def card(driver: webdriver.Chrome, key: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f".card.c-{key} .value").text


def click(driver: webdriver.Chrome, xpath: str) -> None:
    """Click, again if the live refresh swapped the element out just then."""
    for _ in range(5):
        try:
            driver.find_element(By.XPATH, xpath).click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{xpath} kept going stale")


async def eventually(db: asyncpg.Connection, sql: str, expected: object, *args: object) -> None:
    deadline = time.monotonic() + 20
    while (value := await db.fetchval(sql, *args)) != expected:
        assert time.monotonic() < deadline, (sql, value, expected)
        await asyncio.sleep(0.1)


async def test_the_dashboard_in_a_real_browser(
    dsn: str, db: asyncpg.Connection, browser: webdriver.Chrome, tmp_path: Path
):
    await seed(db)
    shots = Path(os.environ.get("FUTURECALLS_SCREENSHOTS") or tmp_path)
    server = Uvicorn(APP, dsn, 1, tmp_path / "uvicorn.log", FUTURECALLS_POLL_INTERVAL="1")
    try:
        server.wait_ready()
        base = server.url + "/futurecalls"

        # Without the app's login the dashboard is refused.
        browser.get(base + "/")
        assert "log in first" in browser.page_source
        browser.get(server.url + "/login")

        # The overview, with the database's rows.
        browser.get(base + "/")
        wait(browser, ec.presence_of_element_located((By.ID, "live")))
        assert browser.execute_script("return typeof htmx") == "object"  # served, not a CDN
        scheduled = await db.fetchval(
            "SELECT count(*) FROM future_calls WHERE state = 'scheduled' AND cron IS NULL"
        )
        assert card(browser, "scheduled") == str(scheduled) == "240"
        assert card(browser, "failed") == "3" and card(browser, "interrupted") == "2"
        assert card(browser, "recurring") == "1"
        wait(  # the dispatcher's worker row appears with the names it registers
            browser,
            lambda d: "no live worker" not in d.find_element(By.ID, "live").text,
        )
        shoot(browser, shots / "dashboard-overview.png", 1500)

        # The calls table, then narrowed by a filter.
        browser.get(base + "/calls")
        rows = browser.find_elements(By.CSS_SELECTOR, "table.calls tbody tr")
        assert len(rows) == 50  # a page
        shoot(browser, shots / "dashboard-calls.png", 1000)
        field = browser.find_element(By.NAME, "name")
        field.send_keys("chargeCard")
        browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
        wait(browser, ec.url_contains("name=chargeCard"))
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "table.calls tbody tr")) == 3)
        names = {td.text for td in browser.find_elements(By.CSS_SELECTOR, "table.calls td.name")}
        assert names == {"chargeCard"}

        # Run a parked call again: the worker runs it, and it fails a second time.
        parked = await db.fetchval(
            "SELECT min(id) FROM future_calls WHERE name = 'chargeCard' AND state = 'failed'"
        )
        browser.get(f"{base}/calls/{parked}")
        browser.find_element(By.XPATH, "//button[text()='Run again']").click()
        flash = wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, ".flash.ok")))
        assert f"Call {parked} is scheduled again" in flash.text  # type: ignore[attr-defined]
        await eventually(db, "SELECT attempts FROM future_calls WHERE id = $1", 2, parked)
        await eventually(db, "SELECT state FROM future_calls WHERE id = $1", "failed", parked)

        # The other pages render (their pictures stay with the test's files).
        browser.get(f"{base}/calls/{parked}")
        assert "CardDeclined" in browser.find_element(By.CSS_SELECTOR, "pre.error-text").text
        shoot(browser, tmp_path / "dashboard-call.png", 900)
        browser.get(base + "/chains")
        assert "0 8 * * *" in browser.page_source and "Europe/Paris" in browser.page_source
        shoot(browser, tmp_path / "dashboard-chains.png", 600)
        browser.get(base + "/workers")
        live = browser.find_element(By.ID, "live").text
        assert "Live dispatchers 1" in live and "sendMail" in live
        shoot(browser, tmp_path / "dashboard-workers.png", 700)

        # Pause a name from the overview's table of names.
        browser.get(base + "/")
        click(browser, "//tr[td/a[text()='sendMail']]//button[text()='Pause']")
        wait(browser, ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".flash"), "Paused"))
        assert await db.fetchval("SELECT array_agg(name) FROM future_calls_paused") == ["sendMail"]

        # A POST without the CSRF token (as another site's form would send) is refused.
        status, text = browser.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            fetch(arguments[0], {method: 'POST', body: new URLSearchParams({name: 'syncCrm'})})
              .then(async r => done([r.status, await r.text()]));
            """,
            base + "/pause",
        )
        assert status == 403 and "CSRF" in text
        assert await db.fetchval("SELECT count(*) FROM future_calls_paused") == 1
    finally:
        server.kill()
