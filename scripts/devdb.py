#!/usr/bin/env python3
"""Throwaway local PostgreSQL cluster for developing and testing this checkout.

    python3 scripts/devdb.py [--datadir DIR] {ensure,status,stop,restart,destroy,path}

``ensure`` starts the cluster (creating it on first use) and prints its DSN, e.g.
``postgresql://postgres@127.0.0.1:54321/futurecalls``, on stdout; logs go to stderr.

The cluster lives outside the checkout, in
``${TMPDIR:-/tmp}/fastapi-futurecalls-pg-<hash of the checkout's path>`` (override with
``--datadir`` or ``$FUTURECALLS_DEVDB_DIR``): CI clones into a private ``mktemp -d``
directory that the ``postgres`` user could not enter. PostgreSQL refuses to run as
root, so under root the server runs as the ``postgres`` OS user. That directory holds
``pgdata/`` (the cluster), ``port`` (its TCP port, kept across restarts),
``postgres.log``, ``socket/`` (the Unix socket directory) and ``lock``.

Tests can put ``scripts/`` on ``sys.path``, ``import devdb`` and call ``ensure()``,
``stop()``, ``restart()``, ``status()`` and ``datadir()``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DATABASE = "futurecalls"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
DIR_ENV = "FUTURECALLS_DEVDB_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent

# A disposable dev/test cluster: durability is traded for speed (fsync=off and
# friends), and max_connections is raised for tests running many uvicorn workers.
SERVER_SETTINGS = {
    "listen_addresses": HOST,
    "max_connections": "300",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

StopMode = Literal["smart", "fast", "immediate"]
PathArg = str | os.PathLike[str] | None


class DevDBError(RuntimeError):
    """The cluster could not be managed; the CLI exits with ``exit_code``."""

    exit_code = 1


class PostgresNotFoundError(DevDBError):
    exit_code = 2


@dataclass(frozen=True)
class _Cluster:
    base: Path

    @property
    def pgdata(self) -> Path:
        return self.base / "pgdata"

    @property
    def port_file(self) -> Path:
        return self.base / "port"

    @property
    def log_file(self) -> Path:
        return self.base / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"


def datadir(override: PathArg = None) -> Path:
    """The directory holding this checkout's cluster (``pgdata/`` is inside it)."""
    override = override or os.environ.get(DIR_ENV) or None
    if override is not None:
        return Path(override).resolve()
    digest = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:10]
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"fastapi-futurecalls-pg-{digest}"


def ensure(directory: PathArg = None) -> str:
    """Start the cluster if needed (creating it on first use) and return its DSN."""
    cluster = _Cluster(datadir(directory))
    bindir = _bindir()
    with _locked(cluster):
        return _dsn(_up(cluster, bindir, same_port=False))


def status(directory: PathArg = None) -> str | None:
    """The DSN if the cluster is running, else None."""
    cluster = _Cluster(datadir(directory))
    if not cluster.pgdata.is_dir() or not _running(cluster, _bindir()):
        return None
    port = _read_port(cluster)
    return None if port is None else _dsn(port)


def stop(directory: PathArg = None, mode: StopMode = "fast") -> None:
    """Stop the cluster; nothing happens if it is not running."""
    cluster = _Cluster(datadir(directory))
    if not cluster.pgdata.is_dir():
        return
    bindir = _bindir()
    with _locked(cluster):
        _stop(cluster, bindir, mode)


def restart(directory: PathArg = None, mode: StopMode = "fast") -> None:
    """Stop the cluster (``mode="immediate"`` simulates a crash) and start it on the same port."""
    cluster = _Cluster(datadir(directory))
    bindir = _bindir()
    with _locked(cluster):
        _stop(cluster, bindir, mode)
        _up(cluster, bindir, same_port=True)


