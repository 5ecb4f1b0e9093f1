"""Capture hop: records as received -> mapped, normalised, gated, de-duplicated leads.

``prepare_records`` and ``plan_merge`` are pure (DataFrames in, DataFrames out);
``write_capture_batch`` does the I/O for one batch in one transaction, and the ``@task``
units at the bottom are what the capture flow composes.

A *batch* is one received input (a file or an API page); it is read in bounded *chunks*,
each gated and written in one transaction. Accounting, for every chunk and so for every
batch: received = inserted + merged + quarantined. A record that creates a lead is
*inserted*; a record that lands on a lead that already exists (in the store or earlier in
the chunk) is *merged*; a record the gate refuses is *quarantined*.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Connection, Engine, select, union, update

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.mapping import LEAD_FIELDS, MergePolicy, SourceMapping
from tasks import normalise as nz
from tasks import quality
from tasks.sources import PARSE_ERROR, RAW, RECORD_NO, RecordChunk

log = logging.getLogger(__name__)

HOP = "captured"
ACTOR = "capture"
# Lead fields that merge by policy (identity fields merge by their own rule).
MERGED_FIELDS = (*tuple(f for f in LEAD_FIELDS if f != "email"), "outcome")
STORED_FIELDS = ("email", "external_id", *MERGED_FIELDS)
WRONG_TYPE = object()  # marker for dict/list values where a scalar was expected


# --------------------------------------------------------------------------- mapping


def _as_text(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Scalars as text (JSON numbers and booleans included); dicts/lists flagged."""
    if values.dtype != object:
        text = values.astype(object)
        return text.where(values.notna(), None), pd.Series(False, index=values.index)

    def convert(value: Any) -> Any:
        if value is None or (isinstance(value, float) and value != value):
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            return str(int(value)) if value.is_integer() else repr(value)
        return WRONG_TYPE

    converted = values.map(convert)
    wrong = converted.map(lambda v: v is WRONG_TYPE).astype(bool)
    return converted.where(~wrong, None), wrong


def _null_markers(values: pd.Series, markers: tuple[str, ...]) -> pd.Series:
    present = values.notna()
    if not present.any():
        return values
    folded = values[present].astype(str).str.strip().str.lower()
    is_marker = pd.Series(False, index=values.index)
    is_marker[present] = folded.isin(markers).to_numpy()
    return values.where(~is_marker, None)


def _value_map(values: pd.Series, table: dict[str, str]) -> pd.Series:
    if not table:
        return values
    folded = {str(k).strip().lower(): v for k, v in table.items()}
    present = values.notna()
    keys = values[present].astype(str).str.strip().str.lower()
    mapped = keys.map(folded)
    out = values.copy()
    hit = mapped.notna()
    out.loc[hit.index[hit]] = mapped[hit]
    return out


def _split_name(full: pd.Series) -> tuple[pd.Series, pd.Series]:
    parts = full.astype("str").str.strip().str.rsplit(" ", n=1)
    first = parts.str[0]
    last = parts.map(lambda p: p[1] if isinstance(p, list) and len(p) > 1 else None)
    return first.where(full.notna(), None), last.where(full.notna(), None)


def _short(value: Any) -> Any:
    text = str(value)
    return text if len(text) <= 200 else f"<{len(text)} characters>"


