"""Routing rules: who sells what, and which pool an MQL goes to. See ``rules/routing.yaml``.

The file names the reps (territories, industries, segments, weight, capacity, time off,
working hours), the pools they sit in, the ordered rules (first match wins; conditions in the
same language as scoring, plus ``score`` and ``temperature``) that send a lead to a pool, and
the fallback queue whose owner takes what nothing else can. Everything is checked before any
lead is touched; errors name the file, the rep (or pool, or rule) and the field. A rule set's
version is the hash of its text. Reps can also come from a CSV (``load_reps_csv``).
"""

from __future__ import annotations

import csv
import itertools
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pycountry
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationError,
    field_validator,
    model_validator,
)

from leadflow import config
from leadflow.config import ConfigError
from leadflow.rules.conditions import Condition, routing_condition
from leadflow.rules.units import check_time_zone

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# States and provinces are routed for the two countries whose sales teams split by them.
SUBDIVISION_COUNTRIES = ("US", "CA")
_HOURS = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
_ID = r"^[a-z0-9][a-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- places and time


def check_territory(code: str) -> str:
    """An ISO 3166-1 country (``DE``) or a US/CA state or province (``US-CA``), upper-cased."""
    value = code.strip().upper()
    if "-" in value:
        country = value.split("-", 1)[0]
        if country not in SUBDIVISION_COUNTRIES or pycountry.subdivisions.get(code=value) is None:
            raise ValueError(f"unknown territory {code!r}: states are US-XX or CA-XX (ISO 3166-2)")
        return value
    if len(value) != 2 or pycountry.countries.get(alpha_2=value) is None:
        raise ValueError(f"unknown country {code!r} (use an ISO 3166-1 alpha-2 code like DE)")
    return value


def _clock(hours: str, minutes: str) -> int:
    value = int(hours) * 60 + int(minutes)
    if value > 24 * 60 or int(minutes) >= 60:
        raise ValueError(f"{hours}:{minutes} is not a time of day")
    return value


def parse_hours(spec: dict[str, list[str]]) -> dict[int, tuple[tuple[int, int], ...]]:
    """``{"mon-fri": ["09:00-17:00"]}`` -> ``{0: ((540, 1020),), ...}`` (minutes from midnight).

    Keys are days (``mon``) or ranges (``mon-fri``); a later key overrides an earlier one.
    """
    out: dict[int, tuple[tuple[int, int], ...]] = {}
    for key, spans in spec.items():
        first, _, last = key.lower().partition("-")
        last = last or first
        if first not in WEEKDAYS or last not in WEEKDAYS:
            raise ValueError(f"working_hours: {key!r} is not a day or range like mon-fri")
        intervals = []
        for span in spans:
            match = _HOURS.match(span.strip())
            if not match:
                raise ValueError(f"working_hours.{key}: {span!r} is not HH:MM-HH:MM")
            start, end = _clock(*match.group(1, 2)), _clock(*match.group(3, 4))
            if start >= end:
                raise ValueError(f"working_hours.{key}: {span!r} ends before it starts")
            intervals.append((start, end))
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            if start < end:
                raise ValueError(f"working_hours.{key}: intervals overlap")
        for day in range(WEEKDAYS.index(first), WEEKDAYS.index(last) + 1):
            out[day] = tuple(intervals)
    return out


