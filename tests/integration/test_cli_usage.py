"""The command's bad values are usage errors: exit 2, one line on stderr, no traceback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

TARGET = "tests.apps.worker_app:futurecalls"


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": dsn, "FUTURECALLS_TEST_LOG": "/dev/null"}
    return subprocess.run(
        [sys.executable, "-m", "fastapi_futurecalls", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("list", TARGET, "--state", "done"), "state"),
        (("list", TARGET, "--limit", "0"), "limit"),
        (("list", TARGET, "--identifier", ""), "identifier"),
        (("cancel", TARGET, ""), "identifier"),
    ],
)
async def test_bad_values_exit_2_without_a_traceback(dsn: str, db, args, named):
    result = await asyncio.to_thread(cli, dsn, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and named in result.stderr
    assert result.stdout == ""


async def test_good_values_still_exit_0(dsn: str, db):
    result = await asyncio.to_thread(cli, dsn, "list", TARGET, "--state", "failed", "--limit", "1")
    assert (result.returncode, result.stdout.strip()) == (0, "no future calls")


async def test_pause_resume_and_paused(dsn: str, db):
    assert (
        await asyncio.to_thread(cli, dsn, "pause", TARGET, "record")
    ).stdout == "paused record\n"
    assert await db.fetchval("SELECT array_agg(name) FROM future_calls_paused") == ["record"]
    again = await asyncio.to_thread(cli, dsn, "pause", TARGET, "record")
    assert (again.returncode, again.stdout) == (0, "record was paused already\n")
    listed = await asyncio.to_thread(cli, dsn, "paused", TARGET)
    assert listed.stdout == "record\n"
    resumed = await asyncio.to_thread(cli, dsn, "resume", TARGET, "record")
    assert (resumed.returncode, resumed.stdout) == (0, "resumed record\n")
    assert await db.fetchval("SELECT count(*) FROM future_calls_paused") == 0
    assert (await asyncio.to_thread(cli, dsn, "paused", TARGET)).stdout == "no paused names\n"
    bad = await asyncio.to_thread(cli, dsn, "pause", TARGET, "")
    assert bad.returncode == 2 and "name" in bad.stderr and "Traceback" not in bad.stderr


async def test_prune_deletes_parked_calls_older_than_asked(dsn: str, db):
    await db.execute(
        "INSERT INTO future_calls (name, due_at, state, finished_at)"
        " VALUES ('record', now(), 'failed', now() - interval '2 hours'),"
        "        ('record', now(), 'interrupted', now() - interval '1 minute')"
    )
    done = await asyncio.to_thread(cli, dsn, "prune", TARGET, "--older-than", "3600")
    assert (done.returncode, done.stdout) == (0, "pruned 1\n")
    assert await db.fetchval("SELECT count(*) FROM future_calls") == 1
    for value in ("-1", "1e300", "nan"):
        bad = await asyncio.to_thread(cli, dsn, "prune", TARGET, "--older-than", value)
        assert bad.returncode == 2 and "older-than" in bad.stderr, (value, bad.stderr)
    by_default = await asyncio.to_thread(cli, dsn, "prune", TARGET)  # 14 days: keeps it
    assert (by_default.returncode, by_default.stdout) == (0, "pruned 0\n")