def prepare_records(
    chunk: RecordChunk,
    mapping: SourceMapping,
    *,
    source: str,
    now: datetime,
    default_phone_region: str | None = None,
) -> pd.DataFrame:
    """Map and normalise a chunk of records into candidate lead rows (pure).

    The result has one row per record with the lead fields, ``attributes`` (a dict per row:
    unmapped columns, and ``_invalid`` for optional values that were blanked), and the gate's
    helper columns: ``record_no``, ``raw``, ``parse_error``, ``identity``,
    ``invalid_fields``, ``record_time``.
    """
    mapping = mapping.resolve(chunk.columns)
    records = chunk.records
    n = len(records)
    index = records.index
    out = pd.DataFrame(index=index)
    out["record_no"] = records[RECORD_NO].astype("int64")
    out["raw"] = records[RAW]
    out["parse_error"] = records[PARSE_ERROR]
    markers = mapping.null_markers

    raw_fields: dict[str, pd.Series] = {}
    originals: dict[str, pd.Series] = {}
    wrong_type: dict[str, pd.Series] = {}
    for column, field_name in mapping.columns.items():
        if column not in records.columns:
            continue
        originals[field_name] = records[column]
        text, wrong = _as_text(records[column])
        text = _null_markers(text, markers)
        raw_fields[field_name] = _value_map(text, mapping.values.get(field_name, {}))
        wrong_type[field_name] = wrong
    if mapping.external_id and mapping.external_id in records.columns:
        text, wrong = _as_text(records[mapping.external_id])
        raw_fields["external_id"] = _null_markers(text, markers)
        wrong_type["external_id"] = wrong

    def raw(field_name: str) -> pd.Series:
        return raw_fields.get(field_name, pd.Series([None] * n, index=index, dtype=object))

    if "name" in raw_fields:
        first, last = _split_name(nz.clean_text(raw("name")))
        raw_fields["first_name"] = raw("first_name").where(raw("first_name").notna(), first)
        raw_fields["last_name"] = raw("last_name").where(raw("last_name").notna(), last)

    invalid: dict[str, pd.Series] = {}
    out["email"], _ = nz.normalise_email(raw("email"))
    namespace = mapping.external_id_namespace or source
    external = nz.clean_text(raw("external_id"))
    out["external_id"] = (namespace + ":" + external.astype("str")).where(external.notna(), None)
    for name in ("first_name", "last_name"):
        out[name], invalid[name] = nz.normalise_name(raw(name))
    for name in ("company", "title"):
        out[name], invalid[name] = nz.normalise_text(raw(name))
    out["country"], invalid["country"] = nz.normalise_country(raw("country"))
    out["phone"], invalid["phone"] = nz.normalise_phone(
        raw("phone"), out["country"], default_region=default_phone_region
    )
    out["website"], invalid["website"] = nz.normalise_website(raw("website"))
    out["created_at"], invalid["created_at"] = nz.normalise_timestamp(raw("created_at"), now=now)
    source_values, _ = nz.normalise_text(raw("source"))
    out["source"] = source_values.where(source_values.notna(), source)
    out["outcome"], invalid["outcome"] = _outcome(records, mapping)

    # Wrong JSON types on a field count as invalid values of that field.
    for name, wrong in wrong_type.items():
        if name in invalid:
            invalid[name] = invalid[name] | wrong

    quarantine_fields = {f for f, policy in mapping.on_invalid.items() if policy == "quarantine"}
    strict: list[pd.Series] = []
    notes: dict[str, pd.Series] = {}
    for name, mask in invalid.items():
        if not mask.any():
            continue
        if name in quarantine_fields:
            strict.append(mask.map(lambda bad, field_name=name: field_name if bad else None))
        else:
            if name == "outcome":
                original = _outcome_raw(records, mapping)
            else:
                original = originals.get(name, raw(name))
            notes[name] = original.astype(object).where(mask, None)
            if name in out.columns and name != "created_at":
                out[name] = out[name].where(~mask, None)
    for name in ("email", "external_id"):
        wrong = wrong_type.get(name)
        if wrong is not None and wrong.any():
            strict.append(
                wrong.map(
                    lambda bad, field_name=name: f"{field_name} (not a text value)" if bad else None
                )
            )
            out[name] = out[name].where(~wrong, None)
    out["invalid_fields"] = _join_flags(strict, index)

    out["attributes"] = _attributes(records, mapping, chunk.columns, notes)
    identity = out["email"].where(out["email"].notna(), out["external_id"])
    # A record that could not be parsed fails on that alone, not also on identity.
    out["identity"] = identity.where(out["parse_error"].isna(), "(unparsed)")
    out["record_time"] = out["created_at"].where(out["created_at"].notna(), pd.Timestamp(now))
    return out


def _join_flags(flags: list[pd.Series], index: pd.Index) -> pd.Series:
    if not flags:
        return pd.Series([None] * len(index), index=index, dtype=object)
    frame = pd.concat(flags, axis=1)
    joined = frame.apply(
        lambda row: ", ".join(v for v in row if isinstance(v, str)) or None, axis=1
    )
    return joined.astype(object).where(joined.notna(), None)


