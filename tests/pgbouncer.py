"""A real pgbouncer in front of the test database, for the pooler tests.

`make test` installs pgbouncer from the system's packages when it is missing and it can
(root with apt-get). Like PostgreSQL, pgbouncer refuses to run as root: under root it runs
as the ``postgres`` user."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest

from tests.processes import free_port

Mode = str  # "session" or "transaction"


def executable() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found is None:
        pytest.fail(
            "pgbouncer is not installed: `make test` installs it as root "
            "(apt-get install pgbouncer), or install it yourself"
        )
    return found


class PgBouncer:
    """``pgbouncer`` on a free loopback port, pooling in ``mode`` towards ``dsn``'s server."""

    def __init__(self, dsn: str, mode: Mode) -> None:
        target = urlsplit(dsn)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="futurecalls-pgbouncer-"))
        server = " ".join(
            f"{key}={value}"
            for key, value in {
                "host": target.hostname or "127.0.0.1",
                "port": target.port or 5432,
                "user": unquote(target.username or "postgres"),
                "password": unquote(target.password or ""),
            }.items()
            if value != ""
        )
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = {server}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            f"pool_mode = {mode}\n"
            "default_pool_size = 5\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        owner = _owner()
        if owner is not None:
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.process = subprocess.Popen(
            [executable(), str(self.dir / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            extra_groups=[] if owner else None,
        )
        user = f"{target.username}@" if target.username else ""
        self.dsn = urlunsplit(target._replace(netloc=f"{user}127.0.0.1:{self.port}"))
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        log = self.dir / "pgbouncer.log"
        raise RuntimeError(f"pgbouncer did not start:\n{log.read_text() if log.exists() else ''}")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _owner() -> pwd.struct_passwd | None:
    return pwd.getpwnam("postgres") if os.geteuid() == 0 else None
