"""The release: the built wheel holds everything the package needs, installs into a fresh
virtualenv (dependencies from the index), migrates a database with its own command and
runs the README's quickstart, away from this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

from tests.conftest import ROOT, _admin, with_database

pytestmark = pytest.mark.slow
PACKAGE = ROOT / "fastapi_futurecalls"

QUICKSTART = """
import asyncio
from datetime import timedelta

from fastapi import Depends, FastAPI
from pydantic import BaseModel

import fastapi_futurecalls
from fastapi_futurecalls import FutureCall, FutureCalls, Session

ran = asyncio.Event()


class Signup(BaseModel):
    user_id: int
    email: str


class WelcomeMail(FutureCall[Signup]):
    async def invoke(self, session: Session, object: Signup | None) -> None:
        print(f"welcome mail to {object.email}, call {session.call.id}", flush=True)
        ran.set()


futurecalls = FutureCalls()  # DSN from DATABASE_URL
futurecalls.register_future_call(WelcomeMail(), "welcomeMail")
app = FastAPI(lifespan=futurecalls.lifespan)


@app.post("/signup")
async def signup(body: Signup, session: Session = Depends(futurecalls.session)):
    return await session.future_call_with_delay(
        "welcomeMail", body, timedelta(seconds=0), identifier=f"user-{body.user_id}"
    )


async def main() -> None:
    print("package at", fastapi_futurecalls.__file__)
    async with app.router.lifespan_context(app):  # what uvicorn does
        call_id = await signup(Signup(user_id=1, email="ada@example.com"), futurecalls.session())
        print("scheduled", call_id, flush=True)
        await asyncio.wait_for(ran.wait(), timeout=20)
        later = await futurecalls.session().future_call_recurring(
            "welcomeMail", Signup(user_id=2, email="bob@example.com"),
            identifier="paris", cron="0 8 * * *", timezone="Europe/Paris",
        )
        print("recurring", later, flush=True)


asyncio.run(main())
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (built,) = out.glob("fastapi_futurecalls-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only the wheel and its dependencies."""
    where = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    done = subprocess.run(
        [str(where / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return where


@pytest.fixture
def empty_dsn(admin_dsn: str) -> Iterator[str]:
    name = f"futurecalls_w_{uuid.uuid4().hex[:12]}"
    _admin(admin_dsn, f"CREATE DATABASE {name}")
    yield with_database(admin_dsn, name)
    _admin(admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def package_files() -> set[str]:
    """Every file of the package in this checkout, bytecode aside."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_wheel_holds_the_package_and_its_metadata(wheel: Path):
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0 and "PASSED" in checked.stdout, checked.stdout + checked.stderr
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert package_files() - names == set()  # every source, template, SQL and static file
    assert {
        "fastapi_futurecalls/py.typed",
        "fastapi_futurecalls/sql/queries.sql",
        "fastapi_futurecalls/dashboard/queries.sql",
        "fastapi_futurecalls/dashboard/templates/base.html",
        "fastapi_futurecalls/dashboard/static/htmx.min.js",
        "fastapi_futurecalls/migrations/env.py",
        "fastapi_futurecalls/migrations/versions/0001_create_future_calls.py",
        "fastapi_futurecalls/pytest_plugin.py",
        f"{dist_info}/licenses/LICENSE",
    } <= names
    assert not [n for n in names if n.startswith(("tests/", "example_app/", "bench/"))]
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("tzdata") for r in requires)
    classifiers = metadata.get_all("Classifier") or []
    assert {
        "Framework :: FastAPI",
        "Typing :: Typed",
        "Programming Language :: Python :: 3.13",
    } <= set(classifiers)
    assert any(u.startswith("Changelog, ") for u in metadata.get_all("Project-URL") or [])
    assert "fastapi-futurecalls = fastapi_futurecalls.cli:main" in entry_points
    assert "futurecalls = fastapi_futurecalls.pytest_plugin" in entry_points


def test_the_installed_wheel_migrates_and_runs_the_quickstart(
    venv: Path, empty_dsn: str, tmp_path: Path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUTURECALLS_", "PYTHON"))}
    env["DATABASE_URL"] = empty_dsn

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    migrated = run(str(venv / "bin" / "fastapi-futurecalls"), "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("upgraded from base (no tables) to futurecalls_")
    again = run(str(venv / "bin" / "fastapi-futurecalls"), "migrate", "head")
    assert again.returncode == 0 and "nothing to do" in again.stdout

    (tmp_path / "quickstart.py").write_text(textwrap.dedent(QUICKSTART))
    done = run(str(venv / "bin" / "python"), "quickstart.py")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"package at {venv}"), lines  # the wheel, not this checkout
    scheduled = int(lines[1].removeprefix("scheduled "))
    assert f"welcome mail to ada@example.com, call {scheduled}" in lines
    assert lines[-1].startswith("recurring ")  # a named time zone (tzdata)
