"""Real uvicorn processes for the multi-worker tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Uvicorn:
    """`uvicorn APP --workers N` on a free port, its output in a log file."""

    def __init__(self, app: str, dsn: str, workers: int, log: Path, **env: str) -> None:
        self.workers = workers
        self.port = free_port()
        self.log_path = log
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                "--workers",
                str(workers),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "info",
            ],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": dsn, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"uvicorn exited early:\n{self.output()}")
            # Every worker, not just the first: one still starting when a test breaks the
            # database would fail its startup and take the whole server down.
            started = self.output(tail=None).count("Application startup complete.")
            try:
                healthy = httpx.get(self.url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy and started >= self.workers:
                return
            time.sleep(0.1)
        raise AssertionError(f"uvicorn not ready after {timeout}s:\n{self.output()}")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return [int(pid) for pid in out.split()]

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a deploy would; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()

    def output(self, tail: int | None = 5000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text if tail is None else text[-tail:]
