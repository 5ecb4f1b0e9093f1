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

import hashlib
import json
import logging
import multiprocessing
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import ARRAY, Connection, Engine, Text, any_, bindparam, or_, select, union, update

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
    if values.dtype == "str" or pd.api.types.infer_dtype(values, skipna=True) in (
        "string",
        "empty",
    ):
        return values, pd.Series(False, index=values.index)
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
    out["blanked_fields"] = _join_flags(
        [mask.map({True: name, False: None}) for name, mask in _note_masks(notes).items()], index
    )
    identity = out["email"].where(out["email"].notna(), out["external_id"])
    # A record that could not be parsed fails on that alone, not also on identity.
    out["identity"] = identity.where(out["parse_error"].isna(), "(unparsed)")
    out["record_time"] = out["created_at"].where(out["created_at"].notna(), pd.Timestamp(now))
    return out


def _note_masks(notes: dict[str, pd.Series]) -> dict[str, pd.Series]:
    return {name: values.notna() for name, values in notes.items()}


def _join_flags(flags: list[pd.Series], index: pd.Index) -> pd.Series:
    """Per row, the non-null flags joined with ", " (None when there are none)."""
    out = np.full(len(index), None, dtype=object)
    for flag in flags:
        values = flag.to_numpy(dtype=object)
        has = pd.notna(values)
        if not has.any():
            continue
        current = out[has]
        out[has] = [
            new if old is None else f"{old}, {new}"
            for old, new in zip(current, values[has], strict=True)
        ]
    return pd.Series(out, index=index, dtype=object)


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
) -> pd.Series:
    """Per record, unmapped columns as a JSON object (text), plus ``_invalid`` notes."""
    used = set(mapping.columns) | set(mapping.ignore)
    if mapping.external_id:
        used.add(mapping.external_id)
    if mapping.outcome:
        used.add(mapping.outcome.column)
    extra = [c for c in columns if c not in used and c in records.columns]
    result = pd.Series([None] * len(records), index=records.index, dtype=object)
    if extra:
        frame = records[extra].copy()
        for name in extra:
            frame[name] = _null_markers(frame[name], mapping.null_markers)
        present = frame.notna().any(axis=1)
        if present.any():
            kept = frame[present]
            lines = kept.to_json(orient="records", lines=True, force_ascii=False).split("\n")
            result[present] = lines[: len(kept)]
    if notes:
        note_frame = pd.DataFrame(notes)
        flagged = note_frame.notna().any(axis=1)
        for index in note_frame.index[flagged]:
            bad = {
                k: _short(v) for k, v in note_frame.loc[index].items() if v is not None and v == v
            }
            current = json.loads(result[index]) if isinstance(result[index], str) else {}
            current["_invalid"] = bad
            result[index] = json.dumps(current, ensure_ascii=False, default=str)
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
    keys, keep_ext = _lead_keys(records, existing)
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
            if _as_dict(now_value) != _as_dict(old_value):
                changed.setdefault(key, []).append("attributes")
    merged["changed"] = [changed.get(key) for key in merged["key"].tolist()]
    return merged


