"""Fault tests get a PostgreSQL cluster of their own, which they stop and restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ROOT, with_database


@dataclass
class Cluster:
    directory: Path
    admin_dsn: str

    def stop(self) -> None:
        import devdb

        devdb.stop(self.directory)

    def start(self) -> None:
        import devdb

        assert devdb.ensure(self.directory) == self.admin_dsn, "the cluster moved to another port"

    def restart(self) -> None:
        import devdb

        devdb.restart(self.directory)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    import devdb

    directory = Path(f"{devdb.datadir()}-faults")
    cluster = Cluster(directory, devdb.ensure(directory))
    yield cluster
    devdb.destroy(directory)


@pytest.fixture
def fault_dsn(cluster: Cluster) -> Iterator[str]:
    """A migrated database on the fault cluster, which the test may stop and restart."""
    cluster.start()
    name = f"faults_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(cluster.admin_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    dsn = with_database(cluster.admin_dsn, name)
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": dsn},
        check=True,
        capture_output=True,
    )
    yield dsn
    cluster.start()
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
