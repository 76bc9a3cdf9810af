"""The pytest plugin, as an application's suite uses it: pytester runs small user suites
in a subprocess (pytest finds the plugin through its entry point) on a real database."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

APP = """
from pydantic import BaseModel

from fastapi_futurecalls import FutureCall, FutureCalls, Session

RAN: list[str] = []


class Hello(BaseModel):
    name: str
    tags: list[str] = []


class Greet(FutureCall[Hello]):
    async def invoke(self, session: Session, object: Hello | None) -> None:
        assert object is not None
        RAN.append(object.name)


futurecalls = FutureCalls()
futurecalls.register_future_call(Greet(), "greet")
"""

SUITE = """
import asyncio
from datetime import timedelta

import pytest

from fastapi_futurecalls import FutureCalls
from fastapi_futurecalls.testing import assert_scheduled as assert_scheduled_on
from myapp import RAN, Hello, futurecalls as app_futurecalls


async def test_schedule_assert_and_time_travel(
    futurecalls, futurecalls_session, assert_scheduled, refute_scheduled, run_due
):
    assert futurecalls is app_futurecalls and futurecalls.started
    await futurecalls_session.future_call_with_delay(
        "greet", Hello(name="ada", tags=["x"]), timedelta(hours=2), identifier="u1"
    )
    record = await assert_scheduled(
        "greet", identifier="u1", payload=Hello(name="ada", tags=["x"]),
        due_within=timedelta(hours=3),
    )
    assert record.payload == Hello(name="ada", tags=["x"]) and record.identifier == "u1"
    await assert_scheduled("greet", payload={"name": "ada"})  # a dict: these keys only
    await refute_scheduled("greet", due_within=timedelta(hours=1))  # not that soon
    await refute_scheduled("greet", payload=Hello(name="ada"))  # a model: all of it
    result = await run_due(within=timedelta(hours=3))
    assert (result.completed, RAN) == (1, ["ada"])
    await refute_scheduled("greet", identifier="u1")


async def test_calls_run_only_when_asked(futurecalls, futurecalls_session, all_scheduled):
    await futurecalls_session.future_call_with_delay(
        "greet", Hello(name="now"), timedelta(0), identifier="u-now"
    )
    await asyncio.sleep(0.5)
    assert [r.identifier for r in await all_scheduled("greet")] == ["u-now"]
    assert RAN == ["ada"]


async def test_the_helpers_import_without_the_fixtures(futurecalls: FutureCalls):
    record = await assert_scheduled_on(futurecalls, "greet", identifier="u-now")
    assert record.state == "scheduled"


async def test_a_missing_call_fails_listing_what_is_scheduled(
    futurecalls_session, assert_scheduled
):
    await futurecalls_session.future_call_with_delay(
        "greet", Hello(name="bob"), timedelta(days=1), identifier="u2"
    )
    await assert_scheduled("greet", identifier="u3", payload={"name": "bob"})


async def test_refute_fails_naming_the_call_found(futurecalls_session, refute_scheduled):
    await refute_scheduled("greet", identifier="u2")


def test_settings_are_given_back():
    assert app_futurecalls.settings.dsn is None and not app_futurecalls.started
"""


def write_user_project(pytester: pytest.Pytester, ini: str) -> None:
    pytester.makepyfile(myapp=APP)
    pytester.makeini("[pytest]\n" + textwrap.dedent(ini))


def test_a_user_suite_uses_the_fixtures_and_assertions(
    pytester: pytest.Pytester, dsn: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FUTURECALLS_TEST_DSN", dsn)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("FUTURECALLS_DSN", raising=False)
    write_user_project(pytester, "asyncio_mode = auto\nfuturecalls_app = myapp:futurecalls\n")
    pytester.makepyfile(test_user=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_a_missing_call_fails_listing_what_is_scheduled FAILED*",
            "*test_refute_fails_naming_the_call_found FAILED*",
        ]
    )
    output = result.stdout.str()
    assert (
        "AssertionError: no scheduled call matches name='greet', identifier='u3', "
        'payload containing {"name": "bob"}' in output
    ), output
    # What is scheduled, by due time: the call due now first, then bob's.
    listing = output[output.index("Scheduled calls, by due time:") :]
    assert listing.index("identifier='u-now'") < listing.index("identifier='u2'"), listing
    assert "greet identifier='u2' due " in listing and 'payload={"name":"bob","tags":[]}' in listing
    assert "expected no scheduled call matching name='greet', identifier='u2', found 1:" in output


def test_strict_mode_and_an_overridden_dsn_fixture(
    pytester: pytest.Pytester, dsn: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("FUTURECALLS_TEST_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("MY_OWN_TEST_DB", dsn)
    write_user_project(pytester, "asyncio_mode = strict\n")
    pytester.makeconftest(
        """
        import os

        import pytest

        from myapp import futurecalls


        @pytest.fixture
        def futurecalls_dsn():
            return os.environ["MY_OWN_TEST_DB"]


        @pytest.fixture
        def futurecalls_app():
            return futurecalls


        @pytest.fixture
        def futurecalls_settings():
            return {"execution_enabled": True, "poll_interval": 0.5}
        """
    )
    pytester.makepyfile(
        test_strict="""
        import asyncio
        from datetime import timedelta

        import pytest

        from myapp import RAN, Hello


        @pytest.mark.asyncio
        async def test_execution_enabled_by_the_user_runs_the_call(
            futurecalls, futurecalls_session, refute_scheduled
        ):
            assert futurecalls.settings.execution_enabled
            eve = Hello(name="eve")
            await futurecalls_session.future_call_with_delay("greet", eve, timedelta(0))
            for _ in range(100):
                if RAN:
                    break
                await asyncio.sleep(0.05)
            assert RAN == ["eve"]
            await refute_scheduled("greet")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_suite_that_uses_none_of_it_loads_nothing_heavy(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("FUTURECALLS_TEST_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_plain(request):
            assert request.config.pluginmanager.has_plugin("futurecalls")
            heavy = {"asyncpg", "fastapi", "sqlalchemy", "fastapi_futurecalls.futurecalls"}
            assert heavy.isdisjoint(sys.modules), heavy & set(sys.modules)

        def test_without_a_database_the_fixture_says_what_to_set(futurecalls_dsn):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*no test database for the futurecalls fixture: set FUTURECALLS_TEST_DSN*"]
    )
    off = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:futurecalls")
    off.assert_outcomes(failed=1, errors=1)  # turned off: has_plugin is false, no fixture
    off.stdout.fnmatch_lines(["*fixture 'futurecalls_dsn' not found*"])
