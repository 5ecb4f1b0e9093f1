"""Capture, step four: the store side. One prepared chunk is written in one transaction
(leads, merges, quarantine, raw bytes, the chunk's counts, the gate's verdict, a cursor);
batches are opened and closed here, and an identical input is recognised by its hash.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    ARRAY,
    Connection,
    Engine,
    Text,
    any_,
    bindparam,
    or_,
    select,
    union,
    update,
)

from leadflow import lifecycle, quality, store
from leadflow import tables as t
from leadflow.capture import locks as capture_locks
from leadflow.capture.identity import STORED_FIELDS, MergePlan, plan_merge
from leadflow.capture.prepare import PreparedChunk, compress
from leadflow.capture.rules import MergePolicy, SourceMapping
from leadflow.capture.sources import InputError, RecordChunk

ACTOR = "capture"
log = logging.getLogger(__name__)


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
    effects: dict[str, int] = field(default_factory=dict)  # what activities did to leads
    # Stored records: record_no, lead_id, outcome (inserted | merged). Who asks which lead a
    # record became reads it here, not back from the ledger.
    landed: pd.DataFrame | None = field(default=None, repr=False)

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
            counts, landed = write_accepted(conn, chunk, plan, now=now, **where)
        else:
            landed = None
            write_quarantine(conn, batch_id, chunk.quarantined, flow_run_id=flow_run_id)
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
        landed=landed,
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


def write_accepted(
    conn: Connection,
    chunk: PreparedChunk,
    plan: MergePlan,
    *,
    now: datetime,
    batch_id: int,
    chunk_no: int,
    flow_run_id: str | None,
) -> tuple[dict[str, int], pd.DataFrame]:
    """Store an accepted chunk's merge plan; its counts, and each stored record's lead."""
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
    write_quarantine(conn, batch_id, chunk.quarantined, flow_run_id=flow_run_id)
    inserted = int((records["outcome"] == "inserted").sum())
    counts = {
        "received": chunk.received,
        "inserted": inserted,
        "merged": len(records) - inserted,
        "quarantined": len(chunk.quarantined),
    }
    return counts, records[["record_no", "lead_id", "outcome"]]


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


def write_quarantine(
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


@dataclass
class OpenedBatch:
    """A received input, recorded: a new batch, a duplicate of a complete one, or a batch
    an earlier (dead) run left ``running``, taken over to be finished."""

    batch_id: int
    earlier: int | None = None  # the complete batch with the same content, if any
    # Chunks a dead run already committed: chunk number -> SHA-256 of its text.
    committed: dict[int, str] = field(default_factory=dict)
    resumed: bool = False
    rejected_before: bool = False  # a committed chunk was rejected by the gate


WAITING = "waiting for another ingest of the same input to finish"


def say_waiting() -> None:
    log.info(WAITING)


def content_lock(
    engine: Engine,
    *,
    source: str,
    target: str,
    content_hash: str,
    on_wait: Callable[[], None] = say_waiting,
) -> AbstractContextManager[None]:
    """The input's lock (``leadflow.capture.locks``); ``on_wait`` says why nothing happens yet
    (the capture tasks pass one that writes to the run's log)."""
    return capture_locks.content_lock(
        engine, source=source, target=target, content_hash=content_hash, on_wait=on_wait
    )


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
) -> OpenedBatch:
    """Record a received input (call it holding ``content_lock`` for that input).

    Identical content already captured: a ``duplicate`` batch, nothing to do. A batch for
    that content still ``running``: its run died (it held the lock), so it is taken over
    and its committed chunks are returned, to be skipped. Otherwise a new ``running`` batch.
    """
    b = t.capture_batches
    with engine.begin() as conn:
        store.serialize_writers(conn, "capture")
        earlier = find_complete_batch(conn, source=source, target=target, content_hash=content_hash)
        dead = None
        if earlier is None:
            dead = conn.execute(
                select(b.c.id)
                .where(
                    b.c.source == source,
                    b.c.target == target,
                    b.c.content_hash == content_hash,
                    b.c.status == "running",
                )
                .order_by(b.c.id.desc())
                .limit(1)
            ).scalar()
        if dead is not None:
            conn.execute(
                update(b)
                .where(b.c.id == dead)
                .values(
                    flow_run_id=flow_run_id,
                    message=f"resumed at {store.utcnow():%Y-%m-%d %H:%M:%S} UTC after its run died",
                )
            )
            raw = t.raw_captures
            committed = {
                int(no): digest
                for no, digest in conn.execute(
                    select(raw.c.chunk_no, raw.c.content_hash).where(raw.c.batch_id == dead)
                )
            }
            c = t.capture_chunks
            rejected = conn.execute(
                select(c.c.id).where(c.c.batch_id == dead, c.c.status == "rejected").limit(1)
            ).scalar()
            return OpenedBatch(
                dead, committed=committed, resumed=True, rejected_before=rejected is not None
            )
        batch_id = conn.execute(
            b.insert()
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
            .returning(b.c.id)
        ).scalar_one()
    return OpenedBatch(batch_id, earlier=earlier)


def skip_committed(
    chunks: Iterable[RecordChunk], committed: dict[int, str]
) -> Iterator[RecordChunk]:
    """The chunks a resumed batch still needs: those a dead run committed are skipped, after
    checking they are the same bytes (same input, same chunk size)."""
    for chunk in chunks:
        digest = committed.get(chunk.chunk_no)
        if digest is None:
            yield chunk
            continue
        if compress(chunk.text)[1] != digest:
            raise InputError(
                f"chunk {chunk.chunk_no} differs from the one the interrupted run committed: "
                "rerun with the chunk size it used (LEADFLOW_BATCH_SIZE)"
            )


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
