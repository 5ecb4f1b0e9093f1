"""Capture, step two: which lead each record belongs to, and the merged values (pure).

Records and stored leads that share an email or an external id are one lead; ``plan_merge``
returns, for a chunk, the leads it touches (new or stored) and each record's outcome
(``inserted`` for the record that creates a lead, ``merged`` for every other one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from leadflow.capture.rules import MergePolicy
from leadflow.rules.fields import LEAD_FIELDS

# Lead fields that merge by policy (identity fields merge by their own rule).
MERGED_FIELDS = (*tuple(f for f in LEAD_FIELDS if f != "email"), "outcome")
STORED_FIELDS = ("email", "external_id", *MERGED_FIELDS)
# The stored leads a chunk is planned against when it is planned alone.
NO_LEADS = pd.DataFrame(columns=["id", "email", "external_id", "attributes", "last_seen_at"])


@dataclass
class MergePlan:
    """What a chunk does to the store."""

    leads: pd.DataFrame  # one row per lead touched: key, id (NA if new), fields, changed
    records: pd.DataFrame  # record_no, key, outcome (inserted | merged)


def lead_keys(records: pd.DataFrame, existing: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Group records into leads. Returns (key per record, external_id to keep per record)."""
    email = records["email"]
    ext = records["external_id"]
    if ext.isna().all() and email.notna().all():
        by_email = dict(zip(existing["email"], existing["id"], strict=True))
        ids = email.map(by_email)
        key = ("e:" + email.astype(str)).where(ids.isna(), "id:" + ids.astype("Int64").astype(str))
        return key, ext

    # General case: union records and existing leads that share an email or external id,
    # never joining two different leads, emails or external ids into one.
    parent: dict[str, str] = {}
    owner: dict[str, dict[str, Any]] = {}

    def find(node: str) -> str:
        root = node
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(node, node) != root:
            parent[node], node = root, parent[node]
        return root

    def add(node: str, kind: str, value: Any) -> None:
        if node not in parent:
            parent[node] = node
            owner[node] = {"email": None, "ext": None, "lead": None}
            owner[node][kind] = value

    def join(a: str, b: str) -> bool:
        ra, rb = find(a), find(b)
        if ra == rb:
            return True
        oa, ob = owner[ra], owner[rb]
        for kind in ("email", "ext", "lead"):
            if oa[kind] is not None and ob[kind] is not None and oa[kind] != ob[kind]:
                return False
        parent[rb] = ra
        for kind in ("email", "ext", "lead"):
            if oa[kind] is None:
                oa[kind] = ob[kind]
        return True

    for lead_id, lead_email, lead_ext in zip(
        existing["id"], existing["email"], existing["external_id"], strict=True
    ):
        node = f"L:{lead_id}"
        add(node, "lead", int(lead_id))
        if isinstance(lead_email, str):
            add(f"e:{lead_email}", "email", lead_email)
            join(node, f"e:{lead_email}")
        if isinstance(lead_ext, str):
            add(f"x:{lead_ext}", "ext", lead_ext)
            join(node, f"x:{lead_ext}")
    keep_ext = ext.copy()
    anchors = []
    for position, (value_email, value_ext) in enumerate(zip(email, ext, strict=True)):
        has_email = isinstance(value_email, str)
        has_ext = isinstance(value_ext, str)
        if has_email:
            add(f"e:{value_email}", "email", value_email)
        if has_ext:
            add(f"x:{value_ext}", "ext", value_ext)
        if has_email and has_ext and not join(f"e:{value_email}", f"x:{value_ext}"):
            keep_ext.iloc[position] = None  # the id belongs to another lead: keep the email's
        anchors.append(f"e:{value_email}" if has_email else f"x:{value_ext}")
    keys = []
    for anchor in anchors:
        root = find(anchor)
        lead = owner[root]["lead"]
        keys.append(f"id:{lead}" if lead is not None else f"g:{root}")
    return pd.Series(keys, index=records.index, dtype=object), keep_ext


def _differs(a: pd.Series, b: pd.Series) -> pd.Series:
    both_null = a.isna() & b.isna()
    equal = (a.astype(object) == b.astype(object)).fillna(False).astype(bool)
    return ~(both_null | equal)


LEAD_COLUMNS = ["email", "external_id", *MERGED_FIELDS, "attributes"]
PLAN_COLUMNS = ["key", "id", *LEAD_COLUMNS, "last_seen_at", "changed"]


