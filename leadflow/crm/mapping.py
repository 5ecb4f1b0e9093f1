"""CRM field mappings (``rules/crm/<crm>.yaml``): which leadflow fields go to which CRM
properties, who wins a conflict, and which CRMs are on.

Pure: loading, validation, turning lead rows into ``Record``s, and the three-way merge that
decides, per field, whether leadflow's value is written (``merge``). The database side is in
``leadflow/crm/store.py``, the sending in ``leadflow/crm/sync.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping as MappingType
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from leadflow import config
from leadflow import tables as t
from leadflow.config import ConfigError
from leadflow.crm.base import Record

CRMS = ("hubspot", "salesforce")
LABEL = {"hubspot": "HubSpot", "salesforce": "Salesforce"}  # as people write them
ENV = "LEADFLOW_CRM"  # comma list of CRMs to sync, over the files' `enabled`
POLICIES = ("leadflow_wins", "crm_wins", "crm_wins_after_accept")
# Fields that are not lead columns: worked out from the lead's other tables.
DERIVED = ("owner", "routing_reason", "sla_breached", "recycle_reason")
# The lead columns a mapping may name (everything on leads but the machinery).
MACHINERY = frozenset(
    {"claimed_by", "claim_expires_at", "owner_rep_id", "account_owner_rep_id", "attributes"}
)
LEAD_COLUMNS = tuple(c.key for c in t.leads.c if c.key not in MACHINERY)
# A leadflow field -> the lead column whose change means the CRM must hear (derived fields
# change with these: the owner with the route/reassign that moves owner_rep_id...).
WATCHED = {
    "owner": "owner_rep_id",
    "routing_reason": "owner_rep_id",
    "sla_breached": "sla",  # the SLA hop notes breaches itself
    "recycle_reason": "status",
}
# After the rep accepted, a person's edit in the CRM wins for crm_wins_after_accept.
ACCEPTED = frozenset({"accepted", "qualified", "won", "lost"})  # lifecycle statuses


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldRule(_Strict):
    to: str = Field(min_length=1)
    policy: Literal["leadflow_wins", "crm_wins", "crm_wins_after_accept"] = "leadflow_wins"
    values: dict[str, str] | None = None  # leadflow value -> CRM value
    default: str | None = None  # written on create when leadflow has no value (required fields)
    clear: bool = True  # leadflow's value gone: clear the CRM's (false: a field the CRM requires)


class Inbound(_Strict):
    status: dict[str, Literal["accept", "qualify", "won", "lost", "reject", "not_now"]] = {}


class CrmMapping(_Strict):
    crm: Literal["hubspot", "salesforce"]
    enabled: bool = False
    id_property: str = Field(min_length=1)
    on_deleted: Literal["recreate", "dead_letter"] = "recreate"
    fields: dict[str, FieldRule]
    owners: dict[str, str] = {}  # rep email -> CRM owner id
    inbound: Inbound = Inbound()

    @field_validator("fields", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        """``score: leadflow_score`` is ``score: {to: leadflow_score}``."""
        if isinstance(value, dict):
            return {k: ({"to": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, FieldRule]) -> dict[str, FieldRule]:
        if not value:
            raise ValueError("map at least one field")
        known = set(LEAD_COLUMNS) | set(DERIVED)
        for name in value:
            if name.startswith("attributes."):
                if not name.removeprefix("attributes."):
                    raise ValueError("attributes. needs a name after the dot")
                continue
            if name not in known:
                near = sorted(known, key=lambda k: _distance(k, name))[:1]
                raise ValueError(
                    f"unknown leadflow field {name!r} (did you mean {near[0]!r}? fields: lead "
                    f"columns, attributes.<name>, {', '.join(DERIVED)})"
                )
        targets: dict[str, str] = {}
        for name, rule in value.items():
            if rule.to.lower() in targets:
                raise ValueError(
                    f"{name} and {targets[rule.to.lower()]} both write {rule.to!r}: one each"
                )
            targets[rule.to.lower()] = name
        return value

    @model_validator(mode="after")
    def _id_not_mapped(self) -> CrmMapping:
        for name, rule in self.fields.items():
            if rule.to.lower() == self.id_property.lower():
                raise ValueError(f"{name} writes {rule.to!r}, the id property: leadflow sets it")
        for email in self.owners:
            if "@" not in email:
                raise ValueError(f"owners: {email!r} is not a rep's email")
        return self

    def watched(self) -> set[str]:
        """Lead columns (and ``sla``) whose change means this CRM must hear."""
        out = set()
        for name in self.fields:
            if name.startswith("attributes."):
                out.add("attributes")
            else:
                out.add(WATCHED.get(name, name))
        return out

    def properties(self) -> list[str]:
        """The CRM properties this mapping writes (with the id property)."""
        return [self.id_property, *(rule.to for rule in self.fields.values())]


def _distance(a: str, b: str) -> int:
    """Edit distance, to suggest the field a typo meant."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def mapping_path(crm: str) -> Path:
    from leadflow.settings import rules_folder

    return rules_folder() / "crm" / f"{crm}.yaml"


