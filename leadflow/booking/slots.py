"""Which slots a lead is offered (pure): the owner's free time over their next working days,
else the earliest slots of the lead's pool.

A rep's free slots are ``business_time.next_free_slots`` on a grid of the meeting's length
counted from the rep's local midnight (so two meetings of one rep overlap only when they
start together, which the database refuses), from ``not_before`` ahead, over the rep's next
``days`` working days, around what is busy: meetings booked through leadflow and the rep's
CalDAV calendar. A day with more free
slots than ``slots_per_day`` shows that many, spread over the day.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from leadflow.booking.rules import BookingRules
from leadflow.business_time import Interval, local_grid, next_free_slots, working_intervals
from leadflow.routing.rules import Rep

SEARCH = timedelta(days=60)  # no working day in this long: the rep has no time to offer


@dataclass(frozen=True)
class Slot:
    start: datetime  # UTC
    end: datetime
    rep: str  # the rep's code

    @property
    def key(self) -> str:
        """What a booking form posts for this slot: ``<rep>@<start as Unix seconds>``."""
        return f"{self.rep}@{int(self.start.timestamp())}"


@dataclass
class Offer:
    slots: list[Slot]
    owner: str
    pool: str | None = None  # the pool offered instead of the owner
    why_pool: str | None = None  # why the owner's own time is not offered
    unread: list[str] = field(default_factory=list)  # reps whose CalDAV calendar was not read
    reps: tuple[str, ...] = ()  # whose slots may be booked: the owner, or the pool's reps

    def find(self, key: str) -> Slot | None:
        """The shown slot posted as ``key`` (a free slot not shown: ``slots.free_slots``)."""
        return next((slot for slot in self.slots if slot.key == key), None)


def working_days_end(rep: Rep, now: datetime, days: int) -> datetime | None:
    """The end of the rep's ``days``-th working day from ``now`` (days with working time left,
    in the rep's zone), None when the rep has no working time in the next 60 days."""
    seen: list[date] = []
    last_end: datetime | None = None
    for _start, end in working_intervals(rep, now, now + SEARCH):
        day = end.astimezone(rep.zone).date()
        if day not in seen:
            if len(seen) == days:
                break
            seen.append(day)
        last_end = end
    return last_end


def spread(slots: list[Interval], keep: int) -> list[Interval]:
    """``keep`` of ``slots``, evenly spaced from the first to the last (all if fewer)."""
    if len(slots) <= keep:
        return slots
    if keep == 1:
        return slots[:1]
    step = (len(slots) - 1) / (keep - 1)
    return [slots[round(i * step)] for i in range(keep)]


def free_slots(
    rep: Rep, now: datetime, rules: BookingRules, busy: Sequence[Interval] = ()
) -> list[Slot]:
    """Every free slot of the rep over their next ``rules.days`` working days (what a
    booking may take; the page shows ``rep_slots``, a few of them a day)."""
    end = working_days_end(rep, now + rules.lead_time, rules.days)
    if end is None or end <= now:
        return []
    found = next_free_slots(
        rep,
        now,
        rules.days * 24 * 60 // max(1, int(rules.length.total_seconds() // 60)),
        rules.length,
        busy,
        step=rules.length,
        not_before=rules.lead_time,
        horizon=end - now,
        align=local_grid(rep.zone),
    )
    return [Slot(start, finish, rep.id) for start, finish in found]


def rep_slots(
    rep: Rep, now: datetime, rules: BookingRules, busy: Sequence[Interval] = ()
) -> list[Slot]:
    """The rep's free slots to show: at most ``rules.slots_per_day`` a day (the rep's local
    day), spread over the day."""
    by_day: dict[date, list[Interval]] = {}
    for slot in free_slots(rep, now, rules, busy):
        by_day.setdefault(slot.start.astimezone(rep.zone).date(), []).append((slot.start, slot.end))
    return [
        Slot(start, finish, rep.id)
        for day in sorted(by_day)
        for start, finish in spread(by_day[day], rules.slots_per_day)
    ]


def parse_key(key: str) -> tuple[str, datetime] | None:
    """``<rep>@<unix start>`` -> (rep code, start), None when it is not one."""
    code, _, seconds = str(key).rpartition("@")
    if not code or not seconds.isdigit() or len(seconds) > 12:
        return None
    return code, datetime.fromtimestamp(int(seconds), UTC)


def has_hours(rep: Rep) -> bool:
    return any(rep.weekly_hours.values())


def offer(
    owner: Rep,
    pool: Sequence[Rep],
    busy: dict[str, Sequence[Interval]],
    now: datetime,
    rules: BookingRules,
    pool_name: str | None = None,
) -> Offer:
    """The owner's slots; when there are none and the rules allow, the earliest slots of the
    other active reps of the lead's pool, with the reason the owner's were not offered."""
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    own = rep_slots(owner, now, rules, busy.get(owner.id, ()))
    if own:
        return Offer(own, owner.id, reps=(owner.id,))
    why = (
        f"{owner.id} has no working hours"
        if not has_hours(owner)
        else f"{owner.id} has no free slot in the next {rules.days} working days"
    )
    others = [rep for rep in pool if rep.id != owner.id and rep.active]
    if not rules.pool_when_no_slot or not others:
        return Offer([], owner.id, None, why, reps=(owner.id,))
    merged = sorted(
        (slot for rep in others for slot in rep_slots(rep, now, rules, busy.get(rep.id, ()))),
        key=lambda slot: (slot.start, slot.rep),
    )
    earliest: dict[datetime, Slot] = {}
    for slot in merged:  # one rep per start: the lead picks a time, not a person
        earliest.setdefault(slot.start, slot)
    limit = rules.days * rules.slots_per_day
    shown = list(earliest.values())[:limit]
    return Offer(shown, owner.id, pool_name, why, reps=tuple(sorted({s.rep for s in shown})))


def by_day(slots: Sequence[Slot], zone: ZoneInfo) -> list[tuple[date, list[Slot]]]:
    """The slots grouped by the lead's local day, in order."""
    days: dict[date, list[Slot]] = {}
    for slot in slots:
        days.setdefault(slot.start.astimezone(zone).date(), []).append(slot)
    return sorted(days.items())