def destroy(directory: PathArg = None) -> None:
    """Stop the cluster and delete everything this script created for it."""
    cluster = _Cluster(datadir(directory))
    if not cluster.base.is_dir():
        return
    stop(directory, mode="immediate")
    for name in ("pgdata", "pgdata.tmp", "socket"):
        shutil.rmtree(cluster.base / name, ignore_errors=True)
    for name in ("port", "postgres.log", "lock"):
        (cluster.base / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # only if we emptied it: never rm -r a user's dir
        cluster.base.rmdir()


def _up(cluster: _Cluster, bindir: Path, *, same_port: bool) -> int:
    """Under the lock: initialize and start the cluster as needed; return its port."""
    if not _running(cluster, bindir):
        if not cluster.pgdata.is_dir():
            _initdb(cluster, bindir)
        _start(cluster, bindir, same_port=same_port)
    port = _read_port(cluster)
    if port is None:
        raise DevDBError(f"the cluster is running but {cluster.port_file} is missing")
    _create_database(cluster, bindir, port)
    return port


def _initdb(cluster: _Cluster, bindir: Path) -> None:
    # Build into a temporary directory and rename it, so an interrupted initdb
    # never leaves a half-made pgdata/ behind.
    tmp = cluster.base / "pgdata.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _log(f"creating a PostgreSQL cluster in {cluster.pgdata}")
    command: list[str | Path] = [bindir / "initdb", "-D", tmp, "-U", SUPERUSER, "--no-sync"]
    command += ["--encoding=UTF8", "--no-locale", "--auth-local=trust", "--auth-host=trust"]
    try:
        _run(command, cluster)
    except DevDBError as exc:
        if _owner() is not None:
            exc.add_note(
                f"hint: the 'postgres' user must be able to reach {cluster.base};"
                f" point ${DIR_ENV} (or $TMPDIR) somewhere it can, such as /tmp"
            )
        raise
    tmp.rename(cluster.pgdata)


def _start(cluster: _Cluster, bindir: Path, *, same_port: bool) -> None:
    _make_dir(cluster.socket_dir)
    port = _read_port(cluster)
    output = ""
    for _ in range(3):
        if port is None or (not same_port and not _port_free(port)):
            port = _free_port()
        _write_port(cluster, port)
        options = [f"-p {port}", f"-k {shlex.quote(str(cluster.socket_dir))}"]
        options += [f"-c {key}={value}" for key, value in SERVER_SETTINGS.items()]
        command: list[str | Path] = [bindir / "pg_ctl", "start", "-w", "-D", cluster.pgdata]
        command += ["-l", cluster.log_file, "-o", " ".join(options)]
        result = _run(command, cluster, check=False)
        if result.returncode == 0:
            _log(f"PostgreSQL is running on port {port} (log: {cluster.log_file})")
            return
        output = result.stdout + _tail(cluster.log_file)
        if same_port:
            break
        port = None  # we may have lost a race for the port: try another one
    raise DevDBError(f"could not start PostgreSQL in {cluster.pgdata}:\n{output}")


def _stop(cluster: _Cluster, bindir: Path, mode: StopMode) -> None:
    if _running(cluster, bindir):
        _run([bindir / "pg_ctl", "stop", "-w", "-m", mode, "-D", cluster.pgdata], cluster)
        _log("PostgreSQL stopped")


def _running(cluster: _Cluster, bindir: Path) -> bool:
    if not cluster.pgdata.is_dir():
        return False
    result = _run([bindir / "pg_ctl", "status", "-D", cluster.pgdata], cluster, check=False)
    return result.returncode == 0


def _create_database(cluster: _Cluster, bindir: Path, port: int) -> None:
    psql = bindir / "psql" if (bindir / "psql").exists() else Path(shutil.which("psql") or "psql")
    sql = (
        f"SELECT 'CREATE DATABASE {DATABASE}'"
        f" WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}') \\gexec\n"
    )
    command: list[str | Path] = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]
    command += ["-h", cluster.socket_dir, "-p", str(port), "-U", SUPERUSER]
    _run(command, cluster, stdin=sql)


def _bindir() -> Path:
    """A directory with the PostgreSQL server binaries (initdb, pg_ctl, postgres)."""
    candidates = [Path(p).resolve().parent for p in [shutil.which("initdb")] if p]
    debian = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    debian.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for candidate in [*candidates, *debian]:
        if all(os.access(candidate / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    raise PostgresNotFoundError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in"
        " /usr/lib/postgresql/*/bin. Install PostgreSQL (e.g. `apt-get install postgresql`)"
        " or set DATABASE_URL to an existing database."
    )


def _run(
    command: Sequence[str | Path],
    cluster: _Cluster,
    *,
    check: bool = True,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool as the cluster's owner, from the cluster's directory."""
    owner = _owner()
    # Drop libpq/PG* variables (PGPORT, PGOPTIONS, ...): every setting is explicit here.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    result = subprocess.run(
        [str(arg) for arg in command],
        cwd=cluster.base,
        env=env,
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        user=owner.pw_uid if owner else None,
        group=owner.pw_gid if owner else None,
        extra_groups=[] if owner else None,
    )
    if check and result.returncode != 0:
        raise DevDBError(f"{Path(command[0]).name} failed:\n{result.stdout}")
    return result


def _owner() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise DevDBError(
            "running as root, but there is no 'postgres' user to run PostgreSQL as"
        ) from None


def _make_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = _owner()
    if owner and path.stat().st_uid != owner.pw_uid:
        os.chown(path, owner.pw_uid, owner.pw_gid)


@contextlib.contextmanager
def _locked(cluster: _Cluster) -> Iterator[None]:
    """Serialize concurrent invocations (parallel make jobs, test workers)."""
    _make_dir(cluster.base)
    with open(cluster.base / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_port(cluster: _Cluster) -> int | None:
    try:
        return int(cluster.port_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _write_port(cluster: _Cluster, port: int) -> None:
    cluster.port_file.write_text(f"{port}\n")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # Like PostgreSQL itself: lingering TIME_WAIT connections do not block the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _dsn(port: int) -> str:
    return f"postgresql://{SUPERUSER}@{HOST}:{port}/{DATABASE}"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


def _log(message: str) -> None:
    print(f"devdb: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    commands = {
        "ensure": "start the cluster if needed (creating it) and print its DSN",
        "status": "print the DSN if the cluster is running, else exit 1",
        "stop": "stop the cluster (fast shutdown); fine if it is not running",
        "restart": "stop and start the cluster on the same port, print its DSN",
        "destroy": "stop the cluster and delete its directory",
        "path": "print the cluster's directory",
    }
    parser = argparse.ArgumentParser(
        prog="devdb.py",
        description="Manage this checkout's throwaway PostgreSQL cluster.",
        epilog="commands:\n" + "\n".join(f"  {name:9}{text}" for name, text in commands.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=commands, metavar="COMMAND", help="see below")
    parser.add_argument("--datadir", help=f"cluster directory (default: ${DIR_ENV} or {datadir()})")
    args = parser.parse_args(argv)
    try:
        match args.command:
            case "ensure":
                print(ensure(args.datadir))
            case "status":
                dsn = status(args.datadir)
                if dsn is None:
                    return 1
                print(dsn)
            case "stop":
                stop(args.datadir)
            case "restart":
                restart(args.datadir)
                print(status(args.datadir))
            case "destroy":
                destroy(args.datadir)
            case "path":
                print(datadir(args.datadir))
    except DevDBError as exc:
        print(
            "devdb: error:", "\n".join([str(exc), *getattr(exc, "__notes__", [])]), file=sys.stderr
        )
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
