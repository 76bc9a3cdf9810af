"""Prometheus metrics under real `uvicorn --workers 3`: whichever worker answers a scrape,
the counters are the host's (prometheus-client's multiprocess mode), the gauges the
fleet's (the database)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.apps.worker_app import Job
from tests.support import RunLog, schedule_jobs, wait_for

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_every_scrape_counts_the_runs_of_all_workers(
    dsn: str, db: asyncpg.Connection, serve, runlog: RunLog, tmp_path: Path
):
    shared = tmp_path / "prometheus"
    shared.mkdir()
    server = serve(
        3, dsn, METRICS="1", PROMETHEUS_MULTIPROC_DIR=str(shared), FUTURECALLS_POLL_INTERVAL="30"
    )
    await schedule_jobs(dsn, [Job(n=i) for i in range(300)])
    await wait_for(lambda: len(runlog.events("done")) >= 300, within=60)
    by_pid = {pid for _, pid in runlog.events("done")}
    assert len(by_pid) >= 2, "the test needs the runs spread over workers"
    key = ("futurecalls_completed_total", (("name", "record"),))

    # Counts reach the shared files within about a second of each run, and at once when
    # a worker goes idle: its next tick is 30 s away. A scrape hands over only the counts
    # of the worker that answers it, so the first scrape, a moment after the last run,
    # must already have every worker's.
    await asyncio.sleep(1.0)
    assert scrape(server.url).get(key) == 300
    assert all(scrape(server.url).get(key) == 300 for _ in range(5))
    figures = scrape(server.url)
    assert figures["futurecalls_started_total", (("name", "record"),)] == 300
    assert figures["futurecalls_lateness_seconds_count", (("name", "record"),)] == 300
    assert figures["futurecalls_calls", (("state", "scheduled"),)] == 0

    server.stop()  # each worker adds its run statistics on its ticks and as it stops
    assert await db.fetchval("SELECT sum(succeeded) FROM future_calls_stats") == 300
    workers = await db.fetchval("SELECT count(DISTINCT worker) FROM future_calls_stats")
    assert workers == len(by_pid)