def load_mapping(crm: str, path: str | Path | None = None) -> tuple[CrmMapping, str]:
    """The mapping of ``crm`` (``rules/crm/<crm>.yaml`` in the rules folder, or ``path``)."""
    if crm not in CRMS:
        raise ConfigError(f"unknown CRM {crm!r}: one of {', '.join(CRMS)}")
    where = Path(path) if path else mapping_path(crm)
    text = config.read_text(where)
    mapping = config.load_text(CrmMapping, text, str(where))
    if mapping.crm != crm:
        raise ConfigError(f"{where}: crm: {mapping.crm!r}, but the file is for {crm!r}")
    return mapping, config.content_version(text)


_CACHE: dict[tuple[str, float, bool], CrmMapping | None] = {}


def enabled() -> list[CrmMapping]:
    """The CRMs to sync: ``LEADFLOW_CRM`` (comma list; "none" for none) when set, else each
    mapping with ``enabled: true``. Read on every decision, so cached by the file's mtime."""
    chosen = os.environ.get(ENV)
    names = (
        [n.strip() for n in chosen.split(",") if n.strip() and n.strip() != "none"]
        if chosen is not None
        else list(CRMS)
    )
    out = []
    for name in names:
        if name not in CRMS:
            raise ConfigError(f"{ENV}: unknown CRM {name!r}: one of {', '.join(CRMS)}")
        path = mapping_path(name)
        try:
            stamp = path.stat().st_mtime
        except OSError:
            if chosen is None:
                continue  # no mapping file: that CRM is simply not in use
            raise ConfigError(f"{ENV} names {name}, but {path} does not exist") from None
        key = (str(path), stamp, chosen is not None)
        if key not in _CACHE:
            _CACHE[key] = load_mapping(name, path)[0] if _wanted(path, chosen) else None
        mapping = _CACHE[key]
        if mapping is not None and (chosen is not None or mapping.enabled):
            out.append(mapping)
    return out


def _wanted(path: Path, chosen: str | None) -> bool:
    """Whether a mapping file is in use: named in LEADFLOW_CRM, or ``enabled: true``. Only
    those are validated here: a mistake in a file that is off stops nothing (``leadflow crm
    check --crm NAME`` still reads it)."""
    if chosen is not None:
        return True
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True  # let the loader say what is wrong with it
    return not isinstance(data, dict) or data.get("enabled") is not False


# --------------------------------------------------------------------------- lead -> record


def _plain(value: Any) -> Any:
    """A value fit for a CRM property: no NaN/NaT/None (absent instead), ISO times, floats
    rounded, numpy scalars as Python ones."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return pd.Timestamp(value).isoformat()
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def leadflow_values(mapping: CrmMapping, lead: MappingType[str, Any]) -> dict[str, Any]:
    """Property -> value leadflow holds for one lead (``lead``: the columns
    ``store.lead_frame`` reads, with ``owner_id`` already resolved). Empty values are left
    out; a value a ``values:`` table does not list is ``UNLISTED`` (``merge`` leaves the
    property alone)."""
    out: dict[str, Any] = {}
    attributes = lead.get("attributes") or {}
    for name, rule in mapping.fields.items():
        if name.startswith("attributes."):
            value = attributes.get(name.removeprefix("attributes.")) if attributes else None
        elif name == "owner":
            value = lead.get("owner_id")
        else:
            value = lead.get(name)
        if isinstance(value, bool | np.bool_) and mapping.crm == "salesforce":
            value = bool(value)  # a checkbox field takes JSON true/false
        else:
            value = _plain(value)
        if value is not None and rule.values is not None:
            value = rule.values.get(str(value), UNLISTED)
        if value is None or value == "":
            continue
        out[rule.to] = value
    return out


UNLISTED = "\0unlisted"  # a value the field's ``values:`` table does not list: left alone


@dataclass(frozen=True)
class Merge:
    """What to write for one lead, and the fields where the CRM's value was kept."""

    properties: dict[str, Any]
    kept: list[str]  # leadflow fields whose CRM value a person set and the policy keeps


