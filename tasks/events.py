"""Engagement events capture: email opens and clicks, page views, form fills, webinars,
replies, meetings, unsubscribes and bounces, from the same sources as leads.

Each event is tied to a lead by email or external id; an event for a lead that does not
exist is quarantined (``lead_known``), never dropped. The same event received twice is one
event (``merged``): its key is a hash of lead, type, time, URL and the source's event id.
Accounting per chunk is the same as for leads: received = inserted + merged + quarantined.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Connection, Engine, select

from leadflow import store
from leadflow import tables as t
from leadflow.mapping import SourceMapping
from tasks import normalise as nz
from tasks import quality
from tasks.capture import mapping as fields
from tasks.capture import write as capture
from tasks.capture.prepare import rejected_records
from tasks.capture.units import log_outcome, not_a_gate_failure
from tasks.sources import PARSE_ERROR, RAW, RECORD_NO, RecordChunk

SUITE = "events"

# What sources call their events -> our vocabulary (after lower-casing, spaces to _).
SYNONYMS = {
    "open": "email_open",
    "opened": "email_open",
    "email_opened": "email_open",
    "click": "email_click",
    "clicked": "email_click",
    "email_clicked": "email_click",
    "link_click": "email_click",
    "pageview": "page_view",
    "visit": "page_view",
    "page_visit": "page_view",
    "web_visit": "page_view",
    "form_submit": "form_fill",
    "form_submission": "form_fill",
    "form_submitted": "form_fill",
    "webinar_attended": "webinar",
    "attended_webinar": "webinar",
    "replied": "reply",
    "email_reply": "reply",
    "meeting": "meeting_booked",
    "meeting_scheduled": "meeting_booked",
    "demo_booked": "meeting_booked",
    "unsubscribed": "unsubscribe",
    "opt_out": "unsubscribe",
    "bounced": "bounce",
    "hard_bounce": "bounce",
    "soft_bounce": "bounce",
}


def event_types(values: pd.Series) -> pd.Series:
    folded = nz.clean_text(values).str.lower().str.replace(r"[ -]+", "_", regex=True)
    return folded.map(lambda v: SYNONYMS.get(v, v), na_action="ignore").astype(object)


def prepare_events(
    chunk: RecordChunk, mapping: SourceMapping, *, source: str, now: datetime
) -> pd.DataFrame:
    """Map and normalise event records (pure). One row per record, with the gate's columns."""
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
    namespace = mapping.external_id_namespace or source
    external = nz.clean_text(field("external_id"))
    out["external_id"] = (namespace + ":" + external.astype("str")).where(external.notna(), None)
    out["event_type"] = event_types(field("event_type"))
    out["occurred_at"], bad_time = nz.normalise_timestamp(field("occurred_at"), now=now)
    out["url"] = nz.clean_text(field("url")).astype(object)
    out["event_id"] = nz.clean_text(field("event_id")).astype(object)
    out["time_error"] = [
        "occurred_at is not a time, or is in the future" if bad else None for bad in bad_time
    ]
    used = set(mapping.columns) | set(mapping.ignore) | {mapping.external_id}
    extra = [c for c in chunk.columns if c not in used and c in records.columns]
    out["properties"] = (
        fields.attributes_json(records[extra], SourceMapping(), extra, {}) if extra else None
    )
    return out


def _lead_ids(conn: Connection, events: pd.DataFrame) -> pd.Series:
    """The lead each event belongs to: by email, else by external id (None if unknown)."""
    found = capture.find_existing(conn, events, columns=["id", "email", "external_id"])
    by_email = dict(zip(found["email"], found["id"], strict=True))
    by_external = dict(zip(found["external_id"], found["id"], strict=True))
    ids = events["email"].map(by_email)
    ids = ids.where(ids.notna(), events["external_id"].map(by_external))
    return ids.astype("Int64")


def event_keys(events: pd.DataFrame) -> list[str]:
    parts = zip(
        events["lead_id"].astype("Int64").astype(str),
        events["event_type"].astype(str),
        events["occurred_at"].astype(str),
        events["url"].fillna("").astype(str),
        events["event_id"].fillna("").astype(str),
        strict=True,
    )
    return [hashlib.sha256("|".join(p).encode()).hexdigest()[:32] for p in parts]


