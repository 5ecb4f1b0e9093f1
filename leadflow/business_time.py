"""Business time: when a rep works, computed from rules, never looped minute by minute.

A ``WorkingCalendar`` is a rep's time zone, weekly working hours (local wall-clock times),
public holidays (the ``holidays`` package, for the rep's country or US/CA state) and time off
(UTC windows). A UTC instant is working time when its local wall-clock time falls in that
weekday's hours, its local date is not a public holiday, and it is not inside time off.

The work is done per stretch of constant UTC offset: inside one, local time is UTC plus a
fixed offset, so each day's hours map to one UTC interval by arithmetic. DST changes split the
stretches (found by bisection), so a working day that contains a change is exactly as long as
the wall clock says: 09:00-17:00 on a day the clocks go back is still 8 hours, and hours that
fall into the skipped hour of spring do not exist.

Used for first-meeting proposals (``next_free_slots``) and, later, for SLAs
(``add_business_minutes``, ``business_minutes_between``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import holidays
import numpy as np

from leadflow.routing.rules import Rep

Interval = tuple[datetime, datetime]  # UTC, start inclusive, end exclusive
CHUNK = timedelta(days=14)  # how far ahead each search step looks
HORIZON = timedelta(days=3 * 366)  # no working time for three years: the calendar is empty


@dataclass(frozen=True)
class WorkingCalendar:
    zone: ZoneInfo
    weekly: dict[int, tuple[tuple[int, int], ...]]  # weekday (Mon=0) -> (start, end) minutes
    country: str | None = None  # "GB", or "US-CA" for a state's own holidays
    time_off: tuple[Interval, ...] = ()

    def __hash__(self) -> int:  # the dict field is not hashable; identity is enough here
        return id(self)


def calendar_of(rep: Rep | WorkingCalendar) -> WorkingCalendar:
    """A rep's calendar (a calendar is returned as it is)."""
    if isinstance(rep, WorkingCalendar):
        return rep
    return WorkingCalendar(rep.zone, rep.weekly_hours, rep.country, tuple(rep.time_off_utc()))


@cache
def _holiday_dates(country: str, year: int) -> frozenset[date]:
    code, _, subdivision = country.partition("-")
    return frozenset(holidays.country_holidays(code, subdiv=subdivision or None, years=year))


def is_holiday(calendar: WorkingCalendar, day: date) -> bool:
    return calendar.country is not None and day in _holiday_dates(calendar.country, day.year)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _offset(zone: ZoneInfo, moment: datetime) -> timedelta:
    return moment.astimezone(zone).utcoffset() or timedelta(0)


def _constant_offset_stretches(
    zone: ZoneInfo, start: datetime, end: datetime
) -> list[tuple[datetime, datetime, timedelta]]:
    """``[start, end)`` cut at each instant the zone's UTC offset changes."""
    out = []
    cursor = start
    while cursor < end:
        offset = _offset(zone, cursor)
        probe, stop = cursor, end
        while probe < end:
            ahead = min(probe + timedelta(days=1), end)  # zones change at most once a day
            if _offset(zone, ahead) != offset:
                low, high = probe, ahead
                while high - low > timedelta(seconds=1):
                    middle = low + (high - low) / 2
                    low, high = (middle, high) if _offset(zone, middle) == offset else (low, middle)
                # Changes happen on whole seconds: the one in (low, high] is high's second.
                stop = high.replace(microsecond=0)
                break
            probe = ahead
        out.append((cursor, stop, offset))
        cursor = stop
    return out


def _subtract(intervals: list[Interval], holes: Iterable[Interval]) -> list[Interval]:
    out = intervals
    for hole_start, hole_end in holes:
        cut: list[Interval] = []
        for start, end in out:
            if hole_end <= start or end <= hole_start:
                cut.append((start, end))
                continue
            if start < hole_start:
                cut.append((start, hole_start))
            if hole_end < end:
                cut.append((hole_end, end))
        out = cut
    return out


