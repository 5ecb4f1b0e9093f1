"""Engagement events capture: email opens and clicks, page views, form fills, webinars,
replies, meetings, unsubscribes and bounces, from the same sources as leads.

Written by the skeleton in ``leadflow/capture/linked.py`` (lead by email or external id,
``lead_known``, accounting). The same event received twice is one event (``merged``): its
key is a hash of lead, type, time, URL and the source's event id.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import pandas as pd

from leadflow import tables as t
from leadflow.capture import linked
from leadflow.capture import normalise as nz
from leadflow.capture.rules import SourceMapping
from leadflow.capture.sources import RecordChunk

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


def vocabulary(values: pd.Series, synonyms: dict[str, str]) -> pd.Series:
    """Source spellings folded (lower case, spaces and dashes to ``_``) and mapped to ours."""
    folded = nz.clean_text(values).str.lower().str.replace(r"[ -]+", "_", regex=True)
    return folded.map(lambda v: synonyms.get(v, v), na_action="ignore").astype(object)


def prepare_events(
    chunk: RecordChunk, mapping: SourceMapping, *, source: str, now: datetime
) -> pd.DataFrame:
    """Map and normalise event records (pure). One row per record, with the gate's columns."""
    out, field = linked.base_frame(chunk, mapping, source)
    out["event_type"] = vocabulary(field("event_type"), SYNONYMS)
    out["occurred_at"], bad_time = nz.normalise_timestamp(field("occurred_at"), now=now)
    out["url"] = nz.clean_text(field("url")).astype(object)
    out["event_id"] = nz.clean_text(field("event_id")).astype(object)
    out["time_error"] = [
        "occurred_at is not a time, or is in the future" if bad else None for bad in bad_time
    ]
    return out


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


def event_rows(fresh: pd.DataFrame, source: str, batch_id: int, now: datetime) -> pd.DataFrame:
    return pd.DataFrame(
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
    )


EVENTS = linked.LinkedKind(
    target="events",
    table=t.engagement_events,
    key_column="event_key",
    prepare=prepare_events,
    keys=event_keys,
    rows=event_rows,
)