def _outcome_raw(records: pd.DataFrame, mapping: SourceMapping) -> pd.Series:
    if mapping.outcome is None or mapping.outcome.column not in records.columns:
        return pd.Series([None] * len(records), index=records.index, dtype=object)
    text, _ = _as_text(records[mapping.outcome.column])
    return _null_markers(text, mapping.null_markers)


def _outcome(records: pd.DataFrame, mapping: SourceMapping) -> tuple[pd.Series, pd.Series]:
    raw = _outcome_raw(records, mapping)
    if mapping.outcome is None:
        return raw, pd.Series(False, index=records.index)
    folded = raw.astype("str").str.strip().str.lower()
    outcome = pd.Series([None] * len(raw), index=raw.index, dtype=object)
    outcome[folded.isin(mapping.outcome.won) & raw.notna()] = "won"
    outcome[folded.isin(mapping.outcome.lost) & raw.notna()] = "lost"
    return outcome, raw.notna() & outcome.isna()


def _attributes(
    records: pd.DataFrame,
    mapping: SourceMapping,
    columns: list[str],
    notes: dict[str, pd.Series],
) -> list[dict[str, Any] | None]:
    used = set(mapping.columns) | set(mapping.ignore)
    if mapping.external_id:
        used.add(mapping.external_id)
    if mapping.outcome:
        used.add(mapping.outcome.column)
    extra = [c for c in columns if c not in used and c in records.columns]
    markers = set(mapping.null_markers)
    result: list[dict[str, Any] | None] = [None] * len(records)
    if extra:
        values = records[extra].to_numpy(dtype=object)
        for position, row in enumerate(values):
            kept = {}
            for name, value in zip(extra, row, strict=True):
                if value is None or (isinstance(value, float) and value != value):
                    continue
                if isinstance(value, str) and value.strip().lower() in markers:
                    continue
                kept[name] = value
            result[position] = kept or None
    if notes:
        note_frame = pd.DataFrame(notes)
        for position, row in enumerate(note_frame.itertuples(index=False)):
            bad = {
                name: _short(value)
                for name, value in zip(note_frame.columns, row, strict=True)
                if value is not None and value == value
            }
            if bad:
                current = result[position] or {}
                current["_invalid"] = bad
                result[position] = current
    return result


# --------------------------------------------------------------------------- merging


@dataclass
class MergePlan:
    """What a chunk does to the store."""

    leads: pd.DataFrame  # one row per lead touched: key, id (NA if new), fields, changed
    records: pd.DataFrame  # record_no, key, outcome (inserted | merged)