def working_intervals(rep: Rep | WorkingCalendar, start: datetime, end: datetime) -> list[Interval]:
    """The rep's working time inside ``[start, end)`` as sorted, merged UTC intervals."""
    calendar = calendar_of(rep)
    start, end = _utc(start), _utc(end)
    found: list[Interval] = []
    for stretch_start, stretch_end, offset in _constant_offset_stretches(calendar.zone, start, end):
        local_start = (stretch_start + offset).replace(tzinfo=None)
        local_end = (stretch_end + offset).replace(tzinfo=None)
        day = local_start.date()
        while day <= local_end.date():
            if not is_holiday(calendar, day):
                midnight = datetime.combine(day, time())
                for begin, finish in calendar.weekly.get(day.weekday(), ()):
                    low = max(midnight + timedelta(minutes=begin), local_start)
                    high = min(midnight + timedelta(minutes=finish), local_end)
                    if low < high:
                        found.append(
                            (
                                (low - offset).replace(tzinfo=UTC),
                                (high - offset).replace(tzinfo=UTC),
                            )
                        )
            day += timedelta(days=1)
    found.sort()
    merged: list[Interval] = []
    for interval in found:
        if merged and interval[0] <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], interval[1]))
        else:
            merged.append(interval)
    return _subtract(merged, calendar.time_off)


def business_minutes_between(rep: Rep | WorkingCalendar, start: datetime, end: datetime) -> float:
    """Working minutes from ``start`` to ``end`` (negative if ``end`` is earlier)."""
    if _utc(end) < _utc(start):
        return -business_minutes_between(rep, end, start)
    return sum(
        (high - low).total_seconds() / 60 for low, high in working_intervals(rep, start, end)
    )


def add_business_minutes(rep: Rep | WorkingCalendar, start: datetime, minutes: float) -> datetime:
    """The earliest instant with ``minutes`` of working time since ``start`` (``start`` itself
    for 0). ``business_minutes_between(rep, start, result) == minutes``. Raises ValueError if
    the calendar has no working time in the next three years."""
    remaining = timedelta(minutes=minutes)
    cursor = _utc(start)
    if remaining <= timedelta(0):
        return cursor
    limit = cursor + HORIZON
    while cursor < limit:
        for low, high in working_intervals(rep, cursor, cursor + CHUNK):
            if remaining <= high - low:
                return low + remaining
            remaining -= high - low
        cursor += CHUNK
    raise ValueError("no working time in the next three years: check hours and time off")


