"""The one condition language of every rules file: scoring's fit, fast-track and disqualify
rules, routing rules and segments, SLA policies, cadence entries and exits, recycling.

A condition is a test on one field (``equals``, ``in``, ``range``, ``regex``, ``exists``,
``missing``) or a combination (``all``, ``any``, ``not``). ``Condition`` validates one as
written in YAML, naming the field it refuses; ``routing_condition`` lets a hop after scoring
also name what scoring wrote (``score``, ``temperature``) and the hop's own fields;
``condition_mask`` evaluates one over a DataFrame of leads (pure, vectorised).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from leadflow.rules import fields
from leadflow.tables import ENRICHED_FIELDS

# Fields a condition may name (plus any ``attributes.<key>`` and ``engagement.<event_type>``):
# what capture and enrichment put on a lead, less enrichment's bookkeeping.
LEAD_FIELDS = frozenset({*fields.LEAD_FIELDS, "external_id", "outcome", *ENRICHED_FIELDS}) - {
    "account_owner_rep_id",
    "enrichment_notes",
}
EVENT_TYPES = frozenset(fields.EVENT_TYPES)


# Fields a condition after scoring may use besides the lead fields: what scoring wrote.
SCORED_FIELDS = frozenset({"score", "temperature", "score_version"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    """One test on a field, or a combination of conditions (exactly one form per condition)."""

    field: str | None = None
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    range: tuple[float | None, float | None] | None = None  # [min, max]; either may be null
    regex: str | None = None
    exists: bool | None = None
    missing: bool | None = None
    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(default=None, alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_form(self) -> Condition:
        tests = [
            n
            for n in ("equals", "in_", "range", "regex", "exists", "missing")
            if getattr(self, n) is not None
        ]
        combos = [n for n in ("all", "any", "not_") if getattr(self, n) is not None]
        if self.field is not None:
            if combos:
                raise ValueError("a condition with `field` cannot also have all/any/not")
            if len(tests) != 1:
                raise ValueError(
                    f"condition on {self.field!r} needs exactly one of equals, in, range, regex, "
                    f"exists, missing (got {', '.join(t.rstrip('_') for t in tests) or 'none'})"
                )
            _check_field(self.field)
        elif len(combos) != 1 or tests:
            raise ValueError(
                "a condition is either {field: ..., <test>: ...} or exactly one of all/any/not"
            )
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"bad regex {self.regex!r}: {exc}") from exc
        if self.range is not None:
            low, high = self.range
            if low is None and high is None:
                raise ValueError("range needs a minimum or a maximum")
            if low is not None and high is not None and low > high:
                raise ValueError(f"range minimum {low} is above its maximum {high}")
        return self

    def fields(self) -> set[str]:
        found = {self.field} if self.field else set()
        for child in (self.all or []) + (self.any or []) + ([self.not_] if self.not_ else []):
            found |= child.fields()
        return found


def _check_field(name: str) -> None:
    if name.startswith("attributes.") and len(name) > len("attributes."):
        return
    if name.startswith("engagement."):
        kind = name.split(".", 1)[1]
        if kind not in EVENT_TYPES:
            raise ValueError(f"unknown event type in {name!r}; known: {sorted(EVENT_TYPES)}")
        return
    if name not in LEAD_FIELDS:
        raise ValueError(
            f"unknown field {name!r}: use a lead field ({', '.join(sorted(LEAD_FIELDS))}), "
            "attributes.<key> or engagement.<event_type>"
        )


def routing_condition(data: Any, fields: frozenset[str] = SCORED_FIELDS) -> Condition:
    """A condition in the shared language where ``score`` and ``temperature`` (or the other
    ``fields`` a later hop knows: ``status`` for cadences) are fields too.

    Scoring's ``Condition`` refuses fields it does not produce; routing runs after scoring, so
    scored fields are validated under a stand-in name and then given their own back.
    """
    if isinstance(data, Condition):
        return data
    return _restore(Condition.model_validate(_disguise(data, fields)))


_STAND_IN = "attributes.__scored__."


def _disguise(data: Any, fields: frozenset[str]) -> Any:
    if isinstance(data, list):
        return [_disguise(item, fields) for item in data]
    if not isinstance(data, dict):
        return data
    out = {key: _disguise(value, fields) for key, value in data.items()}
    field = data.get("field")
    if field in fields:
        out["field"] = _STAND_IN + field
    elif isinstance(field, str) and field.startswith("engagement."):
        raise ValueError(f"routing cannot use {field!r}: engagement counts are scoring's input")
    return out


def _restore(condition: Condition) -> Condition:
    update: dict[str, Any] = {}
    if condition.field and condition.field.startswith(_STAND_IN):
        update["field"] = condition.field[len(_STAND_IN) :]
    for key in ("all", "any"):
        children = getattr(condition, key)
        if children is not None:
            update[key] = [_restore(child) for child in children]
    if condition.not_ is not None:
        update["not_"] = _restore(condition.not_)
    return condition.model_copy(update=update) if update else condition


# --------------------------------------------------------------------------- evaluation


def numbers(values: pd.Series) -> pd.Series:
    """Values as numbers; text like "25,000" counts (sources send numbers as text)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64")
    text = values.astype(object).where(values.notna(), None)
    as_text = text.map(lambda v: v.replace(",", "") if isinstance(v, str) else v)
    return pd.to_numeric(as_text, errors="coerce")