def _lead_keys(records: pd.DataFrame, existing: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
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


def plan_merge(records: pd.DataFrame, existing: pd.DataFrame, policy: MergePolicy) -> MergePlan:
    """Decide, for gated records, which lead each becomes part of and the merged values (pure).

    ``existing`` holds the stored leads that share an email or external id with a record.
    """
    if records.empty:
        leads = pd.DataFrame(
            columns=[
                "key",
                "id",
                "email",
                "external_id",
                *MERGED_FIELDS,
                "attributes",
                "last_seen_at",
                "changed",
            ]
        )
        return MergePlan(leads=leads, records=pd.DataFrame(columns=["record_no", "key", "outcome"]))
    keys, keep_ext = _lead_keys(records, existing)
    incoming = records.assign(
        key=keys.to_numpy(),
        external_id=keep_ext.to_numpy(),
        _seq=records["record_no"].to_numpy(),
        _existing=False,
    )
    incoming = incoming.rename(columns={"record_time": "_time"})
    lead_cols = ["email", "external_id", *MERGED_FIELDS, "attributes"]
    if len(existing):
        stored = existing.assign(
            key="id:" + existing["id"].astype("int64").astype(str),
            _seq=-1,
            _existing=True,
            _time=existing["last_seen_at"],
        )
        stored = stored[stored["key"].isin(set(incoming["key"]))]
    else:
        stored = pd.DataFrame(columns=[*lead_cols, "key", "_seq", "_existing", "_time", "id"])
    combined = pd.concat(
        [
            stored[[*lead_cols, "key", "_seq", "_existing", "_time"]],
            incoming[[*lead_cols, "key", "_seq", "_existing", "_time"]],
        ],
        ignore_index=True,
    )
    combined["_time"] = pd.to_datetime(combined["_time"], utc=True)
    combined = combined.sort_values(["key", "_time", "_seq"], kind="stable")
    groups = combined.groupby("key", sort=False)

    merged = pd.DataFrame(index=groups.size().index)
    for name in ("email", "external_id"):
        # Identity: the stored value if any, else the first one seen (grouping made it unique).
        ordered = combined.sort_values(
            ["key", "_existing", "_seq"], ascending=[True, False, True], kind="stable"
        )
        merged[name] = ordered.groupby("key", sort=False)[name].first()
    # "Oldest" keeps what the lead already has; only then the oldest incoming record.
    kept_first = combined.sort_values(
        ["key", "_existing", "_time", "_seq"], ascending=[True, False, True, True], kind="stable"
    )
    for name in MERGED_FIELDS:
        rule = policy.policy(name) if name in LEAD_FIELDS else policy.default
        column = groups[name]
        if rule == "oldest_non_empty":
            merged[name] = kept_first.groupby("key", sort=False)[name].first()
        elif rule == "earliest":
            merged[name] = column.min()
        elif rule == "latest":
            merged[name] = column.max()
        else:
            merged[name] = column.last()
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
            if now_value != old_value:
                changed.setdefault(key, []).append("attributes")
    merged["changed"] = [changed.get(key, []) for key in merged["key"]]

    first_record = incoming.groupby("key")["_seq"].min()
    is_new = ~incoming["key"].isin(set(merged.loc[merged["id"].notna(), "key"]))
    creator = is_new & (incoming["_seq"].to_numpy() == incoming["key"].map(first_record).to_numpy())
    record_plan = pd.DataFrame(
        {
            "record_no": incoming["record_no"].to_numpy(),
            "key": incoming["key"].to_numpy(),
            "outcome": np.where(creator, "inserted", "merged"),
        }
    )
    return MergePlan(leads=merged, records=record_plan)


def _merge_attributes(combined: pd.DataFrame) -> pd.Series:
    """Per lead: attribute dicts merged oldest to newest (newer keys win)."""
    sizes = combined.groupby("key", sort=False)["attributes"].transform("size")
    single = combined[sizes == 1].set_index("key")["attributes"]
    out = single.to_dict()
    for key, part in combined[sizes > 1].groupby("key", sort=False)["attributes"]:
        merged: dict[str, Any] = {}
        for value in part:
            if isinstance(value, dict):
                merged.update(value)
        out[key] = merged or None
    return pd.Series(out, dtype=object)


# --------------------------------------------------------------------------- store I/O


def find_existing(conn: Connection, records: pd.DataFrame) -> pd.DataFrame:
    """Stored leads sharing an email or external id with any of ``records``."""
    columns = ["id", *STORED_FIELDS, "attributes", "last_seen_at"]
    keys = pd.concat([records["email"], records["external_id"]]).dropna().unique()
    if len(keys) == 0:
        return pd.DataFrame(columns=columns)
    leads = t.leads
    frame = pd.DataFrame({"email": keys})
    with store.staged(conn, leads, frame) as stage:
        picked = [leads.c[c] for c in columns]
        by_email = select(*picked).join(stage, leads.c.email == stage.c.email)
        by_ext = select(*picked).join(stage, leads.c.external_id == stage.c.email)
        found = store.read_frame(conn, union(by_email, by_ext))
    if found.empty:
        return pd.DataFrame(columns=columns)
    return found


@dataclass
class ChunkOutcome:
    batch_id: int
    chunk_id: int
    chunk_no: int
    received: int
    inserted: int
    merged: int
    quarantined: int
    accepted: bool
    gate: quality.GateResult = field(repr=False)
    blanked: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "received": self.received,
            "inserted": self.inserted,
            "merged": self.merged,
            "quarantined": self.quarantined,
        }


