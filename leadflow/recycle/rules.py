"""Recycling policy and the leakage report's limits. See ``rules/recycle.yaml``.

Errors name the file and the field (``no_activity.accepted: write ... as 15m, 4h or 2d``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from leadflow import config
from leadflow.lifecycle import Status
from leadflow.rules.fields import ACTIVITY_TYPES
from leadflow.rules.units import calendar_minutes

RECYCLABLE = ("routed", "accepted", "qualified", "lost")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScorePolicy(_Strict):
    action: Literal["decay", "reset", "keep"] = "decay"
    factor: float = Field(default=0.5, gt=0, le=1)  # decay only


def _amount(value: str | float) -> str | float:
    calendar_minutes(value)
    return value


class RecycleRules(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    routed_not_accepted: str | float = "5d"
    no_activity: dict[Literal["accepted", "qualified"], str | float] = {
        "accepted": "14d",
        "qualified": "30d",
    }
    dispositions: tuple[str, ...] = ("not_now", "no_response")
    lost_reasons: tuple[str, ...] = ()
    owner: Literal["release", "keep"] = "release"
    cooldown: str | float = "90d"
    score: ScorePolicy = ScorePolicy()
    max_recycles: int = Field(default=3, ge=0)
    after_max: Literal["disqualify", "cadence"] = "disqualify"
    after_max_cadence: str | None = None
    max_in_status: dict[str, str | float] = {}

    _amounts = field_validator("routed_not_accepted", "cooldown")(_amount)

    @field_validator("no_activity", "max_in_status")
    @classmethod
    def _amount_map(cls, value: dict[str, str | float]) -> dict[str, str | float]:
        for key, amount in value.items():
            try:
                calendar_minutes(amount)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return value

    @field_validator("max_in_status")
    @classmethod
    def _statuses(cls, value: dict[str, str | float]) -> dict[str, str | float]:
        unknown = sorted(set(value) - {s.value for s in Status})
        if unknown:
            raise ValueError(
                f"unknown status(es) {', '.join(unknown)}; known: {', '.join(s.value for s in Status)}"
            )
        return value

    @field_validator("dispositions")
    @classmethod
    def _kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(ACTIVITY_TYPES))
        if unknown:
            raise ValueError(f"unknown activity type(s) {', '.join(unknown)}")
        return value

    @model_validator(mode="after")
    def _cadence(self) -> RecycleRules:
        if self.after_max == "cadence" and not self.after_max_cadence:
            raise ValueError("after_max: cadence needs after_max_cadence: <name>")
        return self

    def delay(self, value: str | float) -> timedelta:
        return timedelta(minutes=calendar_minutes(value))


def load_rules(path: str | Path) -> tuple[RecycleRules, str]:
    text = config.read_text(path)
    return config.load_text(RecycleRules, text, str(path)), config.content_version(text)