class TimeOff(_Strict):
    """Out of office from ``start`` to ``end`` inclusive. Dates are whole days in the rep's
    time zone; a date-time without a zone is the rep's local time."""

    start: date | datetime
    end: date | datetime
    why: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> TimeOff:
        if _as_datetime(self.start, False) > _as_datetime(self.end, True):
            raise ValueError(f"out_of_office ends ({self.end}) before it starts ({self.start})")
        return self

    def utc_window(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """The window as UTC instants, end exclusive."""

        def utc(moment: date | datetime, is_end: bool) -> datetime:
            local = _as_datetime(moment, is_end)
            if local.tzinfo is None:
                local = local.replace(tzinfo=zone)
            return local.astimezone(UTC)

        return utc(self.start, False), utc(self.end, True)


def _as_datetime(moment: date | datetime, is_end: bool) -> datetime:
    if isinstance(moment, datetime):
        return moment if moment.tzinfo is None else moment.replace(tzinfo=None)
    day = moment + timedelta(days=1) if is_end else moment  # an end date counts in full
    return datetime.combine(day, time())


# --------------------------------------------------------------------------- reps and pools


class Capacity(_Strict):
    max_open: int | None = Field(default=None, ge=0)  # null: no limit
    max_new_per_day: int | None = Field(default=None, ge=0)


class Segment(_Strict):
    """A band of company size: ``employees: [min, max]`` or ``revenue: [min, max]``,
    min inclusive, max exclusive; either end may be null."""

    name: str = Field(pattern=_ID)
    employees: tuple[float | None, float | None] | None = None
    revenue: tuple[float | None, float | None] | None = None

    @model_validator(mode="after")
    def _one_band(self) -> Segment:
        if (self.employees is None) == (self.revenue is None):
            raise ValueError(f"segment {self.name!r} needs exactly one of employees, revenue")
        return self

    @property
    def field(self) -> str:
        return "employees" if self.employees is not None else "revenue"

    @property
    def band(self) -> tuple[float | None, float | None]:
        return self.employees if self.employees is not None else self.revenue  # type: ignore[return-value]


class Rep(_Strict):
    id: str = Field(pattern=_ID)
    name: str
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    manager: str | None = None  # the manager's rep id or email: escalations go there
    pools: tuple[str, ...] = ()
    territories: tuple[str, ...] = ()  # empty: any country
    industries: tuple[str, ...] = ()  # empty: any industry
    segments: tuple[str, ...] = ()  # empty: any size
    weight: float = Field(default=1.0, gt=0)
    capacity: Capacity = Capacity()
    active: bool = True
    out_of_office: tuple[TimeOff, ...] = ()
    timezone: str = "UTC"
    working_hours: dict[str, list[str]] = Field(
        default_factory=lambda: {"mon-fri": ["09:00-17:00"]}
    )
    country: str | None = None  # public holidays; a US/CA state (US-CA) for its own holidays

    @field_validator("territories")
    @classmethod
    def _territories(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_territory(v) for v in value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_time_zone(value)

    @field_validator("working_hours")
    @classmethod
    def _hours(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        parse_hours(value)
        return value

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        return None if value is None else check_territory(value)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def weekly_hours(self) -> dict[int, tuple[tuple[int, int], ...]]:
        return parse_hours(self.working_hours)

    def time_off_utc(self) -> list[tuple[datetime, datetime]]:
        """Out-of-office windows as UTC ``[start, end)`` pairs, in order."""
        return sorted(window.utc_window(self.zone) for window in self.out_of_office)

    def out_of_office_at(self, now: datetime) -> bool:
        moment = now if now.tzinfo else now.replace(tzinfo=UTC)
        return any(start <= moment < end for start, end in self.time_off_utc())


class Pool(_Strict):
    name: str = Field(pattern=_ID)
    description: str = ""
    fallback_owner: str | None = None  # a rep id; default: the fallback queue's owner


class RoutingRule(_Strict):
    name: str = Field(pattern=_ID)
    # Validated by the validator below (scored fields allowed); SkipValidation stops pydantic
    # re-running scoring's field check on the result, which refuses `temperature`.
    when: SkipValidation[Condition | None] = None  # null: every lead (a catch-all, usually last)
    pool: str
    why: str = ""

    @field_validator("when", mode="before")
    @classmethod
    def _condition(cls, value: Any) -> Any:
        return None if value is None else routing_condition(value)


class Fallback(_Strict):
    queue: str = Field(pattern=_ID)  # a name people see: "sales-ops"
    owner: str  # a rep id: the person who works the queue


class RoutingRules(_Strict):
    name: str = "routing"
    description: str = ""
    account_owner: bool = True  # step 1: the matched account's owner, when available
    segments: tuple[Segment, ...] = ()
    reps: tuple[Rep, ...]
    pools: tuple[Pool, ...]
    rules: tuple[RoutingRule, ...]
    fallback: Fallback

    @field_validator("reps", "rules", mode="before")
    @classmethod
    def _each_named(cls, value: Any, info: Any) -> Any:
        """Validate items one by one so an error names the rep (or rule), not its position."""
        model = Rep if info.field_name == "reps" else RoutingRule
        key = "id" if model is Rep else "name"
        if not isinstance(value, list | tuple):
            return value
        items, problems = [], []
        for position, item in enumerate(value):
            try:
                items.append(model.model_validate(item))
            except ValidationError as exc:
                label = item.get(key) if isinstance(item, dict) else None
                for error in exc.errors(include_url=False):
                    where = ".".join(str(p) for p in error["loc"]) or "(item)"
                    problems.append(
                        f"{info.field_name}[{label or position}].{where}: {error['msg']}"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return items

    @model_validator(mode="after")
    def _references(self) -> RoutingRules:
        problems: list[str] = []
        ids = [r.id for r in self.reps]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            problems.append(f"reps: duplicate rep id(s) {repeated}")
        pools = {p.name for p in self.pools}
        segments = {s.name for s in self.segments}
        rep_ids = set(ids)
        owners = {self.fallback.owner} | {p.fallback_owner for p in self.pools if p.fallback_owner}
        for rep in self.reps:
            unknown = [p for p in rep.pools if p not in pools]
            if unknown:
                problems.append(f"reps[{rep.id}].pools: unknown pool(s) {unknown}")
            if not rep.pools and rep.id not in owners:
                problems.append(f"reps[{rep.id}].pools: the rep is in no pool")
            if rep.manager and "@" not in rep.manager and rep.manager not in rep_ids:
                problems.append(
                    f"reps[{rep.id}].manager: unknown rep {rep.manager!r} (a rep id or an email)"
                )
            bad = [s for s in rep.segments if s not in segments]
            if bad:
                problems.append(f"reps[{rep.id}].segments: unknown segment(s) {bad}")
        for pool in self.pools:
            if not any(pool.name in rep.pools for rep in self.reps):
                problems.append(f"pools[{pool.name}]: no rep is in this pool")
            if pool.fallback_owner and pool.fallback_owner not in rep_ids:
                problems.append(
                    f"pools[{pool.name}].fallback_owner: unknown rep {pool.fallback_owner!r}"
                )
        for rule in self.rules:
            if rule.pool not in pools:
                problems.append(f"rules[{rule.name}].pool: unknown pool {rule.pool!r}")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            problems.append(
                f"rules: repeated rule names {sorted({n for n in names if names.count(n) > 1})}"
            )
        if self.fallback.owner not in rep_ids:
            problems.append(f"fallback.owner: unknown rep {self.fallback.owner!r}")
        elif not self.rep(self.fallback.owner).active:
            problems.append(f"fallback.owner: rep {self.fallback.owner!r} is inactive")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def rep(self, rep_id: str) -> Rep:
        return next(r for r in self.reps if r.id == rep_id)

    def pool_reps(self, pool: str) -> list[Rep]:
        """The reps of ``pool``, in file order (the round robin's tie-break)."""
        return [r for r in self.reps if pool in r.pools]

    def fields(self) -> set[str]:
        """Lead fields the rules read (for the runner's SELECT)."""
        found = {"country", "industry", "employees", "revenue", "domain"}
        for rule in self.rules:
            if rule.when is not None:
                found |= rule.when.fields()
        return found


# --------------------------------------------------------------------------- loading


def parse_rules(text: str, origin: str) -> RoutingRules:
    return config.load_text(RoutingRules, text, origin)


def load_rules(path: str | Path) -> tuple[RoutingRules, str, str]:
    """(rules, version, text) from a file; ``ConfigError`` naming file, rep and field."""
    text = config.read_text(path)
    return parse_rules(text, str(path)), config.content_version(text), text


# CSV columns; lists are separated by ";" (or ","), capacity as two columns.
REP_CSV_COLUMNS = (
    "id",
    "name",
    "email",
    "manager",
    "pools",
    "territories",
    "industries",
    "segments",
    "weight",
    "max_open",
    "max_new_per_day",
    "active",
    "timezone",
    "working_hours",  # "mon-fri 09:00-17:00; sat 10:00-12:00"
    "country",
    "out_of_office",  # "2026-12-20..2027-01-02; 2027-02-10..2027-02-11"
)

# Columns the reference loader reads (leadflow/routing/reference.py); accepted here and ignored.
REFERENCE_ONLY_COLUMNS = ("team", "region", "countries", "capacity")


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in re.split(r"[;,]", value or "") if v.strip()]


def _csv_hours(value: str) -> dict[str, list[str]]:
    hours: dict[str, list[str]] = {}
    for part in value.split(";"):
        if part.strip():
            days, _, span = part.strip().partition(" ")
            hours.setdefault(days, []).append(span.strip())
    return hours


def load_reps_csv(path: str | Path) -> tuple[Rep, ...]:
    """Reps from a CSV (columns ``REP_CSV_COLUMNS``; only id, name, email required), validated
    as the YAML's reps are. Errors name the file, the row, the rep and the field."""
    text = config.read_text(path)
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in ("id", "name", "email") if c not in header]
    if missing:
        raise ConfigError(f"{path}: required column(s) {missing} missing; header has {header}")
    unknown = [c for c in header if c not in REP_CSV_COLUMNS and c not in REFERENCE_ONLY_COLUMNS]
    if unknown:
        raise ConfigError(f"{path}: unknown column(s) {unknown}; known: {list(REP_CSV_COLUMNS)}")
    reps: list[Rep] = []
    for row_no, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
        data: dict[str, Any] = {"id": row["id"], "name": row["name"], "email": row["email"]}
        for key in ("pools", "territories", "industries", "segments"):
            if row.get(key):
                data[key] = _split(row[key])
        for key in ("manager", "timezone", "country", "weight"):
            if row.get(key):
                data[key] = row[key]
        capacity = {k: row[k] for k in ("max_open", "max_new_per_day") if row.get(k)}
        if capacity:
            data["capacity"] = capacity
        if row.get("active"):
            data["active"] = row["active"].lower() not in ("false", "0", "no", "n")
        if row.get("working_hours"):
            data["working_hours"] = _csv_hours(row["working_hours"])
        if row.get("out_of_office"):
            data["out_of_office"] = [
                dict(zip(("start", "end"), w.split(".."), strict=False))
                for w in _split(row["out_of_office"])
            ]
        try:
            reps.append(Rep.model_validate(data))
        except ValidationError as exc:
            detail = config.describe_validation_error(f"{path} row {row_no} rep {row['id']!r}", exc)
            raise ConfigError(detail) from exc
    ids = [r.id for r in reps]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ConfigError(f"{path}: duplicate rep id(s) {repeated}")
    return tuple(reps)


def with_reps(rules: RoutingRules, reps: tuple[Rep, ...], origin: str) -> RoutingRules:
    """``rules`` with its reps replaced (``leadflow load reps``), checked again as a whole."""
    data = rules.model_dump(by_alias=True, exclude_none=True)
    data["reps"] = [r.model_dump(by_alias=True, exclude_none=True) for r in reps]
    return config.parse(RoutingRules, data, origin)