def _as_dict(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return json.loads(value)
    return None


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


# --------------------------------------------------------------------------- preparing


@dataclass
class PreparedChunk:
    """Everything about a chunk that needs no database: mapped, normalised, split by the
    row-level gate, de-duplicated within itself, checked by the batch-level gate, and
    compressed as received. CPU work only, so it can run in a worker process while the
    chunk before it is being written."""

    batch_id: int
    chunk_no: int
    received: int
    first_record_no: int | None
    last_record_no: int | None
    raw_content: bytes  # zlib of the chunk's bytes as received
    raw_hash: str
    passed: pd.DataFrame  # records that passed the row-level gate
    quarantined: pd.DataFrame  # record_no, raw, reasons (every record when rejected)
    local: MergePlan  # the chunk merged within itself, as if the store were empty
    gate: quality.GateResult
    blanked: dict[str, int] = field(default_factory=dict)


def prepare_chunk(
    chunk: RecordChunk,
    mapping: SourceMapping,
    source: str,
    now: datetime,
    batch_id: int,
    max_quarantine_rate: float | None = None,
) -> PreparedChunk:
    prepared = prepare_records(chunk, mapping, source=source, now=now)
    split = quality.split_rows(HOP, prepared)
    local = plan_merge(split.passed, _NO_LEADS, mapping.merge)
    received = len(prepared)
    gate = quality.check_batch(
        HOP,
        local.leads,
        batch_ref=f"capture:{batch_id}/{chunk.chunk_no}",
        received=received,
        quarantined=len(split.quarantined),
        row_checks=split.checks,
        max_quarantine_rate=max_quarantine_rate,
        row_validation=split.validation,
    )
    quarantined = split.quarantined
    if not gate.success:
        quarantined = rejected_records(prepared, quarantined, gate)
    blanked: dict[str, int] = {}
    for fields in split.passed["blanked_fields"].dropna():
        for name in fields.split(", "):
            blanked[name] = blanked.get(name, 0) + 1
    raw_content, raw_hash = compress(chunk.text)
    numbers = chunk.records[RECORD_NO]
    return PreparedChunk(
        batch_id=batch_id,
        chunk_no=chunk.chunk_no,
        received=received,
        first_record_no=int(numbers.min()) if len(numbers) else None,
        last_record_no=int(numbers.max()) if len(numbers) else None,
        raw_content=raw_content,
        raw_hash=raw_hash,
        passed=split.passed.drop(columns=["raw", "parse_error", "identity", "invalid_fields"]),
        quarantined=quarantined[["record_no", "raw", "reasons"]],
        local=local,
        gate=gate,
        blanked=blanked,
    )


def rejected_records(
    prepared: pd.DataFrame, quarantined: pd.DataFrame, gate: quality.GateResult
) -> pd.DataFrame:
    """Every record of a chunk its batch-level gate rejected: each keeps its own row-level
    reasons and gains ``chunk_rejected: <failed checks>``."""
    failed = ", ".join(c["name"] for c in gate.checks if not c["success"] and c["level"] == "batch")
    own = dict(zip(quarantined["record_no"], quarantined["reasons"], strict=True))
    return prepared.assign(
        reasons=[[*own.get(no, []), f"chunk_rejected: {failed}"] for no in prepared["record_no"]]
    )


_NO_LEADS = pd.DataFrame(columns=["id", "email", "external_id", "attributes", "last_seen_at"])


def _warm_worker() -> None:
    """Pay the imports (pandas, GX) once per worker process, before the first chunk."""
    quality.load_suite(HOP)


def prepared_chunks(
    chunks: Iterable[RecordChunk],
    mapping: SourceMapping,
    source: str,
    now: datetime,
    *,
    batch_id: int,
    max_quarantine_rate: float | None = None,
    workers: int = 0,
) -> Iterator[PreparedChunk]:
    """Prepared chunks in order. With ``workers`` > 0 they are prepared in worker
    processes, a chunk or two ahead of the consumer, so that preparing one chunk overlaps
    with writing the one before; memory stays bounded by that lookahead."""
    arguments = (mapping, source, now, batch_id, max_quarantine_rate)
    if workers <= 0:
        for chunk in chunks:
            yield prepare_chunk(chunk, *arguments)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_warm_worker) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(prepare_chunk, chunk, *arguments))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# --------------------------------------------------------------------------- store I/O


def find_existing(
    conn: Connection, leads_frame: pd.DataFrame, columns: list[str] | None = None
) -> pd.DataFrame:
    """Stored leads sharing an email or external id with any row of ``leads_frame``."""
    columns = columns or ["id", *STORED_FIELDS, "attributes", "last_seen_at"]
    emails = leads_frame["email"].dropna().unique().tolist()
    externals = leads_frame["external_id"].dropna().unique().tolist()
    if not emails and not externals:
        return pd.DataFrame(columns=columns)
    leads = t.leads
    picked = [leads.c[c] for c in columns]
    if store.is_postgres(conn):
        # One index probe per key, keys sent as two array parameters.
        statement = select(*picked).where(
            or_(
                leads.c.email == any_(bindparam("emails", type_=ARRAY(Text))),
                leads.c.external_id == any_(bindparam("externals", type_=ARRAY(Text))),
            )
        )
        found = store.read_frame(conn, statement, {"emails": emails, "externals": externals})
    else:
        frame = pd.DataFrame({"email": emails + externals})
        with store.staged(conn, leads, frame) as stage:
            by_email = select(*picked).join(stage, leads.c.email == stage.c.email)
            by_ext = select(*picked).join(stage, leads.c.external_id == stage.c.email)
            found = store.read_frame(conn, union(by_email, by_ext))
    if found.empty:
        return pd.DataFrame(columns=columns)
    return found


