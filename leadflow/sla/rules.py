"""Response SLAs: what sales must do with a lead, and by when. See ``rules/sla.yaml``.

A policy applies to the leads its ``when`` selects (the shared condition language, with
``score`` and ``temperature``), starts at assignment or at acceptance, is met by the first
activity of the kinds it names (never an automated touch), and allows an amount of business
time in the owner's calendar (``15m``, ``4h``, ``2d``; a business day is ``business_day``
of working time). At ``warn_at`` of that time the owner is warned; at the limit, level 1
notifies owner and manager; ``escalate_after`` later (business time from the start), level 2
reassigns the lead or hands it to the manager. Errors name the file, the policy and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SkipValidation, field_validator, model_validator

from leadflow import config
from leadflow.rules.conditions import Condition, routing_condition
from leadflow.rules.fields import ACTIVITY_TYPES
from leadflow.rules.units import parse_amount

_ID = r"^[a-z0-9][a-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy(_Strict):
    name: str = Field(pattern=_ID)
    description: str = ""
    when: SkipValidation[Condition | None] = None  # null: every lead; see routing_rules
    start: Literal["assigned", "accepted"] = "assigned"
    met_by: tuple[str, ...] = Field(min_length=1)
    within: str | float
    escalate_after: str | float | None = None
    escalate: Literal["reassign", "manager"] = "reassign"

    @field_validator("when", mode="before")
    @classmethod
    def _condition(cls, value: Any) -> Any:
        return None if value is None else routing_condition(value)

    @field_validator("met_by")
    @classmethod
    def _kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(ACTIVITY_TYPES))
        if unknown:
            raise ValueError(
                f"unknown activity type(s) {', '.join(unknown)}; known: {', '.join(ACTIVITY_TYPES)}"
            )
        return value

    @model_validator(mode="after")
    def _reassign_needs_owner_stage(self) -> Policy:
        if self.escalate == "reassign" and self.start == "accepted" and self.escalate_after:
            raise ValueError(
                "escalate: reassign is for policies that start at assignment; an accepted "
                "lead is not taken from its owner (use escalate: manager)"
            )
        return self


class SlaRules(_Strict):
    name: str = Field(pattern=_ID)
    description: str = ""
    warn_at: float = Field(default=0.8, gt=0, lt=1)
    business_day: str | float = "8h"
    reject: Literal["reroute", "recycle"] = "reroute"
    policies: tuple[Policy, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> SlaRules:
        names = [p.name for p in self.policies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"policy names repeated: {', '.join(repeated)}")
        day = parse_amount(self.business_day, 1.0)
        for index, policy in enumerate(self.policies):
            where = f"policies[{index}] ({policy.name})"
            try:
                within = parse_amount(policy.within, day)
            except ValueError as exc:
                raise ValueError(f"{where}: within: {exc}") from None
            if policy.escalate_after is not None:
                try:
                    after = parse_amount(policy.escalate_after, day)
                except ValueError as exc:
                    raise ValueError(f"{where}: escalate_after: {exc}") from None
                if after <= within:
                    raise ValueError(
                        f"{where}: escalate_after ({policy.escalate_after}) must be longer "
                        f"than within ({policy.within})"
                    )
        return self

    @property
    def day_minutes(self) -> float:
        return parse_amount(self.business_day, 1.0)

    def minutes(self, policy: Policy) -> tuple[float, float | None]:
        """(allowed, escalate after) in business minutes."""
        day = self.day_minutes
        after = policy.escalate_after
        return parse_amount(policy.within, day), None if after is None else parse_amount(after, day)


def load_rules(path: str | Path) -> tuple[SlaRules, str, str]:
    """The policies, their version (hash of the text) and the text."""
    text = config.read_text(path)
    return config.load_text(SlaRules, text, str(path)), config.content_version(text), text