def plan_merge(records: pd.DataFrame, existing: pd.DataFrame, policy: MergePolicy) -> MergePlan:
    """Decide, for gated records, which lead each becomes part of and the merged values (pure).

    ``existing`` holds the stored leads that share an email or external id with a record.
    Records that are the only record of a new lead (nearly all of them) skip the grouping.
    """
    if records.empty:
        return MergePlan(
            leads=pd.DataFrame(columns=PLAN_COLUMNS),
            records=pd.DataFrame(columns=["record_no", "key", "outcome"]),
        )
    keys, keep_ext = lead_keys(records, existing)
    incoming = records.assign(
        key=keys.to_numpy(),
        external_id=keep_ext.to_numpy(),
        _seq=records["record_no"].to_numpy(),
        _existing=False,
    ).rename(columns={"record_time": "_time"})
    solo = ~incoming["key"].duplicated(keep=False) & ~incoming["key"].str.startswith("id:")
    single = incoming[solo]
    alone = single[["key", *LEAD_COLUMNS]].assign(
        id=pd.array([pd.NA] * len(single), dtype="Int64"),
        last_seen_at=single["_time"],
        changed=None,
    )
    grouped = _merge_groups(incoming[~solo], existing, policy)
    leads = pd.concat([alone, grouped], ignore_index=True) if len(grouped) else alone
    leads = leads[PLAN_COLUMNS]

    first_record = incoming.groupby("key")["_seq"].min()
    is_new = ~incoming["key"].str.startswith("id:")
    creator = is_new & (incoming["_seq"].to_numpy() == incoming["key"].map(first_record).to_numpy())
    record_plan = pd.DataFrame(
        {
            "record_no": incoming["record_no"].to_numpy(),
            "key": incoming["key"].to_numpy(),
            "outcome": np.where(creator, "inserted", "merged"),
        }
    )
    return MergePlan(leads=leads, records=record_plan)


def _merge_groups(
    incoming: pd.DataFrame, existing: pd.DataFrame, policy: MergePolicy
) -> pd.DataFrame:
    """Merged values for leads with several records, or a stored lead plus records."""
    if incoming.empty:
        return pd.DataFrame(columns=PLAN_COLUMNS)
    if len(existing):
        stored = existing.assign(
            key="id:" + existing["id"].astype("int64").astype(str),
            _seq=-1,
            _existing=True,
            _time=existing["last_seen_at"],
        )
        stored = stored[stored["key"].isin(set(incoming["key"]))]
    else:
        stored = incoming.iloc[0:0].assign(id=pd.Series(dtype="Int64"))
    parts = ["key", "_seq", "_existing", "_time"]
    combined = pd.concat(
        [stored[[*LEAD_COLUMNS, *parts]], incoming[[*LEAD_COLUMNS, *parts]]], ignore_index=True
    )
    combined["_time"] = pd.to_datetime(combined["_time"], utc=True)
    combined = combined.sort_values(["key", "_time", "_seq"], kind="stable")
    groups = combined.groupby("key", sort=False)

    merged = pd.DataFrame(index=groups.size().index)
    # Identity: the stored value if any, else the first one seen (grouping made it unique).
    # "Oldest" keeps what the lead already has; only then the oldest incoming record.
    kept_first = combined.sort_values(
        ["key", "_existing", "_time", "_seq"], ascending=[True, False, True, True], kind="stable"
    ).groupby("key", sort=False)
    for name in ("email", "external_id"):
        merged[name] = kept_first[name].first()
    for name in MERGED_FIELDS:
        rule = policy.policy(name) if name in LEAD_FIELDS else policy.default
        if rule == "oldest_non_empty":
            merged[name] = kept_first[name].first()
        elif rule == "earliest":
            merged[name] = groups[name].min()
        elif rule == "latest":
            merged[name] = groups[name].max()
        else:
            merged[name] = groups[name].last()
    merged["last_seen_at"] = groups["_time"].max()
    merged["attributes"] = _merge_attributes(combined)
    merged.index.name = "key"
    merged = merged.reset_index()

    ids = (
        stored.drop_duplicates("key").set_index("key")["id"]
        if len(stored)
        else pd.Series(dtype="Int64")
    )
    merged["id"] = merged["key"].map(ids).astype("Int64")
    changed: dict[str, list[str]] = {}
    if len(stored):
        before = stored.drop_duplicates("key").set_index("key")
        known = merged[merged["id"].notna()].set_index("key")
        previous = before.loc[known.index]
        for name in ("email", "external_id", *MERGED_FIELDS):
            diff = _differs(known[name], previous[name])
            for key in diff.index[diff.to_numpy()]:
                changed.setdefault(key, []).append(name)
        for key, now_value, old_value in zip(
            known.index, known["attributes"], previous["attributes"], strict=True
        ):
            # Null keys carry nothing (merging drops them), so they are not a change.
            if _without_nulls(now_value) != _without_nulls(old_value):
                changed.setdefault(key, []).append("attributes")
    merged["changed"] = [changed.get(key) for key in merged["key"].tolist()]
    return merged


def _as_dict(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return json.loads(value)
    return None


def _without_nulls(value: Any) -> dict[str, Any]:
    """Attributes as a dict with null-valued keys dropped ({} for none)."""
    return {k: v for k, v in (_as_dict(value) or {}).items() if v is not None}


def _merge_attributes(combined: pd.DataFrame) -> pd.Series:
    """Per lead: attributes merged oldest to newest (newer non-null keys win), as JSON text."""
    sizes = combined.groupby("key", sort=False)["attributes"].transform("size")
    single = combined[sizes == 1].set_index("key")["attributes"]
    out = {
        key: json.dumps(value, ensure_ascii=False, default=str)
        if isinstance(value, dict)
        else value
        for key, value in single.items()
    }
    for key, part in combined[sizes > 1].groupby("key", sort=False)["attributes"]:
        merged: dict[str, Any] = {}
        for value in part:
            for name, item in (_as_dict(value) or {}).items():
                if item is not None:
                    merged[name] = item
        out[key] = json.dumps(merged, ensure_ascii=False, default=str) if merged else None
    return pd.Series(out, dtype=object)