def resolve_against_store(
    chunk: PreparedChunk, existing: pd.DataFrame, policy: MergePolicy
) -> MergePlan:
    """The chunk's plan, with leads that already exist merged into them.

    Groups of the chunk's own plan that share an email or external id with a stored lead
    are planned again, from their records, together with those stored leads.
    """
    local = chunk.local
    if existing.empty:
        return local
    known = set(existing["email"].dropna()) | set(existing["external_id"].dropna())
    leads = local.leads
    touching = leads["email"].isin(known) | leads["external_id"].isin(known)
    if not touching.any():
        return local
    touched_keys = set(leads.loc[touching, "key"])
    record_keys = local.records.set_index("record_no")["key"]
    affected = chunk.passed["record_no"].map(record_keys).isin(touched_keys)
    again = plan_merge(chunk.passed[affected.to_numpy()], existing, policy)
    return MergePlan(
        leads=pd.concat([leads[~touching], again.leads], ignore_index=True),
        records=pd.concat(
            [local.records[~local.records["key"].isin(touched_keys)], again.records],
            ignore_index=True,
        ),
    )


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
    chunk: PreparedChunk,
    mapping: SourceMapping,
    now: datetime,
    flow_run_id: str | None = None,
    cursor: tuple[str, str] | None = None,
) -> ChunkOutcome:
    """Write one prepared chunk in a single transaction: merged into the store if its gate
    passed; otherwise recorded as rejected, every record quarantined.

    Raises ``quality.GateFailed`` after recording a rejected chunk, so the batch still
    accounts for everything it received.
    """
    gate = chunk.gate
    batch_id = chunk.batch_id
    where = {"batch_id": batch_id, "chunk_no": chunk.chunk_no, "flow_run_id": flow_run_id}
    with engine.begin() as conn:
        store.serialize_writers(conn, "capture")
        if gate.success:
            existing = find_existing(conn, chunk.local.leads)
            plan = resolve_against_store(chunk, existing, mapping.merge)
            counts = _write_accepted(conn, chunk, plan, now=now, **where)
        else:
            _write_quarantine(conn, batch_id, chunk.quarantined, flow_run_id=flow_run_id)
            counts = {
                "received": chunk.received,
                "inserted": 0,
                "merged": 0,
                "quarantined": chunk.received,
            }
        write_raw(conn, chunk)
        chunk_id = close_chunk(
            conn,
            batch_id=batch_id,
            chunk_no=chunk.chunk_no,
            counts=counts,
            gate=gate,
            flow_run_id=flow_run_id,
            cursor=cursor,
        )
    outcome = ChunkOutcome(
        batch_id=batch_id,
        chunk_id=chunk_id,
        chunk_no=chunk.chunk_no,
        accepted=gate.success,
        gate=gate,
        blanked=chunk.blanked,
        **counts,
    )
    if not gate.success:
        raise quality.GateFailed(gate)
    return outcome


def close_chunk(
    conn: Connection,
    *,
    batch_id: int,
    chunk_no: int,
    counts: dict[str, int],
    gate: quality.GateResult,
    flow_run_id: str | None,
    cursor: tuple[str, str] | None = None,
) -> int:
    """A written chunk's bookkeeping, inside its transaction: its row, its batch's
    counters, the gate's verdict, and (when accepted) the source's cursor. Returns its id."""
    chunk_id = conn.execute(
        t.capture_chunks.insert()
        .values(
            batch_id=batch_id,
            chunk_no=chunk_no,
            status="accepted" if gate.success else "rejected",
            created_at=store.utcnow(),
            **counts,
        )
        .returning(t.capture_chunks.c.id)
    ).scalar_one()
    batches = t.capture_batches
    conn.execute(
        update(batches)
        .where(batches.c.id == batch_id)
        .values({name: batches.c[name] + value for name, value in counts.items()})
    )
    quality.record(conn, gate, flow_run_id=flow_run_id, at=store.utcnow())
    if gate.success and cursor is not None:
        save_cursor(conn, *cursor)
    return chunk_id


