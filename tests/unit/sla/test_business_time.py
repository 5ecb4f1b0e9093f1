"""Business time against a brute-force minute count: DST changes, a public holiday, time off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leadflow.business_time import (
    Timeline,
    WorkingCalendar,
    add_business_minutes,
    business_minutes_between,
    is_holiday,
    next_free_slots,
    working_intervals,
)
from leadflow.routing.rules import Rep, parse_hours

pytestmark = pytest.mark.unit

NEW_YORK = ZoneInfo("America/New_York")
# Sunday night hours straddle both 2026 DST changes (Mar 8 and Nov 1, at 02:00 local).
HOURS = parse_hours(
    {"mon-fri": ["09:00-12:00", "13:00-17:30"], "sun": ["00:30-03:30"], "sat": ["22:00-24:00"]}
)
TIME_OFF = (
    (datetime(2026, 11, 24, 15, 0, tzinfo=UTC), datetime(2026, 11, 24, 18, 45, tzinfo=UTC)),
)
CALENDAR = WorkingCalendar(NEW_YORK, HOURS, "US", TIME_OFF)  # Thanksgiving: Thu 2026-11-26
BASES = [
    datetime(2026, 3, 6, tzinfo=UTC),  # spring forward
    datetime(2026, 10, 30, tzinfo=UTC),  # fall back
    datetime(2026, 11, 23, tzinfo=UTC),  # time off, then Thanksgiving
]


def brute_force_minutes(start: datetime, end: datetime) -> int:
    """Count UTC minutes one by one: working if the local wall clock is in the day's hours,
    the local date is no holiday and the minute is not time off."""
    count = 0
    moment = start
    while moment < end:
        local = moment.astimezone(NEW_YORK)
        minute = local.hour * 60 + local.minute
        if (
            not is_holiday(CALENDAR, local.date())
            and any(a <= minute < b for a, b in HOURS.get(local.weekday(), ()))
            and not any(a <= moment < b for a, b in TIME_OFF)
        ):
            count += 1
        moment += timedelta(minutes=1)
    return count


window = st.tuples(
    st.sampled_from(BASES),
    st.integers(min_value=0, max_value=5 * 24 * 60),
    st.integers(min_value=0, max_value=3 * 24 * 60),
)


@settings(max_examples=60, deadline=None)
@given(window)
def test_minutes_between_matches_brute_force(case: tuple[datetime, int, int]) -> None:
    base, offset, length = case
    start = base + timedelta(minutes=offset)
    end = start + timedelta(minutes=length)
    assert business_minutes_between(CALENDAR, start, end) == brute_force_minutes(start, end)


@settings(max_examples=60, deadline=None)
@given(window)
def test_add_minutes_is_the_earliest_instant_with_that_much_work(
    case: tuple[datetime, int, int],
) -> None:
    base, offset, minutes = case
    start = base + timedelta(minutes=offset)
    minutes = minutes % 1500
    result = add_business_minutes(CALENDAR, start, minutes)
    assert business_minutes_between(CALENDAR, start, result) == minutes
    if minutes:  # one minute earlier is not enough
        assert brute_force_minutes(start, result - timedelta(minutes=1)) == minutes - 1


def test_dst_days_keep_their_wall_clock_length() -> None:
    # Sunday 2026-11-01 00:30-03:30 New York: 01:00-02:00 happens twice, so 4 real hours.
    day = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)
    assert business_minutes_between(CALENDAR, day, day + timedelta(hours=12)) == 240
    # Sunday 2026-03-08: 02:00-03:00 does not exist, so 2 real hours.
    spring = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)
    assert business_minutes_between(CALENDAR, spring, spring + timedelta(hours=12)) == 120


def test_holiday_is_not_working_time() -> None:
    thanksgiving = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)
    assert working_intervals(CALENDAR, thanksgiving, thanksgiving + timedelta(hours=24)) == []


def test_next_free_slots_skip_busy_time_off_and_holidays() -> None:
    rep = Rep(
        id="a",
        name="A",
        email="a@example.com",
        pools=("p",),
        timezone="Europe/Paris",
        country="FR",
        working_hours={"mon-fri": ["09:00-12:00"]},
        out_of_office=({"start": "2026-12-21", "end": "2027-01-01"},),
    )
    now = datetime(2026, 12, 18, 10, 7, tzinfo=UTC)  # Friday 11:07 in Paris
    busy = [
        (datetime(2026, 12, 18, 10, 15, tzinfo=UTC), datetime(2026, 12, 18, 10, 30, tzinfo=UTC))
    ]
    slots = next_free_slots(rep, now, 3, timedelta(minutes=30), busy)
    local = [start.astimezone(ZoneInfo("Europe/Paris")) for start, _ in slots]
    # 11:30 Friday (11:15 is busy until 11:30); then time off; 1 Jan is a holiday; Jan 2 is
    # a Saturday: the next working morning is Monday 4 January 2027.
    assert [t.strftime("%a %d %b %H:%M") for t in local] == [
        "Fri 18 Dec 11:30",
        "Mon 04 Jan 09:00",
        "Mon 04 Jan 09:30",
    ]


def test_a_calendar_with_no_hours_is_an_error_not_a_hang() -> None:
    empty = WorkingCalendar(NEW_YORK, {}, None, ())
    with pytest.raises(ValueError, match="no working time"):
        add_business_minutes(empty, datetime(2026, 1, 1, tzinfo=UTC), 10)


# --------------------------------------------------------------------------- many at once

ZONES = ["America/New_York", "Europe/London", "Australia/Sydney", "Asia/Kolkata", "UTC"]
COUNTRIES = {"America/New_York": "US", "Europe/London": "GB", "Australia/Sydney": "AU"}
# Near DST changes in both hemispheres and around public holidays (Christmas, Easter 2026).
STARTS = [
    datetime(2026, 3, 27, tzinfo=UTC),  # London springs forward Mar 29
    datetime(2026, 4, 2, tzinfo=UTC),  # Sydney falls back Apr 5; Good Friday Apr 3
    datetime(2026, 10, 30, tzinfo=UTC),  # New York falls back Nov 1
    datetime(2026, 12, 23, tzinfo=UTC),  # Christmas, Boxing Day
]
day_hours = st.lists(
    st.tuples(st.integers(0, 23 * 4), st.integers(1, 12 * 4)).map(
        lambda p: (p[0] * 15, min(24 * 60, p[0] * 15 + p[1] * 15))
    ),
    min_size=0,
    max_size=2,
)
calendars = st.builds(
    lambda zone, days, with_holidays: WorkingCalendar(
        ZoneInfo(zone),
        {d: tuple(sorted(h)) for d, h in enumerate(days) if h},
        COUNTRIES.get(zone) if with_holidays else None,
    ),
    st.sampled_from(ZONES),
    st.lists(day_hours, min_size=7, max_size=7).filter(lambda days: any(days[:5])),
    st.booleans(),
)


def brute_minutes(calendar: WorkingCalendar, start: datetime, end: datetime) -> int:
    count, moment = 0, start
    while moment < end:
        local = moment.astimezone(calendar.zone)
        minute = local.hour * 60 + local.minute
        if not is_holiday(calendar, local.date()) and any(
            a <= minute < b for a, b in calendar.weekly.get(local.weekday(), ())
        ):
            count += 1
        moment += timedelta(minutes=1)
    return count


@settings(max_examples=40, deadline=None)
@given(
    calendars,
    st.sampled_from(STARTS),
    st.lists(st.integers(0, 4 * 24 * 60), min_size=1, max_size=6),
    st.integers(1, 900),
)
def test_timeline_matches_brute_force(
    calendar: WorkingCalendar, base: datetime, offsets: list[int], minutes: int
) -> None:
    starts = [base + timedelta(minutes=m) for m in offsets]
    timeline = Timeline(calendar, base, base + timedelta(days=1))
    starts64 = np.array([np.datetime64(s.replace(tzinfo=None), "us") for s in starts])
    due = timeline.add(starts64, minutes)
    spent = timeline.between(starts64, due)
    for start, deadline, used in zip(starts, due, spent, strict=True):
        deadline = deadline.astype(datetime).replace(tzinfo=UTC)
        assert used == minutes
        assert brute_minutes(calendar, start, deadline) == minutes
        # The earliest such instant: one minute before, a minute of work is missing.
        assert brute_minutes(calendar, start, deadline - timedelta(minutes=1)) == minutes - 1
        assert deadline == add_business_minutes(calendar, start, minutes)