def _existing_keys(conn: Connection, keys: list[str]) -> set[str]:
    events = t.engagement_events
    found: set[str] = set()
    for start in range(0, len(keys), 5000):
        part = keys[start : start + 5000]
        found |= set(
            conn.execute(select(events.c.event_key).where(events.c.event_key.in_(part))).scalars()
        )
    return found


def write_events_chunk(
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
) -> capture.ChunkOutcome:
    """Gate and store one chunk of events in one transaction (an API page's cursor with
    it); raises ``quality.GateFailed`` after recording a rejected chunk."""
    prepared = prepare_events(chunk, mapping, source=source, now=now)
    received = len(prepared)
    with engine.begin() as conn:
        store.serialize_writers(conn, "capture")
        prepared["lead_id"] = _lead_ids(conn, prepared) if received else pd.array([], dtype="Int64")
        identity = prepared["email"].where(prepared["email"].notna(), prepared["external_id"])
        unparsed = prepared["parse_error"].notna()
        prepared["identity"] = identity.where(~unparsed, "(unparsed)")
        # Only records that name a lead can fail on the lead not existing.
        prepared["lead_known"] = (
            prepared["lead_id"].astype("float64").where(identity.notna() & ~unparsed, -1.0)
        )
        split = quality.split_rows(SUITE, prepared)
        passed = prepared[prepared["record_no"].isin(split.passed["record_no"])].copy()
        passed["event_key"] = event_keys(passed) if len(passed) else []
        repeat = passed["event_key"].duplicated()
        if len(passed):
            repeat |= passed["event_key"].isin(_existing_keys(conn, passed["event_key"].tolist()))
        fresh = passed[~repeat.to_numpy()]
        gate = quality.check_batch(
            SUITE,
            fresh,
            batch_ref=f"events:{batch_id}/{chunk.chunk_no}",
            received=received,
            quarantined=len(split.quarantined),
            row_checks=split.checks,
            max_quarantine_rate=max_quarantine_rate,
            row_validation=split.validation,
        )
        quarantined = split.quarantined
        if gate.success:
            store.bulk_insert(
                conn,
                t.engagement_events,
                pd.DataFrame(
                    {
                        "lead_id": fresh["lead_id"].astype("int64").to_numpy(),
                        "event_type": fresh["event_type"].to_numpy(),
                        "occurred_at": fresh["occurred_at"],
                        "url": fresh["url"].to_numpy(),
                        "properties": fresh["properties"].to_numpy(),
                        "source": source,
                        "event_key": fresh["event_key"].to_numpy(),
                        "batch_id": batch_id,
                        "record_no": fresh["record_no"].to_numpy(),
                    }
                ),
            )
            counts = {
                "received": received,
                "inserted": len(fresh),
                "merged": int(repeat.sum()),
                "quarantined": len(quarantined),
            }
        else:
            quarantined = rejected_records(prepared, quarantined, gate)
            counts = {"received": received, "inserted": 0, "merged": 0, "quarantined": received}
        capture.write_quarantine(conn, batch_id, quarantined, flow_run_id=flow_run_id)
        content, digest = capture.compress(chunk.text)
        numbers = prepared["record_no"]
        capture.keep_raw(
            conn,
            batch_id,
            chunk.chunk_no,
            int(numbers.min()) if received else None,
            int(numbers.max()) if received else None,
            received,
            content,
            digest,
        )
        chunk_id = capture.close_chunk(
            conn,
            batch_id=batch_id,
            chunk_no=chunk.chunk_no,
            counts=counts,
            gate=gate,
            flow_run_id=flow_run_id,
            cursor=cursor,
        )
    if not gate.success:
        raise quality.GateFailed(gate)
    return capture.ChunkOutcome(
        batch_id=batch_id,
        chunk_id=chunk_id,
        chunk_no=chunk.chunk_no,
        accepted=True,
        gate=gate,
        **counts,
    )


@task(
    name="capture-events-chunk",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=not_a_gate_failure,
    task_run_name="events-{batch_id}-chunk-{chunk.chunk_no}",
)
def capture_events_chunk(
    database_url: str,
    batch_id: int,
    chunk: RecordChunk,
    mapping: SourceMapping,
    source: str,
    now: datetime,
    max_quarantine_rate: float | None = None,
    cursor: tuple[str, str] | None = None,
) -> capture.ChunkOutcome:
    from prefect.runtime import flow_run

    outcome = write_events_chunk(
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
    log_outcome(outcome)
    return outcome
