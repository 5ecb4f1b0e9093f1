"""What the booking page offers (``rules/booking.yaml``): the meeting's length, how many of the
owner's working days, how soon, how many slots a day, how long a link works, and whether the
pool is offered when the owner has no time."""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from leadflow import config
from leadflow.rules.units import calendar_minutes

RULES_FILE = "rules/booking.yaml"


class BookingRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "booking"
    enabled: bool = True
    meeting: str | int = "30m"
    days: int = Field(default=5, ge=1, le=30)
    not_before: str | int = "1h"
    slots_per_day: int = Field(default=8, ge=1, le=48)
    link_expires: str | int = "14d"
    pool_when_no_slot: bool = True
    email_lead: bool = True

    @field_validator("meeting", "link_expires")
    @classmethod
    def _positive(cls, value: str | int) -> str | int:
        if calendar_minutes(value) <= 0:
            raise ValueError(f"{value!r}: must be more than 0")
        return value

    @field_validator("not_before")
    @classmethod
    def _amount(cls, value: str | int) -> str | int:
        calendar_minutes(value)
        return value

    @field_validator("meeting")
    @classmethod
    def _grid(cls, value: str | int) -> str | int:
        minutes = calendar_minutes(value)
        if minutes < 10 or minutes > 240 or minutes != int(minutes) or 1440 % minutes:
            raise ValueError(
                f"{value!r}: a meeting is 10 to 240 whole minutes that divide a day "
                "(15m, 20m, 30m, 45m, 1h, 90m, 2h ...): slots lie on that grid from midnight"
            )
        return value

    @property
    def length(self) -> timedelta:
        return timedelta(minutes=calendar_minutes(self.meeting))

    @property
    def lead_time(self) -> timedelta:
        return timedelta(minutes=calendar_minutes(self.not_before))

    @property
    def link_life(self) -> timedelta:
        return timedelta(minutes=calendar_minutes(self.link_expires))


def load_rules(path: str | Path = RULES_FILE) -> tuple[BookingRules, str]:
    """The booking rules and their version (a ``ConfigError`` naming the file and field)."""
    text = config.read_text(path)
    return config.load_text(BookingRules, text, str(path)), config.content_version(text)


@cache
def _cached(path: str, mtime: float) -> tuple[BookingRules, str]:
    return load_rules(path)


def current(path: str | Path = RULES_FILE) -> BookingRules:
    """The booking rules, read again only when the file changed."""
    from leadflow.settings import rules_file

    found = rules_file(path)
    try:
        mtime = Path(found).stat().st_mtime
    except OSError:
        mtime = 0.0
    return _cached(str(found), mtime)[0]
