"""What the booking page offers (pure): the owner's working days, holidays, time off and busy
times, a grid of the meeting's length, a few slots a day, and the pool when the owner has
none."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from leadflow.booking import slots as offers
from leadflow.booking.rules import BookingRules
from leadflow.routing.rules import Rep

pytestmark = pytest.mark.unit

RULES = BookingRules()
MONDAY = datetime(2026, 12, 14, 7, 0, tzinfo=UTC)  # 08:00 in Berlin


def rep(code: str = "ann", **fields) -> Rep:
    fields.setdefault("timezone", "Europe/Berlin")
    fields.setdefault("country", "DE")
    return Rep(id=code, name=f"{code.title()} Example", email=f"{code}@reps.example", **fields)


def test_slots_lie_in_working_hours_on_the_grid_after_the_lead_time() -> None:
    found = offers.rep_slots(rep(), MONDAY, RULES)
    assert found
    for slot in found:
        local = slot.start.astimezone(rep().zone)
        assert 9 <= local.hour < 17 and local.weekday() < 5
        assert slot.start.minute % 30 == 0 and slot.start.second == 0
        assert slot.end - slot.start == timedelta(minutes=30)
        assert slot.start >= MONDAY + RULES.lead_time
    days = sorted({slot.start.astimezone(rep().zone).date() for slot in found})
    assert days == [date(2026, 12, d) for d in (14, 15, 16, 17, 18)]  # five working days
    per_day = [sum(1 for s in found if s.start.astimezone(rep().zone).date() == d) for d in days]
    assert max(per_day) == RULES.slots_per_day


def test_a_day_is_spread_from_its_first_free_slot_to_its_last() -> None:
    found = offers.rep_slots(rep(), MONDAY, RULES)
    tuesday = [s for s in found if s.start.astimezone(rep().zone).date() == date(2026, 12, 15)]
    local = [s.start.astimezone(rep().zone).strftime("%H:%M") for s in tuesday]
    assert local[0] == "09:00" and local[-1] == "16:30"  # 16 free, 8 shown, both ends kept


def test_holidays_time_off_and_busy_times_are_never_offered() -> None:
    christmas = datetime(2026, 12, 24, 7, 0, tzinfo=UTC)  # Thursday; 25 and 26 are holidays
    away = rep(out_of_office=[{"start": "2026-12-28", "end": "2026-12-29"}])
    busy = [(datetime(2026, 12, 24, 9, 0, tzinfo=UTC), datetime(2026, 12, 24, 10, 15, tzinfo=UTC))]
    found = offers.rep_slots(away, christmas, RULES, busy)
    days = sorted({s.start.astimezone(away.zone).date() for s in found})
    assert date(2026, 12, 25) not in days and date(2026, 12, 26) not in days
    assert date(2026, 12, 28) not in days and date(2026, 12, 29) not in days
    assert all(not (s.start < busy[0][1] and busy[0][0] < s.end) for s in found)
    # The slot right after the busy time starts on the next grid line, 10:30 UTC.
    assert any(s.start == datetime(2026, 12, 24, 10, 30, tzinfo=UTC) for s in found)


def test_the_owners_slots_come_first_and_the_pool_only_when_it_has_none() -> None:
    owner, other = rep("ann", pools=("emea",)), rep("bob", pools=("emea",))
    own = offers.offer(owner, [owner, other], {}, MONDAY, RULES, "emea")
    assert own.pool is None and {s.rep for s in own.slots} == {"ann"}
    idle = rep("ann", pools=("emea",), working_hours={})
    pooled = offers.offer(idle, [idle, other], {}, MONDAY, RULES, "emea")
    assert pooled.pool == "emea" and pooled.why_pool == "ann has no working hours"
    assert {s.rep for s in pooled.slots} == {"bob"}
    full = [(MONDAY, MONDAY + timedelta(days=30))]
    booked_out = offers.offer(owner, [owner, other], {"ann": full}, MONDAY, RULES, "emea")
    assert booked_out.why_pool == "ann has no free slot in the next 5 working days"
    assert {s.rep for s in booked_out.slots} == {"bob"}


def test_the_pool_offers_each_time_once_earliest_first() -> None:
    idle = rep("ann", working_hours={})
    berlin, new_york = rep("bob"), rep("cy", timezone="America/New_York", country="US")
    found = offers.offer(idle, [berlin, new_york], {}, MONDAY, RULES, "all").slots
    starts = [s.start for s in found]
    assert starts == sorted(starts) and len(starts) == len(set(starts))
    assert {s.rep for s in found} == {"bob", "cy"}


def test_no_pool_or_pool_off_offers_nothing_with_the_reason() -> None:
    idle = rep("ann", working_hours={})
    alone = offers.offer(idle, [], {}, MONDAY, RULES)
    assert alone.slots == [] and alone.why_pool == "ann has no working hours"
    off = BookingRules(pool_when_no_slot=False)
    assert offers.offer(idle, [rep("bob")], {}, MONDAY, off).slots == []


def test_slot_keys_find_their_slot() -> None:
    offer = offers.offer(rep(), [], {}, MONDAY, RULES)
    first = offer.slots[0]
    assert first.key == f"ann@{int(first.start.timestamp())}"
    assert offer.find(first.key) == first and offer.find("ann@1") is None


@pytest.mark.parametrize(
    ("field", "value"), [("meeting", "5m"), ("meeting", "25.5m"), ("days", 0), ("nope", 1)]
)
def test_bad_rules_are_refused(field, value) -> None:
    with pytest.raises(ValueError):
        BookingRules(**{field: value})


@pytest.mark.parametrize(
    ("zone", "meeting", "expected"),
    [
        ("Asia/Kolkata", "1h", ["09:00", "10:00", "11:00"]),  # UTC+05:30
        ("Asia/Kathmandu", "30m", ["09:00", "09:30", "10:00"]),  # UTC+05:45
        ("Europe/Berlin", "45m", ["09:00", "09:45", "10:30"]),
    ],
)
def test_the_grid_counts_from_the_reps_local_midnight(zone, meeting, expected) -> None:
    """Slots start on the rep's wall clock (09:00, not 09:15 in Kathmandu), whatever the
    zone's offset from UTC."""
    owner = rep(timezone=zone, country=None)
    rules = BookingRules(meeting=meeting, slots_per_day=48)
    found = offers.rep_slots(owner, datetime(2026, 12, 13, 12, tzinfo=UTC), rules)
    monday = [s for s in found if s.start.astimezone(owner.zone).date() == date(2026, 12, 14)]
    assert [s.start.astimezone(owner.zone).strftime("%H:%M") for s in monday[:3]] == expected


def test_a_meeting_length_that_does_not_divide_a_day_is_refused() -> None:
    with pytest.raises(ValueError, match="divide a day"):
        BookingRules(meeting="25m")
    assert BookingRules(meeting="45m").length == timedelta(minutes=45)
