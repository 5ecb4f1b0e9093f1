"""The database side of CRM sync: the ``crm_sync`` outbox messages decisions write, the lead
values a sync reads, and ``crm_records`` (what leadflow last wrote to each CRM record).

``note`` is called by the lifecycle (every status change and field update goes through
``lifecycle.apply``) and by the SLA hop (breaches), inside the decision's transaction: the
message exists if and only if the decision does. Each call writes one message per lead per
CRM that maps a field the decision changed, keyed ``crm:<crm>:<lead>:<call>``; the sync
coalesces every message of a lead into one upsert of the lead's values at sending time, so a
burst of changes costs one write and the CRM always ends with the latest values.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Table, and_, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from leadflow import store
from leadflow import tables as t
from leadflow.crm import mapping as crm_mapping
from leadflow.outbox import store as outbox

KIND = "crm_sync"
CHANNEL = "crm"


def note(
    conn: Connection,
    lead_ids: Iterable[int] | pd.Series,
    *,
    changed: set[str],
    actor: str,
    now: datetime | None = None,
    flow_run_id: str | None = None,
) -> int:
    """Queue a sync of ``lead_ids`` to every enabled CRM whose mapping watches one of the
    ``changed`` lead columns (``status``, ``score``, ``owner_rep_id``, ``sla``...). Returns
    the messages written."""
    targets = [m for m in crm_mapping.enabled() if m.watched() & changed]
    if not targets:
        return 0
    ids = pd.Series(pd.unique(pd.Series(list(lead_ids), dtype="int64")))
    if ids.empty:
        return 0
    call = uuid.uuid4().hex[:12]
    payload: dict[str, Any] = {"changed": sorted(changed), "actor": actor}
    if isinstance(now, datetime):
        payload["at"] = now.isoformat()  # the decision's business time
    frames = []
    for target in targets:
        frames.append(
            pd.DataFrame(
                {
                    "idempotency_key": "crm:" + target.crm + ":" + ids.astype(str) + ":" + call,
                    "kind": KIND,
                    "channel": CHANNEL,
                    "recipient": target.crm,
                    "lead_id": ids.to_numpy(),
                    "payload": [payload] * len(ids),
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    # Due at once on the wall clock whatever the decision's business time (a backfill told
    # it is last week still syncs now).
    return outbox.enqueue(conn, frame, now=store.utcnow(), flow_run_id=flow_run_id)


# --------------------------------------------------------------------------- reading leads

LEAD_FIELDS = (
    "id",
    "email",
    "status",
    *[c for c in crm_mapping.LEAD_COLUMNS if c not in ("id", "email", "status")],
    "attributes",
)


def lead_frame(conn: Connection, lead_ids: Sequence[int]) -> pd.DataFrame:
    """The leads' current values for mapping: every lead column, ``owner_email`` (the owner
    rep's), ``routing_reason`` (the current assignment's), ``sla_breached`` (an open SLA clock
    of the lead past its due time) and ``recycle_reason`` (the last recycle's reason)."""
    leads, reps, assignments, timers, events = (
        t.leads,
        t.reps,
        t.assignments,
        t.sla_timers,
        t.lead_events,
    )
    ids = [int(i) for i in lead_ids]
    if not ids:
        return pd.DataFrame(columns=[*LEAD_FIELDS, "owner_email"])
    reason = (
        select(assignments.c.reason)
        .where(assignments.c.lead_id == leads.c.id, assignments.c.released_at.is_(None))
        .order_by(assignments.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    breached = (
        select(func.count())
        .select_from(timers)
        .where(timers.c.lead_id == leads.c.id, timers.c.closed_at.is_(None), timers.c.level >= 1)
        .scalar_subquery()
    )
    recycled = (
        select(events.c.reason)
        .where(events.c.lead_id == leads.c.id, events.c.to_status == "recycled")
        .order_by(events.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(
            *[leads.c[c] for c in LEAD_FIELDS],
            reps.c.email.label("owner_email"),
            reason.label("routing_reason"),
            (breached > 0).label("sla_breached"),
            recycled.label("recycle_reason"),
        )
        .select_from(leads.outerjoin(reps, reps.c.id == leads.c.owner_rep_id))
        .where(leads.c.id.in_(ids))
    )
    rows = conn.execute(query).all()
    return pd.DataFrame([dict(r._mapping) for r in rows])


def rep_emails(conn: Connection) -> list[str]:
    """The active reps' emails: who must be a CRM user (``crm check``, doctor)."""
    rows = conn.execute(select(t.reps.c.email).where(t.reps.c.active.is_(True))).scalars()
    return [email for email in rows if email]


# --------------------------------------------------------------------------- crm_records


def _upsert(
    conn: Connection, table: Table, rows: list[dict[str, Any]], keys: list[str], update: list[str]
) -> None:
    """Insert ``rows``, or update ``update`` columns where the ``keys`` exist (a few hundred
    rows a call: one statement, executemany)."""
    if not rows:
        return
    dialect_insert = pg_insert if store.is_postgres(conn) else sqlite_insert
    statement = dialect_insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=keys, set_={c: statement.excluded[c] for c in update}
    )
    conn.execute(statement, rows)


def pushed(conn: Connection, crm: str, lead_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """lead id -> {"crm_id", "pushed", "pulled"} for the leads leadflow wrote to (or read
    back from) ``crm`` before."""
    table = t.crm_records
    out: dict[int, dict[str, Any]] = {}
    ids = [int(i) for i in lead_ids]
    for start in range(0, len(ids), 5000):
        rows = conn.execute(
            select(
                table.c.lead_id, table.c.crm_id, table.c.pushed, table.c.pending, table.c.pulled
            ).where(and_(table.c.crm == crm, table.c.lead_id.in_(ids[start : start + 5000])))
        ).all()
        out.update(
            {
                int(r.lead_id): {
                    "crm_id": r.crm_id,
                    "pushed": r.pushed or {},
                    "pending": r.pending or {},
                    "pulled": r.pulled or {},
                }
                for r in rows
            }
        )
    return out


def save_pushed(conn: Connection, crm: str, rows: list[dict[str, Any]], at: datetime) -> None:
    """Record what was written: ``rows`` of {lead_id, crm_id, pushed} (pushed merged over
    what was written before)."""
    if not rows:
        return
    moment = at if at.tzinfo else at.replace(tzinfo=UTC)
    values = [
        {
            "crm": crm,
            "lead_id": int(r["lead_id"]),
            "crm_id": r.get("crm_id"),
            "pushed": r["pushed"],
            "pushed_at": moment,
        }
        for r in rows
    ]
    for value in values:
        value["pending"] = None  # written: nothing in flight
    _upsert(
        conn,
        t.crm_records,
        values,
        ["crm", "lead_id"],
        ["crm_id", "pushed", "pushed_at", "pending"],
    )


def save_pending(conn: Connection, crm: str, rows: list[dict[str, Any]]) -> None:
    """What is about to be written (``rows`` of {lead_id, pending}), committed before the
    call: a write whose answer is lost (a crash) is then known as leadflow's, not taken for
    a person's edit."""
    if not rows:
        return
    moment = store.utcnow()
    values = [
        {
            "crm": crm,
            "lead_id": int(r["lead_id"]),
            "pushed": {},
            "pushed_at": moment,
            "pending": r["pending"],
        }
        for r in rows
    ]
    _upsert(conn, t.crm_records, values, ["crm", "lead_id"], ["pending"])


def save_pulled(conn: Connection, crm: str, rows: list[dict[str, Any]], at: datetime) -> None:
    """Record what the pull read back: ``rows`` of {lead_id, crm_id, pulled}."""
    values = [
        {
            "crm": crm,
            "lead_id": int(r["lead_id"]),
            "crm_id": r.get("crm_id"),
            "pushed": {},
            "pushed_at": at,
            "pulled": r["pulled"],
            "pulled_at": at,
        }
        for r in rows
    ]
    _upsert(conn, t.crm_records, values, ["crm", "lead_id"], ["crm_id", "pulled", "pulled_at"])


def cursor(conn: Connection, crm: str) -> str | None:
    table = t.source_cursors
    return conn.execute(
        select(table.c.cursor).where(table.c.source == f"crm:{crm}")
    ).scalar_one_or_none()


def save_cursor(conn: Connection, crm: str, value: str) -> None:
    row = {"source": f"crm:{crm}", "cursor": value, "updated_at": store.utcnow()}
    _upsert(conn, t.source_cursors, [row], ["source"], ["cursor", "updated_at"])
