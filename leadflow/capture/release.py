"""Quarantined capture records, fed through the capture hop again after a fix.

``leadflow quarantine release`` calls ``release_capture``: the held records of each batch
are re-read from the text kept in the quarantine, mapped with the (fixed) mapping, gated
and merged like any chunk. Those that pass become leads or merges *of their original batch
and record number*, and their quarantine rows are marked released, so the ledger still
counts every record once: the batch's ``quarantined`` goes down by what ``inserted`` and
``merged`` go up, recorded as a ``released`` chunk row. Those that fail again stay held.
"""

from __future__ import annotations

import csv
import io
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

import fsspec
import pandas as pd
from sqlalchemy import Engine, func, select, update

from leadflow import quarantine, store
from leadflow import tables as t
from leadflow.capture import sources, write
from leadflow.capture.prepare import prepare_chunk
from leadflow.capture.rules import SourceMapping
from leadflow.capture.run import describe_rejection

RELEASED_BY = "leadflow quarantine release"


class ReleaseError(sources.InputError):
    """Records that cannot be released as asked (and why); nothing was changed."""


def release_capture(
    engine: Engine,
    selection: quarantine.Selection,
    *,
    now: datetime,
    mapping: SourceMapping | None = None,
    mapping_version: str = "default",
    max_quarantine_rate: float | None = None,
) -> dict[str, Any]:
    """Release the held capture records ``selection`` picks, batch by batch (one
    transaction each). Returns counts and, per batch refused by its gate, why."""
    selection = replace(selection, hop="capture")
    with engine.connect() as conn:
        rows = quarantine.held(conn, selection)
        batch_ids = sorted({int(r["batch_id"]) for r in rows})
        b = t.capture_batches
        batches = {
            int(r["id"]): dict(r)
            for r in conn.execute(select(b).where(b.c.id.in_(batch_ids))).mappings()
        }
    summary: dict[str, Any] = {
        "selected": len(rows),
        "released": 0,
        "inserted": 0,
        "merged": 0,
        "still_held": 0,
        "refused": [],
    }
    for batch_id in batch_ids:
        batch = batches[batch_id]
        held = [r for r in rows if int(r["batch_id"]) == batch_id]
        if batch["status"] == "running":
            raise ReleaseError(
                f"batch {batch_id} is still running (or was interrupted: ingest the same input "
                "again to finish it) - release its records after that"
            )
        if batch["target"] != "leads":
            raise ReleaseError(f"batch {batch_id} holds events: only lead records can be released")
        if mapping is None and batch["mapping_version"] not in (None, "default"):
            raise ReleaseError(
                f"batch {batch_id} was ingested with a mapping file (version "
                f"{batch['mapping_version']}): pass it, fixed, with --mapping"
            )
        use = mapping or SourceMapping()
        chunk = _reread(batch, held, use)
        prepared = prepare_chunk(
            chunk, use, batch["source"], now, batch_id, max_quarantine_rate=max_quarantine_rate
        )
        if not prepared.gate.success:
            summary["refused"].append(describe_rejection(prepared.gate))
            summary["still_held"] += len(held)
            continue
        counts = _write_release(engine, prepared, held, use, now=now)
        for name in ("released", "inserted", "merged"):
            summary[name] += counts[name]
        summary["still_held"] += len(held) - counts["released"]
    return summary


def _reread(
    batch: dict[str, Any], held: list[dict[str, Any]], mapping: SourceMapping
) -> sources.RecordChunk:
    """The held records as one chunk, read the way the batch's input was, numbered with
    their original record numbers."""
    header = batch["header"]
    lines = [(r["record"] or "") for r in held]
    if header:
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=mapping.delimiter, lineterminator="\n").writerow(header)
        text, kind = buffer.getvalue() + "\n".join(lines) + "\n", "csv"
    else:
        text, kind = "\n".join(lines) + "\n", "jsonl"
    uri = f"memory://leadflow-release/{uuid.uuid4().hex}.{kind}"
    memory = fsspec.filesystem("memory")
    memory.pipe(uri, text.encode("utf-8"))
    try:
        chunks = list(
            sources.read_chunks(
                uri,
                file_format=kind,
                encoding="utf-8",
                delimiter=mapping.delimiter,
                chunk_size=len(held) + 1,
            )
        )
    finally:
        memory.rm(uri)
    records = pd.concat([c.records for c in chunks], ignore_index=True)
    if len(records) != len(held):
        raise ReleaseError(
            f"batch {batch['id']}: {len(held)} held records read back as {len(records)}; "
            "export them (leadflow quarantine export), fix the file and ingest it instead"
        )
    records[sources.RECORD_NO] = [int(r["record_no"]) for r in held]
    return sources.RecordChunk(chunk_no=0, columns=chunks[0].columns, records=records, text=text)


def _write_release(
    engine: Engine,
    prepared: Any,
    held: list[dict[str, Any]],
    mapping: SourceMapping,
    *,
    now: datetime,
) -> dict[str, int]:
    """One transaction: the passing records merged into the store under their batch, their
    quarantine rows released, and the batch's counts moved from quarantined to
    inserted/merged (a ``released`` chunk row says by how much)."""
    batch_id = prepared.batch_id
    passed = set(prepared.passed["record_no"].astype(int))
    ids = [int(r["id"]) for r in held if int(r["record_no"]) in passed]
    nothing = prepared.quarantined.iloc[0:0]  # those failing again keep their old rows
    c = t.capture_chunks
    with engine.begin() as conn:
        store.serialize_writers(conn, "capture")
        chunk_no = conn.execute(
            select(func.coalesce(func.max(c.c.chunk_no), 0)).where(c.c.batch_id == batch_id)
        ).scalar_one()
        existing = write.find_existing(conn, prepared.local.leads)
        plan = write.resolve_against_store(prepared, existing, mapping.merge)
        counts, _ = write.write_accepted(
            conn,
            replace(prepared, quarantined=nothing),
            plan,
            now=now,
            batch_id=batch_id,
            chunk_no=chunk_no + 1,
            flow_run_id=None,
        )
        released = quarantine.mark_released(conn, ids, at=store.utcnow(), by=RELEASED_BY)
        if released != counts["inserted"] + counts["merged"]:
            raise RuntimeError(  # someone released them meanwhile: roll everything back
                f"batch {batch_id}: {released} rows released for "
                f"{counts['inserted'] + counts['merged']} records written"
            )
        moved = {"received": 0, "inserted": counts["inserted"], "merged": counts["merged"]}
        moved["quarantined"] = -released
        conn.execute(
            c.insert().values(
                batch_id=batch_id,
                chunk_no=chunk_no + 1,
                status="released",
                created_at=store.utcnow(),
                **moved,
            )
        )
        b = t.capture_batches
        conn.execute(
            update(b)
            .where(b.c.id == batch_id)
            .values({name: b.c[name] + value for name, value in moved.items()})
        )
    return {"released": released, "inserted": counts["inserted"], "merged": counts["merged"]}
