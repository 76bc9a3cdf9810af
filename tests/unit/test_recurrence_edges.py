"""Recurrence refuses, at scheduling time, what would poison a chain later, and its
methods raise nothing but InvalidScheduleError."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fastapi_futurecalls import InvalidScheduleError
from fastapi_futurecalls.recurrence import Recurrence

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def unchecked(cron: str | None, every: object, timezone: object) -> Recurrence:
    """A Recurrence as a row edited by hand would give, without the constructor's checks."""
    recurrence = object.__new__(Recurrence)
    for field, value in (("cron", cron), ("every", every), ("timezone", timezone)):
        object.__setattr__(recurrence, field, value)
    return recurrence


@pytest.mark.parametrize("start", [None, NOW])
def test_an_interval_whose_slots_overflow_is_refused_naming_every(start):
    recurrence = Recurrence(every=timedelta(days=3_000_000))
    with pytest.raises(InvalidScheduleError, match="every"):
        first = recurrence.first(start, NOW)
        recurrence.next(first, first)  # what the dispatcher does with the first slot
        raise AssertionError("unreachable when first() checks the slot after it")


@pytest.mark.parametrize(
    "every", [timedelta(0), timedelta(microseconds=1), timedelta(milliseconds=50), -timedelta(1)]
)
def test_an_interval_far_below_a_second_is_refused(every):
    with pytest.raises(InvalidScheduleError, match="every"):
        Recurrence(every=every)


def test_a_tenth_of_a_second_and_more_is_accepted():
    assert Recurrence(every=timedelta(milliseconds=100)).next(NOW, NOW) == NOW + timedelta(
        milliseconds=100
    )


@pytest.mark.parametrize(
    ("cron", "start"),
    [
        ("0 0 29 2 *", datetime(9999, 3, 1, tzinfo=UTC)),  # next 29 February is past 9999
        ("* * * * *", datetime(9999, 12, 30, tzinfo=UTC)),  # its second slot is past the end
    ],
)
def test_a_cron_whose_first_slots_cannot_be_computed_is_refused(cron, start):
    with pytest.raises(InvalidScheduleError, match="cron"):
        Recurrence(cron=cron).first(start, NOW)


@pytest.mark.parametrize("timezone", ["Europe/Nowhere", "America", "", "/etc/passwd", None, 5])
def test_an_unloadable_timezone_is_refused(timezone):
    with pytest.raises(InvalidScheduleError, match="timezone"):
        Recurrence(cron="0 * * * *", timezone=timezone)


@pytest.mark.parametrize(
    ("cron", "every", "timezone", "due"),
    [
        (None, timedelta(days=3_000_000), "UTC", NOW),  # OverflowError today
        (None, timedelta(days=1), "UTC", datetime(9999, 12, 29, 12, tzinfo=UTC)),
        (None, timedelta(0), "UTC", NOW),  # ZeroDivisionError today
        (None, "garbage", "UTC", NOW),
        ("garbage", None, "UTC", NOW),  # CronSimError today
        ("0 0 31 2 *", None, "UTC", NOW),
        ("0 * * * *", None, "No/Such_Zone", NOW),  # ZoneInfoNotFoundError today
        ("0 * * * *", None, None, NOW),
        ("0 0 29 2 *", None, "UTC", datetime(9999, 3, 1, tzinfo=UTC)),
    ],
)
def test_next_raises_only_invalid_schedule_error(cron, every, timezone, due):
    with pytest.raises(InvalidScheduleError):
        unchecked(cron, every, timezone).next(due, max(due, NOW))


def test_next_keeps_the_rhythm_exactly_over_a_long_gap():
    recurrence = Recurrence(every=timedelta(milliseconds=100))
    due = datetime(1, 1, 2, tzinfo=UTC)
    following = recurrence.next(due, NOW)
    assert NOW < following <= NOW + timedelta(milliseconds=100)
    assert (following - due) % timedelta(milliseconds=100) == timedelta(0)