def _write_accepted(
    conn: Connection,
    chunk: PreparedChunk,
    plan: MergePlan,
    *,
    now: datetime,
    batch_id: int,
    chunk_no: int,
    flow_run_id: str | None,
) -> dict[str, int]:
    leads = plan.leads.copy()
    is_new = leads["id"].isna().to_numpy()
    ids = leads["id"].to_numpy(dtype="float64", na_value=np.nan)
    ids[is_new] = store.allocate_ids(conn, t.leads, int(is_new.sum()))
    leads["id"] = ids.astype("int64")
    new = leads[is_new]
    # Records find their lead by key: one vectorised hash lookup, no Python loop.
    records = plan.records
    position = pd.Index(leads["key"]).get_indexer(records["key"])
    records = records.assign(lead_id=leads["id"].to_numpy()[position])
    wall = store.utcnow()

    if len(new):
        creators = records[records["outcome"] == "inserted"]
        creator_of = creators["record_no"].to_numpy()[
            pd.Index(creators["key"]).get_indexer(new["key"])
        ]
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
            record_nos=pd.Series(creator_of, dtype="int64"),
        )
    known = leads[~is_new]
    if len(known):
        changes = known[["id", *STORED_FIELDS, "attributes", "last_seen_at"]].copy()
        changes["id"] = changes["id"].astype("int64")
        changes["updated_at"] = pd.Timestamp(wall)
        # Fields only: status is the lifecycle's, and a merge does not change it.
        store.update_from_frame(conn, t.leads, changes)
    merged_records = records[records["outcome"] == "merged"]
    if len(merged_records):
        changed = leads.loc[leads["changed"].notna(), ["key", "changed"]]
        as_json = pd.Series(
            [json.dumps({"changed": c}) for c in changed["changed"]],
            index=changed["key"],
            dtype=object,
        )
        details = merged_records["key"].map(as_json).fillna('{"changed": []}')
        lifecycle.record_merges(
            conn,
            merged_records["lead_id"],
            actor=ACTOR,
            at=now,
            batch_id=batch_id,
            flow_run_id=flow_run_id,
            record_nos=merged_records["record_no"],
            details=details.tolist(),
        )
    _write_quarantine(conn, batch_id, chunk.quarantined, flow_run_id=flow_run_id)
    inserted = int((records["outcome"] == "inserted").sum())
    return {
        "received": chunk.received,
        "inserted": inserted,
        "merged": len(records) - inserted,
        "quarantined": len(chunk.quarantined),
    }


def write_raw(conn: Connection, chunk: PreparedChunk) -> None:
    """Keep the chunk exactly as received (compressed), addressable by record number."""
    keep_raw(
        conn,
        chunk.batch_id,
        chunk.chunk_no,
        chunk.first_record_no,
        chunk.last_record_no,
        chunk.received,
        chunk.raw_content,
        chunk.raw_hash,
    )


def keep_raw(
    conn: Connection,
    batch_id: int,
    chunk_no: int,
    first: int | None,
    last: int | None,
    received: int,
    content: bytes,
    content_hash: str,
) -> None:
    conn.execute(
        t.raw_captures.insert().values(
            batch_id=batch_id,
            chunk_no=chunk_no,
            first_record_no=first,
            last_record_no=last,
            records=received,
            content_hash=content_hash,
            content=content,
        )
    )


def compress(text: str) -> tuple[bytes, str]:
    """(zlib of the text's bytes as received, SHA-256 of those bytes)."""
    data = text.encode("utf-8", "surrogateescape")
    return zlib.compress(data, 1), hashlib.sha256(data).hexdigest()


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
    task_run_name="capture-{chunk.batch_id}-chunk-{chunk.chunk_no}",
)
def capture_chunk(
    database_url: str,
    chunk: PreparedChunk,
    mapping: SourceMapping,
    now: datetime,
    cursor: tuple[str, str] | None = None,
) -> ChunkOutcome:
    """Merge and store one prepared chunk of records (one transaction)."""
    from prefect.runtime import flow_run

    outcome = write_capture_chunk(
        store.get_engine(database_url),
        chunk=chunk,
        mapping=mapping,
        now=now,
        flow_run_id=flow_run.get_id(),
        cursor=cursor,
    )
    log_outcome(outcome)
    return outcome


def log_outcome(outcome: ChunkOutcome) -> None:
    from prefect.logging import get_run_logger

    get_run_logger().info(
        "batch %s chunk %s: received %s, inserted %s, merged %s, quarantined %s",
        outcome.batch_id,
        outcome.chunk_no,
        outcome.received,
        outcome.inserted,
        outcome.merged,
        outcome.quarantined,
    )
