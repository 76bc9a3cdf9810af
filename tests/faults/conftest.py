"""Fault tests get a PostgreSQL cluster of their own, which they stop and restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ROOT, with_database
from tests.replica import ReplicaPair
from tests.tcpproxy import TcpProxy


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
    migrate(dsn)
    yield dsn
    cluster.start()
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def migrate(dsn: str) -> None:
    """alembic upgrade head on ``dsn``."""
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": dsn},
        check=True,
        capture_output=True,
    )


@dataclass
class Replicated:
    """A migrated database on a primary with a streaming standby (tests/replica.py).

    ``dsn`` names both hosts (target_session_attrs=read-write): it follows a promotion.
    ``primary_dsn`` and ``standby_dsn`` name one host each, for looking and for the app's
    SQLAlchemy engine (SQLAlchemy's URL parser rejects the multi-host form)."""

    pair: ReplicaPair
    database: str
    dsn: str

    @property
    def primary_dsn(self) -> str:
        return self.pair.primary.dsn(self.database)

    @property
    def standby_dsn(self) -> str:
        return self.pair.standby.dsn(self.database)

    @property
    def writable_dsn(self) -> str:
        """The single-host DSN of whichever node takes writes now."""
        return self.standby_dsn if self.pair.promoted else self.primary_dsn


@pytest.fixture
def replica_pair() -> Iterator[Replicated]:
    """A fresh primary + streaming standby for this test alone, with a migrated database
    replicated to the standby; both are stopped and deleted afterwards."""
    pair = ReplicaPair.create()
    try:
        name = f"replica_{uuid.uuid4().hex[:12]}"

        async def create() -> None:
            conn = await asyncpg.connect(pair.primary.dsn())
            try:
                await conn.execute(f"CREATE DATABASE {name}")
            finally:
                await conn.close()

        asyncio.run(create())
        migrate(pair.primary.dsn(name))
        pair.wait_caught_up()
        yield Replicated(pair, name, pair.dsn_multi_host(name))
    finally:
        pair.destroy()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[int], TcpProxy]]:
    """tcp_proxy(port) puts a tests/tcpproxy.py proxy in front of 127.0.0.1:port; every
    proxy is closed at the end of the test."""
    proxies: list[TcpProxy] = []

    def make(port: int) -> TcpProxy:
        proxy = TcpProxy(port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
