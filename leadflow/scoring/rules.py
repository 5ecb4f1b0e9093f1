"""Scoring rules: the YAML file marketing ops edit, validated before any lead is touched.

A rule set has fit rules (conditions on lead fields or ``attributes.<key>`` -> points),
engagement rules (event type, optionally a URL pattern -> points per event, capped, with
time decay), normalisation of the total to 0-100, temperature bands, the MQL threshold,
fast-track conditions and disqualify conditions. Its version is the hash of its text.
See ``rules/scoring.yaml`` for a documented example.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from leadflow import config
from leadflow.rules.conditions import EVENT_TYPES, Condition


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FitRule(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    when: Condition
    points: int
    why: str = ""


class EngagementRule(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    event: str
    url: str | None = None  # a regular expression the event's URL must contain a match of
    points: float  # per event, before decay
    cap: float | None = None  # the most (or, for negative points, least) the rule can add
    half_life_days: float | None = Field(default=None, gt=0)  # null: no decay
    why: str = ""

    @field_validator("event")
    @classmethod
    def _known_event(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"unknown event type {value!r}; known: {sorted(EVENT_TYPES)}")
        return value

    @field_validator("url")
    @classmethod
    def _url_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regex {value!r}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _cap_sign(self) -> EngagementRule:
        if self.cap is not None and self.cap * self.points < 0:
            raise ValueError(f"cap {self.cap} and points {self.points} have different signs")
        return self


class NamedCondition(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    when: Condition
    why: str = ""


class Bands(_Strict):
    hot: float = Field(ge=0, le=100)
    warm: float = Field(ge=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> Bands:
        if self.warm >= self.hot:
            raise ValueError(f"bands overlap: warm ({self.warm}) must be below hot ({self.hot})")
        return self


class Normalise(_Strict):
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Normalise:
        if self.min >= self.max:
            raise ValueError(f"normalise.min ({self.min}) must be below normalise.max ({self.max})")
        return self


class ScoringRules(_Strict):
    name: str = "scoring"
    description: str = ""
    fit: tuple[FitRule, ...] = ()
    engagement: tuple[EngagementRule, ...] = ()
    normalise: Normalise | None = None  # default: the lowest and highest totals possible
    bands: Bands
    mql_threshold: float = Field(ge=0, le=100)
    fast_track: tuple[NamedCondition, ...] = ()
    disqualify: tuple[NamedCondition, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> ScoringRules:
        names = [r.name for r in (*self.fit, *self.engagement, *self.fast_track, *self.disqualify)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique; repeated: {repeated}")
        if not self.fit and not self.engagement:
            raise ValueError("a rule set needs at least one fit or engagement rule")
        return self

    def bounds(self) -> tuple[float, float]:
        """The totals mapped to 0 and 100."""
        if self.normalise is not None:
            return self.normalise.min, self.normalise.max
        low = sum(min(r.points, 0) for r in self.fit)
        high = sum(max(r.points, 0) for r in self.fit)
        for rule in self.engagement:
            reach = rule.cap if rule.cap is not None else rule.points * 10
            low += min(reach, 0)
            high += max(reach, 0)
        if high <= low:
            high = low + 1
        return low, high

    def fields(self) -> set[str]:
        found: set[str] = set()
        for rule in (*self.fit, *self.fast_track, *self.disqualify):
            found |= rule.when.fields()
        return found


Condition.model_rebuild()


def parse_rules(text: str, origin: str) -> ScoringRules:
    return config.load_text(ScoringRules, text, origin)


def load_rules(path: str | Path) -> tuple[ScoringRules, str, str]:
    """(rules, version, text) from a file."""
    text = config.read_text(path)
    return parse_rules(text, str(path)), config.content_version(text), text