def _present(values: pd.Series) -> np.ndarray:
    present = values.notna().to_numpy().copy()
    if values.dtype == object or values.dtype == "str":
        present &= (
            values.astype(object).where(values.notna(), "").astype(str).str.strip() != ""
        ).to_numpy()
    return present


def as_text(values: pd.Series) -> pd.Series:
    def text(value: object) -> object:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    if values.dtype == "str":
        return values
    return values.astype(object).map(text)


def _equal(values: pd.Series, wanted: object) -> np.ndarray:
    if isinstance(wanted, bool):
        text = as_text(values)
        return (text == ("true" if wanted else "false")).fillna(False).to_numpy(dtype=bool)
    if isinstance(wanted, int | float):
        return (numbers(values) == float(wanted)).fillna(False).to_numpy(dtype=bool)
    return (as_text(values) == str(wanted)).fillna(False).to_numpy(dtype=bool)


def condition_mask(condition: Condition, frame: pd.DataFrame) -> np.ndarray:
    """Which rows of ``frame`` satisfy ``condition`` (a missing value satisfies nothing but
    ``missing``)."""
    if condition.all is not None:
        out = np.ones(len(frame), dtype=bool)
        for child in condition.all:
            out &= condition_mask(child, frame)
        return out
    if condition.any is not None:
        out = np.zeros(len(frame), dtype=bool)
        for child in condition.any:
            out |= condition_mask(child, frame)
        return out
    if condition.not_ is not None:
        return ~condition_mask(condition.not_, frame)
    values = (
        frame[condition.field]
        if condition.field in frame.columns
        else pd.Series([None] * len(frame), index=frame.index, dtype=object)
    )
    if condition.exists is not None:
        present = _present(values)
        return present if condition.exists else ~present
    if condition.missing is not None:
        present = _present(values)
        return ~present if condition.missing else present
    if condition.equals is not None:
        return _equal(values, condition.equals)
    if condition.in_ is not None:
        out = np.zeros(len(frame), dtype=bool)
        for wanted in condition.in_:
            out |= _equal(values, wanted)
        return out
    if condition.range is not None:
        low, high = condition.range
        number = numbers(values)
        out = number.notna().to_numpy().copy()
        if low is not None:
            out &= (number >= low).fillna(False).to_numpy(dtype=bool)
        if high is not None:
            out &= (number < high).fillna(False).to_numpy(dtype=bool)
        return out
    text = as_text(values).astype("str")
    return text.str.contains(condition.regex, regex=True, na=False).to_numpy(dtype=bool)