def _same(a: Any, b: Any) -> bool:
    if a is None or a == "":
        return b is None or b == ""
    return str(a) == str(b)


def merge(
    mapping: CrmMapping,
    ours: dict[str, Any],
    crm_now: dict[str, Any] | None,
    pushed: dict[str, Any] | None,
    status: str,
    pulled: dict[str, Any] | None = None,
    pending: dict[str, Any] | None = None,
) -> Merge:
    """The three-way merge. ``ours``: leadflow's values; ``crm_now``: the CRM's current values
    (None: the record does not exist); ``pushed``: what leadflow wrote last (None: never);
    ``pulled``: what the pull read back last; ``pending``: what a sync set out to write
    whose answer was lost (counted as leadflow's too). A property whose CRM value differs
    from what leadflow wrote was set by a person:

    - one the pull has not read yet (it differs from ``pulled`` too) is kept for the
      ``crm_wins_after_accept`` fields (owner, status), whatever the lead's status: the pull
      turns it into an activity or a reassignment first, and overwriting it would lose that;
    - otherwise the field's policy decides (``crm_wins``: the person's; after accept for
      ``crm_wins_after_accept``; ``leadflow_wins``: leadflow's).

    A value leadflow no longer has (an owner released, a reason gone) is cleared (None) where
    the CRM still holds what leadflow wrote. On create, ``default``s fill required properties
    leadflow has no value for."""
    props: dict[str, Any] = {}
    kept: list[str] = []
    creating = crm_now is None
    for name, rule in mapping.fields.items():
        prop = rule.to
        value = ours.get(prop)
        if value == UNLISTED:
            continue  # leadflow has a value the CRM has no word for: neither written nor cleared
        if value is None:
            if creating:
                if rule.default is not None:
                    props[prop] = rule.default
            elif (
                rule.clear
                and rule.default is None  # a required property keeps its placeholder
                and not _same((pushed or {}).get(prop), None)
                and _ours(crm_now.get(prop), prop, pushed, pending)
            ):
                props[prop] = None  # leadflow wrote it, nobody changed it, leadflow dropped it
            continue
        if not creating and _person_wins(
            rule, prop, value, crm_now, (pushed, pending), pulled, status
        ):
            kept.append(name)
            continue
        props[prop] = value
    return Merge(props, kept)


def _person_wins(
    rule: FieldRule,
    prop: str,
    value: Any,
    crm_now: dict[str, Any],
    written: tuple[dict[str, Any] | None, dict[str, Any] | None],
    pulled: dict[str, Any] | None,
    status: str,
) -> bool:
    current = crm_now.get(prop)
    if current is None or current == "" or _same(current, value):
        return False
    if _ours(current, prop, *written):
        return False  # what leadflow wrote (or set out to): nobody changed it
    if rule.policy == "crm_wins":
        return True
    if rule.policy == "crm_wins_after_accept":
        unread = not _same(current, (pulled or {}).get(prop))
        return unread or status in ACCEPTED
    return False


def _ours(
    current: Any, prop: str, pushed: dict[str, Any] | None, pending: dict[str, Any] | None
) -> bool:
    """The CRM's value is one leadflow wrote, or set out to write before a crash."""
    if _same(current, (pushed or {}).get(prop)):
        return True
    return bool(pending) and prop in pending and _same(current, pending[prop])


def record(lead_id: int, mapping: CrmMapping, properties: dict[str, Any], email: Any) -> Record:
    return Record(
        lead_id=int(lead_id),
        key=str(int(lead_id)),
        properties={**properties, mapping.id_property: str(int(lead_id))},
        email=email if isinstance(email, str) and email else None,
    )
