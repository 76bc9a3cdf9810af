"""Helpers for your test suite: time travel and assertions on what is scheduled.

    from fastapi_futurecalls.testing import assert_scheduled, refute_scheduled, run_due

    async def test_drip_campaign(futurecalls):
        ...  # sign a user up
        await assert_scheduled(futurecalls, "sendMail", identifier="user-1",
                               payload={"template": "welcome"}, due_within=timedelta(hours=1))
        result = await run_due(futurecalls, within=timedelta(days=7))
        assert result.completed == 3
        await refute_scheduled(futurecalls, "sendMail", identifier="user-1")

``run_due`` runs calls against the real database, in due order (one at a time by
default), as soon as they are asked for: a week of a drip campaign takes milliseconds.
Follow-up calls they schedule within the span run too; recurring chains run once for each
slot in it. Due times are not changed: a call due in three days is run now and leaves the
table.

The pytest plugin (``fastapi_futurecalls.pytest_plugin``, loaded by pytest on its own once
the package is installed) offers each helper as a fixture bound to its started
``futurecalls`` fixture.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .futurecalls import DueRun, FutureCalls
from .records import FutureCallRecord

__all__ = ["all_scheduled", "assert_scheduled", "refute_scheduled", "run_due"]

# How many calls an assertion's message lists, at most.
SHOWN = 20
# How many stored calls of one name an assertion looks through, at most.
SEARCHED = 10_000


async def run_due(
    futurecalls: FutureCalls, within: timedelta = timedelta(0), *, concurrency: int = 1
) -> DueRun:
    """Run every call of ``futurecalls`` (started) due now or within ``within``, wait for
    them, and return how they ended."""
    return await futurecalls.run_due(within, concurrency=concurrency)


async def all_scheduled(
    futurecalls: FutureCalls, name: str | None = None, *, identifier: str | None = None
) -> list[FutureCallRecord]:
    """The calls waiting to run (state ``scheduled``, recurring chains included), by due
    time, optionally only those of ``name`` and ``identifier``."""
    return await futurecalls.session().list_future_calls(
        name=name, identifier=identifier, state="scheduled", limit=SEARCHED
    )


async def assert_scheduled(
    futurecalls: FutureCalls,
    name: str,
    *,
    identifier: str | None = None,
    payload: BaseModel | Mapping[str, Any] | None = None,
    due_within: timedelta | None = None,
) -> FutureCallRecord:
    """Assert that a call of ``name`` is scheduled, and return it (the first due of those
    that match). Raises ``AssertionError`` listing what is scheduled when none matches.

    - ``identifier``: the call's identifier must be this one.
    - ``payload``: a model must equal the call's data, compared as JSON; a dict must be
      contained in it: each key given has this value (compared as JSON), other keys are
      not looked at (Oban's ``args`` matching).
    - ``due_within``: the call falls due at the latest this long from now (this
      machine's clock); a call already due matches.
    """
    __tracebackhide__ = True  # pytest shows the test's line, not these
    found = await _matching(futurecalls, name, identifier, payload, due_within)
    if found:
        return found[0]
    wanted = _describe(name, identifier, payload, due_within)
    raise AssertionError(
        f"no scheduled call matches {wanted}\n" + await _scheduled_listing(futurecalls)
    )


async def refute_scheduled(
    futurecalls: FutureCalls,
    name: str,
    *,
    identifier: str | None = None,
    payload: BaseModel | Mapping[str, Any] | None = None,
    due_within: timedelta | None = None,
) -> None:
    """Assert that no call matching these (as in :func:`assert_scheduled`) is scheduled;
    ``AssertionError`` lists the ones that are."""
    __tracebackhide__ = True
    found = await _matching(futurecalls, name, identifier, payload, due_within)
    if found:
        wanted = _describe(name, identifier, payload, due_within)
        lines = "\n".join(_line(record) for record in found[:SHOWN])
        more = f"\n  ... and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
        raise AssertionError(
            f"expected no scheduled call matching {wanted}, found {len(found)}:\n{lines}{more}"
        )


async def _matching(
    futurecalls: FutureCalls,
    name: str,
    identifier: str | None,
    payload: BaseModel | Mapping[str, Any] | None,
    due_within: timedelta | None,
) -> list[FutureCallRecord]:
    records = await all_scheduled(futurecalls, name, identifier=identifier)
    latest = None if due_within is None else datetime.now(UTC) + due_within
    wanted = None if payload is None else _as_json(payload)
    return [
        record
        for record in records
        if (latest is None or record.due_at <= latest)
        and (
            wanted is None or _payload_matches(wanted, record, exact=isinstance(payload, BaseModel))
        )
    ]


def _as_json(payload: BaseModel | Mapping[str, Any]) -> Any:
    if isinstance(payload, BaseModel):
        return json.loads(payload.model_dump_json())
    if isinstance(payload, Mapping):
        return to_jsonable_python(dict(payload))
    raise TypeError(f"payload must be a pydantic model or a dict, got {type(payload).__name__}")


def _payload_matches(wanted: Any, record: FutureCallRecord, *, exact: bool) -> bool:
    stored = None if record.payload_json is None else json.loads(record.payload_json)
    if exact:
        return bool(stored == wanted)
    return isinstance(stored, dict) and all(
        key in stored and stored[key] == value for key, value in wanted.items()
    )


def _describe(
    name: str,
    identifier: str | None,
    payload: BaseModel | Mapping[str, Any] | None,
    due_within: timedelta | None,
) -> str:
    parts = [f"name={name!r}"]
    if identifier is not None:
        parts.append(f"identifier={identifier!r}")
    if payload is not None:
        kind = "payload" if isinstance(payload, BaseModel) else "payload containing"
        parts.append(f"{kind} {json.dumps(_as_json(payload), sort_keys=True)}")
    if due_within is not None:
        parts.append(f"due within {due_within}")
    return ", ".join(parts)


async def _scheduled_listing(futurecalls: FutureCalls) -> str:
    records = await futurecalls.session().list_future_calls(state="scheduled", limit=SHOWN + 1)
    if not records:
        return "Nothing is scheduled."
    shown = "\n".join(_line(record) for record in records[:SHOWN])
    more = (
        f"\n  ... and more (showing the first {SHOWN} by due time)" if len(records) > SHOWN else ""
    )
    return f"Scheduled calls, by due time:\n{shown}{more}"


def _line(record: FutureCallRecord) -> str:
    now = datetime.now(UTC)
    due = record.due_at.astimezone(UTC)
    ahead = timedelta(seconds=round((due - now).total_seconds()))
    when = f"in {ahead}" if due > now else "due now"
    schedule = f" {record.cron or f'every {record.every}'}" if record.recurring else ""
    data = record.payload_json if record.payload_json is not None else "null"
    if len(data) > 200:
        data = data[:197] + "..."
    return (
        f"  #{record.id} {record.name} identifier={record.identifier!r} "
        f"due {due:%Y-%m-%d %H:%M:%S} UTC ({when}){schedule} payload={data}"
    )
