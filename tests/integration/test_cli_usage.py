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
