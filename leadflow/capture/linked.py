"""Records that belong to a lead: engagement events and sales activities.

They are read like leads (same sources, mapping files, chunks, raw copies and ledger of
batches) and written by one skeleton, declared per target by a ``LinkedKind``: each record
is tied to its lead by email or external id (a record for a lead that does not exist is
quarantined by ``lead_known``, never dropped), judged by the target's suite, stored once per
key (the same record received twice is ``merged``), and its effects on the lead applied in
the same transaction. Per chunk: received = inserted + merged + quarantined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, Table, select

from leadflow import quality, store
from leadflow.capture import mapping as fields
from leadflow.capture import normalise as nz
from leadflow.capture import write as capture
from leadflow.capture.prepare import rejected_records
from leadflow.capture.rules import SourceMapping
from leadflow.capture.sources import PARSE_ERROR, RAW, RECORD_NO, RecordChunk


@dataclass(frozen=True)
class LinkedKind:
    """One target's part in the skeleton.

    - ``prepare(chunk, mapping, source, now)``: the mapped, normalised records (pure), with
      ``record_no``, ``raw``, ``parse_error``, ``email`` and ``external_id``;
    - ``keys(frame)``: each record's key, from its fields and ``lead_id``;
    - ``judge(conn, frame, now)``: the suite's columns that need the store (the frame has
      ``lead_id``, ``lead_status``, ``key`` and ``repeat``); may be None;
    - ``rows(fresh, source, batch_id, now)``: what to insert for the records that passed;
    - ``effects(conn, fresh, context)``: what the records do to their leads, after they are
      inserted; returns counts for the log and summary (may be None).
    """

    target: str
    table: Table
    key_column: str
    prepare: Callable[..., pd.DataFrame]
    keys: Callable[[pd.DataFrame], list[str]]
    rows: Callable[..., pd.DataFrame]
    judge: Callable[..., pd.DataFrame] | None = None
    effects: Callable[..., dict[str, int]] | None = None

    @property
    def suite(self) -> str:
        return self.target


def base_frame(
    chunk: RecordChunk, mapping: SourceMapping, source: str
) -> tuple[pd.DataFrame, Callable[[str], pd.Series]]:
    """The columns every linked record has (record number, raw text, parse error, the
    lead's email and namespaced external id, unmapped columns as ``properties``) and a
    function giving a mapped field's cleaned text (all None when the file lacks it)."""
    mapping = mapping.resolve(chunk.columns)
    records = chunk.records
    index = records.index
    out = pd.DataFrame(index=index)
    out["record_no"] = records[RECORD_NO].astype("int64")
    out["raw"] = records[RAW]
    out["parse_error"] = records[PARSE_ERROR]

    def field(name: str) -> pd.Series:
        column = mapping.column_for(name)
        if name == "external_id" and mapping.external_id:
            column = mapping.external_id
        if column is None or column not in records.columns:
            return pd.Series([None] * len(records), index=index, dtype=object)
        text, _ = fields.as_text(records[column])
        text = fields.null_markers(text, mapping.null_markers)
        return fields.value_map(text, mapping.values.get(name, {}))

    out["email"], _ = nz.normalise_email(field("email"))
    external = nz.clean_text(field("external_id"))
    out["external_id"] = (namespace(mapping, source) + ":" + external.astype("str")).where(
        external.notna(), None
    )
    used = set(mapping.columns) | set(mapping.ignore) | {mapping.external_id}
    extra = [c for c in chunk.columns if c not in used and c in records.columns]
    out["properties"] = (
        fields.attributes_json(records[extra], SourceMapping(), extra, {}) if extra else None
    )
    return out, field


def namespace(mapping: SourceMapping, source: str) -> str:
    """What a source's own ids are prefixed with: ids are unique per source."""
    return mapping.external_id_namespace or source


def lead_ids(conn: Connection, records: pd.DataFrame) -> pd.DataFrame:
    """The lead each record belongs to (by email, else external id) and its status; both
    None when the lead is unknown."""
    found = capture.find_existing(conn, records, columns=["id", "email", "external_id", "status"])
    by_email = dict(zip(found["email"], found["id"], strict=True))
    by_external = dict(zip(found["external_id"], found["id"], strict=True))
    status = dict(zip(found["id"], found["status"], strict=True))
    ids = records["email"].map(by_email)
    ids = ids.where(ids.notna(), records["external_id"].map(by_external)).astype("Int64")
    return pd.DataFrame(
        {"lead_id": ids, "lead_status": ids.map(status, na_action="ignore").astype(object)},
        index=records.index,
    )


def existing_keys(conn: Connection, column: Any, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(keys), 5000):
        part = keys[start : start + 5000]
        found |= set(conn.execute(select(column).where(column.in_(part))).scalars())
    return found


@dataclass(frozen=True)
class ChunkContext:
    """What ``effects`` may need besides the records."""

    batch_id: int
    source: str
    now: datetime
    flow_run_id: str | None


def write_linked_chunk(
    engine: Engine,
    kind: LinkedKind,
    *,
    batch_id: int,
    chunk: RecordChunk,
    mapping: SourceMapping,
    source: str,
    now: datetime,
    flow_run_id: str | None = None,
    max_quarantine_rate: float | None = None,
    cursor: tuple[str, str] | None = None,
) -> capture.ChunkOutcome:
    """Gate and store one chunk in one transaction (an API page's cursor with it); raises
    ``quality.GateFailed`` after recording a rejected chunk."""
    context = ChunkContext(batch_id, source, now, flow_run_id)
    prepared = kind.prepare(chunk, mapping, source=source, now=now)
    received = len(prepared)
    with engine.begin() as conn:
        store.serialize_writers(conn, "capture")
        _tie_to_leads(conn, prepared)
        # Keys before judging: a record received before is merged, not judged again.
        _mark_repeats(conn, kind, prepared)
        if kind.judge is not None:
            prepared = kind.judge(conn, prepared, now)
        gated = _gate(
            kind,
            prepared,
            received=received,
            batch_ref=f"{kind.target}:{batch_id}/{chunk.chunk_no}",
            max_quarantine_rate=max_quarantine_rate,
        )
        counts, quarantined, effects = _apply_verdict(conn, kind, prepared, gated, context)
        chunk_id = _record_chunk(conn, chunk, prepared, quarantined, counts, gated, context, cursor)
    gate = gated.gate
    if not gate.success:
        raise quality.GateFailed(gate)
    return capture.ChunkOutcome(
        batch_id=batch_id,
        chunk_id=chunk_id,
        chunk_no=chunk.chunk_no,
        accepted=True,
        gate=gate,
        effects=effects,
        **counts,
    )


def _tie_to_leads(conn: Connection, prepared: pd.DataFrame) -> None:
    """Add each record's ``lead_id`` and ``lead_status``, its ``identity`` and ``lead_known``
    (what the suite checks: -1 for records that name no lead or could not be parsed)."""
    if len(prepared):
        prepared[["lead_id", "lead_status"]] = lead_ids(conn, prepared)
    else:
        prepared["lead_id"] = pd.array([], dtype="Int64")
        prepared["lead_status"] = pd.Series([], dtype=object)
    identity = prepared["email"].where(prepared["email"].notna(), prepared["external_id"])
    unparsed = prepared["parse_error"].notna()
    prepared["identity"] = identity.where(~unparsed, "(unparsed)")
    # Only records that name a lead can fail on the lead not existing.
    prepared["lead_known"] = (
        prepared["lead_id"].astype("float64").where(identity.notna() & ~unparsed, -1.0)
    )


def _mark_repeats(conn: Connection, kind: LinkedKind, prepared: pd.DataFrame) -> None:
    """Add each record's ``key`` (records of known leads only) and ``repeat``: the key came
    earlier in the chunk or is already stored."""
    known = prepared["lead_id"].notna()
    prepared["key"] = None
    if known.any():
        prepared.loc[known, "key"] = kind.keys(prepared[known])
    keyed = prepared["key"].notna()
    repeat = keyed & prepared["key"].duplicated()
    if keyed.any():
        stored = existing_keys(
            conn, kind.table.c[kind.key_column], prepared.loc[keyed, "key"].tolist()
        )
        repeat |= prepared["key"].isin(stored)
    prepared["repeat"] = repeat


@dataclass(frozen=True)
class _Gated:
    """A chunk's records judged: how many came, which passed the row checks, the fresh ones
    among them (passed, not repeats) keyed for insert, the row split and the batch gate."""

    received: int
    passed: pd.Series
    fresh: pd.DataFrame
    split: quality.RowSplit
    gate: quality.GateResult


def _gate(
    kind: LinkedKind,
    prepared: pd.DataFrame,
    *,
    received: int,
    batch_ref: str,
    max_quarantine_rate: float | None,
) -> _Gated:
    """Split the records by the suite's row checks and check the batch."""
    split = quality.split_rows(kind.suite, prepared)
    passed = prepared["record_no"].isin(split.passed["record_no"])
    fresh = prepared[passed & ~prepared["repeat"]].copy()
    fresh[kind.key_column] = fresh["key"]
    gate = quality.check_batch(
        kind.suite,
        fresh,
        batch_ref=batch_ref,
        received=received,
        quarantined=len(split.quarantined),
        row_checks=split.checks,
        max_quarantine_rate=max_quarantine_rate,
        row_validation=split.validation,
    )
    return _Gated(received, passed, fresh, split, gate)


def _apply_verdict(
    conn: Connection,
    kind: LinkedKind,
    prepared: pd.DataFrame,
    gated: _Gated,
    context: ChunkContext,
) -> tuple[dict[str, int], pd.DataFrame, dict[str, int]]:
    """On a passed gate insert the fresh records and apply their effects; on a failed one
    quarantine the whole chunk. Returns the counts, the records to quarantine and the
    effects' counts."""
    received, fresh, split = gated.received, gated.fresh, gated.split
    if not gated.gate.success:
        quarantined = rejected_records(prepared, split.quarantined, gated.gate)
        counts = {"received": received, "inserted": 0, "merged": 0, "quarantined": received}
        return counts, quarantined, {}
    effects: dict[str, int] = {}
    store.bulk_insert(
        conn, kind.table, kind.rows(fresh, context.source, context.batch_id, context.now)
    )
    if kind.effects is not None and len(fresh):
        effects = kind.effects(conn, fresh, context)
    counts = {
        "received": received,
        "inserted": len(fresh),
        "merged": int((gated.passed & prepared["repeat"]).sum()),
        "quarantined": len(split.quarantined),
    }
    return counts, split.quarantined, effects


def _record_chunk(
    conn: Connection,
    chunk: RecordChunk,
    prepared: pd.DataFrame,
    quarantined: pd.DataFrame,
    counts: dict[str, int],
    gated: _Gated,
    context: ChunkContext,
    cursor: tuple[str, str] | None,
) -> int:
    """Write the quarantined records, keep the chunk's raw text, and close the chunk in the
    ledger (with the API cursor, if any); returns the chunk's id."""
    capture.write_quarantine(conn, context.batch_id, quarantined, flow_run_id=context.flow_run_id)
    content, digest = capture.compress(chunk.text)
    numbers = prepared["record_no"]
    received = gated.received
    capture.keep_raw(
        conn,
        context.batch_id,
        chunk.chunk_no,
        int(numbers.min()) if received else None,
        int(numbers.max()) if received else None,
        received,
        content,
        digest,
    )
    return capture.close_chunk(
        conn,
        batch_id=context.batch_id,
        chunk_no=chunk.chunk_no,
        counts=counts,
        gate=gated.gate,
        flow_run_id=context.flow_run_id,
        cursor=cursor,
    )