def write_capture_chunk(
    engine: Engine,
    *,
    batch_id: int,
    chunk: RecordChunk,
    mapping: SourceMapping,
    source: str,
    now: datetime,
    flow_run_id: str | None = None,
    max_quarantine_rate: float | None = None,
    cursor: tuple[str, str] | None = None,
) -> ChunkOutcome:
    """Gate one chunk and write everything it does in a single transaction.

    Raises ``quality.GateFailed`` after recording a rejected chunk (every record of it is
    then quarantined, so the batch still accounts for everything it received).
    """
    prepared = prepare_records(chunk, mapping, source=source, now=now)
    split = quality.split_rows(HOP, prepared)
    received = len(prepared)
    with engine.begin() as conn:
        store.serialize_writers(conn, "capture")
        existing = find_existing(conn, split.passed)
        plan = plan_merge(split.passed, existing, mapping.merge)
        chunk_id = conn.execute(
            t.capture_chunks.insert()
            .values(
                batch_id=batch_id,
                chunk_no=chunk.chunk_no,
                status="pending",
                received=received,
                inserted=0,
                merged=0,
                quarantined=0,
                created_at=store.utcnow(),
            )
            .returning(t.capture_chunks.c.id)
        ).scalar_one()
        gate = quality.check_batch(
            HOP,
            plan.leads,
            batch_ref=f"capture:{batch_id}/{chunk.chunk_no}",
            received=received,
            quarantined=len(split.quarantined),
            row_checks=split.checks,
            max_quarantine_rate=max_quarantine_rate,
            row_validation=split.validation,
        )
        where = {"batch_id": batch_id, "chunk_no": chunk.chunk_no, "flow_run_id": flow_run_id}
        if gate.success:
            counts = _write_accepted(conn, split, plan, now=now, **where)
        else:
            counts = _write_rejected(conn, prepared, split, gate, **where)
        conn.execute(
            update(t.capture_chunks)
            .where(t.capture_chunks.c.id == chunk_id)
            .values(status="accepted" if gate.success else "rejected", **counts)
        )
        batches = t.capture_batches
        conn.execute(
            update(batches)
            .where(batches.c.id == batch_id)
            .values({name: batches.c[name] + value for name, value in counts.items()})
        )
        quality.record(conn, gate, flow_run_id=flow_run_id, at=store.utcnow())
        if gate.success and cursor is not None:
            save_cursor(conn, *cursor)
    blanked: dict[str, int] = {}
    for attributes in split.passed["attributes"]:
        if isinstance(attributes, dict) and "_invalid" in attributes:
            for name in attributes["_invalid"]:
                blanked[name] = blanked.get(name, 0) + 1
    outcome = ChunkOutcome(
        batch_id=batch_id,
        chunk_id=chunk_id,
        chunk_no=chunk.chunk_no,
        accepted=gate.success,
        gate=gate,
        blanked=blanked,
        **counts,
    )
    if not gate.success:
        raise quality.GateFailed(gate)
    return outcome


