"""Amounts of time and places in time, as rules files write them: business time (``15m``,
``4h``, ``2d`` of working days), calendar time (``3d`` of 24 hours), IANA time zones."""

from __future__ import annotations

import re
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d)\s*$")


def parse_amount(text: str | int | float, day_minutes: float) -> float:
    """Business minutes in ``15m``, ``4h`` or ``2d`` (a bare number is minutes)."""
    if isinstance(text, int | float):
        if text <= 0:
            raise ValueError(f"{text!r}: must be more than 0")
        return float(text)
    match = _AMOUNT.match(str(text))
    if not match:
        raise ValueError(f"{text!r}: write business time as 15m, 4h or 2d")
    value, unit = float(match.group(1)), match.group(2)
    if value <= 0:
        raise ValueError(f"{text!r}: must be more than 0")
    return value * {"m": 1, "min": 1, "h": 60, "d": day_minutes}[unit]


def calendar_minutes(text: str | int | float) -> float:
    """Minutes in ``30m``, ``4h`` or ``3d`` of calendar time (``0d`` allowed: at once)."""
    if text in (0, "0", "0m", "0h", "0d"):
        return 0.0
    return parse_amount(text, 24 * 60)


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_time_zone(name: str) -> str:
    """``name`` if it is an IANA time zone, else ValueError naming it."""
    if name not in _time_zones():
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {name!r} (use an IANA name like Europe/Paris)"
            ) from exc
    return name
