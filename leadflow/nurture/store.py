"""Nurture's SQL: what a tick reads and writes around the pure planner
(``leadflow/nurture/plan.py``).

- ``prepare_tick``, before the hop, set-based: ends the enrolments of leads that left
  ``nurturing`` and brings enrolments that follow an older version of ``rules/cadences.yaml``
  to this one per ``on_change``;
- ``candidates``: the leads the hop claims (a touch due, or nurturing in no cadence);
- ``lead_columns`` and ``fetch_state``: the hop's reads, inside the claim's transaction: the
  leads' fields, every enrolment of theirs (the history decides re-entry), their touches of the
  last 7 days and the engagement that ends or suppresses a cadence;
- ``persist_plan``: the hop's writes, in the batch's transaction: enrolments, touches (unique
  per (enrolment, step)), outbox messages (key ``touch:<lead>:<cadence>:<entry>:<step>``) and
  ledger notes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, exists, select, union

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.lifecycle import Status
from leadflow.nurture.plan import (
    ACTIVE,
    ACTOR,
    DETAIL_COLUMNS,
    ENROLMENT_COLUMNS,
    EXITED,
    WEEK,
    NurtureContext,
    NurtureInputs,
    Plan,
    departed_reason,
    moved_due,
    suppression,
)
from leadflow.nurture.rules import EXIT_EVENTS
from leadflow.outbox import store as outbox
from leadflow.runner import HopResult

# --------------------------------------------------------------------------- before the hop


def prepare_tick(database_url: str, context: NurtureContext, now: datetime) -> dict[str, int]:
    """Before the hop, set-based: end the enrolments of leads that left ``nurturing``, and
    bring enrolments that follow an older version of the cadences to this one per
    ``on_change`` (``keep``: step and due time stay; ``replan``: due = previous touch (or
    enrolment) + the new step's delay). Returns counts."""
    with store.get_engine(database_url).begin() as conn:
        store.serialize_writers(conn, "leadflow.nurture.prepare")
        left = end_departed(conn, now)
        moved, replanned = move_to_version(conn, context, now)
    return {"left_nurture": left, "version_moved": moved, "replanned": replanned}


def end_departed(conn: Connection, now: datetime) -> int:
    """End the active enrolments of leads no longer ``nurturing`` (``exited``, the reason
    from the lead's status, ``departed_reason``), with a ledger note each. Returns how many.

    Example: lead 1 (active in ``warm``) became an MQL, lead 2 (active in ``cold``) was
    disqualified, lead 3 is still nurturing: lead 1's enrolment exits ``became_mql`` (note
    "left warm: became_mql"), lead 2's ``disqualified``; lead 3's stays active. Returns 2.
    """
    e, leads = t.cadence_enrolments, t.leads
    stamp = pd.Timestamp(now)
    gone = store.read_frame(
        conn,
        select(e.c.id, e.c.lead_id, e.c.cadence, leads.c.status)
        .join(leads, leads.c.id == e.c.lead_id)
        .where(e.c.status == ACTIVE, leads.c.status != Status.NURTURING.value),
    )
    if not len(gone):
        return 0
    reasons = gone["status"].map(departed_reason)
    store.update_from_frame(
        conn,
        e,
        pd.DataFrame(
            {
                "id": gone["id"].astype("int64"),
                "status": EXITED,
                "end_reason": reasons,
                "ended_at": stamp,
                "due_at": pd.NaT,
                "updated_at": stamp,
            }
        ),
    )
    lifecycle.record_notes(
        conn,
        gone["lead_id"].astype("int64"),
        kind="nurture",
        reasons="left " + gone["cadence"] + ": " + reasons,
        actor=ACTOR,
        at=now,
    )
    return len(gone)


def move_to_version(conn: Connection, context: NurtureContext, now: datetime) -> tuple[int, int]:
    """Active enrolments that follow another version of the cadences: this version, and the
    due times ``moved_due`` gives per ``on_change``. Returns (moved, re-planned).

    Example: 3 active enrolments written under the previous ``cadences.yaml``, one of them in
    a cadence since removed: all 3 take this version; with ``replan``, 2 get new due times
    from the new delays (returns (3, 2)), the third is due now, for the hop to end it.
    """
    e = t.cadence_enrolments
    stale = store.read_frame(
        conn,
        select(e.c.id, e.c.cadence, e.c.step, e.c.due_at, e.c.enrolled_at, e.c.last_touch_at).where(
            e.c.status == ACTIVE, e.c.version != context.version
        ),
    )
    if not len(stale):
        return 0, 0
    due, replanned = moved_due(stale, context.rules, now)
    store.update_from_frame(
        conn,
        e,
        pd.DataFrame(
            {
                "id": stale["id"].astype("int64"),
                "version": context.version,
                "due_at": due,
                "updated_at": pd.Timestamp(now),
            }
        ),
    )
    return len(stale), replanned


def candidates(database_url: str, now: datetime) -> list[int]:
    """Leads the tick must look at: a touch due at ``now``, or nurturing in no cadence (to
    enrol them, or to see that nothing takes them: the leakage report lists those)."""
    e, leads = t.cadence_enrolments, t.leads
    due = select(e.c.lead_id.label("id")).where(e.c.status == ACTIVE, e.c.due_at <= now)
    idle = select(leads.c.id).where(
        leads.c.status == Status.NURTURING.value,
        ~exists().where(e.c.lead_id == leads.c.id, e.c.status == ACTIVE),
    )
    with store.get_engine(database_url).connect() as conn:
        return sorted(int(i) for i in conn.execute(union(due, idle)).scalars())


def suppressed(conn: Connection, lead_ids: list[int], context: NurtureContext) -> dict[int, str]:
    """Of ``lead_ids``, the leads that must never be contacted, with why: nurture's
    suppression (``plan.suppression``: unsubscribed, bounced, do-not-email, the suppression
    list), for any email leadflow sends a lead unasked (booking's invitation too)."""
    if not lead_ids:
        return {}
    columns = [t.leads.c.id, t.leads.c.email]
    field = t.lead_column(context.rules.do_not_email_field)
    if field is not None:
        columns.append(field)
    leads = store.read_frame_by_ids(conn, columns, t.leads.c.id, lead_ids)
    events = t.engagement_events
    signals = store.read_frame_by_ids(
        conn,
        [events.c.lead_id, events.c.event_type.label("kind")],
        events.c.lead_id,
        lead_ids,
        where=events.c.event_type.in_(("bounce", "unsubscribe")),
    )
    reasons = suppression(leads, signals, context)
    return {
        int(i): str(why)
        for i, why in zip(leads["id"], reasons, strict=True)
        if isinstance(why, str)
    }


# --------------------------------------------------------------------------- the hop's reads


def lead_columns(context: NurtureContext) -> list[Any]:
    """The fields templates and entry criteria read (``attributes.<key>`` extracted)."""
    leads = t.leads
    columns: list[Any] = [leads.c[name] for name in DETAIL_COLUMNS]
    wanted = context.rules.fields() | {context.rules.do_not_email_field}
    extra = (t.lead_column(name) for name in sorted(wanted - set(DETAIL_COLUMNS)))
    return columns + [column for column in extra if column is not None]


def fetch_state(
    conn: Connection, leads: pd.DataFrame, context: NurtureContext, now: datetime
) -> NurtureInputs:
    """What the planner reads besides the leads, in the claim's transaction: every enrolment
    of the batch's leads, their touches queued in the last 7 days, and their latest signal of
    each kind (engagement events that end or suppress a cadence; meetings from activities)."""
    ids = leads["id"].astype("int64").tolist()
    e, touches, events, activities = (
        t.cadence_enrolments,
        t.cadence_touches,
        t.engagement_events,
        t.activities,
    )
    enrolments = store.read_frame_by_ids(
        conn, [e.c[name] for name in ENROLMENT_COLUMNS], e.c.lead_id, ids
    )
    recent = store.read_frame_by_ids(
        conn,
        [touches.c.lead_id, touches.c.decided_at],
        touches.c.lead_id,
        ids,
        where=(touches.c.status == "queued") & (touches.c.decided_at > now - WEEK),
    )
    engaged = store.read_frame_by_ids(
        conn,
        [events.c.lead_id, events.c.event_type.label("kind"), events.c.occurred_at.label("last")],
        events.c.lead_id,
        ids,
        where=events.c.event_type.in_(sorted(set(EXIT_EVENTS.values()))),
    )
    met = store.read_frame_by_ids(
        conn,
        [activities.c.lead_id, activities.c.occurred_at.label("last")],
        activities.c.lead_id,
        ids,
        where=activities.c.activity_type.in_(("meeting_booked", "meeting_held")),
    ).assign(kind="meeting")
    signals = pd.concat([engaged, met[["lead_id", "kind", "last"]]], ignore_index=True)
    if len(signals):
        signals = signals.groupby(["lead_id", "kind"], as_index=False)["last"].max()
        signals["last"] = pd.to_datetime(signals["last"], utc=True)
    else:
        signals = pd.DataFrame(columns=["lead_id", "kind", "last"])
    for frame, column in (
        (enrolments, "due_at"),
        (enrolments, "enrolled_at"),
        (recent, "decided_at"),
    ):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return NurtureInputs(enrolments=enrolments, recent=recent, signals=signals)


# --------------------------------------------------------------------------- the hop's writes


def persist_plan(
    conn: Connection, result: HopResult, context: NurtureContext, held: set[int]
) -> None:
    """Enrolments (new ones get their ids here), touches, outbox messages and ledger notes,
    in the batch's transaction; nothing for leads the gate held."""
    plan: Plan = result.report["plan"]
    now = result.report["now"]
    run_id = result.flow_run_id
    keep = (lambda f: f[~f["lead_id"].isin(held)]) if held else (lambda f: f)
    enrolments, touches = keep(plan.enrolments), keep(plan.touches)
    messages, notes = keep(plan.messages), keep(plan.notes)
    touches = insert_enrolments(conn, enrolments, touches, now)
    update_enrolments(conn, enrolments, context, now)
    if len(touches):
        store.bulk_insert(
            conn, t.cadence_touches, touches.drop(columns=["entry_no"]).assign(flow_run_id=run_id)
        )
    result.stats["messages_new"] = outbox.enqueue(conn, messages, now=now, flow_run_id=run_id)
    if len(notes):
        lifecycle.record_notes(
            conn,
            notes["lead_id"],
            kind="nurture",
            reasons=notes["reason"],
            actor=ACTOR,
            at=now,
            flow_run_id=run_id,
        )
    result.report = {
        "errors": plan.errors[:20],
        "finished": [f for f in plan.finished if f[0] not in held][:1000],
    }


def insert_enrolments(
    conn: Connection, enrolments: pd.DataFrame, touches: pd.DataFrame, now: datetime
) -> pd.DataFrame:
    """Insert the new enrolments (``new``), allocating their ids, and return ``touches`` with
    those ids where the planner left ``enrolment_id`` empty (the touch of an enrolment made in
    the same batch).

    Example: lead 7 enrolled in ``warm`` (entry 1) and its step 1 queued in one batch: the
    enrolment is inserted with id 42, and the touch's ``enrolment_id`` becomes 42.
    """
    new = enrolments[enrolments["new"].astype(bool)].drop(columns=["new"]).copy()
    if not len(new):
        return touches
    table = t.cadence_enrolments
    new["id"] = store.allocate_ids(conn, table, len(new))
    new["updated_at"] = pd.Timestamp(now)
    store.bulk_insert(conn, table, new)
    keys = zip(
        new["lead_id"].astype("int64"), new["cadence"], new["entry_no"].astype("int64"), strict=True
    )
    ids = dict(zip(keys, new["id"], strict=True))
    missing = touches["enrolment_id"].isna()
    if missing.any():
        touches = touches.copy()
        touches.loc[missing, "enrolment_id"] = [
            ids[(int(a), b, int(c))]
            for a, b, c in zip(
                touches.loc[missing, "lead_id"],
                touches.loc[missing, "cadence"],
                touches.loc[missing, "entry_no"],
                strict=True,
            )
        ]
    return touches


def update_enrolments(
    conn: Connection, enrolments: pd.DataFrame, context: NurtureContext, now: datetime
) -> None:
    """Write back the enrolments already in the database that the plan changed (step, status,
    due time, deferrals, error, end), stamped with this version of the cadences.

    Example: lead 3's ``warm`` enrolment deferred out of quiet hours: its row gets the new
    ``due_at`` and ``deferrals`` + 1; a new enrolment is not touched here (inserted above).
    """
    old = enrolments[~enrolments["new"].astype(bool)]
    if not len(old):
        return
    update = old[
        ["id", "step", "status", "due_at", "last_touch_at", "deferrals", "last_error",
         "ended_at", "end_reason"]
    ].copy()  # fmt: skip
    update["id"] = update["id"].astype("int64")
    update["version"] = context.version
    update["updated_at"] = pd.Timestamp(now)
    store.update_from_frame(conn, t.cadence_enrolments, update)