def _write_accepted(
    conn: Connection,
    split: quality.RowSplit,
    plan: MergePlan,
    *,
    now: datetime,
    batch_id: int,
    chunk_no: int,
    flow_run_id: str | None,
) -> dict[str, int]:
    leads = plan.leads
    new = leads[leads["id"].isna()].copy()
    new["id"] = store.allocate_ids(conn, t.leads, len(new))
    key_to_id = dict(zip(new["key"], new["id"], strict=True))
    key_to_id.update(
        dict(
            zip(
                leads.loc[leads["id"].notna(), "key"],
                leads.loc[leads["id"].notna(), "id"].astype("int64"),
                strict=True,
            )
        )
    )
    records = plan.records.copy()
    records["lead_id"] = records["key"].map(key_to_id).astype("int64")
    wall = store.utcnow()

    creators = records[records["outcome"] == "inserted"].set_index("key")["record_no"]
    if len(new):
        rows = new[["id", *STORED_FIELDS, "attributes", "last_seen_at"]].copy()
        rows["captured_at"] = pd.Timestamp(now)
        rows["updated_at"] = pd.Timestamp(wall)
        lifecycle.admit(
            conn,
            rows,
            actor=ACTOR,
            at=now,
            batch_id=batch_id,
            flow_run_id=flow_run_id,
            details=[{"record_no": int(creators[k])} for k in new["key"]],
        )
    known = leads[leads["id"].notna()]
    if len(known):
        changes = known[["id", *STORED_FIELDS, "attributes", "last_seen_at"]].copy()
        changes["id"] = changes["id"].astype("int64")
        changes["updated_at"] = pd.Timestamp(wall)
        # Fields only: status is the lifecycle's, and a merge does not change it.
        store.update_from_frame(conn, t.leads, changes)
    merged_records = records[records["outcome"] == "merged"]
    if len(merged_records):
        changed = dict(zip(leads["key"], leads["changed"], strict=True))
        lifecycle.record_merges(
            conn,
            merged_records["lead_id"],
            actor=ACTOR,
            at=now,
            batch_id=batch_id,
            flow_run_id=flow_run_id,
            details=[
                {"record_no": int(no), "changed": changed.get(k) or []}
                for no, k in zip(merged_records["record_no"], merged_records["key"], strict=True)
            ],
        )
    outcomes = dict(zip(records["record_no"], records["outcome"], strict=True))
    lead_ids = dict(zip(records["record_no"], records["lead_id"], strict=True))
    _write_raw(conn, batch_id, chunk_no, split, outcomes, lead_ids)
    _write_quarantine(conn, batch_id, split.quarantined, flow_run_id=flow_run_id)
    inserted = int((records["outcome"] == "inserted").sum())
    return {
        "received": len(split.passed) + len(split.quarantined),
        "inserted": inserted,
        "merged": len(records) - inserted,
        "quarantined": len(split.quarantined),
    }


def _write_rejected(
    conn: Connection,
    prepared: pd.DataFrame,
    split: quality.RowSplit,
    gate: quality.GateResult,
    *,
    batch_id: int,
    chunk_no: int,
    flow_run_id: str | None,
) -> dict[str, int]:
    failed = ", ".join(
        n
        for n in gate.failed_checks
        if n in {c["name"] for c in gate.checks if c["level"] == "batch"}
    )
    own = dict(zip(split.quarantined["record_no"], split.quarantined["reasons"], strict=True))
    everything = prepared.copy()
    everything["reasons"] = [
        [*own.get(no, []), f"chunk_rejected: {failed}"] for no in everything["record_no"]
    ]
    _write_raw(
        conn, batch_id, chunk_no, quality.RowSplit(prepared.iloc[0:0], everything, []), {}, {}
    )
    _write_quarantine(conn, batch_id, everything, flow_run_id=flow_run_id)
    return {"received": len(prepared), "inserted": 0, "merged": 0, "quarantined": len(prepared)}


def _write_raw(
    conn: Connection,
    batch_id: int,
    chunk_no: int,
    split: quality.RowSplit,
    outcomes: dict[int, str],
    lead_ids: dict[int, int],
) -> None:
    passed = pd.DataFrame(
        {
            "batch_id": batch_id,
            "chunk_no": chunk_no,
            "record_no": split.passed["record_no"].to_numpy(),
            "raw": split.passed["raw"].to_numpy(),
            "outcome": split.passed["record_no"].map(outcomes).to_numpy(),
            "lead_id": pd.array(split.passed["record_no"].map(lead_ids), dtype="Int64"),
        }
    )
    bad = pd.DataFrame(
        {
            "batch_id": batch_id,
            "chunk_no": chunk_no,
            "record_no": split.quarantined["record_no"].to_numpy(),
            "raw": split.quarantined["raw"].to_numpy(),
            "outcome": "quarantined",
            "lead_id": pd.array([None] * len(split.quarantined), dtype="Int64"),
        }
    )
    store.bulk_insert(conn, t.raw_captures, pd.concat([passed, bad], ignore_index=True))


def _write_quarantine(
    conn: Connection, batch_id: int, quarantined: pd.DataFrame, *, flow_run_id: str | None
) -> None:
    if quarantined.empty:
        return
    rows = pd.DataFrame(
        {
            "hop": "capture",
            "batch_id": batch_id,
            "record_no": quarantined["record_no"].to_numpy(),
            "record": quarantined["raw"].to_numpy(),
            "reasons": store.json_column(quarantined["reasons"]),
            "flow_run_id": flow_run_id,
            "created_at": pd.Timestamp(store.utcnow()),
        }
    )
    store.bulk_insert(conn, t.quarantine, rows)