def _ceil(moment: datetime, step: timedelta) -> datetime:
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    steps = -(-(moment - epoch) // step)
    return epoch + steps * step


def local_grid(zone: ZoneInfo) -> Callable[[datetime, timedelta], datetime]:
    """Boundaries every ``step`` from local midnight of the moment's own day in ``zone``: a
    30-minute grid is :00 and :30 on the wall clock in Kolkata and Kathmandu too, a 45-minute
    one 09:00, 09:45 ... (``step`` should divide a day)."""

    def align(moment: datetime, step: timedelta) -> datetime:
        local = _utc(moment).astimezone(zone)
        midnight = datetime.combine(local.date(), time(), tzinfo=zone).astimezone(UTC)
        return midnight + (-(-(_utc(moment) - midnight) // step)) * step

    return align


def next_free_slots(
    rep: Rep | WorkingCalendar,
    now: datetime,
    n: int,
    duration: timedelta,
    busy: Sequence[Interval] = (),
    *,
    step: timedelta = timedelta(minutes=15),
    not_before: timedelta = timedelta(0),
    horizon: timedelta = timedelta(days=60),
    align: Callable[[datetime, timedelta], datetime] | None = None,
) -> list[Interval]:
    """The first ``n`` slots of ``duration`` inside the rep's working time from
    ``now + not_before``, starting on a ``step`` boundary, overlapping none of ``busy`` (UTC
    intervals), never in time off or on a public holiday. Fewer if the horizon runs out.
    ``align(moment, step)``: the first boundary at or after ``moment`` (default: multiples
    of ``step`` since 2000-01-01 UTC; ``local_grid`` counts them from local midnight)."""
    align = align or _ceil
    taken = sorted((_utc(a), _utc(b)) for a, b in busy)
    slots: list[Interval] = []
    cursor = _utc(now) + not_before
    limit = cursor + horizon
    while cursor < limit and len(slots) < n:
        for low, high in working_intervals(rep, cursor, min(cursor + CHUNK, limit)):
            begin = align(low, step)
            while begin + duration <= high and len(slots) < n:
                clash = next((b for a, b in taken if a < begin + duration and begin < b), None)
                if clash is not None:
                    begin = align(clash, step)
                    continue
                slots.append((begin, begin + duration))
                begin += duration
        cursor += CHUNK
    return slots


# --------------------------------------------------------------------------- many at once

_US = np.timedelta64(1, "us")


class Timeline:
    """A calendar's working time over a window, as cumulative minutes: many starts, deadlines
    and durations computed with ``searchsorted`` instead of one search each (an SLA check
    starts thousands of timers per rep). Instants are ``datetime64[us]`` UTC arrays; the
    window grows by itself when a deadline lies beyond it."""

    def __init__(self, rep: Rep | WorkingCalendar, start: datetime, end: datetime) -> None:
        self.calendar = calendar_of(rep)
        self._build(_utc(start), _utc(end))

    def _build(self, start: datetime, end: datetime) -> None:
        self.start, self.end = start, end
        pairs = working_intervals(self.calendar, start, end)
        self.low = np.array([_as64(a) for a, _ in pairs], dtype="datetime64[us]")
        self.high = np.array([_as64(b) for _, b in pairs], dtype="datetime64[us]")
        lengths = (self.high - self.low).astype("int64")
        self.before = np.concatenate(([0], np.cumsum(lengths)))  # work before interval k (us)

    def _cover(self, first: np.datetime64, last: np.datetime64) -> None:
        if first < _as64(self.start) or last > _as64(self.end):
            self._build(
                min(self.start, _from64(first)), max(self.end, _from64(last) + timedelta(days=1))
            )

    def worked(self, moments: np.ndarray) -> np.ndarray:
        """Working time (us) from the window's start to each moment."""
        moments = np.asarray(moments, dtype="datetime64[us]")
        k = np.searchsorted(self.low, moments, side="right") - 1
        inside = np.zeros(len(moments), dtype="int64")
        ok = k >= 0
        kk = np.clip(k, 0, None)
        if len(self.low):
            span = (np.minimum(moments, self.high[kk]) - self.low[kk]).astype("int64")
            inside = np.where(ok, np.maximum(span, 0), 0)
            return np.where(ok, self.before[kk], 0) + inside
        return inside

    def add(self, starts: np.ndarray, minutes: float) -> np.ndarray:
        """For each start, the earliest instant with ``minutes`` of working time since it
        (``add_business_minutes`` for many starts)."""
        starts = np.asarray(starts, dtype="datetime64[us]")
        if not len(starts) or minutes <= 0:
            return starts.copy()
        need = round(minutes * 60_000_000)
        self._cover(starts.min(), starts.max())
        grow = timedelta(days=max(14.0, minutes / 60))
        while True:
            target = self.worked(starts) + need
            if len(self.low) and target.max() <= self.before[-1]:
                break
            if self.end - self.start > HORIZON:
                raise ValueError(
                    "no working time in the next three years: check hours and time off"
                )
            self._build(self.start, self.end + grow)
            grow *= 2
        k = np.searchsorted(self.before[1:], target, side="left")
        return self.low[k] + (target - self.before[k]).astype("timedelta64[us]")

    def between(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Working minutes from each start to its end (negative when the end is earlier)."""
        starts = np.asarray(starts, dtype="datetime64[us]")
        ends = np.asarray(ends, dtype="datetime64[us]")
        if not len(starts):
            return np.zeros(0)
        self._cover(min(starts.min(), ends.min()), max(starts.max(), ends.max()))
        return (self.worked(ends) - self.worked(starts)) / 60_000_000


def _as64(moment: datetime) -> np.datetime64:
    return np.datetime64(_utc(moment).replace(tzinfo=None), "us")


def _from64(moment: np.datetime64) -> datetime:
    return moment.astype("datetime64[us]").astype(datetime).replace(tzinfo=UTC)
