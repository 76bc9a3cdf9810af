"""A primary and a streaming standby of it, made with PostgreSQL's own tools, for the
failover tests.

    pair = ReplicaPair.create()          # initdb, start, pg_basebackup -R, start standby
    dsn = pair.dsn_multi_host("db")      # both hosts, target_session_attrs=read-write
    pair.wait_caught_up()                # the standby has replayed all the primary wrote
    pair.restart_primary()               # an in-place restart of the node taking writes
    pair.stop_primary()                  # fast (clean) or immediate (a crash)
    pair.promote()                       # the standby takes writes: dsn now lands there
    pair.destroy()

Both clusters live under one directory in /tmp (the ``postgres`` OS user runs them when
we are root, so it must be able to reach it), and reuse scripts/devdb.py's helpers and
server settings. They run the binaries of the suite's own cluster (``devdb.bindir()``:
the system's PostgreSQL 15, or the pip wheel's 16 under ``make test-pg16``), so initdb,
pg_basebackup and both servers are of one major version, the one under test.
Replication is asynchronous, as with most managed failovers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

import devdb  # noqa: E402

HOST = devdb.HOST
SUPERUSER = devdb.SUPERUSER


@dataclass
class Node:
    """One cluster of the pair (devdb's layout: pgdata/, port, postgres.log, socket/)."""

    cluster: devdb._Cluster

    @property
    def port(self) -> int:
        port = devdb._read_port(self.cluster)
        assert port is not None, f"{self.cluster.base} has no port yet"
        return port

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    @property
    def bindir(self) -> Path:
        """The binaries of this node's major version (its PG_VERSION)."""
        return devdb._bindir(self.cluster, as_created=True)

    def running(self) -> bool:
        return devdb._running(self.cluster, self.bindir)

    def log(self, lines: int = 40) -> str:
        return devdb._tail(self.cluster.log_file, lines)


@dataclass
class ReplicaPair:
    base: Path
    primary: Node
    standby: Node
    promoted: bool = field(default=False)

    # -- life cycle ---------------------------------------------------------------------

    @classmethod
    def create(cls, timeout: float = 60) -> ReplicaPair:
        bindir = devdb.bindir()  # the suite's cluster's binaries, so both are of its major
        base = Path(tempfile.mkdtemp(prefix="futurecalls-replica-", dir="/tmp"))
        _reachable(base)
        pair = cls(
            base, Node(devdb._Cluster(base / "primary")), Node(devdb._Cluster(base / "standby"))
        )
        try:
            # initdb --auth-host=trust also trusts replication connections from 127.0.0.1,
            # and wal_level=replica, max_wal_senders=10 are PostgreSQL's defaults.
            devdb._make_dir(pair.primary.cluster.base)
            devdb._up(pair.primary.cluster, bindir, same_port=False)
            devdb._make_dir(pair.standby.cluster.base)
            devdb._run(
                [
                    bindir / "pg_basebackup",
                    "-D",
                    pair.standby.cluster.pgdata,
                    "-h",
                    HOST,
                    "-p",
                    str(pair.primary.port),
                    "-U",
                    SUPERUSER,
                    "-R",  # standby.signal and primary_conninfo
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                ],
                pair.standby.cluster,
            )
            devdb._start(pair.standby.cluster, bindir, same_port=False)
            pair.wait_streaming(timeout)
        except BaseException:
            pair.destroy()
            raise
        return pair

    def destroy(self) -> None:
        for node in (self.primary, self.standby):
            if node.cluster.pgdata.is_dir() and node.running():
                devdb._run(
                    [
                        node.bindir / "pg_ctl",
                        "stop",
                        "-w",
                        "-m",
                        "immediate",
                        "-D",
                        node.cluster.pgdata,
                    ],
                    node.cluster,
                    check=False,
                )
        shutil.rmtree(self.base, ignore_errors=True)

    def stop_primary(self, mode: devdb.StopMode = "fast") -> None:
        """``fast``: a clean shutdown (the standby receives all WAL up to the shutdown
        checkpoint); ``immediate``: a crash, like a lost machine."""
        devdb._stop(self.primary.cluster, self.primary.bindir, mode)

    def restart_primary(self, mode: devdb.StopMode = "fast") -> None:
        """Stop the node that takes writes now (the standby once promoted) and start it
        again on the same port: an in-place restart. A standby that was streaming from it
        reconnects by itself (wal_retrieve_retry_interval)."""
        node = self.standby if self.promoted else self.primary
        devdb._stop(node.cluster, node.bindir, mode)
        devdb._start(node.cluster, node.bindir, same_port=True)

    def promote(self, timeout: float = 60) -> None:
        """``pg_ctl promote -w``: returns once the standby accepts writes."""
        devdb._run(
            [
                self.standby.bindir / "pg_ctl",
                "promote",
                "-w",
                "-t",
                str(int(timeout)),
                "-D",
                self.standby.cluster.pgdata,
            ],
            self.standby.cluster,
        )
        self.promoted = True
        deadline = time.monotonic() + timeout
        while _run(self._in_recovery(self.standby)):
            if time.monotonic() > deadline:
                raise AssertionError(f"the standby is still in recovery:\n{self.standby.log()}")
            time.sleep(0.1)

    # -- addresses ----------------------------------------------------------------------

    def dsn_multi_host(self, database: str = "postgres") -> str:
        """Both hosts, primary first; libpq and asyncpg skip the one that is down or
        read-only."""
        hosts = f"{HOST}:{self.primary.port},{HOST}:{self.standby.port}"
        return f"postgresql://{SUPERUSER}@{hosts}/{database}?target_session_attrs=read-write"

    # -- waiting ------------------------------------------------------------------------

    def wait_streaming(self, timeout: float = 60) -> None:
        """Until the primary's pg_stat_replication shows the standby streaming."""

        async def streaming() -> bool:
            conn = await asyncpg.connect(self.primary.dsn(), timeout=5)
            try:
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) > 0 FROM pg_stat_replication WHERE state = 'streaming'"
                    )
                )
            finally:
                await conn.close()

        deadline = time.monotonic() + timeout
        while not _run(streaming()):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the standby is not streaming after {timeout}s:\n{self.standby.log()}"
                )
            time.sleep(0.1)

    def wait_caught_up(self, timeout: float = 30) -> None:
        """Until the standby has replayed everything the primary had written when asked
        (its insert position: the dev settings commit with synchronous_commit=off)."""

        async def lsns() -> tuple[str, bool]:
            primary = await asyncpg.connect(self.primary.dsn(), timeout=5)
            try:
                target = await primary.fetchval("SELECT pg_current_wal_insert_lsn()::text")
            finally:
                await primary.close()
            return target, await self._replayed(target)

        target, done = _run(lsns())
        deadline = time.monotonic() + timeout
        while not done:
            if time.monotonic() > deadline:
                raise AssertionError(f"the standby did not replay up to {target} in {timeout}s")
            time.sleep(0.05)
            done = _run(self._replayed(target))

    async def _replayed(self, lsn: str) -> bool:
        standby = await asyncpg.connect(self.standby.dsn(), timeout=5)
        try:
            return bool(
                await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn)
            )
        finally:
            await standby.close()

    async def _in_recovery(self, node: Node) -> bool:
        conn = await asyncpg.connect(node.dsn(), timeout=5)
        try:
            return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
        finally:
            await conn.close()

    def postmaster_start_times(self) -> dict[str, object]:
        """pg_postmaster_start_time() of each running node (for explaining failures)."""

        async def ask(node: Node) -> object:
            conn = await asyncpg.connect(node.dsn(), timeout=5)
            try:
                return await conn.fetchval("SELECT pg_postmaster_start_time()")
            finally:
                await conn.close()

        return {
            name: _run(ask(node))
            for name, node in (("primary", self.primary), ("standby", self.standby))
            if node.running()
        }


def _run(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine from sync code, also while another event loop runs in this thread
    (the pytest-asyncio tests call the pair's blocking methods directly)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _reachable(path: Path) -> None:
    """Let the postgres OS user (when we are root) enter and write the pair's directory."""
    owner = devdb._owner()
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    path.chmod(0o700)