def save_cursor(conn: Connection, source: str, value: str) -> None:
    existing = conn.execute(
        select(t.source_cursors.c.cursor).where(t.source_cursors.c.source == source)
    ).scalar()
    if existing is None:
        conn.execute(
            t.source_cursors.insert().values(source=source, cursor=value, updated_at=store.utcnow())
        )
    elif value > existing:
        conn.execute(
            update(t.source_cursors)
            .where(t.source_cursors.c.source == source)
            .values(cursor=value, updated_at=store.utcnow())
        )


def load_cursor(conn: Connection, source: str) -> str | None:
    return conn.execute(
        select(t.source_cursors.c.cursor).where(t.source_cursors.c.source == source)
    ).scalar()


# --------------------------------------------------------------------------- batches


def find_complete_batch(
    conn: Connection, *, source: str, target: str, content_hash: str
) -> int | None:
    b = t.capture_batches
    return conn.execute(
        select(b.c.id)
        .where(
            b.c.source == source,
            b.c.target == target,
            b.c.content_hash == content_hash,
            b.c.status == "complete",
        )
        .order_by(b.c.id)
        .limit(1)
    ).scalar()


def open_batch(
    engine: Engine,
    *,
    source: str,
    target: str,
    kind: str,
    uri: str,
    content_hash: str,
    size: int | None,
    header: list[str] | None,
    mapping_version: str,
    flow_run_id: str | None,
) -> tuple[int, int | None]:
    """Record a received input. Returns (batch id, id of an earlier identical batch or None)."""
    with engine.begin() as conn:
        store.serialize_writers(conn, "capture")
        earlier = find_complete_batch(conn, source=source, target=target, content_hash=content_hash)
        batch_id = conn.execute(
            t.capture_batches.insert()
            .values(
                source=source,
                target=target,
                kind=kind,
                uri=uri,
                content_hash=content_hash,
                size_bytes=size,
                header=header,
                mapping_version=mapping_version,
                status="duplicate" if earlier else "running",
                message=f"same content as batch {earlier}; nothing to do" if earlier else None,
                flow_run_id=flow_run_id,
                started_at=store.utcnow(),
                finished_at=store.utcnow() if earlier else None,
            )
            .returning(t.capture_batches.c.id)
        ).scalar_one()
    return batch_id, earlier


def close_batch(
    engine: Engine, batch_id: int, *, status: str, message: str | None = None
) -> dict[str, Any]:
    b = t.capture_batches
    with engine.begin() as conn:
        conn.execute(
            update(b)
            .where(b.c.id == batch_id)
            .values(status=status, message=message, finished_at=store.utcnow())
        )
        row = conn.execute(select(b).where(b.c.id == batch_id)).mappings().one()
    return dict(row)


# --------------------------------------------------------------------------- tasks


def _not_a_gate_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient errors, never a gate's verdict."""
    try:
        state.result()
    except quality.GateFailed:
        return False
    except Exception:
        return True
    return False


@task(
    name="capture-chunk",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_not_a_gate_failure,
    task_run_name="capture-{batch_id}-chunk-{chunk.chunk_no}",
)
def capture_chunk(
    database_url: str,
    batch_id: int,
    chunk: RecordChunk,
    mapping: SourceMapping,
    source: str,
    now: datetime,
    max_quarantine_rate: float | None = None,
    cursor: tuple[str, str] | None = None,
) -> ChunkOutcome:
    """Gate and store one chunk of records (one transaction)."""
    from prefect.logging import get_run_logger
    from prefect.runtime import flow_run

    outcome = write_capture_chunk(
        store.get_engine(database_url),
        batch_id=batch_id,
        chunk=chunk,
        mapping=mapping,
        source=source,
        now=now,
        flow_run_id=flow_run.get_id(),
        max_quarantine_rate=max_quarantine_rate,
        cursor=cursor,
    )
    get_run_logger().info(
        "batch %s chunk %s: received %s, inserted %s, merged %s, quarantined %s",
        batch_id,
        chunk.chunk_no,
        outcome.received,
        outcome.inserted,
        outcome.merged,
        outcome.quarantined,
    )
    return outcome
